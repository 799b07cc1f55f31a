//! An in-memory disk for unit tests and the simulator.

use super::{check_io, Disk, DiskError};
use std::sync::{Arc, Mutex, MutexGuard};

/// A shared in-memory device; clones see the same bytes. Each `write` is
/// applied whole under one lock, so every sector write is atomic.
#[derive(Clone, Debug)]
pub struct MemoryDisk {
    name: String,
    sector_size_bytes: u32,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MemoryDisk {
    pub fn new(name: &str, sector_size_bytes: u32, size_bytes: usize) -> MemoryDisk {
        assert!(sector_size_bytes == 512 || sector_size_bytes == 4096);
        MemoryDisk {
            name: name.to_string(),
            sector_size_bytes,
            bytes: Arc::new(Mutex::new(vec![0; size_bytes])),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves plain bytes behind; keep going.
        self.bytes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Direct access for tests that corrupt sectors on purpose.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.lock())
    }
}

fn range(offset_bytes: u64, length: usize) -> std::ops::Range<usize> {
    // check_io has bounded offset + length by the device size, a usize.
    let start = usize::try_from(offset_bytes).unwrap_or(usize::MAX);
    start..start.saturating_add(length)
}

impl Disk for MemoryDisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn sector_size_bytes(&self) -> u32 {
        self.sector_size_bytes
    }

    fn size_bytes(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read(&self, offset_bytes: u64, buffer: &mut [u8]) -> Result<(), DiskError> {
        check_io(self, offset_bytes, buffer.len() as u64)?;
        buffer.copy_from_slice(&self.lock()[range(offset_bytes, buffer.len())]);
        Ok(())
    }

    fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DiskError> {
        check_io(self, offset_bytes, data.len() as u64)?;
        self.lock()[range(offset_bytes, data.len())].copy_from_slice(data);
        Ok(())
    }
}
