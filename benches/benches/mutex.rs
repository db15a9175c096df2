//! Mutex benches: Keel's lock-free mutex (`keel_lfmutex::Mutex` with `StdParker`)
//! beside `std::sync::Mutex`, `parking_lot::Mutex` and `spin::Mutex`, in one run.
//!
//! Groups are `mutex/<case>`, functions `keel`, `std`, `parking_lot`, `spin`:
//! - `mutex/uncontended`: lock, increment, unlock on one thread (time per lock).
//! - **Fixed window** (`mutex/contended-2`, `mutex/oversubscribed-8`,
//!   `mutex/oversubscribed-16`): 2, 8 or 16 threads take the lock in a loop for a
//!   100 ms window; the time is the window divided by the acquisitions of all
//!   threads (time per acquisition). Threads are started before the window and
//!   joined after it, so neither is timed. Each thread counts its own
//!   acquisitions; the **spread** is the slowest thread's count over the busiest
//!   thread's (1.0: every thread got as many; near 0: some thread starved), its
//!   median over every window criterion ran (warm-up included) written beside
//!   criterion's results (see below).
//! - **Fixed work** (`mutex/oversubscribed-8-fixed-work`,
//!   `mutex/oversubscribed-16-fixed-work`): 200 000 critical sections in all, split
//!   evenly, per round, timed from the common start to the last join (thread start
//!   and join are inside, the same for every lock: the `no-lock-baseline` row does
//!   the same work with an atomic `fetch_add` and no lock, so it shows that share).
//!   A round lasts as long as its slowest thread, so a lock that starves some
//!   threads pays for them at the end. The spread here is the slowest thread's
//!   progress when the first thread finished, over the work per thread.
//!   (The earlier short rounds of 4 000 sections took as long with no lock at all:
//!   they measured thread start and join only, and are gone.)
//!
//! Spreads go to `target/criterion/keel-extra.jsonl`, one JSON object per line
//! (`group`, `function`, `spread_median`, `samples`), which `cargo xtask bench
//! mutex` prints beside the medians.
//!
//! Run: `cargo xtask bench mutex` (or `cargo bench -p keel-benches --bench mutex`).
//! The mutex's experiment variants: add `--features keel-lfmutex/strict-lfmutex`
//! (OSv's waiters that never spin) or `keel-lfmutex/fifo-lfmutex`.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Not a lock: the same counter bumped with `fetch_add`, to show what the fixed-work
/// rounds cost without any lock (thread start, release and join).
struct NoLockBaseline(AtomicU64);

impl BenchMutex for NoLockBaseline {
    const NAME: &'static str = "no-lock-baseline";
    fn new(value: u64) -> Self {
        Self(AtomicU64::new(value))
    }
    #[inline]
    fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter alone on its cache line (per-thread progress, read by others).
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Appends one spread record to `target/criterion/keel-extra.jsonl`.
fn record_spread(group: &str, function: &str, spreads: &mut [f64]) {
    if spreads.is_empty() {
        return;
    }
    spreads.sort_by(f64::total_cmp);
    let median = spreads[spreads.len() / 2];
    eprintln!(
        "{group}/{function}: spread (slowest/busiest thread) median {median:.3} over {} samples",
        spreads.len()
    );
    // The bench runs in target/<profile>/deps/; criterion writes to target/criterion.
    let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(std::path::Path::to_path_buf))
    else {
        return;
    };
    let directory = target.join("criterion");
    let _ = std::fs::create_dir_all(&directory);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(directory.join("keel-extra.jsonl"))
    {
        let _ = writeln!(
            file,
            "{{\"group\":\"{group}\",\"function\":\"{function}\",\"spread_median\":{median},\"samples\":{}}}",
            spreads.len()
        );
    }
}

fn uncontended<M: BenchMutex>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let mutex = M::new(0);
    group.bench_function(M::NAME, |bencher| {
        bencher.iter(|| black_box(&mutex).increment())
    });
}

