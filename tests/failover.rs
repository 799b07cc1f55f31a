//! Failover end to end on real components: leaseholdd per host on one loop
//! device, an ipmi_sim BMC per host (power off kills the host's processes),
//! and libvirt's test driver inside each daemon (`test:///default` is
//! private to each process, so each host has its own hypervisor and its
//! VMs die with it). The real-QEMU version is in tests/failover_kvm.rs.

use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::{ErrorKind, Request};
use leasehold_tests::cluster::{vm, Cluster, ClusterSpec, Hypervisor};
use leasehold_tests::daemon::Host;
use leasehold_tests::wait_long;
use std::time::Duration;

const T_MS: u32 = 500;

fn cluster(label: &str, memory_mib: u32) -> Cluster {
    Cluster::start(label, ClusterSpec::test_driver(T_MS, memory_mib))
}

/// The `vm-started` events of `hosts`, as (time, host id, message), oldest first.
fn starts(hosts: &[Host]) -> Vec<(String, u32, String)> {
    let mut all: Vec<(String, u32, String)> = hosts
        .iter()
        .flat_map(|h| {
            h.events()
                .into_iter()
                .filter(|e| e.kind == "vm-started")
                .map(|e| (e.time, e.host_id, e.message))
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort();
    all
}

/// The VM whose lease a survivor took first (from the `acquired` events).
pub fn first_acquired(hosts: &[Host]) -> Option<String> {
    let mut all: Vec<(String, String)> = hosts
        .iter()
        .flat_map(|h| h.events())
        .filter(|e| e.kind == "acquired")
        .map(|e| (e.time, e.message))
        .collect();
    all.sort();
    all.first()
        .and_then(|(_, m)| m.split_whitespace().nth(1).map(str::to_string))
}

const VMS: [(&str, Priority); 3] = [
    ("vm-low", Priority::Low),
    ("vm-high", Priority::High),
    ("vm-medium", Priority::Medium),
];
const NAMES: [&str; 3] = ["vm-low", "vm-high", "vm-medium"];

fn add_three(c: &Cluster) {
    for (i, (name, priority)) in VMS.iter().enumerate() {
        let index = u32::try_from(i).expect("index");
        let reply = c
            .add_vm(1, None, (name, index, 256), *priority, false)
            .unwrap_or_else(|e| panic!("vm add {name}: {e:?}"));
        assert!(
            reply.message.contains("running on host 1"),
            "{}",
            reply.message
        );
    }
    let l = c.vm_list(1).expect("vm list");
    for name in NAMES {
        let v = vm(&l, name).expect("listed");
        assert_eq!(
            (v.state.as_str(), v.owner_host_id),
            ("running", Some(1)),
            "{v:?}"
        );
    }
}

/// Power host 1 off through its BMC; every VM runs again on hosts 2/3,
/// high priority first, each started exactly once.
fn power_off_and_check(c: &mut Cluster) {
    add_three(c);
    c.power_off_via_bmc(1);
    let placed = c
        .wait_running_elsewhere(2, &NAMES, 1, Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "VMs not restarted: {:?}\nhost2 events: {:?}",
                c.vm_list(2),
                c.host(2).events()
            )
        });
    let restarts = starts(&c.hosts[1..]);
    assert_eq!(
        restarts.len(),
        3,
        "each VM started exactly once on the survivors: {restarts:?}"
    );
    // Priority waves: the high-priority VM's lease is taken first (its
    // libvirt start may still finish after another's).
    let taken = first_acquired(&c.hosts[1..]);
    assert_eq!(taken.as_deref(), Some("vm-high"), "high priority first");
    for (_, host_id, message) in &restarts {
        assert!(message.contains("which is over"), "{message}");
        let name = message.split_whitespace().next().unwrap_or("");
        assert_eq!(
            vm(&placed, name).and_then(|v| v.owner_host_id),
            Some(*host_id)
        );
    }
    // Exactly one host fenced host 1.
    let fenced: usize = c.hosts[1..]
        .iter()
        .map(|h| h.events().iter().filter(|e| e.kind == "fenced").count())
        .sum();
    assert_eq!(fenced, 1);
}

