//! Helpers for the multi-process tests: the `leasehold` binary, scratch
//! directories and loop devices that clean up after themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod bmc;
pub mod cluster;
pub mod daemon;
pub mod libvirt_proxy;
pub mod san;
pub mod web;

/// Path of the `leasehold` binary of this build, built on first use.
pub fn leasehold_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("leasehold-tools", "leasehold"))
        .clone()
}

/// The daemon binary, built on first use; `LEASEHOLD_TEST_LEASEHOLDD`
/// names another build to test instead (e.g. an older commit's, to see a
/// regression test fail there).
pub fn leaseholdd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("LEASEHOLD_TEST_LEASEHOLDD") {
        Some(path) => PathBuf::from(path),
        None => build_bin("leasehold-daemon", "leaseholdd"),
    })
    .clone()
}

/// The watchdog emulator, built on first use.
pub fn watchdog_emu_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("leasehold-tests", "watchdog_emu"))
        .clone()
}

/// Build one binary of the workspace in the test's own profile.
/// The libvirt lock-manager plugin (a cdylib), built on first use;
/// `LEASEHOLD_TEST_LOCKDRIVER` names another build, like
/// [`leaseholdd_bin`]'s variable.
pub fn lockdriver_so() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| match std::env::var_os("LEASEHOLD_TEST_LOCKDRIVER") {
        Some(path) => PathBuf::from(path),
        None => build_artifact("leasehold-lockdriver", None, "libleasehold_lockdriver.so"),
    })
    .clone()
}

/// The helper that plays libvirt's side of the lock plugin in tests.
pub fn lockdriver_client_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("leasehold-tests", "lockdriver_client"))
        .clone()
}

fn build_bin(package: &str, name: &str) -> PathBuf {
    build_artifact(package, Some(name), name)
}

/// `cargo build -p package [--bin bin]` in this test's profile; the path
/// of `file` in the profile directory.
fn build_artifact(package: &str, bin: Option<&str>, file: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let name = file;
    let bin_path = profile_dir.join(file);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package]);
    if let Some(bin) = bin {
        build.args(["--bin", bin]);
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    assert!(
        bin_path.exists(),
        "{} missing after build",
        bin_path.display()
    );
    bin_path
}

/// Run `leasehold` with `args`; returns the whole output.
pub fn leasehold(args: &[&str]) -> Output {
    Command::new(leasehold_bin())
        .args(args)
        .output()
        .expect("run leasehold")
}

