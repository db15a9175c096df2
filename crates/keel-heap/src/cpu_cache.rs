//! Per-CPU object caches: the heap's fast path, which takes no lock.
//!
//! Each CPU has, per size class, a bin: a LIFO stack of free pool objects linked
//! through their first word (glibc's tcache and Bonwick's magazines do the same). An
//! allocation pops from the calling CPU's bin; a free pushes onto it, whichever CPU
//! the object came from, so an object allocated on one CPU and freed on another costs
//! the same as a local one. Only when a bin is empty (refill) or over its capacity
//! (flush) does the CPU take the heap's lock, once per batch of half a bin.
//!
//! Exclusive access to a CPU's cache comes from [`CurrentCpu`]: in the kernel,
//! interrupts are masked while the bin is touched, so the thread can neither be
//! preempted nor moved, and no interrupt handler on the same CPU can enter the heap.
//! Other CPUs only read the owner-written counters (for statistics), never the bins.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::class::{CLASS_COUNT, GEOMETRY};

/// The calling context's CPU cache index, and exclusive use of it.
///
/// # Safety
/// Between an [`enter`](Self::enter) that returned `Some(index)` and the matching
/// [`leave`](Self::leave), no other context may hold the same `index` (for the same
/// heap): in a kernel, `enter` masks interrupts and returns this CPU's index, so the
/// caller can be neither preempted, nor moved, nor re-entered by an interrupt handler;
/// on a host, each thread has an index of its own. Indices at or above the heap's
/// `CPUS` are ignored (the heap takes its locked path).
pub unsafe trait CurrentCpu {
    /// What `enter` must hand back to `leave` (for example, the interrupt flag).
    type Saved;

    /// Starts exclusive use of this context's cache; `None` if it has none (then the
    /// heap uses its locked path).
    fn enter() -> (Option<usize>, Self::Saved);

    /// Ends what [`enter`](Self::enter) started.
    fn leave(saved: Self::Saved);
}

/// No per-CPU caches: every allocation takes the heap's lock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCpuCaches;

// SAFETY: never returns an index, so there is nothing to hold exclusively.
unsafe impl CurrentCpu for NoCpuCaches {
    type Saved = ();

    #[inline]
    fn enter() -> (Option<usize>, ()) {
        (None, ())
    }

    #[inline]
    fn leave((): ()) {}
}

/// A pool of 64 cache indices that threads claim and release, for host programs
/// whose "CPUs" are threads: [`thread_caches!`](crate::thread_caches) builds a
/// [`CurrentCpu`] on it. Bit `i` of the word is set while some thread holds index `i`.
#[derive(Debug)]
pub struct CacheIndexPool {
    claimed: core::sync::atomic::AtomicU64,
}

