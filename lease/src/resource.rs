//! Resources by name: finding the slot that carries a name, and claiming a
//! free slot for a new name without two hosts ever ending up with two slots
//! of one name.
//!
//! Finding: a name's probe sequence starts at its home slot (CRC32 of the
//! name modulo the slot count) and goes on slot by slot; a claim takes the
//! first free slot of that sequence, so a lookup reads the leaders along it
//! until one carries the name (usually the first) and stops at a leader
//! that was never used or after [`PROBE_READS_MAX`] reads. Only then does
//! it read the name's window (below), or, on a device formatted before
//! names were probed (no names-probed flag in the header), every leader.
//!
//! A name's window is its probe sequence up to and including the first slot
//! never written since format: no claim of the name, finished or under
//! way, lies past it ([`scan_window`] says why).
//!
//! Claiming: read the window, every lease whole; if no slot carries the
//! name, run paxos on the first free slot of the window with the name in
//! the proposal. After winning, read the window again: if any other slot
//! now carries the same name, give ours back (release and clear the name)
//! and start over after a random pause. Of two hosts that claimed one name
//! in two slots, at least one sees the other's slot in its second read
//! (each wrote its leader before reading, and the other's slot lies in its
//! window), so at most one keeps its claim. A check that finds no other
//! slot marks the leader NAME_CHECKED; the mark passes to every later lease
//! version of the same name, and an acquire that finds it needs no check of
//! its own: any later claimer of the name sees this slot and gives up. An
//! acquire of a slot without the mark (a claim whose holder died before its
//! check) checks as a claim does.
//!
//! Costs, with `W` slots in a name's window (1 past the run of owned slots
//! at its home: 1 or 2 while the device is far from full, at most the slot
//! count) and leases of `L` bytes: an acquire of a checked name reads one
//! leader sector per probe step (1 in the common case) and then runs paxos;
//! a claim, or an acquire of an unchecked slot, reads the window twice
//! (2 W reads of L bytes) and writes the NAME_CHECKED mark once; release by
//! name reads the window once. None of it grows with the number of slots
//! on a device with the names-probed flag; on one without it, W is every
//! slot.

use crate::error::LeaseError;
use crate::format::{check_name, DblockRecord, LeaderFlags, LeaderRecord, RESOURCE_NAME_BYTES};
use crate::ids::{HostId, Owner};
use crate::lockspace::Lockspace;
use crate::op::{Operation, Port};
use crate::paxos::{self, AcquireRequest, ReleaseRequest};
use crate::timeouts::Timeouts;

/// Claim attempts before giving up: each lost race means another host made
/// progress, so a handful is plenty.
pub const CLAIM_ATTEMPTS_MAX: u32 = 16;

/// Leaders a lookup reads along a name's probe sequence before it reads
/// every leader instead.
pub const PROBE_READS_MAX: u32 = 16;

/// Where a name's probe sequence starts.
pub fn home_slot(name: &str, max_resources: u32) -> u32 {
    crc32fast::hash(name.as_bytes())
        .checked_rem(max_resources)
        .unwrap_or(0)
}

/// Every slot, in the order a name probes them: its home slot, then on,
/// wrapping around.
pub fn probe_order(name: &str, max_resources: u32) -> impl Iterator<Item = u32> {
    let home = u64::from(home_slot(name, max_resources));
    let count = u64::from(max_resources);
    (0..count).filter_map(move |step| u32::try_from((home + step) % count).ok())
}

/// Walk `name`'s probe sequence one leader sector at a time: the first slot
/// whose leader carries the name, or None at a never-used leader or after
/// [`PROBE_READS_MAX`] reads. A leader that cannot be read or decoded is
/// stepped over (the full scan after a miss reports it). A hit is only a
/// candidate: paxos on it decides, and the NAME_CHECKED mark (or the scan
/// that sets it) rules out a second slot.
async fn probe(port: &Port, space: &Lockspace, name: &str) -> Option<(u32, LeaderRecord)> {
    let reads = usize::try_from(PROBE_READS_MAX).unwrap_or(usize::MAX);
    for slot in probe_order(name, space.geometry.max_resources()).take(reads) {
        let location = space.geometry.resource_lease(slot);
        match space.read_leader(port, &location).await {
            Ok(leader) if leader.name == name => return Some((slot, leader)),
            Ok(leader) if leader.lver == 0 && leader.owner.is_none() => return None,
            _ => {}
        }
    }
    None
}

/// A resource slot's leader, or why it cannot be used.
pub type SlotScan = Vec<(u32, Result<LeaderRecord, LeaseError>)>;

/// A named acquire.
#[derive(Clone, Debug)]
pub struct NamedAcquire {
    pub name: String,
    pub owner: Owner,
    pub dead_hosts: Vec<(HostId, u64)>,
    pub io_timeout_ms: u32,
    pub seed: u64,
}

