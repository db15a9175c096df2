//! loom models of `keel_sched::wakeup::WakeQueue`: the cross-CPU wake-up queue, one
//! lane per source CPU plus a shared lane, whose announcement word also carries the
//! target CPU's "sleeping" flag.
//!
//! The target CPU is modelled by a loom thread that runs the scheduler's idle
//! protocol: drain; if nothing came, `try_sleep` (fails if something is announced)
//! and then `loom::thread::park()` as `idle_wait`. Waker threads push a value (on
//! their own lane, or on the shared one) and, when the push reports that the target
//! was asleep, `unpark` it as `send_wakeup`.
//! No lost wake-up means: the target always ends up with every value. If a wake-up
//! were lost, the target would park forever and loom would report a deadlock; a
//! missing value would fail the final assertion.
//!
//! With the feature `broken-wakeup`, a push never reports that the target was asleep,
//! so no wake-up is ever sent; every model is then `should_panic(expected =
//! "deadlock")` and passes only if loom finds the target parked forever.
//!
//! Run: `RUSTFLAGS="--cfg loom -C force-frame-pointers=yes"
//! CARGO_TARGET_DIR=loom-target cargo test -p keel-loom-tests --release
//! --test wakeup`.
#![cfg(loom)]

use std::sync::Arc;

use keel_sched::wakeup::{Linked, PushOutcome, WakeLink, WakeQueue};
use loom::thread;

/// A queued item: a number and the link that queues it (loom checks, through the
/// shim's `UnsafeCell`, that the pusher's and the consumer's accesses to the link
/// never race).
struct Item {
    value: usize,
    link: WakeLink,
}

impl Linked for Item {
    fn wake_link(&self) -> &WakeLink {
        &self.link
    }
}

mod common;

/// Runs `model` under loom with at most `preemptions` preemptions per execution
/// (unless `LOOM_MAX_PREEMPTIONS` says otherwise: see `common`), and loom's default
/// branch limit.
fn check(preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    common::check_bounded(preemptions, 1_000, model);
}

/// The target CPU: collects `expected` values, sleeping whenever the queue is empty.
/// Each round is the scheduler's: a decision stops polling and drains, then the idle
/// loop polls (and may sleep).
fn target_loop(queue: &WakeQueue<Item>, expected: usize, poll_first: bool) -> Vec<usize> {
    let mut received = Vec::new();
    while received.len() < expected {
        queue.stop_polling();
        received.extend(queue.drain().map(|item| item.value));
        queue.start_polling();
        if received.len() == expected {
            break;
        }
        if poll_first && queue.has_pending() {
            continue;
        }
        if queue.try_sleep() {
            // idle_wait: only a wake-up (unpark) ends it.
            thread::park();
        }
    }
    received
}

/// A queue shared by the model's threads for the rest of the process.
///
/// Leaked rather than shared through `loom::sync::Arc`: when loom finds a deadlock
/// (the expected outcome with `broken-wakeup`) it unwinds the blocked threads, and
/// dropping a loom `Arc` there would call into the failed execution and abort the
/// process. Items still queued are leaked with it.
fn leak_queue() -> &'static WakeQueue<Item> {
    Box::leak(Box::new(WakeQueue::new(SOURCES)))
}

/// Lanes of the modelled target: sources 0 and 1 have their own, the rest share one.
const SOURCES: usize = 2;

/// A waker on CPU `source` (`None`: off the CPUs): push, and send the wake-up exactly
/// when the push says so.
fn wake(queue: &WakeQueue<Item>, target: &thread::Thread, source: Option<usize>, value: usize) {
    let item = Arc::new(Item {
        value,
        link: WakeLink::new(),
    });
    // SAFETY: a fresh item is in no queue.
    if unsafe { queue.push(source, item) } == PushOutcome::WakeConsumer {
        target.unpark();
    }
}

#[test]
#[cfg_attr(feature = "broken-wakeup", should_panic(expected = "deadlock"))]
fn one_waker_never_loses_the_wakeup() {
    check(3, || {
        let queue = leak_queue();
        let target = thread::spawn(move || target_loop(queue, 1, false));
        let target_thread = target.thread().clone();
        wake(queue, &target_thread, Some(0), 7);
        assert_eq!(target.join().unwrap(), [7]);
    });
}

#[test]
#[cfg_attr(feature = "broken-wakeup", should_panic(expected = "deadlock"))]
fn two_wakers_never_lose_a_wakeup_or_a_value() {
    two_wakers(Some(0), Some(1));
}

/// The same with both wakers off the CPUs, so they race on the shared lane's head.
#[test]
#[cfg_attr(feature = "broken-wakeup", should_panic(expected = "deadlock"))]
fn two_wakers_on_the_shared_lane_never_lose_a_wakeup_or_a_value() {
    two_wakers(None, None);
}

/// Two wakers, on lanes `first` and `second`, each push one value to a polling
/// target.
fn two_wakers(first: Option<usize>, second: Option<usize>) {
    check(2, move || {
        let queue = leak_queue();
        let target = thread::spawn(move || target_loop(queue, 2, true));
        let target_thread = target.thread().clone();
        let other_target = target_thread.clone();
        let other = thread::spawn(move || wake(queue, &other_target, second, 2));
        wake(queue, &target_thread, first, 1);
        other.join().unwrap();
        let mut received = target.join().unwrap();
        received.sort_unstable();
        assert_eq!(received, [1, 2]);
    });
}

/// A busy target: the CPU's scheduling decision stops polling and drains, then it
/// runs a thread, and only an interrupt (the waker's `unpark`, as the IPI) brings it
/// back to its queue. Either the drain takes the value, or the push finds the target
/// not polling and reports `Interrupt`. With `broken-busy-wakeup` the push never asks
/// for the interrupt, and loom finds the CPU running on with the value stranded (the
/// target parked forever: a deadlock). This is the race the scheduler's former
/// `idle_polling` flag handled with `SeqCst` accesses on two words, which loom cannot
/// check; the flag is now a bit of the same word.
#[test]
#[cfg_attr(feature = "broken-busy-wakeup", should_panic(expected = "deadlock"))]
fn busy_target_is_interrupted_or_sees_the_push() {
    check(3, || {
        let queue = leak_queue();
        // The idle loop was polling when the push races with the decision.
        queue.start_polling();
        let target = thread::spawn(move || {
            queue.stop_polling();
            let mut received: Vec<usize> = queue.drain().map(|item| item.value).collect();
            if received.is_empty() {
                // Running a thread: nothing looks at the queue until an interrupt.
                thread::park();
                received.extend(queue.drain().map(|item| item.value));
            }
            received
        });
        let target_thread = target.thread().clone();
        let item = Arc::new(Item {
            value: 7,
            link: WakeLink::new(),
        });
        // SAFETY: a fresh item is in no queue.
        if unsafe { queue.push(Some(0), item) } != PushOutcome::Queued {
            target_thread.unpark();
        }
        assert_eq!(target.join().unwrap(), [7]);
    });
}

#[test]
#[cfg_attr(feature = "broken-wakeup", should_panic(expected = "deadlock"))]
fn values_from_one_waker_arrive_in_order() {
    check(3, || {
        let queue = leak_queue();
        let target = thread::spawn(move || target_loop(queue, 2, false));
        let target_thread = target.thread().clone();
        wake(queue, &target_thread, Some(1), 1);
        wake(queue, &target_thread, Some(1), 2);
        assert_eq!(target.join().unwrap(), [1, 2]);
    });
}
