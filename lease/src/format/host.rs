//! The host record: one sector per host id, rewritten by its owner on every
//! renewal (the delta lease), and by a fencer once, to mark it FENCED.

use super::record::{Decoder, Encoder, BODY_OFFSET, HOST_NAME_BYTES};
use super::{check_name, FormatError, RecordKind, RECORD_SIZE_BYTES};
use crate::ids::{HostId, Owner};
use serde::Serialize;

const HOST_ID_OFFSET: usize = BODY_OFFSET; // u32
const FLAGS_OFFSET: usize = 68; // u32
const GENERATION_OFFSET: usize = 72; // u64
const TIMESTAMP_OFFSET: usize = 80; // u64
const IO_TIMEOUT_OFFSET: usize = 88; // u32
const FENCER_OFFSET: usize = 92; // u32
const FENCED_GENERATION_OFFSET: usize = 96; // u64
const GENERATION_FLOOR_OFFSET: usize = 104; // u64
const NONCE_OFFSET: usize = 112; // u64
const MEMORY_FREE_OFFSET: usize = 120; // u32
const MEMORY_TOTAL_OFFSET: usize = 124; // u32
const VCPUS_FREE_OFFSET: usize = 128; // u32
const VCPUS_TOTAL_OFFSET: usize = 132; // u32
const FENCE_METHOD_OFFSET: usize = 136; // u8
const HOST_NAME_OFFSET: usize = 144; // 64 bytes
const FAILOVER_DIGEST_OFFSET: usize = 208; // u32
const CLUSTER_DIGEST_OFFSET: usize = 212; // u32
const RESOURCE_CHANGES_OFFSET: usize = 216; // u64
const CHANGED_SLOTS_OFFSET: usize = 224; // CHANGED_SLOTS_MAX x u32
const RESERVED_OFFSET: usize = CHANGED_SLOTS_OFFSET + 4 * CHANGED_SLOTS_MAX;

/// How many of its latest resource changes a host record names the slot
/// of: a reader whose last seen count is at most this far behind re-reads
/// just those slots, else every slot.
pub const CHANGED_SLOTS_MAX: usize = 16;

/// The slots of a host's latest resource changes: the change that made the
/// count `c` is at index `c % CHANGED_SLOTS_MAX`, stored as slot + 1 (0:
/// not known, so a record from before this field, or a count that moved
/// without a slot, sends readers to a full scan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChangedSlots(pub [u32; CHANGED_SLOTS_MAX]);

impl ChangedSlots {
    fn index(count: u64) -> usize {
        // The remainder is below CHANGED_SLOTS_MAX, so it fits a usize.
        (count % CHANGED_SLOTS_MAX as u64) as usize
    }

    /// Record that the change making the count `count` touched `slot`
    /// (None: a change whose slot is not known, e.g. an acquire that failed
    /// half-way; readers of it read every slot).
    pub fn note(&mut self, count: u64, slot: Option<u32>) {
        self.0[Self::index(count)] = slot.map_or(0, |slot| slot.saturating_add(1));
    }

    /// Forget every slot (a new incarnation starts from a blank list).
    pub fn clear(&mut self) {
        self.0 = [0; CHANGED_SLOTS_MAX];
    }

    /// The slots touched by the changes after count `seen` up to count
    /// `now`, or None when the list cannot say (the count went back, moved
    /// by more than [`CHANGED_SLOTS_MAX`], or one of those changes has no
    /// slot): then the reader must read every slot.
    pub fn since(&self, seen: u64, now: u64) -> Option<std::collections::BTreeSet<u32>> {
        let moved = now.checked_sub(seen)?;
        if moved > CHANGED_SLOTS_MAX as u64 {
            return None;
        }
        let mut slots = std::collections::BTreeSet::new();
        for count in seen.saturating_add(1)..=now {
            let stored = self.0[Self::index(count)];
            slots.insert(stored.checked_sub(1)?);
        }
        Some(slots)
    }
}

/// Host record flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostFlags {
    /// The owner left cleanly: it holds no resource leases of this generation.
    pub released: bool,
    /// A fencer powered this host off; `fenced_generation` says which incarnation.
    pub fenced: bool,
    /// The host runs with a hardware watchdog that resets it when renewal fails.
    pub watchdog: bool,
}

impl HostFlags {
    const RELEASED: u32 = 1;
    const FENCED: u32 = 2;
    const WATCHDOG: u32 = 4;
    const KNOWN: u32 = Self::RELEASED | Self::FENCED | Self::WATCHDOG;

    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.released {
            bits |= Self::RELEASED;
        }
        if self.fenced {
            bits |= Self::FENCED;
        }
        if self.watchdog {
            bits |= Self::WATCHDOG;
        }
        bits
    }

    fn from_bits(bits: u32) -> Result<HostFlags, FormatError> {
        if bits & !Self::KNOWN != 0 {
            return Err(FormatError::BadField {
                field: "host flags",
                reason: format!("unknown bits {:#x}", bits & !Self::KNOWN),
            });
        }
        Ok(HostFlags {
            released: bits & Self::RELEASED != 0,
            fenced: bits & Self::FENCED != 0,
            watchdog: bits & Self::WATCHDOG != 0,
        })
    }
}

