//! Commands that talk to this host's leaseholdd over its control socket:
//! status, hosts, events and the client lease operations.

use crate::cli::{ClientCommand, DaemonArgs, EventsArgs, HostsArgs, RunArgs};
use crate::exit;
use crate::out::outln;
use anyhow::{anyhow, bail, Context, Result};
use leasehold_daemon::client::Client;
use leasehold_daemon::protocol::{ErrorKind, Event, HostStatus, Reply, Request, StatusReply};
use std::path::PathBuf;
use std::time::Duration;

/// A reply that says the request failed, kept whole for the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DaemonRefused {
    pub kind: ErrorKind,
    pub message: String,
}

impl DaemonRefused {
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Busy => exit::BUSY,
            ErrorKind::NotJoined => exit::LOST,
            _ => exit::FAILURE,
        }
    }
}

fn socket_path(args: &DaemonArgs) -> Result<PathBuf> {
    if let Some(socket) = &args.socket {
        return Ok(PathBuf::from(socket));
    }
    if let Some(config) = &args.config {
        let config = leasehold_daemon::config::load(std::path::Path::new(config))?;
        return Ok(config.socket);
    }
    if let Ok(socket) = std::env::var("LEASEHOLD_SOCKET") {
        return Ok(PathBuf::from(socket));
    }
    Ok(PathBuf::from(leasehold_daemon::config::DEFAULT_SOCKET_PATH))
}

pub fn call(args: &DaemonArgs, request: &Request) -> Result<serde_json::Value> {
    let path = socket_path(args)?;
    let mut client = Client::connect(&path, Some(Duration::from_secs(600)))?;
    into_result(client.call(request)?)
}

fn into_result(reply: Reply) -> Result<serde_json::Value> {
    if reply.ok {
        return Ok(reply.result.unwrap_or(serde_json::Value::Null));
    }
    let error = reply
        .error
        .unwrap_or(leasehold_daemon::protocol::ReplyError {
            kind: ErrorKind::Internal,
            message: "the daemon refused without a reason".to_string(),
        });
    Err(anyhow!(DaemonRefused {
        kind: error.kind,
        message: error.message,
    }))
}

pub fn print_json(value: &serde_json::Value) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}s", ms / 1000)
    }
}

fn print_hosts(hosts: &[HostStatus]) {
    outln!(
        "  {:>4}  {:<20} {:<16} {:>10} {:>6} {:>9} {:>6}",
        "ID",
        "NAME",
        "STATE",
        "UNCHANGED",
        "GEN",
        "MEM_FREE",
        "VCPUS"
    );
    for h in hosts {
        let mut state = h.state.clone();
        if h.incident {
            state.push_str(" (incident)");
        }
        if h.this_host {
            state.push_str(" *");
        }
        outln!(
            "  {:>4}  {:<20} {:<16} {:>10} {:>6} {:>9} {:>6}",
            h.host_id,
            h.name,
            state,
            age(h.unchanged_for_ms),
            h.generation,
            h.memory_mib_free,
            h.vcpus_free
        );
        if let Some(error) = &h.error {
            outln!("        unusable: {error}");
        }
        if !h.settings_differ.is_empty() {
            outln!(
                "        SETTINGS DIFFER from this host's: {}",
                h.settings_differ.join(", ")
            );
        }
    }
}

