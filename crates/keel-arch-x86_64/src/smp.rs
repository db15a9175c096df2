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
//! tables map all RAM, so the stack may be anywhere. A fault this early still cannot print
//! anything: printing from an exception handler needs an IDT, and, with the stack itself
//! possibly at fault, a TSS with an IST stack, neither of which the AP has yet.

use crate::apic::{self, IpiKind};
use crate::time;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// Physical address the trampoline is copied to (page 8, start-up vector 0x08).
pub const TRAMPOLINE_ADDRESS: u64 = 0x8000;

unsafe extern "C" {
    static keel_ap_trampoline_start: u8;
    static keel_ap_trampoline_end: u8;
    /// The stack pointer the next AP starts with (written by the boot CPU).
    pub static mut keel_ap_stack_top: u64;
    /// The index of the next AP (written by the boot CPU).
    pub static mut keel_ap_cpu_index: u64;
    /// The page-table root the next AP loads before using its stack (the boot CPU's).
    pub static mut keel_ap_cr3: u64;
}

/// Set by an AP once it runs Rust code; cleared by the boot CPU before each start.
pub static AP_ALIVE: AtomicBool = AtomicBool::new(false);

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
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    /* The kernel's tables (which map the stack wherever it is) before the stack. */
    mov rax, qword ptr [keel_ap_cr3]
    mov cr3, rax
    mov rsp, qword ptr [keel_ap_stack_top]
    xor ebp, ebp
    mov rdi, qword ptr [keel_ap_cpu_index]
    call {entry}
    ud2
    "#,
    entry = sym ap_entry_64,
);

unsafe extern "Rust" {
    /// The kernel binary's per-AP main function.
    fn keel_kernel_ap_main(index: usize) -> !;
}

/// The Rust side of an AP's start: runs on the stack the boot CPU prepared.
///
/// # Safety
/// Only the trampoline calls this, once per AP.
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

/// Copies the trampoline to low memory. Call once, on the boot CPU, before [`start_ap`].
pub fn install_trampoline() {
    let start = &raw const keel_ap_trampoline_start;
    let end = &raw const keel_ap_trampoline_end;
    let length = end as usize - start as usize;
    // SAFETY: the low megabyte is identity-mapped read-write and never handed to the page
    // allocator; the trampoline (a few hundred bytes) fits in page 8, which nothing else
    // uses after boot (the start info was copied out earlier).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_ADDRESS as *mut u8, length) };
}

fn wait_alive(micros: u64) -> bool {
    let end = time::monotonic_nanos() + micros * 1000;
    while time::monotonic_nanos() < end {
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
pub fn start_ap(apic_id: u32, index: usize, stack_top: u64) -> Result<(), StartError> {
    AP_ALIVE.store(false, Ordering::Release);
    let (root, _) = x86_64::registers::control::Cr3::read();
    // SAFETY: no AP is starting concurrently (APs start one at a time and read these
    // only before signalling AP_ALIVE).
    unsafe {
        (&raw mut keel_ap_stack_top).write_volatile(stack_top);
        (&raw mut keel_ap_cpu_index).write_volatile(index as u64);
        (&raw mut keel_ap_cr3).write_volatile(root.start_address().as_u64());
    }
    let page = (TRAMPOLINE_ADDRESS >> 12) as u8;
    apic::send_ipi(apic_id, IpiKind::Init);
    time::busy_wait_nanos(init_delay_nanos());
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
