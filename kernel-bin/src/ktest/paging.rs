//! In-guest cases of the kernel's page tables (`keel_arch_x86_64::paging`): each
//! section's protection, RAM mapped no-execute, the null page and every stack guard
//! unmapped, and `paging::flags_of` on guard pages (issue 11 item 5) and the crash
//! report's guard-page test (issue 11 item 6). The TLB shootdown has its own file,
//! `shootdown.rs`.

use super::TestResult;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, Ordering};
use keel_arch_x86_64::{ArchInfo, gdt, interrupts, paging};
use keel_sched::SpawnOptions;
use keel_types::VirtAddr;
use x86_64::structures::paging::PageTableFlags;

fn kernel_text_is_read_execute(_: &ArchInfo) -> TestResult {
    let address = VirtAddr::from_ptr(kernel_text_is_read_execute as *const ());
    let flags = paging::flags_of(address);
    check!(flags.is_some(), "kernel text unmapped", address);
    let flags = flags.unwrap_or(PageTableFlags::empty());
    check!(
        !flags.contains(PageTableFlags::WRITABLE),
        "text is writable",
        flags
    );
    check!(
        !flags.contains(PageTableFlags::NO_EXECUTE),
        "text is not executable",
        flags
    );
    Ok(())
}
ktest!(kernel_text_is_read_execute);

static RODATA_PROBE: u64 = 0x6b65_656c;

fn kernel_rodata_is_read_only_no_execute(_: &ArchInfo) -> TestResult {
    let address = VirtAddr::from_ptr(&RODATA_PROBE);
    let flags = paging::flags_of(address).unwrap_or(PageTableFlags::empty());
    check!(
        flags.contains(PageTableFlags::PRESENT),
        "rodata unmapped",
        flags
    );
    check!(
        !flags.contains(PageTableFlags::WRITABLE),
        "rodata is writable",
        flags
    );
    check!(
        flags.contains(PageTableFlags::NO_EXECUTE),
        "rodata is executable",
        flags
    );
    check!(black_box(RODATA_PROBE) == 0x6b65_656c, "rodata value wrong");
    Ok(())
}
ktest!(kernel_rodata_is_read_only_no_execute);

static DATA_PROBE: AtomicBool = AtomicBool::new(false);

fn kernel_data_is_no_execute(_: &ArchInfo) -> TestResult {
    DATA_PROBE.store(true, Ordering::Relaxed);
    let address = VirtAddr::from_ptr(&DATA_PROBE);
    let flags = paging::flags_of(address).unwrap_or(PageTableFlags::empty());
    check!(
        flags.contains(PageTableFlags::WRITABLE),
        "data not writable",
        flags
    );
    check!(
        flags.contains(PageTableFlags::NO_EXECUTE),
        "data is executable",
        flags
    );
    let stack_variable = 0u64;
    let flags =
        paging::flags_of(VirtAddr::from_ptr(&stack_variable)).unwrap_or(PageTableFlags::empty());
    check!(
        flags.contains(PageTableFlags::NO_EXECUTE),
        "stack is executable",
        flags
    );
    Ok(())
}
ktest!(kernel_data_is_no_execute);

fn null_page_and_stack_guards_unmapped(_: &ArchInfo) -> TestResult {
    check!(
        paging::flags_of(VirtAddr::new(0)).is_none(),
        "page 0 is mapped"
    );
    let boot_guard = VirtAddr::from_ptr(&raw const keel_arch_x86_64::boot::keel_boot_stack_guard);
    check!(
        paging::flags_of(boot_guard).is_none(),
        "boot stack guard mapped",
        boot_guard
    );
    check!(
        paging::flags_of(boot_guard + 4096).is_some(),
        "boot stack bottom unmapped"
    );
    for guard in gdt::ist_guard_pages() {
        check!(paging::flags_of(guard).is_none(), "IST guard mapped", guard);
        check!(
            paging::flags_of(guard + 4096).is_some(),
            "IST stack unmapped",
            guard
        );
    }
    Ok(())
}
ktest!(null_page_and_stack_guards_unmapped);

fn ram_is_mapped_no_execute(info: &ArchInfo) -> TestResult {
    // Identity-mapped: the table region's physical start is its virtual address.
    let table_start = VirtAddr::new(info.paging.table_region_start.as_u64());
    for region in info
        .boot
        .memory_regions()
        .iter()
        .filter(|r| r.kind.is_memory())
    {
        // Identity-mapped RAM: physical addresses are virtual ones.
        for address in [region.start.as_u64().max(4096), region.end().as_u64() - 1] {
            let address = VirtAddr::new(address);
            if address >= info.layout.start && address < info.layout.end {
                continue;
            }
            let flags = paging::flags_of(address).unwrap_or(PageTableFlags::empty());
            check!(
                flags.contains(PageTableFlags::PRESENT),
                "RAM unmapped",
                address
            );
            check!(
                flags.contains(PageTableFlags::NO_EXECUTE),
                "RAM executable",
                address
            );
        }
    }
    check!(
        paging::flags_of(table_start).is_some(),
        "page tables unmapped"
    );
    Ok(())
}
ktest!(ram_is_mapped_no_execute);

