//! Host tests of the per-CPU object caches (through [`ThreadCaches`]: one cache per
//! thread), and the multi-threaded stress test with content checks, run on the heap
//! with and without caches.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use keel_sync::NoInterruptMask;

use super::{ThreadCaches, TrackingSource, check, fill, layout};
use crate::cpu_cache::{batch_size, bin_capacity};
use crate::{CurrentCpu, HeapStats, KernelHeap, NoCpuCaches};

type CachedHeap<'a> = KernelHeap<&'a TrackingSource, NoInterruptMask, ThreadCaches, 64>;

/// The index of the 64-byte class.
const CLASS_64: usize = 2;

#[test]
fn a_freed_object_is_what_this_cpu_allocates_next() {
    let source = TrackingSource::default();
    let heap: CachedHeap<'_> = KernelHeap::with_interrupt_mask(&source);
    let request = layout(64, 8);
    let first = heap.allocate(request).unwrap();
    // The refill took half a bin beyond the caller's object.
    assert_eq!(heap.stats().cpu_cached_objects, bin_capacity(CLASS_64) / 2);
    // SAFETY: allocated just above with `request`.
    unsafe { heap.deallocate(first, request) };
    assert_eq!(heap.allocate(request), Some(first));
    // SAFETY: as above.
    unsafe { heap.deallocate(first, request) };
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.bytes_in_use), (0, 0));
    heap.trim();
    assert_eq!(heap.stats(), HeapStats::default());
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn a_full_bin_flushes_a_magazine_to_the_depot_and_the_depot_refills() {
    let source = TrackingSource::default();
    let heap: CachedHeap<'_> = KernelHeap::with_interrupt_mask(&source);
    let request = layout(64, 8);
    let capacity = bin_capacity(CLASS_64);
    let blocks: Vec<_> = (0..4 * capacity)
        .map(|_| heap.allocate(request).unwrap())
        .collect();
    for (freed, block) in blocks.iter().enumerate() {
        // SAFETY: allocated above with `request`, freed once.
        unsafe { heap.deallocate(*block, request) };
        let cached = heap.stats().cpu_cached_objects;
        assert!(cached <= capacity, "{cached} cached after {freed} frees");
    }
    let stats = heap.stats();
    assert!(stats.cpu_cached_objects > capacity / 2);
    // Three bins' worth went to the depot, in magazines of half a bin.
    assert_eq!(stats.depot_objects % batch_size(CLASS_64), 0);
    assert!(stats.depot_objects >= 2 * capacity, "{stats:?}");
    assert_eq!((stats.live_allocations, stats.bytes_in_use), (0, 0));
    // Allocating them all again empties the bin, then takes magazines back from the
    // depot: no object is lost or handed out twice.
    let mut again: Vec<_> = (0..4 * capacity)
        .map(|_| heap.allocate(request).unwrap().as_ptr().expose_provenance())
        .collect();
    assert!(heap.stats().depot_objects < stats.depot_objects);
    again.sort_unstable();
    again.dedup();
    assert_eq!(again.len(), 4 * capacity);
    for address in again {
        let block = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(address)).unwrap();
        // SAFETY: allocated just above with `request`, freed once.
        unsafe { heap.deallocate(block, request) };
    }
    heap.trim();
    assert_eq!(heap.stats(), HeapStats::default());
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn out_of_memory_returns_this_cpus_cached_objects_first() {
    // Four pages: fill them with 1 KiB objects, free them all into the bin (and the
    // pools), then ask for four whole pages: only a flush of the bin makes that fit.
    let source = TrackingSource::limited(4);
    let heap: CachedHeap<'_> = KernelHeap::with_interrupt_mask(&source);
    let request = layout(1024, 8);
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(request) {
        blocks.push(block);
    }
    assert_eq!(blocks.len(), 4 * 3);
    for block in blocks {
        // SAFETY: allocated above with `request`.
        unsafe { heap.deallocate(block, request) };
    }
    assert!(heap.stats().cpu_cached_objects > 0);
    let pages = heap.allocate(layout(4 * 4096, 8));
    assert!(pages.is_some(), "stats {:?}", heap.stats());
}

