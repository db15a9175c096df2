//! Thread-local storage through a trait: the linker hands each object's `PT_TLS`
//! template to a [`ThreadLocalStorage`], which gives it a module id (for `DTPMOD64`)
//! and, if it has static TLS for it, an offset from the thread pointer (for
//! `TPOFF64`). Per-thread blocks and `__tls_get_addr` belong to the implementation (the
//! kernel's threads in the guest; `host::HostThreadLocalStorage` on the host).

use core::num::NonZeroU64;

/// A TLS module id, as `DTPMOD64` stores it and `__tls_get_addr` receives it (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TlsModuleId(NonZeroU64);

impl TlsModuleId {
    /// The id `value`, if it is not 0.
    pub const fn new(value: u64) -> Option<Self> {
        match NonZeroU64::new(value) {
            Some(value) => Some(TlsModuleId(value)),
            None => None,
        }
    }

    /// The number written by `DTPMOD64`.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

/// One object's TLS template (`PT_TLS`), at its mapped address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsTemplate {
    /// The absolute address of the initialized part (`.tdata`) in the mapped object.
    pub initialized_address: u64,
    /// Bytes of `.tdata` (`p_filesz`): copied into each thread's block.
    pub initialized_size: u64,
    /// The whole block (`p_memsz`): the rest (`.tbss`) is zero.
    pub block_size: u64,
    /// The block's alignment (`p_align`, a power of two, at least 1).
    pub alignment: u64,
}

/// Why a [`ThreadLocalStorage`] refused an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsError {
    /// This implementation has no thread-local storage at all.
    Unsupported,
    /// No module id or memory left.
    Exhausted,
}

/// Where the linker's objects get their thread-local storage.
///
/// The linker guarantees an implementation that a registered template's bytes
/// (`initialized_address`, `initialized_size`) stay mapped and unchanged from
/// [`ThreadLocalStorage::register`] until [`ThreadLocalStorage::unregister`] of its id.
pub trait ThreadLocalStorage {
    /// Registers an object's template and returns its module id.
    fn register(&mut self, template: &TlsTemplate) -> Result<TlsModuleId, TlsError>;

    /// The offset from the thread pointer (negative: x86-64 variant II) of `module`'s
    /// block in every thread's static TLS, if the implementation gives it one; an
    /// object that needs it (`TPOFF64`, initial-exec code) is refused otherwise.
    fn static_offset(&self, module: TlsModuleId) -> Option<i64>;

    /// Forgets `module` (its object is being unmapped).
    fn unregister(&mut self, module: TlsModuleId);
}

/// No thread-local storage: every object with `PT_TLS` is refused
/// ([`crate::ObjectError::ThreadLocalStorageUnsupported`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoThreadLocalStorage;

impl ThreadLocalStorage for NoThreadLocalStorage {
    fn register(&mut self, _template: &TlsTemplate) -> Result<TlsModuleId, TlsError> {
        Err(TlsError::Unsupported)
    }

    fn static_offset(&self, _module: TlsModuleId) -> Option<i64> {
        None
    }

    fn unregister(&mut self, _module: TlsModuleId) {}
}
