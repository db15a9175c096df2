//! In-guest stress of the kernel heap (`keel-heap` with its per-CPU object caches):
//! threads on every CPU allocate, write a pattern over each whole block, check it
//! before every free, and hand some blocks to a thread on another CPU, which checks
//! and frees them; at 2 and then 4 threads.

use super::TestResult;
use alloc::vec::Vec;
use core::alloc::Layout;
use keel_arch_x86_64::ArchInfo;
use keel_lfmutex::Mutex;

/// Steps each thread takes per run.
const STEPS: u32 = 3_000;

/// A live block: its address, layout and the seed of its pattern.
#[derive(Debug, Clone, Copy)]
struct Block {
    address: usize,
    layout: Layout,
    seed: u8,
}

/// The pattern byte at `offset` of a block with `seed`.
fn pattern(seed: u8, offset: usize) -> u8 {
    seed.wrapping_add((offset as u8).wrapping_mul(7))
}

/// Allocates a block of `layout` and writes its pattern over every byte; `None` when
/// the heap is exhausted.
fn allocate_filled(layout: Layout, seed: u8) -> Option<Block> {
    // SAFETY: every layout used here has a non-zero size.
    let pointer = unsafe { alloc::alloc::alloc(layout) };
    if pointer.is_null() {
        return None;
    }
    for offset in 0..layout.size() {
        // SAFETY: the block is ours for `layout.size()` bytes.
        unsafe { pointer.add(offset).write(pattern(seed, offset)) };
    }
    Some(Block {
        address: pointer.expose_provenance(),
        layout,
        seed,
    })
}

/// Checks every byte of `block` against its pattern, then frees it; the first wrong
/// offset if any (the block is then leaked, so nothing else can be hurt by it).
fn check_and_free(block: Block) -> Result<(), usize> {
    let pointer = core::ptr::with_exposed_provenance_mut::<u8>(block.address);
    for offset in 0..block.layout.size() {
        // SAFETY: the block is live and ours for `layout.size()` bytes.
        if unsafe { pointer.add(offset).read() } != pattern(block.seed, offset) {
            return Err(offset);
        }
    }
    // SAFETY: allocated by `allocate_filled` with this layout, freed once.
    unsafe { alloc::alloc::dealloc(pointer, block.layout) };
    Ok(())
}

/// One thread's part of [`stress`]: returns blocks that failed their check (block,
/// offset), at most a few.
fn stress_thread(
    thread: usize,
    threads: usize,
    mailboxes: &[Mutex<Vec<Block>, crate::threads::KernelParker>],
) -> Vec<(Block, usize)> {
    let mut corrupt = Vec::new();
    let free = |block: Block, corrupt: &mut Vec<(Block, usize)>| {
        if let Err(offset) = check_and_free(block)
            && corrupt.len() < 4
        {
            corrupt.push((block, offset));
        }
    };
    let mut live: Vec<Block> = Vec::with_capacity(48);
    let mut state = 0x9e37_79b9_u32 ^ (thread as u32 + 1);
    for step in 0..STEPS {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if live.len() < 48 && (!state.is_multiple_of(3) || live.is_empty()) {
            // Mostly pool sizes, one in sixteen a large block.
            let size = if state.is_multiple_of(16) {
                2017 + (state as usize >> 4) % 4000
            } else {
                8 + (state as usize >> 4) % 2009
            };
            let seed = (step as u8) ^ (thread as u8).wrapping_mul(31);
            let Ok(layout) = Layout::from_size_align(size, 8) else {
                continue;
            };
            if let Some(block) = allocate_filled(layout, seed) {
                live.push(block);
            }
        } else {
            let block = live.swap_remove(state as usize % live.len());
            if state % 7 < 2 {
                mailboxes[(thread + 1) % threads].lock().push(block);
            } else {
                free(block, &mut corrupt);
            }
        }
        if step % 64 == 0 {
            let received = core::mem::take(&mut *mailboxes[thread].lock());
            for block in received {
                free(block, &mut corrupt);
            }
        }
    }
    for block in live {
        free(block, &mut corrupt);
    }
    corrupt
}

/// Runs [`stress_thread`] on `threads` threads spread over the CPUs; every block
/// allocated is freed by the end; returns the corrupt blocks seen.
fn stress(threads: usize) -> Vec<(Block, usize)> {
    let mailboxes: alloc::sync::Arc<Vec<Mutex<Vec<Block>, crate::threads::KernelParker>>> =
        alloc::sync::Arc::new((0..threads).map(|_| Mutex::new(Vec::new())).collect());
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let mut handles = Vec::new();
    let mut corrupt = Vec::new();
    for thread in 0..threads {
        let options = keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(thread % cpus));
        let mailboxes = alloc::sync::Arc::clone(&mailboxes);
        match scheduler.spawn(options, move || stress_thread(thread, threads, &mailboxes)) {
            Ok(handle) => handles.push(handle),
            Err(_) => corrupt.push((
                Block {
                    address: 0,
                    layout: Layout::new::<u8>(),
                    seed: 0,
                },
                usize::MAX,
            )),
        }
    }
    for handle in handles {
        corrupt.extend(scheduler.join(handle).unwrap_or_default());
    }
    // Blocks still in a mailbox (sent after its owner's last look).
    for mailbox in mailboxes.iter() {
        for block in core::mem::take(&mut *mailbox.lock()) {
            if let Err(offset) = check_and_free(block) {
                corrupt.push((block, offset));
            }
        }
    }
    corrupt
}

/// At 2 and then 4 threads: no block loses a byte of its pattern and no spawn fails.
/// (The live-allocation count is checked exactly by the host tests; here the exited
/// threads' records are reclaimed at the scheduler's pace, so it is not a test.)
fn heap_stress_threads_check_contents(_: &ArchInfo) -> TestResult {
    for threads in [2, 4] {
        let corrupt = stress(threads);
        check!(
            corrupt.is_empty(),
            "a block lost its contents (offset usize::MAX: a spawn failed)",
            threads,
            corrupt
        );
    }
    Ok(())
}
ktest!(heap_stress_threads_check_contents);
