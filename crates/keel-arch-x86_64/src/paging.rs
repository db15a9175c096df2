//! The kernel's page tables, built with the `x86_64` crate, with real protections.
//!
//! The boot code's temporary tables map the first 4 GiB read-write-execute. [`init`]
//! replaces them with an identity map (physical = virtual, as in OSv's early kernel)
//! where:
//! - the kernel's text is read+execute, its rodata (and the symbol table) read-only and
//!   no-execute, its data and bss read-write and no-execute, all with 4 KiB pages;
//! - the guard page under every stack (boot stack, IST stacks) is left unmapped, so a
//!   stack overflow faults;
//! - page 0 is unmapped, so null dereferences fault;
//! - every other memory-map region is read-write and no-execute, with 2 MiB pages where
//!   alignment allows; RAM and ACPI regions are write-back, everything else (MMIO) and
//!   the local APIC page are uncached.
//!
//! Page-table frames come from a bump region right after the kernel image; [`init`]
//! reports its extent so the page allocator can leave it out.
//!
//! # When other CPUs must flush
//! All CPUs share these tables, but each caches translations in its own TLB (and the
//! upper levels in its paging-structure caches), and keeps them after the tables change
//! until it flushes them. So a change must be shot down on every CPU
//! ([`crate::tlb::shootdown`]) before its caller relies on it whenever it takes
//! something away from a translation another CPU may have cached:
//! - an unmap, or a page made a guard ([`set_guard_page`]): present becomes not
//!   present;
//! - a protection reduced (writable or executable taken away, caching changed);
//! - the frame changed ([`map_page_to`]);
//! - a 2 MiB page split into 4 KiB pages whose entries then differ from the 2 MiB one
//!   (the split and the change go out as one full flush).
//!
//! No shootdown is needed when a non-present entry becomes present (a new mapping, or
//! a guard removed): the SDM (vol. 3, 4.10.4.3, "Optional Invalidation") says no TLB
//! or paging-structure-cache entry is created from a paging-structure entry whose P
//! flag is 0, so no CPU holds a translation to flush, provided the entry was shot
//! down when it last became not present (Keel always does that). The same section
//! says that adding rights (writable, executable) without a flush may cost a spurious
//! page fault; Keel treats every page fault as fatal, so it shoots down every change
//! to a present entry, rights added included.
//!
//! Before the first AP is up only the boot CPU exists, and [`crate::tlb::shootdown`]
//! is a local flush. An AP switches to these tables (a CR3 load, which flushes its
//! TLB) before it is marked online; while it does, the boot CPU waits for it and
//! changes no mapping, so it misses no shootdown.

use crate::bootinfo::{BootInfo, MemoryKind};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags, PhysFrame,
    Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

unsafe extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

/// Bytes reserved for page-table frames right after the kernel image.
pub const TABLE_REGION_SIZE: u64 = 2 * 1024 * 1024;
const PAGE: u64 = 4096;
const HUGE: u64 = 2 * 1024 * 1024;

/// The kernel image's sections, from the linker script. Virtual addresses; the image
/// is identity-mapped, so each is also the physical address of its byte.
#[derive(Debug, Clone, Copy)]
pub struct KernelLayout {
    /// First byte of the image.
    pub start: keel_types::VirtAddr,
    /// Text (code): `[text_start, text_end)`.
    pub text_start: keel_types::VirtAddr,
    /// End of text.
    pub text_end: keel_types::VirtAddr,
    /// Read-only data, including the symbol table.
    pub rodata_start: keel_types::VirtAddr,
    /// End of read-only data.
    pub rodata_end: keel_types::VirtAddr,
    /// Data and bss.
    pub data_start: keel_types::VirtAddr,
    /// One past the image's last byte.
    pub end: keel_types::VirtAddr,
}

impl KernelLayout {
    /// The running kernel's layout.
    pub fn current() -> Self {
        use keel_types::VirtAddr as Address;
        Self {
            start: Address::from_ptr(&raw const __kernel_start),
            text_start: Address::from_ptr(&raw const __text_start),
            text_end: Address::from_ptr(&raw const __text_end),
            rodata_start: Address::from_ptr(&raw const __rodata_start),
            rodata_end: Address::from_ptr(&raw const __rodata_end),
            data_start: Address::from_ptr(&raw const __data_start),
            end: Address::from_ptr(&raw const __kernel_end),
        }
    }
}

/// What [`init`] built.
#[derive(Debug, Clone, Copy)]
pub struct PagingReport {
    /// Physical range used for page-table frames: `[start, start + TABLE_REGION_SIZE)`
    /// (identity-mapped).
    pub table_region_start: keel_types::PhysAddr,
    /// Frames of the region actually used.
    pub table_frames_used: u64,
    /// Bytes mapped with 2 MiB pages.
    pub huge_bytes: u64,
    /// Bytes mapped with 4 KiB pages.
    pub small_bytes: u64,
    /// Mappings skipped because memory-map regions overlapped.
    pub overlaps_skipped: u64,
}

/// Why the page tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    /// The region after the kernel image is not usable RAM below 4 GiB.
    NoTableRegion,
    /// The bump region ran out of frames.
    OutOfTableFrames,
    /// The address is not mapped (or mapped by a 1 GiB page, which Keel never creates).
    NotMapped(keel_types::VirtAddr),
    /// Device memory asked for is already mapped cacheable (as RAM).
    MappedCacheable(keel_types::VirtAddr),
}

impl core::fmt::Display for PagingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoTableRegion => write!(
                f,
                "no usable RAM below 4 GiB right after the kernel image for page tables"
            ),
            Self::OutOfTableFrames => write!(f, "page-table frame region exhausted"),
            Self::NotMapped(address) => {
                write!(f, "{address:#x} is not mapped by a 4 KiB or 2 MiB page")
            }
            Self::MappedCacheable(address) => {
                write!(
                    f,
                    "device memory at {address:#x} is already mapped cacheable"
                )
            }
        }
    }
}

