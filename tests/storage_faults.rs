//! Storage faults under running daemons, through nbdkit (error and pause
//! filters) -> nbdfuse -> loop: one host's path fails (EIO) or hangs while
//! the others see the device fine; or the whole device stalls for everyone;
//! or latency spikes of up to 3T (the fence-mode expiry's envelope).

use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{dead, sparse_file, wait_long, LoopDevice, PausableDevice, Scratch};
use std::time::{Duration, Instant};

const T_MS: u32 = 500;

enum Fault {
    Eio,
    Hang,
}

/// Three joined hosts: 1 and 2 use the shared file through a loop device,
/// host 3 its own faultable path to the same file. Fields drop in order:
/// the hosts before their devices, the devices before the directory.
struct OwnPath3 {
    hosts: Vec<Host>,
    path3: PausableDevice,
    _shared: LoopDevice,
    _scratch: Scratch,
}

fn host_3_on_its_own_path(name: &str, spec3: impl FnOnce(HostSpec) -> HostSpec) -> OwnPath3 {
    let scratch = Scratch::new(name);
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 8 << 20);
    // Host 3's path (nbdkit's file plugin) writes the file through its
    // page cache: the others share that cache.
    let shared = LoopDevice::attach_buffered(&backing, 512).expect("loop device (run as root)");
    format_test_device(&shared.path);
    let path3 = PausableDevice::over_file(&backing);
    let hosts = vec![
        Host::start(&scratch.path, HostSpec::new(1, &shared.path, T_MS)),
        Host::start(&scratch.path, HostSpec::new(2, &shared.path, T_MS)),
        Host::start(&scratch.path, spec3(HostSpec::new(3, path3.path(), T_MS))),
    ];
    for h in &hosts {
        h.wait_joined();
    }
    OwnPath3 {
        hosts,
        path3,
        _shared: shared,
        _scratch: scratch,
    }
}

