//! Context-switch benches. Run: `cargo xtask bench switch` (or `cargo bench -p
//! keel-benches --bench switch`). Each group has one `keel` row (ours) and its peers;
//! `xtask` prints every peer's median beside ours. Each sample times N iterations with
//! `iter_custom`; threads are created outside the timed region.
//!
//! **`switch/pingpong`: one round trip per iteration (two switches), one CPU.** OSv's
//! `misc-ctxsw` "colocated" case.
//! - `keel`: two keel threads on one hosted CPU (`keel_hosted::Machine` with one CPU,
//!   fair policy) ping-ponging through `park`/`unpark`: each round trip is two
//!   scheduling decisions (run-queue update, policy accounting, timer re-arm, clock
//!   read) and two of Keel's assembly context switches.
//! - `linux-park-pinned`: **the peer the goal is measured against**: the same
//!   park/unpark protocol between two Linux threads (`std::thread::park`/`unpark`,
//!   futexes) pinned to one CPU with `sched_setaffinity`, so each round trip is two
//!   Linux context switches on one CPU, as Keel's are.
//! - `corosensei`: `resume` + `suspend` of a `corosensei` coroutine (a bare stack
//!   switch with no scheduler: the lower bound).
//! - `extra-condvar-unpinned`, `extra-condvar-pinned`: two Linux threads through
//!   `std::sync::Mutex` + `Condvar`, unpinned (on this 2-vCPU host that mostly
//!   measures cross-vCPU wake-ups) and pinned to one CPU. Extras, not the goal's peer.
//!
//! **`switch/pingpong-apart`: one round trip per iteration, two CPUs.** OSv's "apart".
//! - `keel`: the same two keel threads pinned to the two CPUs of a 2-CPU hosted
//!   machine: each wake-up crosses CPUs through the target's wake-up queue, and
//!   wakes the target CPU's OS thread (a futex wake) unless that CPU is still
//!   polling its queue. Its idle loop polls `idle_poll_iterations` (1000) times
//!   before it sleeps, so a round trip faster than that never sleeps.
//! - `linux-spin-park`: the Linux equivalent with the same budget: two unpinned OS
//!   threads, each waiting for its turn by polling it 1000 times (`spin_loop`) and
//!   then parking; the other unparks it after giving it the turn.
//!
//! **`switch/pingpong-crowd`: the `switch/pingpong` round trip with `N - 2` more
//! runnable threads on the CPU** (no peer: `xtask` prints ours alone).
//! - `keel [N]`: the two ping-pong threads share the CPU with `N - 2` runnable
//!   threads that yield in a loop but have run once at priority 1e100, so their keys
//!   stay above the ping-pong threads' for the case's whole run (for about 40 s of
//!   CPU time at tau = 200 ms, on a fresh machine per case) and they stay queued: every switch works on a run queue of
//!   `N - 2` threads, and every decision computes the running thread's time slice
//!   against the next queued one. `[2]` is the plain ping-pong through the same code.
//!
//! **`switch/yield`: one switch per iteration, `N` runnable threads on one CPU.**
//! - `keel [N]`: `N` keel threads (32 KiB stacks) on one hosted CPU, fair policy,
//!   each calling `yield_now` in a loop: every switch requeues the yielding thread in
//!   a run queue of `N - 1` others and takes the next. `[2]` against `[10000]` shows
//!   what the run queue's size costs.
//! - `linux-yield-pinned [N]`: `N` Linux threads pinned to one CPU calling
//!   `sched_yield` in a loop.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use corosensei::Coroutine;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keel_hosted::Machine;
use keel_sched::{CpuId, FairPolicy, Priority, SchedulerConfig, SpawnOptions};

/// The idle poll budget of the hosted CPUs, which `linux-spin-park` copies.
const POLL_BUDGET: u32 = 1_000;

