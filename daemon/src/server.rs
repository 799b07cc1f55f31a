//! The control socket: a Unix socket answering JSON lines (protocol.rs).
//! Peers are checked with SO_PEERCRED: root, the daemon's own user, or a
//! member of the configured group; everyone else is refused and logged.
//! Nothing here touches the device: status comes from published state, and
//! lease operations go to the lockspace's worker thread with a time limit,
//! so a hung device cannot block the socket.

use crate::context::Context;
use crate::events::Level;
use crate::holders::Pidfd;
use crate::protocol::{
    ErrorKind, FenceAction, FenceReply, HaVm, HolderStatus, Reply, Request, StatusReply,
    VmLookupReply, REQUEST_BYTES_MAX,
};
use crate::space::{HeldBy, Job, JobError, Space};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Create the socket: its directory, mode 0660, owned by the configured
/// group so its members can connect. A stale socket file is replaced.
pub fn bind(context: &Context) -> anyhow::Result<UnixListener> {
    use anyhow::Context as _;
    let path = &context.config.socket;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the socket directory {}", parent.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    if let Some((name, gid)) = &context.config.socket_group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(*gid)))
            .with_context(|| format!("cannot give {} to group {name}", path.display()))?;
    }
    Ok(listener)
}

/// Accept connections until `shutdown` fires.
pub async fn serve(
    context: Arc<Context>,
    listener: UnixListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let context = Arc::clone(&context);
                    tokio::spawn(async move { connection(context, stream).await });
                }
                Err(e) => {
                    tracing::warn!("accept on the control socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Supplementary groups of a process, from /proc/PID/status.
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines().find(|l| l.starts_with("Groups:")).map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn authorized(context: &Context, uid: u32, gid: u32, pid: Option<i32>) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    match &context.config.socket_group {
        Some((_, group)) => gid == *group || pid.is_some_and(|pid| groups_of(pid).contains(group)),
        None => false,
    }
}

async fn connection(context: Arc<Context>, stream: UnixStream) {
    let (uid, gid, pid) = match stream.peer_cred() {
        Ok(cred) => (cred.uid(), cred.gid(), cred.pid()),
        Err(e) => {
            tracing::warn!("cannot read the peer credentials of a control connection: {e}");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if !authorized(&context, uid, gid, pid) {
        context.events.emit(
            Level::Warn,
            &context.config.lockspace,
            "client-refused",
            format!(
                "refused a control connection from uid {uid} gid {gid} pid {}: only root or group {} may use the socket",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".to_string()),
                context
                    .config
                    .socket_group
                    .as_ref()
                    .map(|(name, _)| name.as_str())
                    .unwrap_or("(none configured)")
            ),
        );
        let reply = Reply::failure(
            ErrorKind::PermissionDenied,
            format!("uid {uid} may not use leaseholdd's socket: only root or the configured group"),
        );
        let _ = send(&mut write, &reply).await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut bound: Option<i32> = None;
    connection_lines(
        &context,
        Peer { uid, pid },
        &mut reader,
        &mut write,
        &mut bound,
    )
    .await;
    if let Some(pid) = bound {
        bound_connection_closed(&context, pid);
    }
}

/// A bound holder's connection closed: it must not hold leases any more.
fn bound_connection_closed(context: &Context, pid: i32) {
    let Some(killed) = context.holders.kill(pid) else {
        return;
    };
    let how = match killed {
        Ok(()) => "sent it SIGKILL".to_string(),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => "it has exited".to_string(),
        Err(e) => format!("cannot kill it: {e}"),
    };
    context.events.emit(
        Level::Warn,
        &context.config.lockspace,
        "holder-connection-closed",
        format!("the connection lease holder pid {pid} was bound to closed; {how}; its leases are released once it is gone"),
    );
}

/// Answer the requests of one connection until it closes. A `register`
/// with `bind` records its pid in `bound`.
async fn connection_lines(
    context: &Arc<Context>,
    peer: Peer,
    mut reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    bound: &mut Option<i32>,
) {
    let (uid, pid) = (peer.uid, peer.pid);
    let context = Arc::clone(context);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(REQUEST_BYTES_MAX).unwrap_or(u64::MAX) + 1;
        let read = match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(read) => read,
            Err(_) => return,
        };
        if read == 0 {
            return;
        }
        let reply = if line.last() != Some(&b'\n') && line.len() > REQUEST_BYTES_MAX {
            // Oversized: answer, then skip the rest of the line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader).take(limit).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            Reply::failure(
                ErrorKind::BadRequest,
                format!("request longer than {REQUEST_BYTES_MAX} bytes"),
            )
        } else {
            match std::str::from_utf8(&line) {
                Err(_) => Reply::failure(ErrorKind::BadRequest, "request is not UTF-8"),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => match serde_json::from_str::<Request>(text.trim()) {
                    Err(e) => Reply::failure(
                        ErrorKind::BadRequest,
                        format!(
                            "not a valid request: {e} (see docs/operations.md, control socket)"
                        ),
                    ),
                    Ok(request) => {
                        let binds = match &request {
                            Request::Register { pid, bind: true } => Some(*pid),
                            _ => None,
                        };
                        let reply = handle(&context, Peer { uid, pid }, request).await;
                        if reply.ok && binds.is_some() {
                            *bound = binds;
                        }
                        reply
                    }
                },
            }
        };
        if send(write, &reply).await.is_err() {
            return;
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write.write_all(&text).await
}

fn error_reply(error: JobError) -> Reply {
    Reply::failure(error.kind, error.message)
}

/// How long a client waits for a lease operation before it is told the
/// device does not answer (the worker gives back a lease won too late).
fn job_timeout(space: &Space) -> Duration {
    Duration::from_millis(
        u64::from(space.config.io_timeout_ms)
            .saturating_mul(20)
            .max(10_000),
    )
}

async fn run_job<T>(
    space: &Space,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, JobError>>) -> Job,
) -> Result<T, JobError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    space.submit(make(sender))?;
    match tokio::time::timeout(job_timeout(space), receiver).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(JobError {
            kind: ErrorKind::Internal,
            message: "the lockspace worker stopped".to_string(),
        }),
        Err(_) => Err(JobError {
            kind: ErrorKind::Storage,
            message: format!(
                "the lease device {} did not answer within {} ms; the outcome is unknown, a lease won late is given back",
                space.config.device,
                job_timeout(space).as_millis()
            ),
        }),
    }
}

