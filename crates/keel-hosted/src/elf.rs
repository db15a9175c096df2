//! `keel-elf`'s traits on the host: [`HostMemory`] over
//! `mmap`/`mprotect`/`munmap`, [`HostLibraries`] resolving against the host's glibc
//! through `dlopen`/`dlsym`/`dlvsym`, and [`FileSystem`] reading libraries with
//! `std::fs`, and [`HostThreadLocalStorage`]. They let real Debian libraries run inside
//! an ordinary test process, for the benches and fuzzing.
//!
//! The same file is also compiled into `keel-elf` itself, as its test-only `host`
//! module (`#[path]`), for keel-elf's own unit tests: they cannot use this crate (a
//! dev-dependency on a crate that depends on keel-elf would give them a second,
//! different keel-elf), and a `host` feature on keel-elf would link `std` into the
//! kernel through feature unification. So this file names keel-elf's items only by
//! their public paths, `keel_elf::...` (keel-elf calls itself that in its tests).

use alloc::string::String;
use alloc::vec::Vec;
use std::ffi::CString;

use keel_types::VirtAddr;

use keel_elf::{
    ExportedSymbols, LibrarySource, Memory, MemoryError, PAGE_SIZE, PageRange, Protection,
    SymbolDefinition, SymbolProvider, SymbolRequest, ThreadLocalStorage, TlsError, TlsModuleId,
    TlsTemplate,
};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn host_protection(protection: Protection) -> libc::c_int {
    match protection {
        Protection::Inaccessible => libc::PROT_NONE,
        Protection::Read => libc::PROT_READ,
        Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        Protection::ReadExecute => libc::PROT_READ | libc::PROT_EXEC,
    }
}

/// Ranges up to this length are populated when mapped (see [`HostMemory`]'s `map`).
const POPULATE_LIMIT: usize = 16 << 20;

/// [`Memory`] over anonymous private mappings of the current process.
#[derive(Debug, Default)]
pub struct HostMemory {
    reservations: Vec<PageRange>,
}

impl HostMemory {
    /// A memory with no reservations.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reservations not yet released.
    pub fn reservations(&self) -> &[PageRange] {
        &self.reservations
    }

    fn inside_a_reservation(&self, range: &PageRange) -> bool {
        range.start.page_aligned()
            && range.length.is_multiple_of(PAGE_SIZE)
            && self
                .reservations
                .iter()
                .any(|reservation| reservation.contains_range(range))
    }
}

