//! `stdlib.h` beyond `malloc`: `qsort` and `bsearch`, the `strto*` family and
//! `ato*`, `abs`, and `rand`/`srand` (glibc's TYPE_0 linear congruential generator,
//! so a seeded sequence is glibc's).
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own (the
//! pointers C says are valid are valid, strings are NUL-terminated), so the
//! functions carry no `# Safety` section of their own.

#![allow(clippy::missing_safety_doc)]

use core::ffi::{c_char, c_int, c_long, c_void};
use core::sync::atomic::{AtomicU32, Ordering};

use keel_elf::ExportedSymbols;

use crate::exports::export;

/// `ERANGE`.
const ERANGE: c_int = 34;
/// `EINVAL`.
const EINVAL: c_int = 22;

/// A C comparison function.
type Compare = unsafe extern "C" fn(*const c_void, *const c_void) -> c_int;

/// Swaps the `size`-byte elements `a` and `b` of `base`.
///
/// # Safety
/// Both are elements of the array.
unsafe fn swap(base: *mut u8, size: usize, a: usize, b: usize) {
    if a != b {
        // SAFETY: distinct elements, so the ranges do not overlap.
        unsafe { core::ptr::swap_nonoverlapping(base.add(a * size), base.add(b * size), size) };
    }
}

/// `void qsort(void *, size_t count, size_t size, int (*)(const void *, const void *))`:
/// heapsort, in place, O(n log n) comparisons whatever the input, no allocation.
pub unsafe extern "C" fn qsort(base: *mut c_void, count: usize, size: usize, compare: Compare) {
    if count < 2 || size == 0 {
        return;
    }
    let base = base.cast::<u8>();
    let less = |a: usize, b: usize| {
        // SAFETY: the callers pass indices below `count`, which name elements; the
        // comparison function is C's, called as qsort's contract says.
        unsafe { compare(base.add(a * size).cast(), base.add(b * size).cast()) < 0 }
    };
    let sift_down = |mut root: usize, end: usize| {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                break;
            }
            if child + 1 < end && less(child, child + 1) {
                child += 1;
            }
            if !less(root, child) {
                break;
            }
            // SAFETY: both below `end <= count`.
            unsafe { swap(base, size, root, child) };
            root = child;
        }
    };
    for start in (0..count / 2).rev() {
        sift_down(start, count);
    }
    for end in (1..count).rev() {
        // SAFETY: both below `count`.
        unsafe { swap(base, size, 0, end) };
        sift_down(0, end);
    }
}

/// `void *bsearch(const void *key, const void *base, size_t, size_t, compare)`.
pub unsafe extern "C" fn bsearch(
    key: *const c_void,
    base: *const c_void,
    count: usize,
    size: usize,
    compare: Compare,
) -> *mut c_void {
    let (mut low, mut high) = (0, count);
    while low < high {
        let middle = low + (high - low) / 2;
        // SAFETY: `middle < count`.
        let element = unsafe { base.cast::<u8>().add(middle * size) };
        // SAFETY: C's contract.
        match unsafe { compare(key, element.cast()) } {
            0 => return element.cast_mut().cast(),
            order if order < 0 => high = middle,
            _ => low = middle + 1,
        }
    }
    core::ptr::null_mut()
}

/// Whether `byte` is C's `isspace` in the C locale.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Parses an integer as `strtoull` does: returns the magnitude (saturated), whether it
/// overflowed, whether it was negative, and how many bytes it used (0: none).
fn parse_integer(text: &[u8], base: c_int) -> (u64, bool, bool, usize) {
    let mut at = 0;
    while at < text.len() && is_space(text[at]) {
        at += 1;
    }
    let mut negative = false;
    if at < text.len() && (text[at] == b'+' || text[at] == b'-') {
        negative = text[at] == b'-';
        at += 1;
    }
    let mut base = base as u32;
    let hex_prefix = at + 1 < text.len()
        && text[at] == b'0'
        && (text[at + 1] | 0x20) == b'x'
        && text
            .get(at + 2)
            .is_some_and(|byte| (*byte as char).is_ascii_hexdigit());
    if (base == 0 || base == 16) && hex_prefix {
        at += 2;
        base = 16;
    } else if base == 0 {
        base = if text.get(at) == Some(&b'0') { 8 } else { 10 };
    }
    let start = at;
    let mut value: u64 = 0;
    let mut overflow = false;
    while let Some(digit) = text.get(at).and_then(|byte| (*byte as char).to_digit(base)) {
        match value
            .checked_mul(u64::from(base))
            .and_then(|value| value.checked_add(u64::from(digit)))
        {
            Some(next) => value = next,
            None => overflow = true,
        }
        at += 1;
    }
    if at == start {
        return (0, false, false, 0);
    }
    (
        if overflow { u64::MAX } else { value },
        overflow,
        negative,
        at,
    )
}

