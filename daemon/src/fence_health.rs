//! Fence device health: this host checks the fence device of every other
//! host in `[[cluster.hosts]]` (IPMI chassis status, or the agent's
//! `status` action) every `monitor.fence_check_interval_ms`, the hosts
//! spread evenly over the interval, and reports a device that stops
//! answering at once (event `fence-device-failed`, `leasehold status`)
//! rather than at the first failover, when it is too late. A failing
//! device is checked again every `FAILED_RECHECK_MS` until it answers
//! (`fence-device-ok`).
//!
//! [`Schedule`] decides who is due when; [`start`] carries the checks out
//! on a thread of their own (a device may take seconds to answer).

use crate::config::Fence;
use crate::context::Context;
use crate::events::Level;
use lease::clock::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A device that failed is asked again this soon.
pub const FAILED_RECHECK_MS: u64 = 10_000;

/// The last check of one host's fence device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceCheck {
    pub host_id: u32,
    pub host: String,
    pub device: String,
    /// "on" / "off" when it answered.
    pub power: Option<String>,
    pub error: Option<String>,
    /// Our clock when the check ended.
    pub at_ms: u64,
}

/// When each host's device is due next.
#[derive(Debug)]
pub struct Schedule {
    interval_ms: u64,
    next_ms: BTreeMap<u32, u64>,
}

impl Schedule {
    /// Host `k` of `n` (in id order, from 0) is first due `(k+1)/n` of an
    /// interval after `now_ms`, then every interval: n checks per
    /// interval, evenly spread, never all at once, none at start-up.
    pub fn new(host_ids: &[u32], interval_ms: u64, now_ms: u64) -> Schedule {
        let count = u64::try_from(host_ids.len().max(1)).unwrap_or(u64::MAX);
        let next_ms = host_ids
            .iter()
            .zip(0u64..)
            .map(|(id, k)| (*id, now_ms + interval_ms.saturating_mul(k + 1) / count))
            .collect();
        Schedule {
            interval_ms,
            next_ms,
        }
    }

    /// The hosts due at `now_ms`, by id.
    pub fn due(&self, now_ms: u64) -> Vec<u32> {
        self.next_ms
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(id, _)| *id)
            .collect()
    }

    /// `host_id` was checked at `now_ms`: next in an interval, or soon
    /// when it failed.
    pub fn checked(&mut self, host_id: u32, now_ms: u64, ok: bool) {
        let wait_ms = if ok {
            self.interval_ms
        } else {
            FAILED_RECHECK_MS.min(self.interval_ms)
        };
        self.next_ms.insert(host_id, now_ms + wait_ms);
    }

    /// When the next check is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.next_ms.values().min().copied()
    }
}

/// Start the checks (none when the interval is 0 or no other host has a
/// fence device).
pub fn start(context: Arc<Context>) -> std::io::Result<()> {
    let interval_ms = context.config.fence_check_interval_ms;
    let own = context.config.host_id;
    let hosts: Vec<crate::config::ClusterHost> = context
        .config
        .cluster
        .iter()
        .filter(|h| h.id != own && h.fence != Fence::None)
        .cloned()
        .collect();
    if interval_ms == 0 || hosts.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("fence-health".to_string())
        .spawn(move || run(&context, &hosts, interval_ms))?;
    Ok(())
}

fn run(context: &Context, hosts: &[crate::config::ClusterHost], interval_ms: u64) {
    let clock = SystemClock;
    let ids: Vec<u32> = hosts.iter().map(|h| h.id).collect();
    let mut schedule = Schedule::new(&ids, interval_ms, clock.now_ms());
    loop {
        for id in schedule.due(clock.now_ms()) {
            let Some(host) = hosts.iter().find(|h| h.id == id) else {
                continue;
            };
            let check = check_one(context, host, &clock);
            schedule.checked(id, clock.now_ms(), check.error.is_none());
            record(context, check);
        }
        let wake_ms = schedule
            .next_due_ms()
            .unwrap_or(clock.now_ms() + interval_ms);
        // At most a second at a time: a clock that jumps is noticed.
        let sleep_ms = wake_ms.saturating_sub(clock.now_ms()).clamp(10, 1000);
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
}

fn check_one(
    context: &Context,
    host: &crate::config::ClusterHost,
    clock: &SystemClock,
) -> FenceCheck {
    let (device, result) = match crate::fence::Device::for_host(&context.config, host) {
        Ok(device) => (
            device.describe(),
            device.status().map_err(|e| e.to_string()),
        ),
        Err(e) => (String::new(), Err(e.to_string())),
    };
    FenceCheck {
        host_id: host.id,
        host: host.name.clone(),
        device,
        power: result.as_ref().ok().map(|p| match p {
            crate::fence::PowerState::On => "on".to_string(),
            crate::fence::PowerState::Off => "off".to_string(),
        }),
        error: result.err(),
        at_ms: clock.now_ms(),
    }
}

/// Keep the result; say so when a device starts or stops failing.
fn record(context: &Context, check: FenceCheck) {
    let mut checks = match context.fence_checks.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let was_ok = checks.get(&check.host_id).map(|c| c.error.is_none());
    match (&check.error, was_ok) {
        (Some(error), None | Some(true)) => context.events.emit(
            Level::Error,
            &context.config.lockspace,
            "fence-device-failed",
            format!(
                "the fence device of host {} ({}) does not answer: {error}; if that host fails now, its VMs cannot be restarted until it answers or an operator confirms the host is off. Fix the device (`leasehold fence status {}`)",
                check.host_id, check.host, check.host
            ),
        ),
        (None, Some(false)) => context.events.emit(
            Level::Info,
            &context.config.lockspace,
            "fence-device-ok",
            format!(
                "the fence device of host {} ({}) answers again ({})",
                check.host_id, check.host, check.device
            ),
        ),
        _ => {}
    }
    checks.insert(check.host_id, check);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_spread_over_the_interval_and_a_failed_device_is_asked_again_soon() {
        let mut s = Schedule::new(&[2, 3, 4, 5], 300_000, 1_000);
        assert!(s.due(1_000).is_empty());
        assert_eq!(s.due(76_000), vec![2]);
        assert_eq!(s.due(151_000), vec![2, 3]);
        assert_eq!(s.due(301_000), vec![2, 3, 4, 5]);
        s.checked(2, 76_000, true);
        s.checked(3, 151_000, false);
        assert_eq!(s.next_due_ms(), Some(151_000 + FAILED_RECHECK_MS));
        assert_eq!(s.due(161_000), vec![3]);
        assert_eq!(s.due(376_000), vec![2, 3, 4, 5]);
        // A short interval bounds the recheck too.
        let mut quick = Schedule::new(&[2], 1_000, 0);
        assert_eq!(quick.next_due_ms(), Some(1_000));
        quick.checked(2, 1_000, false);
        assert_eq!(quick.next_due_ms(), Some(2_000));
    }
}
