//! Whole-sector I/O on the shared lease device.
//!
//! Every implementation reads and writes whole sectors at sector-aligned byte
//! offsets and refuses anything else with [`DiskError::Misaligned`]; none falls
//! back to buffered I/O.

mod aligned;
mod counting;
mod direct;
mod memory;
mod uring;

pub use aligned::AlignedBuffer;
pub use counting::{CountingDisk, IoCount};
pub use direct::DirectDisk;
pub use memory::MemoryDisk;
pub use uring::{UringDisk, ORPHANS_MAX};

use std::io;

/// A failure of the storage path. Every variant names the device and offset.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// the I/O is not whole sectors at a sector-aligned offset
    #[error("{device}: {length_bytes}-byte I/O at offset {offset_bytes} is not whole {sector_size_bytes}-byte sectors at a sector boundary")]
    Misaligned {
        device: String,
        offset_bytes: u64,
        length_bytes: u64,
        sector_size_bytes: u32,
    },
    /// the I/O reaches past the end of the device
    #[error("{device}: {length_bytes}-byte I/O at offset {offset_bytes} ends past the device end at {size_bytes} bytes")]
    OutOfRange {
        device: String,
        offset_bytes: u64,
        length_bytes: u64,
        size_bytes: u64,
    },
    /// the kernel reported an error for the I/O
    #[error(
        "{device}: {operation} of {length_bytes} bytes at offset {offset_bytes} failed: {source}"
    )]
    Io {
        device: String,
        operation: &'static str,
        offset_bytes: u64,
        length_bytes: u64,
        source: io::Error,
    },
    /// the I/O did not complete before its deadline
    #[error("{device}: {operation} of {length_bytes} bytes at offset {offset_bytes} did not complete within {deadline_ms} ms (the device may be hung)")]
    Timeout {
        device: String,
        operation: &'static str,
        offset_bytes: u64,
        length_bytes: u64,
        deadline_ms: u64,
    },
    /// earlier I/Os are still stuck in the kernel
    #[error("{device}: {outstanding} earlier I/Os have not completed; refusing new I/O until the device answers")]
    Hung { device: String, outstanding: usize },
    /// an earlier write to the same sectors timed out and may still land
    #[error("{device}: an earlier write over offset {offset_bytes} timed out and has not completed; a new write there could be overtaken by it and a read could see what it replaces, so I/O there is refused until the device answers")]
    WriteInFlight { device: String, offset_bytes: u64 },
    /// the device cannot be opened or does not suit a lease device
    #[error("{device}: {reason}")]
    Open { device: String, reason: String },
}

/// Sector-granular access to one lease device.
pub trait Disk {
    /// A name for messages: the path, or a label for in-memory disks.
    fn name(&self) -> &str;
    fn sector_size_bytes(&self) -> u32;
    fn size_bytes(&self) -> u64;
    /// Read `buffer.len()` bytes at `offset_bytes`; both whole sectors.
    /// Refused ([`DiskError::WriteInFlight`]) while an earlier write of this
    /// process to any of those sectors timed out and may still land: what
    /// it would return might be undone a moment later.
    fn read(&self, offset_bytes: u64, buffer: &mut [u8]) -> Result<(), DiskError>;
    /// Write `data` at `offset_bytes`; both whole sectors. Each sector is
    /// written atomically; a multi-sector write may tear between sectors.
    /// An implementation never lets a write be overtaken by an earlier
    /// write of this process to the same sectors that timed out: it refuses
    /// the new write ([`DiskError::WriteInFlight`]) until the old one is done.
    fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DiskError>;
}

/// Check that an I/O is whole sectors at an aligned offset within the device.
pub fn check_io(disk: &dyn Disk, offset_bytes: u64, length_bytes: u64) -> Result<(), DiskError> {
    let sector_size_bytes = disk.sector_size_bytes();
    let sector = u64::from(sector_size_bytes);
    if length_bytes == 0 || offset_bytes % sector != 0 || length_bytes % sector != 0 {
        return Err(DiskError::Misaligned {
            device: disk.name().to_string(),
            offset_bytes,
            length_bytes,
            sector_size_bytes,
        });
    }
    let end_bytes = offset_bytes.checked_add(length_bytes);
    if end_bytes.is_none_or(|end| end > disk.size_bytes()) {
        return Err(DiskError::OutOfRange {
            device: disk.name().to_string(),
            offset_bytes,
            length_bytes,
            size_bytes: disk.size_bytes(),
        });
    }
    Ok(())
}

/// Logical sector size and size in bytes of a block device, from the kernel.
pub(crate) fn block_device_geometry(file: &std::fs::File) -> io::Result<(u32, u64)> {
    use std::os::fd::AsRawFd;
    nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    let mut sector: libc::c_int = 0;
    let mut size: u64 = 0;
    // SAFETY: the fd is an open block device and both out-pointers are valid
    // for the sizes the ioctls write.
    unsafe {
        blksszget(file.as_raw_fd(), &mut sector).map_err(io::Error::from)?;
        blkgetsize64(file.as_raw_fd(), &mut size).map_err(io::Error::from)?;
    }
    let sector = u32::try_from(sector).map_err(|_| io::Error::other("negative sector size"))?;
    Ok((sector, size))
}

/// Open a device or file for O_DIRECT I/O and work out its sector size.
/// `requested_sector_size_bytes` is required to match a block device's logical
/// sector size; for a regular file it is the sector size (default 512).
pub(crate) fn open_direct(
    path: &str,
    requested_sector_size_bytes: Option<u32>,
) -> Result<(std::fs::File, u32, u64), DiskError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let open_error = |reason: String| DiskError::Open {
        device: path.to_string(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(format!("cannot open for O_DIRECT read/write: {e}")))?;
    let metadata = file
        .metadata()
        .map_err(|e| open_error(format!("cannot stat: {e}")))?;
    let (sector_size_bytes, size_bytes) = if metadata.file_type().is_block_device() {
        let (device_sector, size) = block_device_geometry(&file)
            .map_err(|e| open_error(format!("cannot read the block size: {e}")))?;
        if let Some(requested) = requested_sector_size_bytes {
            if requested != device_sector {
                return Err(open_error(format!(
                    "the device has {device_sector}-byte logical sectors but {requested}-byte sectors were requested; use --sector-size {device_sector}"
                )));
            }
        }
        (device_sector, size)
    } else if metadata.file_type().is_file() {
        (requested_sector_size_bytes.unwrap_or(512), metadata.len())
    } else {
        return Err(open_error(
            "neither a regular file nor a block device".to_string(),
        ));
    };
    if sector_size_bytes != 512 && sector_size_bytes != 4096 {
        return Err(open_error(format!(
            "{sector_size_bytes}-byte sectors are not supported (512 or 4096)"
        )));
    }
    Ok((file, sector_size_bytes, size_bytes))
}

/// A borrowed disk is a disk (so wrappers such as [`CountingDisk`] can sit
/// over one that something else owns).
impl<D: Disk + ?Sized> Disk for &D {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn sector_size_bytes(&self) -> u32 {
        (**self).sector_size_bytes()
    }
    fn size_bytes(&self) -> u64 {
        (**self).size_bytes()
    }
    fn read(&self, offset_bytes: u64, buffer: &mut [u8]) -> Result<(), DiskError> {
        (**self).read(offset_bytes, buffer)
    }
    fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DiskError> {
        (**self).write(offset_bytes, data)
    }
}
