//! Host tests: error paths, then property tests against a `BTreeSet` model.

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use core::sync::atomic::AtomicU64;

use keel_sync::NoInterruptMask;

use crate::{
    BuddyAllocator, HandedOutPages, MAX_ORDER, PageAllocError, PageBlock, PageFrameNumber,
    PageMeta, PageRange, PageSource, PerCpuPageCache, SharedPageAllocator,
};

fn frame(number: u64) -> PageFrameNumber {
    PageFrameNumber::new(number)
}

/// Zeroed words for the [`HandedOutPages`] of a span of `pages` frames.
fn handed_out_words(pages: u64) -> Vec<AtomicU64> {
    (0..HandedOutPages::words_for(pages))
        .map(|_| AtomicU64::new(0))
        .collect()
}

fn range(start: u64, count: u64) -> PageRange {
    PageRange::new(frame(start), count)
}

fn sorted_free_blocks(allocator: &BuddyAllocator<'_>) -> Vec<(u64, u32)> {
    let mut blocks: Vec<_> = allocator
        .free_blocks()
        .map(|block| (block.start.as_u64(), block.order))
        .collect();
    blocks.sort_unstable();
    blocks
}

/// The canonical buddy decomposition of a page set, written independently of the
/// crate: split each maximal run of consecutive pages greedily into the largest
/// aligned blocks (at most `MAX_ORDER`).
fn canonical_blocks(pages: &BTreeSet<u64>) -> Vec<(u64, u32)> {
    let mut blocks = Vec::new();
    let mut pages = pages.iter().copied().peekable();
    while let Some(first) = pages.next() {
        let mut end = first + 1;
        while pages.peek() == Some(&end) {
            pages.next();
            end += 1;
        }
        let mut start = first;
        while start < end {
            let mut order = 0;
            while order < MAX_ORDER
                && start % (1 << (order + 1)) == 0
                && start + (1 << (order + 1)) <= end
            {
                order += 1;
            }
            blocks.push((start, order));
            start += 1 << order;
        }
    }
    blocks
}

/// Snapshot of everything observable, to check that a refused call changed nothing.
fn snapshot(allocator: &BuddyAllocator<'_>) -> (u64, Vec<(u64, u32)>) {
    (allocator.free_page_count(), sorted_free_blocks(allocator))
}

// ---------------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------------

#[test]
fn page_meta_is_small() {
    assert_eq!(PageMeta::SIZE, 12);
    assert!(core::mem::size_of::<PageMeta>() <= 16);
    assert_eq!(crate::metadata_bytes(262_144), 3 * 1024 * 1024);
}

#[test]
fn starts_unavailable_and_out_of_memory() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 64];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(100));
    assert_eq!(allocator.span(), range(100, 64));
    assert_eq!(allocator.free_page_count(), 0);
    assert_eq!(allocator.alloc(0), Err(PageAllocError::OutOfMemory));
    assert_eq!(allocator.free_blocks().count(), 0);
    allocator.assert_consistent();
}

#[test]
fn new_overwrites_garbage_metadata() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    {
        let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
        allocator.add_free_range(range(0, 16)).unwrap();
        allocator.alloc(2).unwrap();
    }
    let allocator = BuddyAllocator::new(&mut metadata, frame(0));
    assert_eq!(allocator.free_page_count(), 0);
    allocator.assert_consistent();
}

#[test]
fn unaligned_range_splits_into_maximal_blocks_and_merges() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 64];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(3, 14)).unwrap();
    assert_eq!(
        sorted_free_blocks(&allocator),
        [(3, 0), (4, 2), (8, 3), (16, 0)]
    );
    // Adjacent ranges merge with what is already free.
    allocator.add_free_range(range(0, 3)).unwrap();
    allocator.add_free_range(range(17, 15)).unwrap();
    assert_eq!(sorted_free_blocks(&allocator), [(0, 5)]);
    assert_eq!(allocator.free_page_count(), 32);
    allocator.assert_consistent();
}

#[test]
fn alloc_splits_and_free_coalesces() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(16));
    allocator.add_free_range(range(16, 16)).unwrap();
    let page = allocator.alloc(0).unwrap();
    assert_eq!(page, frame(16));
    assert_eq!(
        sorted_free_blocks(&allocator),
        [(17, 0), (18, 1), (20, 2), (24, 3)]
    );
    let pair = allocator.alloc(1).unwrap();
    assert_eq!(pair, frame(18));
    allocator.assert_consistent();
    allocator.free(page, 0).unwrap();
    allocator.free(pair, 1).unwrap();
    assert_eq!(sorted_free_blocks(&allocator), [(16, 4)]);
    allocator.assert_consistent();
}

