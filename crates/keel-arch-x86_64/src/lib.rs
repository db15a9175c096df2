//! Keel's x86-64 architecture crate: everything that touches the hardware.
//!
//! The PVH entry ([`boot`]) takes the CPU from QEMU's 32-bit hand-off to long mode with
//! SSE enabled and calls [`boot_entry_64`], which brings up, in order: the serial
//! console and the `log` backend ([`serial`], [`logger`]), AVX where present ([`cpu`]),
//! the GDT/TSS with an IST stack for every vector ([`gdt`]), the IDT and trap dispatch
//! with crash reports and symbolized backtraces ([`interrupts`], [`backtrace`]), the
//! start-info structure ([`bootinfo`]), the TSC clock ([`time`]), the real page tables
//! ([`paging`], whose reducing changes reach every CPU through the TLB shootdown in
//! [`tlb`]) and the local APIC with its one-shot timer ([`apic`]). It then hands an
//! [`ArchInfo`] to the kernel binary's `keel_kernel_main`.
//!
//! This crate is where Keel's `unsafe` lives, in small modules; every block states what
//! it relies on. The pure parts live in their own crates and are unit-tested on the host
//! (the start-info parser in `keel-bootinfo`, the symbol table in `keel-ksyms`). This
//! crate's own encodings (IDT gates, the early AP gates, the TSS and its descriptor, the
//! page-table entries and 2 MiB/4 KiB mapping steps, log levels) are unit-tested on the
//! host too (`cargo test -p keel-arch-x86_64`); for that, the boot and AP-trampoline
//! assembly, whose 32-bit absolute relocations cannot link into a position-independent
//! test executable, is left out under `cfg(test)`. The hardware paths themselves run in
//! the in-guest test kernel and the crash tests (`cargo xtask test`).
#![no_std]
// The fence: `unsafe` only in the hardware modules and the boot items below, each
// allowed by name.
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub use keel_bootinfo as bootinfo;

#[allow(unsafe_code)]
pub mod apic;
#[allow(unsafe_code)]
pub mod backtrace;
#[allow(unsafe_code)]
pub mod boot;
#[allow(unsafe_code)]
pub mod cpu;
#[allow(unsafe_code)]
pub mod gdt;
#[allow(unsafe_code)]
pub mod interrupts;
#[allow(unsafe_code)]
pub mod ioapic;
pub mod irq;
pub mod logger;
#[allow(unsafe_code)]
pub mod paging;
#[allow(unsafe_code)]
pub mod pci;
#[allow(unsafe_code)]
pub mod percpu;
#[allow(unsafe_code)]
pub mod platform;
#[allow(unsafe_code)]
pub mod serial;
#[allow(unsafe_code)]
pub mod smp;
#[allow(unsafe_code)]
pub mod steal_time;
#[allow(unsafe_code)]
pub mod time;
pub mod tlb;
#[allow(unsafe_code)]
pub mod virtio_mmio;
#[allow(unsafe_code)]
pub mod virtio_pci;

use bootinfo::{BootInfo, BootInfoError, PhysicalMemory};
use core::fmt::Write;
use cpu::ExitCode;

/// Everything the architecture layer found and set up, handed to the kernel.
#[derive(Debug)]
pub struct ArchInfo {
    /// The start-info structure, copied.
    pub boot: BootInfo,
    /// TSC calibration.
    pub tsc: time::TscCalibration,
    /// Extended-state features enabled.
    pub extended_state: cpu::ExtendedState,
    /// The page tables built.
    pub paging: paging::PagingReport,
    /// The local APIC.
    pub apic: apic::ApicInfo,
    /// CPUs and I/O APIC from the ACPI MADT, or why they could not be read.
    pub platform: Result<platform::Platform, platform::PlatformError>,
    /// The kernel image layout.
    pub layout: paging::KernelLayout,
    /// TSC at the PVH entry.
    pub tsc_at_entry: u64,
    /// TSC when each boot phase ended, to show where boot time goes.
    pub phases: BootPhases,
}

/// TSC values at the end of each boot phase of the architecture layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootPhases {
    /// Console, CPU state, GDT/IDT and start info ready.
    pub early: u64,
    /// TSC calibrated.
    pub tsc_calibrated: u64,
    /// Page tables built and active.
    pub paging: u64,
    /// Local APIC enabled and its timer calibrated.
    pub apic: u64,
}

