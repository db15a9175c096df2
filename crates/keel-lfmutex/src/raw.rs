//! [`RawMutex`]: the lock-free mutex itself, and the wait records it queues.

use core::fmt;
use core::marker::PhantomData;
use core::num::NonZeroU64;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32 as CoreAtomicU32, Ordering as CoreOrdering};

use keel_sync::shim::{AtomicU32, AtomicU64, Ordering, UnsafeCell};

use crate::parker::{Parker, ThreadId};
use crate::queue::{MpscQueue, Node};

/// What a blocked thread leaves in a wait queue: who to wake, and where it stands.
pub(crate) struct Waiter<P: Parker> {
    /// The thread to unpark.
    handle: P::Handle,
    /// One of the `WAITING`, `WAITING_FOR_HANDOFF`, `HANDED` and `OFFERED` states.
    ///
    /// The waiter writes a `WAITING*` state before pushing the record (the push's
    /// Release publishes it to the popper). The waker stores `HANDED` or `OFFERED`
    /// (Release) as its *last* access to the record; the waiter loads it (Acquire)
    /// after every `park` return and leaves (freeing the record, which lives on its
    /// stack) only once it is one of those. For `HANDED` the Release/Acquire pair
    /// also carries the previous holder's critical section over to the woken thread.
    state: AtomicU32,
}

/// Queued; a mutex unlocker may hand it the mutex or only offer it (see
/// [`RawMutex`]'s `state`).
const WAITING: u32 = 0;
/// Queued; whoever pops it must hand it the mutex, not offer it: the thread lost an
/// offer already (bounding how often it can be passed over), or it is a condition
/// variable's waiter moved over by wait morphing, which must wake up holding the
/// mutex.
const WAITING_FOR_HANDOFF: u32 = 1;
/// Woken, holding the mutex (or, in a condition variable's queue, signalled).
const HANDED: u32 = 2;
/// Woken by a mutex unlocker that left the mutex on offer: the woken thread must
/// compete for it (see `RawMutex::compete_for_offer`).
const OFFERED: u32 = 3;

/// A wait record: a queue node carrying a [`Waiter`].
pub(crate) type WaitRecord<P> = Node<Waiter<P>>;

impl<P: Parker> Waiter<P> {
    /// A record for the calling thread, in state `WAITING`.
    pub(crate) fn for_current_thread() -> WaitRecord<P> {
        Node::new(Self {
            handle: P::current(),
            state: AtomicU32::new(WAITING),
        })
    }

    /// Parks until the record is woken; returns `HANDED` or `OFFERED`. Never
    /// returns early: the record may be linked in a queue until then.
    pub(crate) fn wait(&self) -> u32 {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state == HANDED || state == OFFERED {
                return state;
            }
            P::park();
        }
    }

    /// Marks a record that is in no queue and not being woken (its owner's, after a
    /// lost offer, or a condition variable's waiter being moved) as one that must be
    /// handed the mutex when popped.
    fn require_handoff(&self) {
        self.state.store(WAITING_FOR_HANDOFF, Ordering::Relaxed);
    }

    /// Marks its owner's record, in no queue after a lost offer, as an ordinary
    /// waiter again (offered the mutex when popped, as on its first wait).
    fn wait_again(&self) {
        self.state.store(WAITING, Ordering::Relaxed);
    }
}

impl<P: Parker> fmt::Debug for Waiter<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("handle", &self.handle)
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// Wakes the thread waiting on `record`, with `state` (`HANDED` or `OFFERED`).
///
/// # Safety
/// `record` must be live and waiting (in no queue, or popped by the caller), and
/// nobody else may wake it: its owner frees it as soon as `state` is stored.
pub(crate) unsafe fn wake<P: Parker>(record: NonNull<WaitRecord<P>>, state: u32) {
    debug_assert!(state == HANDED || state == OFFERED);
    // SAFETY: relies on (1) the caller's guarantee that the record is live and that
    // we are its only waker, so its owner is still parked in `Waiter::wait` and will
    // not free it before the store below.
    let waiter = unsafe { record.as_ref() }.value();
    let handle = waiter.handle.clone();
    P::without_preemption(|| {
        waiter.state.store(state, Ordering::Release);
        // From here on the record may be gone; only the cloned handle is used.
        P::unpark(&handle);
    });
}

/// Why [`RawMutex::unlock`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockError {
    /// The calling thread does not hold the mutex.
    NotOwner,
}

impl fmt::Display for UnlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOwner => f.write_str("the calling thread does not hold the mutex"),
        }
    }
}

