//! In-guest cases of threads on Keel's scheduler: spawn and join, timer preemption,
//! sleeps, pinning, cross-CPU wake-ups, TLS through FS, floating-point state, many
//! threads, the balancer, and tickless idle (the mutex cases are in `mutex.rs`).

use super::TestResult;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use keel_arch_x86_64::{ArchInfo, kprintln, time};

fn threads_spawn_and_join(_: &ArchInfo) -> TestResult {
    let scheduler = crate::threads::scheduler();
    let mut handles = alloc::vec::Vec::new();
    for index in 0..64u64 {
        let spawned = scheduler.spawn(keel_sched::SpawnOptions::new(), move || index * index);
        check!(spawned.is_ok(), "spawn failed", index);
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    let mut sum = 0;
    for handle in handles {
        sum += scheduler.join(handle).unwrap_or(0);
    }
    let expected: u64 = (0..64u64).map(|index| index * index).sum();
    check!(sum == expected, "joined results wrong", sum, expected);
    Ok(())
}
ktest!(threads_spawn_and_join);

/// Two threads that never yield: the second can only run if the timer preempts the
/// first, which spins until the second has run.
fn timer_preempts_busy_threads(_: &ArchInfo) -> TestResult {
    use core::sync::atomic::AtomicU64;
    static SECOND_RAN: AtomicBool = AtomicBool::new(false);
    static SPINS: AtomicU64 = AtomicU64::new(0);
    SECOND_RAN.store(false, Ordering::SeqCst);
    let scheduler = crate::threads::scheduler();
    let give_up = time::now() + Duration::from_secs(5);
    let first = scheduler.spawn(keel_sched::SpawnOptions::new(), move || {
        while !SECOND_RAN.load(Ordering::SeqCst) && time::now() < give_up {
            SPINS.fetch_add(1, Ordering::Relaxed);
        }
        SECOND_RAN.load(Ordering::SeqCst)
    });
    let second = scheduler.spawn(keel_sched::SpawnOptions::new(), || {
        SECOND_RAN.store(true, Ordering::SeqCst);
    });
    check!(first.is_ok() && second.is_ok(), "spawn failed");
    let (Ok(first), Ok(second)) = (first, second) else {
        return Ok(());
    };
    let saw_second = scheduler.join(first);
    scheduler.join(second);
    check!(
        saw_second == Some(true),
        "busy thread was never preempted",
        saw_second
    );
    Ok(())
}
ktest!(timer_preempts_busy_threads);

fn sleepers_never_wake_early(_: &ArchInfo) -> TestResult {
    use keel_lfmutex::Mutex;
    use keel_sched::Instant;
    /// (deadline, the order in which the sleeper got going again)
    static WOKEN: Mutex<alloc::vec::Vec<(Instant, Instant)>, crate::threads::KernelParker> =
        Mutex::new(alloc::vec::Vec::new());
    WOKEN.lock().clear();
    let scheduler = crate::threads::scheduler();
    let mut handles = alloc::vec::Vec::new();
    for millis in [9u64, 3, 6, 1] {
        let spawned = scheduler.spawn(keel_sched::SpawnOptions::new(), move || {
            let deadline = time::now() + Duration::from_millis(millis);
            crate::threads::scheduler().sleep_until(deadline);
            let woke = time::now();
            WOKEN.lock().push((deadline, woke));
            (deadline, woke)
        });
        check!(spawned.is_ok(), "spawn failed");
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    for handle in handles {
        let (deadline, woke) = scheduler
            .join(handle)
            .unwrap_or((Instant::from_nanos(1), Instant::ZERO));
        check!(woke >= deadline, "woke before the deadline", deadline, woke);
    }
    let woken = WOKEN.lock().clone();
    check!(woken.len() == 4, "a sleeper never woke", woken);
    // Reported, not asserted (no timing assertions): how late each sleeper got going.
    // (Several milliseconds before the idle wait stopped re-arming a stale deadline.)
    for (deadline, woke) in &woken {
        kprintln!(
            "    deadline {} ns: running again {} us later",
            deadline.as_nanos(),
            (*woke - *deadline).as_micros()
        );
    }
    Ok(())
}
ktest!(sleepers_never_wake_early);

fn every_cpu_runs_its_pinned_threads(info: &ArchInfo) -> TestResult {
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    if let Ok(platform) = &info.platform {
        check!(
            cpus == platform.cpu_count(),
            "not every CPU came online",
            cpus,
            platform.cpu_count()
        );
    }
    let mut handles = alloc::vec::Vec::new();
    for round in 0..4 {
        for cpu in 0..cpus {
            let options = keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(cpu));
            let spawned = scheduler.spawn(options, move || {
                (cpu, round, keel_arch_x86_64::percpu::current_index())
            });
            check!(spawned.is_ok(), "spawn failed", cpu);
            if let Ok(handle) = spawned {
                handles.push(handle);
            }
        }
    }
    for handle in handles {
        let result = scheduler.join(handle);
        check!(
            matches!(result, Some((pinned, _, ran_on)) if pinned == ran_on),
            "a pinned thread ran on another CPU",
            result
        );
    }
    Ok(())
}
ktest!(every_cpu_runs_its_pinned_threads);

/// Two threads on different CPUs hand a token back and forth through park/unpark;
/// a lost wake-up would hang (and the host's time limit would fail the suite).
fn cross_cpu_park_unpark_loses_no_wakeup(_: &ArchInfo) -> TestResult {
    use core::sync::atomic::AtomicU64;
    const ROUNDS: u64 = 2000;
    static BALL: AtomicU64 = AtomicU64::new(0);
    BALL.store(0, Ordering::SeqCst);
    let scheduler = crate::threads::scheduler();
    let last = keel_sched::CpuId::new(scheduler.cpu_count() - 1);
    let me = scheduler.current();
    check!(me.is_some(), "test runner is not a Keel thread");
    let Some(me) = me else { return Ok(()) };
    let runner = me.clone();
    let peer = scheduler.spawn(keel_sched::SpawnOptions::new().pin(last), move || {
        let scheduler = crate::threads::scheduler();
        for round in 0..ROUNDS {
            while BALL.load(Ordering::SeqCst) != 2 * round + 1 {
                scheduler.park();
            }
            BALL.store(2 * round + 2, Ordering::SeqCst);
            scheduler.unpark(&runner);
        }
    });
    check!(peer.is_ok(), "spawn failed");
    let Ok(peer) = peer else { return Ok(()) };
    let peer_thread = peer.thread().clone();
    for round in 0..ROUNDS {
        BALL.store(2 * round + 1, Ordering::SeqCst);
        scheduler.unpark(&peer_thread);
        while BALL.load(Ordering::SeqCst) != 2 * round + 2 {
            scheduler.park();
        }
    }
    scheduler.join(peer);
    check!(BALL.load(Ordering::SeqCst) == 2 * ROUNDS, "ball lost");
    Ok(())
}
ktest!(cross_cpu_park_unpark_loses_no_wakeup);

/// Several wakers, pinned to every other CPU, wake one thread on CPU 0 at the same
/// time, over and over: the target's wake-up queue gets concurrent pushes on several
/// lanes while its CPU goes to sleep and wakes up. Each waker posts a number, unparks
/// the target and parks until the target acknowledges it; a lost wake-up on either
/// side leaves both parked, and the suite's time limit fails the run.
fn many_cpus_wake_one_thread_without_loss(_: &ArchInfo) -> TestResult {
    use core::sync::atomic::AtomicU64;
    const WAKERS: usize = 3;
    const ROUNDS: u64 = 3000;
    static POSTED: [AtomicU64; WAKERS] = [const { AtomicU64::new(0) }; WAKERS];
    static ACKED: [AtomicU64; WAKERS] = [const { AtomicU64::new(0) }; WAKERS];
    for slot in POSTED.iter().chain(&ACKED) {
        slot.store(0, Ordering::SeqCst);
    }
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let waker_cpu =
        |index: usize| keel_sched::CpuId::new(if cpus > 1 { 1 + index % (cpus - 1) } else { 0 });
    // The target starts first and learns its wakers' handles through this slot.
    static WAKER_HANDLES: keel_sync::SpinLock<alloc::vec::Vec<keel_sched::Thread>> =
        keel_sync::SpinLock::new(alloc::vec::Vec::new());
    WAKER_HANDLES.lock().clear();
    let target = scheduler.spawn(
        keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(0)),
        || {
            let scheduler = crate::threads::scheduler();
            let mut wakers = alloc::vec::Vec::new();
            loop {
                if wakers.len() < WAKERS {
                    wakers = WAKER_HANDLES.lock().clone();
                }
                let mut finished = wakers.len() == WAKERS;
                for (index, waker) in wakers.iter().enumerate() {
                    let posted = POSTED[index].load(Ordering::SeqCst);
                    if posted > ACKED[index].load(Ordering::SeqCst) {
                        ACKED[index].store(posted, Ordering::SeqCst);
                        scheduler.unpark(waker);
                    }
                    finished &= posted == ROUNDS && ACKED[index].load(Ordering::SeqCst) == ROUNDS;
                }
                if finished {
                    return;
                }
                scheduler.park();
            }
        },
    );
    check!(target.is_ok(), "spawn failed");
    let Ok(target) = target else { return Ok(()) };
    let mut wakers = alloc::vec::Vec::new();
    for index in 0..WAKERS {
        let target_thread = target.thread().clone();
        let spawned = scheduler.spawn(
            keel_sched::SpawnOptions::new().pin(waker_cpu(index)),
            move || {
                let scheduler = crate::threads::scheduler();
                for round in 1..=ROUNDS {
                    POSTED[index].store(round, Ordering::SeqCst);
                    scheduler.unpark(&target_thread);
                    while ACKED[index].load(Ordering::SeqCst) != round {
                        scheduler.park();
                    }
                }
            },
        );
        check!(spawned.is_ok(), "spawn failed", index);
        if let Ok(handle) = spawned {
            WAKER_HANDLES.lock().push(handle.thread().clone());
            wakers.push(handle);
        }
    }
    // The target may have parked before the last handle arrived.
    scheduler.unpark(target.thread());
    for waker in wakers {
        scheduler.join(waker);
    }
    scheduler.join(target);
    for (index, acked) in ACKED.iter().enumerate() {
        let acked = acked.load(Ordering::SeqCst);
        check!(
            acked == ROUNDS,
            "a waker's round was not acknowledged",
            index,
            acked
        );
    }
    WAKER_HANDLES.lock().clear();
    Ok(())
}
ktest!(many_cpus_wake_one_thread_without_loss);

