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
}

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
        let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
        let context: &'static Context<StdParker> = Box::leak(Box::new(Context::new(vfs)));
        keel_libc::install(&PLATFORM, context);
        context
    })
}
