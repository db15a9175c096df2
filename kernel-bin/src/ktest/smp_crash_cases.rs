//! Crash cases for crashes on several CPUs (issue 11, item 5): the first CPU to crash
//! owns the console, stops the others and prints its whole report.

use core::sync::atomic::{AtomicU64, Ordering};
use keel_arch_x86_64::{kprintln, time};
use keel_sched::{CpuId, SpawnOptions};

/// Crash cases `two-cpus-crash-at-once` (`cpu1_panics`) and `two-cpus-fault-at-once`
/// (needs two CPUs): a thread pinned on CPU 0 hits `ud2` and one pinned on CPU 1
/// panics (or hits `ud2` too), both released by the same flag. Exactly one report must
/// be printed, whole and not interleaved with the other's (the host checks it line by
/// line).
pub fn crash_on_two_cpus_at_once(cpu1_panics: bool) {
    static ARRIVED: AtomicU64 = AtomicU64::new(0);
    let scheduler = crate::threads::scheduler();
    if scheduler.cpu_count() < 2 {
        kprintln!("ktest: this crash needs two CPUs");
        return;
    }
    let meet = || {
        ARRIVED.fetch_add(1, Ordering::AcqRel);
        // A liveness guard only: both threads arrive within microseconds.
        let end = time::monotonic_nanos() + 20_000_000_000;
        while ARRIVED.load(Ordering::Acquire) < 2 && time::monotonic_nanos() < end {
            core::hint::spin_loop();
        }
    };
    let faulting = scheduler.spawn(SpawnOptions::new().pin(CpuId(0)), move || {
        meet();
        fault_on_cpu0();
    });
    let panicking = scheduler.spawn(SpawnOptions::new().pin(CpuId(1)), move || {
        meet();
        if cpu1_panics {
            panic_on_cpu1();
        } else {
            fault_on_cpu1();
        }
    });
    if let (Ok(faulting), Ok(panicking)) = (faulting, panicking) {
        scheduler.join(faulting);
        scheduler.join(panicking);
    }
}

#[inline(never)]
fn fault_on_cpu0() {
    // SAFETY: ud2 raises #UD, which the kernel reports; it never returns.
    unsafe { core::arch::asm!("ud2") };
}

#[inline(never)]
fn fault_on_cpu1() {
    // SAFETY: as in `fault_on_cpu0`.
    unsafe { core::arch::asm!("ud2") };
}

#[inline(never)]
fn panic_on_cpu1() {
    panic!("deliberate panic on CPU 1 while CPU 0 faults");
}
