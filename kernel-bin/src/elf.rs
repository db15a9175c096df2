//! The kernel's side of the ELF linker (`keel-elf`): memory for loaded objects,
//! libraries read from the VFS, and the kernel's exported symbols. Wiring only.
//!
//! - [`KernelMemory`]: `keel_elf::Memory` over the page allocator and the identity map.
//!   A reservation is a run of pages from the page allocator (aligned as asked, since
//!   a buddy run of 2^k pages is aligned to 2^k pages), made inaccessible (`PageAccess
//!   ::None`) at once; `map` makes pages writable, zeroes them and gives them their
//!   protection; `protect` changes it (`keel_arch_x86_64::paging::set_identity_access`,
//!   which shoots the pages down on every CPU when rights shrink); `release` gives the
//!   pages back their usual read-write, no-execute access and frees them. Objects thus
//!   live at their physical addresses, as all of Keel's RAM does.
//! - [`VfsLibraries`]: `keel_elf::LibrarySource` over the kernel's file context.
//! - [`kernel_exports`]: the symbols the kernel gives loaded objects: keel-libc's
//!   (`crate::libc`), and one of its own for the tests.
//! - [`run_object`]: `app=run run.object=PATH [run.entry=NAME]` loads a shared object
//!   (and its `DT_NEEDED`s) from the VFS, calls its `int NAME(void)` (default
//!   `keel_main`) on the application thread, and exits with success if it returns 0.

use alloc::vec::Vec;

use keel_arch_x86_64::paging::{self, PageAccess};
use keel_elf::{MemoryError, PageRange as ElfPages, Protection};
use keel_pagealloc::PageRange;
use keel_types::VirtAddr;

use crate::{files, memory};

/// The page size.
const PAGE: u64 = 4096;

/// Pages every [`KernelMemory`] holds now (page-allocator pages, reserved for objects).
static PAGES_HELD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Pages all [`KernelMemory`]s hold now.
pub fn pages_held() -> u64 {
    PAGES_HELD.load(core::sync::atomic::Ordering::Relaxed)
}

/// Memory for loaded objects: page-allocator runs, identity-mapped.
#[derive(Debug, Default)]
pub struct KernelMemory {
    /// Live reservations: what the linker sees, and the run behind it.
    reservations: Vec<(ElfPages, PageRange)>,
}

fn access(protection: Protection) -> PageAccess {
    match protection {
        Protection::Inaccessible => PageAccess::None,
        Protection::Read => PageAccess::Read,
        Protection::ReadWrite => PageAccess::ReadWrite,
        Protection::ReadExecute => PageAccess::ReadExecute,
    }
}

impl KernelMemory {
    /// Whether `range` lies in one reservation.
    fn reserved(&self, range: &ElfPages) -> bool {
        range.start.as_u64().is_multiple_of(PAGE)
            && (range.length as u64).is_multiple_of(PAGE)
            && self
                .reservations
                .iter()
                .any(|(reservation, _)| reservation.contains_range(range))
    }

    fn set(range: ElfPages, access: PageAccess) -> Result<(), MemoryError> {
        paging::set_identity_access(range.start, range.length as u64 / PAGE, access).map_err(
            |error| {
                log::error!("elf: cannot change {range:?} to {access:?}: {error}");
                MemoryError::Failed { code: 0 }
            },
        )
    }
}

// SAFETY: a reservation is a run of pages from the page allocator, owned by this
// memory until `release` frees it, so nothing else uses it; it is made inaccessible
// at once. `map` makes the pages read-write, zeroes them through their identity
// mapping and only then gives them the protection asked for; `protect` only changes
// access; `PageAccess` has no writable-and-executable value. Every change is flushed
// from every CPU's TLB when it takes rights away (`set_identity_access`), so the
// protection holds on every CPU when the call returns.
unsafe impl keel_elf::Memory for KernelMemory {
    fn reserve(&mut self, length: usize, alignment: usize) -> Result<ElfPages, MemoryError> {
        let length = length as u64;
        if length == 0 || !length.is_multiple_of(PAGE) || !alignment.is_power_of_two() {
            return Err(MemoryError::InvalidRange);
        }
        let pages = length / PAGE;
        // A run of n pages is aligned to n rounded up to a power of two.
        let count = pages.max(alignment as u64 / PAGE);
        let run = memory::alloc_pages(count).map_err(|_| MemoryError::OutOfMemory)?;
        let start = run.start.as_u64() * PAGE;
        let reservation = ElfPages {
            start: VirtAddr::new(start),
            length: length as usize,
        };
        if !start.is_multiple_of(alignment as u64) {
            let _ = memory::free_pages(run);
            return Err(MemoryError::OutOfAddressSpace {
                length: length as usize,
            });
        }
        if let Err(error) = Self::set(reservation, PageAccess::None) {
            let _ = Self::set(reservation, PageAccess::ReadWrite);
            let _ = memory::free_pages(run);
            return Err(error);
        }
        PAGES_HELD.fetch_add(run.count, core::sync::atomic::Ordering::Relaxed);
        self.reservations.push((reservation, run));
        Ok(reservation)
    }

