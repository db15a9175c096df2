//! The heap's unsafe core: the [`PageSource`] contract and [`KernelHeap`], whose
//! large-block paths and `GlobalAlloc` implementation work on raw pages. The small-object
//! pools it drives are in `pool`; both are the only modules of the crate that may use
//! `unsafe` (the root denies it).

use core::alloc::{GlobalAlloc, Layout};
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use keel_sync::{InterruptMask, IrqSpinLock, NoInterruptMask};

use crate::class::{CLASS_COUNT, Placement};
use crate::cpu_cache::{CpuCache, CurrentCpu, NoCpuCaches, batch_size, bin_capacity, depot_limit};
use crate::pool::HeapState;
use crate::{GEOMETRY, HeapStats, PAGE_SIZE};

/// Where the heap gets its memory: whole, page-aligned runs of pages.
///
/// # Safety
/// Implementers guarantee that:
/// - `alloc_pages(count)` returns either `None` or a pointer `start` that is aligned
///   to [`PAGE_SIZE`] such that `start .. start + count * PAGE_SIZE` is valid for
///   reads and writes, is not used by anything else (no other live allocation of the
///   source, no references) and stays so until it is passed to `free_pages`;
/// - distinct calls return disjoint ranges, and the methods may be called from any
///   thread (the heap calls them from whichever CPU allocates, with its lock held).
///
/// Implementations must not allocate from the heap that uses them (the heap's lock
/// is held while they run, so that would deadlock). The heap always passes
/// `count >= 1`.
pub unsafe trait PageSource {
    /// Returns `count` contiguous pages, or `None` if not available.
    fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>>;

    /// Takes back pages.
    ///
    /// # Safety
    /// `start` and `count` are exactly those of one earlier `alloc_pages` call of this
    /// source whose pages were not freed since, and the caller no longer uses them.
    unsafe fn free_pages(&self, start: NonNull<u8>, count: usize);
}

// SAFETY: forwards to `S`, which upholds the contract.
unsafe impl<S: PageSource + ?Sized> PageSource for &S {
    fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>> {
        (**self).alloc_pages(count)
    }

    unsafe fn free_pages(&self, start: NonNull<u8>, count: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { (**self).free_pages(start, count) }
    }
}

/// The record kept just below an over-aligned block: the pages really taken.
#[repr(C)]
struct OverAlignedRecord {
    start: NonNull<u8>,
    total: usize,
}

/// The kernel heap: size-class pools plus whole pages, over a [`PageSource`], with
/// optional per-CPU object caches.
///
/// Type parameters: `M` masks interrupts around the heap's lock (the kernel's mask, or
/// none on a host); `C` finds the calling CPU's cache and `CPUS` is how many caches
/// there are (none by default: every call takes the lock). See the crate docs.
///
/// ```
/// # use core::alloc::{GlobalAlloc, Layout};
/// # use core::ptr::NonNull;
/// # use keel_heap::{KernelHeap, PageSource, PAGE_SIZE};
/// # extern crate std;
/// struct Host;
/// // SAFETY: `std::alloc` returns fresh, page-aligned, writable memory.
/// unsafe impl PageSource for Host {
///     fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>> {
///         let layout = Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).ok()?;
///         // SAFETY: the size is non-zero.
///         NonNull::new(unsafe { std::alloc::alloc(layout) })
///     }
///     unsafe fn free_pages(&self, start: NonNull<u8>, count: usize) {
///         let layout = Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).unwrap();
///         // SAFETY: allocated above with this layout.
///         unsafe { std::alloc::dealloc(start.as_ptr(), layout) }
///     }
/// }
/// static HEAP: KernelHeap<Host> = KernelHeap::new(Host);
/// let layout = Layout::new::<[u64; 4]>();
/// // SAFETY: the layout has a non-zero size; the block is freed with the same layout.
/// unsafe {
///     let block = HEAP.alloc(layout);
///     assert!(!block.is_null());
///     HEAP.dealloc(block, layout);
/// }
/// ```
#[derive(Debug)]
pub struct KernelHeap<
    S: PageSource,
    M: InterruptMask = NoInterruptMask,
    C: CurrentCpu = NoCpuCaches,
    const CPUS: usize = 0,
