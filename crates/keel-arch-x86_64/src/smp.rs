//! Starting the application processors: a real-mode trampoline, INIT-SIPI-SIPI, and the
//! long-mode entry of each AP.
//!
//! The boot CPU copies the trampoline to [`TRAMPOLINE_ADDRESS`] (below 1 MiB, as the
//! start-up IPI requires; the low megabyte is never given to the page allocator), writes
//! the AP's stack and index into [`keel_ap_stack_top`] / [`keel_ap_cpu_index`], and sends
//! INIT, then two start-up IPIs (Intel SDM, "MP initialization"). The AP goes from real
//! mode to protected mode on the trampoline's GDT, then to long mode on the boot code's
//! identity map (which has no no-execute bits, so the trampoline page may execute), and
//! jumps to `keel_ap_long_mode` in the kernel's text. That loads the boot CPU's page
//! tables ([`keel_ap_cr3`]) before it touches the stack, and calls the kernel's
//! `keel_kernel_ap_main` on the given stack. One AP starts at a time.
//!
//! The switch comes before the first stack access because the boot code's tables map
//! only the first 4 GiB: an AP stack above 4 GiB faulted on the `call` below, and with no
//! IDT on the AP yet that was a triple fault, a silent reset of the whole machine (issue
//! 11 item 6; reproduced with `--memory 6G` and `ktest.ap_stack_above_4g`). The kernel's
//! tables map all RAM, so the stack may be anywhere.
//!
//! A fault this early is reported, not a silent reset. Before anything else,
//! `keel_ap_long_mode` loads an early GDT, TSS and IDT, statics of this module that the
//! boot CPU fills in [`install_trampoline`]: every gate of the IDT (the 32 exception
//! vectors; interrupts stay masked) switches to a small static stack through IST1 of the
//! early TSS, so a fault is handled even when the AP's own stack is the problem. The
//! handler (`keel_ap_early_fault`, assembly, no Rust) writes
//! `KEEL FATAL: CPU exception during application processor start-up (vector N)` to COM1
//! and ends the VM with [`ExitCode::Failure`](crate::cpu::ExitCode::Failure), as
//! [`crate::cpu::exit`] does. These tables stay in use through the AP's first Rust code
//! until the kernel's own per-CPU GDT, TSS and IDT replace them
//! ([`crate::gdt::init_application_processor`],
//! [`crate::interrupts::load_on_application_processor`]); the gates' code selector 0x08
//! and IST1 stay valid across that switch. All APs share the early tables, which is
//! correct because they start one at a time and leave them before the next starts;
//! `ltr` marks the TSS descriptor busy, so each AP clears that bit before its `ltr`.
//! The crash case `ktest.crash=ap-early-fault` (kernel-bin) tests this.

use crate::apic::{self, IpiKind};
#[cfg(not(test))]
use crate::cpu::{DEBUG_EXIT_PORT, ExitCode};
use crate::time;
#[cfg(not(test))]
use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::VirtAddr;
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::Descriptor;
use x86_64::structures::tss::TaskStateSegment;

/// Physical address the trampoline is copied to (page 8, start-up vector 0x08).
pub const TRAMPOLINE_ADDRESS: u64 = 0x8000;

unsafe extern "C" {
    static keel_ap_trampoline_start: u8;
    static keel_ap_trampoline_end: u8;
    /// The first of the early fault stubs, one per exception vector, each
    /// [`EARLY_STUB_SIZE`] bytes.
    static keel_ap_early_fault_stubs: u8;
    /// The stack pointer the next AP starts with (written by the boot CPU).
    pub static mut keel_ap_stack_top: u64;
    /// The index of the next AP (written by the boot CPU).
    pub static mut keel_ap_cpu_index: u64;
    /// The page-table root the next AP loads before using its stack (the boot CPU's).
    pub static mut keel_ap_cr3: u64;
}

/// Set by an AP once it runs Rust code; cleared by the boot CPU before each start.
pub static AP_ALIVE: AtomicBool = AtomicBool::new(false);

/// Vectors the early IDT has gates for: the CPU exceptions (the AP runs with interrupts
/// masked until the kernel's own IDT is loaded).
const EARLY_VECTORS: usize = 32;
/// Bytes of each early fault stub (the assembly aligns each to 16 bytes).
const EARLY_STUB_SIZE: u64 = 16;
/// Bytes of the early fault stack (the handler uses only the CPU's frame and a few
/// return addresses).
const EARLY_STACK_SIZE: usize = 1024;
/// The early GDT's selectors; code and data match the trampoline's GDT.
const EARLY_CODE_SELECTOR: u16 = 0x08;
/// The early TSS's descriptor (GDT entries 3 and 4).
#[cfg(not(test))]
const EARLY_TSS_SELECTOR: u16 = 0x18;

