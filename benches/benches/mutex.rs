//! Mutex benches: Keel's lock-free mutex (`keel_lfmutex::Mutex` with `StdParker`)
//! beside `std::sync::Mutex`, `parking_lot::Mutex` and `spin::Mutex`, in one run.
//!
//! Groups are `mutex/<case>`, functions `keel`, `std`, `parking_lot`, `spin`:
//! - `mutex/uncontended`: lock, increment, unlock on one thread (time per lock).
//! - `mutex/contended-2`: 2 threads, 5 000 increments each (time per round).
//! - `mutex/oversubscribed-8`, `mutex/oversubscribed-16`: 8 / 16 threads on the
//!   machine's cores, a fixed total of 4 000 short critical sections per round
//!   (time per round). Releasing and joining the threads is most of such a short
//!   round, the same for every lock.
//! - `mutex/oversubscribed-8-long`, `mutex/oversubscribed-16-long`: the same with
//!   200 000 critical sections per round, so a round spans several Linux
//!   timeslices and lock holders do get preempted. Spinning waiters burn the
//!   timeslices a preempted holder needs, which is what the lock-free mutex's
//!   blocking waiters avoid.
//!
//! Threaded cases time whole rounds with `iter_custom` (threads are spawned and
//! waiting before the clock starts, then released together by a barrier) and use
//! flat sampling, so a slow lock costs a bounded number of rounds.
//!
//! Run: `cargo bench -p keel-benches --bench mutex`. The mutex's experiment variants:
//! add `--features keel-lfmutex/spinning-lfmutex` (or `keel-lfmutex/fifo-lfmutex`).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main};
use keel_hosted::StdParker;

/// The operations the benches need from each mutex.
trait BenchMutex: Send + Sync + 'static {
    /// The bench function name.
    const NAME: &'static str;
    fn new(value: u64) -> Self;
    /// One critical section: lock, increment, unlock.
    fn increment(&self);
    fn value(&self) -> u64;
}

impl BenchMutex for keel_lfmutex::Mutex<u64, StdParker> {
    const NAME: &'static str = "keel";
    fn new(value: u64) -> Self {
        keel_lfmutex::Mutex::new(value)
    }
    #[inline]
    fn increment(&self) {
        *self.lock() += 1;
    }
    fn value(&self) -> u64 {
        *self.lock()
    }
}

impl BenchMutex for std::sync::Mutex<u64> {
    const NAME: &'static str = "std";
    fn new(value: u64) -> Self {
        std::sync::Mutex::new(value)
    }
    #[inline]
    fn increment(&self) {
        *self.lock().unwrap() += 1;
    }
    fn value(&self) -> u64 {
        *self.lock().unwrap()
    }
}

impl BenchMutex for parking_lot::Mutex<u64> {
    const NAME: &'static str = "parking_lot";
    fn new(value: u64) -> Self {
        parking_lot::Mutex::new(value)
    }
    #[inline]
    fn increment(&self) {
        *self.lock() += 1;
    }
    fn value(&self) -> u64 {
        *self.lock()
    }
}

impl BenchMutex for spin::Mutex<u64> {
    const NAME: &'static str = "spin";
    fn new(value: u64) -> Self {
        spin::Mutex::new(value)
    }
    #[inline]
    fn increment(&self) {
        *self.lock() += 1;
    }
    fn value(&self) -> u64 {
        *self.lock()
    }
}

fn uncontended<M: BenchMutex>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let mutex = M::new(0);
    group.bench_function(M::NAME, |bencher| {
        bencher.iter(|| black_box(&mutex).increment())
    });
}

/// Runs `rounds` rounds of `threads` threads doing `per_thread` increments each;
/// returns the time from the common start to the last join, summed over rounds.
fn threaded_rounds<M: BenchMutex>(rounds: u64, threads: usize, per_thread: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        let mutex = Arc::new(M::new(0));
        // Two barriers: the clock starts once every thread is spawned and waiting,
        // and before any is released. (Starting it after a single barrier let a
        // descheduled main thread miss most of a round, on 2 vCPUs.)
        let ready = Arc::new(Barrier::new(threads + 1));
        let go = Arc::new(Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mutex = Arc::clone(&mutex);
                let (ready, go) = (Arc::clone(&ready), Arc::clone(&go));
                thread::spawn(move || {
                    ready.wait();
                    go.wait();
                    for _ in 0..per_thread {
                        mutex.increment();
                    }
                })
            })
            .collect();
        ready.wait();
        let began = Instant::now();
        go.wait();
        for handle in handles {
            handle.join().unwrap();
        }
        total += began.elapsed();
        assert_eq!(mutex.value(), threads as u64 * per_thread);
    }
    total
}

fn threaded<M: BenchMutex>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    threads: usize,
    per_thread: u64,
) {
    group.bench_function(M::NAME, |bencher| {
        bencher.iter_custom(|rounds| threaded_rounds::<M>(rounds, threads, per_thread))
    });
}

fn for_each_mutex(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize, per_thread: u64) {
    threaded::<keel_lfmutex::Mutex<u64, StdParker>>(group, threads, per_thread);
    threaded::<std::sync::Mutex<u64>>(group, threads, per_thread);
    threaded::<parking_lot::Mutex<u64>>(group, threads, per_thread);
    threaded::<spin::Mutex<u64>>(group, threads, per_thread);
}

fn mutex_benches(criterion: &mut Criterion) {
    {
        let mut group = criterion.benchmark_group("mutex/uncontended");
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        uncontended::<keel_lfmutex::Mutex<u64, StdParker>>(&mut group);
        uncontended::<std::sync::Mutex<u64>>(&mut group);
        uncontended::<parking_lot::Mutex<u64>>(&mut group);
        uncontended::<spin::Mutex<u64>>(&mut group);
        group.finish();
    }
    for (name, threads, per_thread) in [
        ("mutex/contended-2", 2, 5_000),
        ("mutex/oversubscribed-8", 8, 500),
        ("mutex/oversubscribed-16", 16, 250),
        ("mutex/oversubscribed-8-long", 8, 25_000),
        ("mutex/oversubscribed-16-long", 16, 12_500),
    ] {
        let mut group = criterion.benchmark_group(name);
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for_each_mutex(&mut group, threads, per_thread);
        group.finish();
    }
}

criterion_group!(benches, mutex_benches);
criterion_main!(benches);
