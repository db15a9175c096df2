//! File calls over a [`Files`] (being written).

use keel_elf::ExportedSymbols;

/// The file context the libc's file calls use (Keel's VFS `Context`).
pub trait Files: Sync {}

/// Adds this module's functions to the export table.
pub(crate) fn register(_table: &mut ExportedSymbols) {}
