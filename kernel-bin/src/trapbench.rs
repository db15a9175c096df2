//! The interrupt-path cost of saving extended state (`app=trapbench` on the command
//! line), for papers/0007.
//!
//! On the CPU it runs on (interrupts disabled, so nothing else enters), the bench times
//! round trips through the interrupt entry stub with `int` to a vector >= 32 whose
//! handler does nothing: the same path a timer interrupt takes (the frame moves to the
//! interrupted stack, the extended state is saved below it, the dispatcher acknowledges
//! the local APIC and calls the handler, and everything is restored). It does so once
//! per save mode the CPU offers ([`cpu::StateSave`]), switching with
//! [`cpu::set_state_save`], and with the YMM upper halves both clean (after
//! `vzeroupper`) and dirty, the configurations taking turns within each sample; then it
//! restores the boot mode. No thread uses AVX meanwhile,
//! so the FXSAVE runs lose nothing.
//!
//! Options: `trapbench.trips` per sample (default 20 000) and `trapbench.samples`
//! (default 21). Prints one `trapbench:` line per mode and variant: the median, minimum
//! and maximum over the samples of TSC cycles per round trip, and the median in nanoseconds.
//! Under TCG these are emulated times: compare them only with each other.

use alloc::vec::Vec;
use keel_arch_x86_64::cpu::{self, StateSave};
use keel_arch_x86_64::interrupts::{self, TrapFrame};
use keel_arch_x86_64::{ArchInfo, kprintln, time};

/// The vector the bench raises (no other code uses it).
const VECTOR: u8 = 0x9f;

fn nothing(_: &mut TrapFrame) {}

fn option(info: &ArchInfo, name: &str, default: u64) -> u64 {
    info.boot
        .command_line_value(name)
        .and_then(|value| value.parse().ok())
        .filter(|&value| value > 0)
        .unwrap_or(default)
}

/// TSC cycles of `trips` round trips through vector [`VECTOR`].
fn time_round_trips(trips: u64) -> u64 {
    let start = time::read_tsc();
    for _ in 0..trips {
        // SAFETY: a software interrupt to VECTOR, whose handler (`nothing`) is
        // installed: the stub saves and restores every register and the extended state.
        unsafe { core::arch::asm!("int 0x9f") };
    }
    time::read_tsc() - start
}

/// Makes the YMM upper halves non-zero (`dirty`) or zero (`vzeroupper`).
fn set_upper_halves(dirty: bool) {
    if dirty {
        // SAFETY: only called when AVX is enabled; sets ymm0 to all ones; xmm0 (the whole
        // register, as the kernel is compiled without AVX) is declared clobbered.
        unsafe { core::arch::asm!("vpcmpeqb ymm0, ymm0, ymm0", out("xmm0") _) };
    } else {
        // SAFETY: as above; zeroes the upper halves, which the compiler never uses.
        unsafe { core::arch::asm!("vzeroupper", out("xmm0") _) };
    }
}

/// Runs the bench; returns false when it could not (no handler slot).
pub fn run(info: &ArchInfo) -> bool {
    let trips = option(info, "trapbench.trips", 20_000);
    let samples = option(info, "trapbench.samples", 21);
    if interrupts::interrupt_handler(VECTOR).is_some()
        || !interrupts::set_interrupt_handler(VECTOR, nothing)
    {
        kprintln!("trapbench: vector {VECTOR:#x} is taken");
        return false;
    }
    let state = &info.extended_state;
    kprintln!(
        "trapbench: boot mode {:?}, area {} B (XCR0 {:#x}, standard {} B, compacted {} B, \
         CPUID 0xD.1 EAX {:#x}), {} round trips per sample, {} samples, TSC {} Hz",
        state.save,
        state.save_area_bytes,
        state.xcr0,
        state.xsave_standard_bytes,
        state.xsave_compacted_bytes,
        state.xsave_features,
        trips,
        samples,
        time::tsc_hertz()
    );
    let boot_mode = cpu::state_save();
    let were_enabled = x86_64::instructions::interrupts::are_enabled();
    x86_64::instructions::interrupts::disable();
    let variants: &[bool] = if state.avx { &[false, true] } else { &[false] };
    let mut configurations: Vec<(StateSave, bool, Vec<u64>)> = Vec::new();
    for mode in [StateSave::Fxsave, StateSave::Xsave, StateSave::Xsavec] {
        if cpu::set_state_save(mode) {
            for &dirty in variants {
                configurations.push((mode, dirty, Vec::new()));
            }
        } else {
            kprintln!("trapbench: {mode:?} not offered by this CPU");
        }
    }
    // The configurations take turns within every sample, so drift in the emulator's
    // speed over the run affects them alike.
    for _ in 0..samples {
        for (mode, dirty, cycles) in configurations.iter_mut() {
            cpu::set_state_save(*mode);
            set_upper_halves(*dirty);
            time_round_trips(trips / 10 + 1);
            cycles.push(time_round_trips(trips) / trips);
            set_upper_halves(false);
        }
    }
    for (mode, dirty, cycles) in configurations.iter_mut() {
        cycles.sort_unstable();
        let median = cycles[cycles.len() / 2];
        kprintln!(
            "trapbench: {:<6} upper halves {:<5}: median {} cycles ({} ns), min {}, max {} cycles per round trip",
            alloc::format!("{mode:?}"),
            if *dirty { "dirty" } else { "clean" },
            median,
            median * 1_000_000_000 / time::tsc_hertz().max(1),
            cycles[0],
            cycles[cycles.len() - 1]
        );
    }
    cpu::set_state_save(boot_mode);
    if were_enabled {
        x86_64::instructions::interrupts::enable();
    }
    true
}
