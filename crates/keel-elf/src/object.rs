//! Parsing and validating one ELF object from its file bytes into owned, checked
//! tables ([`ObjectFile`]): goblin decodes the ELF header, the program headers, the
//! dynamic array, the symbols and the `RELA` tables; this module checks every extent
//! against the file and the segments, and decodes what goblin does not (the hash
//! tables, the `DT_VER*` tables read through the dynamic array rather than section
//! headers, `DT_RELR`, the init and fini arrays). Nothing here maps memory.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::dynamic::{self, Dyn};
use goblin::elf::header;
use goblin::elf::program_header::{self, ProgramHeader};
use goblin::elf::reloc::RelocSection;
use goblin::elf::sym::{self, Symtab};

use crate::hash::{GnuHashTable, SymbolHashTable, SysvHashTable};
use crate::memory::{PAGE_SIZE, Protection, align_down, align_up};
use crate::reader::Reader;
use crate::relocation::{Relocation, RelocationKind, decode_relr};
use crate::version::parse_version_tables;
use crate::{ObjectError, ParseStage, Table};

/// `DT_RELRSZ`, `DT_RELR`, `DT_RELRENT` (not in goblin 0.10).
const DT_RELRSZ: u64 = 35;
const DT_RELR: u64 = 36;
const DT_RELRENT: u64 = 37;
/// `DF_1_PIE`: the object is a position-independent executable.
const DF_1_PIE: u64 = 0x0800_0000;
/// `sizeof(Elf64_Sym)`.
const SYMBOL_ENTRY_SIZE: usize = 24;
/// Objects whose segments span more than this are refused (the largest Debian library
/// spans a few hundred MiB at most).
pub const MAXIMUM_IMAGE_SPAN: u64 = 1 << 32;
/// Alignments above this are refused (2 MiB is the largest in practice).
const MAXIMUM_SEGMENT_ALIGNMENT: u64 = 1 << 30;
/// Thread-local blocks larger than this are refused as malformed.
const MAXIMUM_TLS_BLOCK: u64 = 1 << 30;

// The parsed object's tables (`LoadSegment`, `Symbol`, `ObjectFile`, ...).
mod tables;
pub use tables::*;

/// Translates link-time addresses to file bytes through the `PT_LOAD` segments.
pub(crate) struct FileImage<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) segments: &'a [LoadSegment],
}

impl<'a> FileImage<'a> {
    /// The file bytes from `address` to the end of its segment's file image.
    pub(crate) fn bytes_from(&self, address: u64, table: Table) -> Result<&'a [u8], ObjectError> {
        for segment in self.segments {
            if address >= segment.virtual_address
                && address < segment.virtual_address + segment.file_size
            {
                let start = segment.file_offset + (address - segment.virtual_address);
                let end = segment.file_offset + segment.file_size;
                return self
                    .bytes
                    .get(start as usize..end as usize)
                    .ok_or(ObjectError::TableOutsideFile(table));
            }
        }
        Err(ObjectError::TableOutsideFile(table))
    }

    /// Exactly `length` file bytes at `address`.
    pub(crate) fn bytes_at(
        &self,
        address: u64,
        length: u64,
        table: Table,
    ) -> Result<&'a [u8], ObjectError> {
        if length == 0 {
            return Ok(&[]);
        }
        let rest = self.bytes_from(address, table)?;
        rest.get(..usize::try_from(length).map_err(|_| ObjectError::TableOutsideFile(table))?)
            .ok_or(ObjectError::TableOutsideFile(table))
    }
}

fn protection_of(flags: u32, index: usize) -> Result<Protection, ObjectError> {
    let writable = flags & program_header::PF_W != 0;
    let executable = flags & program_header::PF_X != 0;
    let readable = flags & program_header::PF_R != 0;
    Ok(match (readable, writable, executable) {
        (_, true, true) => return Err(ObjectError::WritableAndExecutableSegment { index }),
        (_, true, false) => Protection::ReadWrite,
        (_, false, true) => Protection::ReadExecute,
        (true, false, false) => Protection::Read,
        (false, false, false) => Protection::Inaccessible,
    })
}

