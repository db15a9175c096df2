//! CPU features, extended state (SSE/AVX) and leaving the machine.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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

/// How the interrupt entry stubs ([`crate::boot`]) save and restore the interrupted
/// code's x87/SSE/AVX state, in a 64-byte aligned area below the trap frame.
///
/// The state is saved eagerly, on every interrupt and exception, because a handler may
/// switch threads (the timer's enters the scheduler), and the preempted thread's state
/// then lives in that area on its own stack until it is resumed. Voluntary switches
/// (`keel-sched`'s `switch_context`, a function call) need not save vector registers:
/// the SysV ABI makes all of them (XMM, YMM, x87 stack) caller-saved, so the compiler
/// has already spilled what it needs around the call; the callee-saved control state
/// (MXCSR's control bits and the x87 control word) is saved by that switch itself.
///
/// XSAVEOPT is deliberately not used: its modified optimization may skip a component
/// that was not modified since the last XRSTOR *from the same linear address* (SDM
/// vol. 1, 13.9), but these areas are on stacks that other code reuses between the
/// restore and the next save at the same address, so a skipped component would leave
/// stale bytes in the area. XSAVEC uses only the init optimization, never the modified
/// one (SDM vol. 1, 13.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StateSave {
    /// FXSAVE64/FXRSTOR64: x87 and SSE only (CPUs without XSAVE or AVX).
    Fxsave = 0,
    /// XSAVE64/XRSTOR64 in the standard format: every component XCR0 enables.
    Xsave = 1,
    /// XSAVEC64 (compacted format, init optimization) and the compacted form of
    /// XRSTOR64: every component XCR0 enables.
    Xsavec = 2,
}

/// The [`StateSave`] the entry stubs use, read by them on every entry (and latched for
/// the matching restore, so a change never mixes formats within one entry).
pub static STATE_SAVE_MODE: AtomicU32 = AtomicU32::new(StateSave::Fxsave as u32);
/// Bytes the entry stubs reserve for the save area (before aligning down to 64): large
/// enough for every mode this CPU supports. Written once, on the boot CPU, before the
/// IDT is loaded.
pub static STATE_SAVE_BYTES: AtomicU64 = AtomicU64::new(512);
/// Set by the first [`enable_extended_state`] (the boot CPU's), which chooses the mode.
static MODE_CHOSEN: AtomicBool = AtomicBool::new(false);
/// Modes this CPU supports, a bit per [`StateSave`] value.
static SUPPORTED_MODES: AtomicU32 = AtomicU32::new(1 << StateSave::Fxsave as u32);

/// The extended-state features the kernel switched on.
#[derive(Debug, Clone, Copy)]
pub struct ExtendedState {
    /// AVX state is enabled in XCR0 (CPU supports XSAVE and AVX).
    pub avx: bool,
    /// The value written to XCR0 (0 when XSAVE is not used).
    pub xcr0: u64,
    /// How interrupt entry saves the extended state.
    pub save: StateSave,
    /// Bytes of the save area the entry stubs reserve.
    pub save_area_bytes: u64,
    /// Standard-format XSAVE area size for `xcr0` (CPUID 0xD.0 EBX), or 0.
    pub xsave_standard_bytes: u64,
    /// Compacted-format XSAVE area size for `xcr0` (from CPUID 0xD.i), or 0.
    pub xsave_compacted_bytes: u64,
    /// CPUID 0xD.1 EAX: XSAVEOPT (bit 0), XSAVEC (1), XGETBV1 (2), XSAVES (3).
    pub xsave_features: u32,
}

impl Default for ExtendedState {
    fn default() -> Self {
        Self {
            avx: false,
            xcr0: 0,
            save: StateSave::Fxsave,
            save_area_bytes: 512,
            xsave_standard_bytes: 0,
            xsave_compacted_bytes: 0,
            xsave_features: 0,
        }
    }
}

/// Size of the compacted XSAVE area holding the components in `xcr0` (SDM vol. 1,
/// 13.4.3: the legacy region and header, then each enabled component i >= 2 in order,
/// 64-byte aligned when CPUID 0xD.i ECX bit 1 says so).
fn compacted_size(xcr0: u64) -> u64 {
    let mut size = 576u64;
    for component in 2..63 {
        if xcr0 & (1 << component) != 0 {
            let leaf = core::arch::x86_64::__cpuid_count(0xd, component);
            if leaf.ecx & 2 != 0 {
                size = size.next_multiple_of(64);
            }
            size += u64::from(leaf.eax);
        }
    }
    size
}

