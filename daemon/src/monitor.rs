//! Host monitoring from this host's point of view: the lease core's
//! [`Observer`] (which already holds the storage-confirmed rule: a gap in
//! our own successful scans restarts every window) plus the storage-incident
//! rule: when a large share of hosts go silent within one expiry window, the
//! storage path or network is the likelier cause, so none of them is
//! declared silent (no fencing) until they come back or an operator
//! confirms.

use crate::agreement::{Agreement, Change};
use crate::protocol::HostStatus;
use lease::format::{HostRecord, SharedSettings};
use lease::observer::{HostState, Observer};
use lease::timeouts::Timeouts;
use lease::{HostId, Lockspace};
use std::collections::{BTreeMap, BTreeSet};

/// Something a caller should put in the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub kind: String,
    pub message: String,
    pub warn: bool,
    /// The host a `host-*` transition is about (id, name).
    pub host: Option<(u32, String)>,
}

pub struct Monitor {
    observer: Observer,
    own: HostId,
    own_timeouts: Timeouts,
    incident_share: f64,
    /// Our clock when each host was first seen silent (or dead).
    silent_since_ms: BTreeMap<u32, u64>,
    /// Hosts held back by a storage incident.
    incident: BTreeSet<u32>,
    /// What we last reported per host, for transition events.
    reported: BTreeMap<u32, String>,
    last_scan_ms: Option<u64>,
    /// The digests of the cluster-wide settings we run with.
    shared_settings: SharedSettings,
    agreement: Agreement,
}

fn state_name(state: &HostState) -> &'static str {
    match state {
        HostState::Unused => "unused",
        HostState::Unknown => "unknown",
        HostState::Live => "live",
        HostState::Silent => "silent",
        HostState::Dead => "dead",
        HostState::Released => "left",
        HostState::Fenced => "fenced",
        HostState::Unreadable(_) => "unreadable",
    }
}

impl Monitor {
    pub fn new(
        max_hosts: u32,
        own: HostId,
        own_timeouts: Timeouts,
        incident_share: f64,
        shared_settings: SharedSettings,
    ) -> Monitor {
        Monitor {
            observer: Observer::new(max_hosts, own_timeouts),
            own,
            own_timeouts,
            incident_share,
            silent_since_ms: BTreeMap::new(),
            incident: BTreeSet::new(),
            reported: BTreeMap::new(),
            last_scan_ms: None,
            shared_settings,
            agreement: Agreement::default(),
        }
    }

    fn host_ids(&self, space: &Lockspace) -> impl Iterator<Item = HostId> {
        (1..=space.geometry.max_hosts()).filter_map(HostId::new)
    }