#[allow(unsafe_code)]
unsafe extern "Rust" {
    /// The kernel binary's main function.
    fn keel_kernel_main(info: &'static ArchInfo) -> !;
}

/// Identity-mapped memory below 4 GiB, as set up by the boot code.
struct BootIdentityMap;

// Reads physical memory through the boot identity map: one `unsafe` copy.
#[allow(unsafe_code)]
impl PhysicalMemory for BootIdentityMap {
    fn read(&self, physical: bootinfo::PhysAddr, out: &mut [u8]) -> Result<(), BootInfoError> {
        let address = physical.as_u64();
        let end = address.checked_add(out.len() as u64);
        // A null pointer is refused; above 4 GiB is not mapped by the boot tables. (The
        // loader may put the start info and memory map in page 0, which the boot tables
        // map; the final tables do not.)
        if address == 0 || end.is_none_or(|end| end > 1 << 32) {
            return Err(BootInfoError::Unreadable {
                address: physical,
                len: out.len(),
            });
        }
        // SAFETY: the range lies inside the first 4 GiB, which the boot tables
        // identity-map; reading it (even MMIO holes, which read as all-ones in QEMU)
        // does not alias any Rust object that is being mutated.
        unsafe {
            core::ptr::copy_nonoverlapping(address as *const u8, out.as_mut_ptr(), out.len())
        };
        Ok(())
    }
}

fn boot_failure(what: &str, error: &dyn core::fmt::Display) -> ! {
    let mut out = serial::emergency_writer();
    let _ = writeln!(out, "KEEL FATAL: {what}: {error}");
    cpu::exit(ExitCode::Failure)
}

struct ArchInfoCell(core::cell::UnsafeCell<core::mem::MaybeUninit<ArchInfo>>);

// SAFETY: written once by `boot_entry_64` on the boot CPU before any reader exists;
// read-only afterwards.
#[allow(unsafe_code)]
unsafe impl Sync for ArchInfoCell {}

static ARCH_INFO: ArchInfoCell =
    ArchInfoCell(core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()));

/// The Rust side of the PVH entry, called by [`boot`] on the boot stack.
///
/// # Safety
/// Only the boot code calls this, once, with the start-info address from `ebx`.
#[allow(unsafe_code)]
pub unsafe extern "C" fn boot_entry_64(start_info: u32) -> ! {
    percpu::init_this_cpu(0, 0);
    serial::init();
    logger::init(log::LevelFilter::Info);
    let extended_state = cpu::enable_extended_state();
    // SAFETY: boot CPU, interrupts disabled, first and only call.
    unsafe {
        gdt::init();
        interrupts::init();
    }
    tlb::init();
    let boot = match BootInfo::parse(
        &BootIdentityMap,
        bootinfo::PhysAddr::new(u64::from(start_info)),
    ) {
        Ok(boot) => boot,
        Err(error) => boot_failure("bad PVH start info", &error),
    };
    // A bad value is reported (and fails the boot) by the kernel's own command-line
    // check; until then, info.
    if let Some(level) = boot.command_line_value("log").and_then(logger::parse_level) {
        log::set_max_level(level);
    }
    let mut phases = BootPhases {
        early: time::read_tsc(),
        ..BootPhases::default()
    };
    let tsc = time::calibrate();
    phases.tsc_calibrated = time::read_tsc();
    let apic_base = apic::mmio_base_from_msr();
    // SAFETY: boot CPU, interrupts disabled, boot identity map active, first call.
    let paging = match unsafe { paging::init(&boot, apic_base) } {
        Ok(report) => report,
        Err(error) => boot_failure("cannot build page tables", &error),
    };
    phases.paging = time::read_tsc();
    let apic = apic::init();
    percpu::init_this_cpu(0, apic.id);
    percpu::mark_online();
    phases.apic = time::read_tsc();
    let platform = platform::discover(boot.rsdp);
    let info = ArchInfo {
        boot,
        tsc,
        extended_state,
        paging,
        apic,
        platform,
        layout: paging::KernelLayout::current(),
        // SAFETY: written by the boot code before any Rust code ran.
        tsc_at_entry: unsafe { core::ptr::read_volatile(&raw const boot::keel_boot_tsc_at_entry) },
        phases,
    };
    // SAFETY: single writer, before any reader; the reference handed out is shared.
    let info: &'static ArchInfo = unsafe { (*ARCH_INFO.0.get()).write(info) };
    // SAFETY: the kernel binary defines `keel_kernel_main` with this signature.
    unsafe { keel_kernel_main(info) }
}