#[test]
fn a_powered_off_hosts_vms_run_again_on_the_survivors() {
    let mut c = cluster("failover-poweroff", 2048);
    power_off_and_check(&mut c);
}

#[test]
#[ignore = "long mode: LEASEHOLD_LONG=1 tests/run.sh"]
fn power_off_failover_ten_times() {
    for round in 0..10 {
        let mut c = cluster(&format!("failover-round{round}"), 2048);
        power_off_and_check(&mut c);
    }
}

#[test]
fn a_survivor_whose_libvirt_fails_passes_the_vm_to_the_next_host() {
    // Host 2's libvirt URI names a driver file that does not exist: every
    // start there fails, so each VM it is given moves on to host 3.
    let mut spec = ClusterSpec::test_driver(T_MS, 2048);
    spec.hypervisor = Hypervisor::TestDriver { broken: vec![2] };
    let mut c = Cluster::start("failover-libvirt-fails", spec);
    add_three(&c);
    c.power_off_via_bmc(1);
    let placed = wait_long(Duration::from_secs(90), || {
        let l = c.vm_list(3)?;
        NAMES
            .iter()
            .all(|name| {
                vm(&l, name).is_some_and(|v| v.state == "running" && v.owner_host_id == Some(3))
            })
            .then_some(l)
    });
    assert!(
        placed.is_some(),
        "every VM on host 3: {:?}\n{:?}",
        c.vm_list(3),
        c.host(2).events()
    );
    let failures = c
        .host(2)
        .events()
        .iter()
        .filter(|e| e.kind == "vm-start-failed")
        .count();
    assert!(failures >= 1, "host 2 tried and failed at least once");
    assert!(!c.host(2).has_event("vm-started"));
}

#[test]
fn without_a_successful_fence_nothing_restarts() {
    let mut c = cluster("failover-fence-fails", 2048);
    add_three(&c);
    // The BMC dies first (no fence possible), then the host.
    c.host(1).bmc.as_ref().expect("bmc").kill_bmc_only();
    c.hosts[0].power_off();
    // Well past detection (expiry 4 s) plus several fence attempts.
    std::thread::sleep(Duration::from_secs(15));
    let l = c.vm_list(2).expect("vm list");
    for name in NAMES {
        let v = vm(&l, name).expect("listed");
        assert_eq!(v.owner_host_id, Some(1), "{v:?}: still held by host 1");
        assert_eq!(
            v.state, "running",
            "{v:?}: its holder is not known to be over"
        );
    }
    assert!(starts(&c.hosts[1..]).is_empty());
    assert!(c.hosts[1..].iter().any(|h| h.has_event("fence-failed")));
}

#[test]
fn admission_control_refuses_with_the_numbers_and_force_overrides() {
    // Three hosts of 1024 MiB with a 700 MiB VM on each of two: losing
    // either, its VM restarts on the third. A third such VM on the third
    // host leaves no host with room after any loss.
    let c = cluster("failover-admission", 1024);
    c.add_vm(1, None, ("a1", 1, 700), Priority::High, false)
        .expect("first fits");
    c.add_vm(1, Some("host2"), ("a2", 2, 700), Priority::Medium, false)
        .expect("second fits");
    // Too big for any host: refused for that reason.
    let too_big = c
        .add_vm(1, Some("host3"), ("big", 4, 2000), Priority::Low, false)
        .expect_err("too big");
    assert!(
        too_big
            .1
            .contains("has 1024 MiB of 1024 MiB free, big needs 2000 MiB"),
        "{}",
        too_big.1
    );
    let refused = c
        .add_vm(1, Some("host3"), ("a3", 3, 700), Priority::Low, false)
        .expect_err("third refused");
    assert_eq!(refused.0, ErrorKind::Conflict);
    for needle in [
        "admission control refuses a3",
        "host_failures_to_tolerate = 1",
        "--force",
    ] {
        assert!(refused.1.contains(needle), "{}", refused.1);
    }
    let l = c.vm_list(1).expect("list");
    assert!(vm(&l, "a3").is_none(), "a refused VM is not registered");
    let headroom = l.headroom.expect("headroom");
    assert!(headroom.ok, "{headroom:?}");
    let forced = c
        .add_vm(1, Some("host3"), ("a3", 3, 700), Priority::Low, true)
        .expect("forced");
    assert!(forced.warning.is_some_and(|w| w.contains("overridden")));
    let headroom = c.vm_list(1).and_then(|l| l.headroom).expect("headroom");
    assert!(!headroom.ok, "{headroom:?}");
    assert!(!headroom.unplaced.is_empty());
    // The daemon's status shows the headroom too (after its next scan).
    let shown = wait_long(Duration::from_secs(10), || {
        c.host(1).status()?.headroom.filter(|hr| !hr.ok)
    });
    assert!(shown.is_some());
}

