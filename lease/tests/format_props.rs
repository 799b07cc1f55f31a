//! Property tests of the on-disk format.

mod common;

use common::*;
use lease::delta::DeltaLease;
use lease::disk::Disk;
use lease::format::{
    Capacity, DblockRecord, FenceMethod, Geometry, HeaderRecord, HostFlags, HostRecord,
    LeaderFlags, LeaderRecord, LeaseKind, LeaseLocation, Proposal, SharedSettings,
};
use lease::paxos::{self, AcquireRequest, ReleaseRequest};
use lease::{HostId, LeaseError, Owner};
use proptest::prelude::*;

fn name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9._-]{{0,{max}}}")).expect("regex")
}

fn owner() -> impl Strategy<Value = Owner> {
    (1u32..=2000, 1u64..u64::MAX, any::<u64>()).prop_map(|(h, g, nonce)| Owner {
        host_id: HostId::new(h).expect("nonzero"),
        generation: g,
        nonce,
    })
}

fn host_record() -> impl Strategy<Value = HostRecord> {
    (
        (
            1u32..=2000,
            any::<[bool; 3]>(),
            1u64..u64::MAX / 2,
            any::<u64>(),
            1u32..u32::MAX,
        ),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u32; 4]>(),
            0u8..4,
            name(64),
        ),
        (any::<[u32; 2]>(), any::<u64>(), any::<[u32; 16]>()),
    )
        .prop_map(
            |(
                (id, flags, generation, timestamp_ms, io_timeout_ms),
                (fencer, fenced, nonce, cap, method, host_name),
                (digests, resource_changes, changed_slots),
            )| {
                HostRecord {
                    host_id: HostId::new(id).expect("nonzero"),
                    flags: HostFlags {
                        released: flags[0],
                        fenced: flags[1],
                        watchdog: flags[2],
                    },
                    generation,
                    timestamp_ms,
                    io_timeout_ms,
                    fencer_host_id: fencer,
                    fenced_generation: fenced,
                    generation_floor: generation / 2,
                    nonce,
                    capacity: Capacity {
                        memory_mib_free: cap[0],
                        memory_mib_total: cap[1],
                        vcpus_free: cap[2],
                        vcpus_total: cap[3],
                    },
                    fence_method: [
                        FenceMethod::None,
                        FenceMethod::Ipmi,
                        FenceMethod::Agent,
                        FenceMethod::Manual,
                    ][method as usize],
                    host_name,
                    shared_settings: SharedSettings {
                        failover_digest: digests[0],
                        cluster_digest: digests[1],
                    },
                    resource_changes,
                    changed_slots: lease::format::ChangedSlots(changed_slots),
                }
            },
        )
}

fn location() -> impl Strategy<Value = LeaseLocation> {
    (any::<bool>(), 0u32..1000).prop_map(|(fence, index)| LeaseLocation {
        kind: if fence {
            LeaseKind::Fence
        } else {
            LeaseKind::Resource
        },
        index,
        leader_offset_bytes: 0,
    })
}

fn leader_record() -> impl Strategy<Value = (LeaseLocation, LeaderRecord)> {
    (
        location(),
        proptest::option::of(owner()),
        any::<[bool; 2]>(),
        1u64..u64::MAX,
        any::<(u64, u32, u32)>(),
        name(48),
    )
        .prop_map(|(location, owner, released, lver, (ts, len, crc), name)| {
            let lver = if owner.is_some() { lver } else { 0 };
            (
                location,
                LeaderRecord {
                    owner,
                    flags: LeaderFlags {
                        released: released[0],
                        name_checked: released[1],
                    },
                    lver,
                    max_hosts: 2000,
                    kind: location.kind,
                    index: location.index,
                    timestamp_ms: ts,
                    payload_length_bytes: len,
                    payload_checksum: crc,
                    name,
                },
            )
        })
}

fn dblock_record() -> impl Strategy<Value = DblockRecord> {
    (
        any::<u64>(),
        1u64..u64::MAX,
        proptest::option::of((owner(), name(48))),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(lver, mbal, inp, timestamp_ms, released)| {
            let bal = if inp.is_some() { mbal / 2 + 1 } else { 0 };
            DblockRecord {
                lver,
                mbal,
                bal,
                released: released && inp.is_some(),
                inp: inp.map(|(owner, name)| Proposal { owner, name }),
                timestamp_ms,
            }
        })
}

fn header_record() -> impl Strategy<Value = HeaderRecord> {
    (
        prop_oneof![Just(512u32), Just(4096u32)],
        1u32..=2000,
        0u32..=1000,
        0u32..=64,
        any::<u32>(),
        name(47),
    )
        .prop_map(|(sector, hosts, resources, payload_sectors, io, ls)| {
            let geometry = Geometry::new(sector, hosts, resources, payload_sectors * sector)
                .expect("geometry");
            HeaderRecord::new(&format!("l{ls}"), geometry, io).expect("header")
        })
}

