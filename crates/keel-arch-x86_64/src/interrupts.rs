//! The IDT, the trap frame and trap dispatch.
//!
//! All 256 vectors enter through the assembly stubs in [`crate::boot`], which save the
//! general registers and the extended state (x87/SSE/AVX, see [`crate::cpu::StateSave`])
//! and call [`keel_arch_trap`] with a [`TrapFrame`]. CPU exceptions are fatal, except the breakpoint (`int3`), which is
//! counted and resumed. Vectors 32..=255 go to handlers registered with
//! [`set_interrupt_handler`]; an unexpected interrupt (no handler) is counted and
//! acknowledged, and logged the first time on its vector and every
//! [`UNEXPECTED_LOG_EVERY`]th time after (rate-limited, so a stuck source cannot flood
//! the console).
//!
//! A fatal exception prints the vector, error code, the CPU, RIP, CR2, every register
//! and a symbolized backtrace, then ends the VM with [`ExitCode::Failure`].
//!
//! Crashes on several CPUs: every crash path (a fatal exception here, a panic in the
//! kernel binary) first calls [`begin_crash`]. The first CPU to get there owns the
//! console: it stops every other online CPU with an NMI (taken even where interrupts
//! are masked; the NMI handler halts for good when a crash is under way), waits a
//! bounded time for them to halt, prints its whole report and exits. A CPU that
//! crashes after it halts without printing; only a second crash on the owning CPU
//! itself (a fault inside its own report) is "nested", and ends the VM at once.

use crate::cpu::{self, ExitCode};
use crate::gdt::IstSlot;
use crate::{apic, backtrace, serial};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, Segment};
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;

/// What the entry stubs push, lowest address first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    /// The vector number pushed by the stub.
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Names of the architectural exception vectors.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range exceeded (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack-segment fault (#SS)",
        13 => "general protection fault (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating-point error (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating-point error (#XM)",
        20 => "virtualization exception (#VE)",
        21 => "control protection (#CP)",
        _ if vector < 32 => "reserved exception",
        _ => "interrupt",
    }
}

/// An interrupt handler for vectors 32..=255. It runs with interrupts disabled, on the
/// interrupted thread's stack (below its red zone), after the local APIC has been
/// acknowledged; it may switch threads.
pub type InterruptHandler = fn(&mut TrapFrame);

struct HandlerTable {
    handlers: [AtomicUsize; 256],
}

static HANDLERS: HandlerTable = HandlerTable {
    handlers: [const { AtomicUsize::new(0) }; 256],
};

/// The handler installed for `vector`, if any.
pub fn interrupt_handler(vector: u8) -> Option<InterruptHandler> {
    let handler = HANDLERS.handlers[vector as usize].load(Ordering::Acquire);
    // SAFETY: only `set_interrupt_handler` stores non-zero values, and it stores valid
    // `InterruptHandler` function pointers.
    (handler != 0).then(|| unsafe { core::mem::transmute::<usize, InterruptHandler>(handler) })
}

/// Installs `handler` for `vector` (32..=255). Returns false for exception vectors.
pub fn set_interrupt_handler(vector: u8, handler: InterruptHandler) -> bool {
    if vector < 32 {
        return false;
    }
    HANDLERS.handlers[vector as usize].store(handler as usize, Ordering::Release);
    true
}

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
static UNEXPECTED_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// No CPU has crashed.
const NO_CRASH: usize = usize::MAX;
/// The index of the first CPU that crashed, which owns the console, or [`NO_CRASH`].
static CRASH_OWNER: AtomicUsize = AtomicUsize::new(NO_CRASH);
/// Per CPU: halted because another CPU crashed.
static STOPPED: [AtomicBool; crate::percpu::MAX_CPUS] =
    [const { AtomicBool::new(false) }; crate::percpu::MAX_CPUS];
