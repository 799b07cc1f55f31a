//! Simulated hosts for the daemon tests: each host is a process group (a
//! `sleep` as its leader) holding its leaseholdd and its lease holders, with
//! its own configuration, run directory, socket and, in watchdog mode, its
//! own watchdog emulator that SIGKILLs the whole group when not petted.

use crate::{leasehold_bin, leaseholdd_bin, wait_for, watchdog_emu_bin};
use leasehold_daemon::client::Client;
use leasehold_daemon::protocol::{Event, HostStatus, Reply, Request, StatusReply};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a host is configured.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub id: u32,
    pub name: String,
    pub device: String,
    pub io_timeout_ms: u32,
    pub watchdog: bool,
    /// Extra TOML appended to the generated configuration.
    pub extra: String,
    /// Extra environment of the daemon process.
    pub env: Vec<(String, String)>,
    /// Secrets file (paths.secrets).
    pub secrets: Option<PathBuf>,
    /// UDP port of this host's simulated BMC, when it has one.
    pub bmc_port: Option<u16>,
    /// control.group: members may use the socket.
    pub socket_group: Option<String>,
    /// Shell commands run at power-on before the daemon (behind a BMC),
    /// e.g. starting the host's libvirtd; `$MEMBERS` names the BMC's
    /// members file (processes killed with the host).
    pub boot_prefix: Option<String>,
}

impl HostSpec {
    pub fn new(id: u32, device: &str, io_timeout_ms: u32) -> HostSpec {
        HostSpec {
            id,
            name: format!("host{id}"),
            device: device.to_string(),
            io_timeout_ms,
            watchdog: false,
            extra: String::new(),
            env: Vec::new(),
            secrets: None,
            bmc_port: None,
            socket_group: None,
            boot_prefix: None,
        }
    }

    pub fn with_watchdog(mut self) -> HostSpec {
        self.watchdog = true;
        self
    }
}

/// Format `path` as the daemon tests' lockspace "test": 8 hosts, 16
/// slots, io_timeout 0.5 s.
pub fn format_test_device(path: &str) {
    format_test_device_with(path, 16);
}

/// [`format_test_device`] with `max_resources` slots (e.g. for hundreds of
/// HA VMs); the device must hold [`test_device_size_bytes`].
pub fn format_test_device_with(path: &str, max_resources: u32) {
    format_test_layout(path, max_resources, &[]);
}

/// [`format_test_device_with`] over whatever the device holds (`--force`):
/// a device reused for a fresh lockspace after its daemons stopped.
pub fn reformat_test_device_with(path: &str, max_resources: u32) {
    format_test_layout(path, max_resources, &["--force"]);
}

fn format_test_layout(path: &str, max_resources: u32, extra: &[&str]) {
    let max_resources = max_resources.to_string();
    let mut args = vec![
        "format",
        path,
        "--lockspace",
        "test",
        "--max-hosts",
        "8",
        "--max-resources",
        &max_resources,
        "--io-timeout",
        "0.5",
    ];
    args.extend_from_slice(extra);
    crate::leasehold_ok(&args);
}

/// The bytes a [`format_test_device_with`] device of `max_resources`
/// slots spans (512-byte sectors, 8 hosts, the default payload size).
pub fn test_device_size_bytes(max_resources: u32) -> u64 {
    lease::format::Geometry::new(
        512,
        8,
        max_resources,
        lease::format::PAYLOAD_SIZE_BYTES_DEFAULT,
    )
    .expect("geometry")
    .device_size_bytes()
}

/// Overwrite host `id`'s sector of a [`format_test_device`] device with
/// garbage, as a stray writer would: its daemon self-fences, and nobody
/// treats the sector as free.
pub fn scribble_host_sector(device: &str, id: u32) {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .expect("open device");
    let geometry = lease::format::Geometry::new(512, 8, 16, 65536).expect("geometry");
    let offset = geometry.host_offset_bytes(lease::HostId::new(id).expect("id"));
    let mut buffer = lease::disk::AlignedBuffer::new(512).expect("buffer");
    buffer.as_mut_slice().fill(0xA5);
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(buffer.as_slice()).expect("write garbage");
}

pub struct Host {
    pub spec: HostSpec,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    leader: Option<Child>,
    pub daemon: Option<Child>,
    emulator: Option<Child>,
    /// Lines the watchdog emulator printed ("<ms> armed", "<ms> fired").
    pub emulator_lines: Arc<Mutex<Vec<String>>>,
    /// The host's simulated BMC: then its power is the host's life.
    pub bmc: Option<crate::bmc::Bmc>,
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process (group) this test started.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn child_pid(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pid fits i32")
}

impl Host {
    /// Write the configuration under `root/<name>` and start the host.
    pub fn start(root: &Path, spec: HostSpec) -> Host {
        let mut host = Host::configure(root, spec);
        host.boot();
        host
    }

