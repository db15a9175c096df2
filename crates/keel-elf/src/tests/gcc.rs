//! Objects gcc builds at test time, each into its own directory under
//! `target/<profile>/keel-elf-objects/` (never committed): constructor and destructor
//! order, a `COPY` relocation in a PIE with `DT_PREINIT_ARRAY`, ifuncs (through a
//! `JUMP_SLOT` and through `IRELATIVE`), versioned symbols, a `DT_NEEDED` cycle,
//! `DT_RELR`, and the refusals (missing symbols, `ET_EXEC`, executable stack, TLS).
//! The helpers that build them are shared with `gcc_linking` (hash tables, an object
//! without libc, thread-local storage, `DT_RUNPATH`).

use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use super::real_libraries::{function, host_linker};
use crate::{Dependency, LinkError, MissingSymbol, ObjectError};

/// A fresh directory for one test's objects.
pub(super) fn object_directory(test: &str) -> PathBuf {
    let executable = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/keel_elf-HASH -> target/<profile>/keel-elf-objects/<test>
    let profile = executable
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let directory = profile.join("keel-elf-objects").join(test);
    let _ = fs::remove_dir_all(&directory);
    fs::create_dir_all(&directory).expect("create object directory");
    directory
}

/// Writes `source` to `directory/name` and returns its path.
pub(super) fn write_source(directory: &Path, name: &str, source: &str) -> String {
    let path = directory.join(name);
    fs::write(&path, source).expect("write source");
    path.to_str().expect("utf-8 path").to_string()
}