/// Run `leasehold` and insist on success; returns stdout.
pub fn leasehold_ok(args: &[&str]) -> String {
    let out = leasehold(args);
    assert!(
        out.status.success(),
        "leasehold {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory removed on drop. Lives under /var/tmp (a real disk
/// filesystem that supports O_DIRECT; /tmp may be tmpfs, which does not).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let base = std::env::var("LEASEHOLD_TEST_DIR").unwrap_or_else(|_| "/var/tmp".to_string());
        let unique = format!(
            "leasehold-{label}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let path = Path::new(&base).join(unique);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }

    pub fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }
}

impl Scratch {
    /// A scratch directory with a short path (`/var/tmp/lh-LABEL-PID`):
    /// for libvirt, whose UNIX socket paths must fit in 108 bytes.
    pub fn short(label: &str) -> Scratch {
        let path = Path::new("/var/tmp").join(format!("lh-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("LEASEHOLD_KEEP_SCRATCH").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loop device over a backing file, detached on drop (also when a test
/// panics).
pub struct LoopDevice {
    pub path: String,
}

impl LoopDevice {
    /// `losetup -f --show --direct-io=on [--sector-size N] FILE`. Needs root.
    /// Fails the test unless LEASEHOLD_SKIP_LOOP=1 is set, in which case it
    /// returns None and the caller skips the loop-device part.
    pub fn attach(backing: &str, sector_size_bytes: u32) -> Option<LoopDevice> {
        LoopDevice::attach_with(backing, sector_size_bytes, "on")
    }

    /// Like [`LoopDevice::attach`], but through the backing file's page
    /// cache: for a file that another path reaches with buffered I/O too
    /// (nbdkit's file and python plugins), so that both paths see one
    /// cache. Mixed, a direct write can fail to invalidate a page the other
    /// path dirtied, whose writeback then puts the old sector back.
    pub fn attach_buffered(backing: &str, sector_size_bytes: u32) -> Option<LoopDevice> {
        LoopDevice::attach_with(backing, sector_size_bytes, "off")
    }

    fn attach_with(backing: &str, sector_size_bytes: u32, direct_io: &str) -> Option<LoopDevice> {
        let out = Command::new("losetup")
            .args([
                "-f",
                "--show",
                &format!("--direct-io={direct_io}"),
                "--sector-size",
                &sector_size_bytes.to_string(),
                backing,
            ])
            .output();
        match out {
            Ok(out) if out.status.success() => Some(LoopDevice {
                path: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            }),
            other => {
                if std::env::var("LEASEHOLD_SKIP_LOOP").as_deref() == Ok("1") {
                    eprintln!("skipping loop device part: losetup failed: {other:?}");
                    None
                } else {
                    panic!("losetup failed (run as root, or set LEASEHOLD_SKIP_LOOP=1 to skip): {other:?}");
                }
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

/// Create a sparse file of `size_bytes`.
/// A process's memory in KiB: (RSS, PSS, anonymous = private), from
/// /proc/PID/smaps_rollup. Most of an RSS can be shared libraries; PSS
/// splits shared pages among their users; anonymous memory is the
/// process's own.
pub fn memory_kib(pid: i32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Rss:")?, field("Pss:")?, field("Anonymous:")?))
}

/// Reads and writes a block device has completed (its /sys/block stat),
/// e.g. "/dev/loop3".
pub fn block_ops(device: &str) -> Option<(u64, u64)> {
    let name = device.rsplit('/').next()?;
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).ok()?;
    let fields: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.first()?, *fields.get(4)?))
}

pub fn sparse_file(path: &str, size_bytes: u64) {
    let file = std::fs::File::create(path).expect("create backing file");
    file.set_len(size_bytes).expect("size backing file");
}

/// Parse `leasehold dump --json`.
pub fn dump_json(device: &str) -> serde_json::Value {
    let out = leasehold_ok(&["dump", device, "--json"]);
    serde_json::from_str(&out).expect("dump --json is JSON")
}

/// A block device whose I/O can be paused: nbdkit (memory plugin, pause
/// filter) exported through nbdfuse as a file, with a loop device on top.
/// Everything is torn down on drop, the device resumed first.
pub struct PausableDevice {
    dir: Scratch,
    nbdfuse: Option<std::process::Child>,
    nbdkit_pid: Option<i32>,
    pub loop_device: Option<LoopDevice>,
    /// The hold control file of a write-holding device.
    hold_control: Option<PathBuf>,
}

static HOLD_IDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One offset a line.
fn offsets_in(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl PausableDevice {
    /// A fresh in-memory disk of `size_bytes`.
    pub fn start(size_bytes: u64) -> PausableDevice {
        PausableDevice::launch(&["memory".to_string(), size_bytes.to_string()])
    }

    /// Another path to the existing file `backing`: what one host sees of
    /// shared storage, pausable (a hang) and failable (EIO) for that host
    /// alone while the others use the file directly.
    pub fn over_file(backing: &str) -> PausableDevice {
        PausableDevice::launch(&["file".to_string(), backing.to_string()])
    }

    /// Another path to `backing`, like [`PausableDevice::over_file`], whose
    /// writes into one byte range can also be held back while reads and
    /// other writes go on (nbdkit's python plugin running
    /// tests/support/nbd/hold_writes.py): a write that sits in this host's
    /// storage path and reaches the disk late.
    pub fn over_file_holding_writes(backing: &str) -> PausableDevice {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/nbd/hold_writes.py");
        let id = HOLD_IDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let control = std::env::temp_dir().join(format!("lh-hold-{}-{id}", std::process::id()));
        let _ = std::fs::remove_file(&control);
        let mut device = PausableDevice::launch(&[
            "python".to_string(),
            script.display().to_string(),
            format!("file={backing}"),
            format!("hold={}", control.display()),
        ]);
        device.hold_control = Some(control);
        device
    }

    fn hold_path(&self, suffix: &str) -> PathBuf {
        let control = self
            .hold_control
            .as_ref()
            .expect("a device from over_file_holding_writes");
        PathBuf::from(format!("{}{suffix}", control.display()))
    }

    /// From now on hold every write overlapping `[first_byte, end_byte)`.
    pub fn hold_writes(&self, first_byte: u64, end_byte: u64) {
        let _ = std::fs::remove_file(self.hold_path(".held"));
        let _ = std::fs::remove_file(self.hold_path(".landed"));
        std::fs::write(self.hold_path(""), format!("{first_byte} {end_byte}\n"))
            .expect("write the hold control file");
    }

    /// Offsets of the writes being held (or held and since released).
    pub fn writes_held(&self) -> Vec<u64> {
        offsets_in(&self.hold_path(".held"))
    }

    /// Let the held writes go on to the file.
    pub fn release_writes(&self) {
        let _ = std::fs::remove_file(self.hold_path(""));
    }

    /// Offsets of the held writes that have reached the file since.
    pub fn writes_landed(&self) -> Vec<u64> {
        offsets_in(&self.hold_path(".landed"))
    }

    /// Make every I/O fail with EIO until `heal`.
    pub fn fail(&self) {
        std::fs::write(self.dir.path.join("inject-eio"), b"").expect("create error trigger");
    }

    pub fn heal(&self) {
        let _ = std::fs::remove_file(self.dir.path.join("inject-eio"));
    }

    fn launch(plugin: &[String]) -> PausableDevice {
        let dir = Scratch::new("nbd");
        let socket = dir.file("nbd.sock");
        let control = dir.file("pause.sock");
        let pidfile = dir.file("nbdkit.pid");
        let mount = dir.path.join("mnt");
        std::fs::create_dir_all(&mount).expect("mountpoint");
        let mut device = PausableDevice {
            dir,
            nbdfuse: None,
            nbdkit_pid: None,
            loop_device: None,
            hold_control: None,
        };
        let trigger = dir_path_join(&device.dir.path, "inject-eio");
        let status = Command::new("nbdkit")
            .args([
                "--unix",
                &socket,
                "--pidfile",
                &pidfile,
                "--filter=error",
                "--filter=pause",
            ])
            .args(plugin)
            .arg(format!("pause-control={control}"))
            .arg("error=EIO")
            .arg("error-rate=100%")
            .arg(format!("error-file={trigger}"))
            .status()
            .expect("run nbdkit (apt-get install nbdkit)");
        assert!(status.success(), "nbdkit failed to start");
        device.nbdkit_pid = wait_for(|| {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        });
        let file = mount.join("disk");
        let child = Command::new("nbdfuse")
            .arg(&file)
            .args(["--unix", &socket])
            .spawn()
            .expect("run nbdfuse (apt-get install libnbd-bin fuse3)");
        device.nbdfuse = Some(child);
        wait_for(|| file.exists().then_some(())).expect("nbdfuse did not expose the disk");
        let file = file.to_string_lossy().into_owned();
        device.loop_device =
            Some(LoopDevice::attach(&file, 512).expect("loop device over nbdfuse"));
        device
    }

    pub fn path(&self) -> &str {
        &self.loop_device.as_ref().expect("attached").path
    }

    fn control(&self, command: &[u8]) {
        use std::io::{Read, Write};
        let mut socket = std::os::unix::net::UnixStream::connect(self.dir.path.join("pause.sock"))
            .expect("pause control socket");
        socket.write_all(command).expect("send to pause control");
        let mut reply = [0u8; 1];
        socket.read_exact(&mut reply).expect("pause control reply");
    }

    /// Hold every new request until `resume` (requests under way finish).
    pub fn pause(&self) {
        self.control(b"p");
    }

    pub fn resume(&self) {
        self.control(b"r");
    }
}

impl Drop for PausableDevice {
    fn drop(&mut self) {
        if let Some(control) = &self.hold_control {
            for suffix in ["", ".held", ".landed"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", control.display()));
            }
        }
        if self.nbdkit_pid.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.resume()));
        }
        self.loop_device = None;
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.dir.path.join("mnt"))
            .status();
        if let Some(mut child) = self.nbdfuse.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The unmount above fails while the detached loop device still
        // holds the file (its release is asynchronous): then the mount is
        // dead now, and goes lazily rather than staying behind.
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.dir.path.join("mnt"))
            .output();
        if let Some(pid) = self.nbdkit_pid {
            // SAFETY: kill(2) with a pid we started; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

fn dir_path_join(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Poll `f` every 25 ms for up to `timeout`.
pub fn wait_long<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    None
}

/// True once the child has exited (reaping it).
pub fn dead(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// Poll `f` every 50 ms for up to 20 s.
pub fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..400 {
        if let Some(value) = f() {
            return Some(value);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}
