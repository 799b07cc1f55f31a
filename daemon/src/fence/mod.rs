//! Fence devices: power a host off and confirm it, through native IPMI
//! ([`ipmi`]) or a standard fence agent ([`agent`]). Everything here
//! blocks; the daemon calls it from its fencing thread.

pub mod agent;
pub mod ipmi;

use crate::config::{ClusterHost, Config, Fence};
use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    #[error("{device}: the power is still on {waited_ms} ms after power-off")]
    StillOn { device: String, waited_ms: u64 },
    #[error("host {host} has no fence device (fence method \"none\"); it relies on its watchdog")]
    NoDevice { host: String },
    #[error("host {0:?} is not in the cluster section of the configuration")]
    UnknownHost(String),
}

/// A fence device of one host, with its secret.
#[derive(Clone, Debug)]
pub enum Device {
    Ipmi(ipmi::IpmiTarget),
    Agent(agent::AgentTarget),
}

/// How long a power-off may take to be confirmed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

impl Device {
    /// The fence device of `host` from the configuration.
    pub fn for_host(config: &Config, host: &ClusterHost) -> Result<Device, FenceError> {
        let password = config.passwords.get(&host.name).cloned();
        match &host.fence {
            Fence::Ipmi {
                address,
                port,
                user,
                privilege,
                ..
            } => Ok(Device::Ipmi(ipmi::IpmiTarget {
                address: address.clone(),
                port: *port,
                user: user.clone(),
                password: password.ok_or_else(|| FenceError::Device {
                    device: format!("IPMI {address}:{port}"),
                    reason: format!("no password for {} in the secrets file", host.name),
                })?,
                privilege: privilege.clone(),
            })),
            Fence::Agent { agent, options } => Ok(Device::Agent(agent::AgentTarget {
                agent: agent.clone(),
                options: options.clone(),
                password,
            })),
            Fence::None => Err(FenceError::NoDevice {
                host: host.name.clone(),
            }),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Device::Ipmi(t) => t.describe(),
            Device::Agent(t) => t.describe(),
        }
    }

    pub fn method(&self) -> lease::format::FenceMethod {
        match self {
            Device::Ipmi(_) => lease::format::FenceMethod::Ipmi,
            Device::Agent(_) => lease::format::FenceMethod::Agent,
        }
    }

    /// Power off and confirm off.
    pub fn power_off(&self) -> Result<(), FenceError> {
        match self {
            Device::Ipmi(t) => ipmi::power_off(t, CONFIRM_TIMEOUT),
            Device::Agent(t) => agent::power_off(t),
        }
    }

    pub fn power_on(&self) -> Result<(), FenceError> {
        match self {
            Device::Ipmi(t) => ipmi::power_on(t),
            Device::Agent(t) => agent::power_on(t),
        }
    }

    pub fn status(&self) -> Result<PowerState, FenceError> {
        match self {
            Device::Ipmi(t) => ipmi::status(t),
            Device::Agent(t) => agent::status(t),
        }
    }
}
