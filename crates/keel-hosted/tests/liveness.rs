//! Woken means it runs: a thread made runnable on a CPU whose only thread spins must
//! run while that thread still spins, whoever made it runnable (another CPU, the
//! spinner itself, a spawn, the balancer, a timer).
//!
//! The spinners take interrupts only through [`interrupt_point`], which enters the
//! scheduler only when a wake-up IPI or the one-shot timer was raised, as the
//! kernel's handlers do. A woken thread that nobody raised a line for stays queued,
//! and the spinner gives up after [`GUARD`]: a liveness bound that turns a hang into a
//! failure, never a speed assertion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_hosted::{HostedArch, Machine, interrupt_point};
use keel_sched::{Arch, SpawnOptions, Thread};
use keel_sched::{CpuId, FairPolicy, Policy, RoundRobinPolicy, Scheduler, SchedulerConfig};

type Sched<P> = Arc<Scheduler<HostedArch, P>>;

/// How long a spinner waits for the woken thread before the test fails.
const GUARD: Duration = Duration::from_secs(5);

fn config() -> SchedulerConfig {
    SchedulerConfig {
        balance_interval: None,
        ..SchedulerConfig::default()
    }
}

fn pinned(cpu: usize) -> SpawnOptions {
    SpawnOptions::new().pin(CpuId::new(cpu))
}

/// Spins, taking interrupts, until `flag` is set or [`GUARD`] passes; whether it was
/// set.
fn spin_until<P: Policy>(scheduler: &Scheduler<HostedArch, P>, flag: &AtomicBool) -> bool {
    let start = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        if start.elapsed() > GUARD {
            return false;
        }
        interrupt_point(scheduler);
        std::hint::spin_loop();
    }
    true
}

/// Waits on a keel thread (sleeping 1 ms at a time) until `flag` is set.
fn wait_for<P: Policy>(scheduler: &Scheduler<HostedArch, P>, flag: &AtomicBool) {
    let start = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        assert!(start.elapsed() < GUARD, "a helper thread never got going");
        scheduler.sleep(Duration::from_millis(1));
    }
}

/// Who makes the target runnable on the spinner's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waker {
    /// A thread on another CPU unparks it.
    OtherCpu,
    /// The spinner itself unparks it.
    Spinner,
    /// The spinner spawns it (onto its own CPU).
    SpinnerSpawns,
    /// A thread on another CPU spawns it onto the spinner's CPU.
    OtherCpuSpawns,
    /// A host thread (no CPU) unparks it.
    HostThread,
}

/// Runs one scenario on `cpus` CPUs; the spinner and the target live on the last CPU,
/// the test's main thread on CPU 0. Returns whether the target ran while the spinner
/// spun.
fn woken_runs_beside_spinner<P: Policy>(machine: &Machine<P>, waker: Waker) -> bool {
    let scheduler: Sched<P> = Arc::clone(machine.scheduler());
    let last = scheduler.cpu_count() - 1;
    let parked = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(AtomicBool::new(false));
    let (main_done, main_result) = std::sync::mpsc::channel();
    let s = Arc::clone(&scheduler);
    machine
        .scheduler()
        .spawn(pinned(0), move || {
            let spawns = matches!(waker, Waker::SpinnerSpawns | Waker::OtherCpuSpawns);
            // The target: parked until `go` (unless it is spawned by the waker).
            let target: Option<keel_sched::JoinHandle<()>> = (!spawns).then(|| {
                let (s2, parked, go, ran) = (
                    Arc::clone(&s),
                    Arc::clone(&parked),
                    Arc::clone(&go),
                    Arc::clone(&ran),
                );
                s.spawn(pinned(last), move || {
                    parked.store(true, Ordering::SeqCst);
                    while !go.load(Ordering::SeqCst) {
                        s2.park();
                    }
                    ran.store(true, Ordering::SeqCst);
                })
                .unwrap()
            });
            if target.is_some() {
                wait_for(&s, &parked);
            }
            let target_thread: Option<Thread> = target.as_ref().map(|h| h.thread().clone());
            let spinner = {
                let (s2, go, ran, spinning) = (
                    Arc::clone(&s),
                    Arc::clone(&go),
                    Arc::clone(&ran),
                    Arc::clone(&spinning),
                );
                let target_thread = target_thread.clone();
                s.spawn(pinned(last), move || {
                    // Lines raised before the scenario starts (for example by the
                    // spawn of this thread) are taken now, so that only a wake-up or
                    // timer raised for the target can let it run.
                    interrupt_point(&s2);
                    spinning.store(true, Ordering::SeqCst);
                    match waker {
                        Waker::Spinner => {
                            go.store(true, Ordering::SeqCst);
                            s2.unpark(target_thread.as_ref().unwrap());
                        }
                        Waker::SpinnerSpawns => {
                            let ran = Arc::clone(&ran);
                            s2.spawn(SpawnOptions::new(), move || {
                                ran.store(true, Ordering::SeqCst)
                            })
                            .unwrap();
                        }
                        _ => {}
                    }
                    spin_until(&s2, &ran)
                })
                .unwrap()
            };
            // When the spinner wakes the target itself, this thread only joins: on one
            // CPU its sleeps would arm the timer that rescues the target.
            if !matches!(waker, Waker::Spinner | Waker::SpinnerSpawns) {
                wait_for(&s, &spinning);
            }
            match waker {
                Waker::OtherCpu => {
                    go.store(true, Ordering::SeqCst);
                    s.unpark(target_thread.as_ref().unwrap());
                }
                Waker::OtherCpuSpawns => {
                    let ran = Arc::clone(&ran);
                    s.spawn(pinned(last), move || ran.store(true, Ordering::SeqCst))
                        .unwrap();
                }
                Waker::HostThread => {
                    let (s2, go, target_thread) =
                        (Arc::clone(&s), Arc::clone(&go), target_thread.clone());
                    std::thread::spawn(move || {
                        go.store(true, Ordering::SeqCst);
                        s2.unpark(target_thread.as_ref().unwrap());
                    })
                    .join()
                    .unwrap();
                }
                Waker::Spinner | Waker::SpinnerSpawns => {}
            }
            let saw_it = s.join(spinner).unwrap();
            if let Some(target) = target {
                s.join(target);
            }
            let _ = main_done.send(saw_it);
        })
        .unwrap();
    main_result
        .recv_timeout(GUARD * 4)
        .expect("the scenario did not finish")
}

