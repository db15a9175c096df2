//! Physical memory and the kernel heap: the statics that compose `keel-pagealloc` and
//! `keel-heap`.
//!
//! At boot, [`init`] carves the page-metadata array out of RAM, creates the buddy
//! allocator over `[0, highest RAM page)`, and hands it every RAM page except the first
//! megabyte (firmware data), the kernel image, the boot page-table region and the
//! metadata array itself. Single pages go through a per-CPU cache; the heap gets its
//! pages through [`BuddyPageSource`] (single pages from the cache, runs from the buddy
//! allocator). Physical and virtual addresses are equal (identity map).
//!
//! Locks: the buddy allocator and each CPU's page cache sit behind `keel_sync::SpinLock`s.
//! The scheduler runs from interrupts and may allocate or free, so the heap and the
//! single-page paths run with interrupts masked on their CPU.

use core::ptr::NonNull;
use keel_arch_x86_64::bootinfo::MemoryKind;
use keel_arch_x86_64::{ArchInfo, percpu};
use keel_heap::{KernelHeap, PageSource as HeapPageSource};
use keel_pagealloc::{
    BuddyAllocator, PAGE_SIZE, PageAllocError, PageFrameNumber, PageMeta, PageRange, PageSource,
    PerCpuPageCache, metadata_bytes,
};
use keel_sync::SpinLock;

/// The global buddy allocator, `None` until [`init`].
static PAGES: SpinLock<Option<BuddyAllocator<'static>>> = SpinLock::new(None);
/// One single-page cache per CPU. Each has its own lock (uncontended unless a thread
/// migrates between reading its CPU index and locking, which stays correct).
static PAGE_CACHES: [SpinLock<PerCpuPageCache>; percpu::MAX_CPUS] =
    [const { SpinLock::new(PerCpuPageCache::new()) }; percpu::MAX_CPUS];

fn this_cpu_cache() -> &'static SpinLock<PerCpuPageCache> {
    &PAGE_CACHES[percpu::current_index()]
}

/// The heap's page source: single pages through this CPU's page cache, longer runs
/// from the buddy allocator.
#[derive(Debug)]
pub struct BuddyPageSource;

// SAFETY: pages come from the buddy allocator (directly, or through a per-CPU cache
// that holds only free pages it took from it), which hands each page out once; they
// are RAM, identity-mapped read-write, and page aligned; `free_pages` returns exactly
// the run that `alloc_pages` produced, by the same path (cache for one page).
unsafe impl HeapPageSource for BuddyPageSource {
    fn alloc_pages(&self, count: usize) -> Option<NonNull<u8>> {
        let start = if count == 1 {
            alloc_page()?
        } else {
            alloc_pages(count as u64).ok()?.start
        };
        NonNull::new(start.start_address()?.as_u64() as *mut u8)
    }

    unsafe fn free_pages(&self, start: NonNull<u8>, count: usize) {
        let frame = PageFrameNumber::new(start.as_ptr() as u64 / PAGE_SIZE);
        let result = if count == 1 {
            free_page(frame)
        } else {
            free_pages(PageRange::new(frame, count as u64))
        };
        if let Err(error) = result {
            log::error!("heap returned a bad page run at {frame}: {error}");
        }
    }
}

/// The kernel heap with interrupts masked while it runs: the scheduler runs from the
/// timer and wake-up interrupts and may allocate or free (a run-queue `Vec` growing,
/// the last reference to an exited thread dropped), so an interrupt taken while this
/// CPU holds the heap's spinlock would otherwise spin on it forever.
struct InterruptSafeHeap(KernelHeap<BuddyPageSource>);

// SAFETY: every method forwards to `KernelHeap`'s `GlobalAlloc` implementation with
// the same arguments, so its guarantees carry over; masking interrupts changes only
// when the code runs.
unsafe impl core::alloc::GlobalAlloc for InterruptSafeHeap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe { self.0.alloc(layout) })
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: core::alloc::Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe {
            self.0.dealloc(pointer, layout)
        })
    }

    unsafe fn alloc_zeroed(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe {
            self.0.alloc_zeroed(layout)
        })
    }

    unsafe fn realloc(
        &self,
        pointer: *mut u8,
        layout: core::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        x86_64::instructions::interrupts::without_interrupts(|| unsafe {
            self.0.realloc(pointer, layout, new_size)
        })
    }
}

#[global_allocator]
static HEAP: InterruptSafeHeap = InterruptSafeHeap(KernelHeap::new(BuddyPageSource));

/// What [`init`] set up.
#[derive(Debug, Clone, Copy)]
pub struct MemoryReport {
    /// Pages handed to the allocator.
    pub free_pages: u64,
    /// Bytes of page metadata.
    pub metadata_bytes: u64,
}

/// Why physical memory could not be set up.
#[derive(Debug, Clone, Copy)]
pub enum MemoryError {
    /// No RAM region can hold the metadata array.
    NoRoomForMetadata(u64),
    /// The allocator refused a range.
    Allocator(PageAllocError),
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRoomForMetadata(bytes) => {
                write!(f, "no RAM region can hold {bytes} bytes of page metadata")
            }
            Self::Allocator(error) => write!(f, "page allocator: {error}"),
        }
    }
}

/// Subtracts `holes` from `[start, end)` and calls `add` for each remaining piece.
fn for_each_piece(start: u64, end: u64, holes: &[(u64, u64)], add: &mut dyn FnMut(u64, u64)) {
    let mut cursor = start;
    while cursor < end {
        // The nearest hole that overlaps [cursor, end).
        let next_hole = holes
            .iter()
            .filter(|(hole_start, hole_end)| *hole_end > cursor && *hole_start < end)
            .min_by_key(|(hole_start, _)| *hole_start);
        match next_hole {
            Some(&(hole_start, hole_end)) => {
                if hole_start > cursor {
                    add(cursor, hole_start);
                }
                cursor = cursor.max(hole_end);
            }
            None => {
                add(cursor, end);
                cursor = end;
            }
        }
    }
}