impl Default for CacheIndexPool {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheIndexPool {
    /// A pool with every index free.
    pub const fn new() -> Self {
        Self {
            claimed: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Claims the lowest free index; `None` if all 64 are held. Acquire: the claimer
    /// sees everything the index's previous holder did to its cache.
    pub fn claim(&self) -> Option<usize> {
        let mut claimed = self.claimed.load(Ordering::Relaxed);
        loop {
            let free = !claimed;
            if free == 0 {
                return None;
            }
            let index = free.trailing_zeros();
            match self.claimed.compare_exchange_weak(
                claimed,
                claimed | (1 << index),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(index as usize),
                Err(now) => claimed = now,
            }
        }
    }

    /// Releases `index` (Release: the next claimer sees this holder's last changes).
    /// Only its holder may call this, once.
    pub fn release(&self, index: usize) {
        debug_assert!(index < 64);
        self.claimed.fetch_and(!(1 << index), Ordering::Release);
    }
}

/// Defines `$name`, a [`CurrentCpu`] for host programs (tests, benches) in which each
/// thread holds a cache index of its own while it lives: the lowest of 64 that no live
/// thread holds, claimed from a [`CacheIndexPool`] at the thread's first heap call and
/// released when it exits (the next thread to claim it inherits the cached objects,
/// which are free objects of the heap either way). A thread that finds all 64 held, or
/// calls the heap from a thread-local destructor, uses the heap's locked path. The
/// calling crate must link `std` (the macro uses `std::thread_local!`).
///
/// ```
/// keel_heap::thread_caches!(pub HostThreads);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! thread_caches {
    ($visibility:vis $name:ident) => {
        /// One heap cache per live thread (see `keel_heap::thread_caches!`).
        #[derive(Debug, Clone, Copy, Default)]
        $visibility struct $name;

        const _: () = {
            static POOL: $crate::CacheIndexPool = $crate::CacheIndexPool::new();

            /// `INDEX` before the thread's first heap call.
            const UNCLAIMED: usize = usize::MAX;
            /// `INDEX` once the thread has no cache (none free, or it is exiting).
            const NONE: usize = usize::MAX - 1;

            /// A thread's claim on an index of `POOL`: registered at its first heap
            /// call, so that its drop at thread exit gives the index back.
            struct Claim(usize);

            impl Drop for Claim {
                fn drop(&mut self) {
                    // The thread stops using the index before anyone can claim it.
                    let _ = INDEX.try_with(|index| index.set(NONE));
                    POOL.release(self.0);
                }
            }

            ::std::thread_local! {
                // No destructor and a constant initial value, so reading it is one
                // thread-local load: the fast path.
                static INDEX: ::core::cell::Cell<usize> =
                    const { ::core::cell::Cell::new(UNCLAIMED) };
                static CLAIM: ::core::cell::Cell<Option<Claim>> =
                    const { ::core::cell::Cell::new(None) };
            }

            /// Claims an index for this thread (first heap call), or records that it
            /// has none.
            #[cold]
            fn claim() -> Option<usize> {
                let claimed = POOL.claim();
                let registered = claimed.is_some_and(|index| {
                    CLAIM.try_with(|claim| claim.set(Some(Claim(index)))).is_ok()
                });
                match claimed {
                    Some(index) if registered => {
                        INDEX.set(index);
                        Some(index)
                    }
                    Some(index) => {
                        // Thread-local storage is going away: give the index back.
                        POOL.release(index);
                        INDEX.set(NONE);
                        None
                    }
                    None => {
                        INDEX.set(NONE);
                        None
                    }
                }
            }

            // SAFETY: an index is held by one live thread at a time (claimed and
            // released through `POOL` with Acquire/Release, so the next holder sees
            // the previous one's writes), and a thread runs one heap call at a time
            // (nothing here runs in a signal handler).
            unsafe impl $crate::CurrentCpu for $name {
                type Saved = ();

                #[inline]
                fn enter() -> (Option<usize>, ()) {
                    let index = match INDEX.get() {
                        UNCLAIMED => claim(),
                        NONE => None,
                        index => Some(index),
                    };
                    (index, ())
                }

                #[inline]
                fn leave((): ()) {}
            }
        };
    };
}

/// A free object in a bin: its first word links to the next one.
struct BinObject {
    next: *mut BinObject,
}

/// Most objects a bin of `class` holds: about 8 KiB of objects, between 4 and 128.
#[inline]
pub(crate) const fn bin_capacity(class: usize) -> usize {
    BIN_CAPACITIES[class]
}

/// Objects moved per refill or flush: half a bin.
#[inline]
pub(crate) const fn batch_size(class: usize) -> usize {
    BIN_CAPACITIES[class] / 2
}

/// [`bin_capacity`] of every class, computed once (a division per free would show).
const BIN_CAPACITIES: [usize; CLASS_COUNT] = {
    let mut table = [0; CLASS_COUNT];
    let mut class = 0;
    while class < CLASS_COUNT {
        let by_bytes = 8192 / GEOMETRY[class].size;
        table[class] = if by_bytes < 4 {
            4
        } else if by_bytes > 128 {
            128
        } else {
            by_bytes
        };
        class += 1;
    }
    table
};

/// One CPU's cache, on a cache line of its own.
#[repr(align(64))]
#[derive(Debug)]
pub(crate) struct CpuCache {
    /// Per class, the head of the bin's list. Touched only by the owning context
    /// (see [`CurrentCpu`]).
    heads: UnsafeCell<[*mut BinObject; CLASS_COUNT]>,
    /// Per class, the objects in the bin. Written only by the owner (a plain load and
    /// store, no read-modify-write); read by anyone for statistics, `Relaxed`.
    counts: [AtomicUsize; CLASS_COUNT],
    /// Requested bytes handed out minus taken back through this cache, wrapping (an
    /// object allocated here and freed elsewhere makes one cache's count go up and the
    /// other's down; the sum over all caches is right). Owner-written, `Relaxed`.
    bytes: AtomicUsize,
    /// Allocations handed out minus taken back through this cache, wrapping, as `bytes`.
    allocations: AtomicUsize,
}

// SAFETY: the bins' pointers reach free pool objects that the heap owns; the owner
// discipline of `CurrentCpu` makes every access to `heads` exclusive, and the counters
// are atomics.
unsafe impl Sync for CpuCache {}
// SAFETY: as for `Sync`: the objects belong to the heap, not to a thread.
unsafe impl Send for CpuCache {}

/// Adds `delta` (wrapping) to an owner-written counter.
#[inline]
fn owner_add(counter: &AtomicUsize, delta: usize) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(delta),
        Ordering::Relaxed,
    );
}

