//! Keel's x86-64 context switch (the same code in the kernel and hosted).
//!
//! A suspended context is one stack pointer. Below it, the switch saved (from low to
//! high addresses): MXCSR (4 bytes) and the x87 control word (2 bytes, then 2 bytes
//! of padding), r15, r14, r13, r12, rbx, rbp, and the return address. These are
//! exactly the registers and control state that the System V ABI makes callee-saved
//! (MXCSR control bits and the x87 control word included); everything else is
//! caller-saved, so the compiler already spilled what it needs around the call.
//!
//! A new thread's stack is prepared ([`prepare_stack`]) to look like a suspended
//! context whose return address is [`thread_trampoline`], with r13 holding the entry
//! function. The switch passes its third argument through `rdx` untouched, and the
//! trampoline hands it to the entry function as its first argument: the scheduler
//! uses it to give a new thread a pointer to itself.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("keel-sched's context switch is written for x86-64 only");

use core::arch::naked_asm;
use core::ptr::NonNull;

/// The entry function of a new thread: receives the `argument` of the switch that
/// first resumed it. It must never return.
pub(crate) type EntryFunction = extern "sysv64" fn(usize) -> !;

/// Bytes of the initial frame below the aligned stack top.
const INITIAL_FRAME_BYTES: usize = 80;

/// Saves the current context into `*save_stack_pointer` and resumes the context
/// whose stack pointer is `resume_stack_pointer`, passing it `argument` (seen only by
/// a new thread's entry function). Returns when something switches back to the
/// saved context.
///
/// # Safety
///
/// `save_stack_pointer` must be valid for a write of a `usize`. `resume_stack_pointer`
/// must be a stack pointer saved by this function (or prepared by
/// [`prepare_stack`]) whose context has not been resumed since, on a stack that
/// stays valid while that context runs; it must not be the current context.
#[unsafe(naked)]
pub(crate) unsafe extern "sysv64" fn switch_context(
    save_stack_pointer: *mut usize,
    resume_stack_pointer: usize,
    argument: usize,
) {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "sub rsp, 8",
        "stmxcsr [rsp]",
        "fnstcw [rsp + 4]",
        "mov [rdi], rsp",
        // Loading MXCSR and the x87 control word is slow (microcoded, and it orders
        // later floating-point work), and they almost never differ between
        // threads: load them only when the resumed context's differ from ours.
        // rax and rcx are caller-saved, so free here; rdx carries the argument.
        "mov eax, [rsp]",
        "movzx ecx, word ptr [rsp + 4]",
        "mov rsp, rsi",
        "cmp eax, [rsp]",
        "jne 3f",
        "2:",
        "cmp cx, word ptr [rsp + 4]",
        "jne 5f",
        "4:",
        "add rsp, 8",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        "3:",
        "ldmxcsr [rsp]",
        "jmp 2b",
        "5:",
        "fldcw [rsp + 4]",
        "jmp 4b",
    )
}

/// First code of every new thread: calls the entry function (r13) with the switch's
/// argument (rdx). The stack pointer is 16-byte aligned here, so the callee sees the
/// ABI's alignment after the call pushes its return address.
#[unsafe(naked)]
unsafe extern "sysv64" fn thread_trampoline() -> ! {
    naked_asm!("mov rdi, rdx", "call r13", "ud2")
}

/// Writes the initial frame of a new thread below `top` and returns the stack
/// pointer to pass to [`switch_context`].
///
/// # Safety
///
/// `top` must be 16-byte aligned, and the 80 bytes below it must be writable and
/// not in use by anything else.
pub(crate) unsafe fn prepare_stack(top: NonNull<u8>, entry: EntryFunction) -> usize {
    let top = top.as_ptr();
    debug_assert_eq!(top.addr() % 16, 0, "stack top must be 16-byte aligned");
    // SAFETY: `top - 80` stays inside the 80 writable bytes the caller vouches for.
    let frame = unsafe { top.sub(INITIAL_FRAME_BYTES) }.cast::<u64>();
    // Slots, in u64 units from the new stack pointer: MXCSR/FCW, r15, r14, r13,
    // r12, rbx, rbp, return address, then two zero words (the trampoline's frame).
    let control_words = 0x1f80_u64 | (0x037f_u64 << 32); // MXCSR and FCW at reset
    let slots: [u64; 10] = [
        control_words,
        0,
        0,
        entry as usize as u64,
        0,
        0,
        0,
        thread_trampoline as *const () as usize as u64,
        0,
        0,
    ];
    for (index, value) in slots.into_iter().enumerate() {
        // SAFETY: `frame + index` for index < 10 lies in the 80 bytes below `top`,
        // which is 8-byte aligned (16-aligned `top` minus a multiple of 8).
        unsafe { frame.add(index).write(value) };
    }
    frame.addr()
}
