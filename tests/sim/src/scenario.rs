//! What one seed simulates: sizes, latencies and fault rates, all drawn from
//! the seed ("swarm" testing: each seed switches a different mix of faults
//! on, at rates far above real life).

use crate::rng::Rng;
use lease::planted::PlantedBug;
use std::fmt;

/// Options from the command line; `None` means "draw from the seed".
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub hosts: Option<u32>,
    pub resources: Option<u32>,
    /// Resource slots on the device (at least `resources`).
    pub slots: Option<u32>,
    pub planted_bug: Option<PlantedBug>,
    /// Multiplies every fault rate (0 switches faults off).
    pub fault_scale: Option<f64>,
    /// Simulated time before the liveness phase, in seconds.
    pub duration_s: Option<u64>,
    /// Every host's storage latency, base and random spread (ms), instead
    /// of drawn ones: a fast device, for seeds with very many slots.
    pub latency_ms: Option<(u64, u64)>,
    /// Latency spikes in every seed, each at most this long in tenths of
    /// the io_timeout (instead of drawn: spikes of up to 3T in some seeds).
    pub spike_max_tenths_of_t: Option<u64>,
}

/// Mean time between two faults of one kind, in simulated ms; None = off.
#[derive(Clone, Debug, Default)]
pub struct FaultRates {
    /// One host's storage path fails (EIO) or hangs for a while.
    pub path_ms: Option<f64>,
    /// The whole device stalls for everyone.
    pub device_stall_ms: Option<f64>,
    /// A host's process is paused (no steps, no watchdog feeding).
    pub pause_ms: Option<f64>,
    /// A host's clock jumps forward a little.
    pub clock_jump_ms: Option<f64>,
    /// A host loses power (in-flight writes land, vanish or tear).
    pub crash_ms: Option<f64>,
    /// A random lease sector rots (one flipped bit).
    pub corruption_ms: Option<f64>,
    /// Probability that an I/O stalls past its deadline.
    pub io_stall_chance: f64,
    /// A latency spike: for a while, every I/O of one host's path (or of
    /// the whole device) completes only when the spike ends. Not a
    /// disturbance: spikes within `spike_max_tenths_of_t` must never get a
    /// live host called silent (the false-fence check holds throughout).
    pub spike_ms: Option<f64>,
    /// The longest spike, in tenths of the io_timeout (30: 3T).
    pub spike_max_tenths_of_t: u64,
    /// A crash tears in-flight writes (garbage sectors) instead of only
    /// landing or dropping them.
    pub torn_writes: bool,
    /// Probability that a restarting host is joined by a misconfigured
    /// second process with the same host id and another name.
    pub impostor_chance: f64,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub hosts: u32,
    /// Resource names in use (r0, r1, ...).
    pub resources: u32,
    /// Resource slots on the device: more than names leaves free slots, so
    /// names land away from their home slot and probe sequences wrap.
    pub slots: u32,
    /// The device's names-probed header flag: with it, name scans stop at
    /// a name's first never-owned slot; without it (a device from an older
    /// build), they read every slot.
    pub names_probed: bool,
    pub sector_size_bytes: u32,
    pub duration_ms: u64,
    /// Per host: io_timeout (ms), clock drift (ppm), watchdog, fence device.
    pub io_timeout_ms: Vec<u32>,
    pub drift_ppm: Vec<i64>,
    pub watchdog: Vec<bool>,
    pub fence_device: Vec<bool>,
    pub fence_success_chance: f64,
    /// Per host: the storage path's base latency and its random spread (ms).
    pub latency_base_ms: Vec<u64>,
    pub latency_jitter_ms: Vec<u64>,
    pub faults: FaultRates,
    pub planted_bug: Option<PlantedBug>,
}

