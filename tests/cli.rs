//! The `leasehold` CLI on a file-backed lease device: refusals, exit
//! statuses, and corrupted sectors.

use leasehold_tests::{dump_json, leasehold, leasehold_ok, Scratch};
use std::os::unix::fs::FileExt;

fn formatted(scratch: &Scratch) -> String {
    let path = scratch.file("lease.img");
    leasehold_ok(&[
        "format",
        &path,
        "--create",
        "16M",
        "--lockspace",
        "clitest",
        "--max-hosts",
        "8",
        "--max-resources",
        "4",
        "--io-timeout",
        "0.1",
    ]);
    path
}

/// `leasehold direct join|renew|leave PATH --host-id ID --host-name NAME`.
fn host_op(op: &str, path: &str, id: &str, name: &str) {
    leasehold_ok(&["direct", op, path, "--host-id", id, "--host-name", name]);
}

fn join(path: &str, id: &str, name: &str) {
    host_op("join", path, id, name);
}

/// `leasehold direct acquire PATH --host-id HOST --resource RESOURCE`.
fn direct_acquire(path: &str, host_id: &str, resource: &str) -> std::process::Output {
    leasehold(&[
        "direct",
        "acquire",
        path,
        "--host-id",
        host_id,
        "--resource",
        resource,
    ])
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn flip_byte(path: &str, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read");
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).expect("write");
}

