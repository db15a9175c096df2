//! The scheduler on hosted CPUs (Linux threads): exact outcomes, ordering, and no lost
//! wake-ups. Run with `cargo test -p keel-hosted`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use keel_hosted::{HostedArch, Machine};
use keel_sched::{
    CpuId, FairPolicy, Policy, RoundRobinPolicy, Scheduler, SchedulerConfig, SpawnError,
    SpawnOptions,
};

type Sched<P> = Arc<Scheduler<HostedArch, P>>;

/// Runs `body` as the main keel thread of a fresh machine; fails (instead of hanging)
/// if it does not finish within 60 s, which would mean a lost wake-up.
fn run_on<P, R>(machine: &Machine<P>, body: impl FnOnce(Sched<P>) -> R + Send + 'static) -> R
where
    P: Policy,
    R: Send + 'static,
{
    let scheduler = Arc::clone(machine.scheduler());
    let (sender, receiver) = mpsc::channel();
    machine
        .scheduler()
        .spawn(SpawnOptions::new(), move || {
            let _ = sender.send(body(scheduler));
        })
        .unwrap();
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the main keel thread did not finish: lost wake-up or deadlock")
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        balance_interval: None,
        ..SchedulerConfig::default()
    }
}

#[test]
fn spawn_join_returns_values() {
    let machine = Machine::<FairPolicy>::with_config(1, config());
    let total = run_on(&machine, |s| {
        let handles: Vec<_> = (0..10_u64)
            .map(|i| s.spawn(SpawnOptions::new(), move || i * i).unwrap())
            .collect();
        handles.into_iter().map(|h| s.join(h).unwrap()).sum::<u64>()
    });
    assert_eq!(total, (0..10).map(|i| i * i).sum());
}

#[test]
fn machine_run_from_host_thread() {
    let machine = Machine::<FairPolicy>::start(2);
    let scheduler = Arc::clone(machine.scheduler());
    let value = machine.run(SpawnOptions::new(), move || {
        assert!(scheduler.current().is_some());
        7
    });
    assert_eq!(value, 7);
    assert!(machine.scheduler().current().is_none());
}

#[test]
fn fifo_yield_round_robins_in_order() {
    let machine =
        Machine::<RoundRobinPolicy>::with_policy(1, config(), |_| RoundRobinPolicy::fifo());
    let order = run_on(&machine, |s| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..3)
            .map(|id| {
                let (s2, log) = (Arc::clone(&s), Arc::clone(&log));
                s.spawn(SpawnOptions::new(), move || {
                    for _ in 0..3 {
                        log.lock().unwrap().push(id);
                        s2.yield_now();
                    }
                })
                .unwrap()
            })
            .collect();
        for h in handles {
            s.join(h).unwrap();
        }
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    });
    assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
}

#[test]
fn park_unpark_ping_pong_counts_exactly() {
    let machine = Machine::<FairPolicy>::with_config(1, config());
    let rounds = run_on(&machine, |s| {
        const ROUNDS: u64 = 10_000;
        let turn = Arc::new(AtomicU64::new(0));
        let main = s.current().unwrap();
        let (s2, turn2) = (Arc::clone(&s), Arc::clone(&turn));
        let partner = s
            .spawn(SpawnOptions::new(), move || {
                for round in 0..ROUNDS {
                    while turn2.load(Ordering::Acquire) != 2 * round + 1 {
                        s2.park();
                    }
                    turn2.store(2 * round + 2, Ordering::Release);
                    s2.unpark(&main);
                }
            })
            .unwrap();
        let partner_thread = partner.thread().clone();
        for round in 0..ROUNDS {
            turn.store(2 * round + 1, Ordering::Release);
            s.unpark(&partner_thread);
            while turn.load(Ordering::Acquire) != 2 * round + 2 {
                s.park();
            }
        }
        s.join(partner).unwrap();
        turn.load(Ordering::Acquire)
    });
    assert_eq!(rounds, 20_000);
}

