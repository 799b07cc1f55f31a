//! A disk that counts the I/O going through it: for tests and benchmarks
//! that state an operation's cost in I/Os and bytes.

use super::{Disk, DiskError};
use std::sync::atomic::{AtomicU64, Ordering};

/// I/O counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCount {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
}

impl IoCount {
    /// The I/O between `earlier` and this count.
    pub fn since(self, earlier: IoCount) -> IoCount {
        IoCount {
            reads: self.reads.saturating_sub(earlier.reads),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            writes: self.writes.saturating_sub(earlier.writes),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// Wraps another disk and counts every read and write passed to it
/// (failed ones included).
pub struct CountingDisk<D> {
    inner: D,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
}

impl<D: Disk> CountingDisk<D> {
    pub fn new(inner: D) -> CountingDisk<D> {
        CountingDisk {
            inner,
            reads: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
        }
    }

    pub fn count(&self) -> IoCount {
        IoCount {
            reads: self.reads.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }
}

fn bytes(length: usize) -> u64 {
    u64::try_from(length).unwrap_or(u64::MAX)
}

impl<D: Disk> Disk for CountingDisk<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn sector_size_bytes(&self) -> u32 {
        self.inner.sector_size_bytes()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read(&self, offset_bytes: u64, buffer: &mut [u8]) -> Result<(), DiskError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes
            .fetch_add(bytes(buffer.len()), Ordering::Relaxed);
        self.inner.read(offset_bytes, buffer)
    }

    fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DiskError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.write_bytes
            .fetch_add(bytes(data.len()), Ordering::Relaxed);
        self.inner.write(offset_bytes, data)
    }
}
