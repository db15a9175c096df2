//! [`Condvar`]: a condition variable with wait morphing.

use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use keel_sync::shim::{AtomicUsize, Ordering, UnsafeCell};

use crate::mutex::{MutexGuard, Unlocker};
use crate::parker::Parker;
use crate::queue::MpscQueue;
use crate::raw::{RawMutex, Waiter};

/// A condition variable for [`Mutex`](crate::Mutex) with *wait morphing* (OSv's
/// `condvar` + `mutex::send_lock`).
///
/// A waiter queues a wait record on its stack, unlocks the mutex and parks. A notify
/// does not wake it: it moves the record straight onto the mutex's wait queue (or,
/// if the mutex is free, acquires the mutex on the waiter's behalf and wakes it).
/// The waiter therefore wakes up once, already holding the mutex, instead of waking
/// to contend for a mutex the notifier still holds and going back to sleep. Notify
/// while holding the mutex is the cheap pattern here: the waiter is then woken by
/// the notifier's unlock.
///
/// There are no spurious wake-ups, but [`Condvar::wait_while`] is still the way to
/// wait for a condition (another thread may change it before the waiter runs).
/// All concurrent waiters must use the same mutex (panics otherwise, like `std`).
/// No timed waits yet (the crate has no clock).
///
/// Waiters' records sit in a FIFO (an [`MpscQueue`]) protected by an internal
/// [`RawMutex`]; notifiers move records while holding it. A woken waiter passes
/// through that internal lock once before returning, so it never returns (and never
/// lets its mutex be freed) while a notifier is still inside `send_lock` on that
/// mutex.
pub struct Condvar<P: Parker> {
    /// Protects `waiters` (its only consumer is the holder) and `mutex`. Held only
    /// for non-blocking steps, never while waiting.
    lock: RawMutex<P>,
    /// The waiters' records, oldest first.
    waiters: MpscQueue<Waiter<P>>,
    /// The mutex the current waiters use, or null when there are none; under `lock`.
    mutex: UnsafeCell<*const RawMutex<P>>,
    /// How many records are in `waiters`; written under `lock`, read Relaxed by the
    /// notifiers' no-waiter fast path. That read is exact whenever the notifier
    /// changed the condition under the mutex after the waiter checked it (then the
    /// waiter's increment happens-before through the mutex); a notify racing with a
    /// waiter that never synchronised with it may miss it, as with any condvar.
    waiter_count: AtomicUsize,
    /// `P` is a strategy only.
    _parker: PhantomData<fn() -> P>,
}

// SAFETY: `mutex` and the queue's consumer side are only touched under `lock`; the
// rest is atomics. The stored mutex pointer is only dereferenced while a waiter of
// that mutex is blocked in `wait`, which keeps the mutex borrowed (alive).
unsafe impl<P: Parker> Sync for Condvar<P> {}
// SAFETY: the condvar owns nothing thread-bound (records belong to blocked waiters,
// and a condvar with waiters is borrowed, so it cannot move).
unsafe impl<P: Parker> Send for Condvar<P> {}

impl<P: Parker> Default for Condvar<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Parker> fmt::Debug for Condvar<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("waiters", &self.waiter_count.load(Ordering::Relaxed))
            .finish()
    }
}

