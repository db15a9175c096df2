//! Keel's libc: the C ABI of glibc on x86-64, so that objects built with stock gcc
//! against glibc's headers (Debian's own libraries, unmodified) link and run in Keel,
//! whose kernel is their libc, as in OSv.
//!
//! Each function is an `extern "C"` Rust function with glibc's signature, struct
//! layouts and errno values. None is `#[no_mangle]`: [`exports`] gives the table of
//! names and symbol versions (`memcpy@GLIBC_2.14`, `malloc@GLIBC_2.2.5`, ...) that the
//! ELF linker (`keel-elf`) resolves loaded objects' imports against. So the kernel's
//! own symbols and, on the host, glibc's stay untouched, and host tests can load a real
//! Debian library against this libc inside an ordinary test process.
//!
//! # Modules
//! - [`string`]: `string.h` (`mem*` over `keel-mem`, `str*`), and `strerror`.
//! - [`malloc`]: `malloc`, `calloc`, `realloc`, `free`, `posix_memalign`,
//!   `aligned_alloc`, `memalign`, `malloc_usable_size`, over Rust's global allocator
//!   (the kernel heap in the guest), 16-byte aligned as glibc's.
//! - [`files`]: `open`, `read`, `write`, `close`, `lseek`, `pread`, `pwrite`, `stat`
//!   and friends, with their `*64` aliases, over a [`Files`] (Keel's VFS `Context`).
//! - [`stdlib`]: `qsort`, `bsearch`, the `strto*` family, `abs`, `rand`.
//! - [`time`]: `time`, `gettimeofday`, `clock_gettime`, `nanosleep`, `sleep`,
//!   `usleep`, `gmtime_r`/`localtime_r` (UTC), and `sysconf`, `uname`-free basics.
//! - [`pthread`]: threads through the platform, mutexes on keel-lfmutex
//!   ([`pthread::register`] adds them for the caller's parker).
//! - [`mman`]: `mmap` (anonymous, and private copies of files), `munmap`, `mremap`.
//! - [`dl`]: `dlopen`, `dlsym`, `dlclose`, `dlerror` through the platform's linker.
//! - [`math`]: `math.h` over the `libm` crate.
//! - [`errno`]: `__errno_location`, through the [`Platform`].
//! - [`process`]: `abort`, `__stack_chk_fail`, `__cxa_atexit`/`__cxa_finalize`,
//!   `atexit`, `getenv`, `getpid`.
//! - [`format`]: the `printf` family (`snprintf`, `vsnprintf` and the fortified `_chk`
//!   ones), with an x86-64 `va_list` reader.
//!
//! # The platform
//! What a libc needs from below (per-thread `errno`, aborting, the file context) comes
//! through [`install`]: the kernel installs its implementations at boot, a host test
//! its own.
//!
//! # Unsafe fence
//! The crate root denies `unsafe_code`. Every exported function takes raw pointers
//! from C, so the modules holding them allow it, each block with a `// SAFETY:`
//! comment stating what the C contract guarantees.

#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

#[allow(unsafe_code)]
pub mod dl;
#[allow(unsafe_code)]
pub mod errno;
mod exports;
#[allow(unsafe_code)]
pub mod files;
#[allow(unsafe_code)]
pub mod format;
#[allow(unsafe_code)]
pub mod malloc;
#[allow(unsafe_code)]
pub mod math;
#[allow(unsafe_code)]
pub mod mman;
#[allow(unsafe_code)]
pub mod process;
#[allow(unsafe_code)]
pub mod pthread;
#[allow(unsafe_code)]
pub mod stdlib;
#[allow(unsafe_code)]
pub mod string;
#[allow(unsafe_code)]
pub mod time;

pub use exports::{GLIBC_BASE_VERSION, exports, exports_with_threads};
pub use files::Files;

