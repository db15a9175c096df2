//! The memory the linker maps objects into, reached only through [`Memory`], and the
//! typed page protections that make W^X unrepresentable.

use keel_types::VirtAddr;

/// The page size the linker rounds segments to.
pub const PAGE_SIZE: usize = 4096;

/// The access allowed to a range of mapped pages.
///
/// There is deliberately no "writable and executable" value: W^X holds by
/// construction. A `PT_LOAD` asking for both is refused while parsing
/// ([`crate::ObjectError::WritableAndExecutableSegment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// No access (reserved address space, guard pages).
    Inaccessible,
    /// Read only (`PF_R`, and `PT_GNU_RELRO` after relocation).
    Read,
    /// Read and write (`PF_R | PF_W`).
    ReadWrite,
    /// Read and execute (`PF_R | PF_X`, or `PF_X` alone).
    ReadExecute,
}

impl Protection {
    /// Whether a write to pages with this protection succeeds.
    pub const fn is_writable(self) -> bool {
        matches!(self, Protection::ReadWrite)
    }

    /// Whether these pages can be executed.
    pub const fn is_executable(self) -> bool {
        matches!(self, Protection::ReadExecute)
    }
}

/// A page-aligned range of virtual addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    /// The first byte (page aligned).
    pub start: VirtAddr,
    /// The length in bytes (a multiple of [`PAGE_SIZE`], not zero).
    pub length: usize,
}

impl PageRange {
    /// The first byte past the range.
    pub fn end(&self) -> u64 {
        self.start.as_u64() + self.length as u64
    }

    /// Whether `other` lies entirely inside this range.
    pub fn contains_range(&self, other: &PageRange) -> bool {
        other.start.as_u64() >= self.start.as_u64() && other.end() <= self.end()
    }
}

/// Why a [`Memory`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// No free address range of the requested length and alignment.
    OutOfAddressSpace {
        /// The length asked for.
        length: usize,
    },
    /// No memory to back the pages.
    OutOfMemory,
    /// The range is not page aligned or lies outside the reservation.
    InvalidRange,
    /// The implementation's own failure code (an `errno` on the host).
    Failed {
        /// The implementation-defined code.
        code: i32,
    },
}

/// Where the linker's memory comes from: reserve an address range, map zero-filled pages
/// in it with a protection, change protections, release the range.
///
/// The host implements it over `mmap`/`mprotect` (`keel_hosted::elf::HostMemory`); the
/// kernel over its page allocator and identity map (`KernelMemory` in
/// `kernel-bin/src/elf.rs`).
///
/// # Safety
/// The linker writes through raw pointers into what this trait maps, and later runs
/// code in it. An implementation guarantees, for the address space the linker runs in:
/// - a range returned by [`Memory::reserve`] is not used by anything else until it is
///   given to [`Memory::release`], and is inaccessible until mapped;
/// - after [`Memory::map`] returns `Ok`, every byte of the range is zero and can be read
///   (and written, if the protection is [`Protection::ReadWrite`]) by the current thread
///   at that virtual address;
/// - after [`Memory::protect`] returns `Ok`, the pages have exactly that protection, and
///   their contents are unchanged;
/// - no page is ever writable and executable at once.
pub unsafe trait Memory {
    /// Reserves `length` bytes (a multiple of [`PAGE_SIZE`]) of address space aligned to
    /// `alignment` (a power of two, at least [`PAGE_SIZE`]), inaccessible.
    fn reserve(&mut self, length: usize, alignment: usize) -> Result<PageRange, MemoryError>;

    /// Backs `range` (inside a reservation) with zero-filled pages of `protection`.
    fn map(&mut self, range: PageRange, protection: Protection) -> Result<(), MemoryError>;

    /// Changes the protection of mapped pages in `range`.
    fn protect(&mut self, range: PageRange, protection: Protection) -> Result<(), MemoryError>;

    /// Gives back a whole reservation (mapped or not) returned by [`Memory::reserve`].
    fn release(&mut self, reservation: PageRange);
}

/// Rounds `value` down to a multiple of the power of two `alignment`.
pub(crate) const fn align_down(value: u64, alignment: u64) -> u64 {
    value & !(alignment - 1)
}

/// Rounds `value` up to a multiple of the power of two `alignment`, `None` on overflow.
pub(crate) const fn align_up(value: u64, alignment: u64) -> Option<u64> {
    match value.checked_add(alignment - 1) {
        Some(sum) => Some(sum & !(alignment - 1)),
        None => None,
    }
}
