//! The daemons on real shared storage: an iSCSI LUN served by tgt and a
//! Ceph RBD image, each host reaching it through its own userspace client
//! in its own network namespace (tests/support/san.rs). On each:
//!
//! - `leasehold format` and `dump` through a host's path (sector size
//!   detected), three daemons join, and a host with three HA VMs powered
//!   off through its BMC: every VM runs again exactly once;
//! - one host's path cut while its VMs run: it self-fences and destroys
//!   them before any survivor starts them, the survivors fence it and
//!   restart them, and once the path is back and the host powered on it
//!   joins with a new generation;
//! - the whole storage stalled for 3 x the expiry (tgtd or the OSD
//!   stopped): no fence, no VM destroyed, everyone live afterwards;
//! - on iSCSI, a LUN of 4096-byte logical blocks end to end.
//!
//! Each storage is brought up once and its scenarios run one after the
//! other, each on a freshly formatted device and fresh paths.

use leasehold_daemon::placement::Priority;
use leasehold_daemon::protocol::Event;
use leasehold_tests::cluster::{vm, Cluster, ClusterSpec};
use leasehold_tests::daemon::{reformat_test_device_with, Host};
use leasehold_tests::san::{CephCluster, IscsiTarget, SanPath};
use leasehold_tests::{dump_json, leasehold, wait_long};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T_MS: u32 = 500;
const NAMES: [&str; 3] = ["vm-high", "vm-medium", "vm-low"];
const MAX_RESOURCES: u32 = 16;
const LUN_BYTES: u64 = 64 << 20;

/// The storage under test: how to get a host's path, and how to stall it.
trait Storage {
    fn label(&self) -> &'static str;
    fn path(&self, host_id: u32) -> SanPath;
    fn pause(&self);
    fn resume(&self);
}

impl Storage for IscsiTarget {
    fn label(&self) -> &'static str {
        if self.block_size_bytes == 4096 {
            "iscsi-4k"
        } else {
            "iscsi"
        }
    }
    fn path(&self, host_id: u32) -> SanPath {
        IscsiTarget::path(self, host_id)
    }
    fn pause(&self) {
        IscsiTarget::pause(self);
    }
    fn resume(&self) {
        IscsiTarget::resume(self);
    }
}

impl Storage for CephCluster {
    fn label(&self) -> &'static str {
        "rbd"
    }
    fn path(&self, host_id: u32) -> SanPath {
        CephCluster::path(self, host_id)
    }
    fn pause(&self) {
        CephCluster::pause(self);
    }
    fn resume(&self) {
        CephCluster::resume(self);
    }
}

/// Three hosts, each on its own path; fields drop in order (the daemons
/// before their paths).
struct SanCluster {
    cluster: Cluster,
    paths: BTreeMap<u32, SanPath>,
}

/// Format the device through host 1's path, check `dump` reads it back
/// with the sector size the device reports, and start three daemons on
/// their own paths, host 1 holding three HA VMs.
fn san_cluster(
    storage: &dyn Storage,
    sector_size_bytes: u32,
    watchdog_hosts: &[u32],
) -> SanCluster {
    let paths: BTreeMap<u32, SanPath> = (1..=3).map(|id| (id, storage.path(id))).collect();
    let device1 = paths[&1].device().to_string();
    reformat_test_device_with(&device1, MAX_RESOURCES);
    // Every path sees the same device, at the device's own sector size.
    for path in paths.values() {
        let dump = dump_json(path.device());
        assert_eq!(dump["lockspace"], "test", "{}", storage.label());
        assert_eq!(dump["sector_size_bytes"], sector_size_bytes, "{dump}");
    }
    let mut spec = ClusterSpec::test_driver(T_MS, 2048);
    spec.max_resources = MAX_RESOURCES;
    spec.watchdog_hosts = watchdog_hosts.to_vec();
    spec.host_devices = paths
        .iter()
        .map(|(id, p)| (*id, p.device().to_string()))
        .collect();
    let cluster = Cluster::start(&format!("san-{}", storage.label()), spec);
    for (i, name) in NAMES.iter().enumerate() {
        let index = u32::try_from(i).expect("index");
        let priority = [Priority::High, Priority::Medium, Priority::Low][i];
        cluster
            .add_vm(1, None, (name, index, 256), priority, false)
            .unwrap_or_else(|e| panic!("{}: vm add {name}: {e:?}", storage.label()));
    }
    SanCluster { cluster, paths }
}

fn events(hosts: &[Host], kind: &str) -> Vec<Event> {
    let mut all: Vec<Event> = hosts
        .iter()
        .flat_map(|h| h.events())
        .filter(|e| e.kind == kind)
        .collect();
    all.sort_by(|a, b| a.time.cmp(&b.time));
    all
}

/// Each VM started exactly once on the survivors (hosts 2 and 3).
fn each_started_once_on_survivors(c: &Cluster, label: &str) {
    let starts = events(&c.hosts[1..], "vm-started");
    for name in NAMES {
        let count = starts
            .iter()
            .filter(|e| e.message.starts_with(&format!("{name} ")))
            .count();
        assert_eq!(
            count, 1,
            "{label}: {name} started {count} times: {starts:?}"
        );
    }
}

fn power_off_failover(storage: &dyn Storage, sector_size_bytes: u32) {
    let label = storage.label();
    let mut s = san_cluster(storage, sector_size_bytes, &[]);
    let c = &mut s.cluster;
    c.power_off_via_bmc(1);
    let placed = c
        .wait_running_elsewhere(2, &NAMES, 1, Duration::from_secs(90))
        .unwrap_or_else(|| {
            panic!(
                "{label}: VMs not restarted: {:?}\n{:?}",
                c.vm_list(2),
                c.host(2).events()
            )
        });
    each_started_once_on_survivors(c, label);
    assert_eq!(
        events(&c.hosts[1..], "fenced").len(),
        1,
        "{label}: one fence"
    );
    for name in NAMES {
        assert_ne!(vm(&placed, name).and_then(|v| v.owner_host_id), Some(1));
    }
}

