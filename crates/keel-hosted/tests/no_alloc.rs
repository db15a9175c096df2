//! The scheduler's switch, wake-up and timer paths allocate nothing once warm: a
//! counting global allocator counts the allocations made on the hosted CPUs' OS
//! threads (where every keel thread and every scheduling decision runs) while a
//! window is armed, and each case runs its workload once to warm up, then again armed,
//! and requires zero. Run with `cargo test -p keel-hosted --test no_alloc`.
//!
//! Covered: park/unpark ping-pong on one CPU (local wake-ups and switches) with the
//! fair and the round-robin policy; `yield_now` among 64 runnable threads (run queue
//! inserts in the middle and pops); ping-pong across two CPUs (the wake-up queue, the
//! wake-up IPI, the idle loop's poll and wait); sleeps fired by the timer interrupt
//! while another thread spins (timer queue, timer interrupt, preemption) and sleeps
//! on an otherwise idle CPU (the idle wait's deadline).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use keel_hosted::{HostedArch, Machine, interrupt_point};
use keel_sched::{
    CpuId, FairPolicy, Policy, RoundRobinPolicy, Scheduler, SchedulerConfig, SpawnOptions,
};

/// Counts allocations on marked OS threads while [`ARMED`].
struct CountingAllocator;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    /// This OS thread is a hosted CPU (set by a keel thread pinned to it).
    static IS_CPU: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if ARMED.load(Ordering::Relaxed) && IS_CPU.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to `System` unchanged; the counting touches only an
// atomic and a const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc_zeroed` is forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `realloc` is forwarded.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is forwarded.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The cases share the counter: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

type Sched<P> = Arc<Scheduler<HostedArch, P>>;

/// A machine whose CPUs' OS threads are marked for counting.
fn machine<P: Policy>(cpus: usize, make_policy: impl FnMut(CpuId) -> P) -> Machine<P> {
    let config = SchedulerConfig {
        balance_interval: None,
        ..SchedulerConfig::default()
    };
    let machine = Machine::with_policy(cpus, config, make_policy);
    for cpu in 0..cpus {
        let handle = machine
            .scheduler()
            .spawn(SpawnOptions::new().pin(CpuId::new(cpu)), || {
                IS_CPU.with(|flag| flag.set(true))
            })
            .unwrap();
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    machine
}

/// Runs `body` on a keel thread of `machine` and returns what it returns; fails
/// instead of hanging.
fn run_on<P: Policy, R: Send + 'static>(
    machine: &Machine<P>,
    body: impl FnOnce(Sched<P>) -> R + Send + 'static,
) -> R {
    let scheduler = Arc::clone(machine.scheduler());
    let (sender, receiver) = mpsc::channel();
    machine
        .scheduler()
        .spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
            let _ = sender.send(body(scheduler));
        })
        .unwrap();
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the main keel thread did not finish")
}

/// Allocations made on the CPUs while `body` runs (called on a keel thread).
fn allocations_during(body: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    ARMED.store(true, Ordering::SeqCst);
    body();
    ARMED.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// `rounds` park/unpark round trips between the calling thread and a partner spawned
/// with `partner_options` (its loop runs `rounds` times more: its second half is
/// the armed window's partner). Returns the allocations of the second `rounds`.
fn ping_pong<P: Policy>(s: &Sched<P>, partner_options: SpawnOptions, rounds: u64) -> u64 {
    let turn = Arc::new(AtomicU64::new(0));
    let main = s.current().unwrap();
    let (partner_s, partner_turn) = (Arc::clone(s), Arc::clone(&turn));
    let partner = s
        .spawn(partner_options, move || {
            for round in 0..2 * rounds {
                while partner_turn.load(Ordering::Acquire) != 2 * round + 1 {
                    partner_s.park();
                }
                partner_turn.store(2 * round + 2, Ordering::Release);
                partner_s.unpark(&main);
            }
        })
        .unwrap();
    let partner_thread = partner.thread().clone();
    let round_trips = |range: std::ops::Range<u64>| {
        for round in range {
            turn.store(2 * round + 1, Ordering::Release);
            s.unpark(&partner_thread);
            while turn.load(Ordering::Acquire) != 2 * round + 2 {
                s.park();
            }
        }
    };
    round_trips(0..rounds);
    let allocations = allocations_during(|| round_trips(rounds..2 * rounds));
    s.join(partner);
    allocations
}

#[test]
fn park_unpark_on_one_cpu_allocates_nothing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fair = machine(1, |_| FairPolicy::default());
    let allocations = run_on(&fair, |s| ping_pong(&s, SpawnOptions::new(), 2_000));
    assert_eq!(allocations, 0, "fair policy: allocations in park/unpark");
    let round_robin = machine(1, |_| RoundRobinPolicy::new(100_000));
    let allocations = run_on(&round_robin, |s| ping_pong(&s, SpawnOptions::new(), 2_000));
    assert_eq!(allocations, 0, "round-robin: allocations in park/unpark");
}

/// Spawns `count` threads, one at a time, that park until [`Crowd::release`], then
/// run `work`, count themselves done, and park again until [`Crowd::finish`].
/// Spawning allocates, so it happens before the armed window; releasing and running
/// them must not. The run queue holds at most two threads before the release.
struct Crowd<P: Policy> {
    s: Sched<P>,
    go: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    started: Arc<AtomicU64>,
    handles: Vec<keel_sched::JoinHandle<()>>,
}

