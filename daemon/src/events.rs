//! The append-only event log: one JSON [`Event`] per line (warnings and
//! errors fsynced, informational events left to the page cache), read
//! back by `leasehold events`. Every event also goes to the tracing log,
//! is counted by lockspace and kind (for metrics), and is offered to the
//! alert hooks ([`crate::hooks`]), which never make the caller wait.

use crate::hooks::Hooks;
use crate::protocol::Event;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How much of the log's end `tail` reads at most.
const TAIL_READ_BYTES_MAX: u64 = 1024 * 1024;

/// How loud an event is in the tracing log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

pub struct EventLog {
    path: PathBuf,
    host_id: u32,
    file: Mutex<Option<File>>,
    /// Events emitted since start, by (lockspace, kind).
    counts: Mutex<BTreeMap<(String, String), u64>>,
    hooks: Option<Hooks>,
}

impl EventLog {
    /// Open (create) the log for appending.
    pub fn open(path: &Path, host_id: u32) -> std::io::Result<EventLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLog {
            path: path.to_path_buf(),
            host_id,
            file: Mutex::new(Some(file)),
            counts: Mutex::new(BTreeMap::new()),
            hooks: None,
        })
    }

    /// Offer every later event to `hooks`.
    pub fn with_hooks(mut self, hooks: Option<Hooks>) -> EventLog {
        self.hooks = hooks;
        self
    }

    /// The running hooks, if any.
    pub fn hooks(&self) -> Option<&Hooks> {
        self.hooks.as_ref()
    }

    /// Events emitted since start, by (lockspace, kind).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        match self.counts.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record an event. A failure to write the log is itself logged but
    /// never stops the caller: the event log must not take the daemon down.
    pub fn emit(&self, level: Level, lockspace: &str, kind: &str, message: impl Into<String>) {
        let message = message.into();
        match level {
            Level::Info => tracing::info!(lockspace, event = kind, "{message}"),
            Level::Warn => tracing::warn!(lockspace, event = kind, "{message}"),
            Level::Error => tracing::error!(lockspace, event = kind, "{message}"),
        }
        let event = Event {
            time: utc_now(),
            host_id: self.host_id,
            lockspace: lockspace.to_string(),
            kind: kind.to_string(),
            message,
        };
        {
            let mut counts = match self.counts.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            *counts
                .entry((event.lockspace.clone(), event.kind.clone()))
                .or_insert(0) += 1;
        }
        if let Some(hooks) = &self.hooks {
            hooks.offer(&event);
        }
        let Ok(mut line) = serde_json::to_string(&event) else {
            return;
        };
        line.push('\n');
        let mut guard = match self.file.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(file) = guard.as_mut() {
            // Warnings and errors reach the disk before the call returns (the
            // ones an operator reads after a crash); the frequent
            // informational ones (every acquire and release) are left to the
            // page cache, which every reader of this boot sees.
            let written = file.write_all(line.as_bytes()).and_then(|()| match level {
                Level::Info => Ok(()),
                Level::Warn | Level::Error => file.sync_data(),
            });
            if let Err(e) = written {
                tracing::error!(path = %self.path.display(), "cannot append to the event log: {e}");
            }
        }
    }

    /// The newest `count` events (oldest first).
    pub fn tail(&self, count: usize) -> std::io::Result<Vec<Event>> {
        read_tail(&self.path, count)
    }
}

/// The newest `count` events of the log at `path`, oldest first. Lines that
/// do not parse (a torn last line after a crash) are skipped.
pub fn read_tail(path: &Path, count: usize) -> std::io::Result<Vec<Event>> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let start = size.saturating_sub(TAIL_READ_BYTES_MAX);
    file.seek(SeekFrom::Start(start))?;
    let mut text = String::new();
    file.take(TAIL_READ_BYTES_MAX).read_to_string(&mut text)?;
    let lines: Vec<&str> = text.lines().collect();
    // When the read began mid-file, its first line may be partial.
    let lines = if start > 0 {
        lines.get(1..).unwrap_or(&[])
    } else {
        &lines[..]
    };
    let mut events: Vec<Event> = lines
        .iter()
        .rev()
        .filter_map(|line| serde_json::from_str(line).ok())
        .take(count)
        .collect();
    events.reverse();
    Ok(events)
}

/// The wall-clock time as RFC 3339 UTC with milliseconds, for people.
pub fn utc_now() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since_epoch.as_millis())
}

fn format_utc(epoch_ms: u128) -> String {
    let millis = epoch_ms % 1000;
    let secs = epoch_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_format_matches_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_utc(1_795_392_000_000), "2026-11-23T00:00:00.000Z");
    }

    #[test]
    fn tail_returns_newest_events_and_skips_torn_lines() {
        let dir = std::env::temp_dir().join(format!("leasehold-events-{}", std::process::id()));
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = EventLog::open(&path, 3).expect("open");
        for i in 0..5 {
            log.emit(Level::Info, "ls", "test", format!("event {i}"));
        }
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"time\":\"torn").expect("write");
        let events = log.tail(2).expect("tail");
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event 3", "event 4"]);
        assert!(events.iter().all(|e| e.host_id == 3 && e.lockspace == "ls"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
