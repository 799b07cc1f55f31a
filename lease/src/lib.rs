//! leasehold's lease library: the on-disk format, sector I/O, the delta
//! lease (host liveness) and the Disk Paxos lease (resource ownership).
//!
//! The library is synchronous and does no I/O of its own inside the
//! protocols: every protocol operation is an [`op::Operation`], a step
//! machine that asks for sector reads, writes and waits, driven either by
//! [`op::run`] over a [`disk::Disk`] and a [`clock::Clock`], or by a
//! simulator that interleaves many hosts deterministically.
//!
//! Modules, bottom up:
//! - [`ids`], [`clock`], [`timeouts`]: identifiers, time, every interval.
//! - [`disk`]: the `Disk` trait; O_DIRECT, io_uring and in-memory devices.
//! - [`format`]: every record and the device layout (docs/format.md).
//! - [`op`]: the step-machine driver.
//! - [`lockspace`]: an opened device; sector decoding.
//! - [`delta`], [`observer`]: host liveness.
//! - [`paxos`], [`resource`]: resource leases, by slot and by name;
//!   [`payload`]: what a resource's holder stores with it.
//! - [`device`]: format and dump; [`open`]: opening a device.

pub mod clock;
pub mod delta;
pub mod device;
pub mod disk;
pub mod error;
pub mod format;
pub mod ids;
pub mod lockspace;
pub mod observer;
pub mod op;
pub mod open;
pub mod paxos;
pub mod payload;
pub mod planted;
pub mod resource;
pub mod timeouts;

pub use error::LeaseError;
pub use ids::{HostId, Owner};
pub use lockspace::Lockspace;
