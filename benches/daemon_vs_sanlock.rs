//! leaseholdd next to sanlock, in one run, on the same kind of device with
//! the same io_timeout (issue 8):
//!
//! 1. resource lease acquire+release, one host, uncontended: cycles/s and
//!    p50/p99 latency; ours through the daemon's control socket (and its
//!    CLI, and the `lease` library directly), sanlock through python3-sanlock
//!    (and its CLI); on a file under LEASEHOLD_BENCH_DIR and on a loop device
//!    over such a file (`losetup --direct-io=on`);
//!    two hosts contending for one resource: successes per host and the
//!    longest acquire;
//! 2. lockspace join time, clean start and after `kill -9` of the daemon;
//! 3. time from `kill -9` of the lease holder's daemon to another host
//!    holding the lease, watchdog rule, no fence (with fencing through
//!    ipmi_sim: benches/failover.rs);
//! 4. daemon idle RSS, CPU and device I/O (bytes; operations on a loop
//!    device);
//! 5. the device floor in the same run: one O_DIRECT sector write, one
//!    contiguous read of the host area, one read of a resource lease.
//!
//! cargo bench -p leasehold-benches --bench daemon_vs_sanlock
//!
//! LEASEHOLD_BENCH_RUNS (default 5: join and takeover runs),
//! LEASEHOLD_BENCH_IO_TIMEOUTS_S (default "1"; "1,10" adds the sanlock
//! default, ~2.5 min per takeover run), LEASEHOLD_BENCH_CYCLES (default 200
//! acquire+release cycles per client and device), LEASEHOLD_BENCH_CLI_CYCLES
//! (default 100), LEASEHOLD_BENCH_CONTEND_S (default 10),
//! LEASEHOLD_BENCH_TAKEOVER_LANES (default 2 takeover runs at a time, each
//! with ours and sanlock side by side: they mostly wait),
//! LEASEHOLD_BENCH_MAX_RESOURCES (default 128, `leasehold format`'s),
//! LEASEHOLD_BENCH_IDLE_S (default 60), LEASEHOLD_BENCH_LOOP (default 1; 0
//! skips the loop device), LEASEHOLD_BENCH_ONLY (default all of
//! "cycles,contend,join,takeover,idle"), LEASEHOLD_BENCH_DIR (default
//! /var/tmp). Run as root (loop devices). Installs sanlock and
//! python3-sanlock with apt-get when missing.

mod sanlock_peer;

use lease::clock::SystemClock;
use lease::delta::{self, JoinRequest, RenewRequest};
use lease::disk::Disk;
use lease::format::{Capacity, FenceMethod};
use lease::op::run;
use lease::open::{open_lockspace, Engine};
use lease::paxos::{self, AcquireRequest, ReleaseRequest};
use lease::resource::{self, NamedAcquire};
use lease::HostId;
use leasehold_daemon::client::Client;
use leasehold_daemon::protocol::{ErrorKind, Reply, Request};
use leasehold_tests::daemon::{Host, HostSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stats {
    values: Vec<f64>,
}

impl Stats {
    fn new() -> Stats {
        Stats { values: Vec::new() }
    }
    fn of(values: &[f64]) -> Stats {
        Stats {
            values: values.to_vec(),
        }
    }
    fn push(&mut self, v: f64) {
        self.values.push(v);
    }
    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
    fn show(&self, unit: &str) -> String {
        if self.is_empty() {
            return "no data".to_string();
        }
        format!(
            "{:.2} {unit} [{:.2}..{:.2}]",
            self.median(),
            self.min(),
            self.max()
        )
    }
    /// Microsecond samples shown in ms: median [min..max].
    fn show_us_as_ms(&self) -> String {
        if self.is_empty() {
            return "no data".to_string();
        }
        format!(
            "{:.3} ms [{:.3}..{:.3}]",
            self.median() / 1e3,
            self.min() / 1e3,
            self.max() / 1e3
        )
    }
    fn show_rate(&self) -> String {
        if self.is_empty() {
            return "no data".to_string();
        }
        format!(
            "{:.0}/s [{:.0}..{:.0}]",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

/// Per-batch rates (cycles/s) of a series of cycle times in µs: the
/// median and spread of throughput over about 20 batches.
fn batch_rates(cycle_us: &[f64]) -> Stats {
    let batch = (cycle_us.len() / 20).max(1);
    Stats {
        values: cycle_us
            .chunks(batch)
            .filter(|c| c.len() == batch)
            .map(|c| c.len() as f64 * 1e6 / c.iter().sum::<f64>())
            .collect(),
    }
}

/// ours / theirs, or a word when that makes no sense.
fn ratio(ours: f64, theirs: f64) -> String {
    if !ours.is_finite() || !theirs.is_finite() {
        "n/a".to_string()
    } else if theirs.abs() < 1e-12 {
        "n/a (sanlock 0)".to_string()
    } else {
        format!("{:.2}", ours / theirs)
    }
}

/// A target verdict appended to a cell: `value` is judged by `met`
/// (a value that could not be measured is said so).
fn verdict(value: f64, met: impl Fn(f64) -> bool, target: &str) -> String {
    if !value.is_finite() {
        format!(" (target {target}: not measured)")
    } else if met(value) {
        format!(" (target {target}: met)")
    } else {
        format!(" (target {target}: **behind**)")
    }
}

struct Row {
    figure: String,
    ours: String,
    theirs: String,
    ratio: String,
    floor: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, figure: String, ours: String, theirs: String, ratio: String, floor: String) {
        println!("{figure:<58} {ours:>30} {theirs:>30} {ratio:>12} {floor}");
        self.rows.push(Row {
            figure,
            ours,
            theirs,
            ratio,
            floor,
        });
    }

    fn markdown(&self) -> String {
        let mut text = String::from(
            "| figure | leasehold | sanlock | ratio | floor |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.figure, r.ours, r.theirs, r.ratio, r.floor
            ));
        }
        text
    }
}

/// CPU seconds (user + system, all threads) and RSS (KiB) of a process.
fn cpu_s_and_rss_kib(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11usize, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf reads a system constant; no memory is involved.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / hz, rss)
}

/// Bytes a process (all its threads) had read from and written to
/// storage: /proc/PID/io read_bytes, write_bytes.
fn io_bytes(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("read_bytes:"), field("write_bytes:"))
}

fn sparse(path: &Path, size_bytes: u64) {
    let file = std::fs::File::create(path).expect("create device file");
    file.set_len(size_bytes).expect("size device file");
}

/// A loop device over a file (`--direct-io=on`), detached on drop.
struct Loop(String);