/// Sets up the page allocator and the heap.
pub fn init(info: &ArchInfo) -> Result<MemoryReport, MemoryError> {
    let ram = || {
        info.boot
            .memory_regions()
            .iter()
            .filter(|region| region.kind == MemoryKind::Ram)
    };
    let highest = ram().map(|region| region.end()).max().unwrap_or(0);
    let span_pages = highest / PAGE_SIZE;
    let metadata_size = metadata_bytes(span_pages).next_multiple_of(PAGE_SIZE);
    let image = (
        info.layout.start,
        info.layout.end.next_multiple_of(PAGE_SIZE),
    );
    let tables = (
        info.paging.table_region_start,
        info.paging.table_region_start + keel_arch_x86_64::paging::TABLE_REGION_SIZE,
    );
    let low_memory = (0, 0x10_0000);
    // The metadata array goes in the first RAM gap big enough, above the tables.
    let mut metadata_at = None;
    for region in ram() {
        for_each_piece(
            region.start.next_multiple_of(PAGE_SIZE),
            region.end() & !(PAGE_SIZE - 1),
            &[low_memory, image, tables],
            &mut |start, end| {
                if metadata_at.is_none() && end - start >= metadata_size {
                    metadata_at = Some(start);
                }
            },
        );
    }
    let metadata_start = metadata_at.ok_or(MemoryError::NoRoomForMetadata(metadata_size))?;
    let slots = span_pages as usize;
    let metadata_pointer = metadata_start as *mut PageMeta;
    // SAFETY: [metadata_start, +metadata_size) is RAM that no one else uses (it avoids
    // low memory, the kernel image and the page tables, and is never handed to the
    // allocator below), identity-mapped read-write, and aligned for PageMeta (page
    // aligned). Every slot is initialised before the slice is formed; the slice lives
    // for the rest of the kernel's life, referenced only by the allocator.
    let metadata: &'static mut [PageMeta] = unsafe {
        for index in 0..slots {
            metadata_pointer.add(index).write(PageMeta::UNAVAILABLE);
        }
        core::slice::from_raw_parts_mut(metadata_pointer, slots)
    };
    let mut allocator = BuddyAllocator::new(metadata, PageFrameNumber::new(0));
    let metadata_hole = (metadata_start, metadata_start + metadata_size);
    let mut failure = None;
    for region in ram() {
        for_each_piece(
            region.start.next_multiple_of(PAGE_SIZE),
            region.end() & !(PAGE_SIZE - 1),
            &[low_memory, image, tables, metadata_hole],
            &mut |start, end| {
                let range = PageRange::new(
                    PageFrameNumber::new(start / PAGE_SIZE),
                    (end - start) / PAGE_SIZE,
                );
                if let Err(error) = allocator.add_free_range(range) {
                    failure.get_or_insert(error);
                }
            },
        );
    }
    if let Some(error) = failure {
        return Err(MemoryError::Allocator(error));
    }
    let report = MemoryReport {
        free_pages: allocator.free_page_count(),
        metadata_bytes: metadata_size,
    };
    *PAGES.lock() = Some(allocator);
    Ok(report)
}

/// The global allocator as the cache's refill/drain source: the global lock is taken
/// only when the cache runs empty or full, never on the cache's fast path.
struct LockedBuddy;

impl PageSource for LockedBuddy {
    fn alloc_page_batch(&mut self, out: &mut [PageFrameNumber]) -> usize {
        PAGES
            .lock()
            .as_mut()
            .map_or(0, |allocator| allocator.alloc_page_batch(out))
    }

    fn free_page_batch(&mut self, pages: &[PageFrameNumber]) {
        if let Some(allocator) = PAGES.lock().as_mut() {
            allocator.free_page_batch(pages);
        }
    }
}

/// Allocates one page through the CPU's cache.
pub fn alloc_page() -> Option<PageFrameNumber> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        this_cpu_cache().lock().alloc(&mut LockedBuddy)
    })
}

/// Frees one page through the CPU's cache.
pub fn free_page(frame: PageFrameNumber) -> Result<(), PageAllocError> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        this_cpu_cache().lock().free(frame, &mut LockedBuddy)
    })
}

/// Allocates `count` contiguous pages.
pub fn alloc_pages(count: u64) -> Result<PageRange, PageAllocError> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        PAGES
            .lock()
            .as_mut()
            .ok_or(PageAllocError::OutOfMemory)?
            .alloc_pages(count)
    })
}

/// Frees a run from [`alloc_pages`].
pub fn free_pages(range: PageRange) -> Result<(), PageAllocError> {
    // Thread stacks are freed when a thread's last reference goes, possibly inside
    // the scheduler running from an interrupt: mask interrupts around the lock.
    x86_64::instructions::interrupts::without_interrupts(|| {
        PAGES
            .lock()
            .as_mut()
            .ok_or(PageAllocError::NotAllocated)?
            .free_pages(range)
    })
}

/// Free pages in the buddy allocator plus the cache.
pub fn free_page_count() -> u64 {
    let cached: u64 = PAGE_CACHES
        .iter()
        .map(|cache| cache.lock().len() as u64)
        .sum();
    PAGES
        .lock()
        .as_ref()
        .map_or(0, |allocator| allocator.free_page_count())
        + cached
}

/// The heap's statistics.
pub fn heap_stats() -> keel_heap::HeapStats {
    HEAP.0.stats()
}
