//! The kernel's side of `keel-libc`: its platform (errno per thread, aborting with a
//! crash report, the clock, sleeping and threads on the scheduler) and the file
//! context, installed once the VFS is up. Wiring only.
//!
//! - `errno`: one `int` per Keel thread, found by thread id in a table (allocated at
//!   a thread's first error, never freed yet: a thread's exit does not tell us).
//! - `abort` and the fortified functions' failures panic, so the kernel's panic
//!   handler prints the message, the registers and a symbolized backtrace and exits
//!   non-zero.
//! - The clock: `CLOCK_MONOTONIC` is the kernel's time since boot; there is no wall
//!   clock yet (no RTC driver), so `CLOCK_REALTIME`, `time` and `gettimeofday` fail
//!   with `ENOSYS`.
//! - Threads: `pthread_create` spawns a Keel thread (the scheduler places it), whose
//!   join handle waits in a table until `pthread_join` or `pthread_detach`.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, Ordering};

use keel_sched::{JoinHandle, SpawnOptions};

use crate::threads::{self, KernelParker};

/// One thread's errno.
struct ErrnoSlot(UnsafeCell<i32>);

// SAFETY: each slot is used only by its own thread (through the pointer it got).
unsafe impl Sync for ErrnoSlot {}
// SAFETY: as above.
unsafe impl Send for ErrnoSlot {}

/// errno slots by thread id. A spin lock held for a map lookup only.
static ERRNO: spin::Mutex<BTreeMap<u64, Box<ErrnoSlot>>> = spin::Mutex::new(BTreeMap::new());

/// Threads `pthread_create` started and nobody joined or detached yet.
static THREADS: spin::Mutex<BTreeMap<u64, JoinHandle<usize>>> = spin::Mutex::new(BTreeMap::new());
/// The next `pthread_t`.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

/// The kernel as keel-libc's platform.
struct KernelPlatform;

impl keel_libc::Platform for KernelPlatform {
    fn errno_location(&self) -> *mut i32 {
        let id = threads::scheduler().current_id().map_or(0, |id| id.get());
        let mut table = ERRNO.lock();
        let slot = table
            .entry(id)
            .or_insert_with(|| Box::new(ErrnoSlot(UnsafeCell::new(0))));
        slot.0.get()
    }

    fn abort(&self, message: &str) -> ! {
        panic!("libc: {message}")
    }

    fn monotonic(&self) -> Option<(i64, i64)> {
        let nanos = keel_arch_x86_64::time::now().as_nanos();
        Some((
            (nanos / 1_000_000_000) as i64,
            (nanos % 1_000_000_000) as i64,
        ))
    }

    fn sleep(&self, nanos: u64) -> bool {
        threads::scheduler().sleep(core::time::Duration::from_nanos(nanos));
        true
    }

    fn spawn(
        &self,
        entry: keel_libc::pthread::ThreadEntry,
        argument: *mut c_void,
    ) -> Result<u64, i32> {
        let argument = argument as usize;
        let spawned = threads::scheduler().spawn(SpawnOptions::new(), move || {
            // SAFETY: pthread_create's contract: `entry` takes this argument.
            unsafe { entry(argument as *mut c_void) as usize }
        });
        match spawned {
            Ok(handle) => {
                let id = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
                THREADS.lock().insert(id, handle);
                Ok(id)
            }
            // EAGAIN: no memory for another thread's stack.
            Err(_) => Err(11),
        }
    }

    fn join(&self, handle: u64) -> Result<*mut c_void, i32> {
        let thread = THREADS.lock().remove(&handle).ok_or(3)?;
        threads::scheduler()
            .join(thread)
            .map(|value| value as *mut c_void)
            .ok_or(22)
    }

    fn detach(&self, handle: u64) -> Result<(), i32> {
        THREADS.lock().remove(&handle).map(drop).ok_or(3)
    }

    fn current_thread(&self) -> u64 {
        threads::scheduler().current_id().map_or(0, |id| id.get())
    }

    fn yield_now(&self) {
        threads::scheduler().yield_now();
    }
}

static PLATFORM: KernelPlatform = KernelPlatform;

/// Installs the platform and the kernel's file context (after `files::init`).
pub fn init() {
    if let Some(files) = crate::files::context() {
        keel_libc::install(&PLATFORM, files);
    }
}

/// What the kernel exports to loaded objects: keel-libc with threads on the
/// scheduler's parker.
pub fn exports() -> keel_elf::ExportedSymbols {
    keel_libc::exports_with_threads::<KernelParker>()
}
