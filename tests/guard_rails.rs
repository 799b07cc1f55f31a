//! Operator mistakes that must not defeat the protocols (issue 17), each
//! on real daemons and a real loop device.

use leasehold_daemon::placement::Priority;
use leasehold_tests::cluster::{domstate, vm, Cluster, ClusterSpec};
use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{leasehold, sparse_file, wait_long, LoopDevice, Scratch};
use std::time::Duration;

const T_MS: u32 = 500;

/// A fresh test lockspace on a loop device.
struct Device {
    root: std::path::PathBuf,
    path: String,
    _device: LoopDevice,
    _scratch: Scratch,
}

fn device(label: &str) -> Device {
    let scratch = Scratch::new(label);
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 8 << 20);
    let device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    let path = device.path.clone();
    format_test_device(&path);
    Device {
        root: scratch.path.clone(),
        path,
        _device: device,
        _scratch: scratch,
    }
}

fn event_message(host: &Host, kind: &str, nth: usize) -> Option<String> {
    host.events()
        .into_iter()
        .filter(|e| e.kind == kind)
        .nth(nth)
        .map(|e| e.message)
}

#[test]
fn sighup_rereads_the_configuration_and_never_ends_the_daemon_and_sigint_stops_it_like_sigterm() {
    let d = device("sighup");
    let mut a = Host::start(&d.root, HostSpec::new(1, &d.path, T_MS));
    a.wait_joined();
    let mut holder = a.spawn_holder(&["vm1"]).expect("acquire");
    let generation = a.wait_joined().lockspaces[0].generation;

    // Unchanged file: said so, nothing else happens.
    a.signal(libc::SIGHUP);
    let said = wait_long(Duration::from_secs(10), || {
        event_message(&a, "config-reload", 0)
    })
    .unwrap_or_else(|| panic!("no config-reload event after SIGHUP\n{}", a.log()));
    assert!(said.contains("unchanged"), "{said}");

    // A changed setting and a changed io_timeout: named, not applied.
    let text = std::fs::read_to_string(&a.config).expect("config");
    let changed = text.replace("io_timeout_ms = 500", "io_timeout_ms = 1000")
        + "\n[failover]\nrestart_attempts = 5\n";
    std::fs::write(&a.config, changed).expect("write config");
    a.signal(libc::SIGHUP);
    let said = wait_long(Duration::from_secs(10), || {
        event_message(&a, "config-reload", 1)
    })
    .expect("second config-reload");
    assert!(said.contains("lockspace.io_timeout_ms"), "{said}");
    assert!(said.contains("failover"), "{said}");
    assert!(said.contains("must not change"), "{said}");

    // A broken file: reported, the running configuration stays.
    std::fs::write(&a.config, "this is not toml [").expect("write config");
    a.signal(libc::SIGHUP);
    let said = wait_long(Duration::from_secs(10), || {
        event_message(&a, "config-reload", 2)
    })
    .expect("third config-reload");
    assert!(said.contains("not a valid configuration"), "{said}");

    // Through all of it the daemon kept its generation and the lease.
    let status = a.wait_joined();
    assert_eq!(status.lockspaces[0].generation, generation);
    assert!(
        status.lockspaces[0]
            .resources
            .iter()
            .any(|r| r.name == "vm1"),
        "{status:?}"
    );
    assert!(
        matches!(holder.try_wait(), Ok(None)),
        "the holder was killed"
    );

    // SIGINT: the same orderly stop as SIGTERM (a handover: the holder
    // still runs), with the reason logged.
    std::fs::write(&a.config, text).expect("restore config");
    assert_eq!(a.end_with(libc::SIGINT), Some(0), "{}", a.log());
    let said = event_message(&a, "daemon-stopping", 0).expect("daemon-stopping event");
    assert!(said.contains("SIGINT"), "{said}");
    assert!(a.has_event("handover"), "{:?}", a.events());
    let _ = holder.kill();
    let _ = holder.wait();
}

/// `leasehold fence confirm|off HOST --yes` through host `via`'s socket.
fn fence(c: &Cluster, via: u32, action: &str, host: &str) -> std::process::Output {
    let socket = c.host(via).socket.display().to_string();
    leasehold(&["fence", action, host, "--socket", &socket, "--yes"])
}