fn split_paths(paths: &str) -> Vec<String> {
    paths
        .split(':')
        .filter(|path| !path.is_empty())
        .map(ToString::to_string)
        .collect()
}

/// The dynamic-array entries the linker reads, by tag.
#[derive(Default)]
struct DynamicEntries {
    needed: Vec<u64>,
    string_table: Option<u64>,
    string_table_size: Option<u64>,
    symbol_table: Option<u64>,
    symbol_entry_size: Option<u64>,
    gnu_hash: Option<u64>,
    sysv_hash: Option<u64>,
    rela: Option<u64>,
    rela_size: u64,
    rela_entry_size: Option<u64>,
    jmprel: Option<u64>,
    plt_relocation_size: u64,
    plt_relocation_kind: Option<u64>,
    relr: Option<u64>,
    relr_size: u64,
    relr_entry_size: Option<u64>,
    init: Option<u64>,
    fini: Option<u64>,
    init_array: Option<u64>,
    init_array_size: u64,
    fini_array: Option<u64>,
    fini_array_size: u64,
    preinit_array: Option<u64>,
    preinit_array_size: u64,
    versym: Option<u64>,
    verdef: Option<u64>,
    verdef_count: u64,
    verneed: Option<u64>,
    verneed_count: u64,
    soname: Option<u64>,
    runpath: Option<u64>,
    rpath: Option<u64>,
    flags: u64,
    flags_1: u64,
    has_rel: bool,
    text_relocations: bool,
}

impl DynamicEntries {
    fn collect(entries: &[Dyn]) -> Self {
        let mut table = DynamicEntries::default();
        for entry in entries {
            let value = entry.d_val;
            match entry.d_tag {
                dynamic::DT_NULL => break,
                dynamic::DT_NEEDED => table.needed.push(value),
                dynamic::DT_STRTAB => table.string_table = Some(value),
                dynamic::DT_STRSZ => table.string_table_size = Some(value),
                dynamic::DT_SYMTAB => table.symbol_table = Some(value),
                dynamic::DT_SYMENT => table.symbol_entry_size = Some(value),
                dynamic::DT_GNU_HASH => table.gnu_hash = Some(value),
                dynamic::DT_HASH => table.sysv_hash = Some(value),
                dynamic::DT_RELA => table.rela = Some(value),
                dynamic::DT_RELASZ => table.rela_size = value,
                dynamic::DT_RELAENT => table.rela_entry_size = Some(value),
                dynamic::DT_REL | dynamic::DT_RELSZ => table.has_rel = true,
                dynamic::DT_JMPREL => table.jmprel = Some(value),
                dynamic::DT_PLTRELSZ => table.plt_relocation_size = value,
                dynamic::DT_PLTREL => table.plt_relocation_kind = Some(value),
                DT_RELR => table.relr = Some(value),
                DT_RELRSZ => table.relr_size = value,
                DT_RELRENT => table.relr_entry_size = Some(value),
                dynamic::DT_INIT => table.init = Some(value),
                dynamic::DT_FINI => table.fini = Some(value),
                dynamic::DT_INIT_ARRAY => table.init_array = Some(value),
                dynamic::DT_INIT_ARRAYSZ => table.init_array_size = value,
                dynamic::DT_FINI_ARRAY => table.fini_array = Some(value),
                dynamic::DT_FINI_ARRAYSZ => table.fini_array_size = value,
                dynamic::DT_PREINIT_ARRAY => table.preinit_array = Some(value),
                dynamic::DT_PREINIT_ARRAYSZ => table.preinit_array_size = value,
                dynamic::DT_VERSYM => table.versym = Some(value),
                dynamic::DT_VERDEF => table.verdef = Some(value),
                dynamic::DT_VERDEFNUM => table.verdef_count = value,
                dynamic::DT_VERNEED => table.verneed = Some(value),
                dynamic::DT_VERNEEDNUM => table.verneed_count = value,
                dynamic::DT_SONAME => table.soname = Some(value),
                dynamic::DT_RUNPATH => table.runpath = Some(value),
                dynamic::DT_RPATH => table.rpath = Some(value),
                dynamic::DT_FLAGS => table.flags = value,
                dynamic::DT_FLAGS_1 => table.flags_1 = value,
                dynamic::DT_TEXTREL => table.text_relocations = true,
                _ => {}
            }
        }
        table
    }
}

