//! Fencing against real BMC code: ipmi_sim per host (its chassis power is
//! the host's processes), our native IPMI client and fence_ipmilan, cross-
//! checked with ipmitool.

use leasehold_tests::bmc::{free_udp_port, PASSWORD, USER};
use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{dead, leasehold, leasehold_ok, sparse_file, wait_long, LoopDevice, Scratch};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T_MS: u32 = 500;

enum Method {
    Ipmi,
    Agent,
}

/// Fields drop in order: the hosts (and their BMCs) before the device and
/// the directory that holds their files.
struct Cluster {
    hosts: Vec<Host>,
    device: LoopDevice,
    _scratch: Scratch,
}

fn secrets(root: &Path, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join("secrets.toml");
    std::fs::write(&path, format!("[hosts.host1]\npassword = \"{password}\"\n")).expect("secrets");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Host 1 behind a BMC (fenced by `method`), hosts 2 and 3 as survivors.
fn cluster(label: &str, method: Method, password: &str) -> Cluster {
    let scratch = Scratch::new(label);
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 8 << 20);
    let device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    format_test_device(&device.path);
    let port = free_udp_port();
    let fence1 = match method {
        Method::Ipmi => format!(
            "{{ method = \"ipmi\", address = \"127.0.0.1\", port = {port}, user = \"{USER}\" }}"
        ),
        Method::Agent => format!(
            "{{ method = \"agent\", agent = \"fence_ipmilan\", options = {{ ip = \"127.0.0.1\", ipport = \"{port}\", username = \"{USER}\", lanplus = \"1\", cipher = \"3\", power_wait = \"0\" }} }}"
        ),
    };
    // Hosts 2 and 3 name a fence device that is never used here.
    let other = "{ method = \"agent\", agent = \"fence_ipmilan\", options = { ip = \"127.0.0.1\", ipport = \"9\" } }";
    let cluster_toml = format!(
        "[[cluster.hosts]]\nid = 1\nname = \"host1\"\nfence = {fence1}\n[[cluster.hosts]]\nid = 2\nname = \"host2\"\nfence = {other}\n[[cluster.hosts]]\nid = 3\nname = \"host3\"\nfence = {other}\n"
    );
    let secrets = secrets(&scratch.path, password);
    let spec = |id: u32| {
        let mut spec = HostSpec::new(id, &device.path, T_MS);
        spec.extra = cluster_toml.clone();
        spec.secrets = Some(secrets.clone());
        spec
    };
    let mut first = spec(1);
    first.bmc_port = Some(port);
    let hosts = vec![
        Host::start_with_bmc(&scratch.path, first),
        Host::start(&scratch.path, spec(2)),
        Host::start(&scratch.path, spec(3)),
    ];
    for h in &hosts {
        h.wait_joined();
    }
    Cluster {
        hosts,
        device,
        _scratch: scratch,
    }
}

fn count_events(hosts: &[Host], kind: &str) -> usize {
    hosts
        .iter()
        .map(|h| h.events().iter().filter(|e| e.kind == kind).count())
        .sum()
}

fn event_time(hosts: &[Host], kind: &str) -> Option<String> {
    hosts
        .iter()
        .flat_map(|h| h.events())
        .find(|e| e.kind == kind)
        .map(|e| e.time)
}

/// Milliseconds between two event timestamps (RFC 3339, same day).
fn between_ms(from: &str, to: &str) -> i64 {
    let ms = |t: &str| -> i64 {
        let clock = t.split('T').nth(1).unwrap_or("").trim_end_matches('Z');
        let mut parts = clock.split(':');
        let h: i64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let m: i64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let s: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        (h * 3600 + m * 60) * 1000 + (s * 1000.0) as i64
    };
    ms(to) - ms(from)
}

/// A holder of vm1 on host 1, once every survivor sees host 1 live.
fn holder_seen_live(victim: &Host, survivors: &[Host]) -> std::process::Child {
    let holder = victim.spawn_holder(&["vm1"]).expect("acquire on host 1");
    for s in survivors {
        wait_long(Duration::from_secs(20), || {
            s.host_state(1).filter(|h| h.state == "live")
        })
        .expect("host 1 live");
    }
    holder
}

