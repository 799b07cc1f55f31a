//! Turning a series of host-area reads into per-host states, on the
//! observer's clock only. A host's timestamps are never compared with ours:
//! only whether its record changed between two of our reads counts.

use crate::format::HostRecord;
use crate::ids::HostId;
use crate::lockspace::Lockspace;
use crate::timeouts::Timeouts;
use serde::Serialize;

/// One host as seen from here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum HostState {
    /// Never joined since format.
    Unused,
    /// Joined, but we have not yet seen its record change.
    Unknown,
    /// Its record changed within its expiry time.
    Live,
    /// Standing still for at least its expiry time, while our reads worked.
    Silent,
    /// Standing still past its host_dead time: if it has a watchdog, it has
    /// been reset; its leases are takeable by the watchdog rule.
    Dead,
    /// Left cleanly.
    Released,
    /// A fencer marked its current generation FENCED.
    Fenced,
    /// Its sector cannot be read or decoded; never treated as free.
    Unreadable(String),
}

#[derive(Clone, Debug)]
struct Watch {
    record: Option<HostRecord>,
    error: Option<String>,
    /// Our clock when we first saw the current record contents, or when we
    /// last restarted the window after a gap in our own reads.
    unchanged_since_ms: u64,
    changes_seen: u32,
}

/// A host with its state and how long we have seen it stand still.
#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    pub host_id: HostId,
    pub state: HostState,
    pub unchanged_for_ms: u64,
    pub record: Option<HostRecord>,
}

/// Per-host states from successive reads of the host area.
#[derive(Clone, Debug)]
pub struct Observer {
    own: Timeouts,
    last_scan_ms: Option<u64>,
    watches: Vec<Watch>,
}

/// True when the record shows a new write (another renewal, a rejoin, a mark).
fn moved(old: &HostRecord, new: &HostRecord) -> bool {
    old != new
}

impl Observer {
    /// `own` are the observer's timeouts: a gap longer than its
    /// `scan_gap_max_ms` between two scans restarts every window.
    pub fn new(max_hosts: u32, own: Timeouts) -> Observer {
        Observer {
            own,
            last_scan_ms: None,
            watches: vec![
                Watch {
                    record: None,
                    error: None,
                    unchanged_since_ms: 0,
                    changes_seen: 0,
                };
                max_hosts as usize
            ],
        }
    }

    /// Feed one successful read of the whole host area, made at `now_ms`.
    pub fn observe(&mut self, now_ms: u64, space: &Lockspace, host_area: &[u8]) {
        if host_area.len() as u64 != space.geometry.host_area_size_bytes() {
            // Not a read of every host: it vouches for nobody.
            return;
        }
        let gap = match self.last_scan_ms {
            Some(last_ms) => now_ms.saturating_sub(last_ms) > self.own.scan_gap_max_ms,
            None => true,
        };
        for (host_id, decoded) in space.decode_host_area(host_area) {
            let Some(watch) = usize::try_from(host_id.index())
                .ok()
                .and_then(|i| self.watches.get_mut(i))
            else {
                continue;
            };
            match decoded {
                Err(e) => {
                    watch.error = Some(e.to_string());
                    watch.unchanged_since_ms = now_ms;
                }
                Ok(record) => {
                    watch.error = None;
                    match &watch.record {
                        Some(old) if !moved(old, &record) => {
                            if gap {
                                watch.unchanged_since_ms = now_ms;
                            }
                        }
                        Some(_) => {
                            watch.changes_seen = watch.changes_seen.saturating_add(1);
                            watch.unchanged_since_ms = now_ms;
                            watch.record = Some(record);
                        }
                        None => {
                            watch.unchanged_since_ms = now_ms;
                            watch.record = Some(record);
                        }
                    }
                }
            }
        }
        self.last_scan_ms = Some(now_ms);
    }

    /// The state of one host, judged by the host's own io_timeout over the
    /// time we actually observed (up to our last successful scan).
    pub fn view(&self, host_id: HostId) -> HostView {
        let watch = usize::try_from(host_id.index())
            .ok()
            .and_then(|i| self.watches.get(i));
        let Some(watch) = watch else {
            return HostView {
                host_id,
                state: HostState::Unreadable("host id beyond max_hosts".to_string()),
                unchanged_for_ms: 0,
                record: None,
            };
        };
        let unchanged_for_ms = self
            .last_scan_ms
            .unwrap_or(0)
            .saturating_sub(watch.unchanged_since_ms);
        let state = if let Some(error) = &watch.error {
            HostState::Unreadable(error.clone())
        } else {
            match &watch.record {
                None => HostState::Unknown,
                Some(record) if record.is_unused() => HostState::Unused,
                Some(record)
                    if record.flags.fenced && record.fenced_generation >= record.generation =>
                {
                    HostState::Fenced
                }
                Some(record) if record.flags.released => HostState::Released,
                Some(record) => {
                    let theirs = Timeouts::from_io_timeout_ms(record.io_timeout_ms);
                    if unchanged_for_ms >= theirs.host_dead_ms {
                        HostState::Dead
                    } else if unchanged_for_ms >= theirs.silence_ms(record.flags.watchdog) {
                        HostState::Silent
                    } else if watch.changes_seen > 0 {
                        HostState::Live
                    } else {
                        HostState::Unknown
                    }
                }
            }
        };
        HostView {
            host_id,
            state,
            unchanged_for_ms,
            record: watch.record.clone(),
        }
    }

    /// Every host the watchdog rule lets us treat as dead, with the
    /// generation we watched: leases of that generation or older are takeable.
    pub fn dead_hosts(&self) -> Vec<(HostId, u64)> {
        (1..=self.watches.len())
            .filter_map(|raw| u32::try_from(raw).ok().and_then(HostId::new))
            .filter_map(|host_id| {
                let view = self.view(host_id);
                match (view.state, view.record) {
                    (HostState::Dead, Some(record)) => Some((host_id, record.generation)),
                    _ => None,
                }
            })
            .collect()
    }
}