/// Enables AVX where CPUID reports XSAVE and AVX, and chooses how interrupt entry saves
/// the extended state ([`StateSave`]): XSAVEC where CPUID offers it, else XSAVE, else
/// FXSAVE (when AVX stays off, FXSAVE covers all the state there is). SSE was enabled by
/// the boot code before any compiled code ran.
///
/// Every CPU calls this before it loads the IDT (the stubs execute XSAVE, which faults
/// without CR4.OSXSAVE). The boot CPU calls it first, before any interrupt can arrive,
/// and its choice stands: the application processors are the same model and make the
/// same one.
pub fn enable_extended_state() -> ExtendedState {
    let cpuid = CpuId::new();
    let Some(features) = cpuid.get_feature_info() else {
        return ExtendedState::default();
    };
    if !(features.has_xsave() && features.has_avx()) {
        return ExtendedState::default();
    }
    let xcr0 = XCr0Flags::X87 | XCr0Flags::SSE | XCr0Flags::AVX;
    // SAFETY: CPUID reports XSAVE, so CR4.OSXSAVE may be set; then XCR0 may enable the
    // x87, SSE and AVX components that CPUID reports. The interrupt entry stubs save and
    // restore every component XCR0 enables (the mode chosen below), so interrupted
    // code's YMM registers survive a thread switch in a handler; kernel code is compiled
    // for the baseline target and never touches the YMM registers' upper halves itself.
    unsafe {
        Cr4::update(|flags| flags.insert(Cr4Flags::OSXSAVE));
        XCr0::write(xcr0);
    }
    let xcr0 = xcr0.bits();
    // CPUID 0xD.0 EBX: the standard-format size for the components now in XCR0.
    let standard = u64::from(core::arch::x86_64::__cpuid_count(0xd, 0).ebx);
    let xsave_features = core::arch::x86_64::__cpuid_count(0xd, 1).eax;
    let has_xsavec = xsave_features & 2 != 0;
    let compacted = if has_xsavec { compacted_size(xcr0) } else { 0 };
    let save = if has_xsavec {
        StateSave::Xsavec
    } else {
        StateSave::Xsave
    };
    let bytes = standard.max(compacted).max(512);
    // The first caller is the boot CPU (see above).
    if !MODE_CHOSEN.swap(true, Ordering::Relaxed) {
        let mut modes = 1 << StateSave::Fxsave as u32 | 1 << StateSave::Xsave as u32;
        if has_xsavec {
            modes |= 1 << StateSave::Xsavec as u32;
        }
        SUPPORTED_MODES.store(modes, Ordering::Relaxed);
        STATE_SAVE_BYTES.store(bytes, Ordering::Relaxed);
        STATE_SAVE_MODE.store(save as u32, Ordering::Release);
    }
    ExtendedState {
        avx: true,
        xcr0,
        save,
        save_area_bytes: bytes,
        xsave_standard_bytes: standard,
        xsave_compacted_bytes: compacted,
        xsave_features,
    }
}

/// The [`StateSave`] the entry stubs use now.
pub fn state_save() -> StateSave {
    match STATE_SAVE_MODE.load(Ordering::Relaxed) {
        1 => StateSave::Xsave,
        2 => StateSave::Xsavec,
        _ => StateSave::Fxsave,
    }
}

/// Switches the entry stubs to `mode`, for measurements and tests; returns false (and
/// changes nothing) when this CPU lacks it. Each entry latches the mode it saved with
/// for its restore, so frames saved before the switch are restored correctly.
///
/// [`StateSave::Fxsave`] on a CPU with AVX enabled loses YMM upper halves across thread
/// switches in interrupt handlers again: only for measuring while no thread uses AVX.
pub fn set_state_save(mode: StateSave) -> bool {
    if SUPPORTED_MODES.load(Ordering::Relaxed) & (1 << mode as u32) == 0 {
        return false;
    }
    STATE_SAVE_MODE.store(mode as u32, Ordering::Release);
    true
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
