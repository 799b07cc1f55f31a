//! leasehold on four kinds of storage in one run: a file, a loop device,
//! an iSCSI LUN (tgt, each host through qemu-storage-daemon's libiscsi)
//! and a Ceph RBD image (one-node cluster, librbd), the last two as
//! tests/san.rs builds them (tests/support/san.rs).
//!
//! Per storage:
//! - the lease library on host 1's path: renewal, host-area scan and
//!   acquire+release by name, p50/p99 in µs;
//! - sanlock on the same kind of device (its own file or loop device):
//!   acquire+release through python3-sanlock, p50/p99. Not on iSCSI and
//!   RBD here: sanlock's 1 MiB libaio I/O does not survive the loop device
//!   over a FUSE export that stands in for the kernel initiator;
//! - power-off failover: three daemons, three HA VMs on host 1 (libvirt's
//!   test driver), host 1 powered off through its BMC; power-off to every
//!   VM running, p50 and max over the runs.
//!
//! Run: `cargo bench -p leasehold-benches --bench san` (as root).
//! Environment: LEASEHOLD_BENCH_RUNS (failovers per storage, default 10),
//! LEASEHOLD_BENCH_ITERATIONS (lease operations, default 200),
//! LEASEHOLD_BENCH_STORAGE (default "file,loop,iscsi,rbd").

// Shared with daemon_vs_sanlock, which uses more of it.
#[allow(dead_code)]
mod sanlock_peer;