    /// Feed one successful read of the host area made at `now_ms` (our
    /// clock). Returns the transitions worth an event.
    pub fn observe(&mut self, now_ms: u64, space: &Lockspace, area: &[u8]) -> Vec<Transition> {
        self.observer.observe(now_ms, space, area);
        self.last_scan_ms = Some(now_ms);
        let mut stale = Vec::new();
        let mut population = 0usize;
        for host_id in self.host_ids(space).collect::<Vec<_>>() {
            if host_id == self.own {
                continue;
            }
            let view = self.observer.view(host_id);
            let raw = host_id.get();
            match view.state {
                HostState::Silent | HostState::Dead => {
                    population += 1;
                    self.silent_since_ms.entry(raw).or_insert(now_ms);
                    stale.push(raw);
                }
                HostState::Live | HostState::Unknown | HostState::Unreadable(_) => {
                    population += 1;
                    self.silent_since_ms.remove(&raw);
                    self.incident.remove(&raw);
                }
                _ => {
                    self.silent_since_ms.remove(&raw);
                    self.incident.remove(&raw);
                }
            }
        }
        let mut transitions = Vec::new();
        let window_start_ms = now_ms.saturating_sub(self.own_timeouts.expiry_ms);
        let recent: Vec<u32> = stale
            .iter()
            .copied()
            .filter(|raw| {
                self.silent_since_ms
                    .get(raw)
                    .is_some_and(|since| *since >= window_start_ms)
            })
            .collect();
        let share = recent.len() as f64 / population.max(1) as f64;
        if recent.len() >= 2 && share > self.incident_share {
            let new: Vec<u32> = recent
                .iter()
                .copied()
                .filter(|raw| !self.incident.contains(raw))
                .collect();
            if !new.is_empty() {
                self.incident.extend(new.iter().copied());
                transitions.push(Transition {
                    kind: "storage-incident".to_string(),
                    message: format!(
                        "{} of {} hosts went silent within {} ms (hosts {:?}): taken as a storage or network incident, none is declared silent or fenced; if they really lost power, confirm with `leasehold fence confirm HOST`",
                        recent.len(),
                        population,
                        self.own_timeouts.expiry_ms,
                        recent
                    ),
                    warn: true,
                    host: None,
                });
            }
        }
        transitions.extend(self.check_agreement(space));
        for status in self.hosts(space) {
            if status.this_host || status.state == "unused" {
                continue;
            }
            let label = if status.incident {
                "silent-incident".to_string()
            } else {
                status.state.clone()
            };
            let previous = self.reported.insert(status.host_id, label.clone());
            if previous.as_deref() == Some(label.as_str()) {
                continue;
            }
            if previous.is_none() && label == "unknown" {
                continue;
            }
            let who = format!("host {} ({})", status.host_id, status.name);
            let (message, warn) = match label.as_str() {
                "live" => (format!("{who} is live, generation {}", status.generation), false),
                "silent" => (
                    format!(
                        "{who} is silent: its record has not changed for {} ms while our own renewals succeeded",
                        status.unchanged_for_ms
                    ),
                    true,
                ),
                "silent-incident" => (
                    format!("{who} stands still together with others: not declared silent (storage incident)"),
                    true,
                ),
                "dead" => (
                    format!(
                        "{who} is dead by the watchdog rule: still for {} ms",
                        status.unchanged_for_ms
                    ),
                    true,
                ),
                "fenced" => (format!("{who} generation {} is fenced", status.generation), true),
                "left" => (format!("{who} left the lockspace"), false),
                "unreadable" => (
                    format!(
                        "{who}: its sector is unusable: {}",
                        status.error.clone().unwrap_or_default()
                    ),
                    true,
                ),
                _ => (format!("{who} is {label}"), false),
            };
            transitions.push(Transition {
                kind: format!("host-{label}"),
                message,
                warn,
                host: Some((status.host_id, status.name.clone())),
            });
        }
        transitions
    }

    /// Compare the shared settings of every other host that runs now with
    /// ours (see [`crate::agreement`]).
    fn check_agreement(&mut self, space: &Lockspace) -> Vec<Transition> {
        let running: Vec<HostRecord> = self
            .host_ids(space)
            .filter(|h| *h != self.own)
            .filter_map(|h| {
                let view = self.observer.view(h);
                match view.state {
                    HostState::Live | HostState::Unknown | HostState::Silent | HostState::Dead => {
                        view.record
                    }
                    _ => None,
                }
            })
            .collect();
        self.agreement
            .check(
                self.shared_settings,
                self.own_timeouts.io_timeout_ms,
                running.iter(),
            )
            .into_iter()
            .map(|change| match change {
                Change::Differs { host_id, name, what } => Transition {
                    kind: "settings-differ".to_string(),
                    message: format!(
                        "host {host_id} ({name}) runs with other {} than this host: every host must share [failover], [[cluster.hosts]] and io_timeout_ms, or their restart plans disagree; make the configuration files the same and restart the daemon whose file was wrong",
                        what.join(", ")
                    ),
                    warn: true,
                    host: None,
                },
                Change::Agrees { host_id, name } => Transition {
                    kind: "settings-agree".to_string(),
                    message: format!("host {host_id} ({name}) runs with the same shared settings as this host again"),
                    warn: false,
                    host: None,
                },
            })
            .collect()
    }

