//! leaseholdd next to sanlock, in one run, on the same kind of device (a
//! file under /var/tmp) with the same io_timeout: lockspace join time from
//! a clean start and after `kill -9` of the daemon, and idle RSS and CPU.
//!
//! cargo bench -p leasehold-benches --bench daemon_vs_sanlock
//!
//! LEASEHOLD_BENCH_RUNS (default 5), LEASEHOLD_BENCH_IO_TIMEOUTS_S (default
//! "1"; "1,10" adds the sanlock default), LEASEHOLD_BENCH_IDLE_S (default
//! 60), LEASEHOLD_BENCH_DIR (default /var/tmp). Installs sanlock with
//! apt-get when missing (run as root).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ensure_sanlock() {
    if Command::new("sanlock").arg("version").output().is_ok() {
        return;
    }
    let status = Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "sanlock"])
        .status()
        .expect("apt-get");
    assert!(status.success(), "apt-get install sanlock failed");
}

struct Stats {
    values: Vec<f64>,
}

impl Stats {
    fn new() -> Stats {
        Stats { values: Vec::new() }
    }
    fn push(&mut self, v: f64) {
        self.values.push(v);
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
        format!(
            "{:.2} {unit} [{:.2}..{:.2}]",
            self.median(),
            self.min(),
            self.max()
        )
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

struct Ours {
    daemon_bin: PathBuf,
    cli_bin: PathBuf,
    dir: PathBuf,
    io_timeout_ms: u32,
}

impl Ours {
    fn config(&self) -> PathBuf {
        self.dir.join("leasehold.toml")
    }

    fn prepare(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("dir");
        let device = self.dir.join("lease.img");
        let file = std::fs::File::create(&device).expect("device");
        file.set_len(16 << 20).expect("size");
        let status = Command::new(&self.cli_bin)
            .arg("format")
            .arg(&device)
            .args([
                "--lockspace",
                "bench",
                "--max-hosts",
                "64",
                "--max-resources",
                "16",
            ])
            .arg("--io-timeout")
            .arg(format!("{}", f64::from(self.io_timeout_ms) / 1000.0))
            .stdout(Stdio::null())
            .status()
            .expect("format");
        assert!(status.success());
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

struct Sanlock {
    dir: PathBuf,
    io_timeout_s: u32,
}

impl Sanlock {
    fn device(&self) -> String {
        self.dir.join("lease.img").display().to_string()
    }

    fn sanlock(&self) -> Command {
        let mut command = Command::new("sanlock");
        command
            .env("SANLOCK_PRIVILEGED", "0")
            .env("SANLOCK_RUN_DIR", self.dir.join("run"));
        command
    }

    fn prepare(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(self.dir.join("run")).expect("dir");
        let file = std::fs::File::create(self.device()).expect("device");
        file.set_len(16 << 20).expect("size");
        let status = self
            .sanlock()
            .args(["direct", "init", "-o"])
            .arg(self.io_timeout_s.to_string())
            .arg("-s")
            .arg(format!("bench:0:{}:0", self.device()))
            .stdout(Stdio::null())
            .status()
            .expect("sanlock direct init");
        assert!(status.success());
    }

    fn start(&self) -> Child {
        let child = self
            .sanlock()
            .args(["daemon", "-D", "-w", "0", "-e", "benchhost"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sanlock");
        let started = Instant::now();
        while !self.dir.join("run").join("sanlock.sock").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "sanlock did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        child
    }

    /// add_lockspace, timed (the daemon is already up, as ours is timed
    /// from its own start).
    fn timed_join(&self) -> f64 {
        let started = Instant::now();
        let out = self
            .sanlock()
            .args(["client", "add_lockspace", "-o"])
            .arg(self.io_timeout_s.to_string())
            .arg("-s")
            .arg(format!("bench:1:{}:0", self.device()))
            .output()
            .expect("add_lockspace");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("done 0"),
            "sanlock add_lockspace failed: {text}"
        );
        started.elapsed().as_secs_f64()
    }

    fn pid(&self, child: &Child) -> u32 {
        child.id()
    }
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    ensure_sanlock();
    let runs: usize = env_or("LEASEHOLD_BENCH_RUNS", 5);
    let idle_s: u64 = env_or("LEASEHOLD_BENCH_IDLE_S", 60);
    let base = PathBuf::from(
        std::env::var("LEASEHOLD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".to_string()),
    )
    .join(format!("leasehold-bench-daemon-{}", std::process::id()));
    let timeouts: Vec<u32> = std::env::var("LEASEHOLD_BENCH_IO_TIMEOUTS_S")
        .unwrap_or_else(|_| "1".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let daemon_bin = leasehold_tests::leaseholdd_bin();
    let cli_bin = leasehold_tests::leasehold_bin();
    println!(
        "leaseholdd vs sanlock, file-backed devices in {}, {runs} runs each",
        base.display()
    );
    println!(
        "{:<44} {:>26} {:>26} {:>8}",
        "figure", "leasehold", "sanlock", "ratio"
    );
    for t in timeouts {
        let ours = Ours {
            daemon_bin: daemon_bin.clone(),
            cli_bin: cli_bin.clone(),
            dir: base.join(format!("ours-{t}")),
            io_timeout_ms: t * 1000,
        };
        let theirs = Sanlock {
            dir: base.join(format!("sanlock-{t}")),
            io_timeout_s: t,
        };
        let (mut ours_clean, mut ours_crash) = (Stats::new(), Stats::new());
        let (mut theirs_clean, mut theirs_crash) = (Stats::new(), Stats::new());
        for _ in 0..runs {
            ours.prepare();
            let (child, seconds) = ours.timed_start();
            ours_clean.push(seconds);
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            let (child, seconds) = ours.timed_start();
            ours_crash.push(seconds);
            ours.stop(child);

            theirs.prepare();
            let mut daemon = theirs.start();
            theirs_clean.push(theirs.timed_join());
            let _ = daemon.kill();
            let _ = daemon.wait();
            let daemon2 = theirs.start();
            theirs_crash.push(theirs.timed_join());
            let mut daemon2 = daemon2;
            let _ = daemon2.kill();
            let _ = daemon2.wait();
        }
        let row = |name: &str, a: &Stats, b: &Stats| {
            println!(
                "{:<44} {:>26} {:>26} {:>8.2}",
                name,
                a.show("s"),
                b.show("s"),
                a.median() / b.median()
            );
        };
        row(
            &format!("join, clean start (io_timeout {t} s)"),
            &ours_clean,
            &theirs_clean,
        );
        row(
            &format!("join after kill -9 of the daemon ({t} s)"),
            &ours_crash,
            &theirs_crash,
        );

        // Idle: both joined, nothing else running.
        ours.prepare();
        let (ours_child, _) = ours.timed_start();
        theirs.prepare();
        let theirs_child = theirs.start();
        theirs.timed_join();
        let ours_pid = ours_child.id();
        let theirs_pid = theirs.pid(&theirs_child);
        let (ours_cpu0, _) = cpu_s_and_rss_kib(ours_pid);
        let (theirs_cpu0, _) = cpu_s_and_rss_kib(theirs_pid);
        std::thread::sleep(Duration::from_secs(idle_s));
        let (ours_cpu1, ours_rss) = cpu_s_and_rss_kib(ours_pid);
        let (theirs_cpu1, theirs_rss) = cpu_s_and_rss_kib(theirs_pid);
        println!(
            "{:<44} {:>26} {:>26} {:>8.2}",
            format!("idle RSS after {idle_s} s ({t} s)"),
            format!("{:.1} MB", ours_rss as f64 / 1024.0),
            format!("{:.1} MB", theirs_rss as f64 / 1024.0),
            ours_rss as f64 / theirs_rss.max(1) as f64
        );
        let ours_cpu = (ours_cpu1 - ours_cpu0) / idle_s as f64 * 100.0;
        let theirs_cpu = (theirs_cpu1 - theirs_cpu0) / idle_s as f64 * 100.0;
        println!(
            "{:<44} {:>26} {:>26} {:>8.2}",
            format!("idle CPU over {idle_s} s ({t} s)"),
            format!("{ours_cpu:.3} %"),
            format!("{theirs_cpu:.3} %"),
            ours_cpu / theirs_cpu.max(1e-9)
        );
        ours.stop(ours_child);
        let mut theirs_child = theirs_child;
        let _ = theirs_child.kill();
        let _ = theirs_child.wait();
    }
    let _ = std::fs::remove_dir_all(&base);
}