pub(crate) fn check_resource_name(name: &str) -> Result<(), LeaseError> {
    check_name("resource name", name, RESOURCE_NAME_BYTES)
        .map_err(|e| LeaseError::Invalid(e.to_string()))?;
    if name.is_empty() {
        return Err(LeaseError::Invalid("resource name is empty".to_string()));
    }
    Ok(())
}

async fn scan_inner(port: &Port, space: &Lockspace) -> Result<SlotScan, LeaseError> {
    let mut slots = Vec::with_capacity(space.geometry.max_resources() as usize);
    for slot in 0..space.geometry.max_resources() {
        let location = space.geometry.resource_lease(slot);
        let leader = match port
            .read(location.leader_offset_bytes, space.sector_size())
            .await
        {
            Ok(bytes) => space.decode_leader(&location, &bytes),
            Err(e) => Err(LeaseError::Disk(e)),
        };
        slots.push((slot, leader));
    }
    Ok(slots)
}

/// A leader as its dblocks say it is: where the dblocks show an accepted
/// value in an instance past the leader's (the leader lags, or a late leader
/// write took it back), that value's owner and name stand in for the
/// leader's, and the slot counts as held.
fn deep_leader(mut leader: LeaderRecord, dblocks: &[DblockRecord]) -> LeaderRecord {
    let ahead = dblocks
        .iter()
        .filter(|d| d.lver > leader.lver && d.bal > 0)
        .max_by_key(|d| (d.lver, d.bal))
        .and_then(|d| d.inp.clone().map(|inp| (d.lver, inp)));
    if let Some((lver, inp)) = ahead {
        leader.owner = Some(inp.owner);
        leader.flags.released = false;
        leader.flags.name_checked = false;
        leader.lver = lver;
        leader.name = inp.name;
    }
    leader
}

/// Never written since format: a leader that was never owned (lver 0, no
/// owner, no name) and every dblock blank (no instance, ballot or
/// proposal). Only the blank dblocks make this monotone: a value accepted
/// in a slot stays in a dblock until a leader carries it, but a dblock that
/// moved on to a later instance with only a ballot (phase 1) shows none,
/// and a multi-sector read may see such dblocks beside a leader read
/// before its write landed. Once any dblock has been written (always with
/// lver >= 1), the slot is never pristine again: dblocks are only ever
/// rewritten by their own host, from a read that is never older than its
/// own last write (docs/safety.md, assumption 2).
fn pristine(leader: &LeaderRecord, dblocks: &[DblockRecord]) -> bool {
    leader.lver == 0
        && leader.owner.is_none()
        && leader.name.is_empty()
        && dblocks
            .iter()
            .all(|d| d.lver == 0 && d.mbal == 0 && d.bal == 0 && d.inp.is_none())
}

/// The slots where a claim of `name` can have gone, each as its dblocks say
/// it is ([`deep_leader`]), in probe order: `name`'s probe sequence up to
/// and including its first pristine slot ([`pristine`]: never written
/// since format). Used where a name must not be missed (claims, their
/// duplicate check, release by name).
///
/// Why nothing of `name` lies further on: a claim takes the first free slot
/// of the sequence, and a pristine slot is free, so a claim goes at most as
/// far as the first pristine slot it saw. A slot stops being pristine at
/// the first write to it and never becomes pristine again, so that first
/// pristine slot only moves on along the sequence: every claim of `name`,
/// finished or under way, lies at or before the one seen now. On a device
/// without the names-probed header flag (a build that placed names
/// first-free overall), the window is every slot.
///
/// Cost: one contiguous read of `lease_size_bytes` per slot in the window;
/// the window is one slot past the run of written slots at the name's home
/// (one or two slots while the device is far from full).
async fn scan_window(port: &Port, space: &Lockspace, name: &str) -> Result<SlotScan, LeaseError> {
    scan_probe_order(port, space, name, space.names_probed).await
}

/// Every slot in `name`'s probe order, each as its dblocks say it is;
/// with `stop_at_pristine`, up to and including the first pristine one.
async fn scan_probe_order(
    port: &Port,
    space: &Lockspace,
    name: &str,
    stop_at_pristine: bool,
) -> Result<SlotScan, LeaseError> {
    let mut slots = Vec::new();
    for slot in probe_order(name, space.geometry.max_resources()) {
        let location = space.geometry.resource_lease(slot);
        let (entry, last) = match space.read_lease(port, &location).await {
            Ok((leader, dblocks)) => {
                let last = stop_at_pristine && pristine(&leader, &dblocks);
                (Ok(deep_leader(leader, &dblocks)), last)
            }
            Err(e) => (Err(e), false),
        };
        slots.push((slot, entry));
        if last {
            break;
        }
    }
    debug_assert!(slots.len() <= space.geometry.max_resources() as usize);
    Ok(slots)
}

