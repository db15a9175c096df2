//! Per-CPU caches of single pages in front of the global allocator.

use crate::address::PageFrameNumber;
use crate::buddy::BuddyAllocator;
use crate::error::PageAllocError;
use crate::handed_out::HandedOutPages;

/// A source of single (order-0) pages that works in batches: what a
/// [`PerCpuPageCache`] refills from and drains to. The kernel implements it for its
/// locked global allocator (or passes the [`BuddyAllocator`] inside the guard), so
/// the lock is taken once per batch.
pub trait PageSource {
    /// Allocates up to `out.len()` single pages into the front of `out` and returns
    /// how many it allocated (fewer only when memory runs out).
    fn alloc_page_batch(&mut self, out: &mut [PageFrameNumber]) -> usize;

    /// Frees single pages obtained from [`alloc_page_batch`](Self::alloc_page_batch).
    fn free_page_batch(&mut self, pages: &[PageFrameNumber]);

    /// Counts one free that a cache refused (a double free), so that it shows in
    /// [`BuddyAllocator::rejected_free_count`] beside the source's own refusals.
    fn count_rejected_free(&mut self);
}

impl PageSource for BuddyAllocator<'_> {
    fn alloc_page_batch(&mut self, out: &mut [PageFrameNumber]) -> usize {
        for (allocated, slot) in out.iter_mut().enumerate() {
            match self.alloc(0) {
                Ok(frame) => *slot = frame,
                Err(_) => return allocated,
            }
        }
        out.len()
    }

    /// Frees each page with [`BuddyAllocator::free`]`(page, 0)`. A page that `free`
    /// refuses is skipped and counted in
    /// [`rejected_free_count`](BuddyAllocator::rejected_free_count); the others are
    /// still freed.
    fn free_page_batch(&mut self, pages: &[PageFrameNumber]) {
        for &page in pages {
            if self.free(page, 0).is_err() {
                self.rejected_frees += 1;
            }
        }
    }

    fn count_rejected_free(&mut self) {
        self.rejected_frees += 1;
    }
}

/// The default capacity of a [`PerCpuPageCache`]: 64 pages (256 KiB), refilled and
/// drained 32 at a time.
pub const DEFAULT_CACHE_CAPACITY: usize = 64;

/// A per-CPU stack of single free pages in front of a global [`PageSource`], like
/// OSv's per-CPU page buffers or Linux's per-CPU page lists.
///
/// `alloc` pops the most recently freed (cache-hot) page; when the stack is empty it
/// refills `N / 2` pages from the global source in one call. `free` pushes; when the
/// stack is full it first gives the `N / 2` oldest (coldest) pages back in one call.
/// Both are O(1) with no locking except at those batch boundaries, which the kernel
/// guards with the global allocator's lock. The kernel keeps one cache per CPU and
/// uses it only from that CPU with preemption disabled.
///
/// # Double frees
///
/// The cache holds no metadata of its own; it records which pages it handed out in
/// the [`HandedOutPages`] bits that every CPU's cache shares. `alloc` sets the page's
/// bit, `free` clears it and refuses, in O(1) and in every build, a page whose bit is
/// already clear: freed twice (whether the first free left it in this cache, in
/// another CPU's cache or, after a drain, in the global allocator) or never handed out
/// by a cache. The refusal returns [`PageAllocError::DoubleFree`] and is counted with
/// [`PageSource::count_rejected_free`] (so it shows in
/// [`BuddyAllocator::rejected_free_count`]). So a refused page is never cached, and
/// never handed out to two owners.
#[derive(Debug)]
pub struct PerCpuPageCache<const N: usize = DEFAULT_CACHE_CAPACITY> {
    /// `pages[..len]` is the stack, oldest first.
    pages: [PageFrameNumber; N],
    len: usize,
}

impl<const N: usize> Default for PerCpuPageCache<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PerCpuPageCache<N> {
    /// Pages moved per refill or drain.
    pub const BATCH: usize = N / 2;

    const CAPACITY_IS_VALID: () = assert!(N >= 2, "a PerCpuPageCache needs N >= 2");

    /// An empty cache.
    #[must_use]
    pub const fn new() -> Self {
        let () = Self::CAPACITY_IS_VALID;
        Self {
            pages: [PageFrameNumber::new(0); N],
            len: 0,
        }
    }

    /// How many pages the cache holds.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no page.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pages the cache can hold (`N`).
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Takes a single page, refilling a batch from `global` if the cache is empty, and
    /// records it in `handed_out`. `None` when both are out of pages.
    pub fn alloc(
        &mut self,
        global: &mut impl PageSource,
        handed_out: &HandedOutPages<'_>,
    ) -> Option<PageFrameNumber> {
        if self.len == 0 {
            self.len = global.alloc_page_batch(&mut self.pages[..Self::BATCH]);
            if self.len == 0 {
                return None;
            }
        }
        self.len -= 1;
        let page = self.pages[self.len];
        handed_out.mark_handed_out(page);
        Some(page)
    }

    /// Gives a single page back, first draining the oldest batch to `global` if the
    /// cache is full.
    ///
    /// # Errors
    ///
    /// [`PageAllocError::DoubleFree`] if `handed_out` says the page is not out with a
    /// user (see the type's documentation), [`PageAllocError::OutOfRange`] if it is
    /// outside their span; the refusal is counted in `global` and nothing else
    /// changes.
    pub fn free(
        &mut self,
        page: PageFrameNumber,
        global: &mut impl PageSource,
        handed_out: &HandedOutPages<'_>,
    ) -> Result<(), PageAllocError> {
        if let Err(error) = handed_out.take_back(page) {
            global.count_rejected_free();
            return Err(error);
        }
        if self.len == N {
            global.free_page_batch(&self.pages[..Self::BATCH]);
            self.pages.copy_within(Self::BATCH.., 0);
            self.len -= Self::BATCH;
        }
        self.pages[self.len] = page;
        self.len += 1;
        Ok(())
    }

    /// Gives every cached page back to `global`, e.g. before a CPU goes offline or
    /// when the global allocator runs low.
    pub fn drain_all(&mut self, global: &mut impl PageSource) {
        global.free_page_batch(&self.pages[..self.len]);
        self.len = 0;
    }
}
