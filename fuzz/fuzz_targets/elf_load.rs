//! Fuzz target `elf_load`: any bytes, parsed as an ELF object and then loaded (mapped
//! and relocated against the host glibc's symbols, with the host's dynamic TLS) with
//! `run_code` off, so no
//! resolver or initializer of the input ever runs. Dependencies other than the names
//! the kernel provides are not found (no filesystem access). Must never crash, and a
//! failed load must leave nothing mapped.
#![no_main]

use keel_hosted::elf::{HostLibraries, HostMemory, HostThreadLocalStorage};
use keel_elf::{LibrarySource, Linker, LinkerOptions, ObjectFile, ProviderChain};
use libfuzzer_sys::fuzz_target;

/// A library source with no files.
struct NoLibraries;

impl LibrarySource for NoLibraries {
    type File = Vec<u8>;

    fn read(&mut self, _path: &str) -> Option<Vec<u8>> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = ObjectFile::parse(data);
    let options = LinkerOptions {
        run_code: false,
        default_directories: Vec::new(),
        ..LinkerOptions::default()
    };
    let exports = ProviderChain {
        first: HostThreadLocalStorage::exports(),
        second: HostLibraries::glibc().expect("host glibc"),
    };
    let mut linker = Linker::with_thread_local_storage(
        HostMemory::new(),
        exports,
        NoLibraries,
        HostThreadLocalStorage::new(),
        options,
    );
    // SAFETY: `run_code` is off: the linker maps and relocates (each write checked
    // against the input's own segments) and runs none of the input's code.
    let result = unsafe { linker.load_bytes("fuzzed.so", data) };
    if result.is_err() {
        assert!(linker.memory().reservations().is_empty());
    }
});