/// Each thread gets its own FS base (its thread pointer); `fs:[0]` reads the first word
/// of its own block, also after being switched out and back in.
fn thread_local_storage_through_fs(_: &ArchInfo) -> TestResult {
    let scheduler = crate::threads::scheduler();
    let mut handles = alloc::vec::Vec::new();
    for index in 0..6u64 {
        // A leaked block whose first word is the thread's tag (a TLS block in miniature).
        let block: &'static mut [u64; 4] =
            alloc::boxed::Box::leak(alloc::boxed::Box::new([0x7e57_0000 + index, 0, 0, 0]));
        let pointer = block.as_ptr() as u64;
        let options = keel_sched::SpawnOptions::new().thread_pointer(pointer);
        let spawned = scheduler.spawn(options, move || {
            let mut seen = [0u64; 3];
            for slot in &mut seen {
                let value: u64;
                // SAFETY: the scheduler set FS base to this thread's block before it ran;
                // reading its first word is in bounds.
                unsafe { core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) value, options(nostack, readonly)) };
                *slot = value;
                crate::threads::scheduler().yield_now();
            }
            seen
        });
        check!(spawned.is_ok(), "spawn failed");
        if let Ok(handle) = spawned {
            handles.push((index, handle));
        }
    }
    for (index, handle) in handles {
        let seen = scheduler.join(handle);
        check!(
            seen == Some([0x7e57_0000 + index; 3]),
            "wrong thread pointer",
            index,
            seen
        );
    }
    Ok(())
}
ktest!(thread_local_storage_through_fs);

