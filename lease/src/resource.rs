//! Resources by name: finding the slot that carries a name, and claiming a
//! free slot for a new name without two hosts ever ending up with two slots
//! of one name.
//!
//! Claiming: scan every leader; if no slot carries the name, run paxos on the
//! first free slot with the name in the proposal. After winning, scan again:
//! if any other slot now carries the same name, give ours back (release and
//! clear the name) and start over after a random pause. Of two hosts that
//! claimed one name in two slots, at least one sees the other's slot in its
//! second scan (each wrote its leader before scanning), so at most one keeps
//! its claim.

use crate::error::LeaseError;
use crate::format::{check_name, LeaderRecord, RESOURCE_NAME_BYTES};
use crate::ids::{HostId, Owner};
use crate::lockspace::Lockspace;
use crate::op::{Operation, Port};
use crate::paxos::{self, AcquireRequest, ReleaseRequest};
use crate::timeouts::Timeouts;

/// Claim attempts before giving up: each lost race means another host made
/// progress, so a handful is plenty.
pub const CLAIM_ATTEMPTS_MAX: u32 = 16;

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

/// Every slot's leader as its dblocks say it is: where the dblocks show an
/// accepted value in an instance past the leader's (the leader lags, or a
/// late leader write took it back), that value's owner and name stand in for
/// the leader's, and the slot counts as held. Reads every lease whole: used
/// where a name must not be missed (claims, their duplicate check, release
/// by name), not on every lookup.
async fn scan_deep(port: &Port, space: &Lockspace) -> Result<SlotScan, LeaseError> {
    let mut slots = scan_inner(port, space).await?;
    for (slot, entry) in slots.iter_mut() {
        let Ok(leader) = entry else { continue };
        let location = space.geometry.resource_lease(*slot);
        let dblocks = match space.read_dblocks(port, &location).await {
            Ok(dblocks) => dblocks,
            Err(e) => {
                *entry = Err(e);
                continue;
            }
        };
        let ahead = dblocks
            .iter()
            .filter(|d| d.lver > leader.lver && d.bal > 0)
            .max_by_key(|d| (d.lver, d.bal))
            .and_then(|d| d.inp.clone().map(|inp| (d.lver, inp)));
        if let Some((lver, inp)) = ahead {
            leader.owner = Some(inp.owner);
            leader.flags.released = false;
            leader.lver = lver;
            leader.name = inp.name;
        }
    }
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
        let slots = scan_inner(&port, &space).await?;
        find_certain(slots, &name)
    })
}

/// A free slot for a new name, or None when every slot is in use. Refused
/// while any leader is unusable (it might carry the name); a read that
/// failed is reported as the I/O error it is.
fn free_slot(name: &str, slots: &mut SlotScan) -> Result<Option<u32>, LeaseError> {
    let failed_read = slots
        .iter()
        .position(|(_, leader)| matches!(leader, Err(LeaseError::Disk(_))));
    if let Some(index) = failed_read {
        if let (_, Err(e)) = slots.swap_remove(index) {
            return Err(e);
        }
    }
    if let Some((slot, Err(e))) = slots.iter().find(|(_, leader)| leader.is_err()) {
        return Err(LeaseError::ClaimBlocked {
            resource: name.to_string(),
            slot: *slot,
            reason: e.to_string(),
        });
    }
    Ok(slots.iter().find_map(|(slot, leader)| match leader {
        Ok(leader) if leader.name.is_empty() && leader.held_by().is_none() => Some(*slot),
        _ => None,
    }))
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
    for _ in 0..CLAIM_ATTEMPTS_MAX {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let mut slots = scan_inner(port, space).await?;
        let paxos_request = |slot: u32, claim: bool| AcquireRequest {
            location: space.geometry.resource_lease(slot),
            owner: request.owner,
            name: request.name.clone(),
            claim,
            dead_hosts: request.dead_hosts.clone(),
            io_timeout_ms: request.io_timeout_ms,
            seed,
        };
        let mut found = find(&slots, &request.name);
        if found.is_none() {
            // Before claiming a new slot, look past lagging leaders.
            slots = scan_deep(port, space).await?;
            found = find(&slots, &request.name);
        }
        let (slot, claim) = match found {
            Some((slot, _)) => (slot, false),
            None => match free_slot(&request.name, &mut slots)? {
                Some(slot) => (slot, true),
                None => {
                    return Err(LeaseError::NoFreeSlot {
                        max_resources: space.geometry.max_resources(),
                    })
                }
            },
        };
        let (leader, held_before) =
            match paxos::acquire_flagged(port, space, &paxos_request(slot, claim)).await {
                Ok(acquired) => acquired,
                Err(LeaseError::SlotTaken { .. }) => continue,
                Err(e) => return Err(e),
            };
        if held_before {
            // Ours since before this call (and checked for duplicates then):
            // a claimer of another slot re-checks after its leader write and
            // gives up; we must not give back a lease whose resource runs.
            return Ok((slot, leader));
        }
        // Whether found or claimed, the name must be in this slot only: a
        // concurrent claim, or a slot being given back, may have put it in a
        // second one. Check after our leader write; give ours back if not.
        let mut again = scan_deep(port, space).await?;
        let duplicate = again.iter().any(|(other, leader)| {
            *other != slot && matches!(leader, Ok(l) if l.name == request.name)
        });
        // A slot we cannot read might carry the same name: no certainty.
        let unreadable = again.iter().position(|(_, leader)| leader.is_err());
        if !duplicate && unreadable.is_none() {
            return Ok((slot, leader));
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
        if let Some(index) = unreadable {
            if let (_, Err(e)) = again.swap_remove(index) {
                return Err(e);
            }
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
        let mut slots = scan_deep(&port, &space).await?;
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
