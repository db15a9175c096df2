//! `heap/*`: Keel's kernel heap (`keel`) beside `talc` (`talc`), both through
//! `GlobalAlloc`, so both pay for their lock.
//!
//! - `keel`: `keel_heap::KernelHeap` over a page source backed by `std::alloc`
//!   (pages are taken on demand and cached by the heap, as over the kernel's page
//!   allocator).
//! - `talc`: `talc::TalcLock` with a test-and-test-and-set spin lock (the equivalent
//!   of `spin::Mutex`, written here against `talc::lock_api`) over a `Claim` of a
//!   16 MiB arena, plenty for every case.
//!
//! Cases: `alloc-free-64` and `alloc-free-1024` (one alloc + free of that size per
//! iteration), `alloc-free-mixed` (per iteration: free the oldest of a window of 64
//! live blocks and allocate the next size of a fixed pseudo-random sequence of sizes
//! 8..=4096; both allocators see the same sequence).
//!
//! Run: `cargo bench -p keel-benches --bench heap` (or `cargo xtask bench heap`).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_heap::{KernelHeap, PAGE_SIZE, PageSource};
use talc::TalcLock;
use talc::lock_api::{GuardSend, RawMutex};
use talc::source::Claim;

/// Pages from `std::alloc`, page-aligned.
struct HostPages;

fn page_layout(count: usize) -> Layout {
    Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).expect("page layout")
}

// SAFETY: `std::alloc::alloc` returns fresh memory of the requested (page-aligned)
// layout, usable from any thread.
unsafe impl PageSource for HostPages {
    fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>> {
        // SAFETY: the layout has a non-zero size (`count >= 1`).
        NonNull::new(unsafe { std::alloc::alloc(page_layout(count)) })
    }

    unsafe fn free_pages(&self, start: NonNull<u8>, count: usize) {
        // SAFETY: allocated by `alloc_pages` with this layout (the caller's contract).
        unsafe { std::alloc::dealloc(start.as_ptr(), page_layout(count)) }
    }
}

/// A test-and-test-and-set spin lock for talc (what `spin::Mutex` does).
struct RawSpin(AtomicBool);

// SAFETY: `lock`/`try_lock` succeed only by swapping `false` to `true` (Acquire), and
// `unlock` stores `false` (Release), so one holder at a time, properly ordered.
unsafe impl RawMutex for RawSpin {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self(AtomicBool::new(false));
    type GuardMarker = GuardSend;

    fn lock(&self) {
        while self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.0.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
    }

    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

const TALC_ARENA_BYTES: usize = 16 << 20;

/// A talc allocator over a leaked 16 MiB arena.
fn talc_allocator() -> TalcLock<RawSpin, Claim> {
    let arena = Layout::from_size_align(TALC_ARENA_BYTES, PAGE_SIZE).expect("arena layout");
    // SAFETY: non-zero size.
    let base = unsafe { std::alloc::alloc(arena) };
    assert!(!base.is_null());
    // SAFETY: `base` is a fresh, writable region of `TALC_ARENA_BYTES` bytes that is
    // leaked (never freed or used elsewhere), as `Claim` requires.
    TalcLock::new(unsafe { Claim::new(base, TALC_ARENA_BYTES) })
}

/// Live blocks in the `alloc-free-mixed` window.
const WINDOW: usize = 64;
/// Length of the fixed size sequence of `alloc-free-mixed`.
const SEQUENCE: usize = 4096;

/// The fixed pseudo-random sizes (8..=4096) of `alloc-free-mixed` (xorshift32).
fn mixed_sizes() -> Vec<usize> {
    let mut state = 0x2545_f491_u32;
    (0..SEQUENCE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            8 + (state as usize % (4096 - 8 + 1))
        })
        .collect()
}

/// One alloc + free of `layout` per iteration.
fn alloc_free<A: GlobalAlloc>(bencher: &mut criterion::Bencher<'_>, allocator: &A, layout: Layout) {
    bencher.iter(|| {
        // SAFETY: `layout` has a non-zero size; the block is freed with it at once.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            allocator.dealloc(black_box(block), layout);
        }
    });
}

/// Per iteration: free the oldest block of the window, allocate the next size.
fn alloc_free_mixed<A: GlobalAlloc>(
    bencher: &mut criterion::Bencher<'_>,
    allocator: &A,
    sizes: &[usize],
) {
    let layout = |size: usize| Layout::from_size_align(size, 8).expect("layout");
    let allocate = |size: usize| {
        // SAFETY: sizes are at least 8 bytes.
        let block = unsafe { allocator.alloc(layout(size)) };
        assert!(!block.is_null());
        (block, size)
    };
    let mut window: Vec<(*mut u8, usize)> =
        sizes[..WINDOW].iter().map(|&size| allocate(size)).collect();
    let mut oldest = 0;
    let mut cursor = WINDOW;
    bencher.iter(|| {
        let (block, size) = window[oldest];
        // SAFETY: `block` is live, allocated with `layout(size)`.
        unsafe { allocator.dealloc(block, layout(size)) };
        window[oldest] = allocate(black_box(sizes[cursor % SEQUENCE]));
        oldest = (oldest + 1) % WINDOW;
        cursor += 1;
    });
    for (block, size) in window {
        // SAFETY: `block` is live, allocated with `layout(size)`.
        unsafe { allocator.dealloc(block, layout(size)) };
    }
}

fn configure<'a>(
    criterion: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = criterion.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    group
}

fn heap(criterion: &mut Criterion) {
    let keel = KernelHeap::new(HostPages);
    let talc = talc_allocator();
    for size in [64, 1024] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        let mut group = configure(criterion, &format!("heap/alloc-free-{size}"));
        group.bench_function("keel", |bencher| alloc_free(bencher, &keel, layout));
        group.bench_function("talc", |bencher| alloc_free(bencher, &talc, layout));
        group.finish();
    }
    let sizes = mixed_sizes();
    let mut group = configure(criterion, "heap/alloc-free-mixed");
    group.bench_function("keel", |bencher| alloc_free_mixed(bencher, &keel, &sizes));
    group.bench_function("talc", |bencher| alloc_free_mixed(bencher, &talc, &sizes));
    group.finish();
}

criterion_group!(benches, heap);
criterion_main!(benches);
