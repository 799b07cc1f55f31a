//! Native IPMI v2.0 over LAN (RMCP+, cipher suite 3) through ipmi-rs, with
//! what ipmi-rs 0.6 lacks added here as raw commands: Set Session Privilege
//! Level (it always logs in asking for ADMINISTRATOR but never raises the
//! session to it, and a session at USER may not power off), Get Chassis
//! Status and Chassis Control, Get Session Info + Close Session (BMCs have
//! few session slots), and retransmission of lost datagrams. Blocking: call
//! it from a thread, never from the async reactor.

use super::{FenceError, PowerState};
use crate::config::Secret;
use ipmi_rs::connection::{IpmiCommand, Message, NetFn};
use ipmi_rs::rmcp::Rmcp;
use ipmi_rs::Ipmi;
use std::time::{Duration, Instant};

/// How long one datagram exchange may take before it is sent again.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Attempts per command (the first try plus retransmissions).
const ATTEMPTS: u32 = 4;

/// A BMC and how to log in to it.
#[derive(Clone, Debug)]
pub struct IpmiTarget {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    /// "administrator" or "operator"
    pub privilege: String,
}

impl IpmiTarget {
    pub fn describe(&self) -> String {
        format!("IPMI {}:{}", self.address, self.port)
    }
}

/// One raw request; the response data (after the completion code) is the output.
struct Raw {
    netfn: NetFn,
    cmd: u8,
    data: Vec<u8>,
}

impl From<Raw> for Message {
    fn from(raw: Raw) -> Message {
        Message::new_request(raw.netfn, raw.cmd, raw.data)
    }
}

impl IpmiCommand for Raw {
    type Output = Vec<u8>;
    type Error = ();

    fn parse_success_response(data: &[u8]) -> Result<Vec<u8>, ()> {
        Ok(data.to_vec())
    }
}

const APP_SET_SESSION_PRIVILEGE: u8 = 0x3B;
const APP_CLOSE_SESSION: u8 = 0x3C;
const APP_GET_SESSION_INFO: u8 = 0x3D;
const CHASSIS_GET_STATUS: u8 = 0x01;
const CHASSIS_CONTROL: u8 = 0x02;
const CHASSIS_POWER_DOWN: u8 = 0x00;
const CHASSIS_POWER_UP: u8 = 0x01;

/// An authenticated session at the configured privilege.
pub struct Session {
    ipmi: Ipmi<Rmcp>,
    target: IpmiTarget,
}

fn failure(target: &IpmiTarget, what: &str, detail: impl std::fmt::Debug) -> FenceError {
    FenceError::Device {
        device: target.describe(),
        reason: format!("{what}: {detail:?}"),
    }
}

impl Session {
    /// Log in (RMCP+), retrying lost datagrams, and raise the privilege.
    pub fn open(target: &IpmiTarget) -> Result<Session, FenceError> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let mut rmcp = Rmcp::new((target.address.as_str(), target.port), EXCHANGE_TIMEOUT)
                .map_err(|e| failure(target, "cannot resolve or bind", e))?;
            match rmcp.activate(
                true,
                Some(target.user.as_str()),
                Some(target.password.expose().as_bytes()),
            ) {
                Ok(()) => {
                    let mut session = Session {
                        ipmi: Ipmi::new(rmcp),
                        target: target.clone(),
                    };
                    let level = if target.privilege == "operator" {
                        0x03
                    } else {
                        0x04
                    };
                    if let Err(e) =
                        session.command(NetFn::App, APP_SET_SESSION_PRIVILEGE, vec![level])
                    {
                        // Give the BMC its session slot back before failing.
                        session.close_in_place();
                        return Err(match e {
                            FenceError::Device { device, reason } => FenceError::Device {
                                device,
                                reason: format!(
                                    "the BMC refused {} privilege for user {:?}: {reason}",
                                    target.privilege, target.user
                                ),
                            },
                            other => other,
                        });
                    }
                    return Ok(session);
                }
                Err(e) => last = Some(format!("{e:?}")),
            }
        }
        Err(FenceError::Device {
            device: target.describe(),
            reason: format!(
                "cannot open an RMCP+ session as {:?} after {ATTEMPTS} attempts (unreachable, wrong user or password, or cipher suite 3 not enabled): {}",
                target.user,
                last.unwrap_or_default()
            ),
        })
    }

    /// Send one command, retransmitting after a lost datagram.
    fn command(&mut self, netfn: NetFn, cmd: u8, data: Vec<u8>) -> Result<Vec<u8>, FenceError> {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let request = Raw {
                netfn,
                cmd,
                data: data.clone(),
            };
            match self.ipmi.send_recv(request) {
                Ok(response) => return Ok(response),
                Err(ipmi_rs::IpmiError::Connection(e)) => last = format!("{e:?}"),
                Err(e) => return Err(failure(&self.target, &format!("command {cmd:#04x}"), e)),
            }
        }
        Err(failure(
            &self.target,
            &format!("no answer to command {cmd:#04x} after {ATTEMPTS} attempts"),
            last,
        ))
    }

    pub fn power_state(&mut self) -> Result<PowerState, FenceError> {
        let data = self.command(NetFn::Chassis, CHASSIS_GET_STATUS, Vec::new())?;
        match data.first() {
            Some(byte) if byte & 0x01 != 0 => Ok(PowerState::On),
            Some(_) => Ok(PowerState::Off),
            None => Err(failure(&self.target, "chassis status", "empty response")),
        }
    }

    pub fn power(&mut self, on: bool) -> Result<(), FenceError> {
        let action = if on {
            CHASSIS_POWER_UP
        } else {
            CHASSIS_POWER_DOWN
        };
        self.command(NetFn::Chassis, CHASSIS_CONTROL, vec![action])?;
        Ok(())
    }

    /// Close the session (best effort): Get Session Info for the current
    /// session's handle, then Close Session by handle.
    pub fn close(mut self) {
        self.close_in_place();
    }

    fn close_in_place(&mut self) {
        let handle = self
            .command(NetFn::App, APP_GET_SESSION_INFO, vec![0x00])
            .ok()
            .and_then(|d| d.first().copied());
        if let Some(handle) = handle {
            let _ = self.command(NetFn::App, APP_CLOSE_SESSION, vec![0, 0, 0, 0, handle]);
        }
    }
}

/// Run `f` in a session to `target`, closing the session afterwards
/// whatever `f` returned.
fn with_session<T>(
    target: &IpmiTarget,
    f: impl FnOnce(&mut Session) -> Result<T, FenceError>,
) -> Result<T, FenceError> {
    let mut session = Session::open(target)?;
    let result = f(&mut session);
    session.close();
    result
}

/// Power the target off and wait until it reports off (polling every
/// 200 ms up to `confirm_timeout`).
pub fn power_off(target: &IpmiTarget, confirm_timeout: Duration) -> Result<(), FenceError> {
    with_session(target, |session| {
        session.power(false)?;
        let started = Instant::now();
        loop {
            if session.power_state()? == PowerState::Off {
                return Ok(());
            }
            if started.elapsed() > confirm_timeout {
                return Err(FenceError::StillOn {
                    device: target.describe(),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

pub fn power_on(target: &IpmiTarget) -> Result<(), FenceError> {
    with_session(target, |session| session.power(true))
}

pub fn status(target: &IpmiTarget) -> Result<PowerState, FenceError> {
    with_session(target, Session::power_state)
}
