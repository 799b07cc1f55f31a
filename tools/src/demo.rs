//! `leasehold demo`: a local three-host cluster on one machine, then a
//! host failure and its failover, as it happens.
//!
//! Each simulated host is a leaseholdd with its own configuration, control
//! socket, event log and libvirt (the in-process test driver, so no QEMU is
//! needed), behind its own BMC: an `ipmi_sim` (Debian openipmi) whose
//! chassis power is the host's process group (tools/simbmc, embedded here).
//! All hosts share one file-backed lease device. The demo registers HA VMs
//! of different priorities on the first host, powers that host off through
//! its BMC over IPMI, prints the survivors' events as they detect, fence
//! and restart, and ends with one line of figures. It stops everything it
//! started on the way out, and clears leftovers of an interrupted run.

use crate::cli::DemoArgs;
use crate::out::outln;
use anyhow::{bail, Context, Result};
use leasehold_daemon::client::Client;
use leasehold_daemon::config::Secret;
use leasehold_daemon::fence::ipmi::{self, IpmiTarget};
use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::{Event, Request, StatusReply, VmListReply};
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The file that marks a directory as the demo's own.
const DEMO_MARK: &str = ".leasehold-demo";

const START_BMC: &str = include_str!("../simbmc/start_bmc.sh");
const CHASSIS_CONTROL: &str = include_str!("../simbmc/chassis_control.sh");
const LAN_CONF: &str = include_str!("../simbmc/lan.conf.template");
const EMU_CMDS: &str = include_str!("../simbmc/emu.cmds");

const HOSTS: [&str; 3] = ["hostA", "hostB", "hostC"];
const BMC_USER: &str = "admin";
/// The VMs registered on hostA: name, priority, memory MiB.
const VMS: [(&str, Priority, u32); 3] = [
    ("db", Priority::High, 1024),
    ("web", Priority::Medium, 512),
    ("batch", Priority::Low, 256),
];
/// Event kinds worth showing during the failover.
const SHOWN: [&str; 9] = [
    "host-silent",
    "fence-needed",
    "fencing",
    "fenced",
    "fence-failed",
    "acquired",
    "vm-started",
    "vm-start-failed",
    "storage-incident",
];

struct DemoHost {
    name: &'static str,
    id: u32,
    dir: PathBuf,
    socket: PathBuf,
    bmc: IpmiTarget,
    bmc_pid: Option<i32>,
}

struct Demo {
    dir: PathBuf,
    keep: bool,
    hosts: Vec<DemoHost>,
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("this program's path has no directory")?;
    if !path.exists() {
        bail!(
            "{} not found next to {} (build both: cargo build -p leasehold-daemon -p leasehold-tools)",
            name,
            exe.display()
        );
    }
    Ok(path)
}

fn free_udp_port() -> Result<u16> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP port")?;
    Ok(socket.local_addr().context("UDP socket address")?.port())
}

fn random_password() -> String {
    format!("Demo-{:012x}", lease::ids::random_u64() & 0xffff_ffff_ffff)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|pid: &i32| *pid > 1)
}

fn kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Milliseconds since midnight UTC of an event time ("...THH:MM:SS.mmmZ").
fn time_of_day_ms(time: &str) -> Option<u64> {
    let clock = time.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600 + m * 60) * 1000 + (s * 1000.0) as u64)
}

fn now_of_day_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from(since_epoch % 86_400_000).unwrap_or(0)
}

/// `to - from` in ms across midnight.
fn day_delta_ms(from: u64, to: u64) -> i64 {
    let delta = i64::try_from(to).unwrap_or(0) - i64::try_from(from).unwrap_or(0);
    if delta < -43_200_000 {
        delta + 86_400_000
    } else {
        delta
    }
}

fn call(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    let mut client = Client::connect(socket, Some(Duration::from_secs(30)))
        .with_context(|| format!("cannot reach {}", socket.display()))?;
    let reply = client.call(request).context("control socket")?;
    match (reply.ok, reply.result, reply.error) {
        (true, Some(value), _) => Ok(value),
        (_, _, Some(e)) => bail!("{}", e.message),
        _ => bail!("empty reply"),
    }
}

fn vm_list(socket: &Path) -> Result<VmListReply> {
    serde_json::from_value(call(socket, &Request::VmList {})?).context("vm list reply")
}

