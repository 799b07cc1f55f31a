//! One lockspace this daemon has joined: its renewal thread (join or take
//! over, renew + scan every interval, self-fence on loss, rejoin), its
//! resource worker thread (acquire, release, inquire), and the state both
//! publish for the control socket. Each thread opens the device itself, so
//! a resource operation stuck on the device never delays a renewal, and
//! neither ever holds the state lock across an I/O.

use crate::capacity;
use crate::context::Context;
use crate::events::Level;
use crate::monitor::Monitor;
use crate::protocol::{
    AcquireReply, ErrorKind, InquireReply, LockspaceStatus, ReleaseReply, ResourceStatus,
};
use lease::clock::{Clock, SystemClock};
use lease::delta::{self, DeltaLease, JoinRequest, RenewRequest};
use lease::format::{Capacity, FenceMethod, SharedSettings};
use lease::op::run;
use lease::open::{BoxedDisk, Engine};
use lease::paxos::{self, ReleaseRequest};
use lease::resource::{self, NamedAcquire};
use lease::{HostId, LeaseError, Lockspace, Owner};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a release of a VM's lease waits for a process still attached
/// to it (QEMU started by hand on this host) to die after its SIGKILL.
const ATTACHED_EXIT_WAIT_MS: u64 = 5_000;

/// Host records as last seen (id, state name, record) and the hosts dead
/// by the watchdog rule (id, generation).
pub type HostRecords = (
    Vec<(HostId, &'static str, Option<lease::format::HostRecord>)>,
    Vec<(HostId, u64)>,
);

/// What this daemon was told to join.
#[derive(Clone, Debug)]
pub struct SpaceConfig {
    pub name: String,
    pub device: String,
    pub io_timeout_ms: u32,
    pub engine: Engine,
    pub sector_size_bytes: Option<u32>,
    pub host_id: HostId,
    pub host_name: String,
    pub watchdog: bool,
    pub fence_method: FenceMethod,
    pub incident_share: f64,
    /// Digests of the settings every host must share ([`crate::agreement`]).
    pub shared_settings: SharedSettings,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
}

/// A previous daemon's delta lease, from the state file.
#[derive(Clone, Debug)]
pub struct Takeover {
    pub generation: u64,
    pub nonce: u64,
    /// Leases held for processes that still run: resource -> (slot, lver, pid).
    pub resources: BTreeMap<String, Held>,
    /// Leases of holders that exited meanwhile: released after the takeover.
    pub release: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Joining,
    Joined,
    /// The lease was lost: holders are being killed; a rejoin follows.
    SelfFenced(String),
    /// The join failed for a reason retrying cannot fix.
    Failed(String),
    Left,
}

impl Phase {
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Joining => "joining",
            Phase::Joined => "joined",
            Phase::SelfFenced(_) => "self-fenced",
            Phase::Failed(_) => "failed",
            Phase::Left => "left",
        }
    }
}

/// Who a resource lease is held for on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// A registered process: the lease ends with it (pidfd).
    Process(i32),
    /// A VM this daemon runs through libvirt, by domain UUID: the lease
    /// ends when the daemon stops it (or destroys it on a self-fence).
    Vm(String),
}

impl HeldBy {
    pub fn pid(&self) -> Option<i32> {
        match self {
            HeldBy::Process(pid) => Some(*pid),
            HeldBy::Vm(_) => None,
        }
    }

    pub fn vm(&self) -> Option<&str> {
        match self {
            HeldBy::Process(_) => None,
            HeldBy::Vm(uuid) => Some(uuid),
        }
    }
}

impl std::fmt::Display for HeldBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeldBy::Process(pid) => write!(f, "pid {pid}"),
            HeldBy::Vm(uuid) => write!(f, "VM {uuid}"),
        }
    }
}

/// A resource lease held here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub slot: u32,
    pub lver: u64,
    pub by: HeldBy,
}

pub struct SpaceState {
    pub phase: Phase,
    pub lockspace: Option<Lockspace>,
    pub lease: Option<DeltaLease>,
    pub monitor: Option<Monitor>,
    pub renewal_failures: u64,
    pub consecutive_failures: u32,
    pub resources: BTreeMap<String, Held>,
    /// Leases to release once the device answers: (resource, owner).
    pub pending_release: Vec<(String, Owner)>,
    /// VMs (domain UUIDs) whose libvirt start is in flight or of unknown
    /// outcome: each may be running although no destroy saw it, so a
    /// self-fence gives no lease up and declares nothing over while one
    /// is here (see [`Space::begin_vm_start`]).
    pub vm_starts: std::collections::BTreeSet<String>,
}

/// A request for the resource worker; each carries its reply channel.
pub enum Job {
    Acquire {
        resource: String,
        by: HeldBy,
        reply: tokio::sync::oneshot::Sender<Result<AcquireReply, JobError>>,
    },
    Release {
        resource: String,
        by: HeldBy,
        /// Free the slot too (the resource is gone for good).
        forget: bool,
        reply: tokio::sync::oneshot::Sender<Result<ReleaseReply, JobError>>,
    },
    Inquire {
        resource: String,
        reply: tokio::sync::oneshot::Sender<Result<InquireReply, JobError>>,
    },
    /// A holder exited or unregistered: release its leases here.
    ReleaseAllOf { pid: i32 },
    /// Answered once every job queued before it is done.
    Barrier {
        reply: tokio::sync::oneshot::Sender<Result<(), JobError>>,
    },
}

/// A failed job, with the kind the client sees.
#[derive(Debug, Clone)]
pub struct JobError {
    pub kind: ErrorKind,
    pub message: String,
}

impl JobError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> JobError {
        JobError {
            kind,
            message: message.into(),
        }
    }

    fn from_lease(error: &LeaseError) -> JobError {
        let kind = match error {
            LeaseError::HeldByOther { .. } | LeaseError::Contention { .. } => ErrorKind::Busy,
            LeaseError::Disk(_) => ErrorKind::Storage,
            LeaseError::NotOwner { .. } => ErrorKind::NotFound,
            LeaseError::NoFreeSlot { .. } | LeaseError::ClaimBlocked { .. } => ErrorKind::Conflict,
            LeaseError::Invalid(_) => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        };
        JobError::new(kind, error.to_string())
    }
}

pub struct Space {
    pub config: SpaceConfig,
    context: Arc<Context>,
    state: Mutex<SpaceState>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    stop: (Mutex<bool>, Condvar),
    /// Signalled whenever the phase changes.
    phase_changed: Condvar,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Our clock when the renewal thread last finished an attempt, good or
    /// bad: proof that it is not wedged (for systemd's watchdog).
    last_attempt_ms: std::sync::atomic::AtomicU64,
    /// Set while the lockspace is being removed: acquires are refused.
    pub closing: std::sync::atomic::AtomicBool,
    /// Set by the fencing thread when it wrote a FENCED mark: the VM
    /// manager scans at once (the fenced host's VMs can be restarted).
    pub fenced_one: std::sync::atomic::AtomicBool,
    /// The device handle that writes our host sector, kept across join
    /// attempts, rejoins and the final leave: the io_uring engine refuses
    /// a write that an earlier timed-out write of the same handle could
    /// overtake, which only works if it is the same handle.
    host_disk: Mutex<Option<(BoxedDisk, Lockspace)>>,
    /// VMs (domain UUIDs) destroyed since this host lost its lease, whose
    /// leases are not given up yet: not destroyed (nor reported) again.
    destroyed_vms: Mutex<std::collections::BTreeSet<String>>,
    /// Set once the holders of a takeover that failed are confirmed gone:
    /// the next join raises the generation floor.
    floor_pending: std::sync::atomic::AtomicBool,
    /// The daemon's exit status when the join failed for good: 3 when
    /// another host uses our host id, else 1.
    pub failed_exit_status: std::sync::atomic::AtomicI32,
    /// Changes this host made to resource slots (acquires, releases,
    /// payload writes), published in our host record so the other hosts
    /// re-read the slots only when it moves; with the slots of the latest
    /// of them (readers re-read just those). One lock, so the two agree.
    resource_changes: Mutex<(u64, lease::format::ChangedSlots)>,
}

