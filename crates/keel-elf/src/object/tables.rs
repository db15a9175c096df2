//! The owned, checked tables that parsing produces: [`ObjectFile`] and its parts.

use alloc::string::String;
use alloc::vec::Vec;

use crate::hash::SymbolHashTable;
use crate::memory::Protection;
use crate::relocation::Relocation;
use crate::version::VersionTables;

/// One `PT_LOAD` segment, checked: its file bytes lie inside the file, its memory size
/// covers them, its addresses do not wrap, and it does not ask for W+X.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// `p_vaddr`, relative to the object's link-time base.
    pub virtual_address: u64,
    /// `p_memsz`.
    pub memory_size: u64,
    /// `p_offset`.
    pub file_offset: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// The protection after loading (from `p_flags`).
    pub protection: Protection,
}

impl LoadSegment {
    /// Whether `[address, address + length)` lies inside the segment's memory image.
    pub fn contains(&self, address: u64, length: u64) -> bool {
        address >= self.virtual_address
            && address
                .checked_add(length)
                .is_some_and(|end| end <= self.virtual_address + self.memory_size)
    }
}

/// An object's `PT_TLS`: the template of its per-thread block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadLocalSegment {
    /// `p_vaddr` of the initialized part (`.tdata`), relative to the link-time base.
    pub virtual_address: u64,
    /// `p_filesz`: bytes of `.tdata`.
    pub file_size: u64,
    /// `p_memsz`: the block's size (`.tdata` and `.tbss`).
    pub memory_size: u64,
    /// `p_align` (at least 1).
    pub alignment: u64,
}

/// What `PT_GNU_STACK` says about the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackRequirement {
    /// `PT_GNU_STACK` without `PF_X`: the stack need not be executable.
    NotExecutable,
    /// No `PT_GNU_STACK`: by the old convention, the object may want an executable
    /// stack. Keel never gives one; this is reported, not refused.
    Unspecified,
}

/// What kind of object this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// An `ET_DYN` shared object.
    SharedObject,
    /// An `ET_DYN` position-independent executable (`DF_1_PIE` or `PT_INTERP`).
    PositionIndependentExecutable,
}

/// What a symbol is (`STT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolKind {
    /// `STT_NOTYPE`.
    NoType,
    /// `STT_OBJECT`: data.
    Data,
    /// `STT_FUNC`.
    Function,
    /// `STT_GNU_IFUNC`: its value is a resolver that returns the function's address.
    IndirectFunction,
    /// `STT_TLS`.
    ThreadLocal,
    /// Sections, files, and anything else: never matched by name.
    Other,
}

/// A symbol's binding (`STB_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolBinding {
    /// `STB_LOCAL`.
    Local,
    /// `STB_GLOBAL` (and `STB_GNU_UNIQUE`, treated as global).
    Global,
    /// `STB_WEAK`.
    Weak,
}

/// One dynamic symbol, decoded with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The name (from `DT_STRTAB`).
    pub name: String,
    /// `st_value`, relative to the load base for defined symbols.
    pub value: u64,
    /// `st_size`.
    pub size: u64,
    /// `STT_*`.
    pub kind: SymbolKind,
    /// `STB_*`.
    pub binding: SymbolBinding,
    /// Whether the symbol is defined here (`st_shndx != SHN_UNDEF`).
    pub defined: bool,
    /// Whether `st_shndx` is `SHN_ABS` (the value is not relative to the base).
    pub absolute: bool,
}

/// A function array (`DT_INIT_ARRAY` and friends): where it is and how many entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FunctionArray {
    /// Address relative to the load base.
    pub address: u64,
    /// Number of 8-byte entries.
    pub count: usize,
}

/// A parsed, validated object: everything the linker needs, owned.
#[derive(Debug, Clone)]
pub struct ObjectFile {
    /// Shared object or PIE.
    pub kind: ObjectKind,
    /// The `PT_LOAD` segments, ascending, non-overlapping at page granularity.
    pub segments: Vec<LoadSegment>,
    /// The lowest page of the image (link-time address).
    pub image_start: u64,
    /// Bytes from `image_start` to the end of the last segment's last page.
    pub image_span: u64,
    /// The largest `p_align` (at least [`PAGE_SIZE`](crate::memory::PAGE_SIZE)).
    pub alignment: u64,
    /// `PT_GNU_RELRO`: `(address, length)`, page-rounded inward as the kernel does.
    pub relro: Option<(u64, u64)>,
    /// `PT_GNU_STACK`.
    pub stack: StackRequirement,
    /// `e_entry` (relative), zero if none.
    pub entry: u64,
    /// Where the program header table is in the loaded image (relative), if a
    /// `PT_LOAD` maps it (`PT_PHDR`, or the segment whose file bytes hold `e_phoff`):
    /// what `dl_iterate_phdr` reports as `dlpi_phdr`.
    pub program_headers: Option<u64>,
    /// `e_phnum`.
    pub program_header_count: u16,
    /// `PT_GNU_EH_FRAME` (relative): `.eh_frame_hdr`, which unwinders look up.
    pub eh_frame_header: Option<u64>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` directories (colon-separated in the file).
    pub runpath: Vec<String>,
    /// `DT_RPATH` directories (used only when there is no `DT_RUNPATH`).
    pub rpath: Vec<String>,
    /// The dynamic symbols (index 0 is the null symbol).
    pub symbols: Vec<Symbol>,
    /// GNU or SysV hash.
    pub hash_table: SymbolHashTable,
    /// Symbol versions.
    pub versions: VersionTables,
    /// `DT_RELA` then `DT_JMPREL` entries, in file order.
    pub relocations: Vec<Relocation>,
    /// `DT_RELR` offsets to which the base is added.
    pub packed_relative: Vec<u64>,
    /// `DT_INIT` (relative), if any.
    pub init: Option<u64>,
    /// `DT_FINI` (relative), if any.
    pub fini: Option<u64>,
    /// `DT_PREINIT_ARRAY`.
    pub preinit_array: FunctionArray,
    /// `DT_INIT_ARRAY`.
    pub init_array: FunctionArray,
    /// `DT_FINI_ARRAY`.
    pub fini_array: FunctionArray,
    /// `PT_TLS`, checked: its initialized part lies in a `PT_LOAD`.
    pub thread_local: Option<ThreadLocalSegment>,
}
