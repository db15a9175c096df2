//! The heap's state: per-class pools of pages, the single-page cache, statistics.
//!
//! All raw-pointer work of the heap lives here. [`HeapState`] is only ever reached
//! through the heap's `IrqSpinLock`, so every method runs with exclusive access.

use core::ptr::{self, NonNull};

use crate::class::{CLASS_COUNT, GEOMETRY, HEADER_SIZE};
use crate::cpu_cache::{Depot, Magazine};
use crate::{HeapStats, PAGE_SIZE, PageSource};

/// Most single pages kept in [`HeapState`]'s page cache before returning them.
pub(crate) const PAGE_CACHE_LIMIT: usize = 16;

/// The header at the start of every pool page (OSv's `page_header`); an object's
/// header is found by masking the object's address down to its page.
#[repr(C)]
struct PageHeader {
    /// Index of the class (pool) this page belongs to.
    class: usize,
    /// Objects of this page currently handed out.
    live: usize,
    /// Offset of the first object never handed out yet: pages are carved lazily, so a
    /// fresh page costs one header write, not a pass over the whole page.
    bump: usize,
    /// Freed objects of this page, linked through their first word.
    free: *mut FreeObject,
    /// Next page in the pool's partial list (null at the tail).
    next: *mut PageHeader,
    /// Previous page in the pool's partial list (null at the head).
    prev: *mut PageHeader,
}

const _: () = assert!(size_of::<PageHeader>() <= HEADER_SIZE);

/// A freed pool object: its first word links to the next free object of its page.
struct FreeObject {
    next: *mut FreeObject,
}

/// A page in the page cache: its first word links to the next cached page.
struct CachedPage {
    next: *mut CachedPage,
}

/// One size class: the doubly linked list of its pages that have a free slot.
#[derive(Debug, Clone, Copy)]
struct Pool {
    /// Head of the partial list: pages of this class with `live < capacity`.
    partial: *mut PageHeader,
    /// All pages of this class (partial or full).
    pages: usize,
}

/// Everything behind the heap's lock.
///
/// Invariants (all pointers below point into pages this state holds exclusively,
/// obtained from the page source and not yet returned):
/// 1. `pools[c].partial` links, through `next`/`prev`, exactly the pages of class `c`
///    with `live < capacity`; each begins with an initialised [`PageHeader`] whose
///    `class == c`; the head's `prev` and the tail's `next` are null.
/// 2. A page of class `c` not in that list has `live == capacity` (it is full).
/// 3. In every pool page, `free` links objects of that page that are not handed out,
///    `bump` is `first_offset + k * size` for `k <= capacity`, and
///    `live + (length of free) + (capacity - k) == capacity`.
/// 4. `page_cache` links `cached_pages <= PAGE_CACHE_LIMIT` whole pages through
///    their first word; no object lives in them.
/// 5. Each pool holds at most one page with `live == 0`, and only while it was the
///    sole member of its partial list when it emptied (hysteresis against
///    returning and refetching a page on every alloc/free pair).
#[derive(Debug)]
pub(crate) struct HeapState {
    /// Full magazines flushed by per-CPU caches (their objects are free objects of
    /// the pools, still counted as handed out by them).
    pub(crate) depot: Depot,
    pools: [Pool; CLASS_COUNT],
    page_cache: *mut CachedPage,
    stats: HeapStats,
}

// SAFETY: `HeapState` owns the pages its pointers reach (invariants above), exactly
// like a `Vec` owns its buffer; nothing in it is tied to a thread, so moving it to
// another thread (behind the lock) is sound.
unsafe impl Send for HeapState {}

impl HeapState {
    /// An empty state: no pages held.
    pub(crate) const fn new() -> Self {
        Self {
            depot: Depot::new(),
            pools: [Pool {
                partial: ptr::null_mut(),
                pages: 0,
            }; CLASS_COUNT],
            page_cache: ptr::null_mut(),
            stats: HeapStats {
                bytes_in_use: 0,
                live_allocations: 0,
                pages_held: 0,
                pool_pages: 0,
                cached_pages: 0,
                large_pages: 0,
                cpu_cached_objects: 0,
                depot_objects: 0,
            },
        }
    }

    /// Current statistics.
    pub(crate) fn stats(&self) -> HeapStats {
        HeapStats {
            depot_objects: self.depot.objects(),
            ..self.stats
        }
    }

    /// Returns every object of `magazine` to its page in pool `class`.
    ///
    /// # Safety
    /// `magazine` holds free objects of pool `class` that nothing else uses.
    pub(crate) unsafe fn free_magazine<S: PageSource>(
        &mut self,
        class: usize,
        magazine: Magazine,
        source: &S,
    ) {
        // SAFETY: relies on the caller: each object is a free object of `class`;
        // `for_each` reads its link before `pool_free` overwrites it.
        unsafe { magazine.for_each(|object| self.pool_free(object, class, source)) };
    }