pub fn status(args: &DaemonArgs) -> Result<()> {
    let value = call(args, &Request::Status {})?;
    if args.json {
        return print_json(&value);
    }
    let status: StatusReply = serde_json::from_value(value).context("unexpected status reply")?;
    outln!(
        "host {} ({}), leaseholdd pid {}, watchdog {}",
        status.host_id,
        status.host_name,
        status.pid,
        status.watchdog.as_deref().unwrap_or("none")
    );
    for space in &status.lockspaces {
        outln!(
            "lockspace {} on {}: {}, generation {}, last renewal {} ago, {} renewal failure(s){}",
            space.name,
            space.device,
            space.state,
            space.generation,
            space
                .last_renewal_age_ms
                .map(age)
                .unwrap_or_else(|| "-".to_string()),
            space.renewal_failures,
            if space.storage_incident {
                ", STORAGE INCIDENT"
            } else {
                ""
            }
        );
        print_hosts(&space.hosts);
        if space.resources.is_empty() {
            outln!("  no resource leases held");
        }
        for r in &space.resources {
            let holder = match &r.vm {
                Some(uuid) => format!("VM {uuid}"),
                None => format!("pid {}", r.pid),
            };
            outln!(
                "  holds {} (slot {}, lver {}) for {holder}",
                r.name,
                r.slot,
                r.lver
            );
        }
    }
    if let Some(h) = &status.headroom {
        outln!("{}", crate::vm::headroom_line(h));
    }
    for c in &status.fence_checks {
        let result = match (&c.error, &c.power) {
            (Some(error), _) => format!("FAILING: {error}"),
            (None, Some(power)) => format!("ok, power {power}"),
            (None, None) => "ok".to_string(),
        };
        outln!(
            "fence device of host {} ({}), {}: {result} (checked {} ago)",
            c.host_id,
            c.host,
            c.device,
            age(c.checked_ago_ms)
        );
    }
    Ok(())
}

pub fn hosts(args: &HostsArgs) -> Result<()> {
    let value = call(
        &args.daemon,
        &Request::Hosts {
            lockspace: args.lockspace.clone(),
        },
    )?;
    if args.daemon.json {
        return print_json(&value);
    }
    let hosts: Vec<HostStatus> = serde_json::from_value(value).context("unexpected hosts reply")?;
    print_hosts(&hosts);
    Ok(())
}

pub fn events(args: &EventsArgs) -> Result<()> {
    let value = call(
        &args.daemon,
        &Request::Events {
            count: Some(args.count),
        },
    )?;
    if args.daemon.json {
        return print_json(&value);
    }
    let events: Vec<Event> = serde_json::from_value(value).context("unexpected events reply")?;
    for e in events {
        outln!(
            "{} host {} {} {}: {}",
            e.time,
            e.host_id,
            e.lockspace,
            e.kind,
            e.message
        );
    }
    Ok(())
}

pub fn print_result(args: &DaemonArgs, value: &serde_json::Value, text: String) -> Result<()> {
    if args.json {
        print_json(value)
    } else {
        outln!("{text}");
        Ok(())
    }
}

pub fn client(command: &ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Register(a) => {
            let v = call(
                &a.daemon,
                &Request::Register {
                    pid: a.pid,
                    bind: false,
                },
            )?;
            print_result(&a.daemon, &v, format!("registered pid {}", a.pid))
        }
        ClientCommand::Unregister(a) => {
            let v = call(&a.daemon, &Request::Unregister { pid: a.pid })?;
            print_result(&a.daemon, &v, format!("unregistered pid {}", a.pid))
        }
        ClientCommand::Acquire(a) => {
            let v = call(
                &a.daemon,
                &Request::Acquire {
                    lockspace: a.lockspace.clone(),
                    resource: a.resource.clone(),
                    pid: a.pid,
                    vm: None,
                },
            )?;
            let text = format!(
                "acquired {} for pid {} (slot {}, lver {})",
                a.resource, a.pid, v["slot"], v["lver"]
            );
            print_result(&a.daemon, &v, text)
        }
        ClientCommand::Release(a) => {
            let v = call(
                &a.daemon,
                &Request::Release {
                    lockspace: a.lockspace.clone(),
                    resource: a.resource.clone(),
                    pid: a.pid,
                },
            )?;
            let text = format!("released {} (lver {})", a.resource, v["lver"]);
            print_result(&a.daemon, &v, text)
        }
        ClientCommand::Inquire(a) => {
            let v = call(
                &a.daemon,
                &Request::Inquire {
                    lockspace: a.lockspace.clone(),
                    resource: a.resource.clone(),
                },
            )?;
            let text = match v["holder_host_id"].as_u64() {
                Some(host) => format!(
                    "{} is held by host {} ({}) generation {}, lver {}",
                    a.resource,
                    host,
                    v["holder_host_name"].as_str().unwrap_or("?"),
                    v["holder_generation"],
                    v["lver"]
                ),
                None => format!("{} is free (lver {})", a.resource, v["lver"]),
            };
            print_result(&a.daemon, &v, text)
        }
        ClientCommand::Run(a) => run(a),
        ClientCommand::AddLockspace(a) => {
            let v = call(
                &a.daemon,
                &Request::AddLockspace {
                    name: a.name.clone(),
                    device: a.device.clone(),
                    io_timeout_ms: a.io_timeout_ms,
                },
            )?;
            print_result(
                &a.daemon,
                &v,
                format!("joined lockspace {} on {}", a.name, a.device),
            )
        }
        ClientCommand::RemoveLockspace(a) => {
            let v = call(
                &a.daemon,
                &Request::RemoveLockspace {
                    name: a.name.clone(),
                },
            )?;
            print_result(&a.daemon, &v, format!("left lockspace {}", a.name))
        }
    }
}

