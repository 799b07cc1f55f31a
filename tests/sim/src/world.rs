//! The simulated world: a shared disk, host processes with their own
//! clocks, an event queue in true time, fault injection, and the invariant
//! checks. Everything is drawn from one seed; the same seed replays the same
//! event trace (its hash is printed).

use crate::clock::HostClock;
use crate::process::{Done, Lane, LaneId, Path, Process, Running};
use crate::rng::Rng;
use crate::scenario::Scenario;
use lease::delta::{self, FenceMark, JoinRequest, RenewRequest};
use lease::device::{self, FormatOptions};
use lease::disk::Disk as _;
use lease::disk::{DiskError, MemoryDisk};
use lease::format::{Capacity, FenceMethod, Geometry, LeaderRecord, LeaseKind, LeaseLocation};
use lease::observer::{HostState, Observer};
use lease::op::{Io, IoOutcome, Step};
use lease::paxos::{self, ReleaseRequest};
use lease::resource::{self, NamedAcquire};
use lease::timeouts::Timeouts;
use lease::{HostId, LeaseError, Lockspace};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Events one seed may process before it is stopped as runaway.
const EVENTS_MAX: u64 = 20_000_000;
/// Trace entries kept for a violation report.
const TRACE_KEPT: usize = 60;
/// Liveness phase: time to settle (release, rejoin), then to acquire.
const SETTLE_MS: u64 = 60_000;
const ACQUIRE_WINDOW_MS: u64 = 90_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Tick {
        p: usize,
        epoch: u64,
    },
    Wake {
        p: usize,
        epoch: u64,
        lane: LaneId,
        token: u64,
    },
    Apply {
        io: u64,
        chunk: u8,
    },
    Complete {
        io: u64,
    },
    Resume {
        p: usize,
        epoch: u64,
    },
    Heal {
        p: usize,
        epoch: u64,
    },
    PowerOn {
        p: usize,
    },
    WatchdogFire {
        p: usize,
        epoch: u64,
        pets: u64,
    },
    DeviceStallEnd,
    Fault(FaultKind),
    LivenessStart,
    LivenessAcquire,
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    Path,
    DeviceStall,
    Pause,
    ClockJump,
    Crash,
    Corruption,
    Spike,
}

struct PendingIo {
    p: usize,
    epoch: u64,
    lane: LaneId,
    token: u64,
    offset_bytes: u64,
    length_bytes: u64,
    /// Some for writes.
    data: Option<Vec<u8>>,
    buffer: Vec<u8>,
    applies_left: u8,
    /// EIO on a broken path.
    failed: bool,
    /// Refused: an earlier timed-out write of this process to the same
    /// sectors may still land (the Disk contract, see lease::disk).
    refused: bool,
    /// What the caller gets, fixed at completion (or at the deadline).
    outcome: Option<IoOutcome>,
    delivered: bool,
    /// When the process issued it (true time).
    issued_ms: u64,
    /// Issued on a hung path: reaches the device only when the path heals.
    waiting_for_heal: bool,
    /// After a power loss: the write vanishes, or lands torn.
    dropped: bool,
    torn: bool,
}

/// A broken invariant, with what happened just before.
#[derive(Clone, Debug)]
pub struct Violation {
    pub time_ms: u64,
    pub what: String,
    pub recent: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub joins: u64,
    pub renewals: u64,
    pub acquires_ok: u64,
    pub takeovers: u64,
    pub fences: u64,
    pub self_fences: u64,
    pub crashes: u64,
    pub watchdog_resets: u64,
    pub faults: u64,
    pub liveness_checked: bool,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: String,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub sim_ms: u64,
    pub host_ms: u64,
    pub stats: Stats,
}

pub struct World {
    seed: u64,
    scenario: Scenario,
    rng: Rng,
    space: Lockspace,
    disk: Vec<u8>,
    now_ms: u64,
    sequence: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    processes: Vec<Process>,
    /// Events that reached a paused process, replayed when it resumes.
    deferred: Vec<Vec<Event>>,
    ios: BTreeMap<u64, PendingIo>,
    next_io: u64,
    device_stalled_until_ms: u64,
    /// Latency spikes: per process, and of the whole device.
    spiked_until_ms: Vec<u64>,
    device_spiked_until_ms: u64,
    fences_in_progress: BTreeMap<HostId, u64>,
    liveness: bool,
    ended: bool,
    trace: Vec<String>,
    trace_hash: u64,
    violations: Vec<Violation>,
    stats: Stats,
    host_ms: u64,
    /// LEASEHOLD_SIM_DEBUG=1: trace every write that lands, decoded.
    debug: bool,
}