struct BumpFrames {
    next: u64,
    end: u64,
    used: u64,
}

// SAFETY: every frame handed out is unused RAM in the reserved region, handed out once,
// and (because it is below 4 GiB) reachable through the boot identity map so that the
// mapper can zero and fill it.
unsafe impl FrameAllocator<Size4KiB> for BumpFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        if self.next >= self.end {
            return None;
        }
        let frame = PhysFrame::containing_address(PhysAddr::new(self.next));
        self.next += PAGE;
        self.used += 1;
        Some(frame)
    }
}

struct Builder<'t> {
    mapper: OffsetPageTable<'t>,
    frames: BumpFrames,
    report: PagingReport,
    guards: [u64; 8],
    guard_count: usize,
}

impl Builder<'_> {
    fn is_guard(&self, page: u64) -> bool {
        self.guards[..self.guard_count].contains(&page)
    }

    fn map_small(&mut self, address: u64, flags: PageTableFlags) -> Result<(), PagingError> {
        if address == 0 || self.is_guard(address) {
            return Ok(());
        }
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(address));
        let frame = PhysFrame::containing_address(PhysAddr::new(address));
        // SAFETY: an identity mapping of memory the memory map (or the kernel image)
        // describes; the new table is not active yet, so no TLB flush is needed.
        match unsafe { self.mapper.map_to(page, frame, flags, &mut self.frames) } {
            Ok(flush) => {
                flush.ignore();
                self.report.small_bytes += PAGE;
                Ok(())
            }
            Err(MapToError::FrameAllocationFailed) => Err(PagingError::OutOfTableFrames),
            Err(_) => {
                self.report.overlaps_skipped += 1;
                Ok(())
            }
        }
    }

    fn map_huge(&mut self, address: u64, flags: PageTableFlags) -> Result<(), PagingError> {
        let page = Page::<Size2MiB>::containing_address(VirtAddr::new(address));
        let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(address));
        // SAFETY: as in `map_small`.
        match unsafe { self.mapper.map_to(page, frame, flags, &mut self.frames) } {
            Ok(flush) => {
                flush.ignore();
                self.report.huge_bytes += HUGE;
                Ok(())
            }
            Err(MapToError::FrameAllocationFailed) => Err(PagingError::OutOfTableFrames),
            Err(_) => {
                self.report.overlaps_skipped += 1;
                Ok(())
            }
        }
    }

    /// Identity-maps `[start, end)` with `flags`, 2 MiB pages where possible, avoiding
    /// `avoid` (the kernel image, mapped separately) and guard pages.
    fn map_range(
        &mut self,
        start: u64,
        end: u64,
        flags: PageTableFlags,
        avoid: (u64, u64),
    ) -> Result<(), PagingError> {
        let mut address = start & !(PAGE - 1);
        let end = end.next_multiple_of(PAGE);
        while address < end {
            let guards = &self.guards[..self.guard_count];
            match next_mapping(address, end, avoid, guards) {
                MappingStep::Skip { to } => address = to,
                MappingStep::Huge => {
                    self.map_huge(address, flags | PageTableFlags::HUGE_PAGE)?;
                    address += HUGE;
                }
                MappingStep::Small => {
                    self.map_small(address, flags)?;
                    address += PAGE;
                }
            }
        }
        Ok(())
    }
}

/// What [`Builder::map_range`] does at one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MappingStep {
    /// Jump over the avoided range, to this address.
    Skip { to: u64 },
    /// Map a 2 MiB page here.
    Huge,
    /// Map a 4 KiB page here (a guard page is then left out by `map_small`).
    Small,
}

/// The step at page-aligned `address` of an identity map up to `end` (page aligned)
/// that avoids `[avoid.0, avoid.1)` and the pages in `guards`: a 2 MiB page where
/// `address` is 2 MiB aligned and the whole 2 MiB lies below `end`, outside `avoid`
/// and holds no guard page; else a 4 KiB page.
fn next_mapping(address: u64, end: u64, avoid: (u64, u64), guards: &[u64]) -> MappingStep {
    if address >= avoid.0 && address < avoid.1 {
        return MappingStep::Skip { to: avoid.1 };
    }
    let huge_end = address + HUGE;
    let huge_fits = address.is_multiple_of(HUGE)
        && huge_end <= end
        && (huge_end <= avoid.0 || address >= avoid.1)
        && !guards
            .iter()
            .any(|&guard| guard >= address && guard < huge_end);
    if huge_fits {
        MappingStep::Huge
    } else {
        MappingStep::Small
    }
}

/// The flags of the kernel image's page at `address`: text read+execute, rodata
/// read-only, data and bss read-write, all else (headers before the text) read-only;
/// everything but text no-execute.
fn image_page_flags(layout: &KernelLayout, address: u64) -> PageTableFlags {
    let present = PageTableFlags::PRESENT;
    let no_execute = PageTableFlags::NO_EXECUTE;
    if address < layout.text_end.as_u64() && address >= layout.text_start.as_u64() {
        present
    } else if address >= layout.rodata_start.as_u64() && address < layout.rodata_end.as_u64() {
        present | no_execute
    } else if address >= layout.data_start.as_u64() {
        present | PageTableFlags::WRITABLE | no_execute
    } else {
        // Between the image start and the text: headers, never executed.
        present | no_execute
    }
}

/// The flags of a memory-map region's identity mapping: read-write, no-execute; RAM
/// and ACPI memory write-back, everything else (MMIO) uncached.
fn region_flags(kind: MemoryKind) -> PageTableFlags {
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    if kind.is_memory() {
        flags
    } else {
        flags | UNCACHED
    }
}

