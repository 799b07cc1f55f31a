//! Resources by name: placement along a name's probe sequence, the
//! NAME_CHECKED mark, and an acquire whose device I/O does not grow with
//! the number of slots.

mod common;

use common::*;
use lease::delta::DeltaLease;
use lease::disk::{CountingDisk, Disk};
use lease::op::run;
use lease::paxos::{self, ReleaseRequest};
use lease::resource::{self, NamedAcquire};

fn named(lease: &DeltaLease, name: &str) -> NamedAcquire {
    NamedAcquire {
        name: name.to_string(),
        owner: lease.owner(),
        dead_hosts: Vec::new(),
        io_timeout_ms: IO_TIMEOUT_MS,
        seed: 5,
    }
}

fn release(s: &Setup, lease: &DeltaLease, slot: u32) {
    s.run(paxos::release(
        &s.space,
        ReleaseRequest {
            location: s.space.geometry.resource_lease(slot),
            owner: lease.owner(),
            lver: None,
            clear_name: false,
            name: None,
        },
    ))
    .expect("release");
}

/// (reads, bytes read, writes) of one acquire of `name`, claimed before.
fn acquire_cost(slots: u32, name: &str) -> (u64, u64, u64) {
    let s = setup(4, slots);
    let a = s.join(1, "alpha");
    let (slot, leader) = s
        .run(resource::acquire(&s.space, named(&a, name)))
        .expect("claim");
    assert_eq!(
        slot,
        resource::home_slot(name, slots),
        "not at its home slot"
    );
    assert!(leader.flags.name_checked, "a claim that scanned is marked");
    release(&s, &a, slot);
    let counting = CountingDisk::new(&s.disk);
    let (again, leader) = run(
        resource::acquire(&s.space, named(&a, name)),
        &counting,
        &s.clock,
    )
    .expect("acquire");
    assert_eq!(again, slot);
    assert!(
        leader.flags.name_checked,
        "the mark passes to the next version"
    );
    let count = counting.count();
    (count.reads, count.read_bytes, count.writes)
}

#[test]
fn an_acquire_of_a_checked_name_costs_the_same_at_16_and_at_4096_slots() {
    let small = acquire_cost(16, "vm-web");
    let large = acquire_cost(4096, "vm-web");
    assert_eq!(small, large, "(reads, bytes, writes) grew with the slots");
    // One leader on the probe, then paxos: a handful of I/Os.
    assert!(small.0 <= 8 && small.2 <= 4, "{small:?}");
}

#[test]
fn names_sharing_a_home_slot_probe_on_and_are_each_found() {
    let slots = 8;
    // Two names with the same home slot.
    let first = "n0".to_string();
    let home = resource::home_slot(&first, slots);
    let second = (1..1000)
        .map(|i| format!("n{i}"))
        .find(|n| resource::home_slot(n, slots) == home)
        .expect("a colliding name");
    let s = setup(4, slots);
    let a = s.join(1, "alpha");
    let (slot1, _) = s
        .run(resource::acquire(&s.space, named(&a, &first)))
        .expect("claim first");
    let (slot2, _) = s
        .run(resource::acquire(&s.space, named(&a, &second)))
        .expect("claim second");
    assert_eq!(slot1, home);
    assert_eq!(slot2, (home + 1) % slots, "the next slot of the sequence");
    assert_eq!(
        s.run(resource::lookup(&s.space, &second))
            .expect("lookup")
            .map(|(slot, _)| slot),
        Some(slot2)
    );
    // The first is given back (name cleared): the second is still found,
    // past the freed slot, and a new claim of the first name reuses it.
    s.run(paxos::release(
        &s.space,
        ReleaseRequest {
            location: s.space.geometry.resource_lease(slot1),
            owner: a.owner(),
            lver: None,
            clear_name: true,
            name: None,
        },
    ))
    .expect("give back");
    assert_eq!(
        s.run(resource::lookup(&s.space, &second))
            .expect("lookup")
            .map(|(slot, _)| slot),
        Some(slot2)
    );
    release(&s, &a, slot2);
    let (again, leader) = s
        .run(resource::acquire(&s.space, named(&a, &second)))
        .expect("acquire second");
    assert_eq!(again, slot2);
    assert!(leader.flags.name_checked);
    let (reclaimed, _) = s
        .run(resource::acquire(&s.space, named(&a, &first)))
        .expect("claim first again");
    assert_eq!(reclaimed, slot1);
    let scan = s.run(resource::scan(&s.space)).expect("scan");
    for name in [&first, &second] {
        let carrying = scan
            .iter()
            .filter(|(_, l)| matches!(l, Ok(l) if &l.name == name))
            .count();
        assert_eq!(carrying, 1, "{name} in {carrying} slots");
    }
}

