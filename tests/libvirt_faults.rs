//! libvirt misbehaving under the VM manager, on real processes: two hosts,
//! each a leaseholdd with its own unprivileged libvirtd running QEMU
//! guests and its ipmi_sim BMC; host 1 reaches its libvirtd through a
//! fault-injecting proxy (tests/support/libvirt_proxy.rs). Every check is
//! against the hypervisors themselves (`virsh domstate` on each libvirtd's
//! own socket), not only the leases: a VM never runs on two hosts.
//!
//! - a start whose answer is lost after QEMU started (the connection drops
//!   and libvirtd cannot be reached for a while): the lease stays held
//!   until libvirt says the VM runs, and no other host starts it;
//! - a self-fence while a start is in flight: no lease is given up until
//!   the start has returned and the VM is destroyed;
//! - a stopped (SIGSTOP) libvirtd: every call is bounded, the VM manager
//!   keeps answering, the lease of the hung start stays held, and the VM
//!   runs where its lease is once libvirtd resumes.

use leasehold_daemon::placement::Priority;
use leasehold_tests::cluster::{domstate, vm, Cluster, ClusterSpec};
use leasehold_tests::daemon::scribble_host_sector;
use leasehold_tests::libvirt_proxy::Faults;
use leasehold_tests::wait_long;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One cluster of real libvirtd at a time (two cores).
static SERIAL: Mutex<()> = Mutex::new(());

const CALL_TIMEOUT_MS: u64 = 2000;

fn cluster(label: &str) -> Cluster {
    let mut spec = ClusterSpec::qemu(2, 500, 1024);
    spec.proxied = vec![1];
    // An older daemon (LEASEHOLD_TEST_LEASEHOLDD) knows no call timeout.
    if std::env::var_os("LEASEHOLD_TEST_LEASEHOLDD").is_none() {
        spec.libvirt_call_timeout_ms = Some(CALL_TIMEOUT_MS);
    }
    Cluster::start(label, spec)
}

/// `virsh domstate` with a time limit ("" when libvirtd does not answer).
fn state_within(uri: &str, name: &str, limit_s: u32) -> String {
    let out = Command::new("timeout")
        .args([&limit_s.to_string(), "virsh", "-c", uri, "domstate", name])
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// When a sample was taken, and for each host whether its libvirtd ran
/// the domain then.
type Sample = (Instant, Vec<bool>);

/// Samples which hosts' libvirtd run a domain, until stopped.
struct Watch {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Watch `name` on `uris` (index 0 = host 1).
    fn start(uris: Vec<String>, name: &str) -> Watch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, name) = (Arc::clone(&samples), Arc::clone(&stop), name.to_string());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let at = Instant::now();
                let running: Vec<bool> = uris
                    .iter()
                    .map(|u| state_within(u, &name, 3) == "running")
                    .collect();
                s.lock().expect("samples").push((at, running));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watch {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<(Instant, Vec<bool>)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self.samples.lock().expect("samples").clone();
        samples
    }
}

/// No sample saw `name` running on two hosts at once.
fn assert_never_on_two_hosts(c: &Cluster, samples: &[Sample], name: &str) {
    let both = samples
        .iter()
        .position(|(_, running)| running.iter().filter(|r| **r).count() > 1);
    if let Some(i) = both {
        panic!(
            "{name} ran on both hosts (sample {i} of {}); host 1 log:\n{}",
            samples.len(),
            c.host(1).log()
        );
    }
}

fn owner(c: &Cluster, via: u32, name: &str) -> Option<u32> {
    c.vm_list(via)
        .and_then(|l| vm(&l, name).and_then(|v| v.owner_host_id))
}

fn uris(c: &Cluster) -> Vec<String> {
    (1..=c.spec.hosts).map(|i| c.uri(i)).collect()
}

