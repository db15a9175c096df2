//! Debian's unmodified `libz.so.1`, loaded by Keel's ELF linker into this test
//! process and linked against Keel's libc **alone** (no glibc symbol is offered), its
//! files on Keel's VFS over ramfs: every import must resolve, a compress/uncompress
//! round trip must give the input back with zlib's crc32 equal to the host zlib's
//! (called through the libz crate-free C ABI: the host's own libz.so.1 is loaded by
//! glibc's dlopen for the comparison), and gzip files written and read through
//! `gzopen` go through Keel's `open`/`write`/`read`/`close` into the VFS.

use std::ffi::{CString, c_char, c_int, c_ulong, c_void};
use std::sync::Arc;

use keel_elf::{Linker, LinkerOptions, SymbolProvider, SymbolRequest};
use keel_hosted::StdParker;
use keel_hosted::elf::{FileSystem, HostMemory};
use keel_vfs::{Context, FixedClock, OpenFlags, Ramfs, Timespec, Vfs};

const LIBZ: &str = "/lib/x86_64-linux-gnu/libz.so.1";

struct TestPlatform;

thread_local! {
    static ERRNO: std::cell::UnsafeCell<i32> = const { std::cell::UnsafeCell::new(0) };
}

impl keel_libc::Platform for TestPlatform {
    fn errno_location(&self) -> *mut i32 {
        ERRNO.with(|errno| errno.get())
    }
    fn abort(&self, message: &str) -> ! {
        panic!("keel-libc abort: {message}")
    }
}

static PLATFORM: TestPlatform = TestPlatform;

/// Keel's VFS over ramfs, installed as the libc's files (once per test process).
fn files() -> &'static Context<StdParker> {
    static FILES: std::sync::OnceLock<&'static Context<StdParker>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let clock = Arc::new(FixedClock(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
        let context: &'static Context<StdParker> = Box::leak(Box::new(Context::new(vfs)));
        keel_libc::install(&PLATFORM, context);
        context
    })
}

type Compress = unsafe extern "C" fn(*mut u8, *mut c_ulong, *const u8, c_ulong, c_int) -> c_int;
type Uncompress = unsafe extern "C" fn(*mut u8, *mut c_ulong, *const u8, c_ulong) -> c_int;
type Crc32 = unsafe extern "C" fn(c_ulong, *const u8, u32) -> c_ulong;
type GzOpen = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void;
type GzWrite = unsafe extern "C" fn(*mut c_void, *const c_void, u32) -> c_int;
type GzRead = unsafe extern "C" fn(*mut c_void, *mut c_void, u32) -> c_int;
type GzClose = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The host zlib's crc32, through glibc's dlopen (the reference).
fn host_crc32(bytes: &[u8]) -> c_ulong {
    let path = CString::new(LIBZ).unwrap();
    // SAFETY: dlopen of the host's zlib, dlsym of its crc32 with its C signature.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!handle.is_null(), "the host's libz");
        let symbol = libc::dlsym(handle, c"crc32".as_ptr());
        let crc32: Crc32 = std::mem::transmute(symbol);
        crc32(0, bytes.as_ptr(), bytes.len() as u32)
    }
}

