//! leaseholdd's command line (in the library so the man page and shell
//! completions are generated from the same definition).

use crate::config::DEFAULT_CONFIG_PATH;
use clap::Parser;
use std::path::PathBuf;

/// Keep this host's delta lease, watch the other hosts, and hold resource
/// leases for local processes (see docs/operations.md).
#[derive(Parser, Debug)]
#[command(name = "leaseholdd", version)]
pub struct Args {
    /// Configuration file.
    #[arg(long, short = 'c', default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Validate the configuration (and the secrets file) and exit.
    #[arg(long)]
    pub check_config: bool,
}
