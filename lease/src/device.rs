//! Whole-device operations: format, and reading everything for `dump`.

use crate::clock::SystemClock;
use crate::disk::Disk;
use crate::error::LeaseError;
use crate::format::{
    DblockRecord, Geometry, HeaderRecord, HostRecord, LeaderRecord, LeaseLocation,
};
use crate::ids::{HostId, Owner};
use crate::lockspace::Lockspace;
use crate::op::run;
use crate::paxos;
use serde::Serialize;

/// What `format` writes.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    pub lockspace: String,
    pub geometry: Geometry,
    pub io_timeout_ms: u32,
}

fn invalid(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Invalid(e.to_string())
}

/// Is there a leasehold header at sector 0 (of any lockspace)?
pub fn existing_header(disk: &dyn Disk) -> Result<Option<HeaderRecord>, LeaseError> {
    let mut sector = vec![0; disk.sector_size_bytes() as usize];
    disk.read(0, &mut sector)?;
    Ok(HeaderRecord::decode(&sector, None).ok())
}

/// Write a fresh lockspace: every host record, every leader and dblock, and
/// zeroed payloads; the header last, so an interrupted format leaves a device
/// that does not open.
pub fn format(disk: &dyn Disk, options: &FormatOptions) -> Result<Lockspace, LeaseError> {
    let header = HeaderRecord::new(&options.lockspace, options.geometry, options.io_timeout_ms)
        .map_err(invalid)?;
    let geometry = options.geometry;
    if geometry.sector_size_bytes() != disk.sector_size_bytes() {
        return Err(LeaseError::Invalid(format!(
            "{}: the device does {}-byte I/O but {}-byte sectors were asked for",
            disk.name(),
            disk.sector_size_bytes(),
            geometry.sector_size_bytes()
        )));
    }
    if disk.size_bytes() < geometry.device_size_bytes() {
        return Err(LeaseError::Invalid(format!(
            "{}: this layout needs {} bytes, the device has {} (use a larger device, or fewer hosts, slots or payload bytes)",
            disk.name(),
            geometry.device_size_bytes(),
            disk.size_bytes()
        )));
    }
    let lockspace = &options.lockspace;
    let sector = geometry.sector_size_bytes();
    // Invalidate the old header first: a half-written device must not open.
    disk.write(0, &vec![0; sector as usize])?;
    let mut hosts =
        Vec::with_capacity(usize::try_from(geometry.host_area_size_bytes()).map_err(invalid)?);
    for raw in 1..=geometry.max_hosts() {
        let host_id = HostId::new(raw).ok_or_else(|| invalid("host id 0"))?;
        hosts.extend(
            HostRecord::unused(host_id)
                .encode(lockspace, sector)
                .map_err(invalid)?,
        );
    }
    disk.write(geometry.host_area_offset_bytes(), &hosts)?;
    let dblock = DblockRecord::unused()
        .encode(lockspace, sector)
        .map_err(invalid)?;
    let mut image = vec![0; usize::try_from(geometry.lease_size_bytes()).map_err(invalid)?];
    for chunk in image.chunks_mut(sector as usize).skip(1) {
        chunk.copy_from_slice(&dblock);
    }
    let mut write_lease = |location: LeaseLocation, with_payload: bool| -> Result<(), LeaseError> {
        let leader = LeaderRecord::unused(&location, geometry.max_hosts())
            .encode(lockspace, sector)
            .map_err(invalid)?;
        image[..sector as usize].copy_from_slice(&leader);
        disk.write(location.leader_offset_bytes, &image)?;
        if with_payload && geometry.payload_size_bytes() > 0 {
            let payload_offset = location.leader_offset_bytes + geometry.lease_size_bytes();
            disk.write(
                payload_offset,
                &vec![0; geometry.payload_size_bytes() as usize],
            )?;
        }
        Ok(())
    };
    for raw in 1..=geometry.max_hosts() {
        let host_id = HostId::new(raw).ok_or_else(|| invalid("host id 0"))?;
        write_lease(geometry.fence_lease(host_id), false)?;
    }
    for slot in 0..geometry.max_resources() {
        write_lease(geometry.resource_lease(slot), true)?;
    }
    disk.write(0, &header.encode())?;
    Lockspace::from_header(disk, &header)
}

/// One host sector as dumped.
#[derive(Clone, Debug, Serialize)]
pub struct HostEntry {
    pub host_id: HostId,
    pub offset_bytes: u64,
    pub record: Option<HostRecord>,
    /// Why the sector is unusable, if it is.
    pub error: Option<String>,
}

/// One lease leader as dumped.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseEntry {
    pub location: LeaseLocation,
    pub leader: Option<LeaderRecord>,
    /// Who holds it now: the leader's owner unless its dblock says it let go.
    pub holder: Option<Owner>,
    pub error: Option<String>,
}

/// Everything `leasehold dump` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Dump {
    pub device: String,
    pub header: HeaderRecord,
    pub hosts: Vec<HostEntry>,
    pub fence_leases: Vec<LeaseEntry>,
    pub resources: Vec<LeaseEntry>,
}

/// Read the header, the host area (one read), and every leader.
pub fn dump(disk: &dyn Disk) -> Result<Dump, LeaseError> {
    let space = Lockspace::open(disk, None)?;
    let geometry = space.geometry;
    let mut area = vec![0; usize::try_from(geometry.host_area_size_bytes()).map_err(invalid)?];
    disk.read(geometry.host_area_offset_bytes(), &mut area)?;
    let hosts = space
        .decode_host_area(&area)
        .into_iter()
        .map(|(host_id, decoded)| {
            let (record, error) = split(decoded);
            HostEntry {
                host_id,
                offset_bytes: geometry.host_offset_bytes(host_id),
                record,
                error,
            }
        })
        .collect();
    let read_leader = |location: LeaseLocation| -> LeaseEntry {
        // The leader, and the owner's dblock for whether it released.
        match run(paxos::inquire(&space, location), disk, &SystemClock) {
            Ok(status) => LeaseEntry {
                location,
                holder: status.holder,
                leader: Some(status.leader),
                error: None,
            },
            Err(e) => LeaseEntry {
                location,
                leader: None,
                holder: None,
                error: Some(e.to_string()),
            },
        }
    };
    let fence_leases = (1..=geometry.max_hosts())
        .filter_map(HostId::new)
        .map(|host_id| read_leader(geometry.fence_lease(host_id)))
        .collect();
    let resources = (0..geometry.max_resources())
        .map(|slot| read_leader(geometry.resource_lease(slot)))
        .collect();
    let header = HeaderRecord {
        lockspace: space.name.clone(),
        geometry,
        io_timeout_ms: space.io_timeout_ms,
        names_probed: space.names_probed,
    };
    Ok(Dump {
        device: disk.name().to_string(),
        header,
        hosts,
        fence_leases,
        resources,
    })
}

fn split<T>(result: Result<T, LeaseError>) -> (Option<T>, Option<String>) {
    match result {
        Ok(value) => (Some(value), None),
        Err(e) => (None, Some(e.to_string())),
    }
}