/// Uncached: PCD and PWT set.
const UNCACHED: PageTableFlags = PageTableFlags::NO_CACHE.union(PageTableFlags::WRITE_THROUGH);

/// The flags a 4 KiB entry with `flags` gets when made a guard (`guard`: PRESENT taken
/// away, the rest kept so the entry still names its frame) or mapped again (present,
/// read-write, no-execute), and whether that reduced a present mapping (so every CPU
/// must flush it). Making a non-present entry present reduces nothing.
fn guard_entry_flags(flags: PageTableFlags, guard: bool) -> (PageTableFlags, bool) {
    let new_flags = if guard {
        flags - PageTableFlags::PRESENT
    } else {
        flags | PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE
    };
    (
        new_flags,
        flags.contains(PageTableFlags::PRESENT) && new_flags != flags,
    )
}

/// Entry `index` (0..512) of the 4 KiB table that replaces a 2 MiB entry at `base`
/// with `huge_flags`: the same frame range and rights, without `HUGE_PAGE`.
fn split_entry(base: u64, huge_flags: PageTableFlags, index: usize) -> (PhysAddr, PageTableFlags) {
    (
        PhysAddr::new(base + index as u64 * PAGE),
        huge_flags - PageTableFlags::HUGE_PAGE,
    )
}

/// Whether a raw entry found at `level` of a walk (0 = PML4 .. 3 = page table) is a
/// guard page's: a 4 KiB entry without PRESENT that keeps its frame address.
fn is_guard_entry(level: usize, entry: u64) -> bool {
    level == 3 && entry & PageTableFlags::PRESENT.bits() == 0 && entry & ENTRY_FRAME_MASK != 0
}

/// Builds the kernel's page tables and switches to them.
///
/// # Safety
/// Call once on the boot CPU, while the boot code's identity map of the first 4 GiB is
/// active, with interrupts disabled.
pub unsafe fn init(
    boot: &BootInfo,
    apic_base: keel_types::PhysAddr,
) -> Result<PagingReport, PagingError> {
    let layout = KernelLayout::current();
    let (image_start, image_end) = (layout.start.as_u64(), layout.end.as_u64());
    let table_start = image_end.next_multiple_of(PAGE);
    let table_end = table_start + TABLE_REGION_SIZE;
    let inside_ram = boot.memory_regions().iter().any(|region| {
        region.kind == MemoryKind::Ram
            && region.start.as_u64() <= table_start
            && region.end().as_u64() >= table_end
    });
    if !inside_ram || table_end > 1 << 32 {
        return Err(PagingError::NoTableRegion);
    }
    let mut frames = BumpFrames {
        next: table_start,
        end: table_end,
        used: 0,
    };
    let root_frame = frames
        .allocate_frame()
        .ok_or(PagingError::OutOfTableFrames)?;
    let root_address = root_frame.start_address().as_u64();
    // SAFETY: the frame is unused RAM below 4 GiB, identity-mapped by the boot tables,
    // page aligned, and exclusively ours; a zeroed PageTable is valid.
    let root = unsafe {
        let table = root_address as *mut PageTable;
        table.write(PageTable::new());
        &mut *table
    };
    // SAFETY: with offset 0 every physical frame is reachable at its own address, which
    // holds for table frames below 4 GiB under both the boot and the new tables.
    let mapper = unsafe { OffsetPageTable::new(root, VirtAddr::new(0)) };
    let mut builder = Builder {
        mapper,
        frames,
        report: PagingReport {
            table_region_start: keel_types::PhysAddr::new(table_start),
            table_frames_used: 0,
            huge_bytes: 0,
            small_bytes: 0,
            overlaps_skipped: 0,
        },
        guards: [0; 8],
        guard_count: 0,
    };
    let boot_guard = (&raw const crate::boot::keel_boot_stack_guard) as u64;
    let ist_guards = crate::gdt::ist_guard_pages().map(keel_types::VirtAddr::as_u64);
    for guard in core::iter::once(boot_guard).chain(ist_guards) {
        if builder.guard_count < builder.guards.len() {
            builder.guards[builder.guard_count] = guard;
            builder.guard_count += 1;
        }
    }

    let read_write =
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;

    // The kernel image, section by section, with 4 KiB pages.
    let mut address = image_start;
    while address < image_end {
        builder.map_small(address, image_page_flags(&layout, address))?;
        address += PAGE;
    }
    let image = (image_start, image_end.next_multiple_of(PAGE));

    // The low megabyte (BIOS data, ACPI RSDP area) even where the map leaves gaps.
    builder.map_range(PAGE, 0x10_0000, read_write, image)?;
    for region in boot.memory_regions() {
        builder.map_range(
            region.start.as_u64(),
            region.end().as_u64(),
            region_flags(region.kind),
            image,
        )?;
    }
    // Local APIC, I/O APIC, HPET: uncached MMIO.
    for mmio in [apic_base.as_u64(), 0xfec0_0000, 0xfed0_0000] {
        builder.map_range(mmio, mmio + PAGE, read_write | UNCACHED, image)?;
    }

    builder.report.table_frames_used = builder.frames.used;
    let report = builder.report;
    *TABLE_FRAMES.lock() = Some(BumpFrames {
        next: builder.frames.next,
        end: builder.frames.end,
        used: builder.frames.used,
    });
    // SAFETY: the new tables map the running code (text), the stack in use (boot stack,
    // in bss), all data, and every table frame (RAM region), so execution continues.
    unsafe { Cr3::write(root_frame, Cr3Flags::empty()) };
    Ok(report)
}