/// OSv's lock-free, recursive, blocking mutex without data (see the [crate
/// docs](crate) for the algorithm).
///
/// The owner may lock again (`lock` or `try_lock`) and must then unlock as many
/// times. Waiters spin only briefly and only while the owner runs (see the crate
/// docs); otherwise they block through `P`.
///
/// ```
/// use keel_hosted::StdParker;
/// use keel_lfmutex::RawMutex;
/// let mutex = RawMutex::<StdParker>::new();
/// mutex.lock();
/// mutex.lock(); // recursive
/// assert!(mutex.is_owned_by_current_thread());
/// mutex.unlock().unwrap();
/// mutex.unlock().unwrap();
/// assert!(mutex.unlock().is_err());
/// ```
pub struct RawMutex<P: Parker> {
    /// The lock word: `count` in bits 0–31, `IN_FLIGHT` in bit 32, a hand-off token
    /// in bits 33–63 (0: none). One word, so that a running locker takes an offered
    /// mutex, and an unlocker leaves it on offer, with a single read-modify-write.
    ///
    /// `count` is how many threads hold the mutex or are committed to waiting for it
    /// (each `lock` adds one, each final `unlock` removes one); 0 means free, and
    /// then the whole word is 0. `lock` takes a free mutex with `fetch_add(1,
    /// Acquire)` (old value 0: ours, and the previous unlocker's Release is
    /// visible); the final unlock releases with `fetch_sub(1, Release)` (old count
    /// 1: nobody waits, done). A locker that found the count non-zero stays counted
    /// while it queues and waits; the mutex then reaches it without the count ever
    /// dropping to 0 in between.
    ///
    /// A token is published by an unlocker that gives the mutex up without handing
    /// it to anyone: either the waiter it must wake has counted itself but not
    /// queued yet (the responsibility hand-off), or an offered waiter is already on
    /// its way (`IN_FLIGHT`), so the mutex is left on offer. While a token is out
    /// nobody holds the mutex; whoever claims it (clearing the token bits with a
    /// read-modify-write, Acquire) becomes the holder and the queue's consumer. The
    /// unlocker publishes with Release (its critical section goes along). Tokens
    /// are numbered from `sequence`, so a stale claim in `take_handoff_and_pop`
    /// fails (ABA).
    ///
    /// `IN_FLIGHT` is set by the unlocker that pops a `WAITING` record and wakes it
    /// `OFFERED`, and cleared only by that woken thread (which claims any token
    /// present in the same operation); it keeps later unlockers from waking more
    /// waiters while one is on its way.
    ///
    /// Every write to the word is a read-modify-write. A plain store of a token
    /// would do on hardware (only the holder publishes), but loom orders a plain
    /// store against other threads' read-modify-writes by causality only, and then
    /// lets a later compare-and-swap read a value older than the store: a false
    /// deadlock in the offer-race models.
    state: AtomicU64,
    /// The waiters, oldest first; see [`MpscQueue`]. Its consumer is the unlocker
    /// that found `count > 1`, or whoever takes a token.
    queue: MpscQueue<Waiter<P>>,
    /// The last token number used (wrapping below 2³¹, skipping 0). Only the current
    /// queue consumer touches it; consumers are ordered by happens-before, so a plain
    /// cell (under loom, a checked one).
    sequence: UnsafeCell<u32>,
    /// The [`ThreadId`](crate::ThreadId) of the holder, or 0.
    ///
    /// Relaxed loads and stores suffice: only the holder stores its own id (after it
    /// acquired) and clears it (before it releases), and a thread compares it only
    /// with its own id, which by coherence it can observe only while it set it.
    owner: AtomicU64,
    /// Where the holder ran when it took the mutex ([`Parker::current_cpu_hint`]),
    /// for spinners to ask [`Parker::owner_is_running`]. A hint, written by the
    /// holder and read by spinners with `Relaxed` and no other synchronisation; a
    /// `core` atomic even under loom, because no correctness argument reads it.
    owner_cpu: CoreAtomicU32,
    /// How many looks at the lock word a spinner may take (see
    /// `RawMutex::spin_on_owner`); a `Relaxed` heuristic, unused under loom.
    spin_limit: CoreAtomicU32,
    /// The recursion depth, meaningful while held; touched only by the holder.
    depth: UnsafeCell<u32>,
    /// `P` is only a strategy; it does not affect `Send`/`Sync`.
    _parker: PhantomData<fn() -> P>,
}

// SAFETY: the cells (`sequence`, `depth`) are only accessed by the queue consumer and
// the holder respectively, each role passed on through the Release/Acquire edges
// documented on the fields; everything else is atomics. Thread handles are `Send +
// Sync` by the `Parker` bound.
unsafe impl<P: Parker> Sync for RawMutex<P> {}
// SAFETY: as for `Sync`; a `RawMutex` owns no thread-bound data.
unsafe impl<P: Parker> Send for RawMutex<P> {}

