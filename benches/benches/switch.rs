//! `switch/pingpong`: a context-switch round trip between two execution contexts on
//! one core, measured as **one round trip per iteration** (two switches: there and
//! back). OSv's `misc-ctxsw` "colocated" case.
//!
//! - `keel`: two keel threads on one hosted CPU (`keel_hosted::Machine` with
//!   one CPU, fair policy) ping-ponging through `park`/`unpark`: each round trip is
//!   two scheduling decisions (run-queue update, policy accounting, timer re-arm,
//!   clock read) and two of Keel's assembly context switches.
//! - `keel-apart`: the same two threads pinned to the two CPUs of a 2-CPU hosted
//!   machine (OSv's "apart" case): each wake-up crosses CPUs through the target's
//!   wake-up queue, and wakes the target CPU's OS thread (a futex wake) unless that
//!   CPU is still polling its queue. On this 2-vCPU host, the two hosted CPUs are two
//!   of the host's busy threads.
//! - `corosensei`: `resume` + `suspend` of a `corosensei` coroutine (a bare stack
//!   switch with no scheduler: the lower bound).
//! - `std-condvar`: two Linux threads ping-ponging through `std::sync::Mutex` +
//!   `Condvar` (futex wake-ups through the kernel scheduler).
//!
//! Each sample times N round trips with `iter_custom` (threads are set up outside the
//! timed region). Run: `cargo bench -p keel-benches --bench switch`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use corosensei::Coroutine;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_hosted::Machine;
use keel_sched::{CpuId, FairPolicy, SchedulerConfig, SpawnOptions};

/// `iters` park/unpark round trips between two keel threads: on one CPU of `machine`,
/// or pinned to CPUs 0 and 1 if `apart`.
fn keel_round_trips(machine: &Machine<FairPolicy>, iters: u64, apart: bool) -> Duration {
    let scheduler = Arc::clone(machine.scheduler());
    let (main_options, partner_options) = if apart {
        (
            SpawnOptions::new().pin(CpuId(0)),
            SpawnOptions::new().pin(CpuId(1)),
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

/// `iters` round trips between two OS threads through a mutex and condition variable.
fn condvar_round_trips(iters: u64) -> Duration {
    let shared = Arc::new((Mutex::new(0_u64), Condvar::new()));
    let partner_shared = Arc::clone(&shared);
    let partner = thread::spawn(move || {
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

fn pingpong(c: &mut Criterion) {
    let machine = Machine::<FairPolicy>::with_config(1, SchedulerConfig::default());
    let two_cpus = Machine::<FairPolicy>::with_config(2, SchedulerConfig::default());
    let mut group = c.benchmark_group("switch/pingpong");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("keel", |b| {
        b.iter_custom(|iters| keel_round_trips(&machine, iters, false))
    });
    group.bench_function("keel-apart", |b| {
        b.iter_custom(|iters| keel_round_trips(&two_cpus, iters, true))
    });
    group.bench_function("corosensei", |b| b.iter_custom(corosensei_round_trips));
    group.bench_function("std-condvar", |b| b.iter_custom(condvar_round_trips));
    group.finish();
    machine.shutdown();
    two_cpus.shutdown();
}

criterion_group!(benches, pingpong);
criterion_main!(benches);