/// Read every resource leader (one sector each).
pub fn scan(space: &Lockspace) -> Operation<Result<SlotScan, LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { scan_inner(&port, &space).await })
}

fn find(slots: &SlotScan, name: &str) -> Option<(u32, LeaderRecord)> {
    slots.iter().find_map(|(slot, leader)| match leader {
        Ok(leader) if leader.name == name => Some((*slot, leader.clone())),
        _ => None,
    })
}

/// The slot carrying `name`; "none" only when every slot could be read and
/// decoded: an unusable slot might be the one carrying it.
fn find_certain(slots: SlotScan, name: &str) -> Result<Option<(u32, LeaderRecord)>, LeaseError> {
    if let Some(found) = find(&slots, name) {
        return Ok(Some(found));
    }
    match slots.into_iter().find_map(|(_, leader)| leader.err()) {
        Some(error) => Err(error),
        None => Ok(None),
    }
}

/// The slot carrying `name`, if any.
pub fn lookup(
    space: &Lockspace,
    name: &str,
) -> Operation<Result<Option<(u32, LeaderRecord)>, LeaseError>> {
    let space = space.clone();
    let name = name.to_string();
    Operation::new(move |port| async move {
        check_resource_name(&name)?;
        if let Some(found) = probe(&port, &space, &name).await {
            return Ok(Some(found));
        }
        let slots = if space.names_probed {
            scan_window(&port, &space, &name).await?
        } else {
            scan_inner(&port, &space).await?
        };
        find_certain(slots, &name)
    })
}

/// Why a scan gives no certainty about a name, if it does not: a read that
/// failed, as the I/O error it is (preferred), or an unusable slot (it might
/// carry the name), as ClaimBlocked naming the slot.
fn unusable(name: &str, slots: &mut SlotScan) -> Option<LeaseError> {
    let failed_read = slots
        .iter()
        .position(|(_, leader)| matches!(leader, Err(LeaseError::Disk(_))));
    if let Some(index) = failed_read {
        if let (_, Err(e)) = slots.swap_remove(index) {
            return Some(e);
        }
    }
    slots.iter().find_map(|(slot, leader)| match leader {
        Err(e) => Some(LeaseError::ClaimBlocked {
            resource: name.to_string(),
            slot: *slot,
            reason: e.to_string(),
        }),
        Ok(_) => None,
    })
}

/// The first free slot of a window scan ([`scan_window`], in probe order)
/// for a new name, or None when every slot is in use. Refused
/// while any leader is unusable (it might carry the name); a read that
/// failed is reported as the I/O error it is.
fn free_slot(name: &str, slots: &mut SlotScan) -> Result<Option<u32>, LeaseError> {
    if let Some(error) = unusable(name, slots) {
        return Err(error);
    }
    // The scan is in probe order: its first free slot is where a lookup
    // looks first.
    Ok(slots.iter().find_map(|(slot, leader)| match leader {
        Ok(leader) if leader.name.is_empty() && leader.held_by().is_none() => Some(*slot),
        _ => None,
    }))
}

/// From a scan of `name`'s window: the slot carrying `name` (false), or
/// the free slot to claim for it (true).
async fn scanned_slot(
    port: &Port,
    space: &Lockspace,
    name: &str,
) -> Result<(u32, bool), LeaseError> {
    let mut slots = scan_window(port, space, name).await?;
    if let Some((slot, _)) = find(&slots, name) {
        return Ok((slot, false));
    }
    match free_slot(name, &mut slots)? {
        Some(slot) => Ok((slot, true)),
        None => Err(LeaseError::NoFreeSlot {
            max_resources: space.geometry.max_resources(),
        }),
    }
}

/// Acquire the resource `name`, claiming a free slot if no slot carries it.
/// Returns the slot and the leader we wrote.
pub fn acquire(
    space: &Lockspace,
    request: NamedAcquire,
) -> Operation<Result<(u32, LeaderRecord), LeaseError>> {
    let space = space.clone();
    Operation::new(move |port| async move { acquire_inner(&port, &space, &request).await })
}

