//! The blocking interface: how a waiter sleeps and how it is woken.

use core::fmt;
#[cfg(loom)]
use core::num::NonZeroU64;

/// The identity of a thread, as the locks record their owner: `keel-types`'s one
/// thread id, the scheduler's own (0 encodes "no owner" in the mutex's `owner` field,
/// which the id's non-zero value leaves free). Unique among the threads that are alive
/// at the same time.
pub use keel_types::ThreadId;

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

    /// Where the calling thread runs, as a mutex records it beside its owner for
    /// owner-aware spinning: the CPU index in the kernel, any number that
    /// [`owner_is_running`](Parker::owner_is_running) understands elsewhere. Only a
    /// hint: the thread may move right after. The default is 0.
    #[inline]
    fn current_cpu_hint() -> u32 {
        0
    }

    /// Whether `owner`, which recorded `cpu_hint` (its
    /// [`current_cpu_hint`](Parker::current_cpu_hint)) when it took the mutex, is
    /// running right now on a CPU that the hypervisor has not preempted: the
    /// condition under which a locker may spin for a while instead of sleeping
    /// (Linux's `mutex_spin_on_owner` asks the same). Only a hint, read without
    /// synchronisation: a wrong answer costs time (a bounded spin, or a sleep that
    /// was not needed), never correctness. The default is `false`, where nothing
    /// tells: then waiters never spin.
    #[inline]
    fn owner_is_running(owner: ThreadId, cpu_hint: u32) -> bool {
        let _ = (owner, cpu_hint);
        false
    }

    /// Nanoseconds on a monotonic clock, for the mutex's eventual fairness: a waiter
    /// that loses an offered mutex to a barger is handed the mutex the next time it
    /// is popped only once it has waited [`FAIR_WAIT_NANOS`](crate::FAIR_WAIT_NANOS)
    /// since it first queued; before that it is offered the mutex again, so running
    /// lockers keep the mutex busy while it wakes. Read twice per wait, on the slow
    /// path only. The default, `None` (no clock), hands a waiter the mutex after its
    /// first lost offer.
    #[inline]
    fn fairness_clock_nanos() -> Option<u64> {
        None
    }
}

/// Which threads are running rather than parked, for parkers whose threads have no
/// scheduler to ask (host threads): a fixed table of slots, the slot of a thread
/// chosen by its id. A thread marks itself running when it first takes an id and
/// after every `park`, and parked just before it parks.
///
/// Two threads whose ids share a slot (more than [`RunningTable::SLOTS`] threads
/// alive) overwrite each other's entry; then [`is_running`](RunningTable::is_running)
/// may say `false` of a running thread, which only stops a spinner early. It never
/// says `true` of a thread that has marked itself parked and not running again: only
/// the thread itself writes its own id.
#[derive(Debug)]
pub struct RunningTable {
    slots: [core::sync::atomic::AtomicU64; RunningTable::SLOTS],
}

impl RunningTable {
    /// Number of slots.
    pub const SLOTS: usize = 256;

    /// A table in which no thread runs.
    pub const fn new() -> Self {
        Self {
            slots: [const { core::sync::atomic::AtomicU64::new(0) }; Self::SLOTS],
        }
    }

    fn slot(&self, id: ThreadId) -> &core::sync::atomic::AtomicU64 {
        // The remainder is below SLOTS, so it fits a usize.
        &self.slots[(id.get() % Self::SLOTS as u64) as usize]
    }

    /// The calling thread, `id`, runs.
    pub fn mark_running(&self, id: ThreadId) {
        self.slot(id)
            .store(id.get(), core::sync::atomic::Ordering::Relaxed);
    }

    /// The calling thread, `id`, is about to park.
    pub fn mark_parked(&self, id: ThreadId) {
        self.slot(id)
            .store(0, core::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `id` has marked itself running and not parked since (a snapshot).
    pub fn is_running(&self, id: ThreadId) -> bool {
        self.slot(id).load(core::sync::atomic::Ordering::Relaxed) == id.get()
    }
}

impl Default for RunningTable {
    fn default() -> Self {
        Self::new()
    }
}

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

        /// Always running: loom's threads are never preempted by anyone, and the
        /// models must explore the spinning path (one iteration under loom).
        fn owner_is_running(_owner: ThreadId, _cpu_hint: u32) -> bool {
            true
        }
    }
}
