//! The implementation: raw-pointer copies, fills and compares, and their slice
//! wrappers. Every `unsafe` block states what it relies on.

use core::arch::asm;
use core::cmp::Ordering;
use core::ptr::{read_unaligned as load, write_unaligned as store};

/// Largest copy done by the straight-line small path.
pub const SMALL_COPY_MAX: usize = 64;
/// Largest fill done by the straight-line small path.
pub const SMALL_FILL_MAX: usize = 32;
/// Largest copy or fill done by the SSE loop; above it, `rep movsb`/`rep stosb`.
pub const MEDIUM_MAX: usize = 2048;

/// Copies `count` bytes from `source` to `destination`, `count <= 64`, loading
/// everything before storing anything (so the regions may overlap).
///
/// # Safety
/// Both regions must be valid for `count` bytes (reads, writes) and `count <= 64`.
#[inline(always)]
unsafe fn copy_small(destination: *mut u8, source: *const u8, count: usize) {
    // SAFETY: each access lies inside `[0, count)` of its region (the head starts at 0,
    // the tail ends at `count`, and the branch conditions bound the widths), and the
    // caller guarantees both regions are valid for `count` bytes.
    unsafe {
        if count >= 32 {
            let head0 = load(source.cast::<u128>());
            let head1 = load(source.add(16).cast::<u128>());
            let tail0 = load(source.add(count - 32).cast::<u128>());
            let tail1 = load(source.add(count - 16).cast::<u128>());
            store(destination.cast::<u128>(), head0);
            store(destination.add(16).cast::<u128>(), head1);
            store(destination.add(count - 32).cast::<u128>(), tail0);
            store(destination.add(count - 16).cast::<u128>(), tail1);
        } else if count >= 16 {
            let head = load(source.cast::<u128>());
            let tail = load(source.add(count - 16).cast::<u128>());
            store(destination.cast::<u128>(), head);
            store(destination.add(count - 16).cast::<u128>(), tail);
        } else if count >= 8 {
            let head = load(source.cast::<u64>());
            let tail = load(source.add(count - 8).cast::<u64>());
            store(destination.cast::<u64>(), head);
            store(destination.add(count - 8).cast::<u64>(), tail);
        } else if count >= 4 {
            let head = load(source.cast::<u32>());
            let tail = load(source.add(count - 4).cast::<u32>());
            store(destination.cast::<u32>(), head);
            store(destination.add(count - 4).cast::<u32>(), tail);
        } else if count >= 2 {
            let head = load(source.cast::<u16>());
            let tail = load(source.add(count - 2).cast::<u16>());
            store(destination.cast::<u16>(), head);
            store(destination.add(count - 2).cast::<u16>(), tail);
        } else if count == 1 {
            destination.write(source.read());
        }
    }
}

/// Copies `count` bytes, `64 < count`, forwards in 64-byte steps of SSE moves; the
/// last 64 bytes are loaded before anything is stored and stored last (overlapping the
/// last step), so no remainder loop is needed.
///
/// # Safety
/// Both regions must be valid for `count` bytes, `count > 64`, and a forward copy in
/// 64-byte steps must give the intended result: the regions do not overlap, or the
/// destination starts below the source (each step then loads its 64 bytes before it
/// stores them, and a step's stores stay below every later step's loads).
#[inline(always)]
unsafe fn copy_medium(destination: *mut u8, source: *const u8, count: usize) {
    // SAFETY: `count > 64`, so `count - 64` is in range and the loop runs at least
    // once; every access is inside `[0, count)` of its region; overlap is excluded by
    // the contract. The loop is assembly, so the compiler cannot turn it into a call.
    unsafe {
        let last_source = source.add(count - 64);
        let last_destination = destination.add(count - 64);
        asm!(
            "movups {t0}, [{last_source}]",
            "movups {t1}, [{last_source} + 16]",
            "movups {t2}, [{last_source} + 32]",
            "movups {t3}, [{last_source} + 48]",
            "2:",
            "movups {a0}, [{source}]",
            "movups {a1}, [{source} + 16]",
            "movups {a2}, [{source} + 32]",
            "movups {a3}, [{source} + 48]",
            "movups [{destination}], {a0}",
            "movups [{destination} + 16], {a1}",
            "movups [{destination} + 32], {a2}",
            "movups [{destination} + 48], {a3}",
            "add {source}, 64",
            "add {destination}, 64",
            "sub {remaining}, 64",
            "cmp {remaining}, 64",
            "ja 2b",
            "movups [{last_destination}], {t0}",
            "movups [{last_destination} + 16], {t1}",
            "movups [{last_destination} + 32], {t2}",
            "movups [{last_destination} + 48], {t3}",
            source = inout(reg) source => _,
            destination = inout(reg) destination => _,
            remaining = inout(reg) count => _,
            last_source = in(reg) last_source,
            last_destination = in(reg) last_destination,
            t0 = out(xmm_reg) _, t1 = out(xmm_reg) _, t2 = out(xmm_reg) _, t3 = out(xmm_reg) _,
            a0 = out(xmm_reg) _, a1 = out(xmm_reg) _, a2 = out(xmm_reg) _, a3 = out(xmm_reg) _,
            options(nostack),
        );
    }
}