> {
    source: S,
    /// Behind an [`IrqSpinLock`]: the kernel's scheduler allocates and frees from
    /// interrupts and the switch path, so the heap's lock must never be held with
    /// interrupts on (the kernel passes its mask as `M`).
    state: IrqSpinLock<HeapState, M>,
    /// One object cache per CPU, used only by the context `C` says owns it.
    caches: [CpuCache; CPUS],
    cpu: PhantomData<fn() -> C>,
}

impl<S: PageSource> KernelHeap<S> {
    /// An empty heap over `source` whose lock masks no interrupts (host code, benches);
    /// it takes no pages until the first allocation.
    #[cfg(not(loom))]
    pub const fn new(source: S) -> Self {
        Self::with_interrupt_mask(source)
    }

    /// An empty heap over `source` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(source: S) -> Self {
        Self::with_interrupt_mask(source)
    }
}

impl<S: PageSource, M: InterruptMask, C: CurrentCpu, const CPUS: usize> KernelHeap<S, M, C, CPUS> {
    /// An empty heap over `source` whose lock masks interrupts with `M` while held,
    /// with `CPUS` object caches found through `C` (the type says which).
    #[cfg(not(loom))]
    pub const fn with_interrupt_mask(source: S) -> Self {
        Self {
            source,
            state: IrqSpinLock::new(HeapState::new()),
            caches: [const { CpuCache::new() }; CPUS],
            cpu: PhantomData,
        }
    }

    /// An empty heap over `source`, masking with `M` (not `const` under loom).
    #[cfg(loom)]
    pub fn with_interrupt_mask(source: S) -> Self {
        Self {
            source,
            state: IrqSpinLock::new(HeapState::new()),
            caches: [const { CpuCache::new() }; CPUS],
            cpu: PhantomData,
        }
    }