impl<P: Policy> Crowd<P> {
    fn new(s: &Sched<P>, count: u64, work: impl Fn(&Sched<P>) + Send + Sync + 'static) -> Self {
        let (go, quit, done, started) = Default::default();
        let mut crowd = Crowd {
            s: Arc::clone(s),
            go,
            quit,
            done,
            started,
            handles: Vec::new(),
        };
        let work = Arc::new(work);
        for _ in 0..count {
            let (s, go, quit, done, started, work) = (
                Arc::clone(s),
                Arc::clone(&crowd.go),
                Arc::clone(&crowd.quit),
                Arc::clone(&crowd.done),
                Arc::clone(&crowd.started),
                Arc::clone(&work),
            );
            let handle = crowd
                .s
                .spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    while !go.load(Ordering::SeqCst) {
                        s.park();
                    }
                    work(&s);
                    done.fetch_add(1, Ordering::SeqCst);
                    while !quit.load(Ordering::SeqCst) {
                        s.park();
                    }
                })
                .unwrap();
            crowd.handles.push(handle);
            // Let it start and park before the next is spawned (blocked, not
            // runnable, from now), so that the run queue stays short until `release`.
            while crowd.started.load(Ordering::SeqCst) < crowd.handles.len() as u64 {
                crowd.s.yield_now();
            }
        }
        crowd
    }

    /// Makes every thread runnable at once and waits (with `wait`, which must not
    /// spawn) until all have done their work.
    fn release(&self, wait: impl Fn(&Sched<P>)) {
        self.go.store(true, Ordering::SeqCst);
        for handle in &self.handles {
            self.s.unpark(handle.thread());
        }
        while self.done.load(Ordering::SeqCst) < self.handles.len() as u64 {
            wait(&self.s);
        }
    }

    fn finish(self) {
        self.quit.store(true, Ordering::SeqCst);
        for handle in self.handles {
            self.s.unpark(handle.thread());
            self.s.join(handle);
        }
    }
}

#[test]
fn yield_among_many_threads_allocates_nothing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fair = machine(1, |_| FairPolicy::default());
    let allocations = run_on(&fair, |s| {
        // Warm-up: the yield path with two runnable threads.
        let few = Crowd::new(&s, 1, |s| (0..100).for_each(|_| s.yield_now()));
        few.release(|s| s.yield_now());
        few.finish();
        // Armed: the run queue grows from 0 to 65 threads for the first time (a vector
        // or heap would reallocate here), and they all yield.
        let many = Crowd::new(&s, 64, |s| (0..50).for_each(|_| s.yield_now()));
        let allocations = allocations_during(|| many.release(|s| s.yield_now()));
        many.finish();
        allocations
    });
    assert_eq!(allocations, 0, "allocations in yield_now with 64 threads");
}

#[test]
fn wake_ups_across_cpus_allocate_nothing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let two = machine(2, |_| FairPolicy::default());
    let allocations = run_on(&two, |s| {
        ping_pong(&s, SpawnOptions::new().pin(CpuId::new(1)), 2_000)
    });
    assert_eq!(allocations, 0, "allocations in cross-CPU wake-ups");
}

#[test]
fn timers_allocate_nothing() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sleeps = |s: &Sched<FairPolicy>| (0..5).for_each(|_| s.sleep(Duration::from_micros(20)));
    let fair = machine(1, |_| FairPolicy::default());
    let allocations = run_on(&fair, move |s| {
        // Warm-up: one sleeper at a time.
        let one = Crowd::new(&s, 1, sleeps);
        one.release(|s| s.sleep(Duration::from_micros(10)));
        one.finish();
        // Idle: 32 threads sleep at once (the timer queue holds 33 entries for the
        // first time) while the CPU waits for the next deadline in its idle loop.
        let crowd = Crowd::new(&s, 32, sleeps);
        let idle = allocations_during(|| crowd.release(|s| s.sleep(Duration::from_micros(10))));
        crowd.finish();
        // Busy: a spinner on the same CPU; the timers fire through the timer
        // interrupt (taken at the spinner's interrupt points), which preempts it.
        let done = Arc::new(AtomicBool::new(false));
        let (spinner_s, spinner_done) = (Arc::clone(&s), Arc::clone(&done));
        let spinner = s
            .spawn(SpawnOptions::new(), move || {
                while !spinner_done.load(Ordering::Relaxed) {
                    interrupt_point(&spinner_s);
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        let crowd = Crowd::new(&s, 48, sleeps);
        let busy = allocations_during(|| crowd.release(|s| s.sleep(Duration::from_micros(10))));
        crowd.finish();
        done.store(true, Ordering::Relaxed);
        s.join(spinner);
        (idle, busy)
    });
    assert_eq!(allocations, (0, 0), "allocations in (idle, busy) sleeps");
}

#[test]
fn the_counter_counts() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fair = machine(1, |_| FairPolicy::default());
    let allocations = run_on(&fair, |_| {
        allocations_during(|| drop(std::hint::black_box(Box::new(1_u64))))
    });
    assert_eq!(allocations, 1);
}
