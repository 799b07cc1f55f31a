//! leasehold.so, the libvirt lock-manager plugin: before libvirt starts a
//! VM's CPUs it asks this host's leaseholdd for every `<lease>` of the VM,
//! so a VM guarded by leasehold cannot run twice, not even when an operator
//! runs `virsh start` on a second host. Select it with
//! `lock_manager = "leasehold"` in qemu.conf; docs/operations.md has the
//! details.
//!
//! Modules: [`abi`] (libvirt's structs, declared here), [`config`]
//! (qemu-leasehold.conf), [`register`] (the register-only acquire in the
//! forked child: syscalls only), [`domain`] (one VM's leases and the
//! operations through the daemon). Every entry point below catches panics
//! and returns -1: a panic must never take libvirtd down.

pub mod abi;
pub mod config;
pub mod domain;
pub mod register;

use abi::{Driver, Manager, Param};
use config::PluginConfig;
use domain::{Domain, Failure};
use libc::{c_char, c_int, c_uint, c_void, size_t};
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

struct Plugin {
    config: PluginConfig,
    address: register::Address,
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();
/// The last error reported, for tests that load the plugin without libvirt.
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

/// What libvirt looks up after dlopen.
#[no_mangle]
#[used]
pub static virLockDriverImpl: Driver = Driver {
    version: abi::VERSION,
    flags: abi::USES_STATE,
    init: drv_init,
    deinit: drv_deinit,
    new: drv_new,
    free: drv_free,
    add_resource: drv_add_resource,
    acquire: drv_acquire,
    release: drv_release,
    inquire: drv_inquire,
};

/// Report an error through libvirt's own helper (found at run time, so
/// the plugin does not link against libvirt), else to stderr.
fn report(failure: &Failure, function: &str) {
    if let Ok(mut last) = LAST_ERROR.lock() {
        last.clone_from(&failure.message);
    }
    let code = if failure.busy {
        abi::ERR_RESOURCE_BUSY
    } else {
        abi::ERR_INTERNAL_ERROR
    };
    // libvirt puts "resource busy: " before a busy error itself.
    let text = if failure.busy {
        failure
            .message
            .strip_prefix("resource busy: ")
            .unwrap_or(&failure.message)
    } else {
        &failure.message
    };
    let message = CString::new(text.replace('\0', " ")).unwrap_or_default();
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the
    // process, which is libvirtd when libvirt loaded us.
    let helper = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"virReportErrorHelper".as_ptr()) };
    if helper.is_null() {
        eprintln!("leasehold lock driver: {}", failure.message);
        return;
    }
    // SAFETY: virReportErrorHelper has this signature in libvirt 9.
    let helper: abi::ReportErrorHelper = unsafe { std::mem::transmute(helper) };
    let file = c"leasehold.so";
    let func = CString::new(function).unwrap_or_default();
    // SAFETY: every pointer is a live NUL-terminated string; "%s" takes one.
    unsafe {
        helper(
            abi::FROM_LOCKING,
            code,
            file.as_ptr(),
            func.as_ptr(),
            0,
            c"%s".as_ptr(),
            message.as_ptr(),
        );
    }
}

/// Run `body`, turning a panic into -1.
fn guarded(function: &str, body: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(_) => {
            report(
                &Failure {
                    busy: false,
                    message: format!("internal error in {function} (caught)"),
                },
                function,
            );
            -1
        }
    }
}

fn plugin() -> Result<&'static Plugin, Failure> {
    PLUGIN.get().ok_or_else(|| Failure {
        busy: false,
        message: "the leasehold lock driver was not initialised".to_string(),
    })
}

/// # Safety
/// `manager` is libvirt's, with our Domain in its private data.
unsafe fn domain_of<'a>(manager: *mut Manager) -> Option<&'a mut Domain> {
    if manager.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    let data = unsafe { (*manager).private_data };
    if data.is_null() {
        return None;
    }
    // SAFETY: drv_new stored a Box<Domain> there.
    Some(unsafe { &mut *data.cast::<Domain>() })
}

/// A malloc'ed copy of `text` for libvirt to g_free.
fn malloc_string(text: &str) -> *mut c_char {
    let bytes = text.as_bytes();
    // SAFETY: malloc of len + 1 bytes, filled below.
    let ptr = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
    if ptr.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: ptr has bytes.len() + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len());
        *ptr.add(bytes.len()) = 0;
    }
    ptr.cast()
}

