//! Errors of lease operations.

use crate::disk::DiskError;
use crate::format::FormatError;
use crate::ids::{HostId, Owner};

/// What a lease operation reports. Callers match on the variants; each
/// message says what happened, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// a sector holds no valid record; it is never treated as free
    #[error("{device}: {what} at offset {offset_bytes} is unusable: {error}; it is never treated as free (inspect with `leasehold dump`, restore the sector or re-format)")]
    Corrupt {
        device: String,
        offset_bytes: u64,
        what: String,
        error: FormatError,
    },
    /// another live (not known dead) host holds the lease
    #[error("{resource} is held by host {} ({owner_name}), generation {}, lease version {lver}; that host is not known to be dead", .owner.host_id, .owner.generation)]
    HeldByOther {
        resource: String,
        owner: Owner,
        owner_name: String,
        lver: u64,
    },
    /// the slot a name was looked up in now belongs to another name
    #[error("{resource}: slot {slot} changed to {found:?} meanwhile")]
    SlotTaken {
        resource: String,
        slot: u32,
        found: String,
    },
    /// delta acquire saw the host id's record move: someone uses it
    #[error("host id {host_id} is in use by {owner_name:?} (generation {generation}): its record changed while we watched; pick another host id or stop that host")]
    HostIdInUse {
        host_id: HostId,
        owner_name: String,
        generation: u64,
    },
    /// the host id was last used by another host that may still be running
    #[error("host id {host_id} was last used by {owner_name:?} (generation {generation}), which runs no watchdog and neither left nor was fenced: it may be paused with its resources running; fence it, or pick another host id")]
    HostIdNotFree {
        host_id: HostId,
        owner_name: String,
        generation: u64,
    },
    /// delta acquire found another writer's record after its own write
    #[error("host id {host_id}: another process ({found_name:?}, generation {found_generation}) wrote the host sector while we joined; not joined")]
    JoinRace {
        host_id: HostId,
        found_name: String,
        found_generation: u64,
    },
    /// our host record no longer says what we last wrote
    #[error("host {host_id} lost its delta lease: {reason}")]
    DeltaLost { host_id: HostId, reason: String },
    /// a fencer marked our generation FENCED
    #[error("host {host_id} generation {generation} was fenced by host {fencer}; rejoin with a new generation after restarting the host")]
    Fenced {
        host_id: HostId,
        generation: u64,
        fencer: u32,
    },
    /// the renewal deadline passed before we could renew
    #[error("host {host_id}: last successful renewal {since_ms} ms ago is past the {limit_ms} ms renewal deadline; the delta lease is lost, rejoin")]
    RenewalExpired {
        host_id: HostId,
        since_ms: u64,
        limit_ms: u64,
    },
    /// the host id has not joined (or has left) the lockspace
    #[error("host {host_id} has not joined lockspace {lockspace} ({reason}); run `leasehold direct join` first")]
    NotJoined {
        host_id: HostId,
        lockspace: String,
        reason: String,
    },
    /// paxos ballots kept colliding
    #[error("{resource}: no ballot won after {attempts} attempts of contention; try again")]
    Contention { resource: String, attempts: u32 },
    /// every resource slot is in use
    #[error("no free resource slot: all {max_resources} slots hold a resource; re-format with more --max-resources or remove a resource")]
    NoFreeSlot { max_resources: u32 },
    /// release or renewal of a lease we do not hold
    #[error("{resource}: not held by {owner}: the leader shows {found}")]
    NotOwner {
        resource: String,
        owner: Owner,
        found: String,
    },
    /// claiming a new slot while some slot is unreadable
    #[error("cannot claim a slot for {resource}: slot {slot} is unusable and might hold that name: {reason}")]
    ClaimBlocked {
        resource: String,
        slot: u32,
        reason: String,
    },
    /// the fenced host's record moved on before the FENCED mark was written
    #[error("host {host_id}: expected generation {expected_generation} to mark fenced, found {found_name:?} generation {found_generation}: a new incarnation joined since; not marked")]
    FenceTargetMoved {
        host_id: HostId,
        expected_generation: u64,
        found_generation: u64,
        found_name: String,
    },
    /// the request itself is invalid
    #[error("{0}")]
    Invalid(String),
}
