//! The control-socket protocol: one JSON object per line each way. A client
//! sends a [`Request`]; the daemon answers every line with one [`Reply`],
//! in order, and keeps the connection open. docs/operations.md lists every
//! request with an example.

use crate::placement::{Headroom, Priority};
use crate::registry::{DesiredState, RestartPolicy};
use serde::{Deserialize, Serialize};

/// Longest request line accepted; a longer one is answered with an error
/// and the rest of that line is discarded.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// What a client asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// This host, each lockspace and the resources held.
    Status {},
    /// Every host of a lockspace as seen from here.
    Hosts {
        #[serde(default)]
        lockspace: Option<String>,
    },
    /// The newest events of the event log.
    Events {
        #[serde(default)]
        count: Option<usize>,
    },
    /// Register process `pid` as a lease holder: its leases are released
    /// when it exits, and it is killed if this host loses its lockspace.
    /// With `bind`, the registration also lives only as long as this
    /// connection: the process inherits the socket (libvirt's lock plugin
    /// hands it to QEMU), and when it closes, the holder is killed if it
    /// still runs and its leases are released.
    Register {
        pid: i32,
        #[serde(default)]
        bind: bool,
    },
    /// Forget a registered process, releasing its leases.
    Unregister { pid: i32 },
    /// Acquire resource lease `resource` for registered process `pid`.
    /// With `vm` (a domain UUID; the lock plugin sends it for QEMU), a
    /// lease this daemon already holds for that HA VM is granted without
    /// touching the device: the process is attached to the daemon's hold,
    /// which it does not own (its release or exit leaves the lease held).
    Acquire {
        #[serde(default)]
        lockspace: Option<String>,
        resource: String,
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    /// Release a resource lease held for `pid`.
    Release {
        #[serde(default)]
        lockspace: Option<String>,
        resource: String,
        pid: i32,
    },
    /// Who holds `resource`, read from the device now.
    Inquire {
        #[serde(default)]
        lockspace: Option<String>,
        resource: String,
    },
    /// Join another lockspace on another device with this host's id.
    AddLockspace {
        name: String,
        device: String,
        #[serde(default)]
        io_timeout_ms: Option<u32>,
    },
    /// Leave a lockspace added with `add_lockspace`; refused while leases
    /// are held in it.
    RemoveLockspace { name: String },
    /// Operate a cluster host's fence device: status, off (power off,
    /// confirm, write the FENCED mark), on; or confirm (an operator's word
    /// that the host is off: write the FENCED mark with method manual).
    Fence { host: String, action: FenceAction },
    /// Every HA VM on the lease device, where it runs, and the headroom.
    VmList {},
    /// The HA VM of the configured lockspace with this domain UUID or
    /// name, if any, read from the device now (answered by the control
    /// socket itself, not the VM manager). The lock plugin asks before it
    /// lets libvirt start a domain.
    VmLookup {
        #[serde(default)]
        uuid: Option<String>,
        #[serde(default)]
        name: Option<String>,
    },
    /// Register a HA VM from its libvirt domain XML and start it on `host`
    /// (this host when None). Admission control may refuse; `force`
    /// overrides it.
    VmAdd {
        xml: String,
        #[serde(default)]
        priority: Option<Priority>,
        #[serde(default)]
        restart: Option<RestartPolicy>,
        #[serde(default)]
        host: Option<String>,
        #[serde(default)]
        force: bool,
    },
    /// Want a stopped (or failed) VM running again, on `host` or here.
    VmStart {
        vm: String,
        #[serde(default)]
        host: Option<String>,
    },
    /// Stop a VM running here and keep it stopped.
    VmStop { vm: String },
    /// Cold migration of a VM running here: stop it, hand it to `host`.
    VmMigrate { vm: String, host: String },
    /// Forget a stopped VM: its record and lease slot are freed.
    VmRemove { vm: String },
    /// Every usable VM record, for a backup
    /// ([`crate::backup::RegistryExport`]).
    VmExport {},
    /// Write one exported record back into a free slot (the VM is then
    /// handled like any other: restarted by the plan if wanted running).
    /// A VM registered under its name or UUID already is refused.
    VmImport { record: crate::registry::VmRecord },
}