unsafe extern "C" fn drv_init(
    version: c_uint,
    config_file: *const c_char,
    _flags: c_uint,
) -> c_int {
    guarded("drvInit", || {
        if version != abi::VERSION {
            report(
                &Failure {
                    busy: false,
                    message: format!(
                        "libvirt speaks lock-driver interface {version}, leasehold.so {}",
                        abi::VERSION
                    ),
                },
                "drvInit",
            );
            return -1;
        }
        let path = if config_file.is_null() {
            None
        } else {
            // SAFETY: libvirt passes a NUL-terminated path.
            Some(
                unsafe { std::ffi::CStr::from_ptr(config_file) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        let loaded = config::load(path.as_deref()).and_then(|config| {
            let address = register::Address::new(&config.socket)?;
            Ok(Plugin { config, address })
        });
        match loaded {
            Ok(plugin) => {
                // A second init keeps the first configuration.
                let _ = PLUGIN.set(plugin);
                0
            }
            Err(message) => {
                report(
                    &Failure {
                        busy: false,
                        message,
                    },
                    "drvInit",
                );
                -1
            }
        }
    })
}

unsafe extern "C" fn drv_deinit() -> c_int {
    0
}

unsafe extern "C" fn drv_new(
    manager: *mut Manager,
    kind: c_uint,
    nparams: size_t,
    params: *mut Param,
    _flags: c_uint,
) -> c_int {
    guarded("drvNew", || {
        if manager.is_null() || kind != abi::OBJECT_TYPE_DOMAIN {
            report(
                &Failure {
                    busy: false,
                    message: format!("unsupported lock object type {kind}"),
                },
                "drvNew",
            );
            return -1;
        }
        // SAFETY: libvirt passes `nparams` parameters.
        let domain = unsafe { Domain::from_params(params, nparams) };
        // SAFETY: manager is libvirt's, valid for this call.
        unsafe {
            (*manager).private_data = Box::into_raw(Box::new(domain)).cast::<c_void>();
        }
        0
    })
}

unsafe extern "C" fn drv_free(manager: *mut Manager) {
    let _ = guarded("drvFree", || {
        if manager.is_null() {
            return 0;
        }
        // SAFETY: manager is libvirt's; private_data is ours (or NULL).
        let data = unsafe { (*manager).private_data };
        if !data.is_null() {
            // SAFETY: drv_new made it from a Box<Domain>; freed once here.
            drop(unsafe { Box::from_raw(data.cast::<Domain>()) });
            // SAFETY: as above.
            unsafe {
                (*manager).private_data = std::ptr::null_mut();
            }
        }
        0
    });
}

unsafe extern "C" fn drv_add_resource(
    manager: *mut Manager,
    kind: c_uint,
    name: *const c_char,
    nparams: size_t,
    params: *mut Param,
    _flags: c_uint,
) -> c_int {
    guarded("drvAddResource", || {
        // SAFETY: libvirt's manager from drv_new.
        let Some(domain) = (unsafe { domain_of(manager) }) else {
            return -1;
        };
        // SAFETY: libvirt's name and parameters.
        match unsafe { domain.add_resource(kind, name, params, nparams) } {
            Ok(()) => 0,
            Err(failure) => {
                report(&failure, "drvAddResource");
                -1
            }
        }
    })
}

unsafe extern "C" fn drv_acquire(
    manager: *mut Manager,
    state: *const c_char,
    flags: c_uint,
    _action: c_int,
    fd: *mut c_int,
) -> c_int {
    if flags & abi::ACQUIRE_REGISTER_ONLY != 0 {
        // In libvirt's forked child, right before exec of QEMU: syscalls
        // and stack buffers only (no allocation, no locks, no reporting).
        // SAFETY: libvirt's manager from drv_new (read only).
        let leases = unsafe { domain_of(manager) }.map_or(0, |d| d.leases.len());
        if !fd.is_null() {
            // SAFETY: libvirt's out parameter.
            unsafe { *fd = -1 };
        }
        if leases == 0 {
            return 0;
        }
        let Some(plugin) = PLUGIN.get() else {
            return -1;
        };
        return match register::register_bound(&plugin.address) {
            Ok(socket) => {
                if !fd.is_null() {
                    // SAFETY: as above.
                    unsafe { *fd = socket };
                }
                0
            }
            Err(_) => -1,
        };
    }
    guarded("drvAcquire", || {
        // SAFETY: libvirt's manager from drv_new.
        let Some(domain) = (unsafe { domain_of(manager) }) else {
            return -1;
        };
        let state = if state.is_null() {
            None
        } else {
            // SAFETY: libvirt passes the state string we returned earlier.
            Some(
                unsafe { std::ffi::CStr::from_ptr(state) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        match plugin().and_then(|p| domain.acquire(&p.config, state.as_deref())) {
            Ok(()) => 0,
            Err(failure) => {
                report(&failure, "drvAcquire");
                -1
            }
        }
    })
}

/// Hand `text` to libvirt through `out` (when it asked).
fn give_state(out: *mut *mut c_char, text: &str) {
    if out.is_null() {
        return;
    }
    let value = if text.is_empty() {
        std::ptr::null_mut()
    } else {
        malloc_string(text)
    };
    // SAFETY: libvirt's out parameter.
    unsafe { *out = value };
}

unsafe extern "C" fn drv_release(
    manager: *mut Manager,
    state: *mut *mut c_char,
    _flags: c_uint,
) -> c_int {
    guarded("drvRelease", || {
        // SAFETY: libvirt's manager from drv_new.
        let Some(domain) = (unsafe { domain_of(manager) }) else {
            return -1;
        };
        match plugin().and_then(|p| domain.release(&p.config)) {
            Ok(text) => {
                give_state(state, &text);
                0
            }
            Err(failure) => {
                report(&failure, "drvRelease");
                -1
            }
        }
    })
}

unsafe extern "C" fn drv_inquire(
    manager: *mut Manager,
    state: *mut *mut c_char,
    _flags: c_uint,
) -> c_int {
    guarded("drvInquire", || {
        // SAFETY: libvirt's manager from drv_new.
        let Some(domain) = (unsafe { domain_of(manager) }) else {
            return -1;
        };
        match plugin().and_then(|p| domain.inquire(&p.config)) {
            Ok(text) => {
                give_state(state, &text);
                0
            }
            Err(failure) => {
                report(&failure, "drvInquire");
                -1
            }
        }
    })
}

/// The last error message as a malloc'ed string (free it with free(3)),
/// for tests that load the plugin without libvirt's error helper.
#[no_mangle]
pub extern "C" fn leasehold_lockdriver_last_error() -> *mut c_char {
    let text = LAST_ERROR.lock().map(|s| s.clone()).unwrap_or_default();
    malloc_string(&text)
}