#[test]
fn blocks_are_aligned_in_frame_numbers_not_indices() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 32];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(5));
    allocator.add_free_range(range(5, 32)).unwrap();
    let block = allocator.alloc(4).unwrap();
    assert_eq!(block, frame(16));
    assert_eq!(allocator.alloc(4), Err(PageAllocError::OutOfMemory));
    // Aligned, starts inside the span [5, 37) and ends outside it.
    assert_eq!(
        allocator.free(frame(32), 3),
        Err(PageAllocError::OutOfRange)
    );
    allocator.assert_consistent();
}

#[test]
fn max_order_caps_blocks() {
    let pages = 3u64 << MAX_ORDER;
    let mut metadata = vec![PageMeta::UNAVAILABLE; pages as usize];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, pages)).unwrap();
    assert_eq!(
        sorted_free_blocks(&allocator),
        [
            (0, MAX_ORDER),
            (1 << MAX_ORDER, MAX_ORDER),
            (2 << MAX_ORDER, MAX_ORDER)
        ]
    );
    assert_eq!(
        allocator.alloc(MAX_ORDER + 1),
        Err(PageAllocError::InvalidOrder {
            order: MAX_ORDER + 1
        })
    );
    let huge = allocator.alloc(MAX_ORDER).unwrap();
    let page = allocator.alloc(0).unwrap();
    allocator.free(page, 0).unwrap();
    allocator.free(huge, MAX_ORDER).unwrap();
    assert_eq!(allocator.free_blocks().count(), 3);
    allocator.assert_consistent();
}

#[test]
fn double_free_is_detected() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 16)).unwrap();
    let first = allocator.alloc(0).unwrap();
    let second = allocator.alloc(0).unwrap();
    allocator.free(first, 0).unwrap();
    let before = snapshot(&allocator);
    // `first` is a free head of its own.
    assert_eq!(allocator.free(first, 0), Err(PageAllocError::DoubleFree));
    allocator.free(second, 0).unwrap();
    // Now both merged into the order-4 block: `second` is a tail of a free block.
    let merged = snapshot(&allocator);
    assert_ne!(before, merged);
    assert_eq!(allocator.free(second, 0), Err(PageAllocError::DoubleFree));
    assert_eq!(allocator.free(first, 0), Err(PageAllocError::DoubleFree));
    assert_eq!(allocator.free(frame(8), 3), Err(PageAllocError::DoubleFree));
    assert_eq!(snapshot(&allocator), merged);
    allocator.assert_consistent();
}

#[test]
fn wrong_order_is_detected() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 16)).unwrap();
    let block = allocator.alloc(2).unwrap();
    let before = snapshot(&allocator);
    assert_eq!(
        allocator.free(block, 1),
        Err(PageAllocError::WrongOrder {
            allocated: 2,
            given: 1
        })
    );
    assert_eq!(
        allocator.free(block, 3),
        Err(PageAllocError::WrongOrder {
            allocated: 2,
            given: 3
        })
    );
    // A frame inside the allocated block is not a block start.
    assert_eq!(
        allocator.free(frame(block.as_u64() + 2), 1),
        Err(PageAllocError::NotAllocated)
    );
    assert_eq!(
        allocator.free(frame(block.as_u64() + 1), 0),
        Err(PageAllocError::NotAllocated)
    );
    assert_eq!(snapshot(&allocator), before);
    allocator.free(block, 2).unwrap();
    allocator.assert_consistent();
}

#[test]
fn misaligned_free_is_detected() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 16)).unwrap();
    let block = allocator.alloc(2).unwrap();
    assert_eq!(
        allocator.free(frame(block.as_u64() + 1), 2),
        Err(PageAllocError::Misaligned)
    );
    assert_eq!(
        allocator.free(frame(block.as_u64() + 2), 2),
        Err(PageAllocError::Misaligned)
    );
    assert_eq!(
        allocator.free(block, MAX_ORDER + 1),
        Err(PageAllocError::InvalidOrder {
            order: MAX_ORDER + 1
        })
    );
    allocator.free(block, 2).unwrap();
    allocator.assert_consistent();
}

