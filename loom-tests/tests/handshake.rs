//! loom models of `keel_sched::handshake`: the block/wake handshake on a thread's
//! state word, under each condition the scheduler blocks on.
//!
//! The blocking thread is a loom thread that runs the scheduler's blocking loop with
//! the real handshake functions: check the condition, `begin_wait`, re-check,
//! `cancel_wait` or "switch away". Switching away is modelled as `loom::thread::park`
//! until the thread is delivered (the deliverer's `unpark`, as the scheduler's
//! delivery makes the thread runnable); after it the thread is `RUNNING` again, as
//! its CPU sets it when it runs the thread. Wakers publish the condition and
//! `claim_waiting`; only a successful claim delivers. A lost wake-up leaves the
//! blocker parked forever: loom reports a deadlock.
//!
//! - `park_meets_unpark`: the park token (`Scheduler::park` / `unpark`).
//! - `unpark_meets_a_thread_being_moved`: the unpark reaches the thread while the
//!   balancer moves it (`WAKING`, then `RUNNING` on its new CPU), so the claim fails
//!   and the token alone must carry the wake-up.
//! - `sleep_meets_its_timer`: the sleep timer's fired flag (`sleep_fired`), including
//!   the entry that fires while the sleeper is not waiting (its claim fails, the
//!   entry is gone, and the flag alone must end the sleep).
//! - `two_sleeps_meet_their_timers_in_order`: the generation check and the
//!   `fetch_max` of the fired flag across two sleeps in a row.
//! - `join_meets_exit`: the joiner registers in the target's joiner slot (a
//!   `keel_sync::SpinLock`) and waits for `TERMINATED`; the exiting thread marks
//!   itself terminated, takes the joiner and wakes it.
//!
//! With the feature `broken-handshake`, `begin_wait` has no fence, so the blocker's
//! re-check can miss a condition published just before a claim that missed its
//! `WAITING`: every model is then `should_panic(expected = "deadlock")`.
#![cfg(loom)]

mod common;

use keel_sched::handshake::{self, state};
use keel_sync::SpinLock;
use keel_sync::shim::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use loom::thread;

/// Runs `model` with at most `preemptions` preemptions (see `common`).
fn check(preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    common::check_bounded(preemptions, 10_000, model);
}

/// Shares `value` between model threads for the rest of the process (see the
/// lfmutex models: dropping loom objects while a failed execution unwinds aborts).
fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// The scheduler's blocking loop for the calling loom thread, whose state word is
/// `thread_state`: returns once `ready()` holds.
fn block_until(thread_state: &AtomicU32, ready: impl Fn() -> bool) {
    while !ready() {
        handshake::begin_wait(thread_state);
        if ready() && handshake::cancel_wait(thread_state) {
            return;
        }
        // Switched away: runs again once delivered (a claim that raced with the
        // re-check delivers us too, and then we are simply run again).
        if thread_state.load(Ordering::Relaxed) != state::RUNNING {
            thread::park();
        }
        thread_state.store(state::RUNNING, Ordering::Relaxed);
    }
}

/// `Scheduler::park` for the calling loom thread: consume the token, else block until
/// it is there. The load comes before the swap, as there: with an unconditional swap
/// loom reported a deadlock in which the blocker, already unparked by the deliverer,
/// read the token's older value; we could not explain that under the C11 rules, and
/// the model follows the real code.
fn park(thread_state: &AtomicU32, token: &AtomicBool) {
    loop {
        if token.load(Ordering::Relaxed) && token.swap(false, Ordering::Acquire) {
            return;
        }
        block_until(thread_state, || token.load(Ordering::SeqCst));
    }
}

/// A waker's half, after publishing the condition: claim, and deliver if ours.
fn wake(thread_state: &AtomicU32, blocker: &thread::Thread) {
    if handshake::claim_waiting(thread_state) {
        blocker.unpark();
    }
}

#[test]
#[cfg_attr(feature = "broken-handshake", should_panic(expected = "deadlock"))]
fn park_meets_unpark() {
    check(3, || {
        let thread_state = leak(AtomicU32::new(state::RUNNING));
        let token = leak(AtomicBool::new(false));
        let blocker = thread::spawn(move || park(thread_state, token));
        let blocker_thread = blocker.thread().clone();
        // `Scheduler::unpark`.
        token.store(true, Ordering::SeqCst);
        wake(thread_state, &blocker_thread);
        blocker.join().unwrap();
    });
}

