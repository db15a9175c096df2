//! loom models of `keel-lfmutex`: the lock-free mutex (including the responsibility
//! hand-off race and the offer race, where a running locker barges past a woken
//! waiter), the wait-morphing condition variable, and the MPSC wait queue.
//!
//! Waiters block through `LoomParker` (loom's park/unpark), so a lost wake-up makes
//! loom report a deadlock ("deadlock; threads = ..."), which fails the model.
//! Mutual exclusion is witnessed by loom cells written only inside critical
//! sections (overlap, or a missing Release/Acquire edge, is a "Causality
//! violation").
//!
//! With the feature `broken-lfmutex`, the unlocker that finds the wait queue empty
//! (the racing locker has counted itself but not queued yet) skips the hand-off and
//! returns, so that locker sleeps forever. The models in which a locker can meet a
//! held mutex are then `should_panic(expected = "deadlock")`: they pass only if loom
//! finds the lost wake-up. The models that never block on a held mutex (the queue
//! alone, `try_lock` against `try_lock`) must pass in both builds.
//!
//! With the feature `broken-lfmutex-offer`, an unlocker that finds an offered waiter
//! already waking up returns without leaving the mutex on offer, so nobody holds it
//! and that waiter, having found nothing to take, sleeps forever. The models in which
//! an unlock can meet a waiter in flight (a holder that locks again, or three
//! threads) are `should_panic(expected = "deadlock")` with it; the others pass.
#![cfg(loom)]

use std::ptr::NonNull;

use keel_lfmutex::queue::{MpscQueue, Node};
use keel_lfmutex::{Condvar, LoomParker, Mutex, RawMutex};
use loom::cell::UnsafeCell;
use loom::thread;

type LoomMutex<T> = Mutex<T, LoomParker>;
type LoomRawMutex = RawMutex<LoomParker>;
type LoomCondvar = Condvar<LoomParker>;

mod common;

/// Runs `model` under loom with at most `preemptions` preemptions per execution
/// (unless `LOOM_MAX_PREEMPTIONS` says otherwise: see `common`).
fn check_bounded(preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    common::check_bounded(preemptions, 100_000, model);
}

/// Shares `value` between model threads for the rest of the process.
///
/// The models share state through leaked references rather than `loom::sync::Arc`:
/// when loom detects a deadlock (the expected outcome with `broken-lfmutex`) it
/// unwinds the blocked threads, and dropping a loom `Arc` there would call into the
/// already-failed execution and abort the process. The leak is a few hundred bytes
/// per explored execution.
fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// A raw mutex plus a cell touched only inside its critical sections.
struct Witnessed {
    mutex: LoomRawMutex,
    witness: UnsafeCell<usize>,
}

// SAFETY: (test-only) `witness` is only accessed while `mutex` is held; if the mutex
// fails to exclude, loom's cell tracking reports it (that is the point of the test).
unsafe impl Sync for Witnessed {}

impl Witnessed {
    fn new() -> Self {
        Self {
            mutex: LoomRawMutex::new(),
            witness: UnsafeCell::new(0),
        }
    }

    /// The critical section: a non-atomic read-modify-write of the witness.
    fn bump_witness(&self) {
        // SAFETY: called only while `self.mutex` is held; loom checks that claim.
        self.witness.with_mut(|count| unsafe { *count += 1 });
    }

    fn witness_value(&self) -> usize {
        // SAFETY: called after all other threads were joined.
        self.witness.with(|count| unsafe { *count })
    }
}

/// Two threads increment a `Mutex<usize>` through the guard; the total is exact.
#[test]
#[cfg_attr(feature = "broken-lfmutex", should_panic(expected = "deadlock"))]
fn two_threads_lock_and_increment_exactly() {
    check_bounded(3, || {
        let counter = leak(LoomMutex::new(0_usize));
        let other = counter;
        let handle = thread::spawn(move || {
            let mut guard = other.lock();
            let value = *guard;
            *guard = value + 1;
        });
        {
            let mut guard = counter.lock();
            let value = *guard;
            *guard = value + 1;
        }
        handle.join().unwrap();
        assert_eq!(*counter.lock(), 2);
    });
}