// SAFETY: reservations are fresh `mmap(PROT_NONE)` ranges nothing else uses until
// `release` unmaps them; `map` replaces pages inside a reservation with fresh
// anonymous (zeroed) pages of the asked protection (`MAP_FIXED` only inside our own
// reservation, checked); `protect` is `mprotect`, which keeps contents; `Protection`
// has no writable-and-executable value, so no page is ever both.
unsafe impl Memory for HostMemory {
    fn reserve(&mut self, length: usize, alignment: usize) -> Result<PageRange, MemoryError> {
        let alignment = alignment.max(PAGE_SIZE);
        if length == 0 || !length.is_multiple_of(PAGE_SIZE) || !alignment.is_power_of_two() {
            return Err(MemoryError::InvalidRange);
        }
        let padded = length
            .checked_add(alignment)
            .ok_or(MemoryError::OutOfAddressSpace { length })?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel chooses;
        // it touches no existing memory.
        let start = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                padded,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(MemoryError::OutOfAddressSpace { length });
        }
        let start = start as u64;
        let aligned = start
            .checked_next_multiple_of(alignment as u64)
            .ok_or(MemoryError::OutOfAddressSpace { length })?;
        let head = (aligned - start) as usize;
        let tail = padded - head - length;
        if head > 0 {
            // SAFETY: the head is part of the mapping just made and nothing uses it.
            unsafe { libc::munmap(start as *mut libc::c_void, head) };
        }
        if tail > 0 {
            // SAFETY: likewise for the tail past the aligned range.
            unsafe { libc::munmap((aligned + length as u64) as *mut libc::c_void, tail) };
        }
        let range = PageRange {
            start: VirtAddr::new(aligned),
            length,
        };
        self.reservations.push(range);
        Ok(range)
    }

    fn map(&mut self, range: PageRange, protection: Protection) -> Result<(), MemoryError> {
        if !self.inside_a_reservation(&range) {
            return Err(MemoryError::InvalidRange);
        }
        // MAP_POPULATE: the linker writes most pages it maps right away (file bytes,
        // relocations), and one populating call is cheaper than a fault per page (a
        // libsqlite3 load took 17% less in `cargo bench --bench elf`). Not for large
        // ranges, which are mostly `.bss` (or a malformed `p_memsz`) and stay lazy.
        let populate = if range.length <= POPULATE_LIMIT {
            libc::MAP_POPULATE
        } else {
            0
        };
        // SAFETY: `MAP_FIXED` replaces pages inside one of our own reservations
        // (checked above), which only the linker uses.
        let mapped = unsafe {
            libc::mmap(
                range.start.as_u64() as *mut libc::c_void,
                range.length,
                host_protection(protection),
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | populate,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(MemoryError::Failed { code: errno() });
        }
        Ok(())
    }

    fn protect(&mut self, range: PageRange, protection: Protection) -> Result<(), MemoryError> {
        if !self.inside_a_reservation(&range) {
            return Err(MemoryError::InvalidRange);
        }
        // SAFETY: changes the protection of pages inside our own reservation only.
        let result = unsafe {
            libc::mprotect(
                range.start.as_u64() as *mut libc::c_void,
                range.length,
                host_protection(protection),
            )
        };
        if result != 0 {
            return Err(MemoryError::Failed { code: errno() });
        }
        Ok(())
    }

    fn release(&mut self, reservation: PageRange) {
        if let Some(position) = self
            .reservations
            .iter()
            .position(|held| *held == reservation)
        {
            self.reservations.swap_remove(position);
            // SAFETY: the range is one of our reservations, which the caller gives up.
            unsafe {
                libc::munmap(
                    reservation.start.as_u64() as *mut libc::c_void,
                    reservation.length,
                )
            };
        }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        while let Some(reservation) = self.reservations.pop() {
            // SAFETY: a reservation of ours that nobody can use once we are dropped
            // (the linker that used it is gone: it owned us).
            unsafe {
                libc::munmap(
                    reservation.start.as_u64() as *mut libc::c_void,
                    reservation.length,
                )
            };
        }
    }
}

/// A [`SymbolProvider`] over the host's own shared libraries (by default glibc's
/// `libc.so.6` and `libm.so.6`), looked up with `dlvsym` for versioned references and
/// `dlsym` otherwise. The host's dynamic linker has already resolved ifuncs.
#[derive(Debug)]
pub struct HostLibraries {
    handles: Vec<*mut libc::c_void>,
}

/// Why [`HostLibraries::open`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLibraryMissing {
    /// The library `dlopen` did not find.
    pub name: String,
}

impl HostLibraries {
    /// The host's `libc.so.6` and `libm.so.6`.
    pub fn glibc() -> Result<Self, HostLibraryMissing> {
        Self::open(&["libc.so.6", "libm.so.6"])
    }

    /// The host libraries `names`, searched in this order.
    pub fn open(names: &[&str]) -> Result<Self, HostLibraryMissing> {
        let mut handles = Vec::new();
        for name in names {
            let missing = || HostLibraryMissing {
                name: String::from(*name),
            };
            let c_name = CString::new(*name).map_err(|_| missing())?;
            // SAFETY: `c_name` is NUL-terminated; these are the host's system
            // libraries, already loaded in (or safe to add to) the process.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if handle.is_null() {
                return Err(missing());
            }
            handles.push(handle);
        }
        Ok(HostLibraries { handles })
    }
}

