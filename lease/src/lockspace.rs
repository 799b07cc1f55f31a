//! An opened lockspace: which device, which lockspace name, which layout;
//! and the decoding of the sectors read from it.

use crate::disk::Disk;
use crate::error::LeaseError;
use crate::format::{
    DblockRecord, FormatError, Geometry, HeaderRecord, HostRecord, LeaderRecord, LeaseLocation,
};
use crate::ids::HostId;
use crate::op::{Operation, Port};

/// Everything an operation needs to know about the device it works on.
/// Cheap to clone; operations own a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lockspace {
    /// Device name for messages.
    pub device: String,
    pub name: String,
    pub geometry: Geometry,
    /// The io_timeout in the header (the default for hosts).
    pub io_timeout_ms: u32,
    /// Names lie along their probe sequences (the header's flag): name
    /// scans stop at the first never-owned slot of the sequence.
    pub names_probed: bool,
    /// A deliberately unsafe variant to run (simulator builds only).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<crate::planted::PlantedBug>,
}

impl Lockspace {
    /// Read and check the header of `disk`; with `expected`, the lockspace
    /// name must match.
    pub fn open(disk: &dyn Disk, expected: Option<&str>) -> Result<Lockspace, LeaseError> {
        let mut sector = vec![0; disk.sector_size_bytes() as usize];
        disk.read(0, &mut sector)?;
        let header =
            HeaderRecord::decode(&sector, expected).map_err(|error| LeaseError::Corrupt {
                device: disk.name().to_string(),
                offset_bytes: 0,
                what: "lockspace header".to_string(),
                error,
            })?;
        Lockspace::from_header(disk, &header)
    }

    /// Check that `header` fits `disk` and build the handle.
    pub fn from_header(disk: &dyn Disk, header: &HeaderRecord) -> Result<Lockspace, LeaseError> {
        let geometry = header.geometry;
        if geometry.sector_size_bytes() != disk.sector_size_bytes() {
            return Err(LeaseError::Invalid(format!(
                "{}: formatted with {}-byte sectors but the device does {}-byte I/O; open it with --sector-size {} (on a block device, use one with that logical sector size)",
                disk.name(),
                geometry.sector_size_bytes(),
                disk.sector_size_bytes(),
                geometry.sector_size_bytes()
            )));
        }
        if geometry.device_size_bytes() > disk.size_bytes() {
            return Err(LeaseError::Invalid(format!(
                "{}: the lockspace needs {} bytes but the device has {}; was it truncated?",
                disk.name(),
                geometry.device_size_bytes(),
                disk.size_bytes()
            )));
        }
        Ok(Lockspace {
            device: disk.name().to_string(),
            name: header.lockspace.clone(),
            geometry,
            io_timeout_ms: header.io_timeout_ms,
            names_probed: header.names_probed,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        })
    }

    /// Is this deliberately unsafe variant switched on? Always false unless
    /// built with the `planted-bugs` feature.
    #[inline]
    pub(crate) fn planted(&self, bug: crate::planted::PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted_bug == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }

    pub(crate) fn corrupt(
        &self,
        offset_bytes: u64,
        what: String,
        error: FormatError,
    ) -> LeaseError {
        LeaseError::Corrupt {
            device: self.device.clone(),
            offset_bytes,
            what,
            error,
        }
    }

    /// Read and decode one host's record, as an operation.
    pub fn read_host_op(&self, host_id: HostId) -> Operation<Result<HostRecord, LeaseError>> {
        let space = self.clone();
        Operation::new(move |port| async move { space.read_host(&port, host_id).await })
    }

    pub fn sector_size(&self) -> u64 {
        u64::from(self.geometry.sector_size_bytes())
    }

    /// Check a host id from input against the layout.
    pub fn check_host_id(&self, raw: u32) -> Result<HostId, LeaseError> {
        match HostId::new(raw) {
            Some(host_id) if self.geometry.contains_host(host_id) => Ok(host_id),
            _ => Err(LeaseError::Invalid(format!(
                "host id {raw} is outside 1..={} of lockspace {} on {}",
                self.geometry.max_hosts(),
                self.name,
                self.device
            ))),
        }
    }

    /// Decode the sector of `host_id`.
    pub fn decode_host(&self, host_id: HostId, sector: &[u8]) -> Result<HostRecord, LeaseError> {
        HostRecord::decode(sector, &self.name, host_id).map_err(|source| {
            self.corrupt(
                self.geometry.host_offset_bytes(host_id),
                format!("host record of host {host_id}"),
                source,
            )
        })
    }

