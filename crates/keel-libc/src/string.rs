//! `string.h`: the `mem*` functions over `keel-mem` (the kernel's own, fast and free of
//! self-calls), the `str*` functions, the fortified `__*_chk` forms real binaries
//! import, and `strerror` with Linux's messages.
//!
//! Every function has its C contract: pointers valid for the lengths C says, strings
//! NUL-terminated. A `_chk` function given a destination object size too small aborts
//! through the platform, as glibc's `__chk_fail` does.
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own (the
//! pointers C says are valid are valid, strings are NUL-terminated), so the
//! functions carry no `# Safety` section of their own.

#![allow(clippy::missing_safety_doc)]

use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void};

use keel_elf::ExportedSymbols;

use crate::exports::{export, export_versioned};

/// The length of the NUL-terminated `string`.
///
/// # Safety
/// `string` points at a NUL-terminated string.
pub(crate) unsafe fn length(string: *const c_char) -> usize {
    let mut count = 0;
    // SAFETY: the string is NUL-terminated, so every byte up to the NUL is readable.
    while unsafe { *string.add(count) } != 0 {
        count += 1;
    }
    count
}

/// The NUL-terminated `string` as bytes, without the NUL.
///
/// # Safety
/// `string` points at a NUL-terminated string that outlives `'a` unchanged.
pub(crate) unsafe fn bytes<'a>(string: *const c_char) -> &'a [u8] {
    // SAFETY: `length` bytes are readable (per the contract).
    unsafe { core::slice::from_raw_parts(string.cast::<u8>(), length(string)) }
}

/// `void *memcpy(void *, const void *, size_t)`.
pub unsafe extern "C" fn memcpy(
    destination: *mut c_void,
    source: *const c_void,
    count: usize,
) -> *mut c_void {
    // SAFETY: C's contract: both ranges valid, not overlapping.
    unsafe { keel_mem::copy_nonoverlapping(destination.cast(), source.cast(), count) };
    destination
}

/// `void *memmove(void *, const void *, size_t)`; also `memcpy@GLIBC_2.2.5`, which
/// old binaries call with overlapping ranges.
pub unsafe extern "C" fn memmove(
    destination: *mut c_void,
    source: *const c_void,
    count: usize,
) -> *mut c_void {
    // SAFETY: C's contract: both ranges valid.
    unsafe { keel_mem::copy(destination.cast(), source.cast(), count) };
    destination
}

/// `void *memset(void *, int, size_t)`.
pub unsafe extern "C" fn memset(
    destination: *mut c_void,
    byte: c_int,
    count: usize,
) -> *mut c_void {
    // SAFETY: C's contract: the range is valid.
    unsafe { keel_mem::fill(destination.cast(), byte as u8, count) };
    destination
}

/// `int memcmp(const void *, const void *, size_t)`.
pub unsafe extern "C" fn memcmp(left: *const c_void, right: *const c_void, count: usize) -> c_int {
    // SAFETY: C's contract: both ranges valid.
    unsafe { keel_mem::compare(left.cast(), right.cast(), count) }
}

/// `void *memchr(const void *, int, size_t)`.
pub unsafe extern "C" fn memchr(haystack: *const c_void, byte: c_int, count: usize) -> *mut c_void {
    let haystack = haystack.cast::<u8>();
    for index in 0..count {
        // SAFETY: C's contract: `count` bytes are readable.
        if unsafe { *haystack.add(index) } == byte as u8 {
            // SAFETY: inside the range.
            return unsafe { haystack.add(index) }.cast_mut().cast();
        }
    }
    core::ptr::null_mut()
}

/// `void *memrchr(const void *, int, size_t)`.
pub unsafe extern "C" fn memrchr(
    haystack: *const c_void,
    byte: c_int,
    count: usize,
) -> *mut c_void {
    let haystack = haystack.cast::<u8>();
    for index in (0..count).rev() {
        // SAFETY: C's contract: `count` bytes are readable.
        if unsafe { *haystack.add(index) } == byte as u8 {
            // SAFETY: inside the range.
            return unsafe { haystack.add(index) }.cast_mut().cast();
        }
    }
    core::ptr::null_mut()
}

