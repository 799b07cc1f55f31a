//! sanlock as the benchmark's peer: one unprivileged `sanlock daemon` per
//! simulated host (its own SANLOCK_RUN_DIR, `-w 0`: no wdmd), a lockspace
//! and one resource lease initialised with `sanlock direct init`, and
//! clients in python3-sanlock (libsanlock, in-process calls on one
//! registered connection: what vdsm does) or the `sanlock client` CLI.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's python with python3-sanlock (a pyenv `python3` on PATH may
/// not see dist-packages).
pub const PYTHON: &str = "/usr/bin/python3";

/// The lockspace's name on the sanlock device.
pub const LOCKSPACE: &str = "bench";
/// The resource lease, right after the lockspace's 1 MiB area (512-byte
/// sectors, 1 MiB alignment: sanlock's default geometry).
pub const RESOURCE: &str = "res1";
pub const RESOURCE_OFFSET: u64 = 1 << 20;

/// The python client: `MODE LOCKSPACE RESOURCE PATH OFFSET ARGS...`.
/// - cycles N WARMUP: N timed acquire+release cycles, JSON [[acq_us, rel_us], ...]
/// - contend START_EPOCH_S DURATION_S: try-acquire (+ release on success)
///   in a loop, JSON summary
/// - hold: acquire, say "held", wait for stdin to close
/// - idle: register only, say "ready", wait for stdin to close
/// - takeover POLL_S LIMIT_S: try to acquire every POLL_S, say "busy ERRNO"
///   after the first refusal, "acquired" on success (then wait for stdin)
///   or "timeout" after LIMIT_S
const CLIENT: &str = r#"
import json, sys, time
import sanlock
mode, ls, res, path, off = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode(), sys.argv[4], int(sys.argv[5])
disks = [(path, off)]
fd = sanlock.register()
def acquire():
    sanlock.acquire(ls, res, disks, slkfd=fd)
def release():
    sanlock.release(ls, res, disks, slkfd=fd)
if mode == "cycles":
    n, warm = int(sys.argv[6]), int(sys.argv[7])
    out = []
    for i in range(warm + n):
        a = time.monotonic(); acquire(); b = time.monotonic(); release(); c = time.monotonic()
        if i >= warm:
            out.append([(b - a) * 1e6, (c - b) * 1e6])
    print(json.dumps(out), flush=True)
elif mode == "contend":
    start, duration = float(sys.argv[6]), float(sys.argv[7])
    while time.time() < start:
        time.sleep(0.0005)
    t0 = time.monotonic()
    end = t0 + duration
    ok = 0; refused = {}; lat = []; last_ok = t0; gap = 0.0
    while time.monotonic() < end:
        a = time.monotonic()
        try:
            acquire(); got = True
        except sanlock.SanlockException as e:
            got = False; refused[str(e.errno)] = refused.get(str(e.errno), 0) + 1
        b = time.monotonic()
        lat.append((b - a) * 1e6)
        if got:
            ok += 1; gap = max(gap, b - last_ok); last_ok = b
            release()
    gap = max(gap, time.monotonic() - last_ok)
    print(json.dumps({"successes": ok, "refused": refused, "acquire_us": lat, "longest_gap_s": gap}), flush=True)
elif mode == "hold":
    acquire()
    print("held", flush=True)
    sys.stdin.read()
elif mode == "idle":
    print("ready", flush=True)
    sys.stdin.read()
elif mode == "takeover":
    poll, limit = float(sys.argv[6]), float(sys.argv[7])
    said = False
    deadline = time.monotonic() + limit
    while True:
        try:
            acquire(); break
        except sanlock.SanlockException as e:
            if not said:
                print("busy %d" % e.errno, flush=True); said = True
        if time.monotonic() > deadline:
            print("timeout", flush=True); sys.exit(1)
        time.sleep(poll)
    print("acquired", flush=True)
    sys.stdin.read()
"#;

/// A lease device as sanlock lays it out: lockspace at 0, one resource.
#[derive(Clone, Debug)]
pub struct Device {
    pub path: String,
}

