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
//! libvirt's test driver), LEASEHOLD_BENCH_HOSTS (default 3). Needs root
//! (loop devices), ipmi_sim, ipmitool; tests/run.sh installs them.
//!
//! Many VMs (issue 13): with LEASEHOLD_BENCH_VMS=N, N tiny HA VMs
//! (16 MiB, 1 vCPU; priorities high, medium, low in turn, or all
//! LEASEHOLD_BENCH_PRIORITY) are registered on host 1 with `vm add`, and
//! each run is measured until every one of them runs on a survivor:
//! detection, fence, first takeover, first and last VM running, how many
//! VMs each survivor started (against `placement::plan` for all N on the
//! empty survivors; the daemons re-plan the VMs still waiting each round,
//! so a few may land elsewhere), and, after LEASEHOLD_BENCH_SETTLE_MS more (default one
//! restart grace period + 2 s, when a fallback host would have tried), a
//! check that no VM was taken or started twice or is held by two hosts:
//! a violation fails the bench.
//!
//! LEASEHOLD_BENCH_VMS=200 LEASEHOLD_BENCH_HOSTS=4 LEASEHOLD_BENCH_RUNS=5 \
//!     cargo bench -p leasehold-benches --bench failover

use leasehold_daemon::placement::{self, HostRoom, Priority, VmNeed};
use leasehold_daemon::protocol::{Event, Request, StatusReply};
use leasehold_tests::cluster::{now_of_day_ms, time_of_day_ms, Cluster, ClusterSpec, Hypervisor};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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
    /// Verdicts against a live host: a survivor calling another survivor
    /// silent, or fencing it (a false fence in the making).
    false_verdicts: usize,
}