/// `void *rawmemchr(const void *, int)`: the byte is known to be there.
pub unsafe extern "C" fn rawmemchr(haystack: *const c_void, byte: c_int) -> *mut c_void {
    let mut at = haystack.cast::<u8>();
    // SAFETY: C's contract: the byte occurs, so every byte up to it is readable.
    unsafe {
        while *at != byte as u8 {
            at = at.add(1);
        }
    }
    at.cast_mut().cast()
}

/// `size_t strlen(const char *)`.
pub unsafe extern "C" fn strlen(string: *const c_char) -> usize {
    // SAFETY: C's contract.
    unsafe { length(string) }
}

/// `size_t strnlen(const char *, size_t)`.
pub unsafe extern "C" fn strnlen(string: *const c_char, limit: usize) -> usize {
    let mut count = 0;
    // SAFETY: C's contract: readable up to the NUL or `limit` bytes.
    while count < limit && unsafe { *string.add(count) } != 0 {
        count += 1;
    }
    count
}

/// `int strcmp(const char *, const char *)`: compares as unsigned char.
pub unsafe extern "C" fn strcmp(left: *const c_char, right: *const c_char) -> c_int {
    // SAFETY: C's contract.
    unsafe { strncmp(left, right, usize::MAX) }
}

/// `int strncmp(const char *, const char *, size_t)`.
pub unsafe extern "C" fn strncmp(left: *const c_char, right: *const c_char, limit: usize) -> c_int {
    for index in 0..limit {
        // SAFETY: C's contract: both are readable up to their NUL or `limit`.
        let (a, b) = unsafe { (*left.add(index) as u8, *right.add(index) as u8) };
        if a != b || a == 0 {
            return c_int::from(a) - c_int::from(b);
        }
    }
    0
}

/// `int strcasecmp(const char *, const char *)` (ASCII, the C locale).
pub unsafe extern "C" fn strcasecmp(left: *const c_char, right: *const c_char) -> c_int {
    // SAFETY: C's contract.
    unsafe { strncasecmp(left, right, usize::MAX) }
}

/// `int strncasecmp(const char *, const char *, size_t)`.
pub unsafe extern "C" fn strncasecmp(
    left: *const c_char,
    right: *const c_char,
    limit: usize,
) -> c_int {
    for index in 0..limit {
        // SAFETY: C's contract.
        let (a, b) = unsafe { (*left.add(index) as u8, *right.add(index) as u8) };
        let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
        if a != b || a == 0 {
            return c_int::from(a) - c_int::from(b);
        }
    }
    0
}

/// `char *strchrnul(const char *, int)`: the byte, or the NUL.
pub unsafe extern "C" fn strchrnul(string: *const c_char, byte: c_int) -> *mut c_char {
    let mut at = string;
    // SAFETY: C's contract: readable up to the NUL.
    unsafe {
        while *at != 0 && *at as u8 != byte as u8 {
            at = at.add(1);
        }
    }
    at.cast_mut()
}

/// `char *strchr(const char *, int)` (finding the NUL itself for 0).
pub unsafe extern "C" fn strchr(string: *const c_char, byte: c_int) -> *mut c_char {
    // SAFETY: C's contract.
    let at = unsafe { strchrnul(string, byte) };
    // SAFETY: `at` is inside the string.
    if unsafe { *at } as u8 == byte as u8 {
        at
    } else {
        core::ptr::null_mut()
    }
}

/// `char *strrchr(const char *, int)`.
pub unsafe extern "C" fn strrchr(string: *const c_char, byte: c_int) -> *mut c_char {
    // SAFETY: C's contract.
    let bytes = unsafe { core::slice::from_raw_parts(string.cast::<u8>(), length(string) + 1) };
    match bytes.iter().rposition(|&b| b == byte as u8) {
        // SAFETY: inside the string.
        Some(index) => unsafe { string.add(index) }.cast_mut(),
        None => core::ptr::null_mut(),
    }
}