#[test]
fn debian_libz_runs_on_keels_libc_and_vfs() {
    if !std::path::Path::new(LIBZ).exists() {
        panic!("{LIBZ} is missing: apt-get install zlib1g");
    }
    let files = files();
    let exports = keel_libc::exports();
    let mut linker = Linker::new(
        HostMemory::new(),
        exports,
        FileSystem,
        LinkerOptions::default(),
    );
    // SAFETY: Debian's zlib, trusted code; its imports resolve to keel-libc.
    let loaded = unsafe { linker.load(LIBZ) };
    let id = match loaded {
        Ok(id) => id,
        Err(error) => panic!("loading libz against keel-libc: {error}"),
    };
    let symbol = |name: &str| {
        linker
            .symbol(id, name, None)
            .unwrap_or_else(|| panic!("libz has no {name}"))
            .as_u64() as usize
    };
    // SAFETY: zlib's documented signatures (zlib.h).
    let (compress2, uncompress, crc32, gzopen, gzwrite, gzread, gzclose) = unsafe {
        (
            std::mem::transmute::<usize, Compress>(symbol("compress2")),
            std::mem::transmute::<usize, Uncompress>(symbol("uncompress")),
            std::mem::transmute::<usize, Crc32>(symbol("crc32")),
            std::mem::transmute::<usize, GzOpen>(symbol("gzopen")),
            std::mem::transmute::<usize, GzWrite>(symbol("gzwrite")),
            std::mem::transmute::<usize, GzRead>(symbol("gzread")),
            std::mem::transmute::<usize, GzClose>(symbol("gzclose")),
        )
    };
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|index| format!("line {index} of the keel libz test\n").into_bytes())
        .take(300_000)
        .collect();

    // compress2 + uncompress: malloc/free (zcalloc) and the mem* functions.
    let mut compressed = vec![0u8; input.len() + 1024];
    let mut compressed_length = compressed.len() as c_ulong;
    // SAFETY: buffers and lengths as zlib.h says.
    let status = unsafe {
        compress2(
            compressed.as_mut_ptr(),
            &mut compressed_length,
            input.as_ptr(),
            input.len() as c_ulong,
            9,
        )
    };
    assert_eq!(status, 0, "compress2 (Z_OK)");
    assert!(
        (compressed_length as usize) < input.len() / 4,
        "it compressed"
    );
    let mut output = vec![0u8; input.len()];
    let mut output_length = output.len() as c_ulong;
    // SAFETY: as above.
    let status = unsafe {
        uncompress(
            output.as_mut_ptr(),
            &mut output_length,
            compressed.as_ptr(),
            compressed_length,
        )
    };
    assert_eq!(status, 0, "uncompress (Z_OK)");
    assert_eq!(output_length as usize, input.len());
    assert!(output == input, "the round trip gives the input back");
    // SAFETY: as above.
    let ours = unsafe { crc32(0, input.as_ptr(), input.len() as u32) };
    assert_eq!(ours, host_crc32(&input), "crc32 against the host's zlib");

    // gzip files through Keel's open/write/read/close on the VFS.
    let path = CString::new("/data.gz").unwrap();
    // SAFETY: as above; gzopen's mode string is "wb" / "rb".
    unsafe {
        let file = gzopen(path.as_ptr(), c"wb".as_ptr());
        assert!(!file.is_null(), "gzopen for writing");
        let written = gzwrite(file, input.as_ptr().cast(), input.len() as u32);
        assert_eq!(written as usize, input.len());
        assert_eq!(gzclose(file), 0, "gzclose after writing");
    }
    let stat = files
        .stat(b"/data.gz")
        .expect("the gzip file is in the VFS");
    assert!(
        stat.size > 10 && (stat.size as usize) < input.len(),
        "{stat:?}"
    );
    // Its bytes are a real gzip stream (the magic), written by Keel's write.
    let fd = files.open(b"/data.gz", OpenFlags::O_RDONLY, 0).unwrap();
    let mut magic = [0u8; 2];
    files.read(fd, &mut magic).unwrap();
    files.close(fd).unwrap();
    assert_eq!(magic, [0x1f, 0x8b]);
    let mut back = vec![0u8; input.len() + 16];
    // SAFETY: as above.
    unsafe {
        let file = gzopen(path.as_ptr(), c"rb".as_ptr());
        assert!(!file.is_null(), "gzopen for reading");
        let read = gzread(file, back.as_mut_ptr().cast(), back.len() as u32);
        assert_eq!(read as usize, input.len());
        assert_eq!(gzclose(file), 0);
    }
    assert!(
        back[..input.len()] == input[..],
        "gzread gives back what gzwrite wrote"
    );

    // Every import of libz resolved to keel-libc (the load would have failed
    // otherwise); check a few by address to be sure it is ours, not glibc's.
    let exports = keel_libc::exports();
    for name in ["malloc", "free", "open", "read", "write", "memcpy"] {
        let request = SymbolRequest {
            name,
            version: None,
            copy_source: false,
        };
        assert!(
            exports.resolve(&request).is_some(),
            "keel-libc exports {name}"
        );
    }
    // SAFETY: zlib has no finalizers of consequence.
    unsafe { linker.finalize() }.unwrap();
}