impl<P: Parker> Default for RawMutex<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Parker> fmt::Debug for RawMutex<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMutex")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("owner", &self.owner.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P: Parker> RawMutex<P> {
    /// An unlocked mutex.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            queue: MpscQueue::new(),
            sequence: UnsafeCell::new(0),
            owner: AtomicU64::new(0),
            owner_cpu: CoreAtomicU32::new(0),
            spin_limit: CoreAtomicU32::new(INITIAL_SPINS),
            depth: UnsafeCell::new(0),
            _parker: PhantomData,
        }
    }

    /// An unlocked mutex (not `const` under loom).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            queue: MpscQueue::new(),
            sequence: UnsafeCell::new(0),
            owner: AtomicU64::new(0),
            owner_cpu: CoreAtomicU32::new(0),
            spin_limit: CoreAtomicU32::new(INITIAL_SPINS),
            depth: UnsafeCell::new(0),
            _parker: PhantomData,
        }
    }

    /// Locks, blocking while another thread holds the mutex; if the calling thread
    /// holds it already, only increments the recursion depth.
    ///
    /// # Panics
    /// If the recursion depth would overflow a `u32`.
    #[inline]
    pub fn lock(&self) {
        let me = P::current_id();
        if self.is_owned_by(me) {
            self.add_depth();
            return;
        }
        self.acquire();
        self.set_owner(me);
    }

    /// Locks if the mutex is free or already held by the calling thread (then the
    /// depth grows), or if an unlocker's hand-off token can be taken; never blocks.
    ///
    /// # Panics
    /// If the recursion depth would overflow a `u32`.
    #[inline]
    pub fn try_lock(&self) -> bool {
        let me = P::current_id();
        if self.is_owned_by(me) {
            self.add_depth();
            return true;
        }
        if self.try_acquire() {
            self.set_owner(me);
            true
        } else {
            false
        }
    }

    /// Unlocks once; the mutex is released when the depth reaches zero.
    ///
    /// # Errors
    /// [`UnlockError::NotOwner`] if the calling thread does not hold the mutex
    /// (nothing changes then).
    #[inline]
    pub fn unlock(&self) -> Result<(), UnlockError> {
        if !self.is_owned_by_current_thread() {
            return Err(UnlockError::NotOwner);
        }
        // SAFETY: relies on (1) the check above: the calling thread holds the mutex.
        unsafe { self.unlock_owned() };
        Ok(())
    }

    /// Whether the calling thread holds the mutex (exact, not a snapshot: only the
    /// calling thread can make it true or false).
    #[inline]
    pub fn is_owned_by_current_thread(&self) -> bool {
        self.is_owned_by(P::current_id())
    }

    /// Whether `me`, the calling thread's id, holds the mutex.
    #[inline]
    pub(crate) fn is_owned_by(&self, me: ThreadId) -> bool {
        self.owner.load(Ordering::Relaxed) == me.get()
    }

    /// Whether some thread holds (or waits for) the mutex; only a snapshot.
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & COUNT_MASK != 0
    }

    /// Unlocks once without checking the owner.
    ///
    /// # Safety
    /// The calling thread must hold the mutex.
    #[inline]
    pub(crate) unsafe fn unlock_owned(&self) {
        // SAFETY: relies on (1) the caller holding the mutex, so it alone touches
        // `depth` (the previous holder's accesses happen-before its acquisition).
        let depth = self.depth.with_mut(|depth| unsafe {
            *depth -= 1;
            *depth
        });
        if depth == 0 {
            self.owner.store(0, Ordering::Relaxed);
            // SAFETY: relies on (1) the caller holding the mutex, at depth 0 now.
            unsafe { self.release() };
        }
    }

    /// The holder's id after a wait-morphed wake-up (see `Condvar`): the mutex was
    /// acquired on the calling thread's behalf, which now records itself as owner.
    pub(crate) fn receive_lock(&self) {
        self.set_owner(P::current_id());
    }

    /// The recursion depth; only the holder may call this.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn depth_of_holder(&self) -> u32 {
        // SAFETY: relies on (1) the caller holding the mutex (documented), so the
        // holder alone touches `depth`.
        self.depth.with(|depth| unsafe { *depth })
    }

    /// Records `me` (the calling thread) as the holder at depth 1, right after
    /// acquiring.
    #[inline]
    pub(crate) fn set_owner(&self, me: ThreadId) {
        self.owner.store(me.get(), Ordering::Relaxed);
        if !cfg!(feature = "strict-lfmutex") {
            self.owner_cpu
                .store(P::current_cpu_hint(), CoreOrdering::Relaxed);
        }
        // SAFETY: relies on (1) the calling thread having just acquired the mutex, so
        // it alone touches `depth`, and the previous holder's accesses happen-before.
        self.depth.with_mut(|depth| unsafe { *depth = 1 });
    }

    /// One more recursion level; the calling thread holds the mutex.
    fn add_depth(&self) {
        // SAFETY: relies on (1) `owner == me`, which only the holder can observe, so
        // it alone touches `depth`.
        self.depth.with_mut(|depth| unsafe {
            *depth = (*depth)
                .checked_add(1)
                .expect("RawMutex recursion depth overflow");
        });
    }

    /// Acquires the mutex (not recursively), blocking if needed; does not record the
    /// owner.
    #[inline]
    pub(crate) fn acquire(&self) {
        let word = self.state.load(Ordering::Relaxed);
        if !cfg!(feature = "fifo-lfmutex") && word & TOKEN_MASK != 0 && self.claim_token(word, 1) {
            // On offer: a running thread barges past a waiter that is waking up.
            return;
        }
        if !cfg!(feature = "strict-lfmutex") && word & COUNT_MASK != 0 && self.spin_on_owner() {
            return;
        }
        if self.state.fetch_add(1, Ordering::Acquire) & COUNT_MASK != 0 {
            self.acquire_slow();
        }
    }

    /// Bounded, owner-aware spinning, before a locker that found the mutex held counts
    /// itself in (off with the feature `strict-lfmutex`): watch the lock word and take
    /// the mutex if it becomes free or an unlocker puts it on offer, but only while
    /// the owner runs on a CPU that is not preempted ([`Parker::owner_is_running`]),
    /// and for at most this mutex's spin limit. True if we now hold the mutex.
    ///
    /// The limit adapts per mutex: spinning that got the mutex raises it by a
    /// quarter (up to [`MAX_SPINS`]), spinning that ran out of budget halves it
    /// (down to [`MIN_SPINS`]). A spin that stopped because the owner was not running
    /// leaves it alone. Under loom the limit is one look, and the owner is not
    /// consulted.
    #[inline(never)]
    fn spin_on_owner(&self) -> bool {
        let limit = self.spin_limit();
        let mut looks = 0;
        loop {
            // The caller has just seen the mutex held. Under loom the owner is not
            // consulted (`LoomParker` would answer "running"; the answer is a hint
            // no correctness argument reads), which keeps the models' state space
            // to the one look below.
            if !cfg!(loom) {
                let owner = self.owner.load(Ordering::Relaxed);
                // No owner recorded: the mutex is changing hands right now (taken and
                // not yet recorded, or being released); keep watching, within budget.
                if let Some(owner) = NonZeroU64::new(owner)
                    && !P::owner_is_running(
                        ThreadId::new(owner),
                        self.owner_cpu.load(CoreOrdering::Relaxed),
                    )
                {
                    return false;
                }
                core::hint::spin_loop();
            }
            let word = self.state.load(Ordering::Relaxed);
            if word & TOKEN_MASK != 0 {
                // DELIBERATELY BROKEN with `broken-lfmutex-spin` (loom tests only): the
                // spinner takes an offered mutex without counting itself in.
                let count_in = u64::from(!cfg!(feature = "broken-lfmutex-spin"));
                if self.claim_token(word, count_in) {
                    self.adapt_spin_limit(limit, true);
                    return true;
                }
            } else if word & COUNT_MASK == 0
                && self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.adapt_spin_limit(limit, true);
                return true;
            }
            looks += 1;
            if looks >= limit {
                self.adapt_spin_limit(limit, false);
                return false;
            }
        }
    }

    /// This mutex's current spin limit, in looks at the lock word.
    #[inline]
    fn spin_limit(&self) -> u32 {
        if cfg!(loom) {
            1
        } else {
            self.spin_limit.load(CoreOrdering::Relaxed)
        }
    }

    /// After a spin with limit `limit`: raise the limit if it got the mutex, halve it
    /// if it ran out of budget. A heuristic: racing updates may lose one.
    #[inline]
    fn adapt_spin_limit(&self, limit: u32, acquired: bool) {
        if cfg!(loom) {
            return;
        }
        let next = if acquired {
            (limit + limit / 4 + 1).min(MAX_SPINS)
        } else {
            (limit / 2).max(MIN_SPINS)
        };
        if next != limit {
            self.spin_limit.store(next, CoreOrdering::Relaxed);
        }
    }

    /// Acquires without blocking, taking an offered token if there is one; does not
    /// record the owner.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        match self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => true,
            // Last chance: an unlocker left the mutex on offer (a woken waiter is on
            // its way, or a locker has counted itself but not queued yet). Taking the
            // token makes us the holder, counted in; the thread it was meant for will
            // queue (again) and wait for our unlock.
            Err(word) => self.claim_token(word, 1),
        }
    }

    /// Claims the token, if one is out in `word` (the caller's latest view of the
    /// lock word), adding `count_in` (1 for a thread not counted in yet, else 0) in
    /// the same compare-and-swap; retried while a token is out. True if the caller
    /// now holds the mutex and is the queue's consumer.
    fn claim_token(&self, mut word: u64, count_in: u64) -> bool {
        while word & TOKEN_MASK != 0 {
            match self.state.compare_exchange_weak(
                word,
                (word & !TOKEN_MASK) + count_in,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => word = current,
            }
        }
        false
    }

    /// The count was non-zero and we are counted in: take the mutex if it has just
    /// been put on offer, else queue a record on our stack and wait until an
    /// unlocker hands us the mutex or offers it to us.
    #[cold]
    fn acquire_slow(&self) {
        if !cfg!(feature = "fifo-lfmutex")
            && self.claim_token(self.state.load(Ordering::Relaxed), 0)
        {
            return;
        }
        let record = Waiter::<P>::for_current_thread();
        let record_ptr = NonNull::from(&record);
        let queued_at = P::fairness_clock_nanos();
        loop {
            // SAFETY: relies on (1) `record` living on this frame, which does not
            // return before `record.value().wait()` sees it woken, i.e. popped and
            // done with; a re-push happens only after such a wake-up.
            unsafe { self.queue.push(record_ptr) };
            if let Some(popped) = self.take_handoff_and_pop() {
                if popped == record_ptr {
                    // We took the responsibility and found ourselves first: ours.
                    return;
                }
                // SAFETY: relies on (1) `popped` having been popped by us, the sole
                // consumer, so it is live (its owner waits in `Waiter::wait`) and we
                // are its only waker.
                unsafe { wake::<P>(popped, HANDED) };
            }
            if record.value().wait() == HANDED || self.compete_for_offer() {
                return;
            }
            // Passed over by a barger: queue again, at the tail (behind waiters
            // that queued after us: the queue has one consumer, and we are not it).
            // Once we have waited long enough (eventual fairness), be handed the
            // mutex when popped, never offered it, so no barger passes us over again
            // in this lock; until then, be offered it again.
            if Self::waited_long_enough(queued_at) {
                record.value().require_handoff();
            } else {
                record.value().wait_again();
            }
        }
    }

    /// Whether a waiter that first queued at `queued_at` (its
    /// [`Parker::fairness_clock_nanos`]) must now be handed the mutex rather than
    /// offered it: after [`FAIR_WAIT_NANOS`], or at once without a clock.
    fn waited_long_enough(queued_at: Option<u64>) -> bool {
        match (queued_at, P::fairness_clock_nanos()) {
            (Some(queued_at), Some(now)) => now.wrapping_sub(queued_at) >= FAIR_WAIT_NANOS,
            _ => true,
        }
    }

    /// The offered waiter's turn, right after its wake-up: clear `IN_FLIGHT` and
    /// claim the token if it is still there, in one `fetch_and` (nobody else clears
    /// `IN_FLIGHT`, and a token can only be out while nobody holds the mutex). True
    /// if we now hold the mutex.
    fn compete_for_offer(&self) -> bool {
        let previous = self.state.fetch_and(COUNT_MASK, Ordering::AcqRel);
        debug_assert!(previous & IN_FLIGHT != 0, "offered without IN_FLIGHT");
        previous & TOKEN_MASK != 0
    }

    /// Queues a record on behalf of a thread that waits on it elsewhere (a condition
    /// variable's waiter being moved over: OSv's `send_lock`, "wait morphing"); the
    /// record is woken once the mutex is handed to it (never only offered).
    ///
    /// # Safety
    /// `record` must be live, in no queue, and its owner must be blocked in
    /// [`Waiter::wait`] without holding this mutex, with nobody else waking it.
    pub(crate) unsafe fn send_lock(&self, record: NonNull<WaitRecord<P>>) {
        if self.state.fetch_add(1, Ordering::Acquire) & COUNT_MASK == 0 {
            // SAFETY: relies on (1) the caller's guarantee; the mutex is now held on
            // the record owner's behalf.
            unsafe { wake::<P>(record, HANDED) };
            return;
        }
        // SAFETY: relies on (1) the caller's guarantee: live, in no queue, not being
        // woken, so we alone write its state.
        unsafe { record.as_ref() }.value().require_handoff();
        // SAFETY: relies on (1) the caller's guarantee: live, in no queue, and its
        // owner does not leave `wait` before being woken, i.e. popped.
        unsafe { self.queue.push(record) };
        if let Some(popped) = self.take_handoff_and_pop() {
            // SAFETY: relies on (1) popped by us, the sole consumer: live and ours
            // to wake (it may be `record` itself).
            unsafe { wake::<P>(popped, HANDED) };
        }
    }

    /// The locker's half of the responsibility hand-off: after pushing, if a token
    /// is out and the queue is not empty, claim exactly that token, becoming holder
    /// and consumer, and pop the oldest waiter, whom the mutex now belongs to.
    fn take_handoff_and_pop(&self) -> Option<NonNull<WaitRecord<P>>> {
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            let token = word & TOKEN_MASK;
            if token == 0 || self.queue.is_empty() {
                return None;
            }
            match self.state.compare_exchange(
                word,
                word & !TOKEN_MASK,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                // The same token, only the count or `IN_FLIGHT` changed: again.
                Err(current) if current & TOKEN_MASK == token => word = current,
                // Claimed by someone else (who is now responsible), or replaced.
                Err(_) => return None,
            }
        }
        // SAFETY: relies on (1) holding the token: its publisher gave up the consumer
        // role and did not take the token back, and no other thread can pop until
        // we wake someone or unlock.
        let popped = unsafe { self.queue.pop() };
        debug_assert!(popped.is_some(), "hand-off taken with an empty queue");
        popped
    }

    /// Releases the mutex (depth already 0, owner cleared or never set).
    ///
    /// # Safety
    /// The calling thread must hold the mutex (acquired through `acquire` or
    /// `try_acquire`, or handed to it by a wake-up).
    #[inline]
    pub(crate) unsafe fn release(&self) {
        if self.state.load(Ordering::Relaxed) & IN_FLIGHT != 0 {
            self.release_on_offer();
            return;
        }
        if self.state.fetch_sub(1, Ordering::Release) & COUNT_MASK != 1 {
            self.release_slow();
        }
    }

    /// An offered waiter is already waking up: leave the mutex on offer to it (or
    /// to a barger) by counting ourselves out and publishing a token in one
    /// `fetch_add` (no token is out while we hold the mutex, so adding the token
    /// sets its bits).
    #[inline]
    fn release_on_offer(&self) {
        if cfg!(feature = "broken-lfmutex-offer") {
            // DELIBERATELY BROKEN (feature `broken-lfmutex-offer`, for the loom tests
            // only): count out without publishing a token, so the mutex is held by
            // nobody.
            self.state.fetch_sub(1, Ordering::Release);
            return;
        }
        let token = self.next_token();
        let previous = self
            .state
            .fetch_add(token.wrapping_sub(1), Ordering::Release);
        debug_assert!(previous & TOKEN_MASK == 0, "a token is out while held");
        if previous & IN_FLIGHT != 0 {
            // The woken waiter will look at the token (it alone clears
            // `IN_FLIGHT`), unless a barger takes it first.
            return;
        }
        // The woken waiter has just competed and lost; it is still counted and will
        // queue again. Our token is now out without `IN_FLIGHT`: the responsibility
        // hand-off, with its usual check.
        self.after_handoff_published(token);
    }

    /// After publishing `token` without `IN_FLIGHT` (count already decremented): if
    /// somebody pushed meanwhile and the token is still ours, take it back and pop
    /// them ourselves; otherwise whoever pushes next, or the token's taker, is
    /// responsible.
    #[cold]
    fn after_handoff_published(&self, token: u64) {
        if self.take_back_if_pushed(token) {
            self.release_slow();
        }
    }

    /// Somebody else is counted in, and no offered waiter is in flight: pop the
    /// oldest waiter and offer it the mutex (or hand it over, if that waiter must
    /// not be passed over); if nobody has queued yet, hand off the responsibility
    /// for waking them.
    #[cold]
    fn release_slow(&self) {
        // SAFETY (for the pops below): relies on (1) the single-consumer argument of
        // the crate docs: we held the mutex, hence the consumer role (a count > 0
        // keeps new lockers out of the fast path, and a token we publish passes the
        // role on: it comes back to us only by re-taking our own token).
        loop {
            // SAFETY: as stated above the loop.
            if let Some(waiter) = unsafe { self.queue.pop() } {
                // SAFETY: relies on (1) popped by us: live, in no queue, and we are
                // its only waker; its state was written before its push.
                let must_hand = unsafe { waiter.as_ref() }
                    .value()
                    .state
                    .load(Ordering::Relaxed)
                    == WAITING_FOR_HANDOFF;
                if must_hand || cfg!(feature = "fifo-lfmutex") {
                    // SAFETY: as above.
                    unsafe { wake::<P>(waiter, HANDED) };
                } else {
                    // Nobody is in flight and no token is out (only the consumer
                    // sets either), so this sets both from 0.
                    let token = self.next_token();
                    // From the offer to the wake-up without preemption (see
                    // `Parker::without_preemption`).
                    P::without_preemption(|| {
                        self.publish(token | IN_FLIGHT);
                        // SAFETY: as above.
                        unsafe { wake::<P>(waiter, OFFERED) };
                    });
                }
                return;
            }
            if cfg!(feature = "broken-lfmutex") {
                // DELIBERATELY BROKEN (feature `broken-lfmutex`, for the loom tests
                // only): no hand-off, so a locker that counted itself but had not
                // queued yet sleeps forever.
                return;
            }
            let token = self.next_token();
            self.publish(token);
            if !self.take_back_if_pushed(token) {
                return;
            }
        }
    }

    /// Publishes `bits` (a token, perhaps with `IN_FLIGHT`) into the lock word,
    /// whose token and `IN_FLIGHT` bits are clear, giving up the mutex and the
    /// consumer role.
    fn publish(&self, bits: u64) {
        let previous = self.state.fetch_or(bits, Ordering::Release);
        debug_assert!(
            previous & !COUNT_MASK == 0,
            "hand-off bits not clear at publish"
        );
    }

    /// Right after publishing `token` (count already decremented): the locker we
    /// are waiting for has not pushed, so it will see the token after its push (see
    /// `MpscQueue::has_pushes_after`). If somebody pushed meanwhile and the token is
    /// still ours, take it back: true, and the caller pops them itself (it is the
    /// consumer again). False: the pusher, or the token's taker, is responsible.
    fn take_back_if_pushed(&self, token: u64) -> bool {
        self.queue.has_pushes_after() && self.retract(token)
    }

    /// Takes our own `token` back if nobody claimed it; true if we did.
    fn retract(&self, token: u64) -> bool {
        let mut word = self.state.load(Ordering::Relaxed);
        while word & TOKEN_MASK == token {
            match self.state.compare_exchange_weak(
                word,
                word & !TOKEN_MASK,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => word = current,
            }
        }
        false
    }

    /// The next hand-off token, already shifted into place: the sequence number,
    /// incremented below 2³¹, skipping 0.
    fn next_token(&self) -> u64 {
        // SAFETY: relies on (1) being called only by the queue consumer (from the
        // unlock paths), consumers being ordered by happens-before.
        let sequence = self.sequence.with_mut(|sequence| unsafe {
            *sequence = match (*sequence).wrapping_add(1) & SEQUENCE_MASK {
                0 => 1,
                next => next,
            };
            *sequence
        });
        u64::from(sequence) << TOKEN_SHIFT
    }
}

