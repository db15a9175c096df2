//! The allocator's error type.

use core::fmt;

/// Why a page-allocator operation was refused. A refused operation leaves the
/// allocator exactly as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageAllocError {
    /// No free block is large enough for the request.
    OutOfMemory,
    /// The order is above [`MAX_ORDER`](crate::MAX_ORDER), or the page count needs one
    /// that is.
    InvalidOrder {
        /// The order asked for (or needed).
        order: u32,
    },
    /// A page count of zero was given.
    EmptyRequest,
    /// The frame number is not a multiple of `2^order`.
    Misaligned,
    /// The pages are not (all) inside the span the allocator covers.
    OutOfRange,
    /// `add_free_range` was given pages that were already made available.
    Overlap,
    /// The block, or part of it, is already free.
    DoubleFree,
    /// The frame is not the start of an allocated block: it was never made available,
    /// or it lies inside a block allocated with a different start.
    NotAllocated,
    /// The block was allocated with a different order than the one given to `free`.
    WrongOrder {
        /// The order the block was allocated with.
        allocated: u32,
        /// The order given to `free`.
        given: u32,
    },
    /// The metadata array has more slots than the `u32` free-list links can index
    /// (see [`MAX_PAGES`](crate::MAX_PAGES)).
    TooManyPages,
}

impl fmt::Display for PageAllocError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory => formatter.write_str("out of physical memory"),
            Self::InvalidOrder { order } => {
                write!(
                    formatter,
                    "order {order} is above the maximum of {}",
                    crate::MAX_ORDER
                )
            }
            Self::EmptyRequest => formatter.write_str("zero pages requested"),
            Self::Misaligned => formatter.write_str("page frame not aligned to the block order"),
            Self::OutOfRange => formatter.write_str("pages outside the allocator's span"),
            Self::Overlap => formatter.write_str("pages already available"),
            Self::DoubleFree => formatter.write_str("pages are already free (double free)"),
            Self::NotAllocated => formatter.write_str("not the start of an allocated block"),
            Self::WrongOrder { allocated, given } => write!(
                formatter,
                "block allocated with order {allocated} but freed with order {given}"
            ),
            Self::TooManyPages => {
                formatter.write_str("more pages than the metadata links can index")
            }
        }
    }
}

impl core::error::Error for PageAllocError {}
