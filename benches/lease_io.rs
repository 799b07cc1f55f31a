//! Lease I/O benchmark: renew, host-area scan and resource acquire+release
//! next to the raw device floor measured in the same run, on a file and on a
//! loop device, with 64 and 2000 host slots, through both I/O engines.
//!
//! Run: `cargo bench -p leasehold-benches --bench lease_io` (as root for the
//! loop device). Environment: LEASEHOLD_BENCH_DIR (default /var/tmp),
//! LEASEHOLD_BENCH_ITERATIONS (default 300), LEASEHOLD_BENCH_HOSTS (default
//! "64,2000").

use lease::clock::{Clock, SystemClock};
use lease::delta::{self, JoinRequest, RenewRequest};
use lease::device::{self, FormatOptions};
use lease::disk::{DirectDisk, Disk, UringDisk};
use lease::format::{Capacity, FenceMethod, Geometry};
use lease::op::run;
use lease::paxos::{self, AcquireRequest, ReleaseRequest};
use lease::HostId;
use std::process::Command;
use std::time::Instant;

struct Stats {
    p50_us: f64,
    p99_us: f64,
}

fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

fn bench_device(label: &str, path: &str, max_hosts: u32, iterations: usize) {
    let geometry = Geometry::new(512, max_hosts, 1, 4096).expect("geometry");
    let format_start = Instant::now();
    {
        let disk = DirectDisk::open(path, Some(512)).expect("open");
        let options = FormatOptions {
            lockspace: "bench".to_string(),
            geometry,
            io_timeout_ms: 10_000,
        };
        device::format(&disk, &options).expect("format");
    }
    let format_s = format_start.elapsed().as_secs_f64();
    let engines: Vec<(&str, Box<dyn Disk>)> = vec![
        (
            "pread",
            Box::new(DirectDisk::open(path, Some(512)).expect("open")),
        ),
        (
            "uring",
            Box::new(UringDisk::open(path, Some(512), 10_000).expect("open")),
        ),
    ];
    for (engine, disk) in engines {
        let disk = disk.as_ref();
        let space = lease::Lockspace::open(disk, Some("bench")).expect("open lockspace");
        let clock = SystemClock;
        let host_id = HostId::new(1).expect("nonzero");
        let sector = vec![0u8; 512];
        let scratch_offset = geometry.host_offset_bytes(HostId::new(max_hosts).expect("nonzero"));
        let mut area = vec![0u8; geometry.host_area_size_bytes() as usize];
        let mut lease_image = vec![0u8; geometry.lease_size_bytes() as usize];
        let location = geometry.resource_lease(0);

        // Join once per engine (leaving at the end), with a short settle.
        let request = JoinRequest {
            host_id,
            host_name: "bench".to_string(),
            io_timeout_ms: 100,
            nonce: clock.now_ms(),
            capacity: Capacity::default(),
            watchdog: false,
            fence_method: FenceMethod::None,
            shared_settings: Default::default(),
        };
        let mut held = run(delta::join(&space, request), disk, &clock).expect("join");
        let owner = held.owner();
        let claimed = run(paxos::inquire(&space, location), disk, &clock)
            .expect("inquire")
            .leader
            .name
            == "vm1";
        let mut claim = !claimed;
        // One round of every operation per iteration, so machine noise hits
        // the floor and the protocol figures alike.
        let mut samples: [Vec<f64>; 6] = Default::default();
        let warmup = (iterations / 10).max(20);
        for i in 0..warmup + iterations {
            let mut timed = |k: usize, f: &mut dyn FnMut()| {
                let start = Instant::now();
                f();
                if i >= warmup {
                    samples[k].push(start.elapsed().as_secs_f64() * 1e6);
                }
            };
            timed(0, &mut || {
                disk.write(scratch_offset, &sector).expect("write")
            });
            timed(1, &mut || {
                disk.read(geometry.host_area_offset_bytes(), &mut area)
                    .expect("scan")
            });
            timed(2, &mut || {
                disk.read(location.leader_offset_bytes, &mut lease_image)
                    .expect("lease read")
            });
            timed(3, &mut || {
                held = run(
                    delta::renew(&space, &held, RenewRequest::default()),
                    disk,
                    &clock,
                )
                .expect("renew")
                .lease;
            });
            timed(4, &mut || {
                held = run(
                    delta::renew(
                        &space,
                        &held,
                        RenewRequest {
                            scan: true,
                            ..RenewRequest::default()
                        },
                    ),
                    disk,
                    &clock,
                )
                .expect("renew")
                .lease;
            });
            timed(5, &mut || {
                let request = AcquireRequest {
                    location,
                    owner,
                    name: "vm1".to_string(),
                    claim,
                    dead_hosts: Vec::new(),
                    io_timeout_ms: 100,
                    seed: 7,
                };
                let leader = run(paxos::acquire(&space, request), disk, &clock).expect("acquire");
                claim = false;
                let release = ReleaseRequest {
                    location,
                    owner,
                    lver: Some(leader.lver),
                    clear_name: false,
                    name: None,
                };
                run(paxos::release(&space, release), disk, &clock).expect("release");
            });
        }
        run(delta::leave(&space, &held), disk, &clock).expect("leave");
        let [write, scan, lease_read, renew, renew_scan, cycle] = samples.map(stats);
        let floor_us = 2.0 * (write.p50_us + lease_read.p50_us) + write.p50_us;
        println!(
            "{label:<6} {engine:<5} hosts={max_hosts:<5} | write {:>7.1}/{:>7.1} | scan {:>7.1}/{:>7.1} | lease-read {:>7.1}/{:>7.1} | renew {:>7.1}/{:>7.1} | renew+scan {:>7.1}/{:>7.1} | acq+rel {:>8.1}/{:>8.1} ({:>5.0}/s) | floor {:>7.1} ratio {:.2} | format {format_s:.1} s",
            write.p50_us, write.p99_us,
            scan.p50_us, scan.p99_us,
            lease_read.p50_us, lease_read.p99_us,
            renew.p50_us, renew.p99_us,
            renew_scan.p50_us, renew_scan.p99_us,
            cycle.p50_us, cycle.p99_us, 1e6 / cycle.p50_us,
            floor_us, cycle.p50_us / floor_us,
        );
    }
}

struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn main() {
    // cargo bench passes --bench; cargo test --benches passes nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::var("LEASEHOLD_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".to_string());
    let iterations: usize = std::env::var("LEASEHOLD_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let hosts: Vec<u32> = std::env::var("LEASEHOLD_BENCH_HOSTS")
        .unwrap_or_else(|_| "64,2000".to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    println!("lease I/O, {iterations} iterations each; figures are p50/p99 in microseconds");
    println!("floor = 2 x (sector write + lease read) + sector write: the I/O of one acquire+release at the device's speed");
    for &max_hosts in &hosts {
        let geometry = Geometry::new(512, max_hosts, 1, 4096).expect("geometry");
        let path = format!("{dir}/leasehold-bench-{max_hosts}.img");
        let file = std::fs::File::create(&path).expect("create bench file");
        file.set_len(geometry.device_size_bytes())
            .expect("size bench file");
        drop(file);
        bench_device("file", &path, max_hosts, iterations);
        let attached = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on", &path])
            .output();
        match attached {
            Ok(out) if out.status.success() => {
                let device = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
                bench_device("loop", &device.0, max_hosts, iterations);
            }
            other => println!("loop device skipped (losetup: {other:?})"),
        }
        let _ = std::fs::remove_file(&path);
    }
}
