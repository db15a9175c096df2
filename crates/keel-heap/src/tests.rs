//! Host tests of the heap over a `std::alloc` page source that tracks its pages.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use proptest::prelude::*;

use keel_sync::NoInterruptMask;

use crate::{
    CurrentCpu, HeapStats, KernelHeap, MAX_POOL_SIZE, PAGE_SIZE, PageSource, SIZE_CLASSES,
};

crate::thread_caches!(pub(crate) ThreadCaches);

mod cached;

/// Pages from `std::alloc`, every outstanding run tracked (start -> count), with an
/// optional limit on the pages outstanding at once (to test exhaustion).
#[derive(Debug, Default)]
pub(crate) struct TrackingSource {
    outstanding: Mutex<HashMap<usize, usize>>,
    limit: Option<usize>,
}

impl TrackingSource {
    pub(crate) fn limited(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    pub(crate) fn outstanding_pages(&self) -> usize {
        self.outstanding.lock().unwrap().values().sum()
    }
}

fn page_layout(count: usize) -> Layout {
    Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).unwrap()
}

// SAFETY: `std::alloc::alloc` returns fresh, page-aligned memory of the requested
// size; the map is behind a `Mutex`, so any thread may call.
unsafe impl PageSource for TrackingSource {
    fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>> {
        assert!(count >= 1);
        let mut outstanding = self.outstanding.lock().unwrap();
        if let Some(limit) = self.limit
            && outstanding.values().sum::<usize>() + count > limit
        {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let start = NonNull::new(unsafe { std::alloc::alloc(page_layout(count)) })?;
        assert!(outstanding.insert(start.as_ptr().addr(), count).is_none());
        Some(start)
    }

    unsafe fn free_pages(&self, start: NonNull<u8>, count: usize) {
        let recorded = self
            .outstanding
            .lock()
            .unwrap()
            .remove(&start.as_ptr().addr());
        assert_eq!(recorded, Some(count), "freed pages not allocated as such");
        // SAFETY: allocated in `alloc_pages` with this layout (checked just above).
        unsafe { std::alloc::dealloc(start.as_ptr(), page_layout(count)) };
    }
}

pub(crate) fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Fills `size` bytes at `block` with a pattern derived from `seed`.
pub(crate) fn fill(block: *mut u8, size: usize, seed: u8) {
    for index in 0..size {
        // SAFETY: the tests call this on live blocks of at least `size` bytes.
        unsafe { block.add(index).write(seed.wrapping_add(index as u8)) };
    }
}

/// Checks the pattern written by `fill`.
pub(crate) fn check(block: *const u8, size: usize, seed: u8) {
    for index in 0..size {
        // SAFETY: as in `fill`.
        let byte = unsafe { block.add(index).read() };
        assert_eq!(
            byte,
            seed.wrapping_add(index as u8),
            "byte {index} of {block:p}"
        );
    }
}

#[test]
fn every_class_allocates_aligned_disjoint_objects_and_returns_pages() {
    let source = TrackingSource::default();
    let heap = KernelHeap::new(&source);
    for (class, &object) in SIZE_CLASSES.iter().enumerate() {
        let align = if object.is_power_of_two() { object } else { 32 };
        let request = layout(object, align);
        // Enough objects to span several pages.
        let blocks: Vec<*mut u8> = (0..600)
            .map(|index| {
                // SAFETY: non-zero size.
                let block = unsafe { heap.alloc(request) };
                assert!(!block.is_null());
                assert_eq!(block.addr() % align, 0, "class {class}");
                assert_ne!(
                    block.addr() % PAGE_SIZE,
                    0,
                    "pool objects are never page-aligned"
                );
                fill(block, object, index as u8);
                block
            })
            .collect();
        let mut sorted = blocks.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(
                pair[0].addr() + object <= pair[1].addr(),
                "overlap in class {class}"
            );
        }
        for (index, &block) in blocks.iter().enumerate() {
            check(block, object, index as u8);
        }
        let stats = heap.stats();
        assert_eq!(stats.live_allocations, 600);
        assert_eq!(stats.bytes_in_use, 600 * object);
        assert!(stats.pool_pages >= 600 / crate::GEOMETRY[class].capacity);
        for &block in &blocks {
            // SAFETY: allocated above with `request`.
            unsafe { heap.dealloc(block, request) };
        }
        let stats = heap.stats();
        assert_eq!((stats.live_allocations, stats.bytes_in_use), (0, 0));
        // Only the retained empty page of the pool and the page cache remain.
        assert!(stats.pool_pages <= 1, "{stats:?}");
        assert!(stats.cached_pages <= crate::pool::PAGE_CACHE_LIMIT);
        assert_eq!(stats.pages_held, source.outstanding_pages());
        heap.trim();
        assert_eq!(source.outstanding_pages(), 0);
        assert_eq!(heap.stats(), HeapStats::default());
    }
}

