//! In-guest cases of the kernel's memory (`kernel-bin/src/memory.rs` over
//! `keel-pagealloc` and `keel-heap`): pages are distinct, writable and counted, double
//! frees are refused (single pages too, and counted), contiguous runs, heap collections without leaks, and large and
//! aligned heap allocations.

use super::{Failure, TestResult};
use crate::memory;
use keel_arch_x86_64::{ArchInfo, kprintln};

/// How often [`pages_are_distinct_and_writable`] measures before it calls a changed
/// free count a leak.
const FREE_COUNT_ROUNDS: u32 = 3;

/// 300 pages are distinct, writable and keep their contents, and freeing them restores
/// the free count. A stack of a thread that an earlier case left to be reclaimed may
/// come back to the allocator in the middle of a round (seen once: 17 pages, one
/// 64 KiB stack and its guard, right after the liveness cases); so a round whose count
/// moved is repeated, and only a count that moves in every round fails: a leak of this
/// case's own pages does.
fn pages_are_distinct_and_writable(_: &ArchInfo) -> TestResult {
    for round in 1..=FREE_COUNT_ROUNDS {
        let (free_before, free_after) = allocate_check_and_free_pages()?;
        if free_after == free_before {
            return Ok(());
        }
        kprintln!("    round {round}: free pages {free_before} before, {free_after} after");
        check!(
            round < FREE_COUNT_ROUNDS,
            "free page count not restored",
            free_before,
            free_after
        );
    }
    Ok(())
}
ktest!(pages_are_distinct_and_writable);

/// One round of [`pages_are_distinct_and_writable`]: the free counts before and after.
fn allocate_check_and_free_pages() -> Result<(u64, u64), Failure> {
    // Pages the heap holds (for this test's vectors) count as not free; add them back.
    let free_pages = || memory::free_page_count() + memory::heap_stats().pages_held as u64;
    let free_before = free_pages();
    let mut frames = alloc::vec::Vec::new();
    for index in 0..300u64 {
        let frame = memory::alloc_page();
        check!(frame.is_some(), "page allocation failed", index);
        let frame = frame.unwrap_or(keel_pagealloc::PageFrameNumber::new(0));
        let address = frame.as_u64() * 4096;
        // SAFETY: the page was just allocated to us, is RAM, and is identity-mapped.
        unsafe {
            core::ptr::write_bytes(address as *mut u8, 0, 4096);
            (address as *mut u64).write(frame.as_u64());
        }
        frames.push(frame);
    }
    let mut sorted = frames.clone();
    sorted.sort();
    sorted.dedup();
    check!(sorted.len() == frames.len(), "a page was handed out twice");
    for frame in &frames {
        // SAFETY: still ours, as above.
        let stored = unsafe { ((frame.as_u64() * 4096) as *const u64).read() };
        check!(
            stored == frame.as_u64(),
            "page contents overwritten",
            frame,
            stored
        );
    }
    for frame in frames {
        check!(
            memory::free_page(frame).is_ok(),
            "freeing a page failed",
            frame
        );
    }
    Ok((free_before, free_pages()))
}

fn page_double_free_is_refused(_: &ArchInfo) -> TestResult {
    let range = memory::alloc_pages(4);
    check!(range.is_ok(), "allocating 4 pages failed");
    let Ok(range) = range else { return Ok(()) };
    check!(memory::free_pages(range).is_ok(), "first free failed");
    let second = memory::free_pages(range);
    check!(second.is_err(), "double free accepted", second);
    Ok(())
}
ktest!(page_double_free_is_refused);

/// A single page freed twice through the per-CPU cache, the second time after a
/// drain could have moved it to the buddy allocator, is refused at once and counted
/// in `rejected_free_count`; the next allocations never hand it out twice.
fn single_page_double_free_is_refused_and_counted(_: &ArchInfo) -> TestResult {
    let rejected_before = memory::rejected_free_count();
    let page = memory::alloc_page();
    check!(page.is_some(), "page allocation failed");
    let Some(page) = page else { return Ok(()) };
    check!(memory::free_page(page).is_ok(), "first free failed");
    let second = memory::free_page(page);
    check!(second.is_err(), "double free accepted", second);
    let rejected_after = memory::rejected_free_count();
    check!(
        rejected_after == rejected_before + 1,
        "refusal not counted",
        rejected_before,
        rejected_after
    );
    let first = memory::alloc_page();
    let next = memory::alloc_page();
    check!(
        first.is_some() && first != next,
        "a page handed out twice",
        first,
        next
    );
    for page in [first, next].into_iter().flatten() {
        check!(
            memory::free_page(page).is_ok(),
            "freeing a page failed",
            page
        );
    }
    Ok(())
}
ktest!(single_page_double_free_is_refused_and_counted);

