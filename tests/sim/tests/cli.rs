//! The `leasehold-sim` command line: summary line and exit status.

use std::process::Command;

fn sim(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_leasehold-sim"))
        .args(args)
        .output()
        .expect("run leasehold-sim");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn planted_bug_list_prints_one_name_per_line() {
    let (code, out) = sim(&["--planted-bug", "list"]);
    assert_eq!(code, Some(0));
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(
        names,
        [
            "takeover-without-expiry",
            "skip-join-reread",
            "skip-paxos-phase1",
            "ignore-renewal-deadline"
        ]
    );
}

#[test]
fn a_clean_batch_exits_zero_with_the_summary_last() {
    let (code, out) = sim(&["--seeds", "40", "--jobs", "2"]);
    assert_eq!(code, Some(0), "{out}");
    let last = out.lines().last().expect("output");
    assert!(
        last.starts_with("seeds=40 violations=0 sim_host_hours="),
        "{last}"
    );
    assert!(last.contains(" seeds_per_s="), "{last}");
}

#[test]
fn a_planted_bug_exits_nonzero_and_names_the_seed() {
    let (code, out) = sim(&[
        "--planted-bug",
        "takeover-without-expiry",
        "--seeds",
        "20",
        "--stop-at-first",
        "--jobs",
        "1",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("VIOLATION seed="), "{out}");
    assert!(out.contains("leasehold-sim --seed "), "{out}");
    let last = out.lines().last().expect("output");
    assert!(!last.contains("violations=0"), "{last}");
    // Replaying that seed reports it again.
    let seed = out
        .lines()
        .find_map(|l| l.strip_prefix("VIOLATION seed="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("seed in the report");
    let (code, replay) = sim(&["--planted-bug", "takeover-without-expiry", "--seed", seed]);
    assert_eq!(code, Some(1));
    assert!(
        replay.contains(&format!("VIOLATION seed={seed}")),
        "{replay}"
    );
    assert!(replay.contains("trace_hash="), "{replay}");
}

#[test]
fn an_unknown_planted_bug_is_a_usage_error() {
    let (code, _) = sim(&["--planted-bug", "no-such-bug"]);
    assert_eq!(code, Some(2));
}
