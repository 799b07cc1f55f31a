//! The idle cost of a cluster: with VMs registered and running and nothing
//! happening, each daemon reads the device about once per renewal
//! interval (its renewal's host-area scan), whatever the number of slots.
//! A change made on one host still reaches the others.

use leasehold_daemon::placement::Priority;
use leasehold_tests::cluster::{vm, Cluster, ClusterSpec};
use leasehold_tests::{block_ops, wait_long};
use std::time::{Duration, Instant};

const T_MS: u32 = 500;

#[test]
fn an_idle_cluster_reads_the_device_once_per_renewal_and_still_sees_changes() {
    let c = Cluster::start("idle", ClusterSpec::test_driver(T_MS, 2048));
    for (i, name) in ["idle-a", "idle-b", "idle-c"].iter().enumerate() {
        c.add_vm(1, None, (name, i as u32 + 1, 128), Priority::Medium, false)
            .expect("add vm");
    }
    let running = wait_long(Duration::from_secs(30), || {
        let list = c.vm_list(2)?;
        ["idle-a", "idle-b", "idle-c"]
            .iter()
            .all(|n| vm(&list, n).is_some_and(|v| v.state == "running"))
            .then_some(())
    });
    assert!(running.is_some(), "{:?}", c.vm_list(2));
    // Let the after-request rounds end.
    std::thread::sleep(Duration::from_secs(7));
    let device = c.host(1).spec.device.clone();
    let (reads_before, writes_before) = block_ops(&device).expect("block stat");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let (reads_after, writes_after) = block_ops(&device).expect("block stat");
    let seconds = started.elapsed().as_secs_f64();
    let renewals = seconds / (2.0 * f64::from(T_MS) / 1000.0);
    let hosts = 3.0;
    let reads_per_host_renewal = (reads_after - reads_before) as f64 / hosts / renewals;
    let writes_per_host_renewal = (writes_after - writes_before) as f64 / hosts / renewals;
    // One renewal = one read (the host-area scan) and one write; the
    // hosts that see another's VMs also read the host area once per
    // renewal interval to check their holders. Before the registry was
    // read only on change, each host read every slot's leader each
    // renewal interval (16 slots here) and the host area four times a
    // second.
    assert!(
        reads_per_host_renewal <= 2.5,
        "{reads_per_host_renewal:.2} reads per host per renewal interval"
    );
    assert!(
        writes_per_host_renewal <= 1.5,
        "{writes_per_host_renewal:.2} writes per host per renewal interval"
    );
    eprintln!(
        "idle: {reads_per_host_renewal:.2} reads and {writes_per_host_renewal:.2} writes per host per renewal interval"
    );
    // A change on one host still reaches the others: stop a VM on host 1;
    // the other hosts' lists show it stopped.
    let stop = c
        .host(1)
        .call(&leasehold_daemon::protocol::Request::VmStop {
            vm: "idle-b".to_string(),
        });
    assert!(stop.ok, "{:?}", stop.error);
    for h in [2, 3] {
        let stopped = wait_long(Duration::from_secs(20), || {
            let list = c.vm_list(h)?;
            vm(&list, "idle-b")
                .is_some_and(|v| v.state == "stopped")
                .then_some(())
        });
        assert!(stopped.is_some(), "host {h}: {:?}", c.vm_list(h));
    }
}
