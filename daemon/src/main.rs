//! leaseholdd: the per-host leasehold daemon. Configuration errors and
//! start-up failures end here with one message and a non-zero status.

use clap::Parser;
use leasehold_daemon::args::Args;
use leasehold_daemon::config;
use std::process::ExitCode;

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("LEASEHOLD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("leaseholdd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        let problems = leasehold_daemon::preflight::problems(&config);
        if !problems.is_empty() {
            for problem in &problems {
                eprintln!("leaseholdd: {problem}");
            }
            eprintln!(
                "leaseholdd: {}: {} problem(s); the configuration parses, but fix these before relying on it",
                args.config.display(),
                problems.len()
            );
            return ExitCode::from(2);
        }
        println!(
            "{}: valid (host {} {:?}, lockspace {:?} on {}, io_timeout {} ms, watchdog {})",
            args.config.display(),
            config.host_id,
            config.host_name,
            config.lockspace,
            config.device,
            config.io_timeout_ms,
            config
                .watchdog_device
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".to_string())
        );
        return ExitCode::SUCCESS;
    }
    init_logging();
    let span =
        tracing::info_span!("leaseholdd", host = config.host_id, lockspace = %config.lockspace);
    let _entered = span.enter();
    match leasehold_daemon::daemon::run(config) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("leaseholdd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
