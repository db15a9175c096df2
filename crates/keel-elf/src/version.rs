//! Symbol versions, read through the dynamic array (`DT_VERSYM`, `DT_VERDEF`,
//! `DT_VERNEED`), never through section headers (a loader must not need them), and the
//! matching rule between a versioned reference and a definition.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::object::FileImage;
use crate::reader::Reader;
use crate::{ObjectError, Table};

/// `VERSYM_HIDDEN`: the definition is not the default version of its name.
const HIDDEN: u16 = 0x8000;
/// `VER_FLG_BASE`: the version definition that names the object itself.
const BASE_FLAG: u16 = 1;
/// Version chains longer than this are refused as malformed.
const MAXIMUM_VERSIONS: u64 = 1 << 16;

/// A version this object defines (`Elf64_Verdef` with its first `Elf64_Verdaux`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDefinition {
    /// `vd_ndx`: the index `DT_VERSYM` entries use.
    pub index: u16,
    /// The version's name, e.g. `GLIBC_2.14` or `ZLIB_1.2.0`.
    pub name: String,
    /// The base definition (`VER_FLG_BASE`), which names the object, not a version.
    pub is_base: bool,
}

/// A version this object needs from another (`Elf64_Vernaux` under its
/// `Elf64_Verneed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRequirement {
    /// `vna_other`: the index `DT_VERSYM` entries use.
    pub index: u16,
    /// The version's name.
    pub name: String,
    /// The object that should define it (`vn_file`), e.g. `libc.so.6`.
    pub file: String,
}

/// An object's version tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionTables {
    /// One `DT_VERSYM` entry per dynamic symbol, empty if the object has none.
    pub symbol_versions: Vec<u16>,
    /// `DT_VERDEF`.
    pub definitions: Vec<VersionDefinition>,
    /// `DT_VERNEED`.
    pub requirements: Vec<VersionRequirement>,
}

impl VersionTables {
    /// The version an undefined reference to symbol `symbol_index` asks for, if any.
    pub fn required_version(&self, symbol_index: usize) -> Option<&VersionRequirement> {
        let index = *self.symbol_versions.get(symbol_index)? & !HIDDEN;
        if index < 2 {
            return None;
        }
        self.requirements
            .iter()
            .find(|requirement| requirement.index == index)
    }

    /// The version name a definition of symbol `symbol_index` carries, if any.
    pub fn defined_version(&self, symbol_index: usize) -> Option<&str> {
        let index = *self.symbol_versions.get(symbol_index)? & !HIDDEN;
        self.definitions
            .iter()
            .find(|definition| definition.index == index && !definition.is_base)
            .map(|definition| definition.name.as_str())
    }

    /// Whether this object's definition of symbol `symbol_index` satisfies a reference
    /// asking for `requested` (`None`: an unversioned reference, as from `dlsym`).
    ///
    /// The rule is glibc's: an object without `DT_VERSYM` satisfies any reference; a
    /// versioned reference needs a definition of the same version name, or an
    /// unversioned (base, index 1) one that is not hidden; an unversioned reference
    /// takes the default (not hidden) definition. Index 0 is local and never matches.
    pub fn definition_matches(&self, symbol_index: usize, requested: Option<&str>) -> bool {
        let Some(&entry) = self.symbol_versions.get(symbol_index) else {
            return self.symbol_versions.is_empty();
        };
        let index = entry & !HIDDEN;
        let hidden = entry & HIDDEN != 0;
        if index == 0 {
            return false;
        }
        match requested {
            None => !hidden,
            Some(version) => match self.defined_version(symbol_index) {
                Some(defined) => defined == version,
                None => !hidden,
            },
        }
    }
}

/// Reads the version tables named by the dynamic array.
pub(crate) fn parse_version_tables(
    file: &FileImage<'_>,
    strings: &Reader<'_>,
    symbol_count: usize,
    versym: Option<u64>,
    verdef: Option<(u64, u64)>,
    verneed: Option<(u64, u64)>,
) -> Result<VersionTables, ObjectError> {
    let malformed = ObjectError::MalformedVersionTable;
    let string_at = |offset: u32| {
        strings
            .string(offset as usize)
            .map(ToString::to_string)
            .ok_or(ObjectError::BadStringOffset {
                offset: u64::from(offset),
            })
    };
    let mut tables = VersionTables::default();
    if let Some(address) = versym {
        let bytes = file.bytes_at(address, symbol_count as u64 * 2, Table::SymbolVersions)?;
        let reader = Reader::new(bytes);
        tables.symbol_versions = (0..symbol_count)
            .map(|index| reader.u16(index * 2).ok_or(malformed))
            .collect::<Result<_, _>>()?;
    }
    if let Some((address, count)) = verdef {
        if count > MAXIMUM_VERSIONS {
            return Err(malformed);
        }
        let reader = Reader::new(file.bytes_from(address, Table::VersionDefinitions)?);
        let mut offset = 0usize;
        for _ in 0..count {
            let flags = reader.u16(offset + 2).ok_or(malformed)?;
            let index = reader.u16(offset + 4).ok_or(malformed)?;
            let auxiliary = reader.u32(offset + 12).ok_or(malformed)? as usize;
            let next = reader.u32(offset + 16).ok_or(malformed)? as usize;
            let name_offset = reader
                .u32(offset.checked_add(auxiliary).ok_or(malformed)?)
                .ok_or(malformed)?;
            tables.definitions.push(VersionDefinition {
                index: index & !HIDDEN,
                name: string_at(name_offset)?,
                is_base: flags & BASE_FLAG != 0,
            });
            if next == 0 {
                break;
            }
            offset = offset.checked_add(next).ok_or(malformed)?;
        }
    }
    if let Some((address, count)) = verneed {
        if count > MAXIMUM_VERSIONS {
            return Err(malformed);
        }
        let reader = Reader::new(file.bytes_from(address, Table::VersionRequirements)?);
        let mut offset = 0usize;
        for _ in 0..count {
            let auxiliary_count = reader.u16(offset + 2).ok_or(malformed)?;
            let file_name = string_at(reader.u32(offset + 4).ok_or(malformed)?)?;
            let mut auxiliary = offset
                .checked_add(reader.u32(offset + 8).ok_or(malformed)? as usize)
                .ok_or(malformed)?;
            let next = reader.u32(offset + 12).ok_or(malformed)? as usize;
            for _ in 0..auxiliary_count {
                let index = reader.u16(auxiliary + 6).ok_or(malformed)?;
                let name = string_at(reader.u32(auxiliary + 8).ok_or(malformed)?)?;
                let auxiliary_next = reader.u32(auxiliary + 12).ok_or(malformed)? as usize;
                tables.requirements.push(VersionRequirement {
                    index: index & !HIDDEN,
                    name,
                    file: file_name.clone(),
                });
                if auxiliary_next == 0 {
                    break;
                }
                auxiliary = auxiliary.checked_add(auxiliary_next).ok_or(malformed)?;
            }
            if next == 0 {
                break;
            }
            offset = offset.checked_add(next).ok_or(malformed)?;
        }
    }
    Ok(tables)
}