#[test]
fn a_start_whose_answer_is_lost_keeps_its_lease_and_runs_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster("lvlost");
    let name = "lf-lost";
    c.proxy(1).set_faults(Faults {
        lose_start_reply_then_refuse: Some(Duration::from_secs(6)),
        ..Faults::default()
    });
    let watch = Watch::start(uris(&c), name);
    let added = c.add_vm(1, None, (name, 1, 64), Priority::High, false);
    assert!(
        c.proxy(1).logged("start reply").is_some(),
        "the proxy saw no start: {:?}",
        c.proxy(1).log()
    );
    // libvirt could not say: the add is not reported as a success.
    assert!(added.is_err(), "{added:?}");
    // Once libvirtd answers again, host 1 finds the VM running and keeps
    // it; host 2 never starts it.
    let settled = wait_long(Duration::from_secs(40), || {
        (domstate(&c.uri(1), name) == "running" && owner(&c, 2, name) == Some(1)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let samples = watch.stop();
    assert!(
        settled.is_some(),
        "the VM does not run on host 1 under host 1's lease; host 1: {}, host 2: {}, owner {:?}\n{}",
        domstate(&c.uri(1), name),
        domstate(&c.uri(2), name),
        owner(&c, 2, name),
        c.host(1).log()
    );
    assert_never_on_two_hosts(&c, &samples, name);
    assert_ne!(domstate(&c.uri(2), name), "running");
    assert!(c.host(1).has_event("vm-start-unknown"));
}

#[test]
fn a_self_fence_during_a_start_gives_no_lease_up_before_the_start_returned() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster("lvfence");
    let name = "lf-fence";
    let hold = Duration::from_secs(8);
    c.proxy(1).set_faults(Faults {
        delay_start: Some(hold),
        ..Faults::default()
    });
    let watch = Watch::start(uris(&c), name);
    let device = c.host(1).spec.device.clone();
    let add = {
        let xml = c.domain_xml(name, 2, 64);
        let socket = c.host(1).socket.clone();
        std::thread::spawn(move || {
            let mut client =
                leasehold_daemon::client::Client::connect(&socket, Some(Duration::from_secs(120)))
                    .expect("connect");
            client.call(&leasehold_daemon::protocol::Request::VmAdd {
                xml,
                priority: Some(Priority::High),
                restart: None,
                host: None,
                force: false,
            })
        })
    };
    // The start is in flight (held in the proxy): host 1 loses its lease.
    let seen = wait_long(Duration::from_secs(30), || c.proxy(1).logged("start call"))
        .expect("host 1 starts the VM");
    std::thread::sleep(Duration::from_millis(500));
    scribble_host_sector(&device, 1);
    wait_long(Duration::from_secs(10), || {
        c.host(1).has_event("self-fence").then_some(())
    })
    .expect("host 1 self-fences");
    let _ = add.join();
    let returned = wait_long(Duration::from_secs(30), || c.proxy(1).logged("start reply"));
    // After host 1 is done, host 2 runs the VM (once).
    let moved = wait_long(Duration::from_secs(60), || {
        (state_within(&c.uri(2), name, 3) == "running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let samples = watch.stop();
    let early: Vec<&Sample> = samples
        .iter()
        .filter(|(at, running)| *at < seen + hold && running[1])
        .collect();
    assert!(
        early.is_empty(),
        "host 2 ran {name} {:.1} s after host 1's start began, while that start was still in flight; host 1 log:\n{}",
        early
            .first()
            .map(|(at, _)| at.duration_since(seen).as_secs_f64())
            .unwrap_or(0.0),
        c.host(1).log()
    );
    assert_never_on_two_hosts(&c, &samples, name);
    assert!(returned.is_some(), "the held start never returned");
    assert!(
        moved.is_some(),
        "host 2 never ran {name}; host 2 log:\n{}",
        c.host(2).log()
    );
}

fn libvirtd_pid(c: &Cluster, id: u32) -> i32 {
    let path = c.host(id).dir.join("libvirt/libvirtd.hostpid");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("pid")
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a libvirtd this test started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Run `request` on host `id` in a thread; the reply if it comes within
/// `limit`.
fn call_within(
    c: &Cluster,
    id: u32,
    request: leasehold_daemon::protocol::Request,
    limit: Duration,
) -> Option<leasehold_daemon::protocol::Reply> {
    let socket = c.host(id).socket.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reply =
            leasehold_daemon::client::Client::connect(&socket, Some(Duration::from_secs(600)))
                .ok()
                .and_then(|mut client| client.call(&request).ok());
        let _ = sender.send(reply);
    });
    receiver.recv_timeout(limit).ok().flatten()
}

#[test]
fn a_stopped_libvirtd_neither_stalls_the_vm_manager_nor_frees_a_hung_starts_lease() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster("lvstop");
    let name = "lf-stop";
    let pid = libvirtd_pid(&c, 1);
    signal(pid, libc::SIGSTOP);
    let watch = Watch::start(vec![c.uri(2)], name);
    // Bounded: the add answers although libvirtd does not.
    let limit = Duration::from_millis(6 * CALL_TIMEOUT_MS + 10_000);
    let added = call_within(
        &c,
        1,
        leasehold_daemon::protocol::Request::VmAdd {
            xml: c.domain_xml(name, 3, 64),
            priority: Some(Priority::High),
            restart: None,
            host: None,
            force: false,
        },
        limit,
    );
    let Some(added) = added else {
        signal(pid, libc::SIGCONT);
        panic!("vm add on host 1 did not answer within {limit:?} while its libvirtd was stopped");
    };
    assert!(!added.ok, "{added:?}");
    // The VM manager still answers, and the hung start keeps its lease.
    for _ in 0..3 {
        let list = call_within(
            &c,
            1,
            leasehold_daemon::protocol::Request::VmList {},
            Duration::from_secs(10),
        );
        let Some(list) = list else {
            signal(pid, libc::SIGCONT);
            panic!("vm list on host 1 did not answer while its libvirtd was stopped");
        };
        assert!(list.ok, "{list:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        owner(&c, 2, name),
        Some(1),
        "the hung start's lease left host 1"
    );
    std::thread::sleep(Duration::from_millis(3 * CALL_TIMEOUT_MS));
    assert_eq!(
        owner(&c, 2, name),
        Some(1),
        "the hung start's lease left host 1"
    );
    signal(pid, libc::SIGCONT);
    let running = wait_long(Duration::from_secs(60), || {
        (domstate(&c.uri(1), name) == "running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let samples = watch.stop();
    assert!(
        running.is_some(),
        "{name} does not run on host 1 after its libvirtd resumed:\n{}",
        c.host(1).log()
    );
    assert_eq!(owner(&c, 2, name), Some(1));
    assert!(
        samples.iter().all(|(_, r)| !r[0]),
        "host 2 ran {name} while host 1 held its lease"
    );
    assert!(c.host(1).has_event("vm-start-unknown"));
}
