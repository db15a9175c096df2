//! One atomic bit per page frame: which single pages a [`PerCpuPageCache`] has handed
//! out and not yet taken back. This is what lets a cache refuse a double free at once,
//! in O(1), without the global allocator's lock.
//!
//! [`PerCpuPageCache`]: crate::PerCpuPageCache

use crate::address::{PageFrameNumber, PageRange};
use crate::error::PageAllocError;
use keel_sync::shim::{AtomicU64, Ordering};

/// The frames of a span that a [`PerCpuPageCache`](crate::PerCpuPageCache) handed
/// out to a user and that the user has not freed yet: one bit per frame, in
/// `AtomicU64` words the kernel carves out of raw memory beside the [`PageMeta`]
/// array (see [`words_for`](Self::words_for)), shared by every CPU's cache.
///
/// A cache sets a page's bit when it hands the page out ([`mark_handed_out`]) and
/// clears it when the page comes back ([`take_back`]); a page whose bit is already
/// clear is refused there and then. So a page freed twice is refused on the second
/// free whether it still sits in the cache, was drained to the [`BuddyAllocator`]
/// meanwhile, or sits in another CPU's cache, and it can never be handed out to two
/// owners. What no bit can catch is a stale free after the page was handed out again:
/// to the allocator that is the new owner's page.
///
/// Encoding and orderings: bit `i % 64` of word `i / 64` is set exactly while frame
/// `base + i` is out with a user. Both transitions are single read-modify-writes
/// (`fetch_or`, `fetch_and`), so of two racing frees of one page exactly one sees the
/// bit set. They are `Relaxed`: no data is published through the bits (the page
/// itself reaches its next owner through the cache's lock or the user's own
/// synchronisation), only the uniqueness of each transition matters.
///
/// [`PageMeta`]: crate::PageMeta
/// [`BuddyAllocator`]: crate::BuddyAllocator
/// [`mark_handed_out`]: Self::mark_handed_out
/// [`take_back`]: Self::take_back
#[derive(Debug)]
pub struct HandedOutPages<'m> {
    words: &'m [AtomicU64],
    /// The frame described by bit 0 of `words[0]`.
    base: u64,
}

impl<'m> HandedOutPages<'m> {
    /// How many `AtomicU64` words a span of `page_count` frames needs.
    #[must_use]
    pub const fn words_for(page_count: u64) -> usize {
        page_count.div_ceil(64) as usize
    }

    /// Bytes of words for a span of `page_count` frames.
    #[must_use]
    pub const fn bytes_for(page_count: u64) -> u64 {
        Self::words_for(page_count) as u64 * 8
    }

    /// The bits of frames `[base, base + 64 * words.len())`, over words that must all
    /// be zero (nothing handed out yet); [`new`](Self::new) clears them.
    #[must_use]
    pub fn new(words: &'m [AtomicU64], base: PageFrameNumber) -> Self {
        for word in words {
            word.store(0, Ordering::Relaxed);
        }
        Self {
            words,
            base: base.as_u64(),
        }
    }

    /// The frames these bits cover.
    #[must_use]
    pub fn span(&self) -> PageRange {
        PageRange::new(
            PageFrameNumber::new(self.base),
            self.words.len() as u64 * 64,
        )
    }

    /// The word and the bit of `page`, if it is inside the span.
    fn locate(&self, page: PageFrameNumber) -> Option<(&AtomicU64, u64)> {
        let index = page.as_u64().checked_sub(self.base)?;
        let word = self.words.get(usize::try_from(index / 64).ok()?)?;
        Some((word, 1 << (index % 64)))
    }

    /// Records that a cache hands `page` out to a user. A page outside the span is
    /// not recorded (so its free is refused later).
    pub fn mark_handed_out(&self, page: PageFrameNumber) {
        if let Some((word, bit)) = self.locate(page) {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Takes `page` back from its user: clears its bit.
    ///
    /// # Errors
    ///
    /// [`PageAllocError::DoubleFree`] if the page is not out with a user (already
    /// freed, into any cache or the allocator, or never handed out by a cache);
    /// [`PageAllocError::OutOfRange`] if it is outside the span. Nothing changes then.
    pub fn take_back(&self, page: PageFrameNumber) -> Result<(), PageAllocError> {
        let (word, bit) = self.locate(page).ok_or(PageAllocError::OutOfRange)?;
        #[cfg(not(feature = "broken-handed-out"))]
        let before = word.fetch_and(!bit, Ordering::Relaxed);
        #[cfg(feature = "broken-handed-out")]
        let before = {
            let before = word.load(Ordering::Relaxed);
            word.store(before & !bit, Ordering::Relaxed);
            before
        };
        if before & bit == 0 {
            return Err(PageAllocError::DoubleFree);
        }
        Ok(())
    }

    /// Whether `page` is out with a user.
    #[must_use]
    pub fn is_handed_out(&self, page: PageFrameNumber) -> bool {
        self.locate(page)
            .is_some_and(|(word, bit)| word.load(Ordering::Relaxed) & bit != 0)
    }
}
