//! The README's first command runs `leasehold demo`: it must end with the
//! failover line, every VM of the powered-off host running on a survivor,
//! and leave nothing running behind.

use leasehold_tests::{leasehold_bin, leaseholdd_bin, Scratch};
use std::process::Command;

#[test]
fn the_demo_shows_a_complete_failover_and_cleans_up() {
    // The demo finds leaseholdd next to leasehold.
    let _ = leaseholdd_bin();
    let scratch = Scratch::new("demo");
    let dir = scratch.path.join("demo");
    let out = Command::new(leasehold_bin())
        .args(["demo", "--io-timeout", "0.5", "--dir"])
        .arg(&dir)
        .output()
        .expect("run leasehold demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("failover: 3 VMs of hostA running on host")
            && last.ends_with("s after power-off")
            && !last.contains("hostA/")
            && !last.ends_with("hostA, "),
        "{stdout}"
    );
    for kind in ["host-silent", "fenced", "vm-started"] {
        assert!(stdout.contains(kind), "{kind} not shown: {stdout}");
    }
    // Exactly one survivor fenced hostA.
    assert_eq!(stdout.matches(" fenced ").count(), 1, "{stdout}");
    // Nothing of the demo keeps running, and its directory is gone.
    assert!(!dir.exists());
    let left = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
