//! The dblock: one host's Disk Paxos state within one lease.

use super::record::{Decoder, Encoder, BODY_OFFSET, RESOURCE_NAME_BYTES};
use super::{check_name, FormatError, RecordKind, RECORD_SIZE_BYTES};
use crate::ids::{HostId, Owner};
use serde::Serialize;

const LVER_OFFSET: usize = BODY_OFFSET; // u64
const MBAL_OFFSET: usize = 72; // u64
const BAL_OFFSET: usize = 80; // u64
const INP_OWNER_OFFSET: usize = 88; // u32
const FLAGS_OFFSET: usize = 92; // u32
const INP_GENERATION_OFFSET: usize = 96; // u64
const INP_NAME_OFFSET: usize = 104; // 48 bytes
const TIMESTAMP_OFFSET: usize = 152; // u64
const INP_NONCE_OFFSET: usize = 160; // u64
const RESERVED_OFFSET: usize = 168;

/// The value a ballot proposes: the next owner and the resource name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proposal {
    pub owner: Owner,
    pub name: String,
}

/// One host's dblock. `lver` says which instance of the lease (which
/// ownership change) the ballots belong to; a dblock of an older lver counts
/// as empty for a newer instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DblockRecord {
    pub lver: u64,
    /// Highest ballot this host has started.
    pub mbal: u64,
    /// Ballot in which `inp` was accepted; 0 = none.
    pub bal: u64,
    pub inp: Option<Proposal>,
    /// The owner released the lease it won in instance `lver` (only ever
    /// set by that owner, on its own dblock).
    pub released: bool,
    pub timestamp_ms: u64,
}

impl DblockRecord {
    pub fn unused() -> DblockRecord {
        DblockRecord {
            lver: 0,
            mbal: 0,
            bal: 0,
            inp: None,
            released: false,
            timestamp_ms: 0,
        }
    }

    pub fn encode(&self, lockspace: &str, sector_size_bytes: u32) -> Result<Vec<u8>, FormatError> {
        let mut e = Encoder::new();
        e.u64(LVER_OFFSET, self.lver);
        e.u64(MBAL_OFFSET, self.mbal);
        e.u64(BAL_OFFSET, self.bal);
        if let Some(inp) = &self.inp {
            check_name("proposed resource name", &inp.name, RESOURCE_NAME_BYTES)?;
            e.u32(INP_OWNER_OFFSET, inp.owner.host_id.get());
            e.u64(INP_GENERATION_OFFSET, inp.owner.generation);
            e.u64(INP_NONCE_OFFSET, inp.owner.nonce);
            e.name(INP_NAME_OFFSET, RESOURCE_NAME_BYTES, &inp.name);
        }
        e.u32(FLAGS_OFFSET, u32::from(self.released));
        e.u64(TIMESTAMP_OFFSET, self.timestamp_ms);
        Ok(e.seal(RecordKind::Dblock, lockspace, sector_size_bytes))
    }

    pub fn decode(
        sector: &[u8],
        lockspace: &str,
        max_hosts: u32,
    ) -> Result<DblockRecord, FormatError> {
        let d = Decoder::open(sector, RecordKind::Dblock, Some(lockspace))?;
        let flags = d.u32(FLAGS_OFFSET);
        if flags > 1 {
            return Err(FormatError::BadField {
                field: "dblock flags",
                reason: format!("unknown bits {:#x}", flags & !1),
            });
        }
        d.reserved("dblock reserved", RESERVED_OFFSET..RECORD_SIZE_BYTES)?;
        let inp = match HostId::new(d.u32(INP_OWNER_OFFSET)) {
            None => {
                d.reserved("empty proposal", INP_GENERATION_OFFSET..TIMESTAMP_OFFSET)?;
                d.reserved("empty proposal", INP_NONCE_OFFSET..RESERVED_OFFSET)?;
                None
            }
            Some(host_id) if host_id.get() > max_hosts => {
                return Err(FormatError::BadField {
                    field: "proposed owner",
                    reason: format!("host {host_id} beyond max_hosts {max_hosts}"),
                })
            }
            Some(host_id) => Some(Proposal {
                owner: Owner {
                    host_id,
                    generation: d.u64(INP_GENERATION_OFFSET),
                    nonce: d.u64(INP_NONCE_OFFSET),
                },
                name: d.name(
                    "proposed resource name",
                    INP_NAME_OFFSET,
                    RESOURCE_NAME_BYTES,
                )?,
            }),
        };
        let record = DblockRecord {
            lver: d.u64(LVER_OFFSET),
            mbal: d.u64(MBAL_OFFSET),
            bal: d.u64(BAL_OFFSET),
            inp,
            released: flags == 1,
            timestamp_ms: d.u64(TIMESTAMP_OFFSET),
        };
        if record.bal > record.mbal {
            return Err(FormatError::BadField {
                field: "bal",
                reason: format!("{} above mbal {}", record.bal, record.mbal),
            });
        }
        if (record.bal == 0) != record.inp.is_none() {
            return Err(FormatError::BadField {
                field: "bal",
                reason: "a proposal without a ballot, or a ballot without a proposal".to_string(),
            });
        }
        if record.released && record.inp.is_none() {
            return Err(FormatError::BadField {
                field: "dblock flags",
                reason: "released without a proposal".to_string(),
            });
        }
        Ok(record)
    }
}
