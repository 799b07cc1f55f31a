//! `leasehold vm ...`: the HA VM registry through this host's daemon.

use crate::cli::{PriorityArg, RestartArg, VmCommand};
use crate::control::{call, print_json, print_result};
use crate::out::outln;
use anyhow::{Context, Result};
use leasehold_daemon::backup::RegistryExport;
use leasehold_daemon::placement::{Headroom, Priority};
use leasehold_daemon::protocol::{Request, VmActionReply, VmListReply};
use leasehold_daemon::registry::RestartPolicy;

pub fn run(command: &VmCommand) -> Result<()> {
    match command {
        VmCommand::Add(a) => {
            let xml = std::fs::read_to_string(&a.xml)
                .with_context(|| format!("cannot read the domain XML {}", a.xml))?;
            let request = Request::VmAdd {
                xml,
                priority: Some(match a.priority {
                    PriorityArg::High => Priority::High,
                    PriorityArg::Medium => Priority::Medium,
                    PriorityArg::Low => Priority::Low,
                }),
                restart: Some(match a.restart {
                    RestartArg::Always => RestartPolicy::Always,
                    RestartArg::Never => RestartPolicy::Never,
                }),
                host: a.host.clone(),
                force: a.force,
            };
            action(&a.daemon, &request)
        }
        VmCommand::List(args) => list(args),
        VmCommand::Start(a) => action(
            &a.daemon,
            &Request::VmStart {
                vm: a.vm.clone(),
                host: a.host.clone(),
            },
        ),
        VmCommand::Stop(a) => action(&a.daemon, &Request::VmStop { vm: a.vm.clone() }),
        VmCommand::Migrate(a) => action(
            &a.daemon,
            &Request::VmMigrate {
                vm: a.vm.clone(),
                host: a.host.clone(),
            },
        ),
        VmCommand::Remove(a) => action(&a.daemon, &Request::VmRemove { vm: a.vm.clone() }),
        VmCommand::Export(args) => export(args),
        VmCommand::Import(a) => import(a),
    }
}

/// `vm export`: the document on stdout, what could not be exported on
/// stderr.
fn export(args: &crate::cli::DaemonArgs) -> Result<()> {
    let value = call(args, &Request::VmExport {})?;
    let export: RegistryExport =
        serde_json::from_value(value).context("unexpected vm export reply")?;
    export
        .verify()
        .context("the daemon's export does not verify")?;
    for problem in &export.unusable {
        eprintln!("leasehold: warning: not exported: {problem}");
    }
    outln!("{}", serde_json::to_string_pretty(&export)?);
    eprintln!(
        "leasehold: exported {} VM record(s) of lockspace {}",
        export.vms.len(),
        export.lockspace
    );
    Ok(())
}

/// `vm import FILE`: verified whole first, then one record at a time.
fn import(a: &crate::cli::VmImportArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&a.file).with_context(|| format!("cannot read {}", a.file))?;
    let export: RegistryExport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a registry export", a.file))?;
    export
        .verify()
        .with_context(|| format!("{}: refusing to import", a.file))?;
    let mut failed = 0;
    for record in &export.vms {
        let name = record.name.clone();
        match call(
            &a.daemon,
            &Request::VmImport {
                record: record.clone(),
            },
        ) {
            Ok(_) => outln!("{name}: imported"),
            Err(e) => {
                let skipped = e
                    .downcast_ref::<crate::control::DaemonRefused>()
                    .is_some_and(|r| r.kind == leasehold_daemon::protocol::ErrorKind::Conflict);
                if skipped {
                    outln!("{name}: skipped: {e}");
                } else {
                    eprintln!("leasehold: {name}: {e:#}");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} record(s) could not be imported (see above); run the import again once fixed: imported ones are skipped",
            export.vms.len()
        );
    }
    Ok(())
}

fn action(args: &crate::cli::DaemonArgs, request: &Request) -> Result<()> {
    let value = call(args, request)?;
    let reply: VmActionReply =
        serde_json::from_value(value.clone()).context("unexpected vm reply")?;
    if let Some(warning) = &reply.warning {
        eprintln!("leasehold: warning: {warning}");
    }
    print_result(args, &value, reply.message)
}

/// One line on admission control, for `vm list` and `status`.
pub fn headroom_line(headroom: &Headroom) -> String {
    if headroom.ok {
        format!(
            "headroom: ok, every HA VM restarts after losing any {} host(s); {} MiB spare in the worst case",
            headroom.failures_to_tolerate, headroom.spare_memory_mib
        )
    } else {
        format!(
            "headroom: NOT ENOUGH for {} host failure(s): losing host(s) {:?} leaves no room for {}",
            headroom.failures_to_tolerate,
            headroom.worst_lost_hosts,
            headroom.unplaced.join(", ")
        )
    }
}

fn list(args: &crate::cli::DaemonArgs) -> Result<()> {
    let value = call(args, &Request::VmList {})?;
    if args.json {
        return print_json(&value);
    }
    let reply: VmListReply = serde_json::from_value(value).context("unexpected vm list reply")?;
    outln!(
        "{:<20} {:<9} {:<8} {:>7} {:>5}  {:<24} {:>5}  note",
        "VM",
        "STATE",
        "PRIORITY",
        "MEM MiB",
        "VCPUS",
        "HOST",
        "LVER"
    );
    for vm in &reply.vms {
        let host = match (vm.owner_host_id, &vm.owner_host_name) {
            (Some(id), Some(name)) => {
                format!("{id} ({name}) gen {}", vm.owner_generation.unwrap_or(0))
            }
            (Some(id), None) => id.to_string(),
            _ => "-".to_string(),
        };
        let priority = vm
            .priority
            .map(|p| format!("{p:?}").to_lowercase())
            .unwrap_or_else(|| "-".to_string());
        let mut note = String::new();
        if vm.failed_restarts > 0 {
            note.push_str(&format!("{} failed restart(s) ", vm.failed_restarts));
        }
        if let Some(h) = vm.preferred_host {
            note.push_str(&format!("to host {h} "));
        }
        if let Some(e) = &vm.error {
            note.push_str(e);
        }
        outln!(
            "{:<20} {:<9} {:<8} {:>7} {:>5}  {:<24} {:>5}  {}",
            vm.name,
            vm.state,
            priority,
            vm.memory_mib,
            vm.vcpus,
            host,
            vm.lver,
            note.trim_end()
        );
    }
    if reply.vms.is_empty() {
        outln!("(no HA VMs registered)");
    }
    if let Some(h) = &reply.headroom {
        outln!("{}", headroom_line(h));
    }
    Ok(())
}