/// Sends blocks allocated on one thread to another, which checks and frees them: the
/// objects move between the two threads' caches and the pools, and every byte
/// written survives.
#[test]
fn blocks_freed_on_another_thread_keep_their_contents_and_all_pages_return() {
    let source = TrackingSource::default();
    let heap: CachedHeap<'_> = KernelHeap::with_interrupt_mask(&source);
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(usize, usize, u8)>(64);
    std::thread::scope(|scope| {
        let heap = &heap;
        scope.spawn(move || {
            for step in 0..20_000_usize {
                let size = 8 + (step * 37) % 2000;
                let block = heap.allocate(layout(size, 8)).unwrap();
                fill(block.as_ptr(), size, step as u8);
                sender
                    .send((block.as_ptr().expose_provenance(), size, step as u8))
                    .unwrap();
            }
        });
        scope.spawn(move || {
            for (address, size, seed) in receiver {
                let block = core::ptr::with_exposed_provenance_mut::<u8>(address);
                check(block, size, seed);
                // SAFETY: allocated by the other thread with this layout, sent here once.
                unsafe { heap.deallocate(NonNull::new(block).unwrap(), layout(size, 8)) };
            }
        });
    });
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.bytes_in_use), (0, 0));
    drop(heap);
    assert_eq!(source.outstanding_pages(), 0);
}

/// A block handed between threads in the stress test.
struct Shared {
    address: usize,
    request: Layout,
    seed: u8,
}

/// `threads` threads allocate blocks of 8 B to 6 KiB (fifteen in sixteen from the pools),
/// write a pattern over each whole
/// block, check it before every free, and hand a third of their blocks to the next
/// thread, which checks and frees them. Ends with nothing live and, after the heap is
/// dropped, every page back at the source.
///
/// The stress tests run one at a time, and with few large blocks: the heap's lock is a
/// FIFO ticket lock, and with more threads than host cores it convoys (the lock is
/// handed to a waiter that is not running, and every other waiter spins until the host
/// schedules it). Four threads on two cores took 0.2 s with the caches and 59 s
/// without them (2026-12-07, this machine), so the heap without caches is stressed at
/// two threads only: only the per-CPU caches keep the common path off that lock.
fn stress<C: CurrentCpu, const CPUS: usize>(threads: usize) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let source = Arc::new(TrackingSource::default());
    let heap: KernelHeap<_, NoInterruptMask, C, CPUS> =
        KernelHeap::with_interrupt_mask(Arc::clone(&source));
    let mailboxes: Vec<Mutex<Vec<Shared>>> = (0..threads).map(|_| Mutex::default()).collect();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (heap, mailboxes) = (&heap, &mailboxes);
            scope.spawn(move || {
                let check_and_free = |entry: Shared| {
                    let block = core::ptr::with_exposed_provenance_mut::<u8>(entry.address);
                    check(block, entry.request.size(), entry.seed);
                    // SAFETY: a live block allocated with `entry.request`, freed once.
                    unsafe { heap.deallocate(NonNull::new(block).unwrap(), entry.request) };
                };
                let mut live: Vec<Shared> = Vec::new();
                let mut state = 0x9e37_79b9_u32 ^ (thread as u32 + 1);
                for step in 0..6_000_u32 {
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
                        let request = layout(size, 8);
                        let seed = (step as u8) ^ (thread as u8).wrapping_mul(31);
                        let block = heap.allocate(request).unwrap();
                        fill(block.as_ptr(), size, seed);
                        live.push(Shared {
                            address: block.as_ptr().expose_provenance(),
                            request,
                            seed,
                        });
                    } else {
                        let entry = live.swap_remove(state as usize % live.len());
                        if state % 7 < 2 {
                            mailboxes[(thread + 1) % threads]
                                .lock()
                                .unwrap()
                                .push(entry);
                        } else {
                            check_and_free(entry);
                        }
                    }
                    if step % 64 == 0 {
                        let received = core::mem::take(&mut *mailboxes[thread].lock().unwrap());
                        received.into_iter().for_each(check_and_free);
                    }
                }
                live.into_iter().for_each(check_and_free);
            });
        }
    });
    for mailbox in mailboxes {
        for entry in mailbox.into_inner().unwrap() {
            let block = core::ptr::with_exposed_provenance_mut::<u8>(entry.address);
            check(block, entry.request.size(), entry.seed);
            // SAFETY: a live block allocated with `entry.request`, freed once.
            unsafe { heap.deallocate(NonNull::new(block).unwrap(), entry.request) };
        }
    }
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.bytes_in_use), (0, 0));
    drop(heap);
    assert_eq!(source.outstanding_pages(), 0);
}

#[test]
fn stress_two_threads_with_cpu_caches() {
    stress::<ThreadCaches, 64>(2);
}

#[test]
fn stress_four_threads_with_cpu_caches() {
    stress::<ThreadCaches, 64>(4);
}

#[test]
fn stress_two_threads_without_caches() {
    stress::<NoCpuCaches, 0>(2);
}