/// The bytes of the NUL-terminated `text`.
///
/// # Safety
/// `text` is NUL-terminated.
unsafe fn text<'a>(text: *const c_char) -> &'a [u8] {
    // SAFETY: per the contract.
    unsafe { crate::string::bytes(text) }
}

/// Stores `start + used` in `end` if it is not NULL.
///
/// # Safety
/// `end` is NULL or writable.
unsafe fn set_end(end: *mut *mut c_char, start: *const c_char, used: usize) {
    if !end.is_null() {
        // SAFETY: per the contract; `used` is within the string.
        unsafe { *end = start.add(used).cast_mut() };
    }
}

/// The shared body of the signed conversions, clamped to `min..=max`.
///
/// # Safety
/// As for `strtol`.
unsafe fn signed(
    start: *const c_char,
    end: *mut *mut c_char,
    base: c_int,
    min: i64,
    max: i64,
) -> i64 {
    if base != 0 && !(2..=36).contains(&base) {
        crate::set_errno(EINVAL);
        return 0;
    }
    // SAFETY: C's contract.
    let (magnitude, overflow, negative, used) = parse_integer(unsafe { text(start) }, base);
    // SAFETY: as above.
    unsafe { set_end(end, start, used) };
    let limit = if negative {
        min.unsigned_abs()
    } else {
        max as u64
    };
    if overflow || magnitude > limit {
        crate::set_errno(ERANGE);
        return if negative { min } else { max };
    }
    if negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    }
}

/// The shared body of the unsigned conversions (a minus sign negates, as C says).
///
/// # Safety
/// As for `strtoul`.
unsafe fn unsigned(start: *const c_char, end: *mut *mut c_char, base: c_int, max: u64) -> u64 {
    if base != 0 && !(2..=36).contains(&base) {
        crate::set_errno(EINVAL);
        return 0;
    }
    // SAFETY: C's contract.
    let (magnitude, overflow, negative, used) = parse_integer(unsafe { text(start) }, base);
    // SAFETY: as above.
    unsafe { set_end(end, start, used) };
    if overflow || magnitude > max {
        crate::set_errno(ERANGE);
        return max;
    }
    if negative {
        magnitude.wrapping_neg() & max
    } else {
        magnitude
    }
}

/// `long strtol(const char *, char **, int)`.
pub unsafe extern "C" fn strtol(
    start: *const c_char,
    end: *mut *mut c_char,
    base: c_int,
) -> c_long {
    // SAFETY: C's contract.
    unsafe { signed(start, end, base, i64::MIN, i64::MAX) }
}

/// `unsigned long strtoul(const char *, char **, int)`.
pub unsafe extern "C" fn strtoul(start: *const c_char, end: *mut *mut c_char, base: c_int) -> u64 {
    // SAFETY: C's contract.
    unsafe { unsigned(start, end, base, u64::MAX) }
}

/// `int atoi(const char *)`.
pub unsafe extern "C" fn atoi(start: *const c_char) -> c_int {
    // SAFETY: C's contract.
    unsafe { signed(start, core::ptr::null_mut(), 10, i64::MIN, i64::MAX) as c_int }
}

/// `long atol(const char *)`.
pub unsafe extern "C" fn atol(start: *const c_char) -> c_long {
    // SAFETY: C's contract.
    unsafe { signed(start, core::ptr::null_mut(), 10, i64::MIN, i64::MAX) }
}

