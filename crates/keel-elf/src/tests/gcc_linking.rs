//! More objects gcc builds at test time (with `gcc`'s helpers): the GNU and SysV hash
//! tables find every export, an object without libc runs against exported symbols
//! only, dynamic thread-local storage per thread, and `DT_RUNPATH` searched before the
//! default directories.

use std::fs;
use std::process::Command;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use super::gcc::{object_directory, shared_library};
use super::real_libraries::{function, host_linker};
use crate::{Dependency, LinkError, ObjectError};

/// Every defined, exported symbol of `file` is found through its hash table, at its
/// own index, and made-up names are not.
fn every_export_is_found(file: &crate::ObjectFile) -> usize {
    let mut found = 0;
    for (index, symbol) in file.symbols.iter().enumerate() {
        if !symbol.defined
            || symbol.binding == crate::SymbolBinding::Local
            || symbol.name.is_empty()
        {
            continue;
        }
        let hit = file.hash_table.lookup(symbol.name.as_bytes(), |candidate| {
            file.symbols[candidate as usize].name == symbol.name
        });
        assert_eq!(hit, Some(index as u32), "{}", symbol.name);
        found += 1;
    }
    for absent in ["", "not_a_symbol", "sqlite3_open_v3", "f_100000"] {
        let hit = file.hash_table.lookup(absent.as_bytes(), |candidate| {
            file.symbols[candidate as usize].name == absent
        });
        assert_eq!(hit, None, "{absent}");
    }
    found
}

#[test]
fn gnu_and_sysv_hash_tables_find_every_export() {
    let directory = object_directory("hashes");
    let source: String = (0..300)
        .map(|index| format!("int f_{index}(void) {{ return {index}; }}\n"))
        .collect();
    let gnu = shared_library(&directory, "gnu", &source, &["-Wl,--hash-style=gnu"]);
    let sysv = shared_library(&directory, "sysv", &source, &["-Wl,--hash-style=sysv"]);
    let gnu_bytes = fs::read(&gnu).expect("read");
    let sysv_bytes = fs::read(&sysv).expect("read");
    let gnu_file = crate::ObjectFile::parse(&gnu_bytes).expect("parses");
    let sysv_file = crate::ObjectFile::parse(&sysv_bytes).expect("parses");
    assert!(matches!(
        gnu_file.hash_table,
        crate::SymbolHashTable::Gnu(_)
    ));
    assert!(matches!(
        sysv_file.hash_table,
        crate::SymbolHashTable::Sysv(_)
    ));
    assert!(every_export_is_found(&gnu_file) >= 300);
    assert!(every_export_is_found(&sysv_file) >= 300);
    assert_eq!(gnu_file.symbols.len(), sysv_file.symbols.len());

    let sqlite = fs::read("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0").expect("libsqlite3");
    assert!(every_export_is_found(&crate::ObjectFile::parse(&sqlite).expect("parses")) > 200);

    let mut linker = host_linker();
    // SAFETY: a test object built just above.
    let id = unsafe { linker.load(&sysv) }.expect("a SysV-only object loads");
    // SAFETY: `int (void)`.
    let value = unsafe { function::<unsafe extern "C" fn() -> i32>(&linker, id, "f_299")() };
    assert_eq!(value, 299);
}

/// What the kernel's exports will be: Rust functions in an [`ExportedSymbols`] table.
extern "C" fn exported_add(left: i32, right: i32) -> i32 {
    left + right
}

static EXPORTED_COUNTER: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

