//! Registered lease-holding processes. Each is watched through a pidfd, so
//! a recycled pid can never be mistaken for it: when the process exits its
//! leases are released, and if this host loses its lockspace it is killed
//! through the same pidfd.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

/// A process handle that stays bound to one process.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pub pid: i32,
}

impl Pidfd {
    /// Open a pidfd for a running process.
    pub fn open(pid: i32) -> std::io::Result<Pidfd> {
        if pid <= 0 {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Pidfd { fd, pid })
    }

    /// Send SIGKILL to exactly this process (not to a later one with its pid).
    pub fn kill(&self) -> std::io::Result<()> {
        // SAFETY: the fd is a pidfd we own; a null siginfo is allowed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            // Already gone: nothing to kill.
            if error.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(error);
        }
        Ok(())
    }

    /// Has the process exited? (A pidfd polls readable once it has.)
    pub fn exited(&self) -> bool {
        self.wait_exit(0)
    }

    /// Wait up to `timeout_ms` for the process to exit.
    pub fn wait_exit(&self, timeout_ms: u64) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(timeout_ms).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut poll, 1, timeout) };
        rc > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }

    pub fn try_clone(&self) -> std::io::Result<Pidfd> {
        Ok(Pidfd {
            fd: self.fd.try_clone()?,
            pid: self.pid,
        })
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// The start time of `pid` (clock ticks since boot, field 22 of
/// /proc/PID/stat): with the pid, it names one process across daemon
/// restarts.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'.
    let rest = stat.get(stat.rfind(')')?.checked_add(1)?..)?;
    // rest starts with " S ppid ...": field 3 is the state, 22 the start time.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One lease a holder has: (lockspace, resource).
pub type LeaseKey = (String, String);

#[derive(Debug)]
pub struct Holder {
    pub pidfd: Pidfd,
    pub start_time: u64,
    pub leases: BTreeSet<LeaseKey>,
}

/// Every registered process.
#[derive(Debug, Default)]
pub struct Holders {
    inner: Mutex<BTreeMap<i32, Holder>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("process {pid} does not exist: {reason}")]
    NoProcess { pid: i32, reason: String },
    #[error("process {pid} is not registered; send register first")]
    NotRegistered { pid: i32 },
}

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Holder>> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Register `pid`; registering it again is harmless. Returns a pidfd
    /// the caller watches for the process's exit, for a new registration.
    pub fn register(&self, pid: i32) -> Result<Option<Pidfd>, HolderError> {
        let mut holders = self.lock();
        if holders.contains_key(&pid) {
            return Ok(None);
        }
        let pidfd = Pidfd::open(pid).map_err(|e| HolderError::NoProcess {
            pid,
            reason: e.to_string(),
        })?;
        let Some(start_time) = start_time(pid) else {
            return Err(HolderError::NoProcess {
                pid,
                reason: "its /proc entry is gone".to_string(),
            });
        };
        let watch = pidfd.try_clone().map_err(|e| HolderError::NoProcess {
            pid,
            reason: e.to_string(),
        })?;
        holders.insert(
            pid,
            Holder {
                pidfd,
                start_time,
                leases: BTreeSet::new(),
            },
        );
        Ok(Some(watch))
    }

    /// Take over a process a previous daemon registered, if it is still
    /// the same process (same start time).
    pub fn readopt(&self, pid: i32, expected_start_time: u64) -> Option<Pidfd> {
        let pidfd = Pidfd::open(pid).ok()?;
        // Read after opening: if the pid was recycled before the open, the
        // start time differs.
        if start_time(pid) != Some(expected_start_time) || pidfd.exited() {
            return None;
        }
        let watch = pidfd.try_clone().ok()?;
        self.lock().insert(
            pid,
            Holder {
                pidfd,
                start_time: expected_start_time,
                leases: BTreeSet::new(),
            },
        );
        Some(watch)
    }

    /// Remove a holder, returning the leases it had.
    pub fn remove(&self, pid: i32) -> Option<BTreeSet<LeaseKey>> {
        self.lock().remove(&pid).map(|holder| holder.leases)
    }

    pub fn is_registered(&self, pid: i32) -> bool {
        self.lock().contains_key(&pid)
    }

    /// Is `pid` registered and still running?
    pub fn check_alive(&self, pid: i32) -> Result<(), HolderError> {
        match self.lock().get(&pid) {
            Some(holder) if !holder.pidfd.exited() => Ok(()),
            Some(_) => Err(HolderError::NoProcess {
                pid,
                reason: "it has exited".to_string(),
            }),
            None => Err(HolderError::NotRegistered { pid }),
        }
    }

    pub fn add_lease(&self, pid: i32, key: LeaseKey) -> Result<(), HolderError> {
        match self.lock().get_mut(&pid) {
            Some(holder) => {
                holder.leases.insert(key);
                Ok(())
            }
            None => Err(HolderError::NotRegistered { pid }),
        }
    }

    pub fn remove_lease(&self, pid: i32, key: &LeaseKey) -> bool {
        self.lock()
            .get_mut(&pid)
            .is_some_and(|holder| holder.leases.remove(key))
    }

    /// Handles of the holders with `key` among their leases.
    pub fn with_lease(&self, key: &LeaseKey) -> Vec<Pidfd> {
        self.lock()
            .values()
            .filter(|h| h.leases.contains(key))
            .filter_map(|h| h.pidfd.try_clone().ok())
            .collect()
    }

    /// Every registered pid with its start time and leases.
    pub fn snapshot(&self) -> Vec<(i32, u64, Vec<LeaseKey>)> {
        self.lock()
            .iter()
            .map(|(pid, h)| (*pid, h.start_time, h.leases.iter().cloned().collect()))
            .collect()
    }

    /// SIGKILL the holder `pid`, if registered.
    pub fn kill(&self, pid: i32) -> Option<std::io::Result<()>> {
        self.lock().get(&pid).map(|h| h.pidfd.kill())
    }

    /// SIGKILL every holder with a lease in `lockspace` (every holder when
    /// None). Returns handles to wait on.
    pub fn kill_all(&self, lockspace: Option<&str>) -> Vec<(Pidfd, std::io::Result<()>)> {
        let holders = self.lock();
        holders
            .values()
            .filter(|h| lockspace.is_none_or(|name| h.leases.iter().any(|(s, _)| s == name)))
            .filter_map(|h| {
                let result = h.pidfd.kill();
                h.pidfd.try_clone().ok().map(|fd| (fd, result))
            })
            .collect()
    }

    /// Are all holders with a lease in `lockspace` gone?
    pub fn all_exited(&self, lockspace: &str) -> bool {
        self.lock()
            .values()
            .filter(|h| h.leases.iter().any(|(s, _)| s == lockspace))
            .all(|h| h.pidfd.exited())
    }

    /// Holders whose process has exited.
    pub fn exited(&self) -> Vec<i32> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.pidfd.exited())
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_sees_exit_and_kill_reaches_the_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let holders = Holders::default();
        let watch = holders.register(pid).expect("register").expect("new");
        assert!(holders.register(pid).expect("again").is_none());
        assert!(start_time(pid).is_some());
        assert!(!watch.exited());
        holders
            .add_lease(pid, ("ls".to_string(), "vm1".to_string()))
            .expect("lease");
        let key = ("ls".to_string(), "vm1".to_string());
        assert_eq!(holders.with_lease(&key).len(), 1);
        assert!(holders
            .with_lease(&("ls".to_string(), "vm2".to_string()))
            .is_empty());
        let killed = holders.kill_all(Some("ls"));
        assert_eq!(killed.len(), 1);
        let _ = child.wait();
        assert!(watch.wait_exit(5000));
        assert_eq!(holders.exited(), vec![pid]);
        let leases = holders.remove(pid).expect("registered");
        assert_eq!(leases.len(), 1);
    }

    #[test]
    fn readopt_refuses_another_process_with_the_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let started = start_time(pid).expect("start time");
        let holders = Holders::default();
        assert!(holders.readopt(pid, started + 1).is_none());
        assert!(holders.readopt(pid, started).is_some());
        let _ = child.kill();
        let _ = child.wait();
    }
}
