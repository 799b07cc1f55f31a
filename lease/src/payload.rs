//! A resource's payload (for a VM: its definition), stored in the slot's
//! payload area as two copies, A and B: each a header sector
//! ([`PayloadHeader`]) and up to [`capacity_bytes`] of data. Only the
//! lease holder writes, always over the copy that is not the current one,
//! with a higher sequence number, so a write torn by a crash leaves the
//! previous version readable. A copy whose header or data checksum fails is
//! reported, never used.
//!
//! Every copy carries the lease version (lver) it was written under, and
//! the current copy is the valid one with the highest (lver, sequence): a
//! write of a former holder that reaches the device late (held in a
//! storage path while the host was fenced) loses to anything written under
//! a later version. So that such a write cannot erase the new holder's
//! only copy either, the first write under a new version writes both
//! copies, one after the other. A former holder's late writes all aim at
//! one copy (it picks the copy that was not current when it read, and
//! nothing it wrote since landed), so one copy of the newer version always
//! survives them.

use crate::error::LeaseError;
use crate::format::{FormatError, Geometry, PayloadHeader};
use crate::ids::Owner;
use crate::lockspace::Lockspace;
use crate::op::{Operation, Port};
use crate::paxos;

/// A payload as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub sequence: u64,
    /// The lease version it was written under (0: before lvers were kept).
    pub lver: u64,
    pub writer: Owner,
    pub data: Vec<u8>,
}

/// Bytes of each copy: half the payload area, whole sectors.
fn copy_size_bytes(geometry: &Geometry) -> u64 {
    let sector = u64::from(geometry.sector_size_bytes());
    u64::from(geometry.payload_size_bytes()) / 2 / sector * sector
}

/// The most data one payload can hold (half the area, less a header sector).
pub fn capacity_bytes(geometry: &Geometry) -> u32 {
    let capacity =
        copy_size_bytes(geometry).saturating_sub(u64::from(geometry.sector_size_bytes()));
    u32::try_from(capacity).unwrap_or(0)
}

fn copy_offset_bytes(geometry: &Geometry, slot: u32, copy: u64) -> u64 {
    geometry.payload_offset_bytes(slot) + copy * copy_size_bytes(geometry)
}

/// What one copy holds.
#[derive(Debug)]
enum Copy {
    Empty,
    Valid(Payload),
    /// Unusable: the reason, and the sequence its header claims if any.
    Bad(String, Option<u64>),
}

fn decode_copy(space: &Lockspace, slot: u32, bytes: &[u8]) -> Copy {
    let sector = space.geometry.sector_size_bytes() as usize;
    let capacity = capacity_bytes(&space.geometry);
    let (head, rest) = bytes.split_at(sector.min(bytes.len()));
    match PayloadHeader::decode(head, &space.name, slot, capacity) {
        Err(FormatError::Blank) => Copy::Empty,
        Err(e) => Copy::Bad(e.to_string(), None),
        Ok(header) => {
            let length = header.length_bytes as usize;
            let Some(data) = rest.get(..length) else {
                return Copy::Bad("data beyond the copy".to_string(), Some(header.sequence));
            };
            if crc32fast::hash(data) != header.data_checksum {
                return Copy::Bad(
                    format!("data checksum mismatch (sequence {})", header.sequence),
                    Some(header.sequence),
                );
            }
            Copy::Valid(Payload {
                sequence: header.sequence,
                lver: header.lver,
                writer: header.writer,
                data: data.to_vec(),
            })
        }
    }
}

async fn read_copies(port: &Port, space: &Lockspace, slot: u32) -> Result<[Copy; 2], LeaseError> {
    let size = copy_size_bytes(&space.geometry);
    let a = port
        .read(copy_offset_bytes(&space.geometry, slot, 0), size)
        .await?;
    let b = port
        .read(copy_offset_bytes(&space.geometry, slot, 1), size)
        .await?;
    Ok([decode_copy(space, slot, &a), decode_copy(space, slot, &b)])
}

/// The current copy, by index: the valid one written under the highest
/// lease version, the higher sequence among equal versions.
fn current(copies: &[Copy; 2]) -> Option<usize> {
    copies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Copy::Valid(p) => Some((i, (p.lver, p.sequence))),
            _ => None,
        })
        .max_by_key(|(_, order)| *order)
        .map(|(i, _)| i)
}