impl Scenario {
    pub fn draw(seed: u64, options: &Options) -> Scenario {
        let mut rng = Rng::new(seed);
        let hosts = options.hosts.unwrap_or_else(|| {
            if rng.chance(0.05) {
                rng.range(9, 32) as u32
            } else {
                rng.range(2, 8) as u32
            }
        });
        let resources = options.resources.unwrap_or_else(|| rng.range(1, 4) as u32);
        let sector_size_bytes = if rng.chance(0.2) { 4096 } else { 512 };
        let duration_ms = options
            .duration_s
            .map(|s| s * 1000)
            .unwrap_or_else(|| rng.range(120, 360) * 1000);
        let io_timeout_ms = (0..hosts)
            .map(|_| [500, 1000, 1000, 2000][rng.below(4) as usize])
            .collect();
        let drift_ppm = (0..hosts)
            .map(|_| rng.range(0, 20_000) as i64 - 10_000)
            .collect();
        let watchdog_share = [0.0, 0.5, 1.0][rng.below(3) as usize];
        let watchdog = (0..hosts).map(|_| rng.chance(watchdog_share)).collect();
        let fence_device = (0..hosts).map(|_| rng.chance(0.8)).collect();
        let mut latency_base_ms: Vec<u64> = (0..hosts).map(|_| rng.range(1, 5)).collect();
        let mut latency_jitter_ms: Vec<u64> = (0..hosts).map(|_| rng.range(1, 50)).collect();
        if let Some((base_ms, jitter_ms)) = options.latency_ms {
            latency_base_ms.fill(base_ms);
            latency_jitter_ms.fill(jitter_ms);
        }
        let scale = options.fault_scale.unwrap_or(1.0);
        let mut faults = FaultRates::default();
        if scale > 0.0 && !rng.chance(0.1) {
            let rate = |rng: &mut Rng, mean_s: u64| {
                rng.chance(0.5)
                    .then(|| rng.range(mean_s / 2, mean_s * 2) as f64 * 1000.0 / scale)
            };
            faults.path_ms = rate(&mut rng, 60);
            faults.device_stall_ms = rate(&mut rng, 120);
            faults.pause_ms = rate(&mut rng, 60);
            faults.clock_jump_ms = rate(&mut rng, 60);
            faults.crash_ms = rate(&mut rng, 90);
            faults.corruption_ms = rate(&mut rng, 200);
            faults.io_stall_chance = if rng.chance(0.5) { 0.002 * scale } else { 0.0 };
            faults.torn_writes = rng.chance(0.5);
            faults.impostor_chance = if rng.chance(0.3) { 0.5 } else { 0.0 };
        }
        // Drawn last, so every other draw of a seed stays as it was.
        let slots = options
            .slots
            .unwrap_or_else(|| {
                if rng.chance(0.5) {
                    resources
                } else {
                    resources + rng.range(1, 12) as u32
                }
            })
            .max(resources);
        let names_probed = !rng.chance(0.2);
        // Drawn after everything else, so earlier draws stay as they were.
        match options.spike_max_tenths_of_t {
            Some(tenths) => {
                faults.spike_ms = Some(20_000.0);
                faults.spike_max_tenths_of_t = tenths;
            }
            None => {
                if scale > 0.0 && rng.chance(0.3) {
                    faults.spike_ms = Some(rng.range(20, 120) as f64 * 1000.0 / scale);
                }
                faults.spike_max_tenths_of_t = 30;
            }
        }
        Scenario {
            hosts,
            resources,
            slots,
            names_probed,
            sector_size_bytes,
            duration_ms,
            io_timeout_ms,
            drift_ppm,
            watchdog,
            fence_device,
            fence_success_chance: [1.0, 0.7][rng.below(2) as usize],
            latency_base_ms,
            latency_jitter_ms,
            faults,
            planted_bug: options.planted_bug,
        }
    }

    /// Liveness is checked only where no fault can legitimately block it
    /// for good: rotten sectors are never reused, and an impostor holding a
    /// host id is a misconfiguration.
    pub fn checks_liveness(&self) -> bool {
        self.faults.corruption_ms.is_none()
            && self.faults.impostor_chance == 0.0
            && !self.faults.torn_writes
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |x: Option<f64>| {
            x.map(|ms| format!("{:.0}s", ms / 1000.0))
                .unwrap_or_else(|| "off".to_string())
        };
        write!(
            f,
            "hosts={} resources={} slots={} names_probed={} sector={} duration={}s io_timeouts={:?}ms watchdogs={} fence_devices={} fence_success={} latency={:?}+{:?}ms \
             path={} device_stall={} pause={} clock_jump={} crash={} corruption={} io_stall={} spikes={}(max {}T/10) torn={} impostors={} planted={}",
            self.hosts,
            self.resources,
            self.slots,
            self.names_probed,
            self.sector_size_bytes,
            self.duration_ms / 1000,
            self.io_timeout_ms,
            self.watchdog.iter().filter(|w| **w).count(),
            self.fence_device.iter().filter(|w| **w).count(),
            self.fence_success_chance,
            self.latency_base_ms,
            self.latency_jitter_ms,
            on(self.faults.path_ms),
            on(self.faults.device_stall_ms),
            on(self.faults.pause_ms),
            on(self.faults.clock_jump_ms),
            on(self.faults.crash_ms),
            on(self.faults.corruption_ms),
            self.faults.io_stall_chance,
            on(self.faults.spike_ms),
            self.faults.spike_max_tenths_of_t,
            self.faults.torn_writes,
            self.faults.impostor_chance,
            self.planted_bug.map(|b| b.name()).unwrap_or("none"),
        )
    }
}
