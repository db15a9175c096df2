//! The platform the host tests install: errno per thread, aborts as panics, the host's
//! clocks, and Keel's VFS over ramfs as the files.

#![allow(dead_code)]

use std::sync::Arc;

use keel_hosted::StdParker;
use keel_vfs::{Context, FixedClock, Ramfs, Timespec, Vfs};

pub struct TestPlatform;

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
    fn realtime(&self) -> Option<(i64, i64)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some((now.as_secs() as i64, i64::from(now.subsec_nanos())))
    }
    fn monotonic(&self) -> Option<(i64, i64)> {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
        Some((elapsed.as_secs() as i64, i64::from(elapsed.subsec_nanos())))
    }
    fn sleep(&self, nanos: u64) -> bool {
        std::thread::sleep(std::time::Duration::from_nanos(nanos));
        true
    }
    fn spawn(
        &self,
        entry: keel_libc::pthread::ThreadEntry,
        argument: *mut std::ffi::c_void,
    ) -> Result<u64, i32> {
        let argument = argument as usize;
        let handle = std::thread::spawn(move || {
            // SAFETY: pthread_create's contract: the entry takes this argument.
            unsafe { entry(argument as *mut std::ffi::c_void) as usize }
        });
        let id = NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        THREADS.lock().unwrap().insert(id, handle);
        Ok(id)
    }
    fn join(&self, handle: u64) -> Result<*mut std::ffi::c_void, i32> {
        let thread = THREADS.lock().unwrap().remove(&handle).ok_or(3)?;
        thread
            .join()
            .map(|value| value as *mut std::ffi::c_void)
            .map_err(|_| 22)
    }
    fn detach(&self, handle: u64) -> Result<(), i32> {
        THREADS.lock().unwrap().remove(&handle).map(drop).ok_or(3)
    }
}

/// Threads started by `spawn`, by handle.
static THREADS: std::sync::Mutex<std::collections::BTreeMap<u64, std::thread::JoinHandle<usize>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static NEXT_THREAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

static PLATFORM: TestPlatform = TestPlatform;

/// The calling thread's errno as keel-libc sees it.
pub fn errno() -> i32 {
    ERRNO.with(|errno| unsafe_read(errno.get()))
}

/// Sets it.
pub fn set_errno(value: i32) {
    // SAFETY: the thread's own errno slot.
    ERRNO.with(|errno| unsafe { *errno.get() = value });
}

fn unsafe_read(pointer: *mut i32) -> i32 {
    // SAFETY: the thread's own errno slot.
    unsafe { *pointer }
}

/// Keel's VFS over ramfs, installed as the libc's files (once per test binary).
pub fn files() -> &'static Context<StdParker> {
    static FILES: std::sync::OnceLock<&'static Context<StdParker>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let clock = Arc::new(FixedClock(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock.clone());
        let context: &'static Context<StdParker> = Box::leak(Box::new(Context::new(vfs)));
        // /dev as the kernel has it, and descriptors 0, 1 and 2 on its console, as a
        // process starts with them (sqlite refuses to put a database on 0-2).
        let devfs = keel_vfs::devfs::Devfs::new(Arc::new(Stderr), Arc::new(HostEntropy), clock);
        context.mkdir(b"/dev", 0o755).unwrap();
        context.mount(b"/dev", devfs).unwrap();
        for _ in 0..3 {
            context
                .open(b"/dev/console", keel_vfs::OpenFlags::O_RDWR, 0)
                .unwrap();
        }
        keel_libc::install(&PLATFORM, context);
        context
    })
}

/// The console: the test's stderr.
struct Stderr;

impl keel_vfs::devfs::Console for Stderr {
    fn write(&self, bytes: &[u8]) {
        use std::io::Write;
        let _ = std::io::stderr().write_all(bytes);
    }
}

/// `/dev/urandom`: the host's getrandom.
struct HostEntropy;

impl keel_vfs::devfs::Entropy for HostEntropy {
    fn fill(&self, buffer: &mut [u8]) -> bool {
        // SAFETY: a writable buffer of its length.
        let filled = unsafe { libc::getrandom(buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        filled == buffer.len() as isize
    }
}
