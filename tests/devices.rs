//! Real devices: O_DIRECT files and loop devices with 512- and 4096-byte
//! sectors, through both I/O engines.

use lease::clock::SystemClock;
use lease::delta::{self, JoinRequest, RenewRequest};
use lease::device::{self, FormatOptions};
use lease::disk::{DirectDisk, Disk, DiskError, UringDisk};
use lease::format::{Capacity, FenceMethod, Geometry};
use lease::op::run;
use lease::resource::{self, NamedAcquire};
use lease::{HostId, LeaseError, Lockspace};
use leasehold_tests::{dump_json, leasehold, leasehold_ok, sparse_file, LoopDevice, Scratch};

fn join_request(raw: u32, name: &str) -> JoinRequest {
    JoinRequest {
        host_id: HostId::new(raw).expect("nonzero"),
        host_name: name.to_string(),
        io_timeout_ms: 100,
        nonce: u64::from(raw),
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    }
}

/// Format through the library, then join two hosts, renew with a scan,
/// acquire a resource and see the second host refused.
fn exercise(disk: &dyn Disk, sector_size_bytes: u32) {
    let geometry =
        Geometry::new(sector_size_bytes, 16, 4, 4 * sector_size_bytes).expect("geometry");
    let options = FormatOptions {
        lockspace: "devices".to_string(),
        geometry,
        io_timeout_ms: 100,
    };
    let space = device::format(disk, &options).expect("format");
    assert_eq!(Lockspace::open(disk, Some("devices")).expect("open"), space);
    let clock = SystemClock;
    let a = run(delta::join(&space, join_request(1, "alpha")), disk, &clock).expect("join alpha");
    let b = run(delta::join(&space, join_request(2, "bravo")), disk, &clock).expect("join bravo");
    let renewal = run(
        delta::renew(
            &space,
            &a,
            RenewRequest {
                scan: true,
                ..RenewRequest::default()
            },
        ),
        disk,
        &clock,
    )
    .expect("renew");
    let area = renewal.host_area.expect("scan returned");
    assert_eq!(area.len() as u64, geometry.host_area_size_bytes());
    let hosts = space.decode_host_area(&area);
    assert_eq!(
        hosts[1].1.as_ref().expect("bravo decodes").host_name,
        "bravo"
    );
    let named = |owner, seed| NamedAcquire {
        name: "vm1".to_string(),
        owner,
        dead_hosts: Vec::new(),
        io_timeout_ms: 100,
        seed,
    };
    let (slot, leader) =
        run(resource::acquire(&space, named(a.owner(), 1)), disk, &clock).expect("acquire");
    assert_eq!(slot, resource::home_slot("vm1", geometry.max_resources()));
    assert_eq!(leader.owner, Some(a.owner()));
    match run(resource::acquire(&space, named(b.owner(), 2)), disk, &clock) {
        Err(LeaseError::HeldByOther { owner, .. }) => assert_eq!(owner, a.owner()),
        other => panic!("expected HeldByOther, got {other:?}"),
    }
}

#[test]
fn file_with_both_io_engines_and_both_sector_sizes() {
    let scratch = Scratch::new("file");
    for sector in [512u32, 4096] {
        let path = scratch.file(&format!("lease-{sector}.img"));
        sparse_file(&path, 8 << 20);
        exercise(
            &DirectDisk::open(&path, Some(sector)).expect("open direct"),
            sector,
        );
        exercise(
            &UringDisk::open(&path, Some(sector), 5000).expect("open uring"),
            sector,
        );
    }
}

#[test]
fn misaligned_io_is_refused_not_buffered() {
    let scratch = Scratch::new("misaligned");
    let path = scratch.file("lease.img");
    sparse_file(&path, 1 << 20);
    let disk = DirectDisk::open(&path, Some(4096)).expect("open");
    let mut buffer = vec![0; 512];
    assert!(matches!(
        disk.read(0, &mut buffer),
        Err(DiskError::Misaligned { .. })
    ));
    let mut buffer = vec![0; 4096];
    assert!(matches!(
        disk.read(512, &mut buffer),
        Err(DiskError::Misaligned { .. })
    ));
    assert!(matches!(
        disk.read(1 << 20, &mut buffer),
        Err(DiskError::OutOfRange { .. })
    ));
    let uring = UringDisk::open(&path, Some(4096), 1000).expect("open");
    assert!(matches!(
        uring.write(0, &[0; 512]),
        Err(DiskError::Misaligned { .. })
    ));
}

