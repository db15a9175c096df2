//! Keel's kernel heap: the allocator behind the kernel's `#[global_allocator]`.
//!
//! [`KernelHeap`] implements [`GlobalAlloc`] over a [`PageSource`], the trait through
//! which it gets whole 4 KiB pages (the kernel implements it over `keel-pagealloc`,
//! identity mapped; host tests and benches over `std::alloc`). Its state sits behind a
//! [`keel_sync::IrqSpinLock`] whose guard masks interrupts with the kernel's
//! [`keel_sync::InterruptMask`] (the second type parameter; no-op by default); [`KernelHeap::stats`] reports a [`HeapStats`].
//!
//! # Design (after OSv's `malloc`)
//! - **Small objects** (size and alignment up to 1024, or size up to 2016 with
//!   alignment up to 32) come from one pool per size class: 16, 32, …, 1024 bytes
//!   (powers of two, each object naturally aligned) and 2016 bytes (two per page).
//!   A pool carves objects out of whole pages. Every pool page starts with a 64-byte
//!   header (OSv's `page_header`): its class, its count of live objects, a bump
//!   offset for lazy carving, its intrusive free list (written into the free objects
//!   themselves) and the links of the pool's list of pages with free slots. Freeing
//!   finds the header by masking the pointer down to its page, so objects carry no
//!   header of their own, and both alloc and free are O(1). The pool for a free is
//!   chosen from the `Layout` that `GlobalAlloc::dealloc` passes (the page header's
//!   class is checked against it in debug builds). Pool objects are never
//!   page-aligned, large blocks always are, which would also let a size-less C
//!   `free` route pointers, as OSv does.
//! - **Large blocks** (anything else) are whole pages straight from the source; a
//!   single page goes through a small page cache (16 pages). Alignment above 4096 is
//!   met by over-allocating and recording the real start just below the block.
//! - **Returning memory**: a pool page whose last object is freed goes back to the
//!   page cache (and from there to the source) unless it is its pool's only page
//!   with free slots — that one is kept, so an alloc/free pair does not fetch and
//!   return a page every time. [`KernelHeap::trim`] returns every cached or empty
//!   page to the source.
//! - **Per-CPU object caches** (optional, the kernel's configuration): with a
//!   [`CurrentCpu`] and `CPUS > 0`, each CPU keeps, per class, a bin of free objects
//!   (a LIFO list through their first word, as glibc's tcache; about 8 KiB of objects,
//!   4 to 128). Pool allocations and frees touch only the calling CPU's bin, with no
//!   lock and no atomic read-modify-write (in the kernel, with interrupts masked for
//!   those few instructions). A free goes to the freeing CPU's bin whichever CPU
//!   allocated the object. An empty bin refills, and a bin over its capacity flushes
//!   half of itself, under the heap's lock, once per batch: flushed halves go whole to
//!   a shared depot of full magazines (the magazines and depot of Bonwick and Adams,
//!   USENIX 2001), so a batch freed on one CPU reaches
//!   another CPU's refill in O(1), not object by object through the pools; past the
//!   depot's limit (about 64 KiB per class) they go back to their pages. Statistics
//!   sum per-CPU counters that only their owner writes. [`KernelHeap::trim`] and
//!   out-of-memory retries flush the calling CPU's bins and the depot; other CPUs'
//!   bins (at most about 8 KiB per class each) stay where they are. On a host,
//!   [`thread_caches!`] gives each thread a cache of its own.
//! - Exhaustion returns null (never panics); size 0 is served as 1 byte; `realloc`
//!   stays in place when the old and new sizes share a class or a page count.
//!
//! # Why not `talc` or `linked_list_allocator`
//! Both are general first-fit/binned allocators over one arena: their cost depends on
//! fragmentation, and they need the arena up front. Size-class pools fed by the page
//! allocator make alloc and free O(1) with no per-object header, return whole pages
//! to the page allocator, and carry the per-CPU caches (OSv's design has per-CPU
//! pools). The price is footprint when few objects are live: every class in use holds
//! at least a page. `benches/benches/heap.rs` measures this against `talc`, glibc's
//! `malloc` and `mimalloc` in the same run.
//!
//! # Unsafe fence
//! The crate root denies `unsafe_code`; only three named modules allow it: `allocator`
//! (the [`PageSource`] contract, [`KernelHeap`]'s large-block paths and its
//! `GlobalAlloc` implementation), `pool` (pointer work inside the pool pages the heap
//! owns) and `cpu_cache` (the [`CurrentCpu`] contract, the bins, magazines and depot). Every block there has a `// SAFETY:` comment. `class` (size-class geometry)
//! and everything else are safe code.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

#[allow(unsafe_code)]
mod allocator;
mod class;
#[allow(unsafe_code)]
mod cpu_cache;
#[allow(unsafe_code)]
mod pool;
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;

pub use allocator::{KernelHeap, PageSource};
pub(crate) use class::GEOMETRY;
pub use class::{MAX_POOL_SIZE, SIZE_CLASSES};
pub use cpu_cache::{CacheIndexPool, CurrentCpu, NoCpuCaches};

/// Size of a page, in bytes: the unit of [`PageSource`].
pub const PAGE_SIZE: usize = 4096;

/// A snapshot of the heap's accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Sum of the requested sizes (`Layout::size`) of the live allocations.
    pub bytes_in_use: usize,
    /// Number of live allocations.
    pub live_allocations: usize,
    /// Pages obtained from the source and not returned: pool, cached and large pages.
    pub pages_held: usize,
    /// Pages currently carved into pool objects.
    pub pool_pages: usize,
    /// Free pages kept in the single-page cache.
    pub cached_pages: usize,
    /// Pages backing large blocks (including over-alignment slack).
    pub large_pages: usize,
    /// Free pool objects held in per-CPU caches: free to the heap's users, but still
    /// taken from their pools' pages.
    pub cpu_cached_objects: usize,
    /// Free pool objects in full magazines that CPUs flushed to the shared depot, for
    /// any CPU's next refill; as `cpu_cached_objects`, still taken from their pools.
    pub depot_objects: usize,
}
