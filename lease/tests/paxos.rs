//! Paxos leases: acquire, release, takeover rules, corrupt sectors, names.

mod common;

use common::*;
use lease::clock::Clock;
use lease::delta::{self, DeltaLease, RenewRequest};
use lease::disk::Disk;
use lease::format::LeaderRecord;
use lease::observer::{HostState, Observer};
use lease::paxos::{self, AcquireRequest, ReleaseRequest};
use lease::resource::{self, NamedAcquire};
use lease::timeouts::Timeouts;
use lease::{LeaseError, Owner};

fn request(s: &Setup, lease: &DeltaLease, slot: u32, name: &str, claim: bool) -> AcquireRequest {
    AcquireRequest {
        location: s.space.geometry.resource_lease(slot),
        owner: lease.owner(),
        name: name.to_string(),
        claim,
        dead_hosts: Vec::new(),
        io_timeout_ms: IO_TIMEOUT_MS,
        seed: 1,
    }
}

fn named(lease: &DeltaLease, name: &str, seed: u64) -> NamedAcquire {
    NamedAcquire {
        name: name.to_string(),
        owner: lease.owner(),
        dead_hosts: Vec::new(),
        io_timeout_ms: IO_TIMEOUT_MS,
        seed,
    }
}

fn release(s: &Setup, owner: Owner, slot: u32) -> Result<u64, LeaseError> {
    s.run(paxos::release(
        &s.space,
        ReleaseRequest {
            location: s.space.geometry.resource_lease(slot),
            owner,
            lver: None,
            clear_name: false,
            name: None,
        },
    ))
}

#[test]
fn acquire_release_and_held_by_other() {
    let s = setup(4, 2);
    let a = s.join(1, "alpha");
    let b = s.join(2, "bravo");
    let leader = s
        .run(paxos::acquire(&s.space, request(&s, &a, 0, "vm1", true)))
        .expect("claim");
    assert_eq!(leader.owner, Some(a.owner()));
    assert_eq!(leader.lver, 1);
    assert_eq!(leader.name, "vm1");
    // Acquiring again answers with the lease the holder has.
    let again = s
        .run(paxos::acquire(&s.space, request(&s, &a, 0, "vm1", false)))
        .expect("again");
    assert_eq!(again.lver, 1);
    assert_eq!(again.owner, Some(a.owner()));
    match s.run(paxos::acquire(&s.space, request(&s, &b, 0, "vm1", false))) {
        Err(LeaseError::HeldByOther {
            owner,
            owner_name,
            lver,
            ..
        }) => {
            assert_eq!(owner, a.owner());
            assert_eq!(owner_name, "alpha");
            assert_eq!(lver, 1);
        }
        other => panic!("expected HeldByOther, got {other:?}"),
    }
    // b cannot release what a holds.
    assert!(matches!(
        release(&s, b.owner(), 0),
        Err(LeaseError::NotOwner { .. })
    ));
    release(&s, a.owner(), 0).expect("release");
    let taken = s
        .run(paxos::acquire(&s.space, request(&s, &b, 0, "vm1", false)))
        .expect("b acquires");
    assert_eq!(taken.owner, Some(b.owner()));
    assert_eq!(
        taken.lver, 2,
        "lver increments on every change of ownership"
    );
}

