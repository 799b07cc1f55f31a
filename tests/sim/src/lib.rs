//! leasehold's deterministic simulator: the real `lease` protocol code on a
//! simulated disk, with simulated clocks and faults, driven by one seed.
//! See docs/safety.md for what it checks and README.md for how to run it.

pub mod clock;
pub mod process;
pub mod rng;
pub mod scenario;
pub mod world;

pub use scenario::{Options, Scenario};
pub use world::{Outcome, Violation, World};

/// Simulate one seed.
pub fn run_seed(seed: u64, options: &Options) -> Outcome {
    World::new(seed, Scenario::draw(seed, options)).run()
}
