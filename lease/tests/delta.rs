//! Delta lease: join, renew, leave, and the waits that make join safe.

mod common;

use common::*;
use lease::clock::Clock;
use lease::delta::{self, RenewRequest};
use lease::format::HostRecord;
use lease::op::Step;
use lease::timeouts::Timeouts;
use lease::LeaseError;

fn read_host(s: &Setup, raw: u32) -> HostRecord {
    use lease::disk::Disk;
    let mut sector = vec![0; 512];
    s.disk
        .read(s.space.geometry.host_offset_bytes(host(raw)), &mut sector)
        .expect("read");
    s.space.decode_host(host(raw), &sector).expect("decode")
}

#[test]
fn join_renew_leave_rejoin() {
    let s = setup(4, 1);
    let lease = s.join(1, "alpha");
    assert_eq!(lease.record.generation, 1);
    assert_eq!(lease.record.generation_floor, 1);
    let before = read_host(&s, 1);
    s.clock.advance_ms(2000);
    let renewed = s
        .run(delta::renew(
            &s.space,
            &lease,
            RenewRequest {
                scan: true,
                ..RenewRequest::default()
            },
        ))
        .expect("renew");
    assert!(renewed.host_area.is_some());
    let after = read_host(&s, 1);
    assert!(
        after.timestamp_ms > before.timestamp_ms,
        "renewal must move the record"
    );
    assert_eq!(after.generation, 1);
    s.run(delta::leave(&s.space, &renewed.lease))
        .expect("leave");
    assert!(read_host(&s, 1).flags.released);
    // A clean leave: the next join pays only the settle wait and moves the floor.
    let start = s.clock.now_ms();
    let again = s.join(1, "alpha");
    assert_eq!(again.record.generation, 2);
    assert_eq!(again.record.generation_floor, 2);
    let waited = s.clock.now_ms() - start;
    assert_eq!(
        waited,
        Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS).acquire_settle_ms
    );
}

#[test]
fn crash_restart_under_same_name_keeps_old_generation_protected() {
    let s = setup(4, 1);
    let first = s.join(1, "alpha");
    // No leave: the process died. The same name rejoins without the long wait.
    let start = s.clock.now_ms();
    let second = s.join(1, "alpha");
    assert_eq!(second.record.generation, 2);
    assert!(s.clock.now_ms() - start < Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS).host_dead_ms);
    // Generation 1 may still own leases (its processes may run): not over.
    assert_eq!(
        second.record.generation_floor,
        first.record.generation_floor
    );
    assert!(!second.record.generation_is_over(1));
}

#[test]
fn join_over_another_hosts_sector_needs_its_watchdog_or_a_fence() {
    let s = setup(4, 1);
    s.join(1, "alpha");
    // alpha runs no watchdog: standing still it may be paused, not dead.
    let start = s.clock.now_ms();
    match s.run(delta::join(&s.space, join_request(1, "bravo"))) {
        Err(LeaseError::HostIdNotFree {
            owner_name,
            generation: 1,
            ..
        }) => assert_eq!(owner_name, "alpha"),
        other => panic!("expected HostIdNotFree, got {other:?}"),
    }
    assert_eq!(s.clock.now_ms(), start, "refused without waiting");

    // With a watchdog, host_dead of stillness means it was reset.
    let s = setup(4, 1);
    let mut request = join_request(1, "alpha");
    request.watchdog = true;
    s.run(delta::join(&s.space, request)).expect("join alpha");
    let start = s.clock.now_ms();
    let lease = s.join(1, "bravo");
    let waited = s.clock.now_ms() - start;
    let t = Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS);
    assert!(
        waited >= t.host_dead_ms,
        "waited {waited} ms, host_dead is {}",
        t.host_dead_ms
    );
    assert_eq!(lease.record.generation, 2);
    assert_eq!(lease.previous.host_name, "alpha");
    // alpha's generation stays protected until host_dead has passed after
    // our write too (we might have paused between our last look and the
    // write); the first renewal after that declares it over.
    assert_eq!(lease.record.generation_floor, 1);
    let raise_at = lease.raise_floor_at_ms.expect("a floor raise is pending");
    assert_eq!(raise_at, lease.last_renewal_ms + t.host_dead_ms);
    let mut held = lease;
    while s.clock.now_ms() + t.renew_interval_ms < raise_at {
        s.clock.advance_ms(t.renew_interval_ms);
        held = s
            .run(delta::renew(&s.space, &held, RenewRequest::default()))
            .expect("renew")
            .lease;
        assert_eq!(held.record.generation_floor, 1, "not yet");
    }
    s.clock.set_ms(raise_at);
    let due = s
        .run(delta::renew(&s.space, &held, RenewRequest::default()))
        .expect("renew");
    assert_eq!(
        due.lease.record.generation_floor, 2,
        "alpha's generation is over now"
    );
    assert_eq!(due.lease.raise_floor_at_ms, None);
}

