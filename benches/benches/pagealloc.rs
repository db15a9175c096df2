//! Keel's page allocator beside `buddy_system_allocator::FrameAllocator`, in the same
//! run, over the same 1 GiB (262 144 pages) with the same fragmenting prefill.
//!
//! Groups are `pagealloc/<case>`; inside each, `keel` is ours and
//! `buddy_system_allocator` the peer.
//!
//! - `pagealloc/single-page`: allocate and free one page. Ours goes through a
//!   `PerCpuPageCache` over the `BuddyAllocator` (the kernel's single-page path); the
//!   peer has no cache, so it is `alloc(1)` + `dealloc`.
//! - `pagealloc/single-page-burst-64`: allocate 64 single pages, then free them. With
//!   ours the burst exactly fits the 64-page cache, so after the first iteration it
//!   neither refills nor drains: it measures 128 cache operations (papers/0002).
//! - `pagealloc/run-2^k`, k in {0, 4, 9}: allocate and free one block of `2^k` pages
//!   straight from the buddy allocators (`alloc(k)` / `alloc(1 << k)`). `run-2^0` is
//!   the like-for-like single page: buddy against buddy, no cache on either side.
//!
//! Like for like (what the headline `single-page` ratio is not):
//! - `pagealloc/single-page-both-cached`: both buddy allocators behind the same
//!   `PerCpuPageCache<64>` (the peer through a `PageSource` adapter): what is left is
//!   the cache, the same on both sides.
//! - `pagealloc/single-page-locked`: both bare buddy allocators behind the same
//!   `keel_sync::SpinLock`, one page allocated and freed per iteration.
//! - `pagealloc/single-page-burst-256`: 256 single pages allocated, then freed: four
//!   times the cache, so ours refills and drains through its buddy allocator in
//!   batches; the peer is bare, as in `single-page-burst-64`.
//! - `pagealloc/split-merge-18-levels`: the worst case of a buddy allocator: the only
//!   free memory is one block of `2^18` pages (1 GiB), so every single-page
//!   allocation splits 18 levels and every free merges 18 levels back.
//!
//! Run with `cargo bench -p keel-benches --bench pagealloc`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use buddy_system_allocator::FrameAllocator;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use keel_pagealloc::{
    BuddyAllocator, HandedOutPages, PageFrameNumber, PageMeta, PageRange, PageSource,
    PerCpuPageCache,
};
use keel_sync::SpinLock;

/// 1 GiB of 4 KiB pages.
const PAGES: usize = 262_144;
/// First frame of the managed memory (the low 1 MiB is left out, as on a PC).
const BASE: u64 = 256;

type PeerAllocator = FrameAllocator<32>;

/// The prefill both allocators get: a deterministic mix of single pages and small
/// runs, all allocated, then every other one freed, so the free lists hold many
/// fragments and the large blocks are split. Returns (order, freed again) pairs.
fn prefill_plan() -> Vec<(u32, bool)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..6000)
        .map(|step| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let order = match state % 8 {
                0..=4 => 0,
                5 | 6 => 2,
                _ => 5,
            };
            (order, step % 2 == 1)
        })
        .collect()
}

fn keel_allocator(metadata: &mut [PageMeta]) -> BuddyAllocator<'_> {
    let mut allocator = BuddyAllocator::new(metadata, PageFrameNumber::new(0));
    allocator
        .add_free_range(PageRange::new(
            PageFrameNumber::new(BASE),
            PAGES as u64 - BASE,
        ))
        .expect("add memory");
    let plan = prefill_plan();
    let blocks: Vec<_> = plan
        .iter()
        .map(|&(order, _)| allocator.alloc(order).expect("prefill"))
        .collect();
    for (&(order, frees), &block) in plan.iter().zip(&blocks) {
        if frees {
            allocator.free(block, order).expect("prefill free");
        }
    }
    allocator
}

