//! The TSC and the monotonic nanosecond clock.
//!
//! The TSC frequency is measured against the legacy PIT (channel 2, gated through port
//! 0x61): three 10 ms windows, median taken, result sanity-checked. The PIT is present
//! on both `q35` and `microvm` and, unlike CPUID leaves 0x15/0x16, measures the rate at
//! which this (possibly emulated) TSC really ticks: under QEMU's TCG the guest TSC
//! follows the host's, whatever CPUID claims. CPUID 0x15, 0x16 and the hypervisor leaf
//! 0x40000010 serve as fallbacks when the PIT measurement fails its sanity check. Every
//! wait is bounded, so calibration cannot hang.

use core::sync::atomic::{AtomicU64, Ordering};
use raw_cpuid::CpuId;
use x86_64::instructions::port::Port;

/// Reads the time-stamp counter.
#[inline]
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; long mode guarantees it exists.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// Measured against the PIT.
    Pit,
    /// CPUID leaf 0x15 (crystal clock ratio).
    CpuidCrystal,
    /// CPUID leaf 0x16 (processor base frequency).
    CpuidBaseFrequency,
    /// The hypervisor timing leaf 0x40000010.
    HypervisorLeaf,
    /// Nothing worked; a 2 GHz guess is in use and times are unreliable.
    Guess,
}

/// The calibration result.
#[derive(Debug, Clone, Copy)]
pub struct TscCalibration {
    /// Ticks per second.
    pub hertz: u64,
    /// How it was obtained.
    pub source: TscSource,
    /// The three PIT measurements (0 when not measured), in Hz.
    pub pit_samples: [u64; 3],
}

const PIT_HERTZ: u64 = 1_193_182;
const MIN_PLAUSIBLE_HERTZ: u64 = 100_000_000;
const MAX_PLAUSIBLE_HERTZ: u64 = 20_000_000_000;

/// Ticks per second, 0 until calibrated.
static TSC_HERTZ: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per tick as a 32.32 fixed-point number, 0 until calibrated.
static NANOS_PER_TICK_FIXED: AtomicU64 = AtomicU64::new(0);

fn tsc_at_entry() -> u64 {
    // SAFETY: written once by the boot code before any Rust code ran.
    unsafe { core::ptr::read_volatile(&raw const crate::boot::keel_boot_tsc_at_entry) }
}

/// Measures the TSC over one PIT window of `millis` milliseconds; `None` when the PIT
/// does not count (no PIT, or it never signals the end of the window).
fn measure_against_pit(millis: u64) -> Option<u64> {
    let latch = PIT_HERTZ * millis / 1000;
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x61/0x43/0x42 are the PC speaker gate and PIT channel 2, used by
    // nothing else in Keel. The sequence: gate on, speaker off; channel 2, lobyte/hibyte,
    // mode 0 (interrupt on terminal count); load the count, which starts the window.
    let start = unsafe {
        let value = gate.read();
        gate.write((value & !0x02) | 0x01);
        command.write(0b1011_0000);
        channel2.write((latch & 0xff) as u8);
        channel2.write((latch >> 8) as u8);
        read_tsc()
    };
    for _ in 0..50_000_000u64 {
        // SAFETY: reading port 0x61 has no side effect; bit 5 is PIT channel 2's output.
        if unsafe { gate.read() } & 0x20 != 0 {
            let ticks = read_tsc() - start;
            return Some(ticks * 1000 / millis);
        }
    }
    None
}

fn plausible(hertz: u64) -> bool {
    (MIN_PLAUSIBLE_HERTZ..=MAX_PLAUSIBLE_HERTZ).contains(&hertz)
}

fn from_cpuid() -> Option<(u64, TscSource)> {
    let cpuid = CpuId::new();
    if let Some(info) = cpuid.get_tsc_info()
        && let Some(hertz) = info.tsc_frequency()
        && plausible(hertz)
    {
        return Some((hertz, TscSource::CpuidCrystal));
    }
    if let Some(info) = cpuid.get_processor_frequency_info() {
        let hertz = u64::from(info.processor_base_frequency()) * 1_000_000;
        if plausible(hertz) {
            return Some((hertz, TscSource::CpuidBaseFrequency));
        }
    }
    if let Some(hypervisor) = cpuid.get_hypervisor_info()
        && let Some(khz) = hypervisor.tsc_frequency()
    {
        let hertz = u64::from(khz) * 1000;
        if plausible(hertz) {
            return Some((hertz, TscSource::HypervisorLeaf));
        }
    }
    None
}

/// Calibrates the TSC and starts the monotonic clock.
pub fn calibrate() -> TscCalibration {
    let mut samples = [0u64; 3];
    for sample in samples.iter_mut() {
        *sample = measure_against_pit(10).unwrap_or(0);
    }
    let mut sorted = samples;
    sorted.sort_unstable();
    let median = sorted[1];
    // Accept the median only when all three windows agree within 2%.
    let agree = sorted[0] > 0 && (sorted[2] - sorted[0]) * 50 <= median;
    let (hertz, source) = if plausible(median) && agree {
        (median, TscSource::Pit)
    } else if let Some(found) = from_cpuid() {
        found
    } else if plausible(median) {
        (median, TscSource::Pit)
    } else {
        (2_000_000_000, TscSource::Guess)
    };
    set_frequency(hertz);
    TscCalibration {
        hertz,
        source,
        pit_samples: samples,
    }
}

fn set_frequency(hertz: u64) {
    let fixed = ((1_000_000_000u128 << 32) / u128::from(hertz)) as u64;
    NANOS_PER_TICK_FIXED.store(fixed, Ordering::Relaxed);
    TSC_HERTZ.store(hertz, Ordering::Relaxed);
}

/// The calibrated TSC frequency, 0 before [`calibrate`].
pub fn tsc_hertz() -> u64 {
    TSC_HERTZ.load(Ordering::Relaxed)
}

/// Converts a TSC delta to nanoseconds (0 before calibration).
pub fn ticks_to_nanos(ticks: u64) -> u64 {
    let fixed = NANOS_PER_TICK_FIXED.load(Ordering::Relaxed);
    ((u128::from(ticks) * u128::from(fixed)) >> 32) as u64
}

/// Converts nanoseconds to TSC ticks (0 before calibration).
pub fn nanos_to_ticks(nanos: u64) -> u64 {
    (u128::from(nanos) * u128::from(tsc_hertz()) / 1_000_000_000) as u64
}

/// Nanoseconds since the PVH entry; monotonic, 0 before calibration.
pub fn monotonic_nanos() -> u64 {
    ticks_to_nanos(read_tsc().saturating_sub(tsc_at_entry()))
}

/// Nanoseconds from the PVH entry to the TSC value `tsc`.
pub fn nanos_since_entry(tsc: u64) -> u64 {
    ticks_to_nanos(tsc.saturating_sub(tsc_at_entry()))
}

/// Spins for at least `nanos` nanoseconds (after calibration).
pub fn busy_wait_nanos(nanos: u64) {
    let end = read_tsc().saturating_add(nanos_to_ticks(nanos));
    while read_tsc() < end {
        core::hint::spin_loop();
    }
}
