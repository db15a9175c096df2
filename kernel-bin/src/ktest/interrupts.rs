//! In-guest cases of interrupt handling (`keel_arch_x86_64::interrupts`): a breakpoint
//! is handled and resumed, a trap preserves SSE registers, every IDT gate is present
//! on an IST stack (issue 11 item 3), and an unexpected interrupt is counted and logged
//! once (issue 11 item 4).

use super::{TestResult, on_every_cpu};
use keel_arch_x86_64::{ArchInfo, interrupts};

fn breakpoint_is_handled_and_resumed(_: &ArchInfo) -> TestResult {
    let before = interrupts::breakpoint_count();
    // SAFETY: int3 traps into the kernel's breakpoint handler, which counts and resumes.
    unsafe { core::arch::asm!("int3") };
    // SAFETY: as above.
    unsafe { core::arch::asm!("int3") };
    let after = interrupts::breakpoint_count();
    check!(
        after == before + 2,
        "breakpoints not counted",
        before,
        after
    );
    Ok(())
}
ktest!(breakpoint_is_handled_and_resumed);

fn interrupt_preserves_sse_registers(_: &ArchInfo) -> TestResult {
    let pattern: u64 = 0x0123_4567_89ab_cdef;
    let result: u64;
    // SAFETY: loads xmm7, traps through the breakpoint handler (which runs Rust code that
    // may use SSE registers), and reads xmm7 back; xmm7 is declared clobbered.
    unsafe {
        core::arch::asm!(
            "movq xmm7, {pattern}",
            "int3",
            "movq {result}, xmm7",
            pattern = in(reg) pattern,
            result = out(reg) result,
            out("xmm7") _,
        );
    }
    check!(result == pattern, "xmm7 changed across a trap", result);
    Ok(())
}
ktest!(interrupt_preserves_sse_registers);

/// The (present, IST index) pairs of the loaded IDT's 256 gates, or the IDT's limit if
/// it does not hold 256 gates.
fn idt_gates() -> Result<[(bool, u8); 256], u16> {
    let pointer = x86_64::instructions::tables::sidt();
    if pointer.limit != 256 * 16 - 1 {
        return Err(pointer.limit);
    }
    let mut gates = [(false, 0u8); 256];
    for (vector, gate) in gates.iter_mut().enumerate() {
        // SAFETY: SIDT gives the loaded IDT's base and limit; the limit covers 256
        // 16-byte gates, and the IDT is a static, mapped and never written after boot.
        let options =
            unsafe { ((pointer.base.as_u64() + vector as u64 * 16 + 4) as *const u16).read() };
        *gate = (options & 0x8000 != 0, (options & 0x7) as u8);
    }
    Ok(gates)
}

/// Issue 11 item 3 (the item 7): every one of the 256 IDT gates is present and
/// switches to an IST stack, on every CPU.
fn every_idt_vector_is_present_on_an_ist_stack(_: &ArchInfo) -> TestResult {
    for (cpu, gates) in on_every_cpu(idt_gates)? {
        check!(gates.is_ok(), "the IDT does not hold 256 gates", cpu, gates);
        let Ok(gates) = gates else { return Ok(()) };
        let missing: alloc::vec::Vec<usize> = (0..256).filter(|&v| !gates[v].0).collect();
        let no_ist: alloc::vec::Vec<usize> = (0..256).filter(|&v| gates[v].1 == 0).collect();
        check!(missing.is_empty(), "IDT vectors not present", cpu, missing);
        check!(no_ist.is_empty(), "IDT vectors without IST", cpu, no_ist);
    }
    Ok(())
}
ktest!(every_idt_vector_is_present_on_an_ist_stack);

/// Issue 11 item 4 (the item 8): an interrupt on a vector without a handler is
/// counted, and its first occurrence is logged (the test hook counts logged lines);
/// further ones on the same vector are rate-limited.
fn unexpected_interrupt_is_counted_and_logged(_: &ArchInfo) -> TestResult {
    const VECTOR: u8 = 0x9e;
    check!(
        interrupts::interrupt_handler(VECTOR).is_none(),
        "the test's vector has a handler",
        VECTOR
    );
    let counted_before = interrupts::unexpected_interrupt_count();
    let logged_before = interrupts::unexpected_interrupts_logged();
    // SAFETY: a software interrupt to a vector without a handler: the stub saves and
    // restores every register, the dispatcher counts it (and logs it) and returns.
    unsafe { core::arch::asm!("int 0x9e") };
    let logged_first = interrupts::unexpected_interrupts_logged();
    // SAFETY: as above.
    unsafe { core::arch::asm!("int 0x9e") };
    let counted = interrupts::unexpected_interrupt_count() - counted_before;
    let logged = interrupts::unexpected_interrupts_logged() - logged_before;
    // Other CPUs may take unexpected interrupts meanwhile, hence at least.
    check!(counted >= 2, "unexpected interrupts not counted", counted);
    check!(
        logged_first > logged_before,
        "the first unexpected interrupt on a vector was not logged",
        logged_before,
        logged_first
    );
    check!(
        interrupts::unexpected_interrupts_logged_on(VECTOR) == 1,
        "a repeated unexpected interrupt was logged again (not rate-limited)",
        interrupts::unexpected_interrupts_logged_on(VECTOR),
        logged
    );
    Ok(())
}
ktest!(unexpected_interrupt_is_counted_and_logged);