/// The hand-off race itself: the main thread holds the mutex when the other thread
/// locks, so that thread always counts itself in and queues; loom interleaves the
/// main thread's unlock with every point of that (in particular between its
/// `fetch_add` and its push, where the unlocker finds the queue empty and must hand
/// off the responsibility for waking it).
#[test]
#[cfg_attr(feature = "broken-lfmutex", should_panic(expected = "deadlock"))]
fn handoff_race_unlock_before_the_locker_queues() {
    check_bounded(3, || {
        let shared = leak(Witnessed::new());
        shared.mutex.lock();
        let other = shared;
        let handle = thread::spawn(move || {
            other.mutex.lock();
            other.bump_witness();
            other.mutex.unlock().unwrap();
        });
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        handle.join().unwrap();
        assert_eq!(shared.witness_value(), 2);
        assert!(!shared.mutex.is_locked());
    });
}

/// The offer race: the main thread holds the mutex while the other thread queues,
/// then unlocks and at once locks again. Its unlock pops the waiter and only
/// *offers* it the mutex (`IN_FLIGHT` plus a token), so the relock can barge in
/// and take the token before the woken waiter competes; the waiter must then queue
/// again and be handed the mutex by the second unlock, however the steps
/// interleave (an unlock that finds a waiter already in flight leaves the mutex on
/// offer instead of waking anyone).
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn holder_relocks_past_an_offered_waiter() {
    check_bounded(3, || {
        let shared = leak(Witnessed::new());
        shared.mutex.lock();
        let other = shared;
        let handle = thread::spawn(move || {
            other.mutex.lock();
            other.bump_witness();
            other.mutex.unlock().unwrap();
        });
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        shared.mutex.lock();
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        handle.join().unwrap();
        assert_eq!(shared.witness_value(), 3);
        assert!(!shared.mutex.is_locked());
    });
}

/// Two waiters and a holder that locks twice: while one offered waiter is on its
/// way, the other waiter and the relocking holder race for the token, and every
/// later unlock must find whoever still waits.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn offer_in_flight_with_two_waiters() {
    check_bounded(2, || {
        let shared = leak(Witnessed::new());
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
        shared.mutex.lock();
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(shared.witness_value(), 4);
        assert!(!shared.mutex.is_locked());
    });
}

/// Two waiters queue behind a holder (three threads): the unlocker, the hand-off
/// taker and the queue's single-consumer rule all get exercised, and the witness
/// cell checks that every hand-over carries the critical section along.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn three_threads_lock_and_unlock_exclude() {
    check_bounded(2, || {
        let shared = leak(Witnessed::new());
        let handles: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    shared.mutex.lock();
                    shared.bump_witness();
                    shared.mutex.unlock().unwrap();
                })
            })
            .collect();
        shared.mutex.lock();
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(shared.witness_value(), 3);
    });
}

/// A locker, a `try_lock`er (which may take a hand-off token) and a recursive
/// holder: grants never overlap, recursion needs as many unlocks, and the count
/// equals the number of grants.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn try_lock_and_recursive_holder_exclude() {
    check_bounded(2, || {
        let shared = leak(Witnessed::new());
        let trier = shared;
        let try_handle = thread::spawn(move || {
            if trier.mutex.try_lock() {
                trier.bump_witness();
                trier.mutex.unlock().unwrap();
                1
            } else {
                0
            }
        });
        let locker = shared;
        let lock_handle = thread::spawn(move || {
            locker.mutex.lock();
            locker.bump_witness();
            locker.mutex.unlock().unwrap();
        });
        shared.mutex.lock();
        shared.mutex.lock();
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        let granted = try_handle.join().unwrap();
        lock_handle.join().unwrap();
        assert_eq!(shared.witness_value(), 3 + granted);
    });
}

