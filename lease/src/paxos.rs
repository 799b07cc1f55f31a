//! The paxos lease (Disk Paxos, Gafni & Lamport, on one disk): a leader
//! sector saying who owns the lease, and one dblock per host in which ballots
//! are run. Each change of ownership is one instance, numbered by the lease
//! version `lver`; a dblock written for an older lver counts as empty.

use crate::error::LeaseError;
use crate::format::{DblockRecord, LeaderRecord, LeaseLocation, Proposal};
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
    let round = above / hosts + 1;
    round
        .checked_mul(hosts)?
        .checked_add(u64::from(host_id.get()))
}

enum Round {
    Won(LeaderRecord),
    /// Another ballot was higher: pause and try again.
    Conflict,
}

/// Acquire a paxos lease. Succeeds when the lease was free, released, ours,
/// or owned by an incarnation known to be over (released, fenced, below its
/// host's generation floor, or, for a host that advertises a watchdog, dead
/// by the watchdog rule); otherwise fails
/// with [`LeaseError::HeldByOther`].
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
    assert!(space.geometry.contains_host(request.owner.host_id));
    assert!(
        request.owner.generation > 0,
        "acquire by an owner that never joined"
    );
    let timeouts = Timeouts::from_io_timeout_ms(request.io_timeout_ms);
    let mut backoff = Backoff(request.seed ^ u64::from(request.owner.host_id.get()));
    // The highest mbal seen in the instance we are working on, so a ballot
    // after a conflict starts above it.
    let mut highest_seen = (0u64, 0u64);
    for _ in 0..ACQUIRE_ROUNDS_MAX {
        // Only the leader and our own dblock here; every dblock is read after
        // each phase's write, where Disk Paxos needs it.
        let leader_record = space.read_leader(port, &request.location).await?;
        let leader = &leader_record;
        let label = space.lease_label(&request.location, &leader.name);
        if request.claim {
            if !leader.name.is_empty() || leader.held_by().is_some() {
                return Err(LeaseError::SlotTaken {
                    resource: request.name.clone(),
                    slot: request.location.index,
                    found: leader.name.clone(),
                });
            }
        } else if leader.name != request.name {
            return Err(LeaseError::SlotTaken {
                resource: request.name.clone(),
                slot: request.location.index,
                found: leader.name.clone(),
            });
        }
        if let Some(holder) = leader.held_by() {
            if holder == request.owner {
                return Ok(leader_record);
            }
            // Any other holder, an older generation of our own host id
            // included: that generation's processes may still run until it is
            // over (the host raises its generation floor once it knows).
            check_takeable(port, space, request, leader, holder, &label).await?;
        }
        let own = read_own_dblock(port, space, request).await?;
        match ballot_round(
            port,
            space,
            request,
            &leader_record,
            &own,
            &mut highest_seen,
        )
        .await?
        {
            Round::Won(committed) => {
                let proposal_owner = committed.owner;
                if proposal_owner == Some(request.owner) {
                    return Ok(committed);
                }
                // Another host's value was chosen in this instance: it owns
                // the lease now.
                let holder = proposal_owner.ok_or_else(|| {
                    LeaseError::Invalid("committed a leader without an owner".to_string())
                })?;
                if committed.name != request.name {
                    return Err(LeaseError::SlotTaken {
                        resource: request.name.clone(),
                        slot: request.location.index,
                        found: committed.name,
                    });
                }
                let owner_name = space
                    .read_host(port, holder.host_id)
                    .await
                    .map(|r| r.host_name)
                    .unwrap_or_else(|_| "name unreadable".to_string());
                return Err(LeaseError::HeldByOther {
                    resource: space.lease_label(&request.location, &committed.name),
                    owner: holder,
                    owner_name,
                    lver: committed.lver,
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

/// Fail unless the incarnation holding the lease is known to be over.
async fn check_takeable(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
    leader: &LeaderRecord,
    holder: Owner,
    label: &str,
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
        resource: label.to_string(),
        owner: holder,
        owner_name: record.host_name,
        lver: leader.lver,
    })
}

/// One ballot for instance `leader.lver + 1`: phase 1 (announce the ballot,
/// learn any value already accepted), phase 2 (accept a value), commit.
async fn ballot_round(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
    leader: &LeaderRecord,
    own: &DblockRecord,
    highest_seen: &mut (u64, u64),
) -> Result<Round, LeaseError> {
    let location = &request.location;
    let me = request.owner.host_id;
    let lver = leader
        .lver
        .checked_add(1)
        .ok_or_else(|| LeaseError::Invalid("lease version exhausted".to_string()))?;
    if own.lver > lver {
        // Our own dblock is in a later instance: the leader we read is stale.
        return Ok(Round::Conflict);
    }
    let (seen_lver, seen_mbal) = *highest_seen;
    let mut above = if seen_lver == lver { seen_mbal } else { 0 };
    if own.lver == lver {
        above = above.max(own.mbal);
    }
    let ballot = next_ballot(above, me, space.geometry.max_hosts())
        .ok_or_else(|| LeaseError::Invalid("ballot number exhausted".to_string()))?;
    let own_index = usize::try_from(me.index()).unwrap_or(usize::MAX);
    let value = if space.planted(PlantedBug::SkipPaxosPhase1) {
        Proposal {
            owner: request.owner,
            name: request.name.clone(),
        }
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
            timestamp_ms: port.now_ms(),
        };
        write_dblock(port, space, location, me, &phase1).await?;
        let seen = space.read_dblocks(port, location).await?;
        note_highest(highest_seen, &seen, lver);
        if lost_ballot(&seen, lver, ballot, own_index) {
            return Ok(Round::Conflict);
        }
        // The value: the one accepted in the highest ballot of this instance, or ours.
        seen.iter()
            .filter(|d| d.lver == lver && d.bal > 0)
            .max_by_key(|d| d.bal)
            .and_then(|d| d.inp.clone())
            .unwrap_or_else(|| Proposal {
                owner: request.owner,
                name: request.name.clone(),
            })
    };
    // Phase 2: accept the value in our ballot.
    let phase2 = DblockRecord {
        lver,
        mbal: ballot,
        bal: ballot,
        inp: Some(value.clone()),
        timestamp_ms: port.now_ms(),
    };
    write_dblock(port, space, location, me, &phase2).await?;
    let seen = space.read_dblocks(port, location).await?;
    note_highest(highest_seen, &seen, lver);
    if lost_ballot(&seen, lver, ballot, own_index) {
        return Ok(Round::Conflict);
    }
    // Commit: the value is chosen for this lver; publish it in the leader.
    let committed = LeaderRecord {
        owner: Some(value.owner),
        flags: Default::default(),
        lver,
        max_hosts: space.geometry.max_hosts(),
        kind: location.kind,
        index: location.index,
        timestamp_ms: port.now_ms(),
        payload_length_bytes: leader.payload_length_bytes,
        payload_checksum: leader.payload_checksum,
        name: value.name,
    };
    write_leader(port, space, location, &committed).await?;
    Ok(Round::Won(committed))
}

/// Remember the highest mbal of instance `lver` (or of a later instance,
/// which makes the next round's leader read move on).
fn note_highest(highest_seen: &mut (u64, u64), dblocks: &[DblockRecord], lver: u64) {
    for dblock in dblocks.iter().filter(|d| d.lver >= lver) {
        let candidate = (dblock.lver, dblock.mbal);
        if candidate > *highest_seen {
            *highest_seen = candidate;
        }
    }
}

async fn read_own_dblock(
    port: &Port,
    space: &Lockspace,
    request: &AcquireRequest,
) -> Result<DblockRecord, LeaseError> {
    let offset_bytes = space
        .geometry
        .dblock_offset_bytes(&request.location, request.owner.host_id);
    let bytes = port.read(offset_bytes, space.sector_size()).await?;
    DblockRecord::decode(&bytes, &space.name, space.geometry.max_hosts()).map_err(|source| {
        space.corrupt(
            offset_bytes,
            format!(
                "dblock of host {} in {}",
                request.owner.host_id,
                space.lease_label(&request.location, &request.name)
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
            dblock.lver != lver || dblock.mbal != ballot
        } else {
            dblock.lver > lver || (dblock.lver == lver && dblock.mbal > ballot)
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
    /// The lease version we hold, when known; None accepts any.
    pub lver: Option<u64>,
    /// Also clear the resource name: the slot becomes free for any name.
    pub clear_name: bool,
}

/// Release a lease we hold: the leader gets the RELEASED flag. Fails with
/// [`LeaseError::NotOwner`] if the leader no longer names us.
pub fn release(
    space: &Lockspace,
    request: ReleaseRequest,
) -> Operation<Result<LeaderRecord, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { release_inner(&port, &space, &request).await })
}

pub(crate) async fn release_inner(
    port: &Port,
    space: &Lockspace,
    request: &ReleaseRequest,
) -> Result<LeaderRecord, LeaseError> {
    let leader = space.read_leader(port, &request.location).await?;
    let ours = leader.held_by() == Some(request.owner)
        && request.lver.is_none_or(|lver| lver == leader.lver);
    if !ours {
        let found = match leader.owner {
            None => "never owned".to_string(),
            Some(owner) if leader.flags.released => {
                format!("released by {owner}, lver {}", leader.lver)
            }
            Some(owner) => format!("held by {owner}, lver {}", leader.lver),
        };
        return Err(LeaseError::NotOwner {
            resource: space.lease_label(&request.location, &leader.name),
            owner: request.owner,
            found,
        });
    }
    let mut released = leader;
    released.flags.released = true;
    released.timestamp_ms = port.now_ms();
    if request.clear_name {
        released.name.clear();
    }
    write_leader(port, space, &request.location, &released).await?;
    Ok(released)
}

/// Read a lease's leader.
pub fn inquire(
    space: &Lockspace,
    location: LeaseLocation,
) -> Operation<Result<LeaderRecord, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { space.read_leader(&port, &location).await })
}