/// `char *strstr(const char *, const char *)`.
pub unsafe extern "C" fn strstr(haystack: *const c_char, needle: *const c_char) -> *mut c_char {
    // SAFETY: C's contract: both NUL-terminated.
    let (hay, pin) = unsafe { (bytes(haystack), bytes(needle)) };
    if pin.is_empty() {
        return haystack.cast_mut();
    }
    match hay.windows(pin.len()).position(|window| window == pin) {
        // SAFETY: inside the string.
        Some(index) => unsafe { haystack.add(index) }.cast_mut(),
        None => core::ptr::null_mut(),
    }
}

/// The bytes of `set` as a 256-entry membership table.
///
/// # Safety
/// `set` is NUL-terminated.
unsafe fn membership(set: *const c_char) -> [bool; 256] {
    let mut table = [false; 256];
    // SAFETY: forwarded.
    for &byte in unsafe { bytes(set) } {
        table[usize::from(byte)] = true;
    }
    table
}

/// `size_t strspn(const char *, const char *)`.
pub unsafe extern "C" fn strspn(string: *const c_char, accept: *const c_char) -> usize {
    // SAFETY: C's contract.
    let (string, table) = unsafe { (bytes(string), membership(accept)) };
    string
        .iter()
        .position(|&byte| !table[usize::from(byte)])
        .unwrap_or(string.len())
}

/// `size_t strcspn(const char *, const char *)`.
pub unsafe extern "C" fn strcspn(string: *const c_char, reject: *const c_char) -> usize {
    // SAFETY: C's contract.
    let (string, table) = unsafe { (bytes(string), membership(reject)) };
    string
        .iter()
        .position(|&byte| table[usize::from(byte)])
        .unwrap_or(string.len())
}

/// `char *strpbrk(const char *, const char *)`.
pub unsafe extern "C" fn strpbrk(string: *const c_char, accept: *const c_char) -> *mut c_char {
    // SAFETY: C's contract.
    let index = unsafe { strcspn(string, accept) };
    // SAFETY: `index` is at most the string's length.
    if unsafe { *string.add(index) } == 0 {
        core::ptr::null_mut()
    } else {
        // SAFETY: inside the string.
        unsafe { string.add(index) }.cast_mut()
    }
}

/// `char *stpcpy(char *, const char *)`: the end of the copy.
pub unsafe extern "C" fn stpcpy(destination: *mut c_char, source: *const c_char) -> *mut c_char {
    // SAFETY: C's contract: the destination holds the source and its NUL.
    unsafe {
        let count = length(source);
        keel_mem::copy_nonoverlapping(destination.cast(), source.cast(), count + 1);
        destination.add(count)
    }
}

/// `char *strcpy(char *, const char *)`.
pub unsafe extern "C" fn strcpy(destination: *mut c_char, source: *const c_char) -> *mut c_char {
    // SAFETY: C's contract.
    unsafe { stpcpy(destination, source) };
    destination
}

/// `char *strncpy(char *, const char *, size_t)`: pads with NULs to `count`.
pub unsafe extern "C" fn strncpy(
    destination: *mut c_char,
    source: *const c_char,
    count: usize,
) -> *mut c_char {
    // SAFETY: C's contract: `count` bytes writable, the source readable to its NUL or
    // `count`.
    unsafe {
        let copied = strnlen(source, count);
        keel_mem::copy_nonoverlapping(destination.cast(), source.cast(), copied);
        keel_mem::fill(destination.add(copied).cast(), 0, count - copied);
    }
    destination
}

/// `char *strcat(char *, const char *)`.
pub unsafe extern "C" fn strcat(destination: *mut c_char, source: *const c_char) -> *mut c_char {
    // SAFETY: C's contract.
    unsafe { stpcpy(destination.add(length(destination)), source) };
    destination
}