/// The flags of the page mapping `address` in the active tables, or `None` if no
/// present entry maps it: an address whose walk meets an entry without PRESENT at any
/// level (a guard page keeps its frame address in a non-present entry) is unmapped, and
/// so is a non-canonical address. For a huge page the flags are the 1 GiB or 2 MiB
/// entry's (with `HUGE_PAGE`).
///
/// The walk reads the tables directly: the x86_64 crate's `translate` answers `Mapped`
/// for any non-zero last-level entry, present or not, so it called guard pages mapped,
/// and the backtrace walker, trusting it, faulted on them.
pub fn flags_of(address: keel_types::VirtAddr) -> Option<PageTableFlags> {
    let (_, entry) = final_entry(address.as_u64())?;
    let flags = PageTableFlags::from_bits_truncate(entry);
    flags.contains(PageTableFlags::PRESENT).then_some(flags)
}

/// Whether `address` lies in a page made a guard with [`set_guard_page`]: its 4 KiB
/// entry in the active tables is not present but keeps its frame address (nothing else
/// in Keel leaves a non-zero entry without PRESENT; unmapped memory has zero entries or
/// no table). Lock-free, so the crash report may ask while any lock is held.
pub fn is_guard_page(address: keel_types::VirtAddr) -> bool {
    final_entry(address.as_u64()).is_some_and(|(level, entry)| is_guard_entry(level, entry))
}

/// The frame-address bits of a page-table entry.
const ENTRY_FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Walks the active tables for `address` and returns the entry the walk ends at, with
/// its level (0 = PML4 .. 3 = page table): the first entry without PRESENT, a present
/// 1 GiB or 2 MiB entry, or the present 4 KiB entry. `None` for a non-canonical
/// address. Lock-free: it reads the live tables as a snapshot.
fn final_entry(address: u64) -> Option<(usize, u64)> {
    let address = VirtAddr::try_new(address).ok()?;
    let indices = [
        address.p4_index(),
        address.p3_index(),
        address.p2_index(),
        address.p1_index(),
    ];
    let (root, _) = Cr3::read();
    let mut table = root.start_address();
    for (level, index) in indices.into_iter().enumerate() {
        let slot = (table.as_u64() + u64::from(index) * 8) as *const u64;
        // SAFETY: `table` is the root (from CR3) or the frame of a present, non-huge
        // entry of the live tables; the active tables identity-map all page-table
        // frames (they are RAM), so its entries are readable at their physical
        // addresses. One aligned word is read, volatile and without making a reference
        // (another CPU may change the tables meanwhile: the answer is then a snapshot).
        let entry = unsafe { slot.read_volatile() };
        let flags = PageTableFlags::from_bits_truncate(entry);
        // Levels 1 and 2 may map 1 GiB and 2 MiB pages.
        let huge = (level == 1 || level == 2) && flags.contains(PageTableFlags::HUGE_PAGE);
        if level == 3 || huge || !flags.contains(PageTableFlags::PRESENT) {
            return Some((level, entry));
        }
        table = PhysAddr::new(entry & ENTRY_FRAME_MASK);
    }
    None
}

/// Size of a 4 KiB page.
pub const PAGE_SIZE: u64 = Size4KiB::SIZE;

/// What is left of the page-table frame region after [`init`], for splitting huge pages.
static TABLE_FRAMES: spin::Mutex<Option<BumpFrames>> = spin::Mutex::new(None);
/// Serialises changes to the live page tables (all CPUs share them).
static LIVE_TABLES: spin::Mutex<()> = spin::Mutex::new(());

/// The page table at physical `address`.
///
/// # Safety
/// `address` must be a page-table frame of the live tables (identity-mapped RAM), and the
/// caller must hold [`LIVE_TABLES`].
unsafe fn table_at(address: PhysAddr) -> &'static mut PageTable {
    // SAFETY: per the contract.
    unsafe { &mut *(address.as_u64() as *mut PageTable) }
}

/// Makes the 4 KiB page at `address` a guard page (`guard = true`: not present, so any
/// access faults) or maps it again read-write, no-execute (`guard = false`). A 2 MiB
/// mapping around it is first split into 4 KiB pages. Used for thread-stack guards.
///
/// Setting a guard takes a mapping away, so it shoots the page down on every online CPU
/// ([`crate::tlb::shootdown`]) before returning: the guard holds on every CPU from then
/// on. (Until issue 11 it flushed only the calling CPU's TLB, and a CPU that had read
/// the page kept reading it through its stale entry, with no fault.) Removing a guard
/// makes a non-present entry present, which needs no shootdown; it is flushed locally
/// only.
///
/// Call with no lock held that another CPU may spin on with interrupts masked (see
/// [`crate::tlb`]).
pub fn set_guard_page(address: keel_types::VirtAddr, guard: bool) -> Result<(), PagingError> {
    // Thread stacks are freed (and their guard page mapped again) possibly from the
    // scheduler running in an interrupt: never hold the lock with interrupts enabled.
    x86_64::instructions::interrupts::without_interrupts(|| {
        let flush = change_last_level(address, |entry| {
            // Any change to a present entry counts as a reduction (a guard being set,
            // or no-execute added); making a non-present entry present does not.
            let (new_flags, reduced) = guard_entry_flags(entry.flags(), guard);
            let frame = entry.addr();
            entry.set_addr(frame, new_flags);
            reduced
        })?;
        finish(flush);
        Ok(())
    })
}