    /// Records an allocation of `bytes` requested bytes handed out. The use counters
    /// wrap: with per-CPU caches, a block allocated through a cache may be freed
    /// through this locked path (or resized here), and only the sum over the state
    /// and every cache is the real count.
    pub(crate) fn count_alloc(&mut self, bytes: usize) {
        self.stats.bytes_in_use = self.stats.bytes_in_use.wrapping_add(bytes);
        self.stats.live_allocations = self.stats.live_allocations.wrapping_add(1);
    }

    /// Records an allocation of `bytes` taken back.
    pub(crate) fn count_free(&mut self, bytes: usize) {
        self.stats.bytes_in_use = self.stats.bytes_in_use.wrapping_sub(bytes);
        self.stats.live_allocations = self.stats.live_allocations.wrapping_sub(1);
    }

    /// Records a block resized in place from `old` to `new` bytes.
    pub(crate) fn count_resize(&mut self, old: usize, new: usize) {
        self.stats.bytes_in_use = self.stats.bytes_in_use.wrapping_sub(old).wrapping_add(new);
    }

    /// One page, from the cache or else from `source`.
    pub(crate) fn take_page<S: PageSource>(&mut self, source: &S) -> Option<NonNull<u8>> {
        if let Some(page) = NonNull::new(self.page_cache) {
            // SAFETY: relies on invariant 4: `page` is a cached page we hold, whose first
            // word holds the link written by `give_back_page`.
            self.page_cache = unsafe { page.as_ptr().read().next };
            self.stats.cached_pages -= 1;
            return Some(page.cast());
        }
        let page = source.alloc_pages(1)?;
        debug_assert_eq!(page.as_ptr().addr() % PAGE_SIZE, 0, "unaligned page");
        self.stats.pages_held += 1;
        Some(page)
    }

    /// Returns one page to the cache, or to `source` if the cache is full.
    ///
    /// # Safety
    /// `page` is a whole page this state holds (from [`Self::take_page`]) that nothing
    /// refers to any more.
    pub(crate) unsafe fn give_back_page<S: PageSource>(&mut self, page: NonNull<u8>, source: &S) {
        if self.stats.cached_pages < PAGE_CACHE_LIMIT {
            let cached = page.cast::<CachedPage>();
            // SAFETY: relies on the caller's guarantee that `page` is a whole, unused,
            // page-aligned page we hold: writing its first word is in bounds and aligned.
            unsafe {
                cached.as_ptr().write(CachedPage {
                    next: self.page_cache,
                })
            };
            self.page_cache = cached.as_ptr();
            self.stats.cached_pages += 1;
        } else {
            // SAFETY: relies on the caller: `page` came from `source.alloc_pages(1)` (via
            // `take_page`) and is not used any more.
            unsafe { source.free_pages(page, 1) };
            self.stats.pages_held -= 1;
        }
    }

    /// Returns the depot's magazines to their pools, then every cached page and every
    /// empty pool page to `source`.
    pub(crate) fn trim<S: PageSource>(&mut self, source: &S) {
        for class in 0..CLASS_COUNT {
            while let Some(magazine) = self.depot.pop(class) {
                // SAFETY: depot magazines hold free objects of their class's pool.
                unsafe { self.free_magazine(class, magazine, source) };
            }
        }
        for class in 0..CLASS_COUNT {
            let mut page = self.pools[class].partial;
            while !page.is_null() {
                // SAFETY: relies on invariant 1: `page` is a valid header in the list.
                let (next, live) = unsafe { ((*page).next, (*page).live) };
                if live == 0 {
                    // SAFETY: relies on invariant 1 (`page` is linked in this pool's list)
                    // and on `live == 0`: no object of the page is in use, so the page
                    // is unused once unlinked.
                    unsafe {
                        self.unlink(class, page);
                        self.release_pool_page(class, page, source, false);
                    }
                }
                page = next;
            }
        }
        while let Some(page) = NonNull::new(self.page_cache) {
            // SAFETY: relies on invariant 4 (a cached page with its link word), and on
            // cached pages having come from `source.alloc_pages(1)`.
            unsafe {
                self.page_cache = page.as_ptr().read().next;
                source.free_pages(page.cast(), 1);
            }
            self.stats.cached_pages -= 1;
            self.stats.pages_held -= 1;
        }
    }

    /// An object of pool `class`, taking a new page if the pool has no free slot.
    pub(crate) fn pool_alloc<S: PageSource>(
        &mut self,
        class: usize,
        source: &S,
    ) -> Option<NonNull<u8>> {
        let geometry = GEOMETRY[class];
        let mut page = self.pools[class].partial;
        if page.is_null() {
            let fresh = self.take_page(source)?.cast::<PageHeader>();
            // SAFETY: relies on `take_page` returning a whole, page-aligned, writable page
            // that nothing else uses: the header write is in bounds and aligned; pushing
            // the new header keeps invariant 1 (it has `live == 0 < capacity`).
            unsafe {
                fresh.as_ptr().write(PageHeader {
                    class,
                    live: 0,
                    bump: geometry.first_offset,
                    free: ptr::null_mut(),
                    next: ptr::null_mut(),
                    prev: ptr::null_mut(),
                });
                self.push_front(class, fresh.as_ptr());
            }
            self.pools[class].pages += 1;
            self.stats.pool_pages += 1;
            page = fresh.as_ptr();
        }
        // SAFETY: relies on invariants 1 and 3: `page` is a valid header with a free slot,
        // either on its free list (a free object of this page, whose first word is its
        // link) or at `bump`, which is then below `first_offset + capacity * size`, so
        // the object lies inside the page. Full pages leave the partial list (inv. 2).
        unsafe {
            let object = if let Some(free) = NonNull::new((*page).free) {
                (*page).free = free.as_ptr().read().next;
                free.cast::<u8>()
            } else {
                let offset = (*page).bump;
                debug_assert!(offset + geometry.size <= PAGE_SIZE);
                (*page).bump = offset + geometry.size;
                NonNull::new_unchecked(page.cast::<u8>().add(offset))
            };
            (*page).live += 1;
            if (*page).live == geometry.capacity {
                self.unlink(class, page);
            }
            Some(object)
        }
    }

