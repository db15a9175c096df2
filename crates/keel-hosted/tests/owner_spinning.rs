//! Owner-aware spinning on the real scheduler: the lock-free mutex's waiter spins
//! only while the owner runs on a CPU that the hypervisor has not preempted, and
//! stops at its first look once the owner's CPU is reported preempted.
//!
//! The mutex blocks through a `Parker` over a hosted machine's scheduler (as the
//! kernel's `KernelParker` does), which counts the answers it gives the spinner.
//! [`HostedArch::set_cpu_preempted`] plays the hypervisor's steal-time flag.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use keel_hosted::{HostedArch, Machine, interrupt_point};
use keel_lfmutex::{Mutex, Parker, ThreadId};
use keel_sched::{Arch, CpuId, Scheduler, SchedulerConfig, SpawnOptions};

type Sched = Arc<Scheduler<HostedArch>>;

static SCHEDULER: OnceLock<Sched> = OnceLock::new();
/// How often `owner_is_running` answered `true` / `false`.
static ANSWERED_RUNNING: AtomicUsize = AtomicUsize::new(0);
static ANSWERED_NOT_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// A liveness bound for the waits below (a hang becomes a failure).
const GUARD: Duration = Duration::from_secs(10);

fn scheduler() -> &'static Sched {
    SCHEDULER.get().expect("the machine is not up")
}

/// `keel-lfmutex`'s `Parker` on the hosted machine's threads.
#[derive(Debug, Clone, Copy)]
struct MachineParker;

// SAFETY: `Scheduler::unpark` makes the thread's park token available and wakes it;
// ids are the scheduler's, unique and numbered from 1.
unsafe impl Parker for MachineParker {
    type Handle = keel_sched::Thread;

    fn current() -> Self::Handle {
        scheduler().current().expect("not a keel thread")
    }

    fn current_id() -> ThreadId {
        scheduler().current_id().expect("not a keel thread")
    }

    fn park() {
        scheduler().park();
    }

    fn unpark(handle: &Self::Handle) {
        scheduler().unpark(handle);
    }

    fn current_cpu_hint() -> u32 {
        scheduler()
            .arch()
            .current_cpu()
            .map_or(u32::MAX, |cpu| cpu.index() as u32)
    }

    fn owner_is_running(owner: ThreadId, cpu_hint: u32) -> bool {
        let running = scheduler().is_running_on(owner, CpuId::new(cpu_hint as usize));
        let counter = if running {
            &ANSWERED_RUNNING
        } else {
            &ANSWERED_NOT_RUNNING
        };
        counter.fetch_add(1, Ordering::SeqCst);
        running
    }
}

/// Waits (on this host thread) until `flag` is set, failing with `what` after
/// [`GUARD`].
fn wait_until(flag: &AtomicBool, what: &str) {
    let start = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        assert!(start.elapsed() < GUARD, "{what}");
        std::thread::yield_now();
    }
}

/// What the waiter's `lock` asked while the owner held the mutex on CPU 0.
#[derive(Debug, PartialEq, Eq)]
struct Answers {
    running: usize,
    not_running: usize,
}

