//! The composition the kernel uses: one global buddy allocator and one single-page
//! cache per CPU, each behind its own lock, with the caches' shared handed-out bits.

use keel_sync::{InterruptMask, IrqSpinLock};

use crate::address::{PageFrameNumber, PageRange};
use crate::buddy::BuddyAllocator;
use crate::cache::{DEFAULT_CACHE_CAPACITY, PageSource, PerCpuPageCache};
use crate::error::PageAllocError;
use crate::handed_out::HandedOutPages;

/// A [`BuddyAllocator`] shared by `CPUS` CPUs, each with its own [`PerCpuPageCache`]
/// of `N` pages, every part behind its own lock: what the kernel keeps in a static.
///
/// The locks are [`IrqSpinLock`]s with the interrupt mask `M`: every method masks
/// interrupts on this CPU while it holds any of them, so a page freed from an
/// interrupt or the switch path (a thread's stack) can never find its own CPU holding
/// the lock. The kernel passes its interrupt mask, host tests
/// [`NoInterruptMask`](keel_sync::NoInterruptMask).
///
/// Single pages go through the calling CPU's cache (whose lock is uncontended except
/// while another CPU drains it); runs go to the buddy allocator. Lock order: a cache,
/// then the buddy allocator (a cache refills and drains through it); the buddy lock
/// is never held while a cache lock is taken.
#[derive(Debug)]
pub struct SharedPageAllocator<
    'm,
    M: InterruptMask,
    const CPUS: usize,
    const N: usize = DEFAULT_CACHE_CAPACITY,
> {
    buddy: IrqSpinLock<BuddyAllocator<'m>, M>,
    caches: [IrqSpinLock<PerCpuPageCache<N>, M>; CPUS],
    handed_out: HandedOutPages<'m>,
}

/// The locked buddy allocator as a cache's refill and drain source: its lock is taken
/// once per batch, never on the cache's fast path.
struct LockedBuddy<'a, 'm, M: InterruptMask>(&'a IrqSpinLock<BuddyAllocator<'m>, M>);

impl<M: InterruptMask> PageSource for LockedBuddy<'_, '_, M> {
    fn alloc_page_batch(&mut self, out: &mut [PageFrameNumber]) -> usize {
        self.0.lock().alloc_page_batch(out)
    }

    fn free_page_batch(&mut self, pages: &[PageFrameNumber]) {
        self.0.lock().free_page_batch(pages);
    }

    fn count_rejected_free(&mut self) {
        self.0.lock().count_rejected_free();
    }
}

impl<'m, M: InterruptMask, const CPUS: usize, const N: usize> SharedPageAllocator<'m, M, CPUS, N> {
    /// Shares `buddy` between `CPUS` empty caches that record the pages they hand out
    /// in `handed_out`.
    #[must_use]
    pub fn new(buddy: BuddyAllocator<'m>, handed_out: HandedOutPages<'m>) -> Self {
        Self {
            buddy: IrqSpinLock::new(buddy),
            caches: core::array::from_fn(|_| IrqSpinLock::new(PerCpuPageCache::new())),
            handed_out,
        }
    }

    fn cache(&self, cpu: usize) -> &IrqSpinLock<PerCpuPageCache<N>, M> {
        &self.caches[cpu % CPUS]
    }

    /// Allocates one page through the cache of CPU `cpu` (taken modulo `CPUS`). If
    /// that cache and the buddy allocator are empty, drains every cache
    /// ([`drain_all_caches`](Self::drain_all_caches)) and tries once more, so `None`
    /// means no page is free anywhere (at the time of the drain).
    pub fn alloc_page(&self, cpu: usize) -> Option<PageFrameNumber> {
        let attempt = || {
            self.cache(cpu)
                .lock()
                .alloc(&mut LockedBuddy(&self.buddy), &self.handed_out)
        };
        attempt().or_else(|| {
            self.drain_all_caches();
            attempt()
        })
    }

    /// Frees one page from [`alloc_page`](Self::alloc_page) (of any CPU) through the
    /// cache of CPU `cpu`.
    ///
    /// # Errors
    ///
    /// As [`PerCpuPageCache::free`]: a double free is refused at once and counted.
    pub fn free_page(&self, cpu: usize, page: PageFrameNumber) -> Result<(), PageAllocError> {
        self.cache(cpu)
            .lock()
            .free(page, &mut LockedBuddy(&self.buddy), &self.handed_out)
    }

    /// Allocates `count` contiguous pages from the buddy allocator. At out of memory
    /// it drains every cache ([`drain_all_caches`](Self::drain_all_caches)), whose
    /// pages may coalesce into the run it lacks, and tries once more.
    ///
    /// # Errors
    ///
    /// As [`BuddyAllocator::alloc_pages`]; [`PageAllocError::OutOfMemory`] only when
    /// no run is free even with every cached page given back.
    pub fn alloc_pages(&self, count: u64) -> Result<PageRange, PageAllocError> {
        // The guard is a temporary: the buddy lock is released before the drain,
        // which takes cache locks (lock order: a cache, then the buddy allocator).
        match self.buddy.lock().alloc_pages(count) {
            Err(PageAllocError::OutOfMemory) => {}
            result => return result,
        }
        self.drain_all_caches();
        self.buddy.lock().alloc_pages(count)
    }

    /// Frees a run from [`alloc_pages`](Self::alloc_pages).
    ///
    /// # Errors
    ///
    /// As [`BuddyAllocator::free_pages`].
    pub fn free_pages(&self, range: PageRange) -> Result<(), PageAllocError> {
        self.buddy.lock().free_pages(range)
    }

    /// Gives every page of every CPU's cache back to the buddy allocator, one cache
    /// at a time under its lock, so that they coalesce and serve any CPU.
    ///
    /// A remote CPU's cache is drained by the caller, not by asking that CPU: each
    /// cache has its own lock, which its CPU holds only for one short cache operation
    /// (never while waiting for anything), so taking it from another CPU is safe and
    /// needs neither an IPI nor the remote CPU's cooperation; the cost is that its
    /// next allocation refills a batch from the buddy allocator. The alternative, a
    /// request flag the remote CPU honours at its next cache operation, would leave
    /// an idle CPU's pages stranded, which is the very failure this fixes.
    pub fn drain_all_caches(&self) {
        for cache in &self.caches {
            cache.lock().drain_all(&mut LockedBuddy(&self.buddy));
        }
    }

    /// Free pages: in the buddy allocator plus in every cache.
    pub fn free_page_count(&self) -> u64 {
        let cached: u64 = self
            .caches
            .iter()
            .map(|cache| cache.lock().len() as u64)
            .sum();
        self.buddy.lock().free_page_count() + cached
    }

    /// [`BuddyAllocator::rejected_free_count`]: every refused free, the caches'
    /// included.
    pub fn rejected_free_count(&self) -> u64 {
        self.buddy.lock().rejected_free_count()
    }
}