/// The longest prefix of `text` (after spaces) that is a C floating constant, and its
/// value: decimal through core's correctly rounded parser, hexadecimal (`0x1.8p3`)
/// exactly up to 16 significant hex digits, `inf`/`infinity`/`nan`/`nan(...)`.
fn parse_float(text: &[u8]) -> Option<(f64, usize)> {
    let mut at = 0;
    while at < text.len() && is_space(text[at]) {
        at += 1;
    }
    let sign_at = at;
    let negative = text.get(at) == Some(&b'-');
    if matches!(text.get(at), Some(b'+' | b'-')) {
        at += 1;
    }
    let rest = &text[at..];
    let lower = |length: usize| -> alloc::vec::Vec<u8> {
        rest.iter()
            .take(length)
            .map(u8::to_ascii_lowercase)
            .collect()
    };
    let signed = |value: f64| if negative { -value } else { value };
    if lower(8) == b"infinity" {
        return Some((signed(f64::INFINITY), at + 8));
    }
    if lower(3) == b"inf" {
        return Some((signed(f64::INFINITY), at + 3));
    }
    if lower(3) == b"nan" {
        let mut used = at + 3;
        if text.get(used) == Some(&b'(')
            && let Some(close) = text[used..].iter().position(|&byte| byte == b')')
            && text[used + 1..used + close]
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'_')
        {
            used += close + 1;
        }
        return Some((signed(f64::NAN), used));
    }
    if rest.len() > 2
        && rest[0] == b'0'
        && (rest[1] | 0x20) == b'x'
        && let Some((value, used)) = parse_hex_float(&rest[2..])
    {
        return Some((signed(value), at + 2 + used));
    }
    // Decimal: digits, an optional point and digits (at least one digit in all), an
    // optional exponent with at least one digit.
    let mut end = at;
    let digits = |from: usize| {
        text[from..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count()
    };
    let whole = digits(end);
    end += whole;
    let mut fraction = 0;
    if text.get(end) == Some(&b'.') {
        fraction = digits(end + 1);
        if whole + fraction > 0 {
            end += 1 + fraction;
        }
    }
    if whole + fraction == 0 {
        return None;
    }
    if matches!(text.get(end), Some(b'e' | b'E')) {
        let mut exponent = end + 1;
        if matches!(text.get(exponent), Some(b'+' | b'-')) {
            exponent += 1;
        }
        let count = digits(exponent);
        if count > 0 {
            end = exponent + count;
        }
    }
    let literal = core::str::from_utf8(&text[sign_at..end]).ok()?;
    // Rust's parser takes a leading '+' and '-' and exactly this grammar (a trailing
    // or leading point included).
    literal.parse::<f64>().ok().map(|value| (value, end))
}

/// A hexadecimal float after its `0x`: the value and the bytes used.
fn parse_hex_float(text: &[u8]) -> Option<(f64, usize)> {
    let mut at = 0;
    let mut mantissa: u64 = 0;
    let mut exponent: i64 = 0;
    let mut digits = 0;
    let mut sticky = false;
    let mut seen_point = false;
    while let Some(&byte) = text.get(at) {
        if byte == b'.' && !seen_point {
            seen_point = true;
            at += 1;
            continue;
        }
        let Some(digit) = (byte as char).to_digit(16) else {
            break;
        };
        digits += 1;
        if mantissa >> 60 == 0 {
            mantissa = (mantissa << 4) | u64::from(digit);
            if seen_point {
                exponent -= 4;
            }
        } else {
            sticky |= digit != 0;
            if !seen_point {
                exponent += 4;
            }
        }
        at += 1;
    }
    if digits == 0 {
        return None;
    }
    if matches!(text.get(at), Some(b'p' | b'P')) {
        let mut position = at + 1;
        let negative = text.get(position) == Some(&b'-');
        if matches!(text.get(position), Some(b'+' | b'-')) {
            position += 1;
        }
        let start = position;
        let mut power: i64 = 0;
        while let Some(digit) = text
            .get(position)
            .and_then(|byte| (*byte as char).to_digit(10))
        {
            power = (power * 10 + i64::from(digit)).min(100_000);
            position += 1;
        }
        if position > start {
            exponent += if negative { -power } else { power };
            at = position;
        }
    }
    // A lost non-zero digit only matters for rounding: fold it into the last bit.
    let mantissa = mantissa | u64::from(sticky);
    let value = libm::ldexp(mantissa as f64, exponent.clamp(-5000, 5000) as i32);
    Some((value, at))
}

