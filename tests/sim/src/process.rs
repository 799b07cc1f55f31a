//! One simulated host process: what it holds and the operations it runs.
//! The protocol work is done by the real `lease` operations; this is only
//! the host's bookkeeping around them (what the daemon will do).

use crate::clock::HostClock;
use crate::rng::Rng;
use lease::delta::{DeltaLease, Renewal};
use lease::format::{HostRecord, LeaderRecord};
use lease::observer::Observer;
use lease::op::{IoOutcome, Operation, Step};
use lease::{HostId, LeaseError};
use std::collections::BTreeMap;

/// A process runs at most one operation per lane: renewal (join, renew,
/// leave) on one, resource work (acquire, release, fence marks) on the other,
/// as the daemon's renewal thread and its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LaneId {
    Renew,
    Work,
}

pub enum Running {
    Join(Operation<Result<DeltaLease, LeaseError>>),
    Renew(Operation<Result<Renewal, LeaseError>>),
    Leave(Operation<Result<HostRecord, LeaseError>>),
    Acquire {
        name: String,
        op: Operation<Result<(u32, LeaderRecord), LeaseError>>,
    },
    Release {
        name: String,
        op: Operation<Result<u64, LeaseError>>,
    },
    /// Release by name after an acquire whose outcome is unknown.
    Cleanup {
        name: String,
        op: Operation<Result<Option<(u32, u64)>, LeaseError>>,
    },
    Fence {
        victim: HostId,
        op: Operation<Result<HostRecord, LeaseError>>,
    },
}

pub enum Done {
    Join(Result<DeltaLease, LeaseError>),
    Renew(Result<Renewal, LeaseError>),
    Leave(Result<HostRecord, LeaseError>),
    Acquire(String, Result<(u32, LeaderRecord), LeaseError>),
    Release(String, Result<u64, LeaseError>),
    Cleanup(String, Result<Option<(u32, u64)>, LeaseError>),
    Fence(HostId, Result<HostRecord, LeaseError>),
}

fn map<T>(step: Step<T>, f: impl FnOnce(T) -> Done) -> Step<Done> {
    match step {
        Step::Io(io) => Step::Io(io),
        Step::WaitUntil(t) => Step::WaitUntil(t),
        Step::Done(value) => Step::Done(f(value)),
    }
}

impl Running {
    pub fn step(&mut self, now_ms: u64, outcome: Option<IoOutcome>) -> Step<Done> {
        match self {
            Running::Join(op) => map(op.step(now_ms, outcome), Done::Join),
            Running::Renew(op) => map(op.step(now_ms, outcome), Done::Renew),
            Running::Leave(op) => map(op.step(now_ms, outcome), Done::Leave),
            Running::Acquire { name, op } => {
                let name = name.clone();
                map(op.step(now_ms, outcome), move |r| Done::Acquire(name, r))
            }
            Running::Release { name, op } => {
                let name = name.clone();
                map(op.step(now_ms, outcome), move |r| Done::Release(name, r))
            }
            Running::Cleanup { name, op } => {
                let name = name.clone();
                map(op.step(now_ms, outcome), move |r| Done::Cleanup(name, r))
            }
            Running::Fence { victim, op } => {
                let victim = *victim;
                map(op.step(now_ms, outcome), move |r| Done::Fence(victim, r))
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Running::Join(_) => "join",
            Running::Renew(_) => "renew",
            Running::Leave(_) => "leave",
            Running::Acquire { .. } => "acquire",
            Running::Release { .. } => "release",
            Running::Cleanup { .. } => "cleanup",
            Running::Fence { .. } => "fence-mark",
        }
    }
}

#[derive(Default)]
pub struct Lane {
    pub running: Option<Running>,
    /// Bumped whenever the lane's operation is replaced or abandoned, so
    /// late events for an old operation are recognised and ignored.
    pub token: u64,
}

impl Lane {
    pub fn start(&mut self, running: Running) {
        assert!(self.running.is_none(), "lane busy");
        self.token += 1;
        self.running = Some(running);
    }

    pub fn abandon(&mut self) {
        self.token += 1;
        self.running = None;
    }

    pub fn idle(&self) -> bool {
        self.running.is_none()
    }
}

/// A storage path state for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Healthy,
    /// Every I/O fails with EIO (a failed write may still land).
    Failing {
        until_ms: u64,
    },
    /// Every I/O hangs until the path heals (it then completes, late).
    Hung {
        until_ms: u64,
    },
}

pub struct Process {
    pub host_id: HostId,
    pub name: String,
    /// Configured in the cluster (an impostor is not).
    pub primary: bool,
    pub io_timeout_ms: u32,
    pub watchdog: bool,
    pub fence_device: bool,
    pub clock: HostClock,
    pub rng: Rng,

    /// Bumped on every power cycle: events of an older life are ignored.
    pub epoch: u64,
    pub up: bool,
    pub paused_until_ms: Option<u64>,
    pub path: Path,
    /// Until this true time the host counts as disturbed by a fault, so the
    /// invariants do not call it "renewing" (see world.rs).
    pub disturbed_until_ms: u64,

    pub lease: Option<DeltaLease>,
    pub raise_floor_pending: bool,
    pub observer: Option<Observer>,
    pub next_renew_local_ms: u64,
    pub rejoin_local_ms: u64,
    pub renew: Lane,
    pub work: Lane,
    /// Resource name -> (slot, lver) of what this process holds (its VMs run).
    pub holdings: BTreeMap<String, (u32, u64)>,
    pub pending_fence: Option<(HostId, u64)>,
    /// Resources whose acquire failed with an I/O error: it may have won on
    /// disk all the same, so they are released by name.
    pub cleanup: std::collections::BTreeSet<String>,

    pub watchdog_armed: bool,
    pub watchdog_pets: u64,
    /// Liveness phase: the resource this process must end up holding.
    pub liveness_target: Option<String>,
    pub liveness_done: bool,
    pub liveness_error: Option<String>,
}

impl Process {
    pub fn lane(&mut self, lane: LaneId) -> &mut Lane {
        match lane {
            LaneId::Renew => &mut self.renew,
            LaneId::Work => &mut self.work,
        }
    }
}