#[test]
fn out_of_range_is_detected() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(16));
    assert_eq!(
        allocator.add_free_range(range(8, 16)),
        Err(PageAllocError::OutOfRange)
    );
    assert_eq!(
        allocator.add_free_range(range(24, 9)),
        Err(PageAllocError::OutOfRange)
    );
    assert_eq!(
        allocator.add_free_range(range(u64::MAX, 2)),
        Err(PageAllocError::OutOfRange)
    );
    assert_eq!(allocator.free_page_count(), 0);
    allocator.add_free_range(range(16, 16)).unwrap();
    let before = snapshot(&allocator);
    assert_eq!(
        allocator.free(frame(15), 0),
        Err(PageAllocError::OutOfRange)
    );
    assert_eq!(
        allocator.free(frame(32), 0),
        Err(PageAllocError::OutOfRange)
    );
    assert_eq!(allocator.free(frame(0), 0), Err(PageAllocError::OutOfRange));
    assert_eq!(
        allocator.free(frame(16), 5),
        Err(PageAllocError::Misaligned)
    );
    assert_eq!(snapshot(&allocator), before);
    allocator.assert_consistent();
}

#[test]
fn unavailable_frame_is_not_allocated() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 16];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 8)).unwrap();
    assert_eq!(
        allocator.free(frame(8), 0),
        Err(PageAllocError::NotAllocated)
    );
    assert_eq!(
        allocator.free(frame(8), 3),
        Err(PageAllocError::NotAllocated)
    );
    allocator.assert_consistent();
}

#[test]
fn overlapping_add_is_rejected_atomically() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 32];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(8, 8)).unwrap();
    let before = snapshot(&allocator);
    assert_eq!(
        allocator.add_free_range(range(0, 9)),
        Err(PageAllocError::Overlap)
    );
    assert_eq!(
        allocator.add_free_range(range(15, 4)),
        Err(PageAllocError::Overlap)
    );
    // Overlapping allocated (not just free) pages is refused too.
    let block = allocator.alloc(3).unwrap();
    assert_eq!(
        allocator.add_free_range(range(block.as_u64(), 1)),
        Err(PageAllocError::Overlap)
    );
    allocator.free(block, 3).unwrap();
    assert_eq!(snapshot(&allocator), before);
    assert_eq!(allocator.available_page_count(), 8);
    allocator.add_free_range(range(4, 0)).unwrap();
    allocator.assert_consistent();
}

#[test]
fn alloc_pages_is_exact_and_frees_all_or_nothing() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 32];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 32)).unwrap();
    assert_eq!(allocator.alloc_pages(0), Err(PageAllocError::EmptyRequest));
    let run = allocator.alloc_pages(5).unwrap();
    assert_eq!(run, range(0, 5));
    assert_eq!(allocator.free_page_count(), 27);
    allocator.assert_consistent();
    // The unused tail of the order-3 block went back.
    let page = allocator.alloc(0).unwrap();
    assert_eq!(page, frame(5));
    // Freeing a range with a wrong length is refused before anything is freed.
    let before = snapshot(&allocator);
    assert!(allocator.free_pages(range(0, 6)).is_err());
    assert!(allocator.free_pages(range(0, 4)).is_ok());
    assert_eq!(allocator.free_pages(range(4, 1)), Ok(()));
    assert_ne!(snapshot(&allocator), before);
    allocator.free(page, 0).unwrap();
    assert_eq!(sorted_free_blocks(&allocator), [(0, 5)]);
    assert_eq!(
        allocator.alloc_pages((1 << MAX_ORDER) + 1),
        Err(PageAllocError::InvalidOrder {
            order: MAX_ORDER + 1
        })
    );
    allocator.assert_consistent();
}

#[test]
fn batch_free_counts_rejections() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 8];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 8)).unwrap();
    let mut pages = [frame(0); 10];
    assert_eq!(allocator.alloc_page_batch(&mut pages), 8);
    allocator.free_page_batch(&pages[..4]);
    allocator.free_page_batch(&pages[..4]);
    assert_eq!(allocator.rejected_free_count(), 4);
    allocator.free_page_batch(&pages[4..8]);
    assert_eq!(sorted_free_blocks(&allocator), [(0, 3)]);
    allocator.assert_consistent();
}

#[test]
fn cache_refills_and_drains_in_batches() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 64];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 64)).unwrap();
    let mut cache = PerCpuPageCache::<8>::new();
    let words = handed_out_words(64);
    let handed_out = HandedOutPages::new(&words, frame(0));
    let page = cache.alloc(&mut allocator, &handed_out).unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(allocator.free_page_count(), 60);
    let mut pages = vec![page];
    pages.extend((0..9).map(|_| cache.alloc(&mut allocator, &handed_out).unwrap()));
    for &page in &pages {
        cache.free(page, &mut allocator, &handed_out).unwrap();
    }
    assert!(cache.len() <= 8);
    cache.drain_all(&mut allocator);
    assert!(cache.is_empty());
    assert_eq!(sorted_free_blocks(&allocator), [(0, 6)]);
    assert_eq!(allocator.rejected_free_count(), 0);
    allocator.assert_consistent();
}

