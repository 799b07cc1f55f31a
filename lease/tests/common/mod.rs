//! Test helpers: an in-memory lockspace and an interleaving driver.
#![allow(dead_code)]

use lease::clock::{Clock, TestClock};
use lease::delta::{self, DeltaLease, JoinRequest};
use lease::device::{self, FormatOptions};
use lease::disk::MemoryDisk;
use lease::format::{Capacity, FenceMethod, Geometry};
use lease::op::{perform, run, Operation, Step};
use lease::{HostId, Lockspace};

pub const IO_TIMEOUT_MS: u32 = 1000;

pub struct Setup {
    pub disk: MemoryDisk,
    pub space: Lockspace,
    pub clock: TestClock,
}

pub fn setup(max_hosts: u32, max_resources: u32) -> Setup {
    setup_with_payload(max_hosts, max_resources, 4096)
}

pub fn setup_with_payload(max_hosts: u32, max_resources: u32, payload_size_bytes: u32) -> Setup {
    let geometry =
        Geometry::new(512, max_hosts, max_resources, payload_size_bytes).expect("geometry");
    let disk = MemoryDisk::new("mem0", 512, geometry.device_size_bytes() as usize);
    let options = FormatOptions {
        lockspace: "test".to_string(),
        geometry,
        io_timeout_ms: IO_TIMEOUT_MS,
    };
    let space = device::format(&disk, &options).expect("format");
    Setup {
        disk,
        space,
        clock: TestClock::new(1_000_000),
    }
}

pub fn host(raw: u32) -> HostId {
    HostId::new(raw).expect("nonzero host id")
}

pub fn join_request(raw: u32, name: &str) -> JoinRequest {
    JoinRequest {
        host_id: host(raw),
        host_name: name.to_string(),
        io_timeout_ms: IO_TIMEOUT_MS,
        nonce: u64::from(raw) * 7919,
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    }
}

impl Setup {
    pub fn run<T>(&self, op: Operation<T>) -> T {
        run(op, &self.disk, &self.clock)
    }

    pub fn join(&self, raw: u32, name: &str) -> DeltaLease {
        self.run(delta::join(&self.space, join_request(raw, name)))
            .expect("join")
    }
}

/// Drive several operations at once, choosing which one takes its next step
/// from `seed`; time jumps to the earliest deadline when all are waiting.
pub fn run_interleaved<T>(
    ops: Vec<Operation<T>>,
    disk: &MemoryDisk,
    clock: &TestClock,
    seed: u64,
) -> Vec<T> {
    let mut rng = seed.wrapping_add(0x2545_F491_4F6C_DD1D);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ops: Vec<Operation<T>> = ops;
    let mut steps: Vec<Option<Step<T>>> = ops
        .iter_mut()
        .map(|op| Some(op.step(clock.now_ms(), None)))
        .collect();
    let mut results: Vec<Option<T>> = ops.iter().map(|_| None).collect();
    for _ in 0..1_000_000 {
        for i in 0..ops.len() {
            if matches!(steps[i], Some(Step::Done(_))) {
                if let Some(Step::Done(value)) = steps[i].take() {
                    results[i] = Some(value);
                }
            }
        }
        let ready: Vec<usize> = (0..ops.len())
            .filter(|&i| match &steps[i] {
                Some(Step::Io(_)) => true,
                Some(Step::WaitUntil(t)) => *t <= clock.now_ms(),
                _ => false,
            })
            .collect();
        if ready.is_empty() {
            let earliest = steps
                .iter()
                .filter_map(|s| match s {
                    Some(Step::WaitUntil(t)) => Some(*t),
                    _ => None,
                })
                .min();
            match earliest {
                Some(t) => {
                    clock.set_ms(t);
                    continue;
                }
                None => break,
            }
        }
        let i = ready[(next() % ready.len() as u64) as usize];
        let step = steps[i].take().expect("ready step");
        let outcome = match step {
            Step::Io(io) => Some(perform(disk, io)),
            _ => None,
        };
        clock.advance_ms(next() % 3);
        steps[i] = Some(ops[i].step(clock.now_ms(), outcome));
    }
    results
        .into_iter()
        .map(|r| r.expect("operation finished"))
        .collect()
}
