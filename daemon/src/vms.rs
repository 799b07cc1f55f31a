//! The VM manager: one thread per daemon, on the configured lockspace. It
//! answers the control socket's `vm_*` requests, keeps the VMs whose leases
//! this host holds running, and restarts the VMs that wait for a host
//! (see [`failover`]) when this host's turn comes. It owns the libvirt
//! connection and a device handle of its own (registry scans and payload
//! writes); lease acquires and releases go through the lockspace's worker
//! like every other lease, so one host never holds a lease twice.
//!
//! The order of steps keeps the rule "a VM runs only where its lease is
//! held": acquire, then start; stop (destroy), then release; on a
//! self-fence the lockspace destroys every VM before its leases go.
//!
//! [`failover`]: crate::failover

use crate::context::{Context, VmJob};
use crate::events::Level;
use crate::failover::{self, HostView, Turn};
use crate::hypervisor::{CallError, Hypervisor, Libvirt, Pending};
use crate::placement::{self, HostLoad, Priority};
use crate::protocol::{ErrorKind, Reply, Request, VmActionReply, VmListReply, VmStatus};
use crate::registry::{self, DesiredState, RestartPolicy, VmEntry, VmRecord};
use crate::space::{HeldBy, Job, JobError, Space};
use lease::clock::{Clock, SystemClock};
use lease::format::{ChangedSlots, HostRecord};
use lease::op::run;
use lease::open::BoxedDisk;
use lease::{payload, LeaseError, Lockspace, Owner};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How often the VM manager looks whether a registry scan is due; a scan
/// runs this often while something moves (a host changed state, a VM
/// waits for a host, a request came in the last few seconds).
const TICK_MS: u64 = 250;
/// How long after a request scans stay frequent.
const BUSY_AFTER_REQUEST_MS: u64 = 5_000;
/// A cached record is read again after this long even if its leader did
/// not change (its holder may have rewritten it).
const RECORD_REFRESH_MS: u64 = 5_000;
/// How long a waiting VM has the registry read every round.
const WAITING_FAST_MS: u64 = 60_000;

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// A failed `vm_*` request: the kind the client sees and the message.
struct Refusal(ErrorKind, String);

impl From<JobError> for Refusal {
    fn from(e: JobError) -> Refusal {
        Refusal(e.kind, e.message)
    }
}

impl From<crate::hypervisor::HypervisorError> for Refusal {
    fn from(e: crate::hypervisor::HypervisorError) -> Refusal {
        Refusal(ErrorKind::Internal, e.to_string())
    }
}

impl From<CallError> for Refusal {
    fn from(e: CallError) -> Refusal {
        Refusal(ErrorKind::Internal, e.to_string())
    }
}

/// Did a failed start reach libvirt? If not, nothing of it can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Yes,
    No,
}

/// How a start through libvirt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Started {
    Running,
    /// Not started, and confirmed not running (or never tried).
    Failed,
    /// libvirt did not say (the call hung or its answer was lost): the
    /// lease stays held here until it does ([`VmManager::resolve_unsure`]).
    Unknown,
}

/// Where a start of unknown outcome stands.
enum Unsure {
    /// The call still runs on an abandoned libvirt worker: nothing can be
    /// concluded (a destroy now could come before the start).
    Starting(Pending<()>),
    /// The call is over without a usable answer: ask whether the VM runs.
    Unknown,
    /// The start failed; the VM must be confirmed gone before its lease
    /// is given up.
    GivingUp,
}

/// A VM whose lease we hold and whose start has no known outcome yet.
struct UnsureStart {
    slot: u32,
    record: VmRecord,
    why: String,
    /// When the outcome became unknown: a VM not running `call_timeout_ms`
    /// after that counts as not started.
    since_ms: u64,
    state: Unsure,
}

impl From<LeaseError> for Refusal {
    fn from(e: LeaseError) -> Refusal {
        let kind = match e {
            LeaseError::Disk(_) => ErrorKind::Storage,
            _ => ErrorKind::Internal,
        };
        Refusal(kind, e.to_string())
    }
}

type Outcome<T> = Result<T, Refusal>;

/// What the VM manager knows of the hosts at one scan.
struct Hosts {
    views: Vec<HostView>,
    names: BTreeMap<u32, String>,
    /// Incarnations known to be over (fenced, below the floor, left, dead).
    over: BTreeSet<(u32, u64)>,
    /// Incarnations seen live (not over).
    live: BTreeSet<(u32, u64)>,
}

impl Hosts {
    fn is_over(&self, owner: Owner) -> bool {
        self.over.contains(&(owner.host_id.get(), owner.generation))
    }

    fn name(&self, host_id: u32) -> String {
        self.names
            .get(&host_id)
            .cloned()
            .unwrap_or_else(|| format!("host{host_id}"))
    }
}

pub struct VmManager {
    context: Arc<Context>,
    space: Arc<Space>,
    libvirt: Libvirt,
    device: Option<(BoxedDisk, Lockspace)>,
    /// The last scan, by slot, with when each record was read.
    cache: BTreeMap<u32, (VmEntry, u64)>,
    /// When each waiting VM was first seen waiting, by (name, lver,
    /// failed restarts): the clock its turns count from.
    waiting_since: BTreeMap<(String, u64, u32), u64>,
    /// Whether libvirt failed at the last attempt (one event per outage).
    hypervisor_down: bool,
    /// Starts of unknown outcome (their leases stay held here).
    unsure: Vec<UnsureStart>,
    /// VMs started here whose lease was lost meanwhile (name, UUID): they
    /// are destroyed, retried every round until libvirt manages it.
    stray: Vec<(String, String)>,
    /// When the last registry scan ran, and the host states it saw.
    last_scan_ms: u64,
    last_fingerprint: Fingerprint,
    /// When our own VMs were last checked against libvirt.
    last_check_ms: u64,
    /// The cache is not the device's registry: read it at the next round
    /// (at start, after records were forgotten, after a failed scan).
    needs_scan: bool,
    busy_until_ms: u64,
    /// The host views behind the VM view last published for the status
    /// page and metrics: it is rebuilt only when they or the registry
    /// moved.
    published_hosts: Option<ViewKey>,
}

/// The host views and ended incarnations a published VM view was built
/// from.
type ViewKey = (Vec<HostView>, BTreeSet<(u32, u64)>);

/// What a round reads of the registry.
#[derive(Debug)]
enum Rescan {
    /// Nothing: the cache stands.
    Nothing,
    /// These slots, and only they, may have changed.
    Slots(BTreeSet<u32>),
    /// Every slot (records of unchanged slots from the cache).
    All,
}

/// What the VM manager last saw of the hosts: per host id its state,
/// generation and published count of resource changes with the slots of
/// the latest ones; and ours. The slots move only with their counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Fingerprint {
    hosts: BTreeMap<u32, (&'static str, u64, u64, ChangedSlots)>,
    own_changes: (u64, ChangedSlots),
}

impl Fingerprint {
    /// The slots to read again when, since `last`, nothing moved but
    /// counts of resource changes, each with the slots of its changes
    /// published (at most CHANGED_SLOTS_MAX behind); None: read every slot
    /// (a host's state or generation moved, a host came or went, or a
    /// list cannot say).
    fn changed_slots_since(&self, last: &Fingerprint) -> Option<BTreeSet<u32>> {
        if self.hosts.len() != last.hosts.len() {
            return None;
        }
        let mut slots = BTreeSet::new();
        for (host_id, (state, generation, count, changed)) in &self.hosts {
            let (last_state, last_generation, last_count, _) = last.hosts.get(host_id)?;
            if state != last_state || generation != last_generation {
                return None;
            }
            slots.extend(changed.since(*last_count, *count)?);
        }
        let (own_count, own_changed) = &self.own_changes;
        slots.extend(own_changed.since(last.own_changes.0, *own_count)?);
        Some(slots)
    }
}