fn peer_allocator() -> PeerAllocator {
    let mut allocator = PeerAllocator::new();
    allocator.add_frame(BASE as usize, PAGES);
    let plan = prefill_plan();
    let blocks: Vec<_> = plan
        .iter()
        .map(|&(order, _)| allocator.alloc(1 << order).expect("prefill"))
        .collect();
    for (&(order, frees), &block) in plan.iter().zip(&blocks) {
        if frees {
            allocator.dealloc(block, 1 << order);
        }
    }
    allocator
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
}

/// Zeroed words for the cache's [`HandedOutPages`] over the `PAGES` frames.
fn handed_out_words() -> Vec<core::sync::atomic::AtomicU64> {
    (0..HandedOutPages::words_for(PAGES as u64))
        .map(|_| core::sync::atomic::AtomicU64::new(0))
        .collect()
}

/// One single page allocated and freed per iteration through `cache` over `source`.
fn cached_page_round_trips(
    bencher: &mut criterion::Bencher<'_>,
    cache: &mut PerCpuPageCache<64>,
    source: &mut impl PageSource,
    handed_out: &HandedOutPages<'_>,
) {
    bencher.iter(|| {
        let page = cache.alloc(source, handed_out).expect("page");
        cache
            .free(black_box(page), source, handed_out)
            .expect("free page");
    });
}

fn single_page(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("pagealloc/single-page");
    configure(&mut group);

    let mut metadata = vec![PageMeta::UNAVAILABLE; PAGES];
    let mut global = keel_allocator(&mut metadata);
    let mut cache = PerCpuPageCache::<64>::new();
    let words = handed_out_words();
    let handed_out = HandedOutPages::new(&words, PageFrameNumber::new(0));
    group.bench_function("keel", |bencher| {
        cached_page_round_trips(bencher, &mut cache, &mut global, &handed_out);
    });
    cache.drain_all(&mut global);
    assert_eq!(global.rejected_free_count(), 0);

    let mut peer = peer_allocator();
    group.bench_function("buddy_system_allocator", |bencher| {
        bencher.iter(|| {
            let page = peer.alloc(1).expect("page");
            peer.dealloc(black_box(page), 1);
        });
    });
    group.finish();
}

/// `pagealloc/single-page-burst-BURST`: `BURST` single pages allocated, then freed;
/// ours through a 64-page cache, the peer bare.
fn single_page_burst<const BURST: usize>(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group(format!("pagealloc/single-page-burst-{BURST}"));
    configure(&mut group);

    let mut metadata = vec![PageMeta::UNAVAILABLE; PAGES];
    let mut global = keel_allocator(&mut metadata);
    let mut cache = PerCpuPageCache::<64>::new();
    let words = handed_out_words();
    let handed_out = HandedOutPages::new(&words, PageFrameNumber::new(0));
    let mut pages = [PageFrameNumber::new(0); BURST];
    group.bench_function("keel", |bencher| {
        bencher.iter(|| {
            for page in &mut pages {
                *page = cache.alloc(&mut global, &handed_out).expect("page");
            }
            for &page in black_box(&pages) {
                cache
                    .free(page, &mut global, &handed_out)
                    .expect("free page");
            }
        });
    });
    cache.drain_all(&mut global);
    assert_eq!(global.rejected_free_count(), 0);

    let mut peer = peer_allocator();
    let mut frames = [0usize; BURST];
    group.bench_function("buddy_system_allocator", |bencher| {
        bencher.iter(|| {
            for frame in &mut frames {
                *frame = peer.alloc(1).expect("page");
            }
            for &frame in black_box(&frames) {
                peer.dealloc(frame, 1);
            }
        });
    });
    group.finish();
}

fn runs(criterion: &mut Criterion) {
    let mut metadata = vec![PageMeta::UNAVAILABLE; PAGES];
    let mut ours = keel_allocator(&mut metadata);
    let mut peer = peer_allocator();
    for order in [0u32, 4, 9] {
        let mut group = criterion.benchmark_group(format!("pagealloc/run-2^{order}"));
        configure(&mut group);
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let block = ours.alloc(black_box(order)).expect("block");
                ours.free(black_box(block), order).expect("free block");
            });
        });
        let count = 1usize << order;
        group.bench_function("buddy_system_allocator", |bencher| {
            bencher.iter(|| {
                let block = peer.alloc(black_box(count)).expect("block");
                peer.dealloc(black_box(block), count);
            });
        });
        group.finish();
    }
}

