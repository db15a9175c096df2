//! `keel-pagealloc`: Keel's physical page allocator. It hands out naturally aligned
//! blocks of `2^order` 4 KiB page frames ([`BuddyAllocator`]) and single pages through
//! per-CPU caches ([`PerCpuPageCache`]) that reach the global allocator only in
//! batches ([`PageSource`]); the caches share one atomic bit per frame
//! ([`HandedOutPages`]) that refuses a double free of a single page at once.
//! Addresses and frame numbers are typed ([`PhysAddr`] and [`PageFrameNumber`],
//! `keel-types`' shared types re-exported here, and this crate's [`PageRange`],
//! [`PageBlock`]) and every refusal is a [`PageAllocError`].
//!
//! The crate is pure data structure: no hardware access, no global state, no heap, no
//! `unsafe` (it depends on `keel-sync`, for the atomics and the locks, and `keel-types`). The kernel binary owns the instances: it carves a [`PageMeta`] array out
//! of raw memory at boot, builds one [`BuddyAllocator`] over it, feeds it the usable
//! ranges of the firmware memory map with [`BuddyAllocator::add_free_range`], puts it
//! behind its lock, carves the [`HandedOutPages`] words beside the metadata and keeps
//! one [`PerCpuPageCache`] per CPU, all inside one [`SharedPageAllocator`] (each part
//! behind its own `keel_sync::IrqSpinLock`, whose guard masks interrupts), which drains every cache at out of memory
//! and retries, so no page is stranded in a cache. The kernel heap
//! (`keel-heap`) gets its pages from this allocator through the kernel, never
//! directly.
//!
//! # Why a buddy allocator
//!
//! The design is a binary buddy allocator over a page-metadata array, like Linux's
//! array of `struct page`: one small [`PageMeta`] slot per frame records whether the
//! frame heads a free or allocated block and of what order, and the per-order free
//! lists are doubly linked through those slots by `u32` index. OSv's page-range
//! allocator instead keeps free ranges in a size-ordered set and writes the range
//! headers into the free pages themselves. The buddy layout gives O(1) allocation and
//! O(log n) (at most [`MAX_ORDER`] steps) coalescing on free without a tree: a block's
//! buddy is found by flipping one bit of its frame number. Keeping the metadata
//! outside the free pages means the allocator never writes to the memory it manages,
//! so it needs no `unsafe` and can be tested on the host over any frame numbers; it
//! also lets [`BuddyAllocator::free`] check every call (double free, wrong order,
//! misaligned, foreign frame) against the metadata instead of trusting it. Natural
//! alignment makes order-9 blocks usable as 2 MiB huge pages. The cost of the design,
//! internal fragmentation for non-power-of-two runs, is avoided by
//! [`BuddyAllocator::alloc_pages`], which gives back the unused tail at once; its other
//! cost, a global lock on every page, is what [`PerCpuPageCache`] removes for the
//! common single-page case.
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use keel_pagealloc::{
//!     BuddyAllocator, HandedOutPages, PageAllocError, PageFrameNumber, PageMeta, PageRange,
//!     PerCpuPageCache,
//! };
//!
//! // The kernel carves these out of raw memory; 1024 slots describe 4 MiB.
//! let mut metadata = [PageMeta::UNAVAILABLE; 1024];
//! let mut global = BuddyAllocator::new(&mut metadata, PageFrameNumber::new(0));
//! let words = [const { AtomicU64::new(0) }; HandedOutPages::words_for(1024)];
//! let handed_out = HandedOutPages::new(&words, PageFrameNumber::new(0));
//! // Usable memory from the firmware map: everything above the first 1 MiB.
//! global.add_free_range(PageRange::new(PageFrameNumber::new(256), 768))?;
//!
//! let block = global.alloc(8)?; // 256 pages, 1 MiB-aligned
//! assert!(block.is_aligned(8));
//!
//! let mut cache = PerCpuPageCache::<64>::new(); // one per CPU
//! let page = cache.alloc(&mut global, &handed_out).expect("out of memory");
//! cache.free(page, &mut global, &handed_out)?;
//! // A second free is refused at once, and counted.
//! assert_eq!(cache.free(page, &mut global, &handed_out), Err(PageAllocError::DoubleFree));
//! assert_eq!(global.rejected_free_count(), 1);
//! cache.drain_all(&mut global);
//!
//! global.free(block, 8)?;
//! assert_eq!(global.free_page_count(), 768);
//! # Ok::<(), keel_pagealloc::PageAllocError>(())
//! ```
//!
//! # Limits
//!
//! One allocator covers at most [`MAX_PAGES`] frames (`u32::MAX`, just under 16 TiB),
//! because the free-list links are `u32` metadata indices; a larger machine uses one
//! allocator per zone or node. Blocks are at most `2^MAX_ORDER` frames (1 GiB).

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

mod address;
mod buddy;
mod cache;
mod error;
mod handed_out;
mod shared;

#[cfg(test)]
mod tests;

pub use address::{
    AlignedBlocks, PAGE_SHIFT, PAGE_SIZE, PageBlock, PageFrameNumber, PageRange, PhysAddr,
};
pub use buddy::{BuddyAllocator, FreeBlocks, PageMeta, metadata_bytes};
pub use cache::{DEFAULT_CACHE_CAPACITY, PageSource, PerCpuPageCache};
pub use error::PageAllocError;
pub use handed_out::HandedOutPages;
pub use shared::SharedPageAllocator;

/// The largest block order: blocks hold at most `2^18` frames (1 GiB).
pub const MAX_ORDER: u32 = 18;

/// The number of block orders, `0..=MAX_ORDER`.
pub const ORDER_COUNT: usize = MAX_ORDER as usize + 1;

/// The most frames one [`BuddyAllocator`] can cover: its free-list links are `u32`
/// metadata indices with `u32::MAX` reserved as "none".
pub const MAX_PAGES: u64 = u32::MAX as u64;
