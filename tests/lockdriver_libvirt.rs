//! The lock plugin inside real libvirt: two simulated hosts, each an
//! unprivileged libvirtd (`lock_manager = "leasehold"`, the plugin from
//! LIBVIRT_LOCK_MANAGER_PLUGIN_DIR) and a leaseholdd on one shared loop
//! device. KVM where /dev/kvm exists, TCG otherwise (said, never skipped).
//!
//! - A diskless 64 MiB guest with a `<lease>` runs on host A; `virsh
//!   start` of the same domain on host B fails with the "resource busy"
//!   message; after `kill -9` of A's QEMU, B starts it.
//! - A HA VM (`leasehold vm add` on A, each daemon driving its own
//!   libvirtd) runs on A under the plugin with the lease the daemon put in
//!   its definition; on B a `virsh start` of the original definition (no
//!   `<lease>`) is refused with a pointer to `leasehold vm start`, and one
//!   of A's `virsh dumpxml` (with the lease) is refused as busy naming A; a
//!   pause and resume on A keep the daemon's hold. QEMU processes and
//!   `virsh domstate` on both hosts show it running on A only throughout.

use leasehold_tests::cluster::{domstate, qemu_processes, virt_type, LIBVIRT_USER};
use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{leasehold, lockdriver_so, sparse_file, wait_long, LoopDevice, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const T_MS: u32 = 500;

fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", uri])
        .args(args)
        .output()
        .expect("run virsh")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// One host's libvirtd, with the plugin configured for `socket`.
struct Libvirtd {
    uri: String,
    members: PathBuf,
}

/// The URI of the session libvirtd `Libvirtd::start` runs under `dir`.
fn session_uri(dir: &Path) -> String {
    format!(
        "qemu:///session?socket={}/runtime/libvirt/libvirt-sock",
        dir.display()
    )
}

impl Libvirtd {
    fn start(dir: &Path, plugin_dir: &Path, socket: &Path) -> Libvirtd {
        let config = dir.join("config").join("libvirt");
        std::fs::create_dir_all(&config).expect("config dir");
        std::fs::write(
            config.join("qemu-leasehold.conf"),
            format!("socket = \"{}\"\n", socket.display()),
        )
        .expect("plugin conf");
        let members = dir.with_extension("members");
        let out = Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("support/libvirt/start_libvirtd.sh"),
        )
        .arg(dir)
        .arg(LIBVIRT_USER)
        .arg(&members)
        .env("QEMU_CONF_EXTRA", "lock_manager = \"leasehold\"")
        .env("LIBVIRT_LOCK_MANAGER_PLUGIN_DIR", plugin_dir)
        .output()
        .expect("start_libvirtd.sh");
        assert!(
            out.status.success(),
            "libvirtd did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uri = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(uri, session_uri(dir));
        Libvirtd { uri, members }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // libvirtd, its reaper and every QEMU it started.
        for pid in std::fs::read_to_string(&self.members)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|p| *p > 1)
        {
            // SAFETY: kill(2) of processes this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Two hosts on one fresh loop device: each a leaseholdd (its libvirt
/// URI its own libvirtd when `ha`) and a libvirtd with the plugin. Fields
/// drop in order: libvirtd (and QEMU) first, the directory last.
struct Pair {
    libvirts: Vec<Libvirtd>,
    hosts: Vec<Host>,
    device: LoopDevice,
    scratch: Scratch,
}

impl Pair {
    fn start(label: &str, ha: bool) -> Pair {
        eprintln!(
            "guests run under {}",
            if virt_type() == "kvm" {
                "KVM"
            } else {
                "TCG (no /dev/kvm)"
            }
        );
        let scratch = Scratch::short(label);
        let _ = Command::new("chmod")
            .arg("0755")
            .arg(&scratch.path)
            .status();
        let backing = scratch.file("lease.img");
        sparse_file(&backing, 8 << 20);
        let device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
        format_test_device(&device.path);
        // The plugin where libvirtd (running as the test user) can read it.
        let plugin_dir = scratch.path.join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        std::fs::copy(lockdriver_so(), plugin_dir.join("leasehold.so")).expect("copy plugin");
        let spec = |id: u32| {
            let mut spec = HostSpec::new(id, &device.path, T_MS);
            // The libvirt user is in group kvm: it may use the socket.
            spec.socket_group = Some("kvm".to_string());
            if ha {
                // The daemon's VM manager drives this host's libvirtd
                // (started below; it connects on first use).
                let libvirt_dir = scratch.path.join(&spec.name).join("libvirt");
                spec.extra = format!(
                    "[libvirt]\nuri = \"{}\"\n[capacity]\nmemory_mib = 1024\nvcpus = 8\n",
                    session_uri(&libvirt_dir)
                );
            }
            spec
        };
        let hosts = vec![
            Host::start(&scratch.path, spec(1)),
            Host::start(&scratch.path, spec(2)),
        ];
        for h in &hosts {
            h.wait_joined();
        }
        for (h, other) in [(&hosts[0], 2), (&hosts[1], 1)] {
            wait_long(Duration::from_secs(30), || {
                h.host_state(other).filter(|s| s.state == "live")
            })
            .expect("both hosts live");
        }
        let libvirts = hosts
            .iter()
            .map(|h| Libvirtd::start(&h.dir.join("libvirt"), &plugin_dir, &h.socket))
            .collect();
        Pair {
            libvirts,
            hosts,
            device,
            scratch,
        }
    }

    fn uri(&self, index: usize) -> &str {
        &self.libvirts[index].uri
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.scratch.path.join(name);
        std::fs::write(&path, text).expect("write xml");
        path.display().to_string()
    }
}

fn guest_xml(name: &str, uuid: &str, devices: &str) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices>{devices}<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        virt_type()
    )
}

#[test]
fn a_second_virsh_start_elsewhere_is_refused_until_the_first_qemu_dies() {
    let pair = Pair::start("lockvirt", false);
    let (hosts, libvirts) = (&pair.hosts, &pair.libvirts);
    let lease = format!(
        "<lease><lockspace>test</lockspace><key>lockvm</key><target path='{}'/></lease>",
        pair.device.path
    );
    let xml = pair.write(
        "lockvm.xml",
        &guest_xml("lockvm", "5a0c3b7e-2f1d-4c8a-9e6b-00000000c0de", &lease),
    );
    for l in libvirts {
        let out = virsh(&l.uri, &["define", &xml]);
        assert!(out.status.success(), "{}", stderr_of(&out));
    }

    let out = virsh(pair.uri(0), &["start", "lockvm"]);
    assert!(
        out.status.success(),
        "host A start: {}\n{}",
        stderr_of(&out),
        hosts[0].log()
    );
    assert_eq!(qemu_processes("lockvm"), 1);
    let held = hosts[0].status().expect("status").lockspaces[0]
        .resources
        .clone();
    assert!(held.iter().any(|r| r.name == "lockvm"), "{held:?}");

    // Host B: refused, with the holder named; no second QEMU keeps running.
    let out = virsh(pair.uri(1), &["start", "lockvm"]);
    let stderr = stderr_of(&out);
    eprintln!("virsh start on host B said: {stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains("resource busy: lease lockvm held by host 1 (host1)"),
        "{stderr}"
    );
    let one = wait_long(Duration::from_secs(10), || {
        (qemu_processes("lockvm") == 1).then_some(())
    });
    assert!(one.is_some(), "a second QEMU kept running");
    assert_ne!(domstate(pair.uri(1), "lockvm"), "running");

    // A's QEMU dies: the lease is released and B can start the domain.
    let pid: i32 = std::fs::read_to_string(
        hosts[0]
            .dir
            .join("libvirt/runtime/libvirt/qemu/run/lockvm.pid"),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .expect("QEMU pid file");
    // SAFETY: kill(2) of the QEMU this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let started = wait_long(Duration::from_secs(30), || {
        virsh(pair.uri(1), &["start", "lockvm"])
            .status
            .success()
            .then_some(())
    });
    assert!(
        started.is_some(),
        "host B starts lockvm once A's QEMU is gone"
    );
    assert_eq!(qemu_processes("lockvm"), 1);
    assert!(hosts[1].status().expect("status").lockspaces[0]
        .resources
        .iter()
        .any(|r| r.name == "lockvm"));
    drop(pair);
    assert!(
        wait_long(Duration::from_secs(5), || (qemu_processes("lockvm") == 0)
            .then_some(()))
        .is_some()
    );
}