fn function_array(
    address: Option<u64>,
    size: u64,
    segments: &[LoadSegment],
) -> Result<FunctionArray, ObjectError> {
    let Some(address) = address else {
        return Ok(FunctionArray::default());
    };
    if !size.is_multiple_of(8)
        || !segments
            .iter()
            .any(|segment| segment.contains(address, size))
    {
        return Err(ObjectError::BadFunctionArray);
    }
    Ok(FunctionArray {
        address,
        count: (size / 8) as usize,
    })
}

impl ObjectFile {
    /// Parses and validates `bytes` as an x86-64 `ET_DYN` object.
    pub fn parse(bytes: &[u8]) -> Result<Self, ObjectError> {
        let header = goblin::elf::Elf::parse_header(bytes)
            .map_err(|_| ObjectError::Unparsable(ParseStage::Header))?;
        if header.e_ident[header::EI_CLASS] != header::ELFCLASS64 {
            return Err(ObjectError::NotElf64);
        }
        if header.e_ident[header::EI_DATA] != header::ELFDATA2LSB {
            return Err(ObjectError::NotLittleEndian);
        }
        if header.e_machine != header::EM_X86_64 {
            return Err(ObjectError::WrongMachine {
                machine: header.e_machine,
            });
        }
        match header.e_type {
            header::ET_DYN => {}
            header::ET_EXEC => return Err(ObjectError::ExecutableNotPositionIndependent),
            other => return Err(ObjectError::UnsupportedObjectType { object_type: other }),
        }
        if usize::from(header.e_phentsize)
            != ProgramHeader::size(Ctx::new(Container::Big, Endian::Little))
        {
            return Err(ObjectError::Unparsable(ParseStage::ProgramHeaders));
        }
        let context = Ctx::new(Container::Big, Endian::Little);
        let program_headers = usize::try_from(header.e_phoff)
            .ok()
            .and_then(|offset| {
                ProgramHeader::parse(bytes, offset, usize::from(header.e_phnum), context).ok()
            })
            .ok_or(ObjectError::Unparsable(ParseStage::ProgramHeaders))?;

        let segments = Self::load_segments(bytes, &program_headers)?;
        let first = segments.first().ok_or(ObjectError::NoLoadSegments)?;
        let last = segments.last().ok_or(ObjectError::NoLoadSegments)?;
        let image_start = align_down(first.virtual_address, PAGE_SIZE as u64);
        let image_end = align_up(last.virtual_address + last.memory_size, PAGE_SIZE as u64).ok_or(
            ObjectError::SegmentAddressOverflow {
                index: segments.len() - 1,
            },
        )?;
        let image_span = image_end - image_start;
        if image_span > MAXIMUM_IMAGE_SPAN {
            return Err(ObjectError::ImageTooLarge { span: image_span });
        }
        let alignment = program_headers
            .iter()
            .filter(|header| header.p_type == program_header::PT_LOAD)
            .map(|header| header.p_align)
            .fold(PAGE_SIZE as u64, u64::max);

        let mut relro = None;
        let mut stack = StackRequirement::Unspecified;
        let mut thread_local = None;
        let mut has_interpreter = false;
        let mut eh_frame_header = None;
        let mut program_header_address = None;
        for program in &program_headers {
            match program.p_type {
                program_header::PT_GNU_RELRO => {
                    let start = program.p_vaddr;
                    let end = start
                        .checked_add(program.p_memsz)
                        .ok_or(ObjectError::RelroOutsideWritableSegment)?;
                    if !segments.iter().any(|segment| {
                        segment.protection == Protection::ReadWrite
                            && segment.contains(start, program.p_memsz)
                    }) {
                        return Err(ObjectError::RelroOutsideWritableSegment);
                    }
                    // Like Linux's loader, protect only the whole pages the range covers
                    // from its start page (the range ends at a page boundary in practice).
                    let page_start = align_down(start, PAGE_SIZE as u64);
                    let page_end = align_down(end, PAGE_SIZE as u64);
                    if page_end > page_start {
                        relro = Some((page_start, page_end - page_start));
                    }
                }
                program_header::PT_GNU_STACK => {
                    if program.p_flags & program_header::PF_X != 0 {
                        return Err(ObjectError::ExecutableStackRequested);
                    }
                    stack = StackRequirement::NotExecutable;
                }
                program_header::PT_TLS => {
                    let alignment = program.p_align.max(1);
                    if program.p_memsz < program.p_filesz
                        || program.p_memsz > MAXIMUM_TLS_BLOCK
                        || !alignment.is_power_of_two()
                        || alignment > MAXIMUM_SEGMENT_ALIGNMENT
                        || !segments
                            .iter()
                            .any(|segment| segment.contains(program.p_vaddr, program.p_filesz))
                    {
                        return Err(ObjectError::MalformedThreadLocalSegment);
                    }
                    thread_local = Some(ThreadLocalSegment {
                        virtual_address: program.p_vaddr,
                        file_size: program.p_filesz,
                        memory_size: program.p_memsz,
                        alignment,
                    });
                }
                program_header::PT_INTERP => has_interpreter = true,
                program_header::PT_GNU_EH_FRAME
                    if segments
                        .iter()
                        .any(|segment| segment.contains(program.p_vaddr, program.p_memsz)) =>
                {
                    eh_frame_header = Some(program.p_vaddr);
                }
                program_header::PT_PHDR
                    if segments
                        .iter()
                        .any(|segment| segment.contains(program.p_vaddr, program.p_memsz)) =>
                {
                    program_header_address = Some(program.p_vaddr);
                }
                _ => {}
            }
        }

        let dynamic = goblin::elf::dynamic::Dynamic::parse(bytes, &program_headers, context)
            .map_err(|_| ObjectError::Unparsable(ParseStage::Dynamic))?
            .ok_or(ObjectError::NoDynamicSection)?;
        let entries = DynamicEntries::collect(&dynamic.dyns);
        if entries.text_relocations || entries.flags & dynamic::DF_TEXTREL != 0 {
            return Err(ObjectError::TextRelocationsUnsupported);
        }
        if entries.has_rel {
            return Err(ObjectError::RelTableUnsupported);
        }
        let kind = if entries.flags_1 & DF_1_PIE != 0 || has_interpreter {
            ObjectKind::PositionIndependentExecutable
        } else {
            ObjectKind::SharedObject
        };

        let file = FileImage {
            bytes,
            segments: &segments,
        };
        let string_table = file.bytes_at(
            entries
                .string_table
                .ok_or(ObjectError::MissingDynamicEntry(Table::Strings))?,
            entries
                .string_table_size
                .ok_or(ObjectError::MissingDynamicEntry(Table::Strings))?,
            Table::Strings,
        )?;
        let strings = Reader::new(string_table);
        let string_at = |offset: u64| -> Result<String, ObjectError> {
            usize::try_from(offset)
                .ok()
                .and_then(|offset| strings.string(offset))
                .map(ToString::to_string)
                .ok_or(ObjectError::BadStringOffset { offset })
        };

        let hash_table = if let Some(address) = entries.gnu_hash {
            SymbolHashTable::Gnu(GnuHashTable::parse(
                file.bytes_from(address, Table::GnuHash)?,
            )?)
        } else if let Some(address) = entries.sysv_hash {
            SymbolHashTable::Sysv(SysvHashTable::parse(
                file.bytes_from(address, Table::SysvHash)?,
            )?)
        } else {
            return Err(ObjectError::NoHashTable);
        };

        // Symbols: as many as the hash table covers, but at least one (the null symbol).
        let symbol_count = hash_table.symbol_count().max(1);
        if entries
            .symbol_entry_size
            .is_some_and(|size| size != SYMBOL_ENTRY_SIZE as u64)
        {
            return Err(ObjectError::BadTableEntrySize(Table::Symbols));
        }
        let symbol_bytes = file.bytes_at(
            entries
                .symbol_table
                .ok_or(ObjectError::MissingDynamicEntry(Table::Symbols))?,
            (symbol_count * SYMBOL_ENTRY_SIZE) as u64,
            Table::Symbols,
        )?;
        let symtab = Symtab::parse(symbol_bytes, 0, symbol_count, context)
            .map_err(|_| ObjectError::Unparsable(ParseStage::Symbols))?;
        let mut symbols = Vec::with_capacity(symbol_count);
        for (index, raw) in symtab.iter().enumerate() {
            let name = if index == 0 {
                String::new()
            } else {
                string_at(raw.st_name as u64)?
            };
            let kind = match raw.st_type() {
                sym::STT_NOTYPE => SymbolKind::NoType,
                sym::STT_OBJECT => SymbolKind::Data,
                sym::STT_FUNC => SymbolKind::Function,
                sym::STT_GNU_IFUNC => SymbolKind::IndirectFunction,
                sym::STT_TLS => SymbolKind::ThreadLocal,
                _ => SymbolKind::Other,
            };
            let binding = match raw.st_bind() {
                sym::STB_LOCAL => SymbolBinding::Local,
                sym::STB_WEAK => SymbolBinding::Weak,
                _ => SymbolBinding::Global,
            };
            let defined = raw.st_shndx != 0;
            let absolute = raw.st_shndx == 0xfff1;
            symbols.push(Symbol {
                name,
                value: raw.st_value,
                size: raw.st_size,
                kind,
                binding,
                defined,
                absolute,
            });
        }
        if symbols.len() != symbol_count {
            return Err(ObjectError::Unparsable(ParseStage::Symbols));
        }

        let mut relocations = Vec::new();
        if entries.rela_entry_size.is_some_and(|size| size != 24) {
            return Err(ObjectError::BadTableEntrySize(Table::Relocations));
        }
        if let Some(address) = entries.rela {
            Self::relocations(
                &file,
                address,
                entries.rela_size,
                Table::Relocations,
                symbol_count,
                &mut relocations,
            )?;
        }
        if let Some(address) = entries.jmprel {
            if entries
                .plt_relocation_kind
                .is_some_and(|kind| kind != dynamic::DT_RELA)
            {
                return Err(ObjectError::RelTableUnsupported);
            }
            Self::relocations(
                &file,
                address,
                entries.plt_relocation_size,
                Table::PltRelocations,
                symbol_count,
                &mut relocations,
            )?;
        }
        let packed_relative = match entries.relr {
            Some(address) => {
                if entries.relr_entry_size.is_some_and(|size| size != 8) {
                    return Err(ObjectError::BadTableEntrySize(Table::PackedRelocations));
                }
                decode_relr(file.bytes_at(address, entries.relr_size, Table::PackedRelocations)?)?
            }
            None => Vec::new(),
        };

        let versions = parse_version_tables(
            &file,
            &strings,
            symbol_count,
            entries.versym,
            entries
                .verdef
                .map(|address| (address, entries.verdef_count)),
            entries
                .verneed
                .map(|address| (address, entries.verneed_count)),
        )?;

        let needed = entries
            .needed
            .iter()
            .map(|&offset| string_at(offset))
            .collect::<Result<Vec<_>, _>>()?;
        let soname = entries.soname.map(string_at).transpose()?;
        let runpath = entries
            .runpath
            .map(string_at)
            .transpose()?
            .map(|paths| split_paths(&paths))
            .unwrap_or_default();
        let rpath = entries
            .rpath
            .map(string_at)
            .transpose()?
            .map(|paths| split_paths(&paths))
            .unwrap_or_default();

        let check_function = |address: Option<u64>| -> Result<Option<u64>, ObjectError> {
            match address {
                Some(address)
                    if !segments.iter().any(|segment| {
                        segment.protection == Protection::ReadExecute
                            && segment.contains(address, 1)
                    }) =>
                {
                    Err(ObjectError::BadFunctionArray)
                }
                other => Ok(other),
            }
        };

        Ok(ObjectFile {
            kind,
            image_start,
            image_span,
            alignment,
            relro,
            stack,
            entry: header.e_entry,
            program_headers: program_header_address.or_else(|| {
                // No PT_PHDR (shared objects rarely have one): the segment whose file
                // bytes hold the table maps it.
                let table_size = u64::from(header.e_phnum) * u64::from(header.e_phentsize);
                segments.iter().find_map(|segment| {
                    let start = header.e_phoff.checked_sub(segment.file_offset)?;
                    (start.checked_add(table_size)? <= segment.file_size)
                        .then(|| segment.virtual_address + start)
                })
            }),
            program_header_count: header.e_phnum,
            eh_frame_header,
            soname,
            needed,
            runpath,
            rpath,
            symbols,
            hash_table,
            versions,
            relocations,
            packed_relative,
            init: check_function(entries.init)?,
            fini: check_function(entries.fini)?,
            preinit_array: function_array(
                entries.preinit_array,
                entries.preinit_array_size,
                &segments,
            )?,
            init_array: function_array(entries.init_array, entries.init_array_size, &segments)?,
            fini_array: function_array(entries.fini_array, entries.fini_array_size, &segments)?,
            thread_local,
            segments,
        })
    }

