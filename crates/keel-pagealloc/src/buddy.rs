//! The binary buddy allocator and its per-page metadata.

use core::fmt;

use crate::address::{PageBlock, PageFrameNumber, PageRange};
use crate::error::PageAllocError;
use crate::{MAX_ORDER, MAX_PAGES, ORDER_COUNT};

/// The "no page" value of a free-list link.
const NIL: u32 = u32::MAX;

/// What the allocator knows about one page frame.
///
/// Only the first page (the *head*) of a block carries the block's state and order;
/// every other page of a free or allocated block is a [`PageState::Tail`]. So the
/// states of all heads describe the whole partition of the available pages into
/// blocks, which is what lets `free` tell a double free from a wrong argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum PageState {
    /// Not usable memory: never given to `add_free_range`.
    Unavailable,
    /// Usable, and inside a block whose head is another page.
    Tail,
    /// Head of a free block, linked into the free list of its order.
    Free,
    /// Head of an allocated block.
    Allocated,
}

/// The allocator's record of one page frame: one slot of the metadata array, like
/// Linux's `struct page`.
///
/// `size_of::<PageMeta>()` is 12 bytes (two `u32` free-list links, a state byte and
/// an order byte, padded to 4-byte alignment); it is guaranteed to stay at most 16
/// ([`PageMeta::SIZE`]). So the array for 1 GiB of memory (262 144 pages) takes 3 MiB,
/// 0.3 % of the memory it describes. [`metadata_bytes`] computes the size for a span.
///
/// The kernel carves the array out of raw memory, writes [`PageMeta::UNAVAILABLE`]
/// into each slot and hands it to [`BuddyAllocator::new`]; the fields are private so
/// nothing else can break the allocator's invariants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMeta {
    /// Free-list link to the previous free block of the same order (a metadata
    /// index), or `NIL`. Meaningful only for `Free` heads.
    previous: u32,
    /// Free-list link to the next free block of the same order, or `NIL`.
    next: u32,
    state: PageState,
    /// The block's order; meaningful only for `Free` and `Allocated` heads.
    order: u8,
}

impl PageMeta {
    /// The value of a page that is not usable memory. Every slot starts as this.
    pub const UNAVAILABLE: Self = Self {
        previous: NIL,
        next: NIL,
        state: PageState::Unavailable,
        order: 0,
    };

    /// `size_of::<PageMeta>()`: 12 bytes, never more than 16.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// A usable page inside a block (not its head).
    const TAIL: Self = Self {
        previous: NIL,
        next: NIL,
        state: PageState::Tail,
        order: 0,
    };

    /// The head of an allocated block of `2^order` pages.
    const fn allocated(order: u32) -> Self {
        Self {
            previous: NIL,
            next: NIL,
            state: PageState::Allocated,
            order: order as u8,
        }
    }
}

const _: () = assert!(PageMeta::SIZE <= 16);
const _: () = assert!(MAX_ORDER < 32 && MAX_ORDER <= u8::MAX as u32);

/// How many bytes of [`PageMeta`] slots a span of `page_count` pages needs.
#[must_use]
pub const fn metadata_bytes(page_count: u64) -> u64 {
    page_count * PageMeta::SIZE as u64
}

/// A binary buddy allocator of physical page frames.
///
/// It covers the frames `[base, base + metadata.len())`; slot `i` of the metadata array
/// describes frame `base + i`. Blocks are `2^order` frames for `order <= MAX_ORDER`,
/// naturally aligned in frame numbers (so an order-9 block is a 2 MiB-aligned 2 MiB
/// run, usable as a huge page) regardless of `base`.
///
/// Each order has a doubly-linked free list threaded through the metadata slots of
/// the free blocks' heads, by `u32` index; a bit mask records which lists are
/// non-empty. `alloc` is therefore O(1) plus O(order) splitting and `free` is O(1)
/// plus O(`MAX_ORDER`) merging, with no search and no memory of its own.
///
/// Not thread-safe by itself: the kernel owns each instance behind its lock, and CPUs
/// take single pages through a [`PerCpuPageCache`](crate::PerCpuPageCache) so the lock
/// is taken once per batch.
pub struct BuddyAllocator<'m> {
    metadata: &'m mut [PageMeta],
    /// The frame number described by `metadata[0]`.
    base: u64,
    /// Metadata index of the first free block of each order, or `NIL`.
    free_heads: [u32; ORDER_COUNT],
    /// Bit `o` is set iff `free_heads[o] != NIL`.
    nonempty_orders: u32,
    /// Pages in free blocks.
    free_pages: u64,
    /// Pages made available by `add_free_range`.
    available_pages: u64,
    /// Frees refused inside [`PageSource::free_page_batch`](crate::PageSource), which
    /// cannot return an error, and frees refused by a cache over this allocator.
    pub(crate) rejected_frees: u64,
}