pub fn fence(args: &crate::cli::FenceArgs) -> Result<()> {
    use crate::cli::FenceActionArg;
    use leasehold_daemon::protocol::FenceAction;
    let action = match args.action {
        FenceActionArg::Status => FenceAction::Status,
        FenceActionArg::Off => FenceAction::Off,
        FenceActionArg::On => FenceAction::On,
        FenceActionArg::Confirm => FenceAction::Confirm,
    };
    let consequence = match args.action {
        FenceActionArg::Off => Some(format!(
            "power {} off through its fence device now: everything running on it dies at once, and the other hosts restart its HA VMs",
            args.host
        )),
        FenceActionArg::Confirm => Some(format!(
            "mark {} as powered off without touching any device: the other hosts take its leases and restart its VMs at once. Do this only if you powered it off yourself; if it still runs, its VMs run twice",
            args.host
        )),
        _ => None,
    };
    if let Some(consequence) = consequence {
        eprintln!("leasehold: warning: this will {consequence}");
        if !args.yes {
            confirm_on_terminal()?;
        }
    }
    let v = call(
        &args.daemon,
        &Request::Fence {
            host: args.host.clone(),
            action,
        },
    )?;
    let text = match (
        args.action,
        v["power"].as_str(),
        v["fenced_generation"].as_u64(),
    ) {
        (FenceActionArg::Confirm, _, Some(g)) => {
            format!("{} generation {g} marked FENCED (manual)", args.host)
        }
        (_, Some(power), Some(g)) => format!(
            "{} is {power} ({}); generation {g} marked FENCED",
            args.host,
            v["device"].as_str().unwrap_or("")
        ),
        (_, Some(power), None) => format!(
            "{} is {power} ({})",
            args.host,
            v["device"].as_str().unwrap_or("")
        ),
        _ => format!("{}: done", args.host),
    };
    print_result(&args.daemon, &v, text)
}

/// Ask y/N on the terminal; Err unless the answer is yes. Without a
/// terminal, refuse: scripts say `--yes`.
fn confirm_on_terminal() -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "not run from a terminal, so nobody can answer; pass --yes to go ahead without asking"
        );
    }
    eprint!("Go ahead? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing done")
    }
}

/// Register this process, acquire every resource, then exec the command:
/// the pid (and so the leases) pass to it.
fn run(args: &RunArgs) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let pid = i32::try_from(std::process::id()).context("pid out of range")?;
    let path = socket_path(&args.daemon)?;
    let mut client = Client::connect(&path, Some(Duration::from_secs(600)))?;
    into_result(client.call(&Request::Register { pid, bind: false })?)?;
    for resource in &args.resources {
        into_result(client.call(&Request::Acquire {
            lockspace: args.lockspace.clone(),
            resource: resource.clone(),
            pid,
            vm: None,
        })?)
        .with_context(|| format!("cannot acquire {resource}"))?;
    }
    drop(client);
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no command given after --");
    };
    let error = std::process::Command::new(program).args(rest).exec();
    Err(anyhow!("cannot run {program}: {error}"))
}
