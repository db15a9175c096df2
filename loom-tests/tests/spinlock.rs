//! loom models of `keel_sync::SpinLock`.
//!
//! Every model runs with a preemption bound of 3 (see [`check`]), except the
//! three-locker model, which uses 1 (two spinning waiters make bound 2 run for more
//! than 5 minutes; the three-thread `try_lock` model keeps bound 3). Mutual exclusion is
//! checked twice: by the lock's own cell (the guard holds a loom `MutPtr`, a tracked
//! write access, for its whole life) and by a separate loom `UnsafeCell` written only
//! inside the critical section, so any two critical sections not ordered by
//! happens-before (overlapping, or missing the Release/Acquire edge) fail the model
//! with "Causality violation".
//!
//! With the feature `broken-spinlock`, `SpinLock::lock` takes its ticket with a load
//! and a store instead of one `fetch_add`, so two lockers can both enter; every model
//! is then `should_panic(expected = "Causality violation")`, i.e. it passes only when
//! loom finds the interleaving that breaks exclusion.
#![cfg(loom)]

use keel_sync::SpinLock;
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

/// Runs `model` under loom with the preemption bound used by the spinlock models.
fn check(model: impl Fn() + Sync + Send + 'static) {
    check_bounded(3, model);
}

mod common;

/// Runs `model` under loom with at most `preemptions` preemptions per execution
/// (unless `LOOM_MAX_PREEMPTIONS` says otherwise: see `common`).
fn check_bounded(preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    // Every spin of a waiter (a loom yield) is a branch; with three threads and two
    // waiters spinning, loom's default of 1000 branches per execution is too low.
    common::check_bounded(preemptions, 100_000, model);
}

/// A lock guarding nothing plus a cell touched only inside the critical section: the
/// cell is loom's witness of mutual exclusion, independent of the lock's own cell.
struct Witnessed {
    lock: SpinLock<()>,
    witness: UnsafeCell<usize>,
}

// SAFETY: (test-only) `witness` is only accessed while `lock` is held; if the lock
// fails to exclude, loom's cell tracking reports it (that is the point of the test).
unsafe impl Sync for Witnessed {}

impl Witnessed {
    fn new() -> Self {
        Self {
            lock: SpinLock::new(()),
            witness: UnsafeCell::new(0),
        }
    }

    /// The critical section: a non-atomic read-modify-write of the witness.
    fn bump_witness(&self) {
        // SAFETY: called only while `self.lock` is held; loom checks that claim.
        self.witness.with_mut(|count| unsafe { *count += 1 });
    }

    fn witness_value(&self) -> usize {
        // SAFETY: called after all other threads were joined.
        self.witness.with(|count| unsafe { *count })
    }
}

/// Increments a `SpinLock<usize>` from `threads` threads (the main thread is one of
/// them) through the guard, as a separate load and store; the total must be exact.
fn lock_increment_model(threads: usize, preemptions: usize) {
    check_bounded(preemptions, move || {
        let counter = Arc::new(SpinLock::new(0_usize));
        let handles: Vec<_> = (1..threads)
            .map(|_| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    let mut guard = counter.lock();
                    let value = *guard;
                    *guard = value + 1;
                })
            })
            .collect();
        {
            let mut guard = counter.lock();
            let value = *guard;
            *guard = value + 1;
        }
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*counter.lock(), threads);
    });
}

#[test]
#[cfg_attr(
    feature = "broken-spinlock",
    should_panic(expected = "Causality violation")
)]
fn two_threads_lock_and_increment_exactly() {
    lock_increment_model(2, 3);
}

#[test]
#[cfg_attr(
    feature = "broken-spinlock",
    should_panic(expected = "Causality violation")
)]
fn three_threads_lock_and_increment_exactly() {
    // Two spinning waiters multiply the schedules: bound 2 ran for over 5 minutes.
    lock_increment_model(3, 1);
}

/// Two lockers, each critical section checked by the independent witness cell.
#[test]
#[cfg_attr(
    feature = "broken-spinlock",
    should_panic(expected = "Causality violation")
)]
fn lock_excludes_witnessed_by_a_separate_cell() {
    check(|| {
        let shared = Arc::new(Witnessed::new());
        let other = Arc::clone(&shared);
        let handle = thread::spawn(move || {
            let _guard = other.lock.lock();
            other.bump_witness();
        });
        {
            let _guard = shared.lock.lock();
            shared.bump_witness();
        }
        handle.join().unwrap();
        assert_eq!(shared.witness_value(), 2);
    });
}

/// `try_lock` never grants a lock that `lock` holds (or is about to get): one thread
/// locks, the other only tries; whatever the interleaving, the two critical sections
/// never overlap, and the count equals the number of grants.
#[test]
#[cfg_attr(
    feature = "broken-spinlock",
    should_panic(expected = "Causality violation")
)]
fn try_lock_never_grants_a_held_lock() {
    check(|| {
        let shared = Arc::new(Witnessed::new());
        let other = Arc::clone(&shared);
        let handle = thread::spawn(move || {
            let _guard = other.lock.lock();
            other.bump_witness();
        });
        let granted = match shared.lock.try_lock() {
            Some(_guard) => {
                shared.bump_witness();
                1
            }
            None => 0,
        };
        handle.join().unwrap();
        assert_eq!(shared.witness_value(), 1 + granted);
        // Once the other thread is done, the lock is free again.
        assert!(shared.lock.try_lock().is_some());
    });
}

/// Two `try_lock`ers against each other and a `lock`er: at most one holds at a time.
#[test]
#[cfg_attr(
    feature = "broken-spinlock",
    should_panic(expected = "Causality violation")
)]
fn try_lock_and_lock_three_threads_exclude() {
    check(|| {
        let shared = Arc::new(Witnessed::new());
        let trier = Arc::clone(&shared);
        let try_handle = thread::spawn(move || match trier.lock.try_lock() {
            Some(_guard) => {
                trier.bump_witness();
                1
            }
            None => 0,
        });
        let locker = Arc::clone(&shared);
        let lock_handle = thread::spawn(move || {
            let _guard = locker.lock.lock();
            locker.bump_witness();
        });
        let granted = match shared.lock.try_lock() {
            Some(_guard) => {
                shared.bump_witness();
                1
            }
            None => 0,
        };
        let granted = granted + try_handle.join().unwrap();
        lock_handle.join().unwrap();
        assert_eq!(shared.witness_value(), 1 + granted);
    });
}