#[test]
fn vm_lifecycle_stop_start_migrate_remove() {
    let c = cluster("failover-lifecycle", 2048);
    c.add_vm(1, None, ("life", 7, 128), Priority::Medium, false)
        .expect("add");
    let call = |id: u32, r: Request| {
        let reply = c.host(id).call(&r);
        (reply.ok, reply.error.map(|e| e.message).unwrap_or_default())
    };
    let state = |id: u32| {
        c.vm_list(id)
            .and_then(|l| vm(&l, "life").map(|v| (v.state.clone(), v.owner_host_id)))
    };
    // Only the host running it can stop it; the refusal names that host.
    let (ok, message) = call(2, Request::VmStop { vm: "life".into() });
    assert!(
        !ok && message.contains("runs on host 1 (host1)"),
        "{message}"
    );
    assert!(call(1, Request::VmStop { vm: "life".into() }).0);
    assert_eq!(state(2), Some(("stopped".to_string(), None)));
    // Stopped stays stopped: nobody restarts it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(2), Some(("stopped".to_string(), None)));
    // Start it on host 2 from host 1.
    let (ok, message) = call(
        1,
        Request::VmStart {
            vm: "life".into(),
            host: Some("host2".into()),
        },
    );
    assert!(ok, "{message}");
    wait_long(Duration::from_secs(20), || {
        (state(1)? == ("running".to_string(), Some(2))).then_some(())
    })
    .expect("running on host 2");
    // Cold migration to host 3.
    let (ok, message) = call(
        2,
        Request::VmMigrate {
            vm: "life".into(),
            host: "3".into(),
        },
    );
    assert!(ok, "{message}");
    wait_long(Duration::from_secs(20), || {
        (state(1)? == ("running".to_string(), Some(3))).then_some(())
    })
    .expect("running on host 3");
    // Removing a running VM is refused; stopped, it goes and frees its slot.
    assert!(!call(3, Request::VmRemove { vm: "life".into() }).0);
    assert!(call(3, Request::VmStop { vm: "life".into() }).0);
    assert!(call(3, Request::VmRemove { vm: "life".into() }).0);
    assert_eq!(state(1), None);
    // The name can be registered again.
    c.add_vm(1, None, ("life", 7, 128), Priority::Medium, false)
        .expect("add again");
}

#[test]
fn a_paused_host_is_fenced_and_its_vms_run_elsewhere_never_on_it_again() {
    let c = cluster("failover-sigstop", 2048);
    add_three(&c);
    // The whole host stops (daemon and, in-process, its VMs), beyond expiry.
    let pgid = c.host(1).pgid();
    // SAFETY: kill(2) of the process group of a host this test started.
    unsafe {
        libc::kill(-pgid, libc::SIGSTOP);
    }
    let placed = c.wait_running_elsewhere(2, &NAMES, 1, Duration::from_secs(60));
    assert!(
        placed.is_some(),
        "{:?}\n{:?}",
        c.vm_list(2),
        c.host(2).events()
    );
    assert!(c.hosts[1..].iter().any(|h| h.has_event("fenced")));
    // The fence powered it off: nothing of it is left to resume.
    let bmc = c.host(1).bmc.as_ref().expect("bmc");
    assert!(!bmc.powered(), "host 1 still powered");
    let events_before = c.host(1).events().len();
    // SAFETY: as above; the group no longer exists.
    unsafe {
        libc::kill(-pgid, libc::SIGCONT);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.host(1).events().len(),
        events_before,
        "host 1 did something after the fence"
    );
    let l = c.vm_list(2).expect("list");
    for name in NAMES {
        assert!(matches!(
            vm(&l, name).and_then(|v| v.owner_host_id),
            Some(2 | 3)
        ));
    }
}