/// Busy threads doing floating-point work are preempted by the timer (interrupt
/// entry saves the SSE state on the thread's stack); every thread's result must be
/// exactly what it computes alone.
fn float_state_survives_preemption(_: &ArchInfo) -> TestResult {
    fn work(seed: u64) -> f64 {
        let mut x = seed as f64 + 0.5;
        let mut sum = 0.0f64;
        for step in 0..200_000u64 {
            x = x * 1.000_001 + (step % 7) as f64 * 0.25;
            sum += x / (1.0 + (step % 13) as f64);
        }
        sum
    }
    let expected: alloc::vec::Vec<u64> =
        (0..4).map(|seed| work(black_box(seed)).to_bits()).collect();
    let scheduler = crate::threads::scheduler();
    let mut handles = alloc::vec::Vec::new();
    for seed in 0..4u64 {
        // All on one CPU, so they preempt each other.
        let options = keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(0));
        let spawned = scheduler.spawn(options, move || work(black_box(seed)).to_bits());
        check!(spawned.is_ok(), "spawn failed");
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    for (seed, handle) in handles.into_iter().enumerate() {
        let bits = scheduler.join(handle);
        check!(
            bits == Some(expected[seed]),
            "float result changed under preemption",
            seed,
            bits
        );
    }
    Ok(())
}
ktest!(float_state_survives_preemption);

