//! The paxos lease (Disk Paxos, Gafni & Lamport, on one disk): a leader
//! sector saying who owns the lease, and one dblock per host in which ballots
//! are run. Each change of ownership is one instance, numbered by the lease
//! version `lver`; a dblock written for an older lver counts as empty.
//!
//! The dblocks are the truth; the leader is a cache of the latest instance's
//! chosen value, written only when a ballot completes. A release is recorded
//! in the owner's own dblock (RELEASED for that lver), never only in the
//! leader, so a late leader write (an I/O that timed out and landed after
//! all) can never undo a release. A late leader write can make the leader
//! lag behind the dblocks; dblocks of a later instance are proof that its
//! starter saw the instance before it ended, so acquire then continues at the
//! latest instance the dblocks show.

use crate::error::LeaseError;
use crate::format::{DblockRecord, LeaderFlags, LeaderRecord, LeaseLocation, Proposal};
use crate::ids::{HostId, Owner};
use crate::lockspace::Lockspace;
use crate::op::{Operation, Port};
use crate::planted::PlantedBug;
use crate::timeouts::Timeouts;

/// Ballot rounds one acquire may try before reporting contention. Each round
/// is a handful of I/Os plus a random pause; a lease that cannot be decided
/// in this many rounds is better reported than retried forever.
pub const ACQUIRE_ROUNDS_MAX: u32 = 100;

/// One acquire.
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    pub location: LeaseLocation,
    /// Us: the incarnation that will own the lease.
    pub owner: Owner,
    /// The resource name the leader must carry (empty for fence leases).
    pub name: String,
    /// Claim a free, unnamed slot for `name` instead of acquiring a slot
    /// that already carries it.
    pub claim: bool,
    /// Hosts our observer considers dead by the watchdog rule, each with the
    /// generation watched; leases of that generation or older are takeable
    /// if the host's record advertises a watchdog.
    pub dead_hosts: Vec<(HostId, u64)>,
    /// Io timeout for the backoff between conflicting ballots.
    pub io_timeout_ms: u32,
    /// Seed for the random backoff.
    pub seed: u64,
}

/// A small deterministic generator for backoff (splitmix64).
struct Backoff(u64);

impl Backoff {
    fn next_ms(&mut self, max_ms: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        1 + z % max_ms.max(1)
    }
}

/// Smallest ballot of `host_id` above `above`: k * max_hosts + host_id.
/// Ballots of different hosts never collide since 1 <= host_id <= max_hosts.
fn next_ballot(above: u64, host_id: HostId, max_hosts: u32) -> Option<u64> {
    let hosts = u64::from(max_hosts);
    let round = (above / hosts).checked_add(1)?;
    round
        .checked_mul(hosts)?
        .checked_add(u64::from(host_id.get()))
}

enum Round {
    /// The instance chose this value; the leader now says so.
    Chosen(Proposal),
    /// Another ballot was higher, or the instance moved on: try again.
    Conflict,
}

/// Acquire a paxos lease. Succeeds when the lease was free, released, ours,
/// or owned by an incarnation known to be over (released, fenced, below its
/// host's generation floor, or, for a host that advertises a watchdog, dead
/// by the watchdog rule); otherwise fails with [`LeaseError::HeldByOther`].
pub fn acquire(
    space: &Lockspace,
    request: AcquireRequest,
) -> Operation<Result<LeaderRecord, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { acquire_inner(&port, &space, &request).await })
}

pub(crate) async fn acquire_inner(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
) -> Result<LeaderRecord, LeaseError> {
    acquire_flagged(port, space, request)
        .await
        .map(|(leader, _)| leader)
}

