//! Keel's memory-map arithmetic: what the kernel computes from the boot memory map
//! before it has an allocator, as pure functions that are tested on the host.
//!
//! - [`PhysRange`] is a half-open range of physical addresses (`keel-types`'
//!   [`PhysAddr`]); [`subtract`] cuts holes out of a range and yields the pieces in
//!   ascending order, with no allocation.
//! - [`plan`] turns the RAM regions of the memory map and the ranges the kernel
//!   reserves (the first megabyte, the kernel image, the page-table region) into a
//!   [`MemoryPlan`]: the span the page metadata must describe, where the metadata array
//!   goes, and ([`MemoryPlan::for_each_free_range`]) the page ranges to hand to the page
//!   allocator.
//! - Before placing anything, [`plan`] checks that the usable RAM covers what the kernel
//!   allocates at boot ([`BootDemand`]: page metadata, the main thread's stack, each
//!   application processor's stacks, the per-CPU page caches and the heap), and fails
//!   with [`PlanError::NotEnoughMemory`] otherwise, so a too-small VM gets a clear
//!   message instead of a panic deep in the scheduler.
//!
//! `kernel-bin`'s `memory` module does the wiring: it reads the memory map from
//! `keel-arch-x86_64`, writes the metadata array where the plan says, and feeds
//! `keel-pagealloc`'s buddy allocator with the free ranges. This crate knows nothing of
//! either; it has no `unsafe` code at all.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests;

use keel_types::PhysAddr;

/// Size of a page, in bytes (`keel-types`' page size).
pub const PAGE_SIZE: u64 = keel_types::PAGE_SIZE;

/// The highest page boundary: where rounding up saturates.
const LAST_PAGE_START: u64 = !(PAGE_SIZE - 1);

/// A half-open range of physical addresses, `[start, end)`. A range with
/// `end <= start` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysRange {
    /// First address in the range.
    pub start: PhysAddr,
    /// One past the last address.
    pub end: PhysAddr,
}

impl PhysRange {
    /// The range `[start, end)`.
    pub const fn new(start: PhysAddr, end: PhysAddr) -> Self {
        Self { start, end }
    }

    /// The range `[start, end)` from raw addresses (the arithmetic below works on
    /// them).
    const fn from_raw(start: u64, end: u64) -> Self {
        Self::new(PhysAddr::new(start), PhysAddr::new(end))
    }

    /// Bytes in the range (0 when empty).
    pub const fn len(self) -> u64 {
        self.end.as_u64().saturating_sub(self.start.as_u64())
    }

    /// Whether the range holds no address.
    pub const fn is_empty(self) -> bool {
        self.end.as_u64() <= self.start.as_u64()
    }

    /// The whole pages inside the range: the start rounded up and the end rounded down
    /// to [`PAGE_SIZE`]; empty if no whole page fits.
    pub const fn whole_pages(self) -> Self {
        let start = match self.start.align_up_to_page() {
            Some(start) => start,
            None => return Self::new(self.end, self.end),
        };
        let end = self.end.align_down_to_page();
        if end.as_u64() <= start.as_u64() {
            Self::new(start, start)
        } else {
            Self::new(start, end)
        }
    }

    /// The range widened to whole pages: the start rounded down, the end rounded up
    /// (saturating at the last page boundary).
    pub const fn covering_pages(self) -> Self {
        let end = match self.end.align_up_to_page() {
            Some(end) => end,
            None => PhysAddr::new(LAST_PAGE_START),
        };
        Self::new(self.start.align_down_to_page(), end)
    }

    /// Whether the two ranges share an address.
    pub const fn overlaps(self, other: Self) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.start.as_u64() < other.end.as_u64()
            && other.start.as_u64() < self.end.as_u64()
    }
}

/// Calls `piece` for each part of `range` that no range of `holes` covers, in
/// ascending order. The pieces are non-empty and disjoint, with a hole between any two
/// of them; holes may overlap one another, be empty, or lie partly or wholly outside
/// `range`.
pub fn subtract(range: PhysRange, holes: &[PhysRange], piece: &mut dyn FnMut(PhysRange)) {
    subtract_each(range, || holes.iter().copied(), piece);
}

