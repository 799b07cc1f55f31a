//! The delta lease (Chockler & Malkhi): host N owns host sector N for as long
//! as it keeps rewriting it. join = acquire, renew, leave = release.

use crate::error::LeaseError;
use crate::format::{
    check_name, Capacity, ChangedSlots, FenceMethod, HostFlags, HostRecord, SharedSettings,
    HOST_NAME_BYTES,
};
use crate::ids::{HostId, Owner};
use crate::lockspace::Lockspace;
use crate::op::{Operation, Port};
use crate::planted::PlantedBug;
use crate::timeouts::Timeouts;

/// What a host says about itself when it joins.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub host_id: HostId,
    pub host_name: String,
    pub io_timeout_ms: u32,
    /// Random per join (the caller's RNG), so two processes that join with
    /// the same id and name still write different records.
    pub nonce: u64,
    pub capacity: Capacity,
    pub watchdog: bool,
    pub fence_method: FenceMethod,
    /// Digests of the cluster-wide settings this host runs with.
    pub shared_settings: SharedSettings,
}

/// A held delta lease: the record we last wrote and when our last renewal
/// started on our clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaLease {
    pub record: HostRecord,
    pub last_renewal_ms: u64,
    /// When (our clock) the first renewal from then on declares the
    /// previous owner's generations over (raises the floor); None when
    /// nothing is pending.
    pub raise_floor_at_ms: Option<u64>,
    /// The record found in our sector when we joined: its name tells a
    /// restart of this host from a takeover of another's id.
    pub previous: HostRecord,
}

impl DeltaLease {
    pub fn owner(&self) -> Owner {
        self.record.owner()
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts::from_io_timeout_ms(self.record.io_timeout_ms)
    }

    /// After this instant (our clock) the lease counts as lost.
    pub fn renewal_deadline_ms(&self) -> u64 {
        self.last_renewal_ms + self.timeouts().renew_fail_ms
    }
}

/// Does `lease` still count as held at `now_ms` (our clock)? Past its
/// renewal deadline the host must stop its resources, stop feeding its
/// watchdog and rejoin.
pub fn holds(space: &Lockspace, lease: &DeltaLease, now_ms: u64) -> bool {
    if space.planted(PlantedBug::IgnoreRenewalDeadline) {
        return true;
    }
    now_ms <= lease.renewal_deadline_ms()
}

/// Options of one renewal.
#[derive(Clone, Debug, Default)]
pub struct RenewRequest {
    /// Read the whole host area (one contiguous read) instead of our sector
    /// alone, and return it for the observer.
    pub scan: bool,
    /// New capacity to advertise, if it changed.
    pub capacity: Option<Capacity>,
    /// New count of this host's resource changes to publish, if it moved,
    /// with the slots of the latest ones.
    pub resource_changes: Option<(u64, ChangedSlots)>,
    /// Declare every older generation of this host over (raise the
    /// generation floor to ours): only once this host knows that nothing of
    /// its earlier incarnations still runs (it rebooted, or killed them).
    pub raise_floor: bool,
}

/// The result of a renewal.
#[derive(Clone, Debug)]
pub struct Renewal {
    pub lease: DeltaLease,
    /// The host area as read at the start of the renewal, when asked for.
    pub host_area: Option<Vec<u8>>,
}

/// Join the lockspace as `request.host_id`.
///
/// If the sector shows a possibly-live owner under another name, that owner
/// must advertise a watchdog: then watch it until it has stood still for its
/// `host_dead_ms` (failing at once if it moves); without a watchdog the join
/// is refused ([`LeaseError::HostIdNotFree`]): it could be paused, not dead.
/// A released, fenced or never-used sector needs no watching; our own name
/// (a restart of this host after a crash) is watched for one renewal
/// interval and one io_timeout, and a record that moves meanwhile refuses
/// the join ([`LeaseError::HostIdInUse`]: another machine with our id and
/// name). So every generation from
/// the floor up to the current one always belongs to one host name. Then write our
/// record, wait `acquire_settle_ms`, and re-read: if anything else is there,
/// another process joined with the same id and we back off.
pub fn join(space: &Lockspace, request: JoinRequest) -> Operation<Result<DeltaLease, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { join_inner(&port, &space, request).await })
}