/// Acquire, also saying whether we held the lease before this call.
pub(crate) async fn acquire_flagged(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
) -> Result<(LeaderRecord, bool), LeaseError> {
    assert!(space.geometry.contains_host(request.owner.host_id));
    assert!(
        request.owner.generation > 0,
        "acquire by an owner that never joined"
    );
    let timeouts = Timeouts::from_io_timeout_ms(request.io_timeout_ms);
    let mut backoff = Backoff(request.seed ^ u64::from(request.owner.host_id.get()));
    // The latest instance any dblock has shown us, and its highest mbal.
    let mut highest_seen = (0u64, 0u64);
    for _ in 0..ACQUIRE_ROUNDS_MAX {
        // Only the leader and our own dblock here; every dblock is read after
        // each phase's write, where Disk Paxos needs it.
        let leader = space.read_leader(port, &request.location).await?;
        let own = read_dblock(
            port,
            space,
            &request.location,
            request.owner.host_id,
            &request.name,
        )
        .await?;
        highest_seen = highest_seen.max(instance_seen(&own));
        let next = leader.lver.checked_add(1).ok_or_else(|| {
            LeaseError::Invalid(format!(
                "{} on {}: the lease version counter is exhausted; re-create the slot",
                space.lease_label(&request.location, &request.name),
                space.device
            ))
        })?;
        // Dblocks of a later instance than the leader's next: the leader lags.
        let mut lver = next.max(highest_seen.0);
        if lver == next {
            // The leader is current: it must carry the name we expect. (A
            // lagging leader's name is stale; the instance's value decides.)
            if let Err(taken) = check_name(request, &leader) {
                if request.claim {
                    return Err(taken);
                }
                // Found by a name the dblocks carry past this leader? Then
                // the leader lags: continue in the latest instance they show.
                let seen = space.read_dblocks(port, &request.location).await?;
                let carrying = seen
                    .iter()
                    .filter(|d| {
                        d.lver >= next && d.inp.as_ref().is_some_and(|inp| inp.name == request.name)
                    })
                    .map(|d| d.lver)
                    .max();
                let Some(carried_lver) = carrying else {
                    return Err(taken);
                };
                note_highest(&mut highest_seen, &seen, next);
                lver = carried_lver.max(highest_seen.0);
            }
        }
        if lver == next {
            if let Some(holder) = current_holder(port, space, request, &leader, &own).await? {
                if holder == request.owner {
                    // We hold it already. Write our dblock back: the disk
                    // refuses that while an earlier write of ours to it (a
                    // release that timed out) may still land, so we only
                    // answer "held" once no release of ours is in flight. If
                    // our dblock does not carry the chosen value (another
                    // host completed the instance with our value while our
                    // last ballot carried another), make it carry it, so a
                    // later release finds it: the value is chosen, so any
                    // dblock may show it.
                    let carried = DblockRecord {
                        released: false,
                        timestamp_ms: port.now_ms(),
                        ..carrying_chosen(space, &own, &leader, request.owner.host_id)
                    };
                    write_dblock(
                        port,
                        space,
                        &request.location,
                        request.owner.host_id,
                        &carried,
                    )
                    .await?;
                    return Ok((leader, true));
                }
                // Any other holder, an older generation of our own host id
                // included: that generation's processes may still run until
                // it is over (the host raises its generation floor once it knows).
                check_takeable(port, space, request, &leader, holder).await?;
            }
        }
        match ballot_round(port, space, request, &leader, lver, &own, &mut highest_seen).await? {
            Round::Chosen(value) if value.owner == request.owner && value.name == request.name => {
                let acquired = chosen_leader(space, request, &leader, lver, value, port.now_ms());
                return Ok((acquired, false));
            }
            Round::Chosen(value) if value.owner == request.owner => {
                // Our own earlier proposal for another name (from an acquire
                // that failed with an I/O error) was accepted and is now
                // chosen: we hold this slot under that name without wanting
                // it. Give it back; the next round reports the slot taken.
                let release = ReleaseRequest {
                    location: request.location,
                    owner: request.owner,
                    lver: Some(lver),
                    clear_name: false,
                    name: None,
                };
                release_inner(port, space, &release).await?;
            }
            Round::Chosen(_) if lver > next => {
                // We completed a lagging instance for someone else: look again.
            }
            Round::Chosen(value) => {
                if value.name != request.name {
                    return Err(LeaseError::SlotTaken {
                        resource: request.name.clone(),
                        slot: request.location.index,
                        found: value.name,
                    });
                }
                let owner_name = space
                    .read_host(port, value.owner.host_id)
                    .await
                    .map(|r| r.host_name)
                    .unwrap_or_else(|_| "name unreadable".to_string());
                return Err(LeaseError::HeldByOther {
                    resource: space.lease_label(&request.location, &value.name),
                    owner: value.owner,
                    owner_name,
                    lver,
                });
            }
            Round::Conflict => {
                let pause_ms = backoff.next_ms(timeouts.paxos_backoff_max_ms);
                port.sleep_until(port.now_ms() + pause_ms).await;
            }
        }
    }
    Err(LeaseError::Contention {
        resource: space.lease_label(&request.location, &request.name),
        attempts: ACQUIRE_ROUNDS_MAX,
    })
}

