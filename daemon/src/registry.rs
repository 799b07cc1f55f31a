//! The VM registry: each HA VM's definition lives in its resource slot's
//! payload on the lease device (the single source of truth), written only
//! by the lease holder. The payload is one JSON document, versioned; the
//! payload layer checksums it (lease::payload), and a document that does
//! not parse or validate is reported, never started.

use crate::placement::{Priority, VmNeed};
use lease::clock::SystemClock;
use lease::disk::Disk;
use lease::op::run;
use lease::{paxos, payload, resource, LeaseError, Lockspace, Owner};
use serde::{Deserialize, Serialize};

/// The document version this build writes and reads.
pub const VM_RECORD_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Restart on another host when its host dies.
    Always,
    /// Leave it stopped when its host dies.
    Never,
}

/// One HA VM as stored in its slot's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub version: u32,
    /// The libvirt domain name; also the resource (lease) name.
    pub name: String,
    pub uuid: String,
    pub priority: Priority,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub desired: DesiredState,
    pub restart: RestartPolicy,
    /// Consecutive failed restarts; at the limit the VM is marked failed.
    #[serde(default)]
    pub failed_restarts: u32,
    /// The host that should start it next (`vm add --host`, `vm migrate`):
    /// first in its restart order while it is live.
    #[serde(default)]
    pub preferred_host: Option<u32>,
    pub domain_xml: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("domain XML: {0}")]
    Xml(String),
    #[error("domain XML has no <{0}>; a HA VM needs a fixed one")]
    Missing(&'static str),
    #[error("VM record: {0}")]
    Record(String),
}

/// What `vm add` takes from a domain's XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: String,
    pub uuid: String,
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// Memory in MiB from libvirt's `<memory unit=...>` (KiB by default).
fn memory_mib(value: &str, unit: Option<&str>) -> Result<u32, RegistryError> {
    let amount: u64 = value
        .trim()
        .parse()
        .map_err(|_| RegistryError::Xml(format!("<memory> {value:?} is not a number")))?;
    let bytes_per_unit: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1024,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(RegistryError::Xml(format!(
                "<memory unit={other:?}> is not a libvirt unit"
            )))
        }
    };
    let mib = amount.saturating_mul(bytes_per_unit).div_ceil(1 << 20);
    u32::try_from(mib)
        .map_err(|_| RegistryError::Xml(format!("<memory> of {mib} MiB is too large")))
}

/// Read name, uuid, memory and vCPUs from a libvirt domain XML.
pub fn domain_facts(xml: &str) -> Result<DomainFacts, RegistryError> {
    let document =
        roxmltree::Document::parse(xml).map_err(|e| RegistryError::Xml(e.to_string()))?;
    let root = document.root_element();
    if root.tag_name().name() != "domain" {
        return Err(RegistryError::Xml(format!(
            "the root element is <{}>, not <domain>",
            root.tag_name().name()
        )));
    }
    let child = |name: &str| root.children().find(|n| n.has_tag_name(name));
    let text = |name: &'static str| -> Result<String, RegistryError> {
        child(name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or(RegistryError::Missing(name))
    };
    let name = text("name")?;
    let uuid = text("uuid")?;
    if uuid.len() != 36 || uuid.chars().filter(|c| *c == '-').count() != 4 {
        return Err(RegistryError::Xml(format!("<uuid> {uuid:?} is not a UUID")));
    }
    let memory = child("memory").ok_or(RegistryError::Missing("memory"))?;
    let memory_mib = memory_mib(memory.text().unwrap_or(""), memory.attribute("unit"))?;
    let vcpus: u32 = text("vcpu")?
        .parse()
        .map_err(|_| RegistryError::Xml("<vcpu> is not a number".to_string()))?;
    if lease::format::check_name("VM name", &name, lease::format::RESOURCE_NAME_BYTES).is_err() {
        return Err(RegistryError::Xml(format!(
            "domain name {name:?} is longer than {} bytes (it names the lease)",
            lease::format::RESOURCE_NAME_BYTES
        )));
    }
    Ok(DomainFacts {
        name,
        uuid: uuid.to_lowercase(),
        memory_mib,
        vcpus,
    })
}

