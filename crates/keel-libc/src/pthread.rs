//! POSIX threads on Keel: `pthread_create`/`join`/`detach`/`self` through the
//! [`Platform`](crate::Platform)'s threads (the kernel's scheduler), and mutexes on
//! `keel-lfmutex`'s lock-free mutex.
//!
//! # Mutexes
//! `pthread_mutex_t` has glibc's 40 bytes, and its static initializers work: all
//! zeros is a normal mutex (`PTHREAD_MUTEX_INITIALIZER`), and glibc's
//! `PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP` and `..._ERRORCHECK_...` set the kind
//! word at byte 16, which Keel reads there too. Keel's mutex (a `RawMutex`, with its
//! wait queue) does not fit in 40 bytes, so the first lock allocates it and publishes
//! it with a compare-and-swap in the first word (a loser frees its copy);
//! `pthread_mutex_destroy` frees it. Recursive mutexes count re-locks by their owner;
//! error-checking ones refuse a re-lock (`EDEADLK`) and an unlock by another thread
//! (`EPERM`), as glibc's.
//!
//! The functions are generic over the [`Parker`]: [`register`] exports the ones of the
//! caller's parker (the kernel's scheduler, or `StdParker` on the host).
//!
//! Not yet: condition variables, rwlocks, `pthread_once`, keys, attributes beyond
//! the stack size being ignored, `__thread` variables (they need the linker's TLS).
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own, so the
//! functions carry no `# Safety` section of their own.

#![allow(clippy::missing_safety_doc)]

use alloc::boxed::Box;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use keel_elf::ExportedSymbols;
use keel_lfmutex::{Parker, RawMutex};

use crate::exports::export;

/// `EINVAL`.
const EINVAL: c_int = 22;
/// `EBUSY`.
const EBUSY: c_int = 16;
/// `EDEADLK`.
const EDEADLK: c_int = 35;
/// `EPERM`.
const EPERM: c_int = 1;
/// `ENOMEM`.
const ENOMEM: c_int = 12;

/// `PTHREAD_MUTEX_NORMAL` (and `DEFAULT`; glibc's `ADAPTIVE_NP`, 3, behaves as it).
const NORMAL: u32 = 0;
/// `PTHREAD_MUTEX_RECURSIVE`.
const RECURSIVE: u32 = 1;
/// `PTHREAD_MUTEX_ERRORCHECK`.
const ERRORCHECK: u32 = 2;

/// A thread's entry, `void *(*)(void *)`.
pub type ThreadEntry = unsafe extern "C" fn(*mut c_void) -> *mut c_void;

/// `pthread_mutex_t` as Keel lays it out in glibc's 40 bytes.
#[repr(C)]
#[derive(Debug)]
pub struct PthreadMutex {
    /// The Keel mutex, allocated by the first lock (NULL before).
    inner: AtomicPtr<c_void>,
    /// Unused (glibc's `__count`/`__owner`).
    reserved: u64,
    /// The kind (glibc's `__kind`, at byte 16).
    kind: AtomicU32,
    /// Unused (the rest of glibc's 40 bytes).
    tail: [u32; 5],
}

const _: () = assert!(core::mem::size_of::<PthreadMutex>() == 40);

/// `pthread_mutexattr_t` (4 bytes in glibc): the kind.
#[repr(C)]
#[derive(Debug)]
pub struct PthreadMutexAttr {
    kind: u32,
}

/// The mutex behind a `pthread_mutex_t`.
struct Inner<P: Parker> {
    raw: RawMutex<P>,
    /// The owner's thread id (0: none), for recursive and error-checking mutexes.
    owner: AtomicU64,
    /// Re-locks by the owner of a recursive mutex.
    depth: AtomicU32,
}

/// The Keel mutex of `mutex`, allocating it on first use; NULL if out of memory.
///
/// # Safety
/// `mutex` is a valid `pthread_mutex_t` that only this parker's functions use.
unsafe fn inner<'a, P: Parker + 'static>(mutex: *mut PthreadMutex) -> Option<&'a Inner<P>> {
    // SAFETY: per the contract.
    let slot = unsafe { &(*mutex).inner };
    let mut current = slot.load(Ordering::Acquire);
    if current.is_null() {
        let fresh = Box::into_raw(Box::new(Inner::<P> {
            raw: RawMutex::new(),
            owner: AtomicU64::new(0),
            depth: AtomicU32::new(0),
        }))
        .cast::<c_void>();
        match slot.compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => current = fresh,
            Err(winner) => {
                // SAFETY: ours, never published.
                drop(unsafe { Box::from_raw(fresh.cast::<Inner<P>>()) });
                current = winner;
            }
        }
    }
    // SAFETY: published by the CAS above (here or in another thread), freed only by
    // destroy, which C forbids while the mutex is in use.
    Some(unsafe { &*current.cast::<Inner<P>>() })
}