/// How a host is fenced, advertised in its record for operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum FenceMethod {
    #[default]
    None,
    Ipmi,
    Agent,
    /// An operator confirmed a manual power-off.
    Manual,
}

impl FenceMethod {
    fn code(self) -> u8 {
        match self {
            FenceMethod::None => 0,
            FenceMethod::Ipmi => 1,
            FenceMethod::Agent => 2,
            FenceMethod::Manual => 3,
        }
    }

    fn from_code(code: u8) -> Result<FenceMethod, FormatError> {
        match code {
            0 => Ok(FenceMethod::None),
            1 => Ok(FenceMethod::Ipmi),
            2 => Ok(FenceMethod::Agent),
            3 => Ok(FenceMethod::Manual),
            other => Err(FormatError::BadField {
                field: "fence method",
                reason: format!("unknown code {other}"),
            }),
        }
    }
}

/// Free capacity a host advertises, used for restart placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub memory_mib_free: u32,
    pub memory_mib_total: u32,
    pub vcpus_free: u32,
    pub vcpus_total: u32,
}

/// Digests of the settings every host of a cluster must share, published
/// by each host so the others can tell when one runs with different ones.
/// The daemon computes them; the lease core only stores them. 0 means "not
/// published" (a writer that does not compute them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SharedSettings {
    /// CRC32 of the `[failover]` settings (restart plans assume they agree).
    pub failover_digest: u32,
    /// CRC32 of the cluster host list: ids, names and fence devices.
    pub cluster_digest: u32,
}

/// One host's delta lease sector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    pub host_id: HostId,
    pub flags: HostFlags,
    /// Incremented on every join; 0 = never joined.
    pub generation: u64,
    /// The writer's monotonic clock at the write, in ms. Only its changes mean
    /// anything to another host.
    pub timestamp_ms: u64,
    /// The writer's io_timeout: observers derive its expiry from this.
    pub io_timeout_ms: u32,
    /// With `flags.fenced`: who fenced, and which generation.
    pub fencer_host_id: u32,
    pub fenced_generation: u64,
    /// Every generation below this one is over (released, fenced, or waited
    /// out); generations from here up to `generation` may still own leases.
    pub generation_floor: u64,
    /// Random per join: tells apart two processes that joined with one id.
    pub nonce: u64,
    pub capacity: Capacity,
    pub fence_method: FenceMethod,
    pub host_name: String,
    pub shared_settings: SharedSettings,
    /// Counts the changes this host made to resource slots (leases,
    /// payloads): another host re-reads the slots only when a counter
    /// moves. Its value means nothing across hosts or generations; only a
    /// change does.
    pub resource_changes: u64,
    /// Which slots the latest of those changes touched.
    pub changed_slots: ChangedSlots,
}

impl HostRecord {
    /// The record `format` writes: never joined.
    pub fn unused(host_id: HostId) -> HostRecord {
        HostRecord {
            host_id,
            flags: HostFlags::default(),
            generation: 0,
            timestamp_ms: 0,
            io_timeout_ms: 0,
            fencer_host_id: 0,
            fenced_generation: 0,
            generation_floor: 0,
            nonce: 0,
            capacity: Capacity::default(),
            fence_method: FenceMethod::None,
            host_name: String::new(),
            shared_settings: SharedSettings::default(),
            resource_changes: 0,
            changed_slots: ChangedSlots::default(),
        }
    }

    pub fn is_unused(&self) -> bool {
        self.generation == 0
    }

    /// The incarnation that wrote this record.
    pub fn owner(&self) -> Owner {
        Owner {
            host_id: self.host_id,
            generation: self.generation,
            nonce: self.nonce,
        }
    }

    /// True when generation `generation` of this host can no longer hold
    /// anything: it left cleanly, was fenced, or lies below the floor.
    pub fn generation_is_over(&self, generation: u64) -> bool {
        if generation < self.generation_floor {
            return true;
        }
        if self.flags.fenced && generation <= self.fenced_generation {
            return true;
        }
        self.flags.released && generation <= self.generation
    }

