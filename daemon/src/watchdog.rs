//! The hardware watchdog (`/dev/watchdog`), or the FIFO the test emulation
//! reads instead. Opening arms it, every pet restarts its timer, and only a
//! clean shutdown writes the magic 'V' before closing: a daemon that crashes
//! or is restarted leaves it armed, so the host resets unless a new daemon
//! takes over the petting in time.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("watchdog {path}: cannot open: {error} (for a FIFO, the emulator must be reading it; for /dev/watchdog, is another process holding it?)")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("watchdog {path}: setting the timeout to {wanted_s} s failed: {error}")]
    SetTimeout {
        path: PathBuf,
        wanted_s: i32,
        error: nix::Error,
    },
    #[error("watchdog {path}: the device runs with a {actual_s} s timeout, longer than the {budget_ms} ms the lease timeouts allow (raise lockspace.io_timeout_ms or use another watchdog driver)")]
    TooLong {
        path: PathBuf,
        actual_s: i32,
        budget_ms: u64,
    },
    #[error("watchdog {path}: a {budget_ms} ms timeout is below the one second a watchdog device can count (raise lockspace.io_timeout_ms)")]
    TooShort { path: PathBuf, budget_ms: u64 },
    #[error("watchdog {path}: pet failed: {error}")]
    Pet {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// An armed watchdog.
pub struct Watchdog {
    path: PathBuf,
    file: Option<File>,
    /// A real watchdog device (its ioctls work); false for the emulation's
    /// FIFO, which is petted by writing a byte.
    device: bool,
    /// The timeout the device runs with, when it reports one.
    pub timeout_s: Option<i32>,
}

impl Watchdog {
    /// Open and arm `path`, asking a real device for a timeout of at most
    /// `budget_ms` (whole seconds, rounded down; the value read back must
    /// not exceed the budget).
    pub fn open(path: &Path, budget_ms: u64) -> Result<Watchdog, WatchdogError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|error| WatchdogError::Open {
                path: path.to_path_buf(),
                error,
            })?;
        let is_fifo = {
            use std::os::unix::fs::FileTypeExt;
            file.metadata()
                .map(|m| m.file_type().is_fifo())
                .unwrap_or(false)
        };
        let mut watchdog = Watchdog {
            path: path.to_path_buf(),
            file: Some(file),
            device: !is_fifo,
            timeout_s: None,
        };
        if watchdog.device {
            watchdog.set_timeout(budget_ms)?;
        }
        watchdog.pet()?;
        Ok(watchdog)
    }

    fn set_timeout(&mut self, budget_ms: u64) -> Result<(), WatchdogError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let wanted_s = i32::try_from(budget_ms / 1000).unwrap_or(i32::MAX);
        if wanted_s < 1 {
            return Err(WatchdogError::TooShort {
                path: self.path.clone(),
                budget_ms,
            });
        }
        let mut value: libc::c_int = wanted_s;
        // SAFETY: the fd is open for the whole call and `value` is a valid
        // c_int the driver reads and overwrites with the timeout it set.
        let set = unsafe { wdioc_settimeout(file.as_raw_fd(), &mut value) };
        set.map_err(|error| WatchdogError::SetTimeout {
            path: self.path.clone(),
            wanted_s,
            error,
        })?;
        let mut actual: libc::c_int = value;
        // SAFETY: as above; the driver writes the current timeout.
        if unsafe { wdioc_gettimeout(file.as_raw_fd(), &mut actual) }.is_err() {
            actual = value;
        }
        if u64::try_from(actual)
            .unwrap_or(u64::MAX)
            .saturating_mul(1000)
            > budget_ms
        {
            return Err(WatchdogError::TooLong {
                path: self.path.clone(),
                actual_s: actual,
                budget_ms,
            });
        }
        self.timeout_s = Some(actual);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restart the watchdog's timer.
    pub fn pet(&mut self) -> Result<(), WatchdogError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if self.device {
            let mut dummy: libc::c_int = 0;
            // SAFETY: the fd is open; KEEPALIVE ignores and may write `dummy`.
            if unsafe { wdioc_keepalive(file.as_raw_fd(), &mut dummy) }.is_ok() {
                return Ok(());
            }
        }
        file.write_all(b"p").map_err(|error| WatchdogError::Pet {
            path: self.path.clone(),
            error,
        })
    }

    /// Clean shutdown: write the magic 'V' and close, disarming it. Only
    /// when nothing this host runs needs the watchdog any more.
    pub fn disarm(mut self) -> Result<(), WatchdogError> {
        if let Some(mut file) = self.file.take() {
            file.write_all(b"V").map_err(|error| WatchdogError::Pet {
                path: self.path.clone(),
                error,
            })?;
        }
        Ok(())
    }

    /// Close without disarming: the timer keeps running and fires unless
    /// another process opens the device and pets it in time.
    pub fn close_armed(mut self) {
        self.file.take();
    }
}
