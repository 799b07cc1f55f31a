//! One VM as the plugin sees it (the lock manager's private data): who it
//! is, the QEMU pid, its leases and disks; and the lease operations done
//! for it through leaseholdd's control socket (in libvirtd's own threads,
//! where allocation is fine).

use crate::abi::{self, Param};
use crate::config::PluginConfig;
use leasehold_daemon::client::Client;
use leasehold_daemon::protocol::{
    AcquireReply, ErrorKind, HaVm, InquireReply, Reply, Request, VmLookupReply,
};
use libc::c_char;
use std::ffi::CStr;
use std::time::Duration;

/// A `<lease>` of the domain: its `<key>` is the resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    /// `<lockspace>`; None: the daemon's own lockspace.
    pub lockspace: Option<String>,
}

impl Lease {
    fn release(&self, pid: i32) -> Request {
        Request::Release {
            lockspace: self.lockspace.clone(),
            resource: self.key.clone(),
            pid,
        }
    }

    /// This lease's entry in a state string: `lockspace:key:lver`.
    fn state_entry(&self, lver: u64) -> String {
        format!(
            "{}:{}:{lver}",
            self.lockspace.as_deref().unwrap_or(""),
            self.key
        )
    }
}

#[derive(Debug, Default)]
pub struct Domain {
    pub uuid: String,
    pub name: String,
    /// The QEMU process (0 until libvirt knows it).
    pub pid: i32,
    pub leases: Vec<Lease>,
    pub disks: usize,
}

/// An error for libvirt: its code and the message the user reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub busy: bool,
    pub message: String,
}

impl Failure {
    fn internal(message: impl Into<String>) -> Failure {
        Failure {
            busy: false,
            message: message.into(),
        }
    }
}

