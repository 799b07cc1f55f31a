//! Failover with real VMs: per simulated host an unprivileged libvirtd
//! (tests/support/libvirt/start_libvirtd.sh) running diskless 64 MiB QEMU
//! guests, its leaseholdd, and its ipmi_sim BMC whose power-off kills all
//! of them, QEMU included. KVM where /dev/kvm exists, TCG otherwise (the
//! test says which; it is never skipped).

use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::{Request, VmListReply};
use leasehold_tests::bmc::{free_udp_port, PASSWORD, USER};
use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{sparse_file, wait_long, LoopDevice, Scratch};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const T_MS: u32 = 500;
const LIBVIRT_USER: &str = "lhtest";

fn start_libvirtd_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support/libvirt/start_libvirtd.sh")
        .display()
        .to_string()
}

fn uri(host_dir: &Path) -> String {
    format!(
        "qemu:///session?socket={}/libvirt/runtime/libvirt/libvirt-sock",
        host_dir.display()
    )
}

/// "kvm" when this machine can run KVM guests, else "qemu" (TCG).
fn virt_type() -> &'static str {
    if Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "qemu"
    }
}

fn guest_xml(name: &str, index: u32) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><uuid>2b7e4c1a-9f3d-4e6a-8c5b-{index:012}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff><on_crash>destroy</on_crash><devices><controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        virt_type()
    )
}

/// QEMU processes running guest `name` on this machine, any host.
fn qemu_processes(name: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("guest={name},")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn domstate(uri: &str, name: &str) -> String {
    let out = Command::new("virsh")
        .args(["-c", uri, "domstate", name])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_powered_off_hosts_qemu_guests_run_again_on_the_survivors() {
    eprintln!(
        "guests run under {} ({})",
        virt_type(),
        if virt_type() == "kvm" {
            "/dev/kvm present"
        } else {
            "no /dev/kvm: TCG"
        }
    );
    // Short: libvirt's monitor socket paths must fit in 108 bytes.
    let scratch = Scratch::short("kvm");
    // The libvirt user must reach its directories.
    let _ = Command::new("chmod")
        .arg("0755")
        .arg(&scratch.path)
        .status();
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 16 << 20);
    let device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    format_test_device(&device.path);
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let cluster_toml: String = (1..=3usize)
        .map(|i| {
            format!(
                "[[cluster.hosts]]\nid = {i}\nname = \"host{i}\"\nfence = {{ method = \"ipmi\", address = \"127.0.0.1\", port = {}, user = \"{USER}\" }}\n",
                ports[i - 1]
            )
        })
        .collect();
    let secrets = scratch.path.join("secrets.toml");
    {
        use std::os::unix::fs::PermissionsExt;
        let text: String = (1..=3)
            .map(|i| format!("[hosts.host{i}]\npassword = \"{PASSWORD}\"\n"))
            .collect();
        std::fs::write(&secrets, text).expect("secrets");
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut hosts: Vec<Host> = (1..=3u32)
        .map(|i| {
            let host_dir = scratch.path.join(format!("host{i}"));
            let mut spec = HostSpec::new(i, &device.path, T_MS);
            spec.extra = format!(
                "[libvirt]\nuri = \"{}\"\n[capacity]\nmemory_mib = 1024\nvcpus = 4\n[failover]\nrestart_grace_ms = 5000\n{cluster_toml}",
                uri(&host_dir)
            );
            spec.secrets = Some(secrets.clone());
            spec.bmc_port = Some(ports[usize::try_from(i - 1).expect("index")]);
            spec.boot_prefix = Some(format!(
                "'{}' '{}/libvirt' {LIBVIRT_USER} \"$MEMBERS\" >/dev/null",
                start_libvirtd_script(),
                host_dir.display()
            ));
            Host::start_with_bmc(&scratch.path, spec)
        })
        .collect();
    for h in &hosts {
        h.wait_joined();
    }
    for h in &hosts {
        for id in 1..=3 {
            wait_long(Duration::from_secs(30), || {
                h.host_state(id).filter(|s| s.state == "live")
            })
            .expect("every host live");
        }
    }
    let vms = [
        ("kvm-low", Priority::Low),
        ("kvm-high", Priority::High),
        ("kvm-medium", Priority::Medium),
    ];
    for (i, (name, priority)) in vms.iter().enumerate() {
        let reply = hosts[0].call(&Request::VmAdd {
            xml: guest_xml(name, u32::try_from(i).expect("index")),
            priority: Some(*priority),
            restart: None,
            host: None,
            force: false,
        });
        assert!(reply.ok, "vm add {name}: {:?}", reply.error);
        assert_eq!(domstate(&uri(&hosts[0].dir), name), "running");
        assert_eq!(qemu_processes(name), 1);
    }

    let powered_off = Instant::now();
    let out = hosts[0]
        .bmc
        .as_ref()
        .expect("bmc")
        .ipmitool(&["chassis", "power", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hosts[0].power_off();
    // Power off killed host 1's QEMUs with it.
    for (name, _) in vms {
        assert!(
            wait_long(Duration::from_secs(5), || (qemu_processes(name) == 0)
                .then_some(()))
            .is_some(),
            "{name}'s QEMU survived the power off"
        );
    }
    let list = |h: &Host| -> Option<VmListReply> {
        h.call(&Request::VmList {})
            .result
            .and_then(|v| serde_json::from_value(v).ok())
    };
    let placed = wait_long(Duration::from_secs(90), || {
        let l = list(&hosts[1])?;
        vms.iter()
            .all(|(name, _)| {
                l.vms.iter().any(|v| {
                    v.name == *name
                        && v.state == "running"
                        && matches!(v.owner_host_id, Some(2 | 3))
                })
            })
            .then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "not restarted: {:?}\n{:?}",
            list(&hosts[1]),
            hosts[1].events()
        )
    });
    let elapsed = powered_off.elapsed();
    eprintln!("every guest running on a survivor {elapsed:?} after power-off");
    for (name, _) in vms {
        let owner = placed
            .vms
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.owner_host_id)
            .expect("owner");
        let owner_host = &hosts[usize::try_from(owner - 1).expect("index")];
        assert_eq!(
            domstate(&uri(&owner_host.dir), name),
            "running",
            "{name} on host {owner}"
        );
        let other = if owner == 2 { &hosts[2] } else { &hosts[1] };
        assert_ne!(
            domstate(&uri(&other.dir), name),
            "running",
            "{name} on two hosts"
        );
        assert_eq!(qemu_processes(name), 1, "{name}: exactly one QEMU");
    }
    // High priority first: the first guest started on a survivor is kvm-high.
    let mut starts: Vec<(String, String)> = hosts[1..]
        .iter()
        .flat_map(|h| h.events())
        .filter(|e| e.kind == "vm-started")
        .map(|e| (e.time, e.message))
        .collect();
    starts.sort();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(starts[0].1.starts_with("kvm-high "), "{starts:?}");
    for h in hosts.iter_mut() {
        h.power_off();
    }
    // Nothing of any host is left running.
    for (name, _) in vms {
        assert!(
            wait_long(Duration::from_secs(5), || (qemu_processes(name) == 0)
                .then_some(()))
            .is_some(),
            "{name}: QEMU left after the test"
        );
    }
}