    /// Runs `fast` with the calling context's cache, if it has one, else returns
    /// `None` without calling it.
    #[inline]
    fn with_own_cache<R>(&self, fast: impl FnOnce(&CpuCache) -> R) -> Option<R> {
        let (index, saved) = C::enter();
        let result = index.and_then(|index| self.caches.get(index)).map(fast);
        C::leave(saved);
        result
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// A snapshot of the heap's accounting. With per-CPU caches it is assembled from
    /// counters other CPUs keep writing, so under concurrent use it is approximate.
    pub fn stats(&self) -> HeapStats {
        let mut stats = self.state.lock().stats();
        for cache in &self.caches {
            let (bytes, allocations) = cache.usage();
            stats.bytes_in_use = stats.bytes_in_use.wrapping_add(bytes);
            stats.live_allocations = stats.live_allocations.wrapping_add(allocations);
            stats.cpu_cached_objects += cache.cached_objects();
        }
        stats
    }

    /// Returns the calling CPU's cached objects to their pools, then every cached page
    /// and every empty pool page to the source. Other CPUs' caches are left alone (at
    /// most about 8 KiB per class and CPU, see the crate docs).
    pub fn trim(&self) {
        self.with_own_cache(|cache| {
            let mut state = self.state.lock();
            for class in 0..CLASS_COUNT {
                // SAFETY: the calling context owns `cache` (`with_own_cache`).
                unsafe { self.flush(cache, &mut state, class, usize::MAX) };
            }
        });
        self.state.lock().trim(&self.source);
    }

    /// Moves up to `limit` objects of `class` from `cache` back to their pools.
    ///
    /// # Safety
    /// The calling context owns `cache`.
    unsafe fn flush(&self, cache: &CpuCache, state: &mut HeapState, class: usize, limit: usize) {
        for _ in 0..limit {
            // SAFETY: the caller owns `cache`.
            let Some(object) = (unsafe { cache.pop(class) }) else {
                break;
            };
            // SAFETY: an object in a bin of `class` is a free object of that pool
            // (bins hold only objects `pool_alloc` handed out and a user freed).
            unsafe { state.pool_free(object, class, &self.source) };
        }
    }

    /// Moves a magazine (half a bin) from `cache`'s bin of `class` to the depot, or to
    /// the pools if the depot holds its limit of that class.
    ///
    /// # Safety
    /// The calling context owns `cache`, whose bin of `class` holds at least
    /// `batch_size(class)` objects.
    #[cold]
    unsafe fn flush_magazine(&self, cache: &CpuCache, class: usize) {
        // SAFETY: relies on the caller (ownership, and enough objects in the bin).
        let magazine = unsafe { cache.take_magazine(class, batch_size(class)) };
        let mut state = self.state.lock();
        if state.depot.count(class) < depot_limit(class) {
            // SAFETY: the magazine's objects are free objects of `class`, now only the
            // depot's.
            unsafe { state.depot.push(class, magazine) };
        } else {
            // SAFETY: as above, returned to their pool.
            unsafe { state.free_magazine(class, magazine, &self.source) };
        }
    }

    /// Refills `cache`'s bin of `class` with a magazine from the depot, or else half a
    /// bin from the pools, and returns one object of it for the caller; at out of memory, trims (with this CPU's bins
    /// flushed) and tries once more for the caller's object alone.
    ///
    /// # Safety
    /// The calling context owns `cache`, whose bin of `class` is empty.
    #[cold]
    unsafe fn refill(&self, cache: &CpuCache, class: usize) -> Option<NonNull<u8>> {
        let mut state = self.state.lock();
        if let Some(magazine) = state.depot.pop(class) {
            drop(state);
            // SAFETY: the caller owns `cache`, whose bin is empty; a depot magazine of
            // `class` holds `batch_size(class)` free objects of that class.
            return unsafe {
                cache.put_magazine(class, magazine, batch_size(class));
                cache.pop(class)
            };
        }
        let Some(object) = state.pool_alloc(class, &self.source) else {
            for class in 0..CLASS_COUNT {
                // SAFETY: the caller owns `cache`.
                unsafe { self.flush(cache, &mut state, class, usize::MAX) };
            }
            state.trim(&self.source);
            return state.pool_alloc(class, &self.source);
        };
        for _ in 0..batch_size(class) {
            let Some(extra) = state.pool_alloc(class, &self.source) else {
                break;
            };
            // SAFETY: the caller owns `cache`; `extra` is a fresh object of `class`
            // that no one uses.
            unsafe { cache.push(class, extra) };
        }
        Some(object)
    }

    /// Allocates a block for `layout` (size 0 is served as 1 byte); `None` when the
    /// page source is exhausted.
    #[inline]
    pub fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        let placement = Placement::of(layout)?;
        if let Placement::Pool { class } = placement
            && let Some(result) = self.with_own_cache(|cache| {
                // SAFETY: `with_own_cache` gives the calling context sole use of
                // `cache`; the refill runs only on an empty bin.
                let object =
                    unsafe { cache.pop(class) }.or_else(|| unsafe { self.refill(cache, class) })?;
                cache.count_use(layout.size(), true);
                Some(object)
            })
        {
            return result;
        }
        self.allocate_locked(layout, placement)
    }