#[test]
fn a_slot_without_the_mark_is_scanned_once_and_then_marked() {
    // A leader that carries a name without NAME_CHECKED (a claim whose
    // holder stopped before its scan, or a device from an older build).
    let s = setup(4, 16);
    let a = s.join(1, "alpha");
    let (slot, mut leader) = s
        .run(resource::acquire(&s.space, named(&a, "vm-db")))
        .expect("claim");
    release(&s, &a, slot);
    leader.flags.name_checked = false;
    let location = s.space.geometry.resource_lease(slot);
    let sector = leader.encode("test", 512).expect("encode");
    s.disk
        .write(location.leader_offset_bytes, &sector)
        .expect("write");
    let counting = CountingDisk::new(&s.disk);
    let (again, leader) = run(
        resource::acquire(&s.space, named(&a, "vm-db")),
        &counting,
        &s.clock,
    )
    .expect("acquire");
    assert_eq!(again, slot);
    assert!(leader.flags.name_checked);
    // It read its window to check (its own lease and the never-owned one
    // after it), which a marked acquire does not; not every slot.
    let marked = acquire_cost(16, "vm-db");
    let reads = counting.count().reads;
    assert!(reads >= marked.0 + 2, "{reads} reads, marked {marked:?}");
    assert!(reads < 16, "{reads} reads: more than its window");
}

/// (reads, bytes read, writes) of the first claim of `name` on a fresh
/// device of `slots` slots.
fn claim_cost(slots: u32, name: &str, names_probed: bool) -> (u64, u64, u64) {
    let s = setup(4, slots);
    if !names_probed {
        let mut header = lease::format::HeaderRecord::new("test", s.space.geometry, IO_TIMEOUT_MS)
            .expect("header");
        header.names_probed = false;
        s.disk.write(0, &header.encode()).expect("write header");
    }
    let space = lease::Lockspace::open(&s.disk, Some("test")).expect("open");
    assert_eq!(space.names_probed, names_probed);
    let a = s.join(1, "alpha");
    let counting = CountingDisk::new(&s.disk);
    let (slot, leader) = run(
        resource::acquire(&space, named(&a, name)),
        &counting,
        &s.clock,
    )
    .expect("claim");
    assert_eq!(slot, resource::home_slot(name, slots));
    assert!(leader.flags.name_checked);
    let count = counting.count();
    (count.reads, count.read_bytes, count.writes)
}

#[test]
fn a_claim_of_a_new_name_costs_the_same_at_16_and_at_4096_slots() {
    let small = claim_cost(16, "vm-new", true);
    let large = claim_cost(4096, "vm-new", true);
    assert_eq!(small, large, "(reads, bytes, writes) grew with the slots");
}

#[test]
fn without_the_names_probed_flag_a_claim_reads_every_lease() {
    // A device from a build that placed names first-free overall: a name
    // may be anywhere, so the window is every slot.
    let (reads, _, _) = claim_cost(64, "vm-old", false);
    assert!(reads >= 2 * 64, "{reads} reads");
}
