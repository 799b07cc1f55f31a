//! A whole simulated cluster for failover tests and benchmarks: N hosts on
//! one loop device, each a leaseholdd behind its own ipmi_sim BMC (every
//! host fenceable over IPMI), with libvirt's test driver inside each daemon
//! or a real unprivileged libvirtd running QEMU guests per host.

use crate::bmc::{free_udp_port, PASSWORD, USER};
use crate::daemon::{format_test_device_with, test_device_size_bytes, Host, HostSpec};
use crate::libvirt_proxy::LibvirtProxy;
use crate::{sparse_file, wait_long, LoopDevice, PausableDevice, Scratch};
use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::{ErrorKind, Request, VmActionReply, VmListReply, VmStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The user the per-host libvirtd instances run as.
pub const LIBVIRT_USER: &str = "lhtest";

/// Which hypervisor each host uses.
#[derive(Clone, Debug)]
pub enum Hypervisor {
    /// libvirt's test driver in the daemon (`test:///default`); the hosts
    /// listed get a URI that cannot be opened (their libvirt "fails").
    TestDriver { broken: Vec<u32> },
    /// One unprivileged libvirtd per host running QEMU guests
    /// (tests/support/libvirt/start_libvirtd.sh), started at power-on and
    /// killed with the host, QEMU included.
    Qemu,
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub hosts: u32,
    pub io_timeout_ms: u32,
    /// Memory each host advertises.
    pub memory_mib: u32,
    /// vCPUs each host advertises.
    pub vcpus: u32,
    /// Resource slots of the lease device: how many HA VMs it can hold.
    pub max_resources: u32,
    pub restart_grace_ms: u64,
    pub hypervisor: Hypervisor,
    /// Hosts whose daemon reaches its libvirtd through a fault-injecting
    /// [`LibvirtProxy`] (real libvirtd only); see [`Cluster::proxy`].
    pub proxied: Vec<u32>,
    /// `libvirt.call_timeout_ms` of every host (None: the default).
    pub libvirt_call_timeout_ms: Option<u64>,
    /// Hosts that reach the lease device through a path of their own whose
    /// writes can be held back ([`PausableDevice::over_file_holding_writes`]);
    /// see [`Cluster::path`].
    pub held_paths: Vec<u32>,
    /// More TOML for every host's configuration (whole tables).
    pub extra: String,
    /// More `[failover]` lines for single hosts, by host id.
    pub failover_lines: BTreeMap<u32, String>,
    /// More TOML tables for single hosts, by host id.
    pub host_tables: BTreeMap<u32, String>,
    /// Hosts that reach the lease device through a block device of their
    /// own, formatted by the caller (e.g. a [`crate::san::SanPath`]).
    pub host_devices: BTreeMap<u32, String>,
    /// Hosts with a (emulated) watchdog: they self-fence, destroying their
    /// VMs, when their renewals fail.
    pub watchdog_hosts: Vec<u32>,
}

impl ClusterSpec {
    pub fn test_driver(io_timeout_ms: u32, memory_mib: u32) -> ClusterSpec {
        ClusterSpec {
            hosts: 3,
            io_timeout_ms,
            memory_mib,
            vcpus: 8,
            max_resources: 16,
            restart_grace_ms: 3000,
            hypervisor: Hypervisor::TestDriver { broken: Vec::new() },
            proxied: Vec::new(),
            libvirt_call_timeout_ms: None,
            held_paths: Vec::new(),
            extra: String::new(),
            failover_lines: BTreeMap::new(),
            host_tables: BTreeMap::new(),
            host_devices: BTreeMap::new(),
            watchdog_hosts: Vec::new(),
        }
    }

    /// `hosts` hosts, each with its own libvirtd running QEMU guests.
    pub fn qemu(hosts: u32, io_timeout_ms: u32, memory_mib: u32) -> ClusterSpec {
        ClusterSpec {
            hosts,
            io_timeout_ms,
            memory_mib,
            vcpus: 8,
            max_resources: 16,
            restart_grace_ms: 5000,
            hypervisor: Hypervisor::Qemu,
            proxied: Vec::new(),
            libvirt_call_timeout_ms: None,
            held_paths: Vec::new(),
            extra: String::new(),
            failover_lines: BTreeMap::new(),
            host_tables: BTreeMap::new(),
            host_devices: BTreeMap::new(),
            watchdog_hosts: Vec::new(),
        }
    }
}

/// Fields drop in order: hosts (and their BMCs) before the device and the
/// directory holding their files.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub spec: ClusterSpec,
    pub proxies: std::collections::BTreeMap<u32, LibvirtProxy>,
    /// The own device paths of the hosts in `spec.held_paths`.
    pub paths: std::collections::BTreeMap<u32, PausableDevice>,
    _device: LoopDevice,
    /// The file behind every host's device.
    pub backing: String,
    pub scratch: Scratch,
}

