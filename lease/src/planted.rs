//! Deliberately unsafe protocol variants, for proving that the simulator's
//! checks can fail. Each names one safety step it removes. They are compiled
//! in only with the `planted-bugs` feature, which only the simulator
//! enables; without it `Lockspace::planted` is always false and the
//! optimiser removes every branch.

/// One deliberately unsafe variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Paxos acquire takes a held lease without checking that its owner is
    /// over (released, fenced, below the floor, dead by the watchdog rule).
    TakeoverWithoutExpiry,
    /// Delta acquire returns right after its write: no settle wait, no re-read.
    SkipJoinReread,
    /// Paxos skips phase 1: proposes itself without learning a value that
    /// may already be chosen.
    SkipPaxosPhase1,
    /// A delta lease counts as valid past its renewal deadline, so the host
    /// keeps its resources and keeps feeding its watchdog.
    IgnoreRenewalDeadline,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 4] = [
        PlantedBug::TakeoverWithoutExpiry,
        PlantedBug::SkipJoinReread,
        PlantedBug::SkipPaxosPhase1,
        PlantedBug::IgnoreRenewalDeadline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::TakeoverWithoutExpiry => "takeover-without-expiry",
            PlantedBug::SkipJoinReread => "skip-join-reread",
            PlantedBug::SkipPaxosPhase1 => "skip-paxos-phase1",
            PlantedBug::IgnoreRenewalDeadline => "ignore-renewal-deadline",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}