/// The calling thread's id (never 0).
fn me<P: Parker>() -> u64 {
    P::current_id().get()
}

/// `int pthread_mutex_init(pthread_mutex_t *, const pthread_mutexattr_t *)`.
pub unsafe extern "C" fn mutex_init(
    mutex: *mut PthreadMutex,
    attributes: *const PthreadMutexAttr,
) -> c_int {
    let kind = if attributes.is_null() {
        NORMAL
    } else {
        // SAFETY: C's contract.
        unsafe { (*attributes).kind }
    };
    // SAFETY: C's contract: `mutex` is writable.
    unsafe {
        mutex.write(PthreadMutex {
            inner: AtomicPtr::new(core::ptr::null_mut()),
            reserved: 0,
            kind: AtomicU32::new(kind),
            tail: [0; 5],
        });
    }
    0
}

/// `int pthread_mutex_destroy(pthread_mutex_t *)`: `EBUSY` if locked.
pub unsafe extern "C" fn mutex_destroy<P: Parker + 'static>(mutex: *mut PthreadMutex) -> c_int {
    // SAFETY: C's contract.
    let slot = unsafe { &(*mutex).inner };
    let current = slot.load(Ordering::Acquire);
    if current.is_null() {
        return 0;
    }
    // SAFETY: published by `inner`.
    let keel = unsafe { &*current.cast::<Inner<P>>() };
    if keel.raw.is_locked() {
        return EBUSY;
    }
    slot.store(core::ptr::null_mut(), Ordering::Release);
    // SAFETY: C forbids using a mutex while it is destroyed; ours to free.
    drop(unsafe { Box::from_raw(current.cast::<Inner<P>>()) });
    0
}

/// Takes the mutex once `raw` is ours (`raw_lock` locks it, or tries).
///
/// # Safety
/// As for `inner`.
unsafe fn lock_with<P: Parker + 'static>(mutex: *mut PthreadMutex, wait: bool) -> c_int {
    // SAFETY: C's contract.
    let Some(keel) = (unsafe { inner::<P>(mutex) }) else {
        return ENOMEM;
    };
    // SAFETY: C's contract.
    let kind = unsafe { (*mutex).kind.load(Ordering::Relaxed) } & 3;
    let me = me::<P>();
    let tracks_owner = kind == RECURSIVE || kind == ERRORCHECK;
    if tracks_owner && keel.owner.load(Ordering::Relaxed) == me {
        if kind == RECURSIVE {
            keel.depth.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        return if wait { EDEADLK } else { EBUSY };
    }
    if wait {
        keel.raw.lock();
    } else if !keel.raw.try_lock() {
        return EBUSY;
    }
    keel.owner.store(me, Ordering::Relaxed);
    0
}

/// `int pthread_mutex_lock(pthread_mutex_t *)`.
pub unsafe extern "C" fn mutex_lock<P: Parker + 'static>(mutex: *mut PthreadMutex) -> c_int {
    // SAFETY: C's contract.
    unsafe { lock_with::<P>(mutex, true) }
}

/// `int pthread_mutex_trylock(pthread_mutex_t *)`.
pub unsafe extern "C" fn mutex_trylock<P: Parker + 'static>(mutex: *mut PthreadMutex) -> c_int {
    // SAFETY: C's contract.
    unsafe { lock_with::<P>(mutex, false) }
}

/// `int pthread_mutex_unlock(pthread_mutex_t *)`.
pub unsafe extern "C" fn mutex_unlock<P: Parker + 'static>(mutex: *mut PthreadMutex) -> c_int {
    // SAFETY: C's contract.
    let Some(keel) = (unsafe { inner::<P>(mutex) }) else {
        return EPERM;
    };
    // SAFETY: C's contract.
    let kind = unsafe { (*mutex).kind.load(Ordering::Relaxed) } & 3;
    if kind == RECURSIVE || kind == ERRORCHECK {
        if keel.owner.load(Ordering::Relaxed) != me::<P>() {
            return EPERM;
        }
        if kind == RECURSIVE && keel.depth.load(Ordering::Relaxed) > 0 {
            keel.depth.fetch_sub(1, Ordering::Relaxed);
            return 0;
        }
    }
    keel.owner.store(0, Ordering::Relaxed);
    match keel.raw.unlock() {
        Ok(()) => 0,
        Err(_) => EPERM,
    }
}