static STOPPED_COUNT: AtomicUsize = AtomicUsize::new(0);
/// How long the crashing CPU waits for the others to halt before it prints anyway.
const STOP_WAIT_NANOS: u64 = 200_000_000;

/// Halts this CPU for good because another CPU is reporting a crash.
fn stop_for_crash() -> ! {
    x86_64::instructions::interrupts::disable();
    let index = crate::percpu::current_index();
    if let Some(stopped) = STOPPED.get(index)
        && !stopped.swap(true, Ordering::AcqRel)
    {
        STOPPED_COUNT.fetch_add(1, Ordering::AcqRel);
    }
    cpu::halt_forever()
}

/// Enters a crash report on this CPU; every crash path calls it before printing
/// anything. Returns true for the first crash of the VM: this CPU now owns the
/// console, and every other online CPU was sent an NMI that halts it (waited for, up to
/// a fifth of a second, so that nothing they print lands inside the report). Returns
/// false for a second crash on the CPU that owns the console (a crash inside its own
/// report): the caller prints one line and exits. Never returns on any other CPU: a
/// crash there while another CPU reports halts it silently.
pub fn begin_crash() -> bool {
    x86_64::instructions::interrupts::disable();
    let me = crate::percpu::current_index();
    match CRASH_OWNER.compare_exchange(NO_CRASH, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(owner) if owner == me => return false,
        Err(_) => stop_for_crash(),
    }
    let mut targets = 0;
    for index in (0..crate::percpu::MAX_CPUS).filter(|&index| index != me) {
        let Some(record) = crate::percpu::get(index) else {
            continue;
        };
        if record.online.load(Ordering::Acquire) {
            apic::send_ipi(record.apic_id.load(Ordering::Relaxed), apic::IpiKind::Nmi);
            targets += 1;
        }
    }
    if targets > 0 {
        let end = crate::time::now() + core::time::Duration::from_nanos(STOP_WAIT_NANOS);
        while STOPPED_COUNT.load(Ordering::Acquire) < targets && crate::time::now() < end {
            core::hint::spin_loop();
        }
    }
    true
}

/// The NMI: another CPU's crash stopping this one (see [`begin_crash`]), or else an
/// unexpected NMI, which is fatal.
fn non_maskable_interrupt(frame: &TrapFrame) -> ! {
    let owner = CRASH_OWNER.load(Ordering::Acquire);
    if owner != NO_CRASH && owner != crate::percpu::current_index() {
        stop_for_crash();
    }
    fatal_exception(frame)
}

/// Number of `int3` breakpoints taken and resumed so far.
pub fn breakpoint_count() -> u64 {
    BREAKPOINTS.load(Ordering::Relaxed)
}

/// Number of interrupts that arrived on a vector without a handler.
pub fn unexpected_interrupt_count() -> u64 {
    UNEXPECTED_INTERRUPTS.load(Ordering::Relaxed)
}

/// After the first, every how many unexpected interrupts on one vector are logged.
pub const UNEXPECTED_LOG_EVERY: u64 = 1000;
/// Unexpected interrupts per vector.
static UNEXPECTED_BY_VECTOR: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Log lines written about unexpected interrupts, per vector (a test hook).
static LOGGED_BY_VECTOR: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
static LOGGED: AtomicU64 = AtomicU64::new(0);

/// Number of log lines written about unexpected interrupts (a test hook).
pub fn unexpected_interrupts_logged() -> u64 {
    LOGGED.load(Ordering::Relaxed)
}

/// Number of log lines written about unexpected interrupts on `vector` (a test hook).
pub fn unexpected_interrupts_logged_on(vector: u8) -> u64 {
    LOGGED_BY_VECTOR[usize::from(vector)].load(Ordering::Relaxed)
}

