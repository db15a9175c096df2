//! `keel-lfmutex`'s `Parker` on host threads.

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use keel_lfmutex::{Parker, RunningTable, ThreadId};

/// Blocks host threads with `std::thread::park` and `Thread::unpark`.
///
/// Thread ids come from a process-wide counter, assigned on first use per thread;
/// the counter is a plain `core` atomic on purpose: it is not part of any algorithm
/// the loom models check.
///
/// Owner-aware spinning: a thread counts as running from its first lock until it
/// parks, and again once `park` returns (a [`RunningTable`]). Linux does not tell a
/// process when it preempts one of its threads (as a hypervisor without steal time
/// does not tell a guest), so a thread that Linux has descheduled still counts as
/// running; the mutex's spin budget bounds what a spinner wastes on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdParker;

/// The next thread id to hand out; ids start at 1 (0 means "no owner").
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Which host threads are parked.
static RUNNING: RunningTable = RunningTable::new();

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
                RUNNING.mark_running(ThreadId::from_u64(id).expect("thread ids start at 1"));
            }
            ThreadId::from_u64(id).expect("thread ids start at 1")
        })
    }

    #[inline]
    fn park() {
        let id = Self::current_id();
        RUNNING.mark_parked(id);
        std::thread::park();
        RUNNING.mark_running(id);
    }

    #[inline]
    fn unpark(handle: &Self::Handle) {
        handle.unpark();
    }

    #[inline]
    fn owner_is_running(owner: ThreadId, _cpu_hint: u32) -> bool {
        RUNNING.is_running(owner)
    }

    /// `std::time::Instant`, as nanoseconds since the first call in the process.
    fn fairness_clock_nanos() -> Option<u64> {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let epoch = *EPOCH.get_or_init(std::time::Instant::now);
        Some(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}