/// [`subtract`] over holes that `holes()` lists afresh on each call (so they can be
/// computed on the fly, with no allocation).
fn subtract_each<I: Iterator<Item = PhysRange>>(
    range: PhysRange,
    holes: impl Fn() -> I,
    piece: &mut dyn FnMut(PhysRange),
) {
    let mut cursor = range.start;
    while cursor < range.end {
        // The lowest-starting non-empty hole that reaches into [cursor, end).
        let next_hole = holes()
            .filter(|hole| !hole.is_empty() && hole.end > cursor && hole.start < range.end)
            .min_by_key(|hole| hole.start);
        match next_hole {
            Some(hole) => {
                if hole.start > cursor {
                    piece(PhysRange::new(cursor, hole.start));
                }
                cursor = cursor.max(hole.end);
            }
            None => {
                piece(PhysRange::new(cursor, range.end));
                cursor = range.end;
            }
        }
    }
}

/// Pages one allocation of `pages` contiguous pages takes from a buddy allocator at
/// the moment it is made: the run rounded up to a power of two (the allocator splits a
/// free block of that order and gives the tail back afterwards).
pub const fn buddy_block_pages(pages: u64) -> u64 {
    if pages <= 1 {
        pages
    } else {
        pages.next_power_of_two()
    }
}

/// Pages of a stack of `bytes` bytes with one unmapped guard page below it.
pub const fn guarded_stack_pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE) + 1
}

/// What the kernel allocates from the page allocator while it boots, before the
/// application runs. The kernel fills it from its own constants (see `kernel-bin`'s
/// `memory` module); [`BootDemand::bytes`] is the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootDemand {
    /// CPUs the kernel will start, the boot CPU included (at least 1).
    pub cpus: u64,
    /// Bytes of the main (first) thread's stack; it gets a guard page too.
    pub main_stack_bytes: u64,
    /// Bytes of each application processor's first stack (plus a guard page).
    pub ap_stack_bytes: u64,
    /// IST stacks per application processor.
    pub ap_ist_stacks: u64,
    /// Bytes of each of those IST stacks (plus a guard page each).
    pub ap_ist_bytes: u64,
    /// Pages one CPU's page cache takes from the buddy allocator when it first refills
    /// (the heap's single pages come through the cache of the CPU that allocates).
    pub page_cache_refill_pages: u64,
    /// Pages the heap holds once the kernel has booted.
    pub heap_pages: u64,
}

impl BootDemand {
    /// Pages the boot allocations need: every guarded stack counted as the buddy block
    /// it is carved from, one page-cache refill per CPU, and the heap.
    pub const fn pages(&self) -> u64 {
        let cpus = if self.cpus == 0 { 1 } else { self.cpus };
        let main_stack = buddy_block_pages(guarded_stack_pages(self.main_stack_bytes));
        let ap_stack = buddy_block_pages(guarded_stack_pages(self.ap_stack_bytes));
        let ist_stack = buddy_block_pages(guarded_stack_pages(self.ap_ist_bytes));
        let per_ap = ap_stack.saturating_add(ist_stack.saturating_mul(self.ap_ist_stacks));
        main_stack
            .saturating_add(per_ap.saturating_mul(cpus - 1))
            .saturating_add(self.page_cache_refill_pages.saturating_mul(cpus))
            .saturating_add(self.heap_pages)
    }

    /// Bytes the boot allocations need ([`pages`](Self::pages) times the page size).
    pub const fn bytes(&self) -> u64 {
        self.pages().saturating_mul(PAGE_SIZE)
    }
}

/// Why [`plan`] found no way to set up physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// The RAM outside the reserved ranges is smaller than the page metadata plus the
    /// boot allocations.
    NotEnoughMemory {
        /// Bytes of whole RAM pages outside the reserved ranges.
        usable_bytes: u64,
        /// Bytes of page metadata plus [`BootDemand::bytes`].
        needed_bytes: u64,
    },
    /// Enough RAM in total, but no single gap between the reserved ranges can hold the
    /// metadata array of this many bytes.
    NoRoomForMetadata(u64),
}