/// `char *strncat(char *, const char *, size_t)`: at most `count` bytes, then a NUL.
pub unsafe extern "C" fn strncat(
    destination: *mut c_char,
    source: *const c_char,
    count: usize,
) -> *mut c_char {
    // SAFETY: C's contract.
    unsafe {
        let end = destination.add(length(destination));
        let copied = strnlen(source, count);
        keel_mem::copy_nonoverlapping(end.cast(), source.cast(), copied);
        *end.add(copied) = 0;
    }
    destination
}

/// `char *strndup(const char *, size_t)`, malloc'd.
pub unsafe extern "C" fn strndup(source: *const c_char, limit: usize) -> *mut c_char {
    // SAFETY: C's contract.
    let count = unsafe { strnlen(source, limit) };
    let copy = crate::malloc::malloc(count + 1).cast::<c_char>();
    if !copy.is_null() {
        // SAFETY: `copy` has `count + 1` bytes; the source `count` readable ones.
        unsafe {
            keel_mem::copy_nonoverlapping(copy.cast(), source.cast(), count);
            *copy.add(count) = 0;
        }
    }
    copy
}

/// `char *strdup(const char *)`, malloc'd.
pub unsafe extern "C" fn strdup(source: *const c_char) -> *mut c_char {
    // SAFETY: C's contract.
    unsafe { strndup(source, usize::MAX) }
}

/// Linux's messages for errno 0..134, NUL-terminated, built once from keel-vfs's
/// table (the one place Keel spells them).
static MESSAGES: spin::Once<Vec<Vec<u8>>> = spin::Once::new();

/// "Unknown error" for numbers Keel has no message for (glibc adds the number, in a
/// thread-local buffer; Keel's strerror returns only static strings).
const UNKNOWN_ERROR: &[u8] = b"Unknown error\0";

/// `char *strerror(int)`.
pub extern "C" fn strerror(number: c_int) -> *mut c_char {
    let messages = MESSAGES.call_once(|| {
        (0..134)
            .map(|number| {
                let text = if number == 0 {
                    "Success"
                } else {
                    keel_vfs::Errno::from_raw(number).map_or("", |errno| errno.message())
                };
                let mut bytes = text.as_bytes().to_vec();
                bytes.push(0);
                bytes
            })
            .collect()
    });
    let message = usize::try_from(number)
        .ok()
        .and_then(|index| messages.get(index))
        .filter(|message| message.len() > 1)
        .map_or(UNKNOWN_ERROR, |message| message.as_slice());
    message.as_ptr().cast_mut().cast()
}

/// The fortified functions' overflow: glibc's `__chk_fail`.
fn check_failed() -> ! {
    crate::platform().abort("*** buffer overflow detected ***: terminated")
}

/// `void *__memcpy_chk(void *, const void *, size_t, size_t destination_size)`.
pub unsafe extern "C" fn memcpy_chk(
    destination: *mut c_void,
    source: *const c_void,
    count: usize,
    size: usize,
) -> *mut c_void {
    if count > size {
        check_failed();
    }
    // SAFETY: C's contract, and the count fits the destination.
    unsafe { memcpy(destination, source, count) }
}

/// `void *__memmove_chk(void *, const void *, size_t, size_t)`.
pub unsafe extern "C" fn memmove_chk(
    destination: *mut c_void,
    source: *const c_void,
    count: usize,
    size: usize,
) -> *mut c_void {
    if count > size {
        check_failed();
    }
    // SAFETY: as above.
    unsafe { memmove(destination, source, count) }
}

/// `void *__memset_chk(void *, int, size_t, size_t)`.
pub unsafe extern "C" fn memset_chk(
    destination: *mut c_void,
    byte: c_int,
    count: usize,
    size: usize,
) -> *mut c_void {
    if count > size {
        check_failed();
    }
    // SAFETY: as above.
    unsafe { memset(destination, byte, count) }
}

