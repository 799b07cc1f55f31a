//! The simulator's quick batch, its planted bugs, determinism and scale.
//! Long runs: `cargo run --release -p leasehold-sim -- --seeds 100000`.

use lease::planted::PlantedBug;
use leasehold_sim::{run_seed, Options, Outcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Run seeds first..first+count on all cores; returns every outcome.
fn batch(first: u64, count: u64, options: &Options) -> Vec<Outcome> {
    let next = Arc::new(AtomicU64::new(first));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let next = Arc::clone(&next);
            let outcomes = Arc::clone(&outcomes);
            let options = options.clone();
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    break;
                }
                let outcome = run_seed(seed, &options);
                outcomes.lock().expect("outcomes").push(outcome);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("simulator worker panicked");
    }
    let mut outcomes = Arc::try_unwrap(outcomes)
        .expect("workers done")
        .into_inner()
        .expect("outcomes");
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}

fn describe(outcome: &Outcome) -> String {
    let mut text = format!("seed {}: {}\n", outcome.seed, outcome.scenario);
    for v in &outcome.violations {
        text += &format!("  at {} ms: {}\n", v.time_ms, v.what);
        for line in &v.recent {
            text += &format!("    {line}\n");
        }
    }
    text
}

#[test]
fn quick_batch_finds_no_violation() {
    let outcomes = batch(0, 3000, &Options::default());
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .map(describe)
        .collect();
    assert!(
        bad.is_empty(),
        "{} seeds violated an invariant:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // The runs did real work: acquisitions, takeovers, fences, faults, and
    // liveness was checked in a good share of them.
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    assert!(sum(|o| o.stats.acquires_ok) > 100_000);
    assert!(sum(|o| o.stats.takeovers) > 10_000);
    assert!(sum(|o| o.stats.fences) > 1_000);
    assert!(sum(|o| o.stats.faults) > 10_000);
    assert!(sum(|o| o.stats.watchdog_resets) > 100);
    assert!(sum(|o| u64::from(o.stats.liveness_checked)) > 500);
}

#[test]
fn without_faults_every_seed_is_live() {
    let options = Options {
        fault_scale: Some(0.0),
        ..Options::default()
    };
    let outcomes = batch(10_000, 200, &options);
    for outcome in &outcomes {
        assert!(outcome.violations.is_empty(), "{}", describe(outcome));
        assert!(
            outcome.stats.liveness_checked,
            "seed {}: liveness not checked",
            outcome.seed
        );
        assert!(
            outcome.stats.acquires_ok > 0,
            "seed {}: nothing acquired",
            outcome.seed
        );
        assert_eq!(
            outcome.stats.fences, 0,
            "seed {}: a fence without any fault",
            outcome.seed
        );
    }
}

#[test]
fn every_planted_bug_is_caught() {
    for bug in PlantedBug::ALL {
        let options = Options {
            planted_bug: Some(bug),
            ..Options::default()
        };
        let caught = (0..3000u64).step_by(50).find_map(|first| {
            batch(first, 50, &options)
                .into_iter()
                .find(|o| !o.violations.is_empty())
        });
        let outcome = caught
            .unwrap_or_else(|| panic!("planted bug {} was never caught in 3000 seeds", bug.name()));
        eprintln!(
            "planted bug {} caught at seed {}: {}",
            bug.name(),
            outcome.seed,
            outcome.violations[0].what
        );
        // The seed replays to the same violation.
        let again = run_seed(outcome.seed, &options);
        assert_eq!(again.trace_hash, outcome.trace_hash);
        assert_eq!(again.violations[0].what, outcome.violations[0].what);
    }
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let options = Options::default();
    for seed in [1, 42, 977] {
        let a = run_seed(seed, &options);
        let b = run_seed(seed, &options);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.stats.events, b.stats.events, "seed {seed}");
    }
    assert_ne!(
        run_seed(1, &options).trace_hash,
        run_seed(2, &options).trace_hash
    );
}

#[test]
fn a_few_hundred_hosts() {
    let options = Options {
        hosts: Some(300),
        resources: Some(8),
        duration_s: Some(60),
        ..Options::default()
    };
    let outcome = run_seed(7, &options);
    assert!(outcome.violations.is_empty(), "{}", describe(&outcome));
    assert!(outcome.stats.joins >= 300, "{:?}", outcome.stats);
}

#[test]
fn ten_thousand_slots() {
    // The name path at scale: names far apart on a large device, claims
    // scanning 10 000 slots, with faults on.
    let options = Options {
        hosts: Some(3),
        resources: Some(2),
        slots: Some(10_000),
        duration_s: Some(150),
        latency_ms: Some((1, 1)),
        ..Options::default()
    };
    let outcomes = batch(0, 6, &options);
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .map(describe)
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let acquires: u64 = outcomes.iter().map(|o| o.stats.acquires_ok).sum();
    assert!(acquires > 100, "only {acquires} acquires");
}