/// Host 3 (with a watchdog and a lease holder) loses its own path.
fn one_host_loses_its_storage(fault: Fault) {
    let cluster = host_3_on_its_own_path("hostfault", HostSpec::with_watchdog);
    let (a, b, c) = (&cluster.hosts[0], &cluster.hosts[1], &cluster.hosts[2]);
    let path3 = &cluster.path3;
    let mut holder = c.spawn_holder(&["vm3"]).expect("acquire on host 3");
    wait_long(Duration::from_secs(20), || {
        a.host_state(3).filter(|h| h.state == "live")
    })
    .expect("host 1 sees host 3 live");
    let generation = c.wait_joined().lockspaces[0].generation;

    match fault {
        Fault::Eio => path3.fail(),
        Fault::Hang => path3.pause(),
    }
    let started = Instant::now();
    // Host 3 kills its holder once its renewal deadline passes; nobody may
    // take vm3 before that.
    let mut taken_at = None;
    while started.elapsed() < Duration::from_secs(40) {
        let holder_gone = dead(&mut holder);
        if let Ok(mut child) = a.spawn_holder(&["vm3"]) {
            assert!(holder_gone, "vm3 taken while host 3's holder ran");
            taken_at = Some(started.elapsed());
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(taken_at.is_some(), "host 1 takes vm3 by the watchdog rule");
    assert!(dead(&mut holder));
    assert!(c.has_event("self-fence"), "{}", c.log());
    // Its holders died in time, so its watchdog never had to fire.
    assert!(c.emulator_said("fired").is_none());
    for h in [&a, &b] {
        let status = h.status().expect("status");
        assert_eq!(status.lockspaces[0].renewal_failures, 0, "{}", h.log());
        assert!(h.has_event("host-silent") || h.has_event("host-dead"));
    }
    // The path comes back: host 3 joins again with a new generation.
    match fault {
        Fault::Eio => path3.heal(),
        Fault::Hang => path3.resume(),
    }
    let rejoined = wait_long(Duration::from_secs(40), || {
        c.status().filter(|s| {
            s.lockspaces[0].state == "joined" && s.lockspaces[0].generation > generation
        })
    });
    assert!(rejoined.is_some(), "host 3 rejoins; log:\n{}", c.log());
    wait_long(Duration::from_secs(20), || {
        a.host_state(3).filter(|h| h.state == "live")
    })
    .expect("host 1 sees host 3 live again");
}

#[test]
fn a_host_whose_storage_fails_with_eio_self_fences_and_the_others_carry_on() {
    one_host_loses_its_storage(Fault::Eio);
}

#[test]
fn a_host_whose_storage_hangs_self_fences_and_the_others_carry_on() {
    one_host_loses_its_storage(Fault::Hang);
}

/// Three joined hosts in fence mode, all on one pausable device.
fn three_hosts_on_one_pausable_device(name: &str) -> (Scratch, PausableDevice, Vec<Host>) {
    let scratch = Scratch::new(name);
    let device = PausableDevice::start(8 << 20);
    format_test_device(device.path());
    let hosts: Vec<Host> = (1..=3)
        .map(|id| Host::start(&scratch.path, HostSpec::new(id, device.path(), T_MS)))
        .collect();
    for h in &hosts {
        h.wait_joined();
    }
    (scratch, device, hosts)
}

/// Wait until every host sees every host live.
fn wait_everyone_live(hosts: &[Host]) {
    for h in hosts {
        wait_long(Duration::from_secs(20), || {
            let seen = h.hosts();
            (seen.iter().filter(|x| x.state == "live").count() == hosts.len()).then_some(())
        })
        .expect("everyone live");
    }
}

/// No host, as any of them sees it, is silent or dead now (the control
/// socket answering throughout).
fn assert_nobody_silent(hosts: &[Host], during: &str) {
    for h in hosts {
        let status = h.status().expect("status");
        for seen in &status.lockspaces[0].hosts {
            assert!(
                seen.state != "silent" && seen.state != "dead",
                "{} called host {} {} {during}",
                h.spec.name,
                seen.host_id,
                seen.state
            );
        }
    }
}

#[test]
fn a_whole_device_stall_silences_nobody_and_kills_nothing_in_fence_mode() {
    let (_scratch, device, hosts) = three_hosts_on_one_pausable_device("stall");
    wait_everyone_live(&hosts);
    let mut holder = hosts[0].spawn_holder(&["vm1"]).expect("acquire");
    device.pause();
    // Three expiry times (3 x 8T) of no storage at all.
    let stall = Duration::from_millis(3 * 8 * u64::from(T_MS));
    let started = Instant::now();
    while started.elapsed() < stall {
        assert_nobody_silent(&hosts, "during a whole-device stall");
        assert!(!dead(&mut holder), "a holder was killed in fence mode");
        std::thread::sleep(Duration::from_millis(250));
    }
    device.resume();
    for h in &hosts {
        wait_long(Duration::from_secs(30), || {
            let status = h.status()?;
            let space = status.lockspaces.into_iter().next()?;
            (space.state == "joined"
                && space.hosts.iter().filter(|x| x.state == "live").count() == 3)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{} did not recover; log:\n{}", h.spec.name, h.log()));
        assert!(!h.has_event("host-silent"), "{}", h.log());
        assert!(!h.has_event("self-fence"), "{}", h.log());
        assert!(h.has_event("renewal-failed"));
    }
    assert!(!dead(&mut holder));
    // The lease is still held by host 1, generation unchanged.
    assert!(hosts[1].spawn_holder(&["vm1"]).is_err());
    let _ = holder.kill();
    let _ = holder.wait();
}

/// Latency spikes of up to 3T, the envelope the fence-mode expiry (6T) is
/// chosen for (docs/timeouts.md, "Detection in fence mode"): `spikes` times
/// the storage pauses for 3T (at a different point of the renewal cycle
/// each time) and comes back; no host may be called silent meanwhile, by
/// any observer, and none may self-fence.
fn spikes_of_3t_call_no_host_silent(hosts: &[Host], pause: &dyn Fn(), resume: &dyn Fn()) {
    wait_everyone_live(hosts);
    let t = Duration::from_millis(u64::from(T_MS));
    for spike in 0..6u32 {
        // Shift the spike's start through the 2T renewal cycle.
        std::thread::sleep(t * spike / 3);
        pause();
        let started = Instant::now();
        while started.elapsed() < 3 * t {
            std::thread::sleep(Duration::from_millis(50));
        }
        resume();
        // Long enough for every observer to see every host renew again.
        let settled = Instant::now();
        while settled.elapsed() < 4 * t {
            assert_nobody_silent(hosts, "after a 3T latency spike");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for h in hosts {
        assert!(!h.has_event("host-silent"), "{}", h.log());
        assert!(!h.has_event("self-fence"), "{}", h.log());
    }
}

#[test]
fn latency_spikes_of_3t_on_one_hosts_path_call_nobody_silent() {
    let cluster = host_3_on_its_own_path("spike1", |spec| spec);
    let path3 = &cluster.path3;
    spikes_of_3t_call_no_host_silent(&cluster.hosts, &|| path3.pause(), &|| path3.resume());
    // Host 3 itself saw its renewals fail during the spikes.
    let c = &cluster.hosts[2];
    assert!(c.has_event("renewal-failed"), "{}", c.log());
}

#[test]
fn latency_spikes_of_3t_on_the_whole_device_call_nobody_silent() {
    let (_scratch, device, hosts) = three_hosts_on_one_pausable_device("spikeall");
    spikes_of_3t_call_no_host_silent(&hosts, &|| device.pause(), &|| device.resume());
}