/// The leader carries the name we expect: for a claim, no name and no holder;
/// otherwise exactly our name.
fn check_name(request: &AcquireRequest, leader: &LeaderRecord) -> Result<(), LeaseError> {
    let fits = if request.claim {
        leader.name.is_empty() && leader.held_by().is_none()
    } else {
        leader.name == request.name
    };
    if fits {
        Ok(())
    } else {
        Err(LeaseError::SlotTaken {
            resource: request.name.clone(),
            slot: request.location.index,
            found: leader.name.clone(),
        })
    }
}

/// Who holds the lease the leader describes: its owner, unless the leader
/// or the owner's dblock says that owner released this lver.
async fn current_holder(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
    leader: &LeaderRecord,
    own: &DblockRecord,
) -> Result<Option<Owner>, LeaseError> {
    let Some(owner) = leader.held_by() else {
        return Ok(None);
    };
    let dblock = if owner.host_id == request.owner.host_id {
        own.clone()
    } else {
        read_dblock(port, space, &request.location, owner.host_id, &leader.name).await?
    };
    Ok(if owner_moved_on(&dblock, leader, owner) {
        None
    } else {
        Some(owner)
    })
}

/// Has the leader's owner let go of the lver the leader shows? Yes if its
/// own dblock marks that lver released, or if its dblock has moved on to a
/// later instance (an owner only starts a ballot for a lease it no longer
/// holds, and a later instance is only started once this one ended).
fn owner_moved_on(dblock: &DblockRecord, leader: &LeaderRecord, owner: Owner) -> bool {
    let released = dblock.lver == leader.lver
        && dblock.released
        && dblock.inp.as_ref().is_some_and(|inp| inp.owner == owner);
    released || dblock.lver > leader.lver
}

/// Fail unless the incarnation holding the lease is known to be over.
async fn check_takeable(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
    leader: &LeaderRecord,
    holder: Owner,
) -> Result<(), LeaseError> {
    if space.planted(PlantedBug::TakeoverWithoutExpiry) {
        return Ok(());
    }
    let record = space.read_host(port, holder.host_id).await?;
    if record.generation_is_over(holder.generation) {
        return Ok(());
    }
    // The watchdog rule holds only for a host that runs a watchdog: one
    // without it may still be running its resources however long it is silent.
    let dead = record.flags.watchdog
        && request.dead_hosts.iter().any(|&(host_id, generation)| {
            host_id == holder.host_id
                && generation >= holder.generation
                && record.generation == generation
        });
    if dead {
        return Ok(());
    }
    Err(LeaseError::HeldByOther {
        resource: space.lease_label(&request.location, &leader.name),
        owner: holder,
        owner_name: record.host_name,
        lver: leader.lver,
    })
}

fn chosen_leader(
    space: &Lockspace,
    request: &AcquireRequest,
    previous: &LeaderRecord,
    lver: u64,
    value: Proposal,
    now_ms: u64,
) -> LeaderRecord {
    // A name checked unique stays so while the slot keeps it: the next
    // instance with the same name inherits the mark; a claim, a lagging
    // leader (an instance we did not see) or another name do not.
    let name_checked = !request.claim
        && previous.flags.name_checked
        && previous.lver.checked_add(1) == Some(lver)
        && previous.name == value.name;
    LeaderRecord {
        owner: Some(value.owner),
        flags: LeaderFlags {
            released: false,
            name_checked,
        },
        lver,
        max_hosts: space.geometry.max_hosts(),
        kind: request.location.kind,
        index: request.location.index,
        timestamp_ms: now_ms,
        payload_length_bytes: previous.payload_length_bytes,
        payload_checksum: previous.payload_checksum,
        name: value.name,
    }
}