/// Pins the calling OS thread to `cpu`.
fn pin_current_thread(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `CPU_SET` writes bit `cpu` of the set we own; `cpu` is below
    // `CPU_SETSIZE` (it comes from `sched_getcpu`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is initialised and its size given.
    let result = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(result, 0, "sched_setaffinity failed");
}

/// The CPU the calling thread runs on now (where pinned peers are pinned).
fn this_cpu() -> usize {
    // SAFETY: no arguments, no memory effects.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

/// `iters` park/unpark round trips between two keel threads: on one CPU of `machine`,
/// or pinned to CPUs 0 and 1 if `apart`.
fn keel_round_trips(machine: &Machine<FairPolicy>, iters: u64, apart: bool) -> Duration {
    let scheduler = Arc::clone(machine.scheduler());
    let (main_options, partner_options) = if apart {
        (
            SpawnOptions::new().pin(CpuId::new(0)),
            SpawnOptions::new().pin(CpuId::new(1)),
        )
    } else {
        (SpawnOptions::new(), SpawnOptions::new())
    };
    machine.run(main_options, move || {
        let turn = Arc::new(AtomicU64::new(0));
        let main = scheduler.current().expect("on a keel thread");
        let (partner_scheduler, partner_turn) = (Arc::clone(&scheduler), Arc::clone(&turn));
        let partner = scheduler
            .spawn(partner_options, move || {
                for round in 0..iters {
                    while partner_turn.load(Ordering::Acquire) != 2 * round + 1 {
                        partner_scheduler.park();
                    }
                    partner_turn.store(2 * round + 2, Ordering::Release);
                    partner_scheduler.unpark(&main);
                }
            })
            .expect("spawn");
        let partner_thread = partner.thread().clone();
        // Let the partner start and park first.
        scheduler.yield_now();
        let start = Instant::now();
        for round in 0..iters {
            turn.store(2 * round + 1, Ordering::Release);
            scheduler.unpark(&partner_thread);
            while turn.load(Ordering::Acquire) != 2 * round + 2 {
                scheduler.park();
            }
        }
        let elapsed = start.elapsed();
        scheduler.join(partner);
        elapsed
    })
}

/// `iters` park/unpark round trips (`keel_round_trips`) on the one CPU of `machine`
/// with `crowd` more runnable threads that never get to run (see the module docs).
fn keel_crowd_round_trips(machine: &Machine<FairPolicy>, iters: u64, crowd: u64) -> Duration {
    let scheduler = Arc::clone(machine.scheduler());
    let (stop, started) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let background = SpawnOptions::new()
        .stack_size(32 * 1024)
        .priority(Priority::new(1e100).expect("a valid priority"));
    let crowd_handles: Vec<_> = (0..crowd)
        .map(|_| {
            let (scheduler, stop, started) = (
                Arc::clone(&scheduler),
                Arc::clone(&stop),
                Arc::clone(&started),
            );
            Arc::clone(&scheduler)
                .spawn(background, move || {
                    started.fetch_add(1, Ordering::Relaxed);
                    while !stop.load(Ordering::Relaxed) {
                        scheduler.yield_now();
                    }
                })
                .expect("spawn")
        })
        .collect();
    let elapsed = keel_round_trips_after(machine, iters, move |scheduler| {
        // Every crowd thread runs once (at key 0 it goes first) and is charged.
        while started.load(Ordering::Relaxed) < crowd {
            scheduler.yield_now();
        }
    });
    stop.store(true, Ordering::Relaxed);
    machine.run(SpawnOptions::new(), move || {
        for handle in crowd_handles {
            scheduler.join(handle);
        }
    });
    elapsed
}

/// `keel_round_trips` on one CPU, after `prepare` ran on the main thread.
fn keel_round_trips_after(
    machine: &Machine<FairPolicy>,
    iters: u64,
    prepare: impl FnOnce(&keel_sched::Scheduler<keel_hosted::HostedArch, FairPolicy>) + Send + 'static,
) -> Duration {
    let scheduler = Arc::clone(machine.scheduler());
    machine.run(SpawnOptions::new(), move || {
        prepare(&scheduler);
        let turn = Arc::new(AtomicU64::new(0));
        let main = scheduler.current().expect("on a keel thread");
        let (partner_scheduler, partner_turn) = (Arc::clone(&scheduler), Arc::clone(&turn));
        let partner = scheduler
            .spawn(SpawnOptions::new(), move || {
                for round in 0..iters {
                    while partner_turn.load(Ordering::Acquire) != 2 * round + 1 {
                        partner_scheduler.park();
                    }
                    partner_turn.store(2 * round + 2, Ordering::Release);
                    partner_scheduler.unpark(&main);
                }
            })
            .expect("spawn");
        let partner_thread = partner.thread().clone();
        // Let the partner start and park first (it has the smallest key).
        scheduler.yield_now();
        let start = Instant::now();
        for round in 0..iters {
            turn.store(2 * round + 1, Ordering::Release);
            scheduler.unpark(&partner_thread);
            while turn.load(Ordering::Acquire) != 2 * round + 2 {
                scheduler.park();
            }
        }
        let elapsed = start.elapsed();
        scheduler.join(partner);
        elapsed
    })
}

/// `iters` resume/suspend round trips of a corosensei coroutine.
fn corosensei_round_trips(iters: u64) -> Duration {
    let mut coroutine: Coroutine<u64, u64, ()> = Coroutine::new(|yielder, mut value| {
        loop {
            value = yielder.suspend(black_box(value) + 1);
        }
    });
    let start = Instant::now();
    let mut value = 0;
    for _ in 0..iters {
        match coroutine.resume(value) {
            corosensei::CoroutineResult::Yield(next) => value = next,
            corosensei::CoroutineResult::Return(()) => unreachable!(),
        }
    }
    let elapsed = start.elapsed();
    black_box(value);
    // The coroutine is suspended; dropping it unwinds its stack (forced unwind).
    drop(coroutine);
    elapsed
}

/// How a Linux thread waits for its turn.
#[derive(Clone, Copy)]
enum LinuxWait {
    /// `thread::park` until the turn is ours.
    Park,
    /// Poll the turn [`POLL_BUDGET`] times, then park.
    SpinThenPark,
}

/// Waits until `turn` reads `want`.
fn linux_wait(turn: &AtomicU64, want: u64, wait: LinuxWait) {
    if let LinuxWait::SpinThenPark = wait {
        for _ in 0..POLL_BUDGET {
            if turn.load(Ordering::Acquire) == want {
                return;
            }
            std::hint::spin_loop();
        }
    }
    while turn.load(Ordering::Acquire) != want {
        thread::park();
    }
}

/// `iters` round trips between two Linux threads through `park`/`unpark` (the
/// protocol of `keel_round_trips`), both pinned to one CPU if `pin` is given.
fn linux_park_round_trips(iters: u64, pin: Option<usize>, wait: LinuxWait) -> Duration {
    if let Some(cpu) = pin {
        pin_current_thread(cpu);
    }
    let turn = Arc::new(AtomicU64::new(0));
    let main = thread::current();
    let partner_turn = Arc::clone(&turn);
    let partner = thread::spawn(move || {
        if let Some(cpu) = pin {
            pin_current_thread(cpu);
        }
        for round in 0..iters {
            linux_wait(&partner_turn, 2 * round + 1, wait);
            partner_turn.store(2 * round + 2, Ordering::Release);
            main.unpark();
        }
    });
    let partner_thread = partner.thread().clone();
    let start = Instant::now();
    for round in 0..iters {
        turn.store(2 * round + 1, Ordering::Release);
        partner_thread.unpark();
        linux_wait(&turn, 2 * round + 2, wait);
    }
    let elapsed = start.elapsed();
    partner.join().unwrap();
    elapsed
}

/// `iters` round trips between two OS threads through a mutex and condition variable,
/// both pinned to one CPU if `pin` is given.
fn condvar_round_trips(iters: u64, pin: Option<usize>) -> Duration {
    if let Some(cpu) = pin {
        pin_current_thread(cpu);
    }
    let shared = Arc::new((Mutex::new(0_u64), Condvar::new()));
    let partner_shared = Arc::clone(&shared);
    let partner = thread::spawn(move || {
        if let Some(cpu) = pin {
            pin_current_thread(cpu);
        }
        let (turn, changed) = &*partner_shared;
        for round in 0..iters {
            let mut guard = turn.lock().unwrap();
            while *guard != 2 * round + 1 {
                guard = changed.wait(guard).unwrap();
            }
            *guard = 2 * round + 2;
            changed.notify_one();
        }
    });
    let (turn, changed) = &*shared;
    let start = Instant::now();
    for round in 0..iters {
        let mut guard = turn.lock().unwrap();
        *guard = 2 * round + 1;
        changed.notify_one();
        while *guard != 2 * round + 2 {
            guard = changed.wait(guard).unwrap();
        }
    }
    let elapsed = start.elapsed();
    partner.join().unwrap();
    elapsed
}

/// Runs `body` on a fresh OS thread (so that pinning it does not pin the bench's).
fn on_fresh_thread(body: impl FnOnce() -> Duration + Send + 'static) -> Duration {
    thread::spawn(body).join().unwrap()
}

/// How many yields each of `threads` threads makes so that they add up to at least
/// `iters` switches (and at least 8 each, so that a sample is mostly steady-state
/// rotation, not its start and end), and the time of `iters` switches given the time
/// of them all.
fn yield_rounds(iters: u64, threads: u64) -> (u64, impl Fn(Duration) -> Duration) {
    let rounds = iters.div_ceil(threads).max(8);
    let switches = rounds * threads;
    (rounds, move |elapsed: Duration| {
        let nanos = elapsed.as_nanos() * u128::from(iters) / u128::from(switches);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    })
}

/// `iters` switches among `threads` keel threads on the one CPU of `machine`, each
/// calling `yield_now`.
fn keel_yields(machine: &Machine<FairPolicy>, iters: u64, threads: u64) -> Duration {
    let scheduler = Arc::clone(machine.scheduler());
    let (rounds, scale) = yield_rounds(iters, threads);
    let elapsed = machine.run(SpawnOptions::new(), move || {
        let started = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicU64::new(0));
        let go = Arc::new(AtomicBool::new(false));
        let others: Vec<_> = (1..threads)
            .map(|_| {
                let (scheduler, started, finished, go) = (
                    Arc::clone(&scheduler),
                    Arc::clone(&started),
                    Arc::clone(&finished),
                    Arc::clone(&go),
                );
                Arc::clone(&scheduler)
                    .spawn(SpawnOptions::new().stack_size(32 * 1024), move || {
                        started.fetch_add(1, Ordering::Relaxed);
                        while !go.load(Ordering::Relaxed) {
                            scheduler.yield_now();
                        }
                        for _ in 0..rounds {
                            scheduler.yield_now();
                        }
                        finished.fetch_add(1, Ordering::Relaxed);
                    })
                    .expect("spawn")
            })
            .collect();
        while started.load(Ordering::Relaxed) < threads - 1 {
            scheduler.yield_now();
        }
        go.store(true, Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..rounds {
            scheduler.yield_now();
        }
        while finished.load(Ordering::Relaxed) < threads - 1 {
            scheduler.yield_now();
        }
        let elapsed = start.elapsed();
        for other in others {
            scheduler.join(other);
        }
        elapsed
    });
    scale(elapsed)
}

/// `iters` switches among `threads` Linux threads pinned to one CPU calling
/// `sched_yield`; from the release of the first to the end of the last.
fn linux_yields(iters: u64, threads: u64) -> Duration {
    let (rounds, scale) = yield_rounds(iters, threads);
    let cpu = this_cpu();
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let origin = Instant::now();
    let last_end = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, last_end) = (Arc::clone(&barrier), Arc::clone(&last_end));
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    pin_current_thread(cpu);
                    barrier.wait();
                    for _ in 0..rounds {
                        // SAFETY: no arguments, no memory effects.
                        unsafe { libc::sched_yield() };
                    }
                    let end = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    last_end.fetch_max(end, Ordering::Relaxed);
                })
                .expect("spawn")
        })
        .collect();
    barrier.wait();
    let start = origin.elapsed();
    for handle in handles {
        handle.join().unwrap();
    }
    let end = Duration::from_nanos(last_end.load(Ordering::Relaxed));
    scale(end.saturating_sub(start))
}

