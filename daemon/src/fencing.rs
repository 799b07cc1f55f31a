//! Fencing silent hosts: one thread per lockspace. For every host the
//! monitor declares silent (storage-confirmed, not part of a storage
//! incident) that has a fence device, the survivors compete for that
//! host's fence lease (a paxos lease in the fence area): exactly one wins,
//! re-reads the victim's record, powers it off through its device, waits
//! for the device to confirm off, writes the FENCED mark for the
//! generation it watched, and gives the fence lease back. A failure is
//! retried with capped exponential backoff, loudly, and nothing is taken
//! over meanwhile (unless the victim has a watchdog: then the lease core's
//! watchdog rule applies after its host_dead time).

use crate::events::Level;
use crate::fence::{Device, FenceError};
use crate::space::{Phase, Space};
use crate::timeline::Step;
use lease::clock::{Clock, SystemClock};
use lease::delta::{self, FenceMark};
use lease::disk::Disk;
use lease::format::{FenceMethod, LeaderRecord};
use lease::op::run;
use lease::paxos::{self, AcquireRequest, ReleaseRequest};
use lease::{HostId, LeaseError, Lockspace, Owner};
use std::collections::BTreeMap;
use std::sync::Arc;

/// First retry delay after a failed fence, doubled each time up to the cap.
const RETRY_FIRST_MS: u64 = 1000;
const RETRY_CAP_MS: u64 = 30_000;

/// Outcome of competing for a victim's fence lease.
#[derive(Debug)]
pub enum Election {
    /// We hold the fence lease: fence, then release it.
    Won(LeaderRecord),
    /// Another live host holds it and is fencing.
    Lost { fencer: Owner },
    /// The victim needs no fencing any more (marked, or a new incarnation).
    Moot(String),
}

/// Compete for the fence lease of `victim` (watched at `generation`).
pub fn elect(
    disk: &dyn Disk,
    space: &Lockspace,
    owner: Owner,
    victim: HostId,
    generation: u64,
    dead_hosts: Vec<(HostId, u64)>,
) -> Result<Election, LeaseError> {
    let request = AcquireRequest {
        location: space.geometry.fence_lease(victim),
        owner,
        name: String::new(),
        claim: false,
        dead_hosts,
        io_timeout_ms: space.io_timeout_ms,
        seed: lease::ids::random_u64(),
    };
    let leader = match run(paxos::acquire(space, request), disk, &SystemClock) {
        Ok(leader) => leader,
        Err(LeaseError::HeldByOther { owner, .. }) => return Ok(Election::Lost { fencer: owner }),
        Err(e) => return Err(e),
    };
    // With the fence lease ours, look at the victim again: a fencer before
    // us may have finished, or the host may have rejoined.
    let record = run(space.read_host_op(victim), disk, &SystemClock)?;
    let moot = if record.flags.fenced && record.fenced_generation >= generation {
        Some(format!("generation {generation} is already fenced"))
    } else if record.generation != generation {
        Some(format!(
            "it rejoined as generation {} meanwhile",
            record.generation
        ))
    } else if record.flags.released {
        Some("it left cleanly".to_string())
    } else {
        None
    };
    match moot {
        Some(reason) => {
            release(disk, space, owner, victim, &leader);
            Ok(Election::Moot(reason))
        }
        None => Ok(Election::Won(leader)),
    }
}

/// Give a fence lease back (best effort; a leftover one only delays the
/// next fencer until we are known over).
pub fn release(
    disk: &dyn Disk,
    space: &Lockspace,
    owner: Owner,
    victim: HostId,
    leader: &LeaderRecord,
) {
    let request = ReleaseRequest {
        location: space.geometry.fence_lease(victim),
        owner,
        lver: Some(leader.lver),
        clear_name: false,
        name: None,
    };
    let _ = run(paxos::release(space, request), disk, &SystemClock);
}

struct Retry {
    attempts: u32,
    next_ms: u64,
    generation: u64,
}