    /// Decode every host record in a read of the whole host area.
    pub fn decode_host_area(&self, area: &[u8]) -> Vec<(HostId, Result<HostRecord, LeaseError>)> {
        let sector = self.geometry.sector_size_bytes() as usize;
        area.chunks(sector)
            .zip(1..=self.geometry.max_hosts())
            .filter_map(|(bytes, raw)| HostId::new(raw).map(|id| (id, self.decode_host(id, bytes))))
            .collect()
    }

    pub(crate) fn lease_label(&self, location: &LeaseLocation, name: &str) -> String {
        match location.kind {
            crate::format::LeaseKind::Fence => format!("fence lease of host {}", location.index),
            crate::format::LeaseKind::Resource if name.is_empty() => {
                format!("resource slot {}", location.index)
            }
            crate::format::LeaseKind::Resource => {
                format!("resource {name:?} (slot {})", location.index)
            }
        }
    }

    pub(crate) fn decode_leader(
        &self,
        location: &LeaseLocation,
        sector: &[u8],
    ) -> Result<LeaderRecord, LeaseError> {
        LeaderRecord::decode(sector, &self.name, location, self.geometry.max_hosts()).map_err(
            |source| {
                self.corrupt(
                    location.leader_offset_bytes,
                    format!("leader of {}", self.lease_label(location, "")),
                    source,
                )
            },
        )
    }

    pub(crate) async fn read_host(
        &self,
        port: &Port,
        host_id: HostId,
    ) -> Result<HostRecord, LeaseError> {
        let bytes = port
            .read(self.geometry.host_offset_bytes(host_id), self.sector_size())
            .await?;
        self.decode_host(host_id, &bytes)
    }

    /// Write a host record into its own sector.
    pub(crate) async fn write_host(
        &self,
        port: &Port,
        record: &HostRecord,
    ) -> Result<(), LeaseError> {
        let encoded = record
            .encode(&self.name, self.geometry.sector_size_bytes())
            .map_err(|e| LeaseError::Invalid(e.to_string()))?;
        port.write(self.geometry.host_offset_bytes(record.host_id), encoded)
            .await?;
        Ok(())
    }

    pub(crate) async fn read_leader(
        &self,
        port: &Port,
        location: &LeaseLocation,
    ) -> Result<LeaderRecord, LeaseError> {
        let bytes = port
            .read(location.leader_offset_bytes, self.sector_size())
            .await?;
        self.decode_leader(location, &bytes)
    }

    /// Read a lease's leader and all its dblocks in one contiguous read and
    /// return the dblocks. Any unusable sector, the leader included, fails
    /// the whole read: paxos must see every dblock.
    pub(crate) async fn read_dblocks(
        &self,
        port: &Port,
        location: &LeaseLocation,
    ) -> Result<Vec<DblockRecord>, LeaseError> {
        Ok(self.read_lease(port, location).await?.1)
    }

    /// A lease's leader and all its dblocks, in one contiguous read of
    /// `lease_size_bytes`. Any unusable sector fails the whole read.
    pub(crate) async fn read_lease(
        &self,
        port: &Port,
        location: &LeaseLocation,
    ) -> Result<(LeaderRecord, Vec<DblockRecord>), LeaseError> {
        let bytes = port
            .read(
                location.leader_offset_bytes,
                self.geometry.lease_size_bytes(),
            )
            .await?;
        let sector = self.geometry.sector_size_bytes() as usize;
        let mut sectors = bytes.chunks(sector);
        let leader = self.decode_leader(location, sectors.next().unwrap_or(&[]))?;
        let mut dblocks = Vec::with_capacity(self.geometry.max_hosts() as usize);
        for (raw, bytes) in (1..=self.geometry.max_hosts()).zip(sectors) {
            let host_id =
                HostId::new(raw).ok_or_else(|| LeaseError::Invalid("host id 0".to_string()))?;
            let dblock = DblockRecord::decode(bytes, &self.name, self.geometry.max_hosts())
                .map_err(|source| {
                    self.corrupt(
                        self.geometry.dblock_offset_bytes(location, host_id),
                        format!(
                            "dblock of host {host_id} in {}",
                            self.lease_label(location, &leader.name)
                        ),
                        source,
                    )
                })?;
            dblocks.push(dblock);
        }
        assert_eq!(dblocks.len(), self.geometry.max_hosts() as usize);
        Ok((leader, dblocks))
    }
}