async fn join_inner(
    port: &Port,
    space: &Lockspace,
    request: JoinRequest,
) -> Result<DeltaLease, LeaseError> {
    let host_id = space.check_host_id(request.host_id.get())?;
    check_name("host name", &request.host_name, HOST_NAME_BYTES)
        .map_err(|e| LeaseError::Invalid(e.to_string()))?;
    if request.host_name.is_empty() {
        return Err(LeaseError::Invalid("host name is empty".to_string()));
    }
    Timeouts::validate_io_timeout_ms(request.io_timeout_ms).map_err(LeaseError::Invalid)?;
    let timeouts = Timeouts::from_io_timeout_ms(request.io_timeout_ms);
    let current = space.read_host(port, host_id).await?;
    let mut raise_floor_after_ms = None;
    let generation_floor = if current.is_unused() {
        1
    } else if current.flags.released
        || (current.flags.fenced && current.fenced_generation >= current.generation)
    {
        current.generation.saturating_add(1)
    } else if current.host_name == request.host_name {
        // Our own earlier incarnation, not released: it crashed. Its
        // generation may still own leases (its VMs may run); keep it
        // protected. Unless it is still renewing: then another machine
        // runs with our id and name (a copied configuration), and taking
        // the sector would evict it.
        refuse_if_renewing(port, space, &current).await?;
        current.generation_floor
    } else if current.flags.watchdog {
        wait_until_still(port, space, &current).await?;
        // Standing still past its host_dead time, its watchdog has fired.
        // Yet we might have paused between our last look and our write: its
        // generation is declared over only once host_dead has passed after
        // our write too (by then it saw our record and stopped, or its
        // watchdog reset it). The first renewal after that raises the floor.
        raise_floor_after_ms =
            Some(Timeouts::from_io_timeout_ms(current.io_timeout_ms).host_dead_ms);
        current.generation_floor
    } else {
        // Without a watchdog it may be paused, not dead, with its resources
        // still running, and no amount of waiting proves otherwise.
        return Err(LeaseError::HostIdNotFree {
            host_id,
            owner_name: current.host_name,
            generation: current.generation,
        });
    };
    let generation = current.generation.checked_add(1).ok_or_else(|| {
        LeaseError::Invalid(format!("host {host_id}: generation counter exhausted"))
    })?;
    let record = HostRecord {
        host_id,
        flags: HostFlags {
            released: false,
            fenced: false,
            watchdog: request.watchdog,
        },
        generation,
        timestamp_ms: port.now_ms().max(1),
        io_timeout_ms: request.io_timeout_ms,
        fencer_host_id: 0,
        fenced_generation: 0,
        generation_floor: generation_floor.min(generation),
        nonce: request.nonce,
        capacity: request.capacity,
        fence_method: request.fence_method,
        host_name: request.host_name.clone(),
        shared_settings: request.shared_settings,
        resource_changes: 0,
        changed_slots: ChangedSlots::default(),
    };
    let written_ms = port.now_ms();
    space.write_host(port, &record).await?;
    if space.planted(PlantedBug::SkipJoinReread) {
        return Ok(DeltaLease {
            record,
            last_renewal_ms: written_ms,
            raise_floor_at_ms: raise_floor_after_ms.map(|after| written_ms + after),
            previous: current,
        });
    }
    port.sleep_until(written_ms + timeouts.acquire_settle_ms)
        .await;
    let check = space.read_host(port, host_id).await?;
    if check != record {
        return Err(LeaseError::JoinRace {
            host_id,
            found_name: check.host_name,
            found_generation: check.generation,
        });
    }
    Ok(DeltaLease {
        record,
        last_renewal_ms: written_ms,
        raise_floor_at_ms: raise_floor_after_ms.map(|after| written_ms + after),
        previous: current,
    })
}

