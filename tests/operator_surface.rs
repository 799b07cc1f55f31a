//! What an operator sees, on real components: a three-host cluster
//! (tests/failover.rs's: leaseholdd per host, ipmi_sim BMCs, libvirt's
//! test driver) with the metrics listener and alert hooks configured on
//! every host. After host 1 is powered off and its VMs run again, each
//! survivor's `/metrics` passes Prometheus' own parser and says what
//! happened, its status page shows the failover in headless Chromium (the
//! screenshot is kept in target/test-artifacts/), and the hooks received
//! the events, while a failing and a hanging hook changed nothing.

use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::{Event, Request};
use leasehold_tests::cluster::{Cluster, ClusterSpec};
use leasehold_tests::wait_long;
use leasehold_tests::web::{
    chromium_dom, chromium_screenshot, free_tcp_port, get, promtool_check, samples, value,
};
use leasehold_tests::Scratch;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const T_MS: u32 = 500;
const NAMES: [&str; 3] = ["vm-low", "vm-high", "vm-medium"];

fn host_tables(dir: &Path, id: u32, port: u16) -> String {
    format!(
        r#"
[metrics]
listen = "127.0.0.1:{port}"

[hooks]
timeout_ms = 500

[[hooks.run]]
events = ["host-silent", "fenced", "vm-started"]
program = "/bin/sh"
args = ["-c", "cat >> {dir}/hooks-{id}.jsonl"]

[[hooks.run]]
events = ["fenced", "host-silent"]
program = "/usr/bin/false"

[[hooks.run]]
events = ["host-silent", "host-fenced"]
program = "/usr/bin/sleep"
args = ["60"]
"#,
        dir = dir.display()
    )
}

