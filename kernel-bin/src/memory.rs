//! Physical memory and the kernel heap: the statics that compose `keel-pagealloc` and
//! `keel-heap`.
//!
//! At boot, [`init`] asks `keel-memmap` for a plan (the arithmetic lives there, tested
//! on the host): it checks that the RAM outside the first megabyte (firmware data), the
//! kernel image and the boot page-table region covers the page metadata plus what the
//! kernel allocates while it boots ([`boot_demand`]), failing with "not enough memory:
//! N KiB usable, M KiB needed" otherwise, and says where the metadata array goes. This
//! module writes the array there (followed by the caches' shared handed-out bits,
//! which refuse a double-freed single page at once), creates the buddy allocator over
//! `[0, highest RAM page)`, and hands it the plan's free ranges. Single pages go through a per-CPU cache; the heap gets its
//! pages through [`BuddyPageSource`] (single pages from the cache, runs from the buddy
//! allocator), and keeps a per-CPU object cache for each CPU ([`KernelCpuCaches`]). Physical and virtual addresses are equal (identity map).
//!
//! Locks: the buddy allocator and each CPU's page cache sit behind their own
//! `keel_sync::IrqSpinLock`s (masked by [`KernelInterrupts`], like the heap's) inside `keel_pagealloc::SharedPageAllocator`, which also
//! drains every CPU's cache at out of memory, so cached pages coalesce and reach any CPU
//! (the heap's trim-and-retry frees single pages into this CPU's cache).
//! The scheduler runs from interrupts and may allocate or free, so every one of these
//! locks masks interrupts on its CPU for as long as it is held: by its type, not by
//! each caller remembering to.

use crate::{smp, threads};
use core::ptr::NonNull;
use keel_arch_x86_64::bootinfo::{MAX_MODULES, MemoryKind};
use keel_arch_x86_64::{ArchInfo, percpu};
use keel_heap::{CurrentCpu, KernelHeap, PageSource as HeapPageSource};
use keel_memmap::{BootDemand, PhysRange, PlanError};
use keel_pagealloc::{
    BuddyAllocator, DEFAULT_CACHE_CAPACITY, HandedOutPages, PAGE_SIZE, PageAllocError,
    PageFrameNumber, PageMeta, PageRange, PhysAddr, SharedPageAllocator, metadata_bytes,
};
use keel_sync::InterruptMask;

/// The buddy allocator and one single-page cache per CPU, each behind its own lock,
/// with the caches' shared handed-out bits; set by [`init`]. At out of memory it
/// drains every CPU's cache and retries (see `SharedPageAllocator::drain_all_caches`).
static PAGES: spin::Once<SharedPageAllocator<'static, KernelInterrupts, { percpu::MAX_CPUS }>> =
    spin::Once::new();

/// Bytes the plan reserves after the metadata array for `span_pages` pages: the
/// [`PageMeta`] slots, padding to 8 bytes, then the [`HandedOutPages`] words.
fn metadata_and_bits_bytes(span_pages: u64) -> u64 {
    bits_offset(span_pages) + HandedOutPages::bytes_for(span_pages)
}

/// Where the [`HandedOutPages`] words start, from the start of the metadata range.
fn bits_offset(span_pages: u64) -> u64 {
    metadata_bytes(span_pages).next_multiple_of(8)
}

/// The page allocator; `None` before [`init`].
fn pages() -> Option<&'static SharedPageAllocator<'static, KernelInterrupts, { percpu::MAX_CPUS }>>
{
    PAGES.get()
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

/// This CPU's interrupt flag as the mask of the kernel's [`IrqSpinLock`](keel_sync::IrqSpinLock)s:
/// the page allocator, its per-CPU caches and the heap. The scheduler runs from the
/// timer and wake-up interrupts and may allocate or free (a run queue growing, the last
/// reference to an exited thread dropped, its stack freed), so any of those locks held
/// with interrupts on could be wanted again by the interrupted CPU, which would then
/// spin on it forever. With this mask in the locks' type, no path can hold them with
/// interrupts on.
#[derive(Debug)]
pub struct KernelInterrupts;

impl InterruptMask for KernelInterrupts {
    #[inline]
    fn mask() -> bool {
        let enabled = x86_64::instructions::interrupts::are_enabled();
        if enabled {
            x86_64::instructions::interrupts::disable();
        }
        enabled
    }

    #[inline]
    fn restore(was_enabled: bool) {
        if was_enabled {
            x86_64::instructions::interrupts::enable();
        }
    }
}

/// The heap's per-CPU object caches: the cache of the CPU the caller runs on, with
/// interrupts masked from `enter` to `leave` (so the thread is neither preempted nor
/// moved, and no handler on this CPU enters the heap meanwhile).
#[derive(Debug)]
#[cfg_attr(
    feature = "heap-locked",
    expect(dead_code, reason = "the experiment's heap has no caches")
)]
pub struct KernelCpuCaches;