#[test]
fn join_over_a_live_owner_fails() {
    let s = setup(4, 1);
    let mut with_watchdog = join_request(1, "alpha");
    with_watchdog.watchdog = true;
    let mut alpha = s
        .run(delta::join(&s.space, with_watchdog))
        .expect("join alpha");
    let mut op = delta::join(&s.space, join_request(1, "bravo"));
    let mut outcome = None;
    let result = loop {
        match op.step(s.clock.now_ms(), outcome.take()) {
            Step::Done(result) => break result,
            Step::Io(io) => outcome = Some(lease::op::perform(&s.disk, io)),
            Step::WaitUntil(t) => {
                // alpha keeps renewing while bravo watches.
                s.clock.set_ms(t);
                alpha = s
                    .run(delta::renew(&s.space, &alpha, RenewRequest::default()))
                    .expect("alpha renews")
                    .lease;
            }
        }
    };
    match result {
        Err(LeaseError::HostIdInUse { owner_name, .. }) => assert_eq!(owner_name, "alpha"),
        other => panic!("expected HostIdInUse, got {other:?}"),
    }
    assert_eq!(read_host(&s, 1).host_name, "alpha");
}

#[test]
fn a_second_machine_with_our_id_and_name_is_refused_while_the_first_renews() {
    let s = setup(4, 1);
    let mut alpha = s
        .run(delta::join(&s.space, join_request(1, "alpha")))
        .expect("join alpha");
    // A copied configuration: same id, same name, another machine (nonce).
    let mut copy = join_request(1, "alpha");
    copy.nonce += 1;
    let mut op = delta::join(&s.space, copy);
    let mut outcome = None;
    let result = loop {
        match op.step(s.clock.now_ms(), outcome.take()) {
            Step::Done(result) => break result,
            Step::Io(io) => outcome = Some(lease::op::perform(&s.disk, io)),
            Step::WaitUntil(t) => {
                s.clock.set_ms(t);
                // alpha renews on its schedule while the copy watches.
                if t >= alpha.last_renewal_ms + 2 * u64::from(IO_TIMEOUT_MS) {
                    alpha = s
                        .run(delta::renew(&s.space, &alpha, RenewRequest::default()))
                        .expect("alpha renews")
                        .lease;
                }
            }
        }
    };
    match result {
        Err(LeaseError::HostIdInUse { owner_name, .. }) => assert_eq!(owner_name, "alpha"),
        other => panic!("expected HostIdInUse, got {other:?}"),
    }
    assert_eq!(read_host(&s, 1).generation, alpha.record.generation);
}

#[test]
fn our_own_crashed_incarnation_is_joined_once_its_record_stood_still() {
    let s = setup(4, 1);
    let crashed = s
        .run(delta::join(&s.space, join_request(1, "alpha")))
        .expect("join alpha");
    let started_ms = s.clock.now_ms();
    let again = s
        .run(delta::join(&s.space, join_request(1, "alpha")))
        .expect("rejoin after a crash");
    assert_eq!(again.record.generation, crashed.record.generation + 1);
    // Its generation stays protected: the floor is not raised past it.
    assert!(again.record.generation_floor <= crashed.record.generation);
    // It watched one renewal interval and one io_timeout first.
    assert!(s.clock.now_ms() >= started_ms + 3 * u64::from(IO_TIMEOUT_MS));
}