    fn load_segments(
        bytes: &[u8],
        program_headers: &[ProgramHeader],
    ) -> Result<Vec<LoadSegment>, ObjectError> {
        let mut segments: Vec<LoadSegment> = Vec::new();
        for (index, program) in program_headers
            .iter()
            .filter(|program| program.p_type == program_header::PT_LOAD)
            .enumerate()
        {
            if program.p_memsz < program.p_filesz {
                return Err(ObjectError::SegmentMemorySizeBelowFileSize { index });
            }
            if program.p_memsz > MAXIMUM_IMAGE_SPAN {
                return Err(ObjectError::ImageTooLarge {
                    span: program.p_memsz,
                });
            }
            let file_end = program
                .p_offset
                .checked_add(program.p_filesz)
                .ok_or(ObjectError::SegmentOutsideFile { index })?;
            if file_end > bytes.len() as u64 {
                return Err(ObjectError::SegmentOutsideFile { index });
            }
            program
                .p_vaddr
                .checked_add(program.p_memsz)
                .and_then(|end| align_up(end, PAGE_SIZE as u64))
                .ok_or(ObjectError::SegmentAddressOverflow { index })?;
            if program.p_align > MAXIMUM_SEGMENT_ALIGNMENT
                || (program.p_align != 0 && !program.p_align.is_power_of_two())
            {
                return Err(ObjectError::BadSegmentAlignment { index });
            }
            let protection = protection_of(program.p_flags, index)?;
            let segment = LoadSegment {
                virtual_address: program.p_vaddr,
                memory_size: program.p_memsz,
                file_offset: program.p_offset,
                file_size: program.p_filesz,
                protection,
            };
            if let Some(previous) = segments.last() {
                // Segments ascend and never share a page: each page has one protection.
                let previous_end = align_up(
                    previous.virtual_address + previous.memory_size,
                    PAGE_SIZE as u64,
                )
                .ok_or(ObjectError::SegmentAddressOverflow { index })?;
                if align_down(program.p_vaddr, PAGE_SIZE as u64) < previous_end {
                    return Err(ObjectError::SegmentsOverlap { index });
                }
            }
            segments.push(segment);
        }
        Ok(segments)
    }

    fn relocations(
        file: &FileImage<'_>,
        address: u64,
        size: u64,
        table: Table,
        symbol_count: usize,
        relocations: &mut Vec<Relocation>,
    ) -> Result<(), ObjectError> {
        if !size.is_multiple_of(24) {
            return Err(ObjectError::BadTableEntrySize(table));
        }
        let bytes = file.bytes_at(address, size, table)?;
        let section = RelocSection::parse(
            bytes,
            0,
            bytes.len(),
            true,
            Ctx::new(Container::Big, Endian::Little),
        )
        .map_err(|_| ObjectError::Unparsable(ParseStage::Relocations))?;
        for raw in section.iter() {
            let kind = RelocationKind::from_type(raw.r_type).ok_or(
                ObjectError::UnsupportedRelocation {
                    relocation_type: raw.r_type,
                    offset: raw.r_offset,
                },
            )?;
            if raw.r_sym >= symbol_count {
                return Err(ObjectError::SymbolIndexOutOfRange {
                    index: raw.r_sym as u64,
                });
            }
            relocations.push(Relocation {
                offset: raw.r_offset,
                kind,
                symbol_index: raw.r_sym as u32,
                addend: raw.r_addend.unwrap_or(0),
            });
        }
        Ok(())
    }
}
