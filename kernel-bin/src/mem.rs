//! The C memory functions the prebuilt `core` calls (`memcpy`, `memmove`, `memset`,
//! `memcmp`, `bcmp`): the kernel's symbol definitions, each a thin wrapper around
//! `keel-mem`, which holds the code (small sizes in straight-line moves, larger ones
//! with `rep movsb`/`rep stosb`; never a loop the compiler could turn back into a call
//! to these very symbols). The symbols are defined here, not in `keel-mem`, so that
//! host tests and benches that link `keel-mem` keep glibc's.

/// Copies `count` bytes from `source` to `destination` (regions must not overlap).
///
/// # Safety
/// Both regions must be valid for `count` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(destination: *mut u8, source: *const u8, count: usize) -> *mut u8 {
    // SAFETY: the caller's contract is `copy_nonoverlapping`'s.
    unsafe { keel_mem::copy_nonoverlapping(destination, source, count) };
    destination
}

/// Copies `count` bytes, allowing the regions to overlap.
///
/// # Safety
/// Both regions must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(destination: *mut u8, source: *const u8, count: usize) -> *mut u8 {
    // SAFETY: the caller's contract is `copy`'s.
    unsafe { keel_mem::copy(destination, source, count) };
    destination
}

/// Fills `count` bytes at `destination` with the low byte of `value`.
///
/// # Safety
/// The region must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(destination: *mut u8, value: i32, count: usize) -> *mut u8 {
    // SAFETY: the caller's contract is `fill`'s; C converts `value` to unsigned char.
    unsafe { keel_mem::fill(destination, value as u8, count) };
    destination
}

/// Compares `count` bytes; returns <0, 0 or >0 like C's `memcmp`.
///
/// # Safety
/// Both regions must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(left: *const u8, right: *const u8, count: usize) -> i32 {
    // SAFETY: the caller's contract is `compare`'s.
    unsafe { keel_mem::compare(left, right, count) }
}

/// Compares `count` bytes for equality (0 when equal).
///
/// # Safety
/// Both regions must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(left: *const u8, right: *const u8, count: usize) -> i32 {
    // SAFETY: the caller's contract is `differ`'s.
    unsafe { keel_mem::differ(left, right, count) }
}

/// Referenced by the prebuilt `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the prebuilt `alloc` (built with unwinding). With `panic = "abort"`
/// nothing unwinds, so reaching it is a kernel bug: report and stop.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume(_exception: *mut u8) -> ! {
    panic!("_Unwind_Resume called, but the kernel is built with panic = \"abort\"")
}
