//! Writes the kernel's function symbols into its reserved `.ksyms` section, so the
//! kernel can symbolize its own backtraces (see the `keel-ksyms` crate).

use goblin::elf::{Elf, sym::STT_FUNC};
use keel_ksyms::SymbolTableWriter;

/// Patches `image` (a linked kernel ELF) in place; returns the number of symbols written.
pub fn embed(image: &mut [u8]) -> Result<usize, String> {
    let (section_offset, section_size, mut symbols) = {
        let elf = Elf::parse(image).map_err(|error| format!("kernel is not ELF: {error}"))?;
        let section = elf
            .section_headers
            .iter()
            .find(|header| elf.shdr_strtab.get_at(header.sh_name) == Some(".ksyms"))
            .ok_or("the kernel has no .ksyms section (linker script?)")?;
        let mut symbols: Vec<(u64, u32, String)> = elf
            .syms
            .iter()
            .filter(|symbol| symbol.st_type() == STT_FUNC && symbol.st_value != 0)
            .filter_map(|symbol| {
                let name = elf.strtab.get_at(symbol.st_name)?;
                let demangled = format!("{:#}", rustc_demangle::demangle(name));
                Some((
                    symbol.st_value,
                    symbol.st_size.min(u64::from(u32::MAX)) as u32,
                    demangled,
                ))
            })
            .collect();
        // Assembly labels carry no FUNC type; add the entry points worth naming.
        for symbol in elf.syms.iter() {
            let Some(name) = elf.strtab.get_at(symbol.st_name) else {
                continue;
            };
            if name == "keel_pvh_start32" || name == "keel_isr_stubs" {
                symbols.push((symbol.st_value, 0, name.to_string()));
            }
        }
        (
            section.sh_offset as usize,
            section.sh_size as usize,
            symbols,
        )
    };
    symbols.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    symbols.dedup_by_key(|symbol| symbol.0);
    let region = image
        .get_mut(section_offset..section_offset + section_size)
        .ok_or(".ksyms section lies outside the file")?;
    region.fill(0);
    let mut writer = SymbolTableWriter::new(region, symbols.len())
        .map_err(|error| format!("symbol table does not fit: {error}"))?;
    for (address, size, name) in &symbols {
        writer
            .push(*address, *size, name)
            .map_err(|error| format!("symbol table does not fit: {error}"))?;
    }
    writer.finish();
    Ok(symbols.len())
}