#[test]
fn a_watchdog_host_that_loses_its_storage_destroys_its_vms_before_anyone_restarts_them() {
    use leasehold_tests::daemon::{format_test_device, HostSpec};
    use leasehold_tests::{sparse_file, LoopDevice, PausableDevice, Scratch};
    // Host 1 (watchdog, no fence device) reaches the lease device through
    // its own faultable path; hosts 2 and 3 through a loop device.
    let scratch = Scratch::new("failover-selffence");
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 16 << 20);
    // (Buffered: host 1's path writes the file through its page cache.)
    let shared = LoopDevice::attach_buffered(&backing, 512).expect("loop device (run as root)");
    format_test_device(&shared.path);
    let path1 = PausableDevice::over_file(&backing);
    let extra = "[libvirt]\nuri = \"test:///default\"\n[capacity]\nmemory_mib = 2048\nvcpus = 8\n[failover]\nrestart_grace_ms = 3000\n";
    let spec = |id: u32, device: &str| {
        let mut spec = HostSpec::new(id, device, T_MS);
        spec.extra = extra.to_string();
        spec
    };
    let h1 = Host::start(&scratch.path, spec(1, path1.path()).with_watchdog());
    let survivors = [
        Host::start(&scratch.path, spec(2, &shared.path)),
        Host::start(&scratch.path, spec(3, &shared.path)),
    ];
    for h in [&h1, &survivors[0], &survivors[1]] {
        h.wait_joined();
        for id in 1..=3 {
            wait_long(Duration::from_secs(20), || {
                h.host_state(id).filter(|s| s.state == "live")
            })
            .expect("every host live");
        }
    }
    for (i, (name, priority)) in VMS.iter().enumerate() {
        let reply = h1.call(&Request::VmAdd {
            xml: leasehold_tests::cluster::test_domain_xml(name, u32::try_from(i).expect("i"), 256),
            priority: Some(*priority),
            restart: None,
            host: None,
            force: false,
        });
        assert!(reply.ok, "{:?}", reply.error);
    }
    path1.fail();
    let list = |h: &Host| -> Option<leasehold_daemon::protocol::VmListReply> {
        h.call(&Request::VmList {})
            .result
            .and_then(|v| serde_json::from_value(v).ok())
    };
    let placed = wait_long(Duration::from_secs(60), || {
        let l = list(&survivors[0])?;
        NAMES
            .iter()
            .all(|n| vm(&l, n).is_some_and(|v| v.state == "running" && v.owner_host_id != Some(1)))
            .then_some(l)
    });
    assert!(
        placed.is_some(),
        "{:?}\n{:?}",
        list(&survivors[0]),
        survivors[0].events()
    );
    // Host 1 destroyed each VM (self-fence) before any survivor started it.
    let destroyed: Vec<(String, String)> = h1
        .events()
        .into_iter()
        .filter(|e| e.kind == "vm-destroyed")
        .map(|e| (e.time, e.message))
        .collect();
    assert_eq!(destroyed.len(), 3, "{destroyed:?}\n{}", h1.log());
    let last_destroyed = destroyed
        .iter()
        .map(|(t, _)| t.clone())
        .max()
        .expect("times");
    let restarts = starts(&survivors);
    assert_eq!(restarts.len(), 3, "{restarts:?}");
    for (time, _, message) in &restarts {
        assert!(
            *time > last_destroyed,
            "{message} at {time}, destroyed by {last_destroyed}"
        );
    }
    assert!(h1.has_event("self-fence"));
    assert!(
        h1.emulator_said("fired").is_none(),
        "its VMs died in time: no watchdog reset"
    );
}