/// One ballot in instance `lver`: phase 1 (announce the ballot, learn any
/// value already accepted in this instance), phase 2 (accept a value), and
/// the leader write that publishes the chosen value.
async fn ballot_round(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
    leader: &LeaderRecord,
    lver: u64,
    own: &DblockRecord,
    highest_seen: &mut (u64, u64),
) -> Result<Round, LeaseError> {
    let location = &request.location;
    let me = request.owner.host_id;
    if instance_seen(own).0 > lver {
        // Our own dblock is in a later instance, or released this one.
        return Ok(Round::Conflict);
    }
    let mut above = if highest_seen.0 == lver {
        highest_seen.1
    } else {
        0
    };
    if own.lver == lver {
        above = above.max(own.mbal);
    }
    let ballot = next_ballot(above, me, space.geometry.max_hosts()).ok_or_else(|| {
        LeaseError::Invalid(format!(
            "{} on {}: the ballot counter is exhausted; re-create the slot",
            space.lease_label(location, &request.name),
            space.device
        ))
    })?;
    let own_index = usize::try_from(me.index()).unwrap_or(usize::MAX);
    let ours = Proposal {
        owner: request.owner,
        name: request.name.clone(),
    };
    let value = if space.planted(PlantedBug::SkipPaxosPhase1) {
        ours
    } else {
        // Phase 1: raise mbal, keep whatever this host accepted in this instance.
        let (kept_bal, kept_inp) = if own.lver == lver {
            (own.bal, own.inp.clone())
        } else {
            (0, None)
        };
        let phase1 = DblockRecord {
            lver,
            mbal: ballot,
            bal: kept_bal,
            inp: kept_inp,
            released: false,
            timestamp_ms: port.now_ms(),
        };
        write_dblock(port, space, location, me, &phase1).await?;
        let seen = space.read_dblocks(port, location).await?;
        note_highest(highest_seen, &seen, lver);
        if lost_ballot(&seen, lver, ballot, own_index) {
            return Ok(Round::Conflict);
        }
        // The value accepted in the highest ballot of this instance, or ours.
        seen.iter()
            .filter(|d| d.lver == lver && d.bal > 0)
            .max_by_key(|d| d.bal)
            .and_then(|d| d.inp.clone())
            .unwrap_or(ours)
    };
    // Phase 2: accept the value in our ballot.
    let phase2 = DblockRecord {
        lver,
        mbal: ballot,
        bal: ballot,
        inp: Some(value.clone()),
        released: false,
        timestamp_ms: port.now_ms(),
    };
    write_dblock(port, space, location, me, &phase2).await?;
    let seen = space.read_dblocks(port, location).await?;
    note_highest(highest_seen, &seen, lver);
    if lost_ballot(&seen, lver, ballot, own_index) {
        return Ok(Round::Conflict);
    }
    // Chosen: publish it.
    let committed = chosen_leader(space, request, leader, lver, value.clone(), port.now_ms());
    write_leader(port, space, location, &committed).await?;
    Ok(Round::Chosen(value))
}

/// Our dblock as it must look while we hold the lease the leader shows: the
/// leader's lver and chosen value, with a ballot of ours.
fn carrying_chosen(
    space: &Lockspace,
    own: &DblockRecord,
    leader: &LeaderRecord,
    me: HostId,
) -> DblockRecord {
    let chosen = leader.owner.map(|owner| Proposal {
        owner,
        name: leader.name.clone(),
    });
    if own.lver == leader.lver && own.inp == chosen {
        return own.clone();
    }
    let mbal = if own.lver == leader.lver {
        own.mbal
    } else {
        next_ballot(0, me, space.geometry.max_hosts()).unwrap_or(u64::from(me.get()))
    };
    DblockRecord {
        lver: leader.lver,
        mbal,
        bal: mbal,
        inp: chosen,
        released: false,
        timestamp_ms: own.timestamp_ms,
    }
}

/// Remember the latest instance seen in the dblocks and its highest mbal.
fn note_highest(highest_seen: &mut (u64, u64), dblocks: &[DblockRecord], lver: u64) {
    for seen in dblocks
        .iter()
        .map(instance_seen)
        .filter(|(instance, _)| *instance >= lver)
    {
        *highest_seen = (*highest_seen).max(seen);
    }
}