    /// A host behind a simulated BMC (ipmi_sim): powering it on starts its
    /// leaseholdd in a new session, powering it off kills everything of it.
    /// Powered on here.
    pub fn start_with_bmc(root: &Path, spec: HostSpec) -> Host {
        let mut host = Host::configure(root, spec);
        let members = host.dir.join("bmc").join("host.pgid.members");
        // The watchdog emulator runs in the host's session (its process
        // group is the shell's pid, which becomes the daemon's), reading
        // the FIFO the daemon opens.
        let watchdog = if host.spec.watchdog {
            let fifo = host.dir.join("watchdog.fifo");
            format!(
                "rm -f '{fifo}'; '{emu}' '{fifo}' {budget} $$ >> '{log}' 2>&1 & while [ ! -p '{fifo}' ]; do sleep 0.05; done; ",
                fifo = fifo.display(),
                emu = watchdog_emu_bin().display(),
                budget = 4 * u64::from(host.spec.io_timeout_ms),
                log = host.dir.join("watchdog.log").display()
            )
        } else {
            String::new()
        };
        let command = format!(
            "export MEMBERS='{}'; {watchdog}{}exec '{}' --config '{}'",
            members.display(),
            host.spec
                .boot_prefix
                .as_ref()
                .map(|p| format!("{p} && "))
                .unwrap_or_default(),
            leaseholdd_bin().display(),
            host.config.display()
        );
        let bmc = crate::bmc::Bmc::start(
            host.spec.bmc_port,
            &host.dir.join("bmc"),
            &command,
            &host.dir.join("leaseholdd.log"),
        );
        bmc.power_on_locally();
        host.bmc = Some(bmc);
        host
    }

    fn configure(root: &Path, spec: HostSpec) -> Host {
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir).expect("host dir");
        let config = dir.join("leasehold.toml");
        let socket = dir.join("leaseholdd.sock");
        let watchdog = if spec.watchdog {
            format!(
                "[watchdog]\ndevice = \"{}\"\n",
                dir.join("watchdog.fifo").display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[host]\nid = {id}\nname = \"{name}\"\n\n[lockspace]\nname = \"test\"\ndevice = \"{device}\"\nio_timeout_ms = {t}\n\n[control]\nsocket = \"{socket}\"\n{group}\n[paths]\nrun_dir = \"{run}\"\nstate_dir = \"{state}\"\nevent_log = \"{events}\"\n{secrets}\n{watchdog}{extra}\n",
            id = spec.id,
            name = spec.name,
            device = spec.device,
            t = spec.io_timeout_ms,
            socket = socket.display(),
            run = dir.join("run").display(),
            group = spec
                .socket_group
                .as_ref()
                .map(|g| format!("group = \"{g}\"\n"))
                .unwrap_or_default(),
            state = dir.join("state").display(),
            events = dir.join("events.jsonl").display(),
            secrets = spec
                .secrets
                .as_ref()
                .map(|p| format!("secrets = \"{}\"\n", p.display()))
                .unwrap_or_default(),
            extra = spec.extra,
        );
        std::fs::write(&config, text).expect("write config");
        Host {
            spec,
            dir,
            config,
            socket,
            leader: None,
            daemon: None,
            emulator: None,
            emulator_lines: Arc::new(Mutex::new(Vec::new())),
            bmc: None,
        }
    }

    /// The process group every process of this host runs in.
    pub fn pgid(&self) -> i32 {
        if let Some(bmc) = &self.bmc {
            return bmc.host_pgid().expect("host is powered on");
        }
        child_pid(self.leader.as_ref().expect("host is up"))
    }

