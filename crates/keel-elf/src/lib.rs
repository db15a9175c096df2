//! `keel-elf`: Keel's ELF dynamic linker. It maps, relocates and links unmodified
//! x86-64 Linux shared objects and PIE executables into memory it is handed, resolving
//! their symbols through a trait, and knows nothing of where that memory comes from.
//!
//! # Main types
//! - [`Linker`]: loads an object with its `DT_NEEDED` dependencies
//!   ([`Linker::load`]), links them and runs their initializers; [`Linker::symbol`]
//!   and [`Linker::lookup`] find what they define; [`Linker::finalize`] runs the
//!   finalizers in reverse.
//! - [`Memory`] (an `unsafe trait`): reserve an address range, map zero-filled pages
//!   with a [`Protection`], change protections, release. [`Protection`] has no
//!   writable-and-executable value, so W^X holds by construction.
//! - [`SymbolProvider`] (an `unsafe trait`): one link of the lookup chain. The chain
//!   is the exported-symbols provider the linker is given (the kernel's own exports,
//!   [`ExportedSymbols`]; on the host, the host's glibc), then the loaded objects in
//!   load order.
//! - [`LibrarySource`]: reads a file by path; the linker builds the paths from
//!   `DT_RUNPATH` (or `DT_RPATH`, with `$ORIGIN`) and then
//!   [`LinkerOptions::default_directories`]. Names in
//!   [`LinkerOptions::provided_libraries`] ([`KERNEL_PROVIDED_LIBRARIES`]: `libc.so.6`,
//!   `libm.so.6`, ...) are not loaded: they resolve to the exports, as in OSv.
//! - [`ThreadLocalStorage`]: where objects with `PT_TLS` get a module id and, if it
//!   has static TLS, a thread-pointer offset; per-thread blocks and `__tls_get_addr`
//!   belong to the implementation. [`Linker::new`] uses [`NoThreadLocalStorage`],
//!   which refuses them; [`Linker::with_thread_local_storage`] takes another.
//! - [`ObjectFile`]: one object parsed and validated into owned tables;
//!   [`RelocationKind`], the typed x86-64 relocations.
//! - Errors: [`LinkError`] (with the object's name) over [`ObjectError`] (what is
//!   wrong with one object) and [`MemoryError`], each with a `Display` message. Missing
//!   symbols are reported all at once, each with its version and the object that needs
//!   it.
//!
//! On the host, `keel_hosted::elf` (also this crate's test-only `host` module: one
//! source file, see its docs) provides `HostMemory`
//! (`mmap`/`mprotect`), `HostLibraries` (the host glibc's symbols through
//! `dlopen`/`dlvsym`), `FileSystem` (a [`LibrarySource`] over `std::fs`) and
//! `HostThreadLocalStorage` (dynamic TLS: blocks allocated per thread on first use by
//! its own `__tls_get_addr`, which `HostThreadLocalStorage::exports` puts before glibc
//! in a [`ProviderChain`]; no static TLS).
//!
//! # What the linker does
//! - Only `ET_DYN` objects (shared objects and PIEs) load; `ET_EXEC` is refused
//!   ([`ObjectError::ExecutableNotPositionIndependent`]). Every `PT_LOAD` is checked
//!   (file range inside the file, `p_memsz >= p_filesz`, no wrap, ascending and not
//!   sharing a page with the previous one, span at most 4 GiB, not W+X), the span is
//!   reserved at the largest `p_align`, each segment is mapped read-write, its file
//!   bytes copied (the rest is already zero: `.bss`), then given its final protection.
//!   `PT_GNU_STACK` with `PF_X` is refused; a missing one is reported
//!   ([`StackRequirement::Unspecified`]) since Keel never gives an executable stack.
//! - All references of the new objects are resolved before anything is written; if
//!   any is missing the load fails with the complete list and nothing stays mapped.
//!   Versions are honoured (`memcpy@GLIBC_2.14` is not `memcpy@GLIBC_2.2.5`) with
//!   glibc's matching rule, read from `DT_VERSYM`/`DT_VERDEF`/`DT_VERNEED`.
//! - Relocations are applied dependencies first (so `COPY` sources are final), each
//!   write checked to lie inside a segment that is writable in the final image: text
//!   relocations are refused, and nothing is written outside the mapping. `DT_RELR`,
//!   then `DT_RELA` and `DT_JMPREL` (bound now: there is no lazy PLT), then
//!   `IRELATIVE` last, running the resolvers. Then `PT_GNU_RELRO` becomes read-only.
//! - Initializers run in dependency order (post-order over `DT_NEEDED`, cycles broken
//!   where re-entered), `DT_INIT` then `DT_INIT_ARRAY`, with a PIE's
//!   `DT_PREINIT_ARRAY` first; finalizers in exactly the reverse order.
//! - Thread-local storage: each `PT_TLS` template is registered with the
//!   [`ThreadLocalStorage`] when its object is mapped (and unregistered when it is
//!   released); `DTPMOD64` gets the defining object's module id, `DTPOFF64` the
//!   variable's offset in its block, `TPOFF64` the implementation's static offset plus
//!   that (refused when it has none, as on the host). A TLS symbol of the exports and
//!   `TLSDESC` (`-mtls-dialect=gnu2`) are refused.
//! - [`Linker::object_info`] reports what `dl_iterate_phdr` hands an unwinder: the
//!   load bias, the program headers in memory and `.eh_frame_hdr` (`PT_GNU_EH_FRAME`).
//! - Not yet: `dlclose` of one object, `RTLD_LOCAL`, `dladdr`, `dl_iterate_phdr`
//!   itself (the libc's, over `object_info`), the static TLS layout at thread creation
//!   (the guest's `ThreadLocalStorage`).
//!
//! # Hashing is Keel's own
//! Symbol lookup goes through the object's GNU hash table (Bloom filter, buckets,
//! chains), falling back to the SysV hash table, both decoded and walked by this crate
//! (`hash`), with every index bounds-checked; the hash table also gives the dynamic
//! symbol count, which nothing else in the dynamic section states.
//!
//! # Why goblin
//! goblin decodes the on-disk structures (ELF header, program headers, dynamic array,
//! `Elf64_Sym` and `Elf64_Rela` entries) `no_std` with `alloc`, returning errors
//! rather than panicking on short input, and is the workspace's ELF parser already
//! (xtask reads the kernel's symbols with it). What a loader needs beyond decoding (the
//! segment rules, the extents of tables the dynamic array points at, hashes, versions
//! through the dynamic array rather than section headers, `DT_RELR`) is here: goblin's
//! `Elf::parse` also reads section headers, which a loader must not depend on, and its
//! `DynamicInfo` turns some addresses (e.g. `DT_INIT`) into file offsets.
//!
//! # Unsafe fence
//! The crate root denies `unsafe_code`. It is allowed in `image` (every write into
//! and read from a mapped object, each bounds-checked against its segments, and the
//! calls of initializers, finalizers and ifunc resolvers); in three small children of
//! `linker`, whose own module has none: `linker::lifecycle` (the unsafe
//! [`Linker::load`], [`Linker::load_bytes`] and [`Linker::finalize`], running the
//! initializers and finalizers), `linker::mapping` (mapping segments, an object's
//! `Image`) and `linker::relocate` (applying relocations, running ifunc resolvers);
//! and in `host` (`mmap`, `dlopen`/`dlvsym`/`dladdr1`, and the per-thread TLS blocks
//! behind its `__tls_get_addr`); `memory` and `symbols` only declare their
//! `unsafe trait`s (and `symbols` implements its own for its small providers and has
//! the unsafe `ExportedSymbols::insert`). The test module calls into loaded objects.
//! Every block has a `// SAFETY:` comment.
//!
//! # Known limits
//! - The exports come first in the lookup chain, before every loaded object (OSv's
//!   rule, so the kernel's libc always wins). A `COPY` relocation against an export
//!   copies its bytes once at load time; the exporter keeps using its own copy (on the
//!   host, glibc cannot be rebound to an executable's copy).
//! - Segments are copied, not mapped from the file: loading costs a copy of every
//!   file-backed byte (see `papers/0013-elf-linker.md` for what that costs).
//! - Dropping a [`Linker`] unmaps its objects without running finalizers, and does not
//!   undo what their code registered elsewhere (`atexit` handlers, thread-specific data
//!   destructors): call [`Linker::finalize`] first and drop a linker only when no such
//!   registration can outlive it.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;
// The test-only `host` module (keel-hosted's `elf.rs`) names this crate `keel_elf`.
#[cfg(test)]
extern crate self as keel_elf;