/// The earliest instance a dblock leaves open, with its mbal there: a
/// dblock RELEASED in instance L says L is over, so it points at L + 1.
fn instance_seen(dblock: &DblockRecord) -> (u64, u64) {
    if dblock.released {
        (dblock.lver.saturating_add(1), 0)
    } else {
        (dblock.lver, dblock.mbal)
    }
}

async fn read_dblock(
    port: &Port,
    space: &Lockspace,
    location: &LeaseLocation,
    host_id: HostId,
    name: &str,
) -> Result<DblockRecord, LeaseError> {
    let offset_bytes = space.geometry.dblock_offset_bytes(location, host_id);
    let bytes = port.read(offset_bytes, space.sector_size()).await?;
    DblockRecord::decode(&bytes, &space.name, space.geometry.max_hosts()).map_err(|source| {
        space.corrupt(
            offset_bytes,
            format!(
                "dblock of host {host_id} in {}",
                space.lease_label(location, name)
            ),
            source,
        )
    })
}

/// True if another host started a higher ballot in this instance, or a
/// later instance began, or our own dblock is not what we wrote.
fn lost_ballot(dblocks: &[DblockRecord], lver: u64, ballot: u64, own_index: usize) -> bool {
    dblocks.iter().enumerate().any(|(index, dblock)| {
        if index == own_index {
            dblock.lver != lver || dblock.mbal != ballot || dblock.released
        } else {
            // A later instance began, or this one ended (its owner released
            // it), or a higher ballot runs in it.
            instance_seen(dblock).0 > lver || (dblock.lver == lver && dblock.mbal > ballot)
        }
    })
}

async fn write_dblock(
    port: &Port,
    space: &Lockspace,
    location: &LeaseLocation,
    host_id: HostId,
    dblock: &DblockRecord,
) -> Result<(), LeaseError> {
    let encoded = dblock
        .encode(&space.name, space.geometry.sector_size_bytes())
        .map_err(|e| LeaseError::Invalid(e.to_string()))?;
    port.write(
        space.geometry.dblock_offset_bytes(location, host_id),
        encoded,
    )
    .await?;
    Ok(())
}

pub(crate) async fn write_leader(
    port: &Port,
    space: &Lockspace,
    location: &LeaseLocation,
    leader: &LeaderRecord,
) -> Result<(), LeaseError> {
    let encoded = leader
        .encode(&space.name, space.geometry.sector_size_bytes())
        .map_err(|e| LeaseError::Invalid(e.to_string()))?;
    port.write(location.leader_offset_bytes, encoded).await?;
    Ok(())
}

/// One release.
#[derive(Clone, Debug)]
pub struct ReleaseRequest {
    pub location: LeaseLocation,
    pub owner: Owner,
    /// The lease version we hold, as acquire returned it; None reads it from
    /// the leader (one more read).
    pub lver: Option<u64>,
    /// Also clear the resource name: the slot becomes free for any name.
    pub clear_name: bool,
    /// Release only a proposal of ours for this resource name (for slots
    /// whose leader does not show the name yet: a claim whose outcome is
    /// unknown).
    pub name: Option<String>,
}

/// Release a lease we hold: mark our own dblock RELEASED for the lver we
/// hold. Fails with [`LeaseError::NotOwner`] if our dblock does not show us
/// as the proposer of that lver (or, without a known lver, the leader does
/// not name us).
pub fn release(space: &Lockspace, request: ReleaseRequest) -> Operation<Result<u64, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { release_inner(&port, &space, &request).await })
}

