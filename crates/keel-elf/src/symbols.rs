//! Symbols through a trait: [`SymbolProvider`] is one link of the linker's lookup
//! chain (the kernel's exports first, then the loaded objects in load order), and
//! [`ExportedSymbols`] is a table-backed provider for the exports.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use keel_types::VirtAddr;

/// What a reference asks for: a name and, for a versioned reference, the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolRequest<'a> {
    /// The symbol's name, e.g. `memcpy`.
    pub name: &'a str,
    /// The version, e.g. `GLIBC_2.14`; `None` for an unversioned reference.
    pub version: Option<&'a str>,
    /// The reference is an `R_X86_64_COPY`: the definition's size matters (the copy is
    /// bounded by it), so a provider that finds sizes slowly need find them only then.
    pub copy_source: bool,
}

/// Where a symbol is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolDefinition {
    /// Its address (for an ifunc: the chosen implementation, already resolved).
    pub address: VirtAddr,
    /// Its size in bytes, when known (a `COPY` relocation copies the requester's
    /// size; a known smaller source size bounds it). A provider may leave it `None`
    /// unless the request is a [`SymbolRequest::copy_source`].
    pub size: Option<u64>,
}

/// One link of the symbol lookup chain.
///
/// # Safety
/// The linker reads and jumps through what a provider returns. An implementation
/// guarantees that a returned address of a data symbol is readable for its size (at
/// least for the `size` it reports, or for the size the requesting object declares when
/// it reports none) for as long as the linked objects are in use, and that a returned
/// function address is the entry of code callable with the C ABI the requester expects.
pub unsafe trait SymbolProvider {
    /// The definition satisfying `request`, if this provider has one.
    fn resolve(&self, request: &SymbolRequest<'_>) -> Option<SymbolDefinition>;
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: SymbolProvider + ?Sized> SymbolProvider for &T {
    fn resolve(&self, request: &SymbolRequest<'_>) -> Option<SymbolDefinition> {
        (**self).resolve(request)
    }
}

/// A provider with no symbols (objects then resolve only against each other).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSymbols;

// SAFETY: it never returns an address.
unsafe impl SymbolProvider for NoSymbols {
    fn resolve(&self, _request: &SymbolRequest<'_>) -> Option<SymbolDefinition> {
        None
    }
}

/// Two providers as one: `first`, then `second` (e.g. the host's `__tls_get_addr`
/// before the host's glibc).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderChain<First, Second> {
    /// Asked first.
    pub first: First,
    /// Asked when `first` has nothing.
    pub second: Second,
}

// SAFETY: every answer comes from one of the two providers, which uphold the contract.
unsafe impl<First: SymbolProvider, Second: SymbolProvider> SymbolProvider
    for ProviderChain<First, Second>
{
    fn resolve(&self, request: &SymbolRequest<'_>) -> Option<SymbolDefinition> {
        self.first
            .resolve(request)
            .or_else(|| self.second.resolve(request))
    }
}

/// The kernel's exported symbols: a table from `(name, version)` to a definition.
///
/// An unversioned export satisfies every version of its name (as an object without
/// `DT_VERSYM` does); a versioned export satisfies only references to its version (an
/// unversioned reference finds only unversioned exports).
#[derive(Debug, Clone, Default)]
pub struct ExportedSymbols {
    /// By name: the unversioned definition, then the versioned ones. Looked up by
    /// `&str` without allocating.
    table: BTreeMap<String, ExportedName>,
    /// The number of `(name, version)` entries.
    count: usize,
}

/// The exports of one name.
#[derive(Debug, Clone, Default)]
struct ExportedName {
    unversioned: Option<SymbolDefinition>,
    versioned: Vec<(String, SymbolDefinition)>,
}

impl ExportedSymbols {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports `definition` as `name` (unversioned: it satisfies every version),
    /// replacing an earlier unversioned export of `name`.
    ///
    /// # Safety
    /// `definition` meets [`SymbolProvider`]'s contract.
    pub unsafe fn insert(&mut self, name: &str, definition: SymbolDefinition) {
        let entry = self.table.entry(name.to_string()).or_default();
        if entry.unversioned.replace(definition).is_none() {
            self.count += 1;
        }
    }

    /// Exports `definition` as `name@version` only, replacing an earlier export of
    /// that pair.
    ///
    /// # Safety
    /// `definition` meets [`SymbolProvider`]'s contract.
    pub unsafe fn insert_versioned(
        &mut self,
        name: &str,
        version: &str,
        definition: SymbolDefinition,
    ) {
        let entry = self.table.entry(name.to_string()).or_default();
        match entry
            .versioned
            .iter_mut()
            .find(|(existing, _)| existing == version)
        {
            Some((_, existing)) => *existing = definition,
            None => {
                entry.versioned.push((version.to_string(), definition));
                self.count += 1;
            }
        }
    }

    /// The number of exports (`(name, version)` pairs).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

// SAFETY: every definition was inserted through the unsafe `insert*`, whose callers
// promised the contract.
unsafe impl SymbolProvider for ExportedSymbols {
    fn resolve(&self, request: &SymbolRequest<'_>) -> Option<SymbolDefinition> {
        let entry = self.table.get(request.name)?;
        if let Some(version) = request.version
            && let Some((_, definition)) = entry.versioned.iter().find(|(name, _)| name == version)
        {
            return Some(*definition);
        }
        entry.unversioned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: u64) -> SymbolDefinition {
        SymbolDefinition {
            address: VirtAddr::new(address),
            size: None,
        }
    }

    fn request<'a>(name: &'a str, version: Option<&'a str>) -> SymbolRequest<'a> {
        SymbolRequest {
            name,
            version,
            copy_source: false,
        }
    }

    #[test]
    fn exported_symbols_match_names_and_versions() {
        let mut exports = ExportedSymbols::new();
        // SAFETY: the definitions are never used as addresses.
        unsafe {
            exports.insert("memcpy", at(0x1000));
            exports.insert_versioned("memcpy", "GLIBC_2.14", at(0x2000));
            exports.insert_versioned("memcpy", "GLIBC_2.14", at(0x3000));
            exports.insert_versioned("stat", "GLIBC_2.33", at(0x4000));
        }
        assert_eq!(exports.len(), 3);
        assert_eq!(
            exports.resolve(&request("memcpy", Some("GLIBC_2.14"))),
            Some(at(0x3000))
        );
        assert_eq!(
            exports.resolve(&request("memcpy", Some("GLIBC_2.2.5"))),
            Some(at(0x1000))
        );
        assert_eq!(exports.resolve(&request("memcpy", None)), Some(at(0x1000)));
        assert_eq!(exports.resolve(&request("stat", None)), None);
        assert_eq!(exports.resolve(&request("stat", Some("GLIBC_2.2.5"))), None);
        assert_eq!(
            exports.resolve(&request("stat", Some("GLIBC_2.33"))),
            Some(at(0x4000))
        );
        assert_eq!(exports.resolve(&request("open", None)), None);
    }
}
