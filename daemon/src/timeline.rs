//! The last failover as this host saw it and took part in it, for the
//! status page's timeline and the failover metrics: when this host called
//! a host silent or dead, when the fence happened (by this host, or the
//! mark seen), and for each VM this host took over, when its lease was
//! taken and when it ran (or failed to start).
//!
//! Times are this host's monotonic clock in ms since the detection (or
//! since the FENCED mark was seen, when another survivor fenced first);
//! the power-off itself is invisible to a survivor, so the detection delay is
//! not here (benches/failover.rs measures it from outside). VMs other
//! survivors took appear on their own pages.

use serde::Serialize;

/// A detection of the same host within this long continues the failover
/// instead of starting a new one.
const SAME_FAILOVER_MS: u64 = 10 * 60 * 1000;
/// At most this many steps are kept (a failover of many VMs).
const STEPS_MAX: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// This host powered the victim off and wrote the mark.
    Fenced,
    /// The mark was seen (written by this or another host).
    MarkSeen,
    /// A fence attempt by this host failed.
    FenceFailed,
    /// Another host won the election to fence.
    FenceByOther { fencer: u32 },
    /// This host took the VM's lease.
    Taken { vm: String },
    /// The VM runs here.
    Started { vm: String },
    /// Its start failed here.
    StartFailed { vm: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failover {
    pub host_id: u32,
    pub host_name: String,
    /// Wall-clock time of the detection, for people.
    pub detected_at: String,
    #[serde(skip)]
    detected_ms: u64,
    /// (ms since the detection, what happened), in order.
    pub steps: Vec<(u64, Step)>,
}

/// The phases of a failover, in ms, as far as it got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    /// Detection to the fence (done here, or its mark seen).
    pub fence_ms: Option<u64>,
    /// Fence to the first lease taken here.
    pub takeover_ms: Option<u64>,
    /// First lease taken to the last VM started here.
    pub start_ms: Option<u64>,
    /// Detection to the last VM started here.
    pub total_ms: Option<u64>,
}

impl Failover {
    /// When the first step matching `pred` happened, ms since detection.
    pub fn first(&self, pred: impl Fn(&Step) -> bool) -> Option<u64> {
        self.steps.iter().find(|(_, s)| pred(s)).map(|(at, _)| *at)
    }

    pub fn phases(&self) -> Phases {
        let fenced = self.first(|s| matches!(s, Step::Fenced | Step::MarkSeen));
        let taken = self.first(|s| matches!(s, Step::Taken { .. }));
        let last_start = self
            .steps
            .iter()
            .rev()
            .find(|(_, s)| matches!(s, Step::Started { .. }))
            .map(|(at, _)| *at);
        Phases {
            fence_ms: fenced,
            takeover_ms: fenced.zip(taken).map(|(f, t)| t.saturating_sub(f)),
            start_ms: taken.zip(last_start).map(|(t, s)| s.saturating_sub(t)),
            total_ms: last_start,
        }
    }
}

#[derive(Debug, Default)]
pub struct Timeline {
    last: Option<Failover>,
}

impl Timeline {
    /// This host called `host_id` silent or dead at `now_ms`.
    pub fn detected(&mut self, host_id: u32, host_name: &str, now_ms: u64, wall: String) {
        let continues = self.last.as_ref().is_some_and(|f| {
            f.host_id == host_id && now_ms.saturating_sub(f.detected_ms) < SAME_FAILOVER_MS
        });
        if !continues {
            self.last = Some(Failover {
                host_id,
                host_name: host_name.to_string(),
                detected_at: wall,
                detected_ms: now_ms,
                steps: Vec::new(),
            });
        }
    }

    /// This host saw `host_id`'s FENCED mark. Another survivor may fence
    /// before this host's own silence window ends: then the mark is where
    /// this host's failover begins.
    pub fn mark_seen(&mut self, host_id: u32, host_name: &str, now_ms: u64, wall: String) {
        self.detected(host_id, host_name, now_ms, wall);
        self.fence(host_id, Step::MarkSeen, now_ms);
    }

    /// A fence step about `host_id`; ignored unless it is the host of the
    /// current failover. Each fence step kind is kept once.
    pub fn fence(&mut self, host_id: u32, step: Step, now_ms: u64) {
        if let Some(f) = self.current(now_ms).filter(|f| f.host_id == host_id) {
            if !f.steps.iter().any(|(_, s)| *s == step) {
                push(f, step, now_ms);
            }
        }
    }

    /// This host took `vm`'s lease from an incarnation of `from_host`.
    pub fn taken(&mut self, vm: &str, from_host: u32, now_ms: u64) {
        if let Some(f) = self.current(now_ms).filter(|f| f.host_id == from_host) {
            push(f, Step::Taken { vm: vm.to_string() }, now_ms);
        }
    }

    /// `vm` started here (`ok`) or failed to; kept only for a VM this
    /// failover took here.
    pub fn start(&mut self, vm: &str, ok: bool, now_ms: u64) {
        if let Some(f) = self.current(now_ms) {
            let ours = f
                .steps
                .iter()
                .any(|(_, s)| matches!(s, Step::Taken { vm: v } if v == vm));
            if ours {
                let vm = vm.to_string();
                push(
                    f,
                    if ok {
                        Step::Started { vm }
                    } else {
                        Step::StartFailed { vm }
                    },
                    now_ms,
                );
            }
        }
    }

    pub fn last(&self) -> Option<Failover> {
        self.last.clone()
    }

    fn current(&mut self, now_ms: u64) -> Option<&mut Failover> {
        self.last
            .as_mut()
            .filter(|f| now_ms.saturating_sub(f.detected_ms) < SAME_FAILOVER_MS)
    }
}

fn push(failover: &mut Failover, step: Step, now_ms: u64) {
    if failover.steps.len() < STEPS_MAX {
        failover
            .steps
            .push((now_ms.saturating_sub(failover.detected_ms), step));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_collects_its_fence_takeovers_and_starts_in_phases() {
        let mut t = Timeline::default();
        t.detected(1, "host1", 1_000, "w".into());
        t.fence(2, Step::MarkSeen, 1_100); // another host: not this failover
        t.fence(1, Step::Fenced, 1_400);
        t.fence(1, Step::MarkSeen, 1_500);
        t.taken("vm1", 1, 1_600);
        t.taken("vmx", 3, 1_650); // taken from another host
        t.start("vm1", true, 2_600);
        t.start("vm9", true, 2_700); // not taken in this failover
        t.detected(1, "host1", 1_800, "w".into()); // host-dead after silent
        let f = t.last().expect("a failover");
        assert_eq!(
            f.steps,
            vec![
                (400, Step::Fenced),
                (500, Step::MarkSeen),
                (600, Step::Taken { vm: "vm1".into() }),
                (1_600, Step::Started { vm: "vm1".into() }),
            ]
        );
        assert_eq!(
            f.phases(),
            Phases {
                fence_ms: Some(400),
                takeover_ms: Some(200),
                start_ms: Some(1_000),
                total_ms: Some(1_600),
            }
        );
        // Another host's failure later starts a new failover; fenced by
        // another survivor before this host's window ended, it begins at
        // the mark.
        t.mark_seen(2, "host2", 5_000, "w".into());
        t.taken("vm2", 2, 5_300);
        t.start("vm2", true, 5_900);
        let f = t.last().expect("a second failover");
        assert_eq!(f.host_id, 2);
        assert_eq!(
            f.phases(),
            Phases {
                fence_ms: Some(0),
                takeover_ms: Some(300),
                start_ms: Some(600),
                total_ms: Some(900),
            }
        );
    }
}