#[test]
fn loop_device_with_512_byte_sectors() {
    let scratch = Scratch::new("loop512");
    let backing = scratch.file("backing.img");
    sparse_file(&backing, 8 << 20);
    let Some(device) = LoopDevice::attach(&backing, 512) else {
        return;
    };
    let disk = DirectDisk::open(&device.path, None).expect("open loop");
    assert_eq!(disk.sector_size_bytes(), 512);
    assert_eq!(disk.size_bytes(), 8 << 20);
    exercise(&disk, 512);
    exercise(
        &UringDisk::open(&device.path, None, 5000).expect("open uring"),
        512,
    );
}

#[test]
fn loop_device_with_4096_byte_sectors_refuses_512_byte_io() {
    let scratch = Scratch::new("loop4k");
    let backing = scratch.file("backing.img");
    sparse_file(&backing, 16 << 20);
    let Some(device) = LoopDevice::attach(&backing, 4096) else {
        return;
    };
    // Asking for 512-byte sectors on a 4K device is a clear error.
    match DirectDisk::open(&device.path, Some(512)) {
        Err(DiskError::Open { reason, .. }) => {
            assert!(reason.contains("4096-byte logical sectors"), "{reason}")
        }
        other => panic!(
            "expected an open error, got {:?}",
            other.map(|d| d.sector_size_bytes())
        ),
    }
    // Opened at its own sector size, a 512-byte I/O is refused by our check
    // before the kernel could fail it with EINVAL.
    let disk = DirectDisk::open(&device.path, None).expect("open");
    assert_eq!(disk.sector_size_bytes(), 4096);
    assert!(matches!(
        disk.read(0, &mut [0; 512]),
        Err(DiskError::Misaligned { .. })
    ));
    exercise(&disk, 4096);
    // The CLI: format picks 4096 from the device, --sector-size 512 is refused.
    let out = leasehold(&[
        "format",
        &device.path,
        "--lockspace",
        "l4k",
        "--sector-size",
        "512",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4096-byte logical sectors"), "{stderr}");
    leasehold_ok(&[
        "format",
        &device.path,
        "--lockspace",
        "l4k",
        "--max-hosts",
        "8",
        "--max-resources",
        "2",
        "--force",
    ]);
    let dump = dump_json(&device.path);
    assert_eq!(dump["sector_size_bytes"], 4096);
    leasehold_ok(&[
        "direct",
        "join",
        &device.path,
        "--host-id",
        "3",
        "--host-name",
        "charlie",
        "--io-timeout",
        "0.1",
    ]);
    leasehold_ok(&[
        "direct",
        "acquire",
        &device.path,
        "--host-id",
        "3",
        "--resource",
        "vm4k",
        "--io-engine",
        "uring",
    ]);
    let dump = dump_json(&device.path);
    assert_eq!(dump["resources"][0]["name"], "vm4k");
    assert_eq!(dump["resources"][0]["owner_host_id"], 3);
}

#[test]
fn a_512_byte_lockspace_on_a_4096_byte_device_does_not_open() {
    let scratch = Scratch::new("mismatch");
    let backing = scratch.file("backing.img");
    leasehold_ok(&[
        "format",
        &backing,
        "--create",
        "1M",
        "--lockspace",
        "small",
        "--max-hosts",
        "8",
        "--max-resources",
        "2",
        "--sector-size",
        "512",
    ]);
    let Some(device) = LoopDevice::attach(&backing, 4096) else {
        return;
    };
    let out = leasehold(&["dump", &device.path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("formatted with 512-byte sectors"),
        "{stderr}"
    );
}