mod errors_display;
mod hash;
#[cfg(test)]
#[allow(unsafe_code)]
#[path = "../../keel-hosted/src/elf.rs"]
pub(crate) mod host;
#[allow(unsafe_code)]
mod image;
mod linker;
#[allow(unsafe_code)]
mod memory;
mod object;
mod reader;
mod relocation;
#[allow(unsafe_code)]
mod symbols;
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;
mod tls;
mod version;

use alloc::string::String;
use alloc::vec::Vec;

pub use hash::{GnuHashTable, SymbolHashTable, SysvHashTable, gnu_hash, sysv_hash};
pub use linker::{
    DEFAULT_LIBRARY_DIRECTORIES, Dependency, KERNEL_PROVIDED_LIBRARIES, LibrarySource, Linker,
    LinkerOptions, ObjectId, ObjectInfo,
};
pub use memory::{Memory, MemoryError, PAGE_SIZE, PageRange, Protection};
pub use object::{
    FunctionArray, LoadSegment, MAXIMUM_IMAGE_SPAN, ObjectFile, ObjectKind, StackRequirement,
    Symbol, SymbolBinding, SymbolKind, ThreadLocalSegment,
};
pub use relocation::{Relocation, RelocationKind, decode_relr};
pub use symbols::{
    ExportedSymbols, NoSymbols, ProviderChain, SymbolDefinition, SymbolProvider, SymbolRequest,
};
pub use tls::{NoThreadLocalStorage, ThreadLocalStorage, TlsError, TlsModuleId, TlsTemplate};
pub use version::{VersionDefinition, VersionRequirement, VersionTables};

