//! Failover time, whole system: three hosts (leaseholdd + an ipmi_sim BMC
//! each, one loop device), three HA VMs (high, medium, low priority) on
//! host 1, host 1 powered off through its BMC over IPMI at a random point of
//! its renewal cycle; measured until every VM runs on a survivor. Each run
//! is broken down from the survivors' event logs:
//!
//! - detection: power-off → first `host-silent` (expiry 8T after the last
//!   renewal seen, seen at the observer's next scan);
//! - fence: → `fenced` (fence lease election, IPMI power off, status off,
//!   FENCED mark written);
//! - takeover: → first VM lease `acquired` by a survivor;
//! - start: → last `vm-started` (libvirt starts, priority waves).
//!
//! cargo bench -p leasehold-benches --bench failover
//!
//! LEASEHOLD_BENCH_RUNS (default 20), LEASEHOLD_BENCH_IO_TIMEOUT_MS
//! (default 1000, the lockspace default), LEASEHOLD_BENCH_KVM=1 (real
//! QEMU guests under one unprivileged libvirtd per host instead of
//! libvirt's test driver). Needs root (loop devices), ipmi_sim, ipmitool;
//! tests/run.sh installs them.

use leasehold_daemon::placement::Priority;
use leasehold_tests::cluster::{now_of_day_ms, time_of_day_ms, Cluster, ClusterSpec, Hypervisor};
use std::time::Duration;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const VMS: [(&str, Priority); 3] = [
    ("bench-high", Priority::High),
    ("bench-medium", Priority::Medium),
    ("bench-low", Priority::Low),
];

#[derive(Default, Clone, Copy)]
struct Run {
    detection_ms: i64,
    fence_ms: i64,
    takeover_ms: i64,
    start_ms: i64,
    total_ms: i64,
}

/// Nearest-rank percentile.
fn percentile(values: &[i64], p: f64) -> i64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn one_run(round: usize, spec: &ClusterSpec) -> Option<Run> {
    let mut c = Cluster::start(&format!("bf{round}"), spec.clone());
    for (i, (name, priority)) in VMS.iter().enumerate() {
        let index = u32::try_from(i).ok()?;
        let memory = if matches!(spec.hypervisor, Hypervisor::Qemu) {
            64
        } else {
            512
        };
        if let Err(e) = c.add_vm(1, None, (name, index, memory), *priority, false) {
            eprintln!("run {round}: vm add {name}: {e:?}");
            return None;
        }
    }
    // Power off at a random phase of host 1's renewal cycle (2T).
    let cycle_ms = 2 * u64::from(spec.io_timeout_ms);
    std::thread::sleep(Duration::from_millis(lease::ids::random_u64() % cycle_ms));
    let off_ms = now_of_day_ms();
    c.power_off_via_bmc(1);
    let names: Vec<&str> = VMS.iter().map(|(n, _)| *n).collect();
    let timeout = Duration::from_millis(u64::from(spec.io_timeout_ms) * 40 + 60_000);
    if c.wait_running_elsewhere(2, &names, 1, timeout).is_none() {
        eprintln!("run {round}: the VMs did not all run elsewhere within {timeout:?}");
        return None;
    }
    let events: Vec<_> = c.hosts[1..].iter().flat_map(|h| h.events()).collect();
    let at = |kind: &str, first: bool| -> Option<i64> {
        let times = events
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| time_of_day_ms(&e.time))
            .filter(|t| *t >= off_ms);
        if first {
            times.min()
        } else {
            times.max()
        }
    };
    let silent = at("host-silent", true)?;
    let fenced = at("fenced", true)?;
    let acquired = at("acquired", true)?;
    let started = at("vm-started", false)?;
    Some(Run {
        detection_ms: silent - off_ms,
        fence_ms: fenced - silent,
        takeover_ms: acquired - fenced,
        start_ms: started - acquired,
        total_ms: started - off_ms,
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("failover: bench");
        return;
    }
    let runs: usize = env_or("LEASEHOLD_BENCH_RUNS", 20);
    let io_timeout_ms: u32 = env_or("LEASEHOLD_BENCH_IO_TIMEOUT_MS", 1000);
    let kvm = std::env::var("LEASEHOLD_BENCH_KVM").is_ok_and(|v| v == "1");
    let spec = ClusterSpec {
        hosts: 3,
        io_timeout_ms,
        memory_mib: 4096,
        restart_grace_ms: 10_000,
        hypervisor: if kvm {
            Hypervisor::Qemu
        } else {
            Hypervisor::TestDriver { broken: Vec::new() }
        },
        proxied: Vec::new(),
        libvirt_call_timeout_ms: None,
        held_paths: Vec::new(),
        extra: String::new(),
        failover_lines: Default::default(),
    };
    println!(
        "failover: {runs} runs, 3 hosts, 3 VMs on the powered-off host, io_timeout {io_timeout_ms} ms, {}",
        if kvm {
            format!("QEMU guests ({})", leasehold_tests::cluster::virt_type())
        } else {
            "libvirt test driver".to_string()
        }
    );
    let mut results = Vec::new();
    for round in 0..runs {
        match one_run(round, &spec) {
            Some(r) => {
                println!(
                    "  run {:>2}: total {:>6} ms = detection {:>5} + fence {:>4} + takeover {:>4} + start {:>4}",
                    round + 1,
                    r.total_ms,
                    r.detection_ms,
                    r.fence_ms,
                    r.takeover_ms,
                    r.start_ms
                );
                results.push(r);
            }
            None => println!("  run {:>2}: FAILED (see above)", round + 1),
        }
    }
    let column = |f: fn(&Run) -> i64| -> Vec<i64> { results.iter().map(f).collect() };
    println!("\n| phase (ms) | p50 | p99 | min | max |\n|---|---|---|---|---|");
    for (label, values) in [
        ("detection (power-off → silent)", column(|r| r.detection_ms)),
        ("fence (silent → fenced)", column(|r| r.fence_ms)),
        (
            "lease takeover (fenced → first acquired)",
            column(|r| r.takeover_ms),
        ),
        ("libvirt start (→ last VM running)", column(|r| r.start_ms)),
        (
            "total (power-off → every VM running)",
            column(|r| r.total_ms),
        ),
    ] {
        println!(
            "| {label} | {} | {} | {} | {} |",
            percentile(&values, 50.0),
            percentile(&values, 99.0),
            values.iter().min().copied().unwrap_or(0),
            values.iter().max().copied().unwrap_or(0)
        );
    }
    println!(
        "\n{} of {runs} runs completed; p99 of {} runs is the nearest-rank value (the largest but {}).",
        results.len(),
        results.len(),
        results.len() / 100
    );
}