impl CpuCache {
    /// An empty cache.
    pub(crate) const fn new() -> Self {
        Self {
            heads: UnsafeCell::new([ptr::null_mut(); CLASS_COUNT]),
            counts: [const { AtomicUsize::new(0) }; CLASS_COUNT],
            bytes: AtomicUsize::new(0),
            allocations: AtomicUsize::new(0),
        }
    }

    /// Objects in the bin of `class` (racy when read by another CPU).
    #[inline]
    pub(crate) fn count(&self, class: usize) -> usize {
        self.counts[class].load(Ordering::Relaxed)
    }

    /// Objects in every bin.
    pub(crate) fn cached_objects(&self) -> usize {
        (0..CLASS_COUNT).map(|class| self.count(class)).sum()
    }

    /// This cache's (wrapping) contribution to the bytes and allocations in use.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.allocations.load(Ordering::Relaxed),
        )
    }

    /// Records that `bytes` requested bytes were handed out (`true`) or taken back.
    #[inline]
    pub(crate) fn count_use(&self, bytes: usize, handed_out: bool) {
        if handed_out {
            owner_add(&self.bytes, bytes);
            owner_add(&self.allocations, 1);
        } else {
            owner_add(&self.bytes, bytes.wrapping_neg());
            owner_add(&self.allocations, usize::MAX);
        }
    }

    /// Pops an object of `class`, if the bin has one.
    ///
    /// # Safety
    /// The caller has exclusive use of this cache ([`CurrentCpu`]).
    #[inline]
    pub(crate) unsafe fn pop(&self, class: usize) -> Option<NonNull<u8>> {
        // SAFETY: exclusive use (the caller); every object in a bin is a free pool
        // object of `class` the heap owns, whose first word is its link (`push`).
        unsafe {
            let heads = &mut *self.heads.get();
            let object = NonNull::new(heads[class])?;
            heads[class] = object.as_ptr().read().next;
            owner_add(&self.counts[class], usize::MAX);
            Some(object.cast())
        }
    }

    /// Pushes a free object of `class`; returns the bin's new count.
    ///
    /// # Safety
    /// The caller has exclusive use of this cache, and `object` is a pool object of
    /// `class` that nothing uses any more (at least 16 bytes, 16-aligned).
    #[inline]
    pub(crate) unsafe fn push(&self, class: usize, object: NonNull<u8>) -> usize {
        // SAFETY: exclusive use (the caller); `object` is unused and large and aligned
        // enough for the link word.
        unsafe {
            let heads = &mut *self.heads.get();
            object
                .cast::<BinObject>()
                .as_ptr()
                .write(BinObject { next: heads[class] });
            heads[class] = object.as_ptr().cast();
        }
        let count = self.count(class) + 1;
        self.counts[class].store(count, Ordering::Relaxed);
        count
    }
}

/// Most magazines of `class` the depot keeps before a flush goes to the pools: about
/// 64 KiB of objects per class, at least two magazines.
pub(crate) const fn depot_limit(class: usize) -> usize {
    let magazine_bytes = batch_size(class) * GEOMETRY[class].size;
    let by_bytes = 65536 / magazine_bytes;
    if by_bytes < 2 { 2 } else { by_bytes }
}

/// A chain of [`batch_size`] free objects of one class, linked through their first
/// word (the last one's link is null): what moves between a CPU's bin and the
/// [`Depot`] as one unit, so a batch crosses CPUs in O(1) under the heap's lock
/// instead of object by object through the pools (Bonwick's magazines and depot).
#[derive(Debug)]
pub(crate) struct Magazine {
    head: NonNull<BinObject>,
}