/// One 64-bit IDT gate (SDM vol. 3, 6.14.1), encoded here rather than through the
/// x86_64 crate's `InterruptDescriptorTable`, whose API cannot fill the reserved vectors
/// (15, 22..=27, 31): every vector gets a gate, so a stray `int n` or a future exception
/// is reported as itself instead of as a segment-not-present fault.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    /// IST index (bits 0..=2), type (8..=11), DPL (13..=14), present (15).
    options: u16,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        options: 0,
        offset_middle: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present 64-bit interrupt gate (interrupts disabled on entry, DPL 0) to `handler`
    /// in code segment `selector`, on IST stack `slot`.
    fn interrupt(handler: u64, selector: u16, slot: IstSlot) -> Self {
        const PRESENT: u16 = 1 << 15;
        const INTERRUPT_GATE: u16 = 0xe << 8;
        Self {
            offset_low: handler as u16,
            selector,
            // The TSS numbers IST slots from 1; 0 would mean "no stack switch".
            options: PRESENT | INTERRUPT_GATE | (slot as u16 + 1),
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written once by `init` on the boot CPU before it is loaded; read-only after.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

fn stub_address(vector: u8) -> VirtAddr {
    let base = (&raw const crate::boot::keel_isr_stubs) as u64;
    VirtAddr::new(base + u64::from(vector) * crate::boot::ISR_STUB_SPACING)
}

/// The IST stack `vector` runs on.
fn ist_slot(vector: u8) -> IstSlot {
    match vector {
        2 => IstSlot::Nmi,
        8 => IstSlot::DoubleFault,
        18 => IstSlot::MachineCheck,
        0..=31 => IstSlot::Exceptions,
        _ => IstSlot::Interrupts,
    }
}

fn load_idt() {
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: VirtAddr::from_ptr(IDT.0.get()),
    };
    // SAFETY: the IDT is a static holding 256 valid gates (filled by `init` before the
    // first load, never written again), each pointing at its entry stub in the kernel
    // code segment with an IST slot that the CPU's TSS provides.
    unsafe { lidt(&pointer) };
}

/// Fills and loads the IDT: all 256 vectors, exceptions and reserved ones included,
/// point at their stubs and switch to an IST stack.
///
/// # Safety
/// Call once, on the boot CPU, with interrupts disabled, after [`crate::gdt::init`].
pub unsafe fn init() {
    let selector = CS::get_reg().0;
    // SAFETY: per the contract nothing else accesses the IDT yet (not loaded anywhere).
    let gates = unsafe { &mut *IDT.0.get() };
    for (vector, gate) in (0..=255u8).zip(gates.iter_mut()) {
        *gate = Gate::interrupt(stub_address(vector).as_u64(), selector, ist_slot(vector));
    }
    load_idt();
}

/// The common trap handler, called by the assembly stubs.
///
/// # Safety
/// Only the entry stubs call this, with a pointer to the frame they pushed.
pub unsafe extern "C" fn keel_arch_trap(frame: *mut TrapFrame) {
    // SAFETY: the stub passes its own stack frame, valid for the whole call.
    let frame = unsafe { &mut *frame };
    match frame.vector {
        3 => {
            BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        }
        vector @ 32..=255 => {
            // Acknowledge first: the handler may switch threads and return much later.
            // Interrupts stay disabled until the handler returns (or the thread it
            // switches to enables them), so acknowledging early cannot nest them.
            if vector != u64::from(apic::SPURIOUS_VECTOR) {
                apic::end_of_interrupt();
            }
            let handler = HANDLERS.handlers[vector as usize].load(Ordering::Acquire);
            if handler == 0 {
                UNEXPECTED_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
                let seen =
                    UNEXPECTED_BY_VECTOR[vector as usize].fetch_add(1, Ordering::Relaxed) + 1;
                if seen == 1 || seen.is_multiple_of(UNEXPECTED_LOG_EVERY) {
                    LOGGED_BY_VECTOR[vector as usize].fetch_add(1, Ordering::Relaxed);
                    LOGGED.fetch_add(1, Ordering::Relaxed);
                    // Interrupts are disabled here, and every holder of the console
                    // lock disables them too, so this cannot deadlock against the code
                    // it interrupted.
                    log::warn!(
                        "unexpected interrupt on vector {vector:#x} (no handler; {seen} on \
                         this vector so far, logging the first and every \
                         {UNEXPECTED_LOG_EVERY}th)"
                    );
                }
            } else {
                // SAFETY: only `set_interrupt_handler` stores non-zero values, and it
                // stores valid `InterruptHandler` function pointers.
                let handler: InterruptHandler = unsafe { core::mem::transmute(handler) };
                handler(frame);
            }
        }
        2 => non_maskable_interrupt(frame),
        _ => fatal_exception(frame),
    }
}

fn fatal_exception(frame: &TrapFrame) -> ! {
    let mut out = serial::emergency_writer();
    if !begin_crash() {
        let _ = writeln!(
            out,
            "\nKEEL FATAL: nested {} at rip={:#x} while reporting a crash",
            exception_name(frame.vector),
            frame.rip
        );
        cpu::exit(ExitCode::Failure);
    }
    let _ = writeln!(
        out,
        "\nKEEL FATAL: CPU exception {} {} (error code {:#x}) on CPU {}",
        frame.vector,
        exception_name(frame.vector),
        frame.error_code,
        crate::percpu::current_index()
    );
    if frame.vector == 14 {
        let address = Cr2::read_raw();
        let code = frame.error_code;
        let _ = writeln!(
            out,
            "  page fault at cr2={address:#018x}: {} {} access{}{}{}",
            if code & 1 != 0 {
                "protection violation on a"
            } else {
                "non-present page on a"
            },
            if code & 16 != 0 {
                "instruction fetch"
            } else if code & 2 != 0 {
                "write"
            } else {
                "read"
            },
            if code & 4 != 0 { ", user mode" } else { "" },
            if code & 8 != 0 {
                ", reserved bit set"
            } else {
                ""
            },
            if code & 1 == 0 && is_stack_guard(keel_types::VirtAddr::new(address)) {
                " (guard page: stack overflow)"
            } else {
                ""
            },
        );
    }
    let _ = writeln!(
        out,
        "  rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x} cr2={:#018x}",
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
        Cr2::read_raw()
    );
    let registers = [
        ("rax", frame.rax),
        ("rbx", frame.rbx),
        ("rcx", frame.rcx),
        ("rdx", frame.rdx),
        ("rsi", frame.rsi),
        ("rdi", frame.rdi),
        ("rbp", frame.rbp),
        ("r8", frame.r8),
        ("r9", frame.r9),
        ("r10", frame.r10),
        ("r11", frame.r11),
        ("r12", frame.r12),
        ("r13", frame.r13),
        ("r14", frame.r14),
        ("r15", frame.r15),
    ];
    for row in registers.chunks(3) {
        let _ = write!(out, " ");
        for (name, value) in row {
            let _ = write!(out, " {name:>3}={value:#018x}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "backtrace:");
    backtrace::write_backtrace(&mut out, frame.rip, frame.rbp);
    let _ = writeln!(out, "KEEL FATAL: halting with failure status");
    cpu::exit(ExitCode::Failure)
}

/// Whether a fault at `address` hit a stack's guard page, as the crash report names it:
/// the boot stack's or a boot-CPU IST stack's (static, with zero entries), or any page
/// made a guard with [`crate::paging::set_guard_page`] (every thread stack's and every
/// AP stack's and IST stack's guard). The fault address is what is compared, never the
/// frame's rsp: a fault in the entry stub has the IST stack's rsp.
pub fn is_stack_guard(address: keel_types::VirtAddr) -> bool {
    let page = address.align_down_to_page();
    let boot_guard = keel_types::VirtAddr::from_ptr(&raw const crate::boot::keel_boot_stack_guard);
    page == boot_guard
        || crate::gdt::ist_guard_pages().any(|guard| guard == page)
        || crate::paging::is_guard_page(address)
}

/// Loads the (already filled) IDT on an application processor.
///
/// # Safety
/// Call after [`init`] ran on the boot CPU.
pub unsafe fn load_on_application_processor() {
    load_idt();
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Gate {
        /// The gate as the CPU reads it: two little-endian quadwords.
        fn words(&self) -> [u64; 2] {
            [
                u64::from(self.offset_low)
                    | u64::from(self.selector) << 16
                    | u64::from(self.options) << 32
                    | u64::from(self.offset_middle) << 48,
                u64::from(self.offset_high) | u64::from(self.reserved) << 32,
            ]
        }
    }

    #[test]
    fn gate_layout_is_the_cpus() {
        assert_eq!(size_of::<Gate>(), 16);
        assert_eq!(size_of::<[Gate; 256]>(), 4096);
        assert_eq!(core::mem::offset_of!(Gate, options), 4);
        assert_eq!(core::mem::offset_of!(Gate, offset_high), 8);
        assert_eq!(Gate::MISSING.words(), [0, 0]);
    }

    #[test]
    fn interrupt_gate_encodes_offset_selector_type_and_ist() {
        let handler = 0xffff_8123_4567_89ab_u64;
        let gate = Gate::interrupt(handler, 0x08, IstSlot::Nmi);
        let [low, high] = gate.words();
        let offset = (low & 0xffff) | ((low >> 48) & 0xffff) << 16 | (high & 0xffff_ffff) << 32;
        assert_eq!(offset, handler);
        assert_eq!((low >> 16) & 0xffff, 0x08);
        // IST index: the slot plus one (Nmi is slot 2, so TSS IST3).
        assert_eq!((low >> 32) & 0x7, 3);
        // Present, DPL 0, type 0xE (64-bit interrupt gate: IF cleared on entry).
        assert_eq!((low >> 40) & 0xff, 0x8e);
        assert_eq!(high >> 32, 0);
    }

    #[test]
    fn interrupt_gate_agrees_with_the_early_ap_gate() {
        // Two independent encoders of the same gate: the AP's early IDT (IST1, code
        // selector 0x08) and the kernel's (IstSlot::Exceptions is TSS IST1).
        for handler in [0x10_0000u64, 0x12_3456, 0xdead_beef_0000_1000, u64::MAX] {
            assert_eq!(
                Gate::interrupt(handler, 0x08, IstSlot::Exceptions).words(),
                crate::smp::early_interrupt_gate(handler),
                "handler {handler:#x}"
            );
        }
    }

    #[test]
    fn every_vector_has_an_ist_slot_and_the_special_ones_their_own() {
        assert_eq!(ist_slot(2), IstSlot::Nmi);
        assert_eq!(ist_slot(8), IstSlot::DoubleFault);
        assert_eq!(ist_slot(18), IstSlot::MachineCheck);
        for vector in [0, 1, 3, 6, 13, 14, 15, 31] {
            assert_eq!(ist_slot(vector), IstSlot::Exceptions, "vector {vector}");
        }
        for vector in 32..=255 {
            assert_eq!(ist_slot(vector), IstSlot::Interrupts, "vector {vector}");
        }
        for vector in 0..=255 {
            assert!((ist_slot(vector) as usize) < crate::gdt::IST_COUNT);
        }
    }

    #[test]
    fn exception_names() {
        assert_eq!(exception_name(0), "divide error (#DE)");
        assert_eq!(exception_name(14), "page fault (#PF)");
        assert_eq!(exception_name(8), "double fault (#DF)");
        assert_eq!(exception_name(15), "reserved exception");
        assert_eq!(exception_name(31), "reserved exception");
        assert_eq!(exception_name(32), "interrupt");
        assert_eq!(exception_name(255), "interrupt");
    }
}
