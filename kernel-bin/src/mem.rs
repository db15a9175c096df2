//! The C memory functions the prebuilt `core` calls (`memcpy`, `memmove`, `memset`,
//! `memcmp`, `bcmp`). They use `rep movsb`/`rep stosb`, which are fast on CPUs with ERMSB
//! and, being assembly, cannot be turned back into calls to themselves by the compiler.

use core::arch::asm;

/// Copies `count` bytes from `source` to `destination` (regions must not overlap).
///
/// # Safety
/// Both regions must be valid for `count` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(destination: *mut u8, source: *const u8, count: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; rep movsb copies forwards
    // (the direction flag is clear per the ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") count => _, inout("rdi") destination => _,
             inout("rsi") source => _, options(nostack, preserves_flags));
    }
    destination
}

/// Copies `count` bytes, allowing the regions to overlap.
///
/// # Safety
/// Both regions must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(destination: *mut u8, source: *const u8, count: usize) -> *mut u8 {
    if (destination as usize) <= (source as usize)
        || (destination as usize) >= (source as usize).wrapping_add(count)
    {
        // SAFETY: a forward copy is correct when the destination starts before the source
        // or the regions do not overlap; validity is the caller's guarantee.
        unsafe { memcpy(destination, source, count) };
    } else if count > 0 {
        // SAFETY: copies backwards from the last byte (direction flag set, then cleared
        // again as the ABI requires); validity is the caller's guarantee.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") count => _,
                 inout("rdi") destination.add(count - 1) => _,
                 inout("rsi") source.add(count - 1) => _,
                 options(nostack));
        }
    }
    destination
}

/// Fills `count` bytes at `destination` with the low byte of `value`.
///
/// # Safety
/// The region must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(destination: *mut u8, value: i32, count: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") count => _, inout("rdi") destination => _,
             in("al") value as u8, options(nostack, preserves_flags));
    }
    destination
}

/// Compares `count` bytes; returns <0, 0 or >0 like C's `memcmp`.
///
/// # Safety
/// Both regions must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(left: *const u8, right: *const u8, count: usize) -> i32 {
    for index in 0..count {
        // SAFETY: index < count and the caller guarantees both ranges are valid.
        let (a, b) = unsafe { (*left.add(index), *right.add(index)) };
        if a != b {
            return i32::from(a) - i32::from(b);
        }
    }
    0
}

/// Compares `count` bytes for equality (0 when equal).
///
/// # Safety
/// Both regions must be valid for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(left: *const u8, right: *const u8, count: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(left, right, count) }
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
