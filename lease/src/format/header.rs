//! The header: sector 0, the lockspace's name and layout.

use super::record::{Decoder, Encoder, BODY_OFFSET, LOCKSPACE_NAME_BYTES};
use super::{check_name, FormatError, Geometry, RecordKind, RECORD_SIZE_BYTES};
use serde::Serialize;

const SECTOR_SIZE_OFFSET: usize = BODY_OFFSET; // u32
const MAX_HOSTS_OFFSET: usize = 68; // u32
const MAX_RESOURCES_OFFSET: usize = 72; // u32
const PAYLOAD_SIZE_OFFSET: usize = 76; // u32
const IO_TIMEOUT_OFFSET: usize = 80; // u32
const FLAGS_OFFSET: usize = 84; // u32
/// Header flag: every name on this device was claimed in the first free
/// slot of its probe sequence (lease::resource), so a name's slots all lie
/// before the first never-owned slot of that sequence.
const FLAG_NAMES_PROBED: u32 = 1;
const HOST_AREA_OFFSET: usize = 88; // u64
const FENCE_AREA_OFFSET: usize = 96; // u64
const RESOURCE_AREA_OFFSET: usize = 104; // u64
const LEASE_SIZE_OFFSET: usize = 112; // u64
const SLOT_SIZE_OFFSET: usize = 120; // u64
const DEVICE_SIZE_OFFSET: usize = 128; // u64
const RESERVED_OFFSET: usize = 136;

/// The header record. The area offsets are stored for readers of raw dumps
/// and checked against the ones derived from the parameters on every read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderRecord {
    pub lockspace: String,
    pub geometry: Geometry,
    /// The io_timeout hosts use unless configured otherwise.
    pub io_timeout_ms: u32,
    /// Names are placed along their probe sequence (header flag bit 0); set
    /// by every `format` of this build. Without it a claim scans every slot.
    pub names_probed: bool,
}

impl HeaderRecord {
    pub fn new(
        lockspace: &str,
        geometry: Geometry,
        io_timeout_ms: u32,
    ) -> Result<HeaderRecord, FormatError> {
        check_name("lockspace", lockspace, LOCKSPACE_NAME_BYTES)?;
        if lockspace.is_empty() {
            return Err(FormatError::BadName {
                field: "lockspace",
                reason: "empty".to_string(),
            });
        }
        Ok(HeaderRecord {
            lockspace: lockspace.to_string(),
            geometry,
            io_timeout_ms,
            names_probed: true,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut e = Encoder::new();
        e.u32(SECTOR_SIZE_OFFSET, g.sector_size_bytes());
        e.u32(MAX_HOSTS_OFFSET, g.max_hosts());
        e.u32(MAX_RESOURCES_OFFSET, g.max_resources());
        e.u32(PAYLOAD_SIZE_OFFSET, g.payload_size_bytes());
        e.u32(IO_TIMEOUT_OFFSET, self.io_timeout_ms);
        if self.names_probed {
            e.u32(FLAGS_OFFSET, FLAG_NAMES_PROBED);
        }
        e.u64(HOST_AREA_OFFSET, g.host_area_offset_bytes());
        e.u64(FENCE_AREA_OFFSET, g.fence_area_offset_bytes());
        e.u64(RESOURCE_AREA_OFFSET, g.resource_area_offset_bytes());
        e.u64(LEASE_SIZE_OFFSET, g.lease_size_bytes());
        e.u64(SLOT_SIZE_OFFSET, g.resource_slot_size_bytes());
        e.u64(DEVICE_SIZE_OFFSET, g.device_size_bytes());
        e.seal(RecordKind::Header, &self.lockspace, g.sector_size_bytes())
    }

    /// Decode sector 0. `lockspace` is checked when given.
    pub fn decode(sector: &[u8], lockspace: Option<&str>) -> Result<HeaderRecord, FormatError> {
        let d = Decoder::open(sector, RecordKind::Header, lockspace)?;
        let flags = d.u32(FLAGS_OFFSET);
        if flags & !FLAG_NAMES_PROBED != 0 {
            return Err(FormatError::BadField {
                field: "header flags",
                reason: format!("unknown bits {flags:#x} (written by a newer build?)"),
            });
        }
        d.reserved("header reserved", RESERVED_OFFSET..RECORD_SIZE_BYTES)?;
        let geometry = Geometry::new(
            d.u32(SECTOR_SIZE_OFFSET),
            d.u32(MAX_HOSTS_OFFSET),
            d.u32(MAX_RESOURCES_OFFSET),
            d.u32(PAYLOAD_SIZE_OFFSET),
        )?;
        let stored = [
            (
                "host_area_offset",
                d.u64(HOST_AREA_OFFSET),
                geometry.host_area_offset_bytes(),
            ),
            (
                "fence_area_offset",
                d.u64(FENCE_AREA_OFFSET),
                geometry.fence_area_offset_bytes(),
            ),
            (
                "resource_area_offset",
                d.u64(RESOURCE_AREA_OFFSET),
                geometry.resource_area_offset_bytes(),
            ),
            (
                "lease_size",
                d.u64(LEASE_SIZE_OFFSET),
                geometry.lease_size_bytes(),
            ),
            (
                "slot_size",
                d.u64(SLOT_SIZE_OFFSET),
                geometry.resource_slot_size_bytes(),
            ),
            (
                "device_size",
                d.u64(DEVICE_SIZE_OFFSET),
                geometry.device_size_bytes(),
            ),
        ];
        for (field, found, derived) in stored {
            if found != derived {
                return Err(FormatError::BadField {
                    field,
                    reason: format!("stored {found}, derived from the parameters {derived}"),
                });
            }
        }
        let lockspace = d.lockspace()?;
        if lockspace.is_empty() {
            return Err(FormatError::BadName {
                field: "lockspace",
                reason: "empty".to_string(),
            });
        }
        Ok(HeaderRecord {
            lockspace,
            geometry,
            io_timeout_ms: d.u32(IO_TIMEOUT_OFFSET),
            names_probed: flags & FLAG_NAMES_PROBED != 0,
        })
    }
}
