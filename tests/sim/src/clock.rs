//! A host's clock: it drifts against true time and can jump forward.
//! Only the host's own operations ever see it.

#[derive(Clone, Debug)]
pub struct HostClock {
    /// Parts per million faster (positive) or slower than true time.
    drift_ppm: i64,
    offset_ms: i64,
}

impl HostClock {
    pub fn new(drift_ppm: i64, start_ms: i64) -> HostClock {
        assert!(drift_ppm.abs() < 100_000);
        HostClock {
            drift_ppm,
            offset_ms: start_ms,
        }
    }

    /// The host's reading at true time `true_ms`.
    pub fn local_ms(&self, true_ms: u64) -> u64 {
        let t = true_ms as i64;
        let local = self.offset_ms + t + t * self.drift_ppm / 1_000_000;
        local.max(0) as u64
    }

    /// The earliest true time at which the host's clock reads `local_ms`.
    pub fn true_ms_at(&self, local_ms: u64, now_true_ms: u64) -> u64 {
        let target = local_ms as i64 - self.offset_ms;
        let estimate = (target as i128 * 1_000_000 / (1_000_000 + self.drift_ppm as i128)) as i64;
        let mut t = estimate.max(now_true_ms as i64) as u64;
        // Integer rounding: step to the first instant that reads at least local_ms.
        while self.local_ms(t) < local_ms {
            t += 1;
        }
        while t > now_true_ms && self.local_ms(t - 1) >= local_ms {
            t -= 1;
        }
        t
    }

    pub fn jump_forward(&mut self, delta_ms: u64) {
        self.offset_ms += delta_ms as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_is_exact() {
        for drift in [-20_000, -1, 0, 7, 20_000] {
            let clock = HostClock::new(drift, 12_345);
            for local in [20_000u64, 99_999, 1_000_000, 7_654_321] {
                let t = clock.true_ms_at(local, 0);
                assert!(clock.local_ms(t) >= local);
                assert!(t == 0 || clock.local_ms(t - 1) < local);
            }
        }
    }
}