/// The phase table: p50 (and p99 with `p99`), min and max of each row.
fn print_phases(p99: bool, rows: &[(&str, Vec<i64>)]) {
    if p99 {
        println!("\n| phase (ms) | p50 | p99 | min | max |\n|---|---|---|---|---|");
    } else {
        println!("\n| phase (ms) | p50 | min | max |\n|---|---|---|---|");
    }
    for (label, values) in rows {
        let p99_cell = if p99 {
            format!(" {} |", percentile(values, 99.0))
        } else {
            String::new()
        };
        println!(
            "| {label} | {} |{p99_cell} {} | {} |",
            percentile(values, 50.0),
            values.iter().min().copied().unwrap_or(0),
            values.iter().max().copied().unwrap_or(0)
        );
    }
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
    // Only host 1 was powered off: any verdict naming another host is false.
    let false_verdicts = events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "host-silent" | "fencing" | "fenced"))
        .filter(|e| !e.message.starts_with("host 1 ") && !e.message.contains(" host 1 ("))
        .inspect(|e| eprintln!("run {round}: false verdict: {} {}", e.kind, e.message))
        .count();
    Some(Run {
        false_verdicts,
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
    let hosts: u32 = env_or("LEASEHOLD_BENCH_HOSTS", 3);
    let many: u32 = env_or("LEASEHOLD_BENCH_VMS", 0);
    let spec = ClusterSpec {
        hosts,
        io_timeout_ms,
        memory_mib: 4096,
        vcpus: 8,
        max_resources: 16,
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
        host_tables: Default::default(),
        host_devices: Default::default(),
        watchdog_hosts: Vec::new(),
    };
    if many > 0 {
        many_vms(runs, many, spec);
        return;
    }
    println!(
        "failover: {runs} runs, {hosts} hosts, 3 VMs on the powered-off host, io_timeout {io_timeout_ms} ms, {}",
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
    print_phases(
        true,
        &[
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
        ],
    );
    println!(
        "\n{} of {runs} runs completed; p99 of {} runs is the nearest-rank value (the largest but {}).",
        results.len(),
        results.len(),
        results.len() / 100
    );
    println!(
        "false verdicts (a live survivor called silent or fenced): {}",
        results.iter().map(|r| r.false_verdicts).sum::<usize>()
    );
}

// ---- many VMs (LEASEHOLD_BENCH_VMS) ---------------------------------------

/// Memory of each VM in the many-VM mode: tiny, so that any survivor could
/// take them all.
const MANY_VM_MEMORY_MIB: u32 = 16;

/// One survivor's share of a many-VM failover (times from the fence).
#[derive(Clone, Debug, Default)]
struct Share {
    started: usize,
    on_plan: usize,
    first_acquired_ms: i64,
    last_acquired_ms: i64,
    first_started_ms: i64,
    last_started_ms: i64,
}

#[derive(Clone, Debug, Default)]
struct ManyRun {
    /// How long `ipmitool chassis power off` took (the host is off when
    /// it returns; detection counts from before it).
    off_command_ms: i64,
    detection_ms: i64,
    fence_ms: i64,
    takeover_ms: i64,
    first_running_ms: i64,
    last_running_ms: i64,
    total_ms: i64,
    shares: BTreeMap<u32, Share>,
}

fn many_name(i: u32) -> String {
    format!("bench-vm-{i:04}")
}

fn many_priority(i: u32, fixed: Option<Priority>) -> Priority {
    fixed.unwrap_or(match i % 3 {
        0 => Priority::High,
        1 => Priority::Medium,
        _ => Priority::Low,
    })
}

/// The first word of an event's message after `skip` words: the VM of a
/// `vm-started` ("NAME (...) running on ...", skip 0) or the resource of an
/// `acquired` ("acquired NAME (slot ...", skip 1).
fn word(event: &Event, skip: usize) -> Option<&str> {
    event.message.split_whitespace().nth(skip)
}

fn status_of(c: &Cluster, id: u32) -> Option<StatusReply> {
    let reply = c.host(id).call(&Request::Status {});
    reply.result.and_then(|v| serde_json::from_value(v).ok())
}

/// Every survivor's events since `off_ms`.
fn events_since(c: &Cluster, survivors: &[u32], off_ms: i64) -> Vec<(i64, Event)> {
    survivors
        .iter()
        .flat_map(|id| c.host(*id).events())
        .filter_map(|e| time_of_day_ms(&e.time).map(|t| (t, e)))
        .filter(|(t, _)| *t >= off_ms)
        .collect()
}

/// The VMs each survivor started since `off_ms`, by VM: (host, time).
fn starts(events: &[(i64, Event)], names: &BTreeSet<String>) -> BTreeMap<String, Vec<(u32, i64)>> {
    let mut by_vm: BTreeMap<String, Vec<(u32, i64)>> = BTreeMap::new();
    for (t, e) in events.iter().filter(|(_, e)| e.kind == "vm-started") {
        if let Some(name) = word(e, 0).filter(|n| names.contains(*n)) {
            by_vm
                .entry(name.to_string())
                .or_default()
                .push((e.host_id, *t));
        }
    }
    by_vm
}

/// Everything that says a VM ran, or could have run, on two hosts (or was
/// started twice, or is not running where its start was seen).
fn double_runs(
    c: &Cluster,
    survivors: &[u32],
    events: &[(i64, Event)],
    names: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let started = starts(events, names);
    let mut acquired: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (_, e) in events.iter().filter(|(_, e)| e.kind == "acquired") {
        if let Some(name) = word(e, 1).filter(|n| names.contains(*n)) {
            acquired.entry(name).or_default().push(e.host_id);
        }
    }
    for name in names {
        match started.get(name).map(Vec::as_slice) {
            Some([_]) => {}
            Some(more) => problems.push(format!("{name} started {} times: {more:?}", more.len())),
            None => problems.push(format!("{name} never started on a survivor")),
        }
        match acquired.get(name.as_str()).map(Vec::as_slice) {
            Some([_]) => {}
            other => problems.push(format!(
                "{name}: lease acquired by {other:?} (once expected)"
            )),
        }
    }
    for (_, e) in events.iter().filter(|(_, e)| {
        matches!(
            e.kind.as_str(),
            "vm-start-failed" | "vm-destroyed" | "vm-stopped-unexpectedly" | "vm-start-unknown"
        )
    }) {
        problems.push(format!("host {}: {}: {}", e.host_id, e.kind, e.message));
    }
    // The leases each survivor holds for its VMs: disjoint, all of them.
    let mut holder: BTreeMap<String, u32> = BTreeMap::new();
    for id in survivors {
        let Some(status) = status_of(c, *id) else {
            problems.push(format!("host {id} gives no status"));
            continue;
        };
        for r in status
            .lockspaces
            .iter()
            .flat_map(|l| l.resources.iter())
            .filter(|r| r.vm.is_some() && names.contains(&r.name))
        {
            if let Some(other) = holder.insert(r.name.clone(), *id) {
                problems.push(format!("{} held by host {other} and host {id}", r.name));
            }
        }
    }
    for name in names {
        let started_on = started.get(name).and_then(|s| s.first()).map(|(h, _)| *h);
        if holder.get(name).copied() != started_on {
            problems.push(format!(
                "{name} started on host {started_on:?} but its lease is held by host {:?}",
                holder.get(name)
            ));
        }
    }
    // Every survivor's registry view agrees: running where it started.
    for id in survivors {
        let Some(list) = c.vm_list(*id) else {
            problems.push(format!("host {id} gives no vm list"));
            continue;
        };
        for v in list.vms.iter().filter(|v| names.contains(&v.name)) {
            let started_on = started
                .get(&v.name)
                .and_then(|s| s.first())
                .map(|(h, _)| *h);
            if v.state != "running" || v.owner_host_id != started_on {
                problems.push(format!(
                    "host {id} lists {} {} on host {:?}, started on host {started_on:?}",
                    v.name, v.state, v.owner_host_id
                ));
            }
        }
    }
    problems
}

fn many_run(
    round: usize,
    spec: &ClusterSpec,
    vms: u32,
    fixed: Option<Priority>,
    settle_ms: u64,
) -> Option<ManyRun> {
    let mut c = Cluster::start(&format!("bfm{round}"), spec.clone());
    let registering = Instant::now();
    for i in 0..vms {
        let name = many_name(i);
        if let Err(e) = c.add_vm(
            1,
            None,
            (&name, i, MANY_VM_MEMORY_MIB),
            many_priority(i, fixed),
            false,
        ) {
            eprintln!("run {}: vm add {name}: {e:?}", round + 1);
            return None;
        }
    }
    let names: BTreeSet<String> = (0..vms).map(many_name).collect();
    let survivors: Vec<u32> = (2..=spec.hosts).collect();
    // What every survivor computes: each VM's first host.
    let needs: Vec<VmNeed> = (0..vms)
        .map(|i| VmNeed {
            name: many_name(i),
            priority: many_priority(i, fixed),
            memory_mib: MANY_VM_MEMORY_MIB,
            vcpus: 1,
        })
        .collect();
    let rooms: Vec<HostRoom> = survivors
        .iter()
        .map(|h| HostRoom {
            host_id: *h,
            memory_mib_free: spec.memory_mib,
            vcpus_free: spec.vcpus,
        })
        .collect();
    let plan: BTreeMap<String, Option<u32>> = placement::plan(&needs, &rooms)
        .into_iter()
        .map(|a| (a.vm, a.host_id))
        .collect();
    println!(
        "  run {:>2}: {vms} VMs registered and running on host 1 in {} ms",
        round + 1,
        registering.elapsed().as_millis()
    );
    // Power off at a random phase of host 1's renewal cycle (2T).
    let cycle_ms = 2 * u64::from(spec.io_timeout_ms);
    std::thread::sleep(Duration::from_millis(lease::ids::random_u64() % cycle_ms));
    let off_ms = now_of_day_ms();
    c.power_off_via_bmc(1);
    let off_command_ms = now_of_day_ms() - off_ms;
    // Done when every VM has a `vm-started` on a survivor (event logs,
    // read from the files: no request disturbs the VM managers).
    let timeout =
        Duration::from_millis(u64::from(spec.io_timeout_ms) * 40 + 60_000 + 1_000 * u64::from(vms));
    let deadline = Instant::now() + timeout;
    loop {
        let events = events_since(&c, &survivors, off_ms);
        if starts(&events, &names).len() == names.len() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "run {}: {} of {vms} VMs running elsewhere after {timeout:?}",
                round + 1,
                starts(&events, &names).len()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A fallback host tries a VM one grace period after the one before
    // it: wait that long, then look for anything that ran twice.
    std::thread::sleep(Duration::from_millis(settle_ms));
    let events = events_since(&c, &survivors, off_ms);
    let problems = double_runs(&c, &survivors, &events, &names);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("run {}: VIOLATION: {p}", round + 1);
        }
        panic!(
            "run {}: {} violation(s) of \"each VM restarted once, on one host\" (above)",
            round + 1,
            problems.len()
        );
    }
    let at = |kind: &str, first: bool| -> Option<i64> {
        let times = events
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(t, _)| *t);
        if first {
            times.min()
        } else {
            times.max()
        }
    };
    let silent = at("host-silent", true)?;
    let fenced = at("fenced", true)?;
    let vm_acquires: Vec<(u32, i64)> = events
        .iter()
        .filter(|(_, e)| e.kind == "acquired" && word(e, 1).is_some_and(|n| names.contains(n)))
        .map(|(t, e)| (e.host_id, *t))
        .collect();
    let acquired = vm_acquires.iter().map(|(_, t)| *t).min()?;
    let started = starts(&events, &names);
    let start_times: Vec<i64> = started.values().flatten().map(|(_, t)| *t).collect();
    let first_started = start_times.iter().copied().min()?;
    let last_started = start_times.iter().copied().max()?;
    let mut shares: BTreeMap<u32, Share> = BTreeMap::new();
    for id in &survivors {
        let mine: Vec<(&String, i64)> = started
            .iter()
            .flat_map(|(name, s)| s.iter().map(move |(h, t)| (name, *h, *t)))
            .filter(|(_, h, _)| h == id)
            .map(|(name, _, t)| (name, t))
            .collect();
        let acquires: Vec<i64> = vm_acquires
            .iter()
            .filter(|(h, _)| h == id)
            .map(|(_, t)| *t - fenced)
            .collect();
        shares.insert(
            *id,
            Share {
                started: mine.len(),
                on_plan: mine
                    .iter()
                    .filter(|(name, _)| plan.get(*name).copied().flatten() == Some(*id))
                    .count(),
                first_acquired_ms: acquires.iter().copied().min().unwrap_or(0),
                last_acquired_ms: acquires.iter().copied().max().unwrap_or(0),
                first_started_ms: mine.iter().map(|(_, t)| *t - fenced).min().unwrap_or(0),
                last_started_ms: mine.iter().map(|(_, t)| *t - fenced).max().unwrap_or(0),
            },
        );
    }
    let planned: BTreeMap<u32, usize> = survivors
        .iter()
        .map(|id| (*id, plan.values().filter(|h| **h == Some(*id)).count()))
        .collect();
    for (id, share) in &shares {
        println!(
            "          host {id}: {:>4} started ({} planned, {} on plan); acquired +{}..+{} ms, running +{}..+{} ms after the fence",
            share.started,
            planned.get(id).copied().unwrap_or(0),
            share.on_plan,
            share.first_acquired_ms,
            share.last_acquired_ms,
            share.first_started_ms,
            share.last_started_ms
        );
    }
    Some(ManyRun {
        off_command_ms,
        detection_ms: silent - off_ms,
        fence_ms: fenced - silent,
        takeover_ms: acquired - fenced,
        first_running_ms: first_started - acquired,
        last_running_ms: last_started - acquired,
        total_ms: last_started - off_ms,
        shares,
    })
}

