//! libvirt's lock-driver interface (src/locking/lock_driver.h, interface
//! version 1000000), declared here: libvirt does not install that header.
//! The unit tests check sizes and offsets against the layout measured on
//! libvirt 9.0.

use libc::{c_char, c_int, c_uint, c_void, size_t};

pub const VERSION: c_uint = 1_000_000;
/// The driver keeps state across pause/resume (`state` strings).
pub const USES_STATE: c_uint = 1;

/// virLockManagerObjectType
pub const OBJECT_TYPE_DOMAIN: c_uint = 0;
/// virLockManagerResourceType
pub const RESOURCE_DISK: c_uint = 0;
pub const RESOURCE_LEASE: c_uint = 1;
/// virLockManagerResourceFlags
pub const RESOURCE_READONLY: c_uint = 1;
pub const RESOURCE_SHARED: c_uint = 2;
/// virLockManagerAcquireFlags
pub const ACQUIRE_REGISTER_ONLY: c_uint = 1;

/// virLockManagerParamType
pub const PARAM_STRING: c_int = 0;
pub const PARAM_CSTRING: c_int = 1;
pub const PARAM_INT: c_int = 2;
pub const PARAM_LONG: c_int = 3;
pub const PARAM_UINT: c_int = 4;
pub const PARAM_ULONG: c_int = 5;
pub const PARAM_DOUBLE: c_int = 6;
pub const PARAM_UUID: c_int = 7;

/// virErrorDomain VIR_FROM_LOCKING and virErrorNumber
/// VIR_ERR_RESOURCE_BUSY / VIR_ERR_INTERNAL_ERROR.
pub const FROM_LOCKING: c_int = 42;
pub const ERR_RESOURCE_BUSY: c_int = 87;
pub const ERR_INTERNAL_ERROR: c_int = 1;

#[repr(C)]
#[derive(Clone, Copy)]
pub union ParamValue {
    pub iv: c_int,
    pub l: i64,
    pub ui: c_uint,
    pub ul: u64,
    pub d: f64,
    pub str_: *mut c_char,
    pub cstr: *const c_char,
    pub uuid: [u8; 16],
}

/// virLockManagerParam: 32 bytes.
#[repr(C)]
pub struct Param {
    pub type_: c_int,
    pub key: *const c_char,
    pub value: ParamValue,
}

/// virLockManager: what libvirt hands every call.
#[repr(C)]
pub struct Manager {
    pub driver: *mut Driver,
    pub private_data: *mut c_void,
}

pub type InitFn = unsafe extern "C" fn(c_uint, *const c_char, c_uint) -> c_int;
pub type DeinitFn = unsafe extern "C" fn() -> c_int;
pub type NewFn = unsafe extern "C" fn(*mut Manager, c_uint, size_t, *mut Param, c_uint) -> c_int;
pub type FreeFn = unsafe extern "C" fn(*mut Manager);
pub type AddResourceFn =
    unsafe extern "C" fn(*mut Manager, c_uint, *const c_char, size_t, *mut Param, c_uint) -> c_int;
pub type AcquireFn =
    unsafe extern "C" fn(*mut Manager, *const c_char, c_uint, c_int, *mut c_int) -> c_int;
pub type ReleaseFn = unsafe extern "C" fn(*mut Manager, *mut *mut c_char, c_uint) -> c_int;
pub type InquireFn = unsafe extern "C" fn(*mut Manager, *mut *mut c_char, c_uint) -> c_int;

/// virLockDriver: the exported `virLockDriverImpl`.
#[repr(C)]
pub struct Driver {
    pub version: c_uint,
    pub flags: c_uint,
    pub init: InitFn,
    pub deinit: DeinitFn,
    pub new: NewFn,
    pub free: FreeFn,
    pub add_resource: AddResourceFn,
    pub acquire: AcquireFn,
    pub release: ReleaseFn,
    pub inquire: InquireFn,
}

/// `void virReportErrorHelper(int domcode, int errcode, const char
/// *filename, const char *funcname, size_t linenr, const char *fmt, ...)`
pub type ReportErrorHelper =
    unsafe extern "C" fn(c_int, c_int, *const c_char, *const c_char, size_t, *const c_char, ...);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_libvirt_9() {
        assert_eq!(size_of::<Param>(), 32);
        assert_eq!(offset_of!(Param, key), 8);
        assert_eq!(offset_of!(Param, value), 16);
        assert_eq!(size_of::<ParamValue>(), 16);
        assert_eq!(size_of::<Manager>(), 16);
        assert_eq!(offset_of!(Manager, private_data), 8);
        assert_eq!(offset_of!(Driver, init), 8);
        assert_eq!(offset_of!(Driver, inquire), 8 + 7 * 8);
        assert_eq!(size_of::<Driver>(), 8 + 8 * 8);
    }
}
