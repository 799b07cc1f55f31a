//! The on-disk format. docs/format.md documents every byte; the offsets
//! there are the constants here.
//!
//! Every record is 512 bytes at the start of its own sector (the rest of a
//! 4096-byte sector is written as zeros and not read). Every record starts
//! with the same 64-byte prefix: magic, format version, CRC32, lockspace name.

mod dblock;
mod header;
mod host;
mod layout;
mod leader;
mod payload;
mod record;

pub use dblock::{DblockRecord, Proposal};
pub use header::HeaderRecord;
pub use host::{
    Capacity, ChangedSlots, FenceMethod, HostFlags, HostRecord, SharedSettings, CHANGED_SLOTS_MAX,
};
pub use layout::{
    Geometry, LeaseKind, LeaseLocation, HOSTS_MAX, PAYLOAD_SIZE_BYTES_DEFAULT, RESOURCES_MAX,
};
pub use leader::{LeaderFlags, LeaderRecord};
pub use payload::PayloadHeader;
pub use record::{
    check_name, RecordKind, FORMAT_VERSION, HOST_NAME_BYTES, LOCKSPACE_NAME_BYTES,
    RECORD_SIZE_BYTES, RESOURCE_NAME_BYTES,
};

/// Why a sector does not hold the record that belongs there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// the sector is all zeros: never written, or wiped
    #[error("sector is blank (all zeros): not a leasehold record")]
    Blank,
    /// the magic is not the expected record kind
    #[error("bad magic {found:02x?}: expected a {expected} record")]
    BadMagic {
        expected: RecordKind,
        found: [u8; 4],
    },
    /// the record was written by a newer or unknown format version
    #[error("format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    /// the checksum does not match the contents
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    /// the record belongs to another lockspace
    #[error("record belongs to lockspace {found:?}, not {expected:?}")]
    ForeignLockspace { expected: String, found: String },
    /// a field holds a value the format does not allow
    #[error("field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    /// a name is not valid UTF-8, too long, or contains NUL
    #[error("invalid name for {field}: {reason}")]
    BadName { field: &'static str, reason: String },
    /// the layout parameters are out of range or overflow
    #[error("invalid geometry: {reason}")]
    BadGeometry { reason: String },
}
