//! keel-libc in the guest: Debian's unmodified `libsqlite3.so.0`, read from the boot
//! image through the VFS, loaded by the kernel's ELF linker and linked against
//! keel-libc alone, runs an in-memory database and one on ramfs (through keel-libc's
//! `open`/`pread`/`pwrite`/`fcntl` record locks/`fsync`), with its mutexes on the
//! lock-free mutex and its stack-protector canary read at `%fs:0x28`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void};

use keel_arch_x86_64::ArchInfo;
use keel_elf::{Linker, LinkerOptions};

use super::TestResult;
use crate::elf::{KernelMemory, VfsLibraries, kernel_exports};

type Open = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
type Callback =
    unsafe extern "C" fn(*mut c_void, c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
type Exec = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    Option<Callback>,
    *mut c_void,
    *mut *mut c_char,
) -> c_int;
type Close = unsafe extern "C" fn(*mut c_void) -> c_int;

/// A NUL-terminated copy of `text`.
fn c_string(text: &str) -> Vec<u8> {
    let mut bytes = Vec::from(text.as_bytes());
    bytes.push(0);
    bytes
}

/// The bytes of a C string (bounded, without `strlen`).
///
/// # Safety
/// `text` is NULL or NUL-terminated.
unsafe fn text_of(text: *const c_char) -> String {
    if text.is_null() {
        return String::from("NULL");
    }
    let mut bytes = Vec::new();
    // SAFETY: NUL-terminated, per the contract; bounded for safety of the report.
    unsafe {
        while bytes.len() < 4096 && *text.add(bytes.len()) != 0 {
            bytes.push(*text.add(bytes.len()) as u8);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Collects rows as `a|b|c`.
unsafe extern "C" fn collect(
    rows: *mut c_void,
    columns: c_int,
    values: *mut *mut c_char,
    _names: *mut *mut c_char,
) -> c_int {
    // SAFETY: sqlite passes `columns` values; `rows` is the case's Vec.
    unsafe {
        let rows = &mut *rows.cast::<Vec<String>>();
        let line: Vec<String> = (0..columns as usize)
            .map(|index| text_of(*values.add(index)))
            .collect();
        rows.push(line.join("|"));
    }
    0
}

struct Sqlite {
    open: Open,
    exec: Exec,
    close: Close,
}

impl Sqlite {
    fn query(&self, database: *mut c_void, sql: &str) -> Result<Vec<String>, String> {
        let sql = c_string(sql);
        let mut rows: Vec<String> = Vec::new();
        let mut message: *mut c_char = core::ptr::null_mut();
        // SAFETY: sqlite3_exec's documented contract.
        let status = unsafe {
            (self.exec)(
                database,
                sql.as_ptr().cast(),
                Some(collect),
                (&mut rows as *mut Vec<String>).cast(),
                &mut message,
            )
        };
        if status != 0 {
            // SAFETY: sqlite's message.
            return Err(format!("status {status}: {}", unsafe { text_of(message) }));
        }
        Ok(rows)
    }

    fn open_database(&self, name: &str) -> Result<*mut c_void, c_int> {
        let name = c_string(name);
        let mut database = core::ptr::null_mut();
        // SAFETY: as above.
        match unsafe { (self.open)(name.as_ptr().cast(), &mut database) } {
            0 => Ok(database),
            status => Err(status),
        }
    }
}

/// Debian's libsqlite3 loads against keel-libc (its 89 imports), and answers
/// exactly: 2000 rows and their aggregates in memory; a database file on ramfs
/// written, closed, found in the VFS with sqlite's header, reopened and read.
fn libc_runs_debians_sqlite(_: &ArchInfo) -> TestResult {
    let files = crate::files::context();
    check!(files.is_some(), "no file context");
    let files = files.unwrap();
    let mut linker = Linker::new(
        KernelMemory::default(),
        kernel_exports(),
        VfsLibraries,
        LinkerOptions::default(),
    );
    // SAFETY: Debian's sqlite, trusted code; its imports resolve to keel-libc.
    let loaded = unsafe { linker.load("libsqlite3.so.0") };
    let id = match loaded {
        Ok(id) => id,
        Err(error) => {
            check!(false, "loading libsqlite3.so.0", format!("{error}"));
            return Ok(());
        }
    };
    let address = |name: &str| {
        linker
            .symbol(id, name, None)
            .map_or(0, |at| at.as_u64() as usize)
    };
    for name in ["sqlite3_open", "sqlite3_exec", "sqlite3_close"] {
        check!(address(name) != 0, "sqlite lacks a function", name);
    }
    // SAFETY: sqlite3.h's signatures, at addresses sqlite defines.
    let sqlite = unsafe {
        Sqlite {
            open: core::mem::transmute::<usize, Open>(address("sqlite3_open")),
            exec: core::mem::transmute::<usize, Exec>(address("sqlite3_exec")),
            close: core::mem::transmute::<usize, Close>(address("sqlite3_close")),
        }
    };
    let memory = sqlite.open_database(":memory:");
    check!(memory.is_ok(), "sqlite3_open(:memory:)", memory);
    let memory = memory.unwrap();
    let created = sqlite.query(
        memory,
        "CREATE TABLE numbers (n INTEGER, square INTEGER, name TEXT)",
    );
    check!(created.is_ok(), "CREATE TABLE", created);
    let mut insert = String::from("BEGIN;");
    for n in 0..2000u64 {
        insert.push_str(&format!(
            "INSERT INTO numbers VALUES ({n}, {}, 'row {n}');",
            n * n
        ));
    }
    insert.push_str("COMMIT;");
    let inserted = sqlite.query(memory, &insert);
    check!(inserted.is_ok(), "2000 inserts", inserted);
    let rows = sqlite.query(
        memory,
        "SELECT count(*), sum(n), sum(square), max(name) FROM numbers",
    );
    let squares: u64 = (0..2000u64).map(|n| n * n).sum();
    let expected = [format!("2000|1999000|{squares}|row 999")];
    check!(
        rows.as_deref() == Ok(&expected[..]),
        "the aggregate",
        rows,
        expected
    );
    // SAFETY: our handle.
    let closed = unsafe { (sqlite.close)(memory) };
    check!(closed == 0, "sqlite3_close", closed);

    let _ = files.mkdir(b"/tmp", 0o755);
    let path = "/tmp/keel-guest.db";
    let _ = files.unlink(path.as_bytes());
    let database = sqlite.open_database(path);
    check!(database.is_ok(), "sqlite3_open on ramfs", database);
    let database = database.unwrap();
    let mut script = String::from("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT);");
    for index in 0..100 {
        script.push_str(&format!(
            "INSERT INTO kv VALUES ('key{index}', '{}');",
            "v".repeat(index)
        ));
    }
    let written = sqlite.query(database, &script);
    check!(written.is_ok(), "writing the file database", written);
    // SAFETY: our handle.
    let closed = unsafe { (sqlite.close)(database) };
    check!(closed == 0, "closing it", closed);
    let mut header = [0u8; 16];
    let read = files
        .open(path.as_bytes(), keel_vfs::OpenFlags::O_RDONLY, 0)
        .and_then(|fd| {
            let count = files.read(fd, &mut header);
            let _ = files.close(fd);
            count
        });
    check!(
        read == Ok(16) && &header == b"SQLite format 3\0",
        "the file's sqlite header, read through the VFS",
        read,
        header
    );
    let reopened = sqlite.open_database(path);
    check!(reopened.is_ok(), "reopening", reopened);
    let reopened = reopened.unwrap();
    let rows = sqlite.query(reopened, "SELECT count(*), sum(length(value)) FROM kv");
    let expected = [format!("100|{}", (0..100).sum::<usize>())];
    check!(
        rows.as_deref() == Ok(&expected[..]),
        "the reopened database",
        rows,
        expected
    );
    // SAFETY: our handle.
    let closed = unsafe { (sqlite.close)(reopened) };
    check!(closed == 0, "closing it again", closed);
    // SAFETY: sqlite's finalizers.
    let finalized = unsafe { linker.finalize() };
    check!(finalized.is_ok(), "finalize", finalized.map(|_| ()));
    Ok(())
}
ktest!(libc_runs_debians_sqlite);
