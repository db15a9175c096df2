//! The FIFO ticket spinlock.

use core::fmt;
use core::ops::{Deref, DerefMut};

use crate::shim::{AtomicU32, MutPtr, Ordering, UnsafeCell, spin_loop};

/// A FIFO ticket spinlock protecting a `T`.
///
/// A locker takes the next ticket and spins until the lock serves that ticket, so
/// waiters enter in arrival order and none can be starved. Unlocking (dropping the
/// [`SpinLockGuard`]) serves the next ticket. Meant for short, non-blocking critical
/// sections; see the [crate docs](crate).
///
/// ```
/// let counter = keel_sync::SpinLock::new(0_u64);
/// *counter.lock() += 1;
/// assert_eq!(counter.into_inner(), 1);
/// ```
pub struct SpinLock<T> {
    /// The next ticket to hand out, as a wrapping `u32` counter (it may wrap: only
    /// equality is ever compared, and fewer than 2³² lockers wait at once).
    ///
    /// Written only by read-modify-writes: `lock` takes ticket `t` with
    /// `fetch_add(1, Relaxed)`, `try_lock` with `compare_exchange(s, s + 1, Relaxed,
    /// Relaxed)` where `s` is the ticket being served. Relaxed suffices because no
    /// data is published through this counter: all synchronisation goes through
    /// `now_serving`. Being a single RMW is what makes tickets unique.
    next_ticket: AtomicU32,
    /// The ticket allowed into the critical section, as a wrapping `u32` counter;
    /// the lock is free exactly when `now_serving == next_ticket`.
    ///
    /// Only the holder writes it: unlocking stores `ticket + 1` with `Release`, which
    /// publishes the holder's writes to `data`. Waiters load it with `Acquire` until
    /// it equals their ticket, which makes those writes visible to the next holder.
    now_serving: AtomicU32,
    /// The protected value; reached only through a guard, i.e. while holding the
    /// ticket equal to `now_serving`.
    data: UnsafeCell<T>,
}

// SAFETY: `SpinLock` hands out access to `data` to one holder at a time (the holder
// of the ticket being served), and the Release store / Acquire load pair on
// `now_serving` orders each holder's accesses before the next holder's. So sharing a
// `&SpinLock<T>` between threads only ever moves exclusive access to the `T` from one
// thread to another, which is sound exactly when `T: Send` (as for `std::sync::Mutex`).
unsafe impl<T: Send> Sync for SpinLock<T> {}

/// Exclusive access to the value of a locked [`SpinLock`]; unlocks when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a, T> {
    // Field order matters: fields drop in declaration order, so `data` (under loom,
    // the tracked write access to the cell) ends *before* `release` hands the lock to
    // the next ticket. The other order would make loom report a spurious race.
    /// The write access to the protected value, valid while the ticket is served.
    data: MutPtr<T>,
    /// Serves the next ticket on drop.
    release: TicketRelease<'a>,
}

/// Unlocks a [`SpinLock`] when dropped, by serving the ticket after `ticket`.
struct TicketRelease<'a> {
    now_serving: &'a AtomicU32,
    ticket: u32,
}

impl Drop for TicketRelease<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: publishes this holder's writes to the next holder's Acquire load.
        self.now_serving
            .store(self.ticket.wrapping_add(1), Ordering::Release);
    }
}

impl<T> SpinLock<T> {
    /// Creates an unlocked lock holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            next_ticket: AtomicU32::new(0),
            now_serving: AtomicU32::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// Creates an unlocked lock holding `value` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            next_ticket: AtomicU32::new(0),
            now_serving: AtomicU32::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// Takes a ticket and spins until it is served, then returns the guard.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let ticket = self.take_ticket();
        // Acquire: pairs with the Release store of the previous holder's unlock.
        while self.now_serving.load(Ordering::Acquire) != ticket {
            spin_loop();
        }
        self.guard(ticket)
    }

    /// Locks only if the lock is free and nobody is waiting; never spins.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        // Acquire: if `serving` is then ours, the previous holder's writes are visible.
        let serving = self.now_serving.load(Ordering::Acquire);
        // Succeeds only if no ticket beyond `serving` was handed out, i.e. nobody holds
        // or waits; then ticket `serving` is ours, and `now_serving` (which only its
        // holder advances, and which we saw at `serving`) still equals it.
        self.next_ticket
            .compare_exchange(
                serving,
                serving.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()?;
        Some(self.guard(serving))
    }

    /// Whether the lock is held (or waited for) right now; only a hint, since it may
    /// change as soon as it is read.
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.now_serving.load(Ordering::Relaxed) != self.next_ticket.load(Ordering::Relaxed)
    }

    /// Returns the protected value, consuming the lock.
    #[inline]
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// Mutable access without locking: `&mut self` proves nobody else holds the lock.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: relies on (1) `&mut self`, so no guard of this lock is alive and no
        // other reference to `data` exists for the returned lifetime, which is tied to
        // that borrow; (2) the cell is alive as long as `self`.
        self.data.with_mut(|value| unsafe { &mut *value })
    }

    /// Takes a unique ticket with one atomic read-modify-write.
    #[cfg(not(feature = "broken-spinlock"))]
    #[inline]
    fn take_ticket(&self) -> u32 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// DELIBERATELY BROKEN (feature `broken-spinlock`, for the loom tests only): the
    /// ticket is read and then written back as two separate operations, so two lockers
    /// can take the same ticket and both enter the critical section.
    #[cfg(feature = "broken-spinlock")]
    #[inline]
    fn take_ticket(&self) -> u32 {
        let ticket = self.next_ticket.load(Ordering::Relaxed);
        self.next_ticket
            .store(ticket.wrapping_add(1), Ordering::Relaxed);
        ticket
    }

    /// Builds the guard once `ticket` is being served.
    #[inline]
    fn guard(&self, ticket: u32) -> SpinLockGuard<'_, T> {
        SpinLockGuard {
            data: self.data.get_mut(),
            release: TicketRelease {
                now_serving: &self.now_serving,
                ticket,
            },
        }
    }
}