/// Start the VM manager's thread; the returned sender takes its requests.
pub fn start(context: Arc<Context>, space: Arc<Space>) -> std::io::Result<mpsc::Sender<VmJob>> {
    let (sender, receiver) = mpsc::channel();
    let libvirt = Libvirt::new(
        &context.config.libvirt_uri,
        context.config.libvirt_call_timeout_ms,
    );
    let mut manager = VmManager {
        context,
        space,
        libvirt,
        device: None,
        cache: BTreeMap::new(),
        waiting_since: BTreeMap::new(),
        hypervisor_down: false,
        unsure: Vec::new(),
        stray: Vec::new(),
        last_scan_ms: 0,
        last_fingerprint: Fingerprint::default(),
        last_check_ms: 0,
        needs_scan: true,
        published_hosts: None,
        busy_until_ms: 0,
    };
    std::thread::Builder::new()
        .name("vm-manager".to_string())
        .spawn(move || manager.run(&receiver))?;
    Ok(sender)
}

impl VmManager {
    fn run(&mut self, jobs: &mpsc::Receiver<VmJob>) {
        let span = tracing::info_span!("vms", host = self.space.config.host_id.get());
        let _entered = span.enter();
        let mut next_tick_ms = now_ms();
        loop {
            let wait_ms = next_tick_ms.saturating_sub(now_ms());
            match jobs.recv_timeout(Duration::from_millis(wait_ms)) {
                Ok((request, reply)) => {
                    let answer = self.handle(request);
                    let _ = reply.send(answer);
                    self.busy_until_ms = now_ms() + BUSY_AFTER_REQUEST_MS;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let fingerprint = self.host_fingerprint();
            let io_timeout_ms = u64::from(self.space.config.io_timeout_ms);
            let renew_interval_ms = (2 * io_timeout_ms).max(1_000);
            // While a fence may be under way, the host area is read every
            // round (one I/O) to see a FENCED mark before our monitor's
            // next renewal does; when every host is plainly live, never.
            let unsettled = self
                .space
                .hosts_unsettled(renew_interval_ms + io_timeout_ms);
            let area = if !self.cache.is_empty() && unsettled {
                self.read_host_area()
            } else {
                None
            };
            let now = now_ms();
            // The slots are read again only when something may have
            // changed them: a host's state, generation or published count
            // of resource changes moved (ours included), a request, a start
            // to resolve, or a VM waiting for a host.
            let changed = fingerprint != self.last_fingerprint;
            let others = self.needs_scan
                || now < self.busy_until_ms
                || !self.stray.is_empty()
                || !self.unsure.is_empty()
                // A VM waiting for a host: every round for its first
                // minute (a failover: turns and priority waves move on
                // as soon as another host takes a VM), then every renewal
                // interval (a VM that fits nowhere).
                || self
                    .waiting_since
                    .values()
                    .any(|since| now.saturating_sub(*since) < WAITING_FAST_MS)
                // A VM waiting, or a host whose published count cannot be
                // trusted (its sector unreadable, or it stopped renewing:
                // it may change slots without a count to show for it):
                // every renewal interval.
                || (!self.waiting_since.is_empty() || unsettled)
                    && now >= self.last_scan_ms.saturating_add(renew_interval_ms)
                // This host just fenced one: its VMs wait from now on,
                // before our monitor sees the mark at its next renewal.
                || self
                    .space
                    .fenced_one
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                || area.as_ref().is_some_and(|a| self.unseen_fence(a));
            // Only counts moved, each with the slots of its changes
            // published: those slots alone are read (the steady state of a
            // busy cluster costs what changed, not the number of slots).
            let rescan = if others {
                Rescan::All
            } else if changed {
                match fingerprint.changed_slots_since(&self.last_fingerprint) {
                    Some(slots) => Rescan::Slots(slots),
                    None => Rescan::All,
                }
            } else {
                Rescan::Nothing
            };
            // Our own VMs are checked against libvirt every renewal
            // interval, from what the last scan read.
            let check = now >= self.last_check_ms.saturating_add(renew_interval_ms);
            if changed && matches!(rescan, Rescan::All) {
                self.forget_changed(&fingerprint);
            }
            if !matches!(rescan, Rescan::Nothing) || check {
                let full = matches!(rescan, Rescan::All);
                self.tick(area, rescan);
                if full {
                    self.last_scan_ms = now;
                }
                self.last_check_ms = now;
                self.last_fingerprint = fingerprint;
            }
            next_tick_ms = now_ms() + TICK_MS;
        }
    }

    /// Every host's record as it is on the device now: one read of the
    /// host area (None when it fails).
    fn read_host_area(&mut self) -> Option<BTreeMap<u32, HostRecord>> {
        let (disk, space) = self.device().ok()?;
        let size = usize::try_from(space.geometry.host_area_size_bytes()).ok()?;
        let mut area = vec![0u8; size];
        if disk
            .read(space.geometry.host_area_offset_bytes(), &mut area)
            .is_err()
        {
            self.device = None;
            return None;
        }
        Some(
            space
                .decode_host_area(&area)
                .into_iter()
                .filter_map(|(host_id, record)| record.ok().map(|r| (host_id.get(), r)))
                .collect(),
        )
    }

    /// Is a host marked FENCED on the device that our monitor does not
    /// show fenced yet (another survivor fenced it before our own silence
    /// window ended)?
    fn unseen_fence(&self, area: &BTreeMap<u32, HostRecord>) -> bool {
        let (records, _) = self.space.host_records();
        area.iter().any(|(host_id, r)| {
            r.flags.fenced
                && r.fenced_generation >= r.generation
                && records
                    .iter()
                    .any(|(id, state, _)| id.get() == *host_id && *state != "fenced")
        })
    }

    /// Every host's state as seen now, and the counts of resource changes
    /// each publishes (memory only, no I/O).
    fn host_fingerprint(&self) -> Fingerprint {
        let (records, _) = self.space.host_records();
        Fingerprint {
            hosts: records
                .into_iter()
                .map(|(h, state, record)| {
                    let (generation, changes, changed) = record
                        .map_or((0, 0, ChangedSlots::default()), |r| {
                            (r.generation, r.resource_changes, r.changed_slots)
                        });
                    (h.get(), (state, generation, changes, changed))
                })
                .collect(),
            own_changes: self.space.resource_changes(),
        }
    }

    /// A host whose count of resource changes moved may have rewritten the
    /// payload of any slot it holds: those records are read again at the
    /// next scan (a payload is written only by its lease holder; any
    /// other change shows in the slot's leader or dblocks, which every scan
    /// reads).
    fn forget_changed(&mut self, fingerprint: &Fingerprint) {
        let moved: BTreeSet<u32> = fingerprint
            .hosts
            .iter()
            .filter(|(h, now)| self.last_fingerprint.hosts.get(h) != Some(now))
            .map(|(h, _)| *h)
            .collect();
        self.cache.retain(|_, (entry, _)| {
            entry
                .holder
                .is_none_or(|owner| !moved.contains(&owner.host_id.get()))
        });
        self.needs_scan = true;
    }

    fn emit(&self, level: Level, kind: &str, message: impl Into<String>) {
        self.space.emit(level, kind, message);
    }

    // ---- resources ------------------------------------------------------------

    /// Note how a libvirt call went: one event when libvirt stops
    /// answering (cannot connect, hangs) and one when it answers again.
    fn note_libvirt<T>(&mut self, result: &Result<T, CallError>) {
        let down = match result {
            Ok(_) => false,
            Err(e) => {
                e.is_connect() || matches!(e, CallError::TimedOut { .. } | CallError::Busy { .. })
            }
        };
        if down && !self.hypervisor_down {
            if let Err(e) = result {
                self.emit(Level::Error, "libvirt-down", e.to_string());
            }
        } else if !down && self.hypervisor_down && result.is_ok() {
            self.emit(Level::Info, "libvirt-up", "libvirt answers again");
        }
        if down || result.is_ok() {
            self.hypervisor_down = down;
        }
    }

    /// One libvirt call, bounded by `libvirt.call_timeout_ms`.
    fn libvirt<T: Send + 'static>(
        &mut self,
        action: &'static str,
        f: impl FnOnce(&Hypervisor) -> Result<T, crate::hypervisor::HypervisorError> + Send + 'static,
    ) -> Result<T, CallError> {
        let result = self.libvirt.call(action, f);
        self.note_libvirt(&result);
        result
    }

    fn destroy_domain(&mut self, uuid: &str) -> Result<(), CallError> {
        let uuid = uuid.to_string();
        self.libvirt("destroy", move |h| h.destroy(&uuid))
    }

    fn domain_running(&mut self, uuid: &str) -> Result<bool, CallError> {
        let uuid = uuid.to_string();
        self.libvirt("inspect", move |h| h.is_running(&uuid))
    }

    fn is_unsure(&self, uuid: &str) -> bool {
        self.unsure.iter().any(|u| u.record.uuid == uuid)
    }

    fn device(&mut self) -> Result<(&dyn lease::disk::Disk, Lockspace), LeaseError> {
        if self.device.is_none() {
            self.device = Some(self.space.open()?);
        }
        match self.device.as_ref() {
            Some((disk, space)) => Ok((disk.as_ref(), space.clone())),
            None => Err(LeaseError::Invalid("no device handle".to_string())),
        }
    }

    /// Scan the registry (records of unchanged slots come from the cache).
    fn scan(&mut self) -> Result<Vec<VmEntry>, LeaseError> {
        let now = now_ms();
        let cached: BTreeMap<u32, VmEntry> = self
            .cache
            .iter()
            .filter(|(_, (_, read_ms))| now.saturating_sub(*read_ms) < RECORD_REFRESH_MS)
            .map(|(slot, (entry, _))| (*slot, entry.clone()))
            .collect();
        let (disk, space) = self.device()?;
        let result = registry::scan(&space, disk, &cached);
        if let Err(LeaseError::Disk(_)) = &result {
            // A fresh handle next time (an io_uring handle may be wedged).
            self.device = None;
        }
        let entries = result?;
        let mut cache = BTreeMap::new();
        for entry in &entries {
            let read_ms = match cached.get(&entry.slot) {
                Some(old) if old.sequence == entry.sequence && old.lver == entry.lver => {
                    self.cache.get(&entry.slot).map(|(_, t)| *t).unwrap_or(now)
                }
                _ => now,
            };
            cache.insert(entry.slot, (entry.clone(), read_ms));
        }
        self.cache = cache;
        self.needs_scan = false;
        Ok(entries)
    }

    /// Read the slots in `slots` again (a round where only those changed)
    /// and return the registry: those entries fresh, the others cached.
    /// A failure leaves a full scan for the next round.
    fn scan_slots(&mut self, slots: &BTreeSet<u32>) -> Result<Vec<VmEntry>, LeaseError> {
        let now = now_ms();
        // Until this succeeds, the cache may be stale: a full scan next.
        self.needs_scan = true;
        let (disk, space) = self.device()?;
        let result = registry::scan_slots(&space, disk, slots);
        if let Err(LeaseError::Disk(_)) = &result {
            self.device = None;
        }
        let fresh = result?;
        for slot in slots {
            self.cache.remove(slot);
        }
        for entry in fresh {
            self.cache.insert(entry.slot, (entry, now));
        }
        self.needs_scan = false;
        Ok(self.cached_entries())
    }

    /// The registry as the cache has it.
    fn cached_entries(&self) -> Vec<VmEntry> {
        self.cache
            .values()
            .map(|(entry, _)| entry.clone())
            .collect()
    }

    /// The hosts as seen now: the monitor's records, with fresh reads of
    /// the hosts holding VM leases (a FENCED mark or floor may be newer
    /// than our last renewal scan).
    fn hosts(&mut self, entries: &[VmEntry], area: Option<BTreeMap<u32, HostRecord>>) -> Hosts {
        let (records, dead) = self.space.host_records();
        let own = self.space.config.host_id;
        let mut hosts = Hosts {
            views: Vec::new(),
            names: BTreeMap::new(),
            over: BTreeSet::new(),
            live: BTreeSet::new(),
        };
        // Every holder's record is read fresh, whatever our monitor says:
        // another survivor may have fenced a host our monitor still calls
        // live (our silence window ends up to 2T after theirs).
        let holders: BTreeSet<u32> = entries
            .iter()
            .filter_map(|e| e.holder.map(|o| o.host_id.get()))
            .filter(|h| *h != own.get())
            .collect();
        let mut fresh: BTreeMap<u32, HostRecord> = if holders.is_empty() {
            BTreeMap::new()
        } else {
            area.or_else(|| self.read_host_area()).unwrap_or_default()
        };
        fresh.retain(|host_id, _| holders.contains(host_id));
        for (host_id, state, record) in records {
            let record = fresh.remove(&host_id.get()).or(record);
            let Some(record) = record else {
                continue;
            };
            if record.generation == 0 {
                continue;
            }
            hosts.names.insert(host_id.get(), record.host_name.clone());
            let live = if host_id == own {
                self.space.owner().is_some()
            } else {
                state == "live" && !record.generation_is_over(record.generation)
            };
            hosts.views.push(HostView {
                host_id: host_id.get(),
                live,
                memory_mib_total: record.capacity.memory_mib_total,
                vcpus_total: record.capacity.vcpus_total,
            });
            // Every generation up to the current one that the record
            // declares over, plus the watchdog rule's dead incarnation.
            for entry in entries {
                if let Some(owner) = entry.holder.filter(|o| o.host_id == host_id) {
                    let watchdog_dead = record.flags.watchdog
                        && dead.iter().any(|(h, g)| {
                            *h == host_id && *g >= owner.generation && record.generation == *g
                        });
                    if record.generation_is_over(owner.generation) || watchdog_dead {
                        hosts.over.insert((host_id.get(), owner.generation));
                    } else if live {
                        hosts.live.insert((host_id.get(), owner.generation));
                    }
                }
            }
        }
        hosts
    }

    // ---- leases through the worker ----------------------------------------------

    /// Run a job on the lockspace's worker and wait for its outcome.
    fn worker<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, JobError>>) -> Job,
    ) -> Outcome<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.space.submit(make(reply))?;
        match answer.blocking_recv() {
            Ok(result) => result.map(|_| ()).map_err(Refusal::from),
            Err(_) => Err(Refusal(
                ErrorKind::Internal,
                "the lockspace worker stopped".to_string(),
            )),
        }
    }

    fn acquire(&self, name: &str, uuid: &str) -> Outcome<()> {
        self.worker(|reply| Job::Acquire {
            resource: name.to_string(),
            by: HeldBy::Vm(uuid.to_string()),
            reply,
        })
    }

    fn release(&self, name: &str, uuid: &str, forget: bool) -> Outcome<()> {
        self.worker(|reply| Job::Release {
            resource: name.to_string(),
            by: HeldBy::Vm(uuid.to_string()),
            forget,
            reply,
        })
    }

    /// Write `record` to its slot (we hold the lease).
    fn write_record(&mut self, slot: u32, record: &VmRecord) -> Outcome<()> {
        let owner = self.space.owner().ok_or_else(|| {
            Refusal(
                ErrorKind::NotJoined,
                "this host does not hold its lockspace".to_string(),
            )
        })?;
        let (disk, space) = self.device()?;
        let written = run(
            payload::write(&space, slot, owner, record.encode()),
            disk,
            &SystemClock,
        );
        self.space.note_resource_change(Some(slot));
        written?;
        self.cache.remove(&slot);
        self.needs_scan = true;
        Ok(())
    }

    /// The current record of the VM in `slot` (read now, not cached).
    fn read_record(&mut self, slot: u32) -> Outcome<VmRecord> {
        let (disk, space) = self.device()?;
        match run(payload::read(&space, slot), disk, &SystemClock)? {
            Some(p) if !p.data.is_empty() => VmRecord::decode(&p.data)
                .map_err(|e| Refusal(ErrorKind::Conflict, format!("slot {slot}: {e}"))),
            _ => Err(Refusal(
                ErrorKind::NotFound,
                format!("slot {slot} holds no VM record"),
            )),
        }
    }

    // ---- the periodic round -------------------------------------------------------

    /// Destroy the VMs that run here without a lease.
    fn destroy_strays(&mut self) {
        let strays = std::mem::take(&mut self.stray);
        for (name, uuid) in strays {
            if let Err(e) = self.destroy_domain(&uuid) {
                self.emit(
                    Level::Error,
                    "vm-destroy-failed",
                    format!("{name} ({uuid}) runs here without its lease and cannot be destroyed: {e}; retrying"),
                );
                self.stray.push((name, uuid));
            }
        }
    }

    /// One round; `area` is the host area if this round read it already.
    /// With `rescan`, from the registry as the device has it now; else from
    /// the last scan's entries (nothing changed since).
    fn tick(&mut self, area: Option<BTreeMap<u32, HostRecord>>, rescan: Rescan) {
        if !self.stray.is_empty() {
            self.destroy_strays();
        }
        if !self.unsure.is_empty() {
            self.resolve_unsure();
        }
        if self.space.owner().is_none() {
            // The slots that moved are not read now: read them all once we
            // hold our lease again (the fingerprint moves on regardless).
            if !matches!(rescan, Rescan::Nothing) {
                self.needs_scan = true;
            }
            return;
        }
        let scanned = match &rescan {
            Rescan::All => self.scan(),
            Rescan::Slots(slots) => self.scan_slots(slots),
            Rescan::Nothing => Ok(self.cached_entries()),
        };
        let entries = match scanned {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("registry scan failed: {e}");
                return;
            }
        };
        let hosts = self.hosts(&entries, area);
        self.publish_headroom(&entries, &hosts);
        self.publish_view(&entries, &hosts, !matches!(rescan, Rescan::Nothing));
        self.keep_own_running(&entries);
        self.restart_waiting(&entries, &hosts);
    }

    fn loads(entries: &[VmEntry], hosts: &Hosts) -> Vec<HostLoad> {
        hosts
            .views
            .iter()
            .filter(|h| h.live)
            .map(|h| HostLoad {
                host_id: h.host_id,
                memory_mib_total: h.memory_mib_total,
                vcpus_total: h.vcpus_total,
                vms: entries
                    .iter()
                    .filter(|e| {
                        let held_there = e
                            .holder
                            .is_some_and(|o| o.host_id.get() == h.host_id && !hosts.is_over(o));
                        // Handed to this host, not started yet.
                        let coming = e.holder.is_none()
                            && e.record.as_ref().is_ok_and(|r| {
                                r.desired == DesiredState::Running
                                    && r.preferred_host == Some(h.host_id)
                            });
                        held_there || coming
                    })
                    .filter_map(|e| e.record.as_ref().ok().map(VmRecord::need))
                    .collect(),
            })
            .collect()
    }

    fn publish_headroom(&self, entries: &[VmEntry], hosts: &Hosts) {
        let headroom = placement::headroom(
            &Self::loads(entries, hosts),
            self.context.config.failover.host_failures_to_tolerate,
        );
        if let Ok(mut guard) = self.context.headroom.lock() {
            *guard = Some(headroom);
        }
    }

    /// The VMs as `vm list` would show them, for the status page and the
    /// metrics, when the registry (`moved`) or the hosts changed since the
    /// last time: O(VMs) work only then.
    fn publish_view(&mut self, entries: &[VmEntry], hosts: &Hosts, moved: bool) {
        let key = (hosts.views.clone(), hosts.over.clone());
        if !moved && self.published_hosts.as_ref() == Some(&key) {
            return;
        }
        self.published_hosts = Some(key);
        let view = VmListReply {
            vms: entries.iter().map(|e| self.status_of(e, hosts)).collect(),
            headroom: None,
        };
        if let Ok(mut guard) = self.context.vm_view.lock() {
            *guard = Some(view);
        }
    }

    /// The VMs whose leases we hold must run here: start one that stopped
    /// (crashed, killed, destroyed behind our back).
    fn keep_own_running(&mut self, entries: &[VmEntry]) {
        for (name, uuid) in self.space.held_vms() {
            if self.is_unsure(&uuid) {
                continue;
            }
            let Some(entry) = entries.iter().find(|e| e.name == name) else {
                continue;
            };
            let Ok(record) = entry.record.clone() else {
                continue;
            };
            if record.desired != DesiredState::Running {
                continue;
            }
            match self.domain_running(&uuid) {
                Ok(true) | Err(_) => continue,
                Ok(false) => {}
            }
            self.emit(
                Level::Warn,
                "vm-stopped-unexpectedly",
                format!(
                    "{name} is not running here although its lease is held here; starting it again"
                ),
            );
            self.start_held(entry.slot, record, "restarted after it stopped");
        }
    }

    /// Start a VM whose lease we hold. A start libvirt refuses counts as a
    /// failed restart and gives the lease up (once libvirt confirms the VM
    /// is not running) so the next host in its order tries; a start whose
    /// outcome is unknown keeps the lease until libvirt says.
    fn start_held(&mut self, slot: u32, record: VmRecord, why: &str) -> Started {
        // Registered under the state lock: a self-fence either came first
        // (no start) or waits for this start's outcome before any lease
        // goes (space.rs, `begin_vm_start`).
        if !self.space.begin_vm_start(&record.name, &record.uuid) {
            self.emit(
                Level::Warn,
                "vm-start-skipped",
                format!(
                    "{} not started: this host does not hold the lockspace or the VM's lease now",
                    record.name
                ),
            );
            return Started::Failed;
        }
        let uuid = record.uuid.clone();
        // Defined with its lease: the lock plugin then asks us for it.
        let xml = match crate::domain_lease::with_lease(
            &record.domain_xml,
            &self.space.config.name,
            &record.name,
            &self.space.config.device,
        ) {
            Ok(xml) => xml,
            Err(e) => {
                self.start_failed(slot, record, &e.to_string(), Sent::No);
                return Started::Failed;
            }
        };
        let pending = match self.libvirt.submit("start", move |h| h.start(&uuid, &xml)) {
            Ok(pending) => pending,
            Err(e) => {
                // Not even tried: nothing of it runs.
                self.note_libvirt::<()>(&Err(e.clone()));
                self.start_failed(slot, record, &e.to_string(), Sent::No);
                return Started::Failed;
            }
        };
        let result = self.libvirt.wait(&pending);
        self.note_libvirt(&result);
        match result {
            Ok(()) => {
                if self.started(slot, record, why) {
                    Started::Running
                } else {
                    Started::Failed
                }
            }
            Err(e) if e.outcome_unknown() => {
                self.emit(
                    Level::Warn,
                    "vm-start-unknown",
                    format!(
                        "libvirt did not confirm the start of {} ({e}); its lease stays held here until libvirt says whether it runs",
                        record.name
                    ),
                );
                let state = match e {
                    CallError::TimedOut { .. } => Unsure::Starting(pending),
                    _ => Unsure::Unknown,
                };
                self.unsure.push(UnsureStart {
                    slot,
                    record,
                    why: why.to_string(),
                    since_ms: now_ms(),
                    state,
                });
                Started::Unknown
            }
            Err(e) => {
                // A connection that could not be opened, or a call refused
                // while earlier ones hang, sent no start.
                let sent = if e.is_connect() || matches!(e, CallError::Busy { .. }) {
                    Sent::No
                } else {
                    Sent::Yes
                };
                self.start_failed(slot, record, &e.to_string(), sent);
                Started::Failed
            }
        }
    }

    /// libvirt started the VM: keep it if its lease is still ours, else
    /// destroy it at once. True when it runs here under its lease.
    fn started(&mut self, slot: u32, mut record: VmRecord, why: &str) -> bool {
        // A self-fence sets its phase before it destroys the VMs it knows,
        // and waits for the starts in flight: either we see the lease
        // still ours here, or we destroy the VM before that wait ends.
        if self.space.owner().is_none() || !self.space.held_vms().contains_key(&record.name) {
            self.stray.push((record.name.clone(), record.uuid.clone()));
            self.destroy_strays();
            self.space.end_vm_start(&record.uuid);
            self.emit(
                Level::Warn,
                "vm-destroyed",
                format!(
                    "{} stopped right after its start: this host lost its lease meanwhile",
                    record.name
                ),
            );
            return false;
        }
        self.space.end_vm_start(&record.uuid);
        if record.failed_restarts != 0 || record.preferred_host.is_some() {
            record.failed_restarts = 0;
            record.preferred_host = None;
            if let Err(Refusal(_, e)) = self.write_record(slot, &record) {
                self.emit(
                    Level::Warn,
                    "vm-record-failed",
                    format!("{} runs, but its record was not updated: {e}", record.name),
                );
            }
        }
        self.context
            .failover(|timeline, now_ms| timeline.start(&record.name, true, now_ms));
        self.emit(
            Level::Info,
            "vm-started",
            format!(
                "{} ({} priority, {} MiB) running on host {} ({}): {why}",
                record.name,
                priority_name(record.priority),
                record.memory_mib,
                self.space.config.host_id,
                self.space.config.host_name
            ),
        );
        true
    }

    /// The start failed: count it in the record, then give the lease up,
    /// once the VM is confirmed not running if the start reached libvirt.
    fn start_failed(&mut self, slot: u32, mut record: VmRecord, message: &str, sent: Sent) {
        record.failed_restarts = record.failed_restarts.saturating_add(1);
        // The next attempt goes to the next host in the order.
        record.preferred_host = None;
        let limit = self.context.config.failover.restart_attempts;
        self.context
            .failover(|timeline, now_ms| timeline.start(&record.name, false, now_ms));
        self.emit(
            Level::Error,
            "vm-start-failed",
            format!(
                "{} did not start here ({message}); failed restarts: {} of {limit}",
                record.name, record.failed_restarts
            ),
        );
        if let Err(Refusal(_, e)) = self.write_record(slot, &record) {
            self.emit(
                Level::Warn,
                "vm-record-failed",
                format!("{}: cannot count the failed start: {e}", record.name),
            );
        }
        if record.failed_restarts >= limit {
            self.emit(
                Level::Error,
                "vm-failed",
                format!(
                    "{} failed to start {} times in a row; nobody restarts it until `leasehold vm start {}`",
                    record.name, record.failed_restarts, record.name
                ),
            );
        }
        match sent {
            Sent::Yes => self.give_up(slot, record, now_ms()),
            // Nothing of this start ran: no destroy to wait for.
            Sent::No => self.release_not_started(&record),
        }
    }

    /// Release the lease of a VM that is known not to run here.
    fn release_not_started(&mut self, record: &VmRecord) {
        self.space.end_vm_start(&record.uuid);
        if let Err(Refusal(_, e)) = self.release(&record.name, &record.uuid, false) {
            self.emit(
                Level::Warn,
                "release-failed",
                format!("{}: {e}", record.name),
            );
        }
    }

    /// Release the lease of a VM that did not start, but only once libvirt
    /// confirms it is not running: until then the lease stays held here
    /// (retried every round), since the next host would start it too.
    fn give_up(&mut self, slot: u32, record: VmRecord, since_ms: u64) {
        if let Err(e) = self.destroy_domain(&record.uuid) {
            self.emit(
                Level::Error,
                "vm-destroy-failed",
                format!(
                    "{} did not start, but libvirt cannot confirm it is gone ({e}); its lease stays held here until it does",
                    record.name
                ),
            );
            self.unsure.push(UnsureStart {
                slot,
                why: String::new(),
                record,
                since_ms,
                state: Unsure::GivingUp,
            });
            return;
        }
        self.release_not_started(&record);
    }

    /// Settle the starts of unknown outcome: a start that returns or a VM
    /// that libvirt shows running counts as started; one libvirt shows
    /// not running a whole call timeout after the outcome became unknown
    /// counts as failed (a lost answer's start has ended by then).
    fn resolve_unsure(&mut self) {
        let settle_ms = self.libvirt.timeout_ms();
        for mut unsure in std::mem::take(&mut self.unsure) {
            if let Unsure::Starting(pending) = &unsure.state {
                match pending.poll(self.libvirt.uri()) {
                    None => {
                        self.unsure.push(unsure);
                        continue;
                    }
                    Some(Ok(())) => {
                        let why = format!("{} (libvirt's start returned late)", unsure.why);
                        self.started(unsure.slot, unsure.record, &why);
                        continue;
                    }
                    Some(Err(e)) if !e.outcome_unknown() => {
                        self.start_failed(unsure.slot, unsure.record, &e.to_string(), Sent::Yes);
                        continue;
                    }
                    Some(Err(_)) => {
                        unsure.state = Unsure::Unknown;
                        unsure.since_ms = now_ms();
                    }
                }
            }
            match unsure.state {
                Unsure::Starting(_) => self.unsure.push(unsure),
                Unsure::GivingUp => self.give_up(unsure.slot, unsure.record, unsure.since_ms),
                Unsure::Unknown => match self.domain_running(&unsure.record.uuid) {
                    Ok(true) => {
                        let why = format!(
                            "{} (libvirt's answer to the start was lost; it runs)",
                            unsure.why
                        );
                        self.started(unsure.slot, unsure.record, &why);
                    }
                    Ok(false) if now_ms() >= unsure.since_ms.saturating_add(settle_ms) => {
                        self.start_failed(
                            unsure.slot,
                            unsure.record,
                            "libvirt's answer to the start was lost and the VM does not run",
                            Sent::Yes,
                        );
                    }
                    Ok(false) | Err(_) => self.unsure.push(unsure),
                },
            }
        }
    }

    /// Take and start the waiting VMs whose turn has come for this host.
    fn restart_waiting(&mut self, entries: &[VmEntry], hosts: &Hosts) {
        let config = self.context.config.failover;
        let over = |o: Owner| hosts.is_over(o);
        let turns = failover::turns(entries, &hosts.views, &over, config.restart_attempts);
        let now = now_ms();
        let keys: BTreeSet<(String, u64, u32)> = turns
            .iter()
            .filter_map(|t| Self::waiting_key(entries, t))
            .collect();
        self.waiting_since.retain(|k, _| keys.contains(k));
        for key in keys {
            self.waiting_since.entry(key).or_insert(now);
        }
        let own = self.space.config.host_id.get();
        let priority_of = |turn: &Turn| {
            entries
                .iter()
                .find(|e| e.slot == turn.slot)
                .and_then(|e| e.record.as_ref().ok())
                .map(|r| r.priority)
        };
        // Priority waves: a VM waits while one of higher priority still
        // waits for its first host (for at most one grace period), so the
        // important VMs get their hosts first, cluster-wide.
        let blocking = turns
            .iter()
            .filter(|t| {
                Self::waiting_key(entries, t)
                    .and_then(|k| self.waiting_since.get(&k))
                    .is_some_and(|since| now < since.saturating_add(config.restart_grace_ms))
            })
            .filter_map(&priority_of)
            .max();
        for turn in turns {
            if let (Some(wave), Some(priority)) = (blocking, priority_of(&turn)) {
                if priority < wave {
                    continue;
                }
            }
            let Some(key) = Self::waiting_key(entries, &turn) else {
                continue;
            };
            let since = self.waiting_since.get(&key).copied().unwrap_or(now);
            let Some(delay) = failover::delay_ms(&turn, own, config.restart_grace_ms) else {
                continue;
            };
            if now < since.saturating_add(delay) {
                continue;
            }
            let Some(entry) = entries.iter().find(|e| e.slot == turn.slot) else {
                continue;
            };
            self.take(entry, hosts, delay);
        }
    }

    fn waiting_key(entries: &[VmEntry], turn: &Turn) -> Option<(String, u64, u32)> {
        let entry = entries.iter().find(|e| e.slot == turn.slot)?;
        let record = entry.record.as_ref().ok()?;
        Some((turn.vm.clone(), entry.lver, record.failed_restarts))
    }

    fn take(&mut self, entry: &VmEntry, hosts: &Hosts, delay_ms: u64) {
        let Ok(record) = entry.record.clone() else {
            return;
        };
        if let Err(Refusal(kind, message)) = self.acquire(&record.name, &record.uuid) {
            if kind != ErrorKind::Busy {
                self.emit(
                    Level::Warn,
                    "vm-take-failed",
                    format!("cannot take the lease of {}: {message}", record.name),
                );
            }
            return;
        }
        // The lease is ours: the record read now is the truth.
        let record = match self.read_record(entry.slot) {
            Ok(r) => r,
            Err(Refusal(_, e)) => {
                self.emit(
                    Level::Error,
                    "vm-record-unusable",
                    format!("{}: {e}; not started", record.name),
                );
                let _ = self.release(&record.name, &record.uuid, false);
                return;
            }
        };
        if record.desired != DesiredState::Running {
            let _ = self.release(&record.name, &record.uuid, false);
            return;
        }
        if let Some(from) = entry.holder {
            self.context.failover(|timeline, now_ms| {
                timeline.taken(&record.name, from.host_id.get(), now_ms)
            });
        }
        let why = match entry.holder {
            Some(o) => format!(
                "its lease was held by host {} ({}) generation {}, which is over",
                o.host_id,
                hosts.name(o.host_id.get()),
                o.generation
            ),
            None if delay_ms > 0 => format!(
                "it waited for a host; this host's turn came after {} ms",
                delay_ms
            ),
            None => "it waited for a host".to_string(),
        };
        if self.start_held(entry.slot, record, &why) == Started::Running && entry.holder.is_some() {
            self.context.metrics.vm_restarted();
        }
    }

    // ---- requests -----------------------------------------------------------------

    fn handle(&mut self, request: Request) -> Reply {
        let result = match request {
            Request::VmList {} => self.list().map(Reply::success),
            Request::VmAdd {
                xml,
                priority,
                restart,
                host,
                force,
            } => self
                .add(&xml, priority, restart, host.as_deref(), force)
                .map(Reply::success),
            Request::VmStart { vm, host } => {
                self.start_request(&vm, host.as_deref()).map(Reply::success)
            }
            Request::VmStop { vm } => self.stop(&vm).map(Reply::success),
            Request::VmMigrate { vm, host } => self.migrate(&vm, &host).map(Reply::success),
            Request::VmRemove { vm } => self.remove(&vm).map(Reply::success),
            Request::VmExport {} => self.export().map(Reply::success),
            Request::VmImport { record } => self.import(record).map(Reply::success),
            _ => Err(Refusal(
                ErrorKind::BadRequest,
                "not a vm request".to_string(),
            )),
        };
        result.unwrap_or_else(|Refusal(kind, message)| Reply::failure(kind, message))
    }

    fn joined(&self) -> Outcome<Owner> {
        self.space.owner().ok_or_else(|| {
            Refusal(
                ErrorKind::NotJoined,
                format!(
                    "host {} does not hold lockspace {} now; VMs cannot be managed from here",
                    self.space.config.host_id, self.space.config.name
                ),
            )
        })
    }

    fn fresh(&mut self) -> Outcome<(Vec<VmEntry>, Hosts)> {
        self.joined()?;
        self.cache.clear();
        let entries = self.scan()?;
        let hosts = self.hosts(&entries, None);
        Ok((entries, hosts))
    }

    fn find<'a>(entries: &'a [VmEntry], vm: &str) -> Outcome<&'a VmEntry> {
        entries
            .iter()
            .find(|e| e.name == vm || e.record.as_ref().is_ok_and(|r| r.uuid == vm))
            .ok_or_else(|| {
                Refusal(
                    ErrorKind::NotFound,
                    format!("no HA VM named {vm:?} on the lease device (see `leasehold vm list`)"),
                )
            })
    }

    /// A host named by name or id, which must be live.
    fn resolve_host(hosts: &Hosts, host: &str) -> Outcome<u32> {
        let id = host
            .parse::<u32>()
            .ok()
            .filter(|id| hosts.names.contains_key(id))
            .or_else(|| {
                hosts
                    .names
                    .iter()
                    .find(|(_, name)| name.as_str() == host)
                    .map(|(id, _)| *id)
            })
            .ok_or_else(|| {
                Refusal(
                    ErrorKind::NotFound,
                    format!("no host {host:?} in the lockspace (see `leasehold hosts`)"),
                )
            })?;
        if !hosts.views.iter().any(|h| h.host_id == id && h.live) {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!("host {id} ({}) is not live now", hosts.name(id)),
            ));
        }
        Ok(id)
    }

    fn status_of(&self, entry: &VmEntry, hosts: &Hosts) -> VmStatus {
        let attempts = self.context.config.failover.restart_attempts;
        let record = entry.record.as_ref().ok();
        let over = |o: Owner| hosts.is_over(o);
        let state = match record {
            None => "unusable",
            Some(r) if r.failed_restarts >= attempts && entry.holder.is_none() => "failed",
            Some(_) if failover::waiting(entry, &over, attempts) => "waiting",
            Some(_) if entry.holder.is_some_and(|o| !hosts.is_over(o)) => "running",
            Some(_) => "stopped",
        };
        VmStatus {
            name: entry.name.clone(),
            uuid: record.map(|r| r.uuid.clone()),
            slot: entry.slot,
            lver: entry.lver,
            state: state.to_string(),
            priority: record.map(|r| r.priority),
            memory_mib: record.map(|r| r.memory_mib).unwrap_or(0),
            vcpus: record.map(|r| r.vcpus).unwrap_or(0),
            desired: record.map(|r| r.desired),
            restart: record.map(|r| r.restart),
            failed_restarts: record.map(|r| r.failed_restarts).unwrap_or(0),
            preferred_host: record.and_then(|r| r.preferred_host),
            owner_host_id: entry.holder.map(|o| o.host_id.get()),
            owner_host_name: entry.holder.map(|o| hosts.name(o.host_id.get())),
            owner_generation: entry.holder.map(|o| o.generation),
            error: entry.record.as_ref().err().cloned(),
        }
    }

    fn list(&mut self) -> Outcome<VmListReply> {
        let (entries, hosts) = self.fresh()?;
        let headroom = placement::headroom(
            &Self::loads(&entries, &hosts),
            self.context.config.failover.host_failures_to_tolerate,
        );
        Ok(VmListReply {
            vms: entries.iter().map(|e| self.status_of(e, &hosts)).collect(),
            headroom: Some(headroom),
        })
    }

    /// Every usable record, for `vm export`; unusable slots are named.
    fn export(&mut self) -> Outcome<crate::backup::RegistryExport> {
        let (entries, _) = self.fresh()?;
        let mut vms = Vec::new();
        let mut unusable = Vec::new();
        for entry in &entries {
            match &entry.record {
                Ok(record) => vms.push(record.clone()),
                Err(e) => unusable.push(format!("slot {} ({}): {e}", entry.slot, entry.name)),
            }
        }
        Ok(crate::backup::RegistryExport::new(
            &self.space.config.name,
            vms,
            unusable,
        ))
    }

    /// `vm import` of one record: into a free slot, under its lease, which
    /// is then given back; the VM is from then on like any other (wanted
    /// running and not running: the plan restarts it). Not over a VM of
    /// the same name or UUID.
    fn import(&mut self, record: VmRecord) -> Outcome<VmActionReply> {
        // The same checks as a record read from the device.
        let record = VmRecord::decode(&record.encode())
            .map_err(|e| Refusal(ErrorKind::BadRequest, e.to_string()))?;
        let capacity = payload::capacity_bytes(&self.device()?.1.geometry);
        if record.encode().len() > usize::try_from(capacity).unwrap_or(usize::MAX) {
            return Err(Refusal(
                ErrorKind::BadRequest,
                format!(
                    "the VM record of {} takes {} bytes; a slot's payload holds {capacity}",
                    record.name,
                    record.encode().len()
                ),
            ));
        }
        let (entries, _) = self.fresh()?;
        if let Some(existing) = entries.iter().find(|e| {
            e.name == record.name || e.record.as_ref().is_ok_and(|r| r.uuid == record.uuid)
        }) {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!(
                    "{} is already registered (slot {}, as {}): not imported",
                    record.name, existing.slot, existing.name
                ),
            ));
        }
        self.acquire(&record.name, &record.uuid)?;
        let slot = self.slot_of(&record.name)?;
        if let Err(e) = self.write_record(slot, &record) {
            let _ = self.release(&record.name, &record.uuid, true);
            return Err(e);
        }
        self.release(&record.name, &record.uuid, false)?;
        self.emit(
            Level::Info,
            "vm-imported",
            format!(
                "{} ({}) imported into slot {slot}, wanted {}",
                record.name,
                record.uuid,
                if record.desired == DesiredState::Running {
                    "running"
                } else {
                    "stopped"
                }
            ),
        );
        Ok(VmActionReply {
            message: format!("{} imported into slot {slot}", record.name),
            vm: record.name,
            warning: None,
        })
    }

    /// Admission control for `record` joining host `target`: None if the
    /// cluster can still restart every HA VM after losing
    /// `host_failures_to_tolerate` hosts, else why not.
    fn admission(
        &self,
        entries: &[VmEntry],
        hosts: &Hosts,
        target: u32,
        record: &VmRecord,
    ) -> Option<String> {
        let mut loads = Self::loads(entries, hosts);
        let tolerate = self.context.config.failover.host_failures_to_tolerate;
        let Some(load) = loads.iter_mut().find(|l| l.host_id == target) else {
            return Some(format!("host {target} is not live"));
        };
        let used: u64 = load.vms.iter().map(|v| u64::from(v.memory_mib)).sum();
        let free = u64::from(load.memory_mib_total).saturating_sub(used);
        if free < u64::from(record.memory_mib) {
            return Some(format!(
                "host {target} ({}) has {free} MiB of {} MiB free, {} needs {} MiB",
                hosts.name(target),
                load.memory_mib_total,
                record.name,
                record.memory_mib
            ));
        }
        load.vms.push(record.need());
        let headroom = placement::headroom(&loads, tolerate);
        if headroom.ok {
            return None;
        }
        let lost: Vec<String> = headroom
            .worst_lost_hosts
            .iter()
            .map(|h| format!("{h} ({})", hosts.name(*h)))
            .collect();
        Some(format!(
            "with {} on host {}, losing host(s) {} would leave no room to restart {} (host_failures_to_tolerate = {tolerate}; {} host(s) live, {} MiB in HA VMs)",
            record.name,
            target,
            lost.join(", "),
            headroom.unplaced.join(", "),
            loads.len(),
            loads
                .iter()
                .flat_map(|l| l.vms.iter())
                .map(|v| u64::from(v.memory_mib))
                .sum::<u64>()
        ))
    }

    fn add(
        &mut self,
        xml: &str,
        priority: Option<Priority>,
        restart: Option<RestartPolicy>,
        host: Option<&str>,
        force: bool,
    ) -> Outcome<VmActionReply> {
        let mut record = VmRecord::new(xml, priority.unwrap_or(Priority::Medium))
            .map_err(|e| Refusal(ErrorKind::BadRequest, e.to_string()))?;
        if let Some(restart) = restart {
            record.restart = restart;
        }
        let capacity = payload::capacity_bytes(&self.device()?.1.geometry);
        if record.encode().len() > usize::try_from(capacity).unwrap_or(usize::MAX) {
            return Err(Refusal(
                ErrorKind::BadRequest,
                format!(
                    "the VM record of {} takes {} bytes; a slot's payload holds {capacity} (format the device with a larger --payload-size)",
                    record.name,
                    record.encode().len()
                ),
            ));
        }
        let (entries, hosts) = self.fresh()?;
        if let Some(existing) = entries.iter().find(|e| {
            e.name == record.name || e.record.as_ref().is_ok_and(|r| r.uuid == record.uuid)
        }) {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!(
                    "a HA VM {} (slot {}) is already registered with this name or UUID; `leasehold vm remove` it first",
                    existing.name, existing.slot
                ),
            ));
        }
        let own = self.space.config.host_id.get();
        let target = match host {
            Some(h) => Self::resolve_host(&hosts, h)?,
            None => own,
        };
        let mut warning = None;
        if let Some(reason) = self.admission(&entries, &hosts, target, &record) {
            if !force {
                return Err(Refusal(
                    ErrorKind::Conflict,
                    format!("admission control refuses {}: {reason}; add capacity, or pass --force to add it anyway", record.name),
                ));
            }
            let text = format!("admission control overridden (--force): {reason}");
            self.emit(Level::Warn, "admission-overridden", text.clone());
            warning = Some(text);
        }
        if target != own {
            record.preferred_host = Some(target);
        }
        self.acquire(&record.name, &record.uuid)?;
        let slot = self.slot_of(&record.name)?;
        if let Err(e) = self.write_record(slot, &record) {
            let _ = self.release(&record.name, &record.uuid, true);
            return Err(e);
        }
        self.emit(
            Level::Info,
            "vm-added",
            format!(
                "{} ({}, {} priority, {} MiB, {} vCPUs) registered in slot {slot}",
                record.name,
                record.uuid,
                priority_name(record.priority),
                record.memory_mib,
                record.vcpus
            ),
        );
        let message = if target == own {
            match self.start_held(slot, record.clone(), "added") {
                Started::Running => {}
                Started::Failed => return Err(Refusal(
                    ErrorKind::Internal,
                    format!(
                        "{} is registered but did not start here (see `leasehold events`); the other hosts will try it in turn",
                        record.name
                    ),
                )),
                Started::Unknown => return Err(Refusal(
                    ErrorKind::Internal,
                    format!(
                        "{} is registered; libvirt did not confirm its start, so its lease stays here until libvirt says whether it runs (see `leasehold events`)",
                        record.name
                    ),
                )),
            }
            format!("{} registered and running on host {own}", record.name)
        } else {
            self.release(&record.name, &record.uuid, false)?;
            format!(
                "{} registered; host {target} ({}) starts it",
                record.name,
                hosts.name(target)
            )
        };
        Ok(VmActionReply {
            vm: record.name,
            message,
            warning,
        })
    }

    fn slot_of(&mut self, name: &str) -> Outcome<u32> {
        let (disk, space) = self.device()?;
        match run(lease::resource::lookup(&space, name), disk, &SystemClock)? {
            Some((slot, _)) => Ok(slot),
            None => Err(Refusal(
                ErrorKind::Internal,
                format!("{name} has no slot after its acquire"),
            )),
        }
    }

    /// Our lease on the VM of `entry` (held already, or acquired now when
    /// free or over), with its current record.
    fn hold(&mut self, entry: &VmEntry, hosts: &Hosts, action: &str) -> Outcome<VmRecord> {
        let record = entry
            .record
            .clone()
            .map_err(|e| Refusal(ErrorKind::Conflict, e))?;
        if self.is_unsure(&record.uuid) {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!(
                    "libvirt has not confirmed whether {} started here; try `leasehold vm {action} {}` again once it answers (see `leasehold events`)",
                    record.name, record.name
                ),
            ));
        }
        let own = self.space.owner();
        match entry.holder {
            Some(o) if Some(o) == own => {}
            Some(o) if !hosts.is_over(o) => {
                return Err(Refusal(
                    ErrorKind::Busy,
                    format!(
                        "{} runs on host {} ({}): run `leasehold vm {action} {}` there",
                        record.name,
                        o.host_id,
                        hosts.name(o.host_id.get()),
                        record.name
                    ),
                ))
            }
            _ => self.acquire(&record.name, &record.uuid)?,
        }
        self.read_record(entry.slot)
    }

    fn start_request(&mut self, vm: &str, host: Option<&str>) -> Outcome<VmActionReply> {
        let (entries, hosts) = self.fresh()?;
        let entry = Self::find(&entries, vm)?.clone();
        let own = self.space.config.host_id.get();
        let target = match host {
            Some(h) => Self::resolve_host(&hosts, h)?,
            None => own,
        };
        if let Some(o) = entry.holder.filter(|o| !hosts.is_over(*o)) {
            if o.host_id.get() != own || target != own {
                return Err(Refusal(
                    ErrorKind::Conflict,
                    format!(
                        "{} already runs on host {} ({}); use `leasehold vm migrate` to move it",
                        entry.name,
                        o.host_id,
                        hosts.name(o.host_id.get())
                    ),
                ));
            }
        }
        let mut record = self.hold(&entry, &hosts, "start")?;
        record.desired = DesiredState::Running;
        record.failed_restarts = 0;
        record.preferred_host = (target != own).then_some(target);
        if let Err(e) = self.write_record(entry.slot, &record) {
            let _ = self.release(&record.name, &record.uuid, false);
            return Err(e);
        }
        if target != own {
            self.release(&record.name, &record.uuid, false)?;
            return Ok(VmActionReply {
                message: format!(
                    "{}: host {target} ({}) starts it",
                    record.name,
                    hosts.name(target)
                ),
                vm: record.name,
                warning: None,
            });
        }
        match self.start_held(entry.slot, record.clone(), "started by request") {
            Started::Running => {}
            Started::Failed => {
                return Err(Refusal(
                    ErrorKind::Internal,
                    format!(
                        "{} did not start here (see `leasehold events`)",
                        record.name
                    ),
                ))
            }
            Started::Unknown => {
                return Err(Refusal(
                    ErrorKind::Internal,
                    format!(
                        "libvirt did not confirm the start of {}; its lease stays here until libvirt says whether it runs (see `leasehold events`)",
                        record.name
                    ),
                ))
            }
        }
        Ok(VmActionReply {
            message: format!("{} running on host {own}", record.name),
            vm: record.name,
            warning: None,
        })
    }

    /// Stop the VM here (its lease held here), with `record` saved first
    /// so nobody restarts it meanwhile, then give the lease up.
    fn stop_here(&mut self, slot: u32, record: &VmRecord, forget: bool) -> Outcome<()> {
        self.write_record(slot, record)?;
        if let Err(e) = self.destroy_domain(&record.uuid) {
            // Still running, or unknown: the lease stays held.
            return Err(Refusal(
                ErrorKind::Internal,
                format!("{e}; {} keeps its lease until it is stopped", record.name),
            ));
        }
        self.release(&record.name, &record.uuid, forget)
    }

    fn stop(&mut self, vm: &str) -> Outcome<VmActionReply> {
        let (entries, hosts) = self.fresh()?;
        let entry = Self::find(&entries, vm)?.clone();
        let mut record = self.hold(&entry, &hosts, "stop")?;
        record.desired = DesiredState::Stopped;
        record.preferred_host = None;
        self.stop_here(entry.slot, &record, false)?;
        self.emit(
            Level::Info,
            "vm-stopped",
            format!("{} stopped by request; it stays stopped", record.name),
        );
        Ok(VmActionReply {
            message: format!("{} stopped", record.name),
            vm: record.name,
            warning: None,
        })
    }

    fn migrate(&mut self, vm: &str, host: &str) -> Outcome<VmActionReply> {
        let (entries, hosts) = self.fresh()?;
        let entry = Self::find(&entries, vm)?.clone();
        let target = Self::resolve_host(&hosts, host)?;
        let own = self.space.config.host_id.get();
        if target == own {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!(
                    "{} is to move to this host: use `leasehold vm start`",
                    entry.name
                ),
            ));
        }
        let mut record = self.hold(&entry, &hosts, "migrate")?;
        // Room on the target, counted without this VM where it is now.
        let others: Vec<VmEntry> = entries
            .iter()
            .filter(|e| e.slot != entry.slot)
            .cloned()
            .collect();
        if let Some(reason) = self.admission(&others, &hosts, target, &record) {
            let _ = self.release_if_stopped(&entry, &record);
            return Err(Refusal(
                ErrorKind::Conflict,
                format!("cannot move {} to host {target}: {reason}", record.name),
            ));
        }
        record.desired = DesiredState::Running;
        record.failed_restarts = 0;
        record.preferred_host = Some(target);
        self.stop_here(entry.slot, &record, false)?;
        self.emit(
            Level::Info,
            "vm-migrating",
            format!(
                "{} stopped here and handed to host {target} ({})",
                record.name,
                hosts.name(target)
            ),
        );
        Ok(VmActionReply {
            message: format!(
                "{} stopped on host {own}; host {target} ({}) starts it",
                record.name,
                hosts.name(target)
            ),
            vm: record.name,
            warning: None,
        })
    }

    /// After `hold` acquired a free VM's lease for a request that then
    /// failed: give it back if the VM does not run here.
    fn release_if_stopped(&mut self, entry: &VmEntry, record: &VmRecord) -> Outcome<()> {
        if entry.holder.is_some() && entry.holder == self.space.owner() {
            return Ok(());
        }
        self.release(&record.name, &record.uuid, false)
    }

    fn remove(&mut self, vm: &str) -> Outcome<VmActionReply> {
        let (entries, hosts) = self.fresh()?;
        let entry = Self::find(&entries, vm)?.clone();
        let record = match &entry.record {
            Ok(r) => r.clone(),
            Err(e) => {
                return Err(Refusal(
                    ErrorKind::Conflict,
                    format!(
                        "{}: {e}; an unusable record is not removed automatically",
                        entry.name
                    ),
                ))
            }
        };
        if record.desired == DesiredState::Running
            && entry.holder.is_some_and(|o| !hosts.is_over(o))
        {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!(
                    "{} is running: `leasehold vm stop {}` first",
                    record.name, record.name
                ),
            ));
        }
        let record = self.hold(&entry, &hosts, "remove")?;
        if record.desired == DesiredState::Running {
            let _ = self.release_if_stopped(&entry, &record);
            return Err(Refusal(
                ErrorKind::Conflict,
                format!(
                    "{} is wanted running: `leasehold vm stop {}` first",
                    record.name, record.name
                ),
            ));
        }
        // An empty payload is "no VM"; then the slot is freed with the lease.
        {
            let owner = self.joined()?;
            let (disk, space) = self.device()?;
            let written = run(
                payload::write(&space, entry.slot, owner, Vec::new()),
                disk,
                &SystemClock,
            );
            self.space.note_resource_change(Some(entry.slot));
            written?;
        }
        let uuid = record.uuid.clone();
        // Best effort: a definition left behind runs nothing.
        let _ = self.libvirt("undefine", move |h| h.undefine(&uuid));
        self.release(&record.name, &record.uuid, true)?;
        self.cache.remove(&entry.slot);
        self.needs_scan = true;
        self.emit(
            Level::Info,
            "vm-removed",
            format!(
                "{} removed from the registry (slot {} freed)",
                record.name, entry.slot
            ),
        );
        Ok(VmActionReply {
            message: format!("{} removed", record.name),
            vm: record.name,
            warning: None,
        })
    }
}

fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
    }
}
