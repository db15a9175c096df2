//! The lock-holder-preemption experiment (`app=lockbench` on the command line).
//!
//! Threads pinned round-robin to every CPU take one shared lock in a loop, with a short
//! critical section, for a fixed number of acquisitions in total. The lock is
//! `keel_sync::SpinLock` when the kernel is built with the `lock-spin` feature and the
//! lock-free mutex (`keel_lfmutex::Mutex` on Keel threads) otherwise, so two kernels that
//! differ only in the lock run the same workload. The feature `lfmutex-strict` builds
//! the mutex whose waiters never spin (OSv's rule; by default a waiter spins briefly
//! while the owner runs on a CPU that is not preempted). With more vCPUs
//! than host cores (`--smp 4` on this 2-core machine) vCPUs are descheduled by the host
//! at random moments, sometimes while holding the lock: spinning waiters then burn their
//! time slices, while the lock-free mutex's waiters sleep and give their vCPU to other
//! threads.
//!
//! Options: `lockbench.threads` (default 16), `lockbench.acquisitions` in total
//! (default 200 000) and `lockbench.work`, extra updates of the shared array inside
//! each critical section (default 0): a longer critical section makes a holder more
//! likely to be preempted inside it.
//!
//! `lockbench.target` picks what the threads contend on: `lock` (the default, above),
//! `heap` (each round allocates a block from the kernel heap, writes it, checks it and
//! frees it; sizes cycle through 16 B to 2 KiB, so every pool class is used) or `pages`
//! (each round allocates a single page from the page allocator, writes and checks a
//! word, and frees it). With the `heap-locked` feature the heap has no per-CPU caches,
//! so every heap call takes its global FIFO ticket lock: the heap kernels differ only
//! in that. The page allocator's single pages always go through its per-CPU caches.
//!
//! Prints one `lockbench:` line with the elapsed emulated time and the throughput.

use crate::threads;
#[cfg(not(feature = "lock-spin"))]
use crate::threads::KernelParker;
use alloc::vec::Vec;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_sched::{CpuId, SpawnOptions};

#[cfg(feature = "lock-spin")]
type BenchLock<T> = keel_sync::SpinLock<T>;
#[cfg(feature = "lock-spin")]
const LOCK_NAME: &str = "spinlock";

#[cfg(not(feature = "lock-spin"))]
type BenchLock<T> = keel_lfmutex::Mutex<T, KernelParker>;
#[cfg(not(feature = "lock-spin"))]
const LOCK_NAME: &str = if cfg!(feature = "lfmutex-strict") {
    "lfmutex-strict"
} else {
    "lfmutex"
};

/// Shared state behind the lock: a counter and a small array the critical section
/// touches, so it is not empty.
struct Shared {
    counter: u64,
    cells: [u64; 8],
}

static SHARED: BenchLock<Shared> = BenchLock::new(Shared {
    counter: 0,
    cells: [0; 8],
});

/// Heap or page rounds that succeeded, over every thread (the heap and page targets).
static ROUNDS_DONE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The critical section: count, and `work` more updates of the array.
///
/// Out of line, so that both kernels run the very same machine code whatever the
/// lock's guard looks like (inlined into the thread's loop, the lfmutex kernel's copy
/// ran 3-6x slower than the spinlock kernel's; papers/0005, 0006).
#[inline(never)]
fn critical_section(shared: &mut Shared, round: u64, work: u64) {
    shared.counter += 1;
    let slot = (round % 8) as usize;
    shared.cells[slot] = shared.cells[slot].wrapping_add(round);
    for step in 0..work {
        let slot = ((round + step) % 8) as usize;
        shared.cells[slot] = shared.cells[slot].wrapping_add(step ^ round);
    }
}

/// A numeric option; a value that is not a number is reported and the default used.
fn parse(info: &ArchInfo, key: &str, default: u64) -> u64 {
    match info.boot.command_line_value(key) {
        None => default,
        Some(text) => text.parse().unwrap_or_else(|_| {
            kprintln!("lockbench: {key}={text:?} is not a number; using {default}");
            default
        }),
    }
}

/// What the threads contend on (`lockbench.target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The shared lock.
    Lock,
    /// The kernel heap.
    Heap,
    /// The page allocator's single pages.
    Pages,
}

impl Target {
    fn parse(info: &ArchInfo) -> Option<Self> {
        match info.boot.command_line_value("lockbench.target") {
            None | Some("lock") => Some(Self::Lock),
            Some("heap") => Some(Self::Heap),
            Some("pages") => Some(Self::Pages),
            Some(other) => {
                kprintln!("lockbench: lockbench.target={other:?} is not lock, heap or pages");
                None
            }
        }
    }

