//! Frame-pointer backtraces, symbolized with the kernel's own symbol table.
//!
//! The workspace builds with `-C force-frame-pointers=yes`, so every Keel function
//! starts with `push rbp; mov rbp, rsp` and `[rbp]` holds the caller's `rbp`, `[rbp+8]`
//! the return address. The prebuilt `core` may not keep frame pointers; the walker
//! therefore checks every frame (aligned, strictly increasing, inside a known stack or
//! on mapped pages, return address inside the kernel's text) and stops at the first
//! implausible one instead of faulting.
//!
//! Consecutive frames with the same return address (a recursion, such as a stack
//! overflow) are folded into one line that ends in `xN`, so the callers below a deep
//! recursion still fit in the report.

use core::fmt::Write;
use keel_ksyms::SymbolTable;

unsafe extern "C" {
    static __ksyms_start: u8;
    static __ksyms_end: u8;
    static __text_start: u8;
    static __text_end: u8;
}

/// Lines printed at most (a folded run of repeated frames is one line).
pub const MAX_FRAMES: usize = 48;

/// Frames walked at most. The walk stops anyway at the top of the stack (each frame
/// pointer must be above the last); this only bounds the work on a corrupt chain.
const MAX_WALK: usize = 8192;

/// The kernel's symbol table, or why it cannot be read.
pub fn symbol_table() -> Result<SymbolTable<'static>, keel_ksyms::SymbolTableError> {
    // SAFETY: the linker script defines both symbols around the loaded, read-only
    // `.ksyms` section; the range is mapped and never written at run time.
    let bytes = unsafe {
        let start = &raw const __ksyms_start;
        let end = &raw const __ksyms_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    };
    SymbolTable::parse(bytes)
}

fn text_range() -> (u64, u64) {
    (
        (&raw const __text_start) as u64,
        (&raw const __text_end) as u64,
    )
}

/// Known stacks: the boot stack and the IST stacks.
fn stack_ranges() -> impl Iterator<Item = (u64, u64)> {
    let boot = (
        (&raw const crate::boot::keel_boot_stack_guard) as u64 + 4096,
        (&raw const crate::boot::keel_boot_stack_top) as u64,
    );
    core::iter::once(boot)
        .chain(crate::gdt::ist_stack_ranges().map(|(bottom, top)| (bottom.as_u64(), top.as_u64())))
}

/// Whether a frame record at `address` can be read without faulting: inside one of the
/// static stacks, or (thread stacks come from the page allocator) on mapped pages.
fn in_known_stack(address: u64) -> bool {
    stack_ranges().any(|(bottom, top)| address >= bottom && address + 16 <= top)
        || (address >= 4096
            && crate::paging::flags_of(keel_types::VirtAddr::new(address)).is_some()
            && crate::paging::flags_of(keel_types::VirtAddr::new(address + 15)).is_some())
}

/// Writes one line for `address`: `  #n 0x... name+0xoff`.
pub fn write_frame(out: &mut impl Write, index: usize, address: u64) {
    let _ = match symbol_table().ok().and_then(|table| table.lookup(address)) {
        Some(symbol) => writeln!(
            out,
            "  #{index:<2} {address:#018x} {}+{:#x}",
            symbol.name,
            symbol.offset_of(address)
        ),
        None => writeln!(out, "  #{index:<2} {address:#018x} <unknown>"),
    };
}

/// A run of consecutive frames with the same address, not printed yet.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Index of its first frame.
    first: usize,
    /// The frames' (call-site) address.
    address: u64,
    /// How many frames.
    count: usize,
}

/// Prints `run` as one line (` xN` after the symbol when it folds several frames);
/// returns false when the line budget is used up (after saying so).
fn write_run(out: &mut impl Write, run: Run, lines: &mut usize) -> bool {
    if *lines >= MAX_FRAMES {
        let _ = writeln!(out, "  ... (further frames not shown)");
        return false;
    }
    *lines += 1;
    if run.count == 1 {
        write_frame(out, run.first, run.address);
        return true;
    }
    let last = run.first + run.count - 1;
    let _ = match symbol_table()
        .ok()
        .and_then(|table| table.lookup(run.address))
    {
        Some(symbol) => writeln!(
            out,
            "  #{:<2} {:#018x} {}+{:#x} x{} (frames #{}-#{last})",
            run.first,
            run.address,
            symbol.name,
            symbol.offset_of(run.address),
            run.count,
            run.first
        ),
        None => writeln!(
            out,
            "  #{:<2} {:#018x} <unknown> x{} (frames #{}-#{last})",
            run.first, run.address, run.count, run.first
        ),
    };
    true
}

/// Prints a backtrace that starts at `rip` with frame pointer `rbp`.
pub fn write_backtrace(out: &mut impl Write, rip: u64, mut rbp: u64) {
    if let Err(error) = symbol_table() {
        let _ = writeln!(
            out,
            "  (no symbols: {error}; build with `cargo xtask build`)"
        );
    }
    write_frame(out, 0, rip);
    let mut lines = 1;
    let mut pending: Option<Run> = None;
    let (text_start, text_end) = text_range();
    for index in 1..MAX_WALK {
        if !rbp.is_multiple_of(8) || !in_known_stack(rbp) {
            break;
        }
        // SAFETY: rbp is 8-aligned and the 16 bytes at it are mapped (a known stack, or
        // pages checked in the live tables); reading two words cannot fault.
        let (next_rbp, return_address) = unsafe {
            let frame = rbp as *const u64;
            (frame.read(), frame.add(1).read())
        };
        if return_address < text_start || return_address >= text_end {
            break;
        }
        // The return address points after the call; symbolize the call itself.
        let address = return_address - 1;
        match &mut pending {
            Some(run) if run.address == address => run.count += 1,
            _ => {
                if let Some(run) = pending.take()
                    && !write_run(out, run, &mut lines)
                {
                    return;
                }
                pending = Some(Run {
                    first: index,
                    address,
                    count: 1,
                });
            }
        }
        if next_rbp <= rbp {
            break;
        }
        rbp = next_rbp;
    }
    if let Some(run) = pending {
        write_run(out, run, &mut lines);
    }
}

/// Prints a backtrace of the caller.
#[inline(never)]
pub fn write_current_backtrace(out: &mut impl Write) {
    let rbp: u64;
    // SAFETY: reads the frame pointer register; no memory access.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    let (caller_rbp, caller_rip) = if in_known_stack(rbp) && rbp.is_multiple_of(8) {
        // SAFETY: with frame pointers, [rbp] and [rbp+8] of this function's frame hold the
        // caller's rbp and our return address, inside a checked, mapped stack.
        unsafe {
            let frame = rbp as *const u64;
            (frame.read(), frame.add(1).read())
        }
    } else {
        (0, 0)
    };
    write_backtrace(out, caller_rip.saturating_sub(1), caller_rbp);
}
