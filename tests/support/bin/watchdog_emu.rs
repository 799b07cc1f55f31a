//! A faithful stand-in for /dev/watchdog in tests: a FIFO the daemon opens
//! instead of the device. The first byte arms it, every byte restarts the
//! timer, a 'V' followed by close disarms it (the magic close), and a close
//! without 'V' leaves it running. When the timer runs out it SIGKILLs the
//! simulated host's whole process group, as a hardware reset would stop
//! everything on the host at once, and exits.
//!
//! Usage: watchdog_emu FIFO TIMEOUT_MS PGID
//! It prints "armed", "disarmed" and "fired" lines (with a CLOCK_BOOTTIME
//! timestamp in ms) on stdout for the test to read.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

fn say(what: &str) {
    println!("{} {what}", now_ms());
}

fn open_fifo(path: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the FIFO {path}: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, fifo, timeout_ms, pgid] = &args[..] else {
        eprintln!("usage: watchdog_emu FIFO TIMEOUT_MS PGID");
        std::process::exit(2);
    };
    let timeout = Duration::from_millis(timeout_ms.parse().expect("TIMEOUT_MS"));
    let pgid: i32 = pgid.parse().expect("PGID");
    if !std::path::Path::new(fifo).exists() {
        let path = std::ffi::CString::new(fifo.as_str()).expect("path");
        // SAFETY: mkfifo with a valid C string.
        let rc = unsafe { libc::mkfifo(path.as_ptr(), 0o600) };
        assert!(rc == 0, "mkfifo {fifo} failed");
    }
    say("ready");
    let mut file = open_fifo(fifo);
    let mut deadline: Option<Instant> = None;
    let mut magic = false;
    let mut seen_writer = false;
    let mut buffer = [0u8; 256];
    loop {
        if let Some(at) = deadline {
            if Instant::now() >= at {
                say("fired");
                // SAFETY: kill(2) of the host's process group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                std::process::exit(0);
            }
        }
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&file),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; 10 ms so the timer is checked often.
        unsafe { libc::poll(&mut poll, 1, 10) };
        match file.read(&mut buffer) {
            Ok(0) => {
                // No writer: after one was there, this is a close.
                if seen_writer {
                    seen_writer = false;
                    if magic && deadline.is_some() {
                        deadline = None;
                        say("disarmed");
                    }
                    magic = false;
                    file = open_fifo(fifo);
                } else {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Ok(n) => {
                seen_writer = true;
                let bytes = buffer.get(..n).unwrap_or(&[]);
                if deadline.is_none() {
                    say("armed");
                }
                deadline = Some(Instant::now() + timeout);
                magic = bytes.last() == Some(&b'V');
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
}