/// Watch a record that carries our own name for one renewal interval and
/// one io_timeout of its writer (reads one io_timeout apart): a change
/// means a live host uses this id, [`LeaseError::HostIdInUse`].
async fn refuse_if_renewing(
    port: &Port,
    space: &Lockspace,
    current: &HostRecord,
) -> Result<(), LeaseError> {
    let owner_timeouts = Timeouts::from_io_timeout_ms(current.io_timeout_ms);
    let window_ms = owner_timeouts.renew_interval_ms + owner_timeouts.io_timeout_ms;
    // window / io_timeout = 3 reads, plus slack for late wake-ups.
    let reads_max = window_ms / owner_timeouts.io_timeout_ms + 2;
    // Out of reads before the window closed (late wake-ups): every read
    // saw the record still, which is all this check asks.
    watch_still(
        port,
        space,
        current,
        window_ms,
        owner_timeouts.io_timeout_ms,
        reads_max,
    )
    .await
    .map(|_| ())
}

/// Watch a record that may belong to a live host until it has stood still
/// for that host's host_dead time. Any change means it is alive.
async fn wait_until_still(
    port: &Port,
    space: &Lockspace,
    current: &HostRecord,
) -> Result<(), LeaseError> {
    let owner_timeouts = Timeouts::from_io_timeout_ms(current.io_timeout_ms);
    // One read per renew interval of the owner until host_dead has passed:
    // host_dead / renew_interval = 6 reads, plus slack for late wake-ups.
    let reads_max = owner_timeouts.host_dead_ms / owner_timeouts.renew_interval_ms + 4;
    let still = watch_still(
        port,
        space,
        current,
        owner_timeouts.host_dead_ms,
        owner_timeouts.renew_interval_ms,
        reads_max,
    )
    .await?;
    if still {
        return Ok(());
    }
    Err(LeaseError::Invalid(format!(
        "host {}: gave up watching the previous owner after {reads_max} reads",
        current.host_id
    )))
}