/// Maps the 4 KiB page at `address` to the physical frame at `frame` (page aligned),
/// keeping the entry's flags, and returns the frame it mapped before. The page must be
/// mapped (present); a 2 MiB mapping around it is first split. The old frame may be
/// cached in other CPUs' TLBs, so this shoots the page down on every online CPU before
/// returning: from then on no CPU reads or writes the old frame through `address`.
///
/// Call with no lock held that another CPU may spin on with interrupts masked (see
/// [`crate::tlb`]).
pub fn map_page_to(
    address: keel_types::VirtAddr,
    frame: keel_types::PhysAddr,
) -> Result<keel_types::PhysAddr, PagingError> {
    let frame = frame.as_u64();
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut previous = None;
        let flush = change_last_level(address, |entry| {
            let flags = entry.flags();
            if !flags.contains(PageTableFlags::PRESENT) {
                return false;
            }
            let old = entry.addr().as_u64();
            previous = Some(old);
            entry.set_addr(PhysAddr::new(frame & !(PAGE - 1)), flags);
            old != frame & !(PAGE - 1)
        })?;
        finish(flush);
        previous
            .map(keel_types::PhysAddr::new)
            .ok_or(PagingError::NotMapped(address))
    })
}

/// The access [`set_identity_access`] gives RAM pages. There is no writable and
/// executable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAccess {
    /// Not present: any access faults. The entry is cleared (a guard page, unlike
    /// this, keeps its frame), so the crash report does not call it a guard page.
    None,
    /// Present, read-only, no-execute.
    Read,
    /// Present, read-write, no-execute: what all RAM has after [`init`].
    ReadWrite,
    /// Present, read-only, executable.
    ReadExecute,
}