fn contiguous_page_runs(_: &ArchInfo) -> TestResult {
    for count in [1u64, 3, 16, 512, 4096] {
        let range = memory::alloc_pages(count);
        check!(range.is_ok(), "run allocation failed", count);
        let Ok(range) = range else { return Ok(()) };
        check!(range.count == count, "wrong run length", count, range.count);
        let start = range.start.as_u64() * 4096;
        let end = start + count * 4096;
        // SAFETY: the run is ours, RAM, identity-mapped read-write.
        unsafe {
            (start as *mut u8).write(0xa5);
            ((end - 1) as *mut u8).write(0x5a);
        }
        check!(memory::free_pages(range).is_ok(), "run free failed", count);
    }
    Ok(())
}
ktest!(contiguous_page_runs);

fn heap_collections_work(_: &ArchInfo) -> TestResult {
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    let before = memory::heap_stats();
    {
        let numbers: alloc::vec::Vec<u64> = (0..200_000).collect();
        let sum: u64 = numbers.iter().sum();
        check!(sum == 199_999 * 200_000 / 2, "vector sum wrong", sum);
        let mut map = BTreeMap::new();
        for key in 0..5_000u32 {
            map.insert(
                key.wrapping_mul(2_654_435_761),
                alloc::format!("value {key}"),
            );
        }
        check!(map.len() == 5_000, "map lost entries", map.len());
        let boxed = alloc::boxed::Box::new([7u8; 3000]);
        check!(boxed.iter().all(|&byte| byte == 7), "box contents wrong");
        let mut text = String::new();
        for _ in 0..1000 {
            text.push_str("keel ");
        }
        check!(text.len() == 5000, "string length wrong", text.len());
    }
    let after = memory::heap_stats();
    check!(
        after.live_allocations == before.live_allocations
            && after.bytes_in_use == before.bytes_in_use,
        "heap leaked",
        before,
        after
    );
    Ok(())
}
ktest!(heap_collections_work);

fn heap_large_and_aligned_allocations(_: &ArchInfo) -> TestResult {
    use core::alloc::Layout;
    for (size, align) in [(4 << 20, 8), (100, 4096), (5000, 65536), (1, 1), (24, 16)] {
        let layout = Layout::from_size_align(size, align);
        check!(layout.is_ok(), "bad layout", size, align);
        let Ok(layout) = layout else { return Ok(()) };
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc::alloc::alloc(layout) };
        check!(!pointer.is_null(), "allocation failed", size, align);
        check!(
            (pointer as usize).is_multiple_of(align),
            "misaligned",
            size,
            align,
            pointer
        );
        // SAFETY: the block is ours for `size` bytes.
        unsafe {
            pointer.write(1);
            pointer.add(size - 1).write(2);
            alloc::alloc::dealloc(pointer, layout);
        }
    }
    Ok(())
}
ktest!(heap_large_and_aligned_allocations);

/// The kernel's `IrqSpinLock`s (page allocator, page caches, heap) mask interrupts for
/// the guard's whole life and restore the previous state after, nested or not; and
/// the memory statistics, which take those locks, leave the interrupt state as it was.
fn irq_spin_lock_masks_interrupts(_: &ArchInfo) -> TestResult {
    use x86_64::instructions::interrupts;
    static LOCK: keel_sync::IrqSpinLock<u32, memory::KernelInterrupts> =
        keel_sync::IrqSpinLock::new(0);
    static INNER: keel_sync::IrqSpinLock<u32, memory::KernelInterrupts> =
        keel_sync::IrqSpinLock::new(0);
    let before = interrupts::are_enabled();
    {
        let mut guard = LOCK.lock();
        check!(!interrupts::are_enabled(), "lock held with interrupts on");
        *guard += 1;
        drop(INNER.lock());
        check!(
            !interrupts::are_enabled(),
            "inner guard re-enabled interrupts"
        );
    }
    check!(
        interrupts::are_enabled() == before,
        "interrupts not restored",
        before
    );
    let free = memory::free_page_count();
    let stats = memory::heap_stats();
    check!(
        interrupts::are_enabled() == before,
        "memory statistics changed the interrupt state",
        free,
        stats.pages_held
    );
    interrupts::without_interrupts(|| drop(LOCK.lock()));
    check!(
        interrupts::are_enabled(),
        "state not restored after nesting"
    );
    Ok(())
}
ktest!(irq_spin_lock_masks_interrupts);