fn secrets(root: &Path, hosts: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join("secrets.toml");
    let text: String = (1..=hosts)
        .map(|i| format!("[hosts.host{i}]\npassword = \"{PASSWORD}\"\n"))
        .collect();
    std::fs::write(&path, text).expect("secrets");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// "kvm" when this machine can run KVM guests, else "qemu" (TCG).
pub fn virt_type() -> &'static str {
    if Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "qemu"
    }
}

impl Cluster {
    /// Start every host, wait until each sees all live.
    pub fn start(label: &str, spec: ClusterSpec) -> Cluster {
        // Short paths: libvirt's monitor sockets must fit in 108 bytes.
        let scratch = match spec.hypervisor {
            Hypervisor::Qemu => Scratch::short(label),
            Hypervisor::TestDriver { .. } => Scratch::new(label),
        };
        // The libvirt user must reach its directories.
        let _ = Command::new("chmod")
            .arg("0755")
            .arg(&scratch.path)
            .status();
        let backing = scratch.file("lease.img");
        sparse_file(
            &backing,
            test_device_size_bytes(spec.max_resources).max(16 << 20),
        );
        // Held paths (nbdkit's python plugin) write the file through its
        // page cache: then the shared device uses that cache too.
        let device = if spec.held_paths.is_empty() {
            LoopDevice::attach(&backing, 512)
        } else {
            LoopDevice::attach_buffered(&backing, 512)
        }
        .expect("loop device (run as root)");
        format_test_device_with(&device.path, spec.max_resources);
        let ports: Vec<u16> = (0..spec.hosts).map(|_| free_udp_port()).collect();
        let port = |i: u32| ports[usize::try_from(i - 1).expect("index")];
        let cluster_toml: String = (1..=spec.hosts)
            .map(|i| {
                format!(
                    "[[cluster.hosts]]\nid = {i}\nname = \"host{i}\"\nfence = {{ method = \"ipmi\", address = \"127.0.0.1\", port = {}, user = \"{USER}\" }}\n",
                    port(i)
                )
            })
            .collect();
        let secrets = secrets(&scratch.path, spec.hosts);
        let mut proxies = std::collections::BTreeMap::new();
        let paths: std::collections::BTreeMap<u32, PausableDevice> = spec
            .held_paths
            .iter()
            .map(|i| (*i, PausableDevice::over_file_holding_writes(&backing)))
            .collect();
        let hosts: Vec<Host> = (1..=spec.hosts)
            .map(|i| {
                let host_dir = scratch.path.join(format!("host{i}"));
                let path = match spec.host_devices.get(&i) {
                    Some(own) => own.as_str(),
                    None => paths.get(&i).map_or(device.path.as_str(), |p| p.path()),
                };
                let mut host = HostSpec::new(i, path, spec.io_timeout_ms);
                host.watchdog = spec.watchdog_hosts.contains(&i);
                let uri = match &spec.hypervisor {
                    Hypervisor::TestDriver { broken } if broken.contains(&i) => {
                        "test:///nonexistent/leasehold-no-such-node.xml".to_string()
                    }
                    Hypervisor::TestDriver { .. } => "test:///default".to_string(),
                    Hypervisor::Qemu => {
                        host.boot_prefix = Some(format!(
                            "'{}' '{}/libvirt' {LIBVIRT_USER} \"$MEMBERS\" >/dev/null",
                            Path::new(env!("CARGO_MANIFEST_DIR"))
                                .join("support/libvirt/start_libvirtd.sh")
                                .display(),
                            host_dir.display()
                        ));
                        if spec.proxied.contains(&i) {
                            std::fs::create_dir_all(&host_dir).expect("host dir");
                            let proxy = LibvirtProxy::start(
                                &host_dir.join("lvproxy.sock"),
                                &host_dir.join("libvirt/runtime/libvirt/libvirt-sock"),
                            );
                            let uri = proxy.uri();
                            proxies.insert(i, proxy);
                            uri
                        } else {
                            session_uri(&host_dir)
                        }
                    }
                };
                let call_timeout = spec
                    .libvirt_call_timeout_ms
                    .map(|ms| format!("call_timeout_ms = {ms}\n"))
                    .unwrap_or_default();
                let failover_lines = spec.failover_lines.get(&i).cloned().unwrap_or_default();
                let host_tables = spec.host_tables.get(&i).cloned().unwrap_or_default();
                host.extra = format!(
                    "[libvirt]\nuri = \"{uri}\"\n{call_timeout}[capacity]\nmemory_mib = {}\nvcpus = {}\n[failover]\nrestart_grace_ms = {}\n{failover_lines}{cluster_toml}{}\n{host_tables}",
                    spec.memory_mib, spec.vcpus, spec.restart_grace_ms, spec.extra
                );
                host.secrets = Some(secrets.clone());
                host.bmc_port = Some(port(i));
                Host::start_with_bmc(&scratch.path, host)
            })
            .collect();
        for h in &hosts {
            h.wait_joined();
        }
        for h in &hosts {
            for id in 1..=spec.hosts {
                wait_long(Duration::from_secs(30), || {
                    h.host_state(id).filter(|s| s.state == "live")
                })
                .expect("every host live");
            }
        }
        Cluster {
            hosts,
            spec,
            proxies,
            paths,
            _device: device,
            backing,
            scratch,
        }
    }

