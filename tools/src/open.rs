//! Opening a lease device the way the flags say.

use crate::cli::{DeviceArgs, IoEngine};
use anyhow::{Context, Result};
use lease::disk::{DirectDisk, Disk, UringDisk};
use lease::format::HeaderRecord;
use lease::Lockspace;

/// Deadline for each I/O with the io_uring engine.
const URING_IO_DEADLINE_MS: u64 = 10_000;

pub fn open_disk(args: &DeviceArgs, sector_size_bytes: Option<u32>) -> Result<Box<dyn Disk>> {
    let disk: Box<dyn Disk> = match args.io_engine {
        IoEngine::Pread => Box::new(DirectDisk::open(&args.path, sector_size_bytes)?),
        IoEngine::Uring => Box::new(UringDisk::open(
            &args.path,
            sector_size_bytes,
            URING_IO_DEADLINE_MS,
        )?),
    };
    Ok(disk)
}

/// Open an existing lease device. For a regular file without --sector-size,
/// the sector size is taken from its header.
pub fn open_lockspace(args: &DeviceArgs) -> Result<(Box<dyn Disk>, Lockspace)> {
    let disk = open_disk(args, args.sector_size)?;
    let is_file = std::fs::metadata(&args.path)
        .map(|m| m.is_file())
        .unwrap_or(false);
    if args.sector_size.is_none() && is_file {
        let mut sector = vec![0; disk.sector_size_bytes() as usize];
        disk.read(0, &mut sector)?;
        if let Ok(header) = HeaderRecord::decode(&sector, None) {
            let formatted = header.geometry.sector_size_bytes();
            if formatted != disk.sector_size_bytes() {
                drop(disk);
                let disk = open_disk(args, Some(formatted))?;
                let space = Lockspace::open(disk.as_ref(), None)?;
                return Ok((disk, space));
            }
        }
    }
    let space = Lockspace::open(disk.as_ref(), None)
        .with_context(|| format!("{} is not a usable lease device", args.path))?;
    Ok((disk, space))
}

/// A random 64-bit value for nonces and backoff seeds.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_urandom =
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_urandom.is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}
