//! The local APIC (xAPIC through MMIO, or x2APIC through MSRs when CPUID offers it) and
//! its timer in one-shot mode: the tickless scheduler arms it for the next preemption
//! point only.
//!
//! Debian 12's QEMU 7.2 offers no x2APIC under TCG (`-cpu max` leaves CPUID.1:ECX bit
//! 21 clear, and `-cpu max,+x2apic` or `qemu64,+x2apic` only warn "TCG doesn't support
//! requested feature: CPUID.01H:ECX.x2apic [bit 21]", and the guest then reports
//! xAPIC). QEMU 10.0 from bookworm-backports does with `-cpu max`: `cargo xtask test`
//! runs the in-guest suite once on it (`q35-smp2-x2apic-qemu10`, which checks that the
//! banner says x2APIC), so the x2APIC path runs in CI.
//!
//! The timer is calibrated against the TSC. The legacy 8259 PICs are masked so that no
//! stray ISA interrupt lands on an exception vector.

use crate::time;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use raw_cpuid::CpuId;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
/// Vector of the cross-CPU wake-up IPI.
pub const WAKEUP_VECTOR: u8 = 0x41;
/// Vector of the TLB shootdown IPI (see [`crate::tlb`]).
pub const SHOOTDOWN_VECTOR: u8 = 0x42;
/// Vector of the spurious interrupt (needs no end-of-interrupt).
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

const REGISTER_ID: u32 = 0x20;
const REGISTER_TASK_PRIORITY: u32 = 0x80;
const REGISTER_END_OF_INTERRUPT: u32 = 0xb0;
const REGISTER_SPURIOUS: u32 = 0xf0;
const REGISTER_INTERRUPT_COMMAND_LOW: u32 = 0x300;
const REGISTER_INTERRUPT_COMMAND_HIGH: u32 = 0x310;
const REGISTER_LVT_TIMER: u32 = 0x320;
const REGISTER_TIMER_INITIAL: u32 = 0x380;
const REGISTER_TIMER_CURRENT: u32 = 0x390;
const REGISTER_TIMER_DIVIDE: u32 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration 0b0011: divide the bus clock by 16.
const TIMER_DIVIDE_BY_16: u32 = 0b0011;

/// Which interface the APIC is driven through: 0 = not initialised, 1 = xAPIC, 2 = x2APIC.
static MODE: AtomicU8 = AtomicU8::new(0);
/// xAPIC MMIO base (physical = virtual under the identity map).
static MMIO_BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);
/// Timer ticks per second (after the divider), 0 until calibrated.
static TIMER_HERTZ: AtomicU64 = AtomicU64::new(0);

/// What [`init`] found.
#[derive(Debug, Clone, Copy)]
pub struct ApicInfo {
    /// True when driven as x2APIC.
    pub x2apic: bool,
    /// The APIC id of this CPU.
    pub id: u32,
    /// Physical base of the xAPIC MMIO page.
    pub mmio_base: keel_types::PhysAddr,
    /// Timer ticks per second after the divider.
    pub timer_hertz: u64,
}

/// The physical address of the xAPIC page, for the page-table builder to map uncached.
pub fn mmio_base_from_msr() -> keel_types::PhysAddr {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; reading it has no side effect.
    keel_types::PhysAddr::new(unsafe { Msr::new(IA32_APIC_BASE).read() } & 0x000f_ffff_ffff_f000)
}

fn read(register: u32) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is enabled; MSR 0x800 + register/16 is the register.
        2 => unsafe { Msr::new(0x800 + (register >> 4)).read() as u32 },
        1 => {
            let address = MMIO_BASE.load(Ordering::Relaxed) + u64::from(register);
            // SAFETY: the xAPIC page is identity-mapped uncached by the page-table
            // builder; registers are 32-bit aligned.
            unsafe { core::ptr::read_volatile(address as *const u32) }
        }
        _ => 0,
    }
}

fn write(register: u32, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is enabled; MSR 0x800 + register/16 is the register.
        2 => unsafe { Msr::new(0x800 + (register >> 4)).write(u64::from(value)) },
        1 => {
            let address = MMIO_BASE.load(Ordering::Relaxed) + u64::from(register);
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile(address as *mut u32, value) }
        }
        _ => {}
    }
}

