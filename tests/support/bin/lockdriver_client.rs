//! Plays libvirt's side of the lock-manager plugin for tests: dlopens
//! leasehold.so, checks the exported driver, and makes the calls libvirt
//! makes, with the ABI declared here independently of the plugin's own
//! declaration (so a layout mistake on either side shows).
//!
//! lockdriver_client child PLUGIN CONF KEY LOCKSPACE CMD...
//!     libvirt's forked child: new + add_resource + register-only acquire,
//!     prints "fd N", then execs CMD (standing in for QEMU) with that
//!     descriptor still open.
//! lockdriver_client libvirt PLUGIN CONF KEY LOCKSPACE PID STEP...
//!     libvirtd: new(pid) + add_resource, then each STEP (acquire,
//!     acquire-state, release, inquire), printing
//!     "STEP rc=N state=S error=E" per step, then free.
//! lockdriver_client describe PLUGIN
//!     prints "version V flags F".

#![allow(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::io::Write;

#[repr(C)]
#[derive(Clone, Copy)]
union Value {
    iv: c_int,
    ul: u64,
    cstr: *const c_char,
    uuid: [u8; 16],
}

#[repr(C)]
struct Param {
    kind: c_int,
    key: *const c_char,
    value: Value,
}

#[repr(C)]
struct Manager {
    driver: *mut Driver,
    private: *mut c_void,
}

#[repr(C)]
struct Driver {
    version: c_uint,
    flags: c_uint,
    init: unsafe extern "C" fn(c_uint, *const c_char, c_uint) -> c_int,
    deinit: unsafe extern "C" fn() -> c_int,
    new: unsafe extern "C" fn(*mut Manager, c_uint, usize, *mut Param, c_uint) -> c_int,
    free: unsafe extern "C" fn(*mut Manager),
    add_resource: unsafe extern "C" fn(
        *mut Manager,
        c_uint,
        *const c_char,
        usize,
        *mut Param,
        c_uint,
    ) -> c_int,
    acquire: unsafe extern "C" fn(*mut Manager, *const c_char, c_uint, c_int, *mut c_int) -> c_int,
    release: unsafe extern "C" fn(*mut Manager, *mut *mut c_char, c_uint) -> c_int,
    inquire: unsafe extern "C" fn(*mut Manager, *mut *mut c_char, c_uint) -> c_int,
}

fn fail(message: &str) -> ! {
    eprintln!("lockdriver_client: {message}");
    std::process::exit(2);
}

struct Plugin {
    handle: *mut c_void,
    driver: &'static Driver,
}

fn load(path: &str) -> Plugin {
    let c = CString::new(path).unwrap_or_else(|_| fail("bad path"));
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        let e = unsafe { CStr::from_ptr(libc::dlerror()) }
            .to_string_lossy()
            .into_owned();
        fail(&format!("dlopen {path}: {e}"));
    }
    let symbol = unsafe { libc::dlsym(handle, c"virLockDriverImpl".as_ptr()) };
    if symbol.is_null() {
        fail("no virLockDriverImpl");
    }
    Plugin {
        handle,
        driver: unsafe { &*symbol.cast::<Driver>() },
    }
}

impl Plugin {
    fn last_error(&self) -> String {
        let f = unsafe { libc::dlsym(self.handle, c"leasehold_lockdriver_last_error".as_ptr()) };
        if f.is_null() {
            return String::new();
        }
        let f: extern "C" fn() -> *mut c_char = unsafe { std::mem::transmute(f) };
        let ptr = f();
        if ptr.is_null() {
            return String::new();
        }
        let text = unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned();
        unsafe { libc::free(ptr.cast()) };
        text
    }