/// The HA VM runs on host A only: one QEMU, running in A's libvirt and
/// not in B's.
fn runs_on_a_only(pair: &Pair, name: &str, when: &str) {
    let one = wait_long(Duration::from_secs(10), || {
        (qemu_processes(name) == 1).then_some(())
    });
    assert!(
        one.is_some(),
        "{when}: {} QEMU processes run {name} (B's domstate: {:?})",
        qemu_processes(name),
        domstate(pair.uri(1), name)
    );
    assert_eq!(domstate(pair.uri(0), name), "running", "{when}: on host A");
    assert_ne!(domstate(pair.uri(1), name), "running", "{when}: on host B");
}

/// Host A's daemon holds `name`'s lease for the VM (pid 0, its UUID) and
/// A's QEMU of it is attached to that hold; returns the lease version.
fn attached(pair: &Pair, name: &str, uuid: &str) -> u64 {
    let a = &pair.hosts[0];
    let status = a.status().expect("status");
    let held = status.lockspaces[0]
        .resources
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} not held on A: {status:?}"));
    assert_eq!((held.pid, held.vm.as_deref()), (0, Some(uuid)), "{held:?}");
    let qemu: i32 = std::fs::read_to_string(
        a.dir
            .join(format!("libvirt/runtime/libvirt/qemu/run/{name}.pid")),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .expect("QEMU pid file");
    let key = format!("test/{name}");
    assert!(
        status
            .holders
            .iter()
            .any(|h| h.pid == qemu && h.leases.contains(&key)),
        "QEMU pid {qemu} attached to {key}: {:?}",
        status.holders
    );
    held.lver
}