fn pingpong(c: &mut Criterion) {
    let machine = Machine::<FairPolicy>::with_config(1, SchedulerConfig::default());
    let mut group = c.benchmark_group("switch/pingpong");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("keel", |b| {
        b.iter_custom(|iters| keel_round_trips(&machine, iters, false))
    });
    group.bench_function("linux-park-pinned", |b| {
        let cpu = this_cpu();
        b.iter_custom(|iters| {
            on_fresh_thread(move || linux_park_round_trips(iters, Some(cpu), LinuxWait::Park))
        })
    });
    group.bench_function("corosensei", |b| b.iter_custom(corosensei_round_trips));
    group.bench_function("extra-condvar-unpinned", |b| {
        b.iter_custom(|iters| condvar_round_trips(iters, None))
    });
    group.bench_function("extra-condvar-pinned", |b| {
        let cpu = this_cpu();
        b.iter_custom(|iters| on_fresh_thread(move || condvar_round_trips(iters, Some(cpu))))
    });
    group.finish();
    machine.shutdown();
}

fn pingpong_apart(c: &mut Criterion) {
    let config = SchedulerConfig::default();
    assert_eq!(config.idle_poll_iterations, POLL_BUDGET);
    let two_cpus = Machine::<FairPolicy>::with_config(2, config);
    let mut group = c.benchmark_group("switch/pingpong-apart");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("keel", |b| {
        b.iter_custom(|iters| keel_round_trips(&two_cpus, iters, true))
    });
    group.bench_function("linux-spin-park", |b| {
        b.iter_custom(|iters| linux_park_round_trips(iters, None, LinuxWait::SpinThenPark))
    });
    group.finish();
    two_cpus.shutdown();
}

