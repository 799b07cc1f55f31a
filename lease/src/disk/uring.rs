//! O_DIRECT I/O through io_uring with a deadline on every I/O.
//!
//! A read on a hung device may never complete and cannot always be
//! cancelled. This backend waits for each completion only until the I/O's
//! deadline; past it the call fails with [`DiskError::Timeout`] and the buffer
//! is parked until the kernel really completes the I/O (the kernel may still
//! write into it). While parked I/Os remain, at most [`ORPHANS_MAX`] are
//! allowed before every new I/O is refused with [`DiskError::Hung`].

use super::{check_io, open_direct, AlignedBuffer, Disk, DiskError};
use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Parked I/Os allowed before the device is treated as hung. A renewal loop
/// issues at most two I/Os per round, so this is several rounds of a dead
/// device; more would only pin memory.
pub const ORPHANS_MAX: usize = 16;

/// Ring entries: one I/O in flight per call, plus cancels and the parked ones.
const RING_ENTRIES: u32 = 64;

struct Orphan {
    buffer: AlignedBuffer,
    write_range: Option<std::ops::Range<u64>>,
}

struct Ring {
    ring: IoUring,
    next_user_data: u64,
    /// Timed-out I/Os by user_data: their buffers (freed when they
    /// complete) and, for writes, the byte range they may still change.
    orphans: HashMap<u64, Orphan>,
    /// The buffer of the last completed I/O, reused by the next one (a fresh
    /// mapping per I/O costs page faults on every large read).
    spare: Option<AlignedBuffer>,
}

/// A lease device driven through io_uring; see the module docs.
pub struct UringDisk {
    file: File,
    name: String,
    sector_size_bytes: u32,
    size_bytes: u64,
    io_deadline_ms: u64,
    ring: Mutex<Ring>,
}

