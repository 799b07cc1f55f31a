//! The lock plugin inside real libvirt: two simulated hosts, each an
//! unprivileged libvirtd (`lock_manager = "leasehold"`, the plugin from
//! LIBVIRT_LOCK_MANAGER_PLUGIN_DIR) and a leaseholdd on one shared loop
//! device. A diskless 64 MiB guest with a `<lease>` runs on host A; `virsh
//! start` of the same domain on host B fails with the "resource busy"
//! message; after `kill -9` of A's QEMU, B starts it. KVM where /dev/kvm
//! exists, TCG otherwise (said, never skipped).

use leasehold_tests::cluster::{qemu_processes, virt_type, LIBVIRT_USER};
use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{lockdriver_so, sparse_file, wait_long, LoopDevice, Scratch};
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

/// One host's libvirtd, with the plugin configured for `socket`.
struct Libvirtd {
    uri: String,
    members: PathBuf,
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
        Libvirtd {
            uri: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            members,
        }
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

fn guest_xml(device: &str) -> String {
    format!(
        "<domain type='{}'><name>lockvm</name><uuid>5a0c3b7e-2f1d-4c8a-9e6b-00000000c0de</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices><lease><lockspace>test</lockspace><key>lockvm</key><target path='{device}'/></lease><controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        virt_type()
    )
}

#[test]
fn a_second_virsh_start_elsewhere_is_refused_until_the_first_qemu_dies() {
    eprintln!(
        "guests run under {}",
        if virt_type() == "kvm" {
            "KVM"
        } else {
            "TCG (no /dev/kvm)"
        }
    );
    let scratch = Scratch::short("lockvirt");
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
        spec
    };
    let hosts = [
        Host::start(&scratch.path, spec(1)),
        Host::start(&scratch.path, spec(2)),
    ];
    for h in &hosts {
        h.wait_joined();
    }
    let libvirts: Vec<Libvirtd> = hosts
        .iter()
        .map(|h| Libvirtd::start(&h.dir.join("libvirt"), &plugin_dir, &h.socket))
        .collect();
    let xml = scratch.path.join("lockvm.xml");
    std::fs::write(&xml, guest_xml(&device.path)).expect("xml");
    let xml = xml.display().to_string();
    for l in &libvirts {
        let out = virsh(&l.uri, &["define", &xml]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = virsh(&libvirts[0].uri, &["start", "lockvm"]);
    assert!(
        out.status.success(),
        "host A start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        hosts[0].log()
    );
    assert_eq!(qemu_processes("lockvm"), 1);
    let held = hosts[0].status().expect("status").lockspaces[0]
        .resources
        .clone();
    assert!(held.iter().any(|r| r.name == "lockvm"), "{held:?}");

    // Host B: refused, with the holder named; no second QEMU keeps running.
    let out = virsh(&libvirts[1].uri, &["start", "lockvm"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("virsh start on host B said: {}", stderr.trim());
    assert!(!out.status.success());
    assert!(
        stderr.contains("resource busy: lease lockvm held by host 1 (host1)"),
        "{stderr}"
    );
    let one = wait_long(Duration::from_secs(10), || {
        (qemu_processes("lockvm") == 1).then_some(())
    });
    assert!(one.is_some(), "a second QEMU kept running");
    assert_ne!(
        String::from_utf8_lossy(&virsh(&libvirts[1].uri, &["domstate", "lockvm"]).stdout).trim(),
        "running"
    );

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
        virsh(&libvirts[1].uri, &["start", "lockvm"])
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
    drop(libvirts);
    assert!(
        wait_long(Duration::from_secs(5), || (qemu_processes("lockvm") == 0)
            .then_some(()))
        .is_some()
    );
}