    /// Every host as seen from here.
    pub fn hosts(&self, space: &Lockspace) -> Vec<HostStatus> {
        self.host_ids(space)
            .map(|host_id| {
                let view = self.observer.view(host_id);
                let record = view.record.as_ref();
                let error = match &view.state {
                    HostState::Unreadable(reason) => Some(reason.clone()),
                    _ => None,
                };
                HostStatus {
                    host_id: host_id.get(),
                    name: record.map(|r| r.host_name.clone()).unwrap_or_default(),
                    state: state_name(&view.state).to_string(),
                    unchanged_for_ms: view.unchanged_for_ms,
                    generation: record.map(|r| r.generation).unwrap_or(0),
                    io_timeout_ms: record.map(|r| r.io_timeout_ms).unwrap_or(0),
                    watchdog: record.is_some_and(|r| r.flags.watchdog),
                    memory_mib_free: record.map(|r| r.capacity.memory_mib_free).unwrap_or(0),
                    vcpus_free: record.map(|r| r.capacity.vcpus_free).unwrap_or(0),
                    incident: self.incident.contains(&host_id.get()),
                    error,
                    this_host: host_id == self.own,
                    failover_digest: record
                        .map(|r| r.shared_settings.failover_digest)
                        .unwrap_or(0),
                    cluster_digest: record
                        .map(|r| r.shared_settings.cluster_digest)
                        .unwrap_or(0),
                    settings_differ: self.agreement.differing(host_id.get()).to_vec(),
                }
            })
            .collect()
    }