/// Runs gcc in `directory` with `arguments`; panics with its output if it fails.
pub(super) fn gcc(directory: &Path, arguments: &[&str]) {
    let output = Command::new("gcc")
        .current_dir(directory)
        .args(arguments)
        .output()
        .expect("gcc runs (the keel-elf tests need gcc)");
    assert!(
        output.status.success(),
        "gcc {arguments:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds `lib{name}.so` from one C file, with `$ORIGIN` as its runpath, and returns
/// its path.
pub(super) fn shared_library(directory: &Path, name: &str, source: &str, extra: &[&str]) -> String {
    let source_path = write_source(directory, &format!("{name}.c"), source);
    let output = format!("lib{name}.so");
    let mut arguments = vec![
        "-shared",
        "-fPIC",
        "-O1",
        "-o",
        &output,
        &source_path,
        "-L.",
        "-Wl,-rpath,$ORIGIN",
    ];
    arguments.extend_from_slice(extra);
    gcc(directory, &arguments);
    directory
        .join(output)
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// The text the test objects recorded through `keel_test_log`.
pub(super) fn log_contents(
    linker: &super::real_libraries::HostLinker,
    log: crate::ObjectId,
) -> String {
    // SAFETY: `log_contents` is `const char *(void)`, returning a NUL-terminated
    // static buffer.
    unsafe {
        let contents: unsafe extern "C" fn() -> *const libc::c_char =
            function(linker, log, "log_contents");
        CStr::from_ptr(contents())
            .to_str()
            .expect("utf-8")
            .to_string()
    }
}

pub(super) const LOG_SOURCE: &str = r#"
#include <string.h>
static char buffer[512];
void keel_test_log(const char *entry) {
    strncat(buffer, entry, sizeof buffer - strlen(buffer) - 1);
    strncat(buffer, " ", sizeof buffer - strlen(buffer) - 1);
}
const char *log_contents(void) { return buffer; }
"#;

pub(super) fn layer_source(name: &str, below: Option<&str>) -> String {
    let call_below = below
        .map(|below| format!("{below}_value()"))
        .unwrap_or_else(|| "0".to_string());
    let declare_below = below
        .map(|below| format!("int {below}_value(void);"))
        .unwrap_or_default();
    format!(
        r#"
void keel_test_log(const char *entry);
{declare_below}
__attribute__((constructor)) static void construct(void) {{ keel_test_log("{name}+"); }}
__attribute__((destructor)) static void destruct(void) {{ keel_test_log("{name}-"); }}
int {name}_value(void) {{ return 1 + {call_below}; }}
"#
    )
}

#[test]
fn constructors_run_in_dependency_order_and_destructors_in_reverse() {
    let directory = object_directory("constructors");
    shared_library(&directory, "log", LOG_SOURCE, &[]);
    shared_library(
        &directory,
        "bottom",
        &layer_source("bottom", None),
        &["-llog"],
    );
    shared_library(
        &directory,
        "middle",
        &layer_source("middle", Some("bottom")),
        &["-lbottom", "-llog"],
    );
    // The top also has a DT_INIT function, which runs before its DT_INIT_ARRAY.
    let top_source = layer_source("top", Some("middle"))
        + "void top_init_function(void) { keel_test_log(\"top-init\"); }\n";
    let top = shared_library(
        &directory,
        "top",
        &top_source,
        &["-lmiddle", "-llog", "-Wl,-init=top_init_function"],
    );

    let mut linker = host_linker();
    // SAFETY: test objects built just above.
    let id = unsafe { linker.load(&top) }.expect("top loads");
    let log = linker
        .objects()
        .find(|&object| linker.object_info(object).expect("info").name == "liblog.so");
    let log = log.expect("liblog.so loaded");
    assert_eq!(log_contents(&linker, log), "bottom+ middle+ top-init top+ ");
    // SAFETY: `top_value` is `int (void)`.
    let value = unsafe { function::<unsafe extern "C" fn() -> i32>(&linker, id, "top_value")() };
    assert_eq!(value, 3);
    // liblog is needed by all three but loaded once.
    assert_eq!(linker.objects().count(), 4);
    // SAFETY: nothing of the objects is in use.
    unsafe { linker.finalize() }.expect("finalizers run");
    assert_eq!(
        log_contents(&linker, log),
        "bottom+ middle+ top-init top+ top- middle- bottom- "
    );
}

#[test]
fn pie_with_copy_relocation_and_preinit_array() {
    let directory = object_directory("copy");
    let library_source = r#"
void keel_test_log(const char *entry);
int shared_counter[4] = { 1, 2, 3, 4 };
__attribute__((constructor)) static void construct(void) { keel_test_log("library+"); }
int library_reads(int index) { return shared_counter[index]; }
"#;
    shared_library(&directory, "counter", library_source, &[]);
    let executable_source = r#"
#include <string.h>
extern int shared_counter[4];
int library_reads(int index);
static char buffer[256];
void keel_test_log(const char *entry) { strcat(buffer, entry); strcat(buffer, " "); }
const char *log_contents(void) { return buffer; }
static void preinit(void) { keel_test_log("preinit"); }
__attribute__((section(".preinit_array"), used)) static void (*preinit_entry)(void) = preinit;
__attribute__((constructor)) static void construct(void) { keel_test_log("executable+"); }
int executable_reads(int index) { return shared_counter[index]; }
void executable_writes(int index, int value) { shared_counter[index] = value; }
int through_library(int index) { return library_reads(index); }
int main(void) { return 0; }
"#;
    let source = write_source(&directory, "main.c", executable_source);
    gcc(
        &directory,
        &[
            "-fPIE",
            "-pie",
            "-O1",
            "-rdynamic",
            "-o",
            "main",
            &source,
            "-L.",
            "-lcounter",
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    let executable = directory.join("main");
    let relocations = Command::new("readelf")
        .args(["-rW"])
        .arg(&executable)
        .output()
        .expect("readelf");
    assert!(
        String::from_utf8_lossy(&relocations.stdout).contains("R_X86_64_COPY"),
        "gcc made no COPY relocation"
    );

    let mut linker = host_linker();
    // SAFETY: test objects built just above.
    let id = unsafe { linker.load(executable.to_str().expect("utf-8")) }.expect("executable loads");
    assert_eq!(
        linker.object_info(id).expect("info").kind,
        crate::ObjectKind::PositionIndependentExecutable
    );
    // The library's constructor called the executable's keel_test_log: load order puts
    // the executable first.
    assert_eq!(log_contents(&linker, id), "preinit library+ executable+ ");
    type Reads = unsafe extern "C" fn(i32) -> i32;
    // SAFETY: the C signatures above.
    unsafe {
        let executable_reads: Reads = function(&linker, id, "executable_reads");
        let through_library: Reads = function(&linker, id, "through_library");
        let executable_writes: unsafe extern "C" fn(i32, i32) =
            function(&linker, id, "executable_writes");
        // The copy has the library's initial values...
        assert_eq!(
            (0..4)
                .map(|index| executable_reads(index))
                .collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        // ...and the library's own references bind to the executable's copy.
        executable_writes(2, 30);
        assert_eq!(through_library(2), 30);
        assert_eq!(executable_reads(2), 30);
    }
}

#[test]
fn ifuncs_resolve_through_jump_slots_and_irelative() {
    let directory = object_directory("ifunc");
    let source = r#"
static int implementation_exported(void) { return 41; }
static int implementation_hidden(void) { return 42; }
static void *resolve_exported(void) { return implementation_exported; }
static void *resolve_hidden(void) { return implementation_hidden; }
int chosen(void) __attribute__((ifunc("resolve_exported")));
__attribute__((visibility("hidden"))) int hidden_chosen(void) __attribute__((ifunc("resolve_hidden")));
int call_chosen(void) { return chosen(); }
int call_hidden_chosen(void) { return hidden_chosen(); }
"#;
    let library = shared_library(&directory, "ifunc", source, &[]);
    let relocations = Command::new("readelf")
        .args(["-rW", &library])
        .output()
        .expect("readelf");
    assert!(String::from_utf8_lossy(&relocations.stdout).contains("R_X86_64_IRELATIVE"));

    let mut linker = host_linker();
    // SAFETY: a test object built just above.
    let id = unsafe { linker.load(&library) }.expect("ifunc library loads");
    type Call = unsafe extern "C" fn() -> i32;
    // SAFETY: `int (void)` functions.
    unsafe {
        assert_eq!(function::<Call>(&linker, id, "call_chosen")(), 41);
        assert_eq!(function::<Call>(&linker, id, "call_hidden_chosen")(), 42);
    }
}

const VERSION_SCRIPT: &str =
    "VERS_1 { global: answer; local: *; };\nVERS_2 { global: answer; } VERS_1;\n";
const VERSIONED_SOURCE: &str = r#"
int answer_one(void) { return 1; }
int answer_two(void) { return 2; }
__asm__(".symver answer_one, answer@VERS_1");
__asm__(".symver answer_two, answer@@VERS_2");
"#;

#[test]
fn versioned_symbols_bind_to_their_own_version() {
    let directory = object_directory("versions");
    write_source(&directory, "versions.map", VERSION_SCRIPT);
    shared_library(
        &directory,
        "versioned",
        VERSIONED_SOURCE,
        &["-Wl,--version-script=versions.map"],
    );
    let new_client = shared_library(
        &directory,
        "client_new",
        "int answer(void);\nint new_answer(void) { return answer(); }\n",
        &["-lversioned"],
    );
    let old_client = shared_library(
        &directory,
        "client_old",
        "int answer(void);\n__asm__(\".symver answer, answer@VERS_1\");\nint old_answer(void) { return answer(); }\n",
        &["-lversioned"],
    );

    let mut linker = host_linker();
    // SAFETY: test objects built just above.
    let (new_id, old_id) = unsafe {
        (
            linker.load(&new_client).expect("new client"),
            linker.load(&old_client).expect("old client"),
        )
    };
    type Call = unsafe extern "C" fn() -> i32;
    // SAFETY: `int (void)` functions.
    unsafe {
        assert_eq!(function::<Call>(&linker, new_id, "new_answer")(), 2);
        assert_eq!(function::<Call>(&linker, old_id, "old_answer")(), 1);
    }
    let one = linker
        .lookup("answer", Some("VERS_1"))
        .expect("answer@VERS_1");
    let two = linker
        .lookup("answer", Some("VERS_2"))
        .expect("answer@VERS_2");
    assert_ne!(one, two);
    assert_eq!(
        linker.lookup("answer", None),
        Some(two),
        "unversioned lookups take the default"
    );
    assert_eq!(linker.lookup("answer", Some("VERS_3")), None);
}

#[test]
fn missing_symbols_are_all_reported_with_versions_and_requesters() {
    let directory = object_directory("missing");
    // A libversioned with VERS_2 to link against, then one with only VERS_1 beside the
    // client, which the client's $ORIGIN runpath finds at load time.
    let full = directory.join("full");
    fs::create_dir_all(&full).expect("mkdir");
    write_source(&full, "versions.map", VERSION_SCRIPT);
    shared_library(
        &full,
        "versioned",
        VERSIONED_SOURCE,
        &["-Wl,--version-script=versions.map"],
    );
    let client_source = r#"
int answer(void);
int missing_function_one(void);
int missing_function_two(void);
extern int missing_data;
int use_them(void) { return answer() + missing_function_one() + missing_function_two() + missing_data; }
"#;
    let client = shared_library(
        &directory,
        "client",
        client_source,
        &["-Lfull", "-lversioned"],
    );
    write_source(
        &directory,
        "old.map",
        "VERS_1 { global: answer; local: *; };\n",
    );
    shared_library(
        &directory,
        "versioned",
        "int answer(void) { return 1; }\n",
        &["-Wl,--version-script=old.map"],
    );

    let mut linker = host_linker();
    // SAFETY: test objects built just above (the load fails before running any).
    let error = unsafe { linker.load(&client) }.expect_err("symbols are missing");
    let missing = |name: &str, version: Option<&str>| MissingSymbol {
        name: name.to_string(),
        version: version.map(ToString::to_string),
        needed_by: client.clone(),
    };
    let LinkError::MissingSymbols(mut reported) = error else {
        panic!("expected missing symbols, got {error:?}");
    };
    reported.sort_by(|left, right| left.name.cmp(&right.name));
    assert_eq!(
        reported,
        vec![
            missing("answer", Some("VERS_2")),
            missing("missing_data", None),
            missing("missing_function_one", None),
            missing("missing_function_two", None),
        ]
    );
    // Nothing stays mapped after a failed load.
    assert_eq!(linker.objects().count(), 0);
    assert!(linker.memory().reservations().is_empty());
}

#[test]
fn a_cycle_of_two_objects_that_need_each_other() {
    let directory = object_directory("cycle");
    let a_source = r#"
void keel_test_log(const char *entry);
int b_value(void);
__attribute__((constructor)) static void construct(void) { keel_test_log("a+"); }
int a_value(void) { return 10; }
int a_calls_b(void) { return b_value() + 1; }
"#;
    let b_source = r#"
void keel_test_log(const char *entry);
int a_value(void);
__attribute__((constructor)) static void construct(void) { keel_test_log("b+"); }
int b_value(void) { return 20; }
int b_calls_a(void) { return a_value() + 2; }
"#;
    shared_library(&directory, "log", LOG_SOURCE, &[]);
    // a without b first, so that b can link against it; then a again, needing b.
    shared_library(&directory, "a", a_source, &["-llog"]);
    shared_library(&directory, "b", b_source, &["-la", "-llog"]);
    let a = shared_library(&directory, "a", a_source, &["-lb", "-llog"]);

    let mut linker = host_linker();
    // SAFETY: test objects built just above.
    let id = unsafe { linker.load(&a) }.expect("the cycle loads");
    assert_eq!(linker.objects().count(), 3, "a, b and log, each once");
    let b = linker
        .objects()
        .find(|&object| linker.object_info(object).expect("info").name == "libb.so");
    let b = b.expect("libb.so loaded");
    assert_eq!(
        linker.object_info(b).expect("info").dependencies[0],
        Dependency::Object(id)
    );
    let log = linker
        .objects()
        .find(|&object| linker.object_info(object).expect("info").name == "liblog.so");
    assert_eq!(log_contents(&linker, log.expect("log")), "b+ a+ ");
    type Call = unsafe extern "C" fn() -> i32;
    // SAFETY: `int (void)` functions.
    unsafe {
        assert_eq!(function::<Call>(&linker, id, "a_calls_b")(), 21);
        assert_eq!(function::<Call>(&linker, b, "b_calls_a")(), 12);
    }
}

#[test]
fn packed_relative_relocations() {
    let directory = object_directory("relr");
    let source = r#"
static int values[40];
int *pointers[40] = {
    &values[0], &values[1], &values[2], &values[3], &values[4], &values[5], &values[6], &values[7],
    &values[8], &values[9], &values[10], &values[11], &values[12], &values[13], &values[14], &values[15],
    &values[16], &values[17], &values[18], &values[19], &values[20], &values[21], &values[22], &values[23],
    &values[24], &values[25], &values[26], &values[27], &values[28], &values[29], &values[30], &values[31],
    &values[32], &values[33], &values[34], &values[35], &values[36], &values[37], &values[38], &values[39],
};
static int *lonely = &values[7];
int check(void) {
    for (int index = 0; index < 40; index++) if (pointers[index] != &values[index]) return -index - 1;
    return lonely == &values[7] ? 0 : -100;
}
"#;
    let library = shared_library(&directory, "relr", source, &["-Wl,-z,pack-relative-relocs"]);
    let dynamic = Command::new("readelf")
        .args(["-dW", &library])
        .output()
        .expect("readelf");
    assert!(
        String::from_utf8_lossy(&dynamic.stdout).contains("(RELR)"),
        "the linker made no DT_RELR"
    );
    let bytes = fs::read(&library).expect("read");
    let parsed = crate::ObjectFile::parse(&bytes).expect("parses");
    assert!(parsed.packed_relative.len() >= 41);

    let mut linker = host_linker();
    // SAFETY: a test object built just above.
    let id = unsafe { linker.load(&library) }.expect("loads");
    // SAFETY: `check` is `int (void)`.
    let result = unsafe { function::<unsafe extern "C" fn() -> i32>(&linker, id, "check")() };
    assert_eq!(result, 0);
}

#[test]
fn refusals_of_exec_executable_stack_and_tls() {
    let directory = object_directory("refusals");
    let main = write_source(&directory, "main.c", "int main(void) { return 0; }\n");
    gcc(&directory, &["-no-pie", "-fno-pie", "-o", "fixed", &main]);
    let stack = shared_library(
        &directory,
        "stack",
        "int f(void) { return 1; }\n",
        &["-Wl,-z,execstack"],
    );
    let tls = shared_library(
        &directory,
        "tls",
        "__thread int counter;\nint *f(void) { return &counter; }\n",
        &[],
    );

    let mut linker = host_linker();
    let refused = |linker: &mut super::real_libraries::HostLinker, path: &str| {
        // SAFETY: test objects built just above; each is refused before running code.
        match unsafe { linker.load(path) } {
            Err(LinkError::Object { error, .. }) => error,
            other => panic!("{path}: expected a refusal, got {other:?}"),
        }
    };
    let fixed = directory.join("fixed");
    assert_eq!(
        refused(&mut linker, fixed.to_str().expect("utf-8")),
        ObjectError::ExecutableNotPositionIndependent
    );
    assert_eq!(
        refused(&mut linker, &stack),
        ObjectError::ExecutableStackRequested
    );
    assert_eq!(
        refused(&mut linker, &tls),
        ObjectError::ThreadLocalStorageUnsupported
    );
    assert!(linker.memory().reservations().is_empty());
}
