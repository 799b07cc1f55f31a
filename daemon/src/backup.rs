//! The registry backup: `leasehold vm export` writes every HA VM's record
//! to one JSON document, `leasehold vm import` writes them back (after a
//! mistaken `format`, or onto a new device). The document carries a CRC32
//! of its records so that a file damaged or edited by hand is refused
//! whole rather than restored in part.

use crate::registry::VmRecord;
use serde::{Deserialize, Serialize};

/// What `format` says in every export.
pub const EXPORT_FORMAT: &str = "leasehold-registry";
/// The layout of this document (not of the records inside).
pub const EXPORT_VERSION: u32 = 1;

/// `vm export`'s document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryExport {
    pub format: String,
    pub version: u32,
    /// The lockspace the records were read from.
    pub lockspace: String,
    /// Every usable record, in slot order.
    pub vms: Vec<VmRecord>,
    /// Slots whose record could not be read or used, with why: not
    /// exported, listed so that nobody believes the backup is whole.
    pub unusable: Vec<String>,
    /// CRC32 of the JSON of `vms` (compact, as serde_json writes it).
    pub checksum: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a leasehold registry export (format {0:?})")]
    NotAnExport(String),
    #[error("registry export version {0}; this build reads version {EXPORT_VERSION}")]
    Version(u32),
    #[error("the records do not match the export's checksum ({found:08x}, expected {expected:08x}): the file was damaged or edited; nothing imported")]
    Checksum { expected: u32, found: u32 },
}

fn checksum_of(vms: &[VmRecord]) -> u32 {
    // Records are strings and numbers: serialising them cannot fail.
    crc32fast::hash(&serde_json::to_vec(vms).unwrap_or_default())
}

impl RegistryExport {
    pub fn new(lockspace: &str, vms: Vec<VmRecord>, unusable: Vec<String>) -> RegistryExport {
        RegistryExport {
            format: EXPORT_FORMAT.to_string(),
            version: EXPORT_VERSION,
            lockspace: lockspace.to_string(),
            checksum: checksum_of(&vms),
            vms,
            unusable,
        }
    }

    /// Is this an intact export this build can import?
    pub fn verify(&self) -> Result<(), BackupError> {
        if self.format != EXPORT_FORMAT {
            return Err(BackupError::NotAnExport(self.format.clone()));
        }
        if self.version != EXPORT_VERSION {
            return Err(BackupError::Version(self.version));
        }
        let found = checksum_of(&self.vms);
        if found != self.checksum {
            return Err(BackupError::Checksum {
                expected: self.checksum,
                found,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Priority;

    fn record(name: &str, uuid: &str) -> VmRecord {
        let xml = format!(
            "<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
        );
        VmRecord::new(&xml, Priority::High).expect("record")
    }

    #[test]
    fn an_export_verifies_and_any_change_to_a_record_is_caught() {
        let export = RegistryExport::new(
            "prod",
            vec![
                record("web", "6695eb01-f6a4-8304-79aa-97f2502e1001"),
                record("db", "6695eb01-f6a4-8304-79aa-97f2502e1002"),
            ],
            Vec::new(),
        );
        assert_eq!(export.verify(), Ok(()));
        let text = serde_json::to_string_pretty(&export).expect("json");
        let back: RegistryExport = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.verify(), Ok(()));
        let mut edited = back.clone();
        edited.vms[1].memory_mib = 65;
        assert!(matches!(edited.verify(), Err(BackupError::Checksum { .. })));
        let mut dropped = back.clone();
        dropped.vms.pop();
        assert!(matches!(
            dropped.verify(),
            Err(BackupError::Checksum { .. })
        ));
        let mut other = back;
        other.format = "something".to_string();
        assert!(matches!(other.verify(), Err(BackupError::NotAnExport(_))));
    }
}
