//! Human-readable messages for the error enums (what the kernel prints on a failed
//! load): `Display` for [`LinkError`], [`ObjectError`] and [`MemoryError`].

use core::fmt;

use crate::{LinkError, MemoryError, ObjectError};

impl fmt::Display for MemoryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::OutOfAddressSpace { length } => {
                write!(formatter, "no free address range of {length} bytes")
            }
            MemoryError::OutOfMemory => write!(formatter, "out of memory"),
            MemoryError::InvalidRange => write!(
                formatter,
                "range not page aligned or outside the reservation"
            ),
            MemoryError::Failed { code } => {
                write!(formatter, "memory operation failed (code {code})")
            }
        }
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ObjectError as E;
        match self {
            E::Unparsable(stage) => write!(formatter, "cannot decode its {stage:?}"),
            E::NotElf64 => write!(formatter, "not a 64-bit ELF object"),
            E::NotLittleEndian => write!(formatter, "not little-endian"),
            E::WrongMachine { machine } => write!(formatter, "not x86-64 (e_machine {machine})"),
            E::ExecutableNotPositionIndependent => {
                write!(
                    formatter,
                    "an ET_EXEC executable cannot be loaded at another base: rebuild it as a PIE (-fPIE -pie)"
                )
            }
            E::UnsupportedObjectType { object_type } => {
                write!(
                    formatter,
                    "neither a shared object nor an executable (e_type {object_type})"
                )
            }
            E::NoLoadSegments => write!(formatter, "no PT_LOAD segment"),
            E::NoDynamicSection => write!(formatter, "no PT_DYNAMIC"),
            E::SegmentOutsideFile { index } => {
                write!(formatter, "PT_LOAD {index} lies outside the file")
            }
            E::SegmentMemorySizeBelowFileSize { index } => {
                write!(formatter, "PT_LOAD {index} has p_memsz < p_filesz")
            }
            E::SegmentAddressOverflow { index } => {
                write!(formatter, "PT_LOAD {index}'s addresses wrap")
            }
            E::SegmentsOverlap { index } => {
                write!(formatter, "PT_LOAD {index} overlaps the one before")
            }
            E::BadSegmentAlignment { index } => {
                write!(formatter, "PT_LOAD {index} has a bad p_align")
            }
            E::ImageTooLarge { span } => write!(formatter, "its segments span {span} bytes"),
            E::WritableAndExecutableSegment { index } => {
                write!(
                    formatter,
                    "PT_LOAD {index} is writable and executable (W^X)"
                )
            }
            E::ExecutableStackRequested => {
                write!(formatter, "it asks for an executable stack (PT_GNU_STACK)")
            }
            E::RelroOutsideWritableSegment => {
                write!(formatter, "PT_GNU_RELRO is outside every writable segment")
            }
            E::ThreadLocalStorageUnsupported => {
                write!(formatter, "its thread-local storage is not supported here")
            }
            E::MalformedThreadLocalSegment => write!(formatter, "PT_TLS is inconsistent"),
            E::TextRelocationsUnsupported => write!(formatter, "it needs text relocations (W^X)"),
            E::RelTableUnsupported => {
                write!(formatter, "DT_REL relocations are not supported on x86-64")
            }
            E::MissingDynamicEntry(table) => {
                write!(formatter, "no dynamic entry for its {table:?} table")
            }
            E::TableOutsideFile(table) => {
                write!(formatter, "its {table:?} table lies outside the file")
            }
            E::BadTableEntrySize(table) => {
                write!(formatter, "its {table:?} table has a bad entry size")
            }
            E::BadStringOffset { offset } => write!(formatter, "bad string offset {offset:#x}"),
            E::SymbolIndexOutOfRange { index } => {
                write!(formatter, "symbol index {index} is past the symbol table")
            }
            E::NoHashTable => write!(formatter, "neither DT_GNU_HASH nor DT_HASH"),
            E::MalformedHashTable => write!(formatter, "its hash table is inconsistent"),
            E::MalformedVersionTable => write!(formatter, "its version tables are inconsistent"),
            E::MalformedPackedRelocations => write!(formatter, "its DT_RELR table is inconsistent"),
            E::UnsupportedRelocation {
                relocation_type,
                offset,
            } => {
                write!(
                    formatter,
                    "relocation type {relocation_type} at {offset:#x} is not supported"
                )
            }
            E::RelocationOutsideWritableSegment { offset } => {
                write!(
                    formatter,
                    "a relocation at {offset:#x} is outside every writable segment"
                )
            }
            E::AddressOutsideSegments { offset } => {
                write!(formatter, "address {offset:#x} is outside its segments")
            }
            E::RelocationOverflow { offset } => {
                write!(formatter, "the relocation at {offset:#x} does not fit")
            }
            E::CopyFromFunction { offset } => {
                write!(
                    formatter,
                    "the COPY relocation at {offset:#x} has no data to copy"
                )
            }
            E::CopySourceOutsideSegments { offset } => {
                write!(
                    formatter,
                    "the COPY relocation at {offset:#x} reads outside its source"
                )
            }
            E::ResolverOutsideCode { offset } => {
                write!(
                    formatter,
                    "the IRELATIVE resolver for {offset:#x} is outside its code"
                )
            }
            E::BadFunctionArray => {
                write!(formatter, "an init or fini function is outside its code")
            }
            E::CodeExecutionRefused => {
                write!(formatter, "linking it would run its code, which is off")
            }
            E::Memory(error) => write!(formatter, "{error}"),
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Object { name, error } => write!(formatter, "{name}: {error}"),
            LinkError::Memory { name, error } => write!(formatter, "{name}: {error}"),
            LinkError::LibraryNotFound { name, needed_by } if needed_by.is_empty() => {
                write!(formatter, "{name}: not found")
            }
            LinkError::LibraryNotFound { name, needed_by } => {
                write!(formatter, "{name}, needed by {needed_by}: not found")
            }
            LinkError::MissingSymbols(missing) => {
                write!(formatter, "{} undefined symbols:", missing.len())?;
                for symbol in missing {
                    match &symbol.version {
                        Some(version) => write!(
                            formatter,
                            " {}@{} (needed by {});",
                            symbol.name, version, symbol.needed_by
                        )?,
                        None => write!(
                            formatter,
                            " {} (needed by {});",
                            symbol.name, symbol.needed_by
                        )?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;

    use crate::{LinkError, MissingSymbol, ObjectError};

    #[test]
    fn messages_name_the_object_and_every_missing_symbol() {
        let refused = LinkError::Object {
            name: "prog".to_string(),
            error: ObjectError::ExecutableNotPositionIndependent,
        };
        assert!(
            refused
                .to_string()
                .starts_with("prog: an ET_EXEC executable")
        );
        let missing = LinkError::MissingSymbols(vec![
            MissingSymbol {
                name: "memcpy".into(),
                version: Some("GLIBC_2.14".into()),
                needed_by: "libz.so.1".into(),
            },
            MissingSymbol {
                name: "f".into(),
                version: None,
                needed_by: "liba.so".into(),
            },
        ]);
        assert_eq!(
            missing.to_string(),
            "2 undefined symbols: memcpy@GLIBC_2.14 (needed by libz.so.1); f (needed by liba.so);"
        );
    }
}
