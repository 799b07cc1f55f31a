//! Failover with real VMs: per simulated host an unprivileged libvirtd
//! (tests/support/libvirt/start_libvirtd.sh) running diskless 64 MiB QEMU
//! guests, its leaseholdd, and its ipmi_sim BMC whose power-off kills all
//! of them, QEMU included. KVM where /dev/kvm exists, TCG otherwise (the
//! test says which; it is never skipped).

use leasehold_daemon::placement::Priority;
use leasehold_tests::cluster::{domstate, qemu_processes, virt_type, vm, Cluster, ClusterSpec};
use leasehold_tests::wait_long;
use std::time::{Duration, Instant};

#[test]
fn a_powered_off_hosts_qemu_guests_run_again_on_the_survivors() {
    eprintln!(
        "guests run under {}",
        if virt_type() == "kvm" {
            "KVM (/dev/kvm present)"
        } else {
            "TCG (no /dev/kvm)"
        }
    );
    let spec = ClusterSpec::qemu(3, 500, 1024);
    let mut c = Cluster::start("kvm", spec);
    let vms = [
        ("kvm-low", Priority::Low),
        ("kvm-high", Priority::High),
        ("kvm-medium", Priority::Medium),
    ];
    let names: Vec<&str> = vms.iter().map(|(n, _)| *n).collect();
    for (i, (name, priority)) in vms.iter().enumerate() {
        let index = u32::try_from(i).expect("index");
        c.add_vm(1, None, (name, index, 64), *priority, false)
            .unwrap_or_else(|e| panic!("vm add {name}: {e:?}"));
        assert_eq!(domstate(&c.uri(1), name), "running");
        assert_eq!(qemu_processes(name), 1);
    }

    let powered_off = Instant::now();
    c.power_off_via_bmc(1);
    // Power off killed host 1's QEMUs with it.
    for name in &names {
        assert!(
            wait_long(Duration::from_secs(5), || (qemu_processes(name) == 0)
                .then_some(()))
            .is_some(),
            "{name}'s QEMU survived the power off"
        );
    }
    let placed = c
        .wait_running_elsewhere(2, &names, 1, Duration::from_secs(90))
        .unwrap_or_else(|| {
            panic!(
                "not restarted: {:?}\n{:?}",
                c.vm_list(2),
                c.host(2).events()
            )
        });
    eprintln!(
        "every guest running on a survivor {:?} after power-off",
        powered_off.elapsed()
    );
    for name in &names {
        let owner = vm(&placed, name)
            .and_then(|v| v.owner_host_id)
            .expect("owner");
        assert_eq!(
            domstate(&c.uri(owner), name),
            "running",
            "{name} on host {owner}"
        );
        let other = if owner == 2 { 3 } else { 2 };
        assert_ne!(
            domstate(&c.uri(other), name),
            "running",
            "{name} on two hosts"
        );
        assert_eq!(qemu_processes(name), 1, "{name}: exactly one QEMU");
    }
    // Each started once on a survivor; the high-priority lease taken first
    // (priority waves order the takeovers; a start may finish later).
    let starts = c.hosts[1..]
        .iter()
        .flat_map(|h| h.events())
        .filter(|e| e.kind == "vm-started")
        .count();
    assert_eq!(starts, 3);
    let mut acquired: Vec<(String, String)> = c.hosts[1..]
        .iter()
        .flat_map(|h| h.events())
        .filter(|e| e.kind == "acquired")
        .map(|e| (e.time, e.message))
        .collect();
    acquired.sort();
    assert!(
        acquired
            .first()
            .is_some_and(|(_, m)| m.starts_with("acquired kvm-high ")),
        "{acquired:?}"
    );
    for h in c.hosts.iter_mut() {
        h.power_off();
    }
    // Nothing of any host is left running.
    for name in &names {
        assert!(
            wait_long(Duration::from_secs(5), || (qemu_processes(name) == 0)
                .then_some(()))
            .is_some(),
            "{name}: QEMU left after the test"
        );
    }
}
