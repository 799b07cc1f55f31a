//! Every interval leasehold uses, derived from one io_timeout.
//! docs/timeouts.md explains each formula; keep the two in step.

use serde::Serialize;

/// Smallest and largest io_timeout accepted from configuration.
pub const IO_TIMEOUT_MS_MIN: u32 = 100;
pub const IO_TIMEOUT_MS_MAX: u32 = 300_000;
/// Our default: a dead host is declared after 8 s and its VMs run again
/// within about 10 s. sanlock's 10 s (80 s to declare) remains a setting
/// away for storage whose path failover takes longer than a few seconds;
/// docs/timeouts.md weighs the two.
pub const IO_TIMEOUT_MS_DEFAULT: u32 = 1_000;

/// The intervals of one host, all from its io_timeout `T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// `T`: the longest one sector I/O may take before it counts as failed.
    pub io_timeout_ms: u64,
    /// `2T`: time between the starts of two renewals.
    pub renew_interval_ms: u64,
    /// `6T`: a host that has not renewed for this long (its own clock) stops
    /// renewing, stops its resources and stops feeding its watchdog.
    pub renew_fail_ms: u64,
    /// `4T`: the watchdog device timeout.
    pub watchdog_timeout_ms: u64,
    /// `renew_fail + watchdog_timeout = 10T`: after its last renewal, a host
    /// with a working watchdog has been reset by now.
    pub watchdog_fire_ms: u64,
    /// `8T`: an observer calls a host with a watchdog (the WATCHDOG flag in
    /// its record) silent after seeing its record stand still this long
    /// (with the observer's own I/O healthy throughout).
    pub expiry_ms: u64,
    /// `6T`: the same for a host without a watchdog (fence mode). Nothing of
    /// such a host is taken before a fence confirms it off, so a shorter
    /// window risks only a false fence, never two holders; 6T is the
    /// smallest multiple under which no live host was called silent with
    /// storage latency spikes up to 3T on its path or the whole device
    /// (docs/timeouts.md, "Detection in fence mode").
    pub fence_expiry_ms: u64,
    /// `watchdog_fire + 2T = 12T`: an observer may treat a silent host as
    /// dead (its leases takeable) after seeing its record still this long.
    pub host_dead_ms: u64,
    /// `2T`: delta acquire waits this long between its write and the
    /// re-read, so a competing writer's I/O has surely landed.
    pub acquire_settle_ms: u64,
    /// `3T`: an observer that has not completed a scan for this long cannot
    /// vouch for the gap and restarts every silence window.
    pub scan_gap_max_ms: u64,
    /// `T/10` (at least 1 ms): the largest random pause after a paxos ballot
    /// conflict.
    pub paxos_backoff_max_ms: u64,
}

/// The fence-mode expiry in tenths of `T`: 60 (6T).
pub const FENCE_EXPIRY_TENTHS_OF_T: u64 = 60;

#[cfg(feature = "planted-bugs")]
static FENCE_EXPIRY_OVERRIDE_TENTHS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Simulator builds only: run with another fence-mode expiry (in tenths of
/// `T`; 0 restores the default), to find the smallest one that never calls
/// a live host silent.
#[cfg(feature = "planted-bugs")]
pub fn override_fence_expiry_tenths_of_t(tenths: u64) {
    FENCE_EXPIRY_OVERRIDE_TENTHS.store(tenths, std::sync::atomic::Ordering::SeqCst);
}

fn fence_expiry_tenths_of_t() -> u64 {
    #[cfg(feature = "planted-bugs")]
    {
        let tenths = FENCE_EXPIRY_OVERRIDE_TENTHS.load(std::sync::atomic::Ordering::SeqCst);
        if tenths > 0 {
            return tenths;
        }
    }
    FENCE_EXPIRY_TENTHS_OF_T
}

impl Timeouts {
    /// How long a host's record must stand still before an observer calls
    /// it silent: [`Self::expiry_ms`] with a watchdog, else
    /// [`Self::fence_expiry_ms`].
    pub fn silence_ms(&self, watchdog: bool) -> u64 {
        if watchdog {
            self.expiry_ms
        } else {
            self.fence_expiry_ms
        }
    }

    /// Derive all intervals from `io_timeout_ms` (taken as at least 1 ms).
    pub fn from_io_timeout_ms(io_timeout_ms: u32) -> Timeouts {
        let t = u64::from(io_timeout_ms.max(1));
        let renew_fail_ms = 6 * t;
        let watchdog_timeout_ms = 4 * t;
        let watchdog_fire_ms = renew_fail_ms + watchdog_timeout_ms;
        Timeouts {
            io_timeout_ms: t,
            renew_interval_ms: 2 * t,
            renew_fail_ms,
            watchdog_timeout_ms,
            watchdog_fire_ms,
            expiry_ms: 8 * t,
            fence_expiry_ms: fence_expiry_tenths_of_t() * t / 10,
            host_dead_ms: watchdog_fire_ms + 2 * t,
            acquire_settle_ms: 2 * t,
            scan_gap_max_ms: 3 * t,
            paxos_backoff_max_ms: (t / 10).max(1),
        }
    }

    /// Check a configured io_timeout.
    pub fn validate_io_timeout_ms(io_timeout_ms: u32) -> Result<(), String> {
        if (IO_TIMEOUT_MS_MIN..=IO_TIMEOUT_MS_MAX).contains(&io_timeout_ms) {
            Ok(())
        } else {
            Err(format!(
                "io_timeout {io_timeout_ms} ms is outside {IO_TIMEOUT_MS_MIN}..={IO_TIMEOUT_MS_MAX} ms"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_that_safety_depends_on() {
        for t in [100, 1000, 10_000, 300_000] {
            let x = Timeouts::from_io_timeout_ms(t);
            // A host stops its resources before anyone may call it silent
            // under the watchdog rule.
            assert!(x.renew_fail_ms < x.expiry_ms);
            // Fence mode: a renewal that fails once (I/O deadline T, retry
            // T/2 later) and a latency spike of 3T on the host's path leave
            // its record still for at most 2T + 3T; the fence-mode expiry
            // leaves a margin of T over that.
            assert!(
                x.fence_expiry_ms >= x.renew_interval_ms + 3 * x.io_timeout_ms + x.io_timeout_ms
            );
            assert!(x.fence_expiry_ms <= x.expiry_ms);
            // Leases are takeable by the watchdog rule only after the watchdog fired.
            assert!(x.host_dead_ms > x.watchdog_fire_ms);
            assert!(x.watchdog_fire_ms > x.renew_fail_ms);
            // Renewal is attempted several times before the deadline.
            assert!(x.renew_fail_ms >= 3 * x.renew_interval_ms);
            // A competing write lands within io_timeout, so the settle wait covers it.
            assert!(x.acquire_settle_ms > x.io_timeout_ms);
        }
    }
}
