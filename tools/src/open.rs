//! Opening a lease device the way the flags say.

use crate::cli::{DeviceArgs, IoEngine};
use anyhow::Result;
use lease::open::{BoxedDisk, Engine};
use lease::Lockspace;

/// Deadline for each I/O with the io_uring engine.
const URING_IO_DEADLINE_MS: u64 = 10_000;

fn engine(args: &DeviceArgs) -> Engine {
    match args.io_engine {
        IoEngine::Pread => Engine::Pread,
        IoEngine::Uring => Engine::Uring {
            io_deadline_ms: URING_IO_DEADLINE_MS,
        },
    }
}

pub fn open_disk(args: &DeviceArgs, sector_size_bytes: Option<u32>) -> Result<BoxedDisk> {
    Ok(lease::open::open_disk(
        &args.path,
        engine(args),
        sector_size_bytes,
    )?)
}

/// Open an existing lease device. For a regular file without --sector-size,
/// the sector size is taken from its header.
pub fn open_lockspace(args: &DeviceArgs) -> Result<(BoxedDisk, Lockspace)> {
    // Its errors name the device already.
    Ok(lease::open::open_lockspace(
        &args.path,
        engine(args),
        args.sector_size,
        None,
    )?)
}
