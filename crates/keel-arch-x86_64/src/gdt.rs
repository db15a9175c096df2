//! The GDT, the TSS and the interrupt stacks (IST).
//!
//! The host target's code uses the 128-byte red zone below `rsp`, so an interrupt taken
//! on the interrupted code's own stack would overwrite live data. Every IDT vector
//! (all 256, the reserved exception vectors included: [`crate::interrupts::init`])
//! therefore switches to an IST stack ([`IstSlot`]). Each IST stack sits right above a
//! guard page that [`crate::paging`] leaves unmapped, so an overflow faults instead of
//! corrupting memory.

use core::cell::UnsafeCell;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// Bytes of one IST stack.
pub const IST_STACK_SIZE: usize = 64 * 1024;
/// Size of a guard page.
pub const GUARD_SIZE: usize = 4096;

/// The IST slots and what runs on each (the TSS numbers them from 1; the IDT takes the
/// index from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum IstSlot {
    /// CPU exceptions other than the three below.
    Exceptions = 0,
    /// Double fault (runs even when the exception stack overflowed).
    DoubleFault = 1,
    /// Non-maskable interrupt (can arrive at any moment).
    Nmi = 2,
    /// Machine check.
    MachineCheck = 3,
    /// Device and inter-processor interrupts (vectors 32..=255).
    Interrupts = 4,
}

/// Number of IST slots in use.
pub const IST_COUNT: usize = 5;

/// A stack with an unmapped guard page below it.
#[repr(C, align(4096))]
pub struct GuardedStack<const SIZE: usize> {
    guard: UnsafeCell<[u8; GUARD_SIZE]>,
    stack: UnsafeCell<[u8; SIZE]>,
}

// SAFETY: Rust code never reads or writes the stack bytes through this type; only the
// CPU uses them, as the stack of one IST slot on one CPU.
unsafe impl<const SIZE: usize> Sync for GuardedStack<SIZE> {}

impl<const SIZE: usize> core::fmt::Debug for GuardedStack<SIZE> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuardedStack({:#x}, {SIZE} bytes)", self.guard_address())
    }
}

impl<const SIZE: usize> GuardedStack<SIZE> {
    /// A zeroed stack (lives in `.bss`).
    pub const fn new() -> Self {
        Self {
            guard: UnsafeCell::new([0; GUARD_SIZE]),
            stack: UnsafeCell::new([0; SIZE]),
        }
    }

    /// Address of the guard page.
    pub fn guard_address(&self) -> u64 {
        self.guard.get() as u64
    }

    /// One past the stack's highest byte (the initial stack pointer).
    pub fn top(&self) -> u64 {
        self.stack.get() as u64 + SIZE as u64
    }

    /// The stack's lowest byte.
    pub fn bottom(&self) -> u64 {
        self.stack.get() as u64
    }
}

impl<const SIZE: usize> Default for GuardedStack<SIZE> {
    fn default() -> Self {
        Self::new()
    }
}

static IST_STACKS: [GuardedStack<IST_STACK_SIZE>; IST_COUNT] =
    [const { GuardedStack::new() }; IST_COUNT];

/// The boot CPU's TSS and GDT, written once by [`init`] before they are loaded.
struct Tables {
    tss: UnsafeCell<TaskStateSegment>,
    gdt: UnsafeCell<GlobalDescriptorTable>,
}

// SAFETY: written only by `init` on the boot CPU before any other CPU or interrupt can
// observe them; read-only (by the CPU) afterwards.
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables {
    tss: UnsafeCell::new(TaskStateSegment::new()),
    gdt: UnsafeCell::new(GlobalDescriptorTable::new()),
};

/// Guard pages under the IST stacks, for the page-table builder to leave unmapped.
pub fn ist_guard_pages() -> impl Iterator<Item = u64> {
    IST_STACKS.iter().map(GuardedStack::guard_address)
}

/// Address ranges of the IST stacks (for backtrace bounds checks).
pub fn ist_stack_ranges() -> impl Iterator<Item = (u64, u64)> {
    IST_STACKS.iter().map(|stack| (stack.bottom(), stack.top()))
}

/// Loads the GDT (kernel code and data, TSS) and the TSS with the IST stacks.
///
/// # Safety
/// Call once, on the boot CPU, with interrupts disabled.
pub unsafe fn init() {
    // SAFETY: per the contract, nothing else accesses the tables now.
    let tss = unsafe { &mut *TABLES.tss.get() };
    for (slot, stack) in IST_STACKS.iter().enumerate() {
        // Keep the stack pointer 16-byte aligned (the top is page aligned).
        tss.interrupt_stack_table[slot] = VirtAddr::new(stack.top());
    }
    // SAFETY: as above; nothing else accesses the GDT yet.
    let gdt = unsafe { &mut *TABLES.gdt.get() };
    // SAFETY: TABLES.tss lives forever and is not mutated after this point.
    let tss_static: &'static TaskStateSegment = unsafe { &*TABLES.tss.get() };
    // SAFETY: both tables live forever (a static), per this function's contract.
    unsafe { fill_and_load(gdt, tss_static) };
}

/// Appends kernel code, data and `tss` to `gdt`, loads it, reloads the segment registers
/// and loads the task register.
///
/// # Safety
/// `gdt` must be empty and, like `tss`, live (unmodified) for as long as this CPU runs.
unsafe fn fill_and_load(gdt: &'static mut GlobalDescriptorTable, tss: &'static TaskStateSegment) {
    let code: SegmentSelector = gdt.append(Descriptor::kernel_code_segment());
    let data: SegmentSelector = gdt.append(Descriptor::kernel_data_segment());
    let tss_selector = gdt.append(Descriptor::tss_segment(tss));
    // SAFETY: the GDT lives forever and holds valid 64-bit code/data descriptors and a
    // TSS descriptor; the selectors come from it.
    unsafe {
        gdt.load_unsafe();
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_selector);
    }
}

/// Loads a fresh GDT and TSS on an application processor, with IST stacks whose tops are
/// `ist_tops` (indexed by [`IstSlot`]); the tables are allocated and leaked (they live as
/// long as the CPU).
///
/// # Safety
/// Call once per AP, on that AP, with interrupts disabled; every top must be the
/// 16-byte aligned end of a stack of the AP's own.
pub unsafe fn init_application_processor(ist_tops: [u64; IST_COUNT]) {
    let mut tss = TaskStateSegment::new();
    for (slot, top) in ist_tops.iter().enumerate() {
        tss.interrupt_stack_table[slot] = VirtAddr::new(*top);
    }
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let gdt: &'static mut GlobalDescriptorTable =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(GlobalDescriptorTable::new()));
    // SAFETY: both tables are leaked: they live, unmodified, as long as this CPU.
    unsafe { fill_and_load(gdt, tss) };
}