impl Device {
    /// `sanlock direct init` of the lockspace and the resource.
    pub fn init(&self, io_timeout_s: u32) {
        for what in [
            ["-s".to_string(), format!("{LOCKSPACE}:0:{}:0", self.path)],
            ["-r".to_string(), self.resource()],
        ] {
            let out = Command::new("sanlock")
                .args(["direct", "init", "-o", &io_timeout_s.to_string()])
                .args(what)
                .output()
                .expect("sanlock direct init");
            assert!(
                out.status.success(),
                "sanlock direct init failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn lockspace(&self, host_id: u32) -> String {
        format!("{LOCKSPACE}:{host_id}:{}:0", self.path)
    }

    pub fn resource(&self) -> String {
        format!("{LOCKSPACE}:{RESOURCE}:{}:{RESOURCE_OFFSET}", self.path)
    }
}

/// One simulated host's sanlock daemon.
pub struct Host {
    pub run_dir: PathBuf,
    pub host_id: u32,
    daemon: Option<Child>,
}

impl Host {
    /// `sanlock daemon -D -w 0 -e hostN` with its own run dir; returns once
    /// its socket is there.
    pub fn start(dir: &Path, host_id: u32) -> Host {
        let run_dir = dir.join(format!("sanlock-host{host_id}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).expect("sanlock run dir");
        let log = std::fs::File::create(run_dir.join("daemon.log")).expect("sanlock log");
        let mut host = Host {
            run_dir,
            host_id,
            daemon: None,
        };
        let daemon = host
            .sanlock()
            .args(["daemon", "-D", "-w", "0", "-e", &format!("host{host_id}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sanlock daemon");
        host.daemon = Some(daemon);
        let started = Instant::now();
        while !host.run_dir.join("sanlock.sock").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "sanlock did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        host
    }

    /// `sanlock` with this host's environment.
    pub fn sanlock(&self) -> Command {
        let mut command = Command::new("sanlock");
        command
            .env("SANLOCK_PRIVILEGED", "0")
            .env("SANLOCK_RUN_DIR", &self.run_dir);
        command
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `sanlock client add_lockspace`, timed.
    pub fn add_lockspace(&self, device: &Device, io_timeout_s: u32) -> f64 {
        let started = Instant::now();
        let out = self
            .sanlock()
            .args(["client", "add_lockspace", "-o", &io_timeout_s.to_string()])
            .arg("-s")
            .arg(device.lockspace(self.host_id))
            .output()
            .expect("sanlock client add_lockspace");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("done 0"),
            "sanlock add_lockspace failed: {text}"
        );
        started.elapsed().as_secs_f64()
    }

    /// SIGKILL the daemon (its helper process exits with it).
    pub fn kill9(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }

    /// A python3-sanlock client of this host.
    pub fn client(&self, mode: &str, device: &Device, args: &[String]) -> PyClient {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(CLIENT)
            .arg(mode)
            .arg(LOCKSPACE)
            .arg(RESOURCE)
            .arg(&device.path)
            .arg(RESOURCE_OFFSET.to_string())
            .args(args)
            .env("SANLOCK_PRIVILEGED", "0")
            .env("SANLOCK_RUN_DIR", &self.run_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 (apt-get install python3-sanlock)");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("client stdout"));
        PyClient {
            child,
            stdin,
            stdout,
        }
    }

    /// One `sanlock client acquire|release -r RESOURCE -p PID`, timed.
    pub fn cli(&self, action: &str, device: &Device, pid: u32) -> f64 {
        let started = Instant::now();
        let out = self
            .sanlock()
            .args(["client", action, "-r"])
            .arg(device.resource())
            .args(["-p", &pid.to_string()])
            .output()
            .expect("sanlock client");
        let elapsed = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{action} done 0")),
            "sanlock client {action} failed: {text}"
        );
        elapsed
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running python3-sanlock client.
pub struct PyClient {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl PyClient {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints (None at its exit).
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_string()),
        }
    }

    /// Wait for a line starting with `word`; panics if it exits first.
    pub fn expect(&mut self, word: &str) -> String {
        loop {
            match self.line() {
                Some(line) if line.starts_with(word) => return line,
                Some(_) => {}
                None => panic!("sanlock python client exited before saying {word:?}"),
            }
        }
    }

    /// Its JSON result (modes cycles and contend), after which it exits.
    pub fn result(mut self) -> serde_json::Value {
        let line = self
            .line()
            .expect("the sanlock python client failed (see its traceback above)");
        let _ = self.child.wait();
        serde_json::from_str(&line).expect("JSON from the sanlock python client")
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is python3-sanlock importable?
pub fn python_ok() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import sanlock"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_install(packages: &[&str]) -> bool {
    Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y"])
        .args(packages)
        .status()
        .is_ok_and(|s| s.success())
}

/// sanlock and python3-sanlock, installed with apt-get when missing.
pub fn ensure_installed() {
    let have_sanlock = Command::new("sanlock").arg("version").output().is_ok();
    if have_sanlock && python_ok() {
        return;
    }
    let packages = ["sanlock", "python3-sanlock"];
    if !apt_install(&packages) {
        let _ = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "update"])
            .status();
        assert!(
            apt_install(&packages),
            "apt-get install sanlock python3-sanlock failed"
        );
    }
    assert!(python_ok(), "{PYTHON} cannot import sanlock");
}
