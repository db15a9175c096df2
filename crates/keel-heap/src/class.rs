//! Size classes: which pool (or the page path) serves a `Layout`. Safe code only.

use core::alloc::Layout;

use crate::PAGE_SIZE;

/// Bytes reserved at the start of every pool page for its [`PageHeader`](crate::pool).
pub(crate) const HEADER_SIZE: usize = 64;

/// Object sizes of the pools, smallest first. The power-of-two classes place every
/// object at a multiple of its size (natural alignment, up to 1024); the last class
/// fits two objects in a page after the header and guarantees 32-byte alignment.
pub const SIZE_CLASSES: [usize; CLASS_COUNT] = [16, 32, 64, 128, 256, 512, 1024, 2016];

/// Number of pools.
pub(crate) const CLASS_COUNT: usize = 8;

/// The largest `Layout::size()` served by a pool; larger ones take whole pages.
pub const MAX_POOL_SIZE: usize = SIZE_CLASSES[CLASS_COUNT - 1];

/// The largest power-of-two class (natural alignment holds up to it).
const MAX_POWER_OF_TWO_CLASS: usize = 1024;
/// Alignment guaranteed by the last class (objects at offsets 64 and 2080).
const LAST_CLASS_ALIGN: usize = 32;

/// Geometry of one pool's pages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassGeometry {
    /// Object size in bytes.
    pub(crate) size: usize,
    /// Offset of the first object in the page (after the header, aligned).
    pub(crate) first_offset: usize,
    /// Objects per page.
    pub(crate) capacity: usize,
}

/// Geometry of every class, indexed like [`SIZE_CLASSES`].
pub(crate) const GEOMETRY: [ClassGeometry; CLASS_COUNT] = {
    let mut table = [ClassGeometry {
        size: 0,
        first_offset: 0,
        capacity: 0,
    }; CLASS_COUNT];
    let mut index = 0;
    while index < CLASS_COUNT {
        let size = SIZE_CLASSES[index];
        // Powers of two start at the first multiple of their size past the header;
        // the last class starts right after the header.
        let first_offset = if size.is_power_of_two() {
            if size > HEADER_SIZE {
                size
            } else {
                HEADER_SIZE
            }
        } else {
            HEADER_SIZE
        };
        table[index] = ClassGeometry {
            size,
            first_offset,
            capacity: (PAGE_SIZE - first_offset) / size,
        };
        index += 1;
    }
    table
};

// Every class must hold at least two objects per page (so a page is never both the
// only free slot and full in one step) and the last class must be 32-aligned.
const _: () = {
    let mut index = 0;
    while index < CLASS_COUNT {
        assert!(GEOMETRY[index].capacity >= 2);
        index += 1;
    }
    assert!(
        HEADER_SIZE.is_multiple_of(LAST_CLASS_ALIGN)
            && MAX_POOL_SIZE.is_multiple_of(LAST_CLASS_ALIGN)
    );
    assert!(HEADER_SIZE + 2 * MAX_POOL_SIZE <= PAGE_SIZE);
};

/// Where an allocation of a given `Layout` lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// An object of pool `class` (index into [`SIZE_CLASSES`]).
    Pool {
        /// The class index.
        class: usize,
    },
    /// `pages` whole pages straight from the page source (`align <= PAGE_SIZE`); one
    /// page goes through the heap's small page cache.
    Pages {
        /// Pages covering the size.
        pages: usize,
    },
    /// Alignment above a page: `pages + align / PAGE_SIZE` pages are taken, the block
    /// starts at the first `align` boundary strictly inside them, and a record just
    /// below the block remembers the real start.
    OverAlignedPages {
        /// Pages covering the size.
        pages: usize,
        /// Pages actually taken from the source.
        total: usize,
    },
}

impl Placement {
    /// The placement of `layout`; `None` only if the page count overflows. A zero
    /// size is treated as one byte.
    #[inline]
    pub(crate) fn of(layout: Layout) -> Option<Self> {
        let size = layout.size().max(1);
        let align = layout.align();
        if size <= MAX_POWER_OF_TWO_CLASS && align <= MAX_POWER_OF_TWO_CLASS {
            let object = size.max(align).max(SIZE_CLASSES[0]).next_power_of_two();
            let class = (object.trailing_zeros() - SIZE_CLASSES[0].trailing_zeros()) as usize;
            return Some(Self::Pool { class });
        }
        if size <= MAX_POOL_SIZE && align <= LAST_CLASS_ALIGN {
            return Some(Self::Pool {
                class: CLASS_COUNT - 1,
            });
        }
        let pages = size.div_ceil(PAGE_SIZE);
        if align <= PAGE_SIZE {
            Some(Self::Pages { pages })
        } else {
            let total = pages.checked_add(align / PAGE_SIZE)?;
            Some(Self::OverAlignedPages { pages, total })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(size: usize, align: usize) -> Placement {
        Placement::of(Layout::from_size_align(size, align).unwrap()).unwrap()
    }

    #[test]
    fn geometry_is_sound() {
        for geometry in GEOMETRY {
            assert!(geometry.first_offset >= HEADER_SIZE);
            assert!(geometry.first_offset + geometry.capacity * geometry.size <= PAGE_SIZE);
            let align = if geometry.size.is_power_of_two() {
                geometry.size
            } else {
                32
            };
            assert_eq!(geometry.first_offset % align, 0);
            assert_eq!(geometry.size % align, 0);
        }
        assert_eq!(GEOMETRY[0].capacity, 252);
        assert_eq!(GEOMETRY[6].capacity, 3);
        assert_eq!(GEOMETRY[7].capacity, 2);
    }

    #[test]
    fn classes_by_size_and_align() {
        assert_eq!(placement(0, 1), Placement::Pool { class: 0 });
        assert_eq!(placement(1, 1), Placement::Pool { class: 0 });
        assert_eq!(placement(16, 8), Placement::Pool { class: 0 });
        assert_eq!(placement(17, 8), Placement::Pool { class: 1 });
        assert_eq!(placement(8, 64), Placement::Pool { class: 2 });
        assert_eq!(placement(1024, 8), Placement::Pool { class: 6 });
        assert_eq!(placement(1025, 8), Placement::Pool { class: 7 });
        assert_eq!(placement(2016, 32), Placement::Pool { class: 7 });
        assert_eq!(placement(1025, 64), Placement::Pages { pages: 1 });
        assert_eq!(placement(2017, 8), Placement::Pages { pages: 1 });
        assert_eq!(placement(4097, 8), Placement::Pages { pages: 2 });
        assert_eq!(placement(8, 2048), Placement::Pages { pages: 1 });
        assert_eq!(
            placement(100, 16384),
            Placement::OverAlignedPages { pages: 1, total: 5 }
        );
    }
}