/// `char *__strcpy_chk(char *, const char *, size_t)`.
pub unsafe extern "C" fn strcpy_chk(
    destination: *mut c_char,
    source: *const c_char,
    size: usize,
) -> *mut c_char {
    // SAFETY: C's contract.
    if unsafe { length(source) } >= size {
        check_failed();
    }
    // SAFETY: it fits.
    unsafe { strcpy(destination, source) }
}

/// `char *__strncpy_chk(char *, const char *, size_t, size_t)`.
pub unsafe extern "C" fn strncpy_chk(
    destination: *mut c_char,
    source: *const c_char,
    count: usize,
    size: usize,
) -> *mut c_char {
    if count > size {
        check_failed();
    }
    // SAFETY: it fits.
    unsafe { strncpy(destination, source, count) }
}

/// `char *__strcat_chk(char *, const char *, size_t)`.
pub unsafe extern "C" fn strcat_chk(
    destination: *mut c_char,
    source: *const c_char,
    size: usize,
) -> *mut c_char {
    // SAFETY: C's contract.
    if unsafe { length(destination) + length(source) } >= size {
        check_failed();
    }
    // SAFETY: it fits.
    unsafe { strcat(destination, source) }
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    // memcpy@GLIBC_2.14 is the real memcpy; memcpy@GLIBC_2.2.5, from before glibc
    // let memcpy copy backwards, is memmove for the old binaries that relied on it.
    export_versioned(table, "memcpy", "GLIBC_2.14", memcpy as *const () as usize);
    export_versioned(
        table,
        "memcpy",
        crate::GLIBC_BASE_VERSION,
        memmove as *const () as usize,
    );
    // An object without symbol versions gets the real one.
    export(table, "memcpy", memcpy as *const () as usize);
    let functions: [(&str, usize); 38] = [
        ("memmove", memmove as *const () as usize),
        ("memset", memset as *const () as usize),
        ("memcmp", memcmp as *const () as usize),
        ("bcmp", memcmp as *const () as usize),
        ("memchr", memchr as *const () as usize),
        ("memrchr", memrchr as *const () as usize),
        ("rawmemchr", rawmemchr as *const () as usize),
        ("strlen", strlen as *const () as usize),
        ("strnlen", strnlen as *const () as usize),
        ("strcmp", strcmp as *const () as usize),
        ("strncmp", strncmp as *const () as usize),
        // The C locale: collation is byte order.
        ("strcoll", strcmp as *const () as usize),
        ("strcasecmp", strcasecmp as *const () as usize),
        ("strncasecmp", strncasecmp as *const () as usize),
        ("strchr", strchr as *const () as usize),
        ("index", strchr as *const () as usize),
        ("strrchr", strrchr as *const () as usize),
        ("rindex", strrchr as *const () as usize),
        ("strchrnul", strchrnul as *const () as usize),
        ("strstr", strstr as *const () as usize),
        ("strspn", strspn as *const () as usize),
        ("strcspn", strcspn as *const () as usize),
        ("strpbrk", strpbrk as *const () as usize),
        ("strcpy", strcpy as *const () as usize),
        ("stpcpy", stpcpy as *const () as usize),
        ("strncpy", strncpy as *const () as usize),
        ("strcat", strcat as *const () as usize),
        ("strncat", strncat as *const () as usize),
        ("strdup", strdup as *const () as usize),
        ("__strdup", strdup as *const () as usize),
        ("strndup", strndup as *const () as usize),
        ("strerror", strerror as *const () as usize),
        ("__memcpy_chk", memcpy_chk as *const () as usize),
        ("__memmove_chk", memmove_chk as *const () as usize),
        ("__memset_chk", memset_chk as *const () as usize),
        ("__strcpy_chk", strcpy_chk as *const () as usize),
        ("__strncpy_chk", strncpy_chk as *const () as usize),
        ("__strcat_chk", strcat_chk as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
