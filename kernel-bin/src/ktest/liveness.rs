//! In-guest liveness cases: a thread made runnable on a CPU whose only thread spins
//! (with interrupts enabled, never blocking or yielding) must run while that thread
//! still spins, whoever made it runnable: another CPU's unpark or spawn, the spinner's
//! own unpark or spawn, the balancer, or a sleep timer.
//!
//! The spinner gives up after [`GUARD`]; that is a liveness bound that turns a
//! hang into a failure, never a speed assertion. The spinner runs on the last CPU; the
//! test runner stays off it except on one CPU, where it only joins (a sleep of its
//! would arm the timer that rescues the woken thread).

use super::{TestResult, has_two_cpus};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use keel_arch_x86_64::{ArchInfo, percpu, time};
use keel_sched::{CpuId, SpawnOptions, Thread};

/// How long a spinner waits for the woken thread before the case fails.
const GUARD: Duration = Duration::from_secs(5);

/// Who makes the target runnable on the spinner's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waker {
    /// A thread on another CPU unparks it.
    OtherCpu,
    /// The spinner itself unparks it.
    Spinner,
    /// The spinner spawns it onto its own CPU.
    SpinnerSpawns,
    /// A thread on another CPU spawns it onto the spinner's CPU.
    OtherCpuSpawns,
}

fn pinned(cpu: usize) -> SpawnOptions {
    SpawnOptions::new().pin(CpuId::new(cpu))
}

