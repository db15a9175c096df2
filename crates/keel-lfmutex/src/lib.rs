//! OSv's lock-free mutex in Rust, with the blocking primitives built on it.
//!
//! - [`RawMutex`]: a recursive, blocking mutex whose lock and unlock paths are
//!   lock-free: an atomic `count` of lockers, a lock-free multi-producer
//!   single-consumer queue of wait records ([`queue::MpscQueue`]) and the
//!   *responsibility hand-off* of Gidenstam & Papatriantafilou ("LFTHREADS", 2007),
//!   following OSv's `lockfree::mutex` (`core/lfmutex.cc`).
//! - [`Mutex`] / [`MutexGuard`] (exclusive `&mut T`, not recursive) and
//!   [`ReentrantMutex`] (recursive, `&T`) on top of it.
//! - [`Condvar`] with *wait morphing* (OSv's `send_lock`): a notify moves a waiter
//!   from the condvar's queue onto the mutex's queue instead of waking it.
//! - [`Semaphore`] and [`RwLock`] (writer-preferring, batched reader admission),
//!   both on `Mutex` + `Condvar`.
//!
//! Everything blocks through the [`Parker`] trait ("park this thread / unpark that
//! one" plus a thread identity, and two hints for spinning), so the same code runs on
//! host threads (`keel_hosted::StdParker`), under loom (`LoomParker`, `--cfg loom`)
//! and on Keel's scheduler. **Waiters never spin without bound**: a locker that finds
//! the mutex held spins only while the owner runs on a CPU the hypervisor has not
//! preempted, and for at most about one sleep/wake transfer (see *Bounded,
//! owner-aware spinning* below); otherwise it sleeps, so a descheduled lock holder (a
//! preempted vCPU) costs the others nothing but the wait. All atomics and cells come
//! from [`keel_sync::shim`], so `loom-tests/` model-checks this code unchanged. This
//! is the blocking counterpart of `keel_sync::SpinLock`, which is for short
//! non-sleeping sections only.
//!
//! # The algorithm
//!
//! One 64-bit lock word holds `count` (how many threads hold the mutex or are
//! committed to waiting for it), an `IN_FLIGHT` bit and a hand-off *token*; next to
//! it sits the wait queue.
//!
//! `lock` does `fetch_add(1)` on the count. If the old word was 0 the mutex is ours.
//! Otherwise we are *committed*: we push a wait record (on our own stack) onto the
//! wait queue and park until someone wakes it, either *handing* us the mutex or
//! *offering* it (below).
//!
//! `unlock` does `fetch_sub(1)`. If the old count was 1 nobody was waiting: done.
//! Otherwise some locker is committed, and the unlocker pops the oldest record and
//! wakes it. **The race:** the committed locker may have incremented the count but
//! not pushed its record yet, so the pop finds nothing. The unlocker must not wait
//! for the push (that would make unlock blocking, and the locker may be preempted
//! for a long time), and must not just return (the locker would sleep forever: a
//! lost wake-up; the `broken-lfmutex` feature does exactly that, and the loom models
//! catch it). Instead it *hands off the responsibility*: it publishes a token and
//! checks the queue once more. Every locker, after pushing, looks for a token; if
//! one is there and the queue is non-empty, it claims the token with a
//! compare-and-swap and does the unlocker's job (pops the oldest record and hands it
//! the mutex; that may be its own record). If the unlocker's re-check finds the
//! queue non-empty, it tries to take its own token back and loop; if the token is
//! gone, its taker is responsible. The ordering argument (the store-buffer pattern
//! "publish token, then read queue" against "push, then read token") is made with
//! read-modify-writes on the queue head, see [`MpscQueue`](queue::MpscQueue)'s
//! `push_list`, so it holds under Release/Acquire alone, which loom models exactly.
//! Up to here this is OSv's `lockfree::mutex`.
//!
//! **Offer, not hand-over (Keel's change).** OSv's unlock hands the mutex straight
//! to the oldest waiter, which is asleep: until it has been woken and scheduled,
//! nobody can run a critical section, and every running thread that locks queues
//! behind it. On an oversubscribed machine that is a lock convoy (papers/0003: 0.26–
//! 0.39x of `std::sync::Mutex` with 8 and 16 threads on 2 cores). Keel's unlock
//! instead *offers* the mutex: it pops the oldest waiter, sets `IN_FLIGHT`,
//! publishes a token (nobody holds the mutex while a token is out) and wakes the
//! waiter. A running `lock` that finds a token takes it (one compare-and-swap that
//! also counts it in) and goes on without sleeping; later unlocks, seeing
//! `IN_FLIGHT`, just publish a fresh token (one `fetch_add` that also counts them
//! out) instead of waking a second waiter. The woken waiter clears `IN_FLIGHT` and
//! takes the token if it is still there, in one `fetch_and`. If a running thread
//! got there first, the waiter queues again at the tail, behind the waiters that
//! queued after it (the queue has one consumer, and the loser is not it; the unit
//! test `offer_loser_requeues_at_the_tail` records that order).
//!
//! **Eventual fairness.** A waiter that loses an offer once it has waited
//! [`FAIR_WAIT_NANOS`] (0.5 ms, after `parking_lot`'s forced fair unlocks) since it
//! first queued is marked so that whoever pops it next must *hand* it the mutex: no
//! barger passes it over again in the same `lock`, and its wait is bounded by 0.5 ms
//! plus two passes of the queue. A waiter that loses sooner is offered the mutex
//! again when popped. The clock is [`Parker::fairness_clock_nanos`]; without one (the
//! default, and under loom) a waiter is handed the mutex after its first lost offer.
//! Handing over at every lost offer, as the first version did, left the mutex idle
//! while the handed waiter woke up; in the guest with long critical sections that
//! cost up to 3x in throughput once locking itself became cheap (papers/0012).
//! Wait-morphed condition-variable waiters are always handed the mutex. The feature
//! `fifo-lfmutex` restores OSv's strict hand-over for experiments, and
//! `broken-lfmutex-offer` breaks the offer path for the loom models to catch.
//!
//! **Bounded, owner-aware spinning (Keel's change, the default).** With waiters that
//! never spin, each time the mutex moves to a thread that has gone to sleep costs a
//! sleep and a wake-up (together 0.7–0.8 µs of a bench round on Linux host threads,
//! papers/0006), which kept this mutex behind `parking_lot`. OSv's rule exists for
//! the opposite case: a spinning waiter whose lock holder has lost its CPU burns its
//! own time for nothing (the ticket spinlock collapsed in 14 of 19 contended guest
//! runs, papers/0006). So a `lock` that finds the mutex held first watches the lock
//! word and takes the mutex if it becomes free or is put on offer, but
//! - only while the owner is running: the mutex records the owner's CPU beside its
//!   id ([`Parker::current_cpu_hint`]), and each look asks
//!   [`Parker::owner_is_running`], which in the kernel is "does that CPU run that
//!   thread, and has the hypervisor not preempted it" (KVM's steal-time flag; TCG
//!   offers none), as Linux's `mutex_spin_on_owner` asks `owner_on_cpu` and
//!   `vcpu_is_preempted`; on host threads, "has it not parked"; the default answer
//!   is no, so a parker that cannot tell never spins;
//! - and for at most the mutex's spin limit, in looks at the lock word: at most 32
//!   (0.5–0.7 µs on the build machine, under one sleep/wake transfer), adapting per
//!   mutex as glibc's adaptive mutex does, in the direction the evidence points: a
//!   spin that got the mutex raises the limit by a quarter, one that ran out halves
//!   it (to no fewer than 2 looks). Under loom the limit is one look.
//!
//! A spinner has not counted itself in, so the lock word and the queue never see it;
//! it takes the mutex only with the same read-modify-writes as `try_lock` (the free
//! word from 0 to 1, or an offered token, counting itself in), which is why the
//! algorithm's argument is unchanged. The feature `strict-lfmutex` restores OSv's
//! waiters that never spin, for experiments, and `broken-lfmutex-spin` breaks the
//! spinner's count-in for the loom model `lfmutex_spin` to catch.
//!
//! **Why a token and not a flag:** a locker may read an old token, be preempted,
//! and resume after that hand-off was resolved and a *different* unlock published
//! another one. With a plain flag its compare-and-swap would succeed on the new
//! hand-off although its view (queue non-empty) belongs to the old one (ABA). Each
//! hand-off therefore carries a fresh number from the per-mutex `sequence` (OSv's
//! choice; G&P use per-processor numbers), 32 bits wrapping and skipping 0, so a
//! stale claim fails unless a locker sleeps through 2³² hand-offs.
//!
//! **Single consumer:** the queue allows one `pop` at a time. Pops happen in an
//! unlock with `count > 1` (only the holder unlocks, and a committed locker keeps
//! `count > 0`, so no second holder appears until someone is woken or a token is
//! claimed) and by the taker of a token (which the unlocker gave up, and which only
//! one thread can claim); each passes the role on through a Release/Acquire edge.
//!
//! **Recursion:** `owner` holds the holder's [`ThreadId`] (from [`Parker::current_id`])
//! and `depth` the recursion depth; `lock` by the owner only increments `depth`.
//! The owner is cleared *before* the releasing `fetch_sub`, so a later `lock` by the
//! same thread cannot mistake a stale owner for recursion. [`Mutex`] refuses
//! recursion (its guard is `&mut T`); [`ReentrantMutex`] allows it (`&T`).
//!
//! Each atomic field documents its encoding and orderings where it is declared
//! ([`RawMutex`], [`queue::MpscQueue`], [`Condvar`]).
//!
//! `unsafe` is confined to the wait records (raw pointers to stack records linked
//! into the queues) and the data cells of the guards; every block says what it
//! relies on.
#![no_std]
// Unsafe code only in the modules marked `allow(unsafe_code)` below, each block with
// its `SAFETY:` argument.
#![deny(unsafe_code)]

