//! Starting, guarding and stopping the daemon.
//!
//! Start: lock the run directory (one daemon per host), open the event log,
//! take over what a previous daemon of this boot left (state file), arm the
//! watchdog, start the configured lockspace (and any added at run time),
//! open the control socket, and tell systemd READY once joined.
//!
//! The guard thread ticks several times per io_timeout: it makes a watchdog
//! host whose renewal deadline passed self-fence at once, and pets the
//! watchdog (and systemd's) only while every lockspace is healthy.
//!
//! SIGTERM or SIGINT: with lease holders still running, hand over (keep
//! the leases, leave the watchdog armed, record everything for the next
//! daemon); otherwise release every lease, leave, and disarm the watchdog.
//! SIGHUP re-reads the configuration file and reports what it would
//! change (applied by a restart, which hands over); it never ends the
//! daemon. Every end is logged with its reason.

use crate::config::{Config, IoEngine};
use crate::context::Context;
use crate::events::{EventLog, Level};
use crate::space::{Held, HeldBy, Phase, Space, SpaceConfig, Takeover};
use crate::statefile;
use crate::watchdog::Watchdog;
use anyhow::{bail, Context as _, Result};
use lease::clock::{Clock, SystemClock};
use lease::open::Engine;
use lease::HostId;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The settings of one lockspace from the daemon's configuration.
pub fn space_config(
    config: &Config,
    name: &str,
    device: &str,
    io_timeout_ms: u32,
) -> Result<SpaceConfig> {
    let Some(host_id) = HostId::new(config.host_id) else {
        bail!("{}: host.id 0 is not a host id", config.file.display());
    };
    let engine = match config.io_engine {
        IoEngine::Pread => Engine::Pread,
        IoEngine::Uring => Engine::Uring {
            io_deadline_ms: u64::from(io_timeout_ms),
        },
    };
    Ok(SpaceConfig {
        name: name.to_string(),
        device: device.to_string(),
        io_timeout_ms,
        engine,
        sector_size_bytes: config.sector_size_bytes,
        host_id,
        host_name: config.host_name.clone(),
        watchdog: config.watchdog_device.is_some(),
        fence_method: config.own_fence_method(),
        incident_share: config.storage_incident_share,
        shared_settings: crate::agreement::shared_settings(config),
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
    })
}

/// Hold the run directory's lock file for the daemon's lifetime: a second
/// daemon for the same host (or a stopped old one still alive) is refused.
fn lock_run_dir(config: &Config) -> Result<std::fs::File> {
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state_dir.display()
        )
    })?;
    std::fs::create_dir_all(&config.run_dir).with_context(|| {
        format!(
            "cannot create the run directory {}",
            config.run_dir.display()
        )
    })?;
    let path = config.run_dir.join("leaseholdd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on an fd we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another leaseholdd (pid {}) holds {}: one daemon per host and run directory; stop it first",
            holder.trim(),
            path.display()
        );
    }
    use std::io::Write;
    let mut writer = &file;
    let _ = file.set_len(0);
    let _ = writeln!(writer, "{}", std::process::id());
    Ok(file)
}

/// Kill the lease holders a previous daemon left in `lockspace`, which this
/// daemon will not take over (another host id, another device, a lockspace
/// no longer configured): no lease of ours protects them.
fn kill_orphans(context: &Context, lockspace: &str, takeover: &Takeover) {
    context.events.emit(
        Level::Error,
        lockspace,
        "orphans-killed",
        format!("lockspace {lockspace} of the previous daemon is not taken over by this configuration (another host id or device, or no longer configured): killing the lease holders it left"),
    );
    context.kill_holders_of(lockspace);
    let vms: Vec<String> = takeover
        .resources
        .values()
        .filter_map(|h| h.by.vm().map(str::to_string))
        .collect();
    if vms.is_empty() {
        return;
    }
    let failed = context.destroy_domains(&vms);
    for (uuid, e) in failed {
        context.events.emit(
            Level::Error,
            lockspace,
            "vm-destroy-failed",
            format!("cannot destroy VM {uuid} left by the previous daemon: {e}; stop it by hand before its lease is taken elsewhere"),
        );
    }
}

