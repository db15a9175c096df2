//! `mmap`, `munmap` and `mremap` for what one application in one address space needs:
//! anonymous memory, and private copies of files, on the heap.
//!
//! - `MAP_ANONYMOUS` (private or shared: with one process they are the same) gives
//!   zeroed, page-aligned memory.
//! - A `MAP_PRIVATE` file mapping reads the file's bytes from the offset into such
//!   memory (the rest of the last page is zero). Later changes to the file are not
//!   seen through it (POSIX leaves that unspecified for private mappings).
//! - `MAP_SHARED` of a file is refused (`ENODEV`): without a page cache shared with
//!   the VFS, writes through it would not reach the file. Programs like sqlite fall
//!   back to `read`/`write`.
//! - `MAP_FIXED` is refused (`EINVAL`): Keel does not place memory at an address.
//! - The protection is not enforced (the memory is the heap's, readable and
//!   writable); `PROT_EXEC` is refused, so W^X holds.
//! - `munmap` takes back whole mappings only (`EINVAL` for part of one).
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own.

#![allow(clippy::missing_safety_doc)]

use alloc::collections::BTreeMap;
use core::ffi::{c_int, c_void};

use keel_elf::ExportedSymbols;

use crate::exports::export;

/// `MAP_FAILED`.
const MAP_FAILED: *mut c_void = usize::MAX as *mut c_void;
/// `PROT_EXEC`.
const PROT_EXEC: c_int = 4;
/// `MAP_SHARED`.
const MAP_SHARED: c_int = 1;
/// `MAP_FIXED`.
const MAP_FIXED: c_int = 0x10;
/// `MAP_ANONYMOUS`.
const MAP_ANONYMOUS: c_int = 0x20;
/// `MREMAP_MAYMOVE`.
const MREMAP_MAYMOVE: c_int = 1;
/// The page size.
const PAGE: usize = 4096;

/// The live mappings: address to length (rounded to pages).
static MAPPINGS: spin::Mutex<BTreeMap<usize, usize>> = spin::Mutex::new(BTreeMap::new());

/// Fails with `errno`.
fn fail(errno: c_int) -> *mut c_void {
    crate::set_errno(errno);
    MAP_FAILED
}

/// `void *mmap(void *, size_t, int prot, int flags, int fd, off_t)`.
pub unsafe extern "C" fn mmap(
    _address: *mut c_void,
    length: usize,
    protection: c_int,
    flags: c_int,
    fd: c_int,
    offset: i64,
) -> *mut c_void {
    if length == 0
        || flags & MAP_FIXED != 0
        || offset < 0
        || !(offset as usize).is_multiple_of(PAGE)
    {
        return fail(22);
    }
    if protection & PROT_EXEC != 0 {
        return fail(13);
    }
    let anonymous = flags & MAP_ANONYMOUS != 0;
    if !anonymous && flags & MAP_SHARED != 0 {
        return fail(19);
    }
    let Some(rounded) = length.checked_next_multiple_of(PAGE) else {
        return fail(12);
    };
    let block = crate::malloc::aligned_alloc(PAGE, rounded);
    if block.is_null() {
        return fail(12);
    }
    // SAFETY: `rounded` bytes are ours.
    unsafe { keel_mem::fill(block.cast(), 0, rounded) };
    if !anonymous {
        let Some(files) = crate::files() else {
            // SAFETY: ours.
            unsafe { crate::malloc::free(block) };
            return fail(38);
        };
        // SAFETY: ours, `length` bytes.
        let buffer = unsafe { core::slice::from_raw_parts_mut(block.cast::<u8>(), length) };
        let mut filled = 0;
        while filled < length {
            match files.pread(fd, &mut buffer[filled..], offset + filled as i64) {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(errno) => {
                    // SAFETY: ours.
                    unsafe { crate::malloc::free(block) };
                    return fail(errno.raw());
                }
            }
        }
    }
    MAPPINGS.lock().insert(block as usize, rounded);
    block
}

/// `int munmap(void *, size_t)`.
pub unsafe extern "C" fn munmap(address: *mut c_void, length: usize) -> c_int {
    let rounded = length.checked_next_multiple_of(PAGE).unwrap_or(usize::MAX);
    let mut mappings = MAPPINGS.lock();
    match mappings.get(&(address as usize)) {
        Some(&held) if held == rounded => {
            mappings.remove(&(address as usize));
            drop(mappings);
            // SAFETY: a mapping of ours, now forgotten.
            unsafe { crate::malloc::free(address) };
            0
        }
        _ => {
            crate::set_errno(22);
            -1
        }
    }
}

/// `void *mremap(void *, size_t old, size_t new, int flags, ...)`.
pub unsafe extern "C" fn mremap(
    address: *mut c_void,
    old: usize,
    new: usize,
    flags: c_int,
) -> *mut c_void {
    let (Some(old), Some(new)) = (
        old.checked_next_multiple_of(PAGE),
        new.checked_next_multiple_of(PAGE),
    ) else {
        return fail(12);
    };
    if new == 0 || MAPPINGS.lock().get(&(address as usize)) != Some(&old) {
        return fail(22);
    }
    if new <= old {
        MAPPINGS.lock().insert(address as usize, old);
        return address;
    }
    if flags & MREMAP_MAYMOVE == 0 {
        return fail(12);
    }
    let moved = crate::malloc::aligned_alloc(PAGE, new);
    if moved.is_null() {
        return fail(12);
    }
    // SAFETY: both ours; the old mapping has `old` bytes, the new `new > old`.
    unsafe {
        keel_mem::copy_nonoverlapping(moved.cast(), address.cast(), old);
        keel_mem::fill(moved.cast::<u8>().add(old), 0, new - old);
    }
    let mut mappings = MAPPINGS.lock();
    mappings.remove(&(address as usize));
    mappings.insert(moved as usize, new);
    drop(mappings);
    // SAFETY: the old mapping, forgotten.
    unsafe { crate::malloc::free(address) };
    moved
}

/// `int mprotect(void *, size_t, int)`: accepted for a mapping unless it asks for
/// execution (the protection is not enforced, see the module docs).
pub extern "C" fn mprotect(_address: *mut c_void, _length: usize, protection: c_int) -> c_int {
    if protection & PROT_EXEC != 0 {
        crate::set_errno(13);
        return -1;
    }
    0
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 5] = [
        ("mmap", mmap as *const () as usize),
        ("mmap64", mmap as *const () as usize),
        ("munmap", munmap as *const () as usize),
        ("mremap", mremap as *const () as usize),
        ("mprotect", mprotect as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