fn many_vms(runs: usize, vms: u32, mut spec: ClusterSpec) {
    let fixed = match std::env::var("LEASEHOLD_BENCH_PRIORITY").ok().as_deref() {
        Some("high") => Some(Priority::High),
        Some("medium") => Some(Priority::Medium),
        Some("low") => Some(Priority::Low),
        _ => None,
    };
    // Room for every VM on any host (admission control and placement),
    // and a slot for each.
    spec.memory_mib = spec.memory_mib.max(vms * MANY_VM_MEMORY_MIB);
    spec.vcpus = spec.vcpus.max(vms);
    spec.max_resources = spec.max_resources.max(vms + 8);
    let settle_ms: u64 = env_or("LEASEHOLD_BENCH_SETTLE_MS", spec.restart_grace_ms + 2_000);
    assert!(spec.hosts >= 2, "LEASEHOLD_BENCH_HOSTS: at least 2");
    println!(
        "failover: {runs} runs, {} hosts, {vms} VMs ({MANY_VM_MEMORY_MIB} MiB, 1 vCPU, {}) on the powered-off host, io_timeout {} ms, restart grace {} ms, {}",
        spec.hosts,
        match fixed {
            Some(p) => format!("all {p:?} priority"),
            None => "high, medium, low priority in turn".to_string(),
        },
        spec.io_timeout_ms,
        spec.restart_grace_ms,
        if matches!(spec.hypervisor, Hypervisor::Qemu) {
            format!("QEMU guests ({})", leasehold_tests::cluster::virt_type())
        } else {
            "libvirt test driver".to_string()
        }
    );
    let mut results: Vec<ManyRun> = Vec::new();
    for round in 0..runs {
        match many_run(round, &spec, vms, fixed, settle_ms) {
            Some(r) => {
                println!(
                    "  run {:>2}: total {:>6} ms = detection {:>5} + fence {:>4} + takeover {:>4} + start {:>5} (first VM running {} ms after the first take; power-off command {} ms); per survivor: {}; none twice",
                    round + 1,
                    r.total_ms,
                    r.detection_ms,
                    r.fence_ms,
                    r.takeover_ms,
                    r.last_running_ms,
                    r.first_running_ms,
                    r.off_command_ms,
                    r.shares
                        .iter()
                        .map(|(h, s)| format!("host {h} {}", s.started))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                results.push(r);
            }
            None => println!("  run {:>2}: FAILED (see above)", round + 1),
        }
    }
    let column = |f: fn(&ManyRun) -> i64| -> Vec<i64> { results.iter().map(f).collect() };
    print_phases(
        false,
        &[
            ("detection (power-off → silent)", column(|r| r.detection_ms)),
            ("fence (silent → fenced)", column(|r| r.fence_ms)),
            (
                "first takeover (fenced → first VM lease acquired)",
                column(|r| r.takeover_ms),
            ),
            (
                "first VM running (→ first vm-started)",
                column(|r| r.first_running_ms),
            ),
            (
                "last VM running (first acquired → last vm-started)",
                column(|r| r.last_running_ms),
            ),
            (
                "total (power-off → every VM running)",
                column(|r| r.total_ms),
            ),
        ],
    );
    let hosts: BTreeSet<u32> = results
        .iter()
        .flat_map(|r| r.shares.keys().copied())
        .collect();
    for h in hosts {
        let counts: Vec<String> = results
            .iter()
            .map(|r| r.shares.get(&h).map_or(0, |s| s.started).to_string())
            .collect();
        let on_plan: usize = results
            .iter()
            .map(|r| r.shares.get(&h).map_or(0, |s| s.on_plan))
            .sum();
        let started: usize = results
            .iter()
            .map(|r| r.shares.get(&h).map_or(0, |s| s.started))
            .sum();
        println!(
            "host {h}: started {} VMs per run ({on_plan} of {started} on their planned host)",
            counts.join(" / ")
        );
    }
    println!(
        "\n{} of {runs} runs completed; in every completed run each VM was taken and started once, on one survivor.",
        results.len()
    );
}