impl VmRecord {
    /// A new record for `xml`.
    pub fn new(xml: &str, priority: Priority) -> Result<VmRecord, RegistryError> {
        let facts = domain_facts(xml)?;
        Ok(VmRecord {
            version: VM_RECORD_VERSION,
            name: facts.name,
            uuid: facts.uuid,
            priority,
            memory_mib: facts.memory_mib,
            vcpus: facts.vcpus,
            desired: DesiredState::Running,
            restart: RestartPolicy::Always,
            failed_restarts: 0,
            preferred_host: None,
            domain_xml: xml.to_string(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode and validate a payload (its checksum was already checked).
    pub fn decode(bytes: &[u8]) -> Result<VmRecord, RegistryError> {
        let record: VmRecord =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::Record(e.to_string()))?;
        if record.version != VM_RECORD_VERSION {
            return Err(RegistryError::Record(format!(
                "version {} (this build reads {VM_RECORD_VERSION})",
                record.version
            )));
        }
        let facts = domain_facts(&record.domain_xml)?;
        if facts.name != record.name || facts.uuid != record.uuid {
            return Err(RegistryError::Record(format!(
                "the record says {:?} {} but its XML says {:?} {}",
                record.name, record.uuid, facts.name, facts.uuid
            )));
        }
        Ok(record)
    }

    pub fn need(&self) -> VmNeed {
        VmNeed {
            name: self.name.clone(),
            priority: self.priority,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
        }
    }
}

/// One VM found on the device.
#[derive(Clone, Debug)]
pub struct VmEntry {
    pub slot: u32,
    pub name: String,
    pub lver: u64,
    /// The incarnation holding its lease, if any.
    pub holder: Option<Owner>,
    /// The record, or why it cannot be used (never started then).
    pub record: Result<VmRecord, String>,
    /// The payload sequence the record was read at.
    pub sequence: u64,
}

impl VmEntry {
    /// A slot whose leader cannot be used: never "no VM", never started.
    fn unusable(slot: u32, error: &LeaseError) -> VmEntry {
        VmEntry {
            slot,
            name: format!("<slot {slot}>"),
            lver: 0,
            holder: None,
            record: Err(format!("resource slot {slot} is unusable: {error}")),
            sequence: 0,
        }
    }
}

/// Every VM on the device: each named slot whose payload carries a VM
/// record. An entry of `cached` (an earlier scan, by slot) is used again
/// when its leader (name, lver, holder) has not changed, saving the payload
/// read.
/// A slot that cannot be read is an error entry, never "no VM".
pub fn scan(
    space: &Lockspace,
    disk: &dyn Disk,
    cached: &std::collections::BTreeMap<u32, VmEntry>,
) -> Result<Vec<VmEntry>, LeaseError> {
    let slots = run(resource::scan(space), disk, &SystemClock)?;
    let mut entries = Vec::new();
    for (slot, leader) in slots {
        let leader = match leader {
            Ok(leader) => leader,
            Err(e) => {
                entries.push(VmEntry::unusable(slot, &e));
                continue;
            }
        };
        if leader.name.is_empty() {
            continue;
        }
        // The holder as its own dblock says (a release marks only that).
        let holder = match run(
            paxos::inquire(space, space.geometry.resource_lease(slot)),
            disk,
            &SystemClock,
        ) {
            Ok(status) => status.holder,
            Err(LeaseError::Disk(e)) => return Err(LeaseError::Disk(e)),
            Err(e) => {
                entries.push(VmEntry {
                    slot,
                    name: leader.name.clone(),
                    lver: leader.lver,
                    holder: leader.held_by(),
                    record: Err(format!("resource slot {slot} ({}): {e}", leader.name)),
                    sequence: 0,
                });
                continue;
            }
        };
        if let Some(entry) = read_entry(space, disk, slot, leader, holder, cached.get(&slot))? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The VMs in `slots` alone, read now (a leader and a dblock each, and
/// the payload of each VM: a holder may rewrite it without moving the
/// leader): for a round that knows which slots changed (the hosts'
/// published lists of changed slots). A slot that holds no VM gives no
/// entry; one that cannot be read gives an error entry.
/// Cost: 2 reads per slot plus one payload read per VM, whatever the
/// number of slots on the device.
pub fn scan_slots(
    space: &Lockspace,
    disk: &dyn Disk,
    slots: &std::collections::BTreeSet<u32>,
) -> Result<Vec<VmEntry>, LeaseError> {
    let mut entries = Vec::new();
    for &slot in slots {
        if slot >= space.geometry.max_resources() {
            continue;
        }
        let status = match run(
            paxos::inquire(space, space.geometry.resource_lease(slot)),
            disk,
            &SystemClock,
        ) {
            Ok(status) => status,
            Err(LeaseError::Disk(e)) => return Err(LeaseError::Disk(e)),
            Err(e) => {
                entries.push(VmEntry::unusable(slot, &e));
                continue;
            }
        };
        if status.leader.name.is_empty() {
            continue;
        }
        if let Some(entry) = read_entry(space, disk, slot, status.leader, status.holder, None)? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The entry of the named slot `slot` whose leader and holder were just
/// read: `cached` (an earlier read of it) while name, lver and holder are
/// unchanged, else the payload read now. None when the slot holds no VM
/// record.
fn read_entry(
    space: &Lockspace,
    disk: &dyn Disk,
    slot: u32,
    leader: lease::format::LeaderRecord,
    holder: Option<Owner>,
    cached: Option<&VmEntry>,
) -> Result<Option<VmEntry>, LeaseError> {
    if let Some(entry) = cached {
        if entry.name == leader.name && entry.lver == leader.lver && entry.holder == holder {
            return Ok(Some(entry.clone()));
        }
    }
    let (record, sequence) = match run(payload::read(space, slot), disk, &SystemClock) {
        // A lease without a payload (or with an emptied one) is not a VM.
        Ok(None) => return Ok(None),
        Ok(Some(p)) if p.data.is_empty() => return Ok(None),
        Ok(Some(p)) => (
            VmRecord::decode(&p.data)
                .map_err(|e| format!("{}: slot {slot} ({}): {e}", space.device, leader.name)),
            p.sequence,
        ),
        Err(LeaseError::Disk(e)) => return Err(LeaseError::Disk(e)),
        Err(e) => (Err(e.to_string()), 0),
    };
    if let Ok(record) = &record {
        if record.name != leader.name {
            return Ok(Some(VmEntry {
                slot,
                name: leader.name.clone(),
                lver: leader.lver,
                holder,
                record: Err(format!(
                    "slot {slot} is named {:?} but its VM record says {:?}",
                    leader.name, record.name
                )),
                sequence,
            }));
        }
    }
    Ok(Some(VmEntry {
        slot,
        name: leader.name,
        lver: leader.lver,
        holder,
        record,
        sequence,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='test'>\n  <name>vm1</name>\n  <uuid>6695EB01-F6A4-8304-79AA-97F2502E193F</uuid>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os><type>hvm</type></os>\n</domain>";

    #[test]
    fn facts_come_from_the_xml() {
        let facts = domain_facts(XML).expect("facts");
        assert_eq!(facts.name, "vm1");
        assert_eq!(facts.uuid, "6695eb01-f6a4-8304-79aa-97f2502e193f");
        assert_eq!(facts.memory_mib, 64);
        assert_eq!(facts.vcpus, 1);
        let kib = XML.replace("<memory unit='MiB'>64</memory>", "<memory>131072</memory>");
        assert_eq!(domain_facts(&kib).expect("facts").memory_mib, 128);
    }

    #[test]
    fn missing_uuid_or_bad_xml_is_refused() {
        let no_uuid = XML.replace("<uuid>6695EB01-F6A4-8304-79AA-97F2502E193F</uuid>", "");
        assert_eq!(domain_facts(&no_uuid), Err(RegistryError::Missing("uuid")));
        assert!(matches!(
            domain_facts("<domain>"),
            Err(RegistryError::Xml(_))
        ));
        assert!(matches!(
            domain_facts("<network/>"),
            Err(RegistryError::Xml(_))
        ));
    }

    #[test]
    fn records_round_trip_and_tampering_is_caught() {
        let record = VmRecord::new(XML, Priority::High).expect("record");
        let bytes = record.encode();
        assert_eq!(VmRecord::decode(&bytes).expect("decode"), record);
        let mut other = record.clone();
        other.name = "vm2".to_string();
        assert!(VmRecord::decode(&other.encode()).is_err());
        assert!(VmRecord::decode(b"{}").is_err());
        let mut newer = record;
        newer.version = 2;
        assert!(VmRecord::decode(&newer.encode()).is_err());
    }
}
