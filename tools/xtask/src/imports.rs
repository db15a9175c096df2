//! `cargo xtask imports FILE...`: which of an ELF object's imports Keel's libc
//! provides and which it lacks.
//!
//! An import is an undefined dynamic symbol with its version from `DT_VERNEED`
//! (`memcpy@GLIBC_2.14`). Each is looked up in `keel_libc::exports()` exactly as the
//! kernel's ELF linker looks it up (keel-elf's `ExportedSymbols`), so "provided" here
//! means "resolves at load time". Weak imports (`__gmon_start__`, the `_ITM_` pair)
//! that Keel lacks are listed apart: the linker binds them to 0 and the object runs
//! without them. With `--strict`, a missing strong import makes the command fail.

use goblin::elf::Elf;
use goblin::elf::sym::STB_WEAK;
use keel_elf::{SymbolProvider, SymbolRequest};

/// One import and what Keel has for it.
struct Import {
    name: String,
    version: Option<String>,
    weak: bool,
    provided: bool,
}

/// The imports of the ELF file `bytes`.
fn imports(bytes: &[u8]) -> Result<Vec<Import>, String> {
    let elf = Elf::parse(bytes).map_err(|error| format!("not an ELF object: {error}"))?;
    let exports = keel_libc::exports_with_threads::<keel_hosted::StdParker>();
    // The version name of each version index, from the version needs.
    let mut version_names = std::collections::BTreeMap::new();
    if let Some(verneed) = &elf.verneed {
        for need in verneed.iter() {
            for aux in need.iter() {
                if let Some(name) = elf.dynstrtab.get_at(aux.vna_name) {
                    version_names.insert(aux.vna_other, name.to_string());
                }
            }
        }
    }
    let mut found = Vec::new();
    for (index, symbol) in elf.dynsyms.iter().enumerate() {
        if symbol.st_shndx != 0 || symbol.st_name == 0 {
            continue;
        }
        let Some(name) = elf.dynstrtab.get_at(symbol.st_name) else {
            continue;
        };
        let version = elf
            .versym
            .as_ref()
            .and_then(|versym| versym.get_at(index))
            .and_then(|entry| version_names.get(&(entry.vs_val & 0x7fff)))
            .cloned();
        let request = SymbolRequest {
            name,
            version: version.as_deref(),
            copy_source: false,
        };
        let provided = exports.resolve(&request).is_some();
        found.push(Import {
            name: name.to_string(),
            version,
            weak: symbol.st_bind() == STB_WEAK,
            provided,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Prints the report for each file; with `strict`, fails if one lacks a strong import.
pub fn run(files: &[std::path::PathBuf], strict: bool) -> Result<(), String> {
    let mut lacking = 0;
    for file in files {
        let bytes = std::fs::read(file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let imports = imports(&bytes).map_err(|error| format!("{}: {error}", file.display()))?;
        let label = |import: &Import| match &import.version {
            Some(version) => format!("{}@{version}", import.name),
            None => import.name.clone(),
        };
        let provided: Vec<_> = imports.iter().filter(|import| import.provided).collect();
        let missing: Vec<_> = imports
            .iter()
            .filter(|import| !import.provided && !import.weak)
            .collect();
        let weak: Vec<_> = imports
            .iter()
            .filter(|import| !import.provided && import.weak)
            .collect();
        println!(
            "{}: {} imports, {} provided by Keel, {} missing, {} weak and absent (bound to 0)",
            file.display(),
            imports.len(),
            provided.len(),
            missing.len(),
            weak.len()
        );
        for (title, list) in [
            ("provided", &provided),
            ("missing", &missing),
            ("weak, absent", &weak),
        ] {
            if !list.is_empty() {
                let names: Vec<String> = list.iter().map(|import| label(import)).collect();
                println!("  {title}: {}", names.join(" "));
            }
        }
        lacking += missing.len();
    }
    if strict && lacking > 0 {
        return Err(format!("{lacking} strong imports are missing"));
    }
    Ok(())
}
