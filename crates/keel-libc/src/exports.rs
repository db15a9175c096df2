//! The export table: every function of the crate under its glibc name and version.

use keel_elf::{ExportedSymbols, SymbolDefinition};
use keel_types::VirtAddr;

/// glibc's first x86-64 version, which most of its symbols carry.
pub const GLIBC_BASE_VERSION: &str = "GLIBC_2.2.5";

/// Exports the function at `address` as `name`, for every version a reference may
/// ask for (an unversioned export satisfies all: the name's meaning is the same in
/// every glibc version Keel provides; a name whose versions differ in meaning, like
/// `memcpy@GLIBC_2.14` against `memcpy@GLIBC_2.2.5`, is exported per version with
/// [`export_versioned`]).
pub(crate) fn export(table: &mut ExportedSymbols, name: &str, address: usize) {
    // SAFETY: every caller passes the address of one of this crate's `extern "C"`
    // functions with the C signature of glibc's `name`; functions live as long as the
    // program.
    #[allow(unsafe_code)]
    unsafe {
        table.insert(
            name,
            SymbolDefinition {
                address: VirtAddr::new(address as u64),
                size: None,
            },
        );
    }
}

/// Exports the function at `address` as `name@version` only.
pub(crate) fn export_versioned(
    table: &mut ExportedSymbols,
    name: &str,
    version: &str,
    address: usize,
) {
    // SAFETY: as for `export`.
    #[allow(unsafe_code)]
    unsafe {
        table.insert_versioned(
            name,
            version,
            SymbolDefinition {
                address: VirtAddr::new(address as u64),
                size: None,
            },
        );
    }
}

/// The whole table with the threads: [`exports`] plus [`crate::pthread::register`]
/// for parker `P` (the kernel's scheduler, or `StdParker` on the host).
pub fn exports_with_threads<P: keel_lfmutex::Parker + 'static>() -> ExportedSymbols {
    let mut table = exports();
    crate::pthread::register::<P>(&mut table);
    table
}

/// The table of everything but the thread functions (which need a parker).
pub fn exports() -> ExportedSymbols {
    let mut table = ExportedSymbols::new();
    export(
        &mut table,
        "__errno_location",
        crate::errno::errno_location as *const () as usize,
    );
    crate::string::register(&mut table);
    crate::malloc::register(&mut table);
    crate::files::register(&mut table);
    crate::process::register(&mut table);
    crate::math::register(&mut table);
    crate::mman::register(&mut table);
    crate::dl::register(&mut table);
    crate::stdlib::register(&mut table);
    crate::time::register(&mut table);
    crate::format::register(&mut table);
    table
}
