//! The TSC and the monotonic nanosecond clock ([`now`], a `keel-types` [`Instant`]:
//! nanoseconds since the PVH entry; spans are [`Duration`]s).
//!
//! The TSC frequency is measured against the legacy PIT (channel 0, polled through the
//! counter latch): three windows of [`PIT_WINDOW_MILLIS`] ms, median taken, accepted only when
//! the three agree within 2%. The PIT is present
//! on both `q35` and `microvm` and, unlike CPUID leaves 0x15/0x16, measures the rate at
//! which this (possibly emulated) TSC really ticks: under QEMU's TCG the guest TSC
//! follows the host's, whatever CPUID claims. CPUID 0x15, 0x16 and the hypervisor leaf
//! 0x40000010 serve as fallbacks when the PIT measurement fails its sanity check. Every
//! wait is bounded, so calibration cannot hang.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use keel_types::Instant;
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
/// Length of one PIT calibration window.
pub const PIT_WINDOW_MILLIS: u64 = 5;
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

/// Reads PIT channel 0's current count (latched, so the two bytes belong together).
fn read_pit_channel0() -> u16 {
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel0: Port<u8> = Port::new(0x40);
    // SAFETY: the latch command (channel 0, counter latch) followed by reading the low
    // and high byte is the architected way to read the counter; Keel owns the PIT.
    unsafe {
        command.write(0b0000_0000);
        let low = channel0.read();
        let high = channel0.read();
        u16::from_le_bytes([low, high])
    }
}

/// Measures the TSC over about `millis` milliseconds of PIT channel 0 ticks; `None`
/// when the PIT does not count.
///
/// Channel 0 runs in mode 2 (rate generator) from 65535 and is polled through the
/// counter-latch command, summing the ticks between polls (a window is far shorter than
/// the 55 ms wrap period). Unlike the usual channel-2 method, this needs no port 0x61
/// gate, which QEMU's `microvm` lacks (it reads as 0xff there). Interrupts are off, so
/// channel 0's IRQ 0 is never delivered.
fn measure_against_pit(millis: u64) -> Option<u64> {
    let target_ticks = PIT_HERTZ * millis / 1000;
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel0: Port<u8> = Port::new(0x40);
    // SAFETY: channel 0, lobyte/hibyte access, mode 2, binary; reload value 0xffff.
    // Keel owns the PIT; nothing else programs it.
    unsafe {
        command.write(0b0011_0100);
        channel0.write(0xff);
        channel0.write(0xff);
    }
    let mut previous = read_pit_channel0();
    let start_tsc = read_tsc();
    let mut elapsed: u64 = 0;
    let mut unchanged_polls: u64 = 0;
    while elapsed < target_ticks {
        let current = read_pit_channel0();
        let delta = u64::from(previous.wrapping_sub(current));
        if delta == 0 {
            unchanged_polls += 1;
            // A PIT that never moves (absent device) must not hang the boot.
            if unchanged_polls > 5_000_000 {
                return None;
            }
            continue;
        }
        unchanged_polls = 0;
        elapsed += delta;
        previous = current;
    }
    let ticks = read_tsc() - start_tsc;
    Some((u128::from(ticks) * u128::from(PIT_HERTZ) / u128::from(elapsed)) as u64)
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
        *sample = measure_against_pit(PIT_WINDOW_MILLIS).unwrap_or(0);
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

/// A TSC delta in nanoseconds (0 before calibration).
fn ticks_to_nanos(ticks: u64) -> u64 {
    let fixed = NANOS_PER_TICK_FIXED.load(Ordering::Relaxed);
    ((u128::from(ticks) * u128::from(fixed)) >> 32) as u64
}

/// Converts a TSC delta to a duration (zero before calibration).
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks_to_nanos(ticks))
}

/// Converts a duration to TSC ticks (0 before calibration; saturating at `u64::MAX`).
pub fn duration_to_ticks(duration: Duration) -> u64 {
    let ticks = duration.as_nanos().saturating_mul(u128::from(tsc_hertz())) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The monotonic clock: nanoseconds since the PVH entry, [`Instant::ZERO`] before
/// calibration. The scheduler's clock (`kernel-bin`'s `Arch::now`).
pub fn now() -> Instant {
    instant_at_tsc(read_tsc())
}

/// The instant on [`now`]'s clock at which the TSC read `tsc`.
pub fn instant_at_tsc(tsc: u64) -> Instant {
    Instant::from_nanos(ticks_to_nanos(tsc.saturating_sub(tsc_at_entry())))
}

/// Spins for at least `duration` (after calibration).
pub fn busy_wait(duration: Duration) {
    let end = read_tsc().saturating_add(duration_to_ticks(duration));
    while read_tsc() < end {
        core::hint::spin_loop();
    }
}