    /// The locked path of [`Self::allocate`]: large blocks, and pool objects for a
    /// context with no cache.
    #[inline(never)]
    fn allocate_locked(&self, layout: Layout, placement: Placement) -> Option<NonNull<u8>> {
        let mut state = self.state.lock();
        let block = match placement {
            Placement::Pool { class } => state.pool_alloc(class, &self.source)?,
            Placement::Pages { pages: 1 } => {
                let page = state.take_page(&self.source)?;
                state.count_large_single_page(true);
                page
            }
            Placement::Pages { pages } => {
                let start = self.alloc_pages_or_trim(&mut state, pages)?;
                state.count_large_pages(pages, true);
                start
            }
            Placement::OverAlignedPages { total, .. } => {
                let start = self.alloc_pages_or_trim(&mut state, total)?;
                state.count_large_pages(total, true);
                let align = layout.align();
                // In (0, align]: the block starts strictly above `start`, leaving room
                // for the record; it ends within `total` pages since
                // `offset + pages * PAGE_SIZE <= align + pages * PAGE_SIZE`.
                let offset = align - (start.as_ptr().addr() & (align - 1));
                // SAFETY: relies on the `PageSource` contract (`start` begins `total`
                // writable, unused pages) and on `offset <= total * PAGE_SIZE` with
                // `offset >= PAGE_SIZE` (both page multiples, offset > 0): the block and
                // the 16-byte record just below it lie inside those pages, and the
                // record's address is 16-aligned because the block's is.
                unsafe {
                    let block = start.add(offset);
                    block
                        .cast::<OverAlignedRecord>()
                        .sub(1)
                        .write(OverAlignedRecord { start, total });
                    block
                }
            }
        };
        state.count_alloc(layout.size());
        Some(block)
    }