/// The fencing thread of one lockspace.
pub fn fencing_thread(space: Arc<Space>) {
    let span = tracing::info_span!("fencing", host = space.config.host_id.get(), lockspace = %space.config.name);
    let _entered = span.enter();
    let mut device: Option<(lease::open::BoxedDisk, Lockspace)> = None;
    let mut retries: BTreeMap<u32, Retry> = BTreeMap::new();
    // What was said about each victim (generation, kinds): once each.
    let mut announced: BTreeMap<u32, (u64, std::collections::BTreeSet<String>)> = BTreeMap::new();
    // Victims (id, generation) fenced by us or found needing no fence:
    // left alone until the monitor stops calling them silent.
    let mut settled: std::collections::BTreeSet<(u32, u64)> = std::collections::BTreeSet::new();
    // While another host holds the fence lease, look again every two ticks.
    let mut watching: BTreeMap<u32, u64> = BTreeMap::new();
    // Only state is read between fences: looking often costs nothing and
    // starts a fence within a fraction of a second of the silent verdict.
    let interval_ms = (u64::from(space.config.io_timeout_ms) / 4).clamp(25, 250);
    loop {
        if space.sleep_until(SystemClock.now_ms() + interval_ms) {
            return;
        }
        let view = {
            let state = space.lock();
            match (&state.phase, &state.lockspace, &state.lease, &state.monitor) {
                (Phase::Joined, Some(ls), Some(lease), Some(monitor))
                    if delta::holds(ls, lease, SystemClock.now_ms()) =>
                {
                    // The common case, nobody silent, costs one pass over
                    // the observer's watches and no allocation per host.
                    let silent = monitor.declared_silent(ls);
                    let (dead, hosts) = if silent.is_empty() {
                        (Vec::new(), Vec::new())
                    } else {
                        (monitor.dead_hosts(), monitor.hosts(ls))
                    };
                    Some((lease.owner(), silent, dead, hosts))
                }
                _ => None,
            }
        };
        let Some((owner, silent, dead, hosts)) = view else {
            continue;
        };
        retries.retain(|id, _| silent.iter().any(|(h, _)| h.get() == *id));
        announced.retain(|id, _| silent.iter().any(|(h, _)| h.get() == *id));
        watching.retain(|id, _| silent.iter().any(|(h, _)| h.get() == *id));
        settled.retain(|(id, g)| silent.iter().any(|(h, sg)| h.get() == *id && sg == g));
        for (victim, generation) in silent {
            let raw = victim.get();
            if settled.contains(&(raw, generation)) {
                continue;
            }
            if watching
                .get(&raw)
                .is_some_and(|next| SystemClock.now_ms() < *next)
            {
                continue;
            }
            let status = hosts.iter().find(|h| h.host_id == raw);
            let name = status.map(|h| h.name.clone()).unwrap_or_default();
            let still_ms = status.map(|h| h.unchanged_for_ms).unwrap_or(0);
            let cluster_host = space
                .context()
                .config
                .cluster
                .iter()
                .find(|h| h.id == raw)
                .cloned();
            let fence_device = cluster_host
                .as_ref()
                .ok_or_else(|| FenceError::UnknownHost(name.clone()))
                .and_then(|h| Device::for_host(&space.context().config, h));
            let mut announce = |what: &str, level: Level, kind: &str, message: String| {
                let entry = announced
                    .entry(raw)
                    .or_insert_with(|| (generation, std::collections::BTreeSet::new()));
                if entry.0 != generation {
                    *entry = (generation, std::collections::BTreeSet::new());
                }
                if entry.1.insert(what.to_string()) {
                    space.emit(level, kind, message);
                }
            };
            let device_to_use = match fence_device {
                Ok(device_to_use) => device_to_use,
                Err(e) => {
                    let watchdog = status.is_some_and(|h| h.watchdog);
                    announce(
                        "nodevice",
                        if watchdog { Level::Warn } else { Level::Error },
                        "fence-impossible",
                        format!(
                            "host {raw} ({name}) is silent (last renewal seen {:.1} s ago) but cannot be fenced: {e}; {}",
                            still_ms as f64 / 1000.0,
                            if watchdog {
                                "its leases become takeable once its watchdog must have fired"
                            } else {
                                "its leases stay protected until an operator confirms it is off (leasehold fence confirm)"
                            }
                        ),
                    );
                    continue;
                }
            };
            let now_ms = SystemClock.now_ms();
            if let Some(retry) = retries.get(&raw) {
                if retry.generation == generation && now_ms < retry.next_ms {
                    continue;
                }
            }
            if device.is_none() {
                match space.open() {
                    Ok(opened) => device = Some(opened),
                    Err(e) => {
                        tracing::warn!("fencing cannot open the device: {e}");
                        continue;
                    }
                }
            }
            let Some((disk, ls)) = device.as_ref() else {
                continue;
            };
            announce(
                "silent",
                Level::Warn,
                "fence-needed",
                format!(
                    "host {raw} ({name}) is silent (last renewal seen {:.1} s ago): competing to fence it",
                    still_ms as f64 / 1000.0
                ),
            );
            let leader = match elect(disk.as_ref(), ls, owner, victim, generation, dead.clone()) {
                Ok(Election::Won(leader)) => leader,
                Ok(Election::Lost { fencer }) => {
                    watching.insert(raw, SystemClock.now_ms() + 2 * interval_ms);
                    let fencer_id = fencer.host_id.get();
                    space.context().failover(|timeline, now_ms| {
                        timeline.fence(raw, Step::FenceByOther { fencer: fencer_id }, now_ms)
                    });
                    announce(
                        "lost",
                        Level::Info,
                        "fence-by-other",
                        format!(
                            "host {} is fencing host {raw} ({name}); watching",
                            fencer.host_id
                        ),
                    );
                    continue;
                }
                Ok(Election::Moot(reason)) => {
                    settled.insert((raw, generation));
                    // Fenced by another host (or gone): our VM manager may
                    // restart its VMs before our monitor sees the mark.
                    space
                        .fenced_one
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    announce(
                        "moot",
                        Level::Info,
                        "fence-moot",
                        format!("host {raw} ({name}) needs no fencing: {reason}"),
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!("competing for the fence lease of host {raw}: {e}");
                    continue;
                }
            };
            space.emit(
                Level::Warn,
                "fencing",
                format!(
                    "fencing host {raw} ({name}) generation {generation} via {} (by host {} {})",
                    device_to_use.describe(),
                    space.config.host_id,
                    space.config.host_name
                ),
            );
            let started = std::time::Instant::now();
            match device_to_use.power_off() {
                Ok(()) => {
                    let took_ms = started.elapsed().as_millis();
                    let mark = FenceMark {
                        victim,
                        generation,
                        fencer: space.config.host_id,
                        method: device_to_use.method(),
                    };
                    match run(delta::mark_fenced(ls, mark), disk.as_ref(), &SystemClock) {
                        Ok(_) => {
                            settled.insert((raw, generation));
                            space
                                .fenced_one
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                            space.context().failover(|timeline, now_ms| {
                                timeline.fence(raw, Step::Fenced, now_ms)
                            });
                            space.emit(
                                Level::Warn,
                                "fenced",
                                format!(
                                    "host {raw} ({name}) powered off (confirmed) in {took_ms} ms; generation {generation} marked FENCED, its leases may be taken"
                                ),
                            )
                        }
                        Err(e) => space.emit(
                            Level::Error,
                            "fence-mark-failed",
                            format!("host {raw} ({name}) is off but the FENCED mark could not be written: {e}; retrying"),
                        ),
                    }
                    retries.remove(&raw);
                }
                Err(e) => {
                    let entry = retries.entry(raw).or_insert(Retry {
                        attempts: 0,
                        next_ms: 0,
                        generation,
                    });
                    if entry.generation != generation {
                        entry.attempts = 0;
                        entry.generation = generation;
                    }
                    let delay_ms = RETRY_FIRST_MS
                        .saturating_mul(1u64 << entry.attempts.min(16))
                        .min(RETRY_CAP_MS);
                    entry.attempts = entry.attempts.saturating_add(1);
                    entry.next_ms = SystemClock.now_ms() + delay_ms;
                    space.context().failover(|timeline, now_ms| {
                        timeline.fence(raw, Step::FenceFailed, now_ms)
                    });
                    space.emit(
                        Level::Error,
                        "fence-failed",
                        format!(
                            "fencing host {raw} ({name}) failed (attempt {}): {e}; no takeover; retry in {} s",
                            entry.attempts,
                            delay_ms / 1000
                        ),
                    );
                }
            }
            release(disk.as_ref(), ls, owner, victim, &leader);
        }
    }
}

/// An operator's word that `victim` is powered off: write the FENCED mark
/// for its current generation with method Manual.
/// Is `victim` still renewing? Its record read twice, `interval_ms` (a
/// renewal interval) apart: Some(what moved) when the two differ. An
/// operator's `fence off` or `fence confirm` of a host that renews is
/// refused: its VMs would run twice.
pub fn still_renewing(
    space: &Space,
    victim: HostId,
    interval_ms: u64,
) -> Result<Option<String>, LeaseError> {
    let (disk, ls) = space.open()?;
    let first = run(ls.read_host_op(victim), disk.as_ref(), &SystemClock)?;
    std::thread::sleep(std::time::Duration::from_millis(interval_ms));
    let second = run(ls.read_host_op(victim), disk.as_ref(), &SystemClock)?;
    if first == second {
        return Ok(None);
    }
    Ok(Some(format!(
        "its record changed between two reads {interval_ms} ms apart (generation {} timestamp {} ms, then generation {} timestamp {} ms)",
        first.generation, first.timestamp_ms, second.generation, second.timestamp_ms
    )))
}

pub fn confirm(space: &Space, victim: HostId) -> Result<u64, LeaseError> {
    mark(space, victim, FenceMethod::Manual)
}

/// Write the FENCED mark for `victim`'s current generation.
pub fn mark(space: &Space, victim: HostId, method: FenceMethod) -> Result<u64, LeaseError> {
    let (disk, ls) = space.open()?;
    let record = run(ls.read_host_op(victim), disk.as_ref(), &SystemClock)?;
    let mark = FenceMark {
        victim,
        generation: record.generation,
        fencer: space.config.host_id,
        method,
    };
    run(delta::mark_fenced(&ls, mark), disk.as_ref(), &SystemClock)?;
    Ok(record.generation)
}