#[test]
fn cache_runs_dry_with_the_global_allocator() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 8];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 3)).unwrap();
    let mut cache = PerCpuPageCache::<4>::default();
    let words = handed_out_words(8);
    let handed_out = HandedOutPages::new(&words, frame(0));
    let taken: Vec<_> = core::iter::from_fn(|| cache.alloc(&mut allocator, &handed_out)).collect();
    assert_eq!(taken.len(), 3);
    assert_eq!(cache.alloc(&mut allocator, &handed_out), None);
}

/// In every build (the check used to be a debug-only scan of the cache).
#[test]
fn cache_refuses_a_double_free_while_the_page_is_cached() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 8];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 8)).unwrap();
    let mut cache = PerCpuPageCache::<4>::new();
    let words = handed_out_words(8);
    let handed_out = HandedOutPages::new(&words, frame(0));
    let page = cache.alloc(&mut allocator, &handed_out).unwrap();
    cache.free(page, &mut allocator, &handed_out).unwrap();
    let len = cache.len();
    assert_eq!(
        cache.free(page, &mut allocator, &handed_out),
        Err(PageAllocError::DoubleFree)
    );
    assert_eq!(cache.len(), len);
    assert_eq!(allocator.rejected_free_count(), 1);
    // Never handed out by a cache, and outside the bits' span.
    assert_eq!(
        cache.free(frame(3), &mut allocator, &handed_out),
        Err(PageAllocError::DoubleFree)
    );
    assert_eq!(
        cache.free(frame(1000), &mut allocator, &handed_out),
        Err(PageAllocError::OutOfRange)
    );
    assert_eq!(allocator.rejected_free_count(), 3);
    let first = cache.alloc(&mut allocator, &handed_out).unwrap();
    let second = cache.alloc(&mut allocator, &handed_out).unwrap();
    assert_ne!(first, second);
}

#[test]
fn errors_display() {
    let message = std::format!(
        "{}",
        PageAllocError::WrongOrder {
            allocated: 2,
            given: 1
        }
    );
    assert_eq!(
        message,
        "block allocated with order 2 but freed with order 1"
    );
    assert_eq!(
        std::format!("{}", PageAllocError::DoubleFree),
        "pages are already free (double free)"
    );
    let block = PageBlock {
        start: frame(8),
        order: 3,
    };
    assert_eq!(block.range(), range(8, 8));
}

// ---------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------

/// A span with holes: `base`, its length, and the free ranges laid out in it.
#[derive(Clone, Debug)]
struct Layout {
    base: u64,
    length: u64,
    ranges: Vec<PageRange>,
}

/// Up to 8 ranges of 1..300 pages separated by gaps of 0..40 pages (a gap of 0 makes
/// adjacent ranges, which must merge), at an arbitrary (often unaligned) base, added
/// in a shuffled order.
fn layout() -> impl Strategy<Value = Layout> {
    (
        0u64..600,
        prop::collection::vec((0u64..40, 1u64..300), 1..8),
        0u64..20,
    )
        .prop_flat_map(|(base, pieces, trailing)| {
            let mut ranges = Vec::new();
            let mut next = base;
            for (gap, count) in pieces {
                next += gap;
                ranges.push(range(next, count));
                next += count;
            }
            let length = next + trailing - base;
            Just(ranges).prop_shuffle().prop_map(move |ranges| Layout {
                base,
                length,
                ranges,
            })
        })
}

#[derive(Clone, Debug)]
enum Operation {
    Alloc(u32),
    AllocPages(u64),
    /// Free the live allocation chosen by this index (modulo their number).
    Free(usize),
    /// Free an already freed block again.
    DoubleFree(usize),
    /// Free a live block with a wrong order, a wrong start or out of range.
    BadFree(usize, u8),
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => (0u32..7).prop_map(Operation::Alloc),
        1 => (1u64..40).prop_map(Operation::AllocPages),
        4 => any::<usize>().prop_map(Operation::Free),
        1 => any::<usize>().prop_map(Operation::DoubleFree),
        1 => (any::<usize>(), 0u8..5).prop_map(|(choice, kind)| Operation::BadFree(choice, kind)),
    ]
}

