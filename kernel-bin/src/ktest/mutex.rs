//! In-guest cases of the lock-free mutex and condvar on Keel threads: exact counts
//! under contention across CPUs, condvar ping-pong, the spinning waiter's
//! "is the owner running" answer, and the recorded owner id across switches.

use super::TestResult;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use keel_arch_x86_64::{ArchInfo, kprintln, time};

fn lfmutex_counts_exactly_on_keel_threads(_: &ArchInfo) -> TestResult {
    use keel_lfmutex::Mutex;
    static COUNTER: Mutex<u64, crate::threads::KernelParker> = Mutex::new(0);
    *COUNTER.lock() = 0;
    let scheduler = crate::threads::scheduler();
    let mut handles = alloc::vec::Vec::new();
    let cpus = scheduler.cpu_count();
    for index in 0..16 {
        // Spread over every CPU, so the mutex is contended across CPUs.
        let options = keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(index % cpus));
        let spawned = scheduler.spawn(options, || {
            for round in 0..500u32 {
                let mut counter = COUNTER.lock();
                *counter += 1;
                if round % 50 == 0 {
                    // Yield inside the critical section: the others queue on the mutex.
                    crate::threads::scheduler().yield_now();
                }
            }
        });
        check!(spawned.is_ok(), "spawn failed");
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    for handle in handles {
        scheduler.join(handle);
    }
    let total = *COUNTER.lock();
    check!(total == 16 * 500, "lost increments", total);
    Ok(())
}
ktest!(lfmutex_counts_exactly_on_keel_threads);

fn condvar_ping_pong_on_keel_threads(_: &ArchInfo) -> TestResult {
    use keel_lfmutex::{Condvar, Mutex};
    type Parker = crate::threads::KernelParker;
    static TURN: Mutex<u32, Parker> = Mutex::new(0);
    static CHANGED: Condvar<Parker> = Condvar::new();
    const ROUNDS: u32 = 1000;
    *TURN.lock() = 0;
    let scheduler = crate::threads::scheduler();
    let player = |parity: u32| {
        move || {
            for _ in 0..ROUNDS {
                let mut turn = TURN.lock();
                turn = CHANGED.wait_while(turn, |turn| *turn % 2 != parity);
                *turn += 1;
                CHANGED.notify_all();
            }
        }
    };
    // On different CPUs when there are several.
    let last = keel_sched::CpuId::new(scheduler.cpu_count() - 1);
    let even = scheduler.spawn(
        keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(0)),
        player(0),
    );
    let odd = scheduler.spawn(keel_sched::SpawnOptions::new().pin(last), player(1));
    check!(even.is_ok() && odd.is_ok(), "spawn failed");
    let (Ok(even), Ok(odd)) = (even, odd) else {
        return Ok(());
    };
    scheduler.join(even);
    scheduler.join(odd);
    let turns = *TURN.lock();
    check!(turns == 2 * ROUNDS, "ping-pong lost a turn", turns);
    Ok(())
}
ktest!(condvar_ping_pong_on_keel_threads);

/// What a spinning mutex waiter asks, on real CPUs: `KernelParker::owner_is_running`
/// says yes of a thread that runs on the CPU named (while another CPU asks), no for
/// another CPU, and no once the thread has parked. Under TCG no vCPU reports itself
/// preempted, so the answer is the scheduler's alone.
fn owner_is_running_follows_the_owner(_: &ArchInfo) -> TestResult {
    use core::sync::atomic::AtomicU64;
    use keel_lfmutex::{Parker, ThreadId};
    static ID: AtomicU64 = AtomicU64::new(0);
    static PARK_NOW: AtomicBool = AtomicBool::new(false);
    static RESUMED: AtomicBool = AtomicBool::new(false);
    if !super::has_two_cpus() {
        return Ok(());
    }
    ID.store(0, Ordering::SeqCst);
    PARK_NOW.store(false, Ordering::SeqCst);
    RESUMED.store(false, Ordering::SeqCst);
    let scheduler = crate::threads::scheduler();
    let last = scheduler.cpu_count() - 1;
    let give_up = time::now() + Duration::from_secs(5);
    let owner = scheduler.spawn(
        keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(last)),
        move || {
            let scheduler = crate::threads::scheduler();
            ID.store(
                scheduler.current_id().map_or(0, |id| id.get()),
                Ordering::SeqCst,
            );
            while !PARK_NOW.load(Ordering::SeqCst) && time::now() < give_up {
                core::hint::spin_loop();
            }
            while !RESUMED.load(Ordering::SeqCst) && time::now() < give_up {
                scheduler.park();
            }
        },
    );
    check!(owner.is_ok(), "spawn failed");
    let Ok(owner) = owner else { return Ok(()) };
    while ID.load(Ordering::SeqCst) == 0 && time::now() < give_up {
        scheduler.sleep(Duration::from_millis(1));
    }
    let id = ThreadId::from_u64(ID.load(Ordering::SeqCst));
    check!(id.is_some(), "the owner thread never ran");
    let Some(id) = id else { return Ok(()) };
    let cpu_hint = last as u32;
    let running = crate::threads::KernelParker::owner_is_running(id, cpu_hint);
    let wrong_cpu = crate::threads::KernelParker::owner_is_running(id, 0);
    let nonexistent_cpu = crate::threads::KernelParker::owner_is_running(id, u32::MAX);
    PARK_NOW.store(true, Ordering::SeqCst);
    let mut parked_seen = false;
    while time::now() < give_up {
        if !crate::threads::KernelParker::owner_is_running(id, cpu_hint) {
            parked_seen = true;
            break;
        }
        scheduler.sleep(Duration::from_millis(1));
    }
    RESUMED.store(true, Ordering::SeqCst);
    scheduler.unpark(owner.thread());
    scheduler.join(owner);
    check!(running, "a spinning thread was not seen running on its CPU");
    check!(
        !wrong_cpu,
        "a thread was seen running on a CPU it is not on"
    );
    check!(
        !nonexistent_cpu,
        "a thread was seen running on a CPU that does not exist"
    );
    check!(parked_seen, "a parked thread was still seen running");
    let preempted: alloc::vec::Vec<usize> = (0..scheduler.cpu_count())
        .filter(|&cpu| keel_arch_x86_64::steal_time::is_preempted(cpu))
        .collect();
    check!(
        keel_arch_x86_64::steal_time::offered() || preempted.is_empty(),
        "a CPU reported preemption without KVM steal time",
        preempted
    );
    Ok(())
}
ktest!(owner_is_running_follows_the_owner);