/// Gives the `pages` identity-mapped RAM pages from `start` (page aligned) the access
/// `access`, splitting 2 MiB pages as needed, then flushes: every online CPU when any
/// page lost presence or rights (a shootdown, [`crate::tlb::shootdown`]), else the
/// calling CPU only. For memory the caller owns (from the page allocator): the kernel
/// loading an ELF object maps its segments this way. A page whose present entry maps
/// another frame than its own address is refused ([`PagingError::NotMapped`]) before
/// anything after it changes; pages before it keep their new access.
///
/// Call with no lock held that another CPU may spin on with interrupts masked (see
/// [`crate::tlb`]).
pub fn set_identity_access(
    start: keel_types::VirtAddr,
    pages: u64,
    access: PageAccess,
) -> Result<(), PagingError> {
    let first = start.as_u64();
    if !first.is_multiple_of(PAGE) {
        return Err(PagingError::NotMapped(start));
    }
    let flags = match access {
        PageAccess::None => PageTableFlags::empty(),
        PageAccess::Read => PageTableFlags::PRESENT | PageTableFlags::NO_EXECUTE,
        PageAccess::ReadWrite => {
            PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE
        }
        PageAccess::ReadExecute => PageTableFlags::PRESENT,
    };
    let mut reduced = false;
    let mut split = false;
    let mut result = Ok(());
    x86_64::instructions::interrupts::without_interrupts(|| {
        for index in 0..pages {
            let address = first + index * PAGE;
            let mut foreign = false;
            let flush = change_last_level(keel_types::VirtAddr::new(address), |entry| {
                let old = entry.flags();
                if old.contains(PageTableFlags::PRESENT) && entry.addr().as_u64() != address {
                    foreign = true;
                    return false;
                }
                if flags.is_empty() {
                    entry.set_unused();
                } else {
                    entry.set_addr(PhysAddr::new(address), flags);
                }
                // Lost presence, writability or execution: other CPUs must forget it.
                old.contains(PageTableFlags::PRESENT)
                    && (!flags.contains(PageTableFlags::PRESENT)
                        || (old.contains(PageTableFlags::WRITABLE)
                            && !flags.contains(PageTableFlags::WRITABLE))
                        || (!old.contains(PageTableFlags::NO_EXECUTE)
                            && flags.contains(PageTableFlags::NO_EXECUTE)))
            });
            match flush {
                Ok(flush) => {
                    reduced |= flush.reduced;
                    split |= flush.split;
                }
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
            if foreign {
                result = Err(PagingError::NotMapped(keel_types::VirtAddr::new(address)));
                break;
            }
        }
        use crate::tlb::{self, Flush};
        let range = if split {
            Flush::All
        } else {
            Flush::Pages {
                start,
                count: pages,
            }
        };
        if reduced || split {
            tlb::shootdown(range);
        } else {
            tlb::flush_local(range);
        }
    });
    result
}

/// What a change of the live tables leaves to flush, once their lock is dropped.
#[derive(Debug, Clone, Copy)]
struct PendingFlush {
    /// The local CPU's TLB entry for this page (always flushed).
    page: u64,
    /// A mapping was reduced (or a huge page split): every CPU must flush, everything
    /// if `split`, else `page`.
    reduced: bool,
    split: bool,
}

fn finish(flush: PendingFlush) {
    use crate::tlb::{self, Flush};
    let range = if flush.split {
        Flush::All
    } else {
        Flush::Pages {
            start: keel_types::VirtAddr::new(flush.page),
            count: 1,
        }
    };
    if flush.reduced || flush.split {
        tlb::shootdown(range);
    } else {
        tlb::flush_local(range);
    }
}

/// Finds the 4 KiB entry mapping `address` in the live tables (splitting a 2 MiB page
/// around it first) and lets `change` rewrite it; `change` answers whether it reduced
/// the mapping (took away presence or rights, or changed the frame). Holds the
/// page-table lock only while the tables change; the caller flushes afterwards.
fn change_last_level(
    address: keel_types::VirtAddr,
    change: impl FnOnce(&mut x86_64::structures::paging::page_table::PageTableEntry) -> bool,
) -> Result<PendingFlush, PagingError> {
    use x86_64::structures::paging::PageTableIndex;
    let _lock = LIVE_TABLES.lock();
    let virtual_address = VirtAddr::new(address.as_u64());
    let indices: [PageTableIndex; 4] = [
        virtual_address.p4_index(),
        virtual_address.p3_index(),
        virtual_address.p2_index(),
        virtual_address.p1_index(),
    ];
    let (root, _) = Cr3::read();
    // SAFETY: CR3 holds the live root table; we hold the lock.
    let level4 = unsafe { table_at(root.start_address()) };
    let entry4 = &level4[indices[0]];
    if !entry4.flags().contains(PageTableFlags::PRESENT) {
        return Err(PagingError::NotMapped(address));
    }
    // SAFETY: a present non-huge level-4 entry points at a live level-3 table.
    let level3 = unsafe { table_at(entry4.addr()) };
    let entry3 = &level3[indices[1]];
    let flags3 = entry3.flags();
    if !flags3.contains(PageTableFlags::PRESENT) || flags3.contains(PageTableFlags::HUGE_PAGE) {
        return Err(PagingError::NotMapped(address));
    }
    // SAFETY: as above, one level down.
    let level2 = unsafe { table_at(entry3.addr()) };
    let entry2 = &mut level2[indices[2]];
    let flags2 = entry2.flags();
    if !flags2.contains(PageTableFlags::PRESENT) {
        return Err(PagingError::NotMapped(address));
    }
    let mut split = false;
    if flags2.contains(PageTableFlags::HUGE_PAGE) {
        let frame = TABLE_FRAMES
            .lock()
            .as_mut()
            .and_then(|frames| frames.allocate_frame())
            .ok_or(PagingError::OutOfTableFrames)?;
        // SAFETY: a fresh frame from the reserved table region, identity-mapped RAM.
        let table = unsafe { table_at(frame.start_address()) };
        let base = entry2.addr().as_u64();
        for (index, entry) in table.iter_mut().enumerate() {
            let (frame, flags) = split_entry(base, flags2, index);
            entry.set_addr(frame, flags);
        }
        // The 4 KiB entries translate exactly as the 2 MiB one did, so until one of
        // them changes, a stale 2 MiB TLB entry elsewhere gives the same answer (the
        // SDM, vol. 3 4.10.4.2, allows both sizes to be cached after a page-size
        // change and asks only that the frame and rights not change with the size,
        // which they do not here). The change below is followed by a full flush on
        // every CPU.
        entry2.set_addr(
            frame.start_address(),
            PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
        );
        split = true;
    }
    // SAFETY: entry2 now points at a live level-1 table.
    let level1 = unsafe { table_at(entry2.addr()) };
    let reduced = change(&mut level1[indices[3]]);
    Ok(PendingFlush {
        page: address.as_u64(),
        reduced,
        split,
    })
}

/// Identity-maps the device registers at `[start, start + size)` uncached (PCD and
/// PWT), read-write and no-execute, for a driver: PCI configuration space (ECAM), BARs,
/// virtio-mmio windows. Pages already mapped uncached (the memory map's reserved
/// regions, the APICs) are left as they are; a page already mapped cacheable is an
/// error rather than silently kept, since device registers read through a cache give
/// stale values. Whole 2 MiB stretches that nothing maps yet get 2 MiB pages, so the
/// 256 MiB of a PCI segment's ECAM costs one page-table frame.
///
/// Only non-present entries become present, so no other CPU can hold a translation to
/// flush (see the module docs); the calling CPU flushes the pages locally.
pub fn map_device_memory(start: keel_types::PhysAddr, size: u64) -> Result<(), PagingError> {
    let first = start.as_u64() & !(PAGE - 1);
    let end = start
        .as_u64()
        .checked_add(size.max(1))
        .and_then(|end| end.checked_next_multiple_of(PAGE))
        .filter(|&end| end <= 1 << 47)
        .ok_or(PagingError::NotMapped(keel_types::VirtAddr::new(first)))?;
    let flags =
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE | UNCACHED;
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _lock = LIVE_TABLES.lock();
        let mut frames = TABLE_FRAMES.lock();
        let frames = frames.as_mut().ok_or(PagingError::NoTableRegion)?;
        let (root, _) = Cr3::read();
        // SAFETY: CR3 holds the live root table; its frames are identity-mapped RAM
        // (offset 0 reaches every table frame) and we hold the page-table lock.
        let mut mapper =
            unsafe { OffsetPageTable::new(table_at(root.start_address()), VirtAddr::new(0)) };
        let mut address = first;
        while address < end {
            let (level, entry) = final_entry(address)
                .ok_or(PagingError::NotMapped(keel_types::VirtAddr::new(address)))?;
            let present = PageTableFlags::from_bits_truncate(entry);
            if present.contains(PageTableFlags::PRESENT) {
                if !present.contains(PageTableFlags::NO_CACHE) {
                    return Err(PagingError::MappedCacheable(keel_types::VirtAddr::new(
                        address,
                    )));
                }
                let step = [1 << 39, 1 << 30, HUGE, PAGE][level];
                address = (address & !(step - 1)) + step;
                continue;
            }
            let huge = level <= 2 && address.is_multiple_of(HUGE) && address + HUGE <= end;
            // SAFETY: an identity mapping of device registers (no RAM is aliased: the
            // range was not mapped at all), uncached; new table frames come from the
            // reserved region and are zeroed by the mapper.
            let result = unsafe {
                if huge {
                    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(address));
                    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(address));
                    mapper
                        .map_to(page, frame, flags | PageTableFlags::HUGE_PAGE, frames)
                        .map(|flush| flush.flush())
                        .map_err(|error| matches!(error, MapToError::FrameAllocationFailed))
                } else {
                    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(address));
                    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(address));
                    mapper
                        .map_to(page, frame, flags, frames)
                        .map(|flush| flush.flush())
                        .map_err(|error| matches!(error, MapToError::FrameAllocationFailed))
                }
            };
            match result {
                Ok(()) => {}
                Err(true) => {
                    return Err(PagingError::OutOfTableFrames);
                }
                Err(false) => {
                    return Err(PagingError::NotMapped(keel_types::VirtAddr::new(address)));
                }
            }
            address += if huge { HUGE } else { PAGE };
        }
        Ok(())
    })
}

