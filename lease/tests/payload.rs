//! Resource payloads: only the holder writes, two copies survive a torn
//! write, a corrupt copy is never used, and a former holder's write that
//! lands late never wins over a later holder's.

mod common;

use common::*;
use lease::delta::DeltaLease;
use lease::disk::Disk;
use lease::payload;
use lease::resource::{self, NamedAcquire};
use lease::LeaseError;
use proptest::prelude::*;

fn acquire(s: &Setup, lease: &DeltaLease, name: &str) -> u32 {
    let request = NamedAcquire {
        name: name.to_string(),
        owner: lease.owner(),
        dead_hosts: Vec::new(),
        io_timeout_ms: IO_TIMEOUT_MS,
        seed: 7,
    };
    s.run(resource::acquire(&s.space, request))
        .expect("acquire")
        .0
}

/// Offset of copy `copy` (0 = A, 1 = B) of `slot`.
fn copy_offset(s: &Setup, slot: u32, copy: u64) -> u64 {
    let g = &s.space.geometry;
    g.payload_offset_bytes(slot) + copy * (u64::from(g.payload_size_bytes()) / 2)
}

fn scribble(s: &Setup, offset: u64) {
    s.disk.write(offset, &[0x5A; 512]).expect("write");
}

#[test]
fn the_holder_writes_and_everyone_reads_the_newest_copy() {
    let s = setup_with_payload(4, 2, 16384);
    let a = s.join(1, "alpha");
    let b = s.join(2, "beta");
    let slot = acquire(&s, &a, "vm1");
    assert_eq!(s.run(payload::read(&s.space, slot)).expect("read"), None);
    let first = s
        .run(payload::write(
            &s.space,
            slot,
            a.owner(),
            b"<domain>one</domain>".to_vec(),
        ))
        .expect("write");
    let second = s
        .run(payload::write(
            &s.space,
            slot,
            a.owner(),
            b"<domain>two</domain>".to_vec(),
        ))
        .expect("write");
    assert!(second > first);
    let read = s
        .run(payload::read(&s.space, slot))
        .expect("read")
        .expect("some");
    assert_eq!(read.data, b"<domain>two</domain>");
    assert_eq!(read.writer, a.owner());
    // Another host may not write it.
    match s.run(payload::write(&s.space, slot, b.owner(), b"x".to_vec())) {
        Err(LeaseError::NotOwner { .. }) => {}
        other => panic!("expected NotOwner, got {other:?}"),
    }
    // Too large for a copy.
    let capacity = payload::capacity_bytes(&s.space.geometry) as usize;
    assert!(matches!(
        s.run(payload::write(
            &s.space,
            slot,
            a.owner(),
            vec![1; capacity + 1]
        )),
        Err(LeaseError::Invalid(_))
    ));
    s.run(payload::write(&s.space, slot, a.owner(), vec![1; capacity]))
        .expect("a full copy fits");
}