impl Loop {
    fn attach(backing: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(backing)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Loop(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )),
            other => {
                println!("loop device skipped (losetup: {other:?})");
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

// ---------------------------------------------------------------- ours

/// The lockspace our multi-host runs use (tests/support's hosts name it).
const OURS_LOCKSPACE: &str = "test";
/// `leasehold format`'s default host slots.
const OURS_MAX_HOSTS: u32 = 64;

/// Resource slots: `leasehold format`'s default (128) unless
/// LEASEHOLD_BENCH_MAX_RESOURCES says otherwise. An acquire by name scans
/// every slot, so this sets part of its cost.
fn ours_max_resources() -> u32 {
    env_or("LEASEHOLD_BENCH_MAX_RESOURCES", 128)
}

/// Bytes for a device of either system: sanlock's lockspace and resource
/// fit in 2 MiB; ours per its geometry.
fn device_size_bytes() -> u64 {
    let ours = lease::format::Geometry::new(
        512,
        OURS_MAX_HOSTS,
        ours_max_resources(),
        lease::format::PAYLOAD_SIZE_BYTES_DEFAULT,
    )
    .map(|g| g.device_size_bytes())
    .unwrap_or(0);
    ours.max(16 << 20).next_multiple_of(1 << 20)
}

fn format_ours(device: &str, lockspace: &str, io_timeout_ms: u32) {
    leasehold_tests::leasehold_ok(&[
        "format",
        device,
        "--lockspace",
        lockspace,
        "--max-hosts",
        &OURS_MAX_HOSTS.to_string(),
        "--max-resources",
        &ours_max_resources().to_string(),
        "--io-timeout",
        &format!("{}", f64::from(io_timeout_ms) / 1000.0),
    ]);
}

fn wait_joined(host: &Host, timeout: Duration) {
    leasehold_tests::wait_long(timeout, || {
        host.status()
            .filter(|s| s.lockspaces.first().is_some_and(|l| l.state == "joined"))
    })
    .unwrap_or_else(|| panic!("{} did not join; log:\n{}", host.spec.name, host.log()));
}

fn wait_sees_live(host: &Host, id: u32, timeout: Duration) {
    leasehold_tests::wait_long(timeout, || {
        host.host_state(id).filter(|h| h.state == "live")
    })
    .unwrap_or_else(|| panic!("{} never saw host {id} live", host.spec.name));
}

/// A process to hold leases for (registered with the daemon), killed on
/// drop.
struct Sleeper(Child);

impl Sleeper {
    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid fits i32")
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper() -> Sleeper {
    Sleeper(
        Command::new("sleep")
            .arg("1000000")
            .spawn()
            .expect("spawn sleep"),
    )
}

fn connect(host: &Host) -> Client {
    host.client()
        .unwrap_or_else(|| panic!("connect to {}", host.spec.name))
}

fn register(client: &mut Client, pid: i32) {
    // Raw JSON: the request's optional fields keep their defaults whatever
    // this protocol version adds.
    let reply = client
        .call_raw(&format!("{{\"op\":\"register\",\"pid\":{pid}}}"))
        .expect("daemon answers register");
    assert!(reply.ok, "register {pid}: {reply:?}");
}

fn acquire(client: &mut Client, pid: i32, resource: &str) -> Reply {
    client
        .call(&Request::Acquire {
            lockspace: None,
            resource: resource.to_string(),
            pid,
            vm: None,
        })
        .expect("daemon answers acquire")
}

fn release(client: &mut Client, pid: i32, resource: &str) -> Reply {
    client
        .call(&Request::Release {
            lockspace: None,
            resource: resource.to_string(),
            pid,
        })
        .expect("daemon answers release")
}

fn error_kind(reply: &Reply) -> String {
    reply
        .error
        .as_ref()
        .map(|e| format!("{:?}", e.kind).to_lowercase())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Acquire+release cycle times (µs) through the control socket.
fn daemon_cycles(host: &Host, n: usize, warmup: usize) -> Vec<f64> {
    let holder = sleeper();
    let pid = holder.pid();
    let mut client = connect(host);
    register(&mut client, pid);
    let mut out = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let started = Instant::now();
        let got = acquire(&mut client, pid, "vm1");
        assert!(got.ok, "acquire vm1: {got:?}");
        let gone = release(&mut client, pid, "vm1");
        assert!(gone.ok, "release vm1: {gone:?}");
        if i >= warmup {
            out.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    out
}

/// Acquire+release cycle times (µs) through `leasehold client acquire` and
/// `... release`: one process per call, as a shell script would see it.
fn daemon_cli_cycles(host: &Host, n: usize) -> Vec<f64> {
    let holder = sleeper();
    let pid = holder.pid();
    let mut client = connect(host);
    register(&mut client, pid);
    let cli = leasehold_tests::leasehold_bin();
    let socket = host.socket.display().to_string();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        for action in ["acquire", "release"] {
            let done = Command::new(&cli)
                .args(["client", action, "--socket", &socket, "vm1", "--pid"])
                .arg(pid.to_string())
                .output()
                .expect("run leasehold client");
            assert!(
                done.status.success(),
                "leasehold client {action}: {}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
        out.push(started.elapsed().as_secs_f64() * 1e6);
    }
    out
}

/// The device floor: p50 µs of one sector write, one contiguous read of
/// the host area, one read of a whole resource lease.
#[derive(Default)]
struct Floor {
    write_us: Vec<f64>,
    host_area_us: Vec<f64>,
    lease_us: Vec<f64>,
}

impl Floor {
    fn write(&self) -> f64 {
        Stats::of(&self.write_us).median()
    }
    fn host_area(&self) -> f64 {
        Stats::of(&self.host_area_us).median()
    }
    fn lease(&self) -> f64 {
        Stats::of(&self.lease_us).median()
    }
    /// The I/O of one acquire+release at the device's speed (lease_io's
    /// formula): 2 x (sector write + lease read) + sector write.
    fn cycle_us(&self) -> f64 {
        2.0 * (self.write() + self.lease()) + self.write()
    }
}

/// What the library measured on one device, with the floor sampled in
/// the same loop.
struct LibraryRun {
    by_name_us: Vec<f64>,
    by_slot_us: Vec<f64>,
    floor: Floor,
}

/// Join as host 3 through the `lease` library (the daemon's engine,
/// io_uring) and time acquire+release by name (what the daemon does per
/// request: find the slot, paxos, release by slot and lver) and by slot
/// (paxos alone, as sanlock's RESOURCE names its offset), one floor round
/// between cycles. The delta lease is renewed (untimed) every T/2.
fn library_cycles(device: &str, io_timeout_ms: u32, n: usize, warmup: usize) -> LibraryRun {
    let (disk, space) = open_lockspace(
        device,
        Engine::Uring {
            io_deadline_ms: u64::from(io_timeout_ms),
        },
        None,
        Some(OURS_LOCKSPACE),
    )
    .expect("open our lease device");
    let disk: &dyn Disk = disk.as_ref();
    let clock = SystemClock;
    let geometry = space.geometry;
    let request = JoinRequest {
        host_id: HostId::new(3).expect("nonzero"),
        host_name: "bench-library".to_string(),
        io_timeout_ms,
        nonce: lease::ids::random_u64(),
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    };
    let mut held = run(delta::join(&space, request), disk, &clock).expect("library join");
    let owner = held.owner();
    let mut renewed = Instant::now();
    // Floor: rewrite an unused host sector with its own content.
    let scratch_offset =
        geometry.host_offset_bytes(HostId::new(geometry.max_hosts()).expect("nonzero"));
    let mut sector = vec![0u8; space.sector_size() as usize];
    disk.read(scratch_offset, &mut sector)
        .expect("read scratch sector");
    let mut area = vec![0u8; geometry.host_area_size_bytes() as usize];
    let mut lease_image = vec![0u8; geometry.lease_size_bytes() as usize];
    let slot = geometry.max_resources() - 1;
    let location = geometry.resource_lease(slot);
    let mut claim = run(paxos::inquire(&space, location), disk, &clock)
        .expect("inquire")
        .leader
        .name
        != "libslot";
    let mut result = LibraryRun {
        by_name_us: Vec::with_capacity(n),
        by_slot_us: Vec::with_capacity(n),
        floor: Floor::default(),
    };
    for i in 0..warmup + n {
        let keep = i >= warmup;
        if renewed.elapsed() > Duration::from_millis(u64::from(io_timeout_ms) / 2) {
            held = run(
                delta::renew(&space, &held, RenewRequest::default()),
                disk,
                &clock,
            )
            .expect("renew")
            .lease;
            renewed = Instant::now();
        }
        let timed = |f: &mut dyn FnMut(), into: &mut Vec<f64>| {
            let started = Instant::now();
            f();
            if keep {
                into.push(started.elapsed().as_secs_f64() * 1e6);
            }
        };
        timed(
            &mut || disk.write(scratch_offset, &sector).expect("floor write"),
            &mut result.floor.write_us,
        );
        timed(
            &mut || {
                disk.read(geometry.host_area_offset_bytes(), &mut area)
                    .expect("floor host-area read")
            },
            &mut result.floor.host_area_us,
        );
        timed(
            &mut || {
                disk.read(location.leader_offset_bytes, &mut lease_image)
                    .expect("floor lease read")
            },
            &mut result.floor.lease_us,
        );
        timed(
            &mut || {
                let request = NamedAcquire {
                    name: "libname".to_string(),
                    owner,
                    dead_hosts: Vec::new(),
                    io_timeout_ms,
                    seed: lease::ids::random_u64(),
                };
                let (slot, leader) =
                    run(resource::acquire(&space, request), disk, &clock).expect("acquire by name");
                let release = ReleaseRequest {
                    location: geometry.resource_lease(slot),
                    owner,
                    lver: Some(leader.lver),
                    clear_name: false,
                    name: Some("libname".to_string()),
                };
                run(paxos::release(&space, release), disk, &clock).expect("release by name");
            },
            &mut result.by_name_us,
        );
        timed(
            &mut || {
                let request = AcquireRequest {
                    location,
                    owner,
                    name: "libslot".to_string(),
                    claim,
                    dead_hosts: Vec::new(),
                    io_timeout_ms,
                    seed: lease::ids::random_u64(),
                };
                let leader =
                    run(paxos::acquire(&space, request), disk, &clock).expect("acquire by slot");
                claim = false;
                let release = ReleaseRequest {
                    location,
                    owner,
                    lver: Some(leader.lver),
                    clear_name: false,
                    name: None,
                };
                run(paxos::release(&space, release), disk, &clock).expect("release by slot");
            },
            &mut result.by_slot_us,
        );
    }
    run(delta::leave(&space, &held), disk, &clock).expect("library leave");
    result
}

// ---------------------------------------------------------------- sanlock

/// sanlock acquire+release cycle times (µs) through python3-sanlock.
fn sanlock_py_cycles(
    host: &sanlock_peer::Host,
    device: &sanlock_peer::Device,
    n: usize,
    warmup: usize,
) -> Vec<f64> {
    let client = host.client("cycles", device, &[n.to_string(), warmup.to_string()]);
    client
        .result()
        .as_array()
        .expect("cycles: a JSON list")
        .iter()
        .filter_map(|pair| Some(pair[0].as_f64()? + pair[1].as_f64()?))
        .collect()
}

/// sanlock acquire+release cycle times (µs) through `sanlock client
/// acquire|release -p PID` for a registered (python) process.
fn sanlock_cli_cycles(
    host: &sanlock_peer::Host,
    device: &sanlock_peer::Device,
    n: usize,
) -> Vec<f64> {
    let mut registered = host.client("idle", device, &[]);
    registered.expect("ready");
    let pid = registered.pid();
    (0..n)
        .map(|_| {
            let acquire = host.cli("acquire", device, pid);
            let release = host.cli("release", device, pid);
            (acquire + release) * 1e6
        })
        .collect()
}

// ---------------------------------------------------------------- sections

struct Settings {
    runs: usize,
    cycles: usize,
    cli_cycles: usize,
    contend_s: f64,
    takeover_lanes: usize,
    idle_s: u64,
    use_loop: bool,
    only: Vec<String>,
    base: PathBuf,
}

impl Settings {
    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

/// A device path, and the loop device to keep attached while it is used.
type MadeDevice = Option<(String, Option<Loop>)>;

/// Item 1 (one host) and item 5 on one device type: ours and sanlock each
/// on its own device of that type (`make_device` gives a path for a
/// backing file), formatted with the same io_timeout.
fn cycles_section(
    report: &mut Report,
    settings: &Settings,
    kind: &str,
    io_timeout_s: u32,
    make_device: &dyn Fn(&Path) -> MadeDevice,
) {
    let dir = settings.base.join(format!("cycles-{kind}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let Some((ours_dev, _ours_loop)) = make_device(&dir.join("ours.img")) else {
        return;
    };
    let Some((theirs_dev, _theirs_loop)) = make_device(&dir.join("sanlock.img")) else {
        return;
    };
    let io_timeout_ms = io_timeout_s * 1000;
    let n = settings.cycles;
    let warmup = (n / 10).max(10);
    format_ours(&ours_dev, OURS_LOCKSPACE, io_timeout_ms);
    println!("  [{kind}] lease library (by name, by slot) and device floor ...");
    let library = library_cycles(&ours_dev, io_timeout_ms, n, warmup);
    println!("  [{kind}] leaseholdd, control socket and CLI ...");
    let (daemon, daemon_cli) = {
        let host = Host::start(&dir, HostSpec::new(1, &ours_dev, io_timeout_ms));
        wait_joined(
            &host,
            Duration::from_secs(60 + 10 * u64::from(io_timeout_s)),
        );
        let socket = daemon_cycles(&host, n, warmup);
        let cli = daemon_cli_cycles(&host, settings.cli_cycles);
        (socket, cli)
    };
    println!("  [{kind}] sanlock, python3-sanlock and CLI ...");
    let (theirs, theirs_cli) = {
        let device = sanlock_peer::Device { path: theirs_dev };
        device.init(io_timeout_s);
        let host = sanlock_peer::Host::start(&dir, 1);
        host.add_lockspace(&device, io_timeout_s);
        let py = sanlock_py_cycles(&host, &device, n, warmup);
        let cli = sanlock_cli_cycles(&host, &device, settings.cli_cycles);
        (py, cli)
    };
    let floor = &library.floor;
    let floor_rate = 1e6 / floor.cycle_us();
    let theirs_rates = batch_rates(&theirs);
    let theirs_lat = Stats::of(&theirs);
    let rate_row = |report: &mut Report, what: &str, ours: &[f64], theirs: &Stats, vs: &str| {
        let rates = batch_rates(ours);
        let r = rates.median() / theirs.median();
        let ours_rate = rates.median();
        report.add(
            format!("acquire+release/s, 1 host, {what} ({kind})"),
            rates.show_rate(),
            format!("{}{vs}", theirs.show_rate()),
            format!(
                "{}{}",
                ratio(ours_rate, theirs.median()),
                verdict(r, |r| r >= 3.0, "≥ 3")
            ),
            format!(
                "{floor_rate:.0}/s: ours at {:.2}×{}",
                ours_rate / floor_rate,
                verdict(ours_rate / floor_rate, |f| f >= 0.5, "≥ 0.5× floor")
            ),
        );
    };
    let latency_rows = |report: &mut Report, what: &str, ours: &[f64], theirs: &Stats| {
        let ours = Stats::of(ours);
        let cell = |s: &Stats| {
            format!(
                "p50 {} / p99 {:.3} ms",
                s.show_us_as_ms(),
                s.percentile(99.0) / 1e3
            )
        };
        report.add(
            format!("acquire+release latency, {what} ({kind})"),
            cell(&ours),
            cell(theirs),
            format!(
                "{} / {}",
                ratio(ours.median(), theirs.median()),
                ratio(ours.percentile(99.0), theirs.percentile(99.0))
            ),
            format!("{:.3} ms", floor.cycle_us() / 1e3),
        );
    };
    rate_row(
        report,
        "daemon socket vs python3-sanlock",
        &daemon,
        &theirs_rates,
        "",
    );
    latency_rows(
        report,
        "daemon socket vs python3-sanlock",
        &daemon,
        &theirs_lat,
    );
    rate_row(
        report,
        "lease library by name",
        &library.by_name_us,
        &theirs_rates,
        " (python3-sanlock)",
    );
    latency_rows(
        report,
        "lease library by name",
        &library.by_name_us,
        &theirs_lat,
    );
    rate_row(
        report,
        "lease library by slot",
        &library.by_slot_us,
        &theirs_rates,
        " (python3-sanlock)",
    );
    latency_rows(
        report,
        "lease library by slot",
        &library.by_slot_us,
        &theirs_lat,
    );
    let cli = batch_rates(&daemon_cli);
    let theirs_cli_rates = batch_rates(&theirs_cli);
    report.add(
        format!("acquire+release/s, 1 host, CLI, a process per call ({kind})"),
        cli.show_rate(),
        theirs_cli_rates.show_rate(),
        ratio(cli.median(), theirs_cli_rates.median()),
        format!("{floor_rate:.0}/s"),
    );
    report.add(
        format!("device floor: sector write / host-area read / lease read, p50 ({kind})"),
        format!(
            "{:.3} / {:.3} / {:.3} ms",
            floor.write() / 1e3,
            floor.host_area() / 1e3,
            floor.lease() / 1e3
        ),
        "same device type".to_string(),
        String::new(),
        format!(
            "cycle = 2×(write+lease read)+write = {:.3} ms",
            floor.cycle_us() / 1e3
        ),
    );
}

/// One host's side of the contention run.
#[derive(Default)]
struct Contention {
    successes: u64,
    refused: BTreeMap<String, u64>,
    acquire_us: Vec<f64>,
    longest_gap_s: f64,
}

fn ours_contend(host: &Host, barrier: &Barrier, seconds: f64) -> Contention {
    let holder = sleeper();
    let pid = holder.pid();
    let mut client = connect(host);
    register(&mut client, pid);
    let mut out = Contention::default();
    barrier.wait();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut last_ok = start;
    while Instant::now() < end {
        let t = Instant::now();
        let reply = acquire(&mut client, pid, "vm1");
        let done = Instant::now();
        out.acquire_us.push((done - t).as_secs_f64() * 1e6);
        if reply.ok {
            out.successes += 1;
            out.longest_gap_s = out.longest_gap_s.max((done - last_ok).as_secs_f64());
            last_ok = done;
            let gone = release(&mut client, pid, "vm1");
            assert!(gone.ok, "release vm1: {gone:?}");
        } else {
            let kind = match reply.error.as_ref().map(|e| e.kind) {
                Some(ErrorKind::Busy) => "busy".to_string(),
                _ => error_kind(&reply),
            };
            *out.refused.entry(kind).or_default() += 1;
        }
    }
    out.longest_gap_s = out.longest_gap_s.max(last_ok.elapsed().as_secs_f64());
    out
}

fn theirs_contention(value: &serde_json::Value) -> Contention {
    Contention {
        successes: value["successes"].as_u64().unwrap_or(0),
        refused: value["refused"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (format!("errno {k}"), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
        acquire_us: value["acquire_us"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default(),
        longest_gap_s: value["longest_gap_s"].as_f64().unwrap_or(f64::NAN),
    }
}

/// Item 1, two hosts contending for one resource (a file).
fn contend_section(report: &mut Report, settings: &Settings, io_timeout_s: u32) {
    let dir = settings.base.join("contend");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let io_timeout_ms = io_timeout_s * 1000;
    let seconds = settings.contend_s;
    let join_timeout = Duration::from_secs(60 + 10 * u64::from(io_timeout_s));
    println!("  leaseholdd: two hosts, {seconds} s ...");
    let ours: Vec<Contention> = {
        let device = dir.join("ours.img");
        sparse(&device, device_size_bytes());
        let device = device.display().to_string();
        format_ours(&device, OURS_LOCKSPACE, io_timeout_ms);
        let hosts: Vec<Host> = (1..=2)
            .map(|id| Host::start(&dir, HostSpec::new(id, &device, io_timeout_ms)))
            .collect();
        for h in &hosts {
            wait_joined(h, join_timeout);
        }
        wait_sees_live(&hosts[0], 2, join_timeout);
        wait_sees_live(&hosts[1], 1, join_timeout);
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            let handles: Vec<_> = hosts
                .iter()
                .map(|h| s.spawn(|| ours_contend(h, &barrier, seconds)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("contending client"))
                .collect()
        })
    };
    println!("  sanlock: two hosts, {seconds} s ...");
    let theirs: Vec<Contention> = {
        let path = dir.join("sanlock.img");
        sparse(&path, device_size_bytes());
        let device = sanlock_peer::Device {
            path: path.display().to_string(),
        };
        device.init(io_timeout_s);
        let hosts: Vec<sanlock_peer::Host> = (1..=2)
            .map(|id| sanlock_peer::Host::start(&dir, id))
            .collect();
        std::thread::scope(|s| {
            for h in &hosts {
                let device = &device;
                s.spawn(move || h.add_lockspace(device, io_timeout_s));
            }
        });
        // Let each see the other's renewals, as ours do above.
        std::thread::sleep(Duration::from_secs(u64::from(2 * io_timeout_s) + 1));
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
            + 1.5;
        let clients: Vec<_> = hosts
            .iter()
            .map(|h| {
                h.client(
                    "contend",
                    &device,
                    &[format!("{start:.6}"), format!("{seconds}")],
                )
            })
            .collect();
        clients
            .into_iter()
            .map(|c| theirs_contention(&c.result()))
            .collect()
    };
    let show = |side: &[Contention]| -> (String, u64) {
        let total: u64 = side.iter().map(|c| c.successes).sum();
        let a = side.first().map(|c| c.successes).unwrap_or(0);
        let b = side.get(1).map(|c| c.successes).unwrap_or(0);
        let fair = a.min(b) as f64 / a.max(b).max(1) as f64;
        (format!("{a} / {b} (fairness {fair:.2})"), total)
    };
    let (ours_text, ours_total) = show(&ours);
    let (theirs_text, theirs_total) = show(&theirs);
    report.add(
        format!("2 hosts contending, successes host 1 / host 2 in {seconds} s (file)"),
        ours_text,
        theirs_text,
        ratio(ours_total as f64, theirs_total as f64),
        String::new(),
    );
    let all = |side: &[Contention]| {
        Stats::of(
            &side
                .iter()
                .flat_map(|c| c.acquire_us.iter().copied())
                .collect::<Vec<_>>(),
        )
    };
    let (ours_all, theirs_all) = (all(&ours), all(&theirs));
    report.add(
        "2 hosts contending, acquire latency max (p99) (file)".to_string(),
        format!(
            "{:.1} ms ({:.1} ms)",
            ours_all.max() / 1e3,
            ours_all.percentile(99.0) / 1e3
        ),
        format!(
            "{:.1} ms ({:.1} ms)",
            theirs_all.max() / 1e3,
            theirs_all.percentile(99.0) / 1e3
        ),
        ratio(ours_all.max(), theirs_all.max()),
        String::new(),
    );
    let gap = |side: &[Contention]| {
        side.iter()
            .map(|c| c.longest_gap_s)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    report.add(
        "2 hosts contending, longest wait of a host for a success (file)".to_string(),
        format!("{:.2} s", gap(&ours)),
        format!("{:.2} s", gap(&theirs)),
        ratio(gap(&ours), gap(&theirs)),
        String::new(),
    );
    for (who, side) in [("leasehold", &ours), ("sanlock", &theirs)] {
        for (i, c) in side.iter().enumerate() {
            println!(
                "    {who} host {}: {} acquired, {} attempts, refused {:?}",
                i + 1,
                c.successes,
                c.acquire_us.len(),
                c.refused
            );
        }
    }
}

// ---- item 2: join (unchanged method: ours timed from process start to
// "joined", sanlock from add_lockspace with the daemon already up).

struct Ours {
    daemon_bin: PathBuf,
    cli_bin: PathBuf,
    dir: PathBuf,
    io_timeout_ms: u32,
    /// A block device to use instead of a file in `dir`.
    device: Option<String>,
}

impl Ours {
    fn config(&self) -> PathBuf {
        self.dir.join("leasehold.toml")
    }

    fn prepare(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("dir");
        let device = match &self.device {
            Some(device) => PathBuf::from(device),
            None => {
                let file = self.dir.join("lease.img");
                sparse(&file, device_size_bytes());
                file
            }
        };
        format_ours(&device.display().to_string(), "bench", self.io_timeout_ms);
        let text = format!(
            "[host]\nid = 1\nname = \"benchhost\"\n[lockspace]\nname = \"bench\"\ndevice = \"{dev}\"\nio_timeout_ms = {t}\n[control]\nsocket = \"{d}/sock\"\n[paths]\nrun_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\nevent_log = \"{d}/events.jsonl\"\n",
            dev = device.display(),
            t = self.io_timeout_ms,
            d = self.dir.display()
        );
        std::fs::write(self.config(), text).expect("config");
    }

    fn start(&self) -> Child {
        Command::new(&self.daemon_bin)
            .arg("--config")
            .arg(self.config())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start leaseholdd")
    }

    fn joined(&self) -> bool {
        let out = Command::new(&self.cli_bin)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.join("sock"))
            .output();
        match out {
            Ok(out) if out.status.success() => {
                serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .map(|v| v["lockspaces"][0]["state"] == "joined")
                    .unwrap_or(false)
            }
            _ => false,
        }
    }

    /// Start and time until joined.
    fn timed_start(&self) -> (Child, f64) {
        let started = Instant::now();
        let child = self.start();
        while !self.joined() {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "leaseholdd never joined"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (child, started.elapsed().as_secs_f64())
    }

    fn stop(&self, mut child: Child) {
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = child.wait();
    }
}

/// sanlock's single-host join setup: one device, host 1.
struct Sanlock {
    dir: PathBuf,
    io_timeout_s: u32,
    /// A block device to use instead of a file in `dir`.
    device: Option<String>,
}

impl Sanlock {
    fn device(&self) -> sanlock_peer::Device {
        sanlock_peer::Device {
            path: self
                .device
                .clone()
                .unwrap_or_else(|| self.dir.join("lease.img").display().to_string()),
        }
    }

    fn prepare(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("dir");
        if self.device.is_none() {
            sparse(&self.dir.join("lease.img"), device_size_bytes());
        }
        self.device().init(self.io_timeout_s);
    }

    fn start(&self) -> sanlock_peer::Host {
        sanlock_peer::Host::start(&self.dir, 1)
    }

    /// add_lockspace, timed (the daemon is already up, as ours is timed
    /// from its own start).
    fn timed_join(&self, host: &sanlock_peer::Host) -> f64 {
        host.add_lockspace(&self.device(), self.io_timeout_s)
    }
}

fn join_section(report: &mut Report, settings: &Settings, t: u32) {
    let ours = Ours {
        daemon_bin: leasehold_tests::leaseholdd_bin(),
        cli_bin: leasehold_tests::leasehold_bin(),
        dir: settings.base.join(format!("join-ours-{t}")),
        io_timeout_ms: t * 1000,
        device: None,
    };
    let theirs = Sanlock {
        dir: settings.base.join(format!("join-sanlock-{t}")),
        io_timeout_s: t,
        device: None,
    };
    let (mut ours_clean, mut ours_crash) = (Stats::new(), Stats::new());
    let (mut theirs_clean, mut theirs_crash) = (Stats::new(), Stats::new());
    for run in 0..settings.runs {
        ours.prepare();
        let (mut child, seconds) = ours.timed_start();
        ours_clean.push(seconds);
        let _ = child.kill();
        let _ = child.wait();
        let (child, seconds) = ours.timed_start();
        ours_crash.push(seconds);
        ours.stop(child);

        theirs.prepare();
        let mut daemon = theirs.start();
        theirs_clean.push(theirs.timed_join(&daemon));
        daemon.kill9();
        let daemon = theirs.start();
        theirs_crash.push(theirs.timed_join(&daemon));
        drop(daemon);
        println!(
            "  join run {}: ours {:.2} s / {:.2} s after kill -9, sanlock {:.2} s / {:.2} s",
            run + 1,
            ours_clean.values.last().copied().unwrap_or(f64::NAN),
            ours_crash.values.last().copied().unwrap_or(f64::NAN),
            theirs_clean.values.last().copied().unwrap_or(f64::NAN),
            theirs_crash.values.last().copied().unwrap_or(f64::NAN),
        );
    }
    let mut row = |name: String, a: &Stats, b: &Stats, floor: String| {
        let r = a.median() / b.median();
        report.add(
            name,
            a.show("s"),
            b.show("s"),
            format!(
                "{}{}",
                ratio(a.median(), b.median()),
                verdict(r, |r| r <= 1.0, "≤ 1")
            ),
            floor,
        );
    };
    row(
        format!("join, clean start (io_timeout {t} s)"),
        &ours_clean,
        &theirs_clean,
        format!("{} s (2T settle)", 2 * t),
    );
    row(
        format!("join after kill -9 of the daemon (io_timeout {t} s)"),
        &ours_crash,
        &theirs_crash,
        "≈ 0 (handover of the own generation)".to_string(),
    );
}

/// One kill -9 takeover run of ours: host 1 (watchdog, emulated) holds vm1
/// through `leasehold client run`; host 2 tries to acquire every 50 ms
/// from the kill on. Returns seconds and whether host 1's holder was
/// already dead (killed by its watchdog) when host 2 got the lease.
fn ours_takeover(dir: &Path, io_timeout_s: u32) -> Option<(f64, bool)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let io_timeout_ms = io_timeout_s * 1000;
    let t = u64::from(io_timeout_ms);
    let device = dir.join("lease.img");
    sparse(&device, device_size_bytes());
    let device = device.display().to_string();
    format_ours(&device, OURS_LOCKSPACE, io_timeout_ms);
    let mut victim = Host::start(
        dir,
        HostSpec::new(1, &device, io_timeout_ms).with_watchdog(),
    );
    let survivor = Host::start(dir, HostSpec::new(2, &device, io_timeout_ms));
    let join_timeout = Duration::from_millis(60_000 + 10 * t);
    wait_joined(&victim, join_timeout);
    wait_joined(&survivor, join_timeout);
    let mut holder = match victim.spawn_holder(&["vm1"]) {
        Ok(child) => child,
        Err(e) => {
            println!("  ours: host 1 could not take vm1: {e}");
            return None;
        }
    };
    wait_sees_live(&survivor, 1, join_timeout);
    let waiter = sleeper();
    let pid = waiter.pid();
    let mut client = connect(&survivor);
    register(&mut client, pid);
    if acquire(&mut client, pid, "vm1").ok {
        println!("  ours: host 2 got vm1 while host 1 held it");
        let _ = holder.kill();
        let _ = holder.wait();
        return None;
    }
    // Kill at a random point of host 1's renewal cycle (2T).
    std::thread::sleep(Duration::from_millis(lease::ids::random_u64() % (2 * t)));
    victim.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_millis(40 * t + 60_000);
    let mut result = None;
    while Instant::now() < deadline {
        let holder_dead_before = leasehold_tests::dead(&mut holder);
        if acquire(&mut client, pid, "vm1").ok {
            result = Some((killed.elapsed().as_secs_f64(), holder_dead_before));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if result.is_none() {
        println!("  ours: host 2 never got vm1; its log:\n{}", survivor.log());
    }
    let _ = release(&mut client, pid, "vm1");
    let _ = holder.kill();
    let _ = holder.wait();
    result
}

/// One kill -9 takeover run of sanlock: host 1's python client holds res1,
/// host 2's polls every 50 ms; returns seconds from the kill of host 1's
/// daemon to host 2's acquire.
fn sanlock_takeover(dir: &Path, io_timeout_s: u32) -> Option<f64> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("lease.img");
    sparse(&path, device_size_bytes());
    let device = sanlock_peer::Device {
        path: path.display().to_string(),
    };
    device.init(io_timeout_s);
    let mut victim = sanlock_peer::Host::start(dir, 1);
    let survivor = sanlock_peer::Host::start(dir, 2);
    std::thread::scope(|s| {
        s.spawn(|| victim.add_lockspace(&device, io_timeout_s));
        s.spawn(|| survivor.add_lockspace(&device, io_timeout_s));
    });
    let mut holder = victim.client("hold", &device, &[]);
    holder.expect("held");
    let t = u64::from(io_timeout_s) * 1000;
    let limit_s = (40 * t + 60_000) / 1000;
    let mut poller = survivor.client(
        "takeover",
        &device,
        &["0.05".to_string(), limit_s.to_string()],
    );
    let busy = poller.line();
    if !busy.as_deref().is_some_and(|l| l.starts_with("busy")) {
        println!("  sanlock: host 2 was not refused while host 1 held the lease: {busy:?}");
        return None;
    }
    std::thread::sleep(Duration::from_millis(lease::ids::random_u64() % (2 * t)));
    victim.kill9();
    let killed = Instant::now();
    // The poller says "acquired", "timeout", or dies; each ends the wait.
    let got = poller.line();
    let seconds = killed.elapsed().as_secs_f64();
    drop(holder);
    match got.as_deref() {
        Some("acquired") => Some(seconds),
        other => {
            println!(
                "  sanlock: host 2 never got {} ({busy:?}, then {other:?})",
                sanlock_peer::RESOURCE
            );
            None
        }
    }
}

/// Item 3: kill -9 to another host holding the lease, watchdog rule. The
/// runs of the two systems go side by side (each waits on timeouts).
fn takeover_section(report: &mut Report, settings: &Settings, t: u32) {
    let (mut ours, mut theirs) = (Stats::new(), Stats::new());
    let mut unsafe_runs = 0;
    let runs: Vec<usize> = (0..settings.runs).collect();
    // Runs of a lane round go side by side too: each mostly waits.
    for round in runs.chunks(settings.takeover_lanes.max(1)) {
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = round
                .iter()
                .map(|&run| {
                    let ours_dir = settings.base.join(format!("takeover-ours-{t}-{run}"));
                    let theirs_dir = settings.base.join(format!("takeover-sanlock-{t}-{run}"));
                    (
                        run,
                        s.spawn(move || ours_takeover(&ours_dir, t)),
                        s.spawn(move || sanlock_takeover(&theirs_dir, t)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(run, a, b)| {
                    (
                        run,
                        a.join().expect("ours takeover run"),
                        b.join().expect("sanlock takeover run"),
                    )
                })
                .collect::<Vec<_>>()
        });
        for (run, a, b) in results {
            if let Some((seconds, holder_dead)) = a {
                ours.push(seconds);
                if !holder_dead {
                    unsafe_runs += 1;
                }
            }
            if let Some(seconds) = b {
                theirs.push(seconds);
            }
            println!(
                "  takeover run {}: ours {}, sanlock {}",
                run + 1,
                a.map(|(s, dead)| format!(
                    "{s:.2} s{}",
                    if dead { "" } else { " (HOLDER STILL ALIVE)" }
                ))
                .unwrap_or_else(|| "failed".to_string()),
                b.map(|s| format!("{s:.2} s"))
                    .unwrap_or_else(|| "failed".to_string())
            );
        }
    }
    if unsafe_runs > 0 {
        println!("  WARNING: in {unsafe_runs} run(s) host 2 got the lease while host 1's holder still ran");
    }
    let r = ours.median() / theirs.median();
    report.add(
        format!("takeover after kill -9, watchdog rule, no fence (io_timeout {t} s)"),
        ours.show("s"),
        format!("{} (-w 0)", theirs.show("s")),
        format!("{}{}", ratio(ours.median(), theirs.median()), verdict(r, |r| r <= 1.0, "≤ 1")),
        format!(
            "{} s: 12T after the victim's last renewal (0..2T before the kill), seen at a scan (every 2T)",
            12 * t
        ),
    );
}

/// Item 4: both joined, nothing else running.
/// Completed reads and writes of a block device (/sys/block/NAME/stat).
fn block_ios(device: &str) -> Option<(u64, u64)> {
    let name = Path::new(device).file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/stat")).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.first()?, *fields.get(4)?))
}

fn idle_section(report: &mut Report, settings: &Settings, t: u32) {
    let idle_s = settings.idle_s;
    // On loop devices when we may: their counters give each daemon's I/O
    // operations on the shared device.
    let loops: Option<(Loop, Loop)> = if settings.use_loop {
        let backing = |name: &str| {
            let path = settings.base.join(format!("idle-{name}-{t}.img"));
            std::fs::create_dir_all(&settings.base).expect("dir");
            sparse(&path, device_size_bytes());
            Loop::attach(&path)
        };
        backing("ours").zip(backing("sanlock"))
    } else {
        None
    };
    let ours = Ours {
        daemon_bin: leasehold_tests::leaseholdd_bin(),
        cli_bin: leasehold_tests::leasehold_bin(),
        dir: settings.base.join(format!("idle-ours-{t}")),
        io_timeout_ms: t * 1000,
        device: loops.as_ref().map(|(l, _)| l.0.clone()),
    };
    let theirs = Sanlock {
        dir: settings.base.join(format!("idle-sanlock-{t}")),
        io_timeout_s: t,
        device: loops.as_ref().map(|(_, l)| l.0.clone()),
    };
    ours.prepare();
    let (ours_child, _) = ours.timed_start();
    theirs.prepare();
    let theirs_host = theirs.start();
    theirs.timed_join(&theirs_host);
    let ours_pid = ours_child.id();
    let theirs_pid = theirs_host.daemon_pid();
    let (ours_cpu0, _) = cpu_s_and_rss_kib(ours_pid);
    let (theirs_cpu0, _) = cpu_s_and_rss_kib(theirs_pid);
    let ours_io0 = io_bytes(ours_pid);
    let theirs_io0 = io_bytes(theirs_pid);
    let ops = |l: &Option<(Loop, Loop)>| {
        l.as_ref()
            .and_then(|(a, b)| block_ios(&a.0).zip(block_ios(&b.0)))
    };
    let ops0 = ops(&loops);
    std::thread::sleep(Duration::from_secs(idle_s));
    let ops1 = ops(&loops);
    let (ours_cpu1, ours_rss) = cpu_s_and_rss_kib(ours_pid);
    let (theirs_cpu1, theirs_rss) = cpu_s_and_rss_kib(theirs_pid);
    let ours_io1 = io_bytes(ours_pid);
    let theirs_io1 = io_bytes(theirs_pid);
    let ours_mb = ours_rss as f64 / 1024.0;
    let theirs_mb = theirs_rss as f64 / 1024.0;
    report.add(
        format!("idle RSS after {idle_s} s (io_timeout {t} s)"),
        format!("{ours_mb:.1} MB"),
        format!("{theirs_mb:.1} MB"),
        ratio(ours_mb, theirs_mb),
        String::new(),
    );
    // RSS counts shared libraries whole (libvirt's, for us); PSS splits
    // them among their users; anonymous memory is the daemon's own.
    let mb = |kib: u64| kib as f64 / 1024.0;
    let ours_memory = i32::try_from(ours_pid)
        .ok()
        .and_then(leasehold_tests::memory_kib);
    let theirs_memory = i32::try_from(theirs_pid)
        .ok()
        .and_then(leasehold_tests::memory_kib);
    if let (Some((_, ours_pss, ours_private)), Some((_, theirs_pss, theirs_private))) =
        (ours_memory, theirs_memory)
    {
        report.add(
            format!("idle PSS / private (anonymous) memory after {idle_s} s (io_timeout {t} s)"),
            format!("{:.1} / {:.1} MB", mb(ours_pss), mb(ours_private)),
            format!("{:.1} / {:.1} MB", mb(theirs_pss), mb(theirs_private)),
            format!(
                "{} (private){}",
                ratio(mb(ours_private), mb(theirs_private)),
                verdict(mb(ours_private), |m| m <= 5.0, "private ≤ 5 MB")
            ),
            String::new(),
        );
    }
    let ours_cpu = (ours_cpu1 - ours_cpu0) / idle_s as f64 * 100.0;
    let theirs_cpu = (theirs_cpu1 - theirs_cpu0) / idle_s as f64 * 100.0;
    report.add(
        format!("idle CPU over {idle_s} s (io_timeout {t} s)"),
        format!("{ours_cpu:.3} %"),
        format!("{theirs_cpu:.3} %"),
        format!(
            "{}{}",
            ratio(ours_cpu, theirs_cpu),
            verdict(ours_cpu / theirs_cpu, |r| r <= 1.5, "≤ 1.5× sanlock")
        ),
        String::new(),
    );
    let kib_s = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1024.0 / idle_s as f64;
    let ours_read = kib_s(ours_io0.0, ours_io1.0);
    let theirs_read = kib_s(theirs_io0.0, theirs_io1.0);
    report.add(
        format!("idle device I/O over {idle_s} s, read / write (io_timeout {t} s)"),
        format!(
            "{ours_read:.1} / {:.1} KiB/s",
            kib_s(ours_io0.1, ours_io1.1)
        ),
        format!(
            "{theirs_read:.1} / {:.1} KiB/s",
            kib_s(theirs_io0.1, theirs_io1.1)
        ),
        ratio(ours_read, theirs_read),
        String::new(),
    );
    if let (Some((ours0, theirs0)), Some((ours1, theirs1))) = (ops0, ops1) {
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / idle_s as f64;
        let ours_ops = per_s(ours0.0, ours1.0) + per_s(ours0.1, ours1.1);
        let theirs_ops = per_s(theirs0.0, theirs1.0) + per_s(theirs0.1, theirs1.1);
        report.add(
            format!(
                "idle device operations over {idle_s} s, reads + writes (loop, io_timeout {t} s)"
            ),
            format!(
                "{:.1} + {:.1} /s",
                per_s(ours0.0, ours1.0),
                per_s(ours0.1, ours1.1)
            ),
            format!(
                "{:.1} + {:.1} /s",
                per_s(theirs0.0, theirs1.0),
                per_s(theirs0.1, theirs1.1)
            ),
            format!(
                "{}{}",
                ratio(ours_ops, theirs_ops),
                verdict(ours_ops / theirs_ops, |r| r <= 2.0, "≤ 2× sanlock")
            ),
            String::new(),
        );
    }
    ours.stop(ours_child);
    drop(theirs_host);
    drop(loops);
}

fn shell_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("daemon_vs_sanlock: bench");
        return;
    }
    // `cargo bench` passes --bench; ignore other arguments.
    sanlock_peer::ensure_installed();
    let settings = Settings {
        runs: env_or("LEASEHOLD_BENCH_RUNS", 5),
        cycles: env_or("LEASEHOLD_BENCH_CYCLES", 200),
        cli_cycles: env_or("LEASEHOLD_BENCH_CLI_CYCLES", 100),
        contend_s: env_or("LEASEHOLD_BENCH_CONTEND_S", 10.0),
        takeover_lanes: env_or("LEASEHOLD_BENCH_TAKEOVER_LANES", 2),
        idle_s: env_or("LEASEHOLD_BENCH_IDLE_S", 60),
        use_loop: env_or("LEASEHOLD_BENCH_LOOP", 1) != 0,
        only: std::env::var("LEASEHOLD_BENCH_ONLY")
            .unwrap_or_else(|_| "cycles,contend,join,takeover,idle".to_string())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect(),
        base: PathBuf::from(
            std::env::var("LEASEHOLD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".to_string()),
        )
        .join(format!("leasehold-bench-daemon-{}", std::process::id())),
    };
    let timeouts: Vec<u32> = std::env::var("LEASEHOLD_BENCH_IO_TIMEOUTS_S")
        .unwrap_or_else(|_| "1".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let first_t = timeouts.first().copied().unwrap_or(1);
    // Build the binaries before anything is timed.
    let _ = leasehold_tests::leaseholdd_bin();
    let _ = leasehold_tests::leasehold_bin();
    let _ = leasehold_tests::watchdog_emu_bin();
    let started = Instant::now();
    println!(
        "leaseholdd vs sanlock ({}), devices under {}, io_timeout(s) {timeouts:?} s",
        shell_line("sanlock", &["version"]),
        settings.base.display()
    );
    println!(
        "{:<58} {:>30} {:>30} {:>12} floor",
        "figure", "leasehold", "sanlock", "ratio"
    );
    let mut report = Report::default();
    if settings.wants("cycles") {
        println!(
            "acquire+release, one host, {} cycles, io_timeout {first_t} s:",
            settings.cycles
        );
        let file = |backing: &Path| -> MadeDevice {
            sparse(backing, device_size_bytes());
            Some((backing.display().to_string(), None))
        };
        cycles_section(&mut report, &settings, "file", first_t, &file);
        if settings.use_loop {
            let looped = |backing: &Path| -> MadeDevice {
                sparse(backing, device_size_bytes());
                let device = Loop::attach(backing)?;
                Some((device.0.clone(), Some(device)))
            };
            cycles_section(&mut report, &settings, "loop", first_t, &looped);
        }
    }
    if settings.wants("contend") {
        println!("two hosts contending, io_timeout {first_t} s:");
        contend_section(&mut report, &settings, first_t);
    }
    for &t in &timeouts {
        if settings.wants("join") {
            println!("join, io_timeout {t} s, {} runs:", settings.runs);
            join_section(&mut report, &settings, t);
        }
        if settings.wants("takeover") {
            println!(
                "takeover after kill -9, io_timeout {t} s, {} runs:",
                settings.runs
            );
            takeover_section(&mut report, &settings, t);
        }
        if settings.wants("idle") {
            println!("idle, io_timeout {t} s, {} s:", settings.idle_s);
            idle_section(&mut report, &settings, t);
        }
    }
    let _ = std::fs::remove_dir_all(&settings.base);

    let knobs: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("LEASEHOLD_BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!();
    println!(
        "Measured {} ({} CPUs, kernel {}) in {:.0} s with:",
        shell_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        shell_line("uname", &["-r"]),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "    {}cargo bench -p leasehold-benches --bench daemon_vs_sanlock",
        knobs.iter().map(|k| format!("{k} ")).collect::<String>()
    );
    println!();
    print!("{}", report.markdown());
    println!();
    let runs = settings.runs;
    let cycles = settings.cycles;
    let cli_cycles = settings.cli_cycles;
    let slots = ours_max_resources();
    let dir = settings
        .base
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let version = shell_line("sanlock", &["version"]);
    println!(
        "- Each figure: median [min..max] over {runs} runs, or over ~20 batches (rates) or every \
operation (latencies) of {cycles} acquire+release cycles ({cli_cycles} through the CLIs).
- ratio = leasehold / sanlock: for rates higher is better, for times, sizes and loads lower is better.
- floor: the device's own time for the I/O a figure needs, measured in the same run on the same \
device (lease_io's formula for a cycle); for timeout-bound figures, the least our timeouts allow.
- Devices: a file under {dir}, and a loop device over one (`losetup --direct-io=on`). leasehold \
formatted as `leasehold format` does by default ({OURS_MAX_HOSTS} host slots, {slots} resource \
slots), sanlock {version} with its default 1 MiB lockspace and resource areas; the same io_timeout.
- Clients: ours through the control socket (one connection, a registered pid) or the `lease` \
library in-process; sanlock through python3-sanlock (one registered connection, in-process \
libsanlock calls, as vdsm does). The CLI rows start a process per call on both sides.
- An acquire by name finds its slot along the name's probe sequence (one leader read, usually) \
and, once the slot carries the NAME_CHECKED mark, runs paxos without a duplicate check; \"by \
slot\" is the paxos protocol alone, as sanlock's RESOURCE names its offset.
- sanlock runs unprivileged, one daemon per host (its own SANLOCK_RUN_DIR), with `-w 0`: no \
watchdog daemon, so after kill -9 nothing stops the victim's lease holder (with wdmd the host \
would be reset); its takeover still waits 8T + 60 s. Our killed host runs an emulated watchdog \
(a FIFO whose expiry SIGKILLs the host's processes), so the watchdog rule applies.
- Takeover with fencing through ipmi_sim (power-off to every VM running again) is measured by \
`cargo bench -p leasehold-benches --bench failover`, not here."
    );
}