    /// Power on: a new process group, the watchdog emulator, the daemon.
    pub fn boot(&mut self) {
        let leader = Command::new("sleep")
            .arg("100000")
            .process_group(0)
            .spawn()
            .expect("spawn the host's group leader");
        let pgid = child_pid(&leader);
        self.leader = Some(leader);
        if self.spec.watchdog {
            let fifo = self.dir.join("watchdog.fifo");
            let _ = std::fs::remove_file(&fifo);
            let budget_ms = 4 * u64::from(self.spec.io_timeout_ms);
            let mut emulator = Command::new(watchdog_emu_bin())
                .arg(&fifo)
                .arg(budget_ms.to_string())
                .arg(pgid.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the watchdog emulator");
            let stdout = emulator.stdout.take().expect("emulator stdout");
            let lines = Arc::clone(&self.emulator_lines);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if let Ok(mut lines) = lines.lock() {
                        lines.push(line);
                    }
                }
            });
            self.emulator = Some(emulator);
            wait_for(|| self.emulator_said("ready")).expect("watchdog emulator ready");
        }
        self.start_daemon();
    }

    /// Start leaseholdd in the host's group (after a kill or a SIGTERM).
    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("leaseholdd.log"))
            .expect("daemon log");
        let daemon = Command::new(leaseholdd_bin())
            .arg("--config")
            .arg(&self.config)
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(self.pgid())
            .spawn()
            .expect("start leaseholdd");
        self.daemon = Some(daemon);
    }

    /// The emulator's timestamp for `what` ("armed", "fired", ...).
    pub fn emulator_said(&self, what: &str) -> Option<u64> {
        let lines = self.emulator_lines.lock().ok()?;
        lines.iter().find_map(|line| {
            let (ms, word) = line.split_once(' ')?;
            (word == what).then(|| ms.parse().ok()).flatten()
        })
    }

    pub fn daemon_pid(&self) -> i32 {
        if let Some(bmc) = &self.bmc {
            // The session leader is leaseholdd itself (the start command execs it).
            return bmc.host_pgid().expect("host is powered on");
        }
        child_pid(self.daemon.as_ref().expect("daemon started"))
    }

    pub fn client(&self) -> Option<Client> {
        Client::connect(&self.socket, Some(Duration::from_secs(120))).ok()
    }

    pub fn call(&self, request: &Request) -> Reply {
        let mut client = self.client().expect("connect to leaseholdd");
        client.call(request).expect("daemon answers")
    }

    pub fn status(&self) -> Option<StatusReply> {
        let reply = self.client()?.call(&Request::Status {}).ok()?;
        serde_json::from_value(reply.result?).ok()
    }

    /// Wait until the daemon holds its lockspace.
    pub fn wait_joined(&self) -> StatusReply {
        wait_for(|| {
            self.status()
                .filter(|s| s.lockspaces.first().is_some_and(|l| l.state == "joined"))
        })
        .unwrap_or_else(|| panic!("{} did not join; log:\n{}", self.spec.name, self.log()))
    }

    pub fn hosts(&self) -> Vec<HostStatus> {
        self.status()
            .and_then(|s| s.lockspaces.into_iter().next())
            .map(|l| l.hosts)
            .unwrap_or_default()
    }

    pub fn host_state(&self, id: u32) -> Option<HostStatus> {
        self.hosts().into_iter().find(|h| h.host_id == id)
    }

    /// A process of this host holding `resources` (via `leasehold client
    /// run ... -- sleep`). Returns once the command runs with its leases,
    /// or the failed child.
    pub fn spawn_holder(&self, resources: &[&str]) -> Result<Child, String> {
        let mut command = Command::new(leasehold_bin());
        command
            .arg("client")
            .arg("run")
            .arg("--socket")
            .arg(&self.socket);
        for r in resources {
            command.args(["--resource", r]);
        }
        command
            .args(["--", "sleep", "100000"])
            .stderr(Stdio::piped());
        match &self.bmc {
            // Outside the host's session: the BMC kills it by pid.
            Some(_) => command.process_group(0),
            None => command.process_group(self.pgid()),
        };
        let mut child = command.spawn().expect("spawn holder");
        if let Some(bmc) = &self.bmc {
            bmc.add_member(child.id());
        }
        let pid = child_pid(&child);
        // Acquired once the process is `sleep` (the exec happened).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut err);
                }
                return Err(format!("holder exited {status}: {err}"));
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return Ok(child);
            }
            assert!(Instant::now() < deadline, "holder did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Does this host get `resource` within `timeout`? The holder started
    /// to find out is stopped again.
    pub fn acquires_within(&self, resource: &str, timeout: Duration) -> bool {
        match crate::wait_long(timeout, || self.spawn_holder(&[resource]).ok()) {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }

    pub fn stop(&self) {
        signal(self.daemon_pid(), libc::SIGSTOP);
    }

    pub fn cont(&self) {
        signal(self.daemon_pid(), libc::SIGCONT);
    }

    /// SIGTERM the daemon and wait for it to exit; returns its status code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.end_with(libc::SIGTERM)
    }

    /// Send `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        signal(self.daemon_pid(), sig);
    }

    /// Send `sig` to the daemon and wait (up to 60 s) for it to exit;
    /// returns its status code (None when a signal ended it).
    pub fn end_with(&mut self, sig: i32) -> Option<i32> {
        let mut daemon = self.daemon.take()?;
        signal(child_pid(&daemon), sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = daemon.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = daemon.kill();
                panic!(
                    "leaseholdd did not stop on signal {sig}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Power off: every process of the host dies at once.
    pub fn power_off(&mut self) {
        if let Some(bmc) = &self.bmc {
            bmc.power_off_locally();
        }
        if let Some(leader) = self.leader.as_ref() {
            signal(-child_pid(leader), libc::SIGKILL);
        }
        if let Some(mut leader) = self.leader.take() {
            let _ = leader.wait();
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.wait();
        }
        if let Some(mut emulator) = self.emulator.take() {
            let _ = emulator.kill();
            let _ = emulator.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("leaseholdd.log")).unwrap_or_default()
    }

    /// The event log, read from the file.
    pub fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn has_event(&self, kind: &str) -> bool {
        self.events().iter().any(|e| e.kind == kind)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.as_ref() {
            signal(child_pid(daemon), libc::SIGCONT);
        }
        self.power_off();
    }
}