impl Magazine {
    /// Calls `each` on every object of the chain, reading each link before `each`
    /// runs (so `each` may overwrite the object).
    ///
    /// # Safety
    /// The magazine's objects are free objects the heap owns, linked as built by
    /// [`CpuCache::take_magazine`].
    pub(crate) unsafe fn for_each(self, mut each: impl FnMut(NonNull<u8>)) {
        let mut object = self.head.as_ptr();
        while let Some(current) = NonNull::new(object) {
            // SAFETY: relies on the caller: `current` is an object of the chain whose
            // first word is the link to the next one.
            object = unsafe { current.as_ptr().read().next };
            each(current.cast());
        }
    }
}

impl CpuCache {
    /// Detaches the `count` objects on top of the bin of `class` as a magazine.
    ///
    /// # Safety
    /// The caller has exclusive use of this cache, and the bin holds at least
    /// `count >= 1` objects.
    pub(crate) unsafe fn take_magazine(&self, class: usize, count: usize) -> Magazine {
        debug_assert!(count >= 1 && self.count(class) >= count);
        // SAFETY: exclusive use (the caller); the bin's first `count` objects exist
        // (the caller) and each holds its link in its first word.
        unsafe {
            let heads = &mut *self.heads.get();
            let head = NonNull::new_unchecked(heads[class]);
            let mut tail = head.as_ptr();
            for _ in 1..count {
                tail = (*tail).next;
            }
            heads[class] = (*tail).next;
            (*tail).next = ptr::null_mut();
            self.counts[class].store(self.count(class) - count, Ordering::Relaxed);
            Magazine { head }
        }
    }

    /// Makes `magazine`, of `count` objects, the bin of `class`.
    ///
    /// # Safety
    /// The caller has exclusive use of this cache, the bin of `class` is empty, and
    /// `magazine` holds `count` free objects of `class`.
    pub(crate) unsafe fn put_magazine(&self, class: usize, magazine: Magazine, count: usize) {
        debug_assert_eq!(self.count(class), 0);
        // SAFETY: exclusive use (the caller).
        unsafe { (*self.heads.get())[class] = magazine.head.as_ptr() };
        self.counts[class].store(count, Ordering::Relaxed);
    }
}

/// Full magazines that CPUs flushed, per class, for any CPU's next refill; lives
/// behind the heap's lock. In the depot, a magazine's first object's second word
/// links to the next magazine (every object is at least 16 bytes).
#[derive(Debug)]
pub(crate) struct Depot {
    tops: [*mut BinObject; CLASS_COUNT],
    counts: [usize; CLASS_COUNT],
}

impl Depot {
    /// An empty depot.
    pub(crate) const fn new() -> Self {
        Self {
            tops: [ptr::null_mut(); CLASS_COUNT],
            counts: [0; CLASS_COUNT],
        }
    }

    /// Magazines of `class` in the depot.
    pub(crate) fn count(&self, class: usize) -> usize {
        self.counts[class]
    }

    /// Free objects in the depot, over every class.
    pub(crate) fn objects(&self) -> usize {
        (0..CLASS_COUNT)
            .map(|class| self.counts[class] * batch_size(class))
            .sum()
    }

    /// The second word of `object`: the link to the next magazine in the depot.
    fn magazine_link(object: NonNull<BinObject>) -> *mut *mut BinObject {
        object.as_ptr().cast::<*mut BinObject>().wrapping_add(1)
    }

    /// Adds a magazine of `class`.
    ///
    /// # Safety
    /// `magazine` holds free objects of `class` (at least 16 bytes each) that only
    /// the depot will use.
    pub(crate) unsafe fn push(&mut self, class: usize, magazine: Magazine) {
        // SAFETY: relies on the caller: the head object is free and at least 16
        // bytes, so its second word is ours to write.
        unsafe { Self::magazine_link(magazine.head).write(self.tops[class]) };
        self.tops[class] = magazine.head.as_ptr();
        self.counts[class] += 1;
    }

    /// Takes a magazine of `class`, if the depot has one.
    pub(crate) fn pop(&mut self, class: usize) -> Option<Magazine> {
        let head = NonNull::new(self.tops[class])?;
        // SAFETY: `head` heads a magazine pushed by `push`, whose second word holds
        // the link to the next magazine.
        self.tops[class] = unsafe { Self::magazine_link(head).read() };
        self.counts[class] -= 1;
        Some(Magazine { head })
    }
}
