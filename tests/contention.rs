//! Contention: several processes acquire one resource at the same instant,
//! round after round; exactly one wins each round.

use leasehold_tests::{dump_json, leasehold_bin, leasehold_ok, sparse_file, LoopDevice, Scratch};
use std::process::Command;
use std::sync::{Arc, Barrier};

const PROCESSES: usize = 4;
const ROUNDS: usize = 200;

fn contend(device: &str) {
    leasehold_ok(&[
        "format",
        device,
        "--lockspace",
        "contend",
        "--max-hosts",
        "8",
        "--max-resources",
        "4",
        "--io-timeout",
        "0.1",
        "--force",
    ]);
    for id in 1..=PROCESSES {
        leasehold_ok(&[
            "direct",
            "join",
            device,
            "--host-id",
            &id.to_string(),
            "--host-name",
            &format!("host{id}"),
        ]);
    }
    let bin = leasehold_bin();
    let mut wins = [0usize; PROCESSES];
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(PROCESSES));
        let handles: Vec<_> = (1..=PROCESSES)
            .map(|id| {
                let barrier = Arc::clone(&barrier);
                let bin = bin.clone();
                let device = device.to_string();
                std::thread::spawn(move || {
                    let mut command = Command::new(bin);
                    command.args([
                        "direct",
                        "acquire",
                        &device,
                        "--host-id",
                        &id.to_string(),
                        "--resource",
                        "vm1",
                    ]);
                    barrier.wait();
                    command.output().expect("run leasehold")
                })
            })
            .collect();
        let outputs: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let codes: Vec<Option<i32>> = outputs.iter().map(|o| o.status.code()).collect();
        let winners: Vec<usize> = codes
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == Some(0))
            .map(|(i, _)| i + 1)
            .collect();
        let busy = codes.iter().filter(|c| **c == Some(3)).count();
        assert_eq!(
            (winners.len(), busy),
            (1, PROCESSES - 1),
            "round {round}: exit codes {codes:?}; stderr: {:?}",
            outputs
                .iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .collect::<Vec<_>>()
        );
        let winner = winners[0];
        let dump = dump_json(device);
        assert_eq!(
            dump["resources"][0]["owner_host_id"], winner,
            "round {round}: the leader names the winner"
        );
        assert_eq!(
            dump["resources"].as_array().map(Vec::len),
            Some(1),
            "round {round}: one slot for vm1"
        );
        wins[winner - 1] += 1;
        leasehold_ok(&[
            "direct",
            "release",
            device,
            "--host-id",
            &winner.to_string(),
            "--resource",
            "vm1",
        ]);
    }
    eprintln!("{device}: wins per host over {ROUNDS} rounds: {wins:?}");
}

#[test]
fn one_winner_per_round_on_a_file() {
    let scratch = Scratch::new("contend-file");
    let path = scratch.file("lease.img");
    sparse_file(&path, 1 << 20);
    contend(&path);
}

#[test]
fn one_winner_per_round_on_a_loop_device() {
    let scratch = Scratch::new("contend-loop");
    let backing = scratch.file("backing.img");
    sparse_file(&backing, 8 << 20);
    let Some(device) = LoopDevice::attach(&backing, 512) else {
        return;
    };
    contend(&device.path);
}
