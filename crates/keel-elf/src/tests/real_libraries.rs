//! Debian's unmodified libraries, loaded, linked and run in the test process against
//! the host's glibc.

use std::ffi::CStr;
use std::vec;
use std::vec::Vec;

use crate::host::{FileSystem, HostLibraries, HostMemory};
use crate::{Linker, LinkerOptions, ObjectId, StackRequirement};

pub(crate) type HostLinker = Linker<HostMemory, HostLibraries, FileSystem>;

pub(crate) fn host_linker() -> HostLinker {
    Linker::new(
        HostMemory::new(),
        HostLibraries::glibc().expect("host glibc"),
        FileSystem,
        LinkerOptions::default(),
    )
}

/// The function `name` of object `id`, as a `T` (a function pointer type).
///
/// # Safety
/// `T` is the C signature of `name`.
pub(crate) unsafe fn function<T: Copy>(linker: &HostLinker, id: ObjectId, name: &str) -> T {
    let address = linker
        .symbol(id, name, None)
        .unwrap_or_else(|| panic!("{name} not defined"))
        .as_u64() as usize;
    assert_eq!(core::mem::size_of::<T>(), core::mem::size_of::<usize>());
    // SAFETY: the caller gives the right signature; the address is a defined function.
    unsafe { core::mem::transmute_copy::<usize, T>(&address) }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's), computed here independently of zlib.
fn crc32_reference(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

const LIBZ: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1";

type CompressBound = unsafe extern "C" fn(libc::c_ulong) -> libc::c_ulong;
type Compress =
    unsafe extern "C" fn(*mut u8, *mut libc::c_ulong, *const u8, libc::c_ulong) -> libc::c_int;
type Crc32 = unsafe extern "C" fn(libc::c_ulong, *const u8, libc::c_uint) -> libc::c_ulong;
type ZlibVersion = unsafe extern "C" fn() -> *const libc::c_char;

#[test]
fn crc32_reference_matches_the_check_value() {
    assert_eq!(crc32_reference(b"123456789"), 0xcbf4_3926);
}

#[test]
fn libz_compress_uncompress_round_trip_with_crc32() {
    let mut linker = host_linker();
    // SAFETY: Debian's libz is trusted code for this process.
    let id = unsafe { linker.load(LIBZ) }.expect("libz loads");
    let info = linker.object_info(id).expect("info");
    assert_eq!(info.stack, StackRequirement::NotExecutable);
    assert_eq!(info.dependencies, vec![crate::Dependency::Provided]);

    let input: Vec<u8> = (0..200_000u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 7) as u8 % 23)
        .collect();
    // SAFETY: zlib's documented C signatures, called with buffers of the lengths passed.
    unsafe {
        let version: ZlibVersion = function(&linker, id, "zlibVersion");
        let version = CStr::from_ptr(version()).to_str().expect("utf-8");
        assert!(version.starts_with("1."), "{version}");

        let bound: CompressBound = function(&linker, id, "compressBound");
        let compress: Compress = function(&linker, id, "compress");
        let uncompress: Compress = function(&linker, id, "uncompress");
        let crc32: Crc32 = function(&linker, id, "crc32");

        let mut compressed = vec![0u8; bound(input.len() as libc::c_ulong) as usize];
        let mut compressed_length = compressed.len() as libc::c_ulong;
        assert_eq!(
            compress(
                compressed.as_mut_ptr(),
                &mut compressed_length,
                input.as_ptr(),
                input.len() as _
            ),
            0
        );
        assert!((compressed_length as usize) < input.len() / 2);

        let mut output = vec![0u8; input.len()];
        let mut output_length = output.len() as libc::c_ulong;
        assert_eq!(
            uncompress(
                output.as_mut_ptr(),
                &mut output_length,
                compressed.as_ptr(),
                compressed_length
            ),
            0
        );
        assert_eq!(output_length as usize, input.len());
        assert_eq!(output, input);

        let crc = crc32(0, input.as_ptr(), input.len() as libc::c_uint);
        assert_eq!(crc as u32, crc32_reference(&input));
    }
    // SAFETY: nothing of libz is in use any more.
    unsafe { linker.finalize() }.expect("finalizers run");
}

const LIBSQLITE3: &str = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";

type Sqlite3Open = unsafe extern "C" fn(*const libc::c_char, *mut *mut libc::c_void) -> libc::c_int;
type Sqlite3Exec = unsafe extern "C" fn(
    *mut libc::c_void,
    *const libc::c_char,
    *const libc::c_void,
    *mut libc::c_void,
    *mut *mut libc::c_char,
) -> libc::c_int;
type Sqlite3Prepare = unsafe extern "C" fn(
    *mut libc::c_void,
    *const libc::c_char,
    libc::c_int,
    *mut *mut libc::c_void,
    *mut *const libc::c_char,
) -> libc::c_int;
type Sqlite3BindInt64 = unsafe extern "C" fn(*mut libc::c_void, libc::c_int, i64) -> libc::c_int;
type Sqlite3Statement = unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int;
type Sqlite3ColumnInt64 = unsafe extern "C" fn(*mut libc::c_void, libc::c_int) -> i64;

const SQLITE_OK: libc::c_int = 0;
const SQLITE_ROW: libc::c_int = 100;
const SQLITE_DONE: libc::c_int = 101;

#[test]
fn libsqlite3_in_memory_table_with_ten_thousand_rows_and_an_aggregate() {
    let mut linker = host_linker();
    // SAFETY: Debian's libsqlite3 is trusted code for this process.
    let id = unsafe { linker.load(LIBSQLITE3) }.expect("libsqlite3 loads");
    assert_eq!(
        linker.object_info(id).expect("info").dependencies,
        vec![crate::Dependency::Provided, crate::Dependency::Provided]
    );
    let rows = 10_000i64;
    // SAFETY: sqlite3's documented C signatures; every string is NUL-terminated and
    // every statement is finalized before the database is closed.
    unsafe {
        let open: Sqlite3Open = function(&linker, id, "sqlite3_open");
        let exec: Sqlite3Exec = function(&linker, id, "sqlite3_exec");
        let prepare: Sqlite3Prepare = function(&linker, id, "sqlite3_prepare_v2");
        let bind_int64: Sqlite3BindInt64 = function(&linker, id, "sqlite3_bind_int64");
        let step: Sqlite3Statement = function(&linker, id, "sqlite3_step");
        let reset: Sqlite3Statement = function(&linker, id, "sqlite3_reset");
        let finalize: Sqlite3Statement = function(&linker, id, "sqlite3_finalize");
        let column_int64: Sqlite3ColumnInt64 = function(&linker, id, "sqlite3_column_int64");
        let close: Sqlite3Statement = function(&linker, id, "sqlite3_close");

        let mut database = core::ptr::null_mut();
        assert_eq!(open(c":memory:".as_ptr(), &mut database), SQLITE_OK);
        let run = |sql: &CStr| {
            let status = exec(
                database,
                sql.as_ptr(),
                core::ptr::null(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
            );
            assert_eq!(status, SQLITE_OK, "{sql:?}");
        };
        run(c"CREATE TABLE samples (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, label TEXT)");
        run(c"BEGIN");
        let mut insert = core::ptr::null_mut();
        let sql = c"INSERT INTO samples (id, value, label) VALUES (?1, ?2, printf('row %d', ?1))";
        assert_eq!(
            prepare(
                database,
                sql.as_ptr(),
                -1,
                &mut insert,
                core::ptr::null_mut()
            ),
            SQLITE_OK
        );
        for row in 0..rows {
            assert_eq!(bind_int64(insert, 1, row), SQLITE_OK);
            assert_eq!(bind_int64(insert, 2, (row * 7919) % 1000), SQLITE_OK);
            assert_eq!(step(insert), SQLITE_DONE);
            assert_eq!(reset(insert), SQLITE_OK);
        }
        assert_eq!(finalize(insert), SQLITE_OK);
        run(c"COMMIT");

        let mut query = core::ptr::null_mut();
        let sql = c"SELECT count(*), sum(value), max(value), count(DISTINCT label), \
                    CAST(round(avg(sqrt(value)) * 1000) AS INTEGER) FROM samples";
        assert_eq!(
            prepare(
                database,
                sql.as_ptr(),
                -1,
                &mut query,
                core::ptr::null_mut()
            ),
            SQLITE_OK
        );
        assert_eq!(step(query), SQLITE_ROW);
        let values: Vec<i64> = (0..rows).map(|row| (row * 7919) % 1000).collect();
        assert_eq!(column_int64(query, 0), rows);
        assert_eq!(column_int64(query, 1), values.iter().sum::<i64>());
        assert_eq!(column_int64(query, 2), *values.iter().max().expect("rows"));
        assert_eq!(column_int64(query, 3), rows);
        let mean_root = values
            .iter()
            .map(|&value| (value as f64).sqrt())
            .sum::<f64>()
            / rows as f64;
        assert_eq!(column_int64(query, 4), (mean_root * 1000.0).round() as i64);
        assert_eq!(step(query), SQLITE_DONE);
        assert_eq!(finalize(query), SQLITE_OK);
        assert_eq!(close(database), SQLITE_OK);
    }
    // SAFETY: the database is closed; nothing of sqlite is in use.
    unsafe { linker.finalize() }.expect("finalizers run");
}

#[test]
fn what_dl_iterate_phdr_needs_is_reported() {
    let file = std::fs::read(LIBZ).expect("libz");
    let mut linker = host_linker();
    // SAFETY: Debian's libz is trusted code for this process.
    let id = unsafe { linker.load(LIBZ) }.expect("libz loads");
    let info = linker.object_info(id).expect("info");
    let phoff = u64::from_le_bytes(file[0x20..0x28].try_into().expect("e_phoff")) as usize;
    let phnum = u16::from_le_bytes([file[0x38], file[0x39]]);
    assert_eq!(info.program_header_count, phnum);
    let headers = info
        .program_headers
        .expect("the first PT_LOAD maps the program headers")
        .as_u64();
    // SAFETY: the table lies in libz's first, readable segment, which stays mapped
    // while `linker` lives.
    let mapped =
        unsafe { core::slice::from_raw_parts(headers as *const u8, usize::from(phnum) * 56) };
    assert_eq!(mapped, &file[phoff..phoff + usize::from(phnum) * 56]);
    let eh_frame_header = info.eh_frame_header.expect("PT_GNU_EH_FRAME").as_u64();
    // SAFETY: `.eh_frame_hdr` lies in a readable segment of libz, still mapped.
    let version = unsafe { *(eh_frame_header as *const u8) };
    assert_eq!(version, 1, ".eh_frame_hdr version");
    assert_eq!(
        info.load_bias,
        info.base.as_u64(),
        "libz's first segment is at link address 0"
    );
}

/// The protection `/proc/self/maps` shows for the page at `address` (`r-x`, ...).
fn mapped_protection(maps: &str, address: u64) -> Option<std::string::String> {
    maps.lines().find_map(|line| {
        let (range, rest) = line.split_once(' ')?;
        let (start, end) = range.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        (start <= address && address < end).then(|| rest[..3].into())
    })
}

#[test]
fn the_kernel_sees_w_xor_x_and_a_read_only_relro() {
    let bytes = std::fs::read(LIBZ).expect("libz");
    let file = crate::ObjectFile::parse(&bytes).expect("parses");
    let (relro_start, relro_length) = file.relro.expect("libz has PT_GNU_RELRO");
    let mut linker = host_linker();
    // SAFETY: Debian's libz is trusted code for this process.
    let id = unsafe { linker.load(LIBZ) }.expect("libz loads");
    let info = linker.object_info(id).expect("info");
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let page = crate::PAGE_SIZE as u64;
    let mut checked = 0;
    for segment in &file.segments {
        let first = segment.virtual_address / page;
        let last = (segment.virtual_address + segment.memory_size).div_ceil(page);
        for number in first..last {
            let link_address = number * page;
            let in_relro = link_address >= relro_start && link_address < relro_start + relro_length;
            let expected = match (segment.protection, in_relro) {
                (_, true) => "r--",
                (crate::Protection::Read, false) => "r--",
                (crate::Protection::ReadWrite, false) => "rw-",
                (crate::Protection::ReadExecute, false) => "r-x",
                (crate::Protection::Inaccessible, false) => "---",
            };
            let address = info.load_bias + link_address;
            assert_eq!(
                mapped_protection(&maps, address).as_deref(),
                Some(expected),
                "page {link_address:#x}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
    // Nothing in the whole reservation is writable and executable.
    for line in maps.lines() {
        let Some((range, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((start, _)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16).unwrap_or(0);
        if start >= info.base.as_u64() && start < info.base.as_u64() + file.image_span {
            assert!(
                !(rest.as_bytes()[1] == b'w' && rest.as_bytes()[2] == b'x'),
                "{line}"
            );
        }
    }
}