enum Direction<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl UringDisk {
    /// Open `path` like [`super::DirectDisk::open`]; every I/O fails with a
    /// timeout if it has not completed `io_deadline_ms` after submission.
    pub fn open(
        path: &str,
        sector_size_bytes: Option<u32>,
        io_deadline_ms: u64,
    ) -> Result<UringDisk, DiskError> {
        let (file, sector_size_bytes, size_bytes) = open_direct(path, sector_size_bytes)?;
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| DiskError::Open {
            device: path.to_string(),
            reason: format!("cannot set up io_uring: {e}"),
        })?;
        Ok(UringDisk {
            file,
            name: path.to_string(),
            sector_size_bytes,
            size_bytes,
            io_deadline_ms,
            ring: Mutex::new(Ring {
                ring,
                next_user_data: 1,
                orphans: HashMap::new(),
                spare: None,
            }),
        })
    }

    /// I/Os that timed out and have not completed yet.
    pub fn outstanding(&self) -> usize {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        reap(&mut ring, None);
        ring.orphans.len()
    }

    fn run(&self, offset_bytes: u64, direction: Direction<'_>) -> Result<(), DiskError> {
        let (operation, length) = match &direction {
            Direction::Read(buffer) => ("read", buffer.len()),
            Direction::Write(data) => ("write", data.len()),
        };
        check_io(self, offset_bytes, length as u64)?;
        let io_error = |source: std::io::Error| DiskError::Io {
            device: self.name.clone(),
            operation,
            offset_bytes,
            length_bytes: length as u64,
            source,
        };
        let length_u32 = u32::try_from(length)
            .map_err(|_| io_error(std::io::Error::other("I/O larger than 4 GiB")))?;
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        reap(&mut ring, None);
        if ring.orphans.len() >= ORPHANS_MAX {
            return Err(DiskError::Hung {
                device: self.name.clone(),
                outstanding: ring.orphans.len(),
            });
        }
        // Neither a write nor a read goes to sectors that a timed-out write
        // of ours may still land on: a write could be overtaken by it, and
        // a read could return what it is about to replace (a caller that
        // writes such a read back would undo the late write).
        let range = offset_bytes..offset_bytes + length as u64;
        let overlapped = ring
            .orphans
            .values()
            .filter_map(|o| o.write_range.as_ref())
            .any(|r| r.start < range.end && range.start < r.end);
        if overlapped {
            return Err(DiskError::WriteInFlight {
                device: self.name.clone(),
                offset_bytes,
            });
        }
        let mut buffer = match ring.spare.take() {
            Some(mut spare) => {
                spare.resize(length).map_err(io_error)?;
                spare
            }
            None => AlignedBuffer::new(length).map_err(io_error)?,
        };
        if let Direction::Write(data) = &direction {
            buffer.as_mut_slice().copy_from_slice(data);
        }
        let user_data = ring.next_user_data;
        ring.next_user_data += 1;
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match &direction {
            Direction::Read(_) => opcode::Read::new(fd, buffer.as_mut_ptr(), length_u32)
                .offset(offset_bytes)
                .build(),
            Direction::Write(_) => opcode::Write::new(fd, buffer.as_mut_ptr(), length_u32)
                .offset(offset_bytes)
                .build(),
        }
        .user_data(user_data);
        // SAFETY: the buffer outlives the I/O: it is either held here until the
        // completion arrives or moved into `orphans`, which keeps it until the
        // kernel reports completion (and is leaked if the disk is dropped first).
        unsafe { ring.ring.submission().push(&entry) }
            .map_err(|_| io_error(std::io::Error::other("io_uring submission queue full")))?;
        // What a timed-out write may still change, should it be parked.
        let write_range = match direction {
            Direction::Write(_) => Some(offset_bytes..offset_bytes + length as u64),
            Direction::Read(_) => None,
        };
        let deadline = Instant::now() + Duration::from_millis(self.io_deadline_ms);
        let result = loop {
            if let Some(result) = reap(&mut ring, Some(user_data)) {
                break Some(result);
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            let remaining = deadline - now;
            let timespec = types::Timespec::new()
                .sec(remaining.as_secs())
                .nsec(remaining.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&timespec);
            match ring.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    // The request may be queued or in flight: the kernel may
                    // still use the buffer and the write may still land.
                    ring.orphans.insert(
                        user_data,
                        Orphan {
                            buffer,
                            write_range,
                        },
                    );
                    return Err(io_error(e));
                }
            }
        };
        let Some(result) = result else {
            ring.orphans.insert(
                user_data,
                Orphan {
                    buffer,
                    write_range,
                },
            );
            let cancel = opcode::AsyncCancel::new(user_data).build().user_data(0);
            // SAFETY: a cancel entry carries no buffer.
            if unsafe { ring.ring.submission().push(&cancel) }.is_ok() {
                let _ = ring.ring.submit();
            }
            return Err(DiskError::Timeout {
                device: self.name.clone(),
                operation,
                offset_bytes,
                length_bytes: length as u64,
                deadline_ms: self.io_deadline_ms,
            });
        };
        if result < 0 {
            return Err(io_error(std::io::Error::from_raw_os_error(-result)));
        }
        if usize::try_from(result).ok() != Some(length) {
            return Err(io_error(std::io::Error::other(format!(
                "short {operation}: {result} of {length} bytes"
            ))));
        }
        if let Direction::Read(target) = direction {
            target.copy_from_slice(buffer.as_slice());
        }
        ring.spare = Some(buffer);
        Ok(())
    }
}

/// Drain the completion queue: free parked buffers whose I/O has finished and
/// return the result for `wanted`, if it completed.
fn reap(ring: &mut Ring, wanted: Option<u64>) -> Option<i32> {
    let mut found = None;
    let completions: Vec<(u64, i32)> = ring
        .ring
        .completion()
        .map(|cqe| (cqe.user_data(), cqe.result()))
        .collect();
    for (user_data, result) in completions {
        if Some(user_data) == wanted {
            found = Some(result);
        } else {
            ring.orphans.remove(&user_data);
        }
    }
    found
}

impl Drop for UringDisk {
    fn drop(&mut self) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        reap(&mut ring, None);
        // The kernel may still write into these; never unmap them.
        for (_, orphan) in ring.orphans.drain() {
            std::mem::forget(orphan.buffer);
        }
    }
}

impl Disk for UringDisk {
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
        self.run(offset_bytes, Direction::Read(buffer))
    }

    fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DiskError> {
        self.run(offset_bytes, Direction::Write(data))
    }
}
