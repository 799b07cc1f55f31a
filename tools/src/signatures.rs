//! What else a device may hold: the on-disk signatures `leasehold format`
//! looks for before it overwrites anything (docs/operations.md, "Format").
//! Each is a documented magic at a fixed offset, checked in the first
//! [`PROBE_BYTES`] of the device.

/// How much of the device start the probe reads.
pub const PROBE_BYTES: usize = 72 * 1024;

/// One signature: a name for the operator, the offset and the bytes.
struct Magic {
    what: &'static str,
    offset_bytes: usize,
    bytes: &'static [u8],
}

const MAGICS: &[Magic] = &[
    Magic {
        what: "an ext2/ext3/ext4 filesystem",
        offset_bytes: 1024 + 56,
        bytes: &[0x53, 0xEF],
    },
    Magic {
        what: "an XFS filesystem",
        offset_bytes: 0,
        bytes: b"XFSB",
    },
    Magic {
        what: "a btrfs filesystem",
        offset_bytes: 0x10040,
        bytes: b"_BHRfS_M",
    },
    Magic {
        what: "a GPT partition table",
        offset_bytes: 512,
        bytes: b"EFI PART",
    },
    Magic {
        what: "a GPT partition table",
        offset_bytes: 4096,
        bytes: b"EFI PART",
    },
    Magic {
        what: "an LVM physical volume",
        offset_bytes: 512 + 24,
        bytes: b"LVM2 001",
    },
    Magic {
        what: "an LVM physical volume",
        offset_bytes: 24,
        bytes: b"LVM2 001",
    },
    Magic {
        what: "a Linux RAID (md) member",
        offset_bytes: 0,
        bytes: &[0xFC, 0x4E, 0x2B, 0xA9],
    },
    Magic {
        what: "a Linux RAID (md) member",
        offset_bytes: 4096,
        bytes: &[0xFC, 0x4E, 0x2B, 0xA9],
    },
    Magic {
        what: "a LUKS encrypted volume",
        offset_bytes: 0,
        bytes: b"LUKS\xba\xbe",
    },
    Magic {
        what: "Linux swap space",
        offset_bytes: 4096 - 10,
        bytes: b"SWAPSPACE2",
    },
    Magic {
        what: "an ISO 9660 filesystem",
        offset_bytes: 32769,
        bytes: b"CD001",
    },
    Magic {
        what: "a sanlock lockspace",
        offset_bytes: 0,
        bytes: &[0x10, 0x20, 0x21, 0x12],
    },
    Magic {
        what: "a sanlock resource",
        offset_bytes: 0,
        bytes: &[0x10, 0x20, 0x15, 0x06],
    },
    // Last: an MBR signature is also on FAT and NTFS boot sectors.
    Magic {
        what: "a DOS (MBR) partition table or boot sector",
        offset_bytes: 510,
        bytes: &[0x55, 0xAA],
    },
];

/// Every known signature in `start` (the first bytes of a device), by
/// name, once each.
pub fn found(start: &[u8]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for magic in MAGICS {
        let end = magic.offset_bytes + magic.bytes.len();
        let hit = start.get(magic.offset_bytes..end) == Some(magic.bytes);
        if hit && !names.contains(&magic.what) {
            names.push(magic.what);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut start = vec![0; PROBE_BYTES];
        start[offset..offset + bytes.len()].copy_from_slice(bytes);
        start
    }

    #[test]
    fn each_magic_is_found_where_it_belongs_and_nowhere_else() {
        assert!(found(&vec![0; PROBE_BYTES]).is_empty());
        assert_eq!(
            found(&with(1080, &[0x53, 0xEF])),
            ["an ext2/ext3/ext4 filesystem"]
        );
        assert_eq!(found(&with(1081, &[0x53, 0xEF])), Vec::<&str>::new());
        assert_eq!(found(&with(4096, b"EFI PART")), ["a GPT partition table"]);
        assert_eq!(found(&with(536, b"LVM2 001")), ["an LVM physical volume"]);
        assert_eq!(found(&with(0x10040, b"_BHRfS_M")), ["a btrfs filesystem"]);
        let mut both = with(510, &[0x55, 0xAA]);
        both[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(
            found(&both),
            [
                "a GPT partition table",
                "a DOS (MBR) partition table or boot sector"
            ]
        );
        // A short read finds only what fits.
        assert!(found(&with(32769, b"CD001")[..1024]).is_empty());
    }
}