fn fnv(hash: u64, value: u64) -> u64 {
    let mut h = hash;
    for byte in value.to_le_bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl World {
    pub fn new(seed: u64, scenario: Scenario) -> World {
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let geometry = Geometry::new(
            scenario.sector_size_bytes,
            scenario.hosts.max(2),
            scenario.slots,
            scenario.sector_size_bytes,
        )
        .expect("simulator geometry");
        let memory = MemoryDisk::new(
            "sim",
            scenario.sector_size_bytes,
            geometry.device_size_bytes() as usize,
        );
        let options = FormatOptions {
            lockspace: "sim".to_string(),
            geometry,
            io_timeout_ms: 1000,
        };
        let mut space = device::format(&memory, &options).expect("format the simulated disk");
        if !scenario.names_probed {
            let header = lease::format::HeaderRecord {
                names_probed: false,
                ..lease::format::HeaderRecord::new("sim", geometry, options.io_timeout_ms)
                    .expect("header")
            };
            memory
                .write(0, &header.encode())
                .expect("write the simulated header");
            space.names_probed = false;
        }
        space.planted_bug = scenario.planted_bug;
        let disk = memory.with_bytes(|bytes| bytes.clone());
        let processes: Vec<Process> = (0..scenario.hosts as usize)
            .map(|i| {
                let host_id = HostId::new(i as u32 + 1).expect("nonzero");
                new_process(
                    host_id,
                    format!("host{}", i + 1),
                    true,
                    scenario.io_timeout_ms[i],
                    scenario.watchdog[i],
                    scenario.fence_device[i],
                    HostClock::new(scenario.drift_ppm[i], rng.range(1_000, 1_000_000) as i64),
                    rng.fork(),
                )
            })
            .collect();
        let mut world = World {
            seed,
            scenario,
            rng,
            space,
            disk,
            now_ms: 0,
            sequence: 0,
            queue: BinaryHeap::new(),
            deferred: vec![Vec::new(); processes.len()],
            processes,
            ios: BTreeMap::new(),
            next_io: 1,
            device_stalled_until_ms: 0,
            spiked_until_ms: Vec::new(),
            device_spiked_until_ms: 0,
            fences_in_progress: BTreeMap::new(),
            liveness: false,
            ended: false,
            trace: Vec::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            violations: Vec::new(),
            stats: Stats::default(),
            host_ms: 0,
            debug: std::env::var("LEASEHOLD_SIM_DEBUG").as_deref() == Ok("1"),
        };
        for p in 0..world.processes.len() {
            let delay = world.rng.below(2_000);
            world.schedule(delay, Event::PowerOn { p });
        }
        for kind in [
            FaultKind::Path,
            FaultKind::DeviceStall,
            FaultKind::Pause,
            FaultKind::ClockJump,
            FaultKind::Crash,
            FaultKind::Corruption,
            FaultKind::Spike,
        ] {
            world.schedule_fault(kind);
        }
        let duration = world.scenario.duration_ms;
        world.schedule(duration, Event::LivenessStart);
        world
    }

    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.schedule_at(self.now_ms + delay_ms, event);
    }

    fn schedule_at(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue
            .push(Reverse((at_ms.max(self.now_ms), self.sequence, event)));
    }

    fn mean_ms(&self, kind: FaultKind) -> Option<f64> {
        let f = &self.scenario.faults;
        match kind {
            FaultKind::Path => f.path_ms,
            FaultKind::DeviceStall => f.device_stall_ms,
            FaultKind::Pause => f.pause_ms,
            FaultKind::ClockJump => f.clock_jump_ms,
            FaultKind::Crash => f.crash_ms,
            FaultKind::Corruption => f.corruption_ms,
            FaultKind::Spike => f.spike_ms,
        }
    }

    fn schedule_fault(&mut self, kind: FaultKind) {
        if let Some(mean) = self.mean_ms(kind) {
            let delay = self.rng.exponential_ms(mean).max(1);
            self.schedule(delay, Event::Fault(kind));
        }
    }

    fn note(&mut self, code: u64, p: u64, text: impl FnOnce() -> String) {
        self.trace_hash = fnv(fnv(fnv(self.trace_hash, self.now_ms), code), p);
        if self.trace.len() >= TRACE_KEPT * 2 {
            self.trace.drain(..TRACE_KEPT);
        }
        let line = format!("{:>9} ms  {}", self.now_ms, text());
        if self.debug {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    fn violation(&mut self, what: String) {
        let start = self.trace.len().saturating_sub(TRACE_KEPT);
        self.violations.push(Violation {
            time_ms: self.now_ms,
            what,
            recent: self.trace[start..].to_vec(),
        });
    }

    fn local_ms(&self, p: usize) -> u64 {
        self.processes[p].clock.local_ms(self.now_ms)
    }

    /// A process's storage latency: its host's (an impostor uses the
    /// latencies of the host id it claims).
    fn latency_base_ms(&self, p: usize) -> u64 {
        let host = self.processes[p].host_id.index() as usize;
        self.scenario
            .latency_base_ms
            .get(host)
            .copied()
            .unwrap_or(1)
    }

    fn latency_jitter_ms(&self, p: usize) -> u64 {
        let host = self.processes[p].host_id.index() as usize;
        self.scenario
            .latency_jitter_ms
            .get(host)
            .copied()
            .unwrap_or(1)
    }

    fn timeouts(&self, p: usize) -> Timeouts {
        Timeouts::from_io_timeout_ms(self.processes[p].io_timeout_ms)
    }

    /// Run to the end; returns what was found.
    pub fn run(mut self) -> Outcome {
        let mut handled = 0u64;
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if self.ended {
                break;
            }
            handled += 1;
            if handled > EVENTS_MAX {
                self.violation(format!("runaway: more than {EVENTS_MAX} events"));
                break;
            }
            let elapsed = at - self.now_ms;
            self.host_ms += elapsed * self.processes.iter().filter(|p| p.up).count() as u64;
            self.now_ms = at;
            self.handle(event);
            if !self.violations.is_empty() {
                break;
            }
        }
        self.stats.events = handled;
        Outcome {
            seed: self.seed,
            scenario: self.scenario.to_string(),
            violations: self.violations,
            trace_hash: self.trace_hash,
            sim_ms: self.now_ms,
            host_ms: self.host_ms,
            stats: self.stats,
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { p, epoch } => {
                if self.live(p, epoch) && !self.defer(p, &event) {
                    self.tick(p);
                }
            }
            Event::Wake {
                p,
                epoch,
                lane,
                token,
            } => {
                if self.live(p, epoch)
                    && self.processes[p].lane(lane).token == token
                    && !self.defer(p, &event)
                {
                    self.step(p, lane, None);
                }
            }
            Event::Apply { io, chunk } => self.apply(io, chunk),
            Event::Complete { io } => self.complete(io),
            Event::Resume { p, epoch } => {
                if self.live(p, epoch) {
                    self.processes[p].paused_until_ms = None;
                    self.note(1, p as u64, || format!("p{p} resumes"));
                    let deferred = std::mem::take(self.deferred_for(p));
                    for e in deferred {
                        self.schedule(0, e);
                    }
                }
            }
            Event::Heal { p, epoch } => {
                if self.processes[p].epoch == epoch {
                    self.heal(p);
                }
            }
            Event::PowerOn { p } => self.power_on(p),
            Event::WatchdogFire { p, epoch, pets } => {
                let process = &self.processes[p];
                if process.epoch == epoch
                    && process.up
                    && process.watchdog_armed
                    && process.watchdog_pets == pets
                {
                    self.stats.watchdog_resets += 1;
                    self.note(2, p as u64, || format!("p{p} watchdog fires: reset"));
                    self.power_off(p, true);
                }
            }
            Event::DeviceStallEnd => {
                self.note(3, 0, || "device stall ends".to_string());
            }
            Event::Fault(kind) => {
                if !self.liveness {
                    self.inject(kind);
                    self.schedule_fault(kind);
                }
            }
            Event::LivenessStart => self.start_liveness(),
            Event::LivenessAcquire => {
                let targets = self.scenario.hosts.min(self.scenario.resources) as usize;
                for p in 0..targets {
                    self.processes[p].liveness_target = Some(format!("r{p}"));
                }
                self.note(4, 0, || {
                    "liveness: every host acquires its own resource".to_string()
                });
                self.schedule(ACQUIRE_WINDOW_MS, Event::End);
            }
            Event::End => self.end(),
        }
    }

    fn live(&self, p: usize, epoch: u64) -> bool {
        self.processes[p].up && self.processes[p].epoch == epoch
    }

    fn deferred_for(&mut self, p: usize) -> &mut Vec<Event> {
        &mut self.deferred[p]
    }

    /// A paused process takes no steps: keep the event for its resumption.
    fn defer(&mut self, p: usize, event: &Event) -> bool {
        if self.processes[p].paused_until_ms.is_some() {
            self.deferred[p].push(event.clone());
            true
        } else {
            false
        }
    }
}

/// A fresh process description (powered off).
#[allow(clippy::too_many_arguments)]
fn new_process(
    host_id: HostId,
    name: String,
    primary: bool,
    io_timeout_ms: u32,
    watchdog: bool,
    fence_device: bool,
    clock: HostClock,
    rng: Rng,
) -> Process {
    Process {
        host_id,
        name,
        primary,
        io_timeout_ms,
        watchdog,
        fence_device,
        clock,
        rng,
        epoch: 0,
        up: false,
        paused_until_ms: None,
        path: Path::Healthy,
        disturbed_until_ms: 0,
        lease: None,
        raise_floor_pending: false,
        observer: None,
        next_renew_local_ms: 0,
        rejoin_local_ms: 0,
        renew: Lane::default(),
        work: Lane::default(),
        holdings: BTreeMap::new(),
        pending_fence: None,
        cleanup: Default::default(),
        watchdog_armed: false,
        watchdog_pets: 0,
        liveness_target: None,
        liveness_done: false,
        liveness_error: None,
    }
}

impl World {
    // ---- host lifecycle -------------------------------------------------

    fn power_on(&mut self, p: usize) {
        if self.processes[p].up {
            return;
        }
        let local = self.local_ms(p);
        let max_hosts = self.space.geometry.max_hosts();
        let own = self.timeouts(p);
        let process = &mut self.processes[p];
        process.epoch += 1;
        process.up = true;
        process.paused_until_ms = None;
        process.path = Path::Healthy;
        process.lease = None;
        process.raise_floor_pending = false;
        process.observer = Some(Observer::new(max_hosts, own));
        process.rejoin_local_ms = local;
        process.renew.abandon();
        process.work.abandon();
        process.holdings.clear();
        process.pending_fence = None;
        process.cleanup.clear();
        process.watchdog_armed = false;
        let epoch = process.epoch;
        self.deferred[p].clear();
        self.note(10, p as u64, || format!("p{p} powers on"));
        self.schedule(0, Event::Tick { p, epoch });
        // A misconfigured second machine with the same host id may start
        // at the same moment.
        let primary = self.processes[p].primary;
        let impostors = self.processes.len() - self.scenario.hosts as usize;
        if primary
            && !self.liveness
            && impostors < self.scenario.hosts as usize
            && self.rng.chance(self.scenario.faults.impostor_chance)
        {
            let host_id = self.processes[p].host_id;
            let io_timeout = self.processes[p].io_timeout_ms;
            let watchdog = self.processes[p].watchdog;
            let drift = self.rng.range(0, 20_000) as i64 - 10_000;
            let clock = HostClock::new(drift, self.rng.range(1_000, 1_000_000) as i64);
            let fork = self.rng.fork();
            let q = self.processes.len();
            let name = format!("imp{host_id}-{q}");
            self.processes.push(new_process(
                host_id, name, false, io_timeout, watchdog, false, clock, fork,
            ));
            self.deferred.push(Vec::new());
            let delay = self.rng.below(u64::from(io_timeout));
            self.note(11, q as u64, || {
                format!("p{q} impostor for host {host_id} starts")
            });
            self.schedule(delay, Event::PowerOn { p: q });
        }
    }

    /// Power loss (or a watchdog reset): everything the process ran dies
    /// with it; its writes already sent to storage land, vanish or tear.
    fn power_off(&mut self, p: usize, restart: bool) {
        if !self.processes[p].up {
            return;
        }
        self.stats.crashes += 1;
        let torn_writes = self.scenario.faults.torn_writes;
        let ids: Vec<u64> = self
            .ios
            .iter()
            .filter(|(_, io)| io.p == p && io.data.is_some() && io.applies_left > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let roll = self.rng.below(100);
            if let Some(io) = self.ios.get_mut(&id) {
                if io.waiting_for_heal {
                    // Stuck in the dead host's storage path: never arrives.
                    io.waiting_for_heal = false;
                    io.applies_left = 0;
                } else if roll < 30 {
                    io.dropped = true;
                } else if roll < 50 && torn_writes {
                    io.torn = true;
                }
            }
            self.retire(id);
        }
        let timeout = u64::from(self.processes[p].io_timeout_ms);
        let process = &mut self.processes[p];
        process.up = false;
        process.epoch += 1;
        process.lease = None;
        process.holdings.clear();
        process.renew.abandon();
        process.work.abandon();
        process.watchdog_armed = false;
        process.paused_until_ms = None;
        self.deferred[p].clear();
        self.note(12, p as u64, || format!("p{p} loses power"));
        if restart {
            let delay = self.rng.range(5 * timeout, 30 * timeout);
            self.schedule(delay, Event::PowerOn { p });
        }
    }

    /// The process noticed it lost its delta lease: it kills its resources
    /// at once, stops feeding the watchdog and rejoins later.
    fn self_fence(&mut self, p: usize, reason: String) {
        self.stats.self_fences += 1;
        let local = self.local_ms(p);
        let timeout = u64::from(self.processes[p].io_timeout_ms);
        let max_hosts = self.space.geometry.max_hosts();
        let own = self.timeouts(p);
        let process = &mut self.processes[p];
        let delay = process.rng.range(timeout, 4 * timeout);
        process.holdings.clear();
        process.lease = None;
        process.renew.abandon();
        process.work.abandon();
        process.pending_fence = None;
        process.cleanup.clear();
        process.observer = Some(Observer::new(max_hosts, own));
        process.rejoin_local_ms = local + delay;
        // Its machine knows its processes are dead now: the next join may
        // declare the old generation over.
        self.note(13, p as u64, || format!("p{p} self-fences: {reason}"));
    }

    fn heal(&mut self, p: usize) {
        self.processes[p].path = Path::Healthy;
        // Hung I/Os reach the device now, late.
        let ids: Vec<(u64, u8)> = self
            .ios
            .iter_mut()
            .filter(|(_, io)| io.p == p && io.waiting_for_heal)
            .map(|(id, io)| {
                io.waiting_for_heal = false;
                (*id, io.applies_left)
            })
            .collect();
        for (id, chunks) in ids {
            let delay = self.rng.below(20);
            for chunk in 0..chunks {
                self.schedule(delay + u64::from(chunk), Event::Apply { io: id, chunk });
            }
        }
        self.note(14, p as u64, || format!("p{p} storage path heals"));
    }

    // ---- the host's own loop (what the daemon will do) -------------------

    fn tick(&mut self, p: usize) {
        let local = self.local_ms(p);
        let t = self.timeouts(p);
        let expired = match &self.processes[p].lease {
            Some(lease) => !delta::holds(&self.space, lease, local),
            None => false,
        };
        if expired {
            self.self_fence(p, "renewal deadline passed".to_string());
        }
        // Feed the watchdog only while the lease holds.
        let holds = self.processes[p]
            .lease
            .as_ref()
            .is_some_and(|lease| delta::holds(&self.space, lease, local));
        if holds && self.processes[p].watchdog {
            let process = &mut self.processes[p];
            process.watchdog_armed = true;
            process.watchdog_pets += 1;
            let (epoch, pets) = (process.epoch, process.watchdog_pets);
            self.schedule(
                t.watchdog_timeout_ms,
                Event::WatchdogFire { p, epoch, pets },
            );
        }
        if self.processes[p].renew.idle() {
            if self.processes[p].lease.is_none() {
                if local >= self.processes[p].rejoin_local_ms {
                    self.start_join(p);
                }
            } else if local >= self.processes[p].next_renew_local_ms {
                self.start_renew(p, local + t.renew_interval_ms);
            }
        }
        let leaving = matches!(self.processes[p].renew.running, Some(Running::Leave(_)));
        if self.processes[p].up
            && self.processes[p].work.idle()
            && self.processes[p].lease.is_some()
            && !leaving
        {
            self.work(p);
        }
        if self.processes[p].up {
            let next_local = self.local_ms(p) + t.io_timeout_ms / 2;
            let at = self.processes[p].clock.true_ms_at(next_local, self.now_ms);
            let epoch = self.processes[p].epoch;
            self.schedule_at(at, Event::Tick { p, epoch });
        }
    }

    fn start_join(&mut self, p: usize) {
        let process = &mut self.processes[p];
        let request = JoinRequest {
            host_id: process.host_id,
            host_name: process.name.clone(),
            io_timeout_ms: process.io_timeout_ms,
            nonce: process.rng.next_u64(),
            capacity: Capacity::default(),
            watchdog: process.watchdog,
            fence_method: if process.fence_device {
                FenceMethod::Ipmi
            } else {
                FenceMethod::None
            },
            shared_settings: Default::default(),
        };
        let op = delta::join(&self.space, request);
        process.renew.start(Running::Join(op));
        self.note(20, p as u64, || format!("p{p} joins"));
        self.step(p, LaneId::Renew, None);
    }

    fn start_renew(&mut self, p: usize, next_local_ms: u64) {
        let process = &mut self.processes[p];
        process.next_renew_local_ms = next_local_ms;
        let Some(lease) = &process.lease else { return };
        let request = RenewRequest {
            scan: true,
            capacity: None,
            raise_floor: process.raise_floor_pending,
            resource_changes: None,
        };
        let op = delta::renew(&self.space, lease, request);
        process.renew.start(Running::Renew(op));
        self.step(p, LaneId::Renew, None);
    }

    /// Pick the next piece of resource work: a fence mark owed, a fence to
    /// start, the liveness target, or a random acquire or release.
    fn work(&mut self, p: usize) {
        if let Some((victim, generation)) = self.processes[p].pending_fence {
            let mark = FenceMark {
                victim,
                generation,
                fencer: self.processes[p].host_id,
                method: FenceMethod::Ipmi,
            };
            let op = delta::mark_fenced(&self.space, mark);
            self.processes[p].work.start(Running::Fence { victim, op });
            self.step(p, LaneId::Work, None);
            return;
        }
        if let Some(name) = self.processes[p].cleanup.iter().next().cloned() {
            let Some(owner) = self.processes[p].lease.as_ref().map(|l| l.owner()) else {
                return;
            };
            let op = resource::release(&self.space, &name, owner);
            self.processes[p].work.start(Running::Cleanup { name, op });
            self.step(p, LaneId::Work, None);
            return;
        }
        if self.try_fence(p) {
            return;
        }
        if self.liveness {
            let first = self.processes[p]
                .holdings
                .iter()
                .next()
                .map(|(n, h)| (n.clone(), *h));
            if let Some((name, (slot, lver))) = first {
                self.start_release(p, name, slot, lver);
            } else if !self.processes[p].liveness_done {
                if let Some(target) = self.processes[p].liveness_target.clone() {
                    self.start_acquire(p, target);
                }
            }
            return;
        }
        let roll = self.processes[p].rng.below(100);
        if roll < 40 {
            let k = self.processes[p]
                .rng
                .below(u64::from(self.scenario.resources));
            let name = format!("r{k}");
            // Now and then acquire a resource we hold again: the library
            // must answer with the lease we hold, and never give it away.
            let again = self.processes[p].rng.chance(0.1);
            if again || !self.processes[p].holdings.contains_key(&name) {
                self.start_acquire(p, name);
            }
        } else if roll < 70 {
            let count = self.processes[p].holdings.len() as u64;
            if count > 0 {
                let index = self.processes[p].rng.below(count) as usize;
                let chosen = self.processes[p]
                    .holdings
                    .iter()
                    .nth(index)
                    .map(|(n, h)| (n.clone(), *h));
                if let Some((name, (slot, lver))) = chosen {
                    self.start_release(p, name, slot, lver);
                }
            }
        } else if roll < 71
            && self.processes[p].holdings.is_empty()
            && self.processes[p].renew.idle()
            && self.processes[p].pending_fence.is_none()
        {
            if let Some(lease) = self.processes[p].lease.clone() {
                let op = delta::leave(&self.space, &lease);
                self.processes[p].renew.start(Running::Leave(op));
                self.note(21, p as u64, || format!("p{p} leaves"));
                self.step(p, LaneId::Renew, None);
            }
        }
    }

    fn start_acquire(&mut self, p: usize, name: String) {
        let process = &mut self.processes[p];
        let Some(lease) = &process.lease else { return };
        let dead_hosts = process
            .observer
            .as_ref()
            .map(|o| o.dead_hosts())
            .unwrap_or_default();
        let request = NamedAcquire {
            name: name.clone(),
            owner: lease.owner(),
            dead_hosts,
            io_timeout_ms: process.io_timeout_ms,
            seed: process.rng.next_u64(),
        };
        let op = resource::acquire(&self.space, request);
        let dead = format!(
            "{:?}",
            process
                .observer
                .as_ref()
                .map(|o| o.dead_hosts())
                .unwrap_or_default()
        );
        process.work.start(Running::Acquire {
            name: name.clone(),
            op,
        });
        self.note(23, p as u64, || {
            format!("p{p} acquires {name} (dead by the watchdog rule: {dead})")
        });
        self.step(p, LaneId::Work, None);
    }

    fn start_release(&mut self, p: usize, name: String, slot: u32, lver: u64) {
        let process = &mut self.processes[p];
        let Some(lease) = &process.lease else { return };
        // The VM stops before the release is written: no longer held.
        process.holdings.remove(&name);
        let request = ReleaseRequest {
            location: self.space.geometry.resource_lease(slot),
            owner: lease.owner(),
            lver: Some(lver),
            clear_name: false,
            name: None,
        };
        let op = paxos::release(&self.space, request);
        process.work.start(Running::Release {
            name: name.clone(),
            op,
        });
        self.note(22, p as u64, || format!("p{p} releases {name}"));
        self.step(p, LaneId::Work, None);
    }

    /// A host whose own renewals work fences a host its observer calls
    /// silent, if that host's cluster entry has a fence device. (The single
    /// fencer per victim is elected through the fence lease in the daemon;
    /// here one fence at a time per victim is simply enforced.)
    fn try_fence(&mut self, p: usize) -> bool {
        let local = self.local_ms(p);
        let renew_interval = self.timeouts(p).renew_interval_ms;
        let healthy = self.processes[p]
            .lease
            .as_ref()
            .is_some_and(|l| local.saturating_sub(l.last_renewal_ms) <= 2 * renew_interval);
        if !healthy {
            return false;
        }
        let now = self.now_ms;
        self.fences_in_progress
            .retain(|_, started| now.saturating_sub(*started) < 60_000);
        let Some(observer) = &self.processes[p].observer else {
            return false;
        };
        let mut victim = None;
        for q in 0..self.scenario.hosts as usize {
            let host_id = self.processes[q].host_id;
            if host_id == self.processes[p].host_id || !self.processes[q].fence_device {
                continue;
            }
            let view = observer.view(host_id);
            let silent = matches!(view.state, HostState::Silent | HostState::Dead);
            let record = view
                .record
                .filter(|r| r.host_name == self.processes[q].name && !r.flags.fenced);
            if let (true, Some(record)) = (silent, record) {
                if !self.fences_in_progress.contains_key(&host_id) {
                    victim = Some((q, host_id, record.generation));
                    break;
                }
            }
        }
        let Some((q, host_id, generation)) = victim else {
            return false;
        };
        if !self.processes[p]
            .rng
            .chance(self.scenario.fence_success_chance)
        {
            self.note(30, p as u64, || {
                format!("p{p} fails to fence host {host_id}")
            });
            return false;
        }
        if self.renewing(q, generation) {
            let name = self.processes[q].name.clone();
            self.violation(format!(
                "p{p} fenced host {host_id} ({name}) generation {generation} while it was renewing"
            ));
        }
        self.stats.fences += 1;
        self.fences_in_progress.insert(host_id, self.now_ms);
        self.note(31, p as u64, || {
            format!("p{p} powers off host {host_id} (p{q})")
        });
        self.power_off(q, true);
        self.processes[p].pending_fence = Some((host_id, generation));
        self.work(p);
        true
    }

    /// Is process q, with this generation, renewing undisturbed right now?
    fn renewing(&self, q: usize, generation: u64) -> bool {
        let process = &self.processes[q];
        process.up
            && process.paused_until_ms.is_none()
            && self.now_ms >= process.disturbed_until_ms
            && process
                .lease
                .as_ref()
                .is_some_and(|l| l.record.generation == generation)
    }

    fn disturb(&mut self, p: usize, until_ms: u64) {
        // Long enough for any observer to have watched it recover.
        let margin = 20 * u64::from(self.processes[p].io_timeout_ms);
        let process = &mut self.processes[p];
        process.disturbed_until_ms = process.disturbed_until_ms.max(until_ms + margin);
    }

    // ---- operation results ----------------------------------------------

    fn done(&mut self, p: usize, done: Done) {
        let local = self.local_ms(p);
        match done {
            Done::Join(Ok(lease)) => {
                self.stats.joins += 1;
                let t = self.timeouts(p);
                let own_restart = lease.previous.host_name == self.processes[p].name
                    && !lease.previous.is_unused();
                let generation = lease.record.generation;
                let process = &mut self.processes[p];
                // A restart of this machine (or after its self-fence): its
                // old processes are gone, so its old generation may end.
                process.raise_floor_pending = own_restart;
                // The first renewal is due one interval after the join's
                // write, as in the daemon (renew_loop: last_renewal_ms +
                // renew_interval), not after the settle wait.
                process.next_renew_local_ms = lease.last_renewal_ms + t.renew_interval_ms;
                process.lease = Some(lease);
                self.note(40, p as u64, || {
                    format!("p{p} joined, generation {generation}")
                });
            }
            Done::Join(Err(e)) => {
                let timeout = u64::from(self.processes[p].io_timeout_ms);
                let delay = self.processes[p].rng.range(timeout, 5 * timeout);
                self.processes[p].rejoin_local_ms = local + delay;
                self.note(41, p as u64, || format!("p{p} join failed: {e}"));
            }
            Done::Renew(Ok(renewal)) => {
                self.stats.renewals += 1;
                let process = &mut self.processes[p];
                if renewal.lease.record.generation_floor == renewal.lease.record.generation {
                    process.raise_floor_pending = false;
                }
                if let (Some(observer), Some(area)) =
                    (process.observer.as_mut(), renewal.host_area.as_ref())
                {
                    observer.observe(local, &self.space, area);
                }
                process.lease = Some(renewal.lease);
            }
            Done::Renew(Err(LeaseError::Disk(_)))
            | Done::Renew(Err(LeaseError::Corrupt { .. })) => {
                // Try again T/2 after the failure, as the daemon's renewal
                // thread does (space.rs, renew_loop); the deadline decides.
                let retry_ms = (u64::from(self.processes[p].io_timeout_ms) / 2).max(1);
                let process = &mut self.processes[p];
                process.next_renew_local_ms = process.next_renew_local_ms.min(local + retry_ms);
            }
            Done::Renew(Err(e)) => self.self_fence(p, e.to_string()),
            Done::Leave(result) => {
                let process = &mut self.processes[p];
                assert!(
                    process.holdings.is_empty(),
                    "the simulated host left while holding resources"
                );
                process.lease = None;
                process.watchdog_armed = false;
                let delay = process.rng.range(2_000, 20_000);
                process.rejoin_local_ms = local + delay;
                let ok = result.is_ok();
                self.note(42, p as u64, || format!("p{p} left (ok={ok})"));
            }
            Done::Acquire(name, Ok((slot, leader))) => {
                self.stats.acquires_ok += 1;
                if self.liveness
                    && self.processes[p].liveness_target.as_deref() == Some(name.as_str())
                {
                    self.processes[p].liveness_done = true;
                }
                let holders: Vec<usize> = (0..self.processes.len())
                    .filter(|&q| q != p && self.processes[q].holdings.contains_key(&name))
                    .collect();
                self.processes[p]
                    .holdings
                    .insert(name.clone(), (slot, leader.lver));
                let lver = leader.lver;
                self.note(43, p as u64, || {
                    format!("p{p} holds {name} (slot {slot}, lver {lver})")
                });
                if let Some(&q) = holders.first() {
                    self.violation(format!(
                        "two holders of {name}: p{p} ({}) acquired lver {lver} while p{q} ({}) holds lver {}",
                        self.processes[p].name, self.processes[q].name, self.processes[q].holdings[&name].1
                    ));
                }
            }
            Done::Acquire(name, Err(e)) => {
                // An acquire that failed with an I/O error may have won on
                // disk: release it by name, unless we held it before (then
                // its resource runs and the lease stays ours).
                if matches!(e, LeaseError::Disk(_))
                    && !self.processes[p].holdings.contains_key(&name)
                {
                    self.processes[p].cleanup.insert(name.clone());
                }
                if self.liveness
                    && self.processes[p].liveness_target.as_deref() == Some(name.as_str())
                {
                    self.processes[p].liveness_error = Some(e.to_string());
                }
            }
            Done::Release(name, result) => {
                let summary = match &result {
                    Ok(lver) => format!("released lver {lver}"),
                    Err(e) => format!("release failed: {e}"),
                };
                self.note(47, p as u64, || format!("p{p} {name}: {summary}"));
                if matches!(result, Err(LeaseError::Disk(_))) {
                    // The release may not have landed: the lease may still
                    // be ours on disk. Release it by name until that works.
                    self.processes[p].cleanup.insert(name);
                }
            }
            Done::Cleanup(name, result) => {
                let summary = format!("{result:?}");
                self.note(48, p as u64, || {
                    format!("p{p} cleanup of {name}: {summary}")
                });
                if !matches!(result, Err(LeaseError::Disk(_))) {
                    self.processes[p].cleanup.remove(&name);
                }
            }
            Done::Fence(victim, result) => match result {
                Ok(_) => {
                    self.processes[p].pending_fence = None;
                    self.note(44, p as u64, || format!("p{p} marked host {victim} fenced"));
                }
                Err(e @ LeaseError::FenceTargetMoved { .. }) => {
                    self.processes[p].pending_fence = None;
                    self.note(46, p as u64, || {
                        format!("p{p} fence mark of host {victim} dropped: {e}")
                    });
                }
                Err(e) => {
                    // Keep the mark owed; retried on the next tick.
                    self.note(45, p as u64, || {
                        format!("p{p} fence mark of host {victim} failed: {e}")
                    });
                }
            },
        }
    }

    // ---- operations and I/O ---------------------------------------------

    fn step(&mut self, p: usize, lane: LaneId, outcome: Option<IoOutcome>) {
        let local = self.local_ms(p);
        let Some(running) = self.processes[p].lane(lane).running.as_mut() else {
            return;
        };
        match running.step(local, outcome) {
            Step::Io(io) => self.issue(p, lane, io),
            Step::WaitUntil(deadline) => {
                let at = self.processes[p].clock.true_ms_at(deadline, self.now_ms);
                let epoch = self.processes[p].epoch;
                let token = self.processes[p].lane(lane).token;
                self.schedule_at(
                    at,
                    Event::Wake {
                        p,
                        epoch,
                        lane,
                        token,
                    },
                );
            }
            Step::Done(done) => {
                self.processes[p].lane(lane).running = None;
                self.done(p, done);
            }
        }
    }

    fn issue(&mut self, p: usize, lane: LaneId, io: Io) {
        let id = self.next_io;
        self.next_io += 1;
        let (offset_bytes, length_bytes, data) = match io {
            Io::Read {
                offset_bytes,
                length_bytes,
            } => (offset_bytes, length_bytes, None),
            Io::Write { offset_bytes, data } => (offset_bytes, data.len() as u64, Some(data)),
        };
        let timeout = u64::from(self.processes[p].io_timeout_ms);
        let mut latency = self.latency_base_ms(p) + self.rng.below(self.latency_jitter_ms(p) + 1);
        if !self.liveness
            && self.scenario.faults.io_stall_chance > 0.0
            && self.rng.chance(self.scenario.faults.io_stall_chance)
        {
            let stall = self.rng.range(timeout, 5 * timeout);
            latency += stall;
            // A host without a watchdog is called silent after 6T, which
            // rides out latency of up to 3T (docs/timeouts.md, "Detection
            // in fence mode"); one I/O held longer than that may get it
            // fenced, as a path failure may. (A watchdog host's 8T rides
            // out the whole 5T: no exception for it.)
            if stall > 3 * timeout && !self.processes[p].watchdog {
                let until = self.now_ms + latency;
                self.disturb(p, until);
            }
        }
        if self.device_stalled_until_ms > self.now_ms {
            latency =
                latency.max(self.device_stalled_until_ms - self.now_ms + self.latency_base_ms(p));
        }
        let spiked_until_ms = self
            .spiked_until_ms
            .get(p)
            .copied()
            .unwrap_or(0)
            .max(self.device_spiked_until_ms);
        if spiked_until_ms > self.now_ms {
            latency = latency.max(spiked_until_ms - self.now_ms + self.latency_base_ms(p));
        }
        let sectors = length_bytes / u64::from(self.scenario.sector_size_bytes);
        let chunks: u8 = if data.is_none() && sectors > 1 { 2 } else { 1 };
        let is_write = data.is_some();
        let path = self.processes[p].path;
        let end_bytes = offset_bytes + length_bytes;
        // As the io_uring engine: no write, and no read on the same handle
        // (lane), over sectors that an earlier write of ours may still land
        // on (a read could return what that write is about to replace).
        let refused = self.ios.values().any(|io| {
            io.p == p
                && (is_write || io.lane == lane)
                && io.data.is_some()
                && io.applies_left > 0
                && !io.dropped
                && io.offset_bytes < end_bytes
                && offset_bytes < io.offset_bytes + io.length_bytes
        });
        let failed = refused || matches!(path, Path::Failing { .. });
        let lands = !refused && (!failed || (is_write && self.rng.chance(0.5)));
        let pending = PendingIo {
            p,
            epoch: self.processes[p].epoch,
            lane,
            token: self.processes[p].lane(lane).token,
            offset_bytes,
            length_bytes,
            data,
            buffer: vec![0; length_bytes as usize],
            applies_left: if lands { chunks } else { 0 },
            failed,
            refused,
            outcome: None,
            delivered: false,
            issued_ms: self.now_ms,
            waiting_for_heal: matches!(path, Path::Hung { .. }) && lands,
            dropped: false,
            torn: false,
        };
        self.ios.insert(id, pending);
        match path {
            _ if refused => {
                self.schedule(0, Event::Complete { io: id });
            }
            Path::Failing { .. } => {
                if lands {
                    let at = self.rng.below(latency + 1);
                    self.schedule(at, Event::Apply { io: id, chunk: 0 });
                }
                let base = self.latency_base_ms(p);
                self.schedule(base, Event::Complete { io: id });
            }
            Path::Hung { .. } => {
                // The device gets it when the path heals; the caller times out.
                self.schedule(timeout, Event::Complete { io: id });
            }
            Path::Healthy => {
                for chunk in 0..chunks {
                    let at = self.rng.below(latency + 1);
                    self.schedule(at, Event::Apply { io: id, chunk });
                }
                self.schedule(latency.min(timeout), Event::Complete { io: id });
            }
        }
    }

    fn apply(&mut self, id: u64, chunk: u8) {
        let sector = u64::from(self.scenario.sector_size_bytes);
        let Some(io) = self.ios.get_mut(&id) else {
            return;
        };
        if io.applies_left == 0 {
            return;
        }
        io.applies_left -= 1;
        let offset = io.offset_bytes;
        let late = io.data.is_some() && (io.delivered || io.epoch != self.processes[io.p].epoch);
        let (writer, writer_epoch, issued) = (io.p, io.epoch, io.issued_ms);
        if late {
            let dropped = io.dropped;
            self.note(56, offset, || {
                format!(
                    "a late write of p{writer} (life {writer_epoch}, issued at {issued}) at offset {offset} {}",
                    if dropped { "is lost" } else { "lands" }
                )
            });
        }
        if self.debug {
            if let Some(data) = self.ios.get(&id).and_then(|io| io.data.clone()) {
                let what = self.describe_sector(offset, &data);
                self.note(57, offset, || {
                    format!("p{writer} write lands at {offset}: {what}")
                });
            }
        }
        let Some(io) = self.ios.get_mut(&id) else {
            return;
        };
        if let Some(data) = &io.data {
            if !io.dropped {
                let mut bytes = data.clone();
                if io.torn {
                    let half = bytes.len() / 2;
                    for (i, b) in bytes[half..].iter_mut().enumerate() {
                        *b = (i as u8).wrapping_mul(31) ^ 0xA5;
                    }
                }
                self.write_disk(offset, &bytes);
            }
        } else if io.outcome.is_none() {
            let sectors = io.length_bytes / sector;
            let (start, end) = match (chunk, sectors > 1) {
                (0, true) => (0, sectors / 2),
                (_, true) => (sectors / 2, sectors),
                _ => (0, sectors),
            };
            let from = (offset + start * sector) as usize;
            let to = (offset + end * sector) as usize;
            let range = (start * sector) as usize..(end * sector) as usize;
            io.buffer[range].copy_from_slice(&self.disk[from..to]);
        }
        self.retire(id);
    }

    fn retire(&mut self, id: u64) {
        if self
            .ios
            .get(&id)
            .is_some_and(|io| io.delivered && io.applies_left == 0)
        {
            self.ios.remove(&id);
        }
    }

    fn complete(&mut self, id: u64) {
        let Some(io) = self.ios.get_mut(&id) else {
            return;
        };
        if io.outcome.is_none() {
            let operation = if io.data.is_some() { "write" } else { "read" };
            io.outcome = Some(if io.refused {
                Err(DiskError::WriteInFlight {
                    device: "sim".to_string(),
                    offset_bytes: io.offset_bytes,
                })
            } else if io.failed {
                Err(DiskError::Io {
                    device: "sim".to_string(),
                    operation,
                    offset_bytes: io.offset_bytes,
                    length_bytes: io.length_bytes,
                    source: std::io::Error::from_raw_os_error(libc_eio()),
                })
            } else if io.applies_left > 0 {
                // Not done by its deadline: a timeout for the caller; a
                // write may still land later, a read's late data is unused.
                Err(DiskError::Timeout {
                    device: "sim".to_string(),
                    operation,
                    offset_bytes: io.offset_bytes,
                    length_bytes: io.length_bytes,
                    deadline_ms: 0,
                })
            } else if io.data.is_some() {
                Ok(None)
            } else {
                Ok(Some(std::mem::take(&mut io.buffer)))
            });
        }
        let (p, epoch, lane, token) = (io.p, io.epoch, io.lane, io.token);
        if !self.live(p, epoch) || self.processes[p].lane(lane).token != token {
            if let Some(io) = self.ios.get_mut(&id) {
                io.delivered = true;
            }
            self.retire(id);
            return;
        }
        if self.defer(p, &Event::Complete { io: id }) {
            return;
        }
        let Some(io) = self.ios.get_mut(&id) else {
            return;
        };
        io.delivered = true;
        let outcome = io.outcome.take();
        self.retire(id);
        if let Some(outcome) = outcome {
            self.step(p, lane, Some(outcome));
        }
    }

    /// Every write to the disk passes here: check ownership changes first.
    fn write_disk(&mut self, offset_bytes: u64, bytes: &[u8]) {
        let geometry = self.space.geometry;
        let area = geometry.resource_area_offset_bytes();
        let slot_size = geometry.resource_slot_size_bytes();
        if offset_bytes >= area && (offset_bytes - area) % slot_size == 0 {
            let slot = ((offset_bytes - area) / slot_size) as u32;
            let location = LeaseLocation {
                kind: LeaseKind::Resource,
                index: slot,
                leader_offset_bytes: offset_bytes,
            };
            let old_bytes = &self.disk[offset_bytes as usize..offset_bytes as usize + bytes.len()];
            let max_hosts = geometry.max_hosts();
            let old = LeaderRecord::decode(old_bytes, &self.space.name, &location, max_hosts).ok();
            let new = LeaderRecord::decode(bytes, &self.space.name, &location, max_hosts).ok();
            if let (Some(old), Some(new)) = (old, new) {
                if let Some(holder) = old.held_by() {
                    // A new instance handing the lease to someone else (a
                    // late, stale leader write has a lower or equal lver).
                    if new.owner != Some(holder) && new.lver > old.lver {
                        self.stats.takeovers += 1;
                        let renewing: Vec<usize> = (0..self.processes.len())
                            .filter(|&q| {
                                self.processes[q].host_id == holder.host_id
                                    && self.renewing(q, holder.generation)
                                    && self.processes[q].holdings.contains_key(&new.name)
                            })
                            .collect();
                        if let Some(&q) = renewing.first() {
                            let taker = new.owner.map(|o| o.to_string()).unwrap_or_default();
                            self.violation(format!(
                                "lease {} (slot {slot}) taken over by {taker} from {holder}, whose process p{q} is still renewing",
                                new.name
                            ));
                        }
                    }
                }
            }
        }
        let start = offset_bytes as usize;
        self.disk[start..start + bytes.len()].copy_from_slice(bytes);
    }

    // ---- faults -----------------------------------------------------------

    fn random_up_process(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.processes.len())
            .filter(|&p| self.processes[p].up)
            .collect();
        if up.is_empty() {
            None
        } else {
            Some(up[self.rng.below(up.len() as u64) as usize])
        }
    }

    fn inject(&mut self, kind: FaultKind) {
        self.stats.faults += 1;
        match kind {
            FaultKind::Path => {
                let Some(p) = self.random_up_process() else {
                    return;
                };
                let timeout = u64::from(self.processes[p].io_timeout_ms);
                let until = self.now_ms + self.rng.range(timeout, 30 * timeout);
                let hang = self.rng.chance(0.5);
                self.processes[p].path = if hang {
                    Path::Hung { until_ms: until }
                } else {
                    Path::Failing { until_ms: until }
                };
                self.disturb(p, until);
                let epoch = self.processes[p].epoch;
                self.schedule_at(until, Event::Heal { p, epoch });
                self.note(50, p as u64, || {
                    format!(
                        "p{p} storage path {} until {until}",
                        if hang { "hangs" } else { "fails" }
                    )
                });
            }
            FaultKind::Spike => {
                // Up to spike_max x T: of one host's path (its own T), or of
                // the whole device (the smallest T of all).
                let tenths = self.scenario.faults.spike_max_tenths_of_t;
                if self.rng.chance(0.5) {
                    let Some(p) = self.random_up_process() else {
                        return;
                    };
                    let timeout = u64::from(self.processes[p].io_timeout_ms);
                    let until = self.now_ms + self.rng.range(1, timeout * tenths / 10);
                    if self.spiked_until_ms.len() <= p {
                        self.spiked_until_ms.resize(p + 1, 0);
                    }
                    self.spiked_until_ms[p] = self.spiked_until_ms[p].max(until);
                    self.note(61, p as u64, || {
                        format!("p{p} storage latency spikes until {until}")
                    });
                } else {
                    let timeout = self
                        .processes
                        .iter()
                        .map(|process| u64::from(process.io_timeout_ms))
                        .min()
                        .unwrap_or(1_000);
                    let until = self.now_ms + self.rng.range(1, timeout * tenths / 10);
                    self.device_spiked_until_ms = self.device_spiked_until_ms.max(until);
                    self.note(62, 0, || {
                        format!("whole-device latency spikes until {until}")
                    });
                }
            }
            FaultKind::DeviceStall => {
                let until = self.now_ms + self.rng.range(1_000, 15_000);
                self.device_stalled_until_ms = self.device_stalled_until_ms.max(until);
                for p in 0..self.processes.len() {
                    self.disturb(p, until);
                }
                self.schedule_at(until, Event::DeviceStallEnd);
                self.note(51, 0, || format!("whole device stalls until {until}"));
            }
            FaultKind::Pause => {
                let Some(p) = self.random_up_process() else {
                    return;
                };
                if self.processes[p].paused_until_ms.is_some() {
                    return;
                }
                let timeout = u64::from(self.processes[p].io_timeout_ms);
                let until = self.now_ms + self.rng.range(timeout, 25 * timeout);
                self.processes[p].paused_until_ms = Some(until);
                self.disturb(p, until);
                let epoch = self.processes[p].epoch;
                self.schedule_at(until, Event::Resume { p, epoch });
                self.note(52, p as u64, || format!("p{p} paused until {until}"));
            }
            FaultKind::ClockJump => {
                let Some(p) = self.random_up_process() else {
                    return;
                };
                let jump = self
                    .rng
                    .range(1, u64::from(self.processes[p].io_timeout_ms) / 2);
                self.processes[p].clock.jump_forward(jump);
                let now = self.now_ms;
                self.disturb(p, now);
                self.note(53, p as u64, || format!("p{p} clock jumps {jump} ms"));
            }
            FaultKind::Crash => {
                let Some(p) = self.random_up_process() else {
                    return;
                };
                self.note(54, p as u64, || format!("p{p} crashes"));
                self.power_off(p, true);
            }
            FaultKind::Corruption => {
                let geometry = self.space.geometry;
                let sector = u64::from(geometry.sector_size_bytes());
                let hosts = u64::from(geometry.max_hosts());
                let resources = u64::from(geometry.max_resources());
                let offset = if self.rng.chance(0.3) {
                    let h = self.rng.below(hosts);
                    let owner = (0..self.processes.len())
                        .filter(|&q| u64::from(self.processes[q].host_id.get()) == h + 1)
                        .collect::<Vec<_>>();
                    let now = self.now_ms + 3_600_000;
                    for q in owner {
                        // Its renewals fail from now on: it is disturbed for good.
                        self.disturb(q, now);
                    }
                    geometry.host_area_offset_bytes() + h * sector
                } else {
                    let slot = self.rng.below(resources) as u32;
                    let index = self.rng.below(hosts + 1);
                    geometry.resource_lease(slot).leader_offset_bytes + index * sector
                };
                let byte = offset as usize + self.rng.below(512) as usize;
                let bit = self.rng.below(8);
                self.disk[byte] ^= 1 << bit;
                self.note(55, offset, || {
                    format!("sector at {offset} rots (byte {byte}, bit {bit})")
                });
            }
        }
    }

    // ---- the liveness phase ------------------------------------------------

    fn start_liveness(&mut self) {
        self.liveness = true;
        self.note(60, 0, || {
            "liveness phase: faults stop, everyone recovers".to_string()
        });
        self.device_stalled_until_ms = 0;
        for p in 0..self.processes.len() {
            if !self.processes[p].primary {
                self.power_off(p, false);
                continue;
            }
            if !matches!(self.processes[p].path, Path::Healthy) {
                self.heal(p);
            }
            if self.processes[p].paused_until_ms.is_some() {
                let epoch = self.processes[p].epoch;
                self.schedule(0, Event::Resume { p, epoch });
            }
            if !self.processes[p].up {
                self.schedule(0, Event::PowerOn { p });
            }
        }
        self.schedule(SETTLE_MS, Event::LivenessAcquire);
    }

    fn end(&mut self) {
        self.ended = true;
        if !self.scenario.checks_liveness() {
            return;
        }
        self.stats.liveness_checked = true;
        let targets = self.scenario.hosts.min(self.scenario.resources) as usize;
        for p in 0..targets {
            if !self.processes[p].liveness_done {
                let error = self.processes[p]
                    .liveness_error
                    .clone()
                    .unwrap_or_else(|| "never tried".to_string());
                let joined = self.processes[p].lease.is_some();
                self.violation(format!(
                    "liveness: p{p} ({}) never acquired r{p} with faults off (joined: {joined}; last error: {error})",
                    self.processes[p].name
                ));
                return;
            }
        }
    }
}