/// # Safety
/// `ptr` is NULL or a NUL-terminated string valid for this call.
unsafe fn text(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// A parameter's string value, if it is a string.
///
/// # Safety
/// `param` comes from libvirt: its key and string values are valid.
unsafe fn string_value(param: &Param) -> Option<String> {
    match param.type_ {
        // SAFETY: libvirt sets the string members for these types.
        abi::PARAM_STRING | abi::PARAM_CSTRING => unsafe { text(param.value.cstr) },
        _ => None,
    }
}

/// # Safety
/// `params` points at `count` parameters from libvirt (or is NULL).
unsafe fn params<'a>(params: *const Param, count: usize) -> &'a [Param] {
    if params.is_null() || count == 0 {
        return &[];
    }
    // SAFETY: per this function's contract.
    unsafe { std::slice::from_raw_parts(params, count) }
}

impl Domain {
    /// The object libvirt describes in drvNew; unknown keys are ignored.
    ///
    /// # Safety
    /// `raw` points at `count` parameters from libvirt.
    pub unsafe fn from_params(raw: *const Param, count: usize) -> Domain {
        let mut domain = Domain::default();
        // SAFETY: per this function's contract.
        for param in unsafe { params(raw, count) } {
            // SAFETY: libvirt's keys are valid strings.
            let Some(key) = (unsafe { text(param.key) }) else {
                continue;
            };
            match (key.as_str(), param.type_) {
                ("uuid", abi::PARAM_UUID) => {
                    // SAFETY: the uuid member is set for PARAM_UUID.
                    let b = unsafe { param.value.uuid };
                    domain.uuid = format!(
                        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
                    );
                }
                ("name", _) => {
                    // SAFETY: as above.
                    domain.name = unsafe { string_value(param) }.unwrap_or_default();
                }
                ("pid", abi::PARAM_INT | abi::PARAM_UINT) => {
                    // SAFETY: an int member either way (same bits).
                    domain.pid = unsafe { param.value.iv };
                }
                _ => {}
            }
        }
        domain
    }

    /// drvAddResource: a lease (its key is `name`) or a disk.
    ///
    /// # Safety
    /// `name` and `raw` come from libvirt.
    pub unsafe fn add_resource(
        &mut self,
        kind: u32,
        name: *const c_char,
        raw: *const Param,
        count: usize,
    ) -> Result<(), Failure> {
        match kind {
            abi::RESOURCE_LEASE => {
                // SAFETY: per this function's contract.
                let key = unsafe { text(name) }
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| Failure::internal("a <lease> without a <key>"))?;
                if key.contains([',', ':']) {
                    return Err(Failure::internal(format!(
                        "lease key {key:?} contains ',' or ':', which leasehold lease names may not"
                    )));
                }
                let mut lockspace = None;
                // SAFETY: per this function's contract.
                for param in unsafe { params(raw, count) } {
                    // SAFETY: libvirt's keys are valid strings.
                    if unsafe { text(param.key) }.as_deref() == Some("lockspace") {
                        // SAFETY: as above.
                        lockspace = unsafe { string_value(param) }.filter(|s| !s.is_empty());
                    }
                }
                self.leases.push(Lease { key, lockspace });
            }
            abi::RESOURCE_DISK => self.disks += 1,
            // Unknown kinds are ignored, not fatal.
            _ => {}
        }
        Ok(())
    }

    fn label(&self) -> String {
        if self.name.is_empty() {
            self.uuid.clone()
        } else {
            self.name.clone()
        }
    }

    fn client(config: &PluginConfig) -> Result<Client, Failure> {
        Client::connect(&config.socket, Some(Duration::from_secs(300))).map_err(|e| {
            Failure::internal(format!(
                "cannot reach leaseholdd at {}: {e} (is it running? qemu-leasehold.conf `socket`)",
                config.socket.display()
            ))
        })
    }

    fn call(client: &mut Client, request: &Request) -> Result<Reply, Failure> {
        client
            .call(request)
            .map_err(|e| Failure::internal(format!("leaseholdd: {e}")))
    }

    /// The domain UUID for the daemon, when libvirt gave one.
    fn vm(&self) -> Option<String> {
        (!self.uuid.is_empty()).then(|| self.uuid.clone())
    }

    /// Is this domain a HA VM (by UUID or name)? A HA VM runs only where
    /// the daemon holds its lease for it (the VM manager started it, or
    /// this is its resume or a hot-plug): anywhere else it is refused,
    /// with or without a `<lease>`, and pointed at `leasehold vm start`.
    fn check_ha(&self, client: &mut Client) -> Result<Option<HaVm>, Failure> {
        let request = Request::VmLookup {
            uuid: self.vm(),
            name: (!self.name.is_empty()).then(|| self.name.clone()),
        };
        let reply = Self::call(client, &request)?;
        if !reply.ok {
            return Err(Failure::internal(format!(
                "cannot tell whether {} is a HA VM, so it is not started: {}",
                self.label(),
                reply_message(&reply)
            )));
        }
        let found: VmLookupReply = reply
            .result
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| Failure::internal("leaseholdd's vm_lookup reply does not parse"))?;
        let Some(vm) = found.vm else {
            return Ok(None);
        };
        let same_uuid = vm
            .uuid
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(&self.uuid));
        if vm.held_here && same_uuid {
            return Ok(Some(vm));
        }
        Err(self.refusal(&vm, same_uuid))
    }

    /// Why HA VM `vm` may not start here through libvirt.
    fn refusal(&self, vm: &HaVm, same_uuid: bool) -> Failure {
        let what = if same_uuid {
            format!(
                "{} is the HA VM {} of lockspace {}",
                self.label(),
                vm.name,
                vm.lockspace
            )
        } else {
            format!(
                "{} ({}) has the name of the HA VM {} ({}) of lockspace {}",
                self.label(),
                self.uuid,
                vm.name,
                vm.uuid.as_deref().unwrap_or("its record is unusable"),
                vm.lockspace
            )
        };
        let how = format!(
            "start it with `leasehold vm start {}`, not with libvirt",
            vm.name
        );
        if let Some(error) = &vm.error {
            return Failure::internal(format!("{what}, whose record is unusable ({error}); {how}"));
        }
        match vm.holder_host_id {
            Some(id) => Failure {
                busy: true,
                message: format!(
                    "resource busy: lease {} held by host {id} ({}) generation {}: {what}, running there; {how}",
                    vm.name,
                    vm.holder_host_name.as_deref().unwrap_or(""),
                    vm.holder_generation.unwrap_or(0),
                ),
            },
            None => Failure::internal(format!("{what} and runs nowhere; {how}")),
        }
    }

    /// The real acquire (before the CPUs start, and on resume with the
    /// `state` of the release): every lease for the QEMU pid, or none.
    pub fn acquire(&self, config: &PluginConfig, state: Option<&str>) -> Result<(), Failure> {
        if self.leases.is_empty() {
            if self.disks > 0 && !config.allow_disks_without_lease {
                return Err(Failure::internal(format!(
                    "{} has disks but no <lease>; qemu-leasehold.conf sets allow_disks_without_lease = 0",
                    self.label()
                )));
            }
            // No lease of its own: only a HA VM's is refused, so the
            // daemon must be asked (unreachable: refused, it might be one).
            let mut client = Self::client(config).map_err(|f| {
                Failure::internal(format!(
                    "{}; cannot tell whether {} is a HA VM, so it is not started",
                    f.message,
                    self.label()
                ))
            })?;
            self.check_ha(&mut client)?;
            return Ok(());
        }
        if self.pid <= 0 {
            return Err(Failure::internal(format!(
                "{}: libvirt gave no QEMU pid to hold the leases for",
                self.label()
            )));
        }
        let mut client = Self::client(config)?;
        self.check_ha(&mut client)?;
        // Normally QEMU registered itself in libvirt's child already; this
        // covers a libvirtd that reconnects to a running VM. An unprivileged
        // libvirtd may not register a QEMU that is not its descendant: then
        // the acquire itself says whether the registration is missing.
        let reply = Self::call(
            &mut client,
            &Request::Register {
                pid: self.pid,
                bind: false,
            },
        )?;
        let refused = reply
            .error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::PermissionDenied);
        if !reply.ok && !refused {
            return Err(Failure::internal(reply_message(&reply)));
        }
        let previous = state.map(parse_state).unwrap_or_default();
        let mut taken: Vec<&Lease> = Vec::new();
        for lease in &self.leases {
            // With the domain's UUID: a lease the daemon holds for this
            // HA VM is granted as it is (QEMU attached to that hold).
            let request = Request::Acquire {
                lockspace: lease.lockspace.clone(),
                resource: lease.key.clone(),
                pid: self.pid,
                vm: self.vm(),
            };
            let reply = Self::call(&mut client, &request)?;
            let failure = if reply.ok {
                let acquired: Option<AcquireReply> =
                    reply.result.and_then(|v| serde_json::from_value(v).ok());
                // On resume the lease must not have been held elsewhere
                // while the VM was paused: exactly one instance later, or
                // the same version when the daemon held it for the VM
                // all along.
                let before = previous.iter().find(|(l, k, _)| {
                    *k == lease.key && l.as_deref() == lease.lockspace.as_deref()
                });
                match (acquired, before) {
                    (Some(a), Some((_, _, lver)))
                        if a.lver
                            != if a.vm.is_some() {
                                *lver
                            } else {
                                lver.saturating_add(1)
                            } =>
                    {
                        Some(Failure::internal(format!(
                            "lease {} of {} was held by another host while the VM was paused (version {} then, {} now); not resuming",
                            lease.key,
                            self.label(),
                            lver,
                            a.lver
                        )))
                    }
                    _ => None,
                }
            } else {
                let busy = reply
                    .error
                    .as_ref()
                    .is_some_and(|e| e.kind == ErrorKind::Busy);
                Some(Failure {
                    busy,
                    message: reply_message(&reply),
                })
            };
            taken.push(lease);
            if let Some(failure) = failure {
                // All or nothing.
                for held in taken {
                    let _ = Self::call(&mut client, &held.release(self.pid));
                }
                return Err(failure);
            }
        }
        Ok(())
    }

    /// Release every lease (pause); returns the state to resume with.
    /// Releasing what is not held is fine (a second release).
    pub fn release(&self, config: &PluginConfig) -> Result<String, Failure> {
        if self.leases.is_empty() || self.pid <= 0 {
            return Ok(String::new());
        }
        let mut client = Self::client(config)?;
        let mut state = Vec::new();
        for lease in &self.leases {
            let reply = Self::call(&mut client, &lease.release(self.pid))?;
            if reply.ok {
                let lver = reply
                    .result
                    .as_ref()
                    .and_then(|v| v.get("lver"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                state.push(lease.state_entry(lver));
            } else if reply
                .error
                .as_ref()
                .is_some_and(|e| e.kind != ErrorKind::NotFound)
            {
                return Err(Failure::internal(reply_message(&reply)));
            }
        }
        Ok(state.join(","))
    }

    /// The leases held now for this VM's QEMU, as a state string
    /// (migration asks before it moves the VM).
    pub fn inquire(&self, config: &PluginConfig) -> Result<String, Failure> {
        if self.leases.is_empty() {
            return Ok(String::new());
        }
        let mut client = Self::client(config)?;
        let mut state = Vec::new();
        for lease in &self.leases {
            let reply = Self::call(
                &mut client,
                &Request::Inquire {
                    lockspace: lease.lockspace.clone(),
                    resource: lease.key.clone(),
                },
            )?;
            if !reply.ok {
                return Err(Failure::internal(reply_message(&reply)));
            }
            let status: Option<InquireReply> =
                reply.result.and_then(|v| serde_json::from_value(v).ok());
            let ours = |s: &InquireReply| {
                s.held_here_by_pid == Some(self.pid)
                    || s.held_here_for_vm.as_deref().is_some_and(|u| {
                        !self.uuid.is_empty() && u.eq_ignore_ascii_case(&self.uuid)
                    })
            };
            if let Some(status) = status.filter(ours) {
                state.push(lease.state_entry(status.lver));
            }
        }
        Ok(state.join(","))
    }
}

fn reply_message(reply: &Reply) -> String {
    reply
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| "leaseholdd refused without a reason".to_string())
}

/// "lockspace:key:lver,..." back into its parts; malformed entries are
/// skipped (the state is ours, but it passed through libvirt's files).
pub fn parse_state(state: &str) -> Vec<(Option<String>, String, u64)> {
    state
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let lockspace = parts.next()?;
            let key = parts.next()?;
            let lver = parts.next()?.parse().ok()?;
            Some((
                (!lockspace.is_empty()).then(|| lockspace.to_string()),
                key.to_string(),
                lver,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_strings_round_trip_and_bad_entries_are_skipped() {
        let parsed = parse_state("test:vm1:7,:vm2:3,garbage,ls:x:notanumber");
        assert_eq!(
            parsed,
            vec![
                (Some("test".to_string()), "vm1".to_string(), 7),
                (None, "vm2".to_string(), 3)
            ]
        );
        assert!(parse_state("").is_empty());
    }
}