/// A static that the boot CPU writes in [`install_trampoline`] and the APs only read
/// (through their descriptor-table registers) afterwards, apart from the early TSS
/// descriptor's busy bit, which each AP clears in assembly before its `ltr`.
#[repr(C, align(16))]
struct EarlyCell<T>(UnsafeCell<T>);

// SAFETY: written by the boot CPU before any AP starts, then used by one starting AP at
// a time (APs start one after another and leave the early tables before the next starts).
unsafe impl<T> Sync for EarlyCell<T> {}

/// Null, 64-bit code (0x08), data (0x10), the TSS (0x18, two entries).
static EARLY_GDT: EarlyCell<[u64; 5]> = EarlyCell(UnsafeCell::new([0; 5]));
static EARLY_GDTR: EarlyCell<DescriptorTablePointer> =
    EarlyCell(UnsafeCell::new(DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::zero(),
    }));
/// Two quadwords per 64-bit gate.
static EARLY_IDT: EarlyCell<[u64; 2 * EARLY_VECTORS]> =
    EarlyCell(UnsafeCell::new([0; 2 * EARLY_VECTORS]));
static EARLY_IDTR: EarlyCell<DescriptorTablePointer> =
    EarlyCell(UnsafeCell::new(DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::zero(),
    }));
static EARLY_TSS: EarlyCell<TaskStateSegment> = EarlyCell(UnsafeCell::new(TaskStateSegment::new()));
/// The early fault handler's stack (IST1 of the early TSS); only the CPU uses it.
static EARLY_STACK: EarlyCell<[u8; EARLY_STACK_SIZE]> =
    EarlyCell(UnsafeCell::new([0; EARLY_STACK_SIZE]));

