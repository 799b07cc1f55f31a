//! Real shared storage for the daemons: an iSCSI target (tgt) and a
//! one-node Ceph cluster (ceph-mon, one ceph-osd on a bluestore file),
//! each reached by every simulated host through a client of its own.
//!
//! The kernel here has neither an iSCSI initiator nor krbd, so each host's
//! path is userspace: `qemu-storage-daemon` (libiscsi or librbd, with
//! `cache.direct=on`) exports the LUN or image through FUSE as a file, and
//! a loop device with direct I/O sits on that file. Each host's client runs
//! in a network namespace of its own, joined to the machine by a veth pair:
//! taking that link down is one host losing its storage path while the
//! others keep theirs. The servers listen on 10.77.0.1, an address on the
//! machine's loopback that every namespace routes to.
//!
//! Every process is started and stopped by PID; everything is torn down on
//! drop.

use crate::{wait_long, LoopDevice, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where the storage servers listen, from every host's namespace.
pub const SERVER_IP: &str = "10.77.0.1";

fn run(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    );
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) of a child we started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn stop(child: &mut Child) {
    signal(child.id(), libc::SIGCONT);
    let _ = child.kill();
    let _ = child.wait();
}

/// SERVER_IP on the machine's loopback, once per process (left in place:
/// other tests of the run may use it; it routes nowhere else).
fn server_address() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let _ = Command::new("ip")
            .args(["addr", "add", &format!("{SERVER_IP}/32"), "dev", "lo"])
            .output();
    });
}

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

/// One host's network namespace, linked to the machine by a veth pair.
pub struct Netns {
    pub name: String,
    veth_outside: String,
}

impl Netns {
    pub fn create() -> Netns {
        server_address();
        // Unique within this process; test binaries run one at a time.
        let index = NAMESPACES.fetch_add(1, Ordering::SeqCst) % 200 + 1;
        let name = format!("lhsan{index}");
        let (outside, inside) = (format!("lhso{index}"), format!("lhsi{index}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &outside]).output();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("10.78.{index}.1/24"),
            "dev",
            &outside,
        ]);
        ip(&["link", "set", &outside, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("10.78.{index}.2/24"),
            "dev",
            &inside,
        ]);
        ip(&["-n", &name, "link", "set", &inside, "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &format!("10.78.{index}.1"),
        ]);
        Netns {
            name,
            veth_outside: outside,
        }
    }

    /// The host loses its storage path: nothing crosses the link.
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth_outside, "down"]);
    }

    /// The path comes back.
    pub fn restore(&self) {
        ip(&["link", "set", &self.veth_outside, "up"]);
    }

    /// `program` run inside this namespace only (its mounts are the
    /// machine's: a FUSE export is visible outside).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_outside])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A free TCP port on SERVER_IP.