    /// init + new + add_resource; returns the manager.
    fn open(&self, conf: &str, key: &str, lockspace: &str, pid: i32) -> Box<Manager> {
        let conf = CString::new(conf).unwrap_or_else(|_| fail("bad conf"));
        if unsafe { (self.driver.init)(1_000_000, conf.as_ptr(), 0) } != 0 {
            fail(&format!("init: {}", self.last_error()));
        }
        let mut manager = Box::new(Manager {
            driver: (self.driver as *const Driver).cast_mut(),
            private: std::ptr::null_mut(),
        });
        let name = c"testvm";
        let uri = c"qemu:///session";
        let mut uuid = [0u8; 16];
        uuid[15] = 7;
        let mut params = [
            Param {
                kind: 7,
                key: c"uuid".as_ptr(),
                value: Value { uuid },
            },
            Param {
                kind: 1,
                key: c"name".as_ptr(),
                value: Value {
                    cstr: name.as_ptr(),
                },
            },
            Param {
                kind: 4,
                key: c"id".as_ptr(),
                value: Value { iv: 1 },
            },
            Param {
                kind: 4,
                key: c"pid".as_ptr(),
                value: Value { iv: pid },
            },
            Param {
                kind: 1,
                key: c"uri".as_ptr(),
                value: Value { cstr: uri.as_ptr() },
            },
            // Unknown keys are ignored, not fatal.
            Param {
                kind: 2,
                key: c"future".as_ptr(),
                value: Value { iv: 9 },
            },
        ];
        let rc =
            unsafe { (self.driver.new)(&mut *manager, 0, params.len(), params.as_mut_ptr(), 0) };
        if rc != 0 {
            fail(&format!("new: {}", self.last_error()));
        }
        let key = CString::new(key).unwrap_or_else(|_| fail("bad key"));
        let lockspace = CString::new(lockspace).unwrap_or_else(|_| fail("bad lockspace"));
        let path = c"/dev/unused";
        let mut lease_params = [
            Param {
                kind: 1,
                key: c"path".as_ptr(),
                value: Value {
                    cstr: path.as_ptr(),
                },
            },
            Param {
                kind: 5,
                key: c"offset".as_ptr(),
                value: Value { ul: 0 },
            },
            Param {
                kind: 1,
                key: c"lockspace".as_ptr(),
                value: Value {
                    cstr: lockspace.as_ptr(),
                },
            },
        ];
        let rc = unsafe {
            (self.driver.add_resource)(
                &mut *manager,
                1,
                key.as_ptr(),
                lease_params.len(),
                lease_params.as_mut_ptr(),
                0,
            )
        };
        if rc != 0 {
            fail(&format!("add_resource: {}", self.last_error()));
        }
        // A disk too: allowed by default.
        let disk = c"/var/lib/images/testvm.img";
        let rc = unsafe {
            (self.driver.add_resource)(&mut *manager, 0, disk.as_ptr(), 0, std::ptr::null_mut(), 0)
        };
        if rc != 0 {
            fail(&format!("add_resource disk: {}", self.last_error()));
        }
        manager
    }
}

fn take_state(ptr: *mut c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    let text = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    unsafe { libc::free(ptr.cast()) };
    text
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| fail("missing argument"))
    };
    match arg(1).as_str() {
        "describe" => {
            let plugin = load(&arg(2));
            println!(
                "version {} flags {}",
                plugin.driver.version, plugin.driver.flags
            );
        }
        "child" => {
            let plugin = load(&arg(2));
            let pid = i32::try_from(std::process::id()).unwrap_or(0);
            let mut manager = plugin.open(&arg(3), &arg(4), &arg(5), pid);
            let mut fd: c_int = -1;
            let rc =
                unsafe { (plugin.driver.acquire)(&mut *manager, std::ptr::null(), 1, 0, &mut fd) };
            println!("register rc={rc} fd={fd}");
            let _ = std::io::stdout().flush();
            if rc != 0 {
                std::process::exit(1);
            }
            use std::os::unix::process::CommandExt;
            let error = std::process::Command::new(arg(6)).args(&args[7..]).exec();
            fail(&format!("exec: {error}"));
        }
        "libvirt" => {
            let plugin = load(&arg(2));
            let pid: i32 = arg(6).parse().unwrap_or_else(|_| fail("bad pid"));
            let mut manager = plugin.open(&arg(3), &arg(4), &arg(5), pid);
            let mut last_state = String::new();
            for step in &args[7..] {
                let mut out: *mut c_char = std::ptr::null_mut();
                let (rc, state) = match step.as_str() {
                    "acquire" => (
                        unsafe {
                            (plugin.driver.acquire)(
                                &mut *manager,
                                std::ptr::null(),
                                0,
                                0,
                                std::ptr::null_mut(),
                            )
                        },
                        String::new(),
                    ),
                    "acquire-state" => {
                        let state = CString::new(last_state.clone()).unwrap_or_default();
                        (
                            unsafe {
                                (plugin.driver.acquire)(
                                    &mut *manager,
                                    state.as_ptr(),
                                    0,
                                    0,
                                    std::ptr::null_mut(),
                                )
                            },
                            String::new(),
                        )
                    }
                    "release" => {
                        let rc = unsafe { (plugin.driver.release)(&mut *manager, &mut out, 0) };
                        (rc, take_state(out))
                    }
                    "inquire" => {
                        let rc = unsafe { (plugin.driver.inquire)(&mut *manager, &mut out, 0) };
                        (rc, take_state(out))
                    }
                    other => fail(&format!("unknown step {other}")),
                };
                if !state.is_empty() {
                    last_state.clone_from(&state);
                }
                let error = if rc == 0 {
                    String::new()
                } else {
                    plugin.last_error()
                };
                println!("{step} rc={rc} state={state} error={error}");
            }
            unsafe { (plugin.driver.free)(&mut *manager) };
            if !manager.private.is_null() {
                fail("free left private data behind");
            }
        }
        other => fail(&format!("unknown mode {other}")),
    }
}
