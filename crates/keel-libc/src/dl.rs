//! `dlfcn.h`: `dlopen`, `dlsym`, `dlclose` and `dlerror` through the
//! [`Platform`](crate::Platform), which owns the ELF linker (the kernel's, or a host
//! test's).
//!
//! `dlerror`'s message lives in one buffer shared by all threads (glibc keeps one per
//! thread): two threads failing at once may read each other's message.
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own.

#![allow(clippy::missing_safety_doc)]

use alloc::string::String;
use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void};

use keel_elf::ExportedSymbols;

use crate::exports::export;
use crate::string::bytes;

/// The last error, NUL-terminated, until `dlerror` reports it.
static LAST_ERROR: spin::Mutex<Option<Vec<u8>>> = spin::Mutex::new(None);
/// The message `dlerror` returned last (kept alive until the next `dlerror`).
static REPORTED: spin::Mutex<Vec<u8>> = spin::Mutex::new(Vec::new());

/// Records `message` for `dlerror`.
fn failed(message: String) {
    let mut bytes = message.into_bytes();
    bytes.push(0);
    *LAST_ERROR.lock() = Some(bytes);
}

/// `void *dlopen(const char *, int)`: NULL for the program itself.
pub unsafe extern "C" fn dlopen(path: *const c_char, flags: c_int) -> *mut c_void {
    let path = if path.is_null() {
        None
    } else {
        // SAFETY: C's contract.
        Some(unsafe { bytes(path) })
    };
    match crate::platform().dlopen(path, flags) {
        Ok(handle) => handle as *mut c_void,
        Err(message) => {
            failed(message);
            core::ptr::null_mut()
        }
    }
}

/// `void *dlsym(void *, const char *)`.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    // SAFETY: C's contract.
    let name = unsafe { bytes(name) };
    match crate::platform().dlsym(handle as usize, name) {
        Ok(address) => address as *mut c_void,
        Err(message) => {
            failed(message);
            core::ptr::null_mut()
        }
    }
}

/// `int dlclose(void *)`.
pub extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    match crate::platform().dlclose(handle as usize) {
        Ok(()) => 0,
        Err(message) => {
            failed(message);
            -1
        }
    }
}

/// `char *dlerror(void)`: the last failure's message, once; NULL if none since.
pub extern "C" fn dlerror() -> *mut c_char {
    let Some(message) = LAST_ERROR.lock().take() else {
        return core::ptr::null_mut();
    };
    let mut reported = REPORTED.lock();
    *reported = message;
    reported.as_ptr().cast_mut().cast()
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 4] = [
        ("dlopen", dlopen as *const () as usize),
        ("dlsym", dlsym as *const () as usize),
        ("dlclose", dlclose as *const () as usize),
        ("dlerror", dlerror as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