    /// The name printed on the result line.
    fn name(self) -> &'static str {
        match self {
            Self::Lock => LOCK_NAME,
            Self::Heap if cfg!(feature = "heap-locked") => "heap-locked",
            Self::Heap => "heap",
            Self::Pages => "pages",
        }
    }
}

/// One heap round: allocate a block (16 B to 2 KiB by `round`), write its first and
/// last byte, check them, free it; false if the heap failed or the bytes were wrong.
#[inline(never)]
fn heap_round(round: u64) -> bool {
    let size = 16usize << (round % 8);
    let Ok(layout) = core::alloc::Layout::from_size_align(size.min(2016), 8) else {
        return false;
    };
    // SAFETY: non-zero size.
    let block = unsafe { alloc::alloc::alloc(layout) };
    if block.is_null() {
        return false;
    }
    let tag = round as u8;
    // SAFETY: the block is ours for `layout.size()` bytes; freed with its layout.
    unsafe {
        block.write(tag);
        block.add(layout.size() - 1).write(!tag);
        let intact = block.read() == tag && block.add(layout.size() - 1).read() == !tag;
        alloc::alloc::dealloc(block, layout);
        intact
    }
}

/// One page round: allocate a single page, write and check a word, free it; false if
/// the allocation or the free failed or the word was wrong.
#[inline(never)]
fn page_round(round: u64) -> bool {
    let Some(frame) = crate::memory::alloc_page() else {
        return false;
    };
    let Some(address) = frame.start_address() else {
        return false;
    };
    let word = address.as_u64() as *mut u64;
    // SAFETY: the page is ours until freed, identity-mapped and writable.
    let intact = unsafe {
        word.write_volatile(round);
        word.read_volatile() == round
    };
    intact && crate::memory::free_page(frame).is_ok()
}

/// Runs the experiment; returns false if the final count is wrong.
pub fn run(info: &ArchInfo) -> bool {
    let Some(target) = Target::parse(info) else {
        return false;
    };
    let scheduler = threads::scheduler();
    let cpus = scheduler.cpu_count();
    const MAX_THREADS: u64 = 4096;
    let thread_count = parse(info, "lockbench.threads", 16);
    if !(1..=MAX_THREADS).contains(&thread_count) {
        kprintln!("lockbench: lockbench.threads={thread_count} is outside 1..={MAX_THREADS}");
        return false;
    }
    let total = parse(info, "lockbench.acquisitions", 200_000).max(thread_count);
    const MAX_WORK: u64 = 1_000_000;
    let work = parse(info, "lockbench.work", 0);
    if work > MAX_WORK {
        kprintln!("lockbench: lockbench.work={work} is above {MAX_WORK}");
        return false;
    }
    let per_thread = total / thread_count;
    {
        let mut shared = SHARED.lock();
        shared.counter = 0;
    }
    ROUNDS_DONE.store(0, core::sync::atomic::Ordering::Relaxed);
    let start = time::now();
    let mut handles = Vec::new();
    for index in 0..thread_count {
        let options = SpawnOptions::new().pin(CpuId::new(index as usize % cpus));
        match scheduler.spawn(options, move || {
            for round in 0..per_thread {
                let done = match target {
                    Target::Lock => {
                        let mut guard = SHARED.lock();
                        critical_section(&mut guard, round, work);
                        continue;
                    }
                    Target::Heap => heap_round(round),
                    Target::Pages => page_round(round),
                };
                if done {
                    ROUNDS_DONE.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                }
            }
        }) {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                kprintln!("lockbench: spawn failed: {error:?}");
                return false;
            }
        }
    }
    for handle in handles {
        scheduler.join(handle);
    }
    // Nanoseconds; a u64 holds 584 years of them.
    let elapsed = u64::try_from((time::now() - start).as_nanos()).unwrap_or(u64::MAX);
    let counters = &threads::COUNTERS;
    let count = |counter: &core::sync::atomic::AtomicU64| {
        counter.load(core::sync::atomic::Ordering::Relaxed)
    };
    kprintln!(
        "lockbench: wake-up IPIs {}, halts {}, halts skipped {}, timer interrupts {} (whole run so far)",
        count(&counters.wakeup_ipis),
        count(&counters.halts),
        count(&counters.halts_skipped),
        count(&counters.timer_interrupts)
    );
    let counted = match target {
        Target::Lock => SHARED.lock().counter,
        Target::Heap | Target::Pages => ROUNDS_DONE.load(core::sync::atomic::Ordering::Relaxed),
    };
    let expected = per_thread * thread_count;
    kprintln!(
        "lockbench: lock={} cpus={cpus} threads={thread_count} acquisitions={counted} \
         work={work} elapsed_us={} throughput_per_ms={}",
        target.name(),
        elapsed / 1000,
        counted * 1_000_000 / elapsed.max(1)
    );
    counted == expected
}