/// Re-read `current`'s sector every `step_ms` for `window_ms`: a change is
/// [`LeaseError::HostIdInUse`]; true once a read that started after the
/// window saw it unchanged, false when `reads_max` reads ran out first.
/// Only a read that starts after the deadline proves stillness: time that
/// passed while we were not looking (a pause of this process) proves
/// nothing; a record unchanged from first to last read does.
async fn watch_still(
    port: &Port,
    space: &Lockspace,
    current: &HostRecord,
    window_ms: u64,
    step_ms: u64,
    reads_max: u64,
) -> Result<bool, LeaseError> {
    let deadline_ms = port.now_ms() + window_ms;
    for _ in 0..reads_max {
        let next_ms = (port.now_ms() + step_ms).min(deadline_ms);
        port.sleep_until(next_ms).await;
        let read_started_ms = port.now_ms();
        let again = space.read_host(port, current.host_id).await?;
        if again != *current {
            return Err(LeaseError::HostIdInUse {
                host_id: current.host_id,
                owner_name: again.host_name,
                generation: again.generation,
            });
        }
        if read_started_ms >= deadline_ms {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Check that our sector still says what we last wrote.
fn verify_own(lease: &DeltaLease, found: &HostRecord) -> Result<(), LeaseError> {
    let ours = &lease.record;
    if found.flags.fenced && found.fenced_generation >= ours.generation {
        return Err(LeaseError::Fenced {
            host_id: ours.host_id,
            generation: ours.generation,
            fencer: found.fencer_host_id,
        });
    }
    // Our own record, or a later write of ours that timed out and landed
    // after all (same incarnation, newer timestamp): still ours.
    let same_incarnation = found.generation == ours.generation
        && found.nonce == ours.nonce
        && found.host_name == ours.host_name
        && found.io_timeout_ms == ours.io_timeout_ms
        && found.flags == ours.flags;
    let ours_or_later =
        found == ours || (same_incarnation && found.timestamp_ms > ours.timestamp_ms);
    if !ours_or_later {
        let reason = if !same_incarnation {
            format!(
                "the sector now holds {:?} generation {} (we are {:?} generation {})",
                found.host_name, found.generation, ours.host_name, ours.generation
            )
        } else {
            "the sector changed under us".to_string()
        };
        return Err(LeaseError::DeltaLost {
            host_id: ours.host_id,
            reason,
        });
    }
    Ok(())
}

/// Renew: read our sector (or the whole host area), check that it still says
/// what we wrote, and rewrite it with a new timestamp. Never writes once the
/// renewal deadline has passed.
pub fn renew(
    space: &Lockspace,
    lease: &DeltaLease,
    request: RenewRequest,
) -> Operation<Result<Renewal, LeaseError>> {
    let space = space.clone();
    let lease = lease.clone();
    Operation::new(move |port| async move { renew_inner(&port, &space, lease, request).await })
}

fn check_deadline(space: &Lockspace, lease: &DeltaLease, now_ms: u64) -> Result<(), LeaseError> {
    let since_ms = now_ms.saturating_sub(lease.last_renewal_ms);
    let limit_ms = lease.timeouts().renew_fail_ms;
    if !holds(space, lease, now_ms) {
        return Err(LeaseError::RenewalExpired {
            host_id: lease.record.host_id,
            since_ms,
            limit_ms,
        });
    }
    Ok(())
}

async fn renew_inner(
    port: &Port,
    space: &Lockspace,
    lease: DeltaLease,
    request: RenewRequest,
) -> Result<Renewal, LeaseError> {
    let started_ms = port.now_ms();
    check_deadline(space, &lease, started_ms)?;
    let host_id = lease.record.host_id;
    let (found, host_area) = if request.scan {
        let area = port
            .read(
                space.geometry.host_area_offset_bytes(),
                space.geometry.host_area_size_bytes(),
            )
            .await?;
        let sector = space.geometry.sector_size_bytes() as usize;
        let start = usize::try_from(host_id.index())
            .unwrap_or(usize::MAX)
            .saturating_mul(sector);
        let own = area.get(start..start.saturating_add(sector)).unwrap_or(&[]);
        (space.decode_host(host_id, own)?, Some(area))
    } else {
        (space.read_host(port, host_id).await?, None)
    };
    verify_own(&lease, &found)?;
    // The read may have taken up to io_timeout: look at the deadline again.
    check_deadline(space, &lease, port.now_ms())?;
    let mut record = lease.record.clone();
    record.timestamp_ms = port.now_ms().max(found.timestamp_ms.saturating_add(1));
    if let Some(capacity) = request.capacity {
        record.capacity = capacity;
    }
    if let Some((changes, slots)) = request.resource_changes {
        record.resource_changes = changes;
        record.changed_slots = slots;
    }
    let floor_due = lease
        .raise_floor_at_ms
        .is_some_and(|at_ms| started_ms >= at_ms);
    if request.raise_floor || floor_due {
        record.generation_floor = record.generation;
    }
    space.write_host(port, &record).await?;
    Ok(Renewal {
        lease: DeltaLease {
            record,
            last_renewal_ms: started_ms,
            raise_floor_at_ms: if floor_due {
                None
            } else {
                lease.raise_floor_at_ms
            },
            previous: lease.previous,
        },
        host_area,
    })
}

/// Take up our lease again after its renewal deadline passed, for a host
/// without a watchdog only: nobody may take over the leases of such a host
/// before a fencer has powered it off and marked its generation FENCED, so
/// if the sector still holds our record (no mark, no other writer), this
/// incarnation may go on renewing. A watchdog host must rejoin instead: the
/// others may already treat it as dead. The renewal deadline restarts at
/// the read.
pub fn resume(space: &Lockspace, lease: &DeltaLease) -> Operation<Result<DeltaLease, LeaseError>> {
    let space = space.clone();
    let lease = lease.clone();
    Operation::new(move |port| async move {
        if lease.record.flags.watchdog {
            return Err(LeaseError::Invalid(format!(
                "host {} advertises a watchdog: after a missed renewal deadline it must rejoin, not resume",
                lease.record.host_id
            )));
        }
        let started_ms = port.now_ms();
        let found = space.read_host(&port, lease.record.host_id).await?;
        verify_own(&lease, &found)?;
        Ok(DeltaLease {
            record: if found.timestamp_ms > lease.record.timestamp_ms {
                found
            } else {
                lease.record.clone()
            },
            last_renewal_ms: started_ms,
            ..lease
        })
    })
}

/// Leave: mark our record RELEASED. The caller has released every resource
/// lease of this generation first.
pub fn leave(space: &Lockspace, lease: &DeltaLease) -> Operation<Result<HostRecord, LeaseError>> {
    let space = space.clone();
    let lease = lease.clone();
    Operation::new(move |port| async move {
        let found = space.read_host(&port, lease.record.host_id).await?;
        verify_own(&lease, &found)?;
        let mut record = lease.record.clone();
        record.flags.released = true;
        // Leaving means nothing of this host runs any more: every generation
        // of it is over, not only this one.
        record.generation_floor = record.generation;
        record.timestamp_ms = port.now_ms().max(record.timestamp_ms + 1);
        space.write_host(&port, &record).await?;
        Ok(record)
    })
}

/// Take up the delta lease a previous process of this host wrote, for
/// one-shot commands (`leasehold direct renew`): the record must carry our
/// name and be joined. The renewal deadline restarts now.
pub fn adopt(
    space: &Lockspace,
    host_id: HostId,
    host_name: &str,
) -> Operation<Result<DeltaLease, LeaseError>> {
    let space = space.clone();
    let host_name = host_name.to_string();
    Operation::new(move |port| async move {
        let found = space.read_host(&port, host_id).await?;
        let not_joined = |reason: String| LeaseError::NotJoined {
            host_id,
            lockspace: space.name.clone(),
            reason,
        };
        if found.is_unused() {
            return Err(not_joined("the host sector was never written".to_string()));
        }
        if found.flags.released {
            return Err(not_joined(format!("generation {} left", found.generation)));
        }
        if found.flags.fenced && found.fenced_generation >= found.generation {
            return Err(LeaseError::Fenced {
                host_id,
                generation: found.generation,
                fencer: found.fencer_host_id,
            });
        }
        if found.host_name != host_name {
            return Err(not_joined(format!(
                "the sector belongs to {:?}",
                found.host_name
            )));
        }
        Ok(DeltaLease {
            previous: found.clone(),
            record: found,
            last_renewal_ms: port.now_ms(),
            raise_floor_at_ms: None,
        })
    })
}

/// The current generation of a joined host, for one-shot paxos commands.
pub fn joined_owner(
    space: &Lockspace,
    host_id: HostId,
) -> Operation<Result<HostRecord, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move {
        let found = space.read_host(&port, host_id).await?;
        let reason = if found.is_unused() {
            Some("the host sector was never written".to_string())
        } else if found.flags.released {
            Some(format!("generation {} left", found.generation))
        } else if found.flags.fenced && found.fenced_generation >= found.generation {
            Some(format!("generation {} was fenced", found.generation))
        } else {
            None
        };
        match reason {
            Some(reason) => Err(LeaseError::NotJoined {
                host_id,
                lockspace: space.name.clone(),
                reason,
            }),
            None => Ok(found),
        }
    })
}

/// What a fencer writes once the victim's power-off is confirmed.
#[derive(Clone, Debug)]
pub struct FenceMark {
    pub victim: HostId,
    /// The generation that was powered off (from the record the fencer
    /// watched): a record that moved on since belongs to a new incarnation
    /// and is not marked.
    pub generation: u64,
    pub fencer: HostId,
    pub method: FenceMethod,
}

/// Mark the victim's current generation FENCED: read its record, set the
/// flag, the fenced generation, the fencer and the method, write it back.
/// Only after the victim's power-off was confirmed: the victim must not be
/// able to write its sector again. Returns the record written.
pub fn mark_fenced(
    space: &Lockspace,
    mark: FenceMark,
) -> Operation<Result<HostRecord, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move {
        let mut record = space.read_host(&port, mark.victim).await?;
        if record.generation != mark.generation {
            return Err(LeaseError::FenceTargetMoved {
                host_id: mark.victim,
                expected_generation: mark.generation,
                found_generation: record.generation,
                found_name: record.host_name,
            });
        }
        record.flags.fenced = true;
        record.fenced_generation = record.generation;
        record.fencer_host_id = mark.fencer.get();
        record.fence_method = mark.method;
        space.write_host(&port, &record).await?;
        Ok(record)
    })
}