/// How long a waiter may be passed over by bargers before it is handed the mutex
/// (eventual fairness; see [`Parker::fairness_clock_nanos`]): 0.5 ms, the average
/// interval of `parking_lot`'s forced fair unlocks. Bargers keep a contended mutex
/// busy while a woken waiter gets to run; a hand-off instead keeps it idle until
/// then (a wake-up: microseconds on an idle CPU, up to a host time slice when the
/// waiter's CPU is busy or, in a VM, its vCPU is descheduled); handing over at every
/// lost offer cost up to 3x in the guest's long-critical-section runs (papers/0012).
pub const FAIR_WAIT_NANOS: u64 = 500_000;

/// The most looks at the lock word a spinning locker takes before it sleeps. One
/// look (the owner check, a `spin_loop` pause and a load of the word) took 15–21 ns
/// on the build machine's Xeon (papers/0012), so 32 looks are 0.5–0.7 µs, under one
/// sleep/wake transfer on Linux host threads (0.7–0.8 µs, papers/0006): spinning
/// longer than a sleep costs cannot pay off.
pub(crate) const MAX_SPINS: u32 = 32;
/// The fewest looks a spinner still takes when spinning has kept failing, so the
/// mutex notices when it starts to pay again.
pub(crate) const MIN_SPINS: u32 = 2;
/// The spin limit of a new mutex.
const INITIAL_SPINS: u32 = MAX_SPINS / 2;