/// A live allocation in the model.
#[derive(Clone, Copy, Debug)]
enum Live {
    Block(u64, u32),
    Run(PageRange),
}

impl Live {
    fn pages(self) -> core::ops::Range<u64> {
        match self {
            Self::Block(start, order) => start..start + (1 << order),
            Self::Run(run) => run.start.as_u64()..run.start.as_u64() + run.count,
        }
    }
}

/// Whether the model's free pages contain an aligned block of `2^order` pages.
fn model_has_block(free: &BTreeSet<u64>, order: u32) -> bool {
    let size = 1u64 << order;
    free.iter()
        .filter(|&&page| page % size == 0)
        .any(|&page| (page..page + size).all(|p| free.contains(&p)))
}

fn free_set(available: &BTreeSet<u64>, owned: &BTreeSet<u64>) -> BTreeSet<u64> {
    available.difference(owned).copied().collect()
}

/// Checks the allocator's free blocks are exactly the model's free pages.
fn check_against_model(
    allocator: &BuddyAllocator<'_>,
    available: &BTreeSet<u64>,
    owned: &BTreeSet<u64>,
) -> Result<(), TestCaseError> {
    allocator.assert_consistent();
    let free = free_set(available, owned);
    prop_assert_eq!(allocator.free_page_count(), free.len() as u64);
    let mut listed = BTreeSet::new();
    for block in allocator.free_blocks() {
        prop_assert!(block.start.is_aligned(block.order));
        for page in block.range().start.as_u64()..block.range().start.as_u64() + block.page_count()
        {
            prop_assert!(free.contains(&page), "free block page {} not free", page);
            prop_assert!(listed.insert(page), "page {} listed twice", page);
        }
    }
    prop_assert_eq!(listed.len(), free.len());
    Ok(())
}

fn take_pages(
    owned: &mut BTreeSet<u64>,
    available: &BTreeSet<u64>,
    pages: core::ops::Range<u64>,
) -> Result<(), TestCaseError> {
    for page in pages {
        prop_assert!(
            available.contains(&page),
            "page {} handed out but never added",
            page
        );
        prop_assert!(owned.insert(page), "page {} handed out twice", page);
    }
    Ok(())
}

