//! The GDT, the TSS and the interrupt stacks (IST).
//!
//! The host target's code uses the 128-byte red zone below `rsp`, so an interrupt taken
//! on the interrupted code's own stack would overwrite live data. Every IDT vector
//! (all 256, the reserved exception vectors included: [`crate::interrupts::init`])
//! therefore switches to an IST stack ([`IstSlot`]). Each IST stack sits right above a
//! guard page that [`crate::paging`] leaves unmapped, so an overflow faults instead of
//! corrupting memory.

use core::cell::UnsafeCell;
use keel_types::VirtAddr as VirtAddress;
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
    pub fn guard_address(&self) -> VirtAddress {
        VirtAddress::from_ptr(self.guard.get())
    }

    /// One past the stack's highest byte (the initial stack pointer).
    pub fn top(&self) -> VirtAddress {
        VirtAddress::new(self.bottom().as_u64() + SIZE as u64)
    }

    /// The stack's lowest byte.
    pub fn bottom(&self) -> VirtAddress {
        VirtAddress::from_ptr(self.stack.get())
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
pub fn ist_guard_pages() -> impl Iterator<Item = VirtAddress> {
    IST_STACKS.iter().map(GuardedStack::guard_address)
}

/// Address ranges of the IST stacks (for backtrace bounds checks).
pub fn ist_stack_ranges() -> impl Iterator<Item = (VirtAddress, VirtAddress)> {
    IST_STACKS.iter().map(|stack| (stack.bottom(), stack.top()))
}

/// A TSS whose IST entry for each [`IstSlot`] (TSS slot `slot + 1`) is `ist_tops[slot]`;
/// no other stack (ring 0 runs on its own stacks, there is no ring 3).
fn task_state_segment(ist_tops: [VirtAddress; IST_COUNT]) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    for (slot, top) in ist_tops.iter().enumerate() {
        tss.interrupt_stack_table[slot] = VirtAddr::new(top.as_u64());
    }
    tss
}

/// Loads the GDT (kernel code and data, TSS) and the TSS with the IST stacks.
///
/// # Safety
/// Call once, on the boot CPU, with interrupts disabled.
pub unsafe fn init() {
    // SAFETY: per the contract, nothing else accesses the tables now.
    let tss = unsafe { &mut *TABLES.tss.get() };
    // The stack tops are page aligned, so the stack pointers stay 16-byte aligned.
    *tss = task_state_segment(core::array::from_fn(|slot| IST_STACKS[slot].top()));
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
pub unsafe fn init_application_processor(ist_tops: [VirtAddress; IST_COUNT]) {
    let tss = task_state_segment(ist_tops);
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let gdt: &'static mut GlobalDescriptorTable =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(GlobalDescriptorTable::new()));
    // SAFETY: both tables are leaked: they live, unmodified, as long as this CPU.
    unsafe { fill_and_load(gdt, tss) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_stacks_sit_right_above_their_guard_page() {
        for stack in &IST_STACKS {
            assert!(stack.guard_address().is_aligned(GUARD_SIZE as u64));
            assert_eq!(
                stack.bottom().checked_offset_from(stack.guard_address()),
                Some(GUARD_SIZE as u64)
            );
            assert_eq!(
                stack.top().checked_offset_from(stack.bottom()),
                Some(IST_STACK_SIZE as u64)
            );
            // The CPU pushes the interrupt frame at a 16-byte aligned top.
            assert!(stack.top().is_aligned(16));
        }
        assert_eq!(ist_guard_pages().count(), IST_COUNT);
        let ranges: std::vec::Vec<_> = ist_stack_ranges().collect();
        for (index, (bottom, top)) in ranges.iter().enumerate() {
            for (other, (other_bottom, other_top)) in ranges.iter().enumerate() {
                assert!(index == other || top <= other_bottom || other_top <= bottom);
            }
        }
    }

    #[test]
    fn task_state_puts_each_slot_in_its_ist_entry() {
        let tops = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000];
        let tss = task_state_segment(tops.map(VirtAddress::new));
        for slot in [
            IstSlot::Exceptions,
            IstSlot::DoubleFault,
            IstSlot::Nmi,
            IstSlot::MachineCheck,
            IstSlot::Interrupts,
        ] {
            let index = slot as usize;
            assert!(index < IST_COUNT);
            assert_eq!(tss.interrupt_stack_table[index].as_u64(), tops[index]);
        }
        // Copies: the TSS is packed, its fields cannot be borrowed.
        let ist = tss.interrupt_stack_table;
        let privilege = tss.privilege_stack_table;
        assert!(ist[IST_COUNT..].iter().all(|entry| entry.is_null()));
        assert!(privilege.iter().all(|entry| entry.is_null()));
    }

    #[test]
    fn tss_descriptor_encodes_base_limit_and_type() {
        let tss: &'static TaskStateSegment = std::boxed::Box::leak(std::boxed::Box::new(
            task_state_segment([VirtAddress::new(0x8000); IST_COUNT]),
        ));
        let Descriptor::SystemSegment(low, high) = Descriptor::tss_segment(tss) else {
            panic!("a TSS descriptor is a 16-byte system segment");
        };
        let base = tss as *const TaskStateSegment as u64;
        let limit = (low & 0xffff) | ((low >> 48) & 0xf) << 16;
        assert_eq!(limit, size_of::<TaskStateSegment>() as u64 - 1);
        assert_eq!(limit, 103);
        let encoded_base =
            ((low >> 16) & 0xff_ffff) | ((low >> 56) & 0xff) << 24 | (high & 0xffff_ffff) << 32;
        assert_eq!(encoded_base, base);
        // Type 9 (available 64-bit TSS), a system descriptor (S = 0), present, DPL 0.
        assert_eq!((low >> 40) & 0xf, 0x9);
        assert_eq!((low >> 44) & 1, 0);
        assert_eq!((low >> 47) & 1, 1);
        assert_eq!((low >> 45) & 3, 0);
    }

    #[test]
    fn kernel_code_and_data_descriptors() {
        let (Descriptor::UserSegment(code), Descriptor::UserSegment(data)) = (
            Descriptor::kernel_code_segment(),
            Descriptor::kernel_data_segment(),
        ) else {
            panic!("code and data descriptors are 8-byte segments");
        };
        let bit = |descriptor: u64, index: u32| (descriptor >> index) & 1;
        // Code: present, DPL 0, executable, 64-bit (L = 1, D = 0).
        assert_eq!(bit(code, 47), 1);
        assert_eq!((code >> 45) & 3, 0);
        assert_eq!(bit(code, 43), 1);
        assert_eq!(bit(code, 53), 1);
        assert_eq!(bit(code, 54), 0);
        // Data: present, DPL 0, writable, not executable.
        assert_eq!(bit(data, 47), 1);
        assert_eq!((data >> 45) & 3, 0);
        assert_eq!(bit(data, 43), 0);
        assert_eq!(bit(data, 41), 1);
    }
}