/// `try_lock` against `try_lock` (nobody ever blocks): at most one holds at a time.
/// Unaffected by `broken-lfmutex`, so it must pass in both builds.
#[test]
fn try_lock_against_try_lock_excludes() {
    check_bounded(3, || {
        let shared = leak(Witnessed::new());
        let other = shared;
        let try_once = |shared: &Witnessed| {
            if shared.mutex.try_lock() {
                shared.bump_witness();
                shared.mutex.unlock().unwrap();
                1
            } else {
                0
            }
        };
        let handle = thread::spawn(move || try_once(other));
        let granted = try_once(shared) + handle.join().unwrap();
        assert!(granted >= 1);
        assert_eq!(shared.witness_value(), granted);
    });
}

/// Condvar signal: the waiter must wake (no lost wake-up, whether the notify comes
/// before or after it queues) and must hold the mutex when it does (wait morphing
/// hands it over without a second wake-up).
#[test]
#[cfg_attr(feature = "broken-lfmutex", should_panic(expected = "deadlock"))]
fn condvar_signal_is_not_lost() {
    check_bounded(3, || {
        let shared = leak((LoomMutex::new(false), LoomCondvar::new()));
        let notifier = shared;
        let handle = thread::spawn(move || {
            let (mutex, condvar) = notifier;
            *mutex.lock() = true;
            condvar.notify_one();
        });
        let (mutex, condvar) = shared;
        let ready = condvar.wait_while(mutex.lock(), |ready| !*ready);
        assert!(*ready);
        drop(ready);
        handle.join().unwrap();
    });
}

/// Condvar signal while the notifier holds the mutex: the waiter's record is moved
/// onto the mutex's queue (not woken) and woken by the notifier's unlock.
#[test]
#[cfg_attr(feature = "broken-lfmutex", should_panic(expected = "deadlock"))]
fn condvar_signal_under_the_mutex_morphs_the_wait() {
    check_bounded(3, || {
        let shared = leak((LoomMutex::new(0_u32), LoomCondvar::new()));
        let notifier = shared;
        let handle = thread::spawn(move || {
            let (mutex, condvar) = notifier;
            let mut value = mutex.lock();
            *value += 1;
            condvar.notify_one();
            // Still holding: the waiter (if queued) now waits on the mutex.
            *value += 1;
        });
        let (mutex, condvar) = shared;
        let value = condvar.wait_while(mutex.lock(), |value| *value == 0);
        assert_eq!(*value, 2, "woken only after the notifier's unlock");
        drop(value);
        handle.join().unwrap();
    });
}

/// Condvar broadcast: two waiters, one `notify_all`; both wake (in turn, each
/// holding the mutex), none is lost.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn condvar_broadcast_wakes_all() {
    check_bounded(2, || {
        let shared = leak((LoomMutex::new((false, 0_usize)), LoomCondvar::new()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    let (mutex, condvar) = shared;
                    let mut state = condvar.wait_while(mutex.lock(), |(go, _)| !*go);
                    state.1 += 1;
                })
            })
            .collect();
        let (mutex, condvar) = shared;
        mutex.lock().0 = true;
        condvar.notify_all();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(mutex.lock().1, 2);
    });
}

/// The MPSC wait queue alone: two producers push two nodes each while the consumer
/// pops; every node comes out exactly once, each producer's in push order, and the
/// links are handed over race-free (loom cells). Unaffected by `broken-lfmutex`.
#[test]
fn mpsc_queue_two_producers_one_consumer() {
    check_bounded(3, || {
        // The nodes are leaked, so they outlive every use.
        let nodes: &'static Vec<Node<(usize, usize)>> = leak(
            (0..2)
                .flat_map(|producer| (0..2).map(move |index| Node::new((producer, index))))
                .collect(),
        );
        let queue = leak(MpscQueue::new());
        let producers: Vec<_> = (0..2)
            .map(|producer| {
                thread::spawn(move || {
                    for index in 0..2 {
                        let node = NonNull::from(&nodes[producer * 2 + index]);
                        // SAFETY: the nodes are leaked (alive for good) and each is
                        // pushed once.
                        unsafe { queue.push(node) };
                    }
                })
            })
            .collect();
        let mut next_index = [0_usize; 2];
        let mut popped = 0;
        while popped < 4 {
            // SAFETY: the main thread is the only consumer.
            match unsafe { queue.pop() } {
                Some(node) => {
                    // SAFETY: popped nodes point into the leaked `nodes`.
                    let (producer, index) = *unsafe { node.as_ref() }.value();
                    assert_eq!(index, next_index[producer], "per-producer FIFO");
                    next_index[producer] += 1;
                    popped += 1;
                }
                None => thread::yield_now(),
            }
        }
        for producer in producers {
            producer.join().unwrap();
        }
        assert!(queue.is_empty());
        // SAFETY: single consumer, after all producers finished.
        assert!(unsafe { queue.pop() }.is_none());
    });
}