/// Spins (interrupts enabled, no scheduler call) until `flag` is set or the guard
/// passes; whether it was set.
fn spin_until(flag: &AtomicBool) -> bool {
    let give_up = time::now() + GUARD;
    while !flag.load(Ordering::SeqCst) {
        if time::now() > give_up {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Waits (sleeping 1 ms at a time) until `flag` is set; false after the guard.
fn wait_for(flag: &AtomicBool) -> bool {
    let give_up = time::now() + GUARD;
    while !flag.load(Ordering::SeqCst) {
        if time::now() > give_up {
            return false;
        }
        crate::threads::scheduler().sleep(Duration::from_millis(1));
    }
    true
}

fn woken_runs_beside_spinner(waker: Waker) -> TestResult {
    let scheduler = crate::threads::scheduler();
    let last = scheduler.cpu_count() - 1;
    let parked = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(AtomicBool::new(false));
    let spawns = matches!(waker, Waker::SpinnerSpawns | Waker::OtherCpuSpawns);
    // The target: parked until `go` (unless the waker spawns it).
    let target = if spawns {
        None
    } else {
        let (parked, go, ran) = (parked.clone(), go.clone(), ran.clone());
        let spawned = scheduler.spawn(pinned(last), move || {
            parked.store(true, Ordering::SeqCst);
            while !go.load(Ordering::SeqCst) {
                crate::threads::scheduler().park();
            }
            ran.store(true, Ordering::SeqCst);
        });
        check!(spawned.is_ok(), "spawn failed");
        spawned.ok()
    };
    if target.is_some() {
        check!(wait_for(&parked), "the target never started");
    }
    let target_thread: Option<Thread> = target.as_ref().map(|handle| handle.thread().clone());
    let spinner = {
        let (go, ran, spinning, target_thread) = (
            go.clone(),
            ran.clone(),
            spinning.clone(),
            target_thread.clone(),
        );
        scheduler.spawn(pinned(last), move || {
            let scheduler = crate::threads::scheduler();
            spinning.store(true, Ordering::SeqCst);
            match (waker, &target_thread) {
                (Waker::Spinner, Some(target)) => {
                    go.store(true, Ordering::SeqCst);
                    scheduler.unpark(target);
                }
                (Waker::SpinnerSpawns, _) => {
                    let ran = ran.clone();
                    if scheduler
                        .spawn(SpawnOptions::new(), move || {
                            ran.store(true, Ordering::SeqCst)
                        })
                        .is_err()
                    {
                        return None;
                    }
                }
                _ => {}
            }
            Some(spin_until(&ran))
        })
    };
    check!(spinner.is_ok(), "spawn failed");
    let Ok(spinner) = spinner else { return Ok(()) };
    if !matches!(waker, Waker::Spinner | Waker::SpinnerSpawns) {
        check!(wait_for(&spinning), "the spinner never started");
    }
    match (waker, &target_thread) {
        (Waker::OtherCpu, Some(target)) => {
            go.store(true, Ordering::SeqCst);
            scheduler.unpark(target);
        }
        (Waker::OtherCpuSpawns, _) => {
            let ran = ran.clone();
            let spawned = scheduler.spawn(pinned(last), move || ran.store(true, Ordering::SeqCst));
            check!(spawned.is_ok(), "spawn failed");
        }
        _ => {}
    }
    let ran_while_spinning = scheduler.join(spinner).flatten();
    // Let the target finish in any case (it runs once the spinner has given up).
    go.store(true, Ordering::SeqCst);
    if let Some(target) = target {
        if let Some(thread) = &target_thread {
            scheduler.unpark(thread);
        }
        scheduler.join(target);
    }
    check!(
        ran_while_spinning == Some(true),
        "the woken thread did not run while its CPU's only thread spun",
        ran_while_spinning
    );
    Ok(())
}

fn unparked_from_another_cpu_runs_while_its_cpu_spins(_: &ArchInfo) -> TestResult {
    if !has_two_cpus() {
        return Ok(());
    }
    woken_runs_beside_spinner(Waker::OtherCpu)
}
ktest!(unparked_from_another_cpu_runs_while_its_cpu_spins);

fn unparked_by_the_spinner_runs_while_it_spins(_: &ArchInfo) -> TestResult {
    woken_runs_beside_spinner(Waker::Spinner)
}
ktest!(unparked_by_the_spinner_runs_while_it_spins);

fn spawned_by_the_spinner_runs_while_it_spins(_: &ArchInfo) -> TestResult {
    woken_runs_beside_spinner(Waker::SpinnerSpawns)
}
ktest!(spawned_by_the_spinner_runs_while_it_spins);

fn spawned_from_another_cpu_runs_while_its_cpu_spins(_: &ArchInfo) -> TestResult {
    if !has_two_cpus() {
        return Ok(());
    }
    woken_runs_beside_spinner(Waker::OtherCpuSpawns)
}
ktest!(spawned_from_another_cpu_runs_while_its_cpu_spins);

/// A sleeper's timer fires on its CPU while another thread spins there.
fn sleeper_runs_when_its_timer_fires_while_its_cpu_spins(_: &ArchInfo) -> TestResult {
    let scheduler = crate::threads::scheduler();
    let last = scheduler.cpu_count() - 1;
    let asleep = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicBool::new(false));
    let sleeper = {
        let (asleep, ran) = (asleep.clone(), ran.clone());
        scheduler.spawn(pinned(last), move || {
            asleep.store(true, Ordering::SeqCst);
            crate::threads::scheduler().sleep(Duration::from_millis(20));
            ran.store(true, Ordering::SeqCst);
        })
    };
    check!(sleeper.is_ok(), "spawn failed");
    let Ok(sleeper) = sleeper else { return Ok(()) };
    if last != 0 {
        check!(wait_for(&asleep), "the sleeper never started");
    }
    let spinner = {
        let ran = ran.clone();
        scheduler.spawn(pinned(last), move || spin_until(&ran))
    };
    check!(spinner.is_ok(), "spawn failed");
    let Ok(spinner) = spinner else { return Ok(()) };
    let ran_while_spinning = scheduler.join(spinner);
    scheduler.join(sleeper);
    check!(
        ran_while_spinning == Some(true),
        "the sleeper did not run while its CPU's only thread spun",
        ran_while_spinning
    );
    Ok(())
}
ktest!(sleeper_runs_when_its_timer_fires_while_its_cpu_spins);

/// Every CPU but 0 runs one spinner, pinned; CPU 0 runs three unpinned threads that
/// yield until one of them finds itself elsewhere. The balancer moves them one at a
/// time onto a CPU with a spinner: the moved thread must run there.
fn moved_by_the_balancer_runs_while_its_new_cpu_spins(_: &ArchInfo) -> TestResult {
    if !has_two_cpus() {
        return Ok(());
    }
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let moved_ran = Arc::new(AtomicBool::new(false));
    let mut spinners = alloc::vec::Vec::new();
    for cpu in 1..cpus {
        let moved_ran = moved_ran.clone();
        let spawned = scheduler.spawn(pinned(cpu), move || spin_until(&moved_ran));
        check!(spawned.is_ok(), "spawn failed", cpu);
        spinners.extend(spawned.ok());
    }
    // Spawned from a thread pinned to CPU 0, so the unpinned movers start there.
    let spawner = {
        let moved_ran = moved_ran.clone();
        scheduler.spawn(pinned(0), move || {
            let scheduler = crate::threads::scheduler();
            let mut movers = alloc::vec::Vec::new();
            for _ in 0..3 {
                let moved_ran = moved_ran.clone();
                let spawned = scheduler.spawn(SpawnOptions::new(), move || {
                    let give_up = time::now() + GUARD;
                    while !moved_ran.load(Ordering::SeqCst) && time::now() < give_up {
                        if percpu::current_index() != 0 {
                            moved_ran.store(true, Ordering::SeqCst);
                        }
                        crate::threads::scheduler().yield_now();
                    }
                });
                movers.extend(spawned.ok());
            }
            let started = movers.len();
            for mover in movers {
                scheduler.join(mover);
            }
            started
        })
    };
    check!(spawner.is_ok(), "spawn failed");
    let started = spawner.ok().and_then(|spawner| scheduler.join(spawner));
    let mut all_saw_it = true;
    for spinner in spinners {
        // A spinner whose CPU got no mover stops when another CPU's mover ran.
        all_saw_it &= scheduler.join(spinner) == Some(true);
    }
    check!(started == Some(3), "spawn failed", started);
    check!(
        moved_ran.load(Ordering::SeqCst) && all_saw_it,
        "no moved thread ran on a CPU whose only thread spun",
        all_saw_it
    );
    Ok(())
}
ktest!(moved_by_the_balancer_runs_while_its_new_cpu_spins);