    /// Takes back an object of pool `class`.
    ///
    /// # Safety
    /// `object` was returned by [`Self::pool_alloc`] with the same `class` and has not
    /// been freed since; nothing uses it any more.
    pub(crate) unsafe fn pool_free<S: PageSource>(
        &mut self,
        object: NonNull<u8>,
        class: usize,
        source: &S,
    ) {
        let geometry = GEOMETRY[class];
        let page = object
            .as_ptr()
            .map_addr(|address| address & !(PAGE_SIZE - 1))
            .cast::<PageHeader>();
        // SAFETY: relies on the caller's guarantee: `object` is a live object of a pool
        // page of `class`, so masking its address yields that page's header (inv. 1-3),
        // and the object (at least 16 bytes, 16-aligned) can hold its free-list link.
        // A page leaving the full state rejoins the partial list (inv. 1-2); an empty
        // page is released unless it is the pool's only partial page (inv. 5).
        unsafe {
            debug_assert_eq!((*page).class, class, "freed with a different layout");
            let was_full = (*page).live == geometry.capacity;
            let free = object.cast::<FreeObject>();
            free.as_ptr().write(FreeObject { next: (*page).free });
            (*page).free = free.as_ptr();
            (*page).live -= 1;
            if was_full {
                self.push_front(class, page);
            }
            if (*page).live == 0 && !(self.pools[class].partial == page && (*page).next.is_null()) {
                self.unlink(class, page);
                self.release_pool_page(class, page, source, true);
            }
        }
    }

    /// Records that `pages` large pages were taken or returned.
    pub(crate) fn count_large_pages(&mut self, pages: usize, taken: bool) {
        if taken {
            self.stats.large_pages += pages;
            self.stats.pages_held += pages;
        } else {
            self.stats.large_pages -= pages;
            self.stats.pages_held -= pages;
        }
    }

    /// Records that one large single page (handled by take/give_back) is in use or not.
    pub(crate) fn count_large_single_page(&mut self, taken: bool) {
        if taken {
            self.stats.large_pages += 1;
        } else {
            self.stats.large_pages -= 1;
        }
    }

    /// Gives an unlinked, empty pool page back (to the cache if `cache`, else the source).
    ///
    /// # Safety
    /// `page` is an empty page of pool `class`, no longer in its partial list.
    unsafe fn release_pool_page<S: PageSource>(
        &mut self,
        class: usize,
        page: *mut PageHeader,
        source: &S,
        cache: bool,
    ) {
        self.pools[class].pages -= 1;
        self.stats.pool_pages -= 1;
        // SAFETY: `page` is non-null (it was a list member) and unused (caller).
        let page = unsafe { NonNull::new_unchecked(page.cast::<u8>()) };
        if cache {
            // SAFETY: relies on the caller: an unused whole page from `take_page`.
            unsafe { self.give_back_page(page, source) };
        } else {
            // SAFETY: relies on the caller: an unused whole page from `take_page`, which
            // got it from `source.alloc_pages(1)`.
            unsafe { source.free_pages(page, 1) };
            self.stats.pages_held -= 1;
        }
    }

    /// Pushes `page` at the head of pool `class`'s partial list.
    ///
    /// # Safety
    /// `page` is a valid header of this pool, not currently in the list.
    unsafe fn push_front(&mut self, class: usize, page: *mut PageHeader) {
        let head = self.pools[class].partial;
        // SAFETY: relies on the caller (`page` valid) and invariant 1 (`head` valid or null).
        unsafe {
            (*page).prev = ptr::null_mut();
            (*page).next = head;
            if !head.is_null() {
                (*head).prev = page;
            }
        }
        self.pools[class].partial = page;
    }

    /// Removes `page` from pool `class`'s partial list.
    ///
    /// # Safety
    /// `page` is a valid header currently in that list.
    unsafe fn unlink(&mut self, class: usize, page: *mut PageHeader) {
        // SAFETY: relies on the caller and invariant 1: `page` and its neighbours are
        // valid headers of this list.
        unsafe {
            let (prev, next) = ((*page).prev, (*page).next);
            if prev.is_null() {
                self.pools[class].partial = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*page).prev = ptr::null_mut();
            (*page).next = ptr::null_mut();
        }
    }
}
