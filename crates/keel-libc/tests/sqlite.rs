//! Debian's unmodified `libsqlite3.so.0`, loaded by Keel's ELF linker into this test
//! process and linked against Keel's libc alone (with its threads on keel-lfmutex over
//! `StdParker`): all 89 of its imports must resolve. Then, as the issues ask: an
//! in-memory database with a table, 10 000 rows inserted and an aggregate queried;
//! and a database file on Keel's VFS (ramfs), which sqlite reaches through Keel's
//! `open`/`pread`/`pwrite`/`fcntl` record locks/`fsync`, closed, reopened and read.

mod common;

use std::ffi::{CStr, CString, c_char, c_int, c_void};

use keel_elf::{Linker, LinkerOptions};
use keel_hosted::StdParker;
use keel_hosted::elf::{FileSystem, HostMemory};

const SQLITE: &str = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";

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

/// Collects the first column of every row as text.
unsafe extern "C" fn collect(
    rows: *mut c_void,
    columns: c_int,
    values: *mut *mut c_char,
    _names: *mut *mut c_char,
) -> c_int {
    // SAFETY: sqlite passes `columns` values; `rows` is the test's Vec.
    unsafe {
        let rows = &mut *rows.cast::<Vec<String>>();
        let mut line = Vec::new();
        for index in 0..columns as usize {
            let value = *values.add(index);
            line.push(if value.is_null() {
                "NULL".to_string()
            } else {
                CStr::from_ptr(value).to_string_lossy().into_owned()
            });
        }
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
    fn query(&self, database: *mut c_void, sql: &str) -> Vec<String> {
        let sql = CString::new(sql).unwrap();
        let mut rows: Vec<String> = Vec::new();
        let mut message: *mut c_char = std::ptr::null_mut();
        // SAFETY: sqlite3_exec's documented contract.
        let status = unsafe {
            (self.exec)(
                database,
                sql.as_ptr(),
                Some(collect),
                (&mut rows as *mut Vec<String>).cast(),
                &mut message,
            )
        };
        if status != 0 {
            // SAFETY: sqlite's NUL-terminated message.
            let text = unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned();
            panic!("sqlite3_exec({sql:?}) = {status}: {text}");
        }
        rows
    }

    fn open_database(&self, name: &str) -> *mut c_void {
        let name = CString::new(name).unwrap();
        let mut database = std::ptr::null_mut();
        // SAFETY: as above.
        let status = unsafe { (self.open)(name.as_ptr(), &mut database) };
        assert_eq!(status, 0, "sqlite3_open({name:?})");
        database
    }
}

#[test]
fn debian_sqlite_runs_on_keels_libc_and_vfs() {
    if !std::path::Path::new(SQLITE).exists() {
        panic!("{SQLITE} is missing: apt-get install libsqlite3-0");
    }
    let files = common::files();
    let exports = keel_libc::exports_with_threads::<StdParker>();
    let mut linker = Linker::new(
        HostMemory::new(),
        exports,
        FileSystem,
        LinkerOptions::default(),
    );
    // SAFETY: Debian's sqlite, trusted code; its imports resolve to keel-libc.
    let id = match unsafe { linker.load(SQLITE) } {
        Ok(id) => id,
        Err(error) => panic!("loading sqlite against keel-libc: {error}"),
    };
    let symbol = |name: &str| {
        linker
            .symbol(id, name, None)
            .unwrap_or_else(|| panic!("sqlite has no {name}"))
            .as_u64() as usize
    };
    // SAFETY: sqlite3.h's signatures.
    let sqlite = unsafe {
        Sqlite {
            open: std::mem::transmute::<usize, Open>(symbol("sqlite3_open")),
            exec: std::mem::transmute::<usize, Exec>(symbol("sqlite3_exec")),
            close: std::mem::transmute::<usize, Close>(symbol("sqlite3_close")),
        }
    };

    // In memory: 10 000 rows and an aggregate.
    let memory = sqlite.open_database(":memory:");
    sqlite.query(
        memory,
        "CREATE TABLE numbers (n INTEGER, square INTEGER, name TEXT)",
    );
    sqlite.query(memory, "BEGIN");
    for n in 0..10_000 {
        sqlite.query(
            memory,
            &format!("INSERT INTO numbers VALUES ({n}, {}, 'row {n}')", n * n),
        );
    }
    sqlite.query(memory, "COMMIT");
    let rows = sqlite.query(
        memory,
        "SELECT count(*), sum(n), sum(square), max(name) FROM numbers",
    );
    let expected_squares: i64 = (0..10_000i64).map(|n| n * n).sum();
    assert_eq!(
        rows,
        [format!("10000|49995000|{expected_squares}|row 9999")]
    );
    let rows = sqlite.query(
        memory,
        "SELECT n FROM numbers WHERE n % 1000 = 7 ORDER BY n DESC LIMIT 3",
    );
    assert_eq!(rows, ["9007", "8007", "7007"]);
    // SAFETY: a database handle of ours.
    assert_eq!(unsafe { (sqlite.close)(memory) }, 0);

    // On Keel's VFS: written, closed, reopened.
    let path = "/keel-test.db";
    let database = sqlite.open_database(path);
    sqlite.query(
        database,
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)",
    );
    for index in 0..200 {
        sqlite.query(
            database,
            &format!(
                "INSERT INTO kv VALUES ('key{index}', '{}')",
                "v".repeat(index)
            ),
        );
    }
    // SAFETY: as above.
    assert_eq!(unsafe { (sqlite.close)(database) }, 0);
    let stat = files
        .stat(path.as_bytes())
        .expect("the database file is in Keel's VFS");
    assert!(stat.size >= 8192, "{stat:?}");
    let mut header = [0u8; 16];
    let fd = files
        .open(path.as_bytes(), keel_vfs::OpenFlags::O_RDONLY, 0)
        .unwrap();
    files.read(fd, &mut header).unwrap();
    files.close(fd).unwrap();
    assert_eq!(&header, b"SQLite format 3\0");
    let database = sqlite.open_database(path);
    let rows = sqlite.query(database, "SELECT count(*), sum(length(value)) FROM kv");
    assert_eq!(rows, [format!("200|{}", (0..200).sum::<usize>())]);
    // SAFETY: as above.
    assert_eq!(unsafe { (sqlite.close)(database) }, 0);
    // SAFETY: sqlite's finalizers.
    unsafe { linker.finalize() }.unwrap();
}
