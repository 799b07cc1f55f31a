//! The daemon's measurements that exist nowhere else: latency histograms
//! of renewals and of lease operations. Everything else the metrics page
//! shows (hosts by state, VMs, event counts, memory) is read from the
//! daemon's state when scraped ([`crate::web::exposition`]).
//!
//! Cost: one mutex and one bucket search per renewal or lease operation;
//! memory grows with lockspaces x operations x outcomes, all small sets.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: from a fast local
/// disk (1 ms) to a renewal near its io_timeout on slow storage (10 s).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One latency histogram (counts per bucket, not cumulative).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// `bucket_counts[i]` counts observations in
    /// `(LATENCY_BUCKETS_SECONDS[i-1], LATENCY_BUCKETS_SECONDS[i]]`; the
    /// last entry counts those above every bound.
    pub bucket_counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            bucket_counts: vec![0; LATENCY_BUCKETS_SECONDS.len() + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        if let Some(count) = self.bucket_counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum_seconds += seconds;
        self.count += 1;
    }

    /// Observations at or below each bound, then the total (`+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.bucket_counts
            .iter()
            .map(|c| {
                total += c;
                total
            })
            .collect()
    }
}

/// A lease operation's kind and how it ended.
pub type OpKey = (&'static str, String);

#[derive(Debug, Default)]
pub struct Metrics {
    /// Renewal latency (successful or not) by lockspace.
    renewals: Mutex<BTreeMap<String, Histogram>>,
    /// Lease operations of the control socket by (op, outcome).
    lease_ops: Mutex<BTreeMap<OpKey, Histogram>>,
    /// VMs this host restarted after their holder's incarnation ended.
    vm_restarts: std::sync::atomic::AtomicU64,
}

fn observe<K: Ord>(map: &Mutex<BTreeMap<K, Histogram>>, key: K, took: Duration) {
    let mut map = match map.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(key).or_default().observe(took);
}

fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, Histogram>>) -> BTreeMap<K, Histogram> {
    match map.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl Metrics {
    pub fn renewal(&self, lockspace: &str, took: Duration) {
        observe(&self.renewals, lockspace.to_string(), took);
    }

    /// `outcome`: "ok", or the error kind the reply carried.
    pub fn lease_op(&self, op: &'static str, outcome: String, took: Duration) {
        observe(&self.lease_ops, (op, outcome), took);
    }

    pub fn vm_restarted(&self) {
        self.vm_restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn vm_restarts(&self) -> u64 {
        self.vm_restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn renewals(&self) -> BTreeMap<String, Histogram> {
        snapshot(&self.renewals)
    }

    pub fn lease_ops(&self) -> BTreeMap<OpKey, Histogram> {
        snapshot(&self.lease_ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let cumulative = h.cumulative();
        assert_eq!(cumulative[0], 2, "0.5 ms and 1 ms are <= 1 ms");
        assert_eq!(cumulative[4], 2, "nothing up to 25 ms beyond those");
        assert_eq!(cumulative[5], 3, "30 ms <= 50 ms");
        assert_eq!(cumulative[LATENCY_BUCKETS_SECONDS.len() - 1], 3);
        assert_eq!(*cumulative.last().unwrap_or(&0), 4, "+Inf holds all");
        assert_eq!(h.count, 4);
        assert!((h.sum_seconds - 60.0315).abs() < 1e-9);
    }
}