/// `int pthread_mutexattr_init(pthread_mutexattr_t *)`.
pub unsafe extern "C" fn mutexattr_init(attributes: *mut PthreadMutexAttr) -> c_int {
    // SAFETY: C's contract.
    unsafe { attributes.write(PthreadMutexAttr { kind: NORMAL }) };
    0
}

/// `int pthread_mutexattr_destroy(pthread_mutexattr_t *)`.
pub extern "C" fn mutexattr_destroy(_attributes: *mut PthreadMutexAttr) -> c_int {
    0
}

/// `int pthread_mutexattr_settype(pthread_mutexattr_t *, int)`.
pub unsafe extern "C" fn mutexattr_settype(
    attributes: *mut PthreadMutexAttr,
    kind: c_int,
) -> c_int {
    if !(0..=3).contains(&kind) {
        return EINVAL;
    }
    // SAFETY: C's contract.
    unsafe { (*attributes).kind = kind as u32 };
    0
}

/// `int pthread_create(pthread_t *, const pthread_attr_t *, entry, void *)`.
pub unsafe extern "C" fn create(
    thread: *mut u64,
    _attributes: *const c_void,
    entry: ThreadEntry,
    argument: *mut c_void,
) -> c_int {
    match crate::platform().spawn(entry, argument) {
        Ok(handle) => {
            // SAFETY: C's contract.
            unsafe { *thread = handle };
            0
        }
        Err(errno) => errno,
    }
}

/// `int pthread_join(pthread_t, void **)`.
pub unsafe extern "C" fn join(thread: u64, result: *mut *mut c_void) -> c_int {
    match crate::platform().join(thread) {
        Ok(value) => {
            if !result.is_null() {
                // SAFETY: C's contract.
                unsafe { *result = value };
            }
            0
        }
        Err(errno) => errno,
    }
}

/// `int pthread_detach(pthread_t)`.
pub extern "C" fn detach(thread: u64) -> c_int {
    match crate::platform().detach(thread) {
        Ok(()) => 0,
        Err(errno) => errno,
    }
}

/// `pthread_t pthread_self(void)`.
pub extern "C" fn current() -> u64 {
    crate::platform().current_thread()
}

/// `int pthread_equal(pthread_t, pthread_t)`.
pub extern "C" fn equal(a: u64, b: u64) -> c_int {
    c_int::from(a == b)
}

/// `int sched_yield(void)`.
pub extern "C" fn yield_now() -> c_int {
    crate::platform().yield_now();
    0
}

/// Adds the thread functions, with mutexes over parker `P`, to the export table.
pub fn register<P: Parker + 'static>(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 16] = [
        ("pthread_mutex_init", mutex_init as *const () as usize),
        (
            "pthread_mutex_destroy",
            mutex_destroy::<P> as *const () as usize,
        ),
        ("pthread_mutex_lock", mutex_lock::<P> as *const () as usize),
        (
            "pthread_mutex_trylock",
            mutex_trylock::<P> as *const () as usize,
        ),
        (
            "pthread_mutex_unlock",
            mutex_unlock::<P> as *const () as usize,
        ),
        (
            "pthread_mutexattr_init",
            mutexattr_init as *const () as usize,
        ),
        (
            "pthread_mutexattr_destroy",
            mutexattr_destroy as *const () as usize,
        ),
        (
            "pthread_mutexattr_settype",
            mutexattr_settype as *const () as usize,
        ),
        ("pthread_create", create as *const () as usize),
        ("pthread_join", join as *const () as usize),
        ("pthread_detach", detach as *const () as usize),
        ("pthread_self", current as *const () as usize),
        ("pthread_equal", equal as *const () as usize),
        ("sched_yield", yield_now as *const () as usize),
        // glibc 2.34 moved these into libc proper with new versions; the names mean
        // the same in every version.
        (
            "__pthread_mutex_lock",
            mutex_lock::<P> as *const () as usize,
        ),
        (
            "__pthread_mutex_unlock",
            mutex_unlock::<P> as *const () as usize,
        ),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
