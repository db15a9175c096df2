//! In-guest cases for the TLB shootdown (issue 11, item 2): a mapping changed on CPU 0
//! must be seen changed by a CPU that had cached it, for a 4 KiB page and inside a
//! 2 MiB page (which the change splits); shootdowns started by every CPU at once, with
//! interrupts masked, all complete; and the cost of one round. The crash case
//! `guard-set-on-another-cpu` checks the review's own scenario, where the second read
//! must fault.

use super::{Failure, TestResult, has_two_cpus};
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use keel_arch_x86_64::tlb::{self, Flush};
use keel_arch_x86_64::{ArchInfo, kprintln, paging, percpu, time};
use keel_pagealloc::PageRange;
use keel_sched::{CpuId, SpawnOptions};
use keel_types::{PhysAddr, VirtAddr};
use x86_64::structures::paging::PageTableFlags;

/// A liveness guard for the hand-shakes between the two threads (seconds, not a timed
/// assertion: on time the hand-shake takes microseconds).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);

/// Reads the first word of the page at `address` through the current translation.
#[inline(never)]
fn read_page(address: u64) -> u64 {
    // SAFETY: the callers pass a page they own (allocated for the test) that is mapped
    // (present) when they read it, except the crash case, which reads a guard page on
    // purpose and never returns from the fault; one aligned word is read, volatile.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}

/// Fills the page at `address` with `value`.
fn fill_page(address: u64, value: u64) {
    let words = (paging::PAGE_SIZE / 8) as usize;
    for word in 0..words {
        // SAFETY: the caller owns the mapped page at `address`; aligned word writes.
        unsafe { core::ptr::write_volatile((address as *mut u64).add(word), value) };
    }
}

/// Spins until `stage` holds `value`, or the liveness limit passes (then false).
fn wait_for(stage: &AtomicU64, value: u64) -> bool {
    let end = time::now() + HANDSHAKE_LIMIT;
    while stage.load(Ordering::Acquire) != value {
        if time::now() > end {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// The review's scenario with a frame change instead of a guard (a fault is fatal): a
/// thread pinned on `reader_cpu` reads `page` (mapped to a frame filled with
/// `before`), so its TLB caches the translation; a thread pinned on CPU 0 maps `page`
/// to `new_frame` (filled with `after`); the reader reads again. Returns the two reads,
/// or `None` when a hand-shake timed out or the remap failed.
fn cross_cpu_remap(page: u64, new_frame: u64, reader_cpu: usize) -> Option<(u64, u64)> {
    static STAGE: AtomicU64 = AtomicU64::new(0);
    STAGE.store(0, Ordering::SeqCst);
    let scheduler = crate::threads::scheduler();
    let reader = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(reader_cpu)), move || {
        let first = read_page(page);
        STAGE.store(1, Ordering::Release);
        if !wait_for(&STAGE, 2) {
            return None;
        }
        Some((first, read_page(page), percpu::current_index()))
    });
    let changer = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
        if !wait_for(&STAGE, 1) {
            STAGE.store(3, Ordering::Release);
            return false;
        }
        let remapped = paging::map_page_to(VirtAddr::new(page), PhysAddr::new(new_frame));
        STAGE.store(2, Ordering::Release);
        remapped.is_ok()
    });
    let (Ok(reader), Ok(changer)) = (reader, changer) else {
        kprintln!("    spawn failed");
        return None;
    };
    let remapped = scheduler.join(changer);
    let read = scheduler.join(reader).flatten();
    match (remapped, read) {
        (Some(true), Some((first, second, ran_on))) if ran_on == reader_cpu => {
            Some((first, second))
        }
        other => {
            kprintln!("    remap ok, reads: {other:?}");
            None
        }
    }
}

const BEFORE: u64 = 0xa0a0_a0a0_0000_0000;
const AFTER: u64 = 0xb0b0_b0b0_0000_0000;

