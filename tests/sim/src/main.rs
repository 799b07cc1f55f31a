//! `leasehold-sim`: run the simulator over many seeds, or replay one.

use clap::Parser;
use lease::planted::PlantedBug;
use leasehold_sim::{run_seed, Options, Outcome};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "leasehold-sim",
    about = "Deterministic simulation of leasehold's lease protocols under faults",
    after_help = "The last line is a summary: seeds=N violations=V sim_host_hours=H seeds_per_s=R.\n\
                  Exit status 0 only when no seed violated an invariant."
)]
struct Cli {
    /// Number of seeds to run, starting at --first-seed.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed of the batch.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Replay one seed and print its scenario, statistics and trace hash.
    #[arg(long)]
    seed: Option<u64>,
    /// Hosts per seed (default: drawn from the seed, 2 to 32).
    #[arg(long)]
    hosts: Option<u32>,
    /// Resources per seed (default: drawn from the seed, 1 to 4).
    #[arg(long)]
    resources: Option<u32>,
    /// Resource slots on the device (default: drawn, the resources or up to 12 more).
    #[arg(long)]
    slots: Option<u32>,
    /// Multiply every fault rate (0 turns faults off).
    #[arg(long)]
    fault_scale: Option<f64>,
    /// Simulated seconds before the liveness phase (default: drawn, 120 to 360).
    #[arg(long)]
    duration: Option<u64>,
    /// Every host's storage latency in ms, base and spread (e.g. 1,1),
    /// instead of drawn ones.
    #[arg(long, value_parser = parse_latency)]
    latency: Option<(u64, u64)>,
    /// Latency spikes in every seed, each up to this many io_timeouts
    /// (e.g. 3), on one host's path or the whole device; default: spikes of
    /// up to 3T in some seeds.
    #[arg(long)]
    spikes: Option<f64>,
    /// The fence-mode expiry in io_timeouts (default 6): how long a host
    /// without a watchdog must stand still to be called silent.
    #[arg(long)]
    fence_expiry: Option<f64>,
    /// Run a deliberately unsafe protocol variant; `list` prints the names.
    #[arg(long)]
    planted_bug: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Stop at the first violation.
    #[arg(long)]
    stop_at_first: bool,
}

fn parse_latency(text: &str) -> Result<(u64, u64), String> {
    let (base, spread) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?}: expected BASE,SPREAD in ms, e.g. 1,1"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|e| format!("{s:?} is not a number of ms: {e}"))
    };
    Ok((number(base)?, number(spread)?))
}

fn report(outcome: &Outcome) {
    for violation in &outcome.violations {
        println!(
            "VIOLATION seed={} at {} ms: {}",
            outcome.seed, violation.time_ms, violation.what
        );
        println!("  scenario: {}", outcome.scenario);
        println!(
            "  replay:   leasehold-sim --seed {} (plus the same --planted-bug/--hosts/... flags)",
            outcome.seed
        );
        println!("  last events:");
        for line in &violation.recent {
            println!("    {line}");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let planted_bug = match cli.planted_bug.as_deref() {
        Some("list") => {
            for bug in PlantedBug::ALL {
                println!("{}", bug.name());
            }
            return ExitCode::SUCCESS;
        }
        Some(name) => match PlantedBug::from_name(name) {
            Some(bug) => Some(bug),
            None => {
                eprintln!("leasehold-sim: unknown planted bug {name:?}; see --planted-bug list");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let options = Options {
        hosts: cli.hosts,
        resources: cli.resources,
        slots: cli.slots,
        planted_bug,
        fault_scale: cli.fault_scale,
        duration_s: cli.duration,
        latency_ms: cli.latency,
        spike_max_tenths_of_t: cli.spikes.map(|t| (t * 10.0).round() as u64),
    };
    if let Some(multiple) = cli.fence_expiry {
        lease::timeouts::override_fence_expiry_tenths_of_t((multiple * 10.0).round() as u64);
    }
    let started = Instant::now();
    if let Some(seed) = cli.seed {
        let outcome = run_seed(seed, &options);
        println!("seed={seed} scenario: {}", outcome.scenario);
        println!("seed={seed} stats: {:?}", outcome.stats);
        println!(
            "seed={seed} trace_hash={:016x} sim_ms={}",
            outcome.trace_hash, outcome.sim_ms
        );
        report(&outcome);
        let violations = outcome.violations.len();
        println!(
            "seeds=1 violations={violations} sim_host_hours={:.2} seeds_per_s={:.1}",
            outcome.host_ms as f64 / 3_600_000.0,
            1.0 / started.elapsed().as_secs_f64()
        );
        return if violations == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let jobs = cli
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let next = Arc::new(AtomicU64::new(cli.first_seed));
    let end = cli.first_seed.saturating_add(cli.seeds);
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0u64))); // seeds, violating seeds, host ms, liveness checked
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let next = Arc::clone(&next);
            let totals = Arc::clone(&totals);
            let stop = Arc::clone(&stop);
            let options = options.clone();
            let stop_at_first = cli.stop_at_first;
            std::thread::spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let outcome = run_seed(seed, &options);
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                t.0 += 1;
                t.2 += outcome.host_ms;
                t.3 += u64::from(outcome.stats.liveness_checked);
                if !outcome.violations.is_empty() {
                    t.1 += 1;
                    report(&outcome);
                    if stop_at_first {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        if worker.join().is_err() {
            eprintln!("leasehold-sim: a worker panicked (a bug in the simulator or a failed assertion in lease)");
            return ExitCode::from(3);
        }
    }
    let (seeds, violations, host_ms, liveness) = *totals.lock().unwrap_or_else(|p| p.into_inner());
    let elapsed = started.elapsed().as_secs_f64();
    println!("liveness checked in {liveness} of {seeds} seeds");
    println!(
        "seeds={seeds} violations={violations} sim_host_hours={:.1} seeds_per_s={:.1}",
        host_ms as f64 / 3_600_000.0,
        seeds as f64 / elapsed
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