impl<T: Default> Default for SpinLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("SpinLock");
        match self.try_lock() {
            Some(guard) => debug.field("data", &&*guard),
            None => debug.field("data", &format_args!("<locked>")),
        };
        debug.finish()
    }
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: relies on (1) the guard existing only while its ticket is served, so
        // no other guard (hence no other reference to the value) exists; (2) the lock,
        // and so the cell, outliving the guard (`'a`); (3) the returned `&T` borrowing
        // the guard, so it cannot outlive the unlock or coexist with `deref_mut`.
        unsafe { self.data.deref() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the `&mut self` borrow additionally makes the returned
        // `&mut T` the only reference derived from this guard.
        unsafe { self.data.deref() }
    }
}

impl<T: fmt::Debug> fmt::Debug for SpinLockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLockGuard")
            .field("ticket", &self.release.ticket)
            .field("data", &&**self)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    #[test]
    fn lock_try_lock_into_inner() {
        let lock = SpinLock::new(5_u32);
        {
            let mut guard = lock.lock();
            *guard += 1;
            assert!(lock.is_locked());
            assert!(lock.try_lock().is_none());
        }
        assert!(!lock.is_locked());
        *lock.try_lock().expect("free lock") += 1;
        assert_eq!(lock.into_inner(), 7);
    }

    #[test]
    fn get_mut_and_debug() {
        let mut lock = SpinLock::new(1_u8);
        *lock.get_mut() = 9;
        assert_eq!(std::format!("{lock:?}"), "SpinLock { data: 9 }");
        let guard = lock.lock();
        assert_eq!(
            std::format!("{guard:?}"),
            "SpinLockGuard { ticket: 1, data: 9 }"
        );
        assert_eq!(std::format!("{lock:?}"), "SpinLock { data: <locked> }");
    }

    #[test]
    fn ticket_counters_wrap() {
        let lock = SpinLock::new(0);
        lock.next_ticket.store(u32::MAX - 1, Ordering::Relaxed);
        lock.now_serving.store(u32::MAX - 1, Ordering::Relaxed);
        for _ in 0..4 {
            *lock.lock() += 1;
            assert!(!lock.is_locked());
        }
        assert_eq!(*lock.try_lock().unwrap(), 4);
    }

    #[test]
    fn four_threads_count_exactly() {
        const THREADS: usize = 4;
        const INCREMENTS: usize = 10_000;
        let counter = Arc::new(SpinLock::new(0_usize));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    for _ in 0..INCREMENTS {
                        // A non-atomic read-modify-write: only exclusion keeps it exact.
                        let mut guard = counter.lock();
                        let value = *guard;
                        core::hint::black_box(&value);
                        *guard = value + 1;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*counter.lock(), THREADS * INCREMENTS);
    }

    #[test]
    fn try_lock_contended_threads_count_exactly() {
        let counter = Arc::new(SpinLock::new(0_usize));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    let mut done = 0;
                    while done < 5_000 {
                        if let Some(mut guard) = counter.try_lock() {
                            *guard += 1;
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for _ in 0..5_000 {
            *counter.lock() += 1;
        }
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*counter.lock(), 15_000);
    }

    /// Waiters enter in the order they took their tickets.
    #[test]
    fn waiters_are_served_in_fifo_order() {
        let lock = Arc::new(SpinLock::new(Vec::new()));
        let held = lock.lock();
        let mut handles = Vec::new();
        for name in 0..3_u32 {
            let lock2 = Arc::clone(&lock);
            handles.push(thread::spawn(move || lock2.lock().push(name)));
            // Wait until this waiter has taken its ticket before starting the next one.
            while lock.next_ticket.load(Ordering::Relaxed) != name + 2 {
                thread::yield_now();
            }
        }
        drop(held);
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*lock.lock(), [0, 1, 2]);
    }
}
