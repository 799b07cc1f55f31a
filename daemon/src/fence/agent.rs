//! Standard fence agents (`fence_ipmilan`, `fence_virsh`, ...): no
//! arguments, `key=value` lines on stdin, exit 0 for success; for
//! `action=status`, 0 means on and 2 means off. A host counts as fenced
//! only after `off` exits 0 and a following `status` says off.

use super::{FenceError, PowerState};
use crate::config::Secret;
use std::collections::BTreeMap;
use std::time::Duration;

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
    let finished =
        crate::child::run(&target.agent, &[], input.as_bytes(), timeout).map_err(|e| {
            FenceError::Device {
                device: target.describe(),
                reason: match e {
                    crate::child::ChildError::Spawn { .. } => {
                        format!("{e} (is the fence-agents package installed?)")
                    }
                    crate::child::ChildError::TimedOut { .. } => format!(
                        "{} action={action} did not finish within {} s",
                        target.agent,
                        timeout.as_secs()
                    ),
                    crate::child::ChildError::Wait { .. } => e.to_string(),
                },
            }
        })?;
    let mut text = finished.output;
    if let Some(password) = &target.password {
        if !password.expose().is_empty() {
            text = text.replace(password.expose(), "********");
        }
    }
    let text = text.trim().lines().last().unwrap_or("").to_string();
    Ok((finished.code, text))
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
