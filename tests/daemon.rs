//! leaseholdd as real processes on real block devices: joining, watching
//! each other, kill -9 and SIGSTOP, the watchdog emulation, handover on
//! restart, and bad input on every door.

use leasehold_daemon::protocol::{ErrorKind, Request};
use leasehold_tests::daemon::{format_test_device, scribble_host_sector, Host, HostSpec};
use leasehold_tests::{
    dead, leasehold, leasehold_ok, sparse_file, wait_for, wait_long, LoopDevice, Scratch,
};
use std::time::{Duration, Instant};

/// io_timeout for these tests: expiry 8T = 4 s (6T = 3 s without a
/// watchdog), host_dead 12T = 6 s.
const T_MS: u32 = 500;

struct Cluster {
    _scratch: Scratch,
    root: std::path::PathBuf,
    _device: LoopDevice,
    path: String,
}

fn cluster(label: &str) -> Cluster {
    let scratch = Scratch::new(label);
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 8 << 20);
    let device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    let path = device.path.clone();
    format_test_device(&path);
    Cluster {
        root: scratch.path.clone(),
        _scratch: scratch,
        _device: device,
        path,
    }
}

/// Host 1 with a watchdog holding vm1, and host 2, both joined.
fn watchdog_host_with_holder(c: &Cluster) -> (Host, Host, std::process::Child, u64) {
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS).with_watchdog());
    let b = Host::start(&c.root, HostSpec::new(2, &c.path, T_MS));
    a.wait_joined();
    b.wait_joined();
    let holder = a.spawn_holder(&["vm1"]).expect("acquire on A");
    let generation = a.wait_joined().lockspaces[0].generation;
    (a, b, holder, generation)
}

fn all_live(host: &Host, ids: &[u32]) -> bool {
    let hosts = host.hosts();
    ids.iter()
        .all(|id| hosts.iter().any(|h| h.host_id == *id && h.state == "live"))
}

#[test]
fn three_daemons_see_each_other_and_a_killed_one_goes_silent_after_expiry_only() {
    // With a watchdog: expiry 8T.
    killed_host_goes_silent_after(true, 8);
}

#[test]
fn without_a_watchdog_a_killed_host_goes_silent_after_the_fence_mode_expiry_only() {
    // Fence mode: 6T (docs/timeouts.md, "Detection in fence mode").
    killed_host_goes_silent_after(false, 6);
}

fn killed_host_goes_silent_after(watchdog: bool, expiry_t: u64) {
    let c = cluster(if watchdog { "three" } else { "three-fm" });
    let mut hosts: Vec<Host> = (1..=3)
        .map(|id| {
            let spec = HostSpec::new(id, &c.path, T_MS);
            Host::start(&c.root, if watchdog { spec.with_watchdog() } else { spec })
        })
        .collect();
    for h in &hosts {
        h.wait_joined();
        assert_eq!(h.emulator_said("armed").is_some(), watchdog);
    }
    for h in &hosts {
        assert!(
            wait_long(Duration::from_secs(20), || all_live(h, &[1, 2, 3])
                .then_some(()))
            .is_some(),
            "{} does not see every host live: {:?}",
            h.spec.name,
            h.hosts()
        );
    }
    let killed_at = Instant::now();
    hosts[2].kill9();
    let expiry = Duration::from_millis(expiry_t * u64::from(T_MS));
    let renew_interval = Duration::from_millis(2 * u64::from(T_MS));
    for h in &hosts[..2] {
        let silent = wait_long(Duration::from_secs(30), || {
            h.host_state(3)
                .filter(|s| s.state == "silent" || s.state == "dead")
        })
        .unwrap_or_else(|| panic!("host 3 never went silent for {}", h.spec.name));
        let after = killed_at.elapsed();
        // Its last renewal was at most one interval before the kill.
        assert!(
            after + renew_interval >= expiry,
            "declared silent {after:?} after the kill, before expiry {expiry:?}"
        );
        assert!(silent.unchanged_for_ms >= expiry_t * u64::from(T_MS));
        let status = h.status().expect("status");
        let space = &status.lockspaces[0];
        assert_eq!(
            space.renewal_failures, 0,
            "the observer's own renewals were healthy"
        );
        assert!(!space.storage_incident);
        assert!(h.has_event("host-silent"));
    }
    // The two survivors still see each other live.
    assert!(all_live(&hosts[0], &[1, 2]));
}