#[test]
fn thread_unparked_from_another_cpu_runs_while_its_cpu_spins() {
    for cpus in [2, 4] {
        let machine = Machine::<FairPolicy>::with_config(cpus, config());
        assert!(
            woken_runs_beside_spinner(&machine, Waker::OtherCpu),
            "{cpus} CPUs: the woken thread did not run within {GUARD:?}"
        );
    }
}

#[test]
fn thread_unparked_from_a_host_thread_runs_while_its_cpu_spins() {
    let machine = Machine::<FairPolicy>::with_config(2, config());
    assert!(woken_runs_beside_spinner(&machine, Waker::HostThread));
}

#[test]
fn thread_unparked_by_the_spinner_runs_while_the_spinner_spins() {
    for cpus in [1, 2] {
        let machine = Machine::<FairPolicy>::with_config(cpus, config());
        assert!(
            woken_runs_beside_spinner(&machine, Waker::Spinner),
            "{cpus} CPUs: the woken thread did not run within {GUARD:?}"
        );
    }
    // Round-robin, too: its time slice must be armed for the woken thread.
    let machine = Machine::<RoundRobinPolicy>::with_config(1, config());
    assert!(woken_runs_beside_spinner(&machine, Waker::Spinner));
}

#[test]
fn thread_spawned_by_the_spinner_runs_while_the_spinner_spins() {
    for cpus in [1, 2] {
        let machine = Machine::<FairPolicy>::with_config(cpus, config());
        assert!(
            woken_runs_beside_spinner(&machine, Waker::SpinnerSpawns),
            "{cpus} CPUs: the spawned thread did not run within {GUARD:?}"
        );
    }
}

#[test]
fn thread_spawned_from_another_cpu_runs_while_its_cpu_spins() {
    let machine = Machine::<FairPolicy>::with_config(2, config());
    assert!(woken_runs_beside_spinner(&machine, Waker::OtherCpuSpawns));
}

/// A sleeper's timer fires on its CPU while another thread spins there.
#[test]
fn sleeper_runs_when_its_timer_fires_while_its_cpu_spins() {
    let machine = Machine::<FairPolicy>::with_config(1, config());
    let scheduler = Arc::clone(machine.scheduler());
    let saw_it = machine.run(pinned(0), move || {
        let ran = Arc::new(AtomicBool::new(false));
        let (s2, ran2) = (Arc::clone(&scheduler), Arc::clone(&ran));
        let sleeper = scheduler
            .spawn(pinned(0), move || {
                s2.sleep(Duration::from_millis(20));
                ran2.store(true, Ordering::SeqCst);
            })
            .unwrap();
        // Let the sleeper block first.
        scheduler.yield_now();
        let s2 = Arc::clone(&scheduler);
        let spinner = scheduler
            .spawn(pinned(0), move || spin_until(&s2, &ran))
            .unwrap();
        let saw_it = scheduler.join(spinner).unwrap();
        scheduler.join(sleeper);
        saw_it
    });
    assert!(saw_it, "the sleeper did not run within {GUARD:?}");
}

