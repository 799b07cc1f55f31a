//! Two survivors see the same silent host at once: exactly one wins its
//! fence lease and fences, every time. Real files, real threads, the
//! daemon's own election code; 60 rounds.

use lease::clock::SystemClock;
use lease::delta::{self, FenceMark, JoinRequest};
use lease::device::{self, FormatOptions};
use lease::disk::DirectDisk;
use lease::format::{Capacity, FenceMethod, Geometry};
use lease::op::run;
use lease::{HostId, Lockspace, Owner};
use leasehold_daemon::fencing::{self, Election};
use leasehold_tests::{sparse_file, Scratch};
use std::sync::{Arc, Barrier};

const T_MS: u32 = 100;

fn join(path: &str, space: &Lockspace, id: u32) -> Owner {
    let disk = DirectDisk::open(path, Some(512)).expect("open");
    let request = JoinRequest {
        host_id: HostId::new(id).expect("id"),
        host_name: format!("host{id}"),
        io_timeout_ms: T_MS,
        nonce: lease::ids::random_u64(),
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::Ipmi,
        shared_settings: Default::default(),
    };
    run(delta::join(space, request), &disk, &SystemClock)
        .expect("join")
        .owner()
}

#[test]
fn two_survivors_never_both_fence_one_host() {
    let scratch = Scratch::new("election");
    let path = scratch.file("lease.img");
    let geometry = Geometry::new(512, 8, 2, 4096).expect("geometry");
    sparse_file(&path, geometry.device_size_bytes());
    let space = {
        let disk = DirectDisk::open(&path, Some(512)).expect("open");
        device::format(
            &disk,
            &FormatOptions {
                lockspace: "fence".to_string(),
                geometry,
                io_timeout_ms: T_MS,
            },
        )
        .expect("format")
    };
    let survivors = [join(&path, &space, 2), join(&path, &space, 3)];
    let victim = HostId::new(1).expect("id");
    let mut fenced_by = [0u32; 2];
    for round in 0..60 {
        // The victim (re)joins: a new generation to fence.
        let generation = join(&path, &space, 1).generation;
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = survivors
            .iter()
            .map(|owner| {
                let (path, space, owner, barrier) =
                    (path.clone(), space.clone(), *owner, Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let disk = DirectDisk::open(&path, Some(512)).expect("open");
                    barrier.wait();
                    match fencing::elect(&disk, &space, owner, victim, generation, Vec::new()) {
                        Ok(Election::Won(leader)) => {
                            // "Fence": hold the lease a moment, mark, release.
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            let mark = FenceMark {
                                victim,
                                generation,
                                fencer: owner.host_id,
                                method: FenceMethod::Ipmi,
                            };
                            run(delta::mark_fenced(&space, mark), &disk, &SystemClock)
                                .expect("mark");
                            fencing::release(&disk, &space, owner, victim, &leader);
                            true
                        }
                        Ok(Election::Lost { .. }) | Ok(Election::Moot(_)) => false,
                        Err(e) => panic!("round {round}: election failed: {e}"),
                    }
                })
            })
            .collect();
        let won: Vec<bool> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: fencers {won:?}"
        );
        for (i, w) in won.iter().enumerate() {
            if *w {
                fenced_by[i] += 1;
            }
        }
        let disk = DirectDisk::open(&path, Some(512)).expect("open");
        let record = run(space.read_host_op(victim), &disk, &SystemClock).expect("read");
        assert!(record.flags.fenced && record.fenced_generation == generation);
    }
    eprintln!(
        "fenced by host 2: {}, by host 3: {}",
        fenced_by[0], fenced_by[1]
    );
}