/// A change to publish waits at least this long after the last renewal:
/// a burst of changes costs one early renewal, not one each.
const PUBLISH_GAP_MS: u64 = 100;

fn clock() -> SystemClock {
    SystemClock
}

impl Space {
    /// Start the threads of a lockspace. The join runs on the renewal
    /// thread; `wait_joined` waits for its outcome.
    pub fn start(
        context: Arc<Context>,
        config: SpaceConfig,
        takeover: Option<Takeover>,
    ) -> std::io::Result<Arc<Space>> {
        let (sender, receiver) = mpsc::channel();
        let space = Arc::new(Space {
            config,
            context,
            state: Mutex::new(SpaceState {
                phase: Phase::Joining,
                lockspace: None,
                lease: None,
                monitor: None,
                renewal_failures: 0,
                consecutive_failures: 0,
                resources: BTreeMap::new(),
                pending_release: Vec::new(),
                vm_starts: std::collections::BTreeSet::new(),
            }),
            jobs: Mutex::new(Some(sender)),
            stop: (Mutex::new(false), Condvar::new()),
            phase_changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            last_attempt_ms: std::sync::atomic::AtomicU64::new(clock().now_ms()),
            closing: std::sync::atomic::AtomicBool::new(false),
            fenced_one: std::sync::atomic::AtomicBool::new(false),
            host_disk: Mutex::new(None),
            destroyed_vms: Mutex::new(std::collections::BTreeSet::new()),
            floor_pending: std::sync::atomic::AtomicBool::new(false),
            failed_exit_status: std::sync::atomic::AtomicI32::new(1),
            resource_changes: Mutex::new((1, lease::format::ChangedSlots::default())),
        });
        // Each thread is recorded as soon as it runs; if a later one cannot
        // be started, the earlier ones are stopped again.
        let spawned = (|| -> std::io::Result<()> {
            let renewal = Arc::clone(&space);
            let handle = std::thread::Builder::new()
                .name(format!("renew-{}", space.config.name))
                .spawn(move || renewal.renewal_thread(takeover))?;
            space.record_thread(handle);
            let worker = Arc::clone(&space);
            let handle = std::thread::Builder::new()
                .name(format!("worker-{}", space.config.name))
                .spawn(move || worker.worker_thread(receiver))?;
            space.record_thread(handle);
            let fencer = Arc::clone(&space);
            let handle = std::thread::Builder::new()
                .name(format!("fence-{}", space.config.name))
                .spawn(move || crate::fencing::fencing_thread(fencer))?;
            space.record_thread(handle);
            Ok(())
        })();
        if let Err(e) = spawned {
            space.request_stop();
            return Err(e);
        }
        Ok(space)
    }

    pub fn lock(&self) -> MutexGuard<'_, SpaceState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Record an event of this lockspace.
    pub fn emit(&self, level: Level, kind: &str, message: impl Into<String>) {
        self.context
            .events
            .emit(level, &self.config.name, kind, message);
    }

    fn set_phase(&self, phase: Phase) {
        let mut state = self.lock();
        state.phase = phase;
        drop(state);
        self.phase_changed.notify_all();
    }

