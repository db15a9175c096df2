//! CPU features, extended state (SSE/AVX) and leaving the machine.

use raw_cpuid::CpuId;
use x86_64::instructions::port::Port;
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::xcontrol::{XCr0, XCr0Flags};

/// Port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How the guest ends. QEMU exits with status `(code << 1) | 1`, so
/// [`ExitCode::Success`] becomes 33 and [`ExitCode::Failure`] 35; `cargo xtask` maps
/// them back to 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// The application or test suite finished successfully.
    Success = 0x10,
    /// A test failed, or the kernel crashed.
    Failure = 0x11,
}

/// Ends the virtual machine with `code`. Tries `isa-debug-exit`, then q35's ACPI
/// power-off port, then halts forever with interrupts off.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: writing to the debug-exit port ends QEMU; without the device the write is
    // ignored.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32) };
    // SAFETY: QEMU q35's ACPI PM1a control block is at 0x604; writing SLP_EN with
    // sleep type 0 powers the machine off. Elsewhere the port is unused.
    unsafe { Port::<u16>::new(0x604).write(0x2000) };
    halt_forever()
}

/// Halts with interrupts disabled; never returns.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// The extended-state features the kernel switched on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtendedState {
    /// AVX state is enabled in XCR0 (CPU supports XSAVE and AVX).
    pub avx: bool,
}

/// Enables AVX where CPUID reports XSAVE and AVX. SSE was enabled by the boot code
/// before any compiled code ran.
pub fn enable_extended_state() -> ExtendedState {
    let cpuid = CpuId::new();
    let Some(features) = cpuid.get_feature_info() else {
        return ExtendedState::default();
    };
    if !(features.has_xsave() && features.has_avx()) {
        return ExtendedState::default();
    }
    // SAFETY: CPUID reports XSAVE, so CR4.OSXSAVE may be set; then XCR0 may enable the
    // x87, SSE and AVX components that CPUID reports. Kernel code is compiled for the
    // baseline target and never touches YMM registers' upper halves.
    unsafe {
        Cr4::update(|flags| flags.insert(Cr4Flags::OSXSAVE));
        XCr0::write(XCr0Flags::X87 | XCr0Flags::SSE | XCr0Flags::AVX);
    }
    ExtendedState { avx: true }
}

/// The CPU's brand string, or its vendor when there is none.
pub fn brand(buffer: &mut [u8; 48]) -> &str {
    let cpuid = CpuId::new();
    if let Some(brand) = cpuid.get_processor_brand_string() {
        let text = brand.as_str().trim();
        let len = text.len().min(buffer.len());
        buffer[..len].copy_from_slice(&text.as_bytes()[..len]);
        return core::str::from_utf8(&buffer[..len]).unwrap_or("unknown");
    }
    "unknown x86-64"
}