/// What the state file lets us take over, per lockspace.
fn takeovers(context: &Context) -> BTreeMap<String, (statefile::PersistedSpace, Takeover)> {
    let state = match statefile::read(&context.state_path) {
        Ok(statefile::Previous::ThisBoot(state)) => state,
        Ok(statefile::Previous::EarlierBoot) => {
            context.events.emit(
                Level::Info,
                &context.config.lockspace,
                "rebooted",
                "the state file is from an earlier boot: nothing of this host's earlier generations runs, their leases are declared over at the first renewal",
            );
            context
                .rebooted
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return BTreeMap::new();
        }
        Ok(_) => return BTreeMap::new(),
        Err(e) => {
            context.events.emit(
                Level::Error,
                &context.config.lockspace,
                "state-file-unusable",
                format!("{e}; processes a previous daemon registered are not taken over"),
            );
            return BTreeMap::new();
        }
    };
    let mut alive = std::collections::BTreeSet::new();
    for holder in &state.holders {
        if context
            .holders
            .readopt(holder.pid, holder.start_time)
            .is_some()
        {
            alive.insert(holder.pid);
        }
    }
    let mut result = BTreeMap::new();
    for space in state.lockspaces {
        let mut resources = BTreeMap::new();
        let mut release = Vec::new();
        for r in &space.resources {
            if let Some(uuid) = &r.vm {
                // VMs outlive a daemon restart under libvirt: their leases
                // stay held; the VM manager checks they still run.
                resources.insert(
                    r.name.clone(),
                    Held {
                        slot: r.slot,
                        lver: r.lver,
                        by: HeldBy::Vm(uuid.clone()),
                    },
                );
            } else if alive.contains(&r.pid) {
                let key = (space.name.clone(), r.name.clone());
                let _ = context.holders.add_lease(r.pid, key);
                resources.insert(
                    r.name.clone(),
                    Held {
                        slot: r.slot,
                        lver: r.lver,
                        by: HeldBy::Process(r.pid),
                    },
                );
            } else {
                release.push(r.name.clone());
            }
        }
        let takeover = Takeover {
            generation: space.generation,
            nonce: space.nonce,
            resources,
            release,
        };
        result.insert(space.name.clone(), (space, takeover));
    }
    if state.host_id != context.config.host_id {
        // Another host id: nothing of it can be taken over.
        for (name, (_, takeover)) in &result {
            kill_orphans(context, name, takeover);
        }
        return BTreeMap::new();
    }
    result
}