impl fmt::Debug for BuddyAllocator<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("BuddyAllocator")
            .field("span", &self.span())
            .field("available_pages", &self.available_pages)
            .field("free_pages", &self.free_pages)
            .field(
                "nonempty_orders",
                &format_args!("{:#b}", self.nonempty_orders),
            )
            .field("rejected_frees", &self.rejected_frees)
            .finish_non_exhaustive()
    }
}

impl<'m> BuddyAllocator<'m> {
    /// An allocator covering frames `[base, base + metadata.len())`, all unavailable
    /// until given to [`add_free_range`](Self::add_free_range). Every slot is
    /// (re)written to [`PageMeta::UNAVAILABLE`], so the slice may hold anything.
    ///
    /// # Errors
    ///
    /// [`PageAllocError::TooManyPages`] if the slice is longer than [`MAX_PAGES`];
    /// [`PageAllocError::OutOfRange`] if `base + metadata.len()` overflows.
    pub fn try_new(
        metadata: &'m mut [PageMeta],
        base: PageFrameNumber,
    ) -> Result<Self, PageAllocError> {
        let page_count = metadata.len() as u64;
        if page_count > MAX_PAGES {
            return Err(PageAllocError::TooManyPages);
        }
        if base.checked_add(page_count).is_none() {
            return Err(PageAllocError::OutOfRange);
        }
        metadata.fill(PageMeta::UNAVAILABLE);
        Ok(Self {
            metadata,
            base: base.as_u64(),
            free_heads: [NIL; ORDER_COUNT],
            nonempty_orders: 0,
            free_pages: 0,
            available_pages: 0,
            rejected_frees: 0,
        })
    }

    /// Like [`try_new`](Self::try_new).
    ///
    /// # Panics
    ///
    /// If the slice is longer than [`MAX_PAGES`] or `base + metadata.len()` overflows.
    #[must_use]
    pub fn new(metadata: &'m mut [PageMeta], base: PageFrameNumber) -> Self {
        match Self::try_new(metadata, base) {
            Ok(allocator) => allocator,
            Err(error) => panic!("cannot build a BuddyAllocator: {error}"),
        }
    }

    /// The frames this allocator covers (available or not).
    #[must_use]
    pub fn span(&self) -> PageRange {
        PageRange::new(PageFrameNumber::new(self.base), self.metadata.len() as u64)
    }

    /// Pages currently in free blocks.
    #[must_use]
    pub fn free_page_count(&self) -> u64 {
        self.free_pages
    }

    /// Pages made available so far by [`add_free_range`](Self::add_free_range).
    #[must_use]
    pub fn available_page_count(&self) -> u64 {
        self.available_pages
    }

    /// How many frees [`PageSource::free_page_batch`](crate::PageSource) refused
    /// (double frees, foreign pages…), plus the double frees that a
    /// [`PerCpuPageCache`](crate::PerCpuPageCache) over this allocator refused and
    /// reported with [`PageSource::count_rejected_free`](crate::PageSource). The batch
    /// method cannot return an error, so it counts them here; the kernel should treat
    /// a nonzero count as a bug report.
    #[must_use]
    pub fn rejected_free_count(&self) -> u64 {
        self.rejected_frees
    }