// SAFETY: this code runs only on an AP that the boot CPU started with INIT-SIPI-SIPI
// (`start_ap`), one AP at a time, after `install_trampoline` copied the trampoline to
// TRAMPOLINE_ADDRESS and filled the early GDT, TSS and IDT; it relies on the boot code's
// identity map (`keel_boot_pml4`, first 4 GiB) and the kernel's tables (`keel_ap_cr3`)
// both mapping the kernel image at its link addresses, so the early tables, the early
// fault stack and the stubs are reachable before and after the CR3 switch. The early
// fault handler never returns: it only writes to COM1 and the exit ports, then halts.
// Not in host unit tests (`cfg(test)`): the trampoline's absolute relocations cannot
// link into a position-independent test executable, and no host test starts an AP.
#[cfg(not(test))]
global_asm!(
    r#"
    .section .rodata.keel_ap_trampoline, "a"
    .p2align 12
    .global keel_ap_trampoline_start
    keel_ap_trampoline_start:
    .code16
    cli
    cld
    xor ax, ax
    mov ds, ax
    /* lgdt [TRAMPOLINE + gdtr offset] */
    .byte 0x66, 0x0f, 0x01, 0x16
    .word 0x8000 + (keel_ap_gdtr - keel_ap_trampoline_start)
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    /* ljmp 0x18:(TRAMPOLINE + protected-mode offset), 32-bit offset */
    .byte 0x66, 0xea
    .long 0x8000 + (keel_ap_protected - keel_ap_trampoline_start)
    .word 0x18

    .code32
    keel_ap_protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    /* CR4: PAE, OSFXSR, OSXMMEXCPT. */
    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10)
    mov cr4, eax
    mov eax, offset keel_boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr
    /* CR0: PG (31), WP (16), MP (1); clear EM (2), TS (3), CD (30) and NW (29). CR0 is
       0x60000010 after power-up (caching disabled) and INIT leaves CD and NW as they
       were (SDM vol. 3, table 9-1), so an AP that is not told otherwise runs uncached
       (TCG does not model it; hardware does). Linux's trampoline loads a fixed CR0
       without them. */
    mov eax, cr0
    and eax, ~((1 << 2) | (1 << 3) | (1 << 29) | (1 << 30))
    or eax, (1 << 31) | (1 << 16) | (1 << 1)
    mov cr0, eax
    /* ljmp 0x08:keel_ap_long_mode */
    .byte 0xea
    .long keel_ap_long_mode
    .word 0x08

    .p2align 3
    keel_ap_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0x00cf9a000000ffff    /* 0x18: 32-bit code */
    keel_ap_gdt_end:
    keel_ap_gdtr:
    .word keel_ap_gdt_end - keel_ap_gdt - 1
    .long 0x8000 + (keel_ap_gdt - keel_ap_trampoline_start)
    .global keel_ap_trampoline_end
    keel_ap_trampoline_end:

    .section .bss.keel_ap, "aw", @nobits
    .p2align 3
    .global keel_ap_stack_top
    keel_ap_stack_top: .skip 8
    .global keel_ap_cpu_index
    keel_ap_cpu_index: .skip 8
    .global keel_ap_cr3
    keel_ap_cr3: .skip 8

    .section .text.keel_ap, "ax"
    .code64
    .global keel_ap_long_mode
    keel_ap_long_mode:
    /* First the early GDT, TSS and IDT (statics in the kernel image, which both the
       boot code's tables and the kernel's map at the same address), so that any fault
       from here on is reported on the early fault stack instead of resetting the VM. */
    lgdt [{early_gdtr}]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    /* The previous AP's `ltr` left the TSS descriptor busy (type 0xb); make it
       available (type 0x9) again, or `ltr` raises #GP. */
    and byte ptr [{early_gdt} + {tss_selector} + 5], 0xfd
    mov ax, {tss_selector}
    ltr ax
    lidt [{early_idtr}]
    /* The kernel's tables (which map the stack wherever it is) before the stack. */
    mov rax, qword ptr [keel_ap_cr3]
    mov cr3, rax
    mov rsp, qword ptr [keel_ap_stack_top]
    xor ebp, ebp
    mov rdi, qword ptr [keel_ap_cpu_index]
    call {entry}
    ud2

    /* The early fault stubs: one per exception vector, EARLY_STUB_SIZE bytes each. The
       CPU has switched to the early fault stack (IST1) and pushed its frame there. */
    .p2align 4
    .global keel_ap_early_fault_stubs
    keel_ap_early_fault_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .p2align 4
    mov ecx, \vector
    jmp keel_ap_early_fault
    .endr

    /* ecx: the vector. Writes the message to COM1 and ends the VM with the failure
       code, as cpu::exit does: isa-debug-exit, then q35's ACPI power-off, then halt. */
    keel_ap_early_fault:
    lea rsi, [rip + keel_ap_early_fault_message]
    call keel_ap_early_fault_puts
    mov eax, ecx
    xor edx, edx
    mov r9d, 10
    div r9d
    /* eax: tens, edx: units (vectors are below 32). */
    mov r11d, edx
    test eax, eax
    jz .Lkeel_ap_early_fault_units
    lea r8d, [eax + 0x30]
    call keel_ap_early_fault_putc
    .Lkeel_ap_early_fault_units:
    lea r8d, [r11d + 0x30]
    call keel_ap_early_fault_putc
    lea rsi, [rip + keel_ap_early_fault_message_end]
    call keel_ap_early_fault_puts
    mov dx, {exit_port}
    mov eax, {failure}
    out dx, eax
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
    .Lkeel_ap_early_fault_halt:
    cli
    hlt
    jmp .Lkeel_ap_early_fault_halt

    /* Writes the NUL-terminated string at rsi. Clobbers rsi, r8, r10, rax, rdx. */
    keel_ap_early_fault_puts:
    movzx r8d, byte ptr [rsi]
    test r8d, r8d
    jz .Lkeel_ap_early_fault_puts_done
    call keel_ap_early_fault_putc
    inc rsi
    jmp keel_ap_early_fault_puts
    .Lkeel_ap_early_fault_puts_done:
    ret

    /* Writes the byte in r8b to COM1 once the line status register (0x3fd) says the
       transmit holding register is empty, waiting a bounded time as serial.rs does.
       Clobbers r10, rax, rdx. */
    keel_ap_early_fault_putc:
    mov r10d, 100000
    .Lkeel_ap_early_fault_poll:
    mov dx, 0x3fd
    in al, dx
    test al, 0x20
    jnz .Lkeel_ap_early_fault_send
    pause
    dec r10d
    jnz .Lkeel_ap_early_fault_poll
    .Lkeel_ap_early_fault_send:
    mov dx, 0x3f8
    mov eax, r8d
    out dx, al
    ret

    .section .rodata.keel_ap_early_fault, "a"
    keel_ap_early_fault_message:
    .asciz "\r\nKEEL FATAL: CPU exception during application processor start-up (vector "
    keel_ap_early_fault_message_end:
    .asciz ")\r\nKEEL FATAL: halting with failure status\r\n"
    "#,
    entry = sym ap_entry_64,
    early_gdt = sym EARLY_GDT,
    early_gdtr = sym EARLY_GDTR,
    early_idtr = sym EARLY_IDTR,
    tss_selector = const EARLY_TSS_SELECTOR,
    exit_port = const DEBUG_EXIT_PORT,
    failure = const ExitCode::Failure as u32,
);

