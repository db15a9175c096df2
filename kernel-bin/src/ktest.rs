//! The in-guest test suite (`--features ktest`), run by `cargo xtask test`.
//!
//! Each case returns `Ok(())` or a [`Failure`] carrying the failed check's message and
//! location. The runner prints one line per case and closes with `N passed, N failed`,
//! then leaves QEMU through `isa-debug-exit` with success only when nothing failed.
//! `ktest.crash=NAME` on the command line runs one deliberate crash instead
//! ([`crash`]); the host checks that it is reported with symbols and a failure status.
//! `ktest.only=TEXT` runs only the cases whose names contain TEXT (for iterating by hand;
//! `cargo xtask test` never passes it).

use crate::memory;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, Ordering};
use keel_arch_x86_64::cpu::{self, ExitCode};
use keel_arch_x86_64::interrupts::{self, TrapFrame};
use keel_arch_x86_64::{ArchInfo, apic, backtrace, gdt, kprintln, paging, time};
use x86_64::structures::paging::PageTableFlags;

/// A failed check.
#[derive(Debug)]
pub struct Failure {
    message: &'static str,
    file: &'static str,
    line: u32,
}

type TestResult = Result<(), Failure>;
type TestCase = fn(&ArchInfo) -> TestResult;

/// Fails the current case with `message` unless `condition` holds; prints the values.
macro_rules! check {
    ($condition:expr, $message:literal $(, $value:expr)* $(,)?) => {
        let holds: bool = $condition;
        if !holds {
            kprintln!(concat!("    check failed: ", stringify!($condition)));
            $( kprintln!("      {} = {:?}", stringify!($value), $value); )*
            return Err(Failure { message: $message, file: file!(), line: line!() });
        }
    };
}

mod arch_cases;
mod liveness;
mod shootdown_cases;
mod smp_crash_cases;
mod thread_cases;

