//! In-guest cases for the architecture layer's fixes of issue 11: extended state across
//! preemption, AP caches, the IDT's present bits, unexpected-interrupt logging and
//! `paging::flags_of` on guard pages.

use super::{Failure, TestResult};
use core::sync::atomic::{AtomicU64, Ordering};
use keel_arch_x86_64::{ArchInfo, interrupts, kprintln, paging, percpu, time};
use keel_sched::{CpuId, SpawnOptions};

/// Words of the 16 YMM registers (4 quadwords each).
const YMM_WORDS: usize = 16 * 4;

/// What one thread of [`avx_registers_survive_preemption`] saw.
#[derive(Debug, Clone, Copy, Default)]
struct AvxReport {
    rounds: u64,
    mismatched_words: u64,
    /// Rounds that began after another thread had run since this one's last round.
    interleavings: u64,
}

/// Loads ymm0..ymm15 from `pattern`, spins `spins` times (long enough for the timer to
/// preempt the thread in the middle), and stores the registers into `out`.
fn fill_spin_read_ymm(pattern: &[u64; YMM_WORDS], out: &mut [u64; YMM_WORDS], spins: u64) {
    // SAFETY: only called when CPUID reports AVX and the kernel enabled it in XCR0
    // (checked by the caller), so the VEX instructions are valid; `pattern` and `out` are
    // 512 bytes each (16 × 32), as the offsets require; unaligned loads/stores
    // (vmovdqu) need no alignment; every vector register is declared clobbered (the xmm
    // names cover the whole registers: the kernel is compiled without AVX, so the
    // compiler keeps nothing in the upper halves); the spin only counts down a register.
    unsafe {
        core::arch::asm!(
            "vmovdqu ymm0, [{p}]",
            "vmovdqu ymm1, [{p} + 32]",
            "vmovdqu ymm2, [{p} + 64]",
            "vmovdqu ymm3, [{p} + 96]",
            "vmovdqu ymm4, [{p} + 128]",
            "vmovdqu ymm5, [{p} + 160]",
            "vmovdqu ymm6, [{p} + 192]",
            "vmovdqu ymm7, [{p} + 224]",
            "vmovdqu ymm8, [{p} + 256]",
            "vmovdqu ymm9, [{p} + 288]",
            "vmovdqu ymm10, [{p} + 320]",
            "vmovdqu ymm11, [{p} + 352]",
            "vmovdqu ymm12, [{p} + 384]",
            "vmovdqu ymm13, [{p} + 416]",
            "vmovdqu ymm14, [{p} + 448]",
            "vmovdqu ymm15, [{p} + 480]",
            "2:",
            "dec {n}",
            "jnz 2b",
            "vmovdqu [{o}], ymm0",
            "vmovdqu [{o} + 32], ymm1",
            "vmovdqu [{o} + 64], ymm2",
            "vmovdqu [{o} + 96], ymm3",
            "vmovdqu [{o} + 128], ymm4",
            "vmovdqu [{o} + 160], ymm5",
            "vmovdqu [{o} + 192], ymm6",
            "vmovdqu [{o} + 224], ymm7",
            "vmovdqu [{o} + 256], ymm8",
            "vmovdqu [{o} + 288], ymm9",
            "vmovdqu [{o} + 320], ymm10",
            "vmovdqu [{o} + 352], ymm11",
            "vmovdqu [{o} + 384], ymm12",
            "vmovdqu [{o} + 416], ymm13",
            "vmovdqu [{o} + 448], ymm14",
            "vmovdqu [{o} + 480], ymm15",
            "vzeroupper",
            p = in(reg) pattern.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            n = inout(reg) spins.max(1) => _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
    }
}

fn cpu_has_avx() -> bool {
    let leaf = core::arch::x86_64::__cpuid(1);
    // XSAVE (26), OSXSAVE (27: the kernel set CR4.OSXSAVE), AVX (28).
    leaf.ecx & (1 << 26) != 0 && leaf.ecx & (1 << 27) != 0 && leaf.ecx & (1 << 28) != 0
}

/// Issue 11 item 1: three threads pinned to CPU 0 keep their own values in all sixteen
/// YMM registers while the timer preempts them in the middle of their spins, with every
/// XSAVE-family save mode this CPU offers (the boot default first). Each thread runs
/// rounds until every thread has seen other threads run between its rounds at least
/// `MIN_INTERLEAVINGS` times (so preemption did happen), with a liveness guard. Then,
/// as a control that the check can see corruption, the same run with FXSAVE (which
/// loses the upper halves) is reported, not asserted.
pub fn avx_registers_survive_preemption(info: &ArchInfo) -> TestResult {
    use keel_arch_x86_64::cpu::{self, StateSave};
    if !(info.extended_state.avx && cpu_has_avx()) {
        kprintln!("    skipped: this CPU has no AVX (QEMU -cpu max under TCG has it)");
        return Ok(());
    }
    let boot_mode = cpu::state_save();
    let mut modes = alloc::vec![boot_mode];
    modes.extend(
        [StateSave::Xsave, StateSave::Xsavec]
            .into_iter()
            .filter(|&mode| mode != boot_mode),
    );
    let mut result = Ok(());
    for mode in modes {
        if !cpu::set_state_save(mode) {
            kprintln!("    {mode:?}: not offered by this CPU");
            continue;
        }
        let (mismatched, reports) = match preempt_avx_threads() {
            Ok(outcome) => outcome,
            Err(failure) => {
                result = Err(failure);
                break;
            }
        };
        kprintln!("    {mode:?}: {mismatched} mismatched words");
        if mismatched != 0 {
            kprintln!("    check failed: mismatched == 0 with {:?}", mode);
            kprintln!("      reports = {:?}", reports);
            result = Err(Failure {
                message: "YMM registers changed across preemption",
                file: file!(),
                line: line!(),
            });
            break;
        }
    }
    if result.is_ok() && cpu::set_state_save(StateSave::Fxsave) {
        let control = preempt_avx_threads();
        cpu::set_state_save(boot_mode);
        if let Ok((mismatched, _)) = control {
            kprintln!("    control, Fxsave: {mismatched} mismatched words (expected > 0)");
        }
    }
    cpu::set_state_save(boot_mode);
    result
}

/// One run of [`avx_registers_survive_preemption`]: the mismatched words over all
/// threads, and each thread's report.
fn preempt_avx_threads() -> Result<(u64, alloc::vec::Vec<AvxReport>), Failure> {
    const THREADS: u64 = 3;
    const MIN_ROUNDS: u64 = 20;
    const MIN_INTERLEAVINGS: u64 = 10;
    const SPINS: u64 = 200_000;
    static LAST_RUNNER: AtomicU64 = AtomicU64::new(u64::MAX);
    static READY: AtomicU64 = AtomicU64::new(0);
    LAST_RUNNER.store(u64::MAX, Ordering::SeqCst);
    READY.store(0, Ordering::SeqCst);
    let timer_before = crate::threads::COUNTERS
        .timer_interrupts
        .load(Ordering::Relaxed);
    let scheduler = crate::threads::scheduler();
    let give_up = time::monotonic_nanos() + 30_000_000_000;
    let mut handles = alloc::vec::Vec::new();
    for thread in 0..THREADS {
        let options = SpawnOptions::new().pin(CpuId(0));
        let spawned = scheduler.spawn(options, move || {
            let mut pattern = [0u64; YMM_WORDS];
            for (index, word) in pattern.iter_mut().enumerate() {
                // Thread, register and word in every quadword, upper halves included.
                *word = 0x5a5a_0000_0000_0000
                    | (thread + 1) << 40
                    | (index as u64 / 4) << 16
                    | (index as u64 % 4) << 8
                    | thread;
            }
            let mut report = AvxReport::default();
            let mut out = [0u64; YMM_WORDS];
            // Every thread keeps going until all have had their share, so none runs
            // alone (where it could not be interleaved with the others).
            let mut ready = false;
            while READY.load(Ordering::SeqCst) < THREADS && time::monotonic_nanos() < give_up {
                if !ready
                    && report.rounds >= MIN_ROUNDS
                    && report.interleavings >= MIN_INTERLEAVINGS
                {
                    ready = true;
                    READY.fetch_add(1, Ordering::SeqCst);
                }
                if LAST_RUNNER.swap(thread, Ordering::SeqCst) != thread {
                    report.interleavings += 1;
                }
                fill_spin_read_ymm(&pattern, &mut out, SPINS);
                report.rounds += 1;
                report.mismatched_words += pattern
                    .iter()
                    .zip(&out)
                    .filter(|(want, got)| want != got)
                    .count() as u64;
            }
            report
        });
        check!(spawned.is_ok(), "spawn failed", thread);
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    let reports: alloc::vec::Vec<AvxReport> = handles
        .into_iter()
        .map(|handle| scheduler.join(handle).unwrap_or_default())
        .collect();
    let timer_ticks = crate::threads::COUNTERS
        .timer_interrupts
        .load(Ordering::Relaxed)
        - timer_before;
    let mismatched: u64 = reports.iter().map(|report| report.mismatched_words).sum();
    kprintln!(
        "    {} timer interrupts; per thread (rounds, mismatched words, interleavings): {:?}",
        timer_ticks,
        reports
            .iter()
            .map(|r| (r.rounds, r.mismatched_words, r.interleavings))
            .collect::<alloc::vec::Vec<_>>()
    );
    check!(
        reports
            .iter()
            .all(|report| report.interleavings >= MIN_INTERLEAVINGS),
        "the threads were not preempted often enough (liveness guard hit)",
        reports
    );
    check!(timer_ticks > 0, "no timer interrupt arrived", timer_ticks);
    Ok((mismatched, reports))
}

/// Runs `body` on a thread pinned to each CPU in turn; returns each CPU's result.
fn on_every_cpu<T: Send + 'static>(
    body: fn() -> T,
) -> Result<alloc::vec::Vec<(usize, T)>, Failure> {
    let scheduler = crate::threads::scheduler();
    let mut results = alloc::vec::Vec::new();
    for cpu in 0..scheduler.cpu_count() {
        let spawned = scheduler.spawn(SpawnOptions::new().pin(CpuId(cpu)), move || {
            (percpu::current_index(), body())
        });
        check!(spawned.is_ok(), "spawn failed", cpu);
        let Ok(handle) = spawned else {
            return Ok(results);
        };
        let result = scheduler.join(handle);
        check!(
            matches!(result, Some((ran_on, _)) if ran_on == cpu),
            "a pinned thread did not run on its CPU",
            cpu
        );
        if let Some(result) = result {
            results.push(result);
        }
    }
    Ok(results)
}

/// Issue 11 item 2 (the item 4): CR0.CD (bit 30) and CR0.NW (bit 29) are clear
/// on every CPU, so every CPU runs with its caches enabled.
pub fn every_cpu_runs_with_caches_enabled(_: &ArchInfo) -> TestResult {
    let cr0s = on_every_cpu(x86_64::registers::control::Cr0::read_raw)?;
    for (cpu, cr0) in cr0s {
        kprintln!("    cpu {cpu}: cr0={cr0:#x}");
        check!(
            cr0 & (1 << 30 | 1 << 29) == 0,
            "a CPU runs with CR0.CD or CR0.NW set (caches disabled)",
            cpu,
            cr0
        );
    }
    Ok(())
}

/// The (present, IST index) pairs of the loaded IDT's 256 gates, or the IDT's limit if
/// it does not hold 256 gates.
fn idt_gates() -> Result<[(bool, u8); 256], u16> {
    let pointer = x86_64::instructions::tables::sidt();
    if pointer.limit != 256 * 16 - 1 {
        return Err(pointer.limit);
    }
    let mut gates = [(false, 0u8); 256];
    for (vector, gate) in gates.iter_mut().enumerate() {
        // SAFETY: SIDT gives the loaded IDT's base and limit; the limit covers 256
        // 16-byte gates, and the IDT is a static, mapped and never written after boot.
        let options =
            unsafe { ((pointer.base.as_u64() + vector as u64 * 16 + 4) as *const u16).read() };
        *gate = (options & 0x8000 != 0, (options & 0x7) as u8);
    }
    Ok(gates)
}

/// Issue 11 item 3 (the item 7): every one of the 256 IDT gates is present and
/// switches to an IST stack, on every CPU.
pub fn every_idt_vector_is_present_on_an_ist_stack(_: &ArchInfo) -> TestResult {
    for (cpu, gates) in on_every_cpu(idt_gates)? {
        check!(gates.is_ok(), "the IDT does not hold 256 gates", cpu, gates);
        let Ok(gates) = gates else { return Ok(()) };
        let missing: alloc::vec::Vec<usize> = (0..256).filter(|&v| !gates[v].0).collect();
        let no_ist: alloc::vec::Vec<usize> = (0..256).filter(|&v| gates[v].1 == 0).collect();
        check!(missing.is_empty(), "IDT vectors not present", cpu, missing);
        check!(no_ist.is_empty(), "IDT vectors without IST", cpu, no_ist);
    }
    Ok(())
}

/// Issue 11 item 4 (the item 8): an interrupt on a vector without a handler is
/// counted, and its first occurrence is logged (the test hook counts logged lines);
/// further ones on the same vector are rate-limited.
pub fn unexpected_interrupt_is_counted_and_logged(_: &ArchInfo) -> TestResult {
    const VECTOR: u8 = 0x9e;
    check!(
        interrupts::interrupt_handler(VECTOR).is_none(),
        "the test's vector has a handler",
        VECTOR
    );
    let counted_before = interrupts::unexpected_interrupt_count();
    let logged_before = interrupts::unexpected_interrupts_logged();
    // SAFETY: a software interrupt to a vector without a handler: the stub saves and
    // restores every register, the dispatcher counts it (and logs it) and returns.
    unsafe { core::arch::asm!("int 0x9e") };
    let logged_first = interrupts::unexpected_interrupts_logged();
    // SAFETY: as above.
    unsafe { core::arch::asm!("int 0x9e") };
    let counted = interrupts::unexpected_interrupt_count() - counted_before;
    let logged = interrupts::unexpected_interrupts_logged() - logged_before;
    // Other CPUs may take unexpected interrupts meanwhile, hence at least.
    check!(counted >= 2, "unexpected interrupts not counted", counted);
    check!(
        logged_first > logged_before,
        "the first unexpected interrupt on a vector was not logged",
        logged_before,
        logged_first
    );
    check!(
        interrupts::unexpected_interrupts_logged_on(VECTOR) == 1,
        "a repeated unexpected interrupt was logged again (not rate-limited)",
        interrupts::unexpected_interrupts_logged_on(VECTOR),
        logged
    );
    Ok(())
}

/// The stack pointer's page rounded up: the top of the running thread's stack (the
/// thread's first frames are far smaller than a page).
fn stack_top_of_current_thread() -> u64 {
    let rsp: u64;
    // SAFETY: reads the stack pointer; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    rsp.next_multiple_of(paging::PAGE_SIZE)
}

/// Stack size of the thread whose guard page the tests look at.
pub const GUARD_TEST_STACK: u64 = 16 * 1024;

/// The guard page of a thread spawned with [`GUARD_TEST_STACK`] bytes of stack, as seen
/// from inside it (the kernel's stacks are page runs with the guard lowest).
pub fn guard_page_of_current_thread() -> u64 {
    stack_top_of_current_thread() - GUARD_TEST_STACK - paging::PAGE_SIZE
}

/// Issue 11 item 5 (the item 3): `flags_of` calls a guard page unmapped: a
/// fresh page made a guard with `set_guard_page`, and a real thread stack's guard.
pub fn flags_of_calls_guard_pages_unmapped(_: &ArchInfo) -> TestResult {
    let frame = crate::memory::alloc_page();
    check!(frame.is_some(), "page allocation failed");
    let Some(frame) = frame else { return Ok(()) };
    let address = frame.as_u64() * paging::PAGE_SIZE;
    check!(
        paging::flags_of(address).is_some(),
        "a fresh RAM page is unmapped",
        address
    );
    let guarded = paging::set_guard_page(address, true);
    check!(guarded.is_ok(), "set_guard_page failed", guarded);
    let as_guard = paging::flags_of(address);
    let restored = paging::set_guard_page(address, false);
    let after = paging::flags_of(address);
    let freed = crate::memory::free_page(frame);
    check!(
        as_guard.is_none(),
        "flags_of calls a guard page mapped",
        address,
        as_guard
    );
    check!(restored.is_ok(), "unguarding failed", restored);
    check!(after.is_some(), "unguarded page not mapped", after);
    check!(freed.is_ok(), "free failed", freed);

    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    let spawned = scheduler.spawn(options, || {
        let guard = guard_page_of_current_thread();
        (
            guard,
            paging::flags_of(guard),
            paging::flags_of(guard + paging::PAGE_SIZE),
        )
    });
    check!(spawned.is_ok(), "spawn failed");
    let Ok(handle) = spawned else { return Ok(()) };
    let seen = scheduler.join(handle);
    check!(
        matches!(seen, Some((_, _, Some(_)))),
        "the lowest page of the thread's stack is unmapped",
        seen
    );
    check!(
        matches!(seen, Some((_, None, _))),
        "flags_of calls a thread stack's guard page mapped",
        seen
    );
    Ok(())
}

/// Crash case `thread-guard-rbp`: a thread faults (`ud2`) with `rbp` pointing into its
/// own stack's guard page; the report must still print the whole backtrace section
/// (the walker must not read the guard page and fault inside the report).
pub fn crash_with_rbp_in_thread_guard() {
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    if let Ok(handle) = scheduler.spawn(options, fault_with_rbp_in_guard) {
        scheduler.join(handle);
    }
}

#[inline(never)]
fn fault_with_rbp_in_guard() {
    let inside_guard = guard_page_of_current_thread() + 0x800;
    // SAFETY: deliberately not safe: points rbp into the guard page and raises #UD,
    // which the kernel reports without returning.
    unsafe { core::arch::asm!("mov rbp, {}", "ud2", in(reg) inside_guard) };
}

/// Issue 11 item 6 (the item 9): the crash report's guard-page test names every
/// stack guard: the boot stack's, the boot CPU's IST stacks', every AP's stacks' and IST
/// stacks', and a thread stack's; not the null page, nor a mapped page.
pub fn every_stack_guard_is_recognised(_: &ArchInfo) -> TestResult {
    use keel_arch_x86_64::{boot, gdt};
    let boot_guard = (&raw const boot::keel_boot_stack_guard) as u64;
    check!(
        interrupts::is_stack_guard(boot_guard + 8),
        "the boot stack's guard is not recognised",
        boot_guard
    );
    for guard in gdt::ist_guard_pages() {
        check!(
            interrupts::is_stack_guard(guard + 0x100),
            "a boot-CPU IST guard is not recognised",
            guard
        );
    }
    let ap_guards = crate::smp::ap_guard_pages();
    let expected = (crate::threads::scheduler().cpu_count() - 1) * (1 + gdt::IST_COUNT);
    check!(
        ap_guards.len() == expected,
        "AP guard pages missing from the record",
        ap_guards.len(),
        expected
    );
    let unrecognised: alloc::vec::Vec<u64> = ap_guards
        .iter()
        .copied()
        .filter(|&guard| !interrupts::is_stack_guard(guard + 0x800))
        .collect();
    check!(
        unrecognised.is_empty(),
        "AP stack or IST guards are not recognised",
        unrecognised
    );
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    let spawned = scheduler.spawn(options, || {
        let guard = guard_page_of_current_thread();
        (guard, interrupts::is_stack_guard(guard + 0xff8))
    });
    check!(spawned.is_ok(), "spawn failed");
    let Ok(handle) = spawned else { return Ok(()) };
    let seen = scheduler.join(handle);
    check!(
        matches!(seen, Some((_, true))),
        "a thread stack's guard is not recognised",
        seen
    );
    let mapped = stack_top_of_current_thread() - paging::PAGE_SIZE;
    check!(
        !interrupts::is_stack_guard(8) && !interrupts::is_stack_guard(mapped),
        "the null page or a mapped page is called a guard",
        mapped
    );
    Ok(())
}

/// Crash case `thread-guard-in-entry-stub`: a thread's stack pointer is 64 bytes above
/// its guard page when an interrupt arrives; the entry stub, still on its IST stack,
/// writes the frame below the red zone, into the guard. The report must name the guard
/// page although the faulting code's rsp is the IST stack's. (The report's frame 0 is in
/// the stub, `keel_isr_stubs+...`; this function is not a return address anywhere.)
pub fn crash_in_entry_stub_on_thread_guard() {
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    if let Ok(handle) = scheduler.spawn(options, interrupt_just_above_guard) {
        scheduler.join(handle);
    }
}

#[inline(never)]
fn interrupt_just_above_guard() {
    let low = guard_page_of_current_thread() + paging::PAGE_SIZE + 64;
    // SAFETY: deliberately not safe: moves rsp to the bottom of the thread's stack and
    // raises an interrupt, whose frame cannot fit above the guard page; the kernel
    // reports the page fault and never returns here.
    unsafe { core::arch::asm!("mov rsp, {}", "int 0x9e", "ud2", in(reg) low) };
}