#[cfg(not(test))]
unsafe extern "Rust" {
    /// The kernel binary's per-AP main function.
    fn keel_kernel_ap_main(index: usize) -> !;
}

/// The Rust side of an AP's start: runs on the stack the boot CPU prepared.
///
/// # Safety
/// Only the trampoline calls this, once per AP.
#[cfg(not(test))]
unsafe extern "C" fn ap_entry_64(index: u64) -> ! {
    AP_ALIVE.store(true, Ordering::Release);
    // SAFETY: the kernel binary defines `keel_kernel_ap_main` with this signature.
    unsafe { keel_kernel_ap_main(index as usize) }
}

/// Why an AP did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// No sign of life within the time limit after INIT-SIPI-SIPI.
    Timeout {
        /// The AP's local APIC id.
        apic_id: u32,
    },
}

/// Copies the trampoline to low memory and fills the early GDT, TSS and IDT the APs
/// load first. Call once, on the boot CPU, before [`start_ap`].
pub fn install_trampoline() {
    let start = &raw const keel_ap_trampoline_start;
    let end = &raw const keel_ap_trampoline_end;
    let length = end as usize - start as usize;
    // SAFETY: the low megabyte is identity-mapped read-write and never handed to the page
    // allocator; the trampoline (a few hundred bytes) fits in page 8, which nothing else
    // uses after boot (the start info was copied out earlier).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_ADDRESS as *mut u8, length) };
    install_early_fault_tables();
}

/// A present 64-bit interrupt gate, DPL 0, to `handler` through IST1 (SDM vol. 3,
/// figure 6-8).
pub(crate) fn early_interrupt_gate(handler: u64) -> [u64; 2] {
    let low = (handler & 0xffff)
        | u64::from(EARLY_CODE_SELECTOR) << 16
        | 1 << 32 // IST1
        | 0x8e << 40 // present, DPL 0, 64-bit interrupt gate
        | ((handler >> 16) & 0xffff) << 48;
    [low, handler >> 32]
}

/// Fills the early tables (see the module doc).
fn install_early_fault_tables() {
    let stubs = &raw const keel_ap_early_fault_stubs as u64;
    let stack_top = EARLY_STACK.0.get() as u64 + EARLY_STACK_SIZE as u64;
    let tss = EARLY_TSS.0.get();
    // SAFETY: the boot CPU runs this once, before any AP starts, so nothing else reads or
    // writes the early TSS now; the stack top is 16-byte aligned (EarlyCell's alignment,
    // and the size is a multiple of 16).
    unsafe { (*tss).interrupt_stack_table[0] = VirtAddr::new(stack_top) };
    // SAFETY: the early TSS is a static (it lives forever) and is not written again.
    let Descriptor::SystemSegment(tss_low, tss_high) =
        (unsafe { Descriptor::tss_segment_unchecked(tss) })
    else {
        unreachable!("a TSS descriptor is a system segment")
    };
    let (Descriptor::UserSegment(code), Descriptor::UserSegment(data)) = (
        Descriptor::kernel_code_segment(),
        Descriptor::kernel_data_segment(),
    ) else {
        unreachable!("code and data descriptors are user segments")
    };
    let gdt = [0, code, data, tss_low, tss_high];
    let mut idt = [0; 2 * EARLY_VECTORS];
    for (vector, gate) in idt.chunks_exact_mut(2).enumerate() {
        gate.copy_from_slice(&early_interrupt_gate(
            stubs + vector as u64 * EARLY_STUB_SIZE,
        ));
    }
    // SAFETY: as above, nothing else uses the early tables while the boot CPU fills them
    // (no AP is starting yet); the limits are the tables' sizes minus one.
    unsafe {
        EARLY_GDT.0.get().write(gdt);
        EARLY_GDTR.0.get().write(DescriptorTablePointer {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: VirtAddr::from_ptr(EARLY_GDT.0.get()),
        });
        EARLY_IDT.0.get().write(idt);
        EARLY_IDTR.0.get().write(DescriptorTablePointer {
            limit: (size_of::<[u64; 2 * EARLY_VECTORS]>() - 1) as u16,
            base: VirtAddr::from_ptr(EARLY_IDT.0.get()),
        });
    }
}