fn free_port() -> u16 {
    server_address();
    std::net::TcpListener::bind((SERVER_IP, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port on the server address")
}

/// One host's path: qemu-storage-daemon in the host's namespace, its FUSE
/// export, and a loop device with direct I/O on it.
pub struct SanPath {
    pub netns: Netns,
    qsd: Option<Child>,
    export: PathBuf,
    loop_device: Option<LoopDevice>,
}

impl SanPath {
    /// `blockdev`: qemu's `--blockdev` options of the LUN or image (the
    /// node name is added).
    fn start(dir: &Path, label: &str, blockdev: &str, sector_size_bytes: u32) -> SanPath {
        let netns = Netns::create();
        let export = dir.join(format!("{label}.export"));
        std::fs::write(&export, b"").expect("FUSE mountpoint file");
        let log = std::fs::File::create(dir.join(format!("{label}.qsd.log"))).expect("log");
        let qsd = netns
            .command("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("{blockdev},node-name=lease,cache.direct=on"))
            .arg("--export")
            .arg(format!(
                "type=fuse,id=export,node-name=lease,mountpoint={},writable=on",
                export.display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "run qemu-storage-daemon (apt-get install qemu-system-common qemu-block-extra)",
            );
        let mut path = SanPath {
            netns,
            qsd: Some(qsd),
            export,
            loop_device: None,
        };
        let exported = wait_long(Duration::from_secs(60), || {
            std::fs::metadata(&path.export)
                .ok()
                .filter(|m| m.len() > 0)
                .map(|_| ())
        });
        assert!(
            exported.is_some(),
            "qemu-storage-daemon did not export {label}: {}",
            std::fs::read_to_string(dir.join(format!("{label}.qsd.log"))).unwrap_or_default()
        );
        let file = path.export.to_string_lossy().into_owned();
        path.loop_device =
            Some(LoopDevice::attach(&file, sector_size_bytes).expect("loop device (run as root)"));
        path
    }

    /// The block device this host's daemon uses.
    pub fn device(&self) -> &str {
        &self.loop_device.as_ref().expect("attached").path
    }
}

impl Drop for SanPath {
    fn drop(&mut self) {
        self.netns.restore();
        self.loop_device = None;
        if let Some(mut qsd) = self.qsd.take() {
            stop(&mut qsd);
        }
        // Lazily: the detached loop device may still hold the file.
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.export)
            .output();
    }
}

/// A tgt iSCSI target exporting one file-backed LUN.
pub struct IscsiTarget {
    pub dir: Scratch,
    tgtd: Option<Child>,
    control_port: u16,
    pub port: u16,
    pub iqn: String,
    pub block_size_bytes: u32,
}

static TARGETS: AtomicU32 = AtomicU32::new(0);

impl IscsiTarget {
    /// `tgtd` on SERVER_IP with a LUN of `size_bytes` in logical blocks of
    /// `block_size_bytes` (512 or 4096).
    pub fn start(size_bytes: u64, block_size_bytes: u32) -> IscsiTarget {
        let dir = Scratch::new("iscsi");
        let backing = dir.path.join("lun.img");
        crate::sparse_file(&backing.to_string_lossy(), size_bytes);
        let port = free_port();
        // tgtadm's control socket is named by a number; keep ours apart
        // from a system tgtd (0).
        let control_port = 100
            + u16::try_from(std::process::id() % 20_000).unwrap_or(0)
            + u16::try_from(TARGETS.fetch_add(1, Ordering::SeqCst)).unwrap_or(0);
        let log = std::fs::File::create(dir.path.join("tgtd.log")).expect("log");
        let tgtd = Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal={SERVER_IP}:{port}")])
            .args(["-C", &control_port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run tgtd (apt-get install tgt)");
        let iqn = format!("iqn.2026-12.test.leasehold:lease{control_port}");
        let target = IscsiTarget {
            dir,
            tgtd: Some(tgtd),
            control_port,
            port,
            iqn,
            block_size_bytes,
        };
        let up = wait_long(Duration::from_secs(20), || {
            target
                .tgtadm(&["--op", "show", "--mode", "sys"])
                .then_some(())
        });
        assert!(up.is_some(), "tgtd did not start");
        let iqn = target.iqn.clone();
        assert!(target.tgtadm(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", &iqn,
        ]));
        let blocksize = format!("--blocksize={block_size_bytes}");
        assert!(target.tgtadm(&[
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &backing.to_string_lossy(),
            &blocksize,
        ]));
        assert!(target.tgtadm(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ]));
        target
    }

    fn tgtadm(&self, args: &[&str]) -> bool {
        Command::new("tgtadm")
            .args(["-C", &self.control_port.to_string()])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Host `host_id`'s own initiator and path to the LUN.
    pub fn path(&self, host_id: u32) -> SanPath {
        let blockdev = format!(
            "driver=iscsi,transport=tcp,portal={SERVER_IP}:{},target={},lun=1,initiator-name=iqn.2026-12.test.leasehold:host{host_id}",
            self.port, self.iqn
        );
        SanPath::start(
            &self.dir.path,
            &format!("host{host_id}"),
            &blockdev,
            self.block_size_bytes,
        )
    }

    /// The whole target stops answering (SIGSTOP), for everyone.
    pub fn pause(&self) {
        if let Some(t) = &self.tgtd {
            signal(t.id(), libc::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        if let Some(t) = &self.tgtd {
            signal(t.id(), libc::SIGCONT);
        }
    }
}

impl Drop for IscsiTarget {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM while it has targets.
        if let Some(mut tgtd) = self.tgtd.take() {
            stop(&mut tgtd);
        }
    }
}

/// A one-node Ceph cluster: one monitor, one OSD (bluestore on a sparse
/// file outside its data directory), no manager, no authentication, a pool
/// of size 1 and one RBD image; started without cephadm or systemd.
pub struct CephCluster {
    pub dir: Scratch,
    pub conf: PathBuf,
    mon: Option<Child>,
    osd: Option<Child>,
    pub image: String,
}

/// The pool holding the lease image.
const POOL: &str = "leasehold";

/// `rbd create` once the pool's placement groups serve I/O.
fn create_image(conf: &Path, image: &str, size_bytes: u64) {
    let size_mib = size_bytes.div_ceil(1 << 20).to_string();
    let created = wait_long(Duration::from_secs(120), || {
        Command::new("rbd")
            .arg("-c")
            .arg(conf)
            .args(["create", "--size", &size_mib])
            // Every host writes the image at once: no exclusive lock (with
            // it, librbd hands the lock around and blocklists a client that
            // was cut off, failing its I/O for good).
            .args(["--image-feature", "layering"])
            .arg(format!("{POOL}/{image}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    assert!(created.is_some(), "rbd create {POOL}/{image} failed");
}

impl CephCluster {
    /// Bring the cluster up and create an image of `size_bytes`.
    pub fn start(size_bytes: u64) -> CephCluster {
        let dir = Scratch::new("ceph");
        let d = dir.path.clone();
        for sub in ["mon", "osd", "run", "log"] {
            std::fs::create_dir_all(d.join(sub)).expect("ceph directories");
        }
        let port = free_port();
        let fsid = run("uuidgen", &mut Command::new("uuidgen"))
            .trim()
            .to_string();
        let conf = d.join("ceph.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]
fsid = {fsid}
mon_host = v2:{SERVER_IP}:{port}
public_addr = {SERVER_IP}
cluster_addr = {SERVER_IP}
ms_bind_msgr1 = false
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
run_dir = {run}
admin_socket = {run}/$name.asok
pid_file = {run}/$name.pid
log_file = {log}/$name.log
mon_data = {mon}/$cluster-$id
osd_data = {osd}/$cluster-$id
osd_objectstore = bluestore
bluestore_block_path = {block}
bluestore_block_create = true
bluestore_block_size = 4294967296
bluestore_fsck_on_mkfs = false
osd_memory_target = 939524096
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
",
                run = d.join("run").display(),
                log = d.join("log").display(),
                mon = d.join("mon").display(),
                osd = d.join("osd").display(),
                block = d.join("osd-block").display(),
            ),
        )
        .expect("ceph.conf");
        let c = conf.to_string_lossy().into_owned();
        let monmap = d.join("monmap").to_string_lossy().into_owned();
        run(
            "monmaptool",
            Command::new("monmaptool").args([
                "--create",
                "--fsid",
                &fsid,
                "--addv",
                "a",
                &format!("[v2:{SERVER_IP}:{port}]"),
                &monmap,
            ]),
        );
        run(
            "ceph-mon --mkfs",
            Command::new("ceph-mon").args(["-c", &c, "--mkfs", "-i", "a", "--monmap", &monmap]),
        );
        let mon = Command::new("ceph-mon")
            .args(["-c", &c, "-i", "a", "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ceph-mon (apt-get install ceph-mon)");
        let mut cluster = CephCluster {
            dir,
            conf: conf.clone(),
            mon: Some(mon),
            osd: None,
            image: "lease".to_string(),
        };
        let ceph = |args: &[&str]| -> Option<String> {
            let out = Command::new("ceph")
                .args(["-c", &c, "--connect-timeout", "10"])
                .args(args)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        };
        wait_long(Duration::from_secs(60), || ceph(&["mon", "stat"]))
            .expect("the Ceph monitor answers");
        let osd_uuid = run("uuidgen", &mut Command::new("uuidgen"))
            .trim()
            .to_string();
        let id = ceph(&["osd", "new", &osd_uuid]).expect("ceph osd new");
        assert_eq!(id.trim(), "0", "the first OSD");
        std::fs::create_dir_all(d.join("osd/ceph-0")).expect("OSD directory");
        run(
            "ceph-osd --mkfs",
            Command::new("ceph-osd").args(["-c", &c, "-i", "0", "--mkfs", "--osd-uuid", &osd_uuid]),
        );
        cluster.osd = Some(
            Command::new("ceph-osd")
                .args(["-c", &c, "-i", "0", "-f"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run ceph-osd (apt-get install ceph-osd)"),
        );
        wait_long(Duration::from_secs(120), || {
            ceph(&["osd", "stat"]).filter(|s| s.contains("1 up"))
        })
        .expect("the OSD comes up");
        ceph(&["osd", "pool", "create", POOL, "8", "8"]).expect("pool create");
        ceph(&["osd", "pool", "application", "enable", POOL, "rbd"]).expect("pool application");
        create_image(&conf, &cluster.image, size_bytes);
        cluster
    }

    /// Host `host_id`'s own librbd client and path to the image.
    pub fn path(&self, host_id: u32) -> SanPath {
        let blockdev = format!(
            "driver=rbd,pool={POOL},image={},conf={}",
            self.image,
            self.conf.display()
        );
        SanPath::start(&self.dir.path, &format!("host{host_id}"), &blockdev, 512)
    }

    /// The OSD stops answering (SIGSTOP): every host's I/O stalls.
    pub fn pause(&self) {
        if let Some(osd) = &self.osd {
            signal(osd.id(), libc::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        if let Some(osd) = &self.osd {
            signal(osd.id(), libc::SIGCONT);
        }
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        for child in [self.osd.take(), self.mon.take()].into_iter().flatten() {
            let mut child = child;
            stop(&mut child);
        }
    }
}