/// Two offers lost in a row (four threads): the main thread holds the mutex while
/// two waiters queue, then unlocks (offering it to the first waiter) while a barger
/// locks and unlocks twice, so the offered waiter can lose to it, queue again, and
/// the next offer can be lost too. Every grant is witnessed and nobody is left
/// asleep. Bound 1: four threads explode the state space (see loom-tests/README.md).
/// At its bound it does not reach the hand-off race that `broken-lfmutex` breaks
/// (that build runs it as a plain model); it catches `broken-lfmutex-offer`.
#[test]
#[cfg_attr(feature = "broken-lfmutex-offer", should_panic(expected = "deadlock"))]
fn two_lost_offers_in_a_row() {
    check_bounded(1, || {
        let shared = leak(Witnessed::new());
        shared.mutex.lock();
        let mut handles: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    shared.mutex.lock();
                    shared.bump_witness();
                    shared.mutex.unlock().unwrap();
                })
            })
            .collect();
        handles.push(thread::spawn(move || {
            for _ in 0..2 {
                shared.mutex.lock();
                shared.bump_witness();
                shared.mutex.unlock().unwrap();
            }
        }));
        shared.bump_witness();
        shared.mutex.unlock().unwrap();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(shared.witness_value(), 5);
        assert!(!shared.mutex.is_locked());
    });
}

/// A condition-variable waiter moved onto the mutex (`send_lock`) while an offer is
/// in flight: the main thread holds the mutex with a mutex waiter queued, unlocks
/// (offering it to that waiter) and then notifies the condvar waiter without the
/// mutex, which moves the condvar waiter onto the mutex while the offer is out. The
/// moved waiter must be handed the mutex, never only offered it.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn lost_offer_meets_a_moved_condvar_waiter() {
    check_bounded(2, || {
        let shared = leak((LoomMutex::new((false, 0_usize)), LoomCondvar::new()));
        let (mutex, condvar) = shared;
        let waiter = thread::spawn(move || {
            let (mutex, condvar) = shared;
            let mut state = condvar.wait_while(mutex.lock(), |(go, _)| !*go);
            state.1 += 1;
        });
        let mut state = mutex.lock();
        let locker = thread::spawn(move || {
            let (mutex, _) = shared;
            mutex.lock().1 += 1;
        });
        state.0 = true;
        drop(state);
        condvar.notify_one();
        waiter.join().unwrap();
        locker.join().unwrap();
        assert_eq!(mutex.lock().1, 2);
    });
}

/// Two notifiers contend for the condvar's internal lock while one waiter waits for
/// both of their updates: whichever notify finds the waiter queued moves it, the
/// other finds nothing (or the waiter again, after it re-checked and waited again),
/// and the waiter ends with both updates.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn two_notifiers_contend_for_the_condvar() {
    check_bounded(1, || {
        let shared = leak((LoomMutex::new(0_usize), LoomCondvar::new()));
        let notifiers: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    let (mutex, condvar) = shared;
                    *mutex.lock() += 1;
                    condvar.notify_one();
                })
            })
            .collect();
        let (mutex, condvar) = shared;
        let count = condvar.wait_while(mutex.lock(), |count| *count < 2);
        assert_eq!(*count, 2);
        drop(count);
        for notifier in notifiers {
            notifier.join().unwrap();
        }
    });
}