/// Runs [`cross_cpu_remap`] for `page` (mapped to itself, identity) and `other`
/// (another page owned by the caller) with every CPU but 0 as the reader, and maps
/// `page` back to itself after each round.
fn remap_seen_on_every_other_cpu(page: u64, other: u64) -> TestResult {
    let cpus = crate::threads::scheduler().cpu_count();
    for reader_cpu in 1..cpus {
        let tag = reader_cpu as u64;
        fill_page(page, BEFORE | tag);
        fill_page(other, AFTER | tag);
        let reads = cross_cpu_remap(page, other, reader_cpu);
        let restored = paging::map_page_to(VirtAddr::new(page), PhysAddr::new(page));
        check!(restored.is_ok(), "mapping the page back failed", restored);
        check!(reads.is_some(), "the two-CPU hand-shake failed", reader_cpu);
        let Some((first, second)) = reads else {
            return Ok(());
        };
        kprintln!(
            "    CPU {reader_cpu}: read {first:#x} before the remap on CPU 0, {second:#x} after"
        );
        check!(
            first == BEFORE | tag,
            "the first read saw the wrong frame",
            first
        );
        check!(
            second == AFTER | tag,
            "a CPU read the old frame through a stale TLB entry after the remap",
            reader_cpu,
            second
        );
        check!(
            read_page(page) == BEFORE | tag,
            "the page does not read its own frame after the restore"
        );
    }
    Ok(())
}

/// A 4 KiB page remapped to another frame on CPU 0 reads the new frame on every other
/// CPU, each of which read (and so cached) the old translation just before.
fn remapped_page_is_seen_by_every_other_cpu(_: &ArchInfo) -> TestResult {
    if !has_two_cpus() {
        return Ok(());
    }
    let pages = crate::memory::alloc_pages(2);
    check!(pages.is_ok(), "page allocation failed", pages);
    let Ok(pages) = pages else { return Ok(()) };
    let page = pages.start.as_u64() * paging::PAGE_SIZE;
    let result = remap_seen_on_every_other_cpu(page, page + paging::PAGE_SIZE);
    let freed = crate::memory::free_pages(pages);
    result?;
    check!(freed.is_ok(), "free failed", freed);
    Ok(())
}
ktest!(remapped_page_is_seen_by_every_other_cpu);

/// The same inside a 2 MiB mapping: the first remap splits it into 4 KiB pages, and the
/// other CPUs, which cached the 2 MiB translation, must drop it too.
fn remap_inside_a_huge_page_is_seen_by_other_cpus(_: &ArchInfo) -> TestResult {
    if !has_two_cpus() {
        return Ok(());
    }
    const HUGE: u64 = 2 * 1024 * 1024;
    // Runs of 4 MiB each hold an aligned 2 MiB block; earlier tests split some blocks
    // (thread stacks' guards), so look through a few.
    let mut runs: alloc::vec::Vec<PageRange> = alloc::vec::Vec::new();
    let mut huge_block = None;
    for _ in 0..16 {
        let Ok(run) = crate::memory::alloc_pages(2 * HUGE / paging::PAGE_SIZE) else {
            break;
        };
        runs.push(run);
        let start = run.start.as_u64() * paging::PAGE_SIZE;
        let block = start.next_multiple_of(HUGE);
        if paging::flags_of(VirtAddr::new(block))
            .is_some_and(|flags| flags.contains(PageTableFlags::HUGE_PAGE))
        {
            huge_block = Some(block);
            break;
        }
    }
    let result = match huge_block {
        // A page in the middle of the block, remapped to another page of the block.
        Some(block) => remap_seen_on_every_other_cpu(block + 0x10_0000, block + 0x1000),
        None => Err(Failure {
            message: "found no RAM still mapped by a 2 MiB page to test with",
            file: file!(),
            line: line!(),
        }),
    };
    let split = huge_block.map(|block| {
        paging::flags_of(VirtAddr::new(block + 0x10_0000))
            .is_some_and(|flags| !flags.contains(PageTableFlags::HUGE_PAGE))
    });
    for run in runs {
        let _ = crate::memory::free_pages(run);
    }
    result?;
    check!(
        split == Some(true),
        "the remap did not split the 2 MiB page",
        split
    );
    Ok(())
}
ktest!(remap_inside_a_huge_page_is_seen_by_other_cpus);