    pub fn encode(&self, lockspace: &str, sector_size_bytes: u32) -> Result<Vec<u8>, FormatError> {
        check_name("host name", &self.host_name, HOST_NAME_BYTES)?;
        let mut e = Encoder::new();
        e.u32(HOST_ID_OFFSET, self.host_id.get());
        e.u32(FLAGS_OFFSET, self.flags.bits());
        e.u64(GENERATION_OFFSET, self.generation);
        e.u64(TIMESTAMP_OFFSET, self.timestamp_ms);
        e.u32(IO_TIMEOUT_OFFSET, self.io_timeout_ms);
        e.u32(FENCER_OFFSET, self.fencer_host_id);
        e.u64(FENCED_GENERATION_OFFSET, self.fenced_generation);
        e.u64(GENERATION_FLOOR_OFFSET, self.generation_floor);
        e.u64(NONCE_OFFSET, self.nonce);
        e.u32(MEMORY_FREE_OFFSET, self.capacity.memory_mib_free);
        e.u32(MEMORY_TOTAL_OFFSET, self.capacity.memory_mib_total);
        e.u32(VCPUS_FREE_OFFSET, self.capacity.vcpus_free);
        e.u32(VCPUS_TOTAL_OFFSET, self.capacity.vcpus_total);
        e.u8(FENCE_METHOD_OFFSET, self.fence_method.code());
        e.name(HOST_NAME_OFFSET, HOST_NAME_BYTES, &self.host_name);
        e.u32(FAILOVER_DIGEST_OFFSET, self.shared_settings.failover_digest);
        e.u32(CLUSTER_DIGEST_OFFSET, self.shared_settings.cluster_digest);
        e.u64(RESOURCE_CHANGES_OFFSET, self.resource_changes);
        for (index, stored) in self.changed_slots.0.iter().enumerate() {
            e.u32(CHANGED_SLOTS_OFFSET + 4 * index, *stored);
        }
        Ok(e.seal(RecordKind::Host, lockspace, sector_size_bytes))
    }

    /// Decode the sector of `expected_host_id`.
    pub fn decode(
        sector: &[u8],
        lockspace: &str,
        expected_host_id: HostId,
    ) -> Result<HostRecord, FormatError> {
        let d = Decoder::open(sector, RecordKind::Host, Some(lockspace))?;
        d.reserved("host reserved", 137..HOST_NAME_OFFSET)?;
        d.reserved("host reserved", RESERVED_OFFSET..RECORD_SIZE_BYTES)?;
        let raw_id = d.u32(HOST_ID_OFFSET);
        if raw_id != expected_host_id.get() {
            return Err(FormatError::BadField {
                field: "host id",
                reason: format!("sector of host {expected_host_id} holds host id {raw_id}"),
            });
        }
        let record = HostRecord {
            host_id: expected_host_id,
            flags: HostFlags::from_bits(d.u32(FLAGS_OFFSET))?,
            generation: d.u64(GENERATION_OFFSET),
            timestamp_ms: d.u64(TIMESTAMP_OFFSET),
            io_timeout_ms: d.u32(IO_TIMEOUT_OFFSET),
            fencer_host_id: d.u32(FENCER_OFFSET),
            fenced_generation: d.u64(FENCED_GENERATION_OFFSET),
            generation_floor: d.u64(GENERATION_FLOOR_OFFSET),
            nonce: d.u64(NONCE_OFFSET),
            capacity: Capacity {
                memory_mib_free: d.u32(MEMORY_FREE_OFFSET),
                memory_mib_total: d.u32(MEMORY_TOTAL_OFFSET),
                vcpus_free: d.u32(VCPUS_FREE_OFFSET),
                vcpus_total: d.u32(VCPUS_TOTAL_OFFSET),
            },
            fence_method: FenceMethod::from_code(d.u8(FENCE_METHOD_OFFSET))?,
            host_name: d.name("host name", HOST_NAME_OFFSET, HOST_NAME_BYTES)?,
            shared_settings: SharedSettings {
                failover_digest: d.u32(FAILOVER_DIGEST_OFFSET),
                cluster_digest: d.u32(CLUSTER_DIGEST_OFFSET),
            },
            resource_changes: d.u64(RESOURCE_CHANGES_OFFSET),
            changed_slots: ChangedSlots(std::array::from_fn(|index| {
                d.u32(CHANGED_SLOTS_OFFSET + 4 * index)
            })),
        };
        if record.generation_floor > record.generation {
            return Err(FormatError::BadField {
                field: "generation floor",
                reason: format!(
                    "{} above generation {}",
                    record.generation_floor, record.generation
                ),
            });
        }
        if record.generation > 0 && record.io_timeout_ms == 0 {
            return Err(FormatError::BadField {
                field: "io timeout",
                reason: "zero in a joined record".to_string(),
            });
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_slots_name_the_latest_changes_or_say_they_cannot() {
        let mut slots = ChangedSlots::default();
        // A blank list (a new incarnation, an old record) names nothing.
        assert_eq!(slots.since(0, 1), None);
        assert_eq!(slots.since(5, 5), Some(Default::default()));
        for count in 1..=20u64 {
            slots.note(count, Some(u32::try_from(count).expect("small") * 10));
        }
        let expected: std::collections::BTreeSet<u32> = [190, 200].into();
        assert_eq!(slots.since(18, 20), Some(expected));
        // 16 back is the oldest it still names; 17 back is too far.
        assert_eq!(slots.since(4, 20).map(|s| s.len()), Some(16));
        assert_eq!(slots.since(3, 20), None);
        // A count that went back (another incarnation) names nothing.
        assert_eq!(slots.since(21, 20), None);
        // A change without a known slot sends readers to a full scan.
        slots.note(21, None);
        assert_eq!(slots.since(19, 21), None);
        assert!(slots.since(18, 20).is_some());
        slots.clear();
        assert_eq!(slots.since(19, 20), None);
    }
}
