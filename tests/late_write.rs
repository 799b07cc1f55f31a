//! A record write of a fenced host that reaches the device late, on real
//! processes: two hosts, each a leaseholdd with its own unprivileged
//! libvirtd running QEMU guests and its ipmi_sim BMC; host 1 reaches the
//! shared lease file through a path of its own (nbdkit running
//! tests/support/nbd/hold_writes.py) whose writes to the VM's payload can
//! be held back.
//!
//! Host 1 runs `web`; its `vm migrate` writes web's record (wanted running,
//! for host 2), and that write sits in host 1's storage path. Host 1 is
//! powered off over IPMI; host 2 takes web over and starts it; the
//! operator stops web on host 2. Only then does host 1's write reach the
//! file. The record must stay "stopped": no libvirt runs web, no QEMU of
//! it exists, and the registry says stopped, for longer than the VM
//! manager takes to act on a record.

use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::Request;
use leasehold_daemon::registry::DesiredState;
use leasehold_tests::cluster::{domstate, qemu_processes, vm, Cluster, ClusterSpec};
use leasehold_tests::wait_long;
use std::time::Duration;

const NAME: &str = "lw-web";

/// The byte range of `slot`'s payload (both copies) in the lease file.
fn payload_range(c: &Cluster, slot: u32) -> (u64, u64) {
    let (_disk, space) =
        lease::open::open_lockspace(&c.backing, lease::open::Engine::Pread, None, Some("test"))
            .expect("open the lease file");
    let first = space.geometry.payload_offset_bytes(slot);
    (
        first,
        first + u64::from(space.geometry.payload_size_bytes()),
    )
}

fn status(c: &Cluster, via: u32) -> Option<leasehold_daemon::protocol::VmStatus> {
    c.vm_list(via).and_then(|l| vm(&l, NAME).cloned())
}

#[test]
fn a_fenced_hosts_late_record_write_does_not_undo_a_vm_stop() {
    let mut spec = ClusterSpec::qemu(2, 500, 1024);
    spec.held_paths = vec![1];
    let mut c = Cluster::start("latewr", spec);
    c.add_vm(1, None, (NAME, 1, 64), Priority::High, false)
        .expect("vm add on host 1");
    assert_eq!(domstate(&c.uri(1), NAME), "running");
    let slot = status(&c, 2).expect("web listed").slot;
    let (first, end) = payload_range(&c, slot);

    // Host 1 writes web's record once more (migrate: wanted running, on
    // host 2); the write reaches its storage path and stays there.
    c.path(1).hold_writes(first, end);
    let migrate = c.host(1).call(&Request::VmMigrate {
        vm: NAME.to_string(),
        host: "host2".to_string(),
    });
    let held = wait_long(Duration::from_secs(10), || {
        (!c.path(1).writes_held().is_empty()).then_some(())
    });
    assert!(
        held.is_some(),
        "host 1 wrote no record (migrate said {migrate:?})\n{}",
        c.host(1).log()
    );
    eprintln!(
        "host 1's record write at {:?} is held; migrate said: {:?}",
        c.path(1).writes_held(),
        migrate.error.map(|e| e.message)
    );
    // The write did not land, so web still runs on host 1 under its lease.
    assert_eq!(domstate(&c.uri(1), NAME), "running");

    // Host 1 dies; host 2 fences it and restarts web.
    c.power_off_via_bmc(1);
    let moved = wait_long(Duration::from_secs(60), || {
        (domstate(&c.uri(2), NAME) == "running"
            && status(&c, 2).and_then(|s| s.owner_host_id) == Some(2))
        .then_some(())
    });
    assert!(
        moved.is_some(),
        "web did not move to host 2: {:?}\n{}",
        status(&c, 2),
        c.host(2).log()
    );

    // The operator stops web on host 2.
    let stop = c.host(2).call(&Request::VmStop {
        vm: NAME.to_string(),
    });
    assert!(stop.ok, "vm stop: {:?}", stop.error);
    let stopped = wait_long(Duration::from_secs(30), || {
        (domstate(&c.uri(2), NAME) != "running" && qemu_processes(NAME) == 0).then_some(())
    });
    assert!(stopped.is_some(), "web did not stop on host 2");
    let record = status(&c, 2).expect("web listed");
    assert_eq!(record.desired, Some(DesiredState::Stopped), "{record:?}");

    // Now host 1's write reaches the file.
    c.path(1).release_writes();
    let landed = wait_long(Duration::from_secs(10), || {
        (!c.path(1).writes_landed().is_empty()).then_some(())
    });
    assert!(landed.is_some(), "the held write never reached the file");
    eprintln!(
        "host 1's late write landed at {:?}",
        c.path(1).writes_landed()
    );

    // Longer than the VM manager takes to re-read a record and act on it
    // (its record cache lasts 5 s, its restart grace 5 s): web stays
    // stopped, in the registry and in every hypervisor.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let record = status(&c, 2).expect("web listed");
        assert_eq!(
            record.desired,
            Some(DesiredState::Stopped),
            "host 1's late write brought web's old record back: {record:?}\n{}",
            c.host(2).log()
        );
        assert_ne!(
            domstate(&c.uri(2), NAME),
            "running",
            "web was started again after the operator stopped it: {record:?}\n{}",
            c.host(2).log()
        );
        assert_eq!(qemu_processes(NAME), 0, "a QEMU runs web");
        std::thread::sleep(Duration::from_millis(500));
    }
}