/// The balancer moves a thread onto a CPU whose only thread spins: it must run there.
#[test]
fn thread_moved_by_the_balancer_runs_while_its_new_cpu_spins() {
    let machine = Machine::<FairPolicy>::with_config(
        2,
        SchedulerConfig {
            balance_interval: Some(Duration::ZERO),
            ..SchedulerConfig::default()
        },
    );
    let scheduler = Arc::clone(machine.scheduler());
    let saw_it = machine.run(pinned(0), move || {
        let moved_ran = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicBool::new(false));
        let (s2, moved2, spinning2) = (
            Arc::clone(&scheduler),
            Arc::clone(&moved_ran),
            Arc::clone(&spinning),
        );
        let spinner = scheduler
            .spawn(pinned(1), move || {
                spinning2.store(true, Ordering::SeqCst);
                spin_until(&s2, &moved2)
            })
            .unwrap();
        wait_for(&scheduler, &spinning);
        // Three unpinned threads on CPU 0 (load 3 against CPU 1's 1): the balancer
        // moves one. They yield on CPU 0 and stop once one of them ran on CPU 1.
        let movers: Vec<_> = (0..3)
            .map(|_| {
                let (s2, moved2) = (Arc::clone(&scheduler), Arc::clone(&moved_ran));
                scheduler
                    .spawn(SpawnOptions::new(), move || {
                        let start = Instant::now();
                        while !moved2.load(Ordering::SeqCst) && start.elapsed() < GUARD {
                            if s2.arch().current_cpu() == Some(CpuId::new(1)) {
                                moved2.store(true, Ordering::SeqCst);
                            }
                            s2.yield_now();
                        }
                    })
                    .unwrap()
            })
            .collect();
        let saw_it = scheduler.join(spinner).unwrap();
        for mover in movers {
            scheduler.join(mover);
        }
        saw_it
    });
    assert!(saw_it, "the moved thread did not run within {GUARD:?}");
}

/// Bug 3 of the liveness issue: a sleeper's timer entry sits on CPU 0, whose clock
/// reads an hour ahead of CPU 1's; the sleeper is moved to CPU 1 (unparked, then
/// taken by the balancer) and re-checks its deadline there. When CPU 0's entry
/// fires, the sleeper must return, although CPU 1's clock is still far behind the
/// deadline.
#[test]
fn sleeper_moved_to_a_cpu_whose_clock_lags_still_wakes() {
    const HOUR: Duration = Duration::from_secs(3_600);
    let machine = Machine::<FairPolicy>::with_arch(
        HostedArch::with_clock_offsets(&[HOUR, Duration::ZERO]),
        SchedulerConfig {
            balance_interval: Some(Duration::ZERO),
            ..SchedulerConfig::default()
        },
        |_| FairPolicy::default(),
    );
    let scheduler = Arc::clone(machine.scheduler());
    let woke_on = machine.run(pinned(1), move || {
        let done = Arc::new(AtomicBool::new(false));
        let asleep = Arc::new(AtomicBool::new(false));
        let woke_on = Arc::new(AtomicU64::new(u64::MAX));
        let (s2, asleep2, woke_on2) = (
            Arc::clone(&scheduler),
            Arc::clone(&asleep),
            Arc::clone(&woke_on),
        );
        // The sleeper starts on CPU 0 unpinned: spawned by a thread there
        // (`SpawnOptions` has no "start there" short of a pin). Loads stay below the
        // balancer's threshold until the hogs below start.
        let s3 = Arc::clone(&scheduler);
        let spawner = scheduler
            .spawn(pinned(0), move || {
                s3.spawn(SpawnOptions::new(), move || {
                    asleep2.store(true, Ordering::SeqCst);
                    s2.sleep(Duration::from_millis(20));
                    let cpu = s2
                        .arch()
                        .current_cpu()
                        .map_or(u64::MAX, |c| c.index() as u64);
                    woke_on2.store(cpu, Ordering::SeqCst);
                })
                .unwrap()
            })
            .unwrap();
        let sleeper = scheduler.join(spawner).unwrap();
        wait_for(&scheduler, &asleep);
        // Two pinned threads keep CPU 0 busy (they yield, so its decisions run the
        // balancer and its timers).
        let hogs: Vec<_> = (0..2)
            .map(|_| {
                let (s2, done) = (Arc::clone(&scheduler), Arc::clone(&done));
                scheduler
                    .spawn(pinned(0), move || {
                        while !done.load(Ordering::SeqCst) {
                            s2.yield_now();
                        }
                    })
                    .unwrap()
            })
            .collect();
        wait_for(&scheduler, &asleep);
        // Give it time to block, then wake it spuriously: it is queued on CPU 0, whose
        // balancer moves it to CPU 1 (load 3 against 1), where it blocks again.
        scheduler.sleep(Duration::from_millis(2));
        scheduler.unpark(sleeper.thread());
        let start = Instant::now();
        while woke_on.load(Ordering::SeqCst) == u64::MAX && start.elapsed() < GUARD {
            scheduler.sleep(Duration::from_millis(1));
        }
        done.store(true, Ordering::SeqCst);
        for hog in hogs {
            scheduler.join(hog);
        }
        let woke_on = woke_on.load(Ordering::SeqCst);
        if woke_on != u64::MAX {
            scheduler.join(sleeper);
        }
        woke_on
    });
    assert_ne!(woke_on, u64::MAX, "the sleeper never woke");
    assert_eq!(
        woke_on, 1,
        "the sleeper was not moved to CPU 1: the test did not set up its case"
    );
}