fn check_slot(space: &Lockspace, slot: u32) -> Result<(), LeaseError> {
    if slot >= space.geometry.max_resources() {
        return Err(LeaseError::Invalid(format!(
            "slot {slot} beyond the device's {} slots",
            space.geometry.max_resources()
        )));
    }
    Ok(())
}

/// Read the payload of `slot`: None if never written; an error if no copy
/// is usable but one was written (a corrupt payload is never used).
pub fn read(space: &Lockspace, slot: u32) -> Operation<Result<Option<Payload>, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move {
        check_slot(&space, slot)?;
        let copies = read_copies(&port, &space, slot).await?;
        if let Some(i) = current(&copies) {
            if let Some(Copy::Valid(payload)) = copies.get(i) {
                return Ok(Some(payload.clone()));
            }
        }
        let reasons: Vec<String> = copies
            .iter()
            .filter_map(|c| match c {
                Copy::Bad(reason, _) => Some(reason.clone()),
                _ => None,
            })
            .collect();
        if reasons.is_empty() {
            return Ok(None);
        }
        Err(LeaseError::Invalid(format!(
            "{}: the payload of slot {slot} is unusable ({}); it is never used: rewrite it from its owner",
            space.device,
            reasons.join("; ")
        )))
    })
}

/// Write `data` as the payload of `slot` for `writer`, which must hold the
/// slot's lease (checked on the device first). The copy is stamped with
/// the lease version held; the first write under a version writes both
/// copies. Returns the new sequence.
pub fn write(
    space: &Lockspace,
    slot: u32,
    writer: Owner,
    data: Vec<u8>,
) -> Operation<Result<u64, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move {
        check_slot(&space, slot)?;
        let capacity = capacity_bytes(&space.geometry);
        let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if length > capacity {
            return Err(LeaseError::Invalid(format!(
                "payload of {} bytes does not fit: a slot holds at most {capacity} (format with a larger --payload-size)",
                data.len()
            )));
        }
        let location = space.geometry.resource_lease(slot);
        let status = paxos::inquire_inner(&port, &space, &location).await?;
        if status.holder != Some(writer) {
            return Err(LeaseError::NotOwner {
                resource: status.leader.name.clone(),
                owner: writer,
                found: match status.holder {
                    Some(holder) => format!(
                        "slot {slot} is held by host {} generation {}; only the holder writes its payload",
                        holder.host_id, holder.generation
                    ),
                    None => format!("slot {slot} is not held; only the holder writes its payload"),
                },
            });
        }
        let lver = status.leader.lver;
        let copies = read_copies(&port, &space, slot).await?;
        let newer = copies.iter().find_map(|c| match c {
            Copy::Valid(p) if p.lver > lver => Some(p.lver),
            _ => None,
        });
        if let Some(newer) = newer {
            // Only a later holder writes a later version: the leader read
            // above or that copy is not what it seems.
            return Err(LeaseError::Invalid(format!(
                "{}: a payload copy of slot {slot} says it was written under lease version {newer}, above the leader's {lver}; nothing written (inspect with `leasehold dump`)",
                space.device
            )));
        }
        let current_copy = current(&copies);
        // Under a version that wrote nothing yet, both copies get it.
        let first_under_lver = !current_copy
            .is_some_and(|i| matches!(copies.get(i), Some(Copy::Valid(p)) if p.lver == lver));
        let target = match current_copy {
            Some(i) => 1 - i,
            None => 0,
        };
        let mut sequence = copies
            .iter()
            .filter_map(|c| match c {
                Copy::Valid(p) => Some(p.sequence),
                Copy::Bad(_, sequence) => *sequence,
                Copy::Empty => None,
            })
            .max()
            .unwrap_or(0);
        let order: &[usize] = if first_under_lver {
            &[target, 1 - target]
        } else {
            &[target]
        };
        let sector = space.geometry.sector_size_bytes() as usize;
        for copy in order {
            sequence = sequence.saturating_add(1);
            let header = PayloadHeader {
                slot,
                sequence,
                length_bytes: length,
                data_checksum: crc32fast::hash(&data),
                writer,
                lver,
            };
            let mut bytes = header.encode(&space.name, space.geometry.sector_size_bytes());
            bytes.extend_from_slice(&data);
            let padded = bytes.len().div_ceil(sector) * sector;
            bytes.resize(padded, 0);
            // One after the other: the second overwrites the old version
            // only once the first copy of the new one is on the device.
            port.write(
                copy_offset_bytes(&space.geometry, slot, *copy as u64),
                bytes,
            )
            .await?;
        }
        Ok(sequence)
    })
}
