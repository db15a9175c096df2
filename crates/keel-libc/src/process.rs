//! Process-level calls: `abort`, `exit`, `atexit`, the C++ ABI's `__cxa_atexit` and
//! `__cxa_finalize` (each shared object's destructors, run when it is unloaded),
//! `__stack_chk_fail`, `getenv` and `getpid`.
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own (the
//! pointers C says are valid are valid, strings are NUL-terminated), so the
//! functions carry no `# Safety` section of their own.

#![allow(clippy::missing_safety_doc)]

use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void};

use keel_elf::ExportedSymbols;

use crate::exports::export;
use crate::string::bytes;

/// A registered exit handler: `function(argument)`, owned by the object `dso` (the
/// `__dso_handle` it passed; NULL for `atexit`'s handlers of the program).
#[derive(Clone, Copy)]
struct Handler {
    function: unsafe extern "C" fn(*mut c_void),
    argument: *mut c_void,
    dso: *mut c_void,
}

// SAFETY: the pointers are C's, only handed back to C; the list is behind a lock.
unsafe impl Send for Handler {}

/// Handlers in registration order. A spin lock: held only to push or take entries,
/// never while a handler runs.
static HANDLERS: spin::Mutex<Vec<Handler>> = spin::Mutex::new(Vec::new());

/// `int __cxa_atexit(void (*)(void *), void *, void *dso)`.
pub extern "C" fn cxa_atexit(
    function: unsafe extern "C" fn(*mut c_void),
    argument: *mut c_void,
    dso: *mut c_void,
) -> c_int {
    HANDLERS.lock().push(Handler {
        function,
        argument,
        dso,
    });
    0
}

/// Calls a handler registered by `atexit` (no argument).
unsafe extern "C" fn call_without_argument(function: *mut c_void) {
    // SAFETY: `atexit` stored a `void (*)(void)` here.
    let function: unsafe extern "C" fn() = unsafe { core::mem::transmute(function) };
    // SAFETY: the program registered it to be called at exit.
    unsafe { function() };
}

/// `int atexit(void (*)(void))`.
pub extern "C" fn atexit(function: extern "C" fn()) -> c_int {
    cxa_atexit(
        call_without_argument,
        function as *const () as *mut c_void,
        core::ptr::null_mut(),
    )
}

/// `void __cxa_finalize(void *dso)`: runs, newest first, the handlers `dso` registered
/// (all of them for NULL) and forgets them.
pub unsafe extern "C" fn cxa_finalize(dso: *mut c_void) {
    loop {
        let next = {
            let mut handlers = HANDLERS.lock();
            let position = handlers
                .iter()
                .rposition(|handler| dso.is_null() || handler.dso == dso);
            position.map(|position| handlers.remove(position))
        };
        let Some(handler) = next else {
            return;
        };
        // SAFETY: registered to be called so, from code still mapped (an object calls
        // `__cxa_finalize` before it is unloaded).
        unsafe { (handler.function)(handler.argument) };
    }
}

/// `void exit(int)`: the exit handlers, then the platform's exit.
pub extern "C" fn exit(status: c_int) -> ! {
    // SAFETY: NULL runs every handler.
    unsafe { cxa_finalize(core::ptr::null_mut()) };
    crate::platform().exit(status)
}

/// `void abort(void)`.
pub extern "C" fn abort() -> ! {
    crate::platform().abort("abort() called")
}

/// `void __stack_chk_fail(void)`: a stack protector found its canary changed.
pub extern "C" fn stack_chk_fail() -> ! {
    crate::platform().abort("*** stack smashing detected ***: terminated")
}

/// `char *getenv(const char *)`.
pub unsafe extern "C" fn getenv(name: *const c_char) -> *mut c_char {
    // SAFETY: C's contract.
    let name = unsafe { bytes(name) };
    for &variable in crate::platform().environment() {
        if variable.len() > name.len()
            && variable.starts_with(name)
            && variable[name.len()] == b'='
            && variable.last() == Some(&0)
        {
            return variable[name.len() + 1..].as_ptr().cast_mut().cast();
        }
    }
    core::ptr::null_mut()
}

/// `pid_t getpid(void)`.
pub extern "C" fn getpid() -> c_int {
    crate::platform().pid()
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 9] = [
        ("__cxa_atexit", cxa_atexit as *const () as usize),
        ("__cxa_finalize", cxa_finalize as *const () as usize),
        ("atexit", atexit as *const () as usize),
        ("exit", exit as *const () as usize),
        ("abort", abort as *const () as usize),
        ("__stack_chk_fail", stack_chk_fail as *const () as usize),
        ("getenv", getenv as *const () as usize),
        ("secure_getenv", getenv as *const () as usize),
        ("getpid", getpid as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
