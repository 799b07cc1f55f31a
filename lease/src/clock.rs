//! Monotonic time. Protocol code never reads a clock itself: the driver reads a
//! [`Clock`] and hands `now_ms` to each step, so the simulator can substitute
//! its own time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A monotonic clock in milliseconds. Values from two hosts are never compared.
pub trait Clock {
    fn now_ms(&self) -> u64;
    /// Block until `now_ms() >= deadline_ms`.
    fn sleep_until_ms(&self, deadline_ms: u64);
}

/// The host's monotonic clock. CLOCK_BOOTTIME rather than CLOCK_MONOTONIC: it
/// keeps counting while the machine is suspended, so a host that wakes from
/// suspend sees that its renewal deadline has passed instead of resuming as if
/// no time had gone by.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let mut spec = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `spec` is a valid, writable timespec; CLOCK_BOOTTIME exists on
        // every Linux kernel we support (2.6.39+).
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut spec) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
        let seconds = u64::try_from(spec.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(spec.tv_nsec).unwrap_or(0);
        seconds * 1000 + nanos / 1_000_000
    }

    fn sleep_until_ms(&self, deadline_ms: u64) {
        let now_ms = self.now_ms();
        if deadline_ms > now_ms {
            std::thread::sleep(Duration::from_millis(deadline_ms - now_ms));
        }
    }
}

/// A clock for tests: time moves only when told to, and sleeping jumps the
/// clock to the deadline at once.
#[derive(Clone, Debug, Default)]
pub struct TestClock {
    now_ms: Arc<AtomicU64>,
}

impl TestClock {
    pub fn new(start_ms: u64) -> TestClock {
        TestClock {
            now_ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn sleep_until_ms(&self, deadline_ms: u64) {
        self.now_ms.fetch_max(deadline_ms, Ordering::SeqCst);
    }
}
