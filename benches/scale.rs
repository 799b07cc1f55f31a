//! Scale benchmark: how each cost grows with the number of hosts and of
//! resource slots, on a loop device over a sparse file in
//! LEASEHOLD_BENCH_DIR (default /var/tmp), removed afterwards.
//!
//! For each (hosts, slots) size: format, dump, join, renewal, renewal with
//! the host-area scan, the VM manager's registry round, a claim of a new
//! name, an acquire+release by name of a claimed one, and an idle daemon
//! (device operations per second, memory). Each in I/Os, bytes and ms
//! (I/O counted by wrapping the device; the daemon's through the loop
//! device's own counters).
//!
//! Run: `cargo bench -p leasehold-benches --bench scale` (as root).
//! LEASEHOLD_BENCH_SCALE="64x128,256x1000,2000x10000" (the default) picks
//! the sizes; the largest needs about 13 GB of free space, written whole by
//! format. LEASEHOLD_BENCH_IDLE_S (default 30) is the daemon's idle window.

use lease::clock::{Clock, SystemClock};
use lease::delta::{self, DeltaLease, JoinRequest, RenewRequest};
use lease::disk::{CountingDisk, DirectDisk, Disk, IoCount};
use lease::format::{Capacity, FenceMethod, Geometry};
use lease::op::run;
use lease::paxos::{self, ReleaseRequest};
use lease::resource::{self, NamedAcquire};
use lease::{HostId, Lockspace};
use leasehold_tests::daemon::{Host, HostSpec};
use leasehold_tests::{block_ops, leasehold_bin, memory_kib, sparse_file, LoopDevice, Scratch};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const LOCKSPACE: &str = "test";
const PAYLOAD_BYTES: u32 = 65536;