fn mask_legacy_pics() {
    // SAFETY: 0x21 and 0xa1 are the 8259 PICs' data ports; writing 0xff masks every
    // legacy interrupt line. Keel routes nothing through them.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}

/// Enables this CPU's local APIC and calibrates its timer against the TSC.
///
/// Call after the page tables map [`mmio_base_from_msr`] and after TSC calibration.
pub fn init() -> ApicInfo {
    mask_legacy_pics();
    let x2apic = CpuId::new()
        .get_feature_info()
        .is_some_and(|features| features.has_x2apic());
    let mut base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: enabling the APIC (and x2APIC mode when CPUID reports it) through its base
    // MSR is the architected procedure; the base address is left unchanged.
    let base = unsafe {
        let value = base_msr.read();
        let mut enabled = value | APIC_BASE_ENABLE;
        if x2apic {
            enabled |= APIC_BASE_X2APIC;
        }
        base_msr.write(enabled);
        value & 0x000f_ffff_ffff_f000
    };
    MMIO_BASE.store(base, Ordering::Relaxed);
    MODE.store(if x2apic { 2 } else { 1 }, Ordering::Release);
    write(REGISTER_TASK_PRIORITY, 0);
    write(REGISTER_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REGISTER_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REGISTER_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    let timer_hertz = calibrate_timer();
    TIMER_HERTZ.store(timer_hertz, Ordering::Relaxed);
    ApicInfo {
        x2apic,
        id: current_id(),
        mmio_base: keel_types::PhysAddr::new(base),
        timer_hertz,
    }
}

fn calibrate_timer() -> u64 {
    const WINDOW_NANOS: u64 = 4_000_000;
    write(REGISTER_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REGISTER_TIMER_INITIAL, u32::MAX);
    time::busy_wait(core::time::Duration::from_nanos(WINDOW_NANOS));
    let remaining = read(REGISTER_TIMER_CURRENT);
    write(REGISTER_TIMER_INITIAL, 0);
    u64::from(u32::MAX - remaining) * 1_000_000_000 / WINDOW_NANOS
}

/// Timer ticks per second, 0 before [`init`].
pub fn timer_hertz() -> u64 {
    TIMER_HERTZ.load(Ordering::Relaxed)
}

/// Arms the one-shot timer to fire [`TIMER_VECTOR`] after at least `delay` (clamped to
/// the counter's 32-bit range). Re-arming replaces the previous deadline.
pub fn arm_oneshot(delay: core::time::Duration) {
    let ticks = delay
        .as_nanos()
        .saturating_mul(u128::from(timer_hertz()))
        .div_ceil(1_000_000_000);
    let ticks = ticks.clamp(1, u128::from(u32::MAX)) as u32;
    write(REGISTER_LVT_TIMER, u32::from(TIMER_VECTOR));
    write(REGISTER_TIMER_INITIAL, ticks);
}

/// Stops the timer (tickless idle: no interrupt when there is nothing to preempt).
pub fn cancel_timer() {
    write(REGISTER_TIMER_INITIAL, 0);
    write(REGISTER_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
}

/// Acknowledges the interrupt being handled.
pub fn end_of_interrupt() {
    write(REGISTER_END_OF_INTERRUPT, 0);
}

/// Delivery modes of the interrupt command register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiKind {
    /// A fixed interrupt on `vector`.
    Fixed(u8),
    /// INIT (resets the target CPU into wait-for-SIPI).
    Init,
    /// Start-up IPI: the target starts in real mode at `page * 4096`.
    Startup(u8),
    /// A non-maskable interrupt (vector 2 on the target, taken even with interrupts
    /// masked): how a crashing CPU stops the others.
    Nmi,
}

/// Sends an inter-processor interrupt to the CPU with local APIC id `apic_id`.
pub fn send_ipi(apic_id: u32, kind: IpiKind) {
    let low = match kind {
        IpiKind::Fixed(vector) => u32::from(vector),
        // Level assert (bit 14), delivery mode INIT (0b101 << 8).
        IpiKind::Init => (0b101 << 8) | (1 << 14),
        // Level assert, delivery mode start-up (0b110 << 8), vector = start page.
        IpiKind::Startup(page) => (0b110 << 8) | (1 << 14) | u32::from(page),
        // Delivery mode NMI (0b100 << 8); the vector field is ignored.
        IpiKind::Nmi => 0b100 << 8,
    };
    match MODE.load(Ordering::Relaxed) {
        2 => {
            // A WRMSR to an x2APIC register is not serializing (Intel SDM vol. 3A, x2APIC
            // chapter, "MSR Access in x2APIC Mode"): the IPI may be sent before this
            // CPU's earlier stores are globally visible, so the receiver could miss what
            // the IPI announces (a wake-up queue push, an AP's stack top). MFENCE makes
            // the stores visible but orders only loads and stores, which WRMSR is not;
            // LFENCE keeps the WRMSR from executing before the MFENCE completes. Linux
            // does the same before its x2APIC ICR writes (`weak_wrmsr_fence`,
            // arch/x86/include/asm/barrier.h, later processor.h, where it is skipped on
            // CPUs flagged as not needing it). The xAPIC path needs no fence: its ICR
            // write is a store to uncached memory, which x86 orders after earlier stores.
            // SAFETY: MFENCE and LFENCE exist on every x86-64 CPU and only order memory
            // accesses and execution; no `nomem`, so the compiler keeps earlier stores
            // before them too.
            unsafe { core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags)) };
            // SAFETY: x2APIC mode: the ICR is one 64-bit MSR (0x830), destination in
            // the high half; writing it sends the IPI.
            unsafe { Msr::new(0x830).write((u64::from(apic_id) << 32) | u64::from(low)) };
        }
        1 => {
            // Wait until the previous IPI was accepted (delivery status, bit 12).
            for _ in 0..1_000_000 {
                if read(REGISTER_INTERRUPT_COMMAND_LOW) & (1 << 12) == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            write(REGISTER_INTERRUPT_COMMAND_HIGH, apic_id << 24);
            write(REGISTER_INTERRUPT_COMMAND_LOW, low);
        }
        _ => {}
    }
}

/// This CPU's local APIC id.
pub fn current_id() -> u32 {
    let id = read(REGISTER_ID);
    if MODE.load(Ordering::Relaxed) == 2 {
        id
    } else {
        id >> 24
    }
}

/// Enables the local APIC of an application processor (the boot CPU's [`init`] already
/// chose the mode and calibrated the timer, which runs at the same rate on every CPU).
pub fn init_application_processor() {
    let mut base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: as in `init`: enable this CPU's APIC (x2APIC mode if the boot CPU chose it).
    unsafe {
        let mut value = base_msr.read() | APIC_BASE_ENABLE;
        if MODE.load(Ordering::Relaxed) == 2 {
            value |= APIC_BASE_X2APIC;
        }
        base_msr.write(value);
    }
    write(REGISTER_TASK_PRIORITY, 0);
    write(REGISTER_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REGISTER_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REGISTER_TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
}
