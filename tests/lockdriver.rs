//! The libvirt lock-manager plugin (leasehold.so) loaded with dlopen and
//! driven the way libvirt drives it, against real daemons on a loop device:
//! the exported driver, the register-only acquire in a "forked child" that
//! then execs its stand-in for QEMU with the daemon socket inherited, the
//! real acquire, inquire, release (twice), acquire with the release's
//! state, and a second host refused while the lease is held, which gets it
//! once "QEMU" is killed. The real-libvirt test is tests/lockdriver_libvirt.rs.

use leasehold_tests::daemon::{format_test_device, Host, HostSpec};
use leasehold_tests::{
    lockdriver_client_bin, lockdriver_so, sparse_file, wait_long, LoopDevice, Scratch,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T_MS: u32 = 500;

fn conf(dir: &Path, host: &Host) -> String {
    let path = dir.join(format!("qemu-leasehold-{}.conf", host.spec.name));
    std::fs::write(
        &path,
        format!(
            "# test\nsocket = \"{}\"\nallow_disks_without_lease = 1\n",
            host.socket.display()
        ),
    )
    .expect("conf");
    path.display().to_string()
}

/// libvirt's forked child: registers itself, then "becomes QEMU" (sleep).
fn child(conf: &str) -> (Child, i32) {
    child_running(conf, &["sleep", "100000"])
}

/// libvirt's forked child, which then execs `qemu` (its stdin piped);
/// returns it and the descriptor of its bound daemon connection.
fn child_running(conf: &str, qemu: &[&str]) -> (Child, i32) {
    let mut child = Command::new(lockdriver_client_bin())
        .arg("child")
        .arg(lockdriver_so())
        .args([conf, "vm1", "test"])
        .args(qemu)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert!(line.starts_with("register rc=0 fd="), "{line}");
    let fd: i32 = line
        .trim()
        .rsplit('=')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("fd");
    assert!(fd >= 0, "{line}");
    (child, fd)
}

/// libvirtd's side: every step's "rc=N state=S error=E".
fn libvirt(conf: &str, pid: u32, steps: &[&str]) -> Vec<(String, i32, String, String)> {
    let out = Command::new(lockdriver_client_bin())
        .arg("libvirt")
        .arg(lockdriver_so())
        .args([conf, "vm1", "test", &pid.to_string()])
        .args(steps)
        .output()
        .expect("run lockdriver_client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (step, rest) = l.split_once(" rc=").expect("step");
            let (rc, rest) = rest.split_once(" state=").expect("rc");
            let (state, error) = rest.split_once(" error=").expect("state");
            (
                step.to_string(),
                rc.parse().expect("rc"),
                state.to_string(),
                error.to_string(),
            )
        })
        .collect()
}

/// `count` daemons (host1, host2, ...) on one fresh loop device, joined.
fn daemons(label: &str, count: u32) -> (Scratch, LoopDevice, Vec<Host>) {
    let scratch = Scratch::new(label);
    let backing = scratch.file("lease.img");
    sparse_file(&backing, 8 << 20);
    let device = LoopDevice::attach(&backing, 512).expect("loop device (run as root)");
    format_test_device(&device.path);
    let hosts: Vec<Host> = (1..=count)
        .map(|id| Host::start(&scratch.path, HostSpec::new(id, &device.path, T_MS)))
        .collect();
    for h in &hosts {
        h.wait_joined();
    }
    (scratch, device, hosts)
}

#[test]
fn the_plugin_exports_the_driver_libvirt_expects() {
    let out = Command::new(lockdriver_client_bin())
        .arg("describe")
        .arg(lockdriver_so())
        .output()
        .expect("describe");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "version 1000000 flags 1"
    );
}