/// The peer as the source of a [`PerCpuPageCache`]: single pages, one by one.
struct PeerPages<'a>(&'a mut PeerAllocator);

impl PageSource for PeerPages<'_> {
    fn alloc_page_batch(&mut self, out: &mut [PageFrameNumber]) -> usize {
        for (allocated, slot) in out.iter_mut().enumerate() {
            match self.0.alloc(1) {
                Some(frame) => *slot = PageFrameNumber::new(frame as u64),
                None => return allocated,
            }
        }
        out.len()
    }

    fn free_page_batch(&mut self, pages: &[PageFrameNumber]) {
        for page in pages {
            self.0.dealloc(page.as_u64() as usize, 1);
        }
    }

    fn count_rejected_free(&mut self) {}
}

fn single_page_like_for_like(criterion: &mut Criterion) {
    let words = handed_out_words();
    let handed_out = HandedOutPages::new(&words, PageFrameNumber::new(0));
    {
        let mut group = criterion.benchmark_group("pagealloc/single-page-both-cached");
        configure(&mut group);
        let mut metadata = vec![PageMeta::UNAVAILABLE; PAGES];
        let mut global = keel_allocator(&mut metadata);
        let mut cache = PerCpuPageCache::<64>::new();
        group.bench_function("keel", |bencher| {
            cached_page_round_trips(bencher, &mut cache, &mut global, &handed_out);
        });
        cache.drain_all(&mut global);
        let mut peer = peer_allocator();
        let mut peer_cache = PerCpuPageCache::<64>::new();
        group.bench_function("buddy_system_allocator", |bencher| {
            cached_page_round_trips(
                bencher,
                &mut peer_cache,
                &mut PeerPages(&mut peer),
                &handed_out,
            );
        });
        peer_cache.drain_all(&mut PeerPages(&mut peer));
        group.finish();
    }
    {
        let mut group = criterion.benchmark_group("pagealloc/single-page-locked");
        configure(&mut group);
        let mut metadata = vec![PageMeta::UNAVAILABLE; PAGES];
        let ours = SpinLock::new(keel_allocator(&mut metadata));
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let page = ours.lock().alloc(0).expect("page");
                ours.lock().free(black_box(page), 0).expect("free page");
            });
        });
        let peer = SpinLock::new(peer_allocator());
        group.bench_function("buddy_system_allocator", |bencher| {
            bencher.iter(|| {
                let page = peer.lock().alloc(1).expect("page");
                peer.lock().dealloc(black_box(page), 1);
            });
        });
        group.finish();
    }
}

fn split_merge_18_levels(criterion: &mut Criterion) {
    /// One block of 2^18 frames at frame 2^18 (aligned to its size).
    const BLOCK: u64 = 1 << 18;
    let mut group = criterion.benchmark_group("pagealloc/split-merge-18-levels");
    configure(&mut group);
    let mut metadata = vec![PageMeta::UNAVAILABLE; 2 * BLOCK as usize];
    let mut ours = BuddyAllocator::new(&mut metadata, PageFrameNumber::new(0));
    ours.add_free_range(PageRange::new(PageFrameNumber::new(BLOCK), BLOCK))
        .expect("add memory");
    group.bench_function("keel", |bencher| {
        bencher.iter(|| {
            let page = ours.alloc(black_box(0)).expect("page");
            ours.free(black_box(page), 0).expect("free page");
        });
    });
    let mut peer = PeerAllocator::new();
    peer.add_frame(BLOCK as usize, 2 * BLOCK as usize);
    group.bench_function("buddy_system_allocator", |bencher| {
        bencher.iter(|| {
            let page = peer.alloc(black_box(1)).expect("page");
            peer.dealloc(black_box(page), 1);
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    single_page,
    single_page_burst::<64>,
    single_page_burst::<256>,
    runs,
    single_page_like_for_like,
    split_merge_18_levels
);
criterion_main!(benches);
