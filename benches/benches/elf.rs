//! `elf/*`: Keel's ELF linker (`keel`, `keel-elf` with its host memory and the host
//! glibc as the exported symbols) beside glibc's own dynamic linker (`glibc`:
//! `dlopen`/`dlsym` through the `libc` crate), in the same run, on Debian's
//! unmodified libraries.
//!
//! Cases:
//! - `load-libz`, `load-libsqlite3`: one load + relocate + initialize + unload per
//!   iteration. Ours: `Linker::load` (reads the file, parses, maps, relocates, seals
//!   RELRO, runs the initializers), then dropping the linker (unmaps). glibc's:
//!   `dlopen(path, RTLD_NOW | RTLD_LOCAL)` then `dlclose` (neither library is otherwise
//!   loaded in the bench process, so every `dlopen` really loads it; `libm.so.6`, which
//!   libsqlite3 needs, stays loaded on both sides: Keel's host provider holds it open).
//! - `load-libz-table`, `load-libsqlite3-table`: the same load, but Keel resolves the
//!   library's imports from an `ExportedSymbols` table filled beforehand with the host
//!   glibc's addresses of exactly those imports (what the kernel's export table will
//!   be), instead of asking `dlvsym` at load time: the linker's own cost without the
//!   host provider's (glibc's side is the same `dlopen`).
//! - `lookup`: the address of `inflate` in a loaded libz. Ours: `Linker::symbol`
//!   (GNU hash, Bloom filter, version check); glibc's: `dlsym(handle, "inflate")`.
//!
//! Run: `cargo bench -p keel-benches --bench elf` (or `cargo xtask bench elf`).

use std::ffi::CString;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_elf::{ExportedSymbols, Linker, LinkerOptions, ObjectFile, SymbolProvider, SymbolRequest};
use keel_hosted::elf::{FileSystem, HostLibraries, HostMemory};

const LIBZ: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1";
const LIBSQLITE3: &str = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";

fn configure<'a>(
    criterion: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = criterion.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    group
}

/// The peer of a load case: glibc's `dlopen(path, RTLD_NOW | RTLD_LOCAL)` and
/// `dlclose`, as `glibc` in `group`.
fn bench_glibc_dlopen(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    path: &str,
) {
    let c_path = CString::new(path).expect("path");
    group.bench_function("glibc", |bencher| {
        bencher.iter(|| {
            // SAFETY: a NUL-terminated path to a system library.
            let handle = unsafe {
                libc::dlopen(
                    black_box(c_path.as_ptr()),
                    libc::RTLD_NOW | libc::RTLD_LOCAL,
                )
            };
            assert!(!handle.is_null());
            // SAFETY: the handle just returned, closed once.
            unsafe { libc::dlclose(handle) };
        });
    });
}

fn keel_linker() -> Linker<HostMemory, HostLibraries, FileSystem> {
    Linker::new(
        HostMemory::new(),
        HostLibraries::glibc().expect("host glibc"),
        FileSystem,
        LinkerOptions::default(),
    )
}

fn load_cases(criterion: &mut Criterion) {
    for (case, path) in [("load-libz", LIBZ), ("load-libsqlite3", LIBSQLITE3)] {
        let mut group = configure(criterion, &format!("elf/{case}"));
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let mut linker = keel_linker();
                // SAFETY: Debian's own library, trusted code for this process.
                let id = unsafe { linker.load(black_box(path)) }.expect("loads");
                black_box(id);
                drop(linker);
            });
        });
        bench_glibc_dlopen(&mut group, path);
        group.finish();
    }
}

/// The host glibc's definitions of `path`'s imports, as an export table.
fn import_table(path: &str) -> ExportedSymbols {
    let bytes = std::fs::read(path).expect("library");
    let file = ObjectFile::parse(&bytes).expect("parses");
    let host = HostLibraries::glibc().expect("host glibc");
    let mut exports = ExportedSymbols::new();
    for (index, symbol) in file.symbols.iter().enumerate() {
        if symbol.defined || symbol.name.is_empty() {
            continue;
        }
        let version = file
            .versions
            .required_version(index)
            .map(|requirement| requirement.name.as_str());
        let request = SymbolRequest {
            name: &symbol.name,
            version,
            copy_source: true,
        };
        if let Some(definition) = host.resolve(&request) {
            // SAFETY: the host provider's definitions meet the contract (glibc stays
            // loaded: `host`'s handles are never closed).
            unsafe {
                match version {
                    Some(version) => exports.insert_versioned(&symbol.name, version, definition),
                    None => exports.insert(&symbol.name, definition),
                }
            }
        }
    }
    exports
}

fn table_cases(criterion: &mut Criterion) {
    for (case, path) in [
        ("load-libz-table", LIBZ),
        ("load-libsqlite3-table", LIBSQLITE3),
    ] {
        let exports = import_table(path);
        let mut group = configure(criterion, &format!("elf/{case}"));
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let mut linker = Linker::new(
                    HostMemory::new(),
                    &exports,
                    FileSystem,
                    LinkerOptions::default(),
                );
                // SAFETY: Debian's own library, trusted code for this process.
                let id = unsafe { linker.load(black_box(path)) }.expect("loads");
                black_box(id);
                drop(linker);
            });
        });
        bench_glibc_dlopen(&mut group, path);
        group.finish();
    }
}

fn lookup_case(criterion: &mut Criterion) {
    let mut linker = keel_linker();
    // SAFETY: Debian's own library, trusted code for this process.
    let id = unsafe { linker.load(LIBZ) }.expect("libz loads");
    let c_path = CString::new(LIBZ).expect("path");
    // SAFETY: a NUL-terminated path to a system library.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null());
    let mut group = configure(criterion, "elf/lookup");
    group.bench_function("keel", |bencher| {
        bencher.iter(|| {
            linker
                .symbol(id, black_box("inflate"), None)
                .expect("inflate")
        });
    });
    let name = CString::new("inflate").expect("name");
    group.bench_function("glibc", |bencher| {
        // SAFETY: a live handle and a NUL-terminated name.
        bencher.iter(|| unsafe { libc::dlsym(handle, black_box(name.as_ptr())) });
    });
    group.finish();
    // SAFETY: the handle from dlopen above, closed once.
    unsafe { libc::dlclose(handle) };
}

criterion_group!(benches, load_cases, table_cases, lookup_case);
criterion_main!(benches);