/// One HA VM as `vm_list` reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStatus {
    pub name: String,
    pub uuid: Option<String>,
    pub slot: u32,
    pub lver: u64,
    /// running / stopped / waiting (for a host) / failed / unusable
    pub state: String,
    pub priority: Option<Priority>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub desired: Option<DesiredState>,
    pub restart: Option<RestartPolicy>,
    pub failed_restarts: u32,
    pub preferred_host: Option<u32>,
    /// The incarnation holding its lease.
    pub owner_host_id: Option<u32>,
    pub owner_host_name: Option<String>,
    pub owner_generation: Option<u64>,
    /// Why the record cannot be used, when unusable.
    pub error: Option<String>,
}

/// `vm_list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmListReply {
    pub vms: Vec<VmStatus>,
    pub headroom: Option<Headroom>,
}

/// `vm_lookup`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmLookupReply {
    /// None: no HA VM has that UUID or name.
    pub vm: Option<HaVm>,
}

/// A HA VM found by `vm_lookup`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HaVm {
    pub lockspace: String,
    /// Its name, which is also its lease's name.
    pub name: String,
    /// None when its record cannot be used (`error` says why).
    pub uuid: Option<String>,
    pub slot: u32,
    /// The incarnation holding its lease.
    pub holder_host_id: Option<u32>,
    pub holder_host_name: Option<String>,
    pub holder_generation: Option<u64>,
    /// This daemon holds its lease for this VM (HeldBy::Vm): it runs, or
    /// is being started, here.
    pub held_here: bool,
    pub error: Option<String>,
}

/// What a `vm_*` request did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmActionReply {
    pub vm: String,
    pub message: String,
    /// Set when admission control was overridden with `force`.
    #[serde(default)]
    pub warning: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FenceAction {
    Status,
    Off,
    On,
    Confirm,
}

/// `fence`: what was done.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FenceReply {
    pub host_id: u32,
    pub host: String,
    pub device: String,
    /// "on" / "off" after status, off or on; None for confirm.
    pub power: Option<String>,
    /// The generation marked FENCED, after off or confirm.
    pub fenced_generation: Option<u64>,
}

/// Why a request failed, for programs: the message says it for people.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not a valid request (bad JSON, unknown op, too long).
    BadRequest,
    /// The peer is neither root nor in the configured group.
    PermissionDenied,
    /// The pid, lockspace or resource is not known here.
    NotFound,
    /// The resource lease is held by another live host.
    Busy,
    /// This host does not hold its lockspace (not joined yet, or lost).
    NotJoined,
    /// The lease device failed or timed out; nothing was decided.
    Storage,
    /// A state that forbids the request (e.g. leases still held).
    Conflict,
    /// Anything else.
    Internal,
}

/// One answer line: `{"ok":true,"result":...}` or
/// `{"ok":false,"error":{"kind":...,"message":...}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyError {
    pub kind: ErrorKind,
    pub message: String,
}

impl Reply {
    pub fn success(result: impl Serialize) -> Reply {
        match serde_json::to_value(result) {
            Ok(value) => Reply {
                ok: true,
                result: Some(value),
                error: None,
            },
            Err(e) => Reply::failure(ErrorKind::Internal, format!("cannot encode the reply: {e}")),
        }
    }

    pub fn failure(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(ReplyError {
                kind,
                message: message.into(),
            }),
        }
    }
}

/// `status`: this daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub host_id: u32,
    pub host_name: String,
    pub pid: u32,
    pub watchdog: Option<String>,
    pub lockspaces: Vec<LockspaceStatus>,
    pub holders: Vec<HolderStatus>,
    /// Admission control's view at the VM manager's last scan.
    #[serde(default)]
    pub headroom: Option<Headroom>,
    /// The last check of each other host's fence device.
    #[serde(default)]
    pub fence_checks: Vec<FenceCheckStatus>,
}

/// One host's fence device as this host last checked it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FenceCheckStatus {
    pub host_id: u32,
    pub host: String,
    pub device: String,
    pub ok: bool,
    /// "on" / "off" when it answered.
    pub power: Option<String>,
    pub error: Option<String>,
    pub checked_ago_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockspaceStatus {
    pub name: String,
    pub device: String,
    pub io_timeout_ms: u32,
    /// joining, joined, renewal-failing, self-fenced, left
    pub state: String,
    pub generation: u64,
    /// Since our last successful renewal started (our clock).
    pub last_renewal_age_ms: Option<u64>,
    pub renewal_failures: u64,
    pub storage_incident: bool,
    pub hosts: Vec<HostStatus>,
    pub resources: Vec<ResourceStatus>,
}