#[test]
fn empty_pool_pages_go_back_to_the_source() {
    let source = TrackingSource::default();
    let heap = KernelHeap::new(&source);
    let request = layout(64, 8);
    // 63 objects per 64-byte page: 100 pages' worth.
    let blocks: Vec<_> = (0..6300).map(|_| heap.allocate(request).unwrap()).collect();
    assert_eq!(heap.stats().pool_pages, 100);
    assert_eq!(source.outstanding_pages(), 100);
    for block in blocks {
        // SAFETY: allocated above with `request`.
        unsafe { heap.deallocate(block, request) };
    }
    // One empty page kept by the pool, 16 in the cache, the rest returned.
    let stats = heap.stats();
    assert_eq!(stats.pool_pages, 1);
    assert_eq!(stats.cached_pages, 16);
    assert_eq!(source.outstanding_pages(), 17);
    heap.trim();
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn alloc_free_pair_does_not_touch_the_source() {
    let source = TrackingSource::default();
    let heap = KernelHeap::new(&source);
    let request = layout(64, 8);
    for _ in 0..1000 {
        let block = heap.allocate(request).unwrap();
        // SAFETY: allocated just above with `request`.
        unsafe { heap.deallocate(block, request) };
    }
    assert_eq!(source.outstanding_pages(), 1);
    drop(heap);
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn large_blocks_are_whole_pages() {
    let source = TrackingSource::default();
    let heap = KernelHeap::new(&source);
    for (size, pages) in [(MAX_POOL_SIZE + 1, 1), (4096, 1), (4097, 2), (100_000, 25)] {
        let request = layout(size, 8);
        let block = heap.allocate(request).unwrap();
        assert_eq!(block.as_ptr().addr() % PAGE_SIZE, 0);
        fill(block.as_ptr(), size, 7);
        check(block.as_ptr(), size, 7);
        assert_eq!(heap.stats().large_pages, pages);
        assert_eq!(
            KernelHeap::<&TrackingSource>::usable_size(request),
            pages * PAGE_SIZE
        );
        // SAFETY: allocated just above with `request`.
        unsafe { heap.deallocate(block, request) };
        assert_eq!(heap.stats().large_pages, 0);
    }
    heap.trim();
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn alignments_from_8_to_16384() {
    let source = TrackingSource::default();
    let heap = KernelHeap::new(&source);
    let mut live = Vec::new();
    for shift in 3..=14 {
        let align = 1_usize << shift;
        for size in [1, 8, 24, 100, 1000, 2000, 3000, 5000, 20_000] {
            let request = layout(size, align);
            let block = heap.allocate(request).unwrap();
            assert_eq!(
                block.as_ptr().addr() % align,
                0,
                "size {size} align {align}"
            );
            fill(block.as_ptr(), size, shift as u8);
            live.push((block, request, shift as u8));
        }
    }
    for (block, request, seed) in live {
        check(block.as_ptr(), request.size(), seed);
        // SAFETY: allocated above with `request`.
        unsafe { heap.deallocate(block, request) };
    }
    assert_eq!(heap.stats().live_allocations, 0);
    heap.trim();
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn zero_size_allocations_are_distinct() {
    let heap = KernelHeap::new(TrackingSource::default());
    let request = layout(0, 1);
    let first = heap.allocate(request).unwrap();
    let second = heap.allocate(request).unwrap();
    assert_ne!(first, second);
    // SAFETY: allocated just above with `request`.
    unsafe {
        heap.deallocate(first, request);
        heap.deallocate(second, request);
    }
}

#[test]
fn realloc_preserves_bytes_growing_and_shrinking() {
    let source = TrackingSource::default();
    let heap = KernelHeap::new(&source);
    let sizes = [
        1, 15, 16, 17, 64, 500, 1024, 1500, 2016, 3000, 4096, 9000, 70_000, 40, 3,
    ];
    for align in [8, 64, 8192] {
        let mut size = sizes[0];
        let mut block = heap.allocate(layout(size, align)).unwrap();
        fill(block.as_ptr(), size, 1);
        for &new_size in &sizes[1..] {
            // SAFETY: `block` is live with `layout(size, align)`.
            let grown = unsafe { heap.realloc(block.as_ptr(), layout(size, align), new_size) };
            let grown = NonNull::new(grown).unwrap();
            assert_eq!(grown.as_ptr().addr() % align, 0);
            check(grown.as_ptr(), size.min(new_size), 1);
            fill(grown.as_ptr(), new_size, 1);
            block = grown;
            size = new_size;
            assert_eq!(heap.stats().bytes_in_use, size);
        }
        // SAFETY: `block` is live with `layout(size, align)`.
        unsafe { heap.deallocate(block, layout(size, align)) };
    }
    heap.trim();
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn realloc_within_a_class_stays_in_place() {
    let heap = KernelHeap::new(TrackingSource::default());
    let block = heap.allocate(layout(33, 8)).unwrap();
    // SAFETY: `block` is live with `layout(33, 8)`.
    let same = unsafe { heap.reallocate(block, layout(33, 8), 64) }.unwrap();
    assert_eq!(block, same);
    // SAFETY: `same` is live with `layout(64, 8)`.
    unsafe { heap.deallocate(same, layout(64, 8)) };
}

#[test]
fn exhaustion_returns_null_and_recovers() {
    let source = TrackingSource::limited(4);
    let heap = KernelHeap::new(&source);
    // SAFETY: non-zero size.
    assert!(unsafe { heap.alloc(layout(5 * PAGE_SIZE, 8)) }.is_null());
    let request = layout(1024, 8);
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(request) {
        blocks.push(block);
    }
    assert_eq!(blocks.len(), 4 * 3);
    // A failed realloc leaves the old block intact.
    fill(blocks[0].as_ptr(), 1024, 9);
    // SAFETY: `blocks[0]` is live with `request`.
    assert!(unsafe { heap.reallocate(blocks[0], request, 2 * PAGE_SIZE) }.is_none());
    check(blocks[0].as_ptr(), 1024, 9);
    // Over-large requests fail cleanly too.
    assert!(
        heap.allocate(layout(isize::MAX as usize - 8191, 8192))
            .is_none()
    );
    for block in blocks {
        // SAFETY: allocated above with `request`.
        unsafe { heap.deallocate(block, request) };
    }
    assert!(heap.allocate(layout(3 * PAGE_SIZE, 8)).is_some());
}

/// Two threads on a shared heap (the test harness runs other tests beside it). Kept
/// short and at two threads: on an oversubscribed host a FIFO
/// spinlock hands the lock to descheduled waiters (lock-holder preemption).
#[test]
fn threads_allocate_and_free_concurrently() {
    let source = Arc::new(TrackingSource::default());
    let heap = Arc::new(KernelHeap::new(Arc::clone(&source)));
    let handles: Vec<_> = (0..2_u8)
        .map(|thread| {
            let heap = Arc::clone(&heap);
            std::thread::spawn(move || {
                let mut live: Vec<(usize, Layout, u8)> = Vec::new();
                let mut state = 0x9e37_79b9_u32 ^ u32::from(thread);
                for step in 0..3_000_u32 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    if live.len() < 64 && (!state.is_multiple_of(3) || live.is_empty()) {
                        let request = layout(8 + (state as usize % 3000), 8);
                        let seed = (step as u8) ^ thread;
                        let block = heap.allocate(request).unwrap();
                        fill(block.as_ptr(), request.size().min(64), seed);
                        live.push((block.as_ptr().addr(), request, seed));
                    } else {
                        let (address, request, seed) =
                            live.swap_remove(state as usize % live.len());
                        let block = core::ptr::with_exposed_provenance_mut::<u8>(address);
                        check(block, request.size().min(64), seed);
                        // SAFETY: allocated by this thread with `request`.
                        unsafe { heap.dealloc(block, request) };
                    }
                }
                for (address, request, seed) in live {
                    let block = core::ptr::with_exposed_provenance_mut::<u8>(address);
                    check(block, request.size().min(64), seed);
                    // SAFETY: allocated by this thread with `request`.
                    unsafe { heap.dealloc(block, request) };
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(heap.stats().live_allocations, 0);
    heap.trim();
    assert_eq!(source.outstanding_pages(), 0);
}

// SAFETY: forwards to the inner source.
unsafe impl PageSource for Arc<TrackingSource> {
    fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>> {
        (**self).alloc_pages(count)
    }

    unsafe fn free_pages(&self, start: NonNull<u8>, count: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { (**self).free_pages(start, count) }
    }
}

/// One step of a random workload.
#[derive(Debug, Clone)]
enum Step {
    Alloc { size: usize, align_shift: u32 },
    Free { pick: usize },
    Realloc { pick: usize, new_size: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let size = prop_oneof![1_usize..=64, 1_usize..=2100, 1_usize..=20_000];
    prop_oneof![
        3 => (size.clone(), 3_u32..=13).prop_map(|(size, align_shift)| Step::Alloc { size, align_shift }),
        2 => any::<usize>().prop_map(|pick| Step::Free { pick }),
        1 => (any::<usize>(), size).prop_map(|(pick, new_size)| Step::Realloc { pick, new_size }),
    ]
}

struct Live {
    block: NonNull<u8>,
    request: Layout,
    seed: u8,
}

fn assert_disjoint(live: &[Live]) {
    let mut ranges: Vec<(usize, usize)> = live
        .iter()
        .map(|entry| {
            let start = entry.block.as_ptr().addr();
            (start, start + entry.request.size().max(1))
        })
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping blocks {pair:x?}");
    }
}

/// Runs `steps` on `heap` (over `source`), checking after every step that the live
/// blocks are disjoint, aligned and intact and that the statistics add up; at the end
/// frees everything and checks that every page went back.
fn random_workload<C: CurrentCpu, const CPUS: usize>(
    steps: Vec<Step>,
    heap: &KernelHeap<&TrackingSource, NoInterruptMask, C, CPUS>,
    source: &TrackingSource,
) -> Result<(), TestCaseError> {
    let mut live: Vec<Live> = Vec::new();
    for (index, step) in steps.into_iter().enumerate() {
        let seed = index as u8;
        match step {
            Step::Alloc { size, align_shift } => {
                let request = layout(size, 1 << align_shift);
                let block = heap.allocate(request).unwrap();
                prop_assert_eq!(block.as_ptr().addr() % request.align(), 0);
                fill(block.as_ptr(), size, seed);
                live.push(Live {
                    block,
                    request,
                    seed,
                });
            }
            Step::Free { pick } if !live.is_empty() => {
                let entry = live.swap_remove(pick % live.len());
                check(entry.block.as_ptr(), entry.request.size(), entry.seed);
                // SAFETY: live block allocated with `entry.request`.
                unsafe { heap.deallocate(entry.block, entry.request) };
            }
            Step::Realloc { pick, new_size } if !live.is_empty() => {
                let slot = pick % live.len();
                let entry = &mut live[slot];
                // SAFETY: live block allocated with `entry.request`.
                let block =
                    unsafe { heap.reallocate(entry.block, entry.request, new_size) }.unwrap();
                prop_assert_eq!(block.as_ptr().addr() % entry.request.align(), 0);
                check(
                    block.as_ptr(),
                    entry.request.size().min(new_size),
                    entry.seed,
                );
                entry.block = block;
                entry.request = layout(new_size, entry.request.align());
                fill(block.as_ptr(), new_size, entry.seed);
            }
            Step::Free { .. } | Step::Realloc { .. } => {}
        }
        assert_disjoint(&live);
        let stats = heap.stats();
        prop_assert_eq!(stats.live_allocations, live.len());
        prop_assert_eq!(
            stats.bytes_in_use,
            live.iter().map(|entry| entry.request.size()).sum::<usize>()
        );
        prop_assert_eq!(stats.pages_held, source.outstanding_pages());
    }
    for entry in live {
        check(entry.block.as_ptr(), entry.request.size(), entry.seed);
        // SAFETY: live block allocated with `entry.request`.
        unsafe { heap.deallocate(entry.block, entry.request) };
    }
    heap.trim();
    prop_assert_eq!(source.outstanding_pages(), 0);
    prop_assert_eq!(heap.stats(), HeapStats::default());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_workloads_keep_blocks_disjoint_aligned_and_intact(
        steps in proptest::collection::vec(step(), 1..300)
    ) {
        let source = TrackingSource::default();
        random_workload(steps, &KernelHeap::new(&source), &source)?;
    }

    #[test]
    fn random_workloads_through_cpu_caches(
        steps in proptest::collection::vec(step(), 1..300)
    ) {
        let source = TrackingSource::default();
        let heap: KernelHeap<_, NoInterruptMask, ThreadCaches, 64> =
            KernelHeap::with_interrupt_mask(&source);
        random_workload(steps, &heap, &source)?;
    }
}