#[test]
fn unpark_before_park_returns_at_once_and_tokens_do_not_accumulate() {
    let machine = Machine::<FairPolicy>::with_config(1, config());
    let parks = run_on(&machine, |s| {
        let me = s.current().unwrap();
        s.unpark(&me);
        s.unpark(&me);
        s.park(); // consumes the single token
        // A second park must block until someone unparks us.
        let woke = Arc::new(AtomicBool::new(false));
        let (s2, woke2, me2) = (Arc::clone(&s), Arc::clone(&woke), me.clone());
        let waker = s
            .spawn(SpawnOptions::new(), move || {
                woke2.store(true, Ordering::Release);
                s2.unpark(&me2);
            })
            .unwrap();
        s.park();
        assert!(
            woke.load(Ordering::Acquire),
            "park returned before the unpark"
        );
        s.join(waker).unwrap();
        2
    });
    assert_eq!(parks, 2);
}

#[test]
fn sleepers_wake_in_deadline_order_and_not_early() {
    let machine =
        Machine::<RoundRobinPolicy>::with_policy(1, config(), |_| RoundRobinPolicy::fifo());
    let order = run_on(&machine, |s| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = [30_u64, 10, 20]
            .into_iter()
            .map(|ms| {
                let (s2, log) = (Arc::clone(&s), Arc::clone(&log));
                s.spawn(SpawnOptions::new(), move || {
                    let deadline = s2.now() + Duration::from_millis(ms);
                    s2.sleep_until(deadline);
                    assert!(s2.now() >= deadline, "woke before the deadline");
                    log.lock().unwrap().push(ms);
                })
                .unwrap()
            })
            .collect();
        for h in handles {
            s.join(h).unwrap();
        }
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    });
    assert_eq!(order, [10, 20, 30]);
}

#[test]
fn sleep_keeps_the_park_token() {
    let machine = Machine::<FairPolicy>::with_config(1, config());
    run_on(&machine, |s| {
        let me = s.current().unwrap();
        s.unpark(&me);
        s.sleep(Duration::from_millis(1));
        // The token set before the sleep is still there: park returns at once.
        s.park();
    });
}

#[test]
fn exit_ends_a_thread_and_join_gets_none() {
    let machine = Machine::<FairPolicy>::with_config(1, config());
    let result = run_on(&machine, |s| {
        let s2 = Arc::clone(&s);
        let handle = s
            .spawn(SpawnOptions::new(), move || -> u32 { s2.exit() })
            .unwrap();
        s.join(handle)
    });
    assert_eq!(result, None);
}

#[test]
fn spawn_errors_are_reported() {
    let machine = Machine::<FairPolicy>::with_config(2, config());
    let s = machine.scheduler();
    assert_eq!(
        s.spawn(SpawnOptions::new().pin(CpuId::new(5)), || ())
            .unwrap_err(),
        SpawnError::NoSuchCpu(CpuId::new(5))
    );
    assert_eq!(
        s.spawn(SpawnOptions::new().stack_size(100), || ())
            .unwrap_err(),
        SpawnError::StackTooSmall(100)
    );
}

#[test]
fn many_threads_are_created_and_reclaimed() {
    let machine = Machine::<FairPolicy>::with_config(2, config());
    let sum = run_on(&machine, |s| {
        let mut sum = 0;
        for batch in 0..10_u64 {
            let handles: Vec<_> = (0..100_u64)
                .map(|i| {
                    s.spawn(SpawnOptions::new().stack_size(64 * 1024), move || {
                        batch * 100 + i
                    })
                    .unwrap()
                })
                .collect();
            sum += handles.into_iter().map(|h| s.join(h).unwrap()).sum::<u64>();
        }
        sum
    });
    assert_eq!(sum, (0..1000).sum());
}