/// Run the daemon until SIGTERM/SIGINT. Returns the exit status.
pub fn run(config: Config) -> Result<i32> {
    let _lock = lock_run_dir(&config)?;
    let hooks = crate::hooks::Hooks::start(&config.hooks)
        .context("cannot start the thread that runs the alert hooks")?;
    let events = EventLog::open(&config.event_log, config.host_id)
        .with_context(|| format!("cannot open the event log {}", config.event_log.display()))?
        .with_hooks(hooks);
    let context = Arc::new(Context::new(config.clone(), events));
    let mut takeovers = takeovers(&context);

    // The watchdog is armed before anything can be acquired.
    let timeouts = config.timeouts();
    let watchdog = match &config.watchdog_device {
        Some(path) => Some(
            Watchdog::open(path, timeouts.watchdog_timeout_ms)
                .with_context(|| format!("cannot arm the watchdog {}", path.display()))?,
        ),
        None => None,
    };
    let watchdog = Arc::new(Mutex::new(watchdog));

    // Lockspaces of the state file this configuration does not take over:
    // their holders are killed before anything else starts.
    let dropped: Vec<String> = takeovers
        .iter()
        .filter(|(name, (p, _))| {
            if **name == config.lockspace {
                p.device != config.device
            } else {
                !p.added
            }
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in &dropped {
        if let Some((_, takeover)) = takeovers.remove(name) {
            kill_orphans(&context, name, &takeover);
        }
    }
    let primary_takeover = takeovers.remove(&config.lockspace).map(|(_, t)| t);
    let primary = Space::start(
        Arc::clone(&context),
        space_config(
            &config,
            &config.lockspace,
            &config.device,
            config.io_timeout_ms,
        )?,
        primary_takeover,
    )
    .context("cannot start the renewal threads")?;
    if let Ok(mut spaces) = context.spaces.lock() {
        spaces.insert(config.lockspace.clone(), Arc::clone(&primary));
    }
    #[cfg(feature = "libvirt")]
    {
        let sender = crate::vms::start(Arc::clone(&context), Arc::clone(&primary))
            .context("cannot start the VM manager thread")?;
        if let Ok(mut jobs) = context.vm_jobs.lock() {
            *jobs = Some(sender);
        }
    }
    for (name, (persisted, takeover)) in takeovers {
        let space_cfg = space_config(&config, &name, &persisted.device, persisted.io_timeout_ms)?;
        let space = Space::start(Arc::clone(&context), space_cfg, Some(takeover))
            .context("cannot start the renewal threads")?;
        if let Ok(mut spaces) = context.spaces.lock() {
            spaces.insert(name.clone(), space);
        }
        if let Ok(mut added) = context.added.lock() {
            added.insert(name);
        }
    }

    crate::fence_health::start(Arc::clone(&context))
        .context("cannot start the fence device checks")?;

    // Metrics and the status page: a failure is loud but never stops the
    // daemon (the leases matter more than their dashboard).
    if let Some(listen) = config.metrics_listen {
        if let Err(e) = crate::web::start(Arc::clone(&context), listen) {
            context.events.emit(
                Level::Error,
                &config.lockspace,
                "metrics-failed",
                format!("{e:#}"),
            );
        }
    }

    let stop_guard = Arc::new(AtomicBool::new(false));
    let guard = {
        let context = Arc::clone(&context);
        let watchdog = Arc::clone(&watchdog);
        let stop = Arc::clone(&stop_guard);
        std::thread::Builder::new()
            .name("guard".to_string())
            .spawn(move || guard_thread(&context, &watchdog, &stop))
            .context("cannot start the guard thread")?
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(async {
        let listener = crate::server::bind(&context)?;
        // Holders taken over from a previous daemon are watched too.
        for (pid, _, _) in context.holders.snapshot() {
            if let Ok(pidfd) = crate::holders::Pidfd::open(pid) {
                crate::server::watch_exit(Arc::clone(&context), pidfd);
            }
        }
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(crate::server::serve(
            Arc::clone(&context),
            listener,
            shutdown_rx,
        ));
        let exit = wait_for_end(&context, &primary).await;
        let _ = shutdown_tx.send(true);
        let _ = server.await;
        exit
    });
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            stop_guard.store(true, Ordering::SeqCst);
            let _ = guard.join();
            return Err(e);
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let handover = shutdown(&context);
    stop_guard.store(true, Ordering::SeqCst);
    let _ = guard.join();
    let taken = match watchdog.lock() {
        Ok(mut guard) => guard.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(watchdog) = taken {
        if handover {
            watchdog.close_armed();
        } else if let Err(e) = watchdog.disarm() {
            tracing::error!("{e}");
        }
    }
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!(
        "leaseholdd stopped with exit status {status}: {}",
        if handover {
            "leases handed over to the next daemon (holders still run)"
        } else {
            "every lease released"
        }
    );
    Ok(status)
}

/// SIGHUP: re-read the configuration file and say what differs. Nothing
/// is applied while running: every setting either must not change under a
/// live lease (host id, device, io_timeout) or is read once at start; a
/// restart applies them and hands the leases over.
fn reload(context: &Context) {
    let file = &context.config.file;
    let (level, message) = match crate::config::load(file) {
        Err(e) => (
            Level::Error,
            format!(
                "SIGHUP: {} is not a valid configuration ({e}); the running one stays, and a restart would fail: fix the file first",
                file.display()
            ),
        ),
        Ok(new) => {
            let changed = context.config.changed_settings(&new);
            if changed.is_empty() {
                (
                    Level::Info,
                    format!("SIGHUP: {} re-read, valid and unchanged", file.display()),
                )
            } else {
                let fixed: Vec<&str> = changed
                    .iter()
                    .copied()
                    .filter(|c| {
                        matches!(
                            *c,
                            "host.id" | "lockspace.name" | "lockspace.device" | "lockspace.io_timeout_ms"
                        )
                    })
                    .collect();
                let warning = if fixed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} must not change while this host holds leases: stop its VMs and leases first",
                        fixed.join(", ")
                    )
                };
                (
                    Level::Warn,
                    format!(
                        "SIGHUP: {} re-read and valid; changed: {}. Nothing is applied while running: `systemctl restart leaseholdd` applies it (a restart hands the leases over, VMs keep running){warning}",
                        file.display(),
                        changed.join(", ")
                    ),
                )
            }
        }
    };
    context
        .events
        .emit(level, &context.config.lockspace, "config-reload", message);
}

/// Wait for SIGTERM/SIGINT (status 0) or a join that failed for good (1;
/// 3 when another host uses our host id);
/// SIGHUP re-reads the configuration ([`reload`]).
async fn wait_for_end(context: &Arc<Context>, primary: &Arc<Space>) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut ready = false;
    let stopping = |why: &str| {
        context.events.emit(
            Level::Info,
            &context.config.lockspace,
            "daemon-stopping",
            format!("leaseholdd stopping: {why}"),
        );
    };

    loop {
        tokio::select! {
            _ = term.recv() => {
                stopping("SIGTERM");
                return Ok(0);
            }
            _ = int.recv() => {
                stopping("SIGINT");
                return Ok(0);
            }
            _ = hup.recv() => reload(context),
            // Every 50 ms until READY, then every second.
            _ = tokio::time::sleep(Duration::from_millis(if ready { 1000 } else { 50 })) => {
                let phase = primary.lock().phase.clone();
                match phase {
                    Phase::Joined if !ready => {
                        ready = true;
                        let status = format!("joined {} as host {}", context.config.lockspace, context.config.host_id);
                        let _ = sd_notify::notify(false, &[
                            sd_notify::NotifyState::Ready,
                            sd_notify::NotifyState::Status(&status),
                        ]);
                    }
                    Phase::Failed(reason) => {
                        tracing::error!("cannot hold lockspace {}: {reason}", context.config.lockspace);
                        let status = primary.failed_exit_status.load(Ordering::SeqCst);
                        stopping(&format!("lockspace {} cannot be held ({reason}); exit status {status}", context.config.lockspace));
                        return Ok(status);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Stop every lockspace. Returns true for a handover (holders still run).
fn shutdown(context: &Arc<Context>) -> bool {
    for exited in context.holders.exited() {
        if let Some(leases) = context.holders.remove(exited) {
            tracing::info!(
                "holder pid {exited} has exited; its {} lease(s) are released",
                leases.len()
            );
        }
    }
    // The VM manager stops with its queue.
    if let Ok(mut jobs) = context.vm_jobs.lock() {
        jobs.take();
    }
    let spaces = context.spaces();
    let vms: usize = spaces.iter().map(|s| s.held_vms().len()).sum();
    let running = context.holders.count() + vms;
    for space in &spaces {
        space.stop_and_join();
    }
    if running > 0 {
        // Leases of holders that exited go back now; the rest stay ours.
        context.persist();
        context.events.emit(
            Level::Warn,
            &context.config.lockspace,
            "handover",
            format!(
                "stopping with {running} lease holder(s) or VM(s) still running: their leases stay held and the watchdog stays armed; start leaseholdd again within {} ms or they lose their leases",
                context.config.timeouts().renew_fail_ms
            ),
        );
        return true;
    }
    for space in &spaces {
        if let Err(e) = space.leave() {
            context.events.emit(
                Level::Error,
                &space.config.name,
                "leave-failed",
                format!("could not leave cleanly: {e}; the others will see this host silent"),
            );
        }
    }
    statefile::remove(&context.state_path);
    false
}

/// Several times per io_timeout: self-fence watchdog hosts past their
/// deadline, pet the watchdog device while every lockspace is healthy, and
/// tell systemd we live while every renewal thread keeps turning.
fn guard_thread(
    context: &Arc<Context>,
    watchdog: &Arc<Mutex<Option<Watchdog>>>,
    stop: &AtomicBool,
) {
    let span = tracing::info_span!("guard", host = context.config.host_id, lockspace = %context.config.lockspace);
    let _entered = span.enter();
    // Fast ticks matter only where a missed deadline must kill holders
    // before the watchdog fires; otherwise once a second feeds systemd.
    let tick_ms = if context.config.watchdog_device.is_some() {
        (u64::from(context.config.io_timeout_ms) / 4).clamp(25, 1000)
    } else {
        1000
    };
    let mut petting = true;
    while !stop.load(Ordering::SeqCst) {
        let now_ms = SystemClock.now_ms();
        let spaces = context.spaces();
        for space in &spaces {
            space.check_deadline(now_ms);
        }
        let healthy = spaces.iter().all(|space| space.watchdog_ok(now_ms));
        if healthy {
            let mut guard = match watchdog.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(device) = guard.as_mut() {
                if let Err(e) = device.pet() {
                    tracing::error!("{e}");
                }
            }
            drop(guard);
        }
        // systemd's watchdog watches the daemon, not the storage: a daemon
        // restarted during a storage stall could not take over its holders.
        if spaces
            .iter()
            .all(|space| space.renewal_thread_turning(now_ms))
        {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
        let armed = context.config.watchdog_device.is_some();
        if healthy != petting && armed {
            petting = healthy;
            let (level, message) = if healthy {
                (Level::Info, "watchdog petting resumed")
            } else {
                (
                    Level::Error,
                    "watchdog petting stopped: a lockspace with running lease holders is not renewed",
                )
            };
            context
                .events
                .emit(level, &context.config.lockspace, "watchdog", message);
        }
        std::thread::sleep(Duration::from_millis(tick_ms));
    }
}