fn fence_a_silent_host(method: Method, label: &str) {
    let c = cluster(label, method, PASSWORD);
    let [victim, survivors @ ..] = &c.hosts[..] else {
        unreachable!()
    };
    let mut holder = holder_seen_live(victim, survivors);
    let old_generation = victim.wait_joined().lockspaces[0].generation;
    // Only paused, not dead: the daemon would resume if let.
    victim.stop();
    let stopped = Instant::now();
    wait_long(Duration::from_secs(40), || {
        (count_events(survivors, "fenced") > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("nobody fenced host 1; host 2 log:\n{}", survivors[0].log()));
    let fenced_after = stopped.elapsed();
    assert_eq!(count_events(survivors, "fencing"), 1, "exactly one fencer");
    assert!(dead(&mut holder), "the power-off killed host 1's holder");
    assert!(!victim.bmc.as_ref().expect("bmc").powered());
    let status = victim
        .bmc
        .as_ref()
        .expect("bmc")
        .ipmitool(&["chassis", "power", "status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("off"),
        "ipmitool agrees: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    // The lease is takeable at once after the mark.
    assert!(survivors[0].acquires_within("vm1", Duration::from_secs(10)));
    // `dump` reads the mark: host 1 is fenced, the others live.
    let device = c.device.path.clone();
    let settled: serde_json::Value =
        serde_json::from_str(&leasehold_ok(&["dump", "--settle", "--json", &device]))
            .expect("dump --json");
    let states: Vec<(u64, String)> = settled["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["host_id"].as_u64().unwrap_or(0),
                h["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [(1, "fenced".into()), (2, "live".into()), (3, "live".into())],
        "{settled}"
    );
    let silent_at = event_time(survivors, "fence-needed").expect("fence-needed event");
    let fenced_at = event_time(survivors, "fenced").expect("fenced event");
    eprintln!(
        "silent -> powered off (confirmed): {} ms; SIGSTOP -> fenced: {} ms",
        between_ms(&silent_at, &fenced_at),
        fenced_after.as_millis()
    );

    // Power on through the daemon: host 1 comes back with a new generation
    // and holds nothing of the old one.
    let socket = survivors[0].socket.to_string_lossy().into_owned();
    let on = leasehold(&["fence", "on", "host1", "--socket", &socket]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let back = wait_long(Duration::from_secs(30), || {
        victim
            .status()
            .filter(|s| s.lockspaces[0].state == "joined")
    })
    .expect("host 1 rejoins after power on");
    assert!(back.lockspaces[0].generation > old_generation);
    assert!(back.lockspaces[0].resources.is_empty());
    let status = leasehold(&["fence", "status", "host1", "--socket", &socket, "--json"]);
    let json = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(json.contains("\"power\": \"on\""), "{json}");

    // The password appears nowhere.
    let everything: String = c
        .hosts
        .iter()
        .map(|h| format!("{}{:?}", h.log(), h.events()))
        .collect::<String>()
        + &json
        + &String::from_utf8_lossy(&leasehold(&["status", "--json", "--socket", &socket]).stdout);
    assert!(!everything.contains(PASSWORD), "the BMC password leaked");
}

#[test]
fn a_paused_host_is_fenced_through_native_ipmi_exactly_once_and_comes_back_new() {
    fence_a_silent_host(Method::Ipmi, "fence-ipmi");
}

#[test]
fn a_paused_host_is_fenced_through_fence_ipmilan() {
    fence_a_silent_host(Method::Agent, "fence-agent");
}

#[test]
fn a_failing_fence_is_retried_loudly_and_nothing_is_taken_over() {
    let c = cluster("fence-fail", Method::Ipmi, "wrong-password");
    let [victim, survivors @ ..] = &c.hosts[..] else {
        unreachable!()
    };
    let mut holder = holder_seen_live(victim, survivors);
    victim.stop();
    wait_long(Duration::from_secs(60), || {
        (count_events(survivors, "fence-failed") >= 3).then_some(())
    })
    .expect("fencing is retried");
    assert_eq!(count_events(survivors, "fenced"), 0);
    let failure = survivors
        .iter()
        .flat_map(|h| h.events())
        .find(|e| e.kind == "fence-failed")
        .expect("event");
    assert!(failure.message.contains("retry in"), "{}", failure.message);
    assert!(
        failure.message.contains("no takeover"),
        "{}",
        failure.message
    );
    // Host 1 has no watchdog: its lease stays protected however long.
    assert!(!survivors[0].acquires_within("vm1", Duration::from_secs(2)));
    assert!(!dead(&mut holder));
    assert!(victim.bmc.as_ref().expect("bmc").powered());
    // The operator powers it off by hand and says so: the lease is freed.
    victim.bmc.as_ref().expect("bmc").power_off_locally();
    assert!(wait_long(Duration::from_secs(5), || dead(&mut holder).then_some(())).is_some());
    let socket = survivors[0].socket.to_string_lossy().into_owned();
    // Without a terminal to answer the prompt: refused, nothing marked.
    let unasked = leasehold(&["fence", "confirm", "host1", "--socket", &socket]);
    assert!(!unasked.status.success());
    assert!(
        String::from_utf8_lossy(&unasked.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&unasked.stderr)
    );
    assert_eq!(count_events(survivors, "fence-confirmed"), 0);
    let confirm = leasehold(&["fence", "confirm", "host1", "--socket", &socket, "--yes"]);
    assert!(
        confirm.status.success(),
        "{}",
        String::from_utf8_lossy(&confirm.stderr)
    );
    assert!(String::from_utf8_lossy(&confirm.stderr).contains("warning"));
    assert!(survivors[0].acquires_within("vm1", Duration::from_secs(10)));
    assert_eq!(count_events(survivors, "fence-confirmed"), 1);
}

#[test]
fn an_unreachable_bmc_fails_with_a_clear_error_in_bounded_time() {
    use leasehold_daemon::config::Secret;
    use leasehold_daemon::fence::ipmi::{self, IpmiTarget};
    let target = IpmiTarget {
        address: "127.0.0.1".to_string(),
        port: free_udp_port(),
        user: USER.to_string(),
        password: Secret::new(PASSWORD.to_string()),
        privilege: "administrator".to_string(),
    };
    let started = Instant::now();
    let error = ipmi::status(&target).expect_err("nobody answers");
    let message = error.to_string();
    assert!(
        message.contains("cannot open an RMCP+ session"),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{}", target.port)),
        "{message}"
    );
    assert!(!message.contains(PASSWORD));
    assert!(started.elapsed() < Duration::from_secs(60));
}