// SAFETY: addresses come from the host's dynamic linker for its loaded libraries,
// which stay loaded (the handles are never closed): data is readable for the size the
// host's symbol table gives (reported for COPY sources, the only reads of data; dladdr1
// knows every dlsym result), and
// functions are C ABI entries, as the contract asks.
unsafe impl SymbolProvider for HostLibraries {
    fn resolve(&self, request: &SymbolRequest<'_>) -> Option<SymbolDefinition> {
        let name = CString::new(request.name).ok()?;
        let version = request.version.map(CString::new).transpose().ok()?;
        for &handle in &self.handles {
            let address = match &version {
                // SAFETY: a live handle and NUL-terminated strings.
                Some(version) => unsafe { libc::dlvsym(handle, name.as_ptr(), version.as_ptr()) },
                // SAFETY: as above.
                None => unsafe { libc::dlsym(handle, name.as_ptr()) },
            };
            if !address.is_null() {
                return Some(SymbolDefinition {
                    address: VirtAddr::new(address as u64),
                    // dladdr1 scans symbol tables: ask only when a COPY needs it.
                    size: if request.copy_source {
                        symbol_size(address)
                    } else {
                        None
                    },
                });
            }
        }
        None
    }
}

/// `RTLD_DL_SYMENT`: `dladdr1` returns the `Elf64_Sym` of the address.
const RTLD_DL_SYMENT: libc::c_int = 1;

/// The `st_size` the host's dynamic linker has for the symbol at `address`.
fn symbol_size(address: *mut libc::c_void) -> Option<u64> {
    let mut info = libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    };
    let mut symbol: *mut libc::c_void = core::ptr::null_mut();
    // SAFETY: `info` and `symbol` are valid out-pointers; with RTLD_DL_SYMENT,
    // glibc stores a pointer to the symbol's `Elf64_Sym` in `symbol`.
    let found = unsafe { libc::dladdr1(address, &mut info, &mut symbol, RTLD_DL_SYMENT) };
    if found == 0 || symbol.is_null() {
        return None;
    }
    // SAFETY: glibc returned a pointer to an `Elf64_Sym` in a loaded object's symbol
    // table, which stays mapped while the object is loaded.
    Some(unsafe { (*(symbol as *const libc::Elf64_Sym)).st_size })
}

/// A [`LibrarySource`] over the host's filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSystem;

impl LibrarySource for FileSystem {
    type File = Vec<u8>;

    fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }
}

/// The templates [`HostThreadLocalStorage`] registered, by module id - 1 (`None` once
/// unregistered; ids are never reused). Global because `__tls_get_addr` gets no
/// context but the `tls_index` it is passed.
static HOST_TLS_MODULES: std::sync::Mutex<Vec<Option<TlsTemplate>>> =
    std::sync::Mutex::new(Vec::new());

/// One thread's TLS blocks, by module id - 1 (null: not allocated yet), freed when the
/// thread exits.
struct ThreadBlocks(Vec<(*mut u8, core::alloc::Layout)>);

impl Drop for ThreadBlocks {
    fn drop(&mut self) {
        for &(block, layout) in &self.0 {
            if !block.is_null() {
                // SAFETY: allocated with this layout by `host_tls_get_addr`, and the
                // thread that used it is exiting.
                unsafe { std::alloc::dealloc(block, layout) };
            }
        }
    }
}

std::thread_local! {
    static HOST_TLS_BLOCKS: core::cell::RefCell<ThreadBlocks> =
        const { core::cell::RefCell::new(ThreadBlocks(Vec::new())) };
}

/// The argument of `__tls_get_addr` (x86-64 psABI `tls_index`: the two words a
/// `DTPMOD64` and a `DTPOFF64` relocation filled).
#[repr(C)]
#[derive(Debug)]
pub struct TlsIndex {
    /// The module id.
    pub module: u64,
    /// The offset in the module's block.
    pub offset: u64,
}

