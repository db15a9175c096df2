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
