//! A fault-injecting proxy in front of a real libvirtd's Unix socket: the
//! daemon under test connects to the proxy (its `libvirt.uri` names the
//! proxy's socket), the proxy to libvirtd. It reads libvirt's RPC framing
//! (a 4-byte big-endian length that counts itself, then a header of prog,
//! vers, proc, type, serial, status, each 4 bytes big-endian) and can, for
//! a domain start (REMOTE_PROC_DOMAIN_CREATE, or _WITH_FLAGS):
//! - hold the call for a while before libvirtd sees it (a slow start);
//! - pass the call, swallow libvirtd's reply and close the connection,
//!   then refuse new connections for a while (libvirtd "died" right after
//!   starting QEMU, as the client sees it; QEMU runs on).
//!
//! Every start call and what was done with it is logged with its time.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// libvirt's remote program number.
const REMOTE_PROGRAM: u32 = 0x2000_8086;
const PROC_DOMAIN_CREATE: u32 = 9;
const PROC_DOMAIN_CREATE_WITH_FLAGS: u32 = 196;
const TYPE_CALL: u32 = 0;
/// Frames larger than this are not libvirt's (its own limit is 32 MiB).
const FRAME_BYTES_MAX: usize = 64 << 20;

/// What the proxy does to the next domain start.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Hold each start call this long before passing it on.
    pub delay_start: Option<Duration>,
    /// Swallow the reply to the next start, close that connection, and
    /// refuse connections for this long afterwards (one shot).
    pub lose_start_reply_then_refuse: Option<Duration>,
}

#[derive(Default)]
struct Shared {
    faults: Faults,
    refuse_until: Option<Instant>,
    /// (when, what) for each start call seen.
    log: Vec<(Instant, String)>,
}

pub struct LibvirtProxy {
    pub socket: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    match shared.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn read_frame(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let total = usize::try_from(u32::from_be_bytes(length)).ok()?;
    if !(4 + 24..=FRAME_BYTES_MAX).contains(&total) {
        return None;
    }
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&length);
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// (prog, proc, type, serial) of a frame.
fn header(frame: &[u8]) -> (u32, u32, u32, u32) {
    let word = |i: usize| {
        let bytes: [u8; 4] = frame[4 + 4 * i..8 + 4 * i].try_into().unwrap_or([0; 4]);
        u32::from_be_bytes(bytes)
    };
    (word(0), word(2), word(3), word(4))
}

impl LibvirtProxy {
    /// Listen on `socket`, forwarding to libvirtd's socket `upstream`
    /// (which need not exist yet: each connection dials it anew).
    pub fn start(socket: &Path, upstream: &Path) -> LibvirtProxy {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("bind proxy socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, up) = (
            Arc::clone(&shared),
            Arc::clone(&stop),
            upstream.to_path_buf(),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let refuse = lock(&s).refuse_until.is_some_and(|t| Instant::now() < t);
                        if refuse {
                            drop(client);
                            continue;
                        }
                        let Ok(server) = UnixStream::connect(&up) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        Self::serve(client, server, Arc::clone(&s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        LibvirtProxy {
            socket: socket.to_path_buf(),
            shared,
            stop,
        }
    }

    /// The URI that reaches libvirtd through this proxy.
    pub fn uri(&self) -> String {
        format!("qemu:///session?socket={}", self.socket.display())
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.shared).faults = faults;
    }

    /// (when, what) of every start call so far.
    pub fn log(&self) -> Vec<(Instant, String)> {
        lock(&self.shared).log.clone()
    }

    /// When the first log line containing `what` was written.
    pub fn logged(&self, what: &str) -> Option<Instant> {
        lock(&self.shared)
            .log
            .iter()
            .find(|(_, line)| line.contains(what))
            .map(|(t, _)| *t)
    }

    fn serve(client: UnixStream, server: UnixStream, shared: Arc<Mutex<Shared>>) {
        let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone())
        else {
            return;
        };
        let (mut server_in, mut client_out) = (server, client);
        // The serial of the start call whose reply is to be swallowed.
        let swallow: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
        let swallow_up = Arc::clone(&swallow);
        let shared_up = Arc::clone(&shared);
        // Client -> libvirtd.
        std::thread::spawn(move || {
            while let Some(frame) = read_frame(&mut client_in) {
                let (prog, procedure, kind, serial) = header(&frame);
                let start = prog == REMOTE_PROGRAM
                    && kind == TYPE_CALL
                    && (procedure == PROC_DOMAIN_CREATE
                        || procedure == PROC_DOMAIN_CREATE_WITH_FLAGS);
                if start {
                    let faults = {
                        let mut s = lock(&shared_up);
                        s.log
                            .push((Instant::now(), format!("start call {serial} seen")));
                        let faults = s.faults.clone();
                        if faults.lose_start_reply_then_refuse.is_some() {
                            if let Ok(mut guard) = swallow_up.lock() {
                                *guard = Some(serial);
                            }
                        }
                        faults
                    };
                    if let Some(delay) = faults.delay_start {
                        std::thread::sleep(delay);
                    }
                    lock(&shared_up)
                        .log
                        .push((Instant::now(), format!("start call {serial} passed")));
                }
                if server_out.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = server_out.shutdown(std::net::Shutdown::Both);
        });
        // libvirtd -> client.
        std::thread::spawn(move || {
            while let Some(frame) = read_frame(&mut server_in) {
                let (prog, _, kind, serial) = header(&frame);
                let target = swallow.lock().ok().and_then(|g| *g);
                if prog == REMOTE_PROGRAM && kind != TYPE_CALL && target == Some(serial) {
                    let mut s = lock(&shared);
                    let refuse = s.faults.lose_start_reply_then_refuse.take();
                    s.refuse_until = refuse.map(|d| Instant::now() + d);
                    s.log
                        .push((Instant::now(), format!("start reply {serial} lost")));
                    drop(s);
                    let _ = client_out.shutdown(std::net::Shutdown::Both);
                    let _ = server_in.shutdown(std::net::Shutdown::Both);
                    return;
                }
                if kind != TYPE_CALL && prog == REMOTE_PROGRAM {
                    let s = &mut lock(&shared);
                    if s.log
                        .iter()
                        .any(|(_, l)| l == &format!("start call {serial} passed"))
                    {
                        s.log
                            .push((Instant::now(), format!("start reply {serial} returned")));
                    }
                }
                if client_out.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = client_out.shutdown(std::net::Shutdown::Both);
        });
    }
}

impl Drop for LibvirtProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.socket);
    }
}
