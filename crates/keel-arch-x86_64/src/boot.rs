//! The PVH entry: from QEMU's 32-bit protected-mode hand-off to Rust in long mode.
//!
//! QEMU (`-kernel`), Firecracker and Cloud Hypervisor find the 32-bit physical entry
//! address in an ELF note of type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`, owner "Xen") and jump
//! there in protected mode with paging off and `ebx` holding the physical address of the
//! `hvm_start_info` structure. The code below:
//!
//! 1. reads the TSC first (the boot-time measurement starts here),
//! 2. zeroes `.bss` (the boot stack and page tables live there),
//! 3. checks that the CPU has long mode and NX (else reports on COM1 and exits QEMU),
//! 4. identity-maps the first 4 GiB with 2 MiB pages, enables PAE, long mode, NX,
//!    write protection and SSE (CR0.EM=0, CR0.MP=1, CR4.OSFXSR, CR4.OSXMMEXCPT) before
//!    any compiled code runs, because the host target's prebuilt `core` uses SSE2,
//! 5. jumps to 64-bit code and calls [`crate::boot_entry_64`] on the boot stack.
//!
//! Rust code then replaces these temporary tables with real ones ([`crate::paging`]).
//!
//! The same `global_asm!` block holds the 256 interrupt entry stubs (16 bytes apart,
//! starting at `keel_isr_stubs`), which push a uniform [`crate::interrupts::TrapFrame`]
//! and call [`crate::interrupts::keel_arch_trap`]. Every vector (all 256 have a gate)
//! enters on an IST stack (the red zone); device interrupts and IPIs then move their
//! frame to the interrupted stack below its red zone, so that a handler may switch
//! threads.

#[cfg(not(test))]
use core::arch::global_asm;

/// Size of the boot stack (the kernel's first thread runs on it).
pub const BOOT_STACK_SIZE: usize = 512 * 1024;

unsafe extern "C" {
    /// First byte of the guard page under the boot stack (defined below in assembly).
    pub static keel_boot_stack_guard: u8;
    /// One past the last byte of the boot stack.
    pub static keel_boot_stack_top: u8;
    /// TSC value read by the first instruction of the PVH entry.
    pub static keel_boot_tsc_at_entry: u64;
    /// Physical address of `hvm_start_info`, as handed over in `ebx`.
    pub static keel_boot_start_info: u32;
    /// First interrupt entry stub; stub `n` is at `keel_isr_stubs + 16 * n`.
    pub static keel_isr_stubs: u8;
}

/// Distance between two interrupt entry stubs.
pub const ISR_STUB_SPACING: u64 = 16;

