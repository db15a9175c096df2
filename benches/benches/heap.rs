//! `heap/*`: Keel's kernel heap beside `talc`, glibc's `malloc` and `mimalloc`, all
//! through `GlobalAlloc`, in the same run.
//!
//! - `keel`: `keel_heap::KernelHeap` with per-CPU object caches (here one per thread,
//!   `keel_heap::thread_caches!`), over a page source backed by `std::alloc` (pages are
//!   taken on demand and cached by the heap, as over the kernel's page allocator). This
//!   is the kernel's configuration.
//! - `keel-locked`: the same heap without caches: every call takes its lock.
//! - `talc`: `talc::TalcLock` with a test-and-test-and-set spin lock (the equivalent
//!   of `spin::Mutex`, written here against `talc::lock_api`) over a `Claim` of a
//!   64 MiB arena, plenty for every case.
//! - `glibc`: `std::alloc::System` (glibc's `malloc`, with its per-thread tcache).
//! - `mimalloc`: `mimalloc::MiMalloc` (per-thread heaps, the crate's bundled C sources).
//!
//! Cases: `alloc-free-64` and `alloc-free-1024` (one alloc + free of that size per
//! iteration), `alloc-free-mixed` (per iteration: free the oldest of a window of 64
//! live blocks and allocate the next size of a fixed pseudo-random sequence of sizes
//! 8..=4096; every allocator sees the same sequence), `alloc-free-64-2threads` (two
//! threads each doing `alloc-free-64` at once; the time is per pair on each thread),
//! and `batch-64-same-thread` / `batch-64-cross-thread` (a batch of 64 blocks of
//! 64 B allocated on one thread and freed on the same one, or handed to a second
//! thread that frees them while the first allocates the next batch; the time is per
//! batch, measured on the allocating thread).
//!
//! Before the timed cases it prints the footprint of the mixed window for Keel's
//! heaps (`heap/footprint`: bytes of pages held over the bytes requested by the live
//! blocks); the peers' memory is not visible from here in a comparable way.
//!
//! Run: `cargo bench -p keel-benches --bench heap` (or `cargo xtask bench heap`).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_heap::{KernelHeap, PAGE_SIZE, PageSource};
use keel_sync::NoInterruptMask;
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

const TALC_ARENA_BYTES: usize = 64 << 20;

/// A talc allocator over a leaked 64 MiB arena.
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

keel_heap::thread_caches!(ThreadCaches);

/// Keel's heap with one object cache per thread (up to 64), as the kernel has per CPU.
type CachedHeap = KernelHeap<HostPages, NoInterruptMask, ThreadCaches, 64>;

/// Two threads each run `pairs` alloc + free pairs of `layout` at once; returns the
/// wall time of the slower one.
fn two_threads_alloc_free<A: GlobalAlloc + Sync>(
    allocator: &A,
    layout: Layout,
    pairs: u64,
) -> Duration {
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let run = || {
            start.wait();
            let began = std::time::Instant::now();
            for _ in 0..pairs {
                // SAFETY: non-zero size; freed with the same layout at once.
                unsafe {
                    let block = allocator.alloc(layout);
                    assert!(!block.is_null());
                    allocator.dealloc(black_box(block), layout);
                }
            }
            began.elapsed()
        };
        let other = scope.spawn(run);
        let mine = run();
        mine.max(other.join().expect("bench thread"))
    })
}

/// Blocks per batch in the `batch-64-*` cases.
const BATCH: usize = 64;

/// `batches` batches of [`BATCH`] blocks of `layout`, each allocated and then freed
/// on this thread.
fn batches_same_thread<A: GlobalAlloc>(allocator: &A, layout: Layout, batches: u64) -> Duration {
    let mut blocks = [std::ptr::null_mut::<u8>(); BATCH];
    let began = std::time::Instant::now();
    for _ in 0..batches {
        for block in &mut blocks {
            // SAFETY: non-zero size.
            *block = unsafe { allocator.alloc(layout) };
            assert!(!block.is_null());
        }
        for &block in black_box(&blocks) {
            // SAFETY: allocated just above with `layout`.
            unsafe { allocator.dealloc(block, layout) };
        }
    }
    began.elapsed()
}

/// Batches in flight between the two threads of the cross-thread case.
const DEPTH: usize = 4;

/// A single-producer/single-consumer ring of [`DEPTH`] batches of block addresses,
/// both sides spinning (each thread has a core of its own here), so the hand-over
/// costs a few cache-line transfers, not a sleep and a wake-up.
struct BatchRing {
    slots: [[std::sync::atomic::AtomicUsize; BATCH]; DEPTH],
    /// Batches published by the producer (Release) ...
    produced: std::sync::atomic::AtomicU64,
    /// ... and taken back by the consumer (Release).
    consumed: std::sync::atomic::AtomicU64,
}

/// `batches` batches of [`BATCH`] blocks of `layout` allocated on this thread and
/// freed on a second one, through a [`BatchRing`]; returns the allocating thread's
/// time (which includes waiting for the freeing thread when the ring is full).
fn batches_cross_thread<A: GlobalAlloc + Sync>(
    allocator: &A,
    layout: Layout,
    batches: u64,
) -> Duration {
    use std::sync::atomic::{AtomicU64, AtomicUsize};
    let ring = BatchRing {
        slots: std::array::from_fn(|_| std::array::from_fn(|_| AtomicUsize::new(0))),
        produced: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
    };
    std::thread::scope(|scope| {
        let ring = &ring;
        scope.spawn(move || {
            for batch in 0..batches {
                while ring.produced.load(Ordering::Acquire) == batch {
                    std::hint::spin_loop();
                }
                for slot in &ring.slots[batch as usize % DEPTH] {
                    let block =
                        std::ptr::with_exposed_provenance_mut::<u8>(slot.load(Ordering::Relaxed));
                    // SAFETY: allocated by the other thread with `layout`, published once.
                    unsafe { allocator.dealloc(block, layout) };
                }
                ring.consumed.store(batch + 1, Ordering::Release);
            }
        });
        let began = std::time::Instant::now();
        for batch in 0..batches {
            while batch - ring.consumed.load(Ordering::Acquire) == DEPTH as u64 {
                std::hint::spin_loop();
            }
            for slot in &ring.slots[batch as usize % DEPTH] {
                // SAFETY: non-zero size.
                let block = unsafe { allocator.alloc(layout) };
                assert!(!block.is_null());
                slot.store(block.expose_provenance(), Ordering::Relaxed);
            }
            ring.produced.store(batch + 1, Ordering::Release);
        }
        began.elapsed()
    })
}