#[test]
fn a_lease_is_bound_to_its_process_and_refused_elsewhere() {
    let c = cluster("bound");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    let b = Host::start(&c.root, HostSpec::new(2, &c.path, T_MS));
    a.wait_joined();
    b.wait_joined();
    let mut holder = a.spawn_holder(&["vm1"]).expect("acquire on A");
    let refused = b.spawn_holder(&["vm1"]).expect_err("B must be refused");
    assert!(refused.contains("resource busy"), "{refused}");
    assert!(refused.contains("host 1 (host1)"), "{refused}");
    // Inquire from B names A.
    let reply = b.call(&Request::Inquire {
        lockspace: None,
        resource: "vm1".to_string(),
    });
    assert!(reply.ok, "{reply:?}");
    assert_eq!(
        reply
            .result
            .as_ref()
            .and_then(|r| r["holder_host_id"].as_u64()),
        Some(1)
    );
    // The holder exits: its lease is released and B gets it.
    holder.kill().expect("kill holder");
    holder.wait().expect("reap");
    assert!(
        b.acquires_within("vm1", Duration::from_secs(20)),
        "B acquires after A's holder exited"
    );
}

#[test]
fn a_stopped_watchdog_host_has_its_holders_killed_before_anyone_takes_over() {
    let c = cluster("sigstop");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS).with_watchdog());
    let b = Host::start(&c.root, HostSpec::new(2, &c.path, T_MS));
    a.wait_joined();
    b.wait_joined();
    assert!(
        a.emulator_said("armed").is_some(),
        "the daemon arms the watchdog"
    );
    let mut holder = a.spawn_holder(&["vm1"]).expect("acquire on A");
    wait_long(Duration::from_secs(20), || {
        all_live(&b, &[1, 2]).then_some(())
    })
    .expect("B sees A live");
    a.stop();
    let stopped_at = Instant::now();
    // B tries all along; every success must find A's holder already dead.
    let mut taken = None;
    while stopped_at.elapsed() < Duration::from_secs(40) {
        let holder_dead_before = dead(&mut holder);
        if let Ok(mut child) = b.spawn_holder(&["vm1"]) {
            assert!(
                holder_dead_before,
                "B acquired vm1 while A's holder still ran ({:?} after SIGSTOP)",
                stopped_at.elapsed()
            );
            taken = Some(stopped_at.elapsed());
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let taken = taken.expect("B takes vm1 over by the watchdog rule");
    assert!(
        a.emulator_said("fired").is_some(),
        "the emulated watchdog fired"
    );
    assert!(dead(&mut holder));
    // Not before the host_dead time (12T) could have passed.
    assert!(
        taken >= Duration::from_millis(10 * u64::from(T_MS)),
        "{taken:?}"
    );
}

#[test]
fn sigterm_with_running_holders_hands_over_and_without_them_leaves() {
    let c = cluster("handover");
    let (mut a, b, mut holder, generation) = watchdog_host_with_holder(&c);
    assert_eq!(a.terminate(), Some(0));
    assert!(!dead(&mut holder), "a planned restart kills nobody");
    assert!(a.has_event("handover"));
    assert!(
        a.emulator_said("disarmed").is_none(),
        "handover keeps the watchdog armed"
    );
    a.start_daemon();
    let status = a.wait_joined();
    let space = &status.lockspaces[0];
    assert_eq!(
        space.generation, generation,
        "the new daemon took over the generation"
    );
    assert_eq!(space.resources.len(), 1, "{space:?}");
    assert!(a.has_event("taken-over"));
    assert!(b.spawn_holder(&["vm1"]).is_err(), "the lease stayed A's");
    // Well past the renewal deadline the holder still runs, still protected.
    std::thread::sleep(Duration::from_millis(8 * u64::from(T_MS)));
    assert!(!dead(&mut holder));
    assert!(b.spawn_holder(&["vm1"]).is_err());

    // Without holders SIGTERM releases and leaves; B then gets the lease at once.
    holder.kill().expect("kill");
    holder.wait().expect("reap");
    wait_long(Duration::from_secs(10), || {
        a.status().filter(|s| s.lockspaces[0].resources.is_empty())
    })
    .expect("A released vm1 of the exited holder");
    assert_eq!(a.terminate(), Some(0));
    assert!(
        a.emulator_said("disarmed").is_some(),
        "clean stop: magic close"
    );
    wait_long(Duration::from_secs(10), || {
        b.host_state(1).filter(|h| h.state == "left")
    })
    .expect("B sees A left");
    assert!(
        b.acquires_within("vm1", Duration::from_secs(5)),
        "B acquires"
    );
}

#[test]
fn bad_requests_get_errors_and_the_connection_and_daemon_survive() {
    let c = cluster("badinput");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    a.wait_joined();
    let mut client = a.client().expect("connect");
    let long = format!("{{\"op\":\"status\",\"pad\":\"{}\"}}", "x".repeat(200_000));
    for line in [
        "not json",
        "{\"op\":\"reboot\"}",
        "{\"op\":\"register\",\"pid\":\"1\"}",
        "{\"op\":\"acquire\",\"resource\":\"vm1\"}",
        "[1,2,3]",
        "\u{1}\u{2}\u{3}",
        long.as_str(),
    ] {
        let reply = client.call_raw(line).expect("an answer");
        assert!(!reply.ok, "{line:.40} accepted");
        assert_eq!(
            reply.error.as_ref().map(|e| e.kind),
            Some(ErrorKind::BadRequest),
            "{reply:?}"
        );
    }
    // A request for a process that is not registered, or does not exist.
    let reply = client
        .call(&Request::Acquire {
            lockspace: None,
            resource: "vm1".to_string(),
            pid: 1,
            vm: None,
        })
        .expect("answer");
    assert_eq!(reply.error.map(|e| e.kind), Some(ErrorKind::NotFound));
    let reply = client
        .call(&Request::Register {
            pid: 999_999_999,
            bind: false,
        })
        .expect("answer");
    assert_eq!(reply.error.map(|e| e.kind), Some(ErrorKind::NotFound));
    let reply = client
        .call(&Request::Acquire {
            lockspace: None,
            resource: "a-name-much-longer-than-forty-eight-bytes-is-refused-here".to_string(),
            pid: i32::try_from(std::process::id()).expect("pid"),
            vm: None,
        })
        .expect("answer");
    assert!(!reply.ok);
    // The same connection still works.
    let reply = client.call(&Request::Status {}).expect("answer");
    assert!(reply.ok);
    // Half a line then a hang-up does not hurt either.
    {
        use std::io::Write;
        let mut raw = std::os::unix::net::UnixStream::connect(&a.socket).expect("connect");
        raw.write_all(b"{\"op\":\"sta").expect("write");
    }
    assert!(a.status().is_some(), "daemon alive");
}

#[test]
fn a_peer_that_is_neither_root_nor_in_the_group_is_refused() {
    let c = cluster("peercred");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    a.wait_joined();
    // Open the socket file to everyone so the daemon's own check decides.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a.socket, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&c.root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(
        a.socket.parent().expect("dir"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(leasehold_tests::leasehold_bin())
        .arg("status")
        .arg("--socket")
        .arg(&a.socket)
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("may not use leaseholdd's socket"),
        "{stderr}"
    );
    assert!(a.has_event("client-refused"));
    // Root still gets in.
    assert!(a.status().is_some());
}

#[test]
fn invalid_config_is_refused_before_the_device_is_touched() {
    let scratch = Scratch::new("badconfig");
    let config = scratch.file("bad.toml");
    std::fs::write(
        &config,
        "[host]\nid = 1\nname = \"a\"\n[lockspace]\nname = \"t\"\ndevice = \"/nonexistent/dev\"\nio_timeout_ms = 5\n",
    )
    .expect("write");
    let out = std::process::Command::new(leasehold_tests::leaseholdd_bin())
        .args(["--check-config", "--config", &config])
        .output()
        .expect("run leaseholdd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&config), "{stderr}");
    assert!(stderr.contains("lockspace.io_timeout_ms"), "{stderr}");
    assert!(stderr.contains("100..=300000"), "{stderr}");
    // Starting (not only checking) fails the same way.
    let out = std::process::Command::new(leasehold_tests::leaseholdd_bin())
        .args(["--config", &config])
        .output()
        .expect("run leaseholdd");
    assert_eq!(out.status.code(), Some(2));
    // A syntax error names its line.
    std::fs::write(&config, "[host]\nid = 1\nname = \n").expect("write");
    let out = std::process::Command::new(leasehold_tests::leaseholdd_bin())
        .args(["--check-config", "--config", &config])
        .output()
        .expect("run leaseholdd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn an_overwritten_host_sector_makes_its_owner_self_fence_and_others_never_treat_it_as_free() {
    let c = cluster("corrupt");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    let mut b = Host::start(&c.root, HostSpec::new(2, &c.path, T_MS));
    let mut dead_host = Host::start(&c.root, HostSpec::new(3, &c.path, T_MS).with_watchdog());
    a.wait_joined();
    b.wait_joined();
    dead_host.wait_joined();
    let mut holder = b.spawn_holder(&["vm2"]).expect("acquire on B");
    let mut on_dead = dead_host.spawn_holder(&["vm3"]).expect("acquire on host 3");

    // B's own sector overwritten: B kills its holder and stops, saying why.
    scribble_host_sector(&c.path, 2);
    wait_long(Duration::from_secs(20), || dead(&mut holder).then_some(()))
        .expect("B self-fences and kills its holder");
    assert!(b.has_event("self-fence"));
    let code = wait_long(Duration::from_secs(30), || {
        b.daemon.as_mut().and_then(|d| d.try_wait().ok().flatten())
    })
    .expect("B's daemon gives up");
    assert_eq!(code.code(), Some(1), "{}", b.log());
    assert!(b.log().contains("never treated as free"), "{}", b.log());

    // Host 3 loses power holding vm3, then its sector is overwritten: its
    // lease stays protected however long it stands still.
    dead_host.power_off();
    let _ = on_dead.wait();
    scribble_host_sector(&c.path, 3);
    let seen = wait_long(Duration::from_secs(20), || {
        a.host_state(3).filter(|h| h.state == "unreadable")
    })
    .expect("A reports host 3 unreadable");
    assert!(seen.error.is_some());
    std::thread::sleep(Duration::from_millis(14 * u64::from(T_MS)));
    let refused = a.spawn_holder(&["vm3"]).expect_err("vm3 stays protected");
    assert!(refused.contains("never treated as free"), "{refused}");
    let dump = leasehold(&["dump", &c.path]);
    assert!(String::from_utf8_lossy(&dump.stdout).contains("vm3"));
    assert!(wait_for(|| a.status()).is_some());
}

#[test]
fn a_crashed_daemon_is_taken_over_by_the_next_one_without_losing_holders() {
    let c = cluster("crash");
    let (mut a, b, mut holder, generation) = watchdog_host_with_holder(&c);
    a.kill9();
    a.start_daemon();
    let status = a.wait_joined();
    assert_eq!(status.lockspaces[0].generation, generation);
    assert_eq!(status.lockspaces[0].resources.len(), 1);
    assert!(!dead(&mut holder));
    assert!(a.emulator_said("fired").is_none());
    // Its exit is still noticed by the new daemon.
    holder.kill().expect("kill");
    holder.wait().expect("reap");
    wait_long(Duration::from_secs(10), || {
        a.status().filter(|s| s.lockspaces[0].resources.is_empty())
    })
    .expect("the new daemon released the lease of the exited holder");
    assert!(
        b.acquires_within("vm1", Duration::from_secs(5)),
        "B acquires"
    );
}

#[test]
fn after_a_reboot_the_earlier_generation_is_declared_over() {
    let c = cluster("reboot");
    let mut a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    let b = Host::start(&c.root, HostSpec::new(2, &c.path, T_MS));
    a.wait_joined();
    b.wait_joined();
    let mut holder = a.spawn_holder(&["vm1"]).expect("acquire on A");
    a.power_off();
    let _ = holder.wait();
    // Without a fence device B cannot take vm1: A might only be paused.
    std::thread::sleep(Duration::from_millis(14 * u64::from(T_MS)));
    assert!(b.spawn_holder(&["vm1"]).is_err());
    // A comes back after a reboot (its state file names another boot).
    let state = a.dir.join("state").join("state.json");
    let text = std::fs::read_to_string(&state).expect("state file");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["boot_id"] = serde_json::Value::from("an-earlier-boot");
    std::fs::write(&state, json.to_string()).expect("write");
    a.boot();
    a.wait_joined();
    wait_long(Duration::from_secs(10), || {
        a.has_event("floor-raised").then_some(())
    })
    .expect("A declares its earlier generation over");
    assert!(
        b.acquires_within("vm1", Duration::from_secs(10)),
        "B takes vm1 at once"
    );
}

#[test]
fn a_second_lockspace_can_be_added_used_and_removed() {
    let c = cluster("addls");
    let second = Scratch::new("addls2");
    let backing = second.file("second.img");
    sparse_file(&backing, 8 << 20);
    let device2 = LoopDevice::attach(&backing, 512).expect("loop device");
    leasehold_ok(&[
        "format",
        &device2.path,
        "--lockspace",
        "other",
        "--max-hosts",
        "8",
        "--max-resources",
        "4",
        "--io-timeout",
        "0.5",
    ]);
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    a.wait_joined();
    let socket = a.socket.to_string_lossy().into_owned();
    // A wrong lockspace name on the device is refused, with the reason.
    let wrong = leasehold(&[
        "client",
        "add-lockspace",
        "nope",
        &device2.path,
        "--socket",
        &socket,
    ]);
    assert!(!wrong.status.success());
    leasehold_ok(&[
        "client",
        "add-lockspace",
        "other",
        &device2.path,
        "--socket",
        &socket,
    ]);
    let status = a.status().expect("status");
    assert_eq!(status.lockspaces.len(), 2);
    let mut holder = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");
    let pid = holder.id().to_string();
    leasehold_ok(&["client", "register", "--pid", &pid, "--socket", &socket]);
    leasehold_ok(&[
        "client",
        "acquire",
        "vmx",
        "--pid",
        &pid,
        "--lockspace",
        "other",
        "--socket",
        &socket,
    ]);
    let busy = leasehold(&["client", "remove-lockspace", "other", "--socket", &socket]);
    assert!(
        !busy.status.success(),
        "removal refused while a lease is held"
    );
    leasehold_ok(&[
        "client",
        "release",
        "vmx",
        "--pid",
        &pid,
        "--lockspace",
        "other",
        "--socket",
        &socket,
    ]);
    leasehold_ok(&["client", "remove-lockspace", "other", "--socket", &socket]);
    assert_eq!(a.status().expect("status").lockspaces.len(), 1);
    let dump = leasehold_ok(&["dump", &device2.path, "--json"]);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("json");
    let flags = dump["hosts"][0]["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        flags.contains(&serde_json::Value::from("released")),
        "{dump}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn status_hosts_and_events_commands_show_the_daemon() {
    let c = cluster("cli");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    let b = Host::start(&c.root, HostSpec::new(2, &c.path, T_MS));
    a.wait_joined();
    b.wait_joined();
    wait_long(Duration::from_secs(20), || {
        all_live(&a, &[1, 2]).then_some(())
    })
    .expect("A sees both live");
    let mut holder = a.spawn_holder(&["vm7"]).expect("acquire");
    let socket = a.socket.to_string_lossy().into_owned();
    let text = leasehold_ok(&["status", "--socket", &socket]);
    assert!(text.contains("host 1 (host1)"), "{text}");
    assert!(text.contains("host2"), "{text}");
    assert!(text.contains("holds vm7"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&leasehold_ok(&["status", "--json", "--socket", &socket]))
            .expect("json");
    assert_eq!(json["lockspaces"][0]["resources"][0]["name"], "vm7");
    let hosts = leasehold_ok(&["hosts", "--socket", &socket]);
    assert!(hosts.contains("live"), "{hosts}");
    let events = leasehold_ok(&["events", "--socket", &socket, "-n", "100"]);
    assert!(events.contains("joined"), "{events}");
    assert!(events.contains("acquired vm7"), "{events}");
    // --config finds the socket too.
    let config = a.config.to_string_lossy().into_owned();
    let inquire = leasehold_ok(&["client", "inquire", "vm7", "--config", &config]);
    assert!(inquire.contains("held by host 1 (host1)"), "{inquire}");
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn systemd_hears_ready_and_watchdog_keepalives() {
    let c = cluster("notify");
    let notify = c.root.join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).expect("bind notify socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut spec = HostSpec::new(1, &c.path, T_MS);
    spec.env.push((
        "NOTIFY_SOCKET".to_string(),
        notify.to_string_lossy().into_owned(),
    ));
    let a = Host::start(&c.root, spec);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        if let Ok(n) = listener.recv(&mut buffer) {
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
            seen.push('\n');
        }
    }
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(seen.contains("STATUS=joined test as host 1"), "{seen}");
    assert!(seen.contains("WATCHDOG=1"), "{seen}");
    drop(a);
}

#[test]
fn register_unregister_cycles_leak_no_descriptors() {
    let c = cluster("fdleak");
    let a = Host::start(&c.root, HostSpec::new(1, &c.path, T_MS));
    a.wait_joined();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");
    let pid = i32::try_from(sleeper.id()).expect("pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", a.daemon_pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut client = a.client().expect("connect");
    let before = fds();
    for _ in 0..200 {
        assert!(
            client
                .call(&Request::Register { pid, bind: false })
                .expect("answer")
                .ok
        );
        assert!(
            client
                .call(&Request::Unregister { pid })
                .expect("answer")
                .ok
        );
    }
    // Let the aborted watches be dropped.
    std::thread::sleep(Duration::from_millis(200));
    let after = fds();
    assert!(
        after < before + 20,
        "descriptors grew from {before} to {after}"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn group_members_use_the_socket_but_register_only_their_own_processes() {
    let group = "leaseholdtest";
    let added = std::process::Command::new("groupadd")
        .args(["-f", group])
        .status()
        .expect("groupadd");
    assert!(added.success());
    let gid = nix::unistd::Group::from_name(group)
        .expect("lookup")
        .expect("group exists")
        .gid
        .as_raw();
    let c = cluster("group");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&c.root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut spec = HostSpec::new(1, &c.path, T_MS);
    spec.socket_group = Some(group.to_string());
    let a = Host::start(&c.root, spec);
    a.wait_joined();
    std::fs::set_permissions(
        a.socket.parent().expect("dir"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let as_member = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(format!("--groups={gid}"))
            .arg(leasehold_tests::leasehold_bin())
            .args(args)
            .arg("--socket")
            .arg(&a.socket)
            .output()
            .expect("setpriv")
    };
    // A member may look.
    let status = as_member(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // But not register someone else's process (it would be SIGKILLed on self-fence).
    let foreign = as_member(&["client", "register", "--pid", "1"]);
    assert!(!foreign.status.success());
    assert!(
        String::from_utf8_lossy(&foreign.stderr).contains("only its own process"),
        "{}",
        String::from_utf8_lossy(&foreign.stderr)
    );
    // Its own process, yes: `client run` registers itself and execs.
    let own = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534"])
        .arg(format!("--groups={gid}"))
        .arg(leasehold_tests::leasehold_bin())
        .args(["client", "run", "--resource", "vmg", "--socket"])
        .arg(&a.socket)
        .args(["--", "true"])
        .output()
        .expect("setpriv");
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
}
