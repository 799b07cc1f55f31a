//! Configuration agreement: the settings every host of a cluster must
//! share. Every survivor computes the same restart turns from the same disk
//! state only if they all run with the same `[failover]` settings, the same
//! cluster host list (who exists, how each is fenced) and the same
//! io_timeout. Each host publishes digests of the first two in its host
//! record (the third is in the record already), and every host compares the
//! others' with its own on each host-area scan: a pure decision, fed the
//! records the monitor read. Cost: nothing beyond the scan the monitor
//! already makes (one contiguous read of the host area per scan).

use crate::config::{ClusterHost, Config, Failover, Fence};
use lease::format::{HostRecord, SharedSettings};
use std::collections::BTreeMap;

/// A digest never published as 0 (0 means "not published").
fn digest(text: &str) -> u32 {
    crc32fast::hash(text.as_bytes()).max(1)
}

/// The `[failover]` settings as one line, every field named.
fn failover_text(failover: &Failover) -> String {
    let Failover {
        host_failures_to_tolerate,
        restart_grace_ms,
        restart_attempts,
    } = failover;
    format!(
        "host_failures_to_tolerate={host_failures_to_tolerate};restart_grace_ms={restart_grace_ms};restart_attempts={restart_attempts}"
    )
}

/// The cluster host list, by host id, with each fence device (never its
/// password: that lives in each host's secrets file and may differ).
fn cluster_text(hosts: &[ClusterHost]) -> String {
    let mut sorted: Vec<&ClusterHost> = hosts.iter().collect();
    sorted.sort_by_key(|h| h.id);
    let mut text = String::new();
    for host in sorted {
        let fence = match &host.fence {
            Fence::Ipmi {
                address,
                port,
                user,
                cipher,
                privilege,
            } => format!("ipmi,{address},{port},{user},{cipher},{privilege}"),
            Fence::Agent { agent, options } => {
                let options: Vec<String> =
                    options.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                format!("agent,{agent},{}", options.join(","))
            }
            Fence::None => "none".to_string(),
        };
        text.push_str(&format!("{}:{:?}:{fence}\n", host.id, host.name));
    }
    text
}

/// The digests this host publishes.
pub fn shared_settings(config: &Config) -> SharedSettings {
    SharedSettings {
        failover_digest: digest(&failover_text(&config.failover)),
        cluster_digest: digest(&cluster_text(&config.cluster)),
    }
}

/// Which shared settings of `other` differ from ours, by the name an
/// operator looks for in the file. Empty when they agree, and for a record
/// that publishes no digests (an older writer: nothing to compare).
pub fn differences(own: SharedSettings, own_io_timeout_ms: u64, other: &HostRecord) -> Vec<String> {
    let mut differ = Vec::new();
    let theirs = other.shared_settings;
    if theirs.failover_digest != 0 && theirs.failover_digest != own.failover_digest {
        differ.push("[failover]".to_string());
    }
    if theirs.cluster_digest != 0 && theirs.cluster_digest != own.cluster_digest {
        differ.push("[[cluster.hosts]]".to_string());
    }
    if other.io_timeout_ms != 0 && u64::from(other.io_timeout_ms) != own_io_timeout_ms {
        differ.push(format!(
            "io_timeout_ms ({} there, {own_io_timeout_ms} here)",
            other.io_timeout_ms
        ));
    }
    differ
}

/// One change in agreement worth an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Host `host_id` now differs in `what` (or differs in something else
    /// than before).
    Differs {
        host_id: u32,
        name: String,
        what: Vec<String>,
    },
    /// Host `host_id` agrees again.
    Agrees { host_id: u32, name: String },
}

/// What this host last found per other host, so each disagreement is
/// reported once when it starts and once when it ends.
#[derive(Debug, Default)]
pub struct Agreement {
    differing: BTreeMap<u32, Vec<String>>,
}