// SAFETY: `enter` masks interrupts before it reads this CPU's index and `leave`
// restores them after the heap is done with the cache: in between, nothing else runs
// on this CPU (no preemption, no interrupt handler; NMI handlers do not allocate), and
// every other CPU has an index of its own, so the index is held by this context alone.
unsafe impl CurrentCpu for KernelCpuCaches {
    type Saved = bool;

    #[inline]
    fn enter() -> (Option<usize>, bool) {
        let was_enabled = KernelInterrupts::mask();
        (Some(percpu::current_index()), was_enabled)
    }

    #[inline]
    fn leave(was_enabled: bool) {
        KernelInterrupts::restore(was_enabled);
    }
}

/// The kernel heap's type: with per-CPU object caches, or without them under the
/// `heap-locked` experiment feature.
#[cfg(not(feature = "heap-locked"))]
type Heap = KernelHeap<BuddyPageSource, KernelInterrupts, KernelCpuCaches, { percpu::MAX_CPUS }>;
#[cfg(feature = "heap-locked")]
type Heap = KernelHeap<BuddyPageSource, KernelInterrupts>;

#[global_allocator]
static HEAP: Heap = KernelHeap::with_interrupt_mask(BuddyPageSource);

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
    /// The memory map leaves too little RAM, or no room for the metadata array.
    Plan(PlanError),
    /// The allocator refused a range.
    Allocator(PageAllocError),
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Plan(error) => write!(f, "{error}"),
            Self::Allocator(error) => write!(f, "page allocator: {error}"),
        }
    }
}

/// The most RAM regions [`init`] considers (QEMU's maps have a handful).
const MAX_RAM_REGIONS: usize = 64;

/// Heap pages held once the kernel has booted: measured at 4, 6, 6 and 7 pages with 1,
/// 2, 4 and 8 CPUs (64 MiB, q35); the reserve doubles that and adds one per CPU.
fn heap_boot_pages(cpus: u64) -> u64 {
    16 + cpus
}

/// What the kernel allocates from the page allocator while it boots with `cpus` CPUs:
/// the main thread's stack, each application processor's first stack and IST stacks
/// (`smp`), one page-cache refill per CPU and the heap's pages.
pub fn boot_demand(cpus: u64) -> BootDemand {
    BootDemand {
        cpus,
        main_stack_bytes: threads::DEFAULT_STACK_SIZE as u64,
        ap_stack_bytes: smp::AP_STACK_SIZE,
        ap_ist_stacks: keel_arch_x86_64::gdt::IST_COUNT as u64,
        ap_ist_bytes: smp::AP_IST_SIZE,
        page_cache_refill_pages: (DEFAULT_CACHE_CAPACITY / 2) as u64,
        heap_pages: heap_boot_pages(cpus),
    }
}

/// The CPUs the kernel will try to start: those the MADT lists (at most
/// `percpu::MAX_CPUS`), or the boot CPU alone.
fn cpus_to_start(info: &ArchInfo) -> u64 {
    match &info.platform {
        Ok(platform) => platform.cpu_count().clamp(1, percpu::MAX_CPUS) as u64,
        Err(_) => 1,
    }
}