#[test]
fn a_torn_write_leaves_the_previous_version_and_two_bad_copies_are_an_error() {
    let s = setup_with_payload(4, 2, 16384);
    let a = s.join(1, "alpha");
    let slot = acquire(&s, &a, "vm1");
    // The first write under this lease version fills both copies (A,
    // then B); the second goes over the older one, A.
    s.run(payload::write(&s.space, slot, a.owner(), vec![1; 3000]))
        .expect("write A and B");
    s.run(payload::write(&s.space, slot, a.owner(), vec![2; 3000]))
        .expect("write A");
    // The newest copy (A) loses a data sector: the older one is read.
    scribble(&s, copy_offset(&s, slot, 0) + 1024);
    let read = s
        .run(payload::read(&s.space, slot))
        .expect("read")
        .expect("some");
    assert_eq!(read.data, vec![1; 3000]);
    // The next write goes over the bad copy, not the good one.
    s.run(payload::write(&s.space, slot, a.owner(), vec![3; 10]))
        .expect("write");
    let read = s
        .run(payload::read(&s.space, slot))
        .expect("read")
        .expect("some");
    assert_eq!(read.data, vec![3; 10]);
    // Both copies bad: reported, never used.
    scribble(&s, copy_offset(&s, slot, 0));
    scribble(&s, copy_offset(&s, slot, 1));
    match s.run(payload::read(&s.space, slot)) {
        Err(LeaseError::Invalid(message)) => assert!(message.contains("unusable"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any series of writes, each possibly torn (only its first sector
    /// landed), reads back as the last write that completed.
    #[test]
    fn reads_return_the_last_complete_write(
        writes in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..4000), any::<bool>()),
            1..12,
        )
    ) {
        let s = setup_with_payload(4, 1, 16384);
        let a = s.join(1, "alpha");
        let slot = acquire(&s, &a, "vm1");
        let mut last_complete: Option<Vec<u8>> = None;
        for (data, torn) in writes {
            let before: Vec<Vec<u8>> = (0..2)
                .map(|copy| {
                    let mut bytes = vec![0; 8192];
                    s.disk.read(copy_offset(&s, slot, copy), &mut bytes).expect("read");
                    bytes
                })
                .collect();
            s.run(payload::write(&s.space, slot, a.owner(), data.clone())).expect("write");
            if torn && data.len() > 512 {
                // Put back everything after the header sector of the copy
                // just written: only its first sector landed.
                for copy in 0..2u64 {
                    let mut now = vec![0; 8192];
                    s.disk.read(copy_offset(&s, slot, copy), &mut now).expect("read");
                    if now != before[copy as usize] {
                        let idx = copy as usize;
                        s.disk
                            .write(copy_offset(&s, slot, copy) + 512, &before[idx][512..])
                            .expect("restore");
                    }
                }
            } else {
                last_complete = Some(data);
            }
            let read = s.run(payload::read(&s.space, slot));
            match (&last_complete, read) {
                (Some(expected), Ok(Some(p))) => prop_assert_eq!(&p.data, expected),
                (None, Ok(None)) | (None, Err(_)) => {}
                (expected, got) => prop_assert!(false, "expected {:?}, got {:?}", expected.as_ref().map(Vec::len), got.map(|p| p.map(|p| p.data.len()))),
            }
        }
    }
}

/// The bytes one payload write of `owner` puts on the device (offset,
/// sectors), found by running it and then putting the copies back: a
/// write that is still on its way to the device.
fn in_flight(s: &Setup, slot: u32, owner: lease::Owner, data: Vec<u8>) -> (u64, Vec<u8>) {
    let size = (s.space.geometry.payload_size_bytes() / 2) as usize;
    let copies: Vec<Vec<u8>> = (0..2)
        .map(|copy| {
            let mut bytes = vec![0; size];
            s.disk
                .read(copy_offset(s, slot, copy), &mut bytes)
                .expect("read");
            bytes
        })
        .collect();
    s.run(payload::write(&s.space, slot, owner, data))
        .expect("write");
    let mut written = None;
    for copy in 0..2u64 {
        let mut now = vec![0; size];
        s.disk
            .read(copy_offset(s, slot, copy), &mut now)
            .expect("read");
        let before = &copies[copy as usize];
        if now != *before {
            assert!(
                written.is_none(),
                "a second write under a version touches one copy"
            );
            written = Some((copy_offset(s, slot, copy), now));
            s.disk
                .write(copy_offset(s, slot, copy), before)
                .expect("put back");
        }
    }
    written.expect("the write changed a copy")
}

#[test]
fn a_former_holders_late_write_loses_to_the_new_holders_record() {
    let s = setup_with_payload(4, 2, 16384);
    let a = s.join(1, "alpha");
    let b = s.join(2, "beta");
    let slot = acquire(&s, &a, "vm1");
    s.run(payload::write(
        &s.space,
        slot,
        a.owner(),
        b"running".to_vec(),
    ))
    .expect("first record");
    // A's next write is held in its storage path...
    let (offset, late) = in_flight(&s, slot, a.owner(), b"running, again".to_vec());
    // ... while A loses the lease and B takes it and writes "stopped".
    s.run(resource::release(&s.space, "vm1", a.owner()))
        .expect("release");
    assert_eq!(acquire(&s, &b, "vm1"), slot);
    s.run(payload::write(
        &s.space,
        slot,
        b.owner(),
        b"stopped".to_vec(),
    ))
    .expect("B's record");
    // A's write lands now: B's record still reads back.
    s.disk.write(offset, &late).expect("late write lands");
    let read = s
        .run(payload::read(&s.space, slot))
        .expect("read")
        .expect("some");
    assert_eq!(read.data, b"stopped");
    assert_eq!(read.writer, b.owner());
    // And B's next write builds on its own record, not on A's.
    s.run(payload::write(
        &s.space,
        slot,
        b.owner(),
        b"stopped, 2".to_vec(),
    ))
    .expect("B again");
    let read = s
        .run(payload::read(&s.space, slot))
        .expect("read")
        .expect("some");
    assert_eq!(read.data, b"stopped, 2");
}

#[test]
fn a_copy_from_a_later_lease_version_than_the_leader_is_refused_for_writing() {
    let s = setup_with_payload(4, 2, 16384);
    let a = s.join(1, "alpha");
    let slot = acquire(&s, &a, "vm1");
    s.run(payload::write(&s.space, slot, a.owner(), b"a".to_vec()))
        .expect("first record");
    let header_of = |copy: u64| {
        let mut sector = vec![0; 512];
        s.disk
            .read(copy_offset(&s, slot, copy), &mut sector)
            .expect("read");
        lease::format::PayloadHeader::decode(&sector, "test", slot, 16000).expect("header")
    };
    // The first write under the version filled both copies with it.
    assert_eq!(header_of(0).lver, header_of(1).lver);
    assert!(header_of(0).lver > 0);
    // A copy claiming a version above the leader's (only a later holder
    // could have written it): the holder writes nothing.
    let mut planted = header_of(1);
    planted.lver += 100;
    let mut bytes = planted.encode("test", 512);
    bytes.truncate(512);
    s.disk
        .write(copy_offset(&s, slot, 1), &bytes)
        .expect("plant");
    match s.run(payload::write(&s.space, slot, a.owner(), b"b".to_vec())) {
        Err(LeaseError::Invalid(message)) => {
            assert!(message.contains("above the leader"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
