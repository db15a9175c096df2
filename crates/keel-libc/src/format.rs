//! The `printf` family (to be written).

use keel_elf::ExportedSymbols;

/// Adds this module's functions to the export table.
pub(crate) fn register(_table: &mut ExportedSymbols) {}
