//! In-guest cases of the CPU set-up (`keel_arch_x86_64::cpu`): floating point, AVX
//! enabled in XCR0 when the CPU has it, YMM registers across preemption under every
//! XSAVE-family save mode (issue 11 item 1), and caches enabled on every CPU (issue 11
//! item 2). CPU features are read with `raw-cpuid`.

use super::{Failure, TestResult, on_every_cpu};
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_sched::{CpuId, SpawnOptions};
use raw_cpuid::CpuId as Cpuid;

fn floating_point_works(_: &ArchInfo) -> TestResult {
    let x = black_box(2.0f64);
    let root = libm_free_sqrt(x);
    check!((root * root - 2.0).abs() < 1e-12, "sqrt(2)^2 != 2", root);
    let sum: f32 = (1..=100).map(|value| black_box(value as f32)).sum();
    check!(sum == 5050.0, "f32 sum wrong", sum);
    Ok(())
}
ktest!(floating_point_works);

/// Newton's method; avoids depending on a libm for one test.
fn libm_free_sqrt(value: f64) -> f64 {
    let mut estimate = value;
    for _ in 0..60 {
        estimate = 0.5 * (estimate + value / estimate);
    }
    estimate
}

fn avx_enabled_when_cpu_has_it(info: &ArchInfo) -> TestResult {
    let cpu_has_avx = cpu_offers_avx();
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
ktest!(avx_enabled_when_cpu_has_it);

/// Whether the CPU offers AVX with XSAVE (CPUID leaf 1), whether or not the kernel
/// enabled it.
fn cpu_offers_avx() -> bool {
    Cpuid::new()
        .get_feature_info()
        .is_some_and(|features| features.has_xsave() && features.has_avx())
}

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

/// Whether AVX instructions can run: offered, and CR4.OSXSAVE set by the kernel.
fn cpu_has_avx() -> bool {
    cpu_offers_avx()
        && Cpuid::new()
            .get_feature_info()
            .is_some_and(|features| features.has_oxsave())
}

/// Issue 11 item 1: three threads pinned to CPU 0 keep their own values in all sixteen
/// YMM registers while the timer preempts them in the middle of their spins, with every
/// XSAVE-family save mode this CPU offers (the boot default first). Each thread runs
/// rounds until every thread has seen other threads run between its rounds at least
/// `MIN_INTERLEAVINGS` times (so preemption did happen), with a liveness guard. Then,
/// as a control that the check can see corruption, the same run with FXSAVE (which
/// loses the upper halves) is reported, not asserted.
fn avx_registers_survive_preemption(info: &ArchInfo) -> TestResult {
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
ktest!(avx_registers_survive_preemption);

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
    let give_up = time::now() + Duration::from_secs(30);
    let mut handles = alloc::vec::Vec::new();
    for thread in 0..THREADS {
        let options = SpawnOptions::new().pin(CpuId::new(0));
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
            while READY.load(Ordering::SeqCst) < THREADS && time::now() < give_up {
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

/// Issue 11 item 2 (the item 4): CR0.CD (bit 30) and CR0.NW (bit 29) are clear
/// on every CPU, so every CPU runs with its caches enabled.
fn every_cpu_runs_with_caches_enabled(_: &ArchInfo) -> TestResult {
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
ktest!(every_cpu_runs_with_caches_enabled);