/// The stack pointer's page rounded up: the top of the running thread's stack (the
/// thread's first frames are far smaller than a page).
fn stack_top_of_current_thread() -> VirtAddr {
    let rsp: u64;
    // SAFETY: reads the stack pointer; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    VirtAddr::new(rsp.next_multiple_of(paging::PAGE_SIZE))
}

/// Stack size of the thread whose guard page the tests look at.
pub const GUARD_TEST_STACK: u64 = 16 * 1024;

/// The guard page of a thread spawned with [`GUARD_TEST_STACK`] bytes of stack, as seen
/// from inside it (the kernel's stacks are page runs with the guard lowest).
pub fn guard_page_of_current_thread() -> VirtAddr {
    stack_top_of_current_thread() - GUARD_TEST_STACK - paging::PAGE_SIZE
}

/// Issue 11 item 5 (the item 3): `flags_of` calls a guard page unmapped: a
/// fresh page made a guard with `set_guard_page`, and a real thread stack's guard.
fn flags_of_calls_guard_pages_unmapped(_: &ArchInfo) -> TestResult {
    let frame = crate::memory::alloc_page();
    check!(frame.is_some(), "page allocation failed");
    let Some(frame) = frame else { return Ok(()) };
    // Identity-mapped: the frame's physical address is its virtual one.
    let address = VirtAddr::new(frame.as_u64() * paging::PAGE_SIZE);
    check!(
        paging::flags_of(address).is_some(),
        "a fresh RAM page is unmapped",
        address
    );
    let guarded = paging::set_guard_page(address, true);
    check!(guarded.is_ok(), "set_guard_page failed", guarded);
    let as_guard = paging::flags_of(address);
    let restored = paging::set_guard_page(address, false);
    let after = paging::flags_of(address);
    let freed = crate::memory::free_page(frame);
    check!(
        as_guard.is_none(),
        "flags_of calls a guard page mapped",
        address,
        as_guard
    );
    check!(restored.is_ok(), "unguarding failed", restored);
    check!(after.is_some(), "unguarded page not mapped", after);
    check!(freed.is_ok(), "free failed", freed);

    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    let spawned = scheduler.spawn(options, || {
        let guard = guard_page_of_current_thread();
        (
            guard,
            paging::flags_of(guard),
            paging::flags_of(guard + paging::PAGE_SIZE),
        )
    });
    check!(spawned.is_ok(), "spawn failed");
    let Ok(handle) = spawned else { return Ok(()) };
    let seen = scheduler.join(handle);
    check!(
        matches!(seen, Some((_, _, Some(_)))),
        "the lowest page of the thread's stack is unmapped",
        seen
    );
    check!(
        matches!(seen, Some((_, None, _))),
        "flags_of calls a thread stack's guard page mapped",
        seen
    );
    Ok(())
}
ktest!(flags_of_calls_guard_pages_unmapped);

/// Issue 11 item 6 (the item 9): the crash report's guard-page test names every
/// stack guard: the boot stack's, the boot CPU's IST stacks', every AP's stacks' and IST
/// stacks', and a thread stack's; not the null page, nor a mapped page.
fn every_stack_guard_is_recognised(_: &ArchInfo) -> TestResult {
    use keel_arch_x86_64::{boot, gdt};
    let boot_guard = VirtAddr::from_ptr(&raw const boot::keel_boot_stack_guard);
    check!(
        interrupts::is_stack_guard(boot_guard + 8),
        "the boot stack's guard is not recognised",
        boot_guard
    );
    for guard in gdt::ist_guard_pages() {
        check!(
            interrupts::is_stack_guard(guard + 0x100),
            "a boot-CPU IST guard is not recognised",
            guard
        );
    }
    let ap_guards = crate::smp::ap_guard_pages();
    let expected = (crate::threads::scheduler().cpu_count() - 1) * (1 + gdt::IST_COUNT);
    check!(
        ap_guards.len() == expected,
        "AP guard pages missing from the record",
        ap_guards.len(),
        expected
    );
    let unrecognised: alloc::vec::Vec<VirtAddr> = ap_guards
        .iter()
        .copied()
        .filter(|&guard| !interrupts::is_stack_guard(guard + 0x800))
        .collect();
    check!(
        unrecognised.is_empty(),
        "AP stack or IST guards are not recognised",
        unrecognised
    );
    let scheduler = crate::threads::scheduler();
    let options = SpawnOptions::new().stack_size(GUARD_TEST_STACK as usize);
    let spawned = scheduler.spawn(options, || {
        let guard = guard_page_of_current_thread();
        (guard, interrupts::is_stack_guard(guard + 0xff8))
    });
    check!(spawned.is_ok(), "spawn failed");
    let Ok(handle) = spawned else { return Ok(()) };
    let seen = scheduler.join(handle);
    check!(
        matches!(seen, Some((_, true))),
        "a thread stack's guard is not recognised",
        seen
    );
    let mapped = stack_top_of_current_thread() - paging::PAGE_SIZE;
    check!(
        !interrupts::is_stack_guard(VirtAddr::new(8)) && !interrupts::is_stack_guard(mapped),
        "the null page or a mapped page is called a guard",
        mapped
    );
    Ok(())
}
ktest!(every_stack_guard_is_recognised);
