//! `malloc` and friends over Rust's global allocator (in the kernel, the kernel heap;
//! on the host, the test's allocator), with glibc's guarantees: 16-byte alignment,
//! `malloc(0)` a unique pointer, `free(NULL)` nothing, `ENOMEM` on failure.
//!
//! Each block carries a 16-byte header just below the pointer handed out: the size
//! asked for and where the underlying allocation starts, so that `free` and
//! `realloc` can rebuild its `Layout` (Rust's allocator, unlike C's, needs the size
//! and alignment back). A block aligned beyond 16 bytes (`posix_memalign`) starts
//! `alignment` bytes into its allocation, with the header right below.
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own (the
//! pointers C says are valid are valid, strings are NUL-terminated), so the
//! functions carry no `# Safety` section of their own.

#![allow(clippy::missing_safety_doc)]

use core::alloc::Layout;
use core::ffi::{c_int, c_void};

use keel_elf::ExportedSymbols;

use crate::exports::export;

/// The header below each block.
#[repr(C)]
struct Header {
    /// The size asked for.
    size: usize,
    /// Bytes from the allocation's start to the block (16, or the alignment).
    offset: u32,
    /// log2 of the allocation's alignment.
    align_log2: u32,
}

/// glibc's alignment on x86-64 (`2 * sizeof(size_t)`).
const MINIMUM_ALIGNMENT: usize = 16;

/// `ENOMEM`.
const ENOMEM: c_int = 12;
/// `EINVAL`.
const EINVAL: c_int = 22;

/// A block of `size` bytes aligned to `alignment` (a power of two, at least 16).
fn allocate(size: usize, alignment: usize, zeroed: bool) -> *mut c_void {
    let offset = alignment.max(MINIMUM_ALIGNMENT);
    let Some(layout) = size
        .checked_add(offset)
        .and_then(|total| Layout::from_size_align(total, offset).ok())
    else {
        crate::set_errno(ENOMEM);
        return core::ptr::null_mut();
    };
    // SAFETY: the layout's size is at least 16, never zero.
    let base = unsafe {
        if zeroed {
            alloc::alloc::alloc_zeroed(layout)
        } else {
            alloc::alloc::alloc(layout)
        }
    };
    if base.is_null() {
        crate::set_errno(ENOMEM);
        return core::ptr::null_mut();
    }
    // SAFETY: the allocation has `offset + size` bytes; the header fits the 16 bytes
    // below `base + offset`, which is aligned to 16 at least.
    unsafe {
        let block = base.add(offset);
        block.cast::<Header>().sub(1).write(Header {
            size,
            offset: offset as u32,
            align_log2: offset.trailing_zeros(),
        });
        block.cast()
    }
}

/// The header of `block`, and the allocation's start and layout.
///
/// # Safety
/// `block` came from this module and was not freed.
unsafe fn header(block: *mut c_void) -> (usize, *mut u8, Layout) {
    // SAFETY: per the contract, the header is right below the block.
    unsafe {
        let header = block.cast::<Header>().sub(1).read();
        let offset = header.offset as usize;
        let base = block.cast::<u8>().sub(offset);
        let layout =
            Layout::from_size_align_unchecked(header.size + offset, 1 << header.align_log2);
        (header.size, base, layout)
    }
}

/// `void *malloc(size_t)`.
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    allocate(size, MINIMUM_ALIGNMENT, false)
}

/// `void *calloc(size_t, size_t)`: zeroed, `ENOMEM` when the product overflows.
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => allocate(total, MINIMUM_ALIGNMENT, true),
        None => {
            crate::set_errno(ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `void free(void *)`.
pub unsafe extern "C" fn free(block: *mut c_void) {
    if block.is_null() {
        return;
    }
    // SAFETY: C's contract: the block came from this allocator and is live.
    unsafe {
        let (_, base, layout) = header(block);
        alloc::alloc::dealloc(base, layout);
    }
}

/// `void *realloc(void *, size_t)`: `realloc(NULL, n)` is `malloc(n)`; the contents
/// up to the smaller size are kept; on failure the old block stays and NULL returns.
/// `realloc(p, 0)` frees `p` and returns NULL, as glibc does.
pub unsafe extern "C" fn realloc(block: *mut c_void, size: usize) -> *mut c_void {
    if block.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: C's contract.
        unsafe { free(block) };
        return core::ptr::null_mut();
    }
    // SAFETY: C's contract: a live block of this allocator.
    let (old_size, base, layout) = unsafe { header(block) };
    if layout.align() == MINIMUM_ALIGNMENT {
        let Some(new_total) = size.checked_add(MINIMUM_ALIGNMENT) else {
            crate::set_errno(ENOMEM);
            return core::ptr::null_mut();
        };
        // SAFETY: `base` and `layout` are the allocation's; the new size is non-zero
        // and (being below isize::MAX, as checked_add and Layout ensure) valid.
        let grown = unsafe { alloc::alloc::realloc(base, layout, new_total) };
        if grown.is_null() {
            crate::set_errno(ENOMEM);
            return core::ptr::null_mut();
        }
        // SAFETY: the header moved with the allocation; update its size.
        unsafe {
            let block = grown.add(MINIMUM_ALIGNMENT);
            (*block.cast::<Header>().sub(1)).size = size;
            return block.cast();
        }
    }
    let fresh = allocate(size, layout.align(), false);
    if !fresh.is_null() {
        // SAFETY: both blocks hold at least the smaller size; they do not overlap.
        unsafe {
            keel_mem::copy_nonoverlapping(fresh.cast(), block.cast(), old_size.min(size));
            free(block);
        }
    }
    fresh
}

/// `int posix_memalign(void **, size_t alignment, size_t)`: `EINVAL` unless the
/// alignment is a power of two multiple of `sizeof(void *)`.
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    alignment: usize,
    size: usize,
) -> c_int {
    if !alignment.is_power_of_two() || !alignment.is_multiple_of(core::mem::size_of::<usize>()) {
        return EINVAL;
    }
    let block = allocate(size, alignment, false);
    if block.is_null() {
        return ENOMEM;
    }
    // SAFETY: C's contract: `out` is writable.
    unsafe { *out = block };
    0
}

/// `void *aligned_alloc(size_t alignment, size_t)` and `memalign`: `EINVAL` for an
/// alignment that is not a power of two.
pub extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    if !alignment.is_power_of_two() {
        crate::set_errno(EINVAL);
        return core::ptr::null_mut();
    }
    allocate(size, alignment, false)
}

/// `size_t malloc_usable_size(void *)`: the size asked for (0 for NULL).
pub unsafe extern "C" fn malloc_usable_size(block: *mut c_void) -> usize {
    if block.is_null() {
        return 0;
    }
    // SAFETY: C's contract: a live block.
    unsafe { header(block).0 }
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 8] = [
        ("malloc", malloc as *const () as usize),
        ("calloc", calloc as *const () as usize),
        ("realloc", realloc as *const () as usize),
        ("free", free as *const () as usize),
        ("posix_memalign", posix_memalign as *const () as usize),
        ("aligned_alloc", aligned_alloc as *const () as usize),
        ("memalign", aligned_alloc as *const () as usize),
        (
            "malloc_usable_size",
            malloc_usable_size as *const () as usize,
        ),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