/// What the libc needs from the system under it.
pub trait Platform: Sync {
    /// The calling thread's `errno` (stable for the thread's life).
    fn errno_location(&self) -> *mut i32;
    /// Ends the program after `message` (`abort`, `__stack_chk_fail`): never returns.
    fn abort(&self, message: &str) -> !;
    /// The process id `getpid` reports.
    fn pid(&self) -> i32 {
        1
    }
    /// `getenv`'s variables, as NUL-terminated `NAME=value` strings.
    fn environment(&self) -> &[&'static [u8]] {
        &[]
    }
    /// `CLOCK_REALTIME` now, as (seconds, nanoseconds) since 1970; `None` if the
    /// platform has no wall clock (then the time calls fail with `ENOSYS`).
    fn realtime(&self) -> Option<(i64, i64)> {
        None
    }
    /// `CLOCK_MONOTONIC` now, as (seconds, nanoseconds) since some fixed point.
    fn monotonic(&self) -> Option<(i64, i64)> {
        None
    }
    /// Sleeps the calling thread for `nanos` nanoseconds; false if the platform cannot
    /// (then `nanosleep` fails with `ENOSYS`).
    fn sleep(&self, nanos: u64) -> bool {
        let _ = nanos;
        false
    }
    /// Starts a thread running `entry(argument)`; its handle (`pthread_t`), or an
    /// errno (the default: `EAGAIN`, no threads).
    fn spawn(
        &self,
        entry: pthread::ThreadEntry,
        argument: *mut core::ffi::c_void,
    ) -> Result<u64, i32> {
        let _ = (entry, argument);
        Err(11)
    }
    /// Waits for the thread `handle` to end; its result, or an errno (`ESRCH`).
    fn join(&self, handle: u64) -> Result<*mut core::ffi::c_void, i32> {
        let _ = handle;
        Err(3)
    }
    /// Lets the thread `handle` end without being joined.
    fn detach(&self, handle: u64) -> Result<(), i32> {
        let _ = handle;
        Err(3)
    }
    /// The calling thread's handle (`pthread_self`).
    fn current_thread(&self) -> u64 {
        0
    }
    /// Gives the CPU to another thread (`sched_yield`).
    fn yield_now(&self) {}
    /// `dlopen(path, flags)` (`None`: the program itself): a handle, or the message
    /// `dlerror` reports. The default has no linker.
    fn dlopen(&self, path: Option<&[u8]>, flags: i32) -> Result<usize, alloc::string::String> {
        let _ = (path, flags);
        Err("dlopen: this platform has no dynamic linker".into())
    }
    /// `dlsym(handle, name)`: the address, or the message.
    fn dlsym(&self, handle: usize, name: &[u8]) -> Result<usize, alloc::string::String> {
        let _ = (handle, name);
        Err("dlsym: this platform has no dynamic linker".into())
    }
    /// `dlclose(handle)`.
    fn dlclose(&self, handle: usize) -> Result<(), alloc::string::String> {
        let _ = handle;
        Err("dlclose: this platform has no dynamic linker".into())
    }
    /// Ends the program with `status` (`exit`, after its handlers ran). The default
    /// aborts, saying the status.
    fn exit(&self, status: i32) -> ! {
        let _ = status;
        self.abort("exit() called: this platform cannot end the program")
    }
}

/// The installed platform and files.
static PLATFORM: spin::Once<&'static dyn Platform> = spin::Once::new();
static FILES: spin::Once<&'static dyn Files> = spin::Once::new();

/// Installs the platform and the file context (once; later calls change nothing and
/// return false).
pub fn install(platform: &'static dyn Platform, files: &'static dyn Files) -> bool {
    let mut first = false;
    PLATFORM.call_once(|| {
        first = true;
        platform
    });
    FILES.call_once(|| files);
    first
}

/// The installed platform; aborting through nothing is impossible, so calls before
/// [`install`] panic with a clear message.
pub(crate) fn platform() -> &'static dyn Platform {
    *PLATFORM
        .get()
        .expect("keel-libc: a libc function ran before keel_libc::install")
}

/// The installed file context, if any.
pub(crate) fn files() -> Option<&'static dyn Files> {
    FILES.get().copied()
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(value: i32) {
    let location = platform().errno_location();
    #[allow(unsafe_code)]
    // SAFETY: the platform returns the calling thread's errno, valid for its life.
    unsafe {
        *location = value
    };
}
