//! `mem/*`: Keel's memory functions (`keel`, from `keel-mem`) beside glibc's (`glibc`,
//! called through the `libc` crate), in the same run.
//!
//! Both sides are called the way the kernel calls them: through an out-of-line
//! `extern "C"` function (here a `#[inline(never)]` wrapper around `keel-mem`, as
//! `kernel-bin/src/mem.rs` defines `memcpy`; glibc's through its PLT entry, which
//! picks the CPU's best variant, AVX2/AVX-512 and ERMSB aware, when the program loads).
//!
//! Cases: `memcpy-N` and `memset-N` for N = 64 B, 256 B, 1 KiB, 4 KiB, 16 KiB, 64 KiB:
//! one call per iteration, on 4 KiB-aligned buffers that stay in the cache (64 KiB fits
//! the L2 of the machines here), the same destination every time.
//!
//! Run: `cargo bench -p keel-benches --bench mem` (or `cargo xtask bench mem`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

const SIZES: [usize; 6] = [64, 256, 1024, 4096, 16 * 1024, 64 * 1024];
const BUFFER_BYTES: usize = 64 * 1024;

/// A zeroed, 4 KiB-aligned buffer of `BUFFER_BYTES`, freed on drop.
struct Buffer(*mut u8);

impl Buffer {
    fn layout() -> Layout {
        Layout::from_size_align(BUFFER_BYTES, 4096).expect("buffer layout")
    }

    fn new(seed: u8) -> Self {
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc_zeroed(Self::layout()) };
        assert!(!pointer.is_null());
        for index in 0..BUFFER_BYTES {
            // SAFETY: `index < BUFFER_BYTES`, inside the fresh allocation.
            unsafe { pointer.add(index).write((index as u8).wrapping_add(seed)) };
        }
        Self(pointer)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.0, Self::layout()) }
    }
}

/// Keel's `memcpy`, out of line like the kernel's symbol.
///
/// # Safety
/// As `keel_mem::copy_nonoverlapping`.
#[inline(never)]
unsafe extern "C" fn keel_memcpy(destination: *mut u8, source: *const u8, count: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { keel_mem::copy_nonoverlapping(destination, source, count) };
    destination
}

/// Keel's `memset`, out of line like the kernel's symbol.
///
/// # Safety
/// As `keel_mem::fill`.
#[inline(never)]
unsafe extern "C" fn keel_memset(destination: *mut u8, value: i32, count: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { keel_mem::fill(destination, value as u8, count) };
    destination
}

type Memcpy = unsafe extern "C" fn(*mut u8, *const u8, usize) -> *mut u8;
type Memset = unsafe extern "C" fn(*mut u8, i32, usize) -> *mut u8;

/// glibc's `memcpy` with byte pointers.
unsafe extern "C" fn glibc_memcpy(
    destination: *mut u8,
    source: *const u8,
    count: usize,
) -> *mut u8 {
    // SAFETY: the caller's contract is memcpy's.
    unsafe { libc::memcpy(destination.cast(), source.cast(), count).cast() }
}

/// glibc's `memset` with byte pointers.
unsafe extern "C" fn glibc_memset(destination: *mut u8, value: i32, count: usize) -> *mut u8 {
    // SAFETY: the caller's contract is memset's.
    unsafe { libc::memset(destination.cast(), value, count).cast() }
}

fn configure<'a>(
    criterion: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = criterion.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(50);
    group
}

fn bench_copy(
    bencher: &mut criterion::Bencher<'_>,
    function: Memcpy,
    buffers: (&Buffer, &Buffer),
    count: usize,
) {
    let (destination, source) = buffers;
    bencher.iter(|| {
        // SAFETY: both buffers hold BUFFER_BYTES >= count bytes and are distinct.
        black_box(unsafe {
            function(
                black_box(destination.0),
                black_box(source.0),
                black_box(count),
            )
        })
    });
}

fn bench_fill(
    bencher: &mut criterion::Bencher<'_>,
    function: Memset,
    destination: &Buffer,
    count: usize,
) {
    bencher.iter(|| {
        // SAFETY: the buffer holds BUFFER_BYTES >= count bytes.
        black_box(unsafe { function(black_box(destination.0), black_box(0x5a), black_box(count)) })
    });
}

fn mem(criterion: &mut Criterion) {
    let source = Buffer::new(1);
    let destination = Buffer::new(2);
    // Wrapped for the closures: the raw pointers are only used on this thread.
    let (keel_copy, glibc_copy): (Memcpy, Memcpy) = (keel_memcpy, glibc_memcpy);
    let (keel_fill, glibc_fill): (Memset, Memset) = (keel_memset, glibc_memset);
    for count in SIZES {
        let mut group = configure(criterion, &format!("mem/memcpy-{count}"));
        group.bench_function("keel", |bencher| {
            bench_copy(bencher, keel_copy, (&destination, &source), count)
        });
        group.bench_function("glibc", |bencher| {
            bench_copy(bencher, glibc_copy, (&destination, &source), count)
        });
        group.finish();
    }
    for count in SIZES {
        let mut group = configure(criterion, &format!("mem/memset-{count}"));
        group.bench_function("keel", |bencher| {
            bench_fill(bencher, keel_fill, &destination, count)
        });
        group.bench_function("glibc", |bencher| {
            bench_fill(bencher, glibc_fill, &destination, count)
        });
        group.finish();
    }
    // Both copies are byte-exact, checked once outside the timing.
    // SAFETY: as in the benches; then a plain comparison of the two buffers.
    unsafe {
        keel_memcpy(destination.0, source.0, BUFFER_BYTES);
        assert_eq!(
            libc::memcmp(destination.0.cast(), source.0.cast(), BUFFER_BYTES),
            0
        );
    }
}

criterion_group!(benches, mem);
criterion_main!(benches);