/// The current thread's block of `module` (allocated and initialized from the
/// template on first use), or `None` if the module is not registered.
fn host_thread_block(module: u64) -> Option<*mut u8> {
    let slot = usize::try_from(module).ok()?.checked_sub(1)?;
    HOST_TLS_BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if let Some(&(block, _)) = blocks.0.get(slot)
            && !block.is_null()
        {
            return Some(block);
        }
        let template = (*HOST_TLS_MODULES.lock().ok()?.get(slot)?)?;
        let layout = core::alloc::Layout::from_size_align(
            template.block_size.max(1) as usize,
            template.alignment as usize,
        )
        .ok()?;
        // SAFETY: the layout has a non-zero size.
        let block = unsafe { std::alloc::alloc_zeroed(layout) };
        if block.is_null() {
            return None;
        }
        // SAFETY: the template's initialized bytes stay mapped while registered (the
        // linker's promise to `ThreadLocalStorage`), and `initialized_size <=
        // block_size` (checked when parsed); the block is fresh.
        unsafe {
            core::ptr::copy_nonoverlapping(
                template.initialized_address as *const u8,
                block,
                template.initialized_size as usize,
            )
        };
        if blocks.0.len() <= slot {
            blocks.0.resize(
                slot + 1,
                (core::ptr::null_mut(), core::alloc::Layout::new::<u8>()),
            );
        }
        blocks.0[slot] = (block, layout);
        Some(block)
    })
}

/// `__tls_get_addr` for objects whose TLS [`HostThreadLocalStorage`] registered: the
/// address of `index.offset` in the current thread's block of `index.module`. Aborts
/// the process on a module it does not know (there is no way to return an error).
///
/// # Safety
/// `index` points to a valid [`TlsIndex`] (the code of a linked object passes one).
pub unsafe extern "C" fn host_tls_get_addr(index: *const TlsIndex) -> *mut u8 {
    // SAFETY: the caller passes a valid `tls_index`.
    let (module, offset) = unsafe { ((*index).module, (*index).offset) };
    match host_thread_block(module) {
        Some(block) => block.wrapping_add(offset as usize),
        None => std::process::abort(),
    }
}

/// Dynamic thread-local storage for the host: module ids, per-thread blocks allocated
/// on first use by [`host_tls_get_addr`] (exported as `__tls_get_addr` by
/// [`HostThreadLocalStorage::exports`]). No static TLS: initial-exec code
/// (`TPOFF64`) is refused.
#[derive(Debug, Default)]
pub struct HostThreadLocalStorage {
    _private: (),
}

impl HostThreadLocalStorage {
    /// A host TLS.
    pub fn new() -> Self {
        Self::default()
    }

    /// `__tls_get_addr`, to put before the host's glibc in the provider chain.
    pub fn exports() -> ExportedSymbols {
        let mut exports = ExportedSymbols::new();
        let definition = SymbolDefinition {
            address: VirtAddr::new(host_tls_get_addr as *const () as u64),
            size: None,
        };
        // SAFETY: `host_tls_get_addr` has glibc's `__tls_get_addr` signature and C ABI.
        unsafe { exports.insert("__tls_get_addr", definition) };
        exports
    }
}

impl ThreadLocalStorage for HostThreadLocalStorage {
    fn register(&mut self, template: &TlsTemplate) -> Result<TlsModuleId, TlsError> {
        let mut modules = HOST_TLS_MODULES.lock().map_err(|_| TlsError::Exhausted)?;
        modules.push(Some(*template));
        TlsModuleId::new(modules.len() as u64).ok_or(TlsError::Exhausted)
    }

    fn static_offset(&self, _module: TlsModuleId) -> Option<i64> {
        None
    }

    fn unregister(&mut self, module: TlsModuleId) {
        if let Ok(mut modules) = HOST_TLS_MODULES.lock()
            && let Some(slot) = modules.get_mut(module.get() as usize - 1)
        {
            *slot = None;
        }
    }
}