const CASES: &[(&str, TestCase)] = &[
    ("boot_info_has_memory_map", boot_info_has_memory_map),
    ("kernel_text_is_read_execute", kernel_text_is_read_execute),
    (
        "kernel_rodata_is_read_only_no_execute",
        kernel_rodata_is_read_only_no_execute,
    ),
    ("kernel_data_is_no_execute", kernel_data_is_no_execute),
    (
        "null_page_and_stack_guards_unmapped",
        null_page_and_stack_guards_unmapped,
    ),
    ("ram_is_mapped_no_execute", ram_is_mapped_no_execute),
    ("symbol_table_names_functions", symbol_table_names_functions),
    (
        "breakpoint_is_handled_and_resumed",
        breakpoint_is_handled_and_resumed,
    ),
    (
        "interrupt_preserves_sse_registers",
        interrupt_preserves_sse_registers,
    ),
    ("floating_point_works", floating_point_works),
    ("avx_enabled_when_cpu_has_it", avx_enabled_when_cpu_has_it),
    (
        "avx_registers_survive_preemption",
        arch_cases::avx_registers_survive_preemption,
    ),
    (
        "every_cpu_runs_with_caches_enabled",
        arch_cases::every_cpu_runs_with_caches_enabled,
    ),
    (
        "every_idt_vector_is_present_on_an_ist_stack",
        arch_cases::every_idt_vector_is_present_on_an_ist_stack,
    ),
    (
        "unexpected_interrupt_is_counted_and_logged",
        arch_cases::unexpected_interrupt_is_counted_and_logged,
    ),
    (
        "flags_of_calls_guard_pages_unmapped",
        arch_cases::flags_of_calls_guard_pages_unmapped,
    ),
    (
        "every_stack_guard_is_recognised",
        arch_cases::every_stack_guard_is_recognised,
    ),
    (
        "remapped_page_is_seen_by_every_other_cpu",
        shootdown_cases::remapped_page_is_seen_by_every_other_cpu,
    ),
    (
        "remap_inside_a_huge_page_is_seen_by_other_cpus",
        shootdown_cases::remap_inside_a_huge_page_is_seen_by_other_cpus,
    ),
    (
        "concurrent_shootdowns_from_every_cpu_complete",
        shootdown_cases::concurrent_shootdowns_from_every_cpu_complete,
    ),
    (
        "shootdown_round_cost",
        shootdown_cases::shootdown_round_cost,
    ),
    ("tsc_calibrated_and_monotonic", tsc_calibrated_and_monotonic),
    (
        "apic_oneshot_timer_fires_after_deadline",
        apic_oneshot_timer_fires_after_deadline,
    ),
    (
        "apic_timer_cancel_prevents_interrupt",
        apic_timer_cancel_prevents_interrupt,
    ),
    (
        "pages_are_distinct_and_writable",
        pages_are_distinct_and_writable,
    ),
    ("page_double_free_is_refused", page_double_free_is_refused),
    ("contiguous_page_runs", contiguous_page_runs),
    ("heap_collections_work", heap_collections_work),
    (
        "heap_large_and_aligned_allocations",
        heap_large_and_aligned_allocations,
    ),
    ("acpi_lists_the_cpus", acpi_lists_the_cpus),
    (
        "threads_spawn_and_join",
        thread_cases::threads_spawn_and_join,
    ),
    (
        "timer_preempts_busy_threads",
        thread_cases::timer_preempts_busy_threads,
    ),
    (
        "sleepers_never_wake_early",
        thread_cases::sleepers_never_wake_early,
    ),
    (
        "lfmutex_counts_exactly_on_keel_threads",
        thread_cases::lfmutex_counts_exactly_on_keel_threads,
    ),
    (
        "condvar_ping_pong_on_keel_threads",
        thread_cases::condvar_ping_pong_on_keel_threads,
    ),
    (
        "every_cpu_runs_its_pinned_threads",
        thread_cases::every_cpu_runs_its_pinned_threads,
    ),
    (
        "many_cpus_wake_one_thread_without_loss",
        thread_cases::many_cpus_wake_one_thread_without_loss,
    ),
    (
        "cross_cpu_park_unpark_loses_no_wakeup",
        thread_cases::cross_cpu_park_unpark_loses_no_wakeup,
    ),
    (
        "thread_local_storage_through_fs",
        thread_cases::thread_local_storage_through_fs,
    ),
    (
        "float_state_survives_preemption",
        thread_cases::float_state_survives_preemption,
    ),
    (
        "thousands_of_threads_count_exactly",
        thread_cases::thousands_of_threads_count_exactly,
    ),
    (
        "balancer_moves_threads_off_a_busy_cpu",
        thread_cases::balancer_moves_threads_off_a_busy_cpu,
    ),
    (
        "tickless_idle_takes_no_timer_ticks",
        thread_cases::tickless_idle_takes_no_timer_ticks,
    ),
    (
        "unparked_from_another_cpu_runs_while_its_cpu_spins",
        liveness::unparked_from_another_cpu_runs_while_its_cpu_spins,
    ),
    (
        "unparked_by_the_spinner_runs_while_it_spins",
        liveness::unparked_by_the_spinner_runs_while_it_spins,
    ),
    (
        "spawned_by_the_spinner_runs_while_it_spins",
        liveness::spawned_by_the_spinner_runs_while_it_spins,
    ),
    (
        "spawned_from_another_cpu_runs_while_its_cpu_spins",
        liveness::spawned_from_another_cpu_runs_while_its_cpu_spins,
    ),
    (
        "sleeper_runs_when_its_timer_fires_while_its_cpu_spins",
        liveness::sleeper_runs_when_its_timer_fires_while_its_cpu_spins,
    ),
    (
        "moved_by_the_balancer_runs_while_its_new_cpu_spins",
        liveness::moved_by_the_balancer_runs_while_its_new_cpu_spins,
    ),
];

/// Runs a crash named on the command line that needs no scheduler, on the boot stack.
pub fn run_early_crash(info: &ArchInfo) {
    if let Some(name) = info.boot.command_line_value("ktest.crash")
        && name != "thread-stack-overflow"
        && name != "thread-guard-rbp"
        && name != "thread-guard-in-entry-stub"
        && name != "guard-set-on-another-cpu"
        && name != "two-cpus-crash-at-once"
        && name != "two-cpus-fault-at-once"
        && name != "ap-early-fault"
    {
        crash::run(name);
    }
}