/// One host as this daemon sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStatus {
    pub host_id: u32,
    pub name: String,
    /// unused / unknown / live / silent / dead / fenced / left / unreadable
    pub state: String,
    /// How long (our clock) its record has stood still.
    pub unchanged_for_ms: u64,
    pub generation: u64,
    pub io_timeout_ms: u32,
    pub watchdog: bool,
    pub memory_mib_free: u32,
    pub vcpus_free: u32,
    /// Set when this host stood still together with many others: a
    /// storage or network incident, not declared silent.
    pub incident: bool,
    /// Why the sector could not be used, when unreadable.
    pub error: Option<String>,
    pub this_host: bool,
    /// The digests of the cluster-wide settings its record publishes
    /// (0: not published).
    #[serde(default)]
    pub failover_digest: u32,
    #[serde(default)]
    pub cluster_digest: u32,
    /// The shared settings in which it differs from this host, as found at
    /// the last scan (empty: it agrees, or nothing to compare).
    #[serde(default)]
    pub settings_differ: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceStatus {
    pub name: String,
    pub slot: u32,
    pub lver: u64,
    /// The holder process; 0 for a VM's lease.
    pub pid: i32,
    /// The domain UUID when held for a VM this daemon runs.
    #[serde(default)]
    pub vm: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HolderStatus {
    pub pid: i32,
    pub leases: Vec<String>,
}

/// `acquire`: the lease won.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcquireReply {
    pub lockspace: String,
    pub resource: String,
    pub slot: u32,
    pub lver: u64,
    pub generation: u64,
    /// Set when the lease is this daemon's hold for that VM (domain UUID):
    /// nothing was acquired, `lver` is the version held since the VM
    /// manager took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

/// `release`: the lease version released.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseReply {
    pub lockspace: String,
    pub resource: String,
    pub lver: u64,
    /// Set when the lease stays held for that VM (domain UUID): only the
    /// process was detached from the daemon's hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

/// `inquire`: the lease as read from the device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InquireReply {
    pub lockspace: String,
    pub resource: String,
    pub slot: Option<u32>,
    pub lver: u64,
    pub holder_host_id: Option<u32>,
    pub holder_host_name: Option<String>,
    pub holder_generation: Option<u64>,
    /// The holder is this host, for `pid` if registered here.
    pub held_here_by_pid: Option<i32>,
    /// The holder is this host, for this HA VM (domain UUID).
    #[serde(default)]
    pub held_here_for_vm: Option<String>,
}

/// One event of the event log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Wall-clock time, for people reading the log (never for decisions).
    pub time: String,
    pub host_id: u32,
    pub lockspace: String,
    /// joined, left, host-live, host-silent, host-dead, storage-incident,
    /// renewal-failed, renewal-recovered, self-fence, holder-killed, ...
    pub kind: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let request = Request::Acquire {
            lockspace: None,
            resource: "vm1".to_string(),
            pid: 42,
            vm: None,
        };
        let line = serde_json::to_string(&request).expect("encode");
        assert_eq!(
            line,
            r#"{"op":"acquire","lockspace":null,"resource":"vm1","pid":42}"#
        );
        let parsed: Request =
            serde_json::from_str(r#"{"op":"acquire","resource":"vm1","pid":42}"#).expect("decode");
        assert_eq!(parsed, request);
        let from_plugin: Request = serde_json::from_str(
            r#"{"op":"acquire","resource":"vm1","pid":42,"vm":"6695eb01-f6a4-8304-79aa-97f2502e193f"}"#,
        )
        .expect("decode");
        assert!(
            matches!(from_plugin, Request::Acquire { vm: Some(ref u), .. } if u.starts_with("6695eb01"))
        );
        let lookup: Request =
            serde_json::from_str(r#"{"op":"vm_lookup","uuid":"u"}"#).expect("decode");
        assert_eq!(
            lookup,
            Request::VmLookup {
                uuid: Some("u".to_string()),
                name: None
            }
        );
    }

    #[test]
    fn unknown_fields_and_ops_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"register","pid":"1"}"#).is_err());
    }
}
