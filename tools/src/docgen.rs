//! `leasehold-docgen OUT_DIR`: man pages (clap_mangen) and bash/zsh
//! completions (clap_complete) of `leasehold` and `leaseholdd`, from the
//! same clap definitions the binaries parse with; run by
//! tools/package/build-deb.sh.
//!
//! OUT_DIR/man: leasehold.1 and one page per subcommand
//! (leasehold-format.1, ...), leaseholdd.8. OUT_DIR/completions:
//! leasehold.bash, _leasehold, leaseholdd.bash, _leaseholdd.

#[allow(dead_code)]
mod cli;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        anyhow::bail!("usage: leasehold-docgen OUT_DIR");
    };
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cli = cli::Cli::command();
    clap_mangen::generate_to(cli.clone(), &man)
        .with_context(|| format!("cannot write the man pages to {}", man.display()))?;
    let daemon = leasehold_daemon::args::Args::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(daemon.clone())
        .section("8")
        .render(&mut page)
        .context("cannot render leaseholdd.8")?;
    write(&man.join("leaseholdd.8"), &page)?;
    for (command, name) in [(cli, "leasehold"), (daemon, "leaseholdd")] {
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
        ] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), name, &mut text);
            write(&completions.join(file), &text)?;
        }
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