    /// Host `id`'s own path to the lease device (in `spec.held_paths`).
    pub fn path(&self, id: u32) -> &PausableDevice {
        self.paths
            .get(&id)
            .unwrap_or_else(|| panic!("host {id} has no path of its own"))
    }

    /// Host `id` (1-based).
    pub fn host(&self, id: u32) -> &Host {
        &self.hosts[usize::try_from(id - 1).expect("index")]
    }

    /// The fault-injecting proxy in front of host `id`'s libvirtd.
    pub fn proxy(&self, id: u32) -> &LibvirtProxy {
        self.proxies
            .get(&id)
            .expect("host is proxied (ClusterSpec::proxied)")
    }

    /// The libvirt URI of host `id` (real libvirtd only; never through
    /// its proxy: the hypervisor's truth).
    pub fn uri(&self, id: u32) -> String {
        session_uri(&self.host(id).dir)
    }

    /// A guest's XML for this cluster's hypervisor.
    pub fn domain_xml(&self, name: &str, index: u32, memory_mib: u32) -> String {
        match self.spec.hypervisor {
            Hypervisor::TestDriver { .. } => test_domain_xml(name, index, memory_mib),
            Hypervisor::Qemu => qemu_domain_xml(name, index, memory_mib),
        }
    }

    /// `vm add` through host `via`, to run on `on` (None: that host).
    pub fn add_vm(
        &self,
        via: u32,
        on: Option<&str>,
        (name, index, memory_mib): (&str, u32, u32),
        priority: Priority,
        force: bool,
    ) -> Result<VmActionReply, (ErrorKind, String)> {
        let reply = self.host(via).call(&Request::VmAdd {
            xml: self.domain_xml(name, index, memory_mib),
            priority: Some(priority),
            restart: None,
            host: on.map(str::to_string),
            force,
        });
        match (reply.ok, reply.result, reply.error) {
            (true, Some(v), _) => Ok(serde_json::from_value(v).expect("vm add reply")),
            (_, _, Some(e)) => Err((e.kind, e.message)),
            _ => panic!("empty reply"),
        }
    }

    /// `vm list` through host `via`.
    pub fn vm_list(&self, via: u32) -> Option<VmListReply> {
        self.host(via)
            .call(&Request::VmList {})
            .result
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Power host `id` off through its BMC over IPMI (ipmitool), and reap
    /// its processes.
    pub fn power_off_via_bmc(&mut self, id: u32) {
        let index = usize::try_from(id - 1).expect("index");
        let out = self.hosts[index]
            .bmc
            .as_ref()
            .expect("bmc")
            .ipmitool(&["chassis", "power", "off"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.hosts[index].power_off();
    }

    /// Wait until every VM named runs on a host other than `not_on`.
    pub fn wait_running_elsewhere(
        &self,
        via: u32,
        names: &[&str],
        not_on: u32,
        timeout: Duration,
    ) -> Option<VmListReply> {
        wait_long(timeout, || {
            let l = self.vm_list(via)?;
            names
                .iter()
                .all(|name| {
                    vm(&l, name).is_some_and(|v| {
                        v.state == "running" && v.owner_host_id.is_some_and(|h| h != not_on)
                    })
                })
                .then_some(l)
        })
    }
}

pub fn vm<'a>(list: &'a VmListReply, name: &str) -> Option<&'a VmStatus> {
    list.vms.iter().find(|v| v.name == name)
}

fn session_uri(host_dir: &Path) -> String {
    format!(
        "qemu:///session?socket={}/libvirt/runtime/libvirt/libvirt-sock",
        host_dir.display()
    )
}

/// A domain for libvirt's test driver.
pub fn test_domain_xml(name: &str, index: u32, memory_mib: u32) -> String {
    format!(
        "<domain type='test'><name>{name}</name><uuid>6c1f0d2e-55aa-4b6e-9d0c-{index:012}</uuid><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )
}

/// A diskless QEMU guest (KVM where /dev/kvm exists, else TCG) with no
/// `<emulator>`: libvirtd's PATH gives the wrapper that records its pid
/// for the BMC's power-off.
pub fn qemu_domain_xml(name: &str, index: u32, memory_mib: u32) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><uuid>2b7e4c1a-9f3d-4e6a-8c5b-{index:012}</uuid><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices><controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        virt_type()
    )
}

/// QEMU processes running guest `name` on this machine, any host.
pub fn qemu_processes(name: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("guest={name},")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// `virsh domstate` of `name` on `uri`.
pub fn domstate(uri: &str, name: &str) -> String {
    let out = Command::new("virsh")
        .args(["-c", uri, "domstate", name])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Event time (RFC 3339, UTC) as milliseconds since midnight.
pub fn time_of_day_ms(time: &str) -> Option<i64> {
    let clock = time.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600 + m * 60) * 1000 + (s * 1000.0) as i64)
}

/// Now, as milliseconds since midnight UTC (to compare with event times).
pub fn now_of_day_ms() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    i64::try_from(ms % 86_400_000).unwrap_or(0)
}
