//! What one scrape or page view shows, taken at once from the daemon's
//! state: no device I/O (the renewal thread's last scan and the VM
//! manager's last view are used), so scraping is cheap at any cluster
//! size, and the renderers are pure functions of it.

use crate::context::Context;
use crate::hooks::HookCounts;
use crate::metrics::{Histogram, OpKey};
use crate::protocol::{Event, StatusReply, VmListReply};
use crate::timeline::Failover;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Events shown on the status page.
pub const PAGE_EVENTS: usize = 40;

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: &'static str,
    /// Wall-clock time of the snapshot, for people.
    pub taken_at: String,
    pub status: StatusReply,
    pub vms: Option<VmListReply>,
    pub events: Vec<Event>,
    /// Events since start by (lockspace, kind).
    pub event_counts: BTreeMap<(String, String), u64>,
    pub failover: Option<Failover>,
    pub renewals: BTreeMap<String, Histogram>,
    pub lease_ops: BTreeMap<OpKey, Histogram>,
    pub vm_restarts: u64,
    /// (succeeded, failed, timed out, dropped), when hooks are configured.
    pub hooks: Option<[u64; 4]>,
    pub memory: Memory,
    /// How each cluster host is fenced, from the configuration.
    pub fence_methods: BTreeMap<u32, String>,
}

/// The daemon process's memory and threads (/proc/self/status).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub resident_bytes: u64,
    pub threads: u64,
}

impl Memory {
    fn of_self() -> Memory {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            resident_bytes: field("VmRSS:").saturating_mul(1024),
            threads: field("Threads:"),
        }
    }
}

fn hook_counts(counts: &HookCounts) -> [u64; 4] {
    [
        counts.succeeded.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.timed_out.load(Ordering::Relaxed),
        counts.dropped.load(Ordering::Relaxed),
    ]
}

impl Snapshot {
    /// Read everything shown; `events`: how many of the newest events.
    pub fn take(context: &Context, events: usize) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            taken_at: crate::events::utc_now(),
            status: crate::server::status(context),
            vms: match context.vm_view.lock() {
                Ok(guard) => guard.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            },
            events: if events == 0 {
                Vec::new()
            } else {
                context.events.tail(events).unwrap_or_default()
            },
            event_counts: context.events.counts(),
            failover: match context.timeline.lock() {
                Ok(guard) => guard.last(),
                Err(poisoned) => poisoned.into_inner().last(),
            },
            renewals: context.metrics.renewals(),
            lease_ops: context.metrics.lease_ops(),
            vm_restarts: context.metrics.vm_restarts(),
            hooks: context.events.hooks().map(|h| hook_counts(&h.counts)),
            memory: Memory::of_self(),
            fence_methods: context
                .config
                .cluster
                .iter()
                .map(|h| (h.id, fence_method(&h.fence)))
                .collect(),
        }
    }
}

fn fence_method(fence: &crate::config::Fence) -> String {
    match fence {
        crate::config::Fence::Ipmi { address, port, .. } => format!("ipmi {address}:{port}"),
        crate::config::Fence::Agent { agent, .. } => agent.clone(),
        crate::config::Fence::None => "none (watchdog)".to_string(),
    }
}