    /// The free blocks, by increasing order and, within an order, most recently freed
    /// first.
    #[must_use]
    pub fn free_blocks(&self) -> FreeBlocks<'_> {
        FreeBlocks {
            allocator: self,
            order: 0,
            index: self.free_heads[0],
        }
    }

    /// Makes the frames of `range` available for allocation. The range need not be
    /// aligned: it is split into its maximal naturally aligned blocks (see
    /// [`PageRange::aligned_blocks`]), which merge with adjacent free buddies, so
    /// adding `[0, 4)` then `[4, 8)` gives one order-3 block. O(range length).
    /// An empty range is accepted and changes nothing.
    ///
    /// # Errors
    ///
    /// [`PageAllocError::OutOfRange`] if the range is not inside [`span`](Self::span);
    /// [`PageAllocError::Overlap`] if any of its frames was already made available. In
    /// both cases nothing is added.
    pub fn add_free_range(&mut self, range: PageRange) -> Result<(), PageAllocError> {
        if range.is_empty() {
            return Ok(());
        }
        let start = self
            .index_of(range.start)
            .ok_or(PageAllocError::OutOfRange)?;
        let end = start
            .checked_add(range.count)
            .filter(|&end| end <= self.metadata.len() as u64)
            .ok_or(PageAllocError::OutOfRange)?;
        let slots = &mut self.metadata[start as usize..end as usize];
        if slots
            .iter()
            .any(|slot| slot.state != PageState::Unavailable)
        {
            return Err(PageAllocError::Overlap);
        }
        slots.fill(PageMeta::TAIL);
        for block in range.aligned_blocks() {
            let index = (block.start.as_u64() - self.base) as u32;
            self.release(index, block.start.as_u64(), block.order);
        }
        self.available_pages += range.count;
        Ok(())
    }

    /// Allocates a naturally aligned block of `2^order` frames and returns its first
    /// frame. Takes the most recently freed block of the smallest order that fits,
    /// splitting it if needed.
    ///
    /// # Errors
    ///
    /// [`PageAllocError::InvalidOrder`] if `order > MAX_ORDER`;
    /// [`PageAllocError::OutOfMemory`] if no free block is large enough.
    pub fn alloc(&mut self, order: u32) -> Result<PageFrameNumber, PageAllocError> {
        if order > MAX_ORDER {
            return Err(PageAllocError::InvalidOrder { order });
        }
        let candidates = self.nonempty_orders & (u32::MAX << order);
        if candidates == 0 {
            return Err(PageAllocError::OutOfMemory);
        }
        let mut current = candidates.trailing_zeros();
        let index = self.free_heads[current as usize];
        self.unlink(index, current);
        while current > order {
            current -= 1;
            self.push(index + (1 << current), current);
        }
        self.metadata[index as usize] = PageMeta::allocated(order);
        self.free_pages -= 1 << order;
        Ok(PageFrameNumber::new(self.base + u64::from(index)))
    }

    /// Frees the block of `2^order` frames starting at `frame`, which must have come
    /// from [`alloc`](Self::alloc) with the same order, and merges it with free
    /// buddies.
    ///
    /// # Errors
    ///
    /// The call is checked against the metadata and refused, leaving the allocator
    /// unchanged, with [`PageAllocError::InvalidOrder`], [`PageAllocError::OutOfRange`],
    /// [`PageAllocError::Misaligned`], [`PageAllocError::DoubleFree`] (the frame is in a
    /// free block), [`PageAllocError::WrongOrder`] or [`PageAllocError::NotAllocated`]
    /// (the frame was never available or is inside another allocated block). A stale
    /// free of a block that has since been allocated again cannot be detected: to the
    /// allocator it is the new owner's block.
    pub fn free(&mut self, frame: PageFrameNumber, order: u32) -> Result<(), PageAllocError> {
        let index = self.check_allocated_block(frame, order)?;
        self.release(index, frame.as_u64(), order);
        Ok(())
    }

    /// Allocates exactly `count` consecutive frames (not necessarily a power of two).
    ///
    /// It takes a block of the next power of two, aligned to it, and gives the unused
    /// tail back at once, so nothing is wasted. The run is recorded as its maximal
    /// aligned blocks (see [`PageRange::aligned_blocks`]), so it must be freed with
    /// [`free_pages`](Self::free_pages) and the same range, or block by block with
    /// [`free`](Self::free).
    ///
    /// # Errors
    ///
    /// [`PageAllocError::EmptyRequest`] for `count == 0`;
    /// [`PageAllocError::InvalidOrder`] if `count > 2^MAX_ORDER`;
    /// [`PageAllocError::OutOfMemory`] if no free block of the rounded-up size exists.
    pub fn alloc_pages(&mut self, count: u64) -> Result<PageRange, PageAllocError> {
        if count == 0 {
            return Err(PageAllocError::EmptyRequest);
        }
        let order = u64::BITS - (count - 1).leading_zeros();
        let start = self.alloc(order)?;
        let range = PageRange::new(start, count);
        if count != 1 << order {
            for block in range.aligned_blocks() {
                let index = block.start.as_u64() - self.base;
                self.metadata[index as usize] = PageMeta::allocated(block.order);
            }
            let unused = PageRange::new(
                PageFrameNumber::new(start.as_u64() + count),
                (1 << order) - count,
            );
            for block in unused.aligned_blocks() {
                let index = (block.start.as_u64() - self.base) as u32;
                self.release(index, block.start.as_u64(), block.order);
            }
        }
        Ok(range)
    }

    /// Frees a run allocated by [`alloc_pages`](Self::alloc_pages) (or any range made
    /// of allocated blocks that are exactly its maximal aligned blocks). All-or-nothing:
    /// every block is checked before any is freed.
    ///
    /// # Errors
    ///
    /// [`PageAllocError::EmptyRequest`] for an empty range, [`PageAllocError::OutOfRange`]
    /// if it overflows, else the first error [`free`](Self::free) would report for one
    /// of its blocks.
    pub fn free_pages(&mut self, range: PageRange) -> Result<(), PageAllocError> {
        if range.is_empty() {
            return Err(PageAllocError::EmptyRequest);
        }
        if range.end().is_none() {
            return Err(PageAllocError::OutOfRange);
        }
        for block in range.aligned_blocks() {
            self.check_allocated_block(block.start, block.order)?;
        }
        for block in range.aligned_blocks() {
            let index = (block.start.as_u64() - self.base) as u32;
            self.release(index, block.start.as_u64(), block.order);
        }
        Ok(())
    }

    /// The metadata index of `frame`, if it is inside the span.
    fn index_of(&self, frame: PageFrameNumber) -> Option<u64> {
        let index = frame.as_u64().checked_sub(self.base)?;
        (index < self.metadata.len() as u64).then_some(index)
    }

    /// Checks that `[frame, frame + 2^order)` is an allocated block and returns the
    /// metadata index of its head; otherwise says what is wrong with it.
    fn check_allocated_block(
        &self,
        frame: PageFrameNumber,
        order: u32,
    ) -> Result<u32, PageAllocError> {
        if order > MAX_ORDER {
            return Err(PageAllocError::InvalidOrder { order });
        }
        let index = self.index_of(frame).ok_or(PageAllocError::OutOfRange)?;
        if !frame.is_aligned(order) {
            return Err(PageAllocError::Misaligned);
        }
        if index + (1 << order) > self.metadata.len() as u64 {
            return Err(PageAllocError::OutOfRange);
        }
        let slot = self.metadata[index as usize];
        match slot.state {
            PageState::Allocated if u32::from(slot.order) == order => Ok(index as u32),
            PageState::Allocated => Err(PageAllocError::WrongOrder {
                allocated: u32::from(slot.order),
                given: order,
            }),
            PageState::Free => Err(PageAllocError::DoubleFree),
            PageState::Unavailable => Err(PageAllocError::NotAllocated),
            PageState::Tail => match self.containing_block_state(frame.as_u64()) {
                Some(PageState::Free) => Err(PageAllocError::DoubleFree),
                _ => Err(PageAllocError::NotAllocated),
            },
        }
    }

    /// The state of the head of the block containing the tail page `frame`. O(MAX_ORDER):
    /// the head is `frame` rounded down to the block's order, so look at each
    /// candidate head from the smallest order up.
    fn containing_block_state(&self, frame: u64) -> Option<PageState> {
        (1..=MAX_ORDER).find_map(|order| {
            let head = frame & !((1u64 << order) - 1);
            let slot = self.metadata[self.index_of(PageFrameNumber::new(head))? as usize];
            let is_head = matches!(slot.state, PageState::Free | PageState::Allocated);
            (is_head && u32::from(slot.order) >= order).then_some(slot.state)
        })
    }

    /// Turns the block of `2^order` pages at metadata `index` (frame `frame`), whose
    /// pages are all `Tail` except possibly its head, into free memory: merges it with
    /// its buddy while the buddy is a free block of the same order, then links the
    /// result into its free list.
    fn release(&mut self, mut index: u32, mut frame: u64, mut order: u32) {
        self.free_pages += 1 << order;
        while order < MAX_ORDER {
            let buddy_frame = frame ^ (1 << order);
            let Some(buddy_index) = self.index_of(PageFrameNumber::new(buddy_frame)) else {
                break;
            };
            let buddy_index = buddy_index as u32;
            let buddy = self.metadata[buddy_index as usize];
            if buddy.state != PageState::Free || u32::from(buddy.order) != order {
                break;
            }
            self.unlink(buddy_index, order);
            let higher = if buddy_frame > frame {
                buddy_index
            } else {
                index
            };
            self.metadata[higher as usize] = PageMeta::TAIL;
            index = index.min(buddy_index);
            frame = frame.min(buddy_frame);
            order += 1;
        }
        self.push(index, order);
    }

    /// Makes metadata `index` the head of a free block of `order` at the front of its
    /// list.
    fn push(&mut self, index: u32, order: u32) {
        let head = self.free_heads[order as usize];
        self.metadata[index as usize] = PageMeta {
            previous: NIL,
            next: head,
            state: PageState::Free,
            order: order as u8,
        };
        if head != NIL {
            self.metadata[head as usize].previous = index;
        }
        self.free_heads[order as usize] = index;
        self.nonempty_orders |= 1 << order;
    }

    /// Takes the free block at metadata `index` off the list of `order`. The caller
    /// rewrites its slot.
    fn unlink(&mut self, index: u32, order: u32) {
        let PageMeta { previous, next, .. } = self.metadata[index as usize];
        if previous == NIL {
            self.free_heads[order as usize] = next;
            if next == NIL {
                self.nonempty_orders &= !(1 << order);
            }
        } else {
            self.metadata[previous as usize].next = next;
        }
        if next != NIL {
            self.metadata[next as usize].previous = previous;
        }
    }

    /// Checks every invariant, panicking on the first broken one (tests only). O(span).
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let mut listed_pages = 0;
        let mut listed_heads = 0;
        for order in 0..=MAX_ORDER {
            let head = self.free_heads[order as usize];
            assert_eq!(head == NIL, self.nonempty_orders & (1 << order) == 0);
            let mut previous = NIL;
            let mut index = head;
            while index != NIL {
                let slot = self.metadata[index as usize];
                assert_eq!(slot.state, PageState::Free);
                assert_eq!(u32::from(slot.order), order);
                assert_eq!(slot.previous, previous);
                let frame = self.base + u64::from(index);
                assert!(PageFrameNumber::new(frame).is_aligned(order));
                assert!(u64::from(index) + (1 << order) <= self.metadata.len() as u64);
                // Eager merging: no free buddy of the same order.
                if order < MAX_ORDER
                    && let Some(buddy) = self.index_of(PageFrameNumber::new(frame ^ (1 << order)))
                {
                    let buddy = self.metadata[buddy as usize];
                    assert!(!(buddy.state == PageState::Free && u32::from(buddy.order) == order));
                }
                listed_pages += 1u64 << order;
                listed_heads += 1;
                previous = index;
                index = slot.next;
            }
        }
        assert_eq!(listed_pages, self.free_pages);
        // Walk the partition of the span into unavailable pages and blocks.
        let mut index = 0usize;
        let mut free_heads = 0;
        let mut available = 0;
        while index < self.metadata.len() {
            let slot = self.metadata[index];
            match slot.state {
                PageState::Unavailable => index += 1,
                PageState::Tail => panic!("tail page {index} outside any block"),
                PageState::Free | PageState::Allocated => {
                    if slot.state == PageState::Free {
                        free_heads += 1;
                    }
                    let size = 1usize << slot.order;
                    for tail in &self.metadata[index + 1..index + size] {
                        assert_eq!(tail.state, PageState::Tail);
                    }
                    available += size as u64;
                    index += size;
                }
            }
        }
        assert_eq!(free_heads, listed_heads);
        assert_eq!(available, self.available_pages);
    }
}

/// Iterator over a [`BuddyAllocator`]'s free blocks; see
/// [`BuddyAllocator::free_blocks`].
#[derive(Debug)]
pub struct FreeBlocks<'a> {
    allocator: &'a BuddyAllocator<'a>,
    order: u32,
    index: u32,
}

impl Iterator for FreeBlocks<'_> {
    type Item = PageBlock;

    fn next(&mut self) -> Option<PageBlock> {
        while self.index == NIL {
            if self.order >= MAX_ORDER {
                return None;
            }
            self.order += 1;
            self.index = self.allocator.free_heads[self.order as usize];
        }
        let index = self.index;
        self.index = self.allocator.metadata[index as usize].next;
        Some(PageBlock {
            start: PageFrameNumber::new(self.allocator.base + u64::from(index)),
            order: self.order,
        })
    }
}