// The boot code and the entry stubs use 32-bit absolute relocations, which a host
// (position-independent) test executable cannot link: the host unit tests (`cfg(test)`)
// build without them. Nothing a host test calls reaches this code or its symbols.
#[cfg(not(test))]
global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long keel_pvh_start32

    .section .bss.keel_boot, "aw", @nobits
    .p2align 12
    .global keel_boot_pml4
    keel_boot_pml4: .skip 4096
    keel_boot_pdpt: .skip 4096
    keel_boot_pd:   .skip 4096 * 4
    .global keel_boot_stack_guard
    keel_boot_stack_guard: .skip 4096
    keel_boot_stack_bottom: .skip {stack_size}
    .global keel_boot_stack_top
    keel_boot_stack_top:
    .p2align 3
    .global keel_boot_tsc_at_entry
    keel_boot_tsc_at_entry: .skip 8
    .global keel_boot_start_info
    keel_boot_start_info: .skip 4

    .section .rodata.keel_boot, "a"
    .p2align 3
    keel_boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, present, ring 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, present, writable */
    keel_boot_gdt_end:
    keel_boot_gdt_pointer:
    .word keel_boot_gdt_end - keel_boot_gdt - 1
    .quad keel_boot_gdt
    keel_boot_no_long_mode_message:
    .asciz "keel: this CPU lacks long mode or NX; cannot boot\r\n"

    .section .text.boot, "ax"
    .code32
    .global keel_pvh_start32
    keel_pvh_start32:
    cli
    cld
    rdtsc
    mov esi, eax
    mov ebp, edx

    /* Zero .bss; ebx (start info), esi and ebp (TSC) are untouched by rep stosb. */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb
    mov dword ptr [keel_boot_tsc_at_entry], esi
    mov dword ptr [keel_boot_tsc_at_entry + 4], ebp
    mov dword ptr [keel_boot_start_info], ebx
    mov esp, offset keel_boot_stack_top

    /* Long mode (bit 29) and NX (bit 20) in CPUID 0x80000001:EDX. */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb 5f
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 29
    jz 5f
    test edx, 1 << 20
    jz 5f

    /* Identity map 0..4 GiB with 2 MiB pages: 2048 entries over four page directories. */
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83            /* present, writable, page size */
    mov dword ptr [keel_boot_pd + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov dword ptr [keel_boot_pd + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jb 2b
    mov eax, offset keel_boot_pd
    or eax, 3
    mov dword ptr [keel_boot_pdpt], eax
    add eax, 4096
    mov dword ptr [keel_boot_pdpt + 8], eax
    add eax, 4096
    mov dword ptr [keel_boot_pdpt + 16], eax
    add eax, 4096
    mov dword ptr [keel_boot_pdpt + 24], eax
    mov eax, offset keel_boot_pdpt
    or eax, 3
    mov dword ptr [keel_boot_pml4], eax

    /* CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10). */
    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10)
    mov cr4, eax
    mov eax, offset keel_boot_pml4
    mov cr3, eax
    /* EFER: LME (8), NXE (11). */
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr
    /* CR0: PG (31), WP (16), MP (1); clear EM (2), TS (3), and CD (30) and NW (29), so
       the kernel runs cached whatever the loader left (the APs need it: see smp.rs). */
    mov eax, cr0
    and eax, ~((1 << 2) | (1 << 3) | (1 << 29) | (1 << 30))
    or eax, (1 << 31) | (1 << 16) | (1 << 1)
    mov cr0, eax
    lgdt [keel_boot_gdt_pointer]
    mov eax, offset keel_boot_long_mode
    push 0x08
    push eax
    retf

    /* No long mode: say so on COM1 and leave QEMU through isa-debug-exit. */
5:
    mov esi, offset keel_boot_no_long_mode_message
3:
    mov al, byte ptr [esi]
    test al, al
    jz 4f
    mov dx, 0x3f8
    out dx, al
    inc esi
    jmp 3b
4:
    mov dx, 0xf4
    mov eax, 0x11
    out dx, eax
    hlt
    jmp 4b

    .code64
keel_boot_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset keel_boot_stack_top
    xor ebp, ebp            /* ends the frame-pointer chain for backtraces */
    mov edi, dword ptr [keel_boot_start_info]
    call {entry}
    ud2

    /* ---- Interrupt entry stubs: 256 of them, 16 bytes apart. ---- */
    .section .text.keel_isr, "ax"
    .p2align 4
    .global keel_isr_stubs
    keel_isr_stubs:
    .set keel_vector, 0
    .rept 256
    .p2align 4
    .if (keel_vector == 8) || (keel_vector == 10) || (keel_vector == 11) || (keel_vector == 12) || (keel_vector == 13) || (keel_vector == 14) || (keel_vector == 17) || (keel_vector == 21) || (keel_vector == 29) || (keel_vector == 30)
    .else
    push 0                  /* no error code: push a zero to keep the frame uniform */
    .endif
    push keel_vector
    jmp keel_isr_common
    .set keel_vector, keel_vector + 1
    .endr

    keel_isr_common:
    /* Interrupts (vector >= 32) move from their IST stack to the interrupted stack,
       below its 128-byte red zone, so the handler may switch threads: the frame then
       stays with the thread it belongs to and the shared IST stack is free again.
       Exceptions stay on their IST stacks (they are reported, not resumed elsewhere). */
    cmp qword ptr [rsp], 32
    jb keel_isr_on_stack
    push rax
    push rbx
    mov rax, [rsp + 56]     /* interrupted rsp (above: rbx, rax, vector, error, rip, cs, rflags) */
    sub rax, 128 + 56
    and rax, -16
    mov rbx, [rsp + 16]
    mov [rax], rbx          /* vector */
    mov rbx, [rsp + 24]
    mov [rax + 8], rbx      /* error code */
    mov rbx, [rsp + 32]
    mov [rax + 16], rbx     /* rip */
    mov rbx, [rsp + 40]
    mov [rax + 24], rbx     /* cs */
    mov rbx, [rsp + 48]
    mov [rax + 32], rbx     /* rflags */
    mov rbx, [rsp + 56]
    mov [rax + 40], rbx     /* rsp */
    mov rbx, [rsp + 64]
    mov [rax + 48], rbx     /* ss */
    mov rbx, [rsp + 8]
    mov [rax - 8], rbx      /* the interrupted rax */
    mov rbx, [rsp]
    mov [rax - 16], rbx     /* the interrupted rbx */
    lea rsp, [rax - 16]
    pop rbx
    pop rax
    keel_isr_on_stack:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp            /* &mut TrapFrame */
    mov r12, rsp
    /* The interrupted code's extended state, below the frame, 64-byte aligned, in the
       mode chosen at boot (crate::cpu::StateSave). r13 (callee-saved, so it survives the
       call and any thread switch inside it) latches the mode for the restore. */
    mov r13d, dword ptr [rip + {save_mode}]
    sub rsp, qword ptr [rip + {save_bytes}]
    and rsp, -64
    test r13d, r13d
    jnz 6f
    fxsave64 [rsp]          /* mode 0: x87/SSE only */
    jmp 8f
6:
    /* XSAVE and XSAVEC write only XSTATE_BV (and XCOMP_BV) of the 64-byte header at
       offset 512; XRSTOR faults unless its reserved bytes are zero, and this is stack
       memory with old contents: zero the header first. */
    xor eax, eax
    mov qword ptr [rsp + 512], rax
    mov qword ptr [rsp + 520], rax
    mov qword ptr [rsp + 528], rax
    mov qword ptr [rsp + 536], rax
    mov qword ptr [rsp + 544], rax
    mov qword ptr [rsp + 552], rax
    mov qword ptr [rsp + 560], rax
    mov qword ptr [rsp + 568], rax
    mov eax, -1             /* EDX:EAX = all ones: every component XCR0 enables */
    mov edx, -1
    cmp r13d, 2
    je 7f
    xsave64 [rsp]           /* mode 1: standard format */
    jmp 8f
7:
    xsavec64 [rsp]          /* mode 2: compacted (sets XCOMP_BV bit 63) */
8:
    cld
    call {trap}
    test r13d, r13d
    jnz 9f
    fxrstor64 [rsp]
    jmp 10f
9:
    mov eax, -1             /* XRSTOR takes the format from XCOMP_BV bit 63 */
    mov edx, -1
    xrstor64 [rsp]
10:
    mov rsp, r12
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16             /* vector and error code */
    iretq
    "#,
    stack_size = const BOOT_STACK_SIZE,
    entry = sym crate::boot_entry_64,
    trap = sym crate::interrupts::keel_arch_trap,
    save_mode = sym crate::cpu::STATE_SAVE_MODE,
    save_bytes = sym crate::cpu::STATE_SAVE_BYTES,
);