impl core::fmt::Display for PlanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NotEnoughMemory {
                usable_bytes,
                needed_bytes,
            } => write!(
                f,
                "not enough memory: {} KiB usable, {} KiB needed",
                usable_bytes / 1024,
                needed_bytes.div_ceil(1024)
            ),
            Self::NoRoomForMetadata(bytes) => {
                write!(f, "no RAM region can hold {bytes} bytes of page metadata")
            }
        }
    }
}

/// Where the page metadata goes and what the page allocator gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Pages the metadata array describes: `[0, highest RAM page)`.
    pub span_pages: u64,
    /// The metadata array's place: page aligned, a whole number of pages, inside one
    /// RAM region and outside every reserved range.
    pub metadata: PhysRange,
    /// Bytes of whole RAM pages outside the reserved ranges (the metadata included).
    pub usable_bytes: u64,
    /// Bytes of page metadata plus the boot allocations that were checked.
    pub needed_bytes: u64,
}

impl MemoryPlan {
    /// Calls `free` for each range of whole RAM pages outside `reserved` and outside the
    /// metadata array, in the order of `ram` and ascending within each region: what the
    /// page allocator gets. `ram` and `reserved` must be the slices given to [`plan`].
    pub fn for_each_free_range(
        &self,
        ram: &[PhysRange],
        reserved: &[PhysRange],
        free: &mut dyn FnMut(PhysRange),
    ) {
        let metadata = [self.metadata];
        for_each_usable(ram, reserved, &mut |usable| {
            subtract(usable, &metadata, &mut |piece| free(piece));
        });
    }

    /// Bytes in [`for_each_free_range`](Self::for_each_free_range)'s ranges.
    pub fn free_bytes(&self) -> u64 {
        self.usable_bytes - self.metadata.len()
    }
}

/// Calls `usable` for each range of whole RAM pages outside the reserved ranges (each
/// reserved range widened to whole pages, so the pieces are whole pages).
fn for_each_usable(ram: &[PhysRange], reserved: &[PhysRange], usable: &mut dyn FnMut(PhysRange)) {
    for region in ram {
        let pages = region.whole_pages();
        if !pages.is_empty() {
            subtract_each(
                pages,
                || {
                    reserved
                        .iter()
                        .filter(|hole| !hole.is_empty())
                        .map(|hole| hole.covering_pages())
                },
                usable,
            );
        }
    }
}

/// Plans physical memory: checks that the RAM outside `reserved` holds the page
/// metadata plus `demand`, then places the metadata array in the first gap big enough
/// (in the order of `ram`).
///
/// `ram` lists the memory map's RAM regions (any order, any alignment; overlaps are
/// the map's error and are not merged); `reserved` lists what must never reach the
/// allocator (widened to whole pages). `metadata_bytes(span_pages)` is the size of the
/// page allocator's metadata for `span_pages` pages (it is rounded up to whole pages
/// here).
pub fn plan(
    ram: &[PhysRange],
    reserved: &[PhysRange],
    metadata_bytes: impl Fn(u64) -> u64,
    demand: &BootDemand,
) -> Result<MemoryPlan, PlanError> {
    let highest = ram
        .iter()
        .map(|region| region.whole_pages())
        .filter(|pages| !pages.is_empty())
        .map(|pages| pages.end.as_u64())
        .max()
        .unwrap_or(0);
    let span_pages = highest / PAGE_SIZE;
    let metadata_size = metadata_bytes(span_pages)
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(LAST_PAGE_START);
    let mut usable_bytes = 0u64;
    let mut metadata_at = None;
    for_each_usable(ram, reserved, &mut |usable| {
        usable_bytes = usable_bytes.saturating_add(usable.len());
        if metadata_at.is_none() && usable.len() >= metadata_size {
            metadata_at = Some(usable.start);
        }
    });
    // At least one page: a map without RAM is never enough.
    let needed_bytes = metadata_size.saturating_add(demand.bytes()).max(PAGE_SIZE);
    if usable_bytes < needed_bytes {
        return Err(PlanError::NotEnoughMemory {
            usable_bytes,
            needed_bytes,
        });
    }
    let start = metadata_at.ok_or(PlanError::NoRoomForMetadata(metadata_size))?;
    Ok(MemoryPlan {
        span_pages,
        metadata: PhysRange::from_raw(start.as_u64(), start.as_u64() + metadata_size),
        usable_bytes,
        needed_bytes,
    })
}