fn wait_alive(micros: u64) -> bool {
    let end = time::now() + core::time::Duration::from_micros(micros);
    while time::now() < end {
        if AP_ALIVE.load(Ordering::Acquire) {
            return true;
        }
        core::hint::spin_loop();
    }
    AP_ALIVE.load(Ordering::Acquire)
}

/// The wait between INIT and the first start-up IPI. The MP specification asks for
/// 10 ms; like Linux (`smp_quirk_init_udelay`), Keel skips it on CPUs that do not need
/// it (Intel family 6 and later, AMD family 0xF and later) and under a hypervisor,
/// where it would dominate the boot time of every AP.
fn init_delay_nanos() -> u64 {
    let cpuid = raw_cpuid::CpuId::new();
    let hypervisor = cpuid
        .get_feature_info()
        .is_some_and(|features| features.has_hypervisor());
    let modern = cpuid.get_feature_info().is_some_and(|features| {
        let family = features.family_id();
        match cpuid
            .get_vendor_info()
            .as_ref()
            .map(|vendor| vendor.as_str())
        {
            Some("GenuineIntel") => family >= 6,
            Some("AuthenticAMD") => family >= 0xf,
            _ => false,
        }
    });
    if hypervisor || modern {
        10_000
    } else {
        10_000_000
    }
}

/// Starts the AP with local APIC id `apic_id` as CPU `index`, on a stack whose top is
/// `stack_top`, and waits until it runs Rust code. The AP runs on this CPU's current page
/// tables from its first stack access, so they must map the stack and the kernel.
pub fn start_ap(
    apic_id: u32,
    index: usize,
    stack_top: keel_types::VirtAddr,
) -> Result<(), StartError> {
    AP_ALIVE.store(false, Ordering::Release);
    let (root, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: no AP is starting concurrently (APs start one at a time and read these
    // only before signalling AP_ALIVE).
    unsafe {
        (&raw mut keel_ap_stack_top).write_volatile(stack_top.as_u64());
        (&raw mut keel_ap_cpu_index).write_volatile(index as u64);
        (&raw mut keel_ap_cr3).write_volatile(root.start_address().as_u64());
    }
    let page = (TRAMPOLINE_ADDRESS >> 12) as u8;
    apic::send_ipi(apic_id, IpiKind::Init);
    time::busy_wait(core::time::Duration::from_nanos(init_delay_nanos()));
    for _ in 0..2 {
        apic::send_ipi(apic_id, IpiKind::Startup(page));
        if wait_alive(200) {
            return Ok(());
        }
    }
    if wait_alive(500_000) {
        Ok(())
    } else {
        Err(StartError::Timeout { apic_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_gate_fields() {
        let handler = 0x0000_7fff_1234_5678_u64;
        let [low, high] = early_interrupt_gate(handler);
        assert_eq!(low & 0xffff, 0x5678);
        assert_eq!((low >> 48) & 0xffff, 0x1234);
        assert_eq!(high, 0x7fff);
        assert_eq!((low >> 16) & 0xffff, u64::from(EARLY_CODE_SELECTOR));
        assert_eq!((low >> 32) & 0x7, 1, "IST1");
        assert_eq!(
            (low >> 40) & 0xff,
            0x8e,
            "present 64-bit interrupt gate, DPL 0"
        );
    }

    // The trampoline and the early tables are sized for these constants (checked at
    // compile time).
    const _: () = {
        assert!(EARLY_STACK_SIZE.is_multiple_of(16));
        assert!(size_of::<[u64; 2 * EARLY_VECTORS]>() - 1 == 511);
        assert!(TRAMPOLINE_ADDRESS.is_multiple_of(4096));
        // Start-up IPIs name a page below 1 MiB.
        assert!(TRAMPOLINE_ADDRESS < 0x10_0000);
    };
}
