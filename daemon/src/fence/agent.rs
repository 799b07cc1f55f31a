//! Standard fence agents (`fence_ipmilan`, `fence_virsh`, ...): no
//! arguments, `key=value` lines on stdin, exit 0 for success; for
//! `action=status`, 0 means on and 2 means off. A host counts as fenced
//! only after `off` exits 0 and a following `status` says off.

use super::{FenceError, PowerState};
use crate::config::Secret;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct AgentTarget {
    pub agent: String,
    pub options: BTreeMap<String, String>,
    pub password: Option<Secret>,
}

impl AgentTarget {
    pub fn describe(&self) -> String {
        let at = self
            .options
            .get("ip")
            .or_else(|| self.options.get("ipaddr"))
            .map(|ip| match self.options.get("ipport") {
                Some(port) => format!(" {ip}:{port}"),
                None => format!(" {ip}"),
            })
            .unwrap_or_default();
        format!("{}{at}", self.agent)
    }
}

/// Run the agent with `action`; returns its exit code. Output is kept
/// for the error message (with the password never passed on a command
/// line, and removed from what is quoted).
fn run(target: &AgentTarget, action: &str, timeout: Duration) -> Result<(i32, String), FenceError> {
    let mut input = format!("action={action}\n");
    for (key, value) in &target.options {
        input.push_str(&format!("{key}={value}\n"));
    }
    if let Some(password) = &target.password {
        input.push_str(&format!("password={}\n", password.expose()));
    }
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(&target.agent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started.
        .process_group(0)
        .spawn()
        .map_err(|e| FenceError::Device {
            device: target.describe(),
            reason: format!(
                "cannot run {}: {e} (is the fence-agents package installed?)",
                target.agent
            ),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    // Drain both pipes while it runs: a chatty agent must not block on a
    // full pipe, and a helper it leaves behind holding the pipe must not
    // block us.
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
                return Err(FenceError::Device {
                    device: target.describe(),
                    reason: format!(
                        "{} action={action} did not finish within {} s",
                        target.agent,
                        timeout.as_secs()
                    ),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_group();
                return Err(FenceError::Device {
                    device: target.describe(),
                    reason: format!("waiting for {}: {e}", target.agent),
                });
            }
        }
    };
    let mut output = Vec::new();
    while let Ok(part) = receiver.recv_timeout(Duration::from_secs(1)) {
        output.push(part);
    }
    let mut text = output.concat();
    if let Some(password) = &target.password {
        if !password.expose().is_empty() {
            text = text.replace(password.expose(), "********");
        }
    }
    let text = text.trim().lines().last().unwrap_or("").to_string();
    Ok((status.code().unwrap_or(-1), text))
}

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn status(target: &AgentTarget) -> Result<PowerState, FenceError> {
    match run(target, "status", AGENT_TIMEOUT)? {
        (0, _) => Ok(PowerState::On),
        (2, _) => Ok(PowerState::Off),
        (code, text) => Err(FenceError::Device {
            device: target.describe(),
            reason: format!("{} action=status exited {code}: {text}", target.agent),
        }),
    }
}

pub fn power_off(target: &AgentTarget) -> Result<(), FenceError> {
    match run(target, "off", AGENT_TIMEOUT)? {
        (0, _) => {}
        (code, text) => {
            return Err(FenceError::Device {
                device: target.describe(),
                reason: format!("{} action=off exited {code}: {text}", target.agent),
            })
        }
    }
    match status(target)? {
        PowerState::Off => Ok(()),
        PowerState::On => Err(FenceError::StillOn {
            device: target.describe(),
            waited_ms: 0,
        }),
    }
}

pub fn power_on(target: &AgentTarget) -> Result<(), FenceError> {
    match run(target, "on", AGENT_TIMEOUT)? {
        (0, _) => Ok(()),
        (code, text) => Err(FenceError::Device {
            device: target.describe(),
            reason: format!("{} action=on exited {code}: {text}", target.agent),
        }),
    }
}