impl<P: Parker> Condvar<P> {
    /// A condition variable without waiters.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            lock: RawMutex::new(),
            waiters: MpscQueue::new(),
            mutex: UnsafeCell::new(ptr::null()),
            waiter_count: AtomicUsize::new(0),
            _parker: PhantomData,
        }
    }

    /// A condition variable without waiters (not `const` under loom).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            lock: RawMutex::new(),
            waiters: MpscQueue::new(),
            mutex: UnsafeCell::new(ptr::null()),
            waiter_count: AtomicUsize::new(0),
            _parker: PhantomData,
        }
    }

    /// Unlocks the guard's mutex and blocks until notified; returns holding the
    /// mutex again.
    ///
    /// # Panics
    /// If other threads are waiting with a different mutex.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T, P>) -> MutexGuard<'a, T, P> {
        let mutex = guard.mutex;
        let raw: *const RawMutex<P> = &mutex.raw;
        let record = Waiter::<P>::for_current_thread();
        self.lock.acquire();
        // SAFETY: relies on (1) holding `lock`, which guards `mutex`.
        let same_mutex = self.mutex.with_mut(|current| unsafe {
            if (*current).is_null() || *current == raw {
                *current = raw;
                true
            } else {
                false
            }
        });
        if !same_mutex {
            // SAFETY: relies on (1) we acquired `lock` above.
            unsafe { self.lock.release() };
            panic!("keel_lfmutex::Condvar waited on with two different mutexes");
        }
        // SAFETY: relies on (1) `record` living on this frame, which returns only
        // after `record.value().wait()` saw it woken, i.e. after the mutex popped it
        // (or `send_lock` woke it directly) and was done with it.
        unsafe { self.waiters.push(NonNull::from(&record)) };
        self.waiter_count.fetch_add(1, Ordering::Relaxed);
        // Unlock the user's mutex: end the guard's access to the data first, then
        // drop the `Unlocker` (while we still hold `lock`, so no notify can move our
        // record onto the mutex while we hold it).
        let MutexGuard { data, unlock, .. } = guard;
        // Under loom `MutPtr` ends a tracked access when dropped; without loom it is a
        // plain pointer, hence the lint.
        #[allow(clippy::drop_non_drop)]
        drop(data);
        drop::<Unlocker<'_, P>>(unlock);
        // SAFETY: relies on (1) we acquired `lock` above.
        unsafe { self.lock.release() };

        record.value().wait();

        // Woken means a notifier moved us and the mutex has been acquired for us.
        // Pass through `lock` once: the notifier that moved us may still be inside
        // `send_lock` on our mutex, and we must not let the mutex go before it is out.
        self.lock.acquire();
        // SAFETY: relies on (1) we acquired `lock` just above.
        unsafe { self.lock.release() };
        mutex.raw.receive_lock();
        mutex.guard()
    }

    /// Waits while `condition` holds for the protected value (checked first under
    /// the mutex, and again after every wake-up).
    ///
    /// # Panics
    /// As [`Condvar::wait`].
    pub fn wait_while<'a, T>(
        &self,
        mut guard: MutexGuard<'a, T, P>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T, P> {
        while condition(&mut guard) {
            guard = self.wait(guard);
        }
        guard
    }

    /// Moves the oldest waiter onto its mutex (waking it if the mutex is free).
    pub fn notify_one(&self) {
        if self.waiter_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.lock.acquire();
        // SAFETY: relies on (1) holding `lock`: we are the queue's only consumer.
        if let Some(record) = unsafe { self.waiters.pop() } {
            let mutex = self.take_mutex(self.waiter_count.fetch_sub(1, Ordering::Relaxed) == 1);
            // SAFETY: relies on (1) `mutex` being the mutex of this waiter, which is
            // blocked in `wait` with that mutex borrowed (alive) and unlocked by it;
            // (2) `record` being popped by us from our queue: live, in no queue, and
            // nobody else wakes it.
            unsafe { (*mutex).send_lock(record) };
        }
        // SAFETY: relies on (1) we acquired `lock` above.
        unsafe { self.lock.release() };
    }

    /// Moves all waiters onto their mutex, oldest first.
    pub fn notify_all(&self) {
        if self.waiter_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.lock.acquire();
        self.waiter_count.store(0, Ordering::Relaxed);
        let mutex = self.take_mutex(true);
        // SAFETY: relies on (1) holding `lock`: we are the queue's only consumer.
        while let Some(record) = unsafe { self.waiters.pop() } {
            // SAFETY: as in `notify_one`; the mutex stays alive while any of its
            // waiters has not returned, and none returns before we release `lock`.
            unsafe { (*mutex).send_lock(record) };
        }
        // SAFETY: relies on (1) we acquired `lock` above.
        unsafe { self.lock.release() };
    }

    /// The waiters' mutex; cleared (so another mutex may be used later) if `last`.
    /// Called under `lock` with at least one waiter.
    fn take_mutex(&self, last: bool) -> *const RawMutex<P> {
        // SAFETY: relies on (1) the caller holding `lock`, which guards `mutex`.
        self.mutex.with_mut(|current| unsafe {
            let mutex = *current;
            if last {
                *current = ptr::null();
            }
            mutex
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Mutex;
    use crate::test_parker::TestParker;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    type TestMutex<T> = Mutex<T, TestParker>;
    type TestCondvar = Condvar<TestParker>;

    #[test]
    fn ping_pong_ten_thousand_times() {
        const ROUNDS: u32 = 10_000;
        // The value is the number of moves so far; even: ping's turn, odd: pong's.
        let shared = Arc::new((TestMutex::new(0_u32), TestCondvar::new()));
        let pong = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let (mutex, condvar) = &*shared;
                let mut turn = mutex.lock();
                for _ in 0..ROUNDS {
                    turn = condvar.wait_while(turn, |moves| *moves % 2 == 0);
                    *turn += 1;
                    condvar.notify_one();
                }
            })
        };
        let (mutex, condvar) = &*shared;
        let mut turn = mutex.lock();
        for _ in 0..ROUNDS {
            turn = condvar.wait_while(turn, |moves| *moves % 2 == 1);
            *turn += 1;
            condvar.notify_one();
        }
        turn = condvar.wait_while(turn, |moves| *moves < 2 * ROUNDS);
        assert_eq!(*turn, 2 * ROUNDS);
        drop(turn);
        pong.join().unwrap();
    }

    #[test]
    fn notify_all_wakes_every_waiter() {
        const WAITERS: usize = 8;
        // (generation released, waiters that saw it)
        let shared = Arc::new((TestMutex::new((false, 0_usize)), TestCondvar::new()));
        let ready = Arc::new((TestMutex::new(0_usize), TestCondvar::new()));
        let handles: Vec<_> = (0..WAITERS)
            .map(|_| {
                let shared = Arc::clone(&shared);
                let ready = Arc::clone(&ready);
                thread::spawn(move || {
                    let (mutex, condvar) = &*shared;
                    let mut state = mutex.lock();
                    {
                        *ready.0.lock() += 1;
                        ready.1.notify_one();
                    }
                    state = condvar.wait_while(state, |(go, _)| !*go);
                    state.1 += 1;
                })
            })
            .collect();
        // Wait until all waiters hold or have held the mutex before notifying; the
        // ones that still hold it will find `go` set anyway.
        let count = ready.1.wait_while(ready.0.lock(), |count| *count < WAITERS);
        drop(count);
        let (mutex, condvar) = &*shared;
        mutex.lock().0 = true;
        condvar.notify_all();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(mutex.lock().1, WAITERS);
    }

    #[test]
    fn notify_all_with_waiters_all_parked() {
        const WAITERS: usize = 6;
        let shared = Arc::new((TestMutex::new((0_u32, 0_usize)), TestCondvar::new()));
        let handles: Vec<_> = (0..WAITERS)
            .map(|_| {
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let (mutex, condvar) = &*shared;
                    let mut state = mutex.lock();
                    state.1 += 1; // parked (or about to be, with the mutex released)
                    state = condvar.wait_while(state, |(generation, _)| *generation == 0);
                    assert_eq!(state.0, 1);
                })
            })
            .collect();
        let (mutex, condvar) = &*shared;
        // Once all have registered and released the mutex inside `wait`, they are
        // all in the condvar's queue.
        loop {
            let state = mutex.lock();
            if state.1 == WAITERS && condvar.waiter_count.load(Ordering::Relaxed) == WAITERS {
                break;
            }
            drop(state);
            thread::yield_now();
        }
        mutex.lock().0 = 1;
        condvar.notify_all();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(condvar.waiter_count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn notify_without_waiters_is_a_no_op() {
        let condvar = TestCondvar::new();
        condvar.notify_one();
        condvar.notify_all();
        assert_eq!(std::format!("{condvar:?}"), "Condvar { waiters: 0 }");
    }
}