    /// `count` pages from the source; if it has none, returns this CPU's cached objects
    /// to their pools and the heap's cached and empty pages to the source (they may be
    /// what it lacks) and asks once more.
    fn alloc_pages_or_trim(&self, state: &mut HeapState, count: usize) -> Option<NonNull<u8>> {
        self.source.alloc_pages(count).or_else(|| {
            self.with_own_cache(|cache| {
                for class in 0..CLASS_COUNT {
                    // SAFETY: the calling context owns `cache` (`with_own_cache`).
                    unsafe { self.flush(cache, state, class, usize::MAX) };
                }
            });
            state.trim(&self.source);
            self.source.alloc_pages(count)
        })
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `block` was returned by [`Self::allocate`] (or `GlobalAlloc::alloc`/`realloc`)
    /// of this heap with this same `layout` (for `realloc`, the new size), and is not
    /// used or freed again.
    #[inline]
    pub unsafe fn deallocate(&self, block: NonNull<u8>, layout: Layout) {
        // The placement existed when the block was allocated, so it exists now.
        let Some(placement) = Placement::of(layout) else {
            return;
        };
        if let Placement::Pool { class } = placement
            && self
                .with_own_cache(|cache| {
                    // SAFETY: the calling context owns `cache` (`with_own_cache`), and
                    // the caller's contract makes `block` an unused object of `class`.
                    let count = unsafe { cache.push(class, block) };
                    cache.count_use(layout.size(), false);
                    if count > bin_capacity(class) {
                        // SAFETY: as above; the bin holds more than a batch.
                        unsafe { self.flush_magazine(cache, class) };
                    }
                })
                .is_some()
        {
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_locked(block, layout, placement) }
    }

    /// The locked path of [`Self::deallocate`]: large blocks, and pool objects for a
    /// context with no cache.
    ///
    /// # Safety
    /// As for [`Self::deallocate`]; `placement` is that of `layout`.
    #[inline(never)]
    unsafe fn deallocate_locked(&self, block: NonNull<u8>, layout: Layout, placement: Placement) {
        let mut state = self.state.lock();
        match placement {
            // SAFETY: relies on the caller: `block` is a live object of this pool.
            Placement::Pool { class } => unsafe { state.pool_free(block, class, &self.source) },
            Placement::Pages { pages: 1 } => {
                state.count_large_single_page(false);
                // SAFETY: relies on the caller: `block` is the single page taken by
                // `take_page` for this layout, now unused.
                unsafe { state.give_back_page(block, &self.source) };
            }
            Placement::Pages { pages } => {
                // SAFETY: relies on the caller: `block` came from `alloc_pages(pages)`.
                unsafe { self.source.free_pages(block, pages) };
                state.count_large_pages(pages, false);
            }
            Placement::OverAlignedPages { .. } => {
                // SAFETY: relies on the caller: `block` is an over-aligned block, so the
                // record written by `allocate` lies just below it, and its `start` and
                // `total` are those of one `alloc_pages` call.
                let total = unsafe {
                    let record = block.cast::<OverAlignedRecord>().sub(1).read();
                    self.source.free_pages(record.start, record.total);
                    record.total
                };
                state.count_large_pages(total, false);
            }
        }
        state.count_free(layout.size());
    }

    /// Resizes a block to `new_size` bytes (same alignment), in place when the old and
    /// new layouts share a placement, else by allocate + copy + free. On failure
    /// returns `None` and leaves the old block untouched.
    ///
    /// # Safety
    /// As for [`Self::deallocate`] with `block` and `layout`; on success the old block
    /// must no longer be used.
    pub unsafe fn reallocate(
        &self,
        block: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let new_layout = Layout::from_size_align(new_size, layout.align()).ok()?;
        let old_placement = Placement::of(layout)?;
        let new_placement = Placement::of(new_layout)?;
        if old_placement == new_placement {
            self.state
                .lock()
                .count_resize(layout.size(), new_layout.size());
            return Some(block);
        }
        let new_block = self.allocate(new_layout)?;
        // SAFETY: relies on (1) the caller: `block` is live and readable for
        // `layout.size()` bytes; (2) `new_block` being a fresh block of at least
        // `new_size` bytes, so disjoint from `block`; (3) the caller's guarantee that
        // `block` was allocated with `layout`, for the free.
        unsafe {
            ptr::copy_nonoverlapping(
                block.as_ptr(),
                new_block.as_ptr(),
                layout.size().min(new_size),
            );
            self.deallocate(block, layout);
        }
        Some(new_block)
    }

    /// Bytes usable in a block allocated for `layout` (at least `layout.size()`).
    pub fn usable_size(layout: Layout) -> usize {
        match Placement::of(layout) {
            Some(Placement::Pool { class }) => GEOMETRY[class].size,
            Some(Placement::Pages { pages } | Placement::OverAlignedPages { pages, .. }) => {
                pages * PAGE_SIZE
            }
            None => 0,
        }
    }
}

impl<S: PageSource, M: InterruptMask, C: CurrentCpu, const CPUS: usize> Drop
    for KernelHeap<S, M, C, CPUS>
{
    /// Returns every CPU's cached objects, then cached and empty pages; pages of
    /// blocks still allocated are leaked.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        for cache in &self.caches {
            for class in 0..CLASS_COUNT {
                // SAFETY: `&mut self`: no context uses any cache any more.
                while let Some(object) = unsafe { cache.pop(class) } {
                    // SAFETY: a binned object is a free object of its class's pool.
                    unsafe { state.pool_free(object, class, &self.source) };
                }
            }
        }
        state.trim(&self.source);
    }
}

// SAFETY: `allocate` returns blocks of at least `layout.size()` bytes aligned to
// `layout.align()` (pool objects are naturally aligned up to 1024, or 32 for the
// last class; page blocks are page-aligned or aligned by construction), disjoint
// from every other live block (pool slots and pages are handed out once until
// freed), and null on failure; `dealloc`/`realloc` forward the caller's contract.
unsafe impl<S: PageSource, M: InterruptMask, C: CurrentCpu, const CPUS: usize> GlobalAlloc
    for KernelHeap<S, M, C, CPUS>
{
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(block) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` was allocated by this
            // allocator with `layout`.
            unsafe { self.deallocate(block, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(block) = NonNull::new(ptr) else {
            return ptr::null_mut();
        };
        // SAFETY: `GlobalAlloc::realloc`'s contract: `ptr` was allocated by this
        // allocator with `layout`, and is not used after a successful call.
        unsafe { self.reallocate(block, layout, new_size) }.map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}