/// `RawMutex::state`: the count bits.
const COUNT_MASK: u64 = 0xffff_ffff;
/// `RawMutex::state`: set while an offered waiter is waking up.
const IN_FLIGHT: u64 = 1 << 32;
/// `RawMutex::state`: where the token starts.
const TOKEN_SHIFT: u32 = 33;
/// `RawMutex::state`: the token bits.
const TOKEN_MASK: u64 = !(COUNT_MASK | IN_FLIGHT);
/// The token numbers: 31 bits.
const SEQUENCE_MASK: u32 = (1 << (64 - TOKEN_SHIFT)) - 1;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_parker::TestParker;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    type Raw = RawMutex<TestParker>;

    #[test]
    fn recursion_depth_and_checked_unlock() {
        let mutex = Raw::new();
        assert_eq!(mutex.unlock(), Err(UnlockError::NotOwner));
        for depth in 1..=5 {
            mutex.lock();
            assert_eq!(mutex.depth_of_holder(), depth);
        }
        assert!(mutex.try_lock());
        assert_eq!(mutex.depth_of_holder(), 6);
        for _ in 0..6 {
            assert!(mutex.is_owned_by_current_thread());
            mutex.unlock().unwrap();
        }
        assert!(!mutex.is_owned_by_current_thread());
        assert!(!mutex.is_locked());
        assert_eq!(mutex.unlock(), Err(UnlockError::NotOwner));
    }

    #[test]
    fn other_thread_cannot_unlock_or_try_lock_held_mutex() {
        let mutex = Arc::new(Raw::new());
        mutex.lock();
        let other = Arc::clone(&mutex);
        thread::spawn(move || {
            assert!(!other.try_lock());
            assert_eq!(other.unlock(), Err(UnlockError::NotOwner));
        })
        .join()
        .unwrap();
        mutex.unlock().unwrap();
        let other = Arc::clone(&mutex);
        thread::spawn(move || {
            assert!(other.try_lock());
            other.unlock().unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn recursive_holder_keeps_others_out_until_last_unlock() {
        let mutex = Arc::new(Raw::new());
        mutex.lock();
        mutex.lock();
        let other = Arc::clone(&mutex);
        let waiter = thread::spawn(move || {
            other.lock();
            other.unlock().unwrap();
        });
        mutex.unlock().unwrap();
        thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished());
        mutex.unlock().unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn token_sequence_skips_zero() {
        let mutex = Raw::new();
        mutex.sequence.with_mut(|sequence| {
            // SAFETY: single-threaded test.
            unsafe { *sequence = u32::MAX >> 1 }
        });
        assert_eq!(mutex.next_token(), 1 << TOKEN_SHIFT);
        assert_eq!(mutex.next_token(), 2 << TOKEN_SHIFT);
    }

    /// Tokens across the sequence's wrap-around: a taker holding the last token
    /// before the wrap (stale once its hand-off was resolved) cannot claim the first
    /// token after it, and the sequence never yields 0 or repeats the previous one.
    #[test]
    fn token_sequence_wrap_around_defeats_a_stale_taker() {
        let mutex = Raw::new();
        mutex.sequence.with_mut(|sequence| {
            // SAFETY: single-threaded test.
            unsafe { *sequence = SEQUENCE_MASK - 2 }
        });
        let mut previous = 0;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let token = mutex.next_token();
            assert_ne!(token, 0);
            assert_ne!(token, previous);
            assert_eq!(token & !TOKEN_MASK, 0, "token outside its bits");
            previous = token;
            seen.push(token >> TOKEN_SHIFT);
        }
        assert_eq!(
            seen,
            [
                u64::from(SEQUENCE_MASK - 1),
                u64::from(SEQUENCE_MASK),
                1,
                2,
                3
            ]
        );
        // A hand-off with the last token before the wrap, resolved (taken back) ...
        mutex.sequence.with_mut(|sequence| {
            // SAFETY: single-threaded test.
            unsafe { *sequence = SEQUENCE_MASK - 1 }
        });
        let stale = mutex.next_token();
        assert_eq!(stale >> TOKEN_SHIFT, u64::from(SEQUENCE_MASK));
        mutex.publish(stale);
        let stale_word = mutex.state.load(Ordering::Relaxed);
        assert!(mutex.retract(stale));
        // ... then the next hand-off, after the wrap.
        let fresh = mutex.next_token();
        assert_eq!(fresh >> TOKEN_SHIFT, 1);
        mutex.publish(fresh);
        // The stale taker's claim (exact word) and retraction both fail.
        assert!(
            mutex
                .state
                .compare_exchange(
                    stale_word,
                    stale_word & !TOKEN_MASK,
                    Ordering::AcqRel,
                    Ordering::Acquire
                )
                .is_err()
        );
        assert!(!mutex.retract(stale));
        assert_eq!(mutex.state.load(Ordering::Relaxed) & TOKEN_MASK, fresh);
        assert!(mutex.retract(fresh));
    }

    /// A thread that takes `mutex` and keeps it until `release` is set, marked
    /// running throughout (it never parks) unless `park_while_holding`, in which case
    /// it parks (marking itself parked) until unparked.
    fn holder(
        mutex: &Arc<Raw>,
        park_while_holding: bool,
    ) -> (thread::JoinHandle<()>, Arc<core::sync::atomic::AtomicBool>) {
        use core::sync::atomic::{AtomicBool, Ordering as O};
        let locked = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let (mutex, locked2, release2) =
            (Arc::clone(mutex), Arc::clone(&locked), Arc::clone(&release));
        let handle = thread::spawn(move || {
            mutex.lock();
            locked2.store(true, O::SeqCst);
            while !release2.load(O::SeqCst) {
                if park_while_holding {
                    TestParker::park();
                } else {
                    core::hint::spin_loop();
                }
            }
            mutex.unlock().unwrap();
        });
        while !locked.load(O::SeqCst) {
            thread::yield_now();
        }
        (handle, release)
    }

    fn spin_limit_of(mutex: &Raw) -> u32 {
        mutex.spin_limit.load(CoreOrdering::Relaxed)
    }

    /// Spinning on a held mutex whose owner runs is bounded: each spin that runs out
    /// of budget halves the limit, down to the floor, and never takes the mutex.
    #[test]
    fn spin_on_a_running_owner_is_bounded_and_backs_off() {
        let mutex = Arc::new(Raw::new());
        let (handle, release) = holder(&mutex, false);
        assert_eq!(spin_limit_of(&mutex), INITIAL_SPINS);
        let mut expected = INITIAL_SPINS;
        for _ in 0..6 {
            assert!(!mutex.spin_on_owner(), "took a held mutex");
            expected = (expected / 2).max(MIN_SPINS);
            assert_eq!(spin_limit_of(&mutex), expected);
        }
        assert_eq!(expected, MIN_SPINS);
        release.store(true, core::sync::atomic::Ordering::SeqCst);
        handle.join().unwrap();
    }

    /// An owner that has parked is not running: the spinner gives up at its first
    /// look, without spending (or shrinking) its budget.
    #[test]
    fn spin_stops_at_once_when_the_owner_sleeps() {
        let mutex = Arc::new(Raw::new());
        let (handle, release) = holder(&mutex, true);
        // Wait until the holder has marked itself parked (it parks right after
        // taking the mutex; spurious returns re-park).
        let owner = ThreadId::new(NonZeroU64::new(mutex.owner.load(Ordering::Relaxed)).unwrap());
        while TestParker::owner_is_running(owner, 0) {
            thread::yield_now();
        }
        assert!(!mutex.spin_on_owner());
        assert_eq!(
            spin_limit_of(&mutex),
            INITIAL_SPINS,
            "the spinner spent its budget"
        );
        release.store(true, core::sync::atomic::Ordering::SeqCst);
        handle.thread().unpark();
        handle.join().unwrap();
    }

    /// A spin that gets the mutex raises the limit by a quarter, up to the ceiling.
    #[test]
    fn successful_spins_raise_the_limit_to_the_ceiling() {
        let mutex = Raw::new();
        let mut expected = INITIAL_SPINS;
        while expected < MAX_SPINS {
            assert!(mutex.spin_on_owner(), "a free mutex was not taken");
            expected = (expected + expected / 4 + 1).min(MAX_SPINS);
            assert_eq!(spin_limit_of(&mutex), expected);
            // SAFETY: the spin above acquired it for this thread.
            unsafe { mutex.release() };
        }
        assert_eq!(spin_limit_of(&mutex), MAX_SPINS);
    }

    /// A spinner takes a mutex released while it watches, without counting itself
    /// in or sleeping: the release happens at its third look.
    #[test]
    fn waiter_takes_a_mutex_released_while_it_spins() {
        // Deterministic: the mutex is held (by this thread, which counts as running),
        // and the release happens at the spinner's third look, through the test
        // parker's look hook. (The test had a second thread release it, which needed
        // the host to schedule that thread inside the spin's window: in a CI run with
        // the machine's two cores loaded, 1000 tries never hit it.)
        let mutex = Arc::new(Raw::new());
        mutex.lock();
        mutex.spin_limit.store(MAX_SPINS, CoreOrdering::Relaxed);
        let (releaser, looks) = (
            Arc::clone(&mutex),
            Arc::new(core::sync::atomic::AtomicU32::new(0)),
        );
        let counted = Arc::clone(&looks);
        TestParker::set_look_hook(Some(std::boxed::Box::new(move || {
            if counted.fetch_add(1, core::sync::atomic::Ordering::Relaxed) == 2 {
                // SAFETY: the mutex is held (by this thread) and released once here.
                unsafe { releaser.release() };
            }
        })));
        let took_it = mutex.spin_on_owner();
        TestParker::set_look_hook(None);
        let looked = looks.load(core::sync::atomic::Ordering::Relaxed);
        assert!(
            took_it,
            "the spin did not take the mutex released at its third look"
        );
        assert!((3..MAX_SPINS).contains(&looked), "{looked} looks");
        assert!(mutex.is_locked());
        // SAFETY: the spin acquired it.
        unsafe { mutex.release() };
        assert!(!mutex.is_locked());
    }

    #[test]
    fn many_threads_lock_and_try_lock_count_exactly() {
        const THREADS: usize = 6;
        const ITERATIONS: usize = 5_000;
        let mutex = Arc::new(Raw::new());
        let counter = Arc::new(core::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|index| {
                let mutex = Arc::clone(&mutex);
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    for iteration in 0..ITERATIONS {
                        if (index + iteration) % 3 == 0 {
                            while !mutex.try_lock() {
                                core::hint::spin_loop();
                            }
                        } else {
                            mutex.lock();
                        }
                        // A non-atomic read-modify-write made of two atomic halves:
                        // only mutual exclusion keeps it exact.
                        let value = counter.load(core::sync::atomic::Ordering::Relaxed);
                        counter.store(value + 1, core::sync::atomic::Ordering::Relaxed);
                        mutex.unlock().unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(
            counter.load(core::sync::atomic::Ordering::Relaxed),
            THREADS * ITERATIONS
        );
        assert!(!mutex.is_locked());
    }
}
