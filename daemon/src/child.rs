//! Running a helper program to completion within a time limit: fence
//! agents and alert hooks. It gets its input on stdin, runs in a process
//! group of its own (so a timeout kills whatever it started), and both of
//! its output pipes are drained while it runs (a chatty program never
//! blocks on a full pipe, and one that leaves a helper holding a pipe
//! never blocks us).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a running child is polled for its exit.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long its output pipes are drained after it exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// A child that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code; -1 when a signal ended it.
    pub code: i32,
    /// What it wrote to stdout and stderr.
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot run {program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("{program} did not finish within {} ms; its process group was killed", .timeout.as_millis())]
    TimedOut { program: String, timeout: Duration },
    #[error("waiting for {program}: {error}")]
    Wait {
        program: String,
        error: std::io::Error,
    },
}

/// Run `program` with `args`, `input` on its stdin, for at most `timeout`.
pub fn run(
    program: &str,
    args: &[String],
    input: &[u8],
    timeout: Duration,
) -> Result<Finished, ChildError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| ChildError::Spawn {
            program: program.to_string(),
            error,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its input closes the pipe: fine.
        let _ = stdin.write_all(input);
    }
    let (sender, receiver) = std::sync::mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let sender = sender.clone();
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut pipe, &mut bytes);
            let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
        });
    }
    drop(sender);
    let group = i32::try_from(child.id()).unwrap_or(0);
    let kill_group = || {
        if group > 0 {
            // SAFETY: kill(2) of the process group we just created.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                kill_group();
                let _ = child.wait();
                return Err(ChildError::TimedOut {
                    program: program.to_string(),
                    timeout,
                });
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(error) => {
                kill_group();
                return Err(ChildError::Wait {
                    program: program.to_string(),
                    error,
                });
            }
        }
    };
    let mut output = Vec::new();
    while let Ok(part) = receiver.recv_timeout(DRAIN_AFTER_EXIT) {
        output.push(part);
    }
    Ok(Finished {
        code: status.code().unwrap_or(-1),
        output: output.concat(),
    })
}
