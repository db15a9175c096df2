//! The block/wake handshake on a thread's state word, public so that the loom models
//! in `loom-tests/` check this very code.
//!
//! A thread blocks on a condition (its park token, its sleep timer's fired flag, its
//! join target's termination): it marks itself [`WAITING`](state::WAITING) with
//! [`begin_wait`], re-checks the condition, and either takes the wait back with
//! [`cancel_wait`] or lets its CPU switch away. A waker publishes the condition and
//! then [`claim_waiting`]s the thread; only the claimer delivers it to a run queue.
//!
//! **Why nothing is lost.** This is the store-buffer pattern: the blocker stores its
//! state and loads the condition, the waker stores the condition and loads the state
//! (its compare-and-swap). Each side's store and load must be ordered, so that at
//! least one of them sees the other's store: either the blocker sees the condition
//! (and cancels), or the waker's compare-and-swap sees `WAITING` (and delivers).
//!
//! In the kernel and on the host that order comes from `SeqCst` accesses: the
//! blocker's `SeqCst` store (one locked exchange on x86-64) and the waker's `SeqCst`
//! condition store and compare-and-swap, all in the single total order. Under loom
//! (`--cfg loom`) the same steps use relaxed accesses with a `SeqCst` fence between
//! each side's store and load, which orders them just as strongly for this pattern:
//! loom models `SeqCst` fences exactly but treats `SeqCst` accesses as
//! acquire/release (its README), which would make it report this correct handshake
//! as a lost wake-up. (Outside loom the fences are not used: on x86-64 they add an
//! `mfence` where the `SeqCst` store already is one locked exchange. Three runs of
//! the hosted switch bench did not separate the two forms within their spread.)
//!
//! The `broken-handshake` feature (test-only) drops the blocker's ordering in both
//! forms (a relaxed store, no fence), and the loom models must then find the lost
//! wake-up.

use keel_sync::shim::{AtomicU32, Ordering};

/// Scheduling states of a thread (the value of its state word).
pub mod state {
    /// Running on its home CPU (it is that CPU's current thread).
    pub const RUNNING: u32 = 0;
    /// In its home CPU's run queue.
    pub const QUEUED: u32 = 1;
    /// Blocked (parked, sleeping, joining); only a wake-up makes it runnable.
    pub const WAITING: u32 = 2;
    /// Claimed by a waker (or a migration, or spawn) and on its way into a run queue.
    pub const WAKING: u32 = 3;
    /// Finished; never runs again.
    pub const TERMINATED: u32 = 4;
}

/// The blocking thread, on itself: marks it `WAITING`. The caller then re-checks its
/// condition: if it holds, it calls [`cancel_wait`]; else it switches away.
#[inline]
pub fn begin_wait(thread_state: &AtomicU32) {
    if cfg!(feature = "broken-handshake") {
        thread_state.store(state::WAITING, Ordering::Relaxed);
    } else if cfg!(loom) {
        thread_state.store(state::WAITING, Ordering::Relaxed);
        keel_sync::shim::fence(Ordering::SeqCst);
    } else {
        // A `SeqCst` store (one locked exchange on x86-64): as strong as the store
        // plus fence for this pattern (see the module docs).
        thread_state.store(state::WAITING, Ordering::SeqCst);
    }
}

/// The blocking thread, whose condition held at the re-check: back to `RUNNING`,
/// unless a waker claimed it meanwhile (then false: it is being delivered, and the
/// caller must let the scheduler take it in, which keeps it running).
#[inline]
pub fn cancel_wait(thread_state: &AtomicU32) -> bool {
    thread_state
        .compare_exchange(
            state::WAITING,
            state::RUNNING,
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// A waker, after publishing the condition: moves a `WAITING` thread to `WAKING`;
/// true if this caller did it, and so must deliver the thread.
#[inline]
pub fn claim_waiting(thread_state: &AtomicU32) -> bool {
    if cfg!(loom) {
        keel_sync::shim::fence(Ordering::SeqCst);
    }
    thread_state
        .compare_exchange(
            state::WAITING,
            state::WAKING,
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .is_ok()
}
