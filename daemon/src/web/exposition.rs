//! The metrics in Prometheus' text exposition format (version 0.0.4), from
//! one [`Snapshot`]. Names follow Prometheus' conventions: `leasehold_`
//! prefix, base units (`_seconds`, `_bytes`), `_total` for counters.
//!
//! Size: O(lockspaces + hosts + VM states x hosts + event kinds) lines;
//! one line per host (`leasehold_host_unchanged_seconds`), none per VM.

use super::snapshot::Snapshot;
use crate::metrics::{Histogram, LATENCY_BUCKETS_SECONDS};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Host states that always get a `leasehold_hosts` line (0 when none).
const HOST_STATES: &[&str] = &[
    "live",
    "silent",
    "dead",
    "fenced",
    "left",
    "unknown",
    "unreadable",
];
/// VM states that always get a `leasehold_vms` line per lockspace.
const VM_STATES: &[&str] = &["running", "waiting", "stopped", "failed", "unusable"];

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let cumulative = h.cumulative();
        for (i, count) in cumulative.iter().enumerate() {
            let bound = LATENCY_BUCKETS_SECONDS
                .get(i)
                .map(|b| number(*b))
                .unwrap_or_else(|| "+Inf".to_string());
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &bound));
            self.sample(&format!("{name}_bucket"), &with_le, *count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn ms(value: u64) -> f64 {
    value as f64 / 1000.0
}

/// The whole metrics page.
pub fn render(s: &Snapshot) -> String {
    let mut out = Out {
        text: String::new(),
    };
    let host_id = s.status.host_id.to_string();
    out.family(
        "leasehold_info",
        "gauge",
        "This daemon: its host and version (always 1).",
    );
    out.sample(
        "leasehold_info",
        &[
            ("host_id", &host_id),
            ("host", &s.status.host_name),
            ("version", s.version),
        ],
        1.0,
    );

    lockspaces(&mut out, s);
    hosts(&mut out, s);
    fences_and_events(&mut out, s);
    vms(&mut out, s);
    lease_operations(&mut out, s);
    daemon(&mut out, s);
    out.text
}

fn lockspaces(out: &mut Out, s: &Snapshot) {
    out.family(
        "leasehold_lockspace_joined",
        "gauge",
        "1 while this host holds its delta lease in the lockspace.",
    );
    for ls in &s.status.lockspaces {
        let joined = ls.state == "joined" || ls.state == "renewal-failing";
        out.sample(
            "leasehold_lockspace_joined",
            &[("lockspace", &ls.name), ("state", &ls.state)],
            if joined { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "leasehold_generation",
        "gauge",
        "This host's generation in the lockspace.",
    );
    for ls in &s.status.lockspaces {
        out.sample(
            "leasehold_generation",
            &[("lockspace", &ls.name)],
            ls.generation as f64,
        );
    }
    out.family(
        "leasehold_renewal_duration_seconds",
        "histogram",
        "How long each renewal of this host's delta lease took (successful or not).",
    );
    for (lockspace, h) in &s.renewals {
        out.histogram(
            "leasehold_renewal_duration_seconds",
            &[("lockspace", lockspace)],
            h,
        );
    }
    out.family(
        "leasehold_renewal_failures_total",
        "counter",
        "Renewals of this host's delta lease that failed.",
    );
    for ls in &s.status.lockspaces {
        out.sample(
            "leasehold_renewal_failures_total",
            &[("lockspace", &ls.name)],
            ls.renewal_failures as f64,
        );
    }
    out.family(
        "leasehold_last_renewal_age_seconds",
        "gauge",
        "Time since this host's last successful renewal started (its own clock).",
    );
    for ls in &s.status.lockspaces {
        if let Some(age) = ls.last_renewal_age_ms {
            out.sample(
                "leasehold_last_renewal_age_seconds",
                &[("lockspace", &ls.name)],
                ms(age),
            );
        }
    }
    out.family(
        "leasehold_storage_incident",
        "gauge",
        "1 while many hosts stand still together (taken as a storage incident: nobody is declared silent).",
    );
    for ls in &s.status.lockspaces {
        out.sample(
            "leasehold_storage_incident",
            &[("lockspace", &ls.name)],
            if ls.storage_incident { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "leasehold_resources_held",
        "gauge",
        "Resource leases this daemon holds (for processes and HA VMs).",
    );
    for ls in &s.status.lockspaces {
        out.sample(
            "leasehold_resources_held",
            &[("lockspace", &ls.name)],
            ls.resources.len() as f64,
        );
    }
}

fn hosts(out: &mut Out, s: &Snapshot) {
    out.family(
        "leasehold_hosts",
        "gauge",
        "Hosts of the lockspace by state, as this host sees them.",
    );
    for ls in &s.status.lockspaces {
        let mut by_state: BTreeMap<&str, u64> = HOST_STATES.iter().map(|st| (*st, 0)).collect();
        for h in ls.hosts.iter().filter(|h| h.state != "unused") {
            *by_state.entry(h.state.as_str()).or_insert(0) += 1;
        }
        for (state, count) in by_state {
            out.sample(
                "leasehold_hosts",
                &[("lockspace", &ls.name), ("state", state)],
                count as f64,
            );
        }
    }
    out.family(
        "leasehold_host_unchanged_seconds",
        "gauge",
        "How long each host's record has stood still, as this host timed it (0 while it renews).",
    );
    for ls in &s.status.lockspaces {
        for h in ls.hosts.iter().filter(|h| h.state != "unused") {
            let id = h.host_id.to_string();
            out.sample(
                "leasehold_host_unchanged_seconds",
                &[("lockspace", &ls.name), ("host_id", &id), ("host", &h.name)],
                ms(h.unchanged_for_ms),
            );
        }
    }
    out.family(
        "leasehold_fence_device_up",
        "gauge",
        "1 when the last check of the host's fence device succeeded.",
    );
    for c in &s.status.fence_checks {
        let id = c.host_id.to_string();
        out.sample(
            "leasehold_fence_device_up",
            &[("host_id", &id), ("host", &c.host)],
            if c.ok { 1.0 } else { 0.0 },
        );
    }
}

fn count_of(s: &Snapshot, lockspace: &str, kind: &str) -> u64 {
    s.event_counts
        .get(&(lockspace.to_string(), kind.to_string()))
        .copied()
        .unwrap_or(0)
}

fn fences_and_events(out: &mut Out, s: &Snapshot) {
    out.family(
        "leasehold_storage_incidents_total",
        "counter",
        "Storage incidents this host declared (many hosts still at once).",
    );
    for ls in &s.status.lockspaces {
        out.sample(
            "leasehold_storage_incidents_total",
            &[("lockspace", &ls.name)],
            count_of(s, &ls.name, "storage-incident") as f64,
        );
    }
    out.family(
        "leasehold_fences_total",
        "counter",
        "Fences this host carried out, by outcome: done (powered off and marked), failed, mark_failed.",
    );
    for ls in &s.status.lockspaces {
        for (outcome, kind) in [
            ("done", "fenced"),
            ("failed", "fence-failed"),
            ("mark_failed", "fence-mark-failed"),
        ] {
            out.sample(
                "leasehold_fences_total",
                &[("lockspace", &ls.name), ("outcome", outcome)],
                count_of(s, &ls.name, kind) as f64,
            );
        }
    }
    out.family(
        "leasehold_self_fences_total",
        "counter",
        "Times this host lost its lease and stopped everything under it.",
    );
    for ls in &s.status.lockspaces {
        out.sample(
            "leasehold_self_fences_total",
            &[("lockspace", &ls.name)],
            count_of(s, &ls.name, "self-fence") as f64,
        );
    }
    out.family(
        "leasehold_events_total",
        "counter",
        "Events this daemon recorded since it started, by kind (see `leasehold events`).",
    );
    for ((lockspace, kind), count) in &s.event_counts {
        out.sample(
            "leasehold_events_total",
            &[("lockspace", lockspace), ("kind", kind)],
            *count as f64,
        );
    }
}

fn vms(out: &mut Out, s: &Snapshot) {
    out.family(
        "leasehold_vms",
        "gauge",
        "HA VMs by state and by the host holding their lease (\"\" for none), from the VM manager's last scan.",
    );
    if let Some(view) = &s.vms {
        let mut by: BTreeMap<(String, String), u64> = VM_STATES
            .iter()
            .map(|st| ((st.to_string(), String::new()), 0))
            .collect();
        for vm in &view.vms {
            let host = vm.owner_host_name.clone().unwrap_or_default();
            *by.entry((vm.state.clone(), host)).or_insert(0) += 1;
        }
        for ((state, host), count) in by {
            out.sample(
                "leasehold_vms",
                &[("state", &state), ("host", &host)],
                count as f64,
            );
        }
    }
    out.family(
        "leasehold_vm_restarts_total",
        "counter",
        "HA VMs this host restarted after the incarnation holding them ended.",
    );
    out.sample("leasehold_vm_restarts_total", &[], s.vm_restarts as f64);
    out.family(
        "leasehold_last_failover_seconds",
        "gauge",
        "The last failover this host took part in, by phase: fence (detection to fenced), takeover (to the first lease taken here), start (to the last VM started here), total.",
    );
    if let Some(f) = &s.failover {
        let phases = f.phases();
        let host_id = f.host_id.to_string();
        for (phase, value) in [
            ("fence", phases.fence_ms),
            ("takeover", phases.takeover_ms),
            ("start", phases.start_ms),
            ("total", phases.total_ms),
        ] {
            if let Some(value) = value {
                out.sample(
                    "leasehold_last_failover_seconds",
                    &[("failed_host_id", &host_id), ("phase", phase)],
                    ms(value),
                );
            }
        }
    }
}

fn lease_operations(out: &mut Out, s: &Snapshot) {
    out.family(
        "leasehold_lease_operations_total",
        "counter",
        "Lease operations asked of this daemon, by operation and outcome (ok or the error kind).",
    );
    for ((op, outcome), h) in &s.lease_ops {
        out.sample(
            "leasehold_lease_operations_total",
            &[("op", op), ("outcome", outcome)],
            h.count as f64,
        );
    }
    out.family(
        "leasehold_lease_operation_duration_seconds",
        "histogram",
        "How long lease operations took, by operation (every outcome).",
    );
    let mut by_op: BTreeMap<&str, Histogram> = BTreeMap::new();
    for ((op, _), h) in &s.lease_ops {
        let merged = by_op.entry(op).or_default();
        for (total, part) in merged.bucket_counts.iter_mut().zip(&h.bucket_counts) {
            *total += part;
        }
        merged.sum_seconds += h.sum_seconds;
        merged.count += h.count;
    }
    for (op, h) in &by_op {
        out.histogram(
            "leasehold_lease_operation_duration_seconds",
            &[("op", op)],
            h,
        );
    }
}

fn daemon(out: &mut Out, s: &Snapshot) {
    if let Some([ok, failed, timed_out, dropped]) = s.hooks {
        out.family(
            "leasehold_hook_runs_total",
            "counter",
            "Alert hook runs by outcome; dropped: events no hook ran for (queue full).",
        );
        for (outcome, count) in [
            ("ok", ok),
            ("failed", failed),
            ("timed_out", timed_out),
            ("dropped", dropped),
        ] {
            out.sample(
                "leasehold_hook_runs_total",
                &[("outcome", outcome)],
                count as f64,
            );
        }
    }
    out.family(
        "leasehold_holders",
        "gauge",
        "Processes registered with this daemon as lease holders.",
    );
    out.sample("leasehold_holders", &[], s.status.holders.len() as f64);
    out.family(
        "leasehold_daemon_resident_memory_bytes",
        "gauge",
        "Resident memory of the daemon process.",
    );
    out.sample(
        "leasehold_daemon_resident_memory_bytes",
        &[],
        s.memory.resident_bytes as f64,
    );
    out.family(
        "leasehold_daemon_threads",
        "gauge",
        "Threads of the daemon process.",
    );
    out.sample("leasehold_daemon_threads", &[], s.memory.threads as f64);
}
