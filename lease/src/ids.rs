//! Newtypes for the identifiers that cross the disk boundary.

use serde::Serialize;
use std::fmt;

/// A host id: 1..=max_hosts. Host N owns sector N of the host area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HostId(u32);

impl HostId {
    /// A host id is never zero: zero on disk means "no owner".
    pub fn new(raw: u32) -> Option<HostId> {
        if raw == 0 {
            None
        } else {
            Some(HostId(raw))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Zero-based position of this host's sector in the host area (and of its
    /// dblock in every lease).
    pub fn index(self) -> u64 {
        u64::from(self.0 - 1)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The pair that names one incarnation of a host: its id and the generation
/// it joined the lockspace with. Resource leases are owned by an incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    pub host_id: HostId,
    pub generation: u64,
    /// The random nonce of that join: two processes that joined one id with
    /// one generation (one paused between its read and its write) are still
    /// two owners.
    pub nonce: u64,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} generation {}", self.host_id, self.generation)
    }
}

/// A random 64-bit value from the kernel, for join nonces and backoff
/// seeds of real processes (the simulator draws its own from its seed).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the
    // buffer, which lives for the whole call. One syscall, no file to open
    // (this runs on every acquire).
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(filled).is_ok_and(|n| n == bytes.len()) {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}