    /// Hosts declared silent (storage-confirmed, not part of an incident),
    /// with the generation watched: candidates for fencing.
    pub fn declared_silent(&self, space: &Lockspace) -> Vec<(HostId, u64)> {
        self.host_ids(space)
            .filter(|h| *h != self.own && !self.incident.contains(&h.get()))
            .filter_map(|h| {
                let view = self.observer.view(h);
                match (view.state, view.record) {
                    (HostState::Silent | HostState::Dead, Some(r)) => Some((h, r.generation)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Hosts whose leases the watchdog rule lets us take. A host that stood
    /// still past its host_dead time had its watchdog fire, whatever made
    /// it stop, so a storage incident does not hold these back.
    pub fn dead_hosts(&self) -> Vec<(HostId, u64)> {
        self.observer
            .dead_hosts()
            .into_iter()
            .filter(|(h, _)| *h != self.own)
            .collect()
    }

    /// Each host's last record seen here, with its state name ("live",
    /// "silent", "fenced", ...), for restart placement.
    pub fn records(&self, space: &Lockspace) -> Vec<(HostId, &'static str, Option<HostRecord>)> {
        self.host_ids(space)
            .map(|host_id| {
                let view = self.observer.view(host_id);
                (host_id, state_name(&view.state), view.record.clone())
            })
            .collect()
    }

    pub fn storage_incident(&self) -> bool {
        !self.incident.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease::clock::TestClock;
    use lease::delta::{self, JoinRequest};
    use lease::device::{self, FormatOptions};
    use lease::disk::{Disk, MemoryDisk};
    use lease::format::{Capacity, FenceMethod, Geometry};
    use lease::op::run;

    const T_MS: u32 = 1000;

    fn cluster(hosts: u32) -> (MemoryDisk, Lockspace, TestClock) {
        let geometry = Geometry::new(512, 8, 1, 4096).expect("geometry");
        let disk = MemoryDisk::new("mem0", 512, geometry.device_size_bytes() as usize);
        let space = device::format(
            &disk,
            &FormatOptions {
                lockspace: "t".to_string(),
                geometry,
                io_timeout_ms: T_MS,
            },
        )
        .expect("format");
        let clock = TestClock::new(1_000_000);
        for raw in 1..=hosts {
            let request = JoinRequest {
                host_id: HostId::new(raw).expect("id"),
                host_name: format!("h{raw}"),
                io_timeout_ms: T_MS,
                nonce: u64::from(raw),
                capacity: Capacity::default(),
                watchdog: false,
                fence_method: FenceMethod::None,
                shared_settings: Default::default(),
            };
            run(delta::join(&space, request), &disk, &clock).expect("join");
        }
        (disk, space, clock)
    }

    fn area(disk: &MemoryDisk, space: &Lockspace) -> Vec<u8> {
        let mut buffer = vec![0; space.geometry.host_area_size_bytes() as usize];
        disk.read(space.geometry.host_area_offset_bytes(), &mut buffer)
            .expect("read");
        buffer
    }

    /// Host `raw` writes a new timestamp, as a renewal would.
    fn touch(disk: &MemoryDisk, space: &Lockspace, raw: u32, now_ms: u64) {
        let host_id = HostId::new(raw).expect("id");
        let offset = space.geometry.host_offset_bytes(host_id);
        let mut sector = vec![0; 512];
        disk.read(offset, &mut sector).expect("read");
        let mut record = space.decode_host(host_id, &sector).expect("decode");
        record.timestamp_ms = now_ms;
        disk.write(offset, &record.encode("t", 512).expect("encode"))
            .expect("write");
    }

    fn run_for(
        monitor: &mut Monitor,
        disk: &MemoryDisk,
        space: &Lockspace,
        start_ms: u64,
        duration_ms: u64,
        movers: &[u32],
    ) -> Vec<Transition> {
        let mut all = Vec::new();
        let mut now = start_ms;
        while now < start_ms + duration_ms {
            for raw in movers {
                touch(disk, space, *raw, now);
            }
            all.extend(monitor.observe(now, space, &area(disk, space)));
            now += 2 * u64::from(T_MS);
        }
        all
    }

    #[test]
    fn one_host_stopping_is_declared_silent_after_expiry_not_before() {
        let (disk, space, _) = cluster(4);
        let own = HostId::new(1).expect("id");
        let mut monitor = Monitor::new(
            8,
            own,
            Timeouts::from_io_timeout_ms(T_MS),
            0.5,
            SharedSettings::default(),
        );
        run_for(&mut monitor, &disk, &space, 0, 10_000, &[1, 2, 3, 4]);
        assert!(monitor.declared_silent(&space).is_empty());
        // Host 4 (no watchdog: fence mode, expiry 6T = 6 s) last moved at
        // 8 s; 4 s later (under its expiry) nothing is declared.
        let events = run_for(&mut monitor, &disk, &space, 10_000, 3_000, &[1, 2, 3]);
        assert!(monitor.declared_silent(&space).is_empty(), "{events:?}");
        let events = run_for(&mut monitor, &disk, &space, 13_000, 4_000, &[1, 2, 3]);
        assert_eq!(
            monitor
                .declared_silent(&space)
                .first()
                .map(|(h, _)| h.get()),
            Some(4)
        );
        assert!(events.iter().any(|t| t.kind == "host-silent"), "{events:?}");
        assert!(!monitor.storage_incident());
    }

    #[test]
    fn many_hosts_stopping_together_is_an_incident() {
        let (disk, space, _) = cluster(5);
        let own = HostId::new(1).expect("id");
        let mut monitor = Monitor::new(
            8,
            own,
            Timeouts::from_io_timeout_ms(T_MS),
            0.5,
            SharedSettings::default(),
        );
        run_for(&mut monitor, &disk, &space, 0, 10_000, &[1, 2, 3, 4, 5]);
        // Three of four others stop at once.
        let events = run_for(&mut monitor, &disk, &space, 10_000, 20_000, &[1, 2]);
        assert!(monitor.storage_incident());
        assert!(monitor.declared_silent(&space).is_empty());
        assert!(events.iter().any(|t| t.kind == "storage-incident"));
        let hosts = monitor.hosts(&space);
        assert!(hosts.iter().filter(|h| h.incident).count() == 3);
        // They come back: the incident clears.
        run_for(&mut monitor, &disk, &space, 30_000, 6_000, &[1, 2, 3, 4, 5]);
        assert!(!monitor.storage_incident());
    }

    #[test]
    fn a_gap_in_our_own_scans_silences_nobody() {
        let (disk, space, _) = cluster(3);
        let own = HostId::new(1).expect("id");
        let mut monitor = Monitor::new(
            8,
            own,
            Timeouts::from_io_timeout_ms(T_MS),
            0.5,
            SharedSettings::default(),
        );
        run_for(&mut monitor, &disk, &space, 0, 10_000, &[1, 2, 3]);
        // Our storage stalls for 30 s: no scans at all, nobody moves.
        let events = run_for(&mut monitor, &disk, &space, 40_000, 2_000, &[]);
        assert!(monitor.declared_silent(&space).is_empty(), "{events:?}");
    }
}