#[test]
fn takeover_only_when_the_owner_is_known_over() {
    let s = setup(4, 1);
    let a = s.join(1, "alpha");
    let b = s.join(2, "bravo");
    s.run(paxos::acquire(&s.space, request(&s, &a, 0, "vm1", true)))
        .expect("claim");

    // a left cleanly: its generation is over.
    s.run(delta::leave(&s.space, &a)).expect("leave");
    s.run(paxos::acquire(&s.space, request(&s, &b, 0, "vm1", false)))
        .expect("after leave");

    // a rejoins (generation 2, now with a watchdog) and takes it back after b releases.
    let mut with_watchdog = join_request(1, "alpha");
    with_watchdog.watchdog = true;
    let a2 = s.run(delta::join(&s.space, with_watchdog)).expect("rejoin");
    release(&s, b.owner(), 0).expect("release");
    s.run(paxos::acquire(&s.space, request(&s, &a2, 0, "vm1", false)))
        .expect("a2");

    // The watchdog rule: b's observer must have watched a stand still past host_dead.
    let mut observer = Observer::new(4, Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS));
    let scan = |s: &Setup, observer: &mut Observer| {
        let mut area = vec![0; s.space.geometry.host_area_size_bytes() as usize];
        s.disk
            .read(s.space.geometry.host_area_offset_bytes(), &mut area)
            .expect("scan");
        observer.observe(s.clock.now_ms(), &s.space, &area);
    };
    let t = Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS);
    let mut b_lease = b.clone();
    let mut saw_silent = false;
    while s.clock.now_ms() < 1_000_000 + 100 * t.io_timeout_ms {
        scan(&s, &mut observer);
        if observer.view(host(1)).state == HostState::Silent {
            saw_silent = true;
        }
        let mut req = request(&s, &b_lease, 0, "vm1", false);
        req.dead_hosts = observer.dead_hosts();
        match s.run(paxos::acquire(&s.space, req)) {
            Ok(leader) => {
                assert_eq!(observer.view(host(1)).state, HostState::Dead);
                assert!(observer.view(host(1)).unchanged_for_ms >= t.host_dead_ms);
                assert_eq!(leader.owner, Some(b_lease.owner()));
                assert!(saw_silent, "silent comes before dead");
                return;
            }
            Err(LeaseError::HeldByOther { owner, .. }) => assert_eq!(owner, a2.owner()),
            Err(e) => panic!("unexpected {e}"),
        }
        s.clock.advance_ms(t.renew_interval_ms);
        b_lease = s
            .run(delta::renew(&s.space, &b_lease, RenewRequest::default()))
            .expect("b renews")
            .lease;
    }
    panic!("never became takeable");
}

#[test]
fn a_fence_mark_or_a_raised_floor_ends_a_generation() {
    let s = setup(4, 2);
    let a = s.join(1, "alpha");
    let b = s.join(2, "bravo");
    s.run(paxos::acquire(&s.space, request(&s, &a, 0, "vm1", true)))
        .expect("claim vm1");
    s.run(paxos::acquire(&s.space, request(&s, &a, 1, "vm2", true)))
        .expect("claim vm2");
    // a crashes and restarts under its own name: generation 1 stays protected,
    // even against a's own new generation.
    let a2 = s.join(1, "alpha");
    match s.run(paxos::acquire(&s.space, request(&s, &a2, 0, "vm1", false))) {
        Err(LeaseError::HeldByOther { owner, .. }) => assert_eq!(owner, a.owner()),
        other => panic!("expected HeldByOther, got {other:?}"),
    }
    // Once a knows its old processes are gone it raises its floor.
    let renewed = s
        .run(delta::renew(
            &s.space,
            &a2,
            RenewRequest {
                raise_floor: true,
                ..RenewRequest::default()
            },
        ))
        .expect("raise floor");
    assert_eq!(renewed.lease.record.generation_floor, 2);
    s.run(paxos::acquire(&s.space, request(&s, &a2, 0, "vm1", false)))
        .expect("a2 takes vm1");
    // b fences a2 (after a confirmed power-off) and takes vm1 from it.
    let mark = delta::FenceMark {
        victim: host(1),
        generation: 2,
        fencer: host(2),
        method: lease::format::FenceMethod::Ipmi,
    };
    let marked = s.run(delta::mark_fenced(&s.space, mark)).expect("mark");
    assert!(marked.flags.fenced);
    assert_eq!(marked.fenced_generation, 2);
    let taken = s
        .run(paxos::acquire(&s.space, request(&s, &b, 0, "vm1", false)))
        .expect("b takes vm1");
    assert_eq!(taken.owner, Some(b.owner()));
    // a2's renewal now finds the mark.
    assert!(matches!(
        s.run(delta::renew(
            &s.space,
            &renewed.lease,
            RenewRequest::default()
        )),
        Err(LeaseError::Fenced { fencer: 2, .. })
    ));
}

#[test]
fn the_watchdog_rule_needs_a_watchdog() {
    let s = setup(4, 1);
    let a = s.join(1, "alpha");
    let b = s.join(2, "bravo");
    s.run(paxos::acquire(&s.space, request(&s, &a, 0, "vm1", true)))
        .expect("claim");
    // b's observer watched a stand still long past host_dead...
    let mut req = request(&s, &b, 0, "vm1", false);
    req.dead_hosts = vec![(host(1), a.record.generation)];
    // ...but a has no watchdog: it may still run vm1. Only a fence helps.
    match s.run(paxos::acquire(&s.space, req)) {
        Err(LeaseError::HeldByOther { owner, .. }) => assert_eq!(owner, a.owner()),
        other => panic!("expected HeldByOther, got {other:?}"),
    }
}