fn path_loss(storage: &dyn Storage) {
    let label = storage.label();
    // Host 1 has a watchdog: a host that cannot renew self-fences
    // (without one it keeps its VMs until a fencer powers it off).
    let s = san_cluster(storage, 512, &[1]);
    let c = &s.cluster;
    let generation = c.host(1).wait_joined().lockspaces[0].generation;
    let cut_at = Instant::now();
    s.paths[&1].netns.cut();
    let placed = c
        .wait_running_elsewhere(2, &NAMES, 1, Duration::from_secs(120))
        .unwrap_or_else(|| {
            panic!(
                "{label}: VMs not restarted after host 1 lost its path: {:?}\nhost 1:\n{}",
                c.vm_list(2),
                c.host(1).log()
            )
        });
    eprintln!(
        "{label}: path cut -> every VM running elsewhere: {} ms",
        cut_at.elapsed().as_millis()
    );
    // Host 1 gave its VMs up before any survivor started one.
    let destroyed = events(&c.hosts[..1], "vm-destroyed");
    let first_start = events(&c.hosts[1..], "vm-started")
        .first()
        .map(|e| e.time.clone())
        .expect("a start");
    assert!(
        c.host(1).has_event("self-fence"),
        "{label}: host 1 self-fenced:\n{}",
        c.host(1).log()
    );
    assert_eq!(
        destroyed.len(),
        3,
        "{label}: host 1 destroyed its VMs: {destroyed:?}"
    );
    for d in &destroyed {
        assert!(
            d.time < first_start,
            "{label}: {} destroyed at {} after a survivor started one at {first_start}",
            d.message,
            d.time
        );
    }
    each_started_once_on_survivors(c, label);
    assert!(
        events(&c.hosts[1..], "fenced").len() <= 1,
        "{label}: at most one fence"
    );
    assert_eq!(placed.vms.len(), 3);

    // The path comes back (and host 1 is powered on if it was fenced): a
    // new generation.
    s.paths[&1].netns.restore();
    if !c.host(1).bmc.as_ref().is_some_and(|b| b.powered()) {
        let socket = c.host(2).socket.to_string_lossy().into_owned();
        let on = leasehold(&["fence", "on", "host1", "--socket", &socket]);
        assert!(
            on.status.success(),
            "{}",
            String::from_utf8_lossy(&on.stderr)
        );
    }
    let back = wait_long(Duration::from_secs(60), || {
        c.host(1)
            .status()
            .filter(|st| st.lockspaces[0].state == "joined")
    })
    .unwrap_or_else(|| panic!("{label}: host 1 never rejoined:\n{}", c.host(1).log()));
    assert!(back.lockspaces[0].generation > generation);
    wait_long(Duration::from_secs(30), || {
        c.host(2).host_state(1).filter(|h| h.state == "live")
    })
    .unwrap_or_else(|| panic!("{label}: host 2 never saw host 1 live again"));
}

fn whole_storage_stall(storage: &dyn Storage) {
    let label = storage.label();
    // Fence mode (no watchdog): a stall kills nothing.
    let s = san_cluster(storage, 512, &[]);
    let c = &s.cluster;
    // 3 x the fence-mode expiry (6T).
    let stall = Duration::from_millis(3 * 6 * u64::from(T_MS));
    storage.pause();
    std::thread::sleep(stall);
    storage.resume();
    for h in &c.hosts {
        wait_long(Duration::from_secs(60), || {
            let hosts = h.hosts();
            (hosts.iter().filter(|x| x.state == "live").count() == 3).then_some(())
        })
        .unwrap_or_else(|| panic!("{label}: not everyone live again: {:?}", h.hosts()));
    }
    for kind in [
        "fencing",
        "fenced",
        "host-silent",
        "vm-destroyed",
        "self-fence",
    ] {
        assert!(
            events(&c.hosts, kind).is_empty(),
            "{label}: {kind} during a whole-storage stall: {:?}",
            events(&c.hosts, kind)
        );
    }
    // Every VM still runs where it ran, under the same lease.
    wait_long(Duration::from_secs(30), || {
        let l = c.vm_list(2)?;
        NAMES
            .iter()
            .all(|name| {
                vm(&l, name).is_some_and(|v| v.state == "running" && v.owner_host_id == Some(1))
            })
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{label}: VMs moved or stopped after the stall: {:?}\n{:?}",
            c.host(2)
                .call(&leasehold_daemon::protocol::Request::VmList {}),
            c.host(1).events()
        )
    });
}

/// One storage at a time: three daemons with their clients, and Ceph,
/// are all the two cores here carry with T = 500 ms.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn iscsi_lun_through_tgt() {
    let _one = one_at_a_time();
    let target = IscsiTarget::start(LUN_BYTES, 512);
    power_off_failover(&target, 512);
    path_loss(&target);
    whole_storage_stall(&target);
}

#[test]
fn iscsi_lun_of_4096_byte_blocks_through_tgt() {
    let _one = one_at_a_time();
    let target = IscsiTarget::start(LUN_BYTES, 4096);
    power_off_failover(&target, 4096);
}

#[test]
fn ceph_rbd_image() {
    let _one = one_at_a_time();
    let ceph = CephCluster::start(LUN_BYTES);
    power_off_failover(&ceph, 512);
    path_loss(&ceph);
    whole_storage_stall(&ceph);
}
