//! Opening a lease device: the chosen I/O engine, the sector size from the
//! device or (for a regular file) from its header, and the lockspace.

use crate::disk::{DirectDisk, Disk, DiskError, UringDisk};
use crate::error::LeaseError;
use crate::format::HeaderRecord;
use crate::lockspace::Lockspace;

/// How sector I/O is issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Blocking O_DIRECT pread/pwrite: an I/O to a hung device blocks.
    Pread,
    /// io_uring with a deadline per I/O: a hung device fails the I/O with a
    /// timeout instead of blocking the caller.
    Uring { io_deadline_ms: u64 },
}

/// An open device, usable from the thread it is moved to.
pub type BoxedDisk = Box<dyn Disk + Send>;

/// Open `path` with `engine`. `sector_size_bytes` is required for a regular
/// file unless it is read from the header ([`open_lockspace`]).
pub fn open_disk(
    path: &str,
    engine: Engine,
    sector_size_bytes: Option<u32>,
) -> Result<BoxedDisk, DiskError> {
    Ok(match engine {
        Engine::Pread => Box::new(DirectDisk::open(path, sector_size_bytes)?),
        Engine::Uring { io_deadline_ms } => {
            Box::new(UringDisk::open(path, sector_size_bytes, io_deadline_ms)?)
        }
    })
}

/// Open an existing lease device and its lockspace. For a regular file
/// without an explicit sector size, the sector size comes from its header.
/// With `expected_name`, a device of another lockspace is refused.
pub fn open_lockspace(
    path: &str,
    engine: Engine,
    sector_size_bytes: Option<u32>,
    expected_name: Option<&str>,
) -> Result<(BoxedDisk, Lockspace), LeaseError> {
    let disk = open_disk(path, engine, sector_size_bytes)?;
    let is_file = std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false);
    if sector_size_bytes.is_none() && is_file {
        let mut sector = vec![0; disk.sector_size_bytes() as usize];
        disk.read(0, &mut sector)?;
        if let Ok(header) = HeaderRecord::decode(&sector, None) {
            let formatted = header.geometry.sector_size_bytes();
            if formatted != disk.sector_size_bytes() {
                drop(disk);
                let disk = open_disk(path, engine, Some(formatted))?;
                let space = Lockspace::open(disk.as_ref(), expected_name)?;
                return Ok((disk, space));
            }
        }
    }
    let space = Lockspace::open(disk.as_ref(), expected_name)?;
    Ok((disk, space))
}
