//! Threads: the shared per-thread record, its handle, and join handles.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::cell::{Cell, UnsafeCell};
use core::fmt;

use intrusive_collections::{LinkedListLink, RBTreeLink};
use keel_sync::SpinLock;
use keel_sync::shim::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch::StackMemory;
use crate::policy::Accounting;
use crate::queue::{RunKey, TimerKey};
use crate::wakeup::{Linked, WakeLink};
use crate::{CpuId, ThreadId};

pub(crate) use crate::handshake::state;

/// Everything the scheduler knows about one thread; shared through [`Thread`].
pub(crate) struct ThreadInner {
    pub(crate) id: ThreadId,
    /// One of [`state`]'s values. Transitions: `WAITING -> WAKING` only by a
    /// waker's compare-and-swap (the winner alone delivers the thread); all other
    /// transitions are made by the thread's home CPU. The blocking thread's
    /// `WAITING` store and the waker's CAS are ordered with the condition re-check
    /// (see [`crate::handshake`]).
    pub(crate) state: AtomicU32,
    /// The park token: set (`SeqCst`) by `unpark`, consumed (`Acquire` swap) by
    /// `park`, so whatever the unparker wrote before `unpark` is visible after `park`.
    pub(crate) token: AtomicBool,
    /// The CPU that owns the thread (`CpuId` index). Changed only by that CPU when it
    /// migrates a queued thread, before publishing it (`Release`) to the new CPU's
    /// wake-up queue; read (`Acquire`) by wakers to route wake-ups.
    pub(crate) home_cpu: AtomicUsize,
    /// Never migrated by the balancer.
    pub(crate) pinned: bool,
    /// The number of the current (or next) sleep; bumped by the thread when a sleep
    /// ends, so timer entries of older generations are stale. Written only by the
    /// thread; `Relaxed` (the entry was pushed after the write, by the same thread,
    /// and is fired on the CPU it was pushed on, or after a migration that
    /// synchronised through a wake-up queue).
    pub(crate) sleep_generation: AtomicU64,
    /// `generation + 1` of the last sleep whose timer fired: the sleeper waits for
    /// this (OSv waits on its timer's own expired flag), not for its CPU's clock to
    /// pass the deadline, which a CPU other than the timer's may read behind.
    /// `fetch_max` by the firing CPU (SeqCst, before its claim of the thread), SeqCst
    /// loads by the sleeper's re-check: pairs like any waker's condition.
    pub(crate) sleep_fired: AtomicU64,
    /// The saved stack pointer while the thread is not running. Accessed only by the
    /// home CPU (and by the context switch on it).
    pub(crate) context: UnsafeCell<usize>,
    /// Policy state; accessed only by the home CPU.
    pub(crate) accounting: UnsafeCell<Accounting>,
    /// The closure to run; taken by the thread itself when it first runs.
    pub(crate) entry: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    /// The thread waiting in `join`, woken at exit. Taken only with interrupts
    /// masked: the exiting thread takes it masked, so a joiner preempted while
    /// holding it would make the exit spin forever on a single CPU.
    pub(crate) joiner: SpinLock<Option<Thread>>,
    /// The thread pointer (TLS) to install when it runs; 0 for none.
    pub(crate) thread_pointer: u64,
    /// Its place in a CPU's wake-up queue (see `wakeup`): a thread is pushed only by
    /// whoever moved it to `WAKING` (or by its home CPU migrating or spawning it, also
    /// in `WAKING`), and leaves `WAKING` only after that queue was drained, so it is in
    /// at most one queue at a time.
    pub(crate) wake_link: WakeLink,
    /// Its place in its home CPU's run queue (ordered policies: a tree keyed on
    /// `run_key`; FIFO: a list); see `queue`. Touched only by that CPU, with
    /// interrupts masked, while the thread is `QUEUED` there.
    pub(crate) run_link: RBTreeLink,
    pub(crate) fifo_link: LinkedListLink,
    pub(crate) run_key: Cell<RunKey>,
    /// Its place in the timer queue of the CPU it last began a sleep on, keyed on
    /// `timer_key`; touched only by that CPU with interrupts masked, from the sleep's
    /// start until the entry fires (see `queue`).
    pub(crate) timer_link: RBTreeLink,
    pub(crate) timer_key: Cell<TimerKey>,
    /// While the thread is blocked (switched out, not runnable): the handle its CPU
    /// ran it with, kept here instead of dropped, so that a wake-up on the same CPU
    /// takes it instead of cloning the waker's handle (two locked reference-count
    /// operations per block/wake saved). Touched only by the thread's home CPU with its
    /// state borrowed (see `Scheduler::spare_of`); empty whenever the thread is queued or
    /// running (`make_runnable` takes it), so it never outlives the thread's wait. A
    /// thread blocked forever keeps itself alive through it.
    pub(crate) spare: UnsafeCell<Option<Thread>>,
    /// The stack; freed with the last handle, never while the thread runs (the CPU
    /// holds a handle of its current thread until it has switched away).
    pub(crate) _stack: Box<dyn StackMemory>,
}

// SAFETY: the `UnsafeCell` fields are only accessed by the thread's home CPU with
// interrupts masked (`context`, `accounting`, `spare`) or by the thread itself
// (`entry`); the
// queue links and keys (`Cell`s inside) only by the CPU whose run or timer queue
// holds the thread, with interrupts masked (see `queue`); and
// ownership moves between CPUs only through the wake-up queues (Release/Acquire);
// every other field is atomic or a lock. The boxed closure and stack are `Send`.
unsafe impl Send for ThreadInner {}
// SAFETY: as for `Send`: shared access from other CPUs touches only atomics and the
// joiner lock.
unsafe impl Sync for ThreadInner {}

impl Linked for ThreadInner {
    fn wake_link(&self) -> &WakeLink {
        &self.wake_link
    }
}

/// A handle to a thread: cheap to clone; used to [`unpark`](crate::Scheduler::unpark)
/// it. Keeps the thread's record and stack alive.
#[derive(Clone)]
pub struct Thread {
    pub(crate) inner: Arc<ThreadInner>,
}

impl Thread {
    /// The thread's id.
    pub fn id(&self) -> ThreadId {
        self.inner.id
    }

    /// The CPU that currently owns the thread (it may change unless pinned).
    pub fn cpu(&self) -> CpuId {
        CpuId::new(self.inner.home_cpu.load(Ordering::Relaxed))
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == state::TERMINATED
    }

    /// Whether both handles name the same thread.
    pub fn ptr_eq(&self, other: &Thread) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread")
            .field("id", &self.inner.id)
            .field("state", &self.inner.state.load(Ordering::Relaxed))
            .field("cpu", &self.inner.home_cpu.load(Ordering::Relaxed))
            .finish()
    }
}

/// Owns the result of a spawned thread; see [`Scheduler::join`](crate::Scheduler::join).
pub struct JoinHandle<T> {
    pub(crate) thread: Thread,
    pub(crate) result: Arc<SpinLock<Option<T>>>,
}

impl<T> JoinHandle<T> {
    /// The thread's handle.
    pub fn thread(&self) -> &Thread {
        &self.thread
    }

    /// Whether the thread has finished (`join` would not block).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("thread", &self.thread)
            .finish()
    }
}
