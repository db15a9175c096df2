//! Deliberate crashes, run by `ktest.crash=NAME` instead of the suite: each must end in
//! a crash report with symbols and a failure status, which `cargo xtask test` checks
//! (its `CRASH_CASES` hold the expected report lines). Each crash registers with
//! `crash!` beside its function (`guard-set-on-another-cpu` beside the shootdown cases
//! it shares helpers with); the command-line name is the function's with `-` for `_`,
//! and an unknown name lists the valid ones. Crashes on several CPUs at once (issue 11
//! item 5): the first CPU to crash owns the console, stops the others and prints its
//! whole report.

use super::paging::{GUARD_TEST_STACK, guard_page_of_current_thread};
use super::registry;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use keel_arch_x86_64::cpu::{self, ExitCode};
use keel_arch_x86_64::{kprintln, paging, time};
use keel_sched::{CpuId, SpawnOptions};

/// Runs the crash named `name`; returns only for an unknown name (which fails too,
/// after listing the valid names).
pub fn run(name: &str) -> ! {
    kprintln!("ktest: deliberate crash {name:?}");
    match keel_ktest::find_crash(registry::crashes(), name) {
        Ok(crash) => (crash.run)(),
        Err(unknown) => kprintln!("ktest: {unknown}"),
    }
    kprintln!("ktest: crash {name:?} did not crash");
    cpu::exit(ExitCode::Failure)
}

#[inline(never)]
fn null_read() {
    let value: u64;
    // SAFETY: deliberately not safe: reads address 0, which is unmapped, to check
    // that the page fault is reported. The kernel never returns from the fault.
    unsafe { core::arch::asm!("mov {}, qword ptr [0]", out(reg) value) };
    black_box(value);
}
crash!(Boot, null_read);

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 512];
    black_box(&mut frame);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(frame[(depth % 512) as usize])
}

static READ_ONLY: u64 = 7;

#[inline(never)]
fn write_rodata() {
    let address = &READ_ONLY as *const u64 as u64;
    // SAFETY: deliberately not safe: writes to read-only data to check that the
    // protection fault is reported. The kernel never returns from the fault.
    unsafe { core::arch::asm!("mov qword ptr [{}], 1", in(reg) address) };
}
crash!(Boot, write_rodata);

static DATA_WITH_CODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0xc3);

#[inline(never)]
fn execute_data() {
    let address = &DATA_WITH_CODE as *const _ as u64;
    // SAFETY: deliberately not safe: calls into a no-execute data page (holding a
    // `ret`) to check that the fault is reported.
    unsafe { core::arch::asm!("call {}", in(reg) address, clobber_abi("C")) };
}
crash!(Boot, execute_data);

#[inline(never)]
fn invalid_opcode() {
    // SAFETY: ud2 raises #UD, which the kernel reports; it never returns.
    unsafe { core::arch::asm!("ud2") };
}
crash!(Boot, invalid_opcode);

#[inline(never)]
fn deliberate_panic() {
    panic!("deliberate panic for the crash test");
}

/// Crash case `stack-overflow`: unbounded recursion on the boot stack into its guard.
fn stack_overflow() {
    black_box(recurse(0));
}
crash!(Boot, stack_overflow);

/// Crash case `panic`.
fn panic() {
    deliberate_panic();
}
crash!(Boot, panic);

/// Crash case `thread-stack-overflow`: unbounded recursion on a 16 KiB thread stack.
fn thread_stack_overflow() {
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(16 * 1024);
    if let Ok(handle) = scheduler.spawn(options, || black_box(recurse(0))) {
        scheduler.join(handle);
    }
}
crash!(Threads, thread_stack_overflow);

/// Crash case `thread-guard-rbp`: a thread faults (`ud2`) with `rbp` pointing into its
/// own stack's guard page; the report must still print the whole backtrace section
/// (the walker must not read the guard page and fault inside the report).
fn thread_guard_rbp() {
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    if let Ok(handle) = scheduler.spawn(options, fault_with_rbp_in_guard) {
        scheduler.join(handle);
    }
}
crash!(Threads, thread_guard_rbp);

#[inline(never)]
fn fault_with_rbp_in_guard() {
    let inside_guard = guard_page_of_current_thread() + 0x800;
    // SAFETY: deliberately not safe: points rbp into the guard page and raises #UD,
    // which the kernel reports without returning.
    unsafe { core::arch::asm!("mov rbp, {}", "ud2", in(reg) inside_guard.as_u64()) };
}

/// Crash case `thread-guard-in-entry-stub`: a thread's stack pointer is 64 bytes above
/// its guard page when an interrupt arrives; the entry stub, still on its IST stack,
/// writes the frame below the red zone, into the guard. The report must name the guard
/// page although the faulting code's rsp is the IST stack's. (The report's frame 0 is in
/// the stub, `keel_isr_stubs+...`; this function is not a return address anywhere.)
fn thread_guard_in_entry_stub() {
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    if let Ok(handle) = scheduler.spawn(options, interrupt_just_above_guard) {
        scheduler.join(handle);
    }
}
crash!(Threads, thread_guard_in_entry_stub);

#[inline(never)]
fn interrupt_just_above_guard() {
    let low = guard_page_of_current_thread() + paging::PAGE_SIZE + 64;
    // SAFETY: deliberately not safe: moves rsp to the bottom of the thread's stack and
    // raises an interrupt, whose frame cannot fit above the guard page; the kernel
    // reports the page fault and never returns here.
    unsafe { core::arch::asm!("mov rsp, {}", "int 0x9e", "ud2", in(reg) low.as_u64()) };
}

/// Crash cases `two-cpus-crash-at-once` (`cpu1_panics`) and `two-cpus-fault-at-once`
/// (needs two CPUs): a thread pinned on CPU 0 hits `ud2` and one pinned on CPU 1
/// panics (or hits `ud2` too), both released by the same flag. Exactly one report must
/// be printed, whole and not interleaved with the other's (the host checks it line by
/// line).
fn crash_on_two_cpus_at_once(cpu1_panics: bool) {
    static ARRIVED: AtomicU64 = AtomicU64::new(0);
    let scheduler = crate::threads::scheduler();
    if scheduler.cpu_count() < 2 {
        kprintln!("ktest: this crash needs two CPUs");
        return;
    }
    let meet = || {
        ARRIVED.fetch_add(1, Ordering::AcqRel);
        // A liveness guard only: both threads arrive within microseconds.
        let end = time::now() + Duration::from_secs(20);
        while ARRIVED.load(Ordering::Acquire) < 2 && time::now() < end {
            core::hint::spin_loop();
        }
    };
    let faulting = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
        meet();
        fault_on_cpu0();
    });
    let panicking = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(1)), move || {
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

/// Crash case `two-cpus-crash-at-once`: CPU 0 faults while CPU 1 panics.
fn two_cpus_crash_at_once() {
    crash_on_two_cpus_at_once(true);
}
crash!(Threads, two_cpus_crash_at_once);

/// Crash case `two-cpus-fault-at-once`: both CPUs fault.
fn two_cpus_fault_at_once() {
    crash_on_two_cpus_at_once(false);
}
crash!(Threads, two_cpus_fault_at_once);

/// Crash case `ap-early-fault`: crashes (or not) in `smp::start_application_processors`
/// (which reads `ktest.crash` itself), before this runs; reaching this is the failure.
fn ap_early_fault() {
    kprintln!("ktest: an AP started on an unmapped stack");
}
crash!(Threads, ap_early_fault);
