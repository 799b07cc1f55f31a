//! The leader record: sector 0 of every paxos lease, saying who owns it.

use super::record::{Decoder, Encoder, BODY_OFFSET, RESOURCE_NAME_BYTES};
use super::{check_name, FormatError, LeaseKind, LeaseLocation, RecordKind, RECORD_SIZE_BYTES};
use crate::ids::{HostId, Owner};
use serde::Serialize;

const OWNER_OFFSET: usize = BODY_OFFSET; // u32
const FLAGS_OFFSET: usize = 68; // u32
const OWNER_GENERATION_OFFSET: usize = 72; // u64
const LVER_OFFSET: usize = 80; // u64
const MAX_HOSTS_OFFSET: usize = 88; // u32
const KIND_OFFSET: usize = 92; // u32
const INDEX_OFFSET: usize = 96; // u32
const TIMESTAMP_OFFSET: usize = 104; // u64
const PAYLOAD_LENGTH_OFFSET: usize = 112; // u32
const PAYLOAD_CHECKSUM_OFFSET: usize = 116; // u32
const NAME_OFFSET: usize = 120; // 48 bytes
const OWNER_NONCE_OFFSET: usize = 168; // u64
const RESERVED_OFFSET: usize = 176;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeaderFlags {
    /// The owner released the lease; the next acquire needs no liveness check.
    pub released: bool,
    /// The name's uniqueness was checked in this lease version or an
    /// earlier one of the same name: after this slot carried the name, a
    /// full scan found no other slot carrying it. An acquire that finds
    /// the flag needs no scan of its own (docs/safety.md, "Names").
    pub name_checked: bool,
}

impl LeaderFlags {
    const RELEASED: u32 = 1;
    const NAME_CHECKED: u32 = 2;
    const KNOWN: u32 = Self::RELEASED | Self::NAME_CHECKED;

    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.released {
            bits |= Self::RELEASED;
        }
        if self.name_checked {
            bits |= Self::NAME_CHECKED;
        }
        bits
    }
}

/// The leader of one paxos lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaderRecord {
    /// None: never owned since format.
    pub owner: Option<Owner>,
    pub flags: LeaderFlags,
    /// Lease version: incremented on every change of ownership.
    pub lver: u64,
    /// Dblocks that follow (the device's max_hosts).
    pub max_hosts: u32,
    pub kind: LeaseKind,
    pub index: u32,
    /// Writer's monotonic clock at the write; information only.
    pub timestamp_ms: u64,
    /// Bytes of payload in use and their CRC32 (0, 0 when empty).
    pub payload_length_bytes: u32,
    pub payload_checksum: u32,
    /// The resource name; empty for a free slot and for fence leases.
    pub name: String,
}

impl LeaderRecord {
    /// The record `format` writes.
    pub fn unused(location: &LeaseLocation, max_hosts: u32) -> LeaderRecord {
        LeaderRecord {
            owner: None,
            flags: LeaderFlags::default(),
            lver: 0,
            max_hosts,
            kind: location.kind,
            index: location.index,
            timestamp_ms: 0,
            payload_length_bytes: 0,
            payload_checksum: 0,
            name: String::new(),
        }
    }

    /// Owned right now by someone (not released).
    pub fn held_by(&self) -> Option<Owner> {
        if self.flags.released {
            None
        } else {
            self.owner
        }
    }

    pub fn encode(&self, lockspace: &str, sector_size_bytes: u32) -> Result<Vec<u8>, FormatError> {
        check_name("resource name", &self.name, RESOURCE_NAME_BYTES)?;
        let mut e = Encoder::new();
        if let Some(owner) = self.owner {
            e.u32(OWNER_OFFSET, owner.host_id.get());
            e.u64(OWNER_GENERATION_OFFSET, owner.generation);
            e.u64(OWNER_NONCE_OFFSET, owner.nonce);
        }
        e.u32(FLAGS_OFFSET, self.flags.bits());
        e.u64(LVER_OFFSET, self.lver);
        e.u32(MAX_HOSTS_OFFSET, self.max_hosts);
        e.u32(KIND_OFFSET, self.kind.code());
        e.u32(INDEX_OFFSET, self.index);
        e.u64(TIMESTAMP_OFFSET, self.timestamp_ms);
        e.u32(PAYLOAD_LENGTH_OFFSET, self.payload_length_bytes);
        e.u32(PAYLOAD_CHECKSUM_OFFSET, self.payload_checksum);
        e.name(NAME_OFFSET, RESOURCE_NAME_BYTES, &self.name);
        Ok(e.seal(RecordKind::Leader, lockspace, sector_size_bytes))
    }