#[test]
fn fair_policy_preempts_a_cpu_hog_at_preemption_points() {
    // Two CPU-bound threads on one CPU with the fair policy: the second must get to
    // run while the first still loops (the first stops only when it sees that).
    let machine = Machine::<FairPolicy>::with_config(1, config());
    let (interleaved, _) = run_on(&machine, |s| {
        let second_ran = Arc::new(AtomicBool::new(false));
        let (s1, seen) = (Arc::clone(&s), Arc::clone(&second_ran));
        let hog = s
            .spawn(SpawnOptions::new(), move || {
                let give_up = s1.now() + Duration::from_secs(5);
                while !seen.load(Ordering::Acquire) && s1.now() < give_up {
                    s1.preempt_check();
                }
                seen.load(Ordering::Acquire)
            })
            .unwrap();
        let (s2, flag) = (Arc::clone(&s), Arc::clone(&second_ran));
        let other = s
            .spawn(SpawnOptions::new(), move || {
                flag.store(true, Ordering::Release);
                s2.preempt_check();
            })
            .unwrap();
        (s.join(hog).unwrap(), s.join(other).unwrap())
    });
    assert!(interleaved, "the fair policy never preempted the hog");
}

/// Takes `lock` from a keel thread without queueing for it: `try_lock`, and on failure
/// lets this CPU's other threads run before trying again.
///
/// Not `lock()`: `SpinLock` is a ticket lock, which hands the lock over in ticket
/// order, and a hosted CPU is an OS thread that the host may deschedule at any moment.
/// With more hosted CPUs than host cores, the CPU whose ticket comes up is often not
/// running; every other CPU then spins until the host runs it again (a host time
/// slice, milliseconds). Each CPU always has another thread ready to take a fresh
/// ticket, so this lock-waiter-preemption convoy never dissolves: the test crawled at
/// a few hundred increments per second and looked like a hang (in 2-4% of runs on a
/// loaded 2-core host; the scheduler state was consistent and progressing). With
/// `try_lock` only a running CPU can get the lock, so the host's scheduling can stall
/// it for at most one preempted critical section.
fn lock_without_queueing<'a, T, P: Policy>(
    lock: &'a keel_sync::SpinLock<T>,
    scheduler: &Scheduler<HostedArch, P>,
) -> keel_sync::SpinLockGuard<'a, T> {
    loop {
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        scheduler.yield_now();
        std::hint::spin_loop();
    }
}

#[test]
fn counters_on_four_cpus_are_exact() {
    let machine = Machine::<FairPolicy>::with_config(
        4,
        SchedulerConfig {
            balance_interval: Some(Duration::from_millis(1)),
            ..SchedulerConfig::default()
        },
    );
    let (atomic, locked) = run_on(&machine, |s| {
        let atomic = Arc::new(AtomicU64::new(0));
        let locked = Arc::new(keel_sync::SpinLock::new(0_u64));
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let (s2, atomic, locked) =
                    (Arc::clone(&s), Arc::clone(&atomic), Arc::clone(&locked));
                let options = if i % 2 == 0 {
                    SpawnOptions::new().pin(CpuId::new(i % 4))
                } else {
                    SpawnOptions::new()
                };
                s.spawn(options, move || {
                    for _ in 0..2_000 {
                        atomic.fetch_add(1, Ordering::Relaxed);
                        *lock_without_queueing(&locked, &s2) += 1;
                        s2.yield_now();
                    }
                })
                .unwrap()
            })
            .collect();
        for h in handles {
            s.join(h).unwrap();
        }
        (atomic.load(Ordering::Relaxed), *locked.lock())
    });
    assert_eq!(atomic, 64_000);
    assert_eq!(locked, 64_000);
}