#[test]
fn a_renewing_owner_is_never_declared_dead() {
    let s = setup(4, 1);
    let mut a = s.join(1, "alpha");
    let t = Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS);
    let mut observer = Observer::new(4, t);
    for _ in 0..100 {
        let mut area = vec![0; s.space.geometry.host_area_size_bytes() as usize];
        s.disk
            .read(s.space.geometry.host_area_offset_bytes(), &mut area)
            .expect("scan");
        observer.observe(s.clock.now_ms(), &s.space, &area);
        let state = observer.view(host(1)).state;
        assert!(
            matches!(state, HostState::Unknown | HostState::Live),
            "{state:?}"
        );
        s.clock.advance_ms(t.renew_interval_ms);
        a = s
            .run(delta::renew(&s.space, &a, RenewRequest::default()))
            .expect("renew")
            .lease;
    }
    assert_eq!(observer.view(host(1)).state, HostState::Live);
}

#[test]
fn a_gap_in_our_own_reads_restarts_the_silence_window() {
    let s = setup(4, 1);
    s.join(1, "alpha");
    let t = Timeouts::from_io_timeout_ms(IO_TIMEOUT_MS);
    let mut observer = Observer::new(4, t);
    let scan = |observer: &mut Observer| {
        let mut area = vec![0; s.space.geometry.host_area_size_bytes() as usize];
        s.disk
            .read(s.space.geometry.host_area_offset_bytes(), &mut area)
            .expect("scan");
        observer.observe(s.clock.now_ms(), &s.space, &area);
    };
    scan(&mut observer);
    // Our own storage stalls for longer than the expiry: no verdict from that.
    s.clock.advance_ms(t.expiry_ms * 3);
    scan(&mut observer);
    assert_eq!(observer.view(host(1)).state, HostState::Unknown);
    assert_eq!(observer.view(host(1)).unchanged_for_ms, 0);
    for _ in 0..(t.expiry_ms / t.renew_interval_ms) {
        s.clock.advance_ms(t.renew_interval_ms);
        scan(&mut observer);
    }
    assert_eq!(observer.view(host(1)).state, HostState::Silent);
}

fn corrupt(s: &Setup, offset: u64, byte: usize) {
    s.disk
        .with_bytes(|bytes| bytes[offset as usize + byte] ^= 0x40);
}

