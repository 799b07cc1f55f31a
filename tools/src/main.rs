//! `leasehold`: format and inspect lease devices, and one-shot lease
//! operations on them.

mod cli;
mod control;
mod demo;
mod direct;
mod dump;
mod exit;
mod format;
mod open;
mod out;
mod signatures;
mod vm;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Format(args) => format::run(&args),
        cli::Command::Dump(args) => dump::run(&args),
        cli::Command::Direct(command) => direct::run_command(command),
        cli::Command::Status(args) => control::status(&args),
        cli::Command::Hosts(args) => control::hosts(&args),
        cli::Command::Events(args) => control::events(&args),
        cli::Command::Client(command) => control::client(&command),
        cli::Command::Fence(args) => control::fence(&args),
        cli::Command::Vm(command) => vm::run(&command),
        cli::Command::Demo(args) => demo::run(&args),
    };
    if let Err(error) = result {
        eprintln!("leasehold: error: {error:#}");
        std::process::exit(exit::code_for(&error));
    }
}