/// Every encoded record, with a decoder that must reject any change.
fn flip(sector: &mut [u8], bit: usize) {
    sector[bit / 8] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn host_record_round_trips(record in host_record(), big in any::<bool>()) {
        let sector_size = if big { 4096 } else { 512 };
        let sector = record.encode("lockspace", sector_size).expect("encode");
        prop_assert_eq!(sector.len(), sector_size as usize);
        prop_assert_eq!(HostRecord::decode(&sector, "lockspace", record.host_id), Ok(record));
    }

    #[test]
    fn leader_record_round_trips((location, record) in leader_record()) {
        let sector = record.encode("ls", 512).expect("encode");
        prop_assert_eq!(LeaderRecord::decode(&sector, "ls", &location, 2000), Ok(record));
    }

    #[test]
    fn dblock_record_round_trips(record in dblock_record()) {
        let sector = record.encode("ls", 512).expect("encode");
        prop_assert_eq!(DblockRecord::decode(&sector, "ls", 2000), Ok(record));
    }

    #[test]
    fn header_record_round_trips(record in header_record()) {
        let sector = record.encode();
        prop_assert_eq!(HeaderRecord::decode(&sector, Some(&record.lockspace)), Ok(record));
    }

    #[test]
    fn any_flipped_bit_is_rejected(
        host in host_record(),
        (location, leader) in leader_record(),
        dblock in dblock_record(),
        header in header_record(),
        bit in 0usize..4096,
    ) {
        let mut s = host.encode("ls", 512).expect("encode");
        flip(&mut s, bit);
        prop_assert!(HostRecord::decode(&s, "ls", host.host_id).is_err());
        let mut s = leader.encode("ls", 512).expect("encode");
        flip(&mut s, bit);
        prop_assert!(LeaderRecord::decode(&s, "ls", &location, 2000).is_err());
        let mut s = dblock.encode("ls", 512).expect("encode");
        flip(&mut s, bit);
        prop_assert!(DblockRecord::decode(&s, "ls", 2000).is_err());
        let mut s = header.encode();
        flip(&mut s, bit);
        prop_assert!(HeaderRecord::decode(&s, None).is_err());
    }

    #[test]
    fn foreign_lockspace_is_rejected(host in host_record()) {
        let s = host.encode("ours", 512).expect("encode");
        let rejected = matches!(
            HostRecord::decode(&s, "theirs", host.host_id),
            Err(lease::format::FormatError::ForeignLockspace { .. })
        );
        prop_assert!(rejected);
    }
}

fn slot_image(s: &Setup) -> Vec<u8> {
    let location = s.space.geometry.resource_lease(0);
    let mut image = vec![0; s.space.geometry.lease_size_bytes() as usize];
    s.disk
        .read(location.leader_offset_bytes, &mut image)
        .expect("read");
    image
}

fn acquire_request(s: &Setup, lease: &DeltaLease, seed: u64) -> AcquireRequest {
    AcquireRequest {
        location: s.space.geometry.resource_lease(0),
        owner: lease.owner(),
        name: "vm1".to_string(),
        claim: false,
        dead_hosts: Vec::new(),
        io_timeout_ms: IO_TIMEOUT_MS,
        seed,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A slot torn between two states (each sector from one or the other)
    /// never lets two newcomers both acquire it, and never lets anyone take
    /// it from a live holder whose evidence survived the tear. (A tear that
    /// loses all of a holder's writes is a lost write; no single-disk
    /// protocol survives that.)
    #[test]
    fn torn_slot_never_yields_two_owners(mask in proptest::collection::vec(any::<bool>(), 5), schedule in any::<u64>()) {
        let s = setup(4, 1);
        let hosts: Vec<DeltaLease> = (1..=4).map(|i| s.join(i, &format!("h{i}"))).collect();
        // old: host 1 holds vm1 (lver 1); new: host 1 released, host 2 holds (lver 2).
        let claim = AcquireRequest { claim: true, ..acquire_request(&s, &hosts[0], 1) };
        s.run(paxos::acquire(&s.space, claim)).expect("claim");
        let old = slot_image(&s);
        s.run(paxos::release(&s.space, ReleaseRequest {
            location: s.space.geometry.resource_lease(0),
            owner: hosts[0].owner(),
            lver: None,
            clear_name: false,
            name: None,
        })).expect("release");
        s.run(paxos::acquire(&s.space, acquire_request(&s, &hosts[1], 2))).expect("host 2");
        let new = slot_image(&s);
        let torn: Vec<u8> = old
            .chunks(512)
            .zip(new.chunks(512))
            .zip(mask.iter())
            .flat_map(|((o, n), &take_new)| if take_new { n.to_vec() } else { o.to_vec() })
            .collect();
        s.disk.write(s.space.geometry.resource_lease(0).leader_offset_bytes, &torn).expect("tear");
        // Hosts 3 and 4 (both live) race for it, interleaved.
        let ops = vec![
            paxos::acquire(&s.space, acquire_request(&s, &hosts[2], schedule)),
            paxos::acquire(&s.space, acquire_request(&s, &hosts[3], schedule ^ 1)),
        ];
        let results = run_interleaved(ops, &s.disk, &s.clock, schedule);
        let winners = results.iter().filter(|r| r.is_ok()).count();
        prop_assert!(winners <= 1, "two owners: {:?}", results);
        // Sector 0 is the leader, sector 1 host 1's dblock, sector 2 host 2's.
        // Host 2's accepted value surviving in its dblock binds instance 2;
        // host 1's unreleased lease surviving whole (leader and dblock)
        // blocks everyone. Either way, no newcomer may win.
        let host2_evidence = mask[2];
        let host1_intact = !mask[0] && !mask[1];
        if host2_evidence || host1_intact {
            prop_assert!(winners == 0, "a newcomer took a held lease: {:?} (mask {:?})", results, mask);
            for r in &results {
                let blocked = matches!(r, Err(LeaseError::HeldByOther { owner, .. })
                    if *owner == hosts[1].owner() || *owner == hosts[0].owner());
                prop_assert!(blocked, "expected HeldByOther, got {:?}", r);
            }
        }
    }
}