fn run_buddy_sequence(layout: &Layout, operations: &[Operation]) -> Result<(), TestCaseError> {
    let mut metadata = vec![PageMeta::UNAVAILABLE; layout.length as usize];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(layout.base));
    let mut available = BTreeSet::new();
    for &free_range in &layout.ranges {
        allocator.add_free_range(free_range).unwrap();
        available.extend(free_range.start.as_u64()..free_range.start.as_u64() + free_range.count);
        // Adding the same range again is an overlap and changes nothing.
        prop_assert_eq!(
            allocator.add_free_range(free_range),
            Err(PageAllocError::Overlap)
        );
    }
    let initial_blocks = canonical_blocks(&available);
    prop_assert_eq!(sorted_free_blocks(&allocator), initial_blocks.clone());

    let mut owned = BTreeSet::new();
    let mut live: Vec<Live> = Vec::new();
    let mut freed: Vec<Live> = Vec::new();
    for operation in operations {
        match *operation {
            Operation::Alloc(order) => match allocator.alloc(order) {
                Ok(start) => {
                    prop_assert!(start.is_aligned(order));
                    let block = Live::Block(start.as_u64(), order);
                    take_pages(&mut owned, &available, block.pages())?;
                    live.push(block);
                }
                Err(error) => {
                    prop_assert_eq!(error, PageAllocError::OutOfMemory);
                    let free = free_set(&available, &owned);
                    prop_assert!(!model_has_block(&free, order), "spurious OOM");
                }
            },
            Operation::AllocPages(count) => match allocator.alloc_pages(count) {
                Ok(run) => {
                    prop_assert_eq!(run.count, count);
                    let order = u64::BITS - (count - 1).leading_zeros();
                    prop_assert!(run.start.is_aligned(order));
                    take_pages(&mut owned, &available, Live::Run(run).pages())?;
                    live.push(Live::Run(run));
                }
                Err(error) => {
                    prop_assert_eq!(error, PageAllocError::OutOfMemory);
                    let order = u64::BITS - (count - 1).leading_zeros();
                    let free = free_set(&available, &owned);
                    prop_assert!(!model_has_block(&free, order), "spurious OOM");
                }
            },
            Operation::Free(choice) => {
                if live.is_empty() {
                    continue;
                }
                let victim = live.swap_remove(choice % live.len());
                match victim {
                    Live::Block(start, order) => allocator.free(frame(start), order).unwrap(),
                    Live::Run(run) => allocator.free_pages(run).unwrap(),
                }
                for page in victim.pages() {
                    owned.remove(&page);
                }
                freed.push(victim);
            }
            Operation::DoubleFree(choice) => {
                if freed.is_empty() {
                    continue;
                }
                let victim = freed[choice % freed.len()];
                // If any page was handed out again, the call could legitimately hit
                // the new owner's block; only test truly stale frees.
                if victim.pages().any(|page| owned.contains(&page)) {
                    continue;
                }
                let before = snapshot(&allocator);
                let result = match victim {
                    Live::Block(start, order) => allocator.free(frame(start), order),
                    Live::Run(run) => allocator.free_pages(run),
                };
                prop_assert_eq!(result, Err(PageAllocError::DoubleFree));
                prop_assert_eq!(snapshot(&allocator), before);
            }
            Operation::BadFree(choice, kind) => {
                let before = snapshot(&allocator);
                // A live block (the first aligned block of a run is one too); with
                // nothing live, any free is wrong, so any frame will do.
                let (start, order) = match live.get(choice % live.len().max(1)) {
                    Some(&Live::Block(start, order)) => (start, order),
                    Some(&Live::Run(run)) => {
                        let first = run.aligned_blocks().next().unwrap();
                        (first.start.as_u64(), first.order)
                    }
                    None => (layout.base, 0),
                };
                let end = layout.base + layout.length;
                let result = match kind {
                    0 => allocator.free(frame(start), order + 1),
                    1 if order > 0 => allocator.free(frame(start), order - 1),
                    1 => allocator.free(frame(start), order + 2),
                    2 => allocator.free(frame(end + (choice % 5) as u64), 0),
                    3 => allocator.free(frame(start), MAX_ORDER + 1 + (choice % 3) as u32),
                    _ if order > 0 => {
                        let result = allocator.free(frame(start + 1), 0);
                        prop_assert_eq!(result, Err(PageAllocError::NotAllocated));
                        result
                    }
                    _ => allocator.free(frame(start), 1),
                };
                prop_assert!(result.is_err(), "bad free {:?} accepted", operation);
                prop_assert_eq!(snapshot(&allocator), before);
            }
        }
        check_against_model(&allocator, &available, &owned)?;
    }

    for victim in live.drain(..) {
        match victim {
            Live::Block(start, order) => allocator.free(frame(start), order).unwrap(),
            Live::Run(run) => allocator.free_pages(run).unwrap(),
        }
        for page in victim.pages() {
            owned.remove(&page);
        }
    }
    check_against_model(&allocator, &available, &owned)?;
    prop_assert_eq!(sorted_free_blocks(&allocator), initial_blocks);
    Ok(())
}

#[derive(Clone, Debug)]
enum CacheOperation {
    Alloc,
    Free(usize),
    /// Free a page that was just freed into the cache again.
    DoubleFree,
    DrainAll,
}

fn cache_operation() -> impl Strategy<Value = CacheOperation> {
    prop_oneof![
        6 => Just(CacheOperation::Alloc),
        6 => any::<usize>().prop_map(CacheOperation::Free),
        1 => Just(CacheOperation::DoubleFree),
        1 => Just(CacheOperation::DrainAll),
    ]
}