#[test]
fn format_refuses_to_overwrite_without_force() {
    let scratch = Scratch::new("overwrite");
    let path = formatted(&scratch);
    join(&path, "1", "alpha");
    let out = leasehold(&["format", &path, "--lockspace", "other"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--force"), "{}", stderr_of(&out));
    assert_eq!(
        dump_json(&path)["hosts"][0]["name"],
        "alpha",
        "nothing was overwritten"
    );
    leasehold_ok(&[
        "format",
        &path,
        "--lockspace",
        "other",
        "--max-hosts",
        "8",
        "--max-resources",
        "4",
        "--force",
    ]);
    let dump = dump_json(&path);
    assert_eq!(dump["lockspace"], "other");
    assert_eq!(dump["hosts"].as_array().map(Vec::len), Some(0));
}

#[test]
fn exit_statuses_say_busy_and_lost() {
    let scratch = Scratch::new("exit");
    let path = formatted(&scratch);
    join(&path, "1", "alpha");
    join(&path, "2", "bravo");
    leasehold_ok(&[
        "direct",
        "acquire",
        &path,
        "--host-id",
        "1",
        "--resource",
        "vm1",
    ]);
    let out = leasehold(&[
        "direct",
        "acquire",
        &path,
        "--host-id",
        "2",
        "--resource",
        "vm1",
    ]);
    assert_eq!(out.status.code(), Some(3), "busy: {}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("held by host 1 (alpha)"),
        "{}",
        stderr_of(&out)
    );
    let out = leasehold(&[
        "direct",
        "release",
        &path,
        "--host-id",
        "2",
        "--resource",
        "vm1",
    ]);
    assert_eq!(out.status.code(), Some(5), "not ours: {}", stderr_of(&out));
    leasehold_ok(&[
        "direct",
        "release",
        &path,
        "--host-id",
        "1",
        "--resource",
        "vm1",
    ]);
    let dump = dump_json(&path);
    assert_eq!(dump["resources"][0]["held"], false, "{dump}");
    assert_eq!(dump["resources"][0]["flags"][0], "released", "{dump}");
    leasehold_ok(&[
        "direct",
        "acquire",
        &path,
        "--host-id",
        "2",
        "--resource",
        "vm1",
    ]);
    let dump = dump_json(&path);
    assert_eq!(dump["resources"][0]["owner_host_id"], 2);
    assert_eq!(dump["resources"][0]["lver"], 2);
    assert_eq!(dump["resources"][0]["held"], true);
    // A host that never joined cannot acquire.
    let out = leasehold(&[
        "direct",
        "acquire",
        &path,
        "--host-id",
        "5",
        "--resource",
        "vm2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("has not joined"),
        "{}",
        stderr_of(&out)
    );
    // Renew and leave by the wrong name are refused.
    let out = leasehold(&[
        "direct",
        "renew",
        &path,
        "--host-id",
        "1",
        "--host-name",
        "impostor",
    ]);
    assert_eq!(out.status.code(), Some(1));
    leasehold_ok(&[
        "direct",
        "renew",
        &path,
        "--host-id",
        "1",
        "--host-name",
        "alpha",
    ]);
    host_op("leave", &path, "1", "alpha");
    assert_eq!(dump_json(&path)["hosts"][0]["flags"][0], "released");
    // Bad flags are a usage error.
    assert_eq!(leasehold(&["direct", "join", &path]).status.code(), Some(2));
    assert_eq!(
        leasehold(&["format", &path, "--lockspace", "x", "--sector-size", "1024"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn corrupted_sectors_are_reported_and_never_used() {
    let scratch = Scratch::new("corrupt");
    let path = formatted(&scratch);
    join(&path, "1", "alpha");
    join(&path, "2", "bravo");
    leasehold_ok(&[
        "direct",
        "acquire",
        &path,
        "--host-id",
        "1",
        "--resource",
        "vm1",
    ]);
    let before = dump_json(&path);
    let host2_offset = before["hosts"][1]["offset_bytes"].as_u64().expect("offset");
    let slot0_offset = before["resources"][0]["offset_bytes"]
        .as_u64()
        .expect("offset");
    flip_byte(&path, host2_offset + 150);
    flip_byte(&path, slot0_offset + 130);

    let dump = dump_json(&path);
    let hosts = dump["hosts"].as_array().expect("hosts");
    let bad_host = hosts
        .iter()
        .find(|h| h["host_id"] == 2)
        .expect("host 2 listed");
    assert!(
        bad_host["error"]
            .as_str()
            .expect("error")
            .contains("checksum"),
        "{bad_host}"
    );
    let bad_slot = &dump["resources"][0];
    assert!(
        bad_slot["error"]
            .as_str()
            .expect("error")
            .contains("checksum"),
        "{bad_slot}"
    );
    assert_eq!(bad_slot["offset_bytes"], slot0_offset);

    let table = leasehold_ok(&["dump", &path]);
    assert_eq!(table.matches("UNUSABLE").count(), 2, "{table}");

    // The corrupt slot is not free, and no name whose window (its probe
    // sequence up to a never-owned slot) reaches it is claimed: it might
    // hold that name.
    let vm1_slot = (0..4)
        .find(|slot| before["resources"][*slot]["name"] == "vm1")
        .expect("vm1 in a slot");
    let home = |slot: u32| {
        (0..1000)
            .map(|n| format!("vm-{n}"))
            .find(|name| lease::resource::home_slot(name, 4) == slot)
            .expect("a name for each home slot")
    };
    let out = direct_acquire(&path, "1", &home(0));
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("might hold that name"),
        "{}",
        stderr_of(&out)
    );
    // A name whose home slot was never owned stops there: the corrupt slot
    // is outside its window, and it is claimed.
    let clear = (1..4u32)
        .find(|slot| *slot as usize != vm1_slot)
        .map(home)
        .expect("a slot other than vm1's");
    let out = direct_acquire(&path, "1", &clear);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    // The corrupt host sector is not free for a joiner either.
    let out = leasehold(&[
        "direct",
        "join",
        &path,
        "--host-id",
        "2",
        "--host-name",
        "charlie",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("offset {host2_offset}")),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_sector_from_another_lockspace_is_foreign() {
    let scratch = Scratch::new("foreign");
    let path = formatted(&scratch);
    let other = scratch.file("other.img");
    leasehold_ok(&[
        "format",
        &other,
        "--create",
        "16M",
        "--lockspace",
        "elsewhere",
        "--max-hosts",
        "8",
        "--max-resources",
        "4",
    ]);
    // Copy host sector 3 of the other lockspace over ours.
    let offset = dump_json(&path)["hosts"]
        .as_array()
        .map(|_| 512u64 * 3)
        .expect("offset");
    let mut sector = vec![0u8; 512];
    std::fs::File::open(&other)
        .expect("open")
        .read_exact_at(&mut sector, offset)
        .expect("read");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .write_all_at(&sector, offset)
        .expect("write");
    let dump = dump_json(&path);
    let hosts = dump["hosts"].as_array().expect("hosts");
    let foreign = hosts
        .iter()
        .find(|h| h["host_id"] == 3)
        .expect("host 3 listed");
    assert!(
        foreign["error"]
            .as_str()
            .expect("error")
            .contains("elsewhere"),
        "{foreign}"
    );
    let out = leasehold(&[
        "direct",
        "join",
        &path,
        "--host-id",
        "3",
        "--host-name",
        "charlie",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
}

#[test]
fn dump_into_a_closed_pipe_ends_quietly() {
    let scratch = Scratch::new("cli-epipe");
    let path = scratch.file("big.img");
    // 1000 host rows: more than a pipe holds.
    leasehold_ok(&[
        "format",
        &path,
        "--create",
        "600M",
        "--lockspace",
        "pipe",
        "--max-hosts",
        "1000",
    ]);
    let mut child = std::process::Command::new(leasehold_tests::leasehold_bin())
        .args(["dump", "--all", &path])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn leasehold dump");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
        .expect("read the first line");
    // The reader is gone (as `| head -1` leaves it).
    let out = child.wait_with_output().expect("wait");
    assert!(first.starts_with("device"), "{first}");
    assert!(out.status.success(), "status {:?}", out.status);
    assert_eq!(stderr_of(&out), "", "a closed pipe must end quietly");
}

#[test]
fn errors_say_their_cause_once() {
    let scratch = Scratch::new("cli-cause-once");
    let socket = scratch.file("no-daemon.sock");
    let missing = scratch.file("missing.img");
    for args in [
        vec!["status", "--socket", socket.as_str()],
        vec!["dump", missing.as_str()],
    ] {
        let out = leasehold(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = stderr_of(&out);
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{args:?}: {stderr}"
        );
        let named = if args[0] == "status" {
            &socket
        } else {
            &missing
        };
        assert_eq!(
            stderr.matches(named.as_str()).count(),
            1,
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn dump_tells_live_silent_released_and_fenced_hosts_and_fits_80_columns() {
    let scratch = Scratch::new("cli-dump-states");
    let path = formatted(&scratch);
    join(&path, "1", "renewing-host-with-a-long-name");
    join(&path, "2", "stopped");
    join(&path, "3", "leaving");
    host_op("leave", &path, "3", "leaving");
    let renewing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewer = {
        let (path, renewing) = (path.clone(), std::sync::Arc::clone(&renewing));
        std::thread::spawn(move || {
            while renewing.load(std::sync::atomic::Ordering::SeqCst) {
                host_op("renew", &path, "1", "renewing-host-with-a-long-name");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let settled: serde_json::Value =
        serde_json::from_str(&leasehold_ok(&["dump", "--settle", "--json", &path]))
            .expect("dump --json");
    let table = leasehold_ok(&["dump", "--settle", &path]);
    let once = leasehold_ok(&["dump", &path]);
    renewing.store(false, std::sync::atomic::Ordering::SeqCst);
    renewer.join().expect("renewer");
    let state = |id: u64| {
        settled["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["host_id"] == id))
            .map(|h| h["state"].clone())
    };
    assert_eq!(state(1), Some("live".into()), "{settled}");
    assert_eq!(state(2), Some("silent".into()), "{settled}");
    assert_eq!(state(3), Some("released".into()), "{settled}");
    // Every line but the device's path (the operator's own length).
    for line in table
        .lines()
        .chain(once.lines())
        .filter(|l| !l.starts_with("device "))
    {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }
    assert!(table.contains(" live "), "{table}");
    // One read cannot judge the two running records, and says so.
    assert!(once.contains("add --settle"), "{once}");
}