/// One measured cost.
struct Row {
    what: &'static str,
    io: IoCount,
    ms: f64,
    note: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<(u32, u32)> {
    let text = std::env::var("LEASEHOLD_BENCH_SCALE")
        .unwrap_or_else(|_| "64x128,256x1000,2000x10000".to_string());
    text.split(',')
        .filter_map(|pair| {
            let (hosts, slots) = pair.trim().split_once('x')?;
            Some((hosts.parse().ok()?, slots.parse().ok()?))
        })
        .collect()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// Time `f` and count the I/O it does through `disk`.
fn measure<T>(disk: &CountingDisk<DirectDisk>, f: impl FnOnce() -> T) -> (T, IoCount, f64) {
    let before = disk.count();
    let started = Instant::now();
    let value = f();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    (value, disk.count().since(before), ms)
}

/// RSS, PSS and private anonymous memory of `pid`, in KiB.
fn join(space: &Lockspace, disk: &dyn Disk) -> DeltaLease {
    let request = JoinRequest {
        host_id: HostId::new(1).expect("nonzero"),
        host_name: "scale1".to_string(),
        io_timeout_ms: 1000,
        nonce: SystemClock.now_ms(),
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    };
    run(delta::join(space, request), disk, &SystemClock).expect("join")
}

fn named(lease: &DeltaLease, name: &str, seed: u64) -> NamedAcquire {
    NamedAcquire {
        name: name.to_string(),
        owner: lease.owner(),
        dead_hosts: Vec::new(),
        io_timeout_ms: 1000,
        seed,
    }
}

fn release(space: &Lockspace, disk: &dyn Disk, lease: &DeltaLease, slot: u32) {
    let request = ReleaseRequest {
        location: space.geometry.resource_lease(slot),
        owner: lease.owner(),
        lver: None,
        clear_name: false,
        name: None,
    };
    run(paxos::release(space, request), disk, &SystemClock).expect("release");
}

fn bench_size(hosts: u32, slots: u32, dir: &str, idle_s: u64) -> Vec<Row> {
    let geometry = Geometry::new(512, hosts, slots, PAYLOAD_BYTES).expect("geometry");
    let size_bytes = geometry.device_size_bytes();
    let backing = format!("{dir}/leasehold-scale-{hosts}x{slots}.img");
    let _ = std::fs::remove_file(&backing);
    sparse_file(&backing, size_bytes);
    let loop_device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    let path = loop_device.path.clone();
    let mut rows = Vec::new();

    // Format through the CLI, as an operator would.
    let started = Instant::now();
    let ops_before = block_ops(&path).unwrap_or((0, 0));
    let out = Command::new(leasehold_bin())
        .args([
            "format",
            &path,
            "--lockspace",
            LOCKSPACE,
            "--max-hosts",
            &hosts.to_string(),
            "--max-resources",
            &slots.to_string(),
        ])
        .output()
        .expect("run leasehold format");
    assert!(
        out.status.success(),
        "format: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops_after = block_ops(&path).unwrap_or((0, 0));
    rows.push(Row {
        what: "format (CLI)",
        io: IoCount {
            reads: ops_after.0 - ops_before.0,
            writes: ops_after.1 - ops_before.1,
            write_bytes: size_bytes,
            ..IoCount::default()
        },
        ms: started.elapsed().as_secs_f64() * 1000.0,
        note: format!("device {:.2} GB", size_bytes as f64 / 1e9),
    });

    let started = Instant::now();
    let ops_before = block_ops(&path).unwrap_or((0, 0));
    let out = Command::new(leasehold_bin())
        .args(["dump", &path, "--json"])
        .output()
        .expect("run leasehold dump");
    assert!(out.status.success(), "dump failed");
    let ops_after = block_ops(&path).unwrap_or((0, 0));
    rows.push(Row {
        what: "dump (CLI, every slot)",
        io: IoCount {
            reads: ops_after.0 - ops_before.0,
            ..IoCount::default()
        },
        ms: started.elapsed().as_secs_f64() * 1000.0,
        note: String::new(),
    });

    let disk = CountingDisk::new(DirectDisk::open(&path, Some(512)).expect("open"));
    let space = Lockspace::open(&disk, Some(LOCKSPACE)).expect("open lockspace");
    let (lease, io, ms) = measure(&disk, || join(&space, &disk));
    rows.push(Row {
        what: "join (fresh sector)",
        io,
        ms,
        note: "includes the 2T settle wait".to_string(),
    });

    let mut lease = lease;
    for (what, scan) in [("renewal", false), ("renewal + host-area scan", true)] {
        let mut samples = Vec::new();
        let mut io_total = IoCount::default();
        for _ in 0..20 {
            let request = RenewRequest {
                scan,
                ..RenewRequest::default()
            };
            let (renewal, io, ms) = measure(&disk, || {
                run(delta::renew(&space, &lease, request), &disk, &SystemClock).expect("renew")
            });
            lease = renewal.lease;
            io_total = io;
            samples.push(ms);
        }
        rows.push(Row {
            what,
            io: io_total,
            ms: median(samples),
            note: String::new(),
        });
    }

    let (entries, io, ms) = measure(&disk, || {
        leasehold_daemon::registry::scan(&space, &disk, &BTreeMap::new()).expect("registry scan")
    });
    rows.push(Row {
        what: "VM-manager registry round, full (start, a host's state moved)",
        io,
        ms,
        note: format!("{} VMs", entries.len()),
    });

    let ((slot, _), io, ms) = measure(&disk, || {
        run(
            resource::acquire(&space, named(&lease, "scale-vm", 1)),
            &disk,
            &SystemClock,
        )
        .expect("claim")
    });
    rows.push(Row {
        what: "claim of a new name",
        io,
        ms,
        note: String::new(),
    });
    let changed: std::collections::BTreeSet<u32> = [slot].into();
    let (_, io, ms) = measure(&disk, || {
        leasehold_daemon::registry::scan_slots(&space, &disk, &changed).expect("slot scan")
    });
    rows.push(Row {
        what: "VM-manager round after another host changed one slot",
        io,
        ms,
        note: "the slots its record names".to_string(),
    });
    release(&space, &disk, &lease, slot);

    let mut samples = Vec::new();
    let mut last = IoCount::default();
    for i in 0..50 {
        let ((), io, ms) = measure(&disk, || {
            let (slot, _) = run(
                resource::acquire(&space, named(&lease, "scale-vm", i + 2)),
                &disk,
                &SystemClock,
            )
            .expect("acquire by name");
            release(&space, &disk, &lease, slot);
        });
        last = io;
        samples.push(ms);
    }
    rows.push(Row {
        what: "acquire+release by name (claimed)",
        io: last,
        ms: median(samples),
        note: "median of 50".to_string(),
    });
    run(delta::leave(&space, &lease), &disk, &SystemClock).expect("leave");
    drop(disk);

    // An idle daemon on the device.
    let scratch = Scratch::new(&format!("scale-{hosts}x{slots}"));
    let mut spec = HostSpec::new(1, &path, 1000);
    spec.extra = "[libvirt]\nuri = \"test:///default\"\n".to_string();
    let mut host = Host::start(&scratch.path, spec);
    host.wait_joined();
    std::thread::sleep(Duration::from_secs(5));
    let before = block_ops(&path).unwrap_or((0, 0));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let after = block_ops(&path).unwrap_or((0, 0));
    let seconds = started.elapsed().as_secs_f64();
    let memory = memory_kib(host.daemon_pid());
    let reads = after.0 - before.0;
    let writes = after.1 - before.1;
    rows.push(Row {
        what: "idle daemon (device ops, memory)",
        io: IoCount {
            reads,
            writes,
            ..IoCount::default()
        },
        ms: 0.0,
        note: format!(
            "{:.2} reads/s + {:.2} writes/s over {seconds:.0} s; {}",
            reads as f64 / seconds,
            writes as f64 / seconds,
            match memory {
                Some((rss, pss, private)) => format!(
                    "RSS {:.1} MB, PSS {:.1} MB, private {:.1} MB",
                    rss as f64 / 1024.0,
                    pss as f64 / 1024.0,
                    private as f64 / 1024.0
                ),
                None => "memory unreadable".to_string(),
            }
        ),
    });
    let _ = host.terminate();
    drop(loop_device);
    let _ = std::fs::remove_file(&backing);
    rows
}

fn main() {
    let dir = std::env::var("LEASEHOLD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".to_string());
    let idle_s: u64 = env_or("LEASEHOLD_BENCH_IDLE_S", 30);
    let mut table: Vec<((u32, u32), Vec<Row>)> = Vec::new();
    for (hosts, slots) in sizes() {
        println!("scale: {hosts} hosts x {slots} slots ...");
        let rows = bench_size(hosts, slots, &dir, idle_s);
        for r in &rows {
            println!(
                "  {:<38} reads {:>8} ({:>12} B)  writes {:>8}  {:>10.1} ms  {}",
                r.what, r.io.reads, r.io.read_bytes, r.io.writes, r.ms, r.note
            );
        }
        table.push(((hosts, slots), rows));
    }
    println!();
    println!("| cost | {} |", {
        table
            .iter()
            .map(|((h, s), _)| format!("{h} hosts x {s} slots"))
            .collect::<Vec<_>>()
            .join(" | ")
    });
    println!("|---|{}", "---|".repeat(table.len()));
    let Some((_, first)) = table.first() else {
        return;
    };
    for (i, row) in first.iter().enumerate() {
        let cells: Vec<String> = table
            .iter()
            .map(|(_, rows)| {
                let r = &rows[i];
                if r.ms == 0.0 {
                    r.note.clone()
                } else {
                    format!(
                        "{} reads ({}), {} writes, {:.1} ms",
                        r.io.reads,
                        human_bytes(r.io.read_bytes),
                        r.io.writes,
                        r.ms
                    )
                }
            })
            .collect();
        println!("| {} | {} |", row.what, cells.join(" | "));
    }
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}