fn run_cache_sequence(layout: &Layout, operations: &[CacheOperation]) -> Result<(), TestCaseError> {
    const CAPACITY: usize = 8;
    let mut metadata = vec![PageMeta::UNAVAILABLE; layout.length as usize];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(layout.base));
    let mut available = BTreeSet::new();
    for &free_range in &layout.ranges {
        allocator.add_free_range(free_range).unwrap();
        available.extend(free_range.start.as_u64()..free_range.start.as_u64() + free_range.count);
    }
    let initial_blocks = canonical_blocks(&available);
    let mut cache = PerCpuPageCache::<CAPACITY>::new();
    let words = handed_out_words(layout.length);
    let handed_out = HandedOutPages::new(&words, frame(layout.base));
    // Pages held by the user (not by the cache or the allocator).
    let mut owned = BTreeSet::new();
    let mut last_freed = None;
    for operation in operations {
        match *operation {
            CacheOperation::Alloc => match cache.alloc(&mut allocator, &handed_out) {
                Some(page) => {
                    take_pages(&mut owned, &available, page.as_u64()..page.as_u64() + 1)?;
                    if last_freed == Some(page) {
                        last_freed = None;
                    }
                }
                None => {
                    prop_assert!(cache.is_empty());
                    prop_assert_eq!(allocator.free_page_count(), 0);
                    prop_assert_eq!(owned.len(), available.len());
                }
            },
            CacheOperation::Free(choice) => {
                if owned.is_empty() {
                    continue;
                }
                let page = *owned.iter().nth(choice % owned.len()).unwrap();
                owned.remove(&page);
                cache
                    .free(frame(page), &mut allocator, &handed_out)
                    .unwrap();
                last_freed = Some(frame(page));
            }
            CacheOperation::DoubleFree => {
                // The most recent free is on top of the cache unless a drain moved it
                // to the allocator: either way the second free must be refused at
                // once, and change nothing. The run goes on allocating afterwards
                // (no drain), and `take_pages` fails if a page is handed out twice.
                let Some(page) = last_freed else { continue };
                let (length, rejected) = (cache.len(), allocator.rejected_free_count());
                let free_pages = allocator.free_page_count();
                let result = cache.free(page, &mut allocator, &handed_out);
                prop_assert_eq!(result, Err(PageAllocError::DoubleFree));
                prop_assert_eq!(cache.len(), length);
                prop_assert_eq!(allocator.free_page_count(), free_pages);
                prop_assert_eq!(allocator.rejected_free_count(), rejected + 1);
            }
            CacheOperation::DrainAll => cache.drain_all(&mut allocator),
        }
        prop_assert!(cache.len() <= CAPACITY);
        prop_assert_eq!(
            allocator.free_page_count() + cache.len() as u64 + owned.len() as u64,
            available.len() as u64
        );
    }
    cache.drain_all(&mut allocator);
    let pages: Vec<_> = owned.iter().map(|&page| frame(page)).collect();
    allocator.free_page_batch(&pages);
    owned.clear();
    check_against_model(&allocator, &available, &owned)?;
    prop_assert_eq!(sorted_free_blocks(&allocator), initial_blocks);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn buddy_matches_model(
        layout in layout(),
        operations in prop::collection::vec(operation(), 0..120),
    ) {
        run_buddy_sequence(&layout, &operations)?;
    }

    #[test]
    fn cache_over_buddy_matches_model(
        layout in layout(),
        operations in prop::collection::vec(cache_operation(), 0..300),
    ) {
        run_cache_sequence(&layout, &operations)?;
    }
}

/// Issue 13: a page freed twice, the second time after the cache had drained it to
/// the allocator, must be refused at once, so that it is never handed out to two
/// owners (the cache is LIFO: it would hand it out next).
#[test]
fn double_free_after_the_page_left_the_cache_hands_nothing_out_twice() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 8];
    let mut allocator = BuddyAllocator::new(&mut metadata, frame(0));
    allocator.add_free_range(range(0, 8)).unwrap();
    let mut cache = PerCpuPageCache::<4>::new();
    let words = handed_out_words(8);
    let handed_out = HandedOutPages::new(&words, frame(0));
    let page = cache.alloc(&mut allocator, &handed_out).unwrap();
    cache.free(page, &mut allocator, &handed_out).unwrap();
    cache.drain_all(&mut allocator);
    let second_free = cache.free(page, &mut allocator, &handed_out);
    let mut handed_out: Vec<_> =
        core::iter::from_fn(|| cache.alloc(&mut allocator, &handed_out)).collect();
    handed_out.sort_unstable();
    let distinct = handed_out.windows(2).all(|pair| pair[0] != pair[1]);
    assert!(distinct, "the same page handed out twice: {handed_out:?}");
    assert_eq!(handed_out.len(), 8);
    assert_eq!(second_free, Err(PageAllocError::DoubleFree));
    assert_eq!(allocator.rejected_free_count(), 1);
}

// ---------------------------------------------------------------------------------
// The shared composition: out of memory drains the caches (issue 13)
// ---------------------------------------------------------------------------------