pub(crate) async fn release_inner(
    port: &Port,
    space: &Lockspace,
    request: &ReleaseRequest,
) -> Result<u64, LeaseError> {
    let location = &request.location;
    let not_owner = |found: String| LeaseError::NotOwner {
        resource: space.lease_label(location, ""),
        owner: request.owner,
        found,
    };
    let leader = match (request.lver, request.clear_name) {
        (Some(_), false) => None,
        _ => Some(space.read_leader(port, location).await?),
    };
    let name = leader.as_ref().map(|l| l.name.clone()).unwrap_or_default();
    let own = read_dblock(port, space, location, request.owner.host_id, &name).await?;
    let proposes_us = own.inp.as_ref().is_some_and(|inp| {
        inp.owner == request.owner && request.name.as_ref().is_none_or(|name| &inp.name == name)
    });
    // Without a known lver, anything of ours from the leader's instance on
    // counts: an acquire that failed with an I/O error may have had our
    // value chosen in an instance the leader does not show yet. Marking our
    // own dblock released never changes which value an instance chose.
    let lver_matches = match (request.lver, &leader) {
        (Some(lver), _) => own.lver == lver,
        (None, Some(leader)) => own.lver >= leader.lver && own.lver > 0,
        (None, None) => false,
    };
    if !proposes_us || !lver_matches || own.released {
        if request.lver.is_none() {
            // Not ours as far as we can see; but a write of ours to this
            // dblock that timed out may still land and make it ours. Writing
            // the dblock back unchanged proves none is in flight: the disk
            // refuses a write that an earlier one could overtake.
            write_dblock(port, space, location, request.owner.host_id, &own).await?;
        }
        let found = match &leader {
            Some(leader) => match leader.owner {
                None => "a lease never owned".to_string(),
                Some(owner) => format!("the leader shows {owner}, lver {}", leader.lver),
            },
            None => format!("our dblock shows lver {}", own.lver),
        };
        let already = if own.released && proposes_us {
            " (ours already released)"
        } else {
            ""
        };
        return Err(not_owner(format!("{found}{already}")));
    }
    // Without a known lver, our proposal counts only once its instance is
    // known to have chosen it: shown by the leader, or learnt by finishing
    // the instance with a ballot of our own (which adopts whatever value it
    // chose). Releasing a proposal that lost would close an instance
    // another host won.
    let own = match &leader {
        Some(leader)
            if request.lver.is_none()
                && !(leader.lver == own.lver && leader.held_by() == Some(request.owner)) =>
        {
            let inp_name = own
                .inp
                .as_ref()
                .map(|inp| inp.name.clone())
                .unwrap_or_default();
            let finishing = AcquireRequest {
                location: *location,
                owner: request.owner,
                name: inp_name,
                claim: false,
                dead_hosts: Vec::new(),
                io_timeout_ms: space.io_timeout_ms,
                seed: 0,
            };
            let mut highest_seen = instance_seen(&own);
            match ballot_round(
                port,
                space,
                &finishing,
                leader,
                own.lver,
                &own,
                &mut highest_seen,
            )
            .await?
            {
                Round::Chosen(value) if value.owner == request.owner => {
                    read_dblock(port, space, location, request.owner.host_id, &name).await?
                }
                Round::Chosen(value) => {
                    return Err(not_owner(format!(
                        "instance {} chose {}",
                        own.lver, value.owner
                    )));
                }
                Round::Conflict => {
                    return Err(LeaseError::Contention {
                        resource: space.lease_label(location, &name),
                        attempts: 1,
                    })
                }
            }
        }
        _ => own,
    };
    let lver = own.lver;
    let released = DblockRecord {
        released: true,
        timestamp_ms: port.now_ms(),
        ..own
    };
    write_dblock(port, space, location, request.owner.host_id, &released).await?;
    if let (true, Some(mut leader)) = (request.clear_name, leader) {
        // Free the slot for any name. (The dblock above already released it.)
        leader.flags.released = true;
        leader.flags.name_checked = false;
        leader.name.clear();
        leader.timestamp_ms = port.now_ms();
        write_leader(port, space, location, &leader).await?;
    }
    Ok(lver)
}

/// A lease's leader and whether its owner released it (from the owner's dblock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    pub leader: LeaderRecord,
    /// The current holder: the leader's owner unless it released.
    pub holder: Option<Owner>,
}

/// Read a lease's leader and, if it names an owner, that owner's dblock.
pub fn inquire(
    space: &Lockspace,
    location: LeaseLocation,
) -> Operation<Result<LeaseStatus, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { inquire_inner(&port, &space, &location).await })
}

pub(crate) async fn inquire_inner(
    port: &Port,
    space: &Lockspace,
    location: &LeaseLocation,
) -> Result<LeaseStatus, LeaseError> {
    let leader = space.read_leader(port, location).await?;
    let holder = match leader.held_by() {
        None => None,
        Some(owner) => {
            let dblock = read_dblock(port, space, location, owner.host_id, &leader.name).await?;
            (!owner_moved_on(&dblock, &leader, owner)).then_some(owner)
        }
    };
    Ok(LeaseStatus { leader, holder })
}
