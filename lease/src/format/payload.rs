//! The header of one copy of a resource's payload. A slot's payload area
//! holds two copies (halves A and B), each a header sector followed by the
//! data; a writer always overwrites the older copy, so a crash in the
//! middle of a write leaves the newer complete one readable. Each copy
//! names the lease version it was written under, so that a write of a
//! former holder that lands late loses to every write of a later holder.

use super::record::{Decoder, Encoder, RecordKind, RECORD_SIZE_BYTES};
use super::FormatError;
use crate::ids::{HostId, Owner};

const SLOT_OFFSET: usize = 64;
const SEQUENCE_OFFSET: usize = 72;
const LENGTH_OFFSET: usize = 80;
const DATA_CHECKSUM_OFFSET: usize = 84;
const WRITER_OFFSET: usize = 88;
const WRITER_GENERATION_OFFSET: usize = 96;
const WRITER_NONCE_OFFSET: usize = 104;
const LVER_OFFSET: usize = 112;
const RESERVED_OFFSET: usize = 120;

/// One payload copy's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    /// The resource slot this payload belongs to.
    pub slot: u32,
    /// Incremented by every write; the copy with the higher one is current.
    pub sequence: u64,
    pub length_bytes: u32,
    /// CRC32 of the `length_bytes` data bytes after the header sector.
    pub data_checksum: u32,
    /// The lease holder that wrote it.
    pub writer: Owner,
    /// The version of the slot's lease the writer held when it wrote (0 in
    /// copies written before this field existed). Copies are ordered by
    /// (lver, sequence).
    pub lver: u64,
}

impl PayloadHeader {
    pub fn encode(&self, lockspace: &str, sector_size_bytes: u32) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u32(SLOT_OFFSET, self.slot);
        e.u64(SEQUENCE_OFFSET, self.sequence);
        e.u32(LENGTH_OFFSET, self.length_bytes);
        e.u32(DATA_CHECKSUM_OFFSET, self.data_checksum);
        e.u32(WRITER_OFFSET, self.writer.host_id.get());
        e.u64(WRITER_GENERATION_OFFSET, self.writer.generation);
        e.u64(WRITER_NONCE_OFFSET, self.writer.nonce);
        e.u64(LVER_OFFSET, self.lver);
        e.seal(RecordKind::Payload, lockspace, sector_size_bytes)
    }

    /// Decode the header of a copy in `slot`, whose data may be at most
    /// `capacity_bytes` long.
    pub fn decode(
        sector: &[u8],
        lockspace: &str,
        slot: u32,
        capacity_bytes: u32,
    ) -> Result<PayloadHeader, FormatError> {
        let d = Decoder::open(sector, RecordKind::Payload, Some(lockspace))?;
        d.reserved("payload reserved", 68..72)?;
        d.reserved("payload reserved", 92..96)?;
        d.reserved("payload reserved", RESERVED_OFFSET..RECORD_SIZE_BYTES)?;
        let found_slot = d.u32(SLOT_OFFSET);
        if found_slot != slot {
            return Err(FormatError::BadField {
                field: "payload slot",
                reason: format!("belongs to slot {found_slot}, found in slot {slot}"),
            });
        }
        let length_bytes = d.u32(LENGTH_OFFSET);
        if length_bytes > capacity_bytes {
            return Err(FormatError::BadField {
                field: "payload length",
                reason: format!("{length_bytes} bytes, the copy holds at most {capacity_bytes}"),
            });
        }
        let host_id = HostId::new(d.u32(WRITER_OFFSET)).ok_or(FormatError::BadField {
            field: "payload writer",
            reason: "host id 0".to_string(),
        })?;
        Ok(PayloadHeader {
            slot,
            sequence: d.u64(SEQUENCE_OFFSET),
            length_bytes,
            data_checksum: d.u32(DATA_CHECKSUM_OFFSET),
            writer: Owner {
                host_id,
                generation: d.u64(WRITER_GENERATION_OFFSET),
                nonce: d.u64(WRITER_NONCE_OFFSET),
            },
            lver: d.u64(LVER_OFFSET),
        })
    }
}