/// `notify_one` with two waiters: two tickets are posted one at a time, each with a
/// `notify_one`; each wakes one waiter (or finds it not yet waiting, and the waiter
/// sees the ticket at its check), and both waiters get a ticket.
/// At its bound it does not reach the hand-off race that `broken-lfmutex` breaks
/// (that build runs it as a plain model); it catches `broken-lfmutex-offer`.
#[test]
#[cfg_attr(feature = "broken-lfmutex-offer", should_panic(expected = "deadlock"))]
fn notify_one_with_two_waiters_wakes_each_once() {
    check_bounded(1, || {
        let shared = leak((LoomMutex::new(0_usize), LoomCondvar::new()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    let (mutex, condvar) = shared;
                    let mut tickets = condvar.wait_while(mutex.lock(), |tickets| *tickets == 0);
                    *tickets -= 1;
                })
            })
            .collect();
        let (mutex, condvar) = shared;
        for _ in 0..2 {
            *mutex.lock() += 1;
            condvar.notify_one();
        }
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(*mutex.lock(), 0);
    });
}

/// The semaphore with one unit: two threads `wait` and `post` around a witnessed
/// critical section; the unit is never held twice and is back at the end.
#[test]
#[cfg_attr(
    any(feature = "broken-lfmutex", feature = "broken-lfmutex-offer"),
    should_panic(expected = "deadlock")
)]
fn semaphore_with_one_unit_excludes() {
    check_bounded(2, || {
        let shared = leak((
            keel_lfmutex::Semaphore::<LoomParker>::new(1),
            WitnessCell::new(),
        ));
        let other = thread::spawn(move || {
            let (semaphore, witness) = shared;
            semaphore.wait();
            witness.bump();
            semaphore.post(1);
        });
        let (semaphore, witness) = shared;
        semaphore.wait();
        witness.bump();
        semaphore.post(1);
        other.join().unwrap();
        assert_eq!(witness.value(), 2);
        assert_eq!(semaphore.available(), 1);
    });
}

/// The RwLock: a writer and two readers. Readers read the witness cell and writers
/// write it, so a reader overlapping the writer is a loom race; both readers may
/// overlap each other.
/// At its bound it does not reach the hand-off race that `broken-lfmutex` breaks
/// (that build runs it as a plain model); it catches `broken-lfmutex-offer`.
#[test]
#[cfg_attr(feature = "broken-lfmutex-offer", should_panic(expected = "deadlock"))]
fn rwlock_readers_and_a_writer_exclude() {
    check_bounded(1, || {
        let lock = leak(keel_lfmutex::RwLock::<WitnessCell, LoomParker>::new(
            WitnessCell::new(),
        ));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                thread::spawn(move || {
                    let witness = lock.read();
                    witness.value()
                })
            })
            .collect();
        lock.write().bump();
        let seen: Vec<usize> = readers
            .into_iter()
            .map(|reader| reader.join().unwrap())
            .collect();
        assert!(seen.iter().all(|&value| value <= 1));
        assert_eq!(lock.read().value(), 1);
    });
}

/// A counter cell for primitives without a data type of their own (the semaphore)
/// or that hand out `&T` (the RwLock's readers): non-atomic, so loom reports any
/// access that the primitive failed to order.
struct WitnessCell(UnsafeCell<usize>);

// SAFETY: (test-only) accessed only under the primitive being modelled; loom's cell
// tracking reports it if the primitive fails to exclude or to order the accesses.
unsafe impl Sync for WitnessCell {}
// SAFETY: as above; it holds a plain integer.
unsafe impl Send for WitnessCell {}

impl WitnessCell {
    fn new() -> Self {
        Self(UnsafeCell::new(0))
    }

    fn bump(&self) {
        // SAFETY: called only with exclusive access granted by the primitive.
        self.0.with_mut(|count| unsafe { *count += 1 });
    }

    fn value(&self) -> usize {
        // SAFETY: called with shared access granted by the primitive (or after the
        // other threads were joined).
        self.0.with(|count| unsafe { *count })
    }
}
