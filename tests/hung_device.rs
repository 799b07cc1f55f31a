//! A hung device (nbdkit's pause filter under a loop device): the io_uring
//! engine fails each I/O at its deadline instead of blocking the thread, and
//! keeps the buffer until the kernel really completes the I/O.

use lease::clock::SystemClock;
use lease::delta::{self, JoinRequest, RenewRequest};
use lease::device::{self, FormatOptions};
use lease::disk::{DirectDisk, Disk, DiskError, UringDisk};
use lease::format::{Capacity, FenceMethod, Geometry};
use lease::op::run;
use lease::{HostId, LeaseError};
use leasehold_tests::{wait_for, PausableDevice};
use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on a thread; fail the test if it has not returned within 60 s
/// (the point is that it returns at all, not how fast).
fn returns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the I/O call blocked instead of failing at its deadline")
}

#[test]
fn io_on_a_paused_device_fails_at_its_deadline_and_recovers() {
    let device = PausableDevice::start(16 << 20);
    let path = device.path().to_string();
    let geometry = Geometry::new(512, 8, 2, 4096).expect("geometry");
    let options = FormatOptions {
        lockspace: "hang".to_string(),
        geometry,
        io_timeout_ms: 200,
    };
    let space = {
        let disk = DirectDisk::open(&path, None).expect("open");
        device::format(&disk, &options).expect("format")
    };
    let disk = std::sync::Arc::new(UringDisk::open(&path, None, 300).expect("open uring"));
    let request = JoinRequest {
        host_id: HostId::new(1).expect("nonzero"),
        host_name: "alpha".to_string(),
        io_timeout_ms: 200,
        nonce: 1,
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    };
    let lease = run(delta::join(&space, request), disk.as_ref(), &SystemClock).expect("join");

    device.pause();
    let reader = std::sync::Arc::clone(&disk);
    let result = returns(move || {
        let mut sector = vec![0; 512];
        reader.read(0, &mut sector)
    });
    assert!(
        matches!(
            result,
            Err(DiskError::Timeout {
                deadline_ms: 300,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(
        disk.outstanding() >= 1,
        "the timed-out read is still owned by the kernel"
    );

    // A renewal on the hung device fails with the disk timeout, in time.
    let renewer = std::sync::Arc::clone(&disk);
    let space_copy = space.clone();
    let lease_copy = lease.clone();
    let renewal = returns(move || {
        run(
            delta::renew(&space_copy, &lease_copy, RenewRequest::default()),
            renewer.as_ref(),
            &SystemClock,
        )
    });
    assert!(
        matches!(renewal, Err(LeaseError::Disk(DiskError::Timeout { .. }))),
        "{renewal:?}"
    );

    device.resume();
    // The stuck I/Os complete once the device answers; their buffers are freed.
    assert_eq!(
        wait_for(|| (disk.outstanding() == 0).then_some(())),
        Some(()),
        "stuck I/Os never completed"
    );
    let mut sector = vec![0; 512];
    disk.read(0, &mut sector).expect("read after resume");
    let header = lease::format::HeaderRecord::decode(&sector, Some("hang")).expect("header intact");
    assert_eq!(header.geometry, geometry);
}

#[test]
fn a_device_with_too_many_stuck_ios_is_refused_as_hung() {
    let device = PausableDevice::start(4 << 20);
    let path = device.path().to_string();
    let disk = std::sync::Arc::new(UringDisk::open(&path, None, 50).expect("open uring"));
    device.pause();
    let worker = std::sync::Arc::clone(&disk);
    let errors = returns(move || {
        (0..lease::disk::ORPHANS_MAX + 1)
            .map(|i| worker.read(i as u64 * 512, &mut [0; 512]))
            .collect::<Vec<_>>()
    });
    assert!(
        errors[..lease::disk::ORPHANS_MAX]
            .iter()
            .all(|e| matches!(e, Err(DiskError::Timeout { .. }))),
        "{errors:?}"
    );
    assert!(
        matches!(
            errors[lease::disk::ORPHANS_MAX],
            Err(DiskError::Hung { .. })
        ),
        "{errors:?}"
    );
    device.resume();
    assert_eq!(
        wait_for(|| (disk.outstanding() == 0).then_some(())),
        Some(())
    );
    disk.read(0, &mut [0; 512])
        .expect("usable again after resume");
}

#[test]
fn sectors_under_a_timed_out_write_are_neither_written_nor_read_until_it_lands() {
    let device = PausableDevice::start(16 << 20);
    let path = device.path().to_string();
    let disk = std::sync::Arc::new(UringDisk::open(&path, None, 300).expect("open uring"));
    let target_bytes = 4096;
    device.pause();
    let writer = std::sync::Arc::clone(&disk);
    let late = returns(move || writer.write(target_bytes, &[0xAB; 512]));
    assert!(matches!(late, Err(DiskError::Timeout { .. })), "{late:?}");
    // The timed-out write may still land: a new write there could be
    // overtaken, and a read there could return what it is about to replace
    // (a caller writing that back would undo it). Both are refused at once.
    let again = disk.write(target_bytes, &[0xCD; 512]);
    assert!(
        matches!(again, Err(DiskError::WriteInFlight { .. })),
        "{again:?}"
    );
    let mut sector = vec![0; 512];
    let read = disk.read(target_bytes, &mut sector);
    assert!(
        matches!(read, Err(DiskError::WriteInFlight { .. })),
        "{read:?}"
    );
    // A multi-sector read that covers it is refused too.
    let mut two = vec![0; 1024];
    let read = disk.read(target_bytes - 512, &mut two);
    assert!(
        matches!(read, Err(DiskError::WriteInFlight { .. })),
        "{read:?}"
    );
    device.resume();
    assert_eq!(
        wait_for(|| (disk.outstanding() == 0).then_some(())),
        Some(()),
        "the late write never completed"
    );
    // Once it has landed, a read sees it.
    disk.read(target_bytes, &mut sector)
        .expect("read after the late write landed");
    assert_eq!(sector, vec![0xAB; 512]);
}