#[test]
fn fencing_a_host_that_renews_is_refused_and_its_vm_runs_on_it_alone() {
    let c = Cluster::start("fencelive", ClusterSpec::qemu(2, T_MS, 1024));
    let name = "gr-web";
    c.add_vm(2, None, (name, 1, 64), Priority::High, false)
        .expect("vm add on host 2");
    assert_eq!(domstate(&c.uri(2), name), "running");
    for action in ["confirm", "off"] {
        let out = fence(&c, 1, action, "host2");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!("fence {action} host2 said: {}", stderr.trim());
        assert_eq!(out.status.code(), Some(3), "fence {action}: {stderr}");
        assert!(stderr.contains("is renewing its lease"), "{stderr}");
        assert!(
            stderr.contains("record changed between two reads"),
            "{stderr}"
        );
    }
    assert!(
        c.host(2).bmc.as_ref().expect("bmc").powered(),
        "host 2 was powered off"
    );
    assert!(!c.host(1).has_event("fence-confirmed"));
    // Hypervisor truth for longer than a restart takes: the VM runs on
    // host 2 only, under host 2's lease.
    for _ in 0..20 {
        assert_eq!(domstate(&c.uri(2), name), "running");
        assert_ne!(
            domstate(&c.uri(1), name),
            "running",
            "the VM runs on both hosts"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let list = c.vm_list(1).expect("vm list");
    assert_eq!(vm(&list, name).and_then(|v| v.owner_host_id), Some(2));
    // Nor may a host fence itself.
    let out = fence(&c, 2, "confirm", "host2");
    assert!(!out.status.success());
}

/// Wait up to `limit` for the daemon of `host` to exit; its status.
fn exit_within(host: &mut Host, limit: Duration) -> Option<i32> {
    let daemon = host.daemon.as_mut()?;
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = daemon.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_second_machine_with_a_host_id_in_use_is_refused_and_the_first_keeps_its_lease() {
    let d = device("dupid");
    let a = Host::start(&d.root, HostSpec::new(2, &d.path, T_MS));
    let generation = a.wait_joined().lockspaces[0].generation;
    let mut holder = a.spawn_holder(&["vm1"]).expect("acquire on the first host");

    // The same configuration copied to another machine: same id, same name.
    let other_root = d.root.join("copy");
    std::fs::create_dir_all(&other_root).expect("dir");
    let mut copy = Host::start(&other_root, HostSpec::new(2, &d.path, T_MS));
    let status = exit_within(&mut copy, Duration::from_secs(30));
    assert_eq!(
        status,
        Some(3),
        "the copy did not exit with 3:\n{}",
        copy.log()
    );
    let log = copy.log();
    assert!(log.contains("host id 2 is in use by \"host2\""), "{log}");
    assert!(log.contains(&d.path), "the device is not named: {log}");

    // Another name, same id (`direct join`): refused too.
    let out = leasehold(&[
        "direct",
        "join",
        &d.path,
        "--host-id",
        "2",
        "--host-name",
        "intruder",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And `direct join` under the same name.
    let out = leasehold(&[
        "direct",
        "join",
        &d.path,
        "--host-id",
        "2",
        "--host-name",
        "host2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The first host never noticed: same generation, lease and holder.
    std::thread::sleep(Duration::from_secs(2));
    let status = a.wait_joined();
    assert_eq!(status.lockspaces[0].generation, generation, "{}", a.log());
    assert!(!a.has_event("self-fence"), "{}", a.log());
    assert!(
        status.lockspaces[0]
            .resources
            .iter()
            .any(|r| r.name == "vm1"),
        "{status:?}"
    );
    assert!(
        matches!(holder.try_wait(), Ok(None)),
        "the holder was killed"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

fn format_args<'a>(path: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "format",
        path,
        "--lockspace",
        "test",
        "--max-hosts",
        "8",
        "--max-resources",
        "16",
        "--io-timeout",
        "0.5",
    ];
    args.extend_from_slice(extra);
    args
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn format_never_creates_a_file_for_a_missing_device_and_creates_one_only_when_asked() {
    // A mistyped device name: refused, with or without --create.
    let typo = format!("/dev/sdz-leasehold-typo-{}", std::process::id());
    for extra in [&[][..], &["--create", "16M"][..]] {
        let out = leasehold(&format_args(&typo, extra));
        assert!(!out.status.success(), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
        assert!(
            !std::path::Path::new(&typo).exists(),
            "a file appeared in /dev"
        );
    }
    // Elsewhere: only with --create, and at least the size the layout needs.
    let scratch = Scratch::new("fmtcreate");
    let path = scratch.file("new.img");
    let out = leasehold(&format_args(&path, &[]));
    assert!(stderr(&out).contains("--create SIZE"), "{}", stderr(&out));
    assert!(!std::path::Path::new(&path).exists());
    let out = leasehold(&format_args(&path, &["--create", "4K"]));
    assert!(stderr(&out).contains("needs at least"), "{}", stderr(&out));
    let out = leasehold(&format_args(&path, &["--create", "16M"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&path).expect("created").len(), 16 << 20);
}

#[test]
fn format_refuses_a_block_device_too_small_for_the_layout_with_the_size_it_needs() {
    let scratch = Scratch::new("fmtsmall");
    let backing = scratch.file("small.img");
    sparse_file(&backing, 1 << 20);
    let small = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    let out = leasehold(&format_args(&small.path, &[]));
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("this layout needs") && said.contains("the device has 1048576"),
        "{said}"
    );
    assert_eq!(
        said.matches(small.path.as_str()).count(),
        1,
        "the device named once: {said}"
    );
}

#[test]
fn format_refuses_a_filesystem_or_partition_table_without_force() {
    let scratch = Scratch::new("fmtsig");
    // ext4 on a loop device.
    let backing = scratch.file("ext4.img");
    sparse_file(&backing, 16 << 20);
    let ext4 = LoopDevice::attach(&backing, 512).expect("loop device");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", &ext4.path])
        .status()
        .expect("mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(made.success());
    let out = leasehold(&format_args(&ext4.path, &[]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ext2/ext3/ext4 filesystem"),
        "{}",
        stderr(&out)
    );
    let out = leasehold(&format_args(&ext4.path, &["--force"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // A GPT partition table in a file.
    let disk = scratch.file("gpt.img");
    sparse_file(&disk, 16 << 20);
    let mut sfdisk = std::process::Command::new("sfdisk")
        .args(["--quiet", "--label", "gpt", &disk])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (apt-get install fdisk)");
    {
        use std::io::Write;
        let mut input = sfdisk.stdin.take().expect("stdin");
        input.write_all(b",,L\n").expect("partition");
    }
    assert!(sfdisk.wait().expect("sfdisk").success());
    let out = leasehold(&format_args(&disk, &[]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("GPT partition table"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn format_over_a_lockspace_with_renewing_hosts_is_refused_even_with_force() {
    let d = device("fmtlive");
    let mut hosts = vec![
        Host::start(&d.root, HostSpec::new(1, &d.path, T_MS)),
        Host::start(&d.root, HostSpec::new(2, &d.path, T_MS)),
    ];
    let generations: Vec<u64> = hosts
        .iter()
        .map(|h| h.wait_joined().lockspaces[0].generation)
        .collect();
    let out = leasehold(&format_args(&d.path, &[]));
    assert!(
        stderr(&out).contains("already holds lockspace"),
        "{}",
        stderr(&out)
    );
    let out = leasehold(&format_args(&d.path, &["--force"]));
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("renewing"), "{said}");
    assert!(
        said.contains("host 1 (host1)") && said.contains("host 2 (host2)"),
        "{said}"
    );
    // Nobody noticed.
    for (h, generation) in hosts.iter().zip(&generations) {
        assert_eq!(h.wait_joined().lockspaces[0].generation, *generation);
        assert!(!h.has_event("self-fence"), "{}", h.log());
    }
    // Once they have left, --force is enough.
    for h in &mut hosts {
        assert_eq!(h.terminate(), Some(0));
    }
    let out = leasehold(&format_args(&d.path, &["--force"]));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_demo_refuses_a_non_empty_directory_it_did_not_make() {
    let scratch = Scratch::new("demodir");
    let precious = scratch.path.join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write");
    let dir = scratch.path.display().to_string();
    let out = leasehold(&["demo", "--dir", &dir]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("was not made by `leasehold demo`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("still there"),
        "keep me"
    );
}

#[test]
fn check_config_catches_what_would_only_fail_at_the_first_failover() {
    let scratch = Scratch::new("preflight");
    let write = |name: &str, text: &str| {
        let path = scratch.file(name);
        std::fs::write(&path, text).expect("write config");
        path
    };
    let base =
        "[host]\nid = 1\nname = \"hv01\"\n[lockspace]\nname = \"prod\"\ndevice = \"/dev/sdb\"\n";
    let check = |path: &str| {
        std::process::Command::new(leasehold_tests::leaseholdd_bin())
            .args(["--check-config", "--config", path])
            .output()
            .expect("run leaseholdd")
    };
    let bad = write(
        "bad.toml",
        &format!("{base}[watchdog]\ndevice = \"/dev/no-such-watchdog\"\n[[cluster.hosts]]\nid = 2\nname = \"hv02\"\nfence = {{ method = \"agent\", agent = \"fence_no_such_agent\" }}\n"),
    );
    let out = check(&bad);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for expected in [
        "/dev/no-such-watchdog does not exist",
        "not in [[cluster.hosts]]",
        "fence_no_such_agent, which is not installed",
        "no password for it",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in: {said}");
    }
    let bare = write("bare.toml", base);
    let out = check(&bare);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("neither a fence device nor a watchdog"),
        "{}",
        stderr(&out)
    );
    let good = write(
        "good.toml",
        &format!("{base}[watchdog]\ndevice = \"/dev/null\"\n[[cluster.hosts]]\nid = 1\nname = \"hv01\"\nfence = {{ method = \"agent\", agent = \"fence_scsi\", options = {{ devices = \"/dev/sdb\" }} }}\n"),
    );
    let out = check(&good);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_registry_exported_before_a_mistaken_format_is_imported_back() {
    let c = Cluster::start("backup", ClusterSpec::test_driver(T_MS, 2048));
    c.add_vm(1, None, ("bk-web", 1, 256), Priority::High, false)
        .expect("add web");
    c.add_vm(1, None, ("bk-db", 2, 256), Priority::Low, false)
        .expect("add db");
    let stop = c
        .host(1)
        .call(&leasehold_daemon::protocol::Request::VmStop {
            vm: "bk-db".to_string(),
        });
    assert!(stop.ok, "{:?}", stop.error);
    let socket = c.host(1).socket.display().to_string();
    let out = leasehold(&["vm", "export", "--socket", &socket]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = c.scratch.file("registry.json");
    std::fs::write(&backup, &out.stdout).expect("save export");

    // Every host powered off, then the device formatted over.
    let device = c.host(1).spec.device.clone();
    for h in &c.hosts {
        h.bmc.as_ref().expect("bmc").power_off_locally();
    }
    let out = leasehold(&format_args(&device, &["--force"]));
    assert!(out.status.success(), "{}", stderr(&out));
    for h in &c.hosts {
        h.bmc.as_ref().expect("bmc").power_on_locally();
    }
    for h in &c.hosts {
        h.wait_joined();
    }
    assert_eq!(
        c.vm_list(1).map(|l| l.vms.len()),
        Some(0),
        "the registry is gone"
    );

    // A damaged backup is refused whole.
    let damaged = c.scratch.file("damaged.json");
    let text = std::fs::read_to_string(&backup).expect("backup");
    std::fs::write(&damaged, text.replacen("256", "257", 1)).expect("write");
    let out = leasehold(&["vm", "import", &damaged, "--socket", &socket]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    assert_eq!(c.vm_list(1).map(|l| l.vms.len()), Some(0));

    // The backup itself: both VMs back, web running again, db stopped.
    let out = leasehold(&["vm", "import", &backup, "--socket", &socket]);
    assert!(out.status.success(), "{}", stderr(&out));
    let running = wait_long(Duration::from_secs(60), || {
        let list = c.vm_list(2)?;
        let web = vm(&list, "bk-web")?;
        (web.state == "running").then_some(())
    });
    assert!(
        running.is_some(),
        "web did not run again: {:?}",
        c.vm_list(2)
    );
    let list = c.vm_list(2).expect("list");
    let db = vm(&list, "bk-db").expect("db imported");
    assert_eq!(db.state, "stopped", "{db:?}");
    assert_eq!(db.priority, Some(Priority::Low));
    // A second import changes nothing: every VM is already registered.
    let out = leasehold(&["vm", "import", &backup, "--socket", &socket]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped"));
    assert_eq!(c.vm_list(2).map(|l| l.vms.len()), Some(2));
}

#[test]
fn a_fence_device_that_stops_answering_is_reported_before_any_failover() {
    let mut spec = ClusterSpec::test_driver(T_MS, 2048);
    spec.extra = "[monitor]\nfence_check_interval_ms = 2000\n".to_string();
    let c = Cluster::start("fencehealth", spec);
    let checks_ok = wait_long(Duration::from_secs(30), || {
        let checks = c.host(1).status()?.fence_checks;
        (checks.len() == 2 && checks.iter().all(|c| c.ok)).then_some(checks)
    })
    .unwrap_or_else(|| panic!("no fence checks on host 1: {:?}", c.host(1).status()));
    assert_eq!(
        checks_ok.iter().map(|c| c.host_id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    // Host 3's BMC dies; host 3 itself runs on.
    c.host(3).bmc.as_ref().expect("bmc").kill_bmc_only();
    // (Another host's BMC may have been still starting at a first check.)
    let failed = wait_long(Duration::from_secs(30), || {
        c.host(1)
            .events()
            .into_iter()
            .find(|e| e.kind == "fence-device-failed" && e.message.contains("host 3 "))
    })
    .unwrap_or_else(|| panic!("no fence-device-failed event\n{}", c.host(1).log()));
    assert!(
        failed.message.contains("host 3 (host3)"),
        "{}",
        failed.message
    );
    let status = c.host(1).status().expect("status");
    let three = status
        .fence_checks
        .iter()
        .find(|c| c.host_id == 3)
        .expect("host 3 checked");
    assert!(!three.ok && three.error.is_some(), "{three:?}");
    assert!(status.fence_checks.iter().any(|c| c.host_id == 2 && c.ok));
    // `leasehold status` shows it, and `fence status` fails for it.
    let socket = c.host(1).socket.display().to_string();
    let out = leasehold(&["status", "--socket", &socket]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("fence device of host 3 (host3)") && shown.contains("FAILING"),
        "{shown}"
    );
    let out = leasehold(&["fence", "status", "host3", "--socket", &socket]);
    assert!(!out.status.success());
    // Nothing was fenced or taken: host 3 renews on.
    assert!(c.host(1).host_state(3).is_some_and(|h| h.state == "live"));
}

#[test]
fn a_host_whose_shared_settings_differ_is_reported_by_every_host_until_put_right() {
    let mut spec = ClusterSpec::test_driver(T_MS, 2048);
    spec.failover_lines
        .insert(3, "restart_attempts = 5\n".to_string());
    let c = Cluster::start("agreement", spec);
    // Both others report host 3, and host 3 reports both of them.
    for (reporter, odd) in [(1, 3), (2, 3), (3, 1), (3, 2)] {
        let needle = format!("host {odd} (host{odd}) runs with other [failover]");
        let event = wait_long(Duration::from_secs(20), || {
            c.host(reporter)
                .events()
                .into_iter()
                .find(|e| e.kind == "settings-differ" && e.message.contains(&needle))
        });
        assert!(
            event.is_some(),
            "host {reporter} does not report host {odd}\n{}",
            c.host(reporter).log()
        );
    }
    // Hosts 1 and 2 agree: neither reports the other.
    for (reporter, other) in [(1, 2), (2, 1)] {
        let needle = format!("host {other} (host{other})");
        assert!(
            !c.host(reporter)
                .events()
                .iter()
                .any(|e| e.kind == "settings-differ" && e.message.contains(&needle)),
            "host {reporter} reports agreeing host {other}"
        );
    }
    let three = c.host(1).host_state(3).expect("host 3");
    assert_eq!(three.settings_differ, vec!["[failover]".to_string()]);
    let two = c.host(1).host_state(2).expect("host 2");
    assert!(two.settings_differ.is_empty(), "{two:?}");
    assert_ne!(three.failover_digest, two.failover_digest);
    assert_eq!(three.cluster_digest, two.cluster_digest);
    let socket = c.host(1).socket.display().to_string();
    let out = leasehold(&["status", "--socket", &socket]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("SETTINGS DIFFER from this host's: [failover]"),
        "{shown}"
    );
    // The operator puts host 3's file right and restarts its daemon.
    // (Its daemon leaves on SIGTERM; the BMC then boots it again.)
    let host3 = c.host(3);
    let config = std::fs::read_to_string(&host3.config).expect("config");
    std::fs::write(&host3.config, config.replace("restart_attempts = 5\n", ""))
        .expect("write config");
    host3.signal(libc::SIGTERM);
    wait_long(Duration::from_secs(30), || {
        c.host(1).host_state(3).filter(|h| h.state == "left")
    })
    .unwrap_or_else(|| panic!("host 3 did not leave\n{}", host3.log()));
    let bmc = host3.bmc.as_ref().expect("bmc");
    bmc.power_off_locally();
    bmc.power_on_locally();
    host3.wait_joined();
    let agreed = wait_long(Duration::from_secs(20), || {
        c.host(1)
            .events()
            .into_iter()
            .find(|e| e.kind == "settings-agree" && e.message.contains("host 3 (host3)"))
    });
    assert!(agreed.is_some(), "{}", c.host(1).log());
    let three = c.host(1).host_state(3).expect("host 3");
    assert!(three.settings_differ.is_empty(), "{three:?}");
}
