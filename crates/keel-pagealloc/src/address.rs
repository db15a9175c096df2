//! Page ranges and aligned blocks, over `keel-types`' physical addresses and page
//! frame numbers.

use crate::MAX_ORDER;

// The address types and page size are `keel-types`' (the vocabulary every crate
// shares); re-exported from the crate root so `keel_pagealloc::PhysAddr` still names
// them.
pub use keel_types::{PAGE_SHIFT, PAGE_SIZE, PageFrameNumber, PhysAddr};

/// A run of `count` consecutive page frames starting at `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRange {
    /// The first frame of the range.
    pub start: PageFrameNumber,
    /// How many frames the range holds.
    pub count: u64,
}

impl PageRange {
    /// The range `[start, start + count)`.
    #[must_use]
    pub const fn new(start: PageFrameNumber, count: u64) -> Self {
        Self { start, count }
    }

    /// The whole frames inside the byte range `[start, end)`: the start is rounded up
    /// and the end down, so partial pages at either end are left out. This is the
    /// shape of a firmware memory-map entry.
    #[must_use]
    pub const fn from_phys_range(start: PhysAddr, end: PhysAddr) -> Self {
        let first = match start.align_up_to_page() {
            Some(aligned) => aligned.as_u64() >> PAGE_SHIFT,
            None => PageFrameNumber::LIMIT,
        };
        let last = end.as_u64() >> PAGE_SHIFT;
        Self {
            start: PageFrameNumber::new(first),
            count: last.saturating_sub(first),
        }
    }

    /// The frame one past the end, or `None` if that overflows a `u64`.
    #[must_use]
    pub const fn end(self) -> Option<PageFrameNumber> {
        self.start.checked_add(self.count)
    }

    /// Whether the range holds no frame.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.count == 0
    }

    /// Whether `frame` lies in the range.
    #[must_use]
    pub const fn contains(self, frame: PageFrameNumber) -> bool {
        frame.as_u64() >= self.start.as_u64() && frame.as_u64() - self.start.as_u64() < self.count
    }

    /// The range's decomposition into maximal naturally aligned blocks, lowest first,
    /// each at most `2^MAX_ORDER` pages. This is exactly how
    /// [`BuddyAllocator::add_free_range`](crate::BuddyAllocator::add_free_range)
    /// splits a range. A range whose end overflows is cut at `u64::MAX`.
    #[must_use]
    pub const fn aligned_blocks(self) -> AlignedBlocks {
        AlignedBlocks {
            next: self.start.as_u64(),
            end: self.start.as_u64().saturating_add(self.count),
        }
    }
}

/// A naturally aligned block of `2^order` page frames, the unit the buddy allocator
/// hands out and keeps on its free lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageBlock {
    /// The first frame; a multiple of `2^order`.
    pub start: PageFrameNumber,
    /// The block holds `2^order` frames.
    pub order: u32,
}

impl PageBlock {
    /// How many frames the block holds.
    #[must_use]
    pub const fn page_count(self) -> u64 {
        1 << self.order
    }

    /// The block as a page range.
    #[must_use]
    pub const fn range(self) -> PageRange {
        PageRange::new(self.start, self.page_count())
    }
}

/// Iterator over the maximal aligned blocks of a range; see
/// [`PageRange::aligned_blocks`].
#[derive(Clone, Debug)]
pub struct AlignedBlocks {
    next: u64,
    end: u64,
}

impl Iterator for AlignedBlocks {
    type Item = PageBlock;

    fn next(&mut self) -> Option<PageBlock> {
        if self.next >= self.end {
            return None;
        }
        let order = largest_order(self.next, self.end - self.next);
        let block = PageBlock {
            start: PageFrameNumber::new(self.next),
            order,
        };
        self.next += 1 << order;
        Some(block)
    }
}

/// The largest order `o <= MAX_ORDER` such that `start` is a multiple of `2^o` and
/// `2^o <= remaining`. `remaining` must be nonzero.
pub(crate) const fn largest_order(start: u64, remaining: u64) -> u32 {
    let by_alignment = start.trailing_zeros(); // 64 for start == 0
    let by_length = u64::BITS - 1 - remaining.leading_zeros();
    let order = if by_alignment < by_length {
        by_alignment
    } else {
        by_length
    };
    if order < MAX_ORDER { order } else { MAX_ORDER }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_from_phys_drops_partial_pages() {
        let range = PageRange::from_phys_range(PhysAddr::new(0x1001), PhysAddr::new(0x5fff));
        assert_eq!(range, PageRange::new(PageFrameNumber::new(2), 3));
        let empty = PageRange::from_phys_range(PhysAddr::new(0x1001), PhysAddr::new(0x1fff));
        assert!(empty.is_empty());
    }

    #[test]
    fn aligned_blocks_are_maximal() {
        let blocks: std::vec::Vec<_> = PageRange::new(PageFrameNumber::new(3), 14)
            .aligned_blocks()
            .map(|block| (block.start.as_u64(), block.order))
            .collect();
        // [3,4) [4,8) [8,16) [16,17)
        assert_eq!(blocks, [(3, 0), (4, 2), (8, 3), (16, 0)]);
        let capped: std::vec::Vec<_> = PageRange::new(PageFrameNumber::new(0), 3 << MAX_ORDER)
            .aligned_blocks()
            .map(|block| block.order)
            .collect();
        assert_eq!(capped, [MAX_ORDER; 3]);
    }
}
