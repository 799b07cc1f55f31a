//! Where everything lives on a lease device.
//!
//! ```text
//! offset 0                 header (1 sector)
//! host area                max_hosts sectors; host N at host_area + (N-1)*S
//! fence area               max_hosts leases; the fence lease of host N is lease N-1
//! resource area            max_resources slots
//! lease   = leader sector + max_hosts dblock sectors (host N's dblock at leader + N*S)
//! slot    = lease + payload_size_bytes
//! ```

use super::FormatError;
use crate::ids::HostId;
use serde::Serialize;

/// Most hosts one lockspace can hold (as sanlock). Bounds every per-host
/// loop and the size of a lease (1 + 2000 sectors).
pub const HOSTS_MAX: u32 = 2000;
/// Most resource slots: bounds the name lookup, which reads every leader.
pub const RESOURCES_MAX: u32 = 65_536;
/// Largest payload area per slot.
pub const PAYLOAD_SIZE_BYTES_MAX: u32 = 16 * 1024 * 1024;
pub const PAYLOAD_SIZE_BYTES_DEFAULT: u32 = 64 * 1024;

/// What a paxos lease guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LeaseKind {
    /// The lease that elects the single fencer of one host.
    Fence,
    /// A resource (an HA VM) slot.
    Resource,
}

impl LeaseKind {
    pub fn code(self) -> u32 {
        match self {
            LeaseKind::Fence => 1,
            LeaseKind::Resource => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<LeaseKind> {
        match code {
            1 => Some(LeaseKind::Fence),
            2 => Some(LeaseKind::Resource),
            _ => None,
        }
    }
}

/// One paxos lease on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseLocation {
    pub kind: LeaseKind,
    /// Resource slot index (0-based), or the fenced host's id for a fence lease.
    pub index: u32,
    pub leader_offset_bytes: u64,
}

/// The validated layout parameters of a device. Construction checks that the
/// whole device size fits in u64, so every offset derived from it does too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    sector_size_bytes: u32,
    max_hosts: u32,
    max_resources: u32,
    payload_size_bytes: u32,
}

impl Geometry {
    pub fn new(
        sector_size_bytes: u32,
        max_hosts: u32,
        max_resources: u32,
        payload_size_bytes: u32,
    ) -> Result<Geometry, FormatError> {
        let bad = |reason: String| Err(FormatError::BadGeometry { reason });
        if sector_size_bytes != 512 && sector_size_bytes != 4096 {
            return bad(format!("sector size {sector_size_bytes} (512 or 4096)"));
        }
        if max_hosts == 0 || max_hosts > HOSTS_MAX {
            return bad(format!("max_hosts {max_hosts} (1..={HOSTS_MAX})"));
        }
        if max_resources > RESOURCES_MAX {
            return bad(format!(
                "max_resources {max_resources} (0..={RESOURCES_MAX})"
            ));
        }
        if payload_size_bytes > PAYLOAD_SIZE_BYTES_MAX
            || payload_size_bytes % sector_size_bytes != 0
        {
            return bad(format!(
                "payload size {payload_size_bytes} (a multiple of {sector_size_bytes}, at most {PAYLOAD_SIZE_BYTES_MAX})"
            ));
        }
        let geometry = Geometry {
            sector_size_bytes,
            max_hosts,
            max_resources,
            payload_size_bytes,
        };
        // Computing the end in checked arithmetic bounds every other offset.
        let sector = u64::from(sector_size_bytes);
        let lease = u64::from(max_hosts)
            .checked_add(1)
            .and_then(|n| n.checked_mul(sector));
        let slot = lease.and_then(|l| l.checked_add(u64::from(payload_size_bytes)));
        let end = lease
            .and_then(|l| l.checked_mul(u64::from(max_hosts)))
            .and_then(|fence| {
                let header_and_hosts = (1 + u64::from(max_hosts)).checked_mul(sector)?;
                let resources = slot?.checked_mul(u64::from(max_resources))?;
                header_and_hosts.checked_add(fence)?.checked_add(resources)
            });
        if end.is_none() {
            return bad("device size overflows 64 bits".to_string());
        }
        Ok(geometry)
    }

    pub fn sector_size_bytes(&self) -> u32 {
        self.sector_size_bytes
    }
    pub fn max_hosts(&self) -> u32 {
        self.max_hosts
    }
    pub fn max_resources(&self) -> u32 {
        self.max_resources
    }
    pub fn payload_size_bytes(&self) -> u32 {
        self.payload_size_bytes
    }

    fn sector(&self) -> u64 {
        u64::from(self.sector_size_bytes)
    }

    pub fn host_area_offset_bytes(&self) -> u64 {
        self.sector()
    }

    pub fn host_area_size_bytes(&self) -> u64 {
        u64::from(self.max_hosts) * self.sector()
    }

    pub fn contains_host(&self, host_id: HostId) -> bool {
        host_id.get() <= self.max_hosts
    }

    /// Offset of a host's sector. The caller checked `contains_host`.
    pub fn host_offset_bytes(&self, host_id: HostId) -> u64 {
        assert!(
            self.contains_host(host_id),
            "host id {host_id} beyond max_hosts {}",
            self.max_hosts
        );
        self.host_area_offset_bytes() + host_id.index() * self.sector()
    }

    /// Leader sector + one dblock sector per host.
    pub fn lease_size_bytes(&self) -> u64 {
        (1 + u64::from(self.max_hosts)) * self.sector()
    }

    pub fn fence_area_offset_bytes(&self) -> u64 {
        self.host_area_offset_bytes() + self.host_area_size_bytes()
    }

    pub fn fence_lease(&self, victim: HostId) -> LeaseLocation {
        assert!(
            self.contains_host(victim),
            "host id {victim} beyond max_hosts {}",
            self.max_hosts
        );
        LeaseLocation {
            kind: LeaseKind::Fence,
            index: victim.get(),
            leader_offset_bytes: self.fence_area_offset_bytes()
                + victim.index() * self.lease_size_bytes(),
        }
    }

    pub fn resource_area_offset_bytes(&self) -> u64 {
        self.fence_area_offset_bytes() + u64::from(self.max_hosts) * self.lease_size_bytes()
    }

    pub fn resource_slot_size_bytes(&self) -> u64 {
        self.lease_size_bytes() + u64::from(self.payload_size_bytes)
    }

    /// The lease of resource slot `slot` (0-based). The caller checked the range.
    pub fn resource_lease(&self, slot: u32) -> LeaseLocation {
        assert!(
            slot < self.max_resources,
            "slot {slot} beyond max_resources {}",
            self.max_resources
        );
        LeaseLocation {
            kind: LeaseKind::Resource,
            index: slot,
            leader_offset_bytes: self.resource_area_offset_bytes()
                + u64::from(slot) * self.resource_slot_size_bytes(),
        }
    }

    pub fn payload_offset_bytes(&self, slot: u32) -> u64 {
        self.resource_lease(slot).leader_offset_bytes + self.lease_size_bytes()
    }

    /// The dblock of `host_id` in the lease at `location`.
    pub fn dblock_offset_bytes(&self, location: &LeaseLocation, host_id: HostId) -> u64 {
        assert!(self.contains_host(host_id));
        location.leader_offset_bytes + (1 + host_id.index()) * self.sector()
    }

    /// Bytes the lease device needs.
    pub fn device_size_bytes(&self) -> u64 {
        self.resource_area_offset_bytes()
            + u64::from(self.max_resources) * self.resource_slot_size_bytes()
    }
}