#[test]
fn corrupt_or_foreign_sectors_are_never_free() {
    let s = setup(4, 2);
    let a = s.join(1, "alpha");
    let slot = s.space.geometry.resource_lease(0);
    // A flipped bit in another host's dblock: acquire refuses, naming the offset.
    let offset = s.space.geometry.dblock_offset_bytes(&slot, host(3));
    corrupt(&s, offset, 100);
    match s.run(paxos::acquire(&s.space, request(&s, &a, 0, "", true))) {
        Err(LeaseError::Corrupt { offset_bytes, .. }) => assert_eq!(offset_bytes, offset),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A claim reads the leases of its window whole first: the unusable
    // dblock blocks it.
    match s.run(resource::acquire(&s.space, named(&a, "vm9", 1))) {
        Err(LeaseError::ClaimBlocked {
            slot: 0, reason, ..
        }) => {
            assert!(reason.contains(&format!("offset {offset}")), "{reason}")
        }
        other => panic!("expected ClaimBlocked, got {other:?}"),
    }
    // While a leader in a name's window is unusable, the name is not
    // claimed (that leader might carry it): here the check after the win
    // reaches the unusable slot 1, gives the claim back and says why.
    let s = setup(4, 2);
    let a = s.join(1, "alpha");
    corrupt(
        &s,
        s.space.geometry.resource_lease(1).leader_offset_bytes,
        200,
    );
    match s.run(resource::acquire(&s.space, named(&a, "vm9", 1))) {
        Err(LeaseError::ClaimBlocked { slot: 1, .. }) => {}
        other => panic!("expected ClaimBlocked, got {other:?}"),
    }
    // A leader from another lockspace is unusable too.
    let s = setup(4, 1);
    let a = s.join(1, "alpha");
    let foreign = LeaderRecord::unused(&slot, 4)
        .encode("other", 512)
        .expect("encode");
    s.disk
        .write(slot.leader_offset_bytes, &foreign)
        .expect("write");
    match s.run(paxos::acquire(&s.space, request(&s, &a, 0, "", true))) {
        Err(LeaseError::Corrupt { error, .. }) => {
            assert!(error.to_string().contains("other"), "{error}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A blank (zeroed) host sector is not a free host sector either.
    let s = setup(4, 1);
    s.disk
        .write(s.space.geometry.host_offset_bytes(host(2)), &[0; 512])
        .expect("wipe");
    match s.run(delta::join(&s.space, join_request(2, "bravo"))) {
        Err(LeaseError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn names_find_their_slot_and_new_names_get_free_slots() {
    let s = setup(4, 3);
    let a = s.join(1, "alpha");
    let b = s.join(2, "bravo");
    let (slot1, _) = s
        .run(resource::acquire(&s.space, named(&a, "vm1", 1)))
        .expect("vm1");
    let (slot2, _) = s
        .run(resource::acquire(&s.space, named(&b, "vm2", 2)))
        .expect("vm2");
    assert_ne!(slot1, slot2);
    match s.run(resource::acquire(&s.space, named(&b, "vm1", 3))) {
        Err(LeaseError::HeldByOther { owner, .. }) => assert_eq!(owner, a.owner()),
        other => panic!("expected HeldByOther, got {other:?}"),
    }
    s.run(resource::acquire(&s.space, named(&a, "vm3", 4)))
        .expect("vm3");
    match s.run(resource::acquire(&s.space, named(&a, "vm4", 5))) {
        Err(LeaseError::NoFreeSlot { max_resources: 3 }) => {}
        other => panic!("expected NoFreeSlot, got {other:?}"),
    }
}

#[test]
fn concurrent_claims_of_one_new_name_end_with_one_slot_and_one_holder() {
    for seed in 0..300 {
        let s = setup(4, 4);
        let leases: Vec<DeltaLease> = (1..=3).map(|i| s.join(i, &format!("host{i}"))).collect();
        let ops = leases
            .iter()
            .enumerate()
            .map(|(i, l)| resource::acquire(&s.space, named(l, "vm1", seed * 31 + i as u64)))
            .collect();
        let results = run_interleaved(ops, &s.disk, &s.clock, seed);
        let winners: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "seed {seed}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, LeaseError::HeldByOther { .. }),
                    "seed {seed}: {e}"
                );
            }
        }
        let slots = s.run(resource::scan(&s.space)).expect("scan");
        let named_vm1: Vec<_> = slots
            .iter()
            .filter(|(_, l)| matches!(l, Ok(l) if l.name == "vm1"))
            .collect();
        assert_eq!(named_vm1.len(), 1, "seed {seed}: two slots carry vm1");
    }
}

#[test]
fn concurrent_acquires_of_one_lease_have_one_winner() {
    for seed in 0..300 {
        let s = setup(8, 1);
        let leases: Vec<DeltaLease> = (1..=5).map(|i| s.join(i, &format!("host{i}"))).collect();
        s.run(paxos::acquire(
            &s.space,
            request(&s, &leases[0], 0, "vm1", true),
        ))
        .expect("claim");
        release(&s, leases[0].owner(), 0).expect("release");
        let ops = leases
            .iter()
            .map(|l| {
                let mut r = request(&s, l, 0, "vm1", false);
                r.seed = seed * 7 + u64::from(l.record.host_id.get());
                paxos::acquire(&s.space, r)
            })
            .collect();
        let results = run_interleaved(ops, &s.disk, &s.clock, seed);
        let winners: Vec<Owner> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|l| l.owner)
            .collect();
        assert_eq!(winners.len(), 1, "seed {seed}: {results:?}");
        let leader = s
            .run(paxos::inquire(&s.space, s.space.geometry.resource_lease(0)))
            .expect("inquire");
        assert_eq!(
            leader.holder,
            Some(winners[0]),
            "seed {seed}: the leader names the winner: {results:?} {leader:?}"
        );
        assert!(
            leader.leader.lver >= 2,
            "seed {seed}: lver {}",
            leader.leader.lver
        );
    }
}