impl Demo {
    fn prepare(args: &DemoArgs) -> Result<Demo> {
        if Command::new("ipmi_sim").arg("--version").output().is_err() {
            bail!("ipmi_sim not found: install it with `apt-get install openipmi` (tools/demo.sh does)");
        }
        let dir = PathBuf::from(&args.dir);
        Demo::check_ours(&dir)?;
        Demo::clear_leftovers(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("simbmc"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(
            dir.join(DEMO_MARK),
            "made by `leasehold demo`; wiped by its next run\n",
        )
        .with_context(|| format!("cannot write {}", dir.join(DEMO_MARK).display()))?;
        for (name, text) in [
            ("start_bmc.sh", START_BMC),
            ("chassis_control.sh", CHASSIS_CONTROL),
            ("lan.conf.template", LAN_CONF),
            ("emu.cmds", EMU_CMDS),
        ] {
            write_executable(&dir.join("simbmc").join(name), text)?;
        }
        let mut hosts = Vec::new();
        for (index, name) in HOSTS.iter().enumerate() {
            let id = u32::try_from(index + 1).context("host id")?;
            let host_dir = dir.join(name);
            std::fs::create_dir_all(&host_dir)?;
            hosts.push(DemoHost {
                name,
                id,
                socket: host_dir.join("leaseholdd.sock"),
                dir: host_dir,
                bmc: IpmiTarget {
                    address: "127.0.0.1".to_string(),
                    port: free_udp_port()?,
                    user: BMC_USER.to_string(),
                    password: Secret::new(random_password()),
                    privilege: "administrator".to_string(),
                },
                bmc_pid: None,
            });
        }
        Ok(Demo {
            dir,
            keep: args.keep,
            hosts,
        })
    }

    /// The demo wipes its directory first: only one that does not exist,
    /// is empty, or carries the mark of an earlier demo run.
    fn check_ours(dir: &Path) -> Result<()> {
        let Ok(mut entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        if entries.next().is_none() || dir.join(DEMO_MARK).is_file() {
            return Ok(());
        }
        bail!(
            "{} is not empty and was not made by `leasehold demo` (no {DEMO_MARK} in it); the demo wipes its directory, so give it a new or empty one with --dir",
            dir.display()
        )
    }

    /// Stop what an interrupted earlier run in `dir` left running.
    fn clear_leftovers(dir: &Path) {
        for name in HOSTS {
            let bmc = dir.join(name).join("bmc");
            if let Some(pgid) = read_pid(&bmc.join("host.pgid")) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .status();
            }
            if let Some(pid) = read_pid(&bmc.join("state").join("ipmi_sim.pid")) {
                kill(pid);
            }
        }
    }

    fn device(&self) -> PathBuf {
        self.dir.join("lease.img")
    }

    fn format(&self, io_timeout_s: f64) -> Result<()> {
        let device = self.device();
        let file = std::fs::File::create(&device)
            .with_context(|| format!("cannot create {}", device.display()))?;
        file.set_len(16 << 20)?;
        let out = Command::new(std::env::current_exe()?)
            .arg("format")
            .arg(&device)
            .args([
                "--lockspace",
                "demo",
                "--max-hosts",
                "8",
                "--max-resources",
                "16",
            ])
            .args(["--io-timeout", &io_timeout_s.to_string()])
            .output()
            .context("cannot run leasehold format")?;
        if !out.status.success() {
            bail!("format failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn write_configs(&self, io_timeout_ms: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let cluster: String = self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "[[cluster.hosts]]\nid = {}\nname = \"{}\"\nfence = {{ method = \"ipmi\", address = \"127.0.0.1\", port = {}, user = \"{BMC_USER}\" }}\n",
                    h.id, h.name, h.bmc.port
                )
            })
            .collect();
        let secrets_path = self.dir.join("secrets.toml");
        let secrets: String = self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "[hosts.{}]\npassword = \"{}\"\n",
                    h.name,
                    h.bmc.password.expose()
                )
            })
            .collect();
        std::fs::write(&secrets_path, secrets)?;
        std::fs::set_permissions(&secrets_path, std::fs::Permissions::from_mode(0o600))?;
        for h in &self.hosts {
            let text = format!(
                "[host]\nid = {id}\nname = \"{name}\"\n\n[lockspace]\nname = \"demo\"\ndevice = \"{device}\"\nio_timeout_ms = {io_timeout_ms}\nio_engine = \"pread\"\n\n[control]\nsocket = \"{socket}\"\n\n[libvirt]\nuri = \"test:///default\"\n\n[capacity]\nmemory_mib = 4096\nvcpus = 8\n\n[failover]\nrestart_grace_ms = 5000\n\n[paths]\nrun_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\nevent_log = \"{dir}/events.jsonl\"\nsecrets = \"{secrets}\"\n\n{cluster}",
                id = h.id,
                name = h.name,
                device = self.device().display(),
                socket = h.socket.display(),
                dir = h.dir.display(),
                secrets = secrets_path.display(),
            );
            std::fs::write(h.dir.join("leasehold.toml"), text)?;
        }
        Ok(())
    }

    fn start_bmcs(&mut self, leaseholdd: &Path) -> Result<()> {
        let script = self.dir.join("simbmc").join("start_bmc.sh");
        for h in &mut self.hosts {
            let bmc = h.dir.join("bmc");
            std::fs::create_dir_all(&bmc)?;
            let start_file = bmc.join("host.start");
            std::fs::write(
                &start_file,
                format!(
                    "exec '{}' --config '{}'",
                    leaseholdd.display(),
                    h.dir.join("leasehold.toml").display()
                ),
            )?;
            let out = Command::new(&script)
                .arg(h.bmc.port.to_string())
                .arg(bmc.join("state"))
                .arg(bmc.join("host.pgid"))
                .arg(&start_file)
                .env("BMC_HOSTLOG", h.dir.join("leaseholdd.log"))
                .env("BMC_USER", BMC_USER)
                .env("BMC_PASSWORD", h.bmc.password.expose())
                .env("BMC_NAME", format!("bmc-{}", h.name))
                .output()
                .context("cannot run start_bmc.sh")?;
            if !out.status.success() {
                bail!(
                    "the BMC of {} did not start: {}",
                    h.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            h.bmc_pid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        }
        Ok(())
    }

    fn power_on_all(&self) -> Result<()> {
        for h in &self.hosts {
            ipmi::power_on(&h.bmc)
                .with_context(|| format!("power on {} through its BMC", h.name))?;
            outln!(
                "  {} powered on through its BMC ({}), leaseholdd starting",
                h.name,
                h.bmc.describe()
            );
        }
        Ok(())
    }

    fn wait_cluster(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let live = self.hosts.iter().all(|h| {
                call(&h.socket, &Request::Status {})
                    .ok()
                    .and_then(|v| serde_json::from_value::<StatusReply>(v).ok())
                    .is_some_and(|s| {
                        s.lockspaces.first().is_some_and(|l| {
                            l.state == "joined"
                                && l.hosts.iter().filter(|x| x.state == "live").count() == 3
                        })
                    })
            });
            if live {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the hosts did not all see each other live within {timeout:?}; see {}/*/leaseholdd.log",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn add_vms(&self) -> Result<()> {
        let a = &self.hosts[0];
        for (index, (name, priority, memory_mib)) in VMS.iter().enumerate() {
            let xml = format!(
                "<domain type='test'><name>{name}</name><uuid>de0de0de-0000-4000-8000-{index:012}</uuid><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
            );
            let value = call(
                &a.socket,
                &Request::VmAdd {
                    xml,
                    priority: Some(*priority),
                    restart: None,
                    host: None,
                    force: false,
                },
            )
            .with_context(|| format!("vm add {name}"))?;
            let message = value
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string();
            outln!("  vm add {name} --priority {priority:?}: {message}");
        }
        Ok(())
    }

    fn print_vm_list(&self, socket: &Path) -> Result<()> {
        let list = vm_list(socket)?;
        for vm in &list.vms {
            outln!(
                "  {:<6} {:<8} {:<7} {:>5} MiB  on {}",
                vm.name,
                vm.state,
                vm.priority
                    .map(|p| format!("{p:?}").to_lowercase())
                    .unwrap_or_default(),
                vm.memory_mib,
                vm.owner_host_name.as_deref().unwrap_or("-")
            );
        }
        if let Some(h) = &list.headroom {
            outln!(
                "  headroom: {} (tolerates {} host failure(s), {} MiB spare in the worst case)",
                if h.ok { "ok" } else { "NOT ENOUGH" },
                h.failures_to_tolerate,
                h.spare_memory_mib
            );
        }
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let control = self.dir.join("simbmc").join("chassis_control.sh");
        for h in &self.hosts {
            let bmc = h.dir.join("bmc");
            let _ = Command::new(&control)
                .arg(bmc.join("host.pgid"))
                .arg(bmc.join("host.start"))
                .args(["set", "power", "0"])
                .output();
            if let Some(pid) = h.bmc_pid {
                kill(pid);
            }
        }
        if self.keep {
            outln!(
                "kept {} (logs, event logs, lease device)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Follows the event logs of some hosts, printing the interesting lines.
struct EventTail {
    files: Vec<(&'static str, PathBuf, u64)>,
}

impl EventTail {
    fn new(hosts: &[DemoHost]) -> EventTail {
        EventTail {
            files: hosts
                .iter()
                .map(|h| {
                    let path = h.dir.join("events.jsonl");
                    let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    (h.name, path, offset)
                })
                .collect(),
        }
    }

    /// New events since the last call, oldest first: (host, event).
    fn poll(&mut self) -> Vec<(&'static str, Event)> {
        let mut found = Vec::new();
        for (name, path, offset) in &mut self.files {
            let Ok(mut file) = std::fs::File::open(&*path) else {
                continue;
            };
            if file.seek(std::io::SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            while let Ok(n) = reader.read_line(&mut line) {
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                *offset += u64::try_from(n).unwrap_or(0);
                if let Ok(event) = serde_json::from_str::<Event>(&line) {
                    found.push((*name, event));
                }
                line.clear();
            }
        }
        found.sort_by(|a, b| a.1.time.cmp(&b.1.time));
        found
    }

    /// Print the new events worth showing, timed from `off_of_day_ms`;
    /// `last_start_ms` follows the latest `vm-started`.
    fn show(&mut self, off_of_day_ms: u64, last_start_ms: &mut Option<i64>) {
        for (host, event) in self.poll() {
            if !SHOWN.contains(&event.kind.as_str()) {
                continue;
            }
            let at = time_of_day_ms(&event.time)
                .map(|t| day_delta_ms(off_of_day_ms, t))
                .unwrap_or(0);
            if event.kind == "vm-started" {
                *last_start_ms = Some(last_start_ms.map_or(at, |l| l.max(at)));
            }
            outln!(
                "  +{:>6.3} s  {host:<5} {:<14} {}",
                at as f64 / 1000.0,
                event.kind,
                event.message
            );
        }
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let leaseholdd = sibling_binary("leaseholdd")?;
    let io_timeout_ms = (args.io_timeout * 1000.0).round();
    if !(100.0..=10_000.0).contains(&io_timeout_ms) {
        bail!(
            "--io-timeout {} s is out of the demo's range (0.1 to 10 s)",
            args.io_timeout
        );
    }
    let io_timeout_ms = io_timeout_ms as u32;
    let mut demo = Demo::prepare(args)?;
    // From here on, dropping `demo` stops every process it started.
    outln!(
        "leasehold demo: 3 hosts on one file-backed lease device {} (io_timeout {} ms: a silent host is declared after {} ms)",
        demo.device().display(),
        io_timeout_ms,
        8 * io_timeout_ms
    );
    demo.format(args.io_timeout)?;
    demo.write_configs(io_timeout_ms)?;
    demo.start_bmcs(&leaseholdd)?;
    demo.power_on_all()?;
    demo.wait_cluster(Duration::from_secs(60))?;
    outln!("\nall 3 hosts joined and see each other live; registering HA VMs on hostA:");
    demo.add_vms()?;
    demo.print_vm_list(&demo.hosts[1].socket)?;

    let mut tail = EventTail::new(&demo.hosts[1..]);
    let victim = &demo.hosts[0];
    outln!(
        "\npowering {} off through its BMC ({}: IPMI chassis power off)",
        victim.name,
        victim.bmc.describe()
    );
    let off_of_day_ms = now_of_day_ms();
    let off = Instant::now();
    ipmi::power_off(&victim.bmc, Duration::from_secs(10))
        .with_context(|| format!("power off {}", victim.name))?;
    outln!(
        "  {} is off ({} ms)",
        victim.name,
        off.elapsed().as_millis()
    );

    let timeout = Duration::from_millis(u64::from(io_timeout_ms) * 40 + 60_000);
    let mut last_start_ms: Option<i64> = None;
    let placed = loop {
        tail.show(off_of_day_ms, &mut last_start_ms);
        let list = vm_list(&demo.hosts[1].socket).ok();
        let done = list.as_ref().is_some_and(|l| {
            VMS.iter().all(|(name, _, _)| {
                l.vms.iter().any(|v| {
                    v.name == *name
                        && v.state == "running"
                        && matches!(v.owner_host_id, Some(2 | 3))
                })
            })
        });
        if done {
            break list;
        }
        if off.elapsed() > timeout {
            bail!(
                "the VMs of {} were not all running elsewhere after {timeout:?}; see the event logs under {}",
                victim.name,
                demo.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Events written just before the list showed them.
    std::thread::sleep(Duration::from_millis(200));
    tail.show(off_of_day_ms, &mut last_start_ms);
    outln!("\nafter the failover (vm list on hostB):");
    demo.print_vm_list(&demo.hosts[1].socket)?;
    let mut survivors: Vec<String> = placed
        .map(|l| {
            l.vms
                .iter()
                .filter_map(|v| v.owner_host_name.clone())
                .collect()
        })
        .unwrap_or_default();
    survivors.sort();
    survivors.dedup();
    let seconds = last_start_ms
        .map(|ms| ms as f64 / 1000.0)
        .unwrap_or_else(|| off.elapsed().as_secs_f64());
    outln!(
        "\nfailover: {} VMs of {} running on {}, {:.1} s after power-off",
        VMS.len(),
        victim.name,
        survivors.join("/"),
        seconds
    );
    Ok(())
}