#[test]
fn two_joiners_with_one_id_never_both_join() {
    for seed in 0..200 {
        let s = setup(4, 1);
        let ops = vec![
            delta::join(&s.space, join_request(2, "alpha")),
            delta::join(&s.space, join_request(2, "bravo")),
        ];
        let results = run_interleaved(ops, &s.disk, &s.clock, seed);
        // Neither renews here, so both may join one after the other; what
        // must never happen is two holders at once: the later join may only
        // write after the earlier holder's renewal deadline has passed.
        let mut joined: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        joined.sort_by_key(|l| l.last_renewal_ms);
        if let [first, second] = joined.as_slice() {
            assert!(
                second.last_renewal_ms > first.renewal_deadline_ms(),
                "seed {seed}: overlapping holders: {results:?}"
            );
        }
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        LeaseError::JoinRace { .. }
                            | LeaseError::HostIdInUse { .. }
                            | LeaseError::HostIdNotFree { .. }
                    ),
                    "seed {seed}: {e}"
                );
            }
        }
    }
}

#[test]
fn renew_detects_fencing_and_theft_and_the_deadline() {
    let s = setup(4, 1);
    let lease = s.join(1, "alpha");
    // A fencer marks generation 1 FENCED.
    let mut fenced = read_host(&s, 1);
    fenced.flags.fenced = true;
    fenced.fenced_generation = 1;
    fenced.fencer_host_id = 2;
    {
        use lease::disk::Disk;
        s.disk
            .write(
                s.space.geometry.host_offset_bytes(host(1)),
                &fenced.encode("test", 512).expect("encode"),
            )
            .expect("write");
    }
    match s.run(delta::renew(&s.space, &lease, RenewRequest::default())) {
        Err(LeaseError::Fenced {
            generation: 1,
            fencer: 2,
            ..
        }) => {}
        other => panic!("expected Fenced, got {other:?}"),
    }

    let s = setup(4, 1);
    let lease = s.join(1, "alpha");
    s.clock
        .advance_ms(Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS).renew_fail_ms + 1);
    let before = read_host(&s, 1);
    match s.run(delta::renew(&s.space, &lease, RenewRequest::default())) {
        Err(LeaseError::RenewalExpired { .. }) => {}
        other => panic!("expected RenewalExpired, got {other:?}"),
    }
    assert_eq!(read_host(&s, 1), before, "no write after the deadline");
}

#[test]
fn resume_after_deadline_only_without_watchdog_and_only_if_unmarked() {
    let timeouts = Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS);
    // A fence-mode host whose storage stalled past its deadline goes on.
    let s = setup(4, 1);
    let lease = s.join(1, "alpha");
    s.clock.advance_ms(timeouts.renew_fail_ms * 3);
    assert!(matches!(
        s.run(delta::renew(&s.space, &lease, RenewRequest::default())),
        Err(LeaseError::RenewalExpired { .. })
    ));
    let resumed = s.run(delta::resume(&s.space, &lease)).expect("resume");
    assert_eq!(resumed.record.generation, lease.record.generation);
    assert_eq!(resumed.last_renewal_ms, s.clock.now_ms());
    s.run(delta::renew(&s.space, &resumed, RenewRequest::default()))
        .expect("renew after resume");

    // Not once a fencer marked the generation.
    let mut fenced = read_host(&s, 1);
    fenced.flags.fenced = true;
    fenced.fenced_generation = fenced.generation;
    fenced.fencer_host_id = 2;
    {
        use lease::disk::Disk;
        s.disk
            .write(
                s.space.geometry.host_offset_bytes(host(1)),
                &fenced.encode("test", 512).expect("encode"),
            )
            .expect("write");
    }
    assert!(matches!(
        s.run(delta::resume(&s.space, &resumed)),
        Err(LeaseError::Fenced { .. })
    ));

    // Never for a watchdog host: the others may already count it dead.
    let s = setup(4, 1);
    let mut request = join_request(1, "alpha");
    request.watchdog = true;
    let lease = s.run(delta::join(&s.space, request)).expect("join");
    s.clock.advance_ms(timeouts.host_dead_ms);
    assert!(matches!(
        s.run(delta::resume(&s.space, &lease)),
        Err(LeaseError::Invalid(_))
    ));
}