/// Runs the suite (or the crash named on the command line) and exits the VM.
pub fn run(info: &'static ArchInfo) -> ! {
    if let Some(name) = info.boot.command_line_value("ktest.crash") {
        crash::run(name);
    }
    let (mut passed, mut failed) = (0u32, 0u32);
    // `ktest.only=TEXT` runs only the cases whose name contains TEXT (while iterating).
    let only = info.boot.command_line_value("ktest.only");
    for (name, case) in CASES {
        if only.is_some_and(|text| !name.contains(text)) {
            continue;
        }
        let start = time::monotonic_nanos();
        match case(info) {
            Ok(()) => {
                passed += 1;
                kprintln!(
                    "test {name} ... ok ({} us)",
                    (time::monotonic_nanos() - start) / 1000
                );
            }
            Err(failure) => {
                failed += 1;
                kprintln!(
                    "test {name} ... FAILED: {} at {}:{}",
                    failure.message,
                    failure.file,
                    failure.line
                );
            }
        }
    }
    kprintln!("{passed} passed, {failed} failed");
    cpu::exit(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Whether a cross-CPU case can run on this boot; prints why not otherwise (the case
/// then passes with nothing to check).
fn has_two_cpus() -> bool {
    let cpus = crate::threads::scheduler().cpu_count();
    if cpus < 2 {
        kprintln!("    not run: needs a second CPU (this boot has {cpus})");
    }
    cpus >= 2
}

fn boot_info_has_memory_map(info: &ArchInfo) -> TestResult {
    let usable = info.boot.usable_memory();
    check!(usable >= 64 << 20, "less than 64 MiB of usable RAM", usable);
    check!(
        info.boot.memory_regions().iter().all(|r| r.size > 0),
        "empty memory-map region kept"
    );
    check!(info.boot.version >= 1, "start info without memory map");
    Ok(())
}

fn kernel_text_is_read_execute(_: &ArchInfo) -> TestResult {
    let address = kernel_text_is_read_execute as *const () as u64;
    let flags = paging::flags_of(address);
    check!(flags.is_some(), "kernel text unmapped", address);
    let flags = flags.unwrap_or(PageTableFlags::empty());
    check!(
        !flags.contains(PageTableFlags::WRITABLE),
        "text is writable",
        flags
    );
    check!(
        !flags.contains(PageTableFlags::NO_EXECUTE),
        "text is not executable",
        flags
    );
    Ok(())
}

static RODATA_PROBE: u64 = 0x6b65_656c;

fn kernel_rodata_is_read_only_no_execute(_: &ArchInfo) -> TestResult {
    let address = &RODATA_PROBE as *const u64 as u64;
    let flags = paging::flags_of(address).unwrap_or(PageTableFlags::empty());
    check!(
        flags.contains(PageTableFlags::PRESENT),
        "rodata unmapped",
        flags
    );
    check!(
        !flags.contains(PageTableFlags::WRITABLE),
        "rodata is writable",
        flags
    );
    check!(
        flags.contains(PageTableFlags::NO_EXECUTE),
        "rodata is executable",
        flags
    );
    check!(black_box(RODATA_PROBE) == 0x6b65_656c, "rodata value wrong");
    Ok(())
}

static DATA_PROBE: AtomicBool = AtomicBool::new(false);

fn kernel_data_is_no_execute(_: &ArchInfo) -> TestResult {
    DATA_PROBE.store(true, Ordering::Relaxed);
    let address = &DATA_PROBE as *const AtomicBool as u64;
    let flags = paging::flags_of(address).unwrap_or(PageTableFlags::empty());
    check!(
        flags.contains(PageTableFlags::WRITABLE),
        "data not writable",
        flags
    );
    check!(
        flags.contains(PageTableFlags::NO_EXECUTE),
        "data is executable",
        flags
    );
    let stack_variable = 0u64;
    let flags =
        paging::flags_of(&stack_variable as *const u64 as u64).unwrap_or(PageTableFlags::empty());
    check!(
        flags.contains(PageTableFlags::NO_EXECUTE),
        "stack is executable",
        flags
    );
    Ok(())
}

fn null_page_and_stack_guards_unmapped(_: &ArchInfo) -> TestResult {
    check!(paging::flags_of(0).is_none(), "page 0 is mapped");
    let boot_guard = (&raw const keel_arch_x86_64::boot::keel_boot_stack_guard) as u64;
    check!(
        paging::flags_of(boot_guard).is_none(),
        "boot stack guard mapped",
        boot_guard
    );
    check!(
        paging::flags_of(boot_guard + 4096).is_some(),
        "boot stack bottom unmapped"
    );
    for guard in gdt::ist_guard_pages() {
        check!(paging::flags_of(guard).is_none(), "IST guard mapped", guard);
        check!(
            paging::flags_of(guard + 4096).is_some(),
            "IST stack unmapped",
            guard
        );
    }
    Ok(())
}

fn ram_is_mapped_no_execute(info: &ArchInfo) -> TestResult {
    let table_start = info.paging.table_region_start;
    for region in info
        .boot
        .memory_regions()
        .iter()
        .filter(|r| r.kind.is_memory())
    {
        for address in [region.start.max(4096), region.end() - 1] {
            if address >= info.layout.start && address < info.layout.end {
                continue;
            }
            let flags = paging::flags_of(address).unwrap_or(PageTableFlags::empty());
            check!(
                flags.contains(PageTableFlags::PRESENT),
                "RAM unmapped",
                address
            );
            check!(
                flags.contains(PageTableFlags::NO_EXECUTE),
                "RAM executable",
                address
            );
        }
    }
    check!(
        paging::flags_of(table_start).is_some(),
        "page tables unmapped"
    );
    Ok(())
}

fn symbol_table_names_functions(_: &ArchInfo) -> TestResult {
    let table = backtrace::symbol_table();
    check!(
        table.is_ok(),
        "no symbol table (built without cargo xtask?)"
    );
    let Ok(table) = table else { return Ok(()) };
    check!(table.len() > 100, "too few symbols", table.len());
    let address = symbol_table_names_functions as *const () as u64;
    let found = table.lookup(address + 1).map(|symbol| symbol.name);
    check!(
        found == Some("keel_kernel::ktest::symbol_table_names_functions"),
        "lookup returned the wrong name",
        found
    );
    Ok(())
}

fn breakpoint_is_handled_and_resumed(_: &ArchInfo) -> TestResult {
    let before = interrupts::breakpoint_count();
    // SAFETY: int3 traps into the kernel's breakpoint handler, which counts and resumes.
    unsafe { core::arch::asm!("int3") };
    // SAFETY: as above.
    unsafe { core::arch::asm!("int3") };
    let after = interrupts::breakpoint_count();
    check!(
        after == before + 2,
        "breakpoints not counted",
        before,
        after
    );
    Ok(())
}

fn interrupt_preserves_sse_registers(_: &ArchInfo) -> TestResult {
    let pattern: u64 = 0x0123_4567_89ab_cdef;
    let result: u64;
    // SAFETY: loads xmm7, traps through the breakpoint handler (which runs Rust code that
    // may use SSE registers), and reads xmm7 back; xmm7 is declared clobbered.
    unsafe {
        core::arch::asm!(
            "movq xmm7, {pattern}",
            "int3",
            "movq {result}, xmm7",
            pattern = in(reg) pattern,
            result = out(reg) result,
            out("xmm7") _,
        );
    }
    check!(result == pattern, "xmm7 changed across a trap", result);
    Ok(())
}

fn floating_point_works(_: &ArchInfo) -> TestResult {
    let x = black_box(2.0f64);
    let root = libm_free_sqrt(x);
    check!((root * root - 2.0).abs() < 1e-12, "sqrt(2)^2 != 2", root);
    let sum: f32 = (1..=100).map(|value| black_box(value as f32)).sum();
    check!(sum == 5050.0, "f32 sum wrong", sum);
    Ok(())
}

/// Newton's method; avoids depending on a libm for one test.
fn libm_free_sqrt(value: f64) -> f64 {
    let mut estimate = value;
    for _ in 0..60 {
        estimate = 0.5 * (estimate + value / estimate);
    }
    estimate
}

fn avx_enabled_when_cpu_has_it(info: &ArchInfo) -> TestResult {
    let cpu_has_avx = raw_cpuid_has_avx();
    check!(
        info.extended_state.avx == cpu_has_avx,
        "AVX state not enabled",
        cpu_has_avx
    );
    if cpu_has_avx {
        let xcr0 = x86_64::registers::xcontrol::XCr0::read_raw();
        check!(xcr0 & 0b111 == 0b111, "XCR0 lacks x87/SSE/AVX", xcr0);
    }
    Ok(())
}

fn raw_cpuid_has_avx() -> bool {
    let leaf = core::arch::x86_64::__cpuid(1);
    leaf.ecx & (1 << 28) != 0 && leaf.ecx & (1 << 26) != 0
}

fn tsc_calibrated_and_monotonic(info: &ArchInfo) -> TestResult {
    let hertz = time::tsc_hertz();
    check!(
        (100_000_000..=20_000_000_000).contains(&hertz),
        "TSC frequency implausible",
        hertz
    );
    check!(hertz == info.tsc.hertz, "frequency changed");
    check!(
        info.tsc.source != time::TscSource::Guess,
        "TSC frequency guessed: no PIT or CPUID source worked",
        info.tsc.pit_samples
    );
    let mut previous = time::monotonic_nanos();
    for _ in 0..10_000 {
        let now = time::monotonic_nanos();
        check!(now >= previous, "clock went backwards", previous, now);
        previous = now;
    }
    let start = time::monotonic_nanos();
    time::busy_wait_nanos(1_000_000);
    let waited = time::monotonic_nanos() - start;
    check!(waited >= 1_000_000, "busy wait returned early", waited);
    Ok(())
}

static TIMER_FIRED: AtomicBool = AtomicBool::new(false);
static TIMER_FIRED_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn on_timer(_: &mut TrapFrame) {
    TIMER_FIRED_TSC.store(time::read_tsc(), Ordering::Relaxed);
    TIMER_FIRED.store(true, Ordering::Release);
}

/// Waits with interrupts enabled until the timer fired or `limit_nanos` passed.
fn wait_for_timer(limit_nanos: u64) -> bool {
    let end = time::read_tsc() + time::nanos_to_ticks(limit_nanos);
    while time::read_tsc() < end {
        if TIMER_FIRED.load(Ordering::Acquire) {
            return true;
        }
        // sti; hlt would sleep until the interrupt; enable_and_hlt does it atomically.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
    TIMER_FIRED.load(Ordering::Acquire)
}

/// Runs `body` with the test's own timer handler, interrupts masked outside the waits,
/// then gives the timer back to the scheduler.
fn with_test_timer(body: impl FnOnce() -> TestResult) -> TestResult {
    let scheduler_handler = interrupts::interrupt_handler(apic::TIMER_VECTOR);
    let were_enabled = x86_64::instructions::interrupts::are_enabled();
    x86_64::instructions::interrupts::disable();
    interrupts::set_interrupt_handler(apic::TIMER_VECTOR, on_timer);
    let result = body();
    if let Some(handler) = scheduler_handler {
        interrupts::set_interrupt_handler(apic::TIMER_VECTOR, handler);
    }
    if were_enabled {
        x86_64::instructions::interrupts::enable();
    }
    result
}

fn apic_oneshot_timer_fires_after_deadline(info: &ArchInfo) -> TestResult {
    check!(info.apic.timer_hertz > 0, "APIC timer not calibrated");
    with_test_timer(oneshot_deadlines)
}

fn oneshot_deadlines() -> TestResult {
    for deadline_micros in [2_000u64, 5_000, 20_000] {
        TIMER_FIRED.store(false, Ordering::Relaxed);
        let start = time::read_tsc();
        apic::arm_oneshot(deadline_micros * 1000);
        let fired = wait_for_timer(2_000_000_000);
        check!(fired, "one-shot timer never fired", deadline_micros);
        let elapsed_micros =
            time::ticks_to_nanos(TIMER_FIRED_TSC.load(Ordering::Relaxed) - start) / 1000;
        // The APIC and TSC are calibrated against each other; allow 5% calibration error.
        check!(
            elapsed_micros * 100 >= deadline_micros * 95,
            "timer fired before its deadline",
            deadline_micros,
            elapsed_micros
        );
        kprintln!("    one-shot {deadline_micros} us fired after {elapsed_micros} us");
    }
    Ok(())
}

fn apic_timer_cancel_prevents_interrupt(_: &ArchInfo) -> TestResult {
    with_test_timer(cancelled_timer_stays_quiet)
}

fn cancelled_timer_stays_quiet() -> TestResult {
    TIMER_FIRED.store(false, Ordering::Relaxed);
    apic::arm_oneshot(3_000_000);
    apic::cancel_timer();
    x86_64::instructions::interrupts::enable();
    time::busy_wait_nanos(10_000_000);
    x86_64::instructions::interrupts::disable();
    check!(
        !TIMER_FIRED.load(Ordering::Acquire),
        "cancelled timer fired"
    );
    Ok(())
}

/// Deliberate crashes: each must end in a report with symbols and a failure status.
pub mod crash {
    use core::hint::black_box;
    use keel_arch_x86_64::cpu::{self, ExitCode};
    use keel_arch_x86_64::kprintln;

    /// Runs the crash named `name`; returns only for an unknown name (which fails too).
    pub fn run(name: &str) -> ! {
        kprintln!("ktest: deliberate crash {name:?}");
        match name {
            "null-read" => null_read(),
            "stack-overflow" => {
                black_box(recurse(0));
            }
            "write-rodata" => write_rodata(),
            "execute-data" => execute_data(),
            "invalid-opcode" => invalid_opcode(),
            "panic" => deliberate_panic(),
            "thread-stack-overflow" => {
                let scheduler = crate::threads::scheduler();
                let options = keel_sched::SpawnOptions::new().stack_size(16 * 1024);
                if let Ok(handle) = scheduler.spawn(options, || black_box(recurse(0))) {
                    scheduler.join(handle);
                }
            }
            "thread-guard-rbp" => super::arch_cases::crash_with_rbp_in_thread_guard(),
            "thread-guard-in-entry-stub" => {
                super::arch_cases::crash_in_entry_stub_on_thread_guard()
            }
            "guard-set-on-another-cpu" => {
                super::shootdown_cases::crash_reading_guard_set_on_another_cpu()
            }
            "two-cpus-crash-at-once" => super::smp_crash_cases::crash_on_two_cpus_at_once(true),
            "two-cpus-fault-at-once" => super::smp_crash_cases::crash_on_two_cpus_at_once(false),
            // Crashes (or not) in `smp::start_application_processors`, before this runs.
            "ap-early-fault" => kprintln!("ktest: an AP started on an unmapped stack"),
            _ => kprintln!("ktest: unknown crash {name:?}"),
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

    static DATA_WITH_CODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0xc3);

    #[inline(never)]
    fn execute_data() {
        let address = &DATA_WITH_CODE as *const _ as u64;
        // SAFETY: deliberately not safe: calls into a no-execute data page (holding a
        // `ret`) to check that the fault is reported.
        unsafe { core::arch::asm!("call {}", in(reg) address, clobber_abi("C")) };
    }

    #[inline(never)]
    fn invalid_opcode() {
        // SAFETY: ud2 raises #UD, which the kernel reports; it never returns.
        unsafe { core::arch::asm!("ud2") };
    }

    #[inline(never)]
    fn deliberate_panic() {
        panic!("deliberate panic for the crash test");
    }
}

fn pages_are_distinct_and_writable(_: &ArchInfo) -> TestResult {
    // Pages the heap holds (for this test's vectors) count as not free; add them back.
    let free_pages = || memory::free_page_count() + memory::heap_stats().pages_held as u64;
    let free_before = free_pages();
    let mut frames = alloc::vec::Vec::new();
    for index in 0..300u64 {
        let frame = memory::alloc_page();
        check!(frame.is_some(), "page allocation failed", index);
        let frame = frame.unwrap_or(keel_pagealloc::PageFrameNumber::new(0));
        let address = frame.as_u64() * 4096;
        // SAFETY: the page was just allocated to us, is RAM, and is identity-mapped.
        unsafe {
            core::ptr::write_bytes(address as *mut u8, 0, 4096);
            (address as *mut u64).write(frame.as_u64());
        }
        frames.push(frame);
    }
    let mut sorted = frames.clone();
    sorted.sort();
    sorted.dedup();
    check!(sorted.len() == frames.len(), "a page was handed out twice");
    for frame in &frames {
        // SAFETY: still ours, as above.
        let stored = unsafe { ((frame.as_u64() * 4096) as *const u64).read() };
        check!(
            stored == frame.as_u64(),
            "page contents overwritten",
            frame,
            stored
        );
    }
    for frame in frames {
        check!(
            memory::free_page(frame).is_ok(),
            "freeing a page failed",
            frame
        );
    }
    let free_after = free_pages();
    check!(
        free_after == free_before,
        "free page count not restored",
        free_before,
        free_after
    );
    Ok(())
}

fn page_double_free_is_refused(_: &ArchInfo) -> TestResult {
    let range = memory::alloc_pages(4);
    check!(range.is_ok(), "allocating 4 pages failed");
    let Ok(range) = range else { return Ok(()) };
    check!(memory::free_pages(range).is_ok(), "first free failed");
    let second = memory::free_pages(range);
    check!(second.is_err(), "double free accepted", second);
    Ok(())
}

fn contiguous_page_runs(_: &ArchInfo) -> TestResult {
    for count in [1u64, 3, 16, 512, 4096] {
        let range = memory::alloc_pages(count);
        check!(range.is_ok(), "run allocation failed", count);
        let Ok(range) = range else { return Ok(()) };
        check!(range.count == count, "wrong run length", count, range.count);
        let start = range.start.as_u64() * 4096;
        let end = start + count * 4096;
        // SAFETY: the run is ours, RAM, identity-mapped read-write.
        unsafe {
            (start as *mut u8).write(0xa5);
            ((end - 1) as *mut u8).write(0x5a);
        }
        check!(memory::free_pages(range).is_ok(), "run free failed", count);
    }
    Ok(())
}

fn heap_collections_work(_: &ArchInfo) -> TestResult {
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    let before = memory::heap_stats();
    {
        let numbers: alloc::vec::Vec<u64> = (0..200_000).collect();
        let sum: u64 = numbers.iter().sum();
        check!(sum == 199_999 * 200_000 / 2, "vector sum wrong", sum);
        let mut map = BTreeMap::new();
        for key in 0..5_000u32 {
            map.insert(
                key.wrapping_mul(2_654_435_761),
                alloc::format!("value {key}"),
            );
        }
        check!(map.len() == 5_000, "map lost entries", map.len());
        let boxed = alloc::boxed::Box::new([7u8; 3000]);
        check!(boxed.iter().all(|&byte| byte == 7), "box contents wrong");
        let mut text = String::new();
        for _ in 0..1000 {
            text.push_str("keel ");
        }
        check!(text.len() == 5000, "string length wrong", text.len());
    }
    let after = memory::heap_stats();
    check!(
        after.live_allocations == before.live_allocations
            && after.bytes_in_use == before.bytes_in_use,
        "heap leaked",
        before,
        after
    );
    Ok(())
}

fn heap_large_and_aligned_allocations(_: &ArchInfo) -> TestResult {
    use core::alloc::Layout;
    for (size, align) in [(4 << 20, 8), (100, 4096), (5000, 65536), (1, 1), (24, 16)] {
        let layout = Layout::from_size_align(size, align);
        check!(layout.is_ok(), "bad layout", size, align);
        let Ok(layout) = layout else { return Ok(()) };
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc::alloc::alloc(layout) };
        check!(!pointer.is_null(), "allocation failed", size, align);
        check!(
            (pointer as usize).is_multiple_of(align),
            "misaligned",
            size,
            align,
            pointer
        );
        // SAFETY: the block is ours for `size` bytes.
        unsafe {
            pointer.write(1);
            pointer.add(size - 1).write(2);
            alloc::alloc::dealloc(pointer, layout);
        }
    }
    Ok(())
}

fn acpi_lists_the_cpus(info: &ArchInfo) -> TestResult {
    let platform = info.platform.as_ref();
    check!(platform.is_ok(), "ACPI MADT unreadable", platform.err());
    let Ok(platform) = platform else {
        return Ok(());
    };
    check!(
        platform.apic_ids().contains(&info.apic.id),
        "boot CPU's APIC id not in the MADT",
        info.apic.id,
        platform.apic_ids()
    );
    // The host passes the -smp count it gave QEMU, so the count is checked, not assumed.
    if let Some(expected) = info.boot.command_line_value("ktest.expect_cpus") {
        let expected: Option<usize> = expected.parse().ok();
        check!(
            expected == Some(platform.cpu_count()),
            "MADT CPU count differs from -smp",
            expected,
            platform.cpu_count()
        );
    }
    Ok(())
}