fn thousands_of_threads_count_exactly(_: &ArchInfo) -> TestResult {
    use keel_lfmutex::Mutex;
    const COUNTERS: usize = 8;
    static COUNTERS_SHARED: [Mutex<u64, crate::threads::KernelParker>; COUNTERS] =
        [const { Mutex::new(0) }; COUNTERS];
    for counter in &COUNTERS_SHARED {
        *counter.lock() = 0;
    }
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    const THREADS: usize = 2048;
    const INCREMENTS: u64 = 20;
    let mut handles = alloc::vec::Vec::new();
    for index in 0..THREADS {
        let options = keel_sched::SpawnOptions::new()
            .stack_size(16 * 1024)
            .pin(keel_sched::CpuId::new(index % cpus));
        // Thread `index` increments counters `index % COUNTERS` and the next one, one
        // lock at a time: each counter is shared by two groups of threads, which sit
        // on different CPUs whenever there are several.
        let spawned = scheduler.spawn(options, move || {
            for _ in 0..INCREMENTS {
                *COUNTERS_SHARED[index % COUNTERS].lock() += 1;
                *COUNTERS_SHARED[(index + 1) % COUNTERS].lock() += 1;
            }
        });
        check!(spawned.is_ok(), "spawn failed", index);
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    for handle in handles {
        scheduler.join(handle);
    }
    for (which, counter) in COUNTERS_SHARED.iter().enumerate() {
        let total = *counter.lock();
        // Every counter is its own threads' first and its neighbours' second.
        let expected = 2 * (THREADS / COUNTERS) as u64 * INCREMENTS;
        check!(total == expected, "lost increments", which, total, expected);
    }
    Ok(())
}
ktest!(thousands_of_threads_count_exactly);

/// Unpinned busy threads all start on CPU 0; with several CPUs the balancer must move
/// some elsewhere (each records the CPU it finishes on).
fn balancer_moves_threads_off_a_busy_cpu(_: &ArchInfo) -> TestResult {
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    if cpus < 2 {
        return Ok(());
    }
    // Spawned from a thread pinned to CPU 0, so unpinned threads start there.
    let spawner = scheduler.spawn(
        keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(0)),
        move || {
            let scheduler = crate::threads::scheduler();
            let mut handles = alloc::vec::Vec::new();
            for _ in 0..8 {
                if let Ok(handle) = scheduler.spawn(keel_sched::SpawnOptions::new(), || {
                    let end = time::now() + Duration::from_millis(60);
                    let mut spins = 0u64;
                    while time::now() < end {
                        spins = black_box(spins + 1);
                    }
                    keel_arch_x86_64::percpu::current_index()
                }) {
                    handles.push(handle);
                }
            }
            let mut finished_on = alloc::vec::Vec::new();
            for handle in handles {
                finished_on.push(scheduler.join(handle).unwrap_or(usize::MAX));
            }
            finished_on
        },
    );
    check!(spawner.is_ok(), "spawn failed");
    let Ok(spawner) = spawner else { return Ok(()) };
    let finished_on = scheduler.join(spawner).unwrap_or_default();
    check!(finished_on.len() == 8, "threads missing", finished_on);
    check!(
        finished_on.iter().any(|&cpu| cpu != 0),
        "no thread left the CPU all started on",
        finished_on
    );
    Ok(())
}
ktest!(balancer_moves_threads_off_a_busy_cpu);

/// Tickless: while the only thread sleeps 50 ms and every other CPU is idle, the
/// timer fires for the sleeper's deadline only (a periodic 1 kHz tick would fire 50
/// times per CPU). A fire slightly before the TSC deadline (APIC/TSC calibration) may
/// add a re-arm, hence the small allowance.
fn tickless_idle_takes_no_timer_ticks(_: &ArchInfo) -> TestResult {
    let counters = &crate::threads::COUNTERS;
    let before = counters.timer_interrupts.load(Ordering::Relaxed);
    crate::threads::scheduler().sleep(Duration::from_millis(50));
    let ticks = counters.timer_interrupts.load(Ordering::Relaxed) - before;
    check!(
        (1..=3).contains(&ticks),
        "idle CPUs took timer interrupts",
        ticks
    );
    Ok(())
}
ktest!(tickless_idle_takes_no_timer_ticks);