/// Runs `rounds` rounds of `threads` threads doing `per_thread` increments each;
/// returns the time from the common start to the last join, summed over rounds, and
/// pushes each round's spread (the slowest thread's progress when the first
/// finished, over `per_thread`) onto `spreads`.
fn fixed_work_rounds<M: BenchMutex>(
    rounds: u64,
    threads: usize,
    per_thread: u64,
    spreads: &mut Vec<f64>,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        let mutex = Arc::new(M::new(0));
        let progress: Arc<Vec<Padded>> =
            Arc::new((0..threads).map(|_| Padded::default()).collect());
        let first_done = Arc::new(AtomicBool::new(false));
        let spread_bits = Arc::new(AtomicU64::new(0));
        // Two barriers: the clock starts once every thread is spawned and waiting,
        // and before any is released. (Starting it after a single barrier let a
        // descheduled main thread miss most of a round, on 2 vCPUs.)
        let ready = Arc::new(Barrier::new(threads + 1));
        let go = Arc::new(Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (mutex, progress) = (Arc::clone(&mutex), Arc::clone(&progress));
                let (first_done, spread_bits) = (Arc::clone(&first_done), Arc::clone(&spread_bits));
                let (ready, go) = (Arc::clone(&ready), Arc::clone(&go));
                thread::spawn(move || {
                    ready.wait();
                    go.wait();
                    for done in 1..=per_thread {
                        mutex.increment();
                        progress[index].0.store(done, Ordering::Relaxed);
                    }
                    if !first_done.swap(true, Ordering::AcqRel) {
                        let slowest = progress
                            .iter()
                            .map(|counter| counter.0.load(Ordering::Relaxed))
                            .min()
                            .unwrap_or(0);
                        let spread = slowest as f64 / per_thread as f64;
                        spread_bits.store(spread.to_bits(), Ordering::Relaxed);
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
        spreads.push(f64::from_bits(spread_bits.load(Ordering::Relaxed)));
    }
    total
}

/// The length of one fixed-window sample.
const WINDOW: Duration = Duration::from_millis(100);

/// One fixed window: `threads` threads take the lock until told to stop; returns the
/// window's length, the acquisitions of all threads, and the spread.
fn fixed_window<M: BenchMutex>(threads: usize) -> (Duration, u64, f64) {
    let mutex = Arc::new(M::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (mutex, stop, ready) = (Arc::clone(&mutex), Arc::clone(&stop), Arc::clone(&ready));
            thread::spawn(move || {
                ready.wait();
                let mut count = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    mutex.increment();
                    count += 1;
                }
                count
            })
        })
        .collect();
    ready.wait();
    let began = Instant::now();
    thread::sleep(WINDOW);
    stop.store(true, Ordering::Relaxed);
    let window = began.elapsed();
    let counts: Vec<u64> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let total: u64 = counts.iter().sum();
    assert_eq!(mutex.value(), total, "the lock lost an increment");
    let busiest = counts.iter().copied().max().unwrap_or(0).max(1);
    let slowest = counts.iter().copied().min().unwrap_or(0);
    (window, total.max(1), slowest as f64 / busiest as f64)
}

fn windowed<M: BenchMutex>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, threads: usize) {
    let spreads = RefCell::new(Vec::new());
    group.bench_function(M::NAME, |bencher| {
        bencher.iter_custom(|iterations| {
            let (window, acquisitions, spread) = fixed_window::<M>(threads);
            spreads.borrow_mut().push(spread);
            // Criterion divides by `iterations`: report the window scaled so that the
            // time per iteration is the time per acquisition.
            window.mul_f64(iterations as f64 / acquisitions as f64)
        })
    });
    record_spread(name, M::NAME, &mut spreads.borrow_mut());
}

fn fixed_work<M: BenchMutex>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    per_thread: u64,
) {
    let spreads = RefCell::new(Vec::new());
    group.bench_function(M::NAME, |bencher| {
        bencher.iter_custom(|rounds| {
            fixed_work_rounds::<M>(rounds, threads, per_thread, &mut spreads.borrow_mut())
        })
    });
    record_spread(name, M::NAME, &mut spreads.borrow_mut());
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
    for (name, threads) in [
        ("mutex/contended-2", 2),
        ("mutex/oversubscribed-8", 8),
        ("mutex/oversubscribed-16", 16),
    ] {
        let mut group = criterion.benchmark_group(name);
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        windowed::<keel_lfmutex::Mutex<u64, StdParker>>(&mut group, name, threads);
        windowed::<std::sync::Mutex<u64>>(&mut group, name, threads);
        windowed::<parking_lot::Mutex<u64>>(&mut group, name, threads);
        windowed::<spin::Mutex<u64>>(&mut group, name, threads);
        group.finish();
    }
    for (name, threads, per_thread) in [
        ("mutex/oversubscribed-8-fixed-work", 8, 25_000),
        ("mutex/oversubscribed-16-fixed-work", 16, 12_500),
    ] {
        let mut group = criterion.benchmark_group(name);
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        fixed_work::<keel_lfmutex::Mutex<u64, StdParker>>(&mut group, name, threads, per_thread);
        fixed_work::<std::sync::Mutex<u64>>(&mut group, name, threads, per_thread);
        fixed_work::<parking_lot::Mutex<u64>>(&mut group, name, threads, per_thread);
        fixed_work::<spin::Mutex<u64>>(&mut group, name, threads, per_thread);
        fixed_work::<NoLockBaseline>(&mut group, name, threads, per_thread);
        group.finish();
    }
}

criterion_group!(benches, mutex_benches);
criterion_main!(benches);