extern "C" fn exported_count() {
    EXPORTED_COUNTER.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

#[test]
fn an_object_without_libc_runs_against_exported_symbols_only() {
    let directory = object_directory("exports");
    // No libc at all (-nostdlib): what the first in-guest object will look like. Its
    // DT_NEEDED on libc.so.6 (asked for explicitly) resolves to the exports; its
    // DT_RPATH (old-style tags) finds the helper beside it.
    shared_library(
        &directory,
        "helper",
        "int helper_twice(int value) { return 2 * value; }\n",
        &["-nostdlib"],
    );
    let source = r#"
int keel_add(int left, int right);
void keel_count(void);
int helper_twice(int value);
__attribute__((constructor)) static void construct(void) { keel_count(); }
int compute(int value) { return keel_add(helper_twice(value), 1); }
"#;
    let library = shared_library(
        &directory,
        "freestanding",
        source,
        &[
            "-nostdlib",
            "-lhelper",
            "-Wl,--disable-new-dtags",
            "-Wl,--no-as-needed",
            "-lc",
        ],
    );
    let bytes = fs::read(&library).expect("read");
    let parsed = crate::ObjectFile::parse(&bytes).expect("parses");
    assert!(parsed.runpath.is_empty() && parsed.rpath == vec!["$ORIGIN".to_string()]);

    let mut exports = crate::ExportedSymbols::new();
    let definition = |address: usize| crate::SymbolDefinition {
        address: keel_types::VirtAddr::new(address as u64),
        size: None,
    };
    // SAFETY: both are `extern "C"` functions with the signatures the object declares.
    unsafe {
        exports.insert("keel_add", definition(exported_add as *const () as usize));
        exports.insert(
            "keel_count",
            definition(exported_count as *const () as usize),
        );
    }
    let options = crate::LinkerOptions {
        default_directories: Vec::new(),
        ..crate::LinkerOptions::default()
    };
    let mut linker = crate::Linker::new(
        crate::host::HostMemory::new(),
        exports,
        crate::host::FileSystem,
        options,
    );
    let before = EXPORTED_COUNTER.load(core::sync::atomic::Ordering::Relaxed);
    // SAFETY: test objects built just above.
    let id = unsafe { linker.load(&library) }.expect("loads against the exports");
    assert_eq!(
        EXPORTED_COUNTER.load(core::sync::atomic::Ordering::Relaxed),
        before + 1,
        "the constructor ran"
    );
    let info = linker.object_info(id).expect("info");
    assert!(info.dependencies.contains(&Dependency::Provided));
    assert_eq!(
        linker.objects().count(),
        2,
        "the object and its helper; libc.so.6 is the exports"
    );
    let compute: unsafe extern "C" fn(i32) -> i32 =
        // SAFETY: `compute` is `int (int)`.
        unsafe { core::mem::transmute(linker.symbol(id, "compute", None).expect("compute").as_u64() as usize) };
    // SAFETY: as above.
    assert_eq!(unsafe { compute(20) }, 41);
}

#[test]
fn dynamic_thread_local_storage_per_thread() {
    let directory = object_directory("tls");
    let library_source = r#"
__thread int counter = 5;
__thread char scratch[256];
static __thread int hidden_counter = 100;
int bump(void) { return ++counter; }
int bump_hidden(void) { return ++hidden_counter; }
int scratch_is_zero(void) {
    for (int index = 0; index < 256; index++) if (scratch[index]) return 0;
    scratch[7] = 1;
    return 1;
}
void *counter_address(void) { return &counter; }
"#;
    shared_library(&directory, "tlsdata", library_source, &[]);
    // Another object using the first one's TLS variable.
    let user = shared_library(
        &directory,
        "tlsuser",
        "extern __thread int counter;\nint user_bump(void) { return counter += 10; }\n",
        &["-ltlsdata"],
    );
    let relocations = Command::new("readelf")
        .args(["-rW", &user])
        .output()
        .expect("readelf");
    assert!(String::from_utf8_lossy(&relocations.stdout).contains("R_X86_64_DTPMOD64"));

    let exports = crate::ProviderChain {
        first: crate::host::HostThreadLocalStorage::exports(),
        second: crate::host::HostLibraries::glibc().expect("host glibc"),
    };
    let mut linker = crate::Linker::with_thread_local_storage(
        crate::host::HostMemory::new(),
        exports,
        crate::host::FileSystem,
        crate::host::HostThreadLocalStorage::new(),
        crate::LinkerOptions::default(),
    );
    // SAFETY: test objects built just above.
    let user_id = unsafe { linker.load(&user) }.expect("TLS objects load");
    let data_id = linker
        .objects()
        .find(|&object| linker.object_info(object).expect("info").name == "libtlsdata.so")
        .expect("libtlsdata.so loaded");
    type Call = unsafe extern "C" fn() -> i32;
    type Address = unsafe extern "C" fn() -> *mut libc::c_void;
    let address_of = |id, name| linker.symbol(id, name, None).expect(name).as_u64() as usize;
    // SAFETY: the C signatures above.
    let (bump, bump_hidden, scratch_is_zero, user_bump, counter_address) = unsafe {
        (
            core::mem::transmute::<usize, Call>(address_of(data_id, "bump")),
            core::mem::transmute::<usize, Call>(address_of(data_id, "bump_hidden")),
            core::mem::transmute::<usize, Call>(address_of(data_id, "scratch_is_zero")),
            core::mem::transmute::<usize, Call>(address_of(user_id, "user_bump")),
            core::mem::transmute::<usize, Address>(address_of(data_id, "counter_address")),
        )
    };
    // SAFETY: the C signatures above; the objects stay loaded to the end of the test.
    unsafe {
        assert_eq!(bump(), 6, ".tdata initializes the block");
        assert_eq!(bump(), 7);
        assert_eq!(user_bump(), 17, "the other object sees the same variable");
        assert_eq!(bump_hidden(), 101);
        assert_eq!(scratch_is_zero(), 1, ".tbss is zero");
        assert_eq!(scratch_is_zero(), 0);
    }
    // SAFETY: as above.
    let main_counter = unsafe { counter_address() } as usize;
    let other_counter = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: as above, in a thread of its own: a block of its own.
                unsafe {
                    assert_eq!(bump(), 6, "a new thread starts from the template");
                    assert_eq!(user_bump(), 16);
                    assert_eq!(bump_hidden(), 101);
                    assert_eq!(scratch_is_zero(), 1);
                    counter_address() as usize
                }
            })
            .join()
            .expect("thread")
    });
    assert_ne!(main_counter, other_counter);
    // SAFETY: still the main thread's block.
    assert_eq!(unsafe { bump() }, 18);

    // Initial-exec code needs static TLS, which the host does not give.
    let initial_exec = shared_library(
        &directory,
        "tlsie",
        "__thread int value;\nint get(void) { return value; }\n",
        &["-ftls-model=initial-exec"],
    );
    // SAFETY: refused before any code runs.
    let refused = unsafe { linker.load(&initial_exec) };
    assert!(
        matches!(
            refused,
            Err(LinkError::Object {
                error: ObjectError::ThreadLocalStorageUnsupported,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[test]
fn runpath_is_searched_before_the_default_directories() {
    let directory = object_directory("search");
    let near = directory.join("near");
    let default = directory.join("default");
    fs::create_dir_all(&near).expect("mkdir");
    fs::create_dir_all(&default).expect("mkdir");
    shared_library(&near, "pick", "int pick(void) { return 1; }\n", &[]);
    shared_library(&default, "pick", "int pick(void) { return 2; }\n", &[]);
    let near_text = near.to_str().expect("utf-8");
    let client_source = "int pick(void);\nint chosen(void) { return pick(); }\n";
    let rpath = format!("-Wl,-rpath,{near_text}");
    // Linked against the default one, found at load time through the runpath.
    let with_runpath = shared_library(
        &directory,
        "with_runpath",
        client_source,
        &["-Ldefault", "-lpick", &rpath],
    );
    let without = shared_library(
        &directory,
        "without",
        client_source,
        &["-Ldefault", "-lpick", "-Wl,-rpath,/nonexistent"],
    );

    type Call = unsafe extern "C" fn() -> i32;
    for (client, expected) in [(with_runpath, 1), (without, 2)] {
        let options = crate::LinkerOptions {
            default_directories: vec![default.to_str().expect("utf-8").to_string()],
            ..crate::LinkerOptions::default()
        };
        let mut linker = crate::Linker::new(
            crate::host::HostMemory::new(),
            crate::host::HostLibraries::glibc().expect("host glibc"),
            crate::host::FileSystem,
            options,
        );
        // SAFETY: test objects built just above.
        let id = unsafe { linker.load(&client) }.expect("loads");
        // SAFETY: `int (void)`.
        let value = unsafe { function::<Call>(&linker, id, "chosen")() };
        assert_eq!(value, expected, "{client}");
    }
}