/// Run a job on the named lockspace's worker and turn its outcome into a reply.
async fn space_job<T: serde::Serialize>(
    context: &Context,
    lockspace: Option<String>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, JobError>>) -> Job,
) -> Reply {
    let space = match context.space(lockspace.as_deref()) {
        Ok(space) => space,
        Err(e) => return error_reply(e),
    };
    match run_job(&space, make).await {
        Ok(result) => Reply::success(result),
        Err(e) => error_reply(e),
    }
}

/// How long a `vm_*` request may take: lease I/O plus a libvirt start.
const VM_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Hand a `vm_*` request to the VM manager and wait for its answer.
async fn vm_request(context: &Context, request: Request) -> Reply {
    let sender = match context.vm_jobs.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let Some(sender) = sender else {
        return Reply::failure(
            ErrorKind::NotFound,
            "this daemon runs no VM manager (built without libvirt support, or not joined to its lockspace yet)",
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if sender.send((request, reply)).is_err() {
        return Reply::failure(ErrorKind::Internal, "the VM manager stopped");
    }
    match tokio::time::timeout(VM_REQUEST_TIMEOUT, answer).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Reply::failure(ErrorKind::Internal, "the VM manager stopped"),
        Err(_) => Reply::failure(
            ErrorKind::Storage,
            format!(
                "the VM manager did not answer within {} s (libvirt or the lease device hangs); see `leasehold events`",
                VM_REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// `vm_lookup`: the HA VM with domain UUID `uuid` or name `name` in the
/// configured lockspace, from a registry scan on a device handle of its
/// own (off the reactor, bounded like a lease operation).
async fn vm_lookup(context: &Context, uuid: Option<String>, name: Option<String>) -> Reply {
    let space = match context.space(None) {
        Ok(space) => space,
        Err(e) => return error_reply(e),
    };
    let scanning = Arc::clone(&space);
    let scan = tokio::task::spawn_blocking(move || {
        let (disk, lockspace) = scanning.open()?;
        crate::registry::scan(
            &lockspace,
            disk.as_ref(),
            &std::collections::BTreeMap::new(),
        )
    });
    let entries = match tokio::time::timeout(job_timeout(&space), scan).await {
        Ok(Ok(Ok(entries))) => entries,
        Ok(Ok(Err(e))) => {
            let kind = match e {
                lease::LeaseError::Disk(_) => ErrorKind::Storage,
                _ => ErrorKind::Internal,
            };
            return Reply::failure(
                kind,
                format!("cannot read the HA VMs on {}: {e}", space.config.device),
            );
        }
        Ok(Err(e)) => return Reply::failure(ErrorKind::Internal, e.to_string()),
        Err(_) => {
            return Reply::failure(
                ErrorKind::Storage,
                format!(
                    "the lease device {} did not answer within {} ms",
                    space.config.device,
                    job_timeout(&space).as_millis()
                ),
            )
        }
    };
    let by_uuid = |e: &crate::registry::VmEntry| {
        let record_uuid = e.record.as_ref().ok().map(|r| r.uuid.as_str());
        matches!((uuid.as_deref(), record_uuid), (Some(u), Some(r)) if u.eq_ignore_ascii_case(r))
    };
    let by_name = |e: &crate::registry::VmEntry| name.as_deref() == Some(e.name.as_str());
    let found = entries
        .iter()
        .find(|e| by_uuid(e))
        .or_else(|| entries.iter().find(|e| by_name(e)));
    let vm = found.map(|entry| {
        let record_uuid = entry.record.as_ref().ok().map(|r| r.uuid.clone());
        let held_here = match (space.held_vms().get(&entry.name), &record_uuid) {
            (Some(held), Some(uuid)) => held.eq_ignore_ascii_case(uuid),
            _ => false,
        };
        let holder_name = entry.holder.and_then(|owner| {
            space
                .status()
                .hosts
                .into_iter()
                .find(|h| h.host_id == owner.host_id.get())
                .map(|h| h.name)
                .filter(|n| !n.is_empty())
        });
        HaVm {
            lockspace: space.config.name.clone(),
            name: entry.name.clone(),
            uuid: record_uuid,
            slot: entry.slot,
            holder_host_id: entry.holder.map(|o| o.host_id.get()),
            holder_host_name: holder_name,
            holder_generation: entry.holder.map(|o| o.generation),
            held_here,
            error: entry.record.as_ref().err().cloned(),
        }
    });
    Reply::success(VmLookupReply { vm })
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')?.checked_add(1)?..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Root may register any process; anyone else only itself or one of its
/// descendants (a holder gets SIGKILL on self-fencing).
fn may_register(peer: Peer, pid: i32) -> Result<(), String> {
    if peer.uid == 0 {
        return Ok(());
    }
    let Some(peer_pid) = peer.pid else {
        return Err("cannot tell which process is asking".to_string());
    };
    let mut current = pid;
    for _ in 0..64 {
        if current == peer_pid {
            return Ok(());
        }
        match parent_of(current) {
            Some(parent) if parent > 1 => current = parent,
            _ => break,
        }
    }
    Err(format!(
        "uid {} may register only its own process or its descendants, not pid {pid}",
        peer.uid
    ))
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: u32,
    pid: Option<i32>,
}

/// Answer one request; lease operations are timed for the metrics.
async fn handle(context: &Arc<Context>, peer: Peer, request: Request) -> Reply {
    let op = match &request {
        Request::Acquire { .. } => Some("acquire"),
        Request::Release { .. } => Some("release"),
        Request::Inquire { .. } => Some("inquire"),
        _ => None,
    };
    let started = std::time::Instant::now();
    let reply = dispatch(context, peer, request).await;
    if let Some(op) = op {
        let outcome = match &reply.error {
            None => "ok".to_string(),
            Some(e) => serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "error".to_string()),
        };
        context.metrics.lease_op(op, outcome, started.elapsed());
    }
    reply
}

async fn dispatch(context: &Arc<Context>, peer: Peer, request: Request) -> Reply {
    match request {
        Request::Status {} => Reply::success(status(context)),
        Request::Hosts { lockspace } => match context.space(lockspace.as_deref()) {
            Ok(space) => Reply::success(space.status().hosts),
            Err(e) => error_reply(e),
        },
        Request::Events { count } => {
            let count = count.unwrap_or(50).min(10_000);
            match context.events.tail(count) {
                Ok(events) => Reply::success(events),
                Err(e) => Reply::failure(
                    ErrorKind::Internal,
                    format!(
                        "cannot read the event log {}: {e}",
                        context.events.path().display()
                    ),
                ),
            }
        }
        Request::Register { pid, .. } => match may_register(peer, pid) {
            Ok(()) => register(context, pid),
            Err(message) => Reply::failure(ErrorKind::PermissionDenied, message),
        },
        Request::Unregister { pid } => match context.holders.remove(pid) {
            Some(leases) => {
                if let Some(watch) = context.replace_exit_watch(pid, None) {
                    watch.abort();
                }
                release_all_of(context, pid, &leases);
                context.persist();
                Reply::success(serde_json::json!({ "pid": pid, "leases_released": leases.len() }))
            }
            None => Reply::failure(ErrorKind::NotFound, format!("pid {pid} is not registered")),
        },
        Request::Acquire {
            lockspace,
            resource,
            pid,
            vm,
        } => {
            // QEMU of a HA VM this host holds the lease for: attached to
            // the daemon's hold, no device I/O.
            let attached = vm.as_deref().and_then(|vm| {
                context
                    .space(lockspace.as_deref())
                    .ok()?
                    .attach_to_vm_hold(&resource, pid, vm)
            });
            match attached {
                Some(Ok(result)) => Reply::success(result),
                Some(Err(e)) => error_reply(e),
                None => {
                    space_job(context, lockspace, |reply| Job::Acquire {
                        resource,
                        by: HeldBy::Process(pid),
                        reply,
                    })
                    .await
                }
            }
        }
        Request::Release {
            lockspace,
            resource,
            pid,
        } => {
            space_job(context, lockspace, |reply| Job::Release {
                resource,
                by: HeldBy::Process(pid),
                forget: false,
                reply,
            })
            .await
        }
        Request::Inquire {
            lockspace,
            resource,
        } => space_job(context, lockspace, |reply| Job::Inquire { resource, reply }).await,
        Request::AddLockspace {
            name,
            device,
            io_timeout_ms,
        } => add_lockspace(context, name, device, io_timeout_ms).await,
        Request::RemoveLockspace { name } => remove_lockspace(context, name).await,
        Request::Fence { host, action } => {
            let context = Arc::clone(context);
            match tokio::task::spawn_blocking(move || fence(&context, &host, action)).await {
                Ok(reply) => reply,
                Err(e) => Reply::failure(ErrorKind::Internal, e.to_string()),
            }
        }
        Request::VmLookup { uuid, name } => vm_lookup(context, uuid, name).await,
        request @ (Request::VmList {}
        | Request::VmAdd { .. }
        | Request::VmStart { .. }
        | Request::VmStop { .. }
        | Request::VmMigrate { .. }
        | Request::VmRemove { .. }
        | Request::VmExport {}
        | Request::VmImport { .. }) => vm_request(context, request).await,
    }
}

/// An operator's fence command (blocking: device I/O and lease I/O).
fn fence(context: &Context, host: &str, action: FenceAction) -> Reply {
    let Some(entry) = context
        .config
        .cluster
        .iter()
        .find(|h| h.name == host || h.id.to_string() == host)
        .cloned()
    else {
        return Reply::failure(
            ErrorKind::NotFound,
            format!(
                "no host {host:?} in the cluster section of {}",
                context.config.file.display()
            ),
        );
    };
    let space = match context.space(None) {
        Ok(space) => space,
        Err(e) => return error_reply(e),
    };
    let Some(victim) = lease::HostId::new(entry.id) else {
        return Reply::failure(ErrorKind::BadRequest, "host id 0");
    };
    let mut reply = FenceReply {
        host_id: entry.id,
        host: entry.name.clone(),
        device: String::new(),
        power: None,
        fenced_generation: None,
    };
    if matches!(action, FenceAction::Off | FenceAction::Confirm) {
        if let Err(refusal) = check_not_renewing(context, &space, &entry, victim, action) {
            return refusal;
        }
    }
    if action == FenceAction::Confirm {
        return match crate::fencing::confirm(&space, victim) {
            Ok(generation) => {
                context.events.emit(
                    Level::Warn,
                    &context.config.lockspace,
                    "fence-confirmed",
                    format!(
                        "an operator confirmed host {} ({}) is powered off; generation {generation} marked FENCED (manual): its leases may be taken",
                        entry.id, entry.name
                    ),
                );
                reply.device = "manual".to_string();
                reply.fenced_generation = Some(generation);
                Reply::success(reply)
            }
            Err(e) => Reply::failure(ErrorKind::Storage, e.to_string()),
        };
    }
    let device = match crate::fence::Device::for_host(&context.config, &entry) {
        Ok(device) => device,
        Err(e) => return Reply::failure(ErrorKind::Conflict, e.to_string()),
    };
    reply.device = device.describe();
    let result = match action {
        FenceAction::Status => device.status().map(Some),
        FenceAction::On => device.power_on().map(|()| None),
        FenceAction::Off | FenceAction::Confirm => {
            context.events.emit(
                Level::Warn,
                &context.config.lockspace,
                "fencing",
                format!(
                    "an operator is fencing host {} ({}) via {}",
                    entry.id,
                    entry.name,
                    device.describe()
                ),
            );
            device
                .power_off()
                .map(|()| Some(crate::fence::PowerState::Off))
        }
    };
    match result {
        Ok(power) => {
            reply.power = power.map(|p| match p {
                crate::fence::PowerState::On => "on".to_string(),
                crate::fence::PowerState::Off => "off".to_string(),
            });
            if action == FenceAction::On {
                reply.power = Some("on".to_string());
            }
            if action == FenceAction::Off {
                match crate::fencing::mark(&space, victim, device.method()) {
                    Ok(generation) => {
                        reply.fenced_generation = Some(generation);
                        context.events.emit(
                            Level::Warn,
                            &context.config.lockspace,
                            "fenced",
                            format!(
                                "host {} ({}) powered off (confirmed) by an operator; generation {generation} marked FENCED",
                                entry.id, entry.name
                            ),
                        );
                    }
                    Err(e) => {
                        return Reply::failure(
                            ErrorKind::Storage,
                            format!(
                                "host {} is off, but the FENCED mark failed: {e}",
                                entry.name
                            ),
                        )
                    }
                }
            }
            Reply::success(reply)
        }
        Err(e) => Reply::failure(ErrorKind::Storage, e.to_string()),
    }
}

/// An operator's `fence off` or `fence confirm` of `entry` goes ahead only
/// for a host whose record stands still (read twice, a renewal interval
/// apart); `confirm` moreover only for one this host's monitor already
/// shows silent (or dead, fenced, left). Err is the refusal to send.
fn check_not_renewing(
    context: &Context,
    space: &Space,
    entry: &crate::config::ClusterHost,
    victim: lease::HostId,
    action: FenceAction,
) -> Result<(), Reply> {
    let verb = if action == FenceAction::Confirm {
        "confirm"
    } else {
        "off"
    };
    if entry.id == context.config.host_id {
        return Err(Reply::failure(
            ErrorKind::Conflict,
            format!(
                "host {} ({}) is this host: `fence {verb}` is for another, silent host",
                entry.id, entry.name
            ),
        ));
    }
    let seen = space
        .status()
        .hosts
        .into_iter()
        .find(|h| h.host_id == entry.id);
    let last = seen
        .as_ref()
        .map(|h| {
            format!(
                "; this host's monitor shows it {} (record unchanged for {} ms)",
                h.state, h.unchanged_for_ms
            )
        })
        .unwrap_or_default();
    let timeouts = lease::timeouts::Timeouts::from_io_timeout_ms(space.config.io_timeout_ms);
    let interval_ms = timeouts.renew_interval_ms;
    match crate::fencing::still_renewing(space, victim, interval_ms) {
        Ok(Some(moved)) => {
            return Err(Reply::failure(
                ErrorKind::Busy,
                format!(
                    "refusing `fence {verb}` of host {} ({}): it is renewing its lease, {moved}{last}. Its VMs would run twice; stop it properly, or wait until it is silent",
                    entry.id, entry.name
                ),
            ))
        }
        Ok(None) => {}
        Err(e) => {
            return Err(Reply::failure(
                ErrorKind::Storage,
                format!(
                    "refusing `fence {verb}` of host {} ({}): cannot read its record to check that it stopped renewing: {e}",
                    entry.id, entry.name
                ),
            ))
        }
    }
    let silent = seen
        .as_ref()
        .is_some_and(|h| matches!(h.state.as_str(), "silent" | "dead" | "fenced" | "left"));
    if action == FenceAction::Confirm && !silent {
        return Err(Reply::failure(
            ErrorKind::Busy,
            format!(
                "refusing `fence confirm` of host {} ({}): storage does not show it silent yet{last}; a host is silent {} ms after its last renewal ({} ms with a watchdog). Wait, then confirm",
                entry.id,
                entry.name,
                timeouts.fence_expiry_ms,
                timeouts.expiry_ms
            ),
        ));
    }
    Ok(())
}

pub fn status(context: &Context) -> StatusReply {
    StatusReply {
        host_id: context.config.host_id,
        host_name: context.config.host_name.clone(),
        pid: std::process::id(),
        watchdog: context
            .config
            .watchdog_device
            .as_ref()
            .map(|p| p.display().to_string()),
        lockspaces: context.spaces().iter().map(|s| s.status()).collect(),
        headroom: match context.headroom.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        },
        fence_checks: {
            let now_ms = lease::clock::Clock::now_ms(&lease::clock::SystemClock);
            let checks = match context.fence_checks.lock() {
                Ok(guard) => guard.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            checks
                .into_values()
                .map(|c| crate::protocol::FenceCheckStatus {
                    host_id: c.host_id,
                    host: c.host,
                    device: c.device,
                    ok: c.error.is_none(),
                    power: c.power,
                    error: c.error,
                    checked_ago_ms: now_ms.saturating_sub(c.at_ms),
                })
                .collect()
        },
        holders: context
            .holders
            .snapshot()
            .into_iter()
            .map(|(pid, _, leases)| HolderStatus {
                pid,
                leases: leases
                    .into_iter()
                    .map(|(s, r)| format!("{s}/{r}"))
                    .collect(),
            })
            .collect(),
    }
}

fn register(context: &Arc<Context>, pid: i32) -> Reply {
    match context.holders.register(pid) {
        Ok(Some(pidfd)) => {
            watch_exit(Arc::clone(context), pidfd);
            context.persist();
            context.events.emit(
                Level::Info,
                &context.config.lockspace,
                "holder-registered",
                format!("registered pid {pid} as a lease holder"),
            );
            Reply::success(serde_json::json!({ "pid": pid, "new": true }))
        }
        Ok(None) => Reply::success(serde_json::json!({ "pid": pid, "new": false })),
        Err(e) => Reply::failure(ErrorKind::NotFound, e.to_string()),
    }
}

/// Watch a holder's pidfd; when the process exits, release its leases.
pub fn watch_exit(context: Arc<Context>, pidfd: Pidfd) {
    let pid = pidfd.pid;
    let watches = Arc::clone(&context);
    let task = tokio::spawn(async move {
        let pid = pidfd.pid;
        // SAFETY: the pidfd is owned by the AsyncFd, which is dropped (and
        // deregistered) before the fd is closed; nothing else closes it.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        };
        match registered {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch pid {pid} for exit ({e}); polling instead");
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if !context.holders.is_registered(pid) {
                        return;
                    }
                    if Pidfd::open(pid).is_err() {
                        break;
                    }
                }
            }
        }
        holder_exited(&context, pid);
    });
    // One watch per registered pid: a new one replaces (and stops) the old.
    if let Some(old) = watches.replace_exit_watch(pid, Some(task.abort_handle())) {
        old.abort();
    }
}

fn holder_exited(context: &Context, pid: i32) {
    let Some(leases) = context.holders.remove(pid) else {
        return;
    };
    context.events.emit(
        Level::Info,
        &context.config.lockspace,
        "holder-exited",
        format!(
            "lease holder pid {pid} exited; releasing its {} lease(s)",
            leases.len()
        ),
    );
    release_all_of(context, pid, &leases);
    context.persist();
}

fn release_all_of(
    context: &Context,
    pid: i32,
    leases: &std::collections::BTreeSet<(String, String)>,
) {
    let spaces: std::collections::BTreeSet<&String> = leases.iter().map(|(s, _)| s).collect();
    for name in spaces {
        if let Ok(space) = context.space(Some(name)) {
            let _ = space.submit(Job::ReleaseAllOf { pid });
        }
    }
}

async fn add_lockspace(
    context: &Arc<Context>,
    name: String,
    device: String,
    io_timeout_ms: Option<u32>,
) -> Reply {
    if context.space(Some(&name)).is_ok() {
        return Reply::failure(
            ErrorKind::Conflict,
            format!("lockspace {name:?} is already joined"),
        );
    }
    if !Path::new(&device).is_absolute() {
        return Reply::failure(
            ErrorKind::BadRequest,
            format!("device {device:?} is not an absolute path"),
        );
    }
    let io_timeout_ms = io_timeout_ms.unwrap_or(context.config.io_timeout_ms);
    if let Err(e) = lease::timeouts::Timeouts::validate_io_timeout_ms(io_timeout_ms) {
        return Reply::failure(ErrorKind::BadRequest, e);
    }
    // The watchdog and the guard tick are set for the configured io_timeout:
    // a lockspace with a shorter one would be taken over before they act.
    if context.config.watchdog_device.is_some() && io_timeout_ms < context.config.io_timeout_ms {
        return Reply::failure(
            ErrorKind::BadRequest,
            format!(
                "io_timeout {io_timeout_ms} ms is below this host's {} ms, which its watchdog is set for",
                context.config.io_timeout_ms
            ),
        );
    }
    let config = match crate::daemon::space_config(&context.config, &name, &device, io_timeout_ms) {
        Ok(config) => config,
        Err(e) => return Reply::failure(ErrorKind::BadRequest, e.to_string()),
    };
    let space = match Space::start(Arc::clone(context), config, None) {
        Ok(space) => space,
        Err(e) => return Reply::failure(ErrorKind::Internal, format!("cannot start threads: {e}")),
    };
    if let Ok(mut spaces) = context.spaces.lock() {
        spaces.insert(name.clone(), Arc::clone(&space));
    }
    if let Ok(mut added) = context.added.lock() {
        added.insert(name.clone());
    }
    let timeout = Duration::from_millis(u64::from(io_timeout_ms).saturating_mul(30).max(30_000));
    let waiter = Arc::clone(&space);
    let phase = tokio::task::spawn_blocking(move || waiter.wait_joined(timeout)).await;
    match phase {
        Ok(crate::space::Phase::Joined) => {
            context.persist();
            Reply::success(space.status())
        }
        other => {
            space.request_stop();
            if let Ok(mut spaces) = context.spaces.lock() {
                spaces.remove(&name);
            }
            if let Ok(mut added) = context.added.lock() {
                added.remove(&name);
            }
            let reason = match other {
                Ok(crate::space::Phase::Failed(reason)) => reason,
                Ok(phase) => format!("still {} after {} ms", phase.label(), timeout.as_millis()),
                Err(e) => e.to_string(),
            };
            Reply::failure(
                ErrorKind::Storage,
                format!("cannot join lockspace {name:?} on {device}: {reason}"),
            )
        }
    }
}

async fn remove_lockspace(context: &Arc<Context>, name: String) -> Reply {
    if name == context.config.lockspace {
        return Reply::failure(
            ErrorKind::Conflict,
            format!("{name:?} is the configured lockspace; stop the daemon to leave it"),
        );
    }
    let space = match context.space(Some(&name)) {
        Ok(space) => space,
        Err(e) => return error_reply(e),
    };
    // Refuse new acquires, let every queued job finish, then look.
    space
        .closing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if let Err(e) = run_job(&space, |reply| Job::Barrier { reply }).await {
        space
            .closing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        return error_reply(e);
    }
    let held = space.status().resources.len();
    if held > 0 {
        space
            .closing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        return Reply::failure(
            ErrorKind::Conflict,
            format!("{held} lease(s) are held in {name:?}; release them first"),
        );
    }
    let leaving = Arc::clone(&space);
    let left = tokio::task::spawn_blocking(move || {
        leaving.stop_and_join();
        leaving.leave()
    })
    .await;
    if let Ok(mut spaces) = context.spaces.lock() {
        spaces.remove(&name);
    }
    if let Ok(mut added) = context.added.lock() {
        added.remove(&name);
    }
    context.persist();
    match left {
        Ok(Ok(())) => Reply::success(serde_json::json!({ "left": name })),
        Ok(Err(e)) => Reply::failure(
            ErrorKind::Storage,
            format!("left {name:?} without a clean release: {e}"),
        ),
        Err(e) => Reply::failure(ErrorKind::Internal, e.to_string()),
    }
}