impl Agreement {
    /// Compare the records of the hosts that run now (joined, not left or
    /// fenced; not this host) with our settings. A host absent from
    /// `running` keeps what was last found without an event, so that one
    /// that left and comes back with settings put right is reported as
    /// agreeing again.
    pub fn check<'a>(
        &mut self,
        own: SharedSettings,
        own_io_timeout_ms: u64,
        running: impl Iterator<Item = &'a HostRecord>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for record in running {
            let host_id = record.host_id.get();
            let what = differences(own, own_io_timeout_ms, record);
            let before = self.differing.get(&host_id);
            if what.is_empty() {
                if self.differing.remove(&host_id).is_some() {
                    changes.push(Change::Agrees {
                        host_id,
                        name: record.host_name.clone(),
                    });
                }
            } else if before != Some(&what) {
                changes.push(Change::Differs {
                    host_id,
                    name: record.host_name.clone(),
                    what: what.clone(),
                });
                self.differing.insert(host_id, what);
            }
        }
        changes
    }

    /// What host `host_id` differs in, as last found (empty: agrees or
    /// unknown).
    pub fn differing(&self, host_id: u32) -> &[String] {
        self.differing.get(&host_id).map_or(&[], |v| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease::HostId;

    fn host(id: u32, name: &str, fence: Fence) -> ClusterHost {
        ClusterHost {
            id,
            name: name.to_string(),
            fence,
        }
    }

    fn record(id: u32, settings: SharedSettings, io_timeout_ms: u32) -> HostRecord {
        let mut r = HostRecord::unused(HostId::new(id).expect("id"));
        r.generation = 1;
        r.io_timeout_ms = io_timeout_ms;
        r.host_name = format!("h{id}");
        r.shared_settings = settings;
        r
    }

    #[test]
    fn digests_follow_every_shared_setting_and_ignore_host_order() {
        let a = vec![
            host(1, "h1", Fence::None),
            host(
                2,
                "h2",
                Fence::Agent {
                    agent: "fence_x".to_string(),
                    options: BTreeMap::from([("ip".to_string(), "10.0.0.2".to_string())]),
                },
            ),
        ];
        let reversed: Vec<ClusterHost> = a.iter().rev().cloned().collect();
        assert_eq!(digest(&cluster_text(&a)), digest(&cluster_text(&reversed)));
        let mut other_ip = a.clone();
        other_ip[1].fence = Fence::Agent {
            agent: "fence_x".to_string(),
            options: BTreeMap::from([("ip".to_string(), "10.0.0.3".to_string())]),
        };
        assert_ne!(digest(&cluster_text(&a)), digest(&cluster_text(&other_ip)));
        let mut renamed = a.clone();
        renamed[0].name = "h1b".to_string();
        assert_ne!(digest(&cluster_text(&a)), digest(&cluster_text(&renamed)));
        let f = Failover::default();
        for changed in [
            Failover {
                restart_attempts: f.restart_attempts + 1,
                ..f
            },
            Failover {
                restart_grace_ms: f.restart_grace_ms + 1,
                ..f
            },
            Failover {
                host_failures_to_tolerate: f.host_failures_to_tolerate + 1,
                ..f
            },
        ] {
            assert_ne!(digest(&failover_text(&f)), digest(&failover_text(&changed)));
        }
    }

    #[test]
    fn a_disagreement_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let ours = SharedSettings {
            failover_digest: 10,
            cluster_digest: 20,
        };
        let odd = SharedSettings {
            failover_digest: 11,
            cluster_digest: 20,
        };
        let mut agreement = Agreement::default();
        let same = record(2, ours, 1000);
        let differs = record(3, odd, 1000);
        let changes = agreement.check(ours, 1000, [&same, &differs].into_iter());
        assert_eq!(
            changes,
            vec![Change::Differs {
                host_id: 3,
                name: "h3".to_string(),
                what: vec!["[failover]".to_string()]
            }]
        );
        assert_eq!(agreement.differing(3), ["[failover]".to_string()]);
        assert!(agreement.differing(2).is_empty());
        // The same scan again: nothing new.
        assert!(agreement
            .check(ours, 1000, [&same, &differs].into_iter())
            .is_empty());
        // Host 3 now differs in io_timeout too: reported again.
        let worse = record(3, odd, 2000);
        let changes = agreement.check(ours, 1000, [&same, &worse].into_iter());
        assert!(
            matches!(&changes[..], [Change::Differs { host_id: 3, what, .. }] if what.len() == 2),
            "{changes:?}"
        );
        // Host 3 restarts with our settings.
        let fixed = record(3, ours, 1000);
        let changes = agreement.check(ours, 1000, [&same, &fixed].into_iter());
        assert_eq!(
            changes,
            vec![Change::Agrees {
                host_id: 3,
                name: "h3".to_string()
            }]
        );
        assert!(agreement.differing(3).is_empty());
    }

    #[test]
    fn an_unpublished_digest_is_no_disagreement_and_a_departed_host_is_remembered() {
        let ours = SharedSettings {
            failover_digest: 10,
            cluster_digest: 20,
        };
        let mut agreement = Agreement::default();
        let old_writer = record(2, SharedSettings::default(), 1000);
        assert!(agreement
            .check(ours, 1000, std::iter::once(&old_writer))
            .is_empty());
        let odd = record(
            3,
            SharedSettings {
                failover_digest: 10,
                cluster_digest: 21,
            },
            1000,
        );
        assert_eq!(agreement.check(ours, 1000, std::iter::once(&odd)).len(), 1);
        // Host 3 left: no event, and what it differed in is kept...
        assert!(agreement.check(ours, 1000, std::iter::empty()).is_empty());
        assert_eq!(agreement.differing(3), ["[[cluster.hosts]]".to_string()]);
        // ...so its return with our settings is reported.
        let fixed = record(3, ours, 1000);
        assert_eq!(
            agreement.check(ours, 1000, std::iter::once(&fixed)),
            vec![Change::Agrees {
                host_id: 3,
                name: "h3".to_string()
            }]
        );
    }
}