/// Runs the mixed window (the `alloc-free-mixed` pattern) for `steps` steps on a fresh
/// heap and prints the bytes held against the bytes live.
fn print_footprint<C: keel_heap::CurrentCpu, const CPUS: usize>(
    name: &str,
    sizes: &[usize],
    steps: usize,
) {
    let heap: KernelHeap<HostPages, NoInterruptMask, C, CPUS> =
        KernelHeap::with_interrupt_mask(HostPages);
    let layout = |size: usize| Layout::from_size_align(size, 8).expect("layout");
    let mut window: Vec<(*mut u8, usize)> = Vec::new();
    let (mut worst, mut sum, mut samples) = (0.0_f64, 0.0_f64, 0_u32);
    for step in 0..steps {
        if window.len() == WINDOW {
            let (block, size) = window.remove(0);
            // SAFETY: live, allocated with `layout(size)`.
            unsafe { heap.dealloc(block, layout(size)) };
        }
        let size = sizes[step % SEQUENCE];
        // SAFETY: non-zero size.
        let block = unsafe { heap.alloc(layout(size)) };
        assert!(!block.is_null());
        window.push((block, size));
        if step >= SEQUENCE {
            let stats = heap.stats();
            let ratio = (stats.pages_held * PAGE_SIZE) as f64 / stats.bytes_in_use as f64;
            worst = worst.max(ratio);
            sum += ratio;
            samples += 1;
        }
    }
    let last = heap.stats();
    eprintln!(
        "heap/footprint {name}: mixed window of {WINDOW}, pages held / bytes live: mean {:.2}x, worst {worst:.2}x over {samples} steps; at the end {} pages held ({} pool, {} cached, {} large), {} objects in CPU caches, {} in the depot, {} bytes live",
        sum / f64::from(samples),
        last.pages_held,
        last.pool_pages,
        last.cached_pages,
        last.large_pages,
        last.cpu_cached_objects,
        last.depot_objects,
        last.bytes_in_use,
    );
    for (block, size) in window {
        // SAFETY: live, allocated with `layout(size)`.
        unsafe { heap.dealloc(block, layout(size)) };
    }
}

/// Registers `case` for every allocator under `group`.
macro_rules! for_each_allocator {
    ($group:expr, $allocators:expr, |$bencher:ident, $allocator:ident| $body:expr) => {{
        let (keel, keel_locked, talc, glibc, mimalloc) = $allocators;
        $group.bench_function("keel", |$bencher| {
            let $allocator = keel;
            $body
        });
        $group.bench_function("keel-locked", |$bencher| {
            let $allocator = keel_locked;
            $body
        });
        $group.bench_function("talc", |$bencher| {
            let $allocator = talc;
            $body
        });
        $group.bench_function("glibc", |$bencher| {
            let $allocator = glibc;
            $body
        });
        $group.bench_function("mimalloc", |$bencher| {
            let $allocator = mimalloc;
            $body
        });
    }};
}

fn heap(criterion: &mut Criterion) {
    let sizes = mixed_sizes();
    print_footprint::<ThreadCaches, 64>("keel", &sizes, 4 * SEQUENCE);
    print_footprint::<keel_heap::NoCpuCaches, 0>("keel-locked", &sizes, 4 * SEQUENCE);
    let keel: CachedHeap = KernelHeap::with_interrupt_mask(HostPages);
    let keel_locked = KernelHeap::new(HostPages);
    let talc = talc_allocator();
    let glibc = std::alloc::System;
    let mimalloc = mimalloc::MiMalloc;
    let allocators = || (&keel, &keel_locked, &talc, &glibc, &mimalloc);
    for size in [64, 1024] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        let mut group = configure(criterion, &format!("heap/alloc-free-{size}"));
        for_each_allocator!(group, allocators(), |bencher, allocator| alloc_free(
            bencher, allocator, layout
        ));
        group.finish();
    }
    let mut group = configure(criterion, "heap/alloc-free-mixed");
    for_each_allocator!(group, allocators(), |bencher, allocator| alloc_free_mixed(
        bencher, allocator, &sizes
    ));
    group.finish();
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let mut group = configure(criterion, "heap/alloc-free-64-2threads");
    for_each_allocator!(group, allocators(), |bencher, allocator| bencher
        .iter_custom(|pairs| two_threads_alloc_free(allocator, layout, pairs)));
    group.finish();
    let mut group = configure(criterion, "heap/batch-64-same-thread");
    for_each_allocator!(group, allocators(), |bencher, allocator| bencher
        .iter_custom(|batches| batches_same_thread(allocator, layout, batches)));
    group.finish();
    let mut group = configure(criterion, "heap/batch-64-cross-thread");
    for_each_allocator!(group, allocators(), |bencher, allocator| bencher
        .iter_custom(|batches| batches_cross_thread(allocator, layout, batches)));
    group.finish();
}

criterion_group!(benches, heap);
criterion_main!(benches);
