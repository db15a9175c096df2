//! Typed physical addresses, page frame numbers, page ranges and aligned blocks.

use core::fmt;

use crate::MAX_ORDER;

/// The size of one page frame in bytes (4 KiB, the x86-64 base page).
pub const PAGE_SIZE: u64 = 4096;

/// `log2(PAGE_SIZE)`: how far a physical address is shifted to get its frame number.
pub const PAGE_SHIFT: u32 = PAGE_SIZE.trailing_zeros();

/// A physical memory address in bytes.
///
/// Any `u64` is accepted; the allocator itself never dereferences one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysAddr(pub u64);

impl PhysAddr {
    /// Wraps a raw physical address.
    #[must_use]
    pub const fn new(address: u64) -> Self {
        Self(address)
    }

    /// The raw address.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address is a multiple of [`PAGE_SIZE`] (the start of a page frame).
    #[must_use]
    pub const fn page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }

    /// The address rounded down to the start of its page frame.
    #[must_use]
    pub const fn align_down_to_page(self) -> Self {
        Self(self.0 & !(PAGE_SIZE - 1))
    }

    /// The address rounded up to the next page boundary, or `None` on overflow.
    #[must_use]
    pub const fn align_up_to_page(self) -> Option<Self> {
        match self.0.checked_add(PAGE_SIZE - 1) {
            Some(sum) => Some(Self(sum & !(PAGE_SIZE - 1))),
            None => None,
        }
    }

    /// The page frame that contains this address.
    #[must_use]
    pub const fn containing_frame(self) -> PageFrameNumber {
        PageFrameNumber(self.0 >> PAGE_SHIFT)
    }

    /// The byte offset of the address inside its page frame.
    #[must_use]
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:#x}", self.0)
    }
}

impl From<PageFrameNumber> for PhysAddr {
    /// The start address of the frame. Frame numbers at or above
    /// [`PageFrameNumber::LIMIT`] have no address; their high bits are lost (use
    /// [`PageFrameNumber::start_address`] to check).
    fn from(frame: PageFrameNumber) -> Self {
        Self(frame.0 << PAGE_SHIFT)
    }
}

/// The number of a physical page frame: its start address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageFrameNumber(pub u64);

impl PageFrameNumber {
    /// The first frame number whose start address does not fit in a `u64`.
    pub const LIMIT: u64 = 1 << (64 - PAGE_SHIFT);

    /// Wraps a raw frame number.
    #[must_use]
    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    /// The raw frame number.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The frame's start address, or `None` if the frame number is at or above
    /// [`Self::LIMIT`].
    #[must_use]
    pub const fn start_address(self) -> Option<PhysAddr> {
        if self.0 < Self::LIMIT {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        } else {
            None
        }
    }

    /// Whether the frame number is a multiple of `2^order`, i.e. whether a block of
    /// `2^order` pages may start here. Orders of 64 and above are never aligned.
    #[must_use]
    pub const fn is_aligned(self, order: u32) -> bool {
        order < 64 && self.0 & ((1u64 << order) - 1) == 0
    }

    /// The frame `count` frames further on, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, count: u64) -> Option<Self> {
        match self.0.checked_add(count) {
            Some(number) => Some(Self(number)),
            None => None,
        }
    }
}

impl fmt::Display for PageFrameNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "pfn {:#x}", self.0)
    }
}

impl From<PhysAddr> for PageFrameNumber {
    /// The frame containing the address (rounding down).
    fn from(address: PhysAddr) -> Self {
        address.containing_frame()
    }
}

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
            Some(aligned) => aligned.0 >> PAGE_SHIFT,
            None => PageFrameNumber::LIMIT,
        };
        let last = end.0 >> PAGE_SHIFT;
        Self {
            start: PageFrameNumber(first),
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
        frame.0 >= self.start.0 && frame.0 - self.start.0 < self.count
    }

    /// The range's decomposition into maximal naturally aligned blocks, lowest first,
    /// each at most `2^MAX_ORDER` pages. This is exactly how
    /// [`BuddyAllocator::add_free_range`](crate::BuddyAllocator::add_free_range)
    /// splits a range. A range whose end overflows is cut at `u64::MAX`.
    #[must_use]
    pub const fn aligned_blocks(self) -> AlignedBlocks {
        AlignedBlocks {
            next: self.start.0,
            end: self.start.0.saturating_add(self.count),
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
            start: PageFrameNumber(self.next),
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
    fn address_conversions() {
        let address = PhysAddr::new(0x1234_5678);
        assert!(!address.page_aligned());
        assert_eq!(address.align_down_to_page(), PhysAddr(0x1234_5000));
        assert_eq!(address.align_up_to_page(), Some(PhysAddr(0x1234_6000)));
        assert_eq!(address.page_offset(), 0x678);
        assert_eq!(address.containing_frame(), PageFrameNumber(0x12345));
        assert_eq!(PageFrameNumber::from(address), PageFrameNumber(0x12345));
        assert_eq!(
            PageFrameNumber(0x12345).start_address(),
            Some(PhysAddr(0x1234_5000))
        );
        assert_eq!(PhysAddr::from(PageFrameNumber(2)), PhysAddr(0x2000));
        assert!(PhysAddr(0x3000).page_aligned());
        assert_eq!(PhysAddr(u64::MAX).align_up_to_page(), None);
        assert_eq!(
            PageFrameNumber(PageFrameNumber::LIMIT).start_address(),
            None
        );
    }

    #[test]
    fn range_from_phys_drops_partial_pages() {
        let range = PageRange::from_phys_range(PhysAddr(0x1001), PhysAddr(0x5fff));
        assert_eq!(range, PageRange::new(PageFrameNumber(2), 3));
        let empty = PageRange::from_phys_range(PhysAddr(0x1001), PhysAddr(0x1fff));
        assert!(empty.is_empty());
    }

    #[test]
    fn aligned_blocks_are_maximal() {
        let blocks: std::vec::Vec<_> = PageRange::new(PageFrameNumber(3), 14)
            .aligned_blocks()
            .map(|block| (block.start.0, block.order))
            .collect();
        // [3,4) [4,8) [8,16) [16,17)
        assert_eq!(blocks, [(3, 0), (4, 2), (8, 3), (16, 0)]);
        let capped: std::vec::Vec<_> = PageRange::new(PageFrameNumber(0), 3 << MAX_ORDER)
            .aligned_blocks()
            .map(|block| block.order)
            .collect();
        assert_eq!(capped, [MAX_ORDER; 3]);
    }
}
