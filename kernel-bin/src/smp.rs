//! Bringing up the application processors: stacks and IST stacks for each, the
//! trampoline start (`keel_arch_x86_64::smp`), and each AP's path into the scheduler.

use crate::{memory, threads};
use core::sync::atomic::{AtomicU64, Ordering};
use keel_arch_x86_64::gdt::IST_COUNT;
use keel_arch_x86_64::{ArchInfo, apic, cpu, gdt, interrupts, paging, percpu, smp, tlb};
use keel_pagealloc::PAGE_SIZE;
use keel_sched::CpuId;
use keel_types::VirtAddr;
use x86_64::registers::control::Cr3;

/// Bytes of an AP's first stack (its idle loop runs on it).
pub(crate) const AP_STACK_SIZE: u64 = 64 * 1024;
/// Bytes of each of an AP's IST stacks.
pub(crate) const AP_IST_SIZE: u64 = 32 * 1024;

/// The boot CPU's page-table root, for the APs to load.
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);
/// IST stack tops of the AP being started (written before its start, read by it).
static NEXT_AP_IST_TOPS: [AtomicU64; IST_COUNT] = [const { AtomicU64::new(0) }; IST_COUNT];

/// The guard pages of every AP's stacks (first stack and IST stacks), for tests.
static AP_GUARD_PAGES: keel_sync::SpinLock<alloc::vec::Vec<VirtAddr>> =
    keel_sync::SpinLock::new(alloc::vec::Vec::new());

/// The guard pages under the application processors' stacks and IST stacks.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn ap_guard_pages() -> alloc::vec::Vec<VirtAddr> {
    AP_GUARD_PAGES.lock().clone()
}

/// A stack with a guard page below it; returns its top. Never freed (CPUs do not stop).
/// `above_4g`: only a range that starts at or above 4 GiB will do (a test option).
fn guarded_stack(bytes: u64, above_4g: bool) -> Option<VirtAddr> {
    let pages = bytes.div_ceil(PAGE_SIZE) + 1;
    let range = if above_4g {
        alloc_pages_above_4g(pages)?
    } else {
        memory::alloc_pages(pages).ok()?
    };
    // Identity-mapped: the run's physical start is its virtual address.
    let bottom = VirtAddr::new(range.start.as_u64() * PAGE_SIZE);
    paging::set_guard_page(bottom, true).ok()?;
    AP_GUARD_PAGES.lock().push(bottom);
    Some(bottom + pages * PAGE_SIZE)
}

/// `count` contiguous pages starting at or above 4 GiB, or `None` when there are none:
/// allocates until the allocator hands out such a range, then frees the others.
fn alloc_pages_above_4g(count: u64) -> Option<keel_pagealloc::PageRange> {
    let mut held = alloc::vec::Vec::new();
    let found = loop {
        match memory::alloc_pages(count) {
            Ok(range) if range.start.as_u64() * PAGE_SIZE >= 1 << 32 => break Some(range),
            Ok(range) => held.push(range),
            Err(_) => break None,
        }
    };
    for range in held {
        let _ = memory::free_pages(range);
    }
    found
}

/// Starts every CPU the MADT lists besides the boot CPU; returns how many CPUs run.
///
/// The command-line word `ktest.ap_stack_above_4g` puts each AP's first stack at or
/// above 4 GiB (boot with more than 4 GiB of memory), which the AP must survive
/// although the boot code's tables map only the first 4 GiB (issue 11 item 6). An AP
/// whose high stack cannot be had is not started, so the suite's CPU count check fails
/// instead of the test passing without a high stack.
///
/// With the `ktest` feature, `ktest.crash=ap-early-fault` starts each AP with its stack
/// pointer at the top of its stack's guard page, so the AP's first push (the
/// trampoline's `call`) page-faults before the AP has its own IDT: the early fault
/// handler of `keel_arch_x86_64::smp` must report it and end the VM with the failure
/// status (issue 11 item 6).
pub fn start_application_processors(info: &ArchInfo) -> usize {
    let Ok(platform) = &info.platform else {
        return 1;
    };
    let (root, _) = Cr3::read();
    KERNEL_CR3.store(root.start_address().as_u64(), Ordering::Relaxed);
    smp::install_trampoline();
    let high_stacks = info.boot.command_line_has("ktest.ap_stack_above_4g");
    let early_fault = cfg!(feature = "ktest")
        && info.boot.command_line_value("ktest.crash") == Some("ap-early-fault");
    let mut online = 1;
    for &apic_id in platform.apic_ids() {
        if apic_id == info.apic.id || online >= percpu::MAX_CPUS {
            continue;
        }
        let Some(stack_top) = guarded_stack(AP_STACK_SIZE, high_stacks) else {
            log::error!("no memory for the stack of CPU with APIC id {apic_id}");
            break;
        };
        // The deliberate crash: the top of the guard page (non-present) under the stack.
        let stack_top = if early_fault {
            stack_top - AP_STACK_SIZE
        } else {
            stack_top
        };
        if high_stacks || early_fault {
            log::info!("CPU with APIC id {apic_id} starts on a stack with top {stack_top:#x}");
        }
        for top in &NEXT_AP_IST_TOPS {
            let Some(ist_top) = guarded_stack(AP_IST_SIZE, false) else {
                log::error!("no memory for the IST stacks of APIC id {apic_id}");
                return online;
            };
            top.store(ist_top.as_u64(), Ordering::Relaxed);
        }
        let index = online;
        match smp::start_ap(apic_id, index, stack_top) {
            Ok(()) => {
                // Wait until the AP took its IST tops and is ready for the scheduler.
                let record = percpu::get(index);
                while !record.is_some_and(|record| record.online.load(Ordering::Acquire)) {
                    core::hint::spin_loop();
                }
                online += 1;
            }
            Err(error) => log::error!("CPU with APIC id {apic_id} did not start: {error:?}"),
        }
    }
    online
}

/// Each AP's Rust main, called by the trampoline on its own stack.
#[unsafe(no_mangle)]
pub fn keel_kernel_ap_main(index: usize) -> ! {
    percpu::init_this_cpu(index, 0);
    let root = KERNEL_CR3.load(Ordering::Relaxed);
    let frame =
        x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(root));
    let ist_tops =
        core::array::from_fn(|slot| VirtAddr::new(NEXT_AP_IST_TOPS[slot].load(Ordering::Relaxed)));
    // Before the IDT: the entry stubs save extended state with XSAVE when the boot CPU
    // chose it, which needs CR4.OSXSAVE on this CPU too.
    cpu::enable_extended_state();
    // SAFETY: the boot CPU's tables map everything this CPU runs (they are shared); the
    // IST tops are this AP's own fresh stacks; the IDT was filled by the boot CPU; all
    // with interrupts disabled, once, on this AP.
    unsafe {
        x86_64::registers::control::Cr3::write(
            frame,
            x86_64::registers::control::Cr3Flags::empty(),
        );
        gdt::init_application_processor(ist_tops);
        interrupts::load_on_application_processor();
    }
    apic::init_application_processor();
    percpu::init_this_cpu(index, apic::current_id());
    percpu::mark_online();
    // The scheduler is created by the boot CPU once all APs are up. Interrupts stay
    // masked until then, so the boot CPU's TLB shootdowns (it sets the guard pages of
    // the next APs' stacks meanwhile) are answered here, by polling.
    let scheduler = loop {
        if let Some(scheduler) = threads::try_scheduler() {
            break scheduler;
        }
        tlb::service_pending();
        core::hint::spin_loop();
    };
    scheduler.run_cpu(CpuId::new(index));
    panic!("the idle loop of CPU {index} returned")
}