    /// Decode the leader expected at `location` of a device with `max_hosts`.
    pub fn decode(
        sector: &[u8],
        lockspace: &str,
        location: &LeaseLocation,
        max_hosts: u32,
    ) -> Result<LeaderRecord, FormatError> {
        let d = Decoder::open(sector, RecordKind::Leader, Some(lockspace))?;
        d.reserved("leader reserved", 100..104)?;
        d.reserved("leader reserved", RESERVED_OFFSET..RECORD_SIZE_BYTES)?;
        let flags_raw = d.u32(FLAGS_OFFSET);
        if flags_raw & !LeaderFlags::KNOWN != 0 {
            return Err(FormatError::BadField {
                field: "leader flags",
                reason: format!("unknown bits {:#x}", flags_raw & !LeaderFlags::KNOWN),
            });
        }
        let owner = match HostId::new(d.u32(OWNER_OFFSET)) {
            None => {
                d.reserved(
                    "owner generation without an owner",
                    OWNER_GENERATION_OFFSET..LVER_OFFSET,
                )?;
                d.reserved(
                    "owner nonce without an owner",
                    OWNER_NONCE_OFFSET..RESERVED_OFFSET,
                )?;
                None
            }
            Some(host_id) if host_id.get() > max_hosts => {
                return Err(FormatError::BadField {
                    field: "owner host id",
                    reason: format!("{host_id} beyond max_hosts {max_hosts}"),
                })
            }
            Some(host_id) => Some(Owner {
                host_id,
                generation: d.u64(OWNER_GENERATION_OFFSET),
                nonce: d.u64(OWNER_NONCE_OFFSET),
            }),
        };
        let kind =
            LeaseKind::from_code(d.u32(KIND_OFFSET)).ok_or_else(|| FormatError::BadField {
                field: "lease kind",
                reason: format!("unknown code {}", d.u32(KIND_OFFSET)),
            })?;
        let record = LeaderRecord {
            owner,
            flags: LeaderFlags {
                released: flags_raw & LeaderFlags::RELEASED != 0,
                name_checked: flags_raw & LeaderFlags::NAME_CHECKED != 0,
            },
            lver: d.u64(LVER_OFFSET),
            max_hosts: d.u32(MAX_HOSTS_OFFSET),
            kind,
            index: d.u32(INDEX_OFFSET),
            timestamp_ms: d.u64(TIMESTAMP_OFFSET),
            payload_length_bytes: d.u32(PAYLOAD_LENGTH_OFFSET),
            payload_checksum: d.u32(PAYLOAD_CHECKSUM_OFFSET),
            name: d.name("resource name", NAME_OFFSET, RESOURCE_NAME_BYTES)?,
        };
        if record.kind != location.kind || record.index != location.index {
            return Err(FormatError::BadField {
                field: "lease identity",
                reason: format!(
                    "expected {:?} lease {}, found {:?} lease {}",
                    location.kind, location.index, record.kind, record.index
                ),
            });
        }
        if record.max_hosts != max_hosts {
            return Err(FormatError::BadField {
                field: "leader max_hosts",
                reason: format!("{} but the device has {max_hosts}", record.max_hosts),
            });
        }
        if record.owner.is_none() && record.lver != 0 {
            return Err(FormatError::BadField {
                field: "lver",
                reason: format!("{} with no owner", record.lver),
            });
        }
        Ok(record)
    }
}