/// The review's case: a 56-page machine whose pages all went through CPU 0's cache
/// (as the heap's trim frees them) and are all free; a 2-page run must be found, from
/// CPU 0 or CPU 1.
#[test]
fn out_of_memory_drains_the_caches_on_a_56_page_machine() {
    let mut metadata = vec![PageMeta::UNAVAILABLE; 56];
    let words = handed_out_words(56);
    let mut buddy = BuddyAllocator::new(&mut metadata, frame(0));
    buddy.add_free_range(range(0, 56)).unwrap();
    let shared = SharedPageAllocator::<NoInterruptMask, 2>::new(
        buddy,
        HandedOutPages::new(&words, frame(0)),
    );
    let pages: Vec<_> = core::iter::from_fn(|| shared.alloc_page(0)).collect();
    assert_eq!(pages.len(), 56);
    for &page in &pages {
        shared.free_page(0, page).unwrap();
    }
    assert_eq!(shared.free_page_count(), 56);
    let run = shared.alloc_pages(2);
    assert!(run.is_ok(), "2 of 56 free pages: {run:?}");
    // Pages cached on CPU 1 serve a single page on CPU 0 once CPU 0's cache and the
    // buddy allocator are empty.
    shared.free_pages(run.unwrap()).unwrap();
    let pages: Vec<_> = core::iter::from_fn(|| shared.alloc_page(1)).collect();
    assert_eq!(pages.len(), 56);
    for &page in &pages {
        shared.free_page(1, page).unwrap();
    }
    assert!(
        shared.alloc_page(0).is_some(),
        "56 pages free on CPU 1's cache"
    );
}

#[derive(Clone, Debug)]
enum SharedOperation {
    AllocPage(usize),
    FreePage(usize, usize),
    AllocPages(u64),
    FreeRun(usize),
}

fn shared_operation() -> impl Strategy<Value = SharedOperation> {
    prop_oneof![
        6 => (0usize..3).prop_map(SharedOperation::AllocPage),
        6 => (0usize..3, any::<usize>()).prop_map(|(cpu, choice)| SharedOperation::FreePage(cpu, choice)),
        2 => (1u64..20).prop_map(SharedOperation::AllocPages),
        2 => any::<usize>().prop_map(SharedOperation::FreeRun),
    ]
}

/// Whatever sits in which cache, an allocation fails only when the pages free in
/// total (buddy and every cache) hold no aligned block of the size it needs.
fn run_shared_sequence(
    layout: &Layout,
    operations: &[SharedOperation],
) -> Result<(), TestCaseError> {
    let mut metadata = vec![PageMeta::UNAVAILABLE; layout.length as usize];
    let words = handed_out_words(layout.length);
    let mut buddy = BuddyAllocator::new(&mut metadata, frame(layout.base));
    let mut available = BTreeSet::new();
    for &free_range in &layout.ranges {
        buddy.add_free_range(free_range).unwrap();
        available.extend(free_range.start.as_u64()..free_range.start.as_u64() + free_range.count);
    }
    let shared = SharedPageAllocator::<NoInterruptMask, 3, 8>::new(
        buddy,
        HandedOutPages::new(&words, frame(layout.base)),
    );
    let mut owned = BTreeSet::new();
    let mut single_pages: Vec<u64> = Vec::new();
    let mut runs: Vec<PageRange> = Vec::new();
    for operation in operations {
        match *operation {
            SharedOperation::AllocPage(cpu) => match shared.alloc_page(cpu) {
                Some(page) => {
                    take_pages(&mut owned, &available, page.as_u64()..page.as_u64() + 1)?;
                    single_pages.push(page.as_u64());
                }
                None => prop_assert_eq!(owned.len(), available.len(), "spurious OOM"),
            },
            SharedOperation::FreePage(cpu, choice) => {
                if single_pages.is_empty() {
                    continue;
                }
                let page = single_pages.swap_remove(choice % single_pages.len());
                shared.free_page(cpu, frame(page)).unwrap();
                owned.remove(&page);
            }
            SharedOperation::AllocPages(count) => match shared.alloc_pages(count) {
                Ok(run) => {
                    take_pages(
                        &mut owned,
                        &available,
                        run.start.as_u64()..run.start.as_u64() + count,
                    )?;
                    runs.push(run);
                }
                Err(error) => {
                    prop_assert_eq!(error, PageAllocError::OutOfMemory);
                    let order = u64::BITS - (count - 1).leading_zeros();
                    let free = free_set(&available, &owned);
                    prop_assert!(!model_has_block(&free, order), "spurious OOM");
                }
            },
            SharedOperation::FreeRun(choice) => {
                if runs.is_empty() {
                    continue;
                }
                let run = runs.swap_remove(choice % runs.len());
                shared.free_pages(run).unwrap();
                for page in run.start.as_u64()..run.start.as_u64() + run.count {
                    owned.remove(&page);
                }
            }
        }
        prop_assert_eq!(
            shared.free_page_count() + owned.len() as u64,
            available.len() as u64
        );
    }
    prop_assert_eq!(shared.rejected_free_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn shared_allocator_fails_only_when_memory_is_really_short(
        layout in layout(),
        operations in prop::collection::vec(shared_operation(), 0..300),
    ) {
        run_shared_sequence(&layout, &operations)?;
    }
}