    /// Wait until the join finished (joined or failed), up to `timeout`.
    pub fn wait_joined(&self, timeout: Duration) -> Phase {
        let mut state = self.lock();
        let deadline = std::time::Instant::now() + timeout;
        while state.phase == Phase::Joining {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            state = match self.phase_changed.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.phase.clone()
    }

    fn stopping(&self) -> bool {
        match self.stop.0.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Sleep until `deadline_ms` on our clock or until stopped; true if stopped.
    pub fn sleep_until(&self, deadline_ms: u64) -> bool {
        self.wait_for_renewal(deadline_ms, u64::MAX, self.resource_changes().0)
    }

    /// Count a change this host made to resource slot `slot` (None: not
    /// known which), and have the renewal thread publish it soon.
    pub fn note_resource_change(&self, slot: Option<u32>) {
        {
            let mut changes = self.changes();
            changes.0 = changes.0.wrapping_add(1);
            let count = changes.0;
            changes.1.note(count, slot);
        }
        // Under the lock, so a renewal thread that just found nothing
        // pending is already waiting when it is woken.
        let _guard = match self.stop.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.stop.1.notify_all();
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, (u64, lease::format::ChangedSlots)> {
        match self.resource_changes.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// This host's count of resource changes (see
    /// [`Self::note_resource_change`]) and the slots of the latest ones.
    pub fn resource_changes(&self) -> (u64, lease::format::ChangedSlots) {
        *self.changes()
    }

    /// The renewal thread's wait: until `regular_ms`, or until `publish_ms`
    /// once our count of resource changes differs from `published` (the
    /// count our record carries); never early with `publish_ms` u64::MAX.
    /// True when stopped.
    fn wait_for_renewal(&self, regular_ms: u64, publish_ms: u64, published: u64) -> bool {
        let mut stopped = match self.stop.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        loop {
            if *stopped {
                return true;
            }
            let now_ms = clock().now_ms();
            let pending = self.resource_changes().0 != published;
            if now_ms >= regular_ms || (pending && now_ms >= publish_ms) {
                return false;
            }
            let deadline_ms = if pending {
                regular_ms.min(publish_ms)
            } else {
                regular_ms
            };
            let wait = Duration::from_millis(deadline_ms - now_ms);
            stopped = match self.stop.1.wait_timeout(stopped, wait) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Ask both threads to finish (the renewal thread stops renewing; the
    /// caller then leaves or hands over).
    pub fn request_stop(&self) {
        match self.stop.0.lock() {
            Ok(mut guard) => *guard = true,
            Err(poisoned) => *poisoned.into_inner() = true,
        }
        self.stop.1.notify_all();
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }

    fn record_thread(&self, handle: std::thread::JoinHandle<()>) {
        match self.threads.lock() {
            Ok(mut threads) => threads.push(handle),
            Err(poisoned) => poisoned.into_inner().push(handle),
        }
    }

    /// Stop the lockspace's threads and wait for them to finish.
    pub fn stop_and_join(&self) {
        self.request_stop();
        let threads = match self.threads.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// Queue a job for the resource worker.
    pub fn submit(&self, job: Job) -> Result<(), JobError> {
        let jobs = match self.jobs.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match jobs.as_ref() {
            Some(sender) => sender
                .send(job)
                .map_err(|_| JobError::new(ErrorKind::NotJoined, "the lockspace is shutting down")),
            None => Err(JobError::new(
                ErrorKind::NotJoined,
                format!("lockspace {} is shutting down", self.config.name),
            )),
        }
    }

    /// A new handle on this lockspace's device.
    pub fn open(&self) -> Result<(BoxedDisk, Lockspace), LeaseError> {
        lease::open::open_lockspace(
            &self.config.device,
            self.config.engine,
            self.config.sector_size_bytes,
            Some(&self.config.name),
        )
    }

    /// What this host offers (no leased VM counts against it yet).
    fn capacity(&self) -> Capacity {
        capacity::current(self.config.memory_mib, self.config.vcpus, (0, 0))
    }

    /// May the watchdog be petted for this lockspace now? Only while our
    /// delta lease holds, or while no process holding a lease here runs.
    pub fn watchdog_ok(&self, now_ms: u64) -> bool {
        let state = self.lock();
        let holds = match (&state.phase, &state.lockspace, &state.lease) {
            (Phase::Joined, Some(space), Some(lease)) => delta::holds(space, lease, now_ms),
            _ => false,
        };
        let vms = state.resources.values().any(|h| h.by.vm().is_some());
        drop(state);
        holds || (!vms && self.context.holders.all_exited(&self.config.name))
    }

    /// Is the renewal thread alive and turning (whatever the storage
    /// says)? A thread stuck in an I/O for 10 io_timeouts is not.
    pub fn renewal_thread_turning(&self, now_ms: u64) -> bool {
        if self.lock().phase != Phase::Joined {
            return true;
        }
        let last = self
            .last_attempt_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        now_ms.saturating_sub(last) <= 10 * u64::from(self.config.io_timeout_ms)
    }

    /// Called often by the guard thread: a watchdog host whose renewal
    /// deadline passed kills its holders at once, not at the next renewal
    /// attempt.
    pub fn check_deadline(&self, now_ms: u64) {
        let expired = {
            let state = self.lock();
            match (&state.phase, &state.lockspace, &state.lease) {
                (Phase::Joined, Some(space), Some(lease)) => {
                    self.config.watchdog && !delta::holds(space, lease, now_ms)
                }
                _ => false,
            }
        };
        if expired {
            self.self_fence("the renewal deadline passed (storage failing or daemon stalled)");
        }
    }

    /// Lose the lease: kill every process holding a lease here (SIGKILL
    /// through its pidfd). Idempotent. The renewal thread then releases
    /// what it can and rejoins once they are gone.
    pub fn self_fence(&self, reason: &str) {
        {
            let mut state = self.lock();
            if matches!(state.phase, Phase::SelfFenced(_) | Phase::Left) {
                return;
            }
            state.phase = Phase::SelfFenced(reason.to_string());
        }
        self.phase_changed.notify_all();
        self.emit(
            Level::Error,
            "self-fence",
            format!("lost the lockspace: {reason}; killing every lease holder"),
        );
        for (pidfd, result) in self.context.holders.kill_all(Some(&self.config.name)) {
            match result {
                Ok(()) => self.emit(
                    Level::Warn,
                    "holder-killed",
                    format!("sent SIGKILL to lease holder pid {}", pidfd.pid),
                ),
                Err(e) => self.emit(
                    Level::Error,
                    "holder-kill-failed",
                    format!("cannot kill lease holder pid {}: {e}", pidfd.pid),
                ),
            }
        }
        self.destroy_vms();
    }

    /// The VM manager is about to start VM `name` (domain `uuid`) through
    /// libvirt: allowed only while this host holds the lockspace and the
    /// VM's lease for that domain. Decided under the state lock, so a
    /// self-fence either comes first (no start) or waits for the start's
    /// outcome ([`Space::end_vm_start`]) before any lease goes.
    pub fn begin_vm_start(&self, name: &str, uuid: &str) -> bool {
        let mut state = self.lock();
        let held = state
            .resources
            .get(name)
            .is_some_and(|h| h.by.vm() == Some(uuid));
        if state.phase != Phase::Joined || !held {
            return false;
        }
        state.vm_starts.insert(uuid.to_string());
        true
    }

    /// The start of `uuid` has a known outcome now (running, or confirmed
    /// not running). A VM destroyed before the start finished is destroyed
    /// again by the next [`Space::destroy_vms`].
    pub fn end_vm_start(&self, uuid: &str) {
        self.lock().vm_starts.remove(uuid);
        let mut done = match self.destroyed_vms.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        done.remove(uuid);
    }

    /// VM starts whose outcome is not known yet.
    pub fn vm_starts_in_flight(&self) -> usize {
        self.lock().vm_starts.len()
    }

    /// Destroy every VM whose lease is held here, at once (self-fence, or
    /// leases that cannot be taken over). True when none of them runs any
    /// more; a VM libvirt could not destroy keeps its lease held here (and
    /// the watchdog unfed) until a later call succeeds, and while a VM
    /// start is in flight nothing counts as destroyed yet.
    pub fn destroy_vms(&self) -> bool {
        // Held throughout: the guard and renewal threads may both get here.
        let mut done = match self.destroyed_vms.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let in_flight = self.vm_starts_in_flight();
        let vms: BTreeMap<String, String> = self
            .held_vms()
            .into_iter()
            .filter(|(_, uuid)| !done.contains(uuid))
            .collect();
        if vms.is_empty() {
            return in_flight == 0;
        }
        let uuids: Vec<String> = vms.values().cloned().collect();
        let failed = self.context.destroy_domains(&uuids);
        for (name, uuid) in &vms {
            match failed.iter().find(|(u, _)| u == uuid) {
                None => {
                    done.insert(uuid.clone());
                    self.emit(
                        Level::Warn,
                        "vm-destroyed",
                        format!(
                            "destroyed {name} ({uuid}): this host no longer holds the lockspace"
                        ),
                    )
                }
                Some((_, e)) => self.emit(
                    Level::Error,
                    "vm-destroy-failed",
                    format!("cannot destroy {name} ({uuid}): {e}; its lease stays held here"),
                ),
            }
        }
        failed.is_empty() && in_flight == 0
    }

    fn join_request(&self) -> JoinRequest {
        JoinRequest {
            host_id: self.config.host_id,
            host_name: self.config.host_name.clone(),
            io_timeout_ms: self.config.io_timeout_ms,
            nonce: lease::ids::random_u64(),
            capacity: self.capacity(),
            watchdog: self.config.watchdog,
            fence_method: self.config.fence_method,
            shared_settings: self.config.shared_settings,
        }
    }

    /// Errors that retrying will not fix.
    fn permanent(error: &LeaseError) -> bool {
        !matches!(
            error,
            LeaseError::Disk(_) | LeaseError::JoinRace { .. } | LeaseError::DeltaLost { .. }
        )
    }

    /// Open the device and join (or take over a previous daemon's lease).
    /// Retries storage errors until stopped; returns None when stopped or
    /// failed for good.
    fn join_loop(
        &self,
        mut takeover: Option<Takeover>,
    ) -> Option<(BoxedDisk, Lockspace, DeltaLease)> {
        let io_timeout_ms = u64::from(self.config.io_timeout_ms);
        loop {
            if self.stopping() {
                return None;
            }
            let pending = takeover.clone();
            let parked = self.park_host_disk(None);
            let attempt = match parked {
                Some(opened) => Ok(opened),
                None => self.open(),
            }
            .and_then(|(disk, space)| {
                let joined = (|| {
                    let lease = match takeover.take() {
                        Some(previous) => self.try_takeover(disk.as_ref(), &space, previous)?,
                        None => None,
                    };
                    match lease {
                        Some(lease) => Ok(lease),
                        None => run(
                            delta::join(&space, self.join_request()),
                            disk.as_ref(),
                            &clock(),
                        ),
                    }
                })();
                match joined {
                    Ok(lease) => Ok((disk, space, lease)),
                    Err(e) => {
                        // Keep the handle: a write of this attempt may
                        // still be in flight.
                        self.park_host_disk(Some((disk, space)));
                        Err(e)
                    }
                }
            });
            match attempt {
                Ok(joined) => return Some(joined),
                Err(error) if Self::permanent(&error) => {
                    self.emit(
                        Level::Error,
                        "join-failed",
                        format!(
                            "cannot join lockspace {} on {}: {error}",
                            self.config.name, self.config.device
                        ),
                    );
                    let status = match error {
                        LeaseError::HostIdInUse { .. } | LeaseError::HostIdNotFree { .. } => 3,
                        _ => 1,
                    };
                    self.failed_exit_status
                        .store(status, std::sync::atomic::Ordering::SeqCst);
                    self.set_phase(Phase::Failed(error.to_string()));
                    return None;
                }
                Err(error) => {
                    // The holders of a takeover we cannot confirm are not
                    // protected: kill them now rather than after the
                    // others may count this host dead.
                    if pending.as_ref().is_some_and(|t| !t.resources.is_empty()) {
                        self.emit(
                            Level::Error,
                            "takeover-failed",
                            format!("cannot confirm the previous daemon's lease ({error}); killing the holders it left"),
                        );
                        self.kill_unprotected_holders();
                    }
                    takeover = None;
                    self.emit(
                        Level::Warn,
                        "join-retry",
                        format!(
                            "joining lockspace {} failed, retrying: {error}",
                            self.config.name
                        ),
                    );
                    if self.sleep_until(clock().now_ms() + io_timeout_ms) {
                        return None;
                    }
                }
            }
        }
    }

    /// Put the host-sector handle aside (Some) or take it back (None).
    fn park_host_disk(
        &self,
        handle: Option<(BoxedDisk, Lockspace)>,
    ) -> Option<(BoxedDisk, Lockspace)> {
        let mut slot = match self.host_disk.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match handle {
            Some(handle) => {
                *slot = Some(handle);
                None
            }
            None => slot.take(),
        }
    }

    /// Take up the delta lease a previous daemon of this host left running
    /// (planned restart, or a crash): only the very generation and nonce it
    /// recorded, and only while its renewal deadline (counted from its
    /// last write, conservatively) has not passed. Otherwise every process
    /// it left holding leases is killed and we join anew.
    fn try_takeover(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        previous: Takeover,
    ) -> Result<Option<DeltaLease>, LeaseError> {
        let adopted = run(
            delta::adopt(space, self.config.host_id, &self.config.host_name),
            disk,
            &clock(),
        );
        let now_ms = clock().now_ms();
        let usable = match adopted {
            Ok(mut lease)
                if lease.record.generation == previous.generation
                    && lease.record.nonce == previous.nonce
                    && lease.record.flags.watchdog == self.config.watchdog
                    && lease.record.io_timeout_ms == self.config.io_timeout_ms =>
            {
                // The record's timestamp is the previous daemon's clock at
                // its last write, and that clock is ours (same boot): its
                // renewal began at most one io_timeout before that.
                lease.last_renewal_ms = lease
                    .record
                    .timestamp_ms
                    .min(now_ms)
                    .saturating_sub(u64::from(self.config.io_timeout_ms));
                delta::holds(space, &lease, now_ms).then_some(lease)
            }
            Ok(_) => None,
            Err(LeaseError::Disk(e)) => return Err(LeaseError::Disk(e)),
            Err(_) => None,
        };
        match usable {
            Some(lease) => {
                let count = previous.resources.len();
                {
                    let mut state = self.lock();
                    state.resources = previous.resources;
                    let owner = lease.owner();
                    state
                        .pending_release
                        .extend(previous.release.into_iter().map(|name| (name, owner)));
                }
                self.emit(
                    Level::Info,
                    "taken-over",
                    format!(
                        "took over generation {} from the previous daemon with {count} lease(s) of running holders",
                        lease.record.generation
                    ),
                );
                Ok(Some(lease))
            }
            None => {
                self.emit(
                    Level::Warn,
                    "takeover-refused",
                    "the previous daemon's lease cannot be taken over (changed, fenced or past its deadline): killing the holders it left and joining anew",
                );
                self.kill_unprotected_holders();
                Ok(None)
            }
        }
    }

    /// Kill every process holding a lease of this lockspace that no delta
    /// lease of ours protects (a takeover that failed), wait until each has
    /// really exited, then forget their leases here.
    fn kill_unprotected_holders(&self) {
        self.context.kill_holders_of(&self.config.name);
        while !self.destroy_vms() {
            if self.sleep_until(clock().now_ms() + 1000) {
                return;
            }
        }
        self.lock().resources.clear();
        if let Ok(mut guard) = self.destroyed_vms.lock() {
            guard.clear();
        }
        // Nothing of the earlier generation runs any more: the first
        // renewal says so, so its leases can be taken at once.
        self.floor_pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn renewal_thread(self: Arc<Self>, takeover: Option<Takeover>) {
        let span = tracing::info_span!("lockspace", host = self.config.host_id.get(), lockspace = %self.config.name);
        let _entered = span.enter();
        let mut takeover = takeover;
        let mut raise_floor = self
            .context
            .rebooted
            .load(std::sync::atomic::Ordering::SeqCst);
        loop {
            let Some((disk, space, lease)) = self.join_loop(takeover.take()) else {
                return;
            };
            raise_floor |= self
                .floor_pending
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            let timeouts = lease.timeouts();
            {
                let mut state = self.lock();
                state.monitor = Some(Monitor::new(
                    space.geometry.max_hosts(),
                    self.config.host_id,
                    timeouts,
                    self.config.incident_share,
                    self.config.shared_settings,
                ));
                state.lockspace = Some(space.clone());
                state.lease = Some(lease.clone());
                state.phase = Phase::Joined;
                state.consecutive_failures = 0;
            }
            self.phase_changed.notify_all();
            self.emit(
                Level::Info,
                "joined",
                format!(
                    "holding host id {} generation {} on {} (io_timeout {} ms, watchdog {})",
                    lease.record.host_id,
                    lease.record.generation,
                    self.config.device,
                    self.config.io_timeout_ms,
                    if self.config.watchdog { "yes" } else { "no" }
                ),
            );
            self.context.persist();
            if !self.renew_loop(disk.as_ref(), &space, raise_floor) {
                // Stopped: `leave` writes with this same handle.
                self.park_host_disk(Some((disk, space)));
                return;
            }
            // Self-fenced: wait for the holders to die, release what we
            // can, then join again with a new generation.
            self.after_self_fence(disk.as_ref(), &space);
            self.park_host_disk(Some((disk, space)));
            if self.stopping() {
                return;
            }
            raise_floor = true;
            self.set_phase(Phase::Joining);
        }
    }

    /// Renew until stopped (false) or self-fenced (true).
    /// `raise_floor`: nothing of our earlier generations runs (this host
    /// rebooted, or every holder was confirmed dead after a self-fence):
    /// the first renewal says so on disk, so their leases can be taken at
    /// once instead of after a fence.
    fn renew_loop(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        mut raise_floor: bool,
    ) -> bool {
        let mut advertised = self.capacity();
        // A new incarnation (or a takeover) counts on past the record's
        // count, so its first renewal publishes a count that moved.
        if let Some(lease) = self.lock().lease.as_ref() {
            // The slots of the changes in between are not known: readers
            // that saw an earlier count read every slot.
            let mut changes = self.changes();
            changes.0 = changes.0.max(lease.record.resource_changes.wrapping_add(1));
            changes.1.clear();
        }
        loop {
            let (lease, next_ms, publish_ms) = {
                let state = self.lock();
                if let Phase::SelfFenced(_) = state.phase {
                    return true;
                }
                let Some(lease) = state.lease.clone() else {
                    return true;
                };
                let timeouts = lease.timeouts();
                let next_ms = if state.consecutive_failures == 0 {
                    lease.last_renewal_ms + timeouts.renew_interval_ms
                } else {
                    clock().now_ms() + (timeouts.io_timeout_ms / 2).max(1)
                };
                // No early renewal while renewals fail: they retry on
                // their own schedule.
                let publish_ms = if state.consecutive_failures == 0 {
                    lease.last_renewal_ms + PUBLISH_GAP_MS
                } else {
                    u64::MAX
                };
                (lease, next_ms, publish_ms)
            };
            let published = lease.record.resource_changes;
            if self.wait_for_renewal(next_ms, publish_ms, published) {
                return false;
            }
            if let Phase::SelfFenced(_) = self.lock().phase {
                return true;
            }
            let capacity = self.capacity();
            let (changes, changed_slots) = self.resource_changes();
            let request = RenewRequest {
                scan: true,
                capacity: (capacity != advertised).then_some(capacity),
                raise_floor,
                resource_changes: (changes != published).then_some((changes, changed_slots)),
            };
            let started = std::time::Instant::now();
            let result = run(delta::renew(space, &lease, request), disk, &clock());
            self.context
                .metrics
                .renewal(&self.config.name, started.elapsed());
            self.last_attempt_ms
                .store(clock().now_ms(), std::sync::atomic::Ordering::SeqCst);
            match result {
                Ok(renewal) => {
                    advertised = capacity;
                    if raise_floor {
                        raise_floor = false;
                        self.emit(
                            Level::Info,
                            "floor-raised",
                            format!(
                                "generations below {} declared over: none of their processes runs",
                                renewal.lease.record.generation
                            ),
                        );
                    }
                    let mut transitions = Vec::new();
                    let recovered;
                    {
                        let mut state = self.lock();
                        if let Phase::SelfFenced(_) = state.phase {
                            return true;
                        }
                        recovered = state.consecutive_failures > 0;
                        state.consecutive_failures = 0;
                        if let (Some(monitor), Some(area)) =
                            (state.monitor.as_mut(), renewal.host_area.as_deref())
                        {
                            transitions =
                                monitor.observe(renewal.lease.last_renewal_ms, space, area);
                        }
                        state.lease = Some(renewal.lease);
                    }
                    if recovered {
                        self.emit(Level::Info, "renewal-recovered", "renewals succeed again");
                    }
                    for t in transitions {
                        let level = if t.warn { Level::Warn } else { Level::Info };
                        if let Some((host_id, name)) = &t.host {
                            match t.kind.as_str() {
                                "host-silent" | "host-dead" => {
                                    self.context.failover(|timeline, now_ms| {
                                        timeline.detected(
                                            *host_id,
                                            name,
                                            now_ms,
                                            crate::events::utc_now(),
                                        )
                                    })
                                }
                                "host-fenced" => self.context.failover(|timeline, now_ms| {
                                    timeline.mark_seen(
                                        *host_id,
                                        name,
                                        now_ms,
                                        crate::events::utc_now(),
                                    )
                                }),
                                _ => {}
                            }
                        }
                        self.emit(level, &t.kind, t.message);
                    }
                }
                Err(
                    error @ (LeaseError::Fenced { .. }
                    | LeaseError::DeltaLost { .. }
                    | LeaseError::Corrupt { .. }),
                ) => {
                    // Fenced, taken, or overwritten with something we did
                    // not write: it is no longer ours.
                    self.self_fence(&error.to_string());
                    return true;
                }
                Err(error @ LeaseError::RenewalExpired { .. }) => {
                    if self.config.watchdog {
                        self.self_fence(&error.to_string());
                        return true;
                    }
                    // Without a watchdog nobody takes our leases before
                    // fencing us: go on with this generation if the sector
                    // is still ours.
                    match run(delta::resume(space, &lease), disk, &clock()) {
                        Ok(resumed) => {
                            self.emit(
                                Level::Warn,
                                "renewal-resumed",
                                format!("renewals failed past the deadline ({error}); the sector is still ours, renewing generation {} again", resumed.record.generation),
                            );
                            let mut state = self.lock();
                            state.lease = Some(resumed);
                        }
                        Err(e @ (LeaseError::Fenced { .. } | LeaseError::DeltaLost { .. })) => {
                            self.self_fence(&e.to_string());
                            return true;
                        }
                        Err(e) => self.note_failure(&e),
                    }
                }
                Err(error) => self.note_failure(&error),
            }
        }
    }

    fn note_failure(&self, error: &LeaseError) {
        let count = {
            let mut state = self.lock();
            state.renewal_failures = state.renewal_failures.saturating_add(1);
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.consecutive_failures
        };
        if count == 1 || count % 10 == 0 {
            self.emit(
                Level::Warn,
                "renewal-failed",
                format!("renewal failed ({count} in a row): {error}"),
            );
        }
    }

    /// After losing the lease: wait (bounded) for the killed holders to
    /// exit, release the leases they held where the device lets us, and
    /// forget them.
    fn after_self_fence(&self, disk: &dyn lease::disk::Disk, space: &Lockspace) {
        let wait_ms = u64::from(self.config.io_timeout_ms);
        loop {
            if self.context.holders.all_exited(&self.config.name) && self.destroy_vms() {
                break;
            }
            if self.sleep_until(clock().now_ms() + wait_ms.min(100)) {
                return;
            }
            // Kill again: a holder registered in the meantime is covered too.
            self.context.holders.kill_all(Some(&self.config.name));
        }
        let (resources, owner) = {
            let mut state = self.lock();
            let owner = state.lease.as_ref().map(DeltaLease::owner);
            (std::mem::take(&mut state.resources), owner)
        };
        if let Ok(mut guard) = self.destroyed_vms.lock() {
            guard.clear();
        }
        if let Some(owner) = owner {
            for (name, held) in &resources {
                let request = ReleaseRequest {
                    location: space.geometry.resource_lease(held.slot),
                    owner,
                    lver: Some(held.lver),
                    clear_name: false,
                    name: Some(name.clone()),
                };
                // Best effort: after a FENCED mark or the watchdog rule the
                // others may take these anyway.
                let _ = run(paxos::release(space, request), disk, &clock());
                self.note_resource_change(Some(held.slot));
                if let HeldBy::Process(pid) = held.by {
                    self.context
                        .holders
                        .remove_lease(pid, &(self.config.name.clone(), name.clone()));
                }
            }
        }
        self.context.persist();
        self.emit(
            Level::Warn,
            "self-fence-done",
            format!(
                "every holder is gone, {} lease(s) given up; joining again with a new generation",
                resources.len()
            ),
        );
    }

    // ---- resource worker -------------------------------------------------

    fn worker_thread(self: Arc<Self>, jobs: mpsc::Receiver<Job>) {
        let span = tracing::info_span!("lockspace", host = self.config.host_id.get(), lockspace = %self.config.name);
        let _entered = span.enter();
        let mut device: Option<(BoxedDisk, Lockspace)> = None;
        let retry = Duration::from_millis(u64::from(self.config.io_timeout_ms).max(100));
        loop {
            let job = match jobs.recv_timeout(retry) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if device.is_none() {
                match self.open() {
                    Ok(opened) => device = Some(opened),
                    Err(e) => {
                        if let Some(job) = job {
                            fail_job(job, JobError::from_lease(&e));
                        }
                        continue;
                    }
                }
            }
            let Some((disk, space)) = device.as_ref() else {
                continue;
            };
            self.retry_pending_releases(disk.as_ref(), space);
            match job {
                Some(Job::Acquire {
                    resource,
                    by,
                    reply,
                }) => {
                    let result = self.acquire(disk.as_ref(), space, &resource, by, &reply);
                    if let Err(unsent) = reply.send(result) {
                        // The client gave up waiting: do not keep a lease
                        // nobody knows about.
                        if unsent.is_ok() {
                            self.release_held(disk.as_ref(), space, &resource);
                        }
                    }
                }
                Some(Job::Release {
                    resource,
                    by,
                    forget,
                    reply,
                }) => {
                    let result = self.release(disk.as_ref(), space, &resource, Some(&by), forget);
                    let _ = reply.send(result);
                }
                Some(Job::Barrier { reply }) => {
                    let _ = reply.send(Ok(()));
                }
                Some(Job::Inquire { resource, reply }) => {
                    let _ = reply.send(self.inquire(disk.as_ref(), space, &resource));
                }
                Some(Job::ReleaseAllOf { pid }) => {
                    let names: Vec<String> = self
                        .lock()
                        .resources
                        .iter()
                        .filter(|(_, h)| h.by == HeldBy::Process(pid))
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in names {
                        match self.release(disk.as_ref(), space, &name, None, false) {
                            Ok(_) => self.emit(
                                Level::Info,
                                "released-on-exit",
                                format!("released {name}: its holder pid {pid} is gone"),
                            ),
                            Err(e) => self.emit(
                                Level::Warn,
                                "release-failed",
                                format!(
                                    "releasing {name} of exited pid {pid} failed ({}); will retry",
                                    e.message
                                ),
                            ),
                        }
                    }
                }
                None => {}
            }
        }
    }

    fn joined_owner(&self) -> Result<(Owner, Vec<(HostId, u64)>), JobError> {
        let state = self.lock();
        match (&state.phase, &state.lockspace, &state.lease) {
            (Phase::Joined, Some(space), Some(lease))
                if delta::holds(space, lease, clock().now_ms()) =>
            {
                let dead = state
                    .monitor
                    .as_ref()
                    .map(Monitor::dead_hosts)
                    .unwrap_or_default();
                Ok((lease.owner(), dead))
            }
            (phase, _, _) => Err(JobError::new(
                ErrorKind::NotJoined,
                format!(
                    "host {} does not hold lockspace {} ({}): no lease can be acquired now",
                    self.config.host_id,
                    self.config.name,
                    phase.label()
                ),
            )),
        }
    }

    fn acquire(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        resource: &str,
        by: HeldBy,
        reply: &tokio::sync::oneshot::Sender<Result<AcquireReply, JobError>>,
    ) -> Result<AcquireReply, JobError> {
        if reply.is_closed() {
            return Err(JobError::new(ErrorKind::Internal, "the client went away"));
        }
        if let HeldBy::Process(pid) = by {
            self.context
                .holders
                .check_alive(pid)
                .map_err(|e| JobError::new(ErrorKind::NotFound, e.to_string()))?;
        }
        // (Cloned: joined_owner takes the state lock again.)
        let held = self.lock().resources.get(resource).cloned();
        if let Some(held) = held {
            return if held.by == by {
                Ok(AcquireReply {
                    lockspace: self.config.name.clone(),
                    resource: resource.to_string(),
                    slot: held.slot,
                    lver: held.lver,
                    generation: self.joined_owner()?.0.generation,
                    vm: None,
                })
            } else {
                Err(JobError::new(
                    ErrorKind::Busy,
                    format!(
                        "resource busy: {resource} is held on this host by {}",
                        held.by
                    ),
                ))
            };
        }
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) || self.stopping() {
            return Err(JobError::new(
                ErrorKind::NotJoined,
                format!("lockspace {} is being removed", self.config.name),
            ));
        }
        let (owner, dead_hosts) = self.joined_owner()?;
        // A release of this name whose outcome is unknown must finish
        // first: run later, it would undo the acquire we are about to make.
        if self
            .lock()
            .pending_release
            .iter()
            .any(|(name, o)| name == resource && *o == owner)
        {
            return Err(JobError::new(
                ErrorKind::Storage,
                format!("an earlier release of {resource} is still waiting for the device; try again once it answers"),
            ));
        }
        let request = NamedAcquire {
            name: resource.to_string(),
            owner,
            dead_hosts,
            io_timeout_ms: self.config.io_timeout_ms,
            seed: lease::ids::random_u64(),
        };
        let acquired = run(resource::acquire(space, request), disk, &clock());
        // A claim that failed half-way may have touched a slot we cannot name.
        self.note_resource_change(acquired.as_ref().ok().map(|(slot, _)| *slot));
        match acquired {
            Ok((slot, leader)) => {
                let held = Held {
                    slot,
                    lver: leader.lver,
                    by: by.clone(),
                };
                // Still the same incarnation, and the holder still there?
                // Both recorded under the state lock: a self-fence takes
                // that lock first, so it either sees the lease (and kills
                // its holder) or we see the self-fence.
                let still = {
                    let mut state = self.lock();
                    let same = state.phase == Phase::Joined
                        && state.lease.as_ref().map(DeltaLease::owner) == Some(owner);
                    let key = (self.config.name.clone(), resource.to_string());
                    let bound = match &by {
                        HeldBy::Process(pid) => self.context.holders.add_lease(*pid, key).is_ok(),
                        HeldBy::Vm(_) => true,
                    };
                    if same && bound {
                        state.resources.insert(resource.to_string(), held.clone());
                        state
                            .pending_release
                            .retain(|(name, o)| !(name == resource && *o == owner));
                        true
                    } else {
                        false
                    }
                };
                if !still {
                    let _ = self.release_lease(disk, space, resource, &held, owner, false);
                    return Err(JobError::new(
                        ErrorKind::NotJoined,
                        "the lockspace or the holder was lost during the acquire; the lease was given back",
                    ));
                }
                self.context.persist();
                self.emit(
                    Level::Info,
                    "acquired",
                    format!(
                        "acquired {resource} (slot {slot}, lver {}) for {by}",
                        leader.lver
                    ),
                );
                Ok(AcquireReply {
                    lockspace: self.config.name.clone(),
                    resource: resource.to_string(),
                    slot,
                    lver: leader.lver,
                    generation: owner.generation,
                    vm: None,
                })
            }
            Err(error) => {
                if matches!(error, LeaseError::Disk(_)) {
                    // The outcome is unknown: we may have won on disk.
                    self.lock()
                        .pending_release
                        .push((resource.to_string(), owner));
                }
                Err(self.describe_busy(disk, space, resource, &error))
            }
        }
    }

    /// The lock plugin's acquire for QEMU (registered process `pid`) of a
    /// lease this host holds for HA VM `vm` (domain UUID), which the VM
    /// manager starts with that lease in its definition: granted without
    /// touching the device, and `pid` is attached to the hold, so that a
    /// self-fence kills it with the holders and a release of the hold
    /// kills it first. The hold stays the VM's: the process's release or
    /// exit leaves it held. None when the lease is not held here for that
    /// VM (the caller then acquires for the process as usual).
    pub fn attach_to_vm_hold(
        &self,
        resource: &str,
        pid: i32,
        vm: &str,
    ) -> Option<Result<AcquireReply, JobError>> {
        // Under the state lock, as an acquire records its holder: a
        // self-fence either comes first (refused here) or kills `pid`.
        let state = self.lock();
        let held = state.resources.get(resource)?;
        if !held
            .by
            .vm()
            .is_some_and(|uuid| uuid.eq_ignore_ascii_case(vm))
        {
            return None;
        }
        let generation = match (&state.phase, &state.lockspace, &state.lease) {
            (Phase::Joined, Some(space), Some(lease))
                if delta::holds(space, lease, clock().now_ms()) =>
            {
                lease.owner().generation
            }
            (phase, _, _) => {
                return Some(Err(JobError::new(
                    ErrorKind::NotJoined,
                    format!(
                        "host {} does not hold lockspace {} ({}): {resource} cannot be used now",
                        self.config.host_id,
                        self.config.name,
                        phase.label()
                    ),
                )))
            }
        };
        let key = (self.config.name.clone(), resource.to_string());
        let attached = self
            .context
            .holders
            .check_alive(pid)
            .and_then(|()| self.context.holders.add_lease(pid, key));
        if let Err(e) = attached {
            return Some(Err(JobError::new(ErrorKind::NotFound, e.to_string())));
        }
        let reply = AcquireReply {
            lockspace: self.config.name.clone(),
            resource: resource.to_string(),
            slot: held.slot,
            lver: held.lver,
            generation,
            vm: held.by.vm().map(str::to_string),
        };
        drop(state);
        self.emit(
            Level::Info,
            "vm-lease-attached",
            format!(
                "pid {pid} runs VM {vm} under this host's hold of {resource} (slot {}, lver {}): nothing acquired",
                reply.slot, reply.lver
            ),
        );
        Some(Ok(reply))
    }

    /// Before a hold for a VM is released: SIGKILL every process attached
    /// to it ([`Space::attach_to_vm_hold`]) that still runs, and wait for
    /// it to be gone, so nothing runs the VM once the lease can go. Err
    /// when one does not exit in time (the lease then stays held).
    fn end_attached(&self, resource: &str) -> Result<(), JobError> {
        let key = (self.config.name.clone(), resource.to_string());
        let attached = self.context.holders.with_lease(&key);
        let deadline = clock().now_ms() + ATTACHED_EXIT_WAIT_MS;
        for pidfd in &attached {
            if pidfd.exited() {
                continue;
            }
            let how = match pidfd.kill() {
                Ok(()) => "sent it SIGKILL".to_string(),
                Err(e) => format!("cannot kill it: {e}"),
            };
            self.emit(
                Level::Warn,
                "holder-killed",
                format!(
                    "pid {} still ran under the VM lease {resource} being released; {how}",
                    pidfd.pid
                ),
            );
            let left = deadline.saturating_sub(clock().now_ms());
            if !pidfd.wait_exit(left) {
                return Err(JobError::new(
                    ErrorKind::Conflict,
                    format!(
                        "pid {} still runs under the VM lease {resource}; the lease stays held",
                        pidfd.pid
                    ),
                ));
            }
        }
        for pidfd in &attached {
            self.context.holders.remove_lease(pidfd.pid, &key);
        }
        Ok(())
    }

    /// A busy error naming the holder ("held by host 2 (hostB)").
    fn describe_busy(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        resource: &str,
        error: &LeaseError,
    ) -> JobError {
        let mut job_error = JobError::from_lease(error);
        if let LeaseError::HeldByOther { owner, .. } = error {
            let name = run(delta::joined_owner(space, owner.host_id), disk, &clock())
                .map(|r| r.host_name)
                .unwrap_or_default();
            job_error.message = format!(
                "resource busy: lease {resource} held by host {} ({name}) generation {}",
                owner.host_id, owner.generation
            );
        }
        job_error
    }

    fn release_lease(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        resource: &str,
        held: &Held,
        owner: Owner,
        forget: bool,
    ) -> Result<u64, LeaseError> {
        if held.slot >= space.geometry.max_resources() {
            return Err(LeaseError::Invalid(format!(
                "slot {} of {resource} is beyond the device's {} slots",
                held.slot,
                space.geometry.max_resources()
            )));
        }
        let request = ReleaseRequest {
            location: space.geometry.resource_lease(held.slot),
            owner,
            lver: Some(held.lver),
            clear_name: forget,
            name: Some(resource.to_string()),
        };
        let result = run(paxos::release(space, request), disk, &clock());
        self.note_resource_change(Some(held.slot));
        if let Err(LeaseError::Disk(_)) = &result {
            self.lock()
                .pending_release
                .push((resource.to_string(), owner));
        }
        result
    }

    fn release_held(&self, disk: &dyn lease::disk::Disk, space: &Lockspace, resource: &str) {
        let _ = self.release(disk, space, resource, None, false);
    }

    fn release(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        resource: &str,
        by: Option<&HeldBy>,
        forget: bool,
    ) -> Result<ReleaseReply, JobError> {
        let (held, owner) = {
            let state = self.lock();
            let held = state.resources.get(resource).cloned();
            let owner = state.lease.as_ref().map(DeltaLease::owner);
            (held, owner)
        };
        let Some(held) = held else {
            return Err(JobError::new(
                ErrorKind::NotFound,
                format!("{resource} is not held on this host"),
            ));
        };
        let key = (self.config.name.clone(), resource.to_string());
        if let (Some(HeldBy::Process(pid)), HeldBy::Vm(uuid)) = (by, &held.by) {
            // A process attached to the VM's hold (the lock plugin pausing
            // QEMU) lets go of the hold, not of the lease.
            if self.context.holders.remove_lease(*pid, &key) {
                return Ok(ReleaseReply {
                    lockspace: self.config.name.clone(),
                    resource: resource.to_string(),
                    lver: held.lver,
                    vm: Some(uuid.clone()),
                });
            }
        }
        if let Some(by) = by {
            if held.by != *by {
                return Err(JobError::new(
                    ErrorKind::NotFound,
                    format!("{resource} is held for {}, not {by}", held.by),
                ));
            }
        }
        let Some(owner) = owner else {
            return Err(JobError::new(ErrorKind::NotJoined, "no delta lease"));
        };
        if let HeldBy::Vm(_) = held.by {
            self.end_attached(resource)?;
        }
        // Forget it first: a release whose write failed is retried from
        // pending_release, never reported as still held.
        self.lock().resources.remove(resource);
        if let HeldBy::Process(pid) = held.by {
            self.context.holders.remove_lease(pid, &key);
        }
        let result = self.release_lease(disk, space, resource, &held, owner, forget);
        self.context.persist();
        match result {
            Ok(lver) => {
                self.emit(
                    Level::Info,
                    "released",
                    format!("released {resource} (slot {}, lver {lver})", held.slot),
                );
                Ok(ReleaseReply {
                    lockspace: self.config.name.clone(),
                    resource: resource.to_string(),
                    lver,
                    vm: None,
                })
            }
            Err(LeaseError::NotOwner { .. }) => Ok(ReleaseReply {
                lockspace: self.config.name.clone(),
                resource: resource.to_string(),
                lver: held.lver,
                vm: None,
            }),
            Err(e) => Err(JobError::new(
                JobError::from_lease(&e).kind,
                format!("{e}; the release will be retried until the device answers"),
            )),
        }
    }

    fn retry_pending_releases(&self, disk: &dyn lease::disk::Disk, space: &Lockspace) {
        let pending = std::mem::take(&mut self.lock().pending_release);
        for (name, owner) in pending {
            let released = run(resource::release(space, &name, owner), disk, &clock());
            self.note_resource_change(match &released {
                Ok(Some((slot, _))) => Some(*slot),
                _ => None,
            });
            match released {
                Ok(_) => {}
                Err(LeaseError::Disk(_)) => self.lock().pending_release.push((name, owner)),
                Err(e) => self.emit(
                    Level::Warn,
                    "release-failed",
                    format!("giving up releasing {name}: {e}"),
                ),
            }
        }
    }

    fn inquire(
        &self,
        disk: &dyn lease::disk::Disk,
        space: &Lockspace,
        resource: &str,
    ) -> Result<InquireReply, JobError> {
        let found = run(resource::lookup(space, resource), disk, &clock())
            .map_err(|e| JobError::from_lease(&e))?;
        let (held_here, held_for_vm) = match self.lock().resources.get(resource) {
            Some(held) => (held.by.pid(), held.by.vm().map(str::to_string)),
            None => (None, None),
        };
        let Some((slot, _)) = found else {
            return Ok(InquireReply {
                lockspace: self.config.name.clone(),
                resource: resource.to_string(),
                slot: None,
                lver: 0,
                holder_host_id: None,
                holder_host_name: None,
                holder_generation: None,
                held_here_by_pid: held_here,
                held_here_for_vm: held_for_vm,
            });
        };
        let status = run(
            paxos::inquire(space, space.geometry.resource_lease(slot)),
            disk,
            &clock(),
        )
        .map_err(|e| JobError::from_lease(&e))?;
        let holder_name = status.holder.and_then(|owner| {
            run(delta::joined_owner(space, owner.host_id), disk, &clock())
                .ok()
                .map(|r| r.host_name)
        });
        Ok(InquireReply {
            lockspace: self.config.name.clone(),
            resource: resource.to_string(),
            slot: Some(slot),
            lver: status.leader.lver,
            holder_host_id: status.holder.map(|o| o.host_id.get()),
            holder_host_name: holder_name,
            holder_generation: status.holder.map(|o| o.generation),
            held_here_by_pid: held_here,
            held_here_for_vm: held_for_vm,
        })
    }

    // ---- for the VM manager ---------------------------------------------------

    /// Our delta lease's owner while joined and holding it.
    pub fn owner(&self) -> Option<Owner> {
        self.joined_owner().ok().map(|(owner, _)| owner)
    }

    /// Every host's last record seen here with its state name, and the
    /// hosts the watchdog rule declares dead (with the generation).
    pub fn host_records(&self) -> HostRecords {
        let state = self.lock();
        match (&state.monitor, &state.lockspace) {
            (Some(monitor), Some(space)) => (monitor.records(space), monitor.dead_hosts()),
            _ => (Vec::new(), Vec::new()),
        }
    }

    /// Is some other host neither plainly live nor over: silent, unknown,
    /// unreadable, or live but with a record that has stood still for more
    /// than `still_ms`? Then a fence (and a failover) may be under way, and
    /// that host may have changed slots without publishing a count. (A
    /// host that left, was fenced or is dead by the watchdog rule changes
    /// nothing any more.)
    pub fn hosts_unsettled(&self, still_ms: u64) -> bool {
        let state = self.lock();
        let (Some(monitor), Some(space)) = (&state.monitor, &state.lockspace) else {
            return false;
        };
        monitor.hosts(space).iter().any(|h| {
            !h.this_host
                && match h.state.as_str() {
                    "unused" | "left" | "fenced" | "dead" => false,
                    "live" => h.unchanged_for_ms > still_ms,
                    _ => true,
                }
        })
    }

    /// The VM leases held here: resource name -> domain UUID.
    pub fn held_vms(&self) -> BTreeMap<String, String> {
        self.lock()
            .resources
            .iter()
            .filter_map(|(name, held)| held.by.vm().map(|uuid| (name.clone(), uuid.to_string())))
            .collect()
    }

    // ---- status and shutdown ----------------------------------------------

    pub fn status(&self) -> LockspaceStatus {
        let state = self.lock();
        let now_ms = clock().now_ms();
        let hosts = match (&state.monitor, &state.lockspace) {
            (Some(monitor), Some(space)) => monitor.hosts(space),
            _ => Vec::new(),
        };
        let label = match (&state.phase, state.consecutive_failures) {
            (Phase::Joined, n) if n > 0 => "renewal-failing".to_string(),
            (phase, _) => phase.label().to_string(),
        };
        LockspaceStatus {
            name: self.config.name.clone(),
            device: self.config.device.clone(),
            io_timeout_ms: self.config.io_timeout_ms,
            state: label,
            generation: state
                .lease
                .as_ref()
                .map(|l| l.record.generation)
                .unwrap_or(0),
            last_renewal_age_ms: state
                .lease
                .as_ref()
                .map(|l| now_ms.saturating_sub(l.last_renewal_ms)),
            renewal_failures: state.renewal_failures,
            storage_incident: state
                .monitor
                .as_ref()
                .is_some_and(Monitor::storage_incident),
            hosts: hosts.into_iter().filter(|h| h.state != "unused").collect(),
            resources: state
                .resources
                .iter()
                .map(|(name, h)| ResourceStatus {
                    name: name.clone(),
                    slot: h.slot,
                    lver: h.lver,
                    pid: h.by.pid().unwrap_or(0),
                    vm: h.by.vm().map(str::to_string),
                })
                .collect(),
        }
    }

    /// The state file's view of this lockspace.
    pub fn persisted(&self) -> Option<(u64, u64, BTreeMap<String, Held>)> {
        let state = self.lock();
        match (&state.phase, &state.lease) {
            (Phase::Joined, Some(lease)) => Some((
                lease.record.generation,
                lease.record.nonce,
                state.resources.clone(),
            )),
            _ => None,
        }
    }

    /// Clean leave: release every lease (their holders must be gone) and
    /// mark our record released. The renewal thread must be stopped first.
    pub fn leave(&self) -> Result<(), LeaseError> {
        let (space, lease, resources) = {
            let state = self.lock();
            (
                state.lockspace.clone(),
                state.lease.clone(),
                state.resources.clone(),
            )
        };
        let (Some(space), Some(lease)) = (space, lease) else {
            self.set_phase(Phase::Left);
            return Ok(());
        };
        let (disk, _) = match self.park_host_disk(None) {
            Some(handle) => handle,
            None => self.open()?,
        };
        // Every release is tried; one that fails does not keep us from
        // leaving (leaving raises the floor, which ends those leases too).
        for (name, held) in &resources {
            if let Err(e) =
                self.release_lease(disk.as_ref(), &space, name, held, lease.owner(), false)
            {
                self.emit(
                    Level::Warn,
                    "release-failed",
                    format!("releasing {name} on leave: {e}"),
                );
            }
        }
        let pending = std::mem::take(&mut self.lock().pending_release);
        for (name, owner) in pending {
            let released = run(
                resource::release(&space, &name, owner),
                disk.as_ref(),
                &clock(),
            );
            if let Err(e) = released {
                self.emit(
                    Level::Warn,
                    "release-failed",
                    format!("releasing {name} on leave: {e}"),
                );
            }
        }
        run(delta::leave(&space, &lease), disk.as_ref(), &clock())?;
        {
            let mut state = self.lock();
            state.resources.clear();
        }
        self.set_phase(Phase::Left);
        self.emit(
            Level::Info,
            "left",
            format!(
                "left lockspace {} (generation {})",
                self.config.name, lease.record.generation
            ),
        );
        Ok(())
    }
}

fn fail_job(job: Job, error: JobError) {
    match job {
        Job::Acquire { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Release { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Inquire { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Barrier { reply } => {
            let _ = reply.send(Err(error));
        }
        Job::ReleaseAllOf { .. } => {}
    }
}
