//! Applying relocations: every write through the object's bounds-checked [`Image`],
//! ifunc resolvers run (the linker's unsafe relocation code).

use alloc::vec::Vec;

use keel_types::VirtAddr;

use super::{Definer, LibrarySource, Linker, Resolution, SymbolResolutions};
use crate::image::run_resolver;
use crate::memory::{Memory, PageRange, Protection};
use crate::relocation::RelocationKind;
use crate::symbols::SymbolProvider;
use crate::tls::ThreadLocalStorage;
use crate::{LinkError, ObjectError};

impl<M: Memory, E: SymbolProvider, L: LibrarySource, T: ThreadLocalStorage> Linker<M, E, L, T> {
    /// Relocates the objects from `first_new` on with their `resolutions`,
    /// dependencies first (so that `COPY` sources are relocated), then seals their
    /// RELRO.
    ///
    /// # Safety
    /// As for [`Linker::load`]: ifunc resolvers of the objects run.
    pub(super) unsafe fn relocate_new(
        &mut self,
        first_new: usize,
        resolutions: &[SymbolResolutions],
    ) -> Result<(), LinkError> {
        for index in (first_new..self.objects.len()).rev() {
            let table = &resolutions[index - first_new];
            // SAFETY: forwarded from the caller.
            unsafe { self.relocate(index, table) }.map_err(|error| LinkError::Object {
                name: self.objects[index].name.clone(),
                error,
            })?;
        }
        for index in first_new..self.objects.len() {
            let object = &self.objects[index];
            if let Some((start, length)) = object.file.relro {
                let range = PageRange {
                    start: VirtAddr::new(object.base.wrapping_add(start)),
                    length: length as usize,
                };
                self.memory
                    .protect(range, Protection::Read)
                    .map_err(|error| LinkError::Memory {
                        name: object.name.clone(),
                        error,
                    })?;
            }
        }
        Ok(())
    }

    /// Applies object `index`'s relocations: `DT_RELR`, then `RELA`/`JMPREL` in file
    /// order, then `IRELATIVE` (running its resolvers).
    ///
    /// # Safety
    /// As for [`Linker::load`]: ifunc resolvers of the objects run.
    unsafe fn relocate(
        &self,
        index: usize,
        resolutions: &SymbolResolutions,
    ) -> Result<(), ObjectError> {
        let table = &resolutions.ordinary;
        let object = &self.objects[index];
        let image = object.image();
        let base = object.base;
        for &offset in &object.file.packed_relative {
            let value = image.read_u64(offset)?;
            image.write_u64(offset, value.wrapping_add(base))?;
        }
        let symbol_value = |symbol_index: u32| -> Result<u64, ObjectError> {
            match table.get(symbol_index as usize).copied().flatten() {
                Some(Resolution::Address { address, .. }) => Ok(address),
                Some(Resolution::IndirectFunction { .. }) if !self.options.run_code => {
                    Err(ObjectError::CodeExecutionRefused)
                }
                Some(Resolution::IndirectFunction { resolver }) => {
                    // SAFETY: the resolver is the value of an STT_GNU_IFUNC definition in
                    // a loaded, mapped object; `load`'s caller trusts the objects' code.
                    Ok(unsafe { run_resolver(resolver) })
                }
                None if symbol_index == 0 => Ok(0),
                None => Err(ObjectError::SymbolIndexOutOfRange {
                    index: u64::from(symbol_index),
                }),
            }
        };
        let mut indirect = Vec::new();
        for relocation in &object.file.relocations {
            let offset = relocation.offset;
            let addend = relocation.addend as u64;
            match relocation.kind {
                RelocationKind::None => {}
                RelocationKind::Relative => image.write_u64(offset, base.wrapping_add(addend))?,
                RelocationKind::Absolute64
                | RelocationKind::GlobalData
                | RelocationKind::JumpSlot => {
                    let value = symbol_value(relocation.symbol_index)?;
                    image.write_u64(offset, value.wrapping_add(addend))?;
                }
                RelocationKind::Pc32 => {
                    let value = symbol_value(relocation.symbol_index)?;
                    let place = base.wrapping_add(offset);
                    let relative = value.wrapping_add(addend).wrapping_sub(place) as i64;
                    let narrow = i32::try_from(relative)
                        .map_err(|_| ObjectError::RelocationOverflow { offset })?;
                    image.write_u32(offset, narrow as u32)?;
                }
                RelocationKind::Copy => {
                    let symbol = object
                        .file
                        .symbols
                        .get(relocation.symbol_index as usize)
                        .ok_or(ObjectError::SymbolIndexOutOfRange {
                            index: u64::from(relocation.symbol_index),
                        })?;
                    let Some(Resolution::Address {
                        address,
                        size,
                        definer,
                    }) = resolutions
                        .copy_sources
                        .get(relocation.symbol_index as usize)
                        .copied()
                        .flatten()
                    else {
                        return Err(ObjectError::CopyFromFunction { offset });
                    };
                    let length = size.map_or(symbol.size, |size| size.min(symbol.size));
                    match definer {
                        Definer::Nothing => return Err(ObjectError::CopyFromFunction { offset }),
                        Definer::Object(source) => {
                            // The source must lie in its definer's readable segments, and
                            // that definer is never the requester (so they do not overlap).
                            let readable = source != index
                                && self.objects[source]
                                    .image()
                                    .contains_absolute(address, length);
                            if !readable {
                                return Err(ObjectError::CopySourceOutsideSegments { offset });
                            }
                        }
                        Definer::Exports => {}
                    }
                    // SAFETY: a loaded object's source was checked just above to be
                    // readable and in another object; an exported source is readable for
                    // `length` (at most its reported size) by `SymbolProvider`'s contract.
                    unsafe { image.copy_in(offset, address, length) }?;
                }
                RelocationKind::IndirectRelative => indirect.push(*relocation),
                RelocationKind::TlsModuleId64 => {
                    let (module, _) =
                        self.thread_local_definition(index, relocation.symbol_index, table)?;
                    image.write_u64(offset, module.get())?;
                }
                RelocationKind::TlsBlockOffset64 => {
                    let (_, block_offset) =
                        self.thread_local_definition(index, relocation.symbol_index, table)?;
                    image.write_u64(offset, block_offset.wrapping_add(addend))?;
                }
                RelocationKind::TlsThreadPointerOffset64 => {
                    let (module, block_offset) =
                        self.thread_local_definition(index, relocation.symbol_index, table)?;
                    let static_offset = self
                        .thread_local_storage
                        .static_offset(module)
                        .ok_or(ObjectError::ThreadLocalStorageUnsupported)?;
                    image.write_u64(
                        offset,
                        (static_offset as u64)
                            .wrapping_add(block_offset)
                            .wrapping_add(addend),
                    )?;
                }
            }
        }
        // IRELATIVE last: a resolver may read data the other relocations set up.
        for relocation in indirect {
            let resolver = base.wrapping_add(relocation.addend as u64);
            if !image.is_code(resolver) {
                return Err(ObjectError::ResolverOutsideCode {
                    offset: relocation.offset,
                });
            }
            if !self.options.run_code {
                return Err(ObjectError::CodeExecutionRefused);
            }
            // SAFETY: the resolver lies in this object's executable segment (checked
            // just above), its other relocations are applied; `load`'s caller trusts it.
            let value = unsafe { run_resolver(resolver) };
            image.write_u64(relocation.offset, value)?;
        }
        Ok(())
    }
}
