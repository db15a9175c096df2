//! The order in which waiters get the mutex when one of them loses an offer.
//!
//! A test parker lets the test hold a woken thread back ("gate" it), so the test can
//! make a barger take an offered mutex before the offered waiter runs, which on real
//! threads happens only by chance.

use crate::{Mutex, Parker, ThreadId};
use core::num::NonZeroU64;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar as StdCondvar, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// One thread's park state: a token as in `std::thread::park`, plus a gate the test
/// can close to hold the thread in `park` even when the token is there.
#[derive(Debug, Default)]
struct Gate {
    token: StdMutex<bool>,
    changed: StdCondvar,
    closed: AtomicBool,
    /// How many times the thread has entered `park`.
    parks: AtomicUsize,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        let _token = self.token.lock().unwrap();
        self.closed.store(closed, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

/// A `Parker` whose wake-ups the test can delay (see [`Gate`]).
#[derive(Debug, Clone, Copy, Default)]
struct GatedParker;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

std::thread_local! {
    static CURRENT: (Arc<Gate>, u64) =
        (Arc::new(Gate::default()), NEXT_ID.fetch_add(1, Ordering::Relaxed));
}

// SAFETY: `unpark` sets the thread's token under its gate's lock and notifies, and
// `park` returns only after consuming a token (so an unpark before or during a park
// makes it return; a closed gate only delays that). Ids come from one counter, fixed
// per thread by the thread-local, non-zero.
unsafe impl Parker for GatedParker {
    type Handle = Arc<Gate>;

    fn current() -> Self::Handle {
        CURRENT.with(|(gate, _)| Arc::clone(gate))
    }

    fn current_id() -> ThreadId {
        let id = CURRENT.with(|(_, id)| *id);
        ThreadId::new(NonZeroU64::new(id).expect("ids start at 1"))
    }

    fn park() {
        let gate = Self::current();
        gate.parks.fetch_add(1, Ordering::SeqCst);
        let mut token = gate.token.lock().unwrap();
        while !*token || gate.closed.load(Ordering::SeqCst) {
            token = gate.changed.wait(token).unwrap();
        }
        *token = false;
    }

    fn unpark(handle: &Self::Handle) {
        *handle.token.lock().unwrap() = true;
        handle.changed.notify_all();
    }
}

/// Waits until `gate`'s thread has entered `park` `count` times.
fn wait_for_parks(gate: &Gate, count: usize) {
    let start = Instant::now();
    while gate.parks.load(Ordering::SeqCst) < count {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a waiter never parked"
        );
        thread::sleep(Duration::from_millis(1));
    }
    // It parks right after counting; give it time to block (a thread that has not
    // blocked yet only makes the test's setup take another round, never its order).
    thread::sleep(Duration::from_millis(20));
}

type OrderLog = Arc<Mutex<Vec<&'static str>, GatedParker>>;

/// Starts a thread that locks `log` and records `name`; returns its gate.
fn locker(log: &OrderLog, name: &'static str) -> (Arc<Gate>, thread::JoinHandle<()>) {
    let (sender, receiver) = std::sync::mpsc::channel();
    let log = Arc::clone(log);
    let handle = thread::spawn(move || {
        sender.send(GatedParker::current()).unwrap();
        log.lock().push(name);
    });
    (receiver.recv().unwrap(), handle)
}

/// W, X1 and X2 queue in that order; the unlock offers the mutex to W, but a barger
/// (the test's thread) takes it before W runs. W queues again at the tail, so the
/// order is barger, X1, X2, W: W is passed over by the barger once (and handed the
/// mutex when popped next), but loses its place to the waiters queued after it.
#[test]
fn offer_loser_requeues_at_the_tail() {
    let log: OrderLog = Arc::new(Mutex::new(Vec::new()));
    let held = log.lock();
    let (w_gate, w) = locker(&log, "W");
    wait_for_parks(&w_gate, 1);
    let (x1_gate, x1) = locker(&log, "X1");
    wait_for_parks(&x1_gate, 1);
    let (x2_gate, x2) = locker(&log, "X2");
    wait_for_parks(&x2_gate, 1);
    // W is offered the mutex but cannot run yet.
    w_gate.set_closed(true);
    drop(held);
    // The barger takes the offered mutex (the token) and records itself.
    let mut barged = log.lock();
    barged.push("barger");
    // W runs, finds the token gone and queues again.
    w_gate.set_closed(false);
    wait_for_parks(&w_gate, 2);
    drop(barged);
    for handle in [w, x1, x2] {
        handle.join().unwrap();
    }
    let order = log.lock().clone();
    assert_eq!(order, ["barger", "X1", "X2", "W"]);
}

/// [`GatedParker`] with a clock for eventual fairness: each thread's clock starts at
/// 0 and moves `STEP_NANOS` on every read, so a waiter's second read (when it loses
/// an offer) is `STEP_NANOS` after its first (when it queued).
#[derive(Debug, Clone, Copy, Default)]
struct ClockedParker<const STEP_NANOS: u64>;

std::thread_local! {
    static CLOCK_READS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

// SAFETY: every blocking and identity method is `GatedParker`'s (see its SAFETY).
unsafe impl<const STEP_NANOS: u64> Parker for ClockedParker<STEP_NANOS> {
    type Handle = Arc<Gate>;

    fn current() -> Self::Handle {
        GatedParker::current()
    }

    fn current_id() -> ThreadId {
        GatedParker::current_id()
    }

    fn park() {
        GatedParker::park();
    }

    fn unpark(handle: &Self::Handle) {
        GatedParker::unpark(handle);
    }

    fn fairness_clock_nanos() -> Option<u64> {
        Some(CLOCK_READS.with(|reads| {
            let now = reads.get() * STEP_NANOS;
            reads.set(reads.get() + 1);
            now
        }))
    }
}

/// W queues, is offered the mutex, and loses it to a barger (the test's thread); the
/// barger unlocks while W is held back in `park` again. True if that unlock handed W
/// the mutex (the barger's `try_lock` then fails), false if it offered it again (the
/// `try_lock` takes the offer).
fn second_unlock_hands_over<P: Parker<Handle = Arc<Gate>> + 'static>() -> bool {
    let log: Arc<Mutex<Vec<&'static str>, P>> = Arc::new(Mutex::new(Vec::new()));
    let held = log.lock();
    let (sender, receiver) = std::sync::mpsc::channel();
    let w = {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            sender.send(P::current()).unwrap();
            log.lock().push("W");
        })
    };
    let w_gate = receiver.recv().unwrap();
    wait_for_parks(&w_gate, 1);
    w_gate.set_closed(true);
    drop(held);
    let barged = log.lock();
    w_gate.set_closed(false);
    wait_for_parks(&w_gate, 2);
    // W waits again; hold it back while the barger unlocks.
    w_gate.set_closed(true);
    drop(barged);
    let taken_again = log.try_lock();
    let handed = taken_again.is_none();
    drop(taken_again);
    w_gate.set_closed(false);
    w.join().unwrap();
    assert_eq!(log.lock().last(), Some(&"W"), "W never got the mutex");
    handed
}

/// Without a clock, a waiter that lost an offer is handed the mutex next.
#[test]
fn without_a_clock_a_passed_over_waiter_is_handed_the_mutex() {
    assert!(second_unlock_hands_over::<GatedParker>());
}

/// A waiter passed over sooner than `FAIR_WAIT_NANOS` after it queued is offered the
/// mutex again, so a running locker may take it once more.
#[test]
fn a_briefly_passed_over_waiter_is_offered_the_mutex_again() {
    assert!(!second_unlock_hands_over::<ClockedParker<1_000>>());
}

/// Eventual fairness: a waiter passed over after waiting `FAIR_WAIT_NANOS` or longer
/// is handed the mutex next.
#[test]
fn a_waiter_passed_over_after_the_fair_wait_is_handed_the_mutex() {
    assert!(second_unlock_hands_over::<
        ClockedParker<{ crate::FAIR_WAIT_NANOS }>,
    >());
}
