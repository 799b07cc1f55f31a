//! The 64-byte prefix every record shares, field helpers and the checksum.

use super::FormatError;
use serde::Serialize;
use std::fmt;

/// Bytes of every record; the rest of a larger sector is zero.
pub const RECORD_SIZE_BYTES: usize = 512;
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
pub const LOCKSPACE_NAME_BYTES: usize = 48;
pub const HOST_NAME_BYTES: usize = 64;
pub const RESOURCE_NAME_BYTES: usize = 48;

pub(crate) const MAGIC_OFFSET: usize = 0;
pub(crate) const VERSION_OFFSET: usize = 4;
pub(crate) const CHECKSUM_OFFSET: usize = 8;
pub(crate) const LOCKSPACE_OFFSET: usize = 16;
/// First byte of the kind-specific part.
pub(crate) const BODY_OFFSET: usize = 64;

/// The kinds of record; each has its own magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RecordKind {
    Header,
    Host,
    Leader,
    Dblock,
    Payload,
}

impl RecordKind {
    pub fn magic(self) -> [u8; 4] {
        match self {
            RecordKind::Header => *b"LHhd",
            RecordKind::Host => *b"LHho",
            RecordKind::Leader => *b"LHld",
            RecordKind::Dblock => *b"LHdb",
            RecordKind::Payload => *b"LHpl",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            RecordKind::Header => "header",
            RecordKind::Host => "host",
            RecordKind::Leader => "leader",
            RecordKind::Dblock => "dblock",
            RecordKind::Payload => "payload",
        };
        f.write_str(name)
    }
}

/// Checks a name before it is written: non-empty where required, at most
/// `capacity` bytes of UTF-8, no NUL.
pub fn check_name(field: &'static str, name: &str, capacity: usize) -> Result<(), FormatError> {
    if name.len() > capacity {
        return Err(FormatError::BadName {
            field,
            reason: format!("{} bytes, at most {capacity} allowed", name.len()),
        });
    }
    if name.contains('\0') {
        return Err(FormatError::BadName {
            field,
            reason: "contains a NUL byte".to_string(),
        });
    }
    Ok(())
}

/// A record being built. Offsets are compile-time constants within 512 bytes.
pub(crate) struct Encoder {
    bytes: [u8; RECORD_SIZE_BYTES],
}

impl Encoder {
    pub(crate) fn new() -> Encoder {
        Encoder {
            bytes: [0; RECORD_SIZE_BYTES],
        }
    }

    pub(crate) fn u8(&mut self, offset: usize, value: u8) {
        self.bytes[offset] = value;
    }

    pub(crate) fn u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, offset: usize, value: u64) {
        self.bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Names are checked by the record's constructor; a name that does not
    /// fit here is a bug.
    pub(crate) fn name(&mut self, offset: usize, capacity: usize, name: &str) {
        assert!(
            name.len() <= capacity,
            "name {name:?} longer than {capacity}"
        );
        self.bytes[offset..offset + name.len()].copy_from_slice(name.as_bytes());
    }

    /// Stamp the common prefix and the checksum; returns one sector.
    pub(crate) fn seal(
        mut self,
        kind: RecordKind,
        lockspace: &str,
        sector_size_bytes: u32,
    ) -> Vec<u8> {
        self.bytes[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&kind.magic());
        self.u16(VERSION_OFFSET, FORMAT_VERSION);
        self.name(LOCKSPACE_OFFSET, LOCKSPACE_NAME_BYTES, lockspace);
        self.u32(CHECKSUM_OFFSET, 0);
        let checksum = crc32fast::hash(&self.bytes);
        self.u32(CHECKSUM_OFFSET, checksum);
        let mut sector = vec![0; sector_size_bytes as usize];
        sector[..RECORD_SIZE_BYTES].copy_from_slice(&self.bytes);
        sector
    }
}

/// A record being read, after its prefix and checksum were verified.
pub(crate) struct Decoder<'a> {
    bytes: &'a [u8; RECORD_SIZE_BYTES],
}

impl<'a> Decoder<'a> {
    /// Verify the prefix of the record at the start of `sector`: not blank,
    /// the right magic, a version we read, a matching checksum, and (when
    /// `lockspace` is given) the right lockspace.
    pub(crate) fn open(
        sector: &'a [u8],
        kind: RecordKind,
        lockspace: Option<&str>,
    ) -> Result<Decoder<'a>, FormatError> {
        let Some(bytes) = sector
            .get(..RECORD_SIZE_BYTES)
            .and_then(|b| <&[u8; RECORD_SIZE_BYTES]>::try_from(b).ok())
        else {
            return Err(FormatError::BadField {
                field: "sector",
                reason: format!("{} bytes, shorter than a record", sector.len()),
            });
        };
        if bytes.iter().all(|&b| b == 0) {
            return Err(FormatError::Blank);
        }
        let decoder = Decoder { bytes };
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != kind.magic() {
            return Err(FormatError::BadMagic {
                expected: kind,
                found: magic,
            });
        }
        let version = decoder.u16(VERSION_OFFSET);
        if version == 0 || version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        let stored = decoder.u32(CHECKSUM_OFFSET);
        let mut copy = *bytes;
        copy[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].fill(0);
        let computed = crc32fast::hash(&copy);
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        decoder.reserved("prefix reserved", 6..8)?;
        decoder.reserved("prefix reserved", 12..16)?;
        if let Some(expected) = lockspace {
            let found = decoder.name("lockspace", LOCKSPACE_OFFSET, LOCKSPACE_NAME_BYTES)?;
            if found != expected {
                return Err(FormatError::ForeignLockspace {
                    expected: expected.to_string(),
                    found,
                });
            }
        }
        Ok(decoder)
    }

    pub(crate) fn u8(&self, offset: usize) -> u8 {
        self.bytes[offset]
    }

    pub(crate) fn u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    pub(crate) fn u32(&self, offset: usize) -> u32 {
        let mut raw = [0; 4];
        raw.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(raw)
    }

    pub(crate) fn u64(&self, offset: usize) -> u64 {
        let mut raw = [0; 8];
        raw.copy_from_slice(&self.bytes[offset..offset + 8]);
        u64::from_le_bytes(raw)
    }

    /// A NUL-padded UTF-8 name; every byte after the first NUL must be NUL.
    pub(crate) fn name(
        &self,
        field: &'static str,
        offset: usize,
        capacity: usize,
    ) -> Result<String, FormatError> {
        let raw = &self.bytes[offset..offset + capacity];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(capacity);
        if raw[end..].iter().any(|&b| b != 0) {
            return Err(FormatError::BadName {
                field,
                reason: "bytes after the terminating NUL".to_string(),
            });
        }
        String::from_utf8(raw[..end].to_vec()).map_err(|_| FormatError::BadName {
            field,
            reason: "not UTF-8".to_string(),
        })
    }

    /// The lockspace name in the prefix (used when opening a device whose
    /// lockspace is not known yet).
    pub(crate) fn lockspace(&self) -> Result<String, FormatError> {
        self.name("lockspace", LOCKSPACE_OFFSET, LOCKSPACE_NAME_BYTES)
    }

    /// Reserved bytes must be zero, so a later version can give them meaning.
    pub(crate) fn reserved(
        &self,
        field: &'static str,
        range: std::ops::Range<usize>,
    ) -> Result<(), FormatError> {
        if self.bytes[range].iter().any(|&b| b != 0) {
            return Err(FormatError::BadField {
                field,
                reason: "reserved bytes are not zero".to_string(),
            });
        }
        Ok(())
    }
}
