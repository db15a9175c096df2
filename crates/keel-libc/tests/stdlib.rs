//! keel-libc's string, stdlib, malloc and time functions against glibc's, called
//! directly on the same inputs: same results, same errno, same end pointers.

mod common;

use std::ffi::{CString, c_char, c_void};

use keel_libc::{malloc, stdlib, string, time};
use proptest::prelude::*;

/// Strings for the number parsers: spaces, signs, prefixes, digits of all bases,
/// points, exponents, words, garbage.
fn number_text() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        " ",
        "\t",
        "+",
        "-",
        "0",
        "0x",
        "0X",
        "1",
        "7",
        "9",
        "12345678901234567890",
        "a",
        "f",
        "z",
        ".",
        "e",
        "E",
        "p",
        "P",
        "-3",
        "+8",
        "inf",
        "INFINITY",
        "nan",
        "nan(123)",
        "x",
        "99999999999999999999999",
        "1e308",
        "1e-320",
        "4.9e-324",
        "0.1",
        "2.5",
        "1e400",
    ]);
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn strtol_and_strtoul_agree_with_glibc(text in number_text(), base in prop::sample::select(vec![0, 2, 8, 10, 16, 36, 1, 37])) {
        common::files();
        let c = CString::new(text.clone()).unwrap();
        let mut ours_end: *mut c_char = std::ptr::null_mut();
        let mut theirs_end: *mut c_char = std::ptr::null_mut();
        common::set_errno(0);
        // SAFETY: a NUL-terminated string and a writable end pointer.
        let ours = unsafe { stdlib::strtol(c.as_ptr(), &mut ours_end, base) };
        let ours_errno = common::errno();
        // SAFETY: as above, glibc's.
        let (theirs, theirs_errno) = unsafe {
            *libc::__errno_location() = 0;
            let value = libc::strtol(c.as_ptr(), &mut theirs_end, base);
            (value, *libc::__errno_location())
        };
        prop_assert_eq!(ours, theirs, "strtol({:?}, {})", text, base);
        prop_assert_eq!(ours_errno, theirs_errno, "strtol errno {:?} {}", text, base);
        if (2..=36).contains(&base) || base == 0 {
            prop_assert_eq!(ours_end, theirs_end, "strtol end {:?} {}", text, base);
        }
        common::set_errno(0);
        // SAFETY: as above.
        let ours = unsafe { stdlib::strtoul(c.as_ptr(), &mut ours_end, base) };
        let ours_errno = common::errno();
        // SAFETY: as above.
        let (theirs, theirs_errno) = unsafe {
            *libc::__errno_location() = 0;
            let value = libc::strtoul(c.as_ptr(), &mut theirs_end, base);
            (value, *libc::__errno_location())
        };
        prop_assert_eq!(ours, theirs, "strtoul({:?}, {})", text, base);
        prop_assert_eq!(ours_errno, theirs_errno, "strtoul errno {:?} {}", text, base);
    }

    #[test]
    fn strtod_agrees_with_glibc(text in number_text()) {
        common::files();
        let c = CString::new(text.clone()).unwrap();
        let mut ours_end: *mut c_char = std::ptr::null_mut();
        let mut theirs_end: *mut c_char = std::ptr::null_mut();
        common::set_errno(0);
        // SAFETY: as above.
        let ours = unsafe { stdlib::strtod(c.as_ptr(), &mut ours_end) };
        let ours_errno = common::errno();
        // SAFETY: as above.
        let (theirs, theirs_errno) = unsafe {
            *libc::__errno_location() = 0;
            let value = libc::strtod(c.as_ptr(), &mut theirs_end);
            (value, *libc::__errno_location())
        };
        prop_assert!(ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
            "strtod({:?}): {} vs {}", text, ours, theirs);
        prop_assert_eq!(ours_end, theirs_end, "strtod end {:?}", text);
        prop_assert_eq!(ours_errno, theirs_errno, "strtod errno {:?}", text);
    }

    #[test]
    fn hex_floats_round_trip(bits in any::<u64>()) {
        let value = f64::from_bits(bits);
        prop_assume!(value.is_finite());
        let text = CString::new(hexf(value)).unwrap();
        // SAFETY: as above.
        let ours = unsafe { stdlib::strtod(text.as_ptr(), std::ptr::null_mut()) };
        // SAFETY: as above.
        let theirs = unsafe { libc::strtod(text.as_ptr(), std::ptr::null_mut()) };
        prop_assert_eq!(ours.to_bits(), theirs.to_bits(), "{:?}", text);
    }

    #[test]
    fn string_functions_agree_with_glibc(a in "[a-c]{0,12}", b in "[a-c]{0,12}", n in 0usize..16, byte in prop::sample::select(vec![b'a', b'b', b'c', b'z', 0])) {
        common::files();
        let (ca, cb) = (CString::new(a.clone()).unwrap(), CString::new(b.clone()).unwrap());
        // SAFETY: NUL-terminated strings; comparisons by sign only (C fixes the sign).
        unsafe {
            prop_assert_eq!(string::strcmp(ca.as_ptr(), cb.as_ptr()).signum(), libc::strcmp(ca.as_ptr(), cb.as_ptr()).signum());
            prop_assert_eq!(string::strncmp(ca.as_ptr(), cb.as_ptr(), n).signum(), libc::strncmp(ca.as_ptr(), cb.as_ptr(), n).signum());
            prop_assert_eq!(string::strcasecmp(ca.as_ptr(), cb.as_ptr()).signum(), libc::strcasecmp(ca.as_ptr(), cb.as_ptr()).signum());
            prop_assert_eq!(string::strlen(ca.as_ptr()), ca.count_bytes());
            prop_assert_eq!(string::strnlen(ca.as_ptr(), n), libc::strnlen(ca.as_ptr(), n));
            prop_assert_eq!(string::strchr(ca.as_ptr(), byte.into()), libc::strchr(ca.as_ptr(), byte.into()));
            prop_assert_eq!(string::strrchr(ca.as_ptr(), byte.into()), libc::strrchr(ca.as_ptr(), byte.into()));
            prop_assert_eq!(string::strstr(ca.as_ptr(), cb.as_ptr()), libc::strstr(ca.as_ptr(), cb.as_ptr()));
            prop_assert_eq!(string::strspn(ca.as_ptr(), cb.as_ptr()), libc::strspn(ca.as_ptr(), cb.as_ptr()));
            prop_assert_eq!(string::strcspn(ca.as_ptr(), cb.as_ptr()), libc::strcspn(ca.as_ptr(), cb.as_ptr()));
            prop_assert_eq!(string::strpbrk(ca.as_ptr(), cb.as_ptr()), libc::strpbrk(ca.as_ptr(), cb.as_ptr()));
            let length = a.len();
            prop_assert_eq!(
                string::memchr(ca.as_ptr().cast(), byte.into(), length.min(n)),
                libc::memchr(ca.as_ptr().cast(), byte.into(), length.min(n))
            );
            let mut ours = [1 as c_char; 40];
            let mut theirs = [1 as c_char; 40];
            string::strncpy(ours.as_mut_ptr(), ca.as_ptr(), n);
            libc::strncpy(theirs.as_mut_ptr(), ca.as_ptr(), n);
            prop_assert_eq!(ours, theirs);
            string::strcpy(ours.as_mut_ptr(), ca.as_ptr());
            libc::strcpy(theirs.as_mut_ptr(), ca.as_ptr());
            string::strncat(ours.as_mut_ptr(), cb.as_ptr(), n);
            libc::strncat(theirs.as_mut_ptr(), cb.as_ptr(), n);
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn qsort_sorts_as_glibc(values in prop::collection::vec(any::<i32>(), 0..200)) {
        unsafe extern "C" fn compare(a: *const c_void, b: *const c_void) -> i32 {
            // SAFETY: qsort passes two elements of the i32 array.
            let (a, b) = unsafe { (*a.cast::<i32>(), *b.cast::<i32>()) };
            a.cmp(&b) as i32
        }
        let mut ours = values.clone();
        // SAFETY: the array, its count and element size, and a matching comparison.
        unsafe { stdlib::qsort(ours.as_mut_ptr().cast(), ours.len(), 4, compare) };
        let mut expected = values;
        expected.sort();
        prop_assert_eq!(&ours, &expected);
        if let Some(key) = expected.get(expected.len() / 2) {
            // SAFETY: as above, sorted.
            let found = unsafe { stdlib::bsearch((key as *const i32).cast(), ours.as_ptr().cast(), ours.len(), 4, compare) };
            prop_assert!(!found.is_null());
            // SAFETY: bsearch returned an element.
            prop_assert_eq!(unsafe { *found.cast::<i32>() }, *key);
        }
    }

    #[test]
    fn gmtime_agrees_with_glibc(seconds in -70_000_000_000i64..70_000_000_000i64) {
        let mut ours = time::Tm::default();
        // SAFETY: valid pointers.
        unsafe { time::gmtime_r(&seconds, &mut ours) };
        // SAFETY: an all-zero tm is valid; glibc writes it.
        let mut theirs: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers.
        unsafe { libc::gmtime_r(&seconds, &mut theirs) };
        prop_assert_eq!(
            (ours.sec, ours.min, ours.hour, ours.mday, ours.mon, ours.year, ours.wday, ours.yday),
            (theirs.tm_sec, theirs.tm_min, theirs.tm_hour, theirs.tm_mday, theirs.tm_mon, theirs.tm_year, theirs.tm_wday, theirs.tm_yday),
            "{}", seconds
        );
    }

    #[test]
    fn malloc_keeps_alignment_and_contents(sizes in prop::collection::vec(0usize..5000, 1..20), alignment_log in 3u32..13) {
        common::files();
        let mut blocks = Vec::new();
        for (index, &size) in sizes.iter().enumerate() {
            let block = malloc::malloc(size).cast::<u8>();
            prop_assert!(!block.is_null());
            prop_assert_eq!(block as usize % 16, 0);
            // SAFETY: `size` bytes are ours.
            unsafe { std::ptr::write_bytes(block, index as u8, size) };
            blocks.push((block, size, index as u8));
        }
        for (block, size, fill) in &mut blocks {
            let grown = *size * 2 + 1;
            // SAFETY: a live block of ours.
            let moved = unsafe { malloc::realloc(block.cast(), grown) }.cast::<u8>();
            prop_assert!(!moved.is_null());
            // SAFETY: the first `size` bytes were kept.
            let kept = unsafe { std::slice::from_raw_parts(moved, *size) }.iter().all(|b| b == fill);
            prop_assert!(kept, "realloc kept the contents");
            // SAFETY: a live block.
            let usable = unsafe { malloc::malloc_usable_size(moved.cast()) };
            prop_assert!(usable >= grown, "usable size");
            *block = moved;
            *size = grown;
        }
        let alignment = 1usize << alignment_log;
        let mut aligned: *mut c_void = std::ptr::null_mut();
        // SAFETY: a writable out pointer.
        prop_assert_eq!(unsafe { malloc::posix_memalign(&mut aligned, alignment, 100) }, 0);
        prop_assert_eq!(aligned as usize % alignment, 0);
        // SAFETY: live blocks, each freed once.
        unsafe {
            let bigger = malloc::realloc(aligned, 10_000);
            prop_assert_eq!(bigger as usize % alignment, 0, "realloc keeps the alignment");
            malloc::free(bigger);
            for (block, _, _) in blocks {
                malloc::free(block.cast());
            }
            malloc::free(std::ptr::null_mut());
        }
    }
}

/// `value` in C's `%a` form (glibc's printf as the reference).
fn hexf(value: f64) -> String {
    let mut buffer = [0u8; 64];
    // SAFETY: a 64-byte buffer and a format with one double.
    let count = unsafe { libc::snprintf(buffer.as_mut_ptr().cast(), 64, c"%a".as_ptr(), value) };
    String::from_utf8_lossy(&buffer[..count as usize]).into_owned()
}

#[test]
fn calloc_overflow_and_bad_alignments_are_errors() {
    common::files();
    common::set_errno(0);
    assert!(malloc::calloc(usize::MAX / 2, 3).is_null());
    assert_eq!(common::errno(), 12);
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: a writable out pointer.
    assert_eq!(unsafe { malloc::posix_memalign(&mut out, 24, 8) }, 22);
    assert!(malloc::aligned_alloc(3, 8).is_null());
}

#[test]
fn strerror_gives_linux_messages() {
    common::files();
    for number in [0, 1, 2, 13, 22, 38, 40, 75, 95, 5000, -1] {
        // SAFETY: both return NUL-terminated static strings.
        let (ours, theirs) = unsafe {
            (
                std::ffi::CStr::from_ptr(string::strerror(number)).to_owned(),
                std::ffi::CStr::from_ptr(libc::strerror(number)).to_owned(),
            )
        };
        if (0..134).contains(&number) && ours.to_bytes() != b"Unknown error" {
            assert_eq!(ours, theirs, "strerror({number})");
        } else {
            assert!(
                theirs.to_bytes().starts_with(b"Unknown error"),
                "{theirs:?}"
            );
            assert_eq!(ours.to_bytes(), b"Unknown error");
        }
    }
}

#[test]
fn the_clocks_and_sleep_work() {
    common::files();
    let mut before = time::Timespec::default();
    let mut after = time::Timespec::default();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(time::clock_gettime(1, &mut before), 0);
        let request = time::Timespec {
            sec: 0,
            nsec: 2_000_000,
        };
        assert_eq!(time::nanosleep(&request, std::ptr::null_mut()), 0);
        assert_eq!(time::clock_gettime(1, &mut after), 0);
        let bad = time::Timespec {
            sec: 0,
            nsec: 2_000_000_000,
        };
        assert_eq!(time::nanosleep(&bad, std::ptr::null_mut()), -1);
        assert_eq!(common::errno(), 22);
        assert_eq!(time::clock_gettime(99, &mut after), -1);
    }
    let elapsed = (after.sec - before.sec) * 1_000_000_000 + (after.nsec - before.nsec);
    assert!(
        elapsed >= 2_000_000,
        "the monotonic clock moved by the sleep ({elapsed} ns)"
    );
    // SAFETY: a NULL out pointer is allowed.
    let now = unsafe { time::time(std::ptr::null_mut()) };
    // SAFETY: as above.
    let host = unsafe { libc::time(std::ptr::null_mut()) };
    assert!((now - host).abs() <= 1);
}