impl World {
    /// A short description of a sector's record, for debug traces.
    fn describe_sector(&self, offset: u64, bytes: &[u8]) -> String {
        let g = self.space.geometry;
        let sector = u64::from(g.sector_size_bytes());
        if offset >= g.host_area_offset_bytes() && offset < g.fence_area_offset_bytes() {
            let raw = ((offset - g.host_area_offset_bytes()) / sector) as u32 + 1;
            let id = HostId::new(raw).expect("nonzero");
            return match lease::format::HostRecord::decode(bytes, &self.space.name, id) {
                Ok(r) => format!(
                    "host {raw} {} gen {} floor {} flags {:?}",
                    r.host_name, r.generation, r.generation_floor, r.flags
                ),
                Err(e) => format!("host {raw} unusable: {e}"),
            };
        }
        if offset >= g.resource_area_offset_bytes() {
            let rel = offset - g.resource_area_offset_bytes();
            let slot = rel / g.resource_slot_size_bytes();
            let index = (rel % g.resource_slot_size_bytes()) / sector;
            if index == 0 {
                let location = g.resource_lease(slot as u32);
                return match LeaderRecord::decode(bytes, &self.space.name, &location, g.max_hosts())
                {
                    Ok(l) => format!(
                        "leader slot {slot} {:?} lver {} {:?} {}",
                        l.owner.map(|o| o.to_string()),
                        l.lver,
                        l.flags,
                        l.name
                    ),
                    Err(e) => format!("leader slot {slot} unusable: {e}"),
                };
            }
            return match lease::format::DblockRecord::decode(bytes, &self.space.name, g.max_hosts())
            {
                Ok(d) => format!(
                    "dblock slot {slot} host {index} lver {} mbal {} bal {} inp {:?} released {}",
                    d.lver,
                    d.mbal,
                    d.bal,
                    d.inp.map(|i| format!("{} {}", i.owner, i.name)),
                    d.released
                ),
                Err(e) => format!("dblock slot {slot} host {index} unusable: {e}"),
            };
        }
        "other".to_string()
    }
}

fn libc_eio() -> i32 {
    5
}