/// The lock-free mutex's "which thread am I" (`KernelParker::current_id`, one
/// gs-relative load of the per-CPU record, without an interrupt mask) names the
/// calling thread at every moment: more threads than CPUs spin, yield and are
/// sleep, are preempted by the timer and moved by the balancer, and each compares the
/// answer with its own id, taken from the scheduler at its start, over and over. A
/// thread that read another thread's id would take that thread's mutex as its own.
fn mutex_thread_id_is_the_callers_across_switches(_: &ArchInfo) -> TestResult {
    use keel_lfmutex::Parker;
    const MIN_CHECKS: u64 = 64 * 1024;
    let scheduler = crate::threads::scheduler();
    let threads = 2 * scheduler.cpu_count() + 1;
    let start = time::now();
    let mut handles = alloc::vec::Vec::new();
    for index in 0..threads {
        // Half the threads stop early, unevenly across CPUs, so the balancer has
        // reason to move the rest; short sleeps give it wake-ups to move.
        let until = start + Duration::from_millis(if index % 2 == 0 { 150 } else { 50 });
        let spawned = scheduler.spawn(keel_sched::SpawnOptions::new(), move || {
            let scheduler = crate::threads::scheduler();
            let own = scheduler.current_id().map_or(0, keel_sched::ThreadId::get);
            let (mut checks, mut wrong, mut cpu_changes) = (0u64, 0u64, 0u64);
            let mut last_cpu = keel_arch_x86_64::percpu::current_index();
            // Until the deadline, and at least 64 Ki checks (64 yields, 8 sleeps) for
            // a thread that starts late on a crowded machine.
            while time::now() < until || checks < MIN_CHECKS {
                for _ in 0..64 {
                    if crate::threads::KernelParker::current_id().get() != own {
                        wrong += 1;
                    }
                    checks += 1;
                    black_box(checks);
                }
                if checks % (8 * 1024) == 0 {
                    scheduler.sleep(Duration::from_micros(200));
                } else if checks % 1024 == 0 {
                    scheduler.yield_now();
                }
                let cpu = keel_arch_x86_64::percpu::current_index();
                if cpu != last_cpu {
                    cpu_changes += 1;
                    last_cpu = cpu;
                }
            }
            (own, checks, wrong, cpu_changes)
        });
        check!(spawned.is_ok(), "spawn failed");
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    let (mut moved, mut total_checks) = (0, 0);
    for handle in handles {
        let result = scheduler.join(handle);
        check!(result.is_some(), "a checking thread did not return");
        let Some((own, checks, wrong, cpu_changes)) = result else {
            continue;
        };
        check!(own != 0, "a thread had no scheduler id");
        check!(
            wrong == 0,
            "the mutex's thread id named another thread",
            own,
            wrong,
            checks
        );
        moved += cpu_changes;
        total_checks += checks;
    }
    kprintln!("ktest:   {threads} threads, {total_checks} checks; {moved} moves between CPUs seen");
    Ok(())
}
ktest!(mutex_thread_id_is_the_callers_across_switches);
