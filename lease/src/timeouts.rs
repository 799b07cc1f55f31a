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
    /// `8T`: an observer calls a host silent after seeing its record stand
    /// still this long (with the observer's own I/O healthy throughout).
    pub expiry_ms: u64,
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

impl Timeouts {
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
            // A host stops its resources before anyone may call it silent.
            assert!(x.renew_fail_ms < x.expiry_ms);
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
