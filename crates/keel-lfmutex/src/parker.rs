//! The blocking interface: how a waiter sleeps and how it is woken.

use core::fmt;
use core::num::NonZeroU64;

/// The identity of a thread, as the locks record their owner: a non-zero `u64`
/// (0 encodes "no owner" in the mutex's `owner` field), unique among the threads that
/// are alive at the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadId(NonZeroU64);

impl ThreadId {
    /// Wraps a non-zero identity.
    pub const fn new(id: NonZeroU64) -> Self {
        Self(id)
    }

    /// The identity as a non-zero integer.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread {}", self.0)
    }
}

/// "Block this thread / wake that thread": the only thing the locks need from a
/// scheduler. Host threads (`keel_hosted::StdParker`), loom's model threads
/// (`LoomParker`, under `--cfg loom`) and Keel's own scheduler implement it.
///
/// Thread identity comes from [`Parker::current_id`] rather than from the handle
/// (std's `Thread` handle has no stable integer id), so the mutex can keep its owner
/// in one `AtomicU64`.
///
/// # Safety
/// Implementers must guarantee that:
/// - `unpark(h)`, called after or concurrently with `park()` by the thread that `h`
///   (obtained from `current()` on that thread) refers to, makes that `park` return,
///   and an `unpark` that comes before the `park` makes the next `park` return at once
///   (a wake-up token, like `std::thread::park` / `Thread::unpark`). `park` may also
///   return spuriously: callers always re-check their condition.
/// - `current_id()` returns the same value every time on one thread, and values that
///   differ between any two threads alive at the same time. The locks' mutual
///   exclusion for recursive locking depends on this.
pub unsafe trait Parker {
    /// What a waker needs to wake a thread.
    type Handle: Clone + Send + Sync + fmt::Debug;

    /// The handle of the calling thread.
    fn current() -> Self::Handle;

    /// The identity of the calling thread (see the trait's `# Safety`).
    fn current_id() -> ThreadId;

    /// Blocks the calling thread until it is unparked (or spuriously).
    fn park();

    /// Wakes the thread `handle` refers to, or makes its next `park` return at once.
    fn unpark(handle: &Self::Handle);

    /// Runs `section` without letting the calling thread be preempted, where the
    /// scheduler can promise that (the kernel masks interrupts; a preemption that
    /// became due meanwhile happens right after). The locks wrap in it the steps
    /// from giving the mutex away (a hand-off or an offer) to waking its new owner,
    /// so a waker preempted in between cannot leave that owner asleep until the
    /// waker runs again (OSv's `wake_with` runs with preemption off for the same
    /// reason). The default runs `section` as it is: host threads cannot be kept
    /// from preemption.
    #[inline]
    fn without_preemption<R>(section: impl FnOnce() -> R) -> R {
        section()
    }
}

/// Test-only: the host parker of `keel-hosted`, compiled into this crate's unit tests
/// from the same file (a dependency on `keel-hosted` would bring another copy of this
/// crate's `Parker` trait).
#[cfg(test)]
#[path = "../../keel-hosted/src/parker.rs"]
mod hosted_parker;
#[cfg(test)]
pub use hosted_parker::StdParker;

/// Blocks loom's model threads with `loom::thread::park` and
/// `loom::thread::Thread::unpark`, so a lost wake-up shows up as a loom deadlock.
#[cfg(loom)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LoomParker;

#[cfg(loom)]
mod loom_parker {
    use super::{LoomParker, NonZeroU64, Parker, ThreadId};
    use core::cell::Cell;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The next id; a plain (unmodelled) atomic: ids only need to be distinct.
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);

    loom::thread_local! {
        /// This model thread's id, 0 until first asked for.
        static CURRENT_ID: Cell<u64> = Cell::new(0);
    }

    // SAFETY: loom's park/unpark have token semantics (an unpark of a running thread
    // is remembered and consumed by its next park); ids are distinct and non-zero as
    // for `StdParker` (one counter, starting at 1, cached per model thread).
    unsafe impl Parker for LoomParker {
        type Handle = loom::thread::Thread;

        fn current() -> Self::Handle {
            loom::thread::current()
        }

        fn current_id() -> ThreadId {
            CURRENT_ID.with(|cached| {
                let mut id = cached.get();
                if id == 0 {
                    id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    cached.set(id);
                }
                ThreadId::new(NonZeroU64::new(id).expect("thread ids start at 1"))
            })
        }

        fn park() {
            loom::thread::park();
        }

        fn unpark(handle: &Self::Handle) {
            handle.unpark();
        }
    }
}