use lease::clock::{Clock, SystemClock};
use lease::delta::{self, JoinRequest, RenewRequest};
use lease::disk::Disk;
use lease::format::{Capacity, FenceMethod};
use lease::op::run;
use lease::open::{open_lockspace, Engine};
use lease::paxos::{self, ReleaseRequest};
use lease::resource::{self, NamedAcquire};
use lease::HostId;
use leasehold_daemon::placement::Priority;
use leasehold_tests::cluster::{time_of_day_ms, Cluster, ClusterSpec};
use leasehold_tests::daemon::reformat_test_device_with;
use leasehold_tests::san::{CephCluster, IscsiTarget, SanPath};
use leasehold_tests::{sparse_file, LoopDevice, Scratch};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T_MS: u32 = 500;
const MAX_RESOURCES: u32 = 16;
const DEVICE_BYTES: u64 = 64 << 20;
const SANLOCK_DEVICE_BYTES: u64 = 16 << 20;
const NAMES: [&str; 3] = ["vm-high", "vm-medium", "vm-low"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50 and p99 (nearest rank) of `samples`.
fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// One storage: where each host's daemon finds the device, and what keeps
/// it alive.
enum Storage {
    File(Scratch),
    Loop {
        ours: LoopDevice,
        theirs: LoopDevice,
        _dir: Scratch,
    },
    Iscsi(IscsiTarget),
    Rbd(CephCluster),
}

impl Storage {
    fn start(kind: &str) -> Storage {
        match kind {
            "file" => {
                let dir = Scratch::new("bench-san-file");
                sparse_file(&dir.file("ours.img"), DEVICE_BYTES);
                sparse_file(&dir.file("sanlock.img"), SANLOCK_DEVICE_BYTES);
                Storage::File(dir)
            }
            "loop" => {
                let dir = Scratch::new("bench-san-loop");
                sparse_file(&dir.file("ours.img"), DEVICE_BYTES);
                sparse_file(&dir.file("sanlock.img"), SANLOCK_DEVICE_BYTES);
                let ours = LoopDevice::attach(&dir.file("ours.img"), 512).expect("loop device");
                let theirs =
                    LoopDevice::attach(&dir.file("sanlock.img"), 512).expect("loop device");
                Storage::Loop {
                    ours,
                    theirs,
                    _dir: dir,
                }
            }
            "iscsi" => Storage::Iscsi(IscsiTarget::start(DEVICE_BYTES, 512)),
            "rbd" => Storage::Rbd(CephCluster::start(DEVICE_BYTES)),
            other => panic!("unknown storage {other:?} (file, loop, iscsi, rbd)"),
        }
    }

    /// Each host's device path, with the clients that must outlive it.
    fn host_paths(&self) -> (BTreeMap<u32, String>, Vec<SanPath>) {
        match self {
            Storage::File(dir) => ((1..=3).map(|i| (i, dir.file("ours.img"))).collect(), vec![]),
            Storage::Loop { ours, .. } => {
                ((1..=3).map(|i| (i, ours.path.clone())).collect(), vec![])
            }
            Storage::Iscsi(target) => san_paths(|i| target.path(i)),
            Storage::Rbd(ceph) => san_paths(|i| ceph.path(i)),
        }
    }

    /// sanlock's own device of the same kind. Only file and loop:
    /// sanlock's 1 MiB libaio I/O does not survive the loop device over a
    /// FUSE export that stands in for the kernel initiator here (its
    /// resource reads back as missing).
    fn sanlock_device(&self) -> Option<String> {
        match self {
            Storage::File(dir) => Some(dir.file("sanlock.img")),
            Storage::Loop { theirs, .. } => Some(theirs.path.clone()),
            Storage::Iscsi(_) | Storage::Rbd(_) => None,
        }
    }
}

fn san_paths(path: impl Fn(u32) -> SanPath) -> (BTreeMap<u32, String>, Vec<SanPath>) {
    let paths: Vec<SanPath> = (1..=3).map(path).collect();
    let devices = (1..=3)
        .zip(&paths)
        .map(|(i, p)| (i, p.device().to_string()))
        .collect();
    (devices, paths)
}

/// Renewal, scan and acquire+release by name through the lease library:
/// p50/p99 in µs of each.
fn library(device: &str, iterations: usize) -> [(f64, f64); 3] {
    reformat_test_device_with(device, MAX_RESOURCES);
    let (disk, space) = open_lockspace(
        device,
        Engine::Uring {
            io_deadline_ms: 10_000,
        },
        None,
        Some("test"),
    )
    .expect("open the lockspace");
    let disk: &dyn Disk = disk.as_ref();
    let clock = SystemClock;
    let join = JoinRequest {
        host_id: HostId::new(1).expect("nonzero"),
        host_name: "bench".to_string(),
        io_timeout_ms: T_MS,
        nonce: clock.now_ms(),
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    };
    let mut held = run(delta::join(&space, join), disk, &clock).expect("join");
    let owner = held.owner();
    let mut area = vec![0u8; usize::try_from(space.geometry.host_area_size_bytes()).expect("size")];
    let mut samples: [Vec<f64>; 3] = Default::default();
    let warmup = (iterations / 10).max(10);
    for i in 0..warmup + iterations {
        let mut timed = |k: usize, f: &mut dyn FnMut()| {
            let started = Instant::now();
            f();
            if i >= warmup {
                samples[k].push(started.elapsed().as_secs_f64() * 1e6);
            }
        };
        timed(0, &mut || {
            held = run(
                delta::renew(&space, &held, RenewRequest::default()),
                disk,
                &clock,
            )
            .expect("renew")
            .lease;
        });
        timed(1, &mut || {
            disk.read(space.geometry.host_area_offset_bytes(), &mut area)
                .expect("scan");
        });
        timed(2, &mut || {
            let request = NamedAcquire {
                name: "vm1".to_string(),
                owner,
                dead_hosts: Vec::new(),
                io_timeout_ms: T_MS,
                seed: lease::ids::random_u64(),
            };
            let (slot, leader) =
                run(resource::acquire(&space, request), disk, &clock).expect("acquire by name");
            let release = ReleaseRequest {
                location: space.geometry.resource_lease(slot),
                owner,
                lver: Some(leader.lver),
                clear_name: false,
                name: Some("vm1".to_string()),
            };
            run(paxos::release(&space, release), disk, &clock).expect("release by name");
        });
    }
    run(delta::leave(&space, &held), disk, &clock).expect("leave");
    samples.map(p50_p99)
}

/// sanlock's acquire+release through python3-sanlock, p50/p99 in µs.
fn sanlock(dir: &Scratch, device: &str, iterations: usize) -> (f64, f64) {
    let device = sanlock_peer::Device {
        path: device.to_string(),
    };
    device.init(1);
    let host = sanlock_peer::Host::start(&dir.path, 1);
    host.add_lockspace(&device, 1);
    let client = host.client(
        "cycles",
        &device,
        &[
            iterations.to_string(),
            (iterations / 10).max(10).to_string(),
        ],
    );
    let cycles: Vec<f64> = client
        .result()
        .as_array()
        .expect("cycles: a JSON list")
        .iter()
        .filter_map(|pair| Some(pair[0].as_f64()? + pair[1].as_f64()?))
        .collect();
    p50_p99(cycles)
}

/// Power-off of a host with three HA VMs to every VM running again, ms.
fn failover(storage: &Storage, kind: &str, round: usize) -> Option<i64> {
    let (devices, _clients) = storage.host_paths();
    reformat_test_device_with(&devices[&1], MAX_RESOURCES);
    let mut spec = ClusterSpec::test_driver(T_MS, 2048);
    spec.max_resources = MAX_RESOURCES;
    spec.host_devices = devices;
    let mut c = Cluster::start(&format!("bench-san-{kind}-{round}"), spec);
    for (i, name) in NAMES.iter().enumerate() {
        let index = u32::try_from(i).expect("index");
        c.add_vm(1, None, (name, index, 256), Priority::Medium, false)
            .ok()?;
    }
    let off_ms = leasehold_tests::cluster::now_of_day_ms();
    c.power_off_via_bmc(1);
    c.wait_running_elsewhere(2, &NAMES, 1, Duration::from_secs(90))?;
    let last_start = c.hosts[1..]
        .iter()
        .flat_map(|h| h.events())
        .filter(|e| e.kind == "vm-started")
        .filter_map(|e| time_of_day_ms(&e.time))
        .max()?;
    Some(last_start - off_ms)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("san: bench");
        return;
    }
    let runs: usize = env_or("LEASEHOLD_BENCH_RUNS", 10);
    let iterations: usize = env_or("LEASEHOLD_BENCH_ITERATIONS", 200);
    let kinds: Vec<String> = env_or("LEASEHOLD_BENCH_STORAGE", "file,loop,iscsi,rbd".to_string())
        .split(',')
        .map(|k| k.trim().to_string())
        .collect();
    sanlock_peer::ensure_installed();
    println!(
        "san: lease operations {iterations}× (µs p50/p99), sanlock acquire+release on the same kind of device, power-off failover {runs}× (io_timeout {T_MS} ms, 3 VMs)"
    );
    let mut rows = Vec::new();
    for kind in &kinds {
        let started = Instant::now();
        let storage = Storage::start(kind);
        let bring_up_s = started.elapsed().as_secs_f64();
        eprintln!("[{kind}] up in {bring_up_s:.1} s; lease library ...");
        let (devices, clients) = storage.host_paths();
        let [renew, scan, named] = library(&devices[&1], iterations);
        drop(clients);
        let theirs = match storage.sanlock_device() {
            Some(device) => {
                eprintln!("[{kind}] sanlock ...");
                let scratch = Scratch::new(&format!("bench-san-sanlock-{kind}"));
                sanlock(&scratch, &device, iterations)
            }
            None => (f64::NAN, f64::NAN),
        };
        let mut totals = Vec::new();
        for round in 0..runs {
            match failover(&storage, kind, round) {
                Some(ms) => {
                    eprintln!("[{kind}] failover {}: {ms} ms", round + 1);
                    totals.push(ms as f64);
                }
                None => eprintln!("[{kind}] failover {}: FAILED", round + 1),
            }
        }
        let (failover_p50, _) = p50_p99(totals.clone());
        let failover_max = totals.iter().copied().fold(f64::NAN, f64::max);
        rows.push(format!(
            "| {kind} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2}× | {failover_p50:.0} ms (max {failover_max:.0}, {}/{runs}) | {bring_up_s:.0} s |",
            renew.0,
            renew.1,
            scan.0,
            scan.1,
            named.0,
            named.1,
            theirs.0,
            theirs.1,
            theirs.0 / named.0,
            totals.len(),
        ));
    }
    println!("\n| storage | renewal µs p50/p99 | host-area scan µs | acquire+release by name µs | sanlock acquire+release µs | sanlock / ours (p50) | power-off → every VM running, p50 | bring-up |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