    fn map(&mut self, range: ElfPages, protection: Protection) -> Result<(), MemoryError> {
        if !self.reserved(&range) {
            return Err(MemoryError::InvalidRange);
        }
        Self::set(range, PageAccess::ReadWrite)?;
        // SAFETY: the range is ours (inside a reservation) and now read-write.
        unsafe { core::ptr::write_bytes(range.start.as_u64() as *mut u8, 0, range.length) };
        Self::set(range, access(protection))
    }

    fn protect(&mut self, range: ElfPages, protection: Protection) -> Result<(), MemoryError> {
        if !self.reserved(&range) {
            return Err(MemoryError::InvalidRange);
        }
        Self::set(range, access(protection))
    }

    fn release(&mut self, reservation: ElfPages) {
        let Some(index) = self
            .reservations
            .iter()
            .position(|(held, _)| *held == reservation)
        else {
            log::error!("elf: release of {reservation:?}, which is not a reservation");
            return;
        };
        let (reservation, run) = self.reservations.swap_remove(index);
        PAGES_HELD.fetch_sub(run.count, core::sync::atomic::Ordering::Relaxed);
        // Back to what all RAM has, then to the page allocator. If the access cannot
        // be restored the pages stay out of use rather than be reused inaccessible.
        if Self::set(reservation, PageAccess::ReadWrite).is_ok()
            && let Err(error) = memory::free_pages(run)
        {
            log::error!("elf: freeing {run:?}: {error:?}");
        }
    }
}

impl Drop for KernelMemory {
    fn drop(&mut self) {
        while let Some((reservation, _)) = self.reservations.last().copied() {
            keel_elf::Memory::release(self, reservation);
        }
    }
}

/// Libraries read whole from the kernel's VFS.
#[derive(Debug, Default, Clone, Copy)]
pub struct VfsLibraries;

impl keel_elf::LibrarySource for VfsLibraries {
    type File = Vec<u8>;

    fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        let context = files::context()?;
        let fd = context
            .open(path.as_bytes(), keel_vfs::OpenFlags::O_RDONLY, 0)
            .ok()?;
        let size = context.fstat(fd).ok().map_or(0, |stat| stat.size);
        let mut contents = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut buffer = [0u8; 4096];
        let result = loop {
            match context.read(fd, &mut buffer) {
                Ok(0) => break Some(contents),
                Ok(count) => contents.extend_from_slice(&buffer[..count]),
                Err(_) => break None,
            }
        };
        let _ = context.close(fd);
        result
    }
}

/// `app=run`: loads `run.object` from the VFS and calls its `run.entry` (default
/// `keel_main`, `int (void)`); true if it returned 0. A load error or a missing entry
/// is reported and is a failure.
#[cfg(not(feature = "ktest"))]
pub fn run_object(info: &keel_arch_x86_64::ArchInfo) -> bool {
    use keel_arch_x86_64::kprintln;
    let Some(object) = info.boot.command_line_value("run.object") else {
        kprintln!("run: no object: give run.object=PATH (a shared object in the VFS)");
        return false;
    };
    let entry = info
        .boot
        .command_line_value("run.entry")
        .unwrap_or("keel_main");
    let mut linker = keel_elf::Linker::new(
        KernelMemory::default(),
        kernel_exports(),
        VfsLibraries,
        keel_elf::LinkerOptions::default(),
    );
    // SAFETY: the user asked the kernel to run this object: it is trusted code in the
    // kernel's address space, as every OSv application is.
    let loaded = unsafe { linker.load(object) };
    let id = match loaded {
        Ok(id) => id,
        Err(error) => {
            kprintln!("run: cannot load {object}: {error}");
            return false;
        }
    };
    let Some(address) = linker.symbol(id, entry, None) else {
        kprintln!("run: {object} defines no {entry}");
        return false;
    };
    // SAFETY: by this mode's contract the entry is `int entry(void)` with the C ABI.
    let function: extern "C" fn() -> i32 = unsafe { core::mem::transmute(address.as_u64()) };
    kprintln!("run: calling {entry} of {object}");
    let status = function();
    kprintln!("run: {entry} returned {status}");
    // SAFETY: the object's own finalizers, after its entry returned.
    if let Err(error) = unsafe { linker.finalize() } {
        kprintln!("run: finalizing {object}: {error}");
        return false;
    }
    drop(linker);
    let held = pages_held();
    if held != 0 {
        kprintln!("run: {held} pages of the object were not given back");
        return false;
    }
    status == 0
}

/// `keel_kernel_answer`: a kernel function a loaded object can call (the in-guest
/// ELF test calls it through its PLT).
extern "C" fn keel_kernel_answer() -> i64 {
    21
}

/// The symbols the kernel exports to loaded objects: keel-libc (`crate::libc`) and
/// the kernel's own few.
pub fn kernel_exports() -> keel_elf::ExportedSymbols {
    let mut exports = crate::libc::exports();
    // SAFETY: the address is the entry of an `extern "C"` function with the signature
    // `long (void)`, valid for the kernel's whole life.
    unsafe {
        exports.insert(
            "keel_kernel_answer",
            keel_elf::SymbolDefinition {
                address: VirtAddr::new(keel_kernel_answer as *const () as u64),
                size: None,
            },
        );
    }
    exports
}
