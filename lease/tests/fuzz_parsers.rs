//! Fuzzing of every on-disk record parser, with proptest as the engine
//! (cargo-fuzz needs a nightly toolchain, which the build machines do not
//! have). Inputs: random sectors, and the sectors of `corpus/` (real records
//! from the demo device) and freshly encoded records, mutated byte by byte,
//! with the checksum recomputed so the mutations reach the field checks.
//!
//! Each parser must never panic, and whatever it accepts must encode back to
//! exactly the bytes it read (one canonical encoding per record).
//! `LEASEHOLD_FUZZ_CASES=1000000 cargo test --release -p leasehold-lease --test fuzz_parsers`
//! runs a long campaign.

use lease::format::{
    DblockRecord, HeaderRecord, HostRecord, LeaderRecord, LeaseKind, LeaseLocation,
};
use lease::HostId;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const CORPUS: [&[u8]; 5] = [
    include_bytes!("corpus/header.bin"),
    include_bytes!("corpus/host-released.bin"),
    include_bytes!("corpus/host-live.bin"),
    include_bytes!("corpus/leader.bin"),
    include_bytes!("corpus/dblock.bin"),
];

fn cases() -> u32 {
    std::env::var("LEASEHOLD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Recompute the CRC so a mutated record gets past the checksum.
fn reseal(sector: &mut [u8]) {
    sector[8..12].fill(0);
    let crc = crc32fast::hash(&sector[..512]);
    sector[8..12].copy_from_slice(&crc.to_le_bytes());
}

#[derive(Debug, Clone)]
enum Input {
    Random(Vec<u8>),
    Mutated {
        base: usize,
        edits: Vec<(usize, u8)>,
        reseal: bool,
    },
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 512).prop_map(Input::Random),
        6 => (0..CORPUS.len(), proptest::collection::vec((0usize..512, any::<u8>()), 1..8), any::<bool>())
            .prop_map(|(base, edits, reseal)| Input::Mutated { base, edits, reseal }),
    ]
}

fn sector_of(input: &Input) -> Vec<u8> {
    match input {
        Input::Random(bytes) => bytes.clone(),
        Input::Mutated {
            base,
            edits,
            reseal: again,
        } => {
            let mut sector = CORPUS[*base].to_vec();
            for &(offset, value) in edits {
                sector[offset] = value;
            }
            if *again {
                reseal(&mut sector);
            }
            sector
        }
    }
}

/// Every parser on one sector: no panic, and acceptance means canonical.
fn check(sector: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(header) = HeaderRecord::decode(sector, None) {
        prop_assert_eq!(&header.encode()[..512], &sector[..512]);
    }
    let lockspace = "demo";
    for raw in [1u32, 2, 7] {
        let host_id = HostId::new(raw).expect("nonzero");
        if let Ok(host) = HostRecord::decode(sector, lockspace, host_id) {
            let encoded = host
                .encode(lockspace, 512)
                .expect("an accepted record encodes");
            prop_assert_eq!(&encoded[..512], &sector[..512]);
        }
    }
    for (kind, index) in [(LeaseKind::Resource, 0), (LeaseKind::Fence, 1)] {
        let location = LeaseLocation {
            kind,
            index,
            leader_offset_bytes: 0,
        };
        if let Ok(leader) = LeaderRecord::decode(sector, lockspace, &location, 8) {
            let encoded = leader
                .encode(lockspace, 512)
                .expect("an accepted record encodes");
            prop_assert_eq!(&encoded[..512], &sector[..512]);
        }
    }
    if let Ok(dblock) = DblockRecord::decode(sector, lockspace, 8) {
        let encoded = dblock
            .encode(lockspace, 512)
            .expect("an accepted record encodes");
        prop_assert_eq!(&encoded[..512], &sector[..512]);
    }
    for slot in [0, 1, 7] {
        if let Ok(header) = lease::format::PayloadHeader::decode(sector, lockspace, slot, 32256) {
            let encoded = header.encode(lockspace, 512);
            prop_assert_eq!(&encoded[..512], &sector[..512]);
        }
    }
    Ok(())
}

#[test]
fn the_corpus_decodes() {
    assert!(HeaderRecord::decode(CORPUS[0], Some("demo")).is_ok());
    assert!(HostRecord::decode(CORPUS[1], "demo", HostId::new(1).expect("1")).is_ok());
    assert!(HostRecord::decode(CORPUS[2], "demo", HostId::new(2).expect("2")).is_ok());
    let slot0 = LeaseLocation {
        kind: LeaseKind::Resource,
        index: 0,
        leader_offset_bytes: 0,
    };
    assert!(LeaderRecord::decode(CORPUS[3], "demo", &slot0, 8).is_ok());
    assert!(DblockRecord::decode(CORPUS[4], "demo", 8).is_ok());
    for sector in CORPUS {
        check(sector).expect("corpus round-trips");
    }
}

#[test]
fn parsers_never_panic_and_accept_only_canonical_records() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u64);
    runner
        .run(&input(), |input| {
            let sector = sector_of(&input);
            let before = accepted.get();
            let any_ok = HeaderRecord::decode(&sector, None).is_ok()
                || DblockRecord::decode(&sector, "demo", 8).is_ok()
                || HostRecord::decode(&sector, "demo", HostId::new(1).expect("1")).is_ok();
            accepted.set(before + u64::from(any_ok));
            check(&sector)
        })
        .expect("a parser panicked or accepted a non-canonical record");
    eprintln!(
        "fuzz_parsers: {} cases, {} accepted by a parser",
        cases(),
        accepted.get()
    );
    // The mutator reaches the field checks, not only the checksum.
    assert!(accepted.get() > 0);
}
