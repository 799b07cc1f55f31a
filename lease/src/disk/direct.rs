//! O_DIRECT I/O with pread/pwrite on a file or block device.

use super::{check_io, open_direct, AlignedBuffer, Disk, DiskError};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// A lease device opened with O_DIRECT. Data goes through one page-aligned
/// bounce buffer, reused between calls.
pub struct DirectDisk {
    file: File,
    name: String,
    sector_size_bytes: u32,
    size_bytes: u64,
    buffer: Mutex<Option<AlignedBuffer>>,
}

impl DirectDisk {
    /// Open `path`. For a block device the sector size comes from the kernel
    /// (BLKSSZGET) and `sector_size_bytes`, if given, must match it; for a
    /// regular file it is `sector_size_bytes` or 512.
    pub fn open(path: &str, sector_size_bytes: Option<u32>) -> Result<DirectDisk, DiskError> {
        let (file, sector_size_bytes, size_bytes) = open_direct(path, sector_size_bytes)?;
        Ok(DirectDisk {
            file,
            name: path.to_string(),
            sector_size_bytes,
            size_bytes,
            buffer: Mutex::new(None),
        })
    }

    fn io_error(
        &self,
        operation: &'static str,
        offset_bytes: u64,
        length: usize,
        source: std::io::Error,
    ) -> DiskError {
        DiskError::Io {
            device: self.name.clone(),
            operation,
            offset_bytes,
            length_bytes: length as u64,
            source,
        }
    }

    fn with_buffer<R>(
        &self,
        operation: &'static str,
        offset_bytes: u64,
        length: usize,
        f: impl FnOnce(&mut AlignedBuffer) -> Result<R, DiskError>,
    ) -> Result<R, DiskError> {
        let mut guard = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let buffer = AlignedBuffer::new(length)
                .map_err(|e| self.io_error(operation, offset_bytes, length, e))?;
            *guard = Some(buffer);
        }
        let Some(buffer) = guard.as_mut() else {
            unreachable!("buffer was just set");
        };
        buffer
            .resize(length)
            .map_err(|e| self.io_error(operation, offset_bytes, length, e))?;
        f(buffer)
    }
}

impl Disk for DirectDisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn sector_size_bytes(&self) -> u32 {
        self.sector_size_bytes
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, offset_bytes: u64, buffer: &mut [u8]) -> Result<(), DiskError> {
        check_io(self, offset_bytes, buffer.len() as u64)?;
        self.with_buffer("read", offset_bytes, buffer.len(), |aligned| {
            self.file
                .read_exact_at(aligned.as_mut_slice(), offset_bytes)
                .map_err(|e| self.io_error("read", offset_bytes, buffer.len(), e))?;
            buffer.copy_from_slice(aligned.as_slice());
            Ok(())
        })
    }

    fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DiskError> {
        check_io(self, offset_bytes, data.len() as u64)?;
        self.with_buffer("write", offset_bytes, data.len(), |aligned| {
            aligned.as_mut_slice().copy_from_slice(data);
            self.file
                .write_all_at(aligned.as_slice(), offset_bytes)
                .map_err(|e| self.io_error("write", offset_bytes, data.len(), e))
        })
    }
}
