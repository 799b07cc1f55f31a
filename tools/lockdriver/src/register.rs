//! The register-only acquire, which libvirt runs in its forked child just
//! before it execs QEMU. A forked child of a threaded daemon may only use
//! async-signal-safe calls: no locks, no allocation, no threads. So this
//! path uses plain syscalls and stack buffers only: connect to leaseholdd,
//! register this process (soon QEMU) bound to the connection, and leave
//! the socket open across exec, so the daemon sees QEMU's end as EOF.

use libc::{c_int, sockaddr_un, socklen_t};
use std::path::Path;

/// The daemon's address, prepared at drvInit (when allocation is fine).
#[derive(Clone, Copy)]
pub struct Address {
    addr: sockaddr_un,
    len: socklen_t,
}

impl Address {
    pub fn new(path: &Path) -> Result<Address, String> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: sockaddr_un is plain old data; all zeroes is valid.
        let mut addr: sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
            return Err(format!(
                "socket path {} is longer than {} bytes or contains NUL",
                path.display(),
                addr.sun_path.len() - 1
            ));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        Ok(Address {
            addr,
            len: socklen_t::try_from(len).map_err(|e| e.to_string())?,
        })
    }
}

/// Decimal digits of `value` into `out`; returns the length.
fn decimal(mut value: u32, out: &mut [u8; 10]) -> usize {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 || n == tmp.len() {
            break;
        }
    }
    for i in 0..n {
        out[i] = tmp[n - 1 - i];
    }
    n
}

fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn close(fd: c_int) {
    // SAFETY: closing a descriptor this function opened.
    unsafe {
        libc::close(fd);
    }
}

/// Register this process with the daemon at `address`, bound to a new
/// connection; returns that connection's descriptor, inheritable across
/// exec. Errors are errno values (or EPROTO for a refusal).
pub fn register_bound(address: &Address) -> Result<c_int, c_int> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let pid = u32::try_from(pid).map_err(|_| libc::EINVAL)?;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `address.addr` is a valid sockaddr_un of `address.len` bytes.
    let connected = unsafe {
        libc::connect(
            fd,
            (&address.addr as *const sockaddr_un).cast(),
            address.len,
        )
    };
    if connected < 0 {
        let e = errno();
        close(fd);
        return Err(e);
    }
    let mut line = [0u8; 64];
    let head = b"{\"op\":\"register\",\"pid\":";
    let tail = b",\"bind\":true}\n";
    let mut digits = [0u8; 10];
    let n = decimal(pid, &mut digits);
    let mut len = 0;
    for part in [&head[..], &digits[..n], &tail[..]] {
        line[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    let mut sent = 0;
    while sent < len {
        // SAFETY: writing from a live stack buffer within its bounds.
        let w = unsafe { libc::write(fd, line[sent..len].as_ptr().cast(), len - sent) };
        if w < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            close(fd);
            return Err(e);
        }
        sent += usize::try_from(w).unwrap_or(0);
    }
    let mut reply = [0u8; 1024];
    let mut got = 0;
    while got < reply.len() && !reply[..got].contains(&b'\n') {
        // SAFETY: reading into a live stack buffer within its bounds.
        let r = unsafe { libc::read(fd, reply[got..].as_mut_ptr().cast(), reply.len() - got) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            close(fd);
            return Err(e);
        }
        if r == 0 {
            break;
        }
        got += usize::try_from(r).unwrap_or(0);
    }
    if !reply[..got].starts_with(b"{\"ok\":true") {
        close(fd);
        return Err(libc::EPROTO);
    }
    // Keep it open across exec: QEMU inherits it.
    // SAFETY: fcntl(2) on our own descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        let e = errno();
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        let mut out = [0u8; 10];
        let n = decimal(0, &mut out);
        assert_eq!(&out[..n], b"0");
        let n = decimal(4_194_304, &mut out);
        assert_eq!(&out[..n], b"4194304");
        let n = decimal(u32::MAX, &mut out);
        assert_eq!(&out[..n], b"4294967295");
    }

    #[test]
    fn address_length_is_checked() {
        assert!(Address::new(Path::new("/run/leasehold/leaseholdd.sock")).is_ok());
        let long = format!("/{}", "x".repeat(200));
        assert!(Address::new(Path::new(&long)).is_err());
    }
}