/// Sets up the page allocator and the heap: `keel_memmap::plan` checks the memory map
/// against [`boot_demand`] and places the page metadata; this writes the metadata array
/// there and hands the plan's free ranges to the buddy allocator.
pub fn init(info: &ArchInfo) -> Result<MemoryReport, MemoryError> {
    let mut ram = [PhysRange::new(PhysAddr::new(0), PhysAddr::new(0)); MAX_RAM_REGIONS];
    let mut ram_count = 0;
    for region in info.boot.memory_regions() {
        if region.kind != MemoryKind::Ram {
            continue;
        }
        if ram_count == MAX_RAM_REGIONS {
            log::warn!("more than {MAX_RAM_REGIONS} RAM regions; ignoring {region:?}");
            continue;
        }
        ram[ram_count] = PhysRange::new(region.start, region.end());
        ram_count += 1;
    }
    let ram = &ram[..ram_count];
    let tables = info.paging.table_region_start;
    let mut reserved = [PhysRange::new(PhysAddr::new(0), PhysAddr::new(0)); 3 + MAX_MODULES];
    reserved[..3].copy_from_slice(&[
        // Firmware data (BIOS data area, EBDA, the AP trampoline page).
        PhysRange::new(PhysAddr::new(0), PhysAddr::new(0x10_0000)),
        // The image is identity-mapped: its virtual addresses are physical ones.
        PhysRange::new(
            PhysAddr::new(info.layout.start.as_u64()),
            PhysAddr::new(info.layout.end.as_u64()),
        ),
        PhysRange::new(tables, tables + keel_arch_x86_64::paging::TABLE_REGION_SIZE),
    ]);
    // The loader's modules (the boot image, `-initrd`): read after the allocator is up
    // (files.rs), so never handed out. They stay reserved afterwards.
    let mut reserved_count = 3;
    for module in info.boot.modules() {
        let end = module.start.as_u64().saturating_add(module.size);
        reserved[reserved_count] = PhysRange::new(module.start, PhysAddr::new(end));
        reserved_count += 1;
    }
    let reserved = &reserved[..reserved_count];
    let plan = keel_memmap::plan(
        ram,
        reserved,
        metadata_and_bits_bytes,
        &boot_demand(cpus_to_start(info)),
    )
    .map_err(MemoryError::Plan)?;
    let slots = plan.span_pages as usize;
    let metadata_pointer = plan.metadata.start.as_u64() as *mut PageMeta;
    // SAFETY: the plan put the metadata range inside one RAM region, outside low memory,
    // the kernel image and the page tables, and never hands it to the allocator; it is
    // identity-mapped read-write, page aligned (so aligned for PageMeta) and at least
    // `metadata_bytes(span_pages)` long. Every slot is initialised before the slice is
    // formed; the slice lives for the rest of the kernel's life, referenced only by the
    // allocator.
    let metadata: &'static mut [PageMeta] = unsafe {
        for index in 0..slots {
            metadata_pointer.add(index).write(PageMeta::UNAVAILABLE);
        }
        core::slice::from_raw_parts_mut(metadata_pointer, slots)
    };
    // Identity-mapped: the physical address is the pointer.
    let words_pointer = (plan.metadata.start.as_u64() + bits_offset(plan.span_pages))
        as *mut core::sync::atomic::AtomicU64;
    let word_count = HandedOutPages::words_for(plan.span_pages);
    // SAFETY: the same plan range holds `metadata_and_bits_bytes(span_pages)` bytes, of
    // which the words take the last `8 * word_count`, after the slots above (so the two
    // slices are disjoint); the offset is a multiple of 8 from a page-aligned start, so
    // aligned for AtomicU64. Every word is initialised (zero: nothing handed out) before
    // the shared slice is formed; it lives for the rest of the kernel's life and is
    // reached only through atomics.
    let words: &'static [core::sync::atomic::AtomicU64] = unsafe {
        for index in 0..word_count {
            words_pointer
                .add(index)
                .write(core::sync::atomic::AtomicU64::new(0));
        }
        core::slice::from_raw_parts(words_pointer, word_count)
    };
    let handed_out = HandedOutPages::new(words, PageFrameNumber::new(0));
    let mut allocator = BuddyAllocator::new(metadata, PageFrameNumber::new(0));
    let mut failure = None;
    plan.for_each_free_range(ram, reserved, &mut |piece| {
        let range = PageRange::new(piece.start.containing_frame(), piece.len() / PAGE_SIZE);
        if let Err(error) = allocator.add_free_range(range) {
            failure.get_or_insert(error);
        }
    });
    if let Some(error) = failure {
        return Err(MemoryError::Allocator(error));
    }
    let report = MemoryReport {
        free_pages: allocator.free_page_count(),
        metadata_bytes: plan.metadata.len(),
    };
    PAGES.call_once(|| SharedPageAllocator::new(allocator, handed_out));
    Ok(report)
}

/// Allocates one page through the CPU's cache. (The locks mask interrupts by
/// themselves; masking here too keeps the CPU index read true until the cache is
/// locked, so the thread uses its own CPU's cache.)
pub fn alloc_page() -> Option<PageFrameNumber> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        pages()?.alloc_page(percpu::current_index())
    })
}

/// Frees one page through the CPU's cache (interrupts masked as in [`alloc_page`]).
pub fn free_page(frame: PageFrameNumber) -> Result<(), PageAllocError> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        pages()
            .ok_or(PageAllocError::NotAllocated)?
            .free_page(percpu::current_index(), frame)
    })
}

/// Allocates `count` contiguous pages (draining every CPU's cache at out of memory).
pub fn alloc_pages(count: u64) -> Result<PageRange, PageAllocError> {
    pages()
        .ok_or(PageAllocError::OutOfMemory)?
        .alloc_pages(count)
}

/// Frees a run from [`alloc_pages`].
pub fn free_pages(range: PageRange) -> Result<(), PageAllocError> {
    // Thread stacks are freed when a thread's last reference goes, possibly inside
    // the scheduler running from an interrupt: the allocator's locks mask interrupts.
    pages()
        .ok_or(PageAllocError::NotAllocated)?
        .free_pages(range)
}

/// Free pages in the buddy allocator plus every cache.
pub fn free_page_count() -> u64 {
    pages().map_or(0, SharedPageAllocator::free_page_count)
}

/// Frees the page allocator refused: double frees caught by the caches' handed-out
/// bits, and bad pages a cache drain gave back. Nonzero means a bug somewhere.
pub fn rejected_free_count() -> u64 {
    pages().map_or(0, SharedPageAllocator::rejected_free_count)
}

/// The heap's statistics.
pub fn heap_stats() -> keel_heap::HeapStats {
    HEAP.stats()
}
