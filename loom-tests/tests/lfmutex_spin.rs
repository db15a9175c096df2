//! loom model of `keel-lfmutex`'s bounded, owner-aware spinning: a locker that finds
//! the mutex held watches the lock word (under loom for one look beyond the first,
//! and `LoomParker` always reports the owner running, so the spin path is always
//! taken) and may take an offered mutex while a woken waiter is on its way.
//!
//! Every model in `lfmutex.rs` runs with spinning on too (it is the default); this
//! file holds the model aimed at what only a spinner does, and it is the one run
//! against the feature `broken-lfmutex-spin`, whose spinner takes an offered mutex
//! without counting itself in: its unlock then believes nobody waits, and the waiter
//! that lost the offer sleeps forever. The model must report that deadlock.
#![cfg(loom)]

use keel_lfmutex::{LoomParker, RawMutex};
use loom::cell::UnsafeCell;
use loom::thread;

mod common;

/// A raw mutex plus a cell touched only inside its critical sections.
struct Witnessed {
    mutex: RawMutex<LoomParker>,
    witness: UnsafeCell<usize>,
}

// SAFETY: (test-only) `witness` is only accessed while `mutex` is held; if the mutex
// fails to exclude, loom's cell tracking reports it.
unsafe impl Sync for Witnessed {}

impl Witnessed {
    fn bump_witness(&self) {
        // SAFETY: called only while `self.mutex` is held; loom checks that claim.
        self.witness.with_mut(|count| unsafe { *count += 1 });
    }
}

/// The holder (the main thread) unlocks while one thread waits, queued, and another
/// spins: the unlock offers the mutex to the queued waiter, and the spinner can take
/// the token first; the waiter then queues again and must still get the mutex.
#[test]
#[cfg_attr(feature = "broken-lfmutex-spin", should_panic(expected = "deadlock"))]
fn spinner_takes_the_offer_from_a_woken_waiter() {
    common::check_bounded(2, 100_000, || {
        let shared: &'static Witnessed = Box::leak(Box::new(Witnessed {
            mutex: RawMutex::new(),
            witness: UnsafeCell::new(0),
        }));
        shared.mutex.lock();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    shared.mutex.lock();
                    shared.bump_witness();
                    shared.mutex.unlock().unwrap();
                })
            })
            .collect();
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        for handle in handles {
            handle.join().unwrap();
        }
        // SAFETY: every other thread has been joined.
        assert_eq!(shared.witness.with(|count| unsafe { *count }), 3);
        assert!(!shared.mutex.is_locked());
    });
}