/// Which decoding step goblin refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStage {
    /// The ELF header (too short, bad magic).
    Header,
    /// The program header table.
    ProgramHeaders,
    /// The `PT_DYNAMIC` array.
    Dynamic,
    /// The dynamic symbol table.
    Symbols,
    /// A `RELA` table.
    Relocations,
}

/// A table the dynamic array points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `DT_STRTAB`.
    Strings,
    /// `DT_SYMTAB`.
    Symbols,
    /// `DT_GNU_HASH`.
    GnuHash,
    /// `DT_HASH`.
    SysvHash,
    /// `DT_RELA`.
    Relocations,
    /// `DT_JMPREL`.
    PltRelocations,
    /// `DT_RELR`.
    PackedRelocations,
    /// `DT_VERSYM`.
    SymbolVersions,
    /// `DT_VERDEF`.
    VersionDefinitions,
    /// `DT_VERNEED`.
    VersionRequirements,
}

/// What is wrong with one object, or why it cannot be linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectError {
    /// goblin could not decode a structure.
    Unparsable(ParseStage),
    /// Not a 64-bit ELF file.
    NotElf64,
    /// Not little-endian.
    NotLittleEndian,
    /// Not x86-64 (`e_machine`).
    WrongMachine {
        /// `e_machine`.
        machine: u16,
    },
    /// An `ET_EXEC`: its addresses are fixed at link time, so it cannot be loaded at a
    /// base the linker chooses. Rebuild it as a PIE (`-fPIE -pie`).
    ExecutableNotPositionIndependent,
    /// Neither `ET_DYN` nor `ET_EXEC` (e.g. a relocatable `.o`).
    UnsupportedObjectType {
        /// `e_type`.
        object_type: u16,
    },
    /// No `PT_LOAD` segment.
    NoLoadSegments,
    /// No `PT_DYNAMIC`.
    NoDynamicSection,
    /// The `index`-th `PT_LOAD`'s file bytes lie (partly) outside the file.
    SegmentOutsideFile {
        /// Index among the `PT_LOAD` segments.
        index: usize,
    },
    /// `p_memsz < p_filesz`.
    SegmentMemorySizeBelowFileSize {
        /// Index among the `PT_LOAD` segments.
        index: usize,
    },
    /// The segment's addresses wrap around.
    SegmentAddressOverflow {
        /// Index among the `PT_LOAD` segments.
        index: usize,
    },
    /// The segment starts below the previous one's end (or shares its last page).
    SegmentsOverlap {
        /// Index among the `PT_LOAD` segments.
        index: usize,
    },
    /// `p_align` is not a power of two or is absurdly large.
    BadSegmentAlignment {
        /// Index among the `PT_LOAD` segments.
        index: usize,
    },
    /// The segments span more than [`MAXIMUM_IMAGE_SPAN`].
    ImageTooLarge {
        /// The span asked for, in bytes.
        span: u64,
    },
    /// A `PT_LOAD` asks to be writable and executable (W^X).
    WritableAndExecutableSegment {
        /// Index among the `PT_LOAD` segments.
        index: usize,
    },
    /// `PT_GNU_STACK` asks for an executable stack, which Keel never gives.
    ExecutableStackRequested,
    /// `PT_GNU_RELRO` is not inside a writable segment.
    RelroOutsideWritableSegment,
    /// The linker's [`ThreadLocalStorage`] refused the object's `PT_TLS`, or a TLS
    /// relocation needs what it does not give (static TLS for `TPOFF64`, a TLS symbol of
    /// the exports, `TLSDESC`).
    ThreadLocalStorageUnsupported,
    /// `PT_TLS` is inconsistent (`p_memsz < p_filesz`, huge, bad alignment, or its
    /// initialized part outside every `PT_LOAD`).
    MalformedThreadLocalSegment,
    /// The object needs text relocations (`DT_TEXTREL`): they would break W^X.
    TextRelocationsUnsupported,
    /// `DT_REL` (relocations without addend) is not used on x86-64 and not supported.
    RelTableUnsupported,
    /// A required dynamic entry is missing.
    MissingDynamicEntry(Table),
    /// A table lies (partly) outside the file image of the segments.
    TableOutsideFile(Table),
    /// A table's entry size or total size is wrong.
    BadTableEntrySize(Table),
    /// A string offset past the string table, or a string without NUL or not UTF-8.
    BadStringOffset {
        /// The offset.
        offset: u64,
    },
    /// A relocation refers to a symbol past the dynamic symbol table.
    SymbolIndexOutOfRange {
        /// The index.
        index: u64,
    },
    /// Neither `DT_GNU_HASH` nor `DT_HASH`.
    NoHashTable,
    /// A hash table is inconsistent.
    MalformedHashTable,
    /// A version table is inconsistent.
    MalformedVersionTable,
    /// `DT_RELR` is inconsistent.
    MalformedPackedRelocations,
    /// A relocation type the linker does not know.
    UnsupportedRelocation {
        /// `r_type`.
        relocation_type: u32,
        /// `r_offset`.
        offset: u64,
    },
    /// A relocation would write outside every writable segment.
    RelocationOutsideWritableSegment {
        /// `r_offset`.
        offset: u64,
    },
    /// A read outside every segment.
    AddressOutsideSegments {
        /// The offset from the base.
        offset: u64,
    },
    /// A `PC32` value does not fit 32 bits.
    RelocationOverflow {
        /// `r_offset`.
        offset: u64,
    },
    /// A `COPY` relocation's symbol resolved to an ifunc or to nothing.
    CopyFromFunction {
        /// `r_offset`.
        offset: u64,
    },
    /// A `COPY` source lies outside its object's segments.
    CopySourceOutsideSegments {
        /// `r_offset`.
        offset: u64,
    },
    /// An `IRELATIVE` resolver outside the object's code.
    ResolverOutsideCode {
        /// `r_offset`.
        offset: u64,
    },
    /// An init/fini array or function outside the object's segments or code.
    BadFunctionArray,
    /// Linking needs to run an ifunc resolver, and [`LinkerOptions::run_code`] is off.
    CodeExecutionRefused,
    /// The memory implementation failed.
    Memory(MemoryError),
}

/// One unresolved reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSymbol {
    /// The symbol's name.
    pub name: String,
    /// The version the reference asks for, if any.
    pub version: Option<String>,
    /// The object with the reference.
    pub needed_by: String,
}

/// Why a load failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Something is wrong with the object `name`.
    Object {
        /// The name it was loaded by.
        name: String,
        /// What.
        error: ObjectError,
    },
    /// The memory implementation refused while loading `name`.
    Memory {
        /// The name it was loaded by.
        name: String,
        /// What.
        error: MemoryError,
    },
    /// No file for `name` in any candidate path.
    LibraryNotFound {
        /// The `DT_NEEDED` name (or the path asked for).
        name: String,
        /// The object that needs it (empty for the object asked for).
        needed_by: String,
    },
    /// Every reference that nothing defines (weak references excepted).
    MissingSymbols(Vec<MissingSymbol>),
}
