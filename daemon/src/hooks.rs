//! Alert hooks: programs the operator names in `[hooks]`, run on chosen
//! event kinds with the event as one JSON line on stdin.
//!
//! The event log offers each event here ([`Hooks::offer`]); a matching
//! one is queued for the hook thread and the caller goes on at once. The
//! thread runs the hooks one at a time, each within its time limit
//! ([`crate::child`]); a hook that fails, times out or cannot start is
//! logged and counted, and never blocks or ends the daemon. When the queue
//! is full (hooks much slower than events), newer events are dropped for
//! the hooks, logged and counted, never for the event log itself.

use crate::protocol::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// The event kinds a hook may name.
pub const HOOK_EVENTS: &[&str] = &[
    "host-silent",
    "host-dead",
    "host-fenced",
    "storage-incident",
    "fencing",
    "fenced",
    "fence-failed",
    "fence-mark-failed",
    "fence-device-failed",
    "self-fence",
    "renewal-failed",
    "vm-started",
    "vm-start-failed",
    "vm-failed",
    "vm-stopped-unexpectedly",
    "settings-differ",
];

/// Default and bounds of `hooks.timeout_ms`.
pub const HOOK_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const HOOK_TIMEOUT_MS_MIN: u64 = 100;
pub const HOOK_TIMEOUT_MS_MAX: u64 = 600_000;

/// Events waiting for the hook thread at most.
const QUEUE_EVENTS_MAX: usize = 256;

/// One `[[hooks.run]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Event kinds that run it.
    pub events: Vec<String>,
    /// Absolute path of the program.
    pub program: String,
    pub args: Vec<String>,
}

/// The `[hooks]` section.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HooksConfig {
    pub timeout_ms: u64,
    pub hooks: Vec<Hook>,
}

/// What the hooks did, for metrics.
#[derive(Debug, Default)]
pub struct HookCounts {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    pub dropped: AtomicU64,
}

/// The running hooks: the queue of the hook thread.
pub struct Hooks {
    config: HooksConfig,
    queue: SyncSender<Event>,
    pub counts: Arc<HookCounts>,
}

impl Hooks {
    /// Start the hook thread; None when no hook is configured.
    pub fn start(config: &HooksConfig) -> std::io::Result<Option<Hooks>> {
        if config.hooks.is_empty() {
            return Ok(None);
        }
        let (queue, events) = sync_channel::<Event>(QUEUE_EVENTS_MAX);
        let counts = Arc::new(HookCounts::default());
        let thread_counts = Arc::clone(&counts);
        let thread_config = config.clone();
        std::thread::Builder::new()
            .name("hooks".to_string())
            .spawn(move || {
                for event in events {
                    run_matching(&thread_config, &event, &thread_counts);
                }
            })?;
        Ok(Some(Hooks {
            config: config.clone(),
            queue,
            counts,
        }))
    }

    /// Queue `event` for the hooks that name its kind; never waits.
    pub fn offer(&self, event: &Event) {
        if !self
            .config
            .hooks
            .iter()
            .any(|h| h.events.contains(&event.kind))
        {
            return;
        }
        match self.queue.try_send(event.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = event.kind,
                    "hooks: {QUEUE_EVENTS_MAX} events wait already; this one runs no hook"
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event = event.kind, "hooks: the hook thread ended");
            }
        }
    }
}

fn run_matching(config: &HooksConfig, event: &Event, counts: &HookCounts) {
    let Ok(mut input) = serde_json::to_vec(event) else {
        return;
    };
    input.push(b'\n');
    let timeout = Duration::from_millis(config.timeout_ms);
    for hook in config
        .hooks
        .iter()
        .filter(|h| h.events.contains(&event.kind))
    {
        match crate::child::run(&hook.program, &hook.args, &input, timeout) {
            Ok(done) if done.code == 0 => {
                counts.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event = event.kind, program = hook.program, "hook ran");
            }
            Ok(done) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = event.kind,
                    program = hook.program,
                    "hook failed with exit status {}: {}",
                    done.code,
                    done.output.trim()
                );
            }
            Err(e @ crate::child::ChildError::TimedOut { .. }) => {
                counts.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = event.kind, "hook: {e}");
            }
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = event.kind, "hook: {e}");
            }
        }
    }
}