fn pingpong_crowd(c: &mut Criterion) {
    let config = SchedulerConfig {
        balance_interval: None,
        ..SchedulerConfig::default()
    };
    let mut group = c.benchmark_group("switch/pingpong-crowd");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for threads in [2_u64, 10_000] {
        // A fresh machine per case: the crowd's keys must stay above the ping-pong
        // threads' for the case's whole run (see the module docs).
        let machine = Machine::<FairPolicy>::with_config(1, config);
        group.bench_with_input(BenchmarkId::new("keel", threads), &threads, |b, &n| {
            b.iter_custom(|iters| keel_crowd_round_trips(&machine, iters, n - 2))
        });
        machine.shutdown();
    }
    group.finish();
}

fn yields(c: &mut Criterion) {
    let config = SchedulerConfig {
        balance_interval: None,
        ..SchedulerConfig::default()
    };
    let machine = Machine::<FairPolicy>::with_config(1, config);
    let mut group = c.benchmark_group("switch/yield");
    // Each sample spawns its threads (10 000 of them in the large case) outside the
    // timed region: fewer samples keep the run short.
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for threads in [2_u64, 10_000] {
        group.bench_with_input(BenchmarkId::new("keel", threads), &threads, |b, &n| {
            b.iter_custom(|iters| keel_yields(&machine, iters, n))
        });
        group.bench_with_input(
            BenchmarkId::new("linux-yield-pinned", threads),
            &threads,
            |b, &n| b.iter_custom(|iters| on_fresh_thread(move || linux_yields(iters, n))),
        );
    }
    group.finish();
    machine.shutdown();
}

criterion_group!(benches, pingpong, pingpong_apart, pingpong_crowd, yields);
criterion_main!(benches);