/// `double strtod(const char *, char **)`: `ERANGE` on overflow to infinity or
/// underflow (to zero or to a subnormal).
pub unsafe extern "C" fn strtod(start: *const c_char, end: *mut *mut c_char) -> f64 {
    // SAFETY: C's contract.
    let bytes = unsafe { text(start) };
    match parse_float(bytes) {
        Some((value, used)) => {
            // SAFETY: as above.
            unsafe { set_end(end, start, used) };
            // Whether the literal's significand (before its exponent) is all zeros.
            let literal = &bytes[..used];
            let hex = literal.iter().position(|byte| (*byte | 0x20) == b'x');
            let (digits, marker) = match hex {
                Some(x) => (&literal[x + 1..], b'p'),
                None => (literal, b'e'),
            };
            let significand = digits
                .iter()
                .position(|byte| (*byte | 0x20) == marker)
                .map_or(digits, |at| &digits[..at]);
            let literal_is_zero = significand
                .iter()
                .all(|byte| !byte.is_ascii_hexdigit() || *byte == b'0');
            let overflowed =
                value.is_infinite() && !bytes[..used].iter().any(|byte| (*byte | 0x20) == b'i');
            // glibc reports underflow for a result that is zero from a non-zero
            // literal or subnormal (it checks that a subnormal is inexact; Keel
            // does not, so an exactly representable subnormal hex literal differs).
            let underflowed = (value == 0.0 && !literal_is_zero)
                || (value != 0.0 && value.abs() < f64::MIN_POSITIVE);
            if overflowed || underflowed {
                crate::set_errno(ERANGE);
            }
            value
        }
        None => {
            // SAFETY: as above.
            unsafe { set_end(end, start, 0) };
            0.0
        }
    }
}

/// `float strtof(const char *, char **)`.
pub unsafe extern "C" fn strtof(start: *const c_char, end: *mut *mut c_char) -> f32 {
    // SAFETY: C's contract.
    unsafe { strtod(start, end) as f32 }
}

/// `double atof(const char *)`.
pub unsafe extern "C" fn atof(start: *const c_char) -> f64 {
    // SAFETY: C's contract.
    unsafe { strtod(start, core::ptr::null_mut()) }
}

/// `int abs(int)`.
pub extern "C" fn abs(value: c_int) -> c_int {
    value.wrapping_abs()
}

/// `long labs(long)`.
pub extern "C" fn labs(value: c_long) -> c_long {
    value.wrapping_abs()
}

/// The state of `rand`.
static SEED: AtomicU32 = AtomicU32::new(1);

/// `int rand(void)`: the TYPE_0 generator glibc uses after `initstate` with 8 bytes
/// of state (`next = next * 1103515245 + 12345`, 31 bits). glibc's default `rand` is
/// its additive TYPE_3 generator, so sequences differ from glibc's default; C fixes
/// neither.
pub extern "C" fn rand() -> c_int {
    let mut next = 0;
    let _ = SEED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |seed| {
        next = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        Some(next)
    });
    next as c_int
}

/// `void srand(unsigned)`.
pub extern "C" fn srand(seed: u32) {
    SEED.store(seed, Ordering::Relaxed);
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 23] = [
        ("qsort", qsort as *const () as usize),
        ("bsearch", bsearch as *const () as usize),
        ("strtol", strtol as *const () as usize),
        ("strtoll", strtol as *const () as usize),
        ("__isoc23_strtol", strtol as *const () as usize),
        ("__isoc23_strtoll", strtol as *const () as usize),
        ("strtoul", strtoul as *const () as usize),
        ("strtoull", strtoul as *const () as usize),
        ("__isoc23_strtoul", strtoul as *const () as usize),
        ("__isoc23_strtoull", strtoul as *const () as usize),
        ("strtoimax", strtol as *const () as usize),
        ("strtoumax", strtoul as *const () as usize),
        ("atoi", atoi as *const () as usize),
        ("atol", atol as *const () as usize),
        ("atoll", atol as *const () as usize),
        ("strtod", strtod as *const () as usize),
        ("strtof", strtof as *const () as usize),
        ("atof", atof as *const () as usize),
        ("abs", abs as *const () as usize),
        ("labs", labs as *const () as usize),
        ("llabs", labs as *const () as usize),
        ("rand", rand as *const () as usize),
        ("srand", srand as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