/// A run of virtual pages mapped contiguously with the same rights, as
/// `/proc/self/maps` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Writable.
    pub writable: bool,
    /// Executable (no NX bit).
    pub executable: bool,
    /// Uncached (device memory).
    pub uncached: bool,
}

/// Reads entry `index` of the table at physical `table`.
fn read_entry(table: u64, index: usize) -> u64 {
    // SAFETY: `table` is the root (from CR3) or the frame of a present, non-huge entry
    // of the live tables, identity-mapped (page-table frames are RAM); one aligned
    // word is read, volatile, without a reference (the tables may change meanwhile:
    // the walk is a snapshot).
    unsafe { ((table + index as u64 * 8) as *const u64).read_volatile() }
}

/// Every present mapping of the live tables in address order, adjacent pages with the
/// same rights (and consecutive frames: identity or not) coalesced. A snapshot taken
/// without the page-table lock.
pub fn mappings(mut each: impl FnMut(Mapping)) {
    const SPANS: [u64; 4] = [1 << 39, 1 << 30, HUGE, PAGE];
    let mut pending: Option<(Mapping, u64)> = None;
    let mut emit = |mapping: Mapping, frame: u64, pending: &mut Option<(Mapping, u64)>| {
        if let Some((current, next_frame)) = pending
            && current.end == mapping.start
            && *next_frame == frame
            && (current.writable, current.executable, current.uncached)
                == (mapping.writable, mapping.executable, mapping.uncached)
        {
            current.end = mapping.end;
            *next_frame = frame + (mapping.end - mapping.start);
            return;
        }
        if let Some((done, _)) = pending.take() {
            each(done);
        }
        *pending = Some((mapping, frame + (mapping.end - mapping.start)));
    };
    // An explicit stack of (level, table, first virtual address, next index).
    let (root, _) = Cr3::read();
    let mut stack = [(0usize, 0u64, 0u64, 0usize); 4];
    stack[0] = (0, root.start_address().as_u64(), 0, 0);
    let mut depth = 1;
    while depth > 0 {
        let (level, table, base, index) = stack[depth - 1];
        // Only the lower half (canonical addresses below 2^47) is used by Keel.
        let limit = if level == 0 { 256 } else { 512 };
        if index >= limit {
            depth -= 1;
            continue;
        }
        stack[depth - 1].3 += 1;
        let entry = read_entry(table, index);
        let flags = PageTableFlags::from_bits_truncate(entry);
        if !flags.contains(PageTableFlags::PRESENT) {
            continue;
        }
        let address = base + index as u64 * SPANS[level];
        let leaf =
            level == 3 || ((level == 1 || level == 2) && flags.contains(PageTableFlags::HUGE_PAGE));
        if leaf {
            let mapping = Mapping {
                start: address,
                end: address + SPANS[level],
                writable: flags.contains(PageTableFlags::WRITABLE),
                executable: !flags.contains(PageTableFlags::NO_EXECUTE),
                uncached: flags.contains(PageTableFlags::NO_CACHE),
            };
            emit(mapping, entry & ENTRY_FRAME_MASK, &mut pending);
        } else if depth < 4 {
            stack[depth] = (level + 1, entry & ENTRY_FRAME_MASK, address, 0);
            depth += 1;
        }
    }
    if let Some((done, _)) = pending {
        each(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// The steps `map_range` takes over `[start, end)`.
    fn steps(start: u64, end: u64, avoid: (u64, u64), guards: &[u64]) -> Vec<(u64, MappingStep)> {
        let mut out = Vec::new();
        let mut address = start;
        while address < end {
            let step = next_mapping(address, end, avoid, guards);
            out.push((address, step));
            address = match step {
                MappingStep::Skip { to } => to,
                MappingStep::Huge => address + HUGE,
                MappingStep::Small => address + PAGE,
            };
        }
        out
    }

    const NOTHING: (u64, u64) = (0, 0);

    #[test]
    fn aligned_ranges_get_huge_pages() {
        let plan = steps(0x20_0000, 0x80_0000, NOTHING, &[]);
        assert_eq!(
            plan,
            [
                (0x20_0000, MappingStep::Huge),
                (0x40_0000, MappingStep::Huge),
                (0x60_0000, MappingStep::Huge)
            ]
        );
    }

    #[test]
    fn unaligned_edges_get_small_pages_up_to_the_boundary() {
        let plan = steps(0x1f_f000, 0x40_1000, NOTHING, &[]);
        assert_eq!(plan.first(), Some(&(0x1f_f000, MappingStep::Small)));
        assert_eq!(plan[1], (0x20_0000, MappingStep::Huge));
        // The tail past the last full 2 MiB is one 4 KiB page.
        assert_eq!(plan[2..], [(0x40_0000, MappingStep::Small)]);
    }

    #[test]
    fn a_guard_page_forces_small_pages_around_it() {
        let guard = 0x30_0000;
        let plan = steps(0x20_0000, 0x60_0000, NOTHING, &[guard]);
        // The first 2 MiB holds the guard: 512 small pages; the next is huge.
        assert_eq!(
            plan.iter()
                .filter(|(_, step)| *step == MappingStep::Small)
                .count(),
            512
        );
        assert!(plan.contains(&(guard, MappingStep::Small)));
        assert_eq!(plan.last(), Some(&(0x40_0000, MappingStep::Huge)));
    }

    #[test]
    fn the_avoided_image_is_skipped_and_never_inside_a_huge_page() {
        let image = (0x10_0000, 0x3a_4000);
        let plan = steps(0, 0x80_0000, image, &[]);
        assert!(plan.contains(&(0x10_0000, MappingStep::Skip { to: 0x3a_4000 })));
        for &(address, step) in &plan {
            match step {
                MappingStep::Huge => assert!(address + HUGE <= image.0 || address >= image.1),
                MappingStep::Small => assert!(address < image.0 || address >= image.1),
                MappingStep::Skip { .. } => {}
            }
        }
        // Below the image and up to the next 2 MiB boundary after it: small pages;
        // from 4 MiB on, huge ones.
        assert_eq!(plan.first(), Some(&(0, MappingStep::Small)));
        assert!(plan.contains(&(0x3a_4000, MappingStep::Small)));
        assert!(plan.contains(&(0x40_0000, MappingStep::Huge)));
        // Every page of [0, 8 MiB) outside the image is covered exactly once.
        let covered: u64 = plan
            .iter()
            .map(|(_, step)| match step {
                MappingStep::Huge => HUGE,
                MappingStep::Small => PAGE,
                MappingStep::Skip { .. } => 0,
            })
            .sum();
        assert_eq!(covered, 0x80_0000 - (image.1 - image.0));
    }

    fn layout() -> KernelLayout {
        use keel_types::VirtAddr as Address;
        KernelLayout {
            start: Address::new(0x10_0000),
            text_start: Address::new(0x10_1000),
            text_end: Address::new(0x13_0000),
            rodata_start: Address::new(0x13_0000),
            rodata_end: Address::new(0x15_0000),
            data_start: Address::new(0x15_0000),
            end: Address::new(0x3a_4000),
        }
    }

    #[test]
    fn image_sections_get_their_rights() {
        let layout = layout();
        let p = PageTableFlags::PRESENT;
        let w = PageTableFlags::WRITABLE;
        let nx = PageTableFlags::NO_EXECUTE;
        assert_eq!(image_page_flags(&layout, 0x10_0000), p | nx, "headers");
        assert_eq!(image_page_flags(&layout, 0x10_1000), p, "text");
        assert_eq!(image_page_flags(&layout, 0x12_f000), p, "last text page");
        assert_eq!(image_page_flags(&layout, 0x13_0000), p | nx, "rodata");
        assert_eq!(image_page_flags(&layout, 0x15_0000), p | w | nx, "data");
        assert_eq!(image_page_flags(&layout, 0x3a_3000), p | w | nx, "bss");
        // W^X: no page is both writable and executable.
        let mut address = layout.start.as_u64();
        while address < layout.end.as_u64() {
            let flags = image_page_flags(&layout, address);
            assert!(!flags.contains(w) || flags.contains(nx), "{address:#x}");
            address += PAGE;
        }
    }

    #[test]
    fn memory_is_cached_and_mmio_is_not() {
        use crate::bootinfo::MemoryKind;
        for kind in [
            MemoryKind::Ram,
            MemoryKind::AcpiReclaimable,
            MemoryKind::AcpiNvs,
        ] {
            let flags = region_flags(kind);
            assert!(!flags.intersects(UNCACHED), "{kind:?}");
            assert!(flags.contains(PageTableFlags::NO_EXECUTE | PageTableFlags::WRITABLE));
        }
        let mmio = region_flags(MemoryKind::Reserved);
        assert!(mmio.contains(PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH));
        assert!(mmio.contains(PageTableFlags::PRESENT | PageTableFlags::NO_EXECUTE));
    }

    #[test]
    fn guard_entries_keep_their_frame_and_count_as_reductions() {
        let mapped =
            PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let (guarded, reduced) = guard_entry_flags(mapped, true);
        assert!(!guarded.contains(PageTableFlags::PRESENT));
        assert!(guarded.contains(PageTableFlags::WRITABLE));
        assert!(reduced, "present -> not present needs a shootdown");
        let (again, reduced) = guard_entry_flags(guarded, false);
        assert_eq!(again, mapped);
        assert!(!reduced, "not present -> present needs none");
        // Making a present executable page a plain data page takes a right away.
        let (_, reduced) = guard_entry_flags(PageTableFlags::PRESENT, false);
        assert!(reduced);
        let (_, reduced) = guard_entry_flags(mapped, false);
        assert!(!reduced, "no change, no flush");

        // A guard entry as `is_guard_page` finds it in a walk.
        let mut entry = x86_64::structures::paging::page_table::PageTableEntry::new();
        entry.set_addr(PhysAddr::new(0x12_3000), guarded);
        assert!(is_guard_entry(
            3,
            entry.addr().as_u64() | entry.flags().bits()
        ));
        assert!(!is_guard_entry(
            2,
            entry.addr().as_u64() | entry.flags().bits()
        ));
        assert!(
            !is_guard_entry(3, 0),
            "an empty entry is unmapped, not a guard"
        );
        assert!(!is_guard_entry(3, 0x12_3000 | mapped.bits()), "present");
    }

    #[test]
    fn split_entries_translate_like_the_huge_page() {
        let huge_flags = PageTableFlags::PRESENT
            | PageTableFlags::WRITABLE
            | PageTableFlags::NO_EXECUTE
            | PageTableFlags::HUGE_PAGE;
        let base = 0x4000_0000 + 7 * HUGE;
        for index in 0..512 {
            let (frame, flags) = split_entry(base, huge_flags, index);
            assert_eq!(frame.as_u64(), base + index as u64 * PAGE);
            assert_eq!(flags, huge_flags - PageTableFlags::HUGE_PAGE);
            // The same address translates to the same frame through either mapping.
            let address = base + index as u64 * PAGE + 0x123;
            let through_huge = base + (address & (HUGE - 1));
            assert_eq!(frame.as_u64() + (address & (PAGE - 1)), through_huge);
        }
    }

    #[test]
    fn entry_frame_mask_covers_bits_12_to_51() {
        assert_eq!(ENTRY_FRAME_MASK, ((1u64 << 52) - 1) & !(PAGE - 1));
        assert_eq!(ENTRY_FRAME_MASK & PageTableFlags::all().bits(), 0);
    }
}