#[test]
fn libvirts_call_sequence_holds_the_lease_for_qemu_and_refuses_a_second_host() {
    let (scratch, _device, hosts) = daemons("lockdriver", 2);
    let (a, b) = (&hosts[0], &hosts[1]);
    wait_long(Duration::from_secs(20), || {
        b.host_state(1).filter(|s| s.state == "live")
    })
    .expect("host 1 live");
    let conf_a = conf(&scratch.path, a);
    let conf_b = conf(&scratch.path, b);

    // Host A: the child registers and keeps the daemon socket across exec.
    let (mut qemu_a, fd) = child(&conf_a);
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", qemu_a.id())).expect("fd link");
    assert!(
        link.display().to_string().starts_with("socket:"),
        "{link:?}"
    );
    let steps = libvirt(
        &conf_a,
        qemu_a.id(),
        &[
            "acquire",
            "inquire",
            "release",
            "release",
            "acquire-state",
            "inquire",
        ],
    );
    let rc: Vec<i32> = steps.iter().map(|s| s.1).collect();
    assert_eq!(rc, [0, 0, 0, 0, 0, 0], "{steps:?}");
    assert!(
        steps[1].2.starts_with("test:vm1:"),
        "inquire names the lease: {steps:?}"
    );
    let released_lver: u64 = steps[2]
        .2
        .rsplit(':')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("lver");
    assert!(
        steps[3].2.is_empty(),
        "a second release holds nothing: {steps:?}"
    );
    let resumed_lver: u64 = steps[5]
        .2
        .rsplit(':')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("lver");
    assert_eq!(resumed_lver, released_lver + 1);
    let status = a.status().expect("status");
    assert!(status.lockspaces[0]
        .resources
        .iter()
        .any(|r| r.name == "vm1" && r.pid == i32::try_from(qemu_a.id()).expect("pid")));

    // Host B: its QEMU registers fine, but the acquire is refused with
    // the holder named.
    let (mut qemu_b, _) = child(&conf_b);
    let refused = libvirt(&conf_b, qemu_b.id(), &["acquire"]);
    assert_eq!(refused[0].1, -1, "{refused:?}");
    assert!(
        refused[0]
            .3
            .contains("resource busy: lease vm1 held by host 1 (host1)"),
        "{refused:?}"
    );

    // QEMU on A dies: its socket closes, the daemon releases vm1, and B's
    // acquire now succeeds.
    let _ = qemu_a.kill();
    let _ = qemu_a.wait();
    let got = wait_long(Duration::from_secs(20), || {
        let steps = libvirt(&conf_b, qemu_b.id(), &["acquire"]);
        (steps[0].1 == 0).then_some(())
    });
    assert!(got.is_some(), "host B gets vm1 after host A's QEMU died");
    assert!(a.has_event("released-on-exit") || a.has_event("holder-exited"));
    let _ = qemu_b.kill();
    let _ = qemu_b.wait();
}

#[test]
fn closing_the_bound_socket_kills_a_holder_that_still_runs() {
    let (scratch, _device, hosts) = daemons("lockdriver-eof", 1);
    let a = &hosts[0];
    let conf_a = conf(&scratch.path, a);
    // The "QEMU" closes the inherited socket itself (bash closes fd N).
    let (mut qemu, fd) = child_running(
        &conf_a,
        &[
            "bash",
            "-c",
            "read -r fd; eval \"exec $fd>&-\"; sleep 100000",
        ],
    );
    let steps = libvirt(&conf_a, qemu.id(), &["acquire"]);
    assert_eq!(steps[0].1, 0, "{steps:?}");
    {
        use std::io::Write;
        let stdin = qemu.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{fd}").expect("tell the fd");
    }
    let exited = wait_long(Duration::from_secs(10), || qemu.try_wait().ok().flatten());
    assert!(
        exited.is_some(),
        "the holder was killed when its socket closed"
    );
    assert!(a.has_event("holder-connection-closed"));
    let released = wait_long(Duration::from_secs(10), || {
        let s = a.status()?;
        s.lockspaces[0].resources.is_empty().then_some(())
    });
    assert!(released.is_some());
}