/// The owner takes `mutex` on CPU 0 and holds it, running (it spins, taking
/// interrupts), until the waiter on CPU 1 has given up spinning and gone to sleep;
/// then it releases and the waiter gets the mutex. Returns what the waiter was told.
fn contend(
    machine: &Machine,
    mutex: &Arc<Mutex<u64, MachineParker>>,
    preempt_owner_cpu: bool,
) -> Answers {
    let scheduler = Arc::clone(machine.scheduler());
    let locked = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let waiter_id = Arc::new(AtomicU64::new(0));
    let owner_done = Arc::new(AtomicBool::new(false));
    let waiter_done = Arc::new(AtomicBool::new(false));
    let _owner = {
        let owner_done = Arc::clone(&owner_done);
        let (scheduler, mutex, locked, release) = (
            Arc::clone(&scheduler),
            Arc::clone(mutex),
            Arc::clone(&locked),
            Arc::clone(&release),
        );
        scheduler
            .clone()
            .spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
                let mut guard = mutex.lock();
                *guard += 1;
                locked.store(true, Ordering::SeqCst);
                let start = Instant::now();
                while !release.load(Ordering::SeqCst) && start.elapsed() < GUARD {
                    interrupt_point(&scheduler);
                    std::hint::spin_loop();
                }
                drop(guard);
                owner_done.store(true, Ordering::SeqCst);
            })
    }
    .expect("spawn the owner");
    let start = Instant::now();
    while !locked.load(Ordering::SeqCst) {
        assert!(start.elapsed() < GUARD, "the owner never took the mutex");
        std::thread::yield_now();
    }
    scheduler
        .arch()
        .set_cpu_preempted(CpuId::new(0), preempt_owner_cpu);
    ANSWERED_RUNNING.store(0, Ordering::SeqCst);
    ANSWERED_NOT_RUNNING.store(0, Ordering::SeqCst);
    let _waiter = {
        let waiter_done = Arc::clone(&waiter_done);
        let (scheduler, mutex, waiter_id) = (
            Arc::clone(&scheduler),
            Arc::clone(mutex),
            Arc::clone(&waiter_id),
        );
        scheduler
            .clone()
            .spawn(SpawnOptions::new().pin(CpuId::new(1)), move || {
                waiter_id.store(
                    scheduler.current_id().expect("a keel thread").get(),
                    Ordering::SeqCst,
                );
                *mutex.lock() += 1;
                waiter_done.store(true, Ordering::SeqCst);
            })
    }
    .expect("spawn the waiter");
    // The waiter is asleep once CPU 1 no longer runs it (it cannot have finished:
    // the owner still holds the mutex).
    let start = Instant::now();
    loop {
        let id = waiter_id.load(Ordering::SeqCst);
        if let Some(id) = ThreadId::from_u64(id)
            && !scheduler.is_running_on(id, CpuId::new(1))
        {
            break;
        }
        assert!(
            start.elapsed() < GUARD,
            "the waiter never went to sleep: it spins without bound"
        );
        std::thread::yield_now();
    }
    let answers = Answers {
        running: ANSWERED_RUNNING.load(Ordering::SeqCst),
        not_running: ANSWERED_NOT_RUNNING.load(Ordering::SeqCst),
    };
    release.store(true, Ordering::SeqCst);
    wait_until(&owner_done, "the owner did not finish");
    wait_until(&waiter_done, "the waiter did not get the mutex");
    scheduler.arch().set_cpu_preempted(CpuId::new(0), false);
    answers
}

#[test]
fn waiter_spins_on_a_running_owner_and_stops_at_once_when_its_cpu_is_preempted() {
    let machine = Machine::with_config(
        2,
        SchedulerConfig {
            balance_interval: None,
            ..SchedulerConfig::default()
        },
    );
    assert!(SCHEDULER.set(Arc::clone(machine.scheduler())).is_ok());
    let mutex = Arc::new(Mutex::<u64, MachineParker>::new(0));

    // The owner runs on CPU 0: the waiter spins, asking each time, and is always told
    // that the owner runs; the spin is bounded (the mutex's limit is at most 32
    // looks), after which it sleeps.
    let spun = contend(&machine, &mutex, false);
    assert!(
        (1..=32).contains(&spun.running) && spun.not_running == 0,
        "waiter with a running owner: {spun:?}"
    );

    // CPU 0 reported preempted: the first answer is "not running", and the waiter
    // asks nothing more: it goes to sleep at once.
    let preempted = contend(&machine, &mutex, true);
    assert_eq!(
        preempted,
        Answers {
            running: 0,
            not_running: 1
        },
        "waiter with a preempted owner"
    );

    let total = {
        let mutex = Arc::clone(&mutex);
        machine.run(SpawnOptions::new(), move || *mutex.lock())
    };
    assert_eq!(total, 4, "every lock's increment counted");
    machine.shutdown();
}