#[cfg(any(test, loom))]
extern crate std;

#[allow(unsafe_code)]
mod condvar;
#[allow(unsafe_code)]
mod mutex;
#[cfg(all(test, not(loom), not(feature = "fifo-lfmutex")))]
#[allow(unsafe_code)]
mod order_tests;
#[allow(unsafe_code)]
mod parker;
#[allow(unsafe_code)]
pub mod queue;
#[allow(unsafe_code)]
mod raw;
#[allow(unsafe_code)]
mod rwlock;
mod semaphore;
#[cfg(all(test, not(loom)))]
#[allow(unsafe_code)]
mod test_parker;

pub use condvar::Condvar;
pub use mutex::{Mutex, MutexGuard, ReentrantMutex, ReentrantMutexGuard};
#[cfg(loom)]
pub use parker::LoomParker;
pub use parker::{Parker, RunningTable, ThreadId};
pub use raw::{FAIR_WAIT_NANOS, RawMutex, UnlockError};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use semaphore::Semaphore;

/// Whether the calling thread is unwinding inside a loom model.
///
/// Guards skip their unlock then: loom unwinds the threads of an execution that has
/// already failed (a reported deadlock, for instance), and touching loom objects at
/// that point panics again and aborts the test process. Always `false` outside loom.
#[inline(always)]
pub(crate) fn unwinding_under_loom() -> bool {
    #[cfg(loom)]
    {
        std::thread::panicking()
    }
    #[cfg(not(loom))]
    {
        false
    }
}