#[test]
fn a_ha_vm_started_by_hand_elsewhere_is_refused_with_or_without_its_lease() {
    const NAME: &str = "lockha";
    const UUID: &str = "5a0c3b7e-2f1d-4c8a-9e6b-00000000a001";
    let pair = Pair::start("lockha", true);
    let a = &pair.hosts[0];
    // The definition as the operator wrote it: no <lease>.
    let original = pair.write("lockha.xml", &guest_xml(NAME, UUID, ""));
    let socket_a = a.socket.display().to_string();
    let out = leasehold(&["vm", "add", &original, "--socket", &socket_a]);
    assert!(
        out.status.success(),
        "vm add: {}\n{}",
        stderr_of(&out),
        a.log()
    );
    eprintln!(
        "vm add said: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    runs_on_a_only(&pair, NAME, "after vm add");

    // Host B, the original definition: refused before the CPUs start.
    let out = virsh(pair.uri(1), &["define", &original]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = virsh(pair.uri(1), &["start", NAME]);
    let stderr = stderr_of(&out);
    eprintln!("virsh start (no lease) on host B said: {stderr}");
    assert!(
        !out.status.success(),
        "host B started the HA VM by hand: {} QEMU processes run it",
        qemu_processes(NAME)
    );
    assert!(
        stderr.contains(&format!("leasehold vm start {NAME}")),
        "{stderr}"
    );
    runs_on_a_only(&pair, NAME, "after the lease-less start on B");

    // A's libvirt has the definition with the lease the daemon put in.
    let out = virsh(pair.uri(0), &["dumpxml", NAME]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dumped = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(dumped.matches("<lease>").count(), 1, "{dumped}");
    assert!(dumped.contains(&format!("<key>{NAME}</key>")), "{dumped}");
    assert!(dumped.contains("<lockspace>test</lockspace>"), "{dumped}");
    // The daemon holds it for the VM, and QEMU is attached to that hold.
    let lver = attached(&pair, NAME, UUID);

    // Host B, A's definition with the lease: refused as busy, naming A.
    let with_lease = pair.write("lockha-dumped.xml", &dumped);
    let out = virsh(pair.uri(1), &["define", &with_lease]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = virsh(pair.uri(1), &["start", NAME]);
    let stderr = stderr_of(&out);
    eprintln!("virsh start (with the lease) on host B said: {stderr}");
    assert!(
        !out.status.success(),
        "host B started the HA VM with its lease: {} QEMU processes run it",
        qemu_processes(NAME)
    );
    assert!(
        stderr.contains(&format!(
            "resource busy: lease {NAME} held by host 1 (host1)"
        )),
        "{stderr}"
    );
    runs_on_a_only(&pair, NAME, "after the start with the lease on B");

    // Pause and resume on A: the plugin's release leaves the daemon's hold.
    for action in ["suspend", "resume"] {
        let out = virsh(pair.uri(0), &[action, NAME]);
        assert!(
            out.status.success(),
            "virsh {action}: {}\n{}",
            stderr_of(&out),
            a.log()
        );
    }
    runs_on_a_only(&pair, NAME, "after suspend and resume on A");
    assert_eq!(
        attached(&pair, NAME, UUID),
        lver,
        "the same hold throughout"
    );
    let out = virsh(pair.uri(1), &["start", NAME]);
    assert!(!out.status.success(), "B after the resume on A");
    runs_on_a_only(&pair, NAME, "at the end");
    assert!(!a.has_event("vm-stopped-unexpectedly"));
    drop(pair);
    assert!(
        wait_long(Duration::from_secs(5), || (qemu_processes(NAME) == 0)
            .then_some(()))
        .is_some()
    );
}