fn hook_events(dir: &Path, id: u32) -> Vec<Event> {
    std::fs::read_to_string(dir.join(format!("hooks-{id}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("hook input {l:?}: {e}")))
        .collect()
}

#[test]
fn after_a_failover_metrics_parse_the_page_shows_it_and_hooks_ran() {
    let hooks_dir = Scratch::new("surface-hooks");
    let hooks_path = Path::new(&hooks_dir.path).to_path_buf();
    let ports: BTreeMap<u32, u16> = (1..=3).map(|id| (id, free_tcp_port())).collect();
    let mut spec = ClusterSpec::test_driver(T_MS, 2048);
    spec.host_tables = ports
        .iter()
        .map(|(id, port)| (*id, host_tables(&hooks_path, *id, *port)))
        .collect();
    let mut c = Cluster::start("surface", spec);
    for (i, name) in NAMES.iter().enumerate() {
        let index = u32::try_from(i).expect("index");
        c.add_vm(1, None, (name, index, 256), Priority::Medium, false)
            .unwrap_or_else(|e| panic!("vm add {name}: {e:?}"));
    }
    // Before the failure: the page and the metrics answer on every host.
    for (id, port) in &ports {
        let (status, body) = get(*port, "/metrics").expect("host {id} serves /metrics");
        assert_eq!(status, 200, "host {id}: {body}");
        promtool_check(&body).unwrap_or_else(|e| panic!("host {id} /metrics: {e}\n{body}"));
        assert_eq!(get(*port, "/nowhere").map(|r| r.0), Some(404));
    }

    c.power_off_via_bmc(1);
    let placed = c
        .wait_running_elsewhere(2, &NAMES, 1, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("VMs not restarted: {:?}", c.vm_list(2)));

    // A lease operation, for its metrics.
    let inquire = c.host(2).call(&Request::Inquire {
        lockspace: None,
        resource: "vm-high".to_string(),
    });
    assert!(inquire.ok, "{inquire:?}");

    // Each survivor's metrics, once its monitor saw the mark and its VM
    // view caught up.
    let mut restarts = 0.0;
    let mut fences = 0.0;
    for id in [2u32, 3] {
        let port = ports[&id];
        let text = wait_long(Duration::from_secs(20), || {
            let (_, text) = get(port, "/metrics")?;
            let s = samples(&text);
            let settled = value(&s, "leasehold_hosts", &[("state", "fenced")]) == Some(1.0)
                && value(&s, "leasehold_vms", &[("state", "running")]) == Some(3.0)
                && value(&s, "leasehold_hook_runs_total", &[("outcome", "timed_out")])
                    .is_some_and(|v| v >= 1.0);
            settled.then_some(text)
        })
        .unwrap_or_else(|| {
            panic!(
                "host {id}'s metrics never showed host 1 fenced, 3 VMs running and a timed-out hook:\n{}",
                get(port, "/metrics").map(|r| r.1).unwrap_or_default()
            )
        });
        promtool_check(&text).unwrap_or_else(|e| panic!("host {id} /metrics: {e}\n{text}"));
        let s = samples(&text);
        assert_eq!(
            value(&s, "leasehold_hosts", &[("state", "live")]),
            Some(2.0)
        );
        assert_eq!(
            value(&s, "leasehold_lockspace_joined", &[("lockspace", "test")]),
            Some(1.0)
        );
        assert!(
            value(&s, "leasehold_renewal_duration_seconds_count", &[]).is_some_and(|v| v > 0.0),
            "renewals timed: {text}"
        );
        assert!(value(&s, "leasehold_daemon_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
        restarts += value(&s, "leasehold_vm_restarts_total", &[]).unwrap_or(0.0);
        fences += value(&s, "leasehold_fences_total", &[("outcome", "done")]).unwrap_or(0.0);
        if id == 2 {
            assert_eq!(
                value(
                    &s,
                    "leasehold_lease_operations_total",
                    &[("op", "inquire"), ("outcome", "ok")]
                ),
                Some(1.0),
                "{text}"
            );
        }
        if value(&s, "leasehold_vm_restarts_total", &[]).unwrap_or(0.0) > 0.0 {
            assert!(
                value(&s, "leasehold_last_failover_seconds", &[("phase", "total")])
                    .is_some_and(|v| v > 0.0),
                "a survivor that restarted VMs times its failover: {text}"
            );
        }
    }
    assert_eq!(
        restarts, 3.0,
        "every VM restarted once, counted where it runs"
    );
    assert_eq!(fences, 1.0, "one fence, counted by its fencer");

    // The status page of the survivor running the most VMs, in Chromium.
    let busiest = [2u32, 3]
        .into_iter()
        .max_by_key(|id| {
            placed
                .vms
                .iter()
                .filter(|v| v.owner_host_id == Some(*id))
                .count()
        })
        .expect("a survivor");
    let url = format!("http://127.0.0.1:{}/", ports[&busiest]);
    let browser = Scratch::new("surface-chromium");
    let dom = chromium_dom(Path::new(&browser.path), &url);
    assert!(
        dom.contains("<tr data-host-id=\"1\" data-state=\"fenced\">"),
        "host 1 fenced on the page: {dom}"
    );
    for id in [2, 3] {
        assert!(dom.contains(&format!("<tr data-host-id=\"{id}\" data-state=\"live\">")));
    }
    for vm in &placed.vms {
        let row = format!(
            "<tr data-vm=\"{}\" data-state=\"running\" data-host=\"{}\">",
            vm.name,
            vm.owner_host_id.unwrap_or(0)
        );
        assert!(dom.contains(&row), "{row} on the page: {dom}");
        if vm.owner_host_id == Some(busiest) {
            let bar = format!("<g class=\"vm\" data-vm=\"{}\">", vm.name);
            assert!(dom.contains(&bar), "{bar} in the failover timeline: {dom}");
        }
    }
    assert!(dom.contains("id=\"failover-timeline\""), "{dom}");
    assert!(
        dom.contains("data-state=\"running\"><title>"),
        "a VM bar ends running: {dom}"
    );
    assert!(
        dom.contains("<li data-kind=\"vm-started\">"),
        "recent events: {dom}"
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    let png = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium_screenshot(Path::new(&browser.path), &url, &png);
    let picture = std::fs::read(&png).expect("the screenshot");
    assert!(picture.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        picture.len() > 20_000,
        "a page, not a blank: {} bytes",
        picture.len()
    );

    // The hooks: the recorder got every event it names as one JSON line,
    // while the failing and the hanging hooks held nothing up.
    let (mut silent, mut fenced, mut started) = (0, 0, 0);
    for id in [2u32, 3] {
        for e in hook_events(&hooks_path, id) {
            assert_eq!(e.host_id, id, "{e:?}");
            match e.kind.as_str() {
                "host-silent" => silent += 1,
                "fenced" => fenced += 1,
                "vm-started" => started += 1,
                other => panic!("hook ran on {other}, which it does not name"),
            }
        }
    }
    assert_eq!(
        (fenced, started),
        (1, 3),
        "hooks got one fence and three starts"
    );
    assert!(silent >= 1, "a survivor called host 1 silent: {silent}");
}
