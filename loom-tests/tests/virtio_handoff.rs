//! loom models of `keel_virtio::handoff::InterruptHandoff`: the virtio-blk driver's
//! interrupt hand-off (the handler raises `pending` and takes the queue lock only with
//! `try_lock`; every unlock drains `pending`).
//!
//! The queue lock is modelled by `keel_sync::SpinLock` (loom-aware; the driver uses
//! `spin::Mutex`, but `drain` only needs *some* `try_lock`). The "device" is an event
//! counter that an interrupt thread increments before raising; the handler's work
//! records the counter it sees, under the lock. **No lost interrupt** means: when
//! every thread is done, nothing is pending and the last work done saw every event.
//! A lost hand-off would leave the last event unserved and fail the final assertion.
//!
//! The `*_without_drain_after_unlock` model removes the thread's drain after its
//! unlock (the bug the protocol exists to prevent); it is `should_panic` and passes
//! only if loom finds the interleaving that loses the interrupt.
//!
//! Bounds: 3 preemptions for the two-thread models, 2 for the three-thread ones
//! (spinning lockers make deeper bounds slow; with `LOOM_MAX_PREEMPTIONS=4` the first
//! three models pass in about two minutes).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=loom-target cargo test
//! -p keel-loom-tests --release --test virtio_handoff`.
#![cfg(loom)]

mod common;

use keel_sync::SpinLock;
use keel_virtio::handoff::InterruptHandoff;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// What the lock protects: the device events the handler's work has seen.
struct Serviced {
    seen: usize,
}

struct Device {
    queue: SpinLock<Serviced>,
    handoff: InterruptHandoff,
    /// Completions the device made (incremented before each interrupt).
    events: AtomicUsize,
}

impl Device {
    fn new() -> Self {
        Self {
            queue: SpinLock::new(Serviced { seen: 0 }),
            handoff: InterruptHandoff::new(),
            events: AtomicUsize::new(0),
        }
    }

    fn drain(&self) {
        self.handoff.drain(
            || self.queue.try_lock(),
            |serviced| serviced.seen = self.events.load(Ordering::SeqCst),
        );
    }

    /// The device completes a request and interrupts; the handler runs.
    fn interrupt(&self) {
        self.events.fetch_add(1, Ordering::SeqCst);
        self.handoff.raise();
        self.drain();
    }

    /// A thread's critical section (submit or pop), then its unlock.
    fn thread_section(&self, drain_after_unlock: bool) {
        let guard = self.queue.lock();
        drop(guard);
        if drain_after_unlock {
            self.drain();
        }
    }

    fn check(&self) {
        assert!(!self.handoff.is_pending(), "an interrupt is still pending");
        assert_eq!(
            self.queue.lock().seen,
            self.events.load(Ordering::SeqCst),
            "the last interrupt's work was never done"
        );
    }
}

fn one_interrupt_one_locker(drain_after_unlock: bool) {
    common::check_bounded(3, 100_000, move || {
        let device = Arc::new(Device::new());
        let handler = {
            let device = Arc::clone(&device);
            thread::spawn(move || device.interrupt())
        };
        device.thread_section(drain_after_unlock);
        handler.join().unwrap();
        device.check();
    });
}

#[test]
fn an_interrupt_that_finds_the_lock_held_is_drained_by_the_holder() {
    one_interrupt_one_locker(true);
}

#[test]
#[should_panic(expected = "still pending")]
fn an_interrupt_is_lost_without_drain_after_unlock() {
    one_interrupt_one_locker(false);
}

#[test]
fn two_interrupts_and_a_locker_lose_nothing() {
    common::check_bounded(2, 100_000, || {
        let device = Arc::new(Device::new());
        let handlers: Vec<_> = (0..2)
            .map(|_| {
                let device = Arc::clone(&device);
                thread::spawn(move || device.interrupt())
            })
            .collect();
        device.thread_section(true);
        for handler in handlers {
            handler.join().unwrap();
        }
        device.check();
    });
}

#[test]
fn back_to_back_interrupts_on_one_cpu_and_two_lockers_lose_nothing() {
    common::check_bounded(2, 100_000, || {
        let device = Arc::new(Device::new());
        let handler = {
            let device = Arc::clone(&device);
            thread::spawn(move || {
                device.interrupt();
                device.interrupt();
            })
        };
        let locker = {
            let device = Arc::clone(&device);
            thread::spawn(move || device.thread_section(true))
        };
        device.thread_section(true);
        handler.join().unwrap();
        locker.join().unwrap();
        device.check();
    });
}
