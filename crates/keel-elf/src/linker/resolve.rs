//! Symbol resolution: every reference of the newly loaded objects through the
//! provider chain (exports first, then the loaded objects in load order), with
//! versions, all missing references gathered into one error. Safe code.

use alloc::vec;
use alloc::vec::Vec;

use super::*;

impl<M: Memory, E: SymbolProvider, L: LibrarySource, T: ThreadLocalStorage> Linker<M, E, L, T> {
    /// Resolves every reference of the objects from `first_new` on, before anything
    /// is written: all the missing ones make one error.
    pub(super) fn resolve_new(
        &self,
        first_new: usize,
    ) -> Result<Vec<SymbolResolutions>, LinkError> {
        let mut missing: Vec<MissingSymbol> = Vec::new();
        let mut resolutions: Vec<SymbolResolutions> = Vec::new();
        for index in first_new..self.objects.len() {
            let object = &self.objects[index];
            let count = object.file.symbols.len();
            let mut table = SymbolResolutions {
                ordinary: vec![None; count],
                copy_sources: vec![None; count],
            };
            // Which symbols an ordinary relocation uses, and which a COPY does: a COPY
            // source is looked up past the requester (whose own definition is the
            // copy), while its other references bind to the copy.
            let mut ordinary_uses = vec![false; count];
            let mut copy_uses = vec![false; count];
            for relocation in &object.file.relocations {
                if relocation.kind.uses_symbol() && relocation.symbol_index != 0 {
                    let symbol_index = relocation.symbol_index as usize;
                    if relocation.kind == RelocationKind::Copy {
                        copy_uses[symbol_index] = true;
                    } else {
                        ordinary_uses[symbol_index] = true;
                    }
                }
            }
            for symbol_index in 0..count {
                for is_copy in [false, true] {
                    let used = if is_copy {
                        copy_uses[symbol_index]
                    } else {
                        ordinary_uses[symbol_index]
                    };
                    if !used {
                        continue;
                    }
                    let resolution = self.resolve_reference(index, symbol_index, is_copy);
                    if resolution.is_none() {
                        let symbol = &object.file.symbols[symbol_index];
                        let entry = MissingSymbol {
                            name: symbol.name.clone(),
                            version: object
                                .file
                                .versions
                                .required_version(symbol_index)
                                .map(|requirement| requirement.name.clone()),
                            needed_by: object.name.clone(),
                        };
                        if !missing.contains(&entry) {
                            missing.push(entry);
                        }
                    }
                    if is_copy {
                        table.copy_sources[symbol_index] = resolution;
                    } else {
                        table.ordinary[symbol_index] = resolution;
                    }
                }
            }
            resolutions.push(table);
        }
        if !missing.is_empty() {
            return Err(LinkError::MissingSymbols(missing));
        }
        Ok(resolutions)
    }

    /// Finds the definition a reference of object `requester` to its symbol
    /// `symbol_index` binds to: a local symbol is its own; otherwise the exports, then
    /// the loaded objects in load order (skipping the requester for `COPY`). An
    /// undefined weak reference that finds nothing is 0.
    pub(super) fn resolve_reference(
        &self,
        requester: usize,
        symbol_index: usize,
        is_copy: bool,
    ) -> Option<Resolution> {
        let object = &self.objects[requester];
        let symbol = object.file.symbols.get(symbol_index)?;
        if symbol.binding == SymbolBinding::Local {
            return Some(Resolution::Address {
                address: object.symbol_address(symbol_index),
                size: Some(symbol.size),
                definer: Definer::Object(requester),
            });
        }
        let version = if symbol.defined {
            object.file.versions.defined_version(symbol_index)
        } else {
            object
                .file
                .versions
                .required_version(symbol_index)
                .map(|requirement| requirement.name.as_str())
        };
        let request = SymbolRequest {
            name: &symbol.name,
            version,
            copy_source: is_copy,
        };
        if let Some(definition) = self.exports.resolve(&request) {
            return Some(Resolution::Address {
                address: definition.address.as_u64(),
                size: definition.size,
                definer: Definer::Exports,
            });
        }
        for (index, candidate) in self.objects.iter().enumerate() {
            if is_copy && index == requester {
                continue;
            }
            if let Some(found) = candidate.find_definition(&symbol.name, version) {
                let definition = &candidate.file.symbols[found];
                let address = candidate.symbol_address(found);
                return Some(if definition.kind == SymbolKind::IndirectFunction {
                    Resolution::IndirectFunction { resolver: address }
                } else {
                    Resolution::Address {
                        address,
                        size: Some(definition.size),
                        definer: Definer::Object(index),
                    }
                });
            }
        }
        (symbol.binding == SymbolBinding::Weak).then_some(Resolution::Address {
            address: 0,
            size: None,
            definer: Definer::Nothing,
        })
    }

    /// The TLS module and the offset inside its block of what a TLS relocation of
    /// object `requester` refers to: symbol 0 is the requester's own module at offset
    /// 0 (local-dynamic code adds the variable's offset itself); a symbol must resolve
    /// to a loaded object with `PT_TLS` (the exports' TLS is not reachable yet).
    pub(super) fn thread_local_definition(
        &self,
        requester: usize,
        symbol_index: u32,
        table: &[Option<Resolution>],
    ) -> Result<(TlsModuleId, u64), ObjectError> {
        let unsupported = ObjectError::ThreadLocalStorageUnsupported;
        if symbol_index == 0 {
            return Ok((self.objects[requester].tls_module.ok_or(unsupported)?, 0));
        }
        match table.get(symbol_index as usize).copied().flatten() {
            Some(Resolution::Address {
                address,
                definer: Definer::Object(definer),
                ..
            }) => {
                let object = &self.objects[definer];
                Ok((
                    object.tls_module.ok_or(unsupported)?,
                    address.wrapping_sub(object.base),
                ))
            }
            _ => Err(unsupported),
        }
    }
}
