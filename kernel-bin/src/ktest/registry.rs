//! The registered cases and crashes: the linker sections `.ktest_cases` and
//! `.ktest_crashes`, filled by the `ktest!` and `crash!` macros and kept whole by
//! `kernel-bin/linker.ld` (`KEEP`, so `--gc-sections` cannot drop entries that nothing
//! references) between start and end symbols. This is the harness's only unsafe code:
//! turning those symbols into slices.

use keel_arch_x86_64::ArchInfo;
use keel_ktest::{Case, Crash};

unsafe extern "C" {
    // Defined by kernel-bin/linker.ld around the sections; only their addresses are used.
    static __ktest_cases_start: u8;
    static __ktest_cases_end: u8;
    static __ktest_crashes_start: u8;
    static __ktest_crashes_end: u8;
}

/// The entries between `start` and `end`, each an 8-byte, 8-aligned `&'static T`.
///
/// # Safety
/// `start..end` must be a linker section holding only `&'static T` entries (laid end to
/// end: pointers have no padding), immutable for the kernel's lifetime.
unsafe fn section<T: 'static>(start: *const u8, end: *const u8) -> &'static [&'static T] {
    let entry = core::mem::size_of::<&T>();
    let bytes = (end as usize).saturating_sub(start as usize);
    debug_assert!((start as usize).is_multiple_of(core::mem::align_of::<&T>()));
    debug_assert!(bytes.is_multiple_of(entry));
    // SAFETY: by this function's contract, `start` points at `bytes / entry` initialised,
    // aligned `&'static T` entries that nothing writes.
    unsafe { core::slice::from_raw_parts(start.cast::<&'static T>(), bytes / entry) }
}

/// Every registered test case, in link order (the harness sorts them).
pub fn cases() -> &'static [&'static Case<ArchInfo>] {
    // SAFETY: the linker script places only `.ktest_cases` input sections between the
    // two symbols, 8-aligned; `ktest!` is the only writer of that section, and every
    // entry it writes is a `&'static Case<ArchInfo>` in a read-only static.
    unsafe { section(&raw const __ktest_cases_start, &raw const __ktest_cases_end) }
}

/// Every registered crash, in link order.
pub fn crashes() -> &'static [&'static Crash] {
    // SAFETY: as in `cases`, for `.ktest_crashes`, `crash!` and `&'static Crash`.
    unsafe {
        section(
            &raw const __ktest_crashes_start,
            &raw const __ktest_crashes_end,
        )
    }
}