/// Every CPU's pinned thread starts shootdowns in a loop with interrupts masked, all at
/// once; initiators are serialised and a waiting one answers the others' requests, so
/// all complete (a deadlock would hang the suite, and the host's time limit fails it).
fn concurrent_shootdowns_from_every_cpu_complete(_: &ArchInfo) -> TestResult {
    if !has_two_cpus() {
        return Ok(());
    }
    // About 400 rounds in all, whatever the CPU count (the oversubscribed runs are slow).
    let rounds_each = (400 / crate::threads::scheduler().cpu_count() as u64).max(20);
    static STARTED: AtomicU64 = AtomicU64::new(0);
    STARTED.store(0, Ordering::SeqCst);
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let page = crate::memory::alloc_page();
    check!(page.is_some(), "page allocation failed");
    let Some(page) = page else { return Ok(()) };
    let address = page.as_u64() * paging::PAGE_SIZE;
    let rounds_before = tlb::rounds();
    let mut handles = alloc::vec::Vec::new();
    for cpu in 0..cpus {
        let spawned = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(cpu)), move || {
            STARTED.fetch_add(1, Ordering::AcqRel);
            // Start together, so that initiators meet.
            let all = wait_for(&STARTED, cpus as u64);
            for round in 0..rounds_each {
                x86_64::instructions::interrupts::without_interrupts(|| {
                    tlb::shootdown(if round % 8 == 0 {
                        Flush::All
                    } else {
                        Flush::Pages {
                            start: VirtAddr::new(address),
                            count: 1 + round % 4,
                        }
                    });
                });
            }
            all
        });
        check!(spawned.is_ok(), "spawn failed", cpu);
        if let Ok(handle) = spawned {
            handles.push(handle);
        }
    }
    let mut together = true;
    for handle in handles {
        together &= scheduler.join(handle) == Some(true);
    }
    let rounds = tlb::rounds() - rounds_before;
    let freed = crate::memory::free_page(page);
    check!(together, "the threads did not all start");
    check!(
        rounds >= rounds_each * cpus as u64,
        "fewer shootdown rounds than requested",
        rounds,
        rounds_each * cpus as u64
    );
    check!(freed.is_ok(), "free failed", freed);
    Ok(())
}
ktest!(concurrent_shootdowns_from_every_cpu_complete);

fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Measures one shootdown round of one page from CPU 0 to every other CPU (idle, then
/// each busy in a spinning thread) in TSC cycles, median over many rounds, beside a
/// local flush; checks only that every round reached every other CPU.
fn shootdown_round_cost(_: &ArchInfo) -> TestResult {
    // Busy targets take far longer under TCG on a loaded host: fewer samples there.
    const SAMPLES: usize = 1001;
    const BUSY_SAMPLES: usize = 101;
    if !has_two_cpus() {
        return Ok(());
    }
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let page = crate::memory::alloc_page();
    check!(page.is_some(), "page allocation failed");
    let Some(page) = page else { return Ok(()) };
    let address = page.as_u64() * paging::PAGE_SIZE;
    let flush = Flush::Pages {
        start: VirtAddr::new(address),
        count: 1,
    };
    let measure = move |round: fn(Flush), count: usize| {
        let mut samples = alloc::vec![0u64; count];
        for sample in samples.iter_mut() {
            let start = time::read_tsc();
            round(flush);
            *sample = time::read_tsc() - start;
        }
        samples
    };
    static STOP: AtomicU64 = AtomicU64::new(0);
    STOP.store(0, Ordering::SeqCst);
    let on_cpu0 = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
        let handled_before = tlb::requests_handled();
        let mut local = measure(tlb::flush_local, SAMPLES);
        let mut idle = measure(tlb::shootdown, SAMPLES);
        let handled_idle = tlb::requests_handled() - handled_before;
        // Now with a spinning thread on every other CPU.
        let scheduler = crate::threads::scheduler();
        let spinners: alloc::vec::Vec<_> = (1..cpus)
            .filter_map(|cpu| {
                scheduler
                    .spawn(SpawnOptions::new().pin(CpuId::new(cpu)), || {
                        while STOP.load(Ordering::Acquire) == 0 {
                            core::hint::spin_loop();
                        }
                    })
                    .ok()
            })
            .collect();
        let spinner_count = spinners.len();
        let mut busy = measure(tlb::shootdown, BUSY_SAMPLES);
        STOP.store(1, Ordering::Release);
        for spinner in spinners {
            scheduler.join(spinner);
        }
        (
            median(&mut local),
            median(&mut idle),
            median(&mut busy),
            handled_idle,
            spinner_count,
        )
    });
    check!(on_cpu0.is_ok(), "spawn failed");
    let Ok(on_cpu0) = on_cpu0 else { return Ok(()) };
    let result = scheduler.join(on_cpu0);
    let freed = crate::memory::free_page(page);
    check!(result.is_some(), "the measuring thread did not finish");
    let Some((local, idle, busy, handled_idle, spinners)) = result else {
        return Ok(());
    };
    kprintln!(
        "    one-page shootdown round from CPU 0 to {} other CPUs, TSC cycles (TCG-emulated): \
         median of {SAMPLES} with the targets idle {idle}, of {BUSY_SAMPLES} with each \
         target running a spinning thread {busy}; local invlpg only {local}",
        cpus - 1
    );
    check!(
        handled_idle >= (SAMPLES * (cpus - 1)) as u64,
        "not every round reached every other CPU",
        handled_idle
    );
    check!(
        spinners == cpus - 1,
        "spawning the spinners failed",
        spinners
    );
    check!(freed.is_ok(), "free failed", freed);
    Ok(())
}
ktest!(shootdown_round_cost);

/// Crash case `guard-set-on-another-cpu` (needs two CPUs): a thread pinned on CPU 1
/// reads a page, CPU 0 makes the page a guard, CPU 1 reads it again and must fault
/// (the host checks that the report names the page fault on CPU 1). Without a
/// shootdown CPU 1 read the old contents through its stale TLB entry.
fn guard_set_on_another_cpu() {
    static STAGE: AtomicU64 = AtomicU64::new(0);
    let scheduler = crate::threads::scheduler();
    if scheduler.cpu_count() < 2 {
        kprintln!("ktest: guard-set-on-another-cpu needs two CPUs");
        return;
    }
    let Some(frame) = crate::memory::alloc_page() else {
        kprintln!("ktest: page allocation failed");
        return;
    };
    let page = frame.as_u64() * paging::PAGE_SIZE;
    fill_page(page, BEFORE);
    let reader = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(1)), move || {
        let first = read_page(page);
        STAGE.store(1, Ordering::Release);
        if wait_for(&STAGE, 2) {
            kprintln!("ktest: CPU 1 read {first:#x}; reading it again after CPU 0 set the guard");
            let second = read_page(page);
            kprintln!(
                "ktest: CPU {} read the guard page's old contents {second:#x} without a fault",
                percpu::current_index()
            );
        } else {
            kprintln!("ktest: the hand-shake with CPU 0 timed out");
        }
    });
    let changer = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(0)), move || {
        if wait_for(&STAGE, 1) {
            let guarded = paging::set_guard_page(VirtAddr::new(page), true);
            kprintln!("ktest: CPU 0 made {page:#x} a guard page: {guarded:?}");
            STAGE.store(2, Ordering::Release);
        }
    });
    if let (Ok(reader), Ok(changer)) = (reader, changer) {
        scheduler.join(changer);
        scheduler.join(reader);
    }
}
crash!(Threads, guard_set_on_another_cpu);