#[test]
fn cross_cpu_park_unpark_loses_no_wakeup() {
    for cpus in [2, 3] {
        let machine = Machine::<FairPolicy>::with_config(cpus, config());
        let rounds = run_on(&machine, move |s| {
            const ROUNDS: u64 = 20_000;
            let turn = Arc::new(AtomicU64::new(0));
            let main = s.current().unwrap();
            let (s2, turn2) = (Arc::clone(&s), Arc::clone(&turn));
            let partner = s
                .spawn(SpawnOptions::new().pin(CpuId::new(cpus - 1)), move || {
                    for round in 0..ROUNDS {
                        while turn2.load(Ordering::Acquire) != 2 * round + 1 {
                            s2.park();
                        }
                        turn2.store(2 * round + 2, Ordering::Release);
                        s2.unpark(&main);
                    }
                })
                .unwrap();
            let partner_thread = partner.thread().clone();
            for round in 0..ROUNDS {
                turn.store(2 * round + 1, Ordering::Release);
                s.unpark(&partner_thread);
                while turn.load(Ordering::Acquire) != 2 * round + 2 {
                    s.park();
                }
            }
            s.join(partner).unwrap();
            turn.load(Ordering::Acquire)
        });
        assert_eq!(rounds, 40_000, "{cpus} CPUs");
    }
}

#[test]
fn unpark_from_host_threads_wakes_parked_threads() {
    let machine = Machine::<FairPolicy>::with_config(2, config());
    let s = Arc::clone(machine.scheduler());
    let counter = Arc::new(AtomicUsize::new(0));
    let (sender, receiver) = mpsc::channel();
    let (s2, counter2) = (Arc::clone(&s), Arc::clone(&counter));
    let waiter = s
        .spawn(SpawnOptions::new().pin(CpuId::new(1)), move || {
            let me = s2.current().unwrap();
            sender.send(me).unwrap();
            let mut seen = 0;
            while seen < 1_000 {
                s2.park();
                seen = counter2.load(Ordering::Acquire);
            }
            seen
        })
        .unwrap();
    let target = receiver.recv().unwrap();
    for _ in 0..1_000 {
        counter.fetch_add(1, Ordering::Release);
        s.unpark(&target);
        std::thread::yield_now();
    }
    let waiter_thread = waiter.thread().clone();
    let mut waited = 0;
    while !waiter_thread.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
        waited += 1;
        assert!(waited < 60_000, "lost wake-up");
    }
    assert_eq!(waiter_thread.cpu(), CpuId::new(1));
}

#[test]
fn pinned_threads_never_migrate_and_the_balancer_spreads_the_rest() {
    let machine = Machine::<FairPolicy>::with_config(
        4,
        SchedulerConfig {
            balance_interval: Some(Duration::from_micros(200)),
            ..SchedulerConfig::default()
        },
    );
    let (pinned_cpus, spread_cpus) = run_on(&machine, |s| {
        // Everything starts on CPU 0 (the main thread's CPU).
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let pinned_seen = Arc::new(Mutex::new(BTreeSet::new()));
        let spread_enough = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..16 {
            let (s2, seen, pinned_seen, spread_enough) = (
                Arc::clone(&s),
                Arc::clone(&seen),
                Arc::clone(&pinned_seen),
                Arc::clone(&spread_enough),
            );
            let pinned = i < 4;
            let options = if pinned {
                SpawnOptions::new().pin(CpuId::new(0))
            } else {
                SpawnOptions::new()
            };
            handles.push(
                s.spawn(options, move || {
                    let give_up = s2.now() + Duration::from_secs(10);
                    while !spread_enough.load(Ordering::Acquire) && s2.now() < give_up {
                        let me = s2.current().unwrap();
                        if pinned {
                            pinned_seen.lock().unwrap().insert(me.cpu().index());
                        } else {
                            let mut seen = seen.lock().unwrap();
                            seen.insert(me.cpu().index());
                            if seen.len() == 4 {
                                spread_enough.store(true, Ordering::Release);
                            }
                        }
                        s2.yield_now();
                    }
                })
                .unwrap(),
            );
        }
        for h in handles {
            s.join(h).unwrap();
        }
        let pinned_cpus = pinned_seen.lock().unwrap().clone();
        let spread = seen.lock().unwrap().clone();
        (pinned_cpus, spread)
    });
    assert_eq!(pinned_cpus, BTreeSet::from([0]));
    assert_eq!(spread_cpus, BTreeSet::from([0, 1, 2, 3]));
}

