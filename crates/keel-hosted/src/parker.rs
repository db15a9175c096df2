//! `keel-lfmutex`'s `Parker` on host threads.
//!
//! `keel-lfmutex`'s own unit tests include this very file (`#[path]`), because a crate's
//! unit tests cannot use a dependency that depends on the crate itself (its `Parker`
//! would be another copy of the trait). So this file names the trait and `ThreadId`
//! through `super`, which both includers provide.

/// Blocks host threads with `std::thread::park` and `Thread::unpark`.
///
/// Thread ids come from a process-wide counter, assigned on first use per thread;
/// the counter is a plain `core` atomic on purpose: it is not part of any algorithm
/// the loom models check.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdParker;

mod std_parker {
    use super::super::{Parker, ThreadId};
    use super::StdParker;
    use core::cell::Cell;
    use core::num::NonZeroU64;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// The next thread id to hand out; ids start at 1 (0 means "no owner").
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);

    std::thread_local! {
        /// This thread's id, 0 until first asked for.
        static CURRENT_ID: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: std documents that `unpark` makes a concurrent or later `park` of that
    // thread return (a token), and allows spurious `park` returns. Ids come from one
    // counter incremented with an RMW, so they are distinct, non-zero (starting at 1,
    // 2⁶⁴ threads never happen) and fixed per thread by the thread-local cache.
    unsafe impl Parker for StdParker {
        type Handle = std::thread::Thread;

        #[inline]
        fn current() -> Self::Handle {
            std::thread::current()
        }

        #[inline]
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

        #[inline]
        fn park() {
            std::thread::park();
        }

        #[inline]
        fn unpark(handle: &Self::Handle) {
            handle.unpark();
        }
    }
}