async fn acquire_inner(
    port: &Port,
    space: &Lockspace,
    request: &NamedAcquire,
) -> Result<(u32, LeaderRecord), LeaseError> {
    check_resource_name(&request.name)?;
    let timeouts = Timeouts::from_io_timeout_ms(request.io_timeout_ms);
    let mut seed = request.seed;
    for attempt in 0..CLAIM_ATTEMPTS_MAX {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let paxos_request = |slot: u32, claim: bool| AcquireRequest {
            location: space.geometry.resource_lease(slot),
            owner: request.owner,
            name: request.name.clone(),
            claim,
            dead_hosts: request.dead_hosts.clone(),
            io_timeout_ms: request.io_timeout_ms,
            seed,
        };
        // First the name's own probe sequence (a slot that turns out taken
        // by another name sends the next attempt to the full scan).
        let probed = if attempt == 0 {
            probe(port, space, &request.name).await
        } else {
            None
        };
        let (slot, claim) = match probed {
            Some((slot, _)) => (slot, false),
            None => scanned_slot(port, space, &request.name).await?,
        };
        let (leader, held_before) =
            match paxos::acquire_flagged(port, space, &paxos_request(slot, claim)).await {
                Ok(acquired) => acquired,
                Err(LeaseError::SlotTaken { .. }) => continue,
                Err(e) => return Err(e),
            };
        if held_before || leader.flags.name_checked {
            // Ours since before this call (and checked for duplicates then),
            // or a name checked unique in this slot: a claimer of another
            // slot re-checks after its leader write and gives up; we must
            // not give back a lease whose resource runs.
            return Ok((slot, leader));
        }
        // Whether found or claimed, the name must be in this slot only: a
        // concurrent claim, or a slot being given back, may have put it in a
        // second one. Check after our leader write; give ours back if not.
        let mut again = scan_window(port, space, &request.name).await?;
        if !again.iter().any(|(other, _)| *other == slot) {
            // Our own slot, written by us, cannot be pristine, so the window
            // must reach past it; if it does not, something we do not
            // understand happened: check every slot instead.
            again = scan_probe_order(port, space, &request.name, false).await?;
        }
        let duplicate = again.iter().any(|(other, leader)| {
            *other != slot && matches!(leader, Ok(l) if l.name == request.name)
        });
        // A slot we cannot read might carry the same name: no certainty.
        let uncertain = unusable(&request.name, &mut again);
        if !duplicate && uncertain.is_none() {
            // Unique: mark it, so later acquires of this name skip the scan.
            // A failed mark only costs the next acquire a scan.
            let checked = LeaderRecord {
                flags: LeaderFlags {
                    name_checked: true,
                    ..leader.flags
                },
                timestamp_ms: port.now_ms(),
                ..leader.clone()
            };
            let location = space.geometry.resource_lease(slot);
            return match paxos::write_leader(port, space, &location, &checked).await {
                Ok(()) => Ok((slot, checked)),
                Err(_) => Ok((slot, leader)),
            };
        }
        paxos::release_inner(
            port,
            space,
            &ReleaseRequest {
                location: space.geometry.resource_lease(slot),
                owner: request.owner,
                lver: Some(leader.lver),
                clear_name: true,
                name: None,
            },
        )
        .await?;
        if let Some(error) = uncertain {
            return Err(error);
        }
        let pause_ms = 1 + seed % timeouts.paxos_backoff_max_ms.max(1);
        port.sleep_until(port.now_ms() + pause_ms).await;
    }
    Err(LeaseError::Contention {
        resource: format!("resource {:?}", request.name),
        attempts: CLAIM_ATTEMPTS_MAX,
    })
}

/// Release the resource `name` held by `owner`, looking its slot up first.
/// For a caller that does not know whether it holds it (an acquire that
/// failed with an I/O error may still have won on disk): returns the lver
/// released, or None when `owner` does not hold it.
pub fn release(
    space: &Lockspace,
    name: &str,
    owner: Owner,
) -> Operation<Result<Option<(u32, u64)>, LeaseError>> {
    let space = space.clone();
    let name = name.to_string();
    Operation::new(move |port| async move {
        check_resource_name(&name)?;
        let mut slots = scan_window(&port, &space, &name).await?;
        // An unusable leader might carry the name: no certainty without it.
        if let Some(index) = slots.iter().position(|(_, leader)| leader.is_err()) {
            if let (_, Err(e)) = slots.swap_remove(index) {
                return Err(e);
            }
        }
        // Every slot carrying the name (a claim race may have left ours in a
        // second one), and every unnamed slot (a claim of ours whose leader
        // write never happened may have had its proposal accepted there).
        let candidates: Vec<u32> = slots
            .iter()
            .filter_map(|(slot, leader)| match leader {
                Ok(leader) if leader.name == name || leader.name.is_empty() => Some(*slot),
                _ => None,
            })
            .collect();
        let mut released = None;
        for slot in candidates {
            let request = ReleaseRequest {
                location: space.geometry.resource_lease(slot),
                owner,
                lver: None,
                clear_name: false,
                name: Some(name.clone()),
            };
            match paxos::release_inner(&port, &space, &request).await {
                Ok(lver) => released = released.or(Some((slot, lver))),
                Err(LeaseError::NotOwner { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(released)
    })
}