/// Fills `count` bytes, `32 < count`, in 32-byte steps of SSE stores; the last 32
/// bytes are stored last (overlapping the last step), so no remainder loop is needed.
///
/// # Safety
/// The region must be valid for writes of `count` bytes, `count > 32`.
#[inline(always)]
unsafe fn fill_medium(destination: *mut u8, byte: u8, count: usize) {
    // SAFETY: SSE2 is part of the x86-64 baseline, which every target of this crate
    // (the host target, and the kernel built for it) enables.
    let pattern = unsafe { core::arch::x86_64::_mm_set1_epi8(byte as i8) };
    // SAFETY: `count > 32`, so `count - 32` is in range and the loop runs at least
    // once; every store is inside `[0, count)`. Assembly, so never turned into a call.
    unsafe {
        let last = destination.add(count - 32);
        asm!(
            "2:",
            "movups [{destination}], {pattern}",
            "movups [{destination} + 16], {pattern}",
            "add {destination}, 32",
            "sub {remaining}, 32",
            "cmp {remaining}, 32",
            "ja 2b",
            "movups [{last}], {pattern}",
            "movups [{last} + 16], {pattern}",
            destination = inout(reg) destination => _,
            remaining = inout(reg) count => _,
            last = in(reg) last,
            pattern = in(xmm_reg) pattern,
            options(nostack),
        );
    }
}

/// `rep movsb`: copies `count` bytes forwards.
///
/// # Safety
/// Both regions must be valid for `count` bytes; a forward byte-by-byte copy must give
/// the intended result (the regions do not overlap, or the destination starts below the
/// source); the direction flag is clear (the ABI's guarantee at every call).
#[inline(always)]
unsafe fn rep_movsb(destination: *mut u8, source: *const u8, count: usize) {
    // SAFETY: per the contract; `rep movsb` touches exactly the two ranges.
    unsafe {
        asm!("rep movsb",
             inout("rcx") count => _, inout("rdi") destination => _, inout("rsi") source => _,
             options(nostack, preserves_flags));
    }
}

/// C's `memcpy`: copies `count` bytes from `source` to `destination`.
///
/// # Safety
/// `source` must be valid for reads and `destination` for writes of `count` bytes, and
/// the two regions must not overlap. (With `count == 0` any pointers are accepted.)
#[inline]
pub unsafe fn copy_nonoverlapping(destination: *mut u8, source: *const u8, count: usize) {
    if count <= SMALL_COPY_MAX {
        // SAFETY: the caller's contract, and `count <= 64`.
        unsafe { copy_small(destination, source, count) }
    } else if count <= MEDIUM_MAX {
        // SAFETY: the caller's contract: valid, non-overlapping regions; `count > 64`.
        unsafe { copy_medium(destination, source, count) }
    } else {
        // SAFETY: the caller's contract: valid, non-overlapping regions.
        unsafe { rep_movsb(destination, source, count) }
    }
}

/// C's `memmove`: copies `count` bytes from `source` to `destination`; the regions may
/// overlap (the result is as if the source were first copied to a temporary buffer).
///
/// # Safety
/// `source` must be valid for reads and `destination` for writes of `count` bytes.
#[inline]
pub unsafe fn copy(destination: *mut u8, source: *const u8, count: usize) {
    let distance = (destination as usize).wrapping_sub(source as usize);
    if count <= SMALL_COPY_MAX {
        // SAFETY: the caller's contract; the small path loads everything before it
        // stores, so overlap is fine.
        unsafe { copy_small(destination, source, count) }
    } else if distance >= count {
        // The destination is below the source (the distance wrapped around) or the
        // regions do not overlap: a forward copy is correct.
        if count <= MEDIUM_MAX {
            // SAFETY: the caller's contract; `count > 64`; no overlap, or the
            // destination below the source, as `copy_medium` allows.
            unsafe { copy_medium(destination, source, count) }
        } else {
            // SAFETY: the caller's contract.
            unsafe { rep_movsb(destination, source, count) }
        }
    } else if distance >= SMALL_COPY_MAX {
        // Overlap with the destination above the source, far enough apart: copy chunks
        // of `distance` bytes from the end. Chunk `[offset, offset + length)` of the
        // source goes to `destination + offset`, which is at or above
        // `source + offset + distance` = the end of the chunk, so the chunk's own copy
        // does not overwrite it, and it overwrites only source bytes above `offset +
        // distance`, which were copied already.
        let mut end = count;
        while end > 0 {
            let length = end.min(distance);
            let offset = end - length;
            // SAFETY: `offset + length <= count`, so both ranges are inside the
            // caller's valid regions; they do not overlap (see above).
            unsafe { rep_movsb(destination.add(offset), source.add(offset), length) };
            end = offset;
        }
    } else {
        // SAFETY: copies backwards from the last byte (direction flag set, then cleared
        // again as the ABI requires); `count > 64`, so `count - 1` is in range, and
        // validity is the caller's guarantee.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") count => _,
                 inout("rdi") destination.add(count - 1) => _,
                 inout("rsi") source.add(count - 1) => _,
                 options(nostack));
        }
    }
}

