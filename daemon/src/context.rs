//! What every part of the daemon shares: the configuration, the event
//! log, the registered holders and the joined lockspaces.

use crate::config::Config;
use crate::events::{EventLog, Level};
use crate::holders::Holders;
use crate::placement::Headroom;
use crate::protocol::ErrorKind;
use crate::space::{JobError, Space};
use crate::statefile::{self, PersistedHolder, PersistedResource, PersistedSpace, StateFile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A `vm_*` request for the VM manager, with where its reply goes.
pub type VmJob = (
    crate::protocol::Request,
    tokio::sync::oneshot::Sender<crate::protocol::Reply>,
);

pub struct Context {
    pub config: Config,
    pub events: EventLog,
    pub holders: Holders,
    pub spaces: Mutex<BTreeMap<String, Arc<Space>>>,
    /// Lockspaces added at run time (persisted so a restart rejoins them).
    pub added: Mutex<BTreeSet<String>>,
    pub state_path: PathBuf,
    /// This host rebooted since the last daemon ran: every earlier
    /// generation is over (raised as the floor at the first renewal).
    pub rebooted: std::sync::atomic::AtomicBool,
    /// The VM manager's queue (None until it runs, or in a build without
    /// libvirt): `vm_*` requests with their reply channel.
    pub vm_jobs: Mutex<Option<std::sync::mpsc::Sender<VmJob>>>,
    /// Admission control's view at the VM manager's last scan.
    pub headroom: Mutex<Option<Headroom>>,
    /// The last check of each other host's fence device, by host id
    /// ([`crate::fence_health`]).
    pub fence_checks: Mutex<BTreeMap<u32, crate::fence_health::FenceCheck>>,
    /// Latency histograms (renewals, lease operations).
    pub metrics: crate::metrics::Metrics,
    /// The last failover as this host saw it.
    pub timeline: Mutex<crate::timeline::Timeline>,
    /// The VM manager's view at its last scan that changed anything, for
    /// the status page and metrics (None until it scanned).
    pub vm_view: Mutex<Option<crate::protocol::VmListReply>>,
    persist_lock: Mutex<()>,
    /// The libvirt calls of self-fences and startup destroys (bounded by
    /// `libvirt.call_timeout_ms`, so no thread that feeds the watchdog or
    /// renews a lease ever hangs in libvirt).
    #[cfg(feature = "libvirt")]
    destroyer: Mutex<crate::hypervisor::Libvirt>,
    /// The task watching each registered pid for its exit.
    exit_watches: Mutex<BTreeMap<i32, tokio::task::AbortHandle>>,
}

impl Context {
    pub fn new(config: Config, events: EventLog) -> Context {
        let state_path = config.state_dir.join("state.json");
        #[cfg(feature = "libvirt")]
        let destroyer = Mutex::new(crate::hypervisor::Libvirt::new(
            &config.libvirt_uri,
            config.libvirt_call_timeout_ms,
        ));
        Context {
            #[cfg(feature = "libvirt")]
            destroyer,
            config,
            events,
            holders: Holders::default(),
            spaces: Mutex::new(BTreeMap::new()),
            added: Mutex::new(BTreeSet::new()),
            state_path,
            rebooted: std::sync::atomic::AtomicBool::new(false),
            vm_jobs: Mutex::new(None),
            headroom: Mutex::new(None),
            fence_checks: Mutex::new(BTreeMap::new()),
            metrics: crate::metrics::Metrics::default(),
            timeline: Mutex::new(crate::timeline::Timeline::default()),
            vm_view: Mutex::new(None),
            persist_lock: Mutex::new(()),
            exit_watches: Mutex::new(BTreeMap::new()),
        }
    }

    /// Record a step of the current failover (see [`crate::timeline`]),
    /// at this host's monotonic now.
    pub fn failover(&self, record: impl FnOnce(&mut crate::timeline::Timeline, u64)) {
        let now_ms = lease::clock::Clock::now_ms(&lease::clock::SystemClock);
        let mut timeline = match self.timeline.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        record(&mut timeline, now_ms);
    }

    pub fn spaces(&self) -> Vec<Arc<Space>> {
        match self.spaces.lock() {
            Ok(guard) => guard.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        }
    }

    /// The named lockspace, or the configured one when `name` is None.
    pub fn space(&self, name: Option<&str>) -> Result<Arc<Space>, JobError> {
        let name = name.unwrap_or(&self.config.lockspace);
        let spaces = match self.spaces.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        spaces.get(name).cloned().ok_or_else(|| JobError {
            kind: ErrorKind::NotFound,
            message: format!("no lockspace named {name:?} on this host"),
        })
    }

    /// Set (Some) or clear (None) the exit watch of `pid`, returning the
    /// previous one for the caller to stop.
    pub fn replace_exit_watch(
        &self,
        pid: i32,
        watch: Option<tokio::task::AbortHandle>,
    ) -> Option<tokio::task::AbortHandle> {
        let mut watches = match self.exit_watches.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Watches of processes that exited are done; drop them here.
        watches.retain(|_, handle| !handle.is_finished());
        match watch {
            Some(handle) => watches.insert(pid, handle),
            None => watches.remove(&pid),
        }
    }

    /// Kill every registered process holding a lease of `lockspace`, wait
    /// until each has really exited (a process stuck in the kernel keeps
    /// its leases registered, so the watchdog stays unfed), then forget
    /// those leases.
    pub fn kill_holders_of(&self, lockspace: &str) {
        loop {
            self.holders.kill_all(Some(lockspace));
            if self.holders.all_exited(lockspace) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for (pid, _, leases) in self.holders.snapshot() {
            for key in leases.iter().filter(|(s, _)| s == lockspace) {
                self.holders.remove_lease(pid, key);
            }
        }
    }

    /// Destroy the libvirt domains `uuids` at once (a self-fence, or VMs
    /// no lease protects any more); returns those not destroyed, with why.
    pub fn destroy_domains(&self, uuids: &[String]) -> Vec<(String, String)> {
        #[cfg(feature = "libvirt")]
        {
            let mut libvirt = match self.destroyer.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let list = uuids.to_vec();
            // One call for all of them: one wait, bounded by the timeout.
            let outcome = libvirt.call("destroy", move |h| {
                Ok(list
                    .iter()
                    .filter_map(|uuid| h.destroy(uuid).err().map(|e| (uuid.clone(), e.to_string())))
                    .collect::<Vec<_>>())
            });
            match outcome {
                Ok(failed) => failed,
                Err(e) => uuids.iter().map(|u| (u.clone(), e.to_string())).collect(),
            }
        }
        #[cfg(not(feature = "libvirt"))]
        uuids
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    "this daemon was built without libvirt".to_string(),
                )
            })
            .collect()
    }

    /// Write the state file from the current state.
    pub fn persist(&self) {
        let _guard = match self.persist_lock.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let added = match self.added.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let lockspaces = self
            .spaces()
            .iter()
            .filter_map(|space| {
                let (generation, nonce, resources) = space.persisted()?;
                Some(PersistedSpace {
                    name: space.config.name.clone(),
                    device: space.config.device.clone(),
                    io_timeout_ms: space.config.io_timeout_ms,
                    added: added.contains(&space.config.name),
                    generation,
                    nonce,
                    resources: resources
                        .into_iter()
                        .map(|(name, held)| PersistedResource {
                            name,
                            slot: held.slot,
                            lver: held.lver,
                            pid: held.by.pid().unwrap_or(0),
                            vm: held.by.vm().map(str::to_string),
                        })
                        .collect(),
                })
            })
            .collect();
        let holders = self
            .holders
            .snapshot()
            .into_iter()
            .map(|(pid, start_time, _)| PersistedHolder { pid, start_time })
            .collect();
        let state = StateFile {
            boot_id: statefile::boot_id(),
            host_id: self.config.host_id,
            lockspaces,
            holders,
        };
        if let Err(e) = statefile::write(&self.state_path, &state) {
            self.events.emit(
                Level::Error,
                &self.config.lockspace,
                "state-file-failed",
                format!(
                    "cannot write {}: {e}; a restart of the daemon would not find its holders",
                    self.state_path.display()
                ),
            );
        }
    }
}