#[test]
#[cfg_attr(feature = "broken-handshake", should_panic(expected = "deadlock"))]
fn unpark_meets_a_thread_being_moved() {
    check(3, || {
        // Queued on its old CPU; the balancer takes it out (WAKING) and its new CPU
        // runs it (RUNNING), where it parks.
        let thread_state = leak(AtomicU32::new(state::QUEUED));
        let token = leak(AtomicBool::new(false));
        let moved = leak(AtomicBool::new(false));
        let blocker = thread::spawn(move || {
            thread_state.store(state::WAKING, Ordering::Relaxed);
            // Through the new CPU's wake-up queue (Release/Acquire).
            moved.store(true, Ordering::Release);
            while !moved.load(Ordering::Acquire) {
                thread::yield_now();
            }
            thread_state.store(state::RUNNING, Ordering::Relaxed);
            park(thread_state, token);
        });
        let blocker_thread = blocker.thread().clone();
        token.store(true, Ordering::SeqCst);
        wake(thread_state, &blocker_thread);
        blocker.join().unwrap();
    });
}

#[test]
#[cfg_attr(feature = "broken-handshake", should_panic(expected = "deadlock"))]
fn sleep_meets_its_timer() {
    check(3, || {
        let thread_state = leak(AtomicU32::new(state::RUNNING));
        // `ThreadInner::sleep_fired` and the sleep's generation (0).
        let fired = leak(AtomicU64::new(0));
        let generation = 0;
        let sleeper = thread::spawn(move || {
            block_until(thread_state, || fired.load(Ordering::SeqCst) > generation);
        });
        let sleeper_thread = sleeper.thread().clone();
        // `expire_timers`: the entry fires on its CPU.
        fired.fetch_max(generation + 1, Ordering::SeqCst);
        wake(thread_state, &sleeper_thread);
        sleeper.join().unwrap();
    });
}

/// Two sleeps in a row against a timer CPU that fires their entries in order, each
/// as `expire_timers` does: skip an entry whose generation is no longer the
/// sleeper's (stale), else raise the fired flag to the entry's generation + 1 with
/// `fetch_max`, then claim. The second entry exists only once the sleeper has
/// returned from the first sleep and bumped its generation, so the timer must
/// neither take the first entry's flag for the second sleep nor lose the second.
#[test]
#[cfg_attr(feature = "broken-handshake", should_panic(expected = "deadlock"))]
fn two_sleeps_meet_their_timers_in_order() {
    check(2, || {
        let thread_state = leak(AtomicU32::new(state::RUNNING));
        let fired = leak(AtomicU64::new(0));
        let generation = leak(AtomicU64::new(0));
        // How many entries the sleeper has pushed (the timer list, Release/Acquire
        // as the CPU's own list is, or a migration through a wake-up queue).
        let pushed = leak(AtomicU64::new(0));
        // The timer CPU waits (parked) for entries, so that a lost wake-up is a
        // deadlock rather than a spin.
        let timer_cpu = thread::current();
        let sleeper = thread::spawn(move || {
            for sleep in 0..2 {
                let my_generation = generation.load(Ordering::Relaxed);
                assert_eq!(my_generation, sleep);
                pushed.store(sleep + 1, Ordering::Release);
                timer_cpu.unpark();
                block_until(thread_state, || {
                    fired.load(Ordering::SeqCst) > my_generation
                });
                generation.fetch_add(1, Ordering::Relaxed);
            }
        });
        let sleeper_thread = sleeper.thread().clone();
        for entry in 0..2 {
            while pushed.load(Ordering::Acquire) <= entry {
                thread::park();
            }
            if generation.load(Ordering::Relaxed) != entry {
                continue;
            }
            fired.fetch_max(entry + 1, Ordering::SeqCst);
            wake(thread_state, &sleeper_thread);
        }
        sleeper.join().unwrap();
        assert_eq!(fired.load(Ordering::Relaxed), 2);
    });
}

#[test]
#[cfg_attr(feature = "broken-handshake", should_panic(expected = "deadlock"))]
fn join_meets_exit() {
    check(2, || {
        let joiner_state = leak(AtomicU32::new(state::RUNNING));
        let target_state = leak(AtomicU32::new(state::RUNNING));
        let joiner_slot: &SpinLock<Option<thread::Thread>> = leak(SpinLock::new(None));
        let joiner = thread::spawn(move || {
            // `Scheduler::join`.
            if target_state.load(Ordering::Acquire) != state::TERMINATED {
                *joiner_slot.lock() = Some(thread::current());
                block_until(joiner_state, || {
                    target_state.load(Ordering::SeqCst) == state::TERMINATED
                });
            }
        });
        // The target's exit (`exit_current`).
        target_state.store(state::TERMINATED, Ordering::SeqCst);
        let waiting = joiner_slot.lock().take();
        if let Some(joiner_thread) = waiting {
            wake(joiner_state, &joiner_thread);
        }
        joiner.join().unwrap();
    });
}