/// MXCSR and the x87 control word of this context.
fn fp_control() -> (u32, u16) {
    let mut mxcsr = 0_u32;
    let mut fcw = 0_u16;
    // SAFETY: stores the control registers into two local variables.
    unsafe {
        std::arch::asm!(
            "stmxcsr [{m}]",
            "fnstcw [{f}]",
            m = in(reg) &raw mut mxcsr,
            f = in(reg) &raw mut fcw,
            options(nostack),
        );
    }
    (mxcsr, fcw)
}

/// Sets MXCSR and the x87 control word of this context.
fn set_fp_control(mxcsr: u32, fcw: u16) {
    // SAFETY: loads valid control values (all exceptions masked, only the rounding
    // and precision fields changed by the callers); the test's code does not depend on
    // the rounding mode.
    unsafe {
        std::arch::asm!(
            "ldmxcsr [{m}]",
            "fldcw [{f}]",
            m = in(reg) &raw const mxcsr,
            f = in(reg) &raw const fcw,
            options(nostack),
        );
    }
}

#[test]
fn floating_point_control_state_is_per_thread() {
    const DEFAULT: (u32, u16) = (0x1f80, 0x037f);
    // Round toward zero (MXCSR bits 13-14, FCW bits 10-11); FCW single precision.
    const ROUND_TO_ZERO: (u32, u16) = (0x1f80 | 0x6000, 0x037f | 0x0c00);
    // Round up; FCW double precision.
    const ROUND_UP: (u32, u16) = (0x1f80 | 0x4000, (0x037f & !0x0300) | 0x0200 | 0x0800);
    let machine =
        Machine::<RoundRobinPolicy>::with_policy(1, config(), |_| RoundRobinPolicy::fifo());
    let seen = run_on(&machine, |s| {
        let (s1, s2) = (Arc::clone(&s), Arc::clone(&s));
        let first = s
            .spawn(SpawnOptions::new(), move || {
                let fresh = fp_control();
                set_fp_control(ROUND_TO_ZERO.0, ROUND_TO_ZERO.1);
                let mut kept = Vec::new();
                for _ in 0..3 {
                    s1.yield_now();
                    kept.push(fp_control());
                }
                set_fp_control(DEFAULT.0, DEFAULT.1);
                (fresh, kept)
            })
            .unwrap();
        let second = s
            .spawn(SpawnOptions::new(), move || {
                let fresh = fp_control();
                let mut kept = Vec::new();
                for round in 0..3 {
                    if round == 1 {
                        set_fp_control(ROUND_UP.0, ROUND_UP.1);
                    }
                    s2.yield_now();
                    kept.push(fp_control());
                }
                set_fp_control(DEFAULT.0, DEFAULT.1);
                (fresh, kept)
            })
            .unwrap();
        // This thread switches with both while they run with changed state.
        let mut main_seen = Vec::new();
        for _ in 0..4 {
            s.yield_now();
            main_seen.push(fp_control());
        }
        (s.join(first).unwrap(), s.join(second).unwrap(), main_seen)
    });
    let ((first_fresh, first_kept), (second_fresh, second_kept), main_seen) = seen;
    assert_eq!(first_fresh, DEFAULT);
    assert_eq!(second_fresh, DEFAULT);
    assert_eq!(first_kept, [ROUND_TO_ZERO; 3]);
    assert_eq!(second_kept, [DEFAULT, ROUND_UP, ROUND_UP]);
    assert!(
        main_seen.iter().all(|&state| state == DEFAULT),
        "{main_seen:x?}"
    );
}