/// C's `memset`: sets `count` bytes at `destination` to `byte`.
///
/// # Safety
/// `destination` must be valid for writes of `count` bytes.
#[inline]
pub unsafe fn fill(destination: *mut u8, byte: u8, count: usize) {
    let pattern = u64::from_ne_bytes([byte; 8]);
    // SAFETY: each store lies inside `[0, count)`, as the branch conditions bound the
    // widths (`fill_medium` and `rep stosb` write exactly `count` bytes); the caller
    // guarantees the region is valid.
    unsafe {
        if count > MEDIUM_MAX {
            asm!("rep stosb",
                 inout("rcx") count => _, inout("rdi") destination => _, in("al") byte,
                 options(nostack, preserves_flags));
        } else if count > SMALL_FILL_MAX {
            fill_medium(destination, byte, count);
        } else if count >= 16 {
            let wide = u128::from(pattern) << 64 | u128::from(pattern);
            store(destination.cast::<u128>(), wide);
            store(destination.add(count - 16).cast::<u128>(), wide);
        } else if count >= 8 {
            store(destination.cast::<u64>(), pattern);
            store(destination.add(count - 8).cast::<u64>(), pattern);
        } else if count >= 4 {
            store(destination.cast::<u32>(), pattern as u32);
            store(destination.add(count - 4).cast::<u32>(), pattern as u32);
        } else if count >= 2 {
            store(destination.cast::<u16>(), pattern as u16);
            store(destination.add(count - 2).cast::<u16>(), pattern as u16);
        } else if count == 1 {
            destination.write(byte);
        }
    }
}

/// The first index below `count` where the regions differ, 8 bytes at a time, with
/// both differing words (byte order as in memory); `None` if they are equal.
///
/// # Safety
/// Both regions must be valid for reads of `count` bytes.
#[inline(always)]
unsafe fn first_difference(left: *const u8, right: *const u8, count: usize) -> Option<(u8, u8)> {
    let mut index = 0;
    while index + 8 <= count {
        // SAFETY: `index + 8 <= count`, inside both valid regions.
        let (a, b) = unsafe {
            (
                load(left.add(index).cast::<u64>()),
                load(right.add(index).cast::<u64>()),
            )
        };
        if a != b {
            // The lowest-addressed differing byte: on little-endian x86-64 it is the
            // lowest-order differing byte of the words.
            let shift = (a ^ b).trailing_zeros() / 8 * 8;
            return Some(((a >> shift) as u8, (b >> shift) as u8));
        }
        index += 8;
    }
    while index < count {
        // SAFETY: `index < count`, inside both valid regions.
        let (a, b) = unsafe { (left.add(index).read(), right.add(index).read()) };
        if a != b {
            return Some((a, b));
        }
        index += 1;
    }
    None
}

/// C's `memcmp`: compares `count` bytes as unsigned chars; negative, zero or positive
/// as the first differing byte of `left` is below, equal to or above `right`'s.
///
/// # Safety
/// Both regions must be valid for reads of `count` bytes.
#[inline]
pub unsafe fn compare(left: *const u8, right: *const u8, count: usize) -> i32 {
    // SAFETY: the caller's contract.
    match unsafe { first_difference(left, right, count) } {
        Some((a, b)) => i32::from(a) - i32::from(b),
        None => 0,
    }
}

/// C's `bcmp`: zero if the `count` bytes are equal, non-zero otherwise.
///
/// # Safety
/// Both regions must be valid for reads of `count` bytes.
#[inline]
pub unsafe fn differ(left: *const u8, right: *const u8, count: usize) -> i32 {
    // SAFETY: the caller's contract.
    i32::from(unsafe { first_difference(left, right, count) }.is_some())
}

/// Copies `source` into the start of `destination` (safe `memcpy`).
///
/// # Panics
/// If `destination` is shorter than `source`.
pub fn copy_slice(destination: &mut [u8], source: &[u8]) {
    assert!(
        destination.len() >= source.len(),
        "copy_slice: destination shorter than source"
    );
    // SAFETY: both slices are valid for `source.len()` bytes, and a `&mut` slice never
    // overlaps a shared one.
    unsafe { copy_nonoverlapping(destination.as_mut_ptr(), source.as_ptr(), source.len()) }
}

/// Sets every byte of `destination` to `byte` (safe `memset`).
pub fn fill_slice(destination: &mut [u8], byte: u8) {
    // SAFETY: the slice is valid for writes of its length.
    unsafe { fill(destination.as_mut_ptr(), byte, destination.len()) }
}

/// Compares two equally long prefixes like `memcmp`, then the lengths (safe `memcmp`).
pub fn compare_slices(left: &[u8], right: &[u8]) -> Ordering {
    let common = left.len().min(right.len());
    // SAFETY: both slices are valid for `common` bytes.
    let sign = unsafe { compare(left.as_ptr(), right.as_ptr(), common) };
    sign.cmp(&0).then(left.len().cmp(&right.len()))
}
