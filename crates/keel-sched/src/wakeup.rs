//! The cross-CPU wake-up queue: for each target CPU, one lock-free queue per source
//! CPU (OSv's `incoming_wakeups[source]`), and one word that says which of them have
//! something and whether the target is asleep.
//!
//! - **Lanes.** A waker running on CPU `s` pushes onto lane `s` of the target; wakers
//!   that are not on a CPU of this scheduler (a host thread, in the hosted machine),
//!   and CPUs past the 62nd, share one last lane. Each lane is a Treiber list (newest
//!   first) of boxed nodes, pushed with a compare-and-swap: on its own lane a CPU only
//!   races with the target's drain, so the CAS does not retry under contention from
//!   other wakers, as a single shared head would.
//! - **The word** (`pending`): bit `i` announces lane `i` (set by a pusher after its
//!   push, cleared by the drain), and bit 63, `AWAKE`, is clear only while the target
//!   is in, or about to enter, its idle wait. A push announces itself and marks the
//!   target awake in one `fetch_or`; the one pusher that finds `AWAKE` clear sends the
//!   wake-up (IPI). The target clears `AWAKE` with a compare-and-swap from "awake,
//!   nothing announced" just before waiting ([`WakeQueue::try_sleep`]), which fails
//!   if anything is announced; its drain takes the announcements with one swap.
//! - **The consumer** (the target CPU, and only it) takes each announced lane's whole
//!   list with one swap and reverses it, so a lane's items come out in push order
//!   (lanes one after the other). It never pops single nodes: no ABA problem.
//!
//! Every announcement and the target's "go to sleep" step are read-modify-writes of
//! one word, so they are totally ordered by its modification order: either the
//! target's `try_sleep` comes first (the announcing `fetch_or` finds `AWAKE` clear and
//! its pusher wakes the target) or the announcement comes first (`try_sleep` fails
//! and the target drains). No wake-up can be lost, and no fence is needed.
//! `loom-tests/tests/wakeup.rs` model-checks this; the atomics come from
//! [`keel_sync::shim`] for that reason.
//!
//! OSv keeps the same per-(source, target) queues plus a mask of non-empty ones and
//! an `idle_poll` flag; Keel's difference is that the mask and the sleeping flag are
//! one word. Nodes are boxed (one allocation per cross-CPU wake-up). Node addresses
//! are stored with exposed provenance.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;

use keel_sync::shim::{AtomicU64, AtomicUsize, Ordering};

/// Bit 63 of `pending`: the consumer is not sleeping (clear from its `try_sleep`
/// until the next push or drain).
const AWAKE: u64 = 1 << 63;
/// The most lanes a queue has (bits 0..=62 of `pending`); the last one is shared.
const MAX_LANES: usize = 63;

/// Per-source lock-free queues towards one consumer, with the consumer's sleeping
/// flag (see the [module docs](self)).
pub struct WakeQueue<T> {
    /// Encoding: bit `i < lanes.len()` set = lane `i` may hold items; [`AWAKE`].
    ///
    /// Orderings: announcements and the drain's swap are `SeqCst`, because the
    /// scheduler pairs them with its "polls its queue" flag (a store-load pattern,
    /// see `Cpu::idle_polling`); the items themselves travel through the lanes.
    pending: AtomicU64,
    /// Lane `i` for source `i`, the last lane for everyone else.
    lanes: Box<[Lane<T>]>,
}

/// One source's queue: a Treiber list, newest first.
struct Lane<T> {
    /// Address of the newest node, 0 if empty. A push publishes its node with a
    /// `Release` compare-and-swap; the consumer takes the list with an `Acquire`
    /// swap, which makes every node reached from it (and the value inside) visible.
    head: AtomicUsize,
    /// The lane owns the nodes in its list.
    _owns: PhantomData<Box<Node<T>>>,
}

/// One queued value; `next` is written only before the node is published (and by
/// the consumer, once it owns the node).
struct Node<T> {
    value: T,
    next: *mut Node<T>,
}

/// Whether a push found the consumer asleep, i.e. whether the pusher must wake it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "if the consumer was asleep, the pusher must wake it"]
pub enum PushOutcome {
    /// The consumer was running or polling: it will see the item without help.
    Queued,
    /// The consumer was asleep (and is now marked awake): send it a wake-up.
    WakeConsumer,
}

// SAFETY: the queue moves `T`s from producers to the consumer (so `T: Send`), and
// the only shared state is atomics; nodes are exclusively owned by the pushing
// thread before publication and by the consumer after its swap.
unsafe impl<T: Send> Send for WakeQueue<T> {}
// SAFETY: as above: `&WakeQueue` only allows pushing (moving a `T` in) and, for the
// single consumer, draining (moving `T`s out); no `&T` is ever shared.
unsafe impl<T: Send> Sync for WakeQueue<T> {}

impl<T> WakeQueue<T> {
    /// An empty queue for pushers on CPUs `0..sources` (each with a lane of its own,
    /// up to 62 of them) and anyone else (one shared lane); the consumer is awake.
    pub fn new(sources: usize) -> Self {
        let lanes = (0..sources.min(MAX_LANES - 1) + 1)
            .map(|_| Lane {
                head: AtomicUsize::new(0),
                _owns: PhantomData,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            pending: AtomicU64::new(AWAKE),
            lanes,
        }
    }

    /// The lane of a pusher on CPU `source` (`None`: not on one of the sources).
    fn lane_index(&self, source: Option<usize>) -> usize {
        let shared = self.lanes.len() - 1;
        source.map_or(shared, |source| source.min(shared))
    }

    /// Pushes `value` from a pusher running on CPU `source` (`None` for anyone else;
    /// pushes from one source must not run concurrently for their lane to stay
    /// uncontended, but nothing breaks if they do). Returns
    /// [`PushOutcome::WakeConsumer`] if the consumer was asleep: the caller must then
    /// send it a wake-up.
    pub fn push(&self, source: Option<usize>, value: T) -> PushOutcome {
        let index = self.lane_index(source);
        let lane = &self.lanes[index];
        let node = Box::into_raw(Box::new(Node {
            value,
            next: ptr::null_mut(),
        }));
        let address = node.expose_provenance();
        let mut head = lane.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: relies on (1) `node` coming from `Box::into_raw` above, so it is
            // valid and aligned; (2) it not being published yet (the CAS below has not
            // succeeded), so no other thread can access it.
            unsafe { (*node).next = ptr::with_exposed_provenance_mut::<Node<T>>(head) };
            match lane.head.compare_exchange_weak(
                head,
                address,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
        let previous = self
            .pending
            .fetch_or((1 << index) | AWAKE, Ordering::SeqCst);
        if previous & AWAKE == 0 {
            PushOutcome::WakeConsumer
        } else {
            PushOutcome::Queued
        }
    }

    /// Whether something is announced (a hint for the consumer's polling loop).
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst) & !AWAKE != 0
    }

    /// Consumer only: marks the consumer asleep if and only if nothing is announced.
    /// Returns `false` if something is (then drain instead of sleeping). After waking
    /// up, the consumer calls [`drain`](Self::drain), which marks it awake.
    pub fn try_sleep(&self) -> bool {
        self.pending
            .compare_exchange(AWAKE, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Consumer only: takes everything announced, each lane in push order, and marks
    /// the consumer awake. Calling it from two threads at once is safe but splits
    /// the items arbitrarily between them.
    pub fn drain(&self) -> Drain<T> {
        // Fast path: no read-modify-write (no cache-line write) when empty and awake.
        // SeqCst: the scheduler's store-then-drain must not miss a push whose waker
        // then read the "polls its queue" flag (see `Cpu::idle_polling`).
        if self.pending.load(Ordering::SeqCst) == AWAKE {
            return Drain {
                next: ptr::null_mut(),
                _owns: PhantomData,
            };
        }
        let mut announced = self.pending.swap(AWAKE, Ordering::SeqCst) & !AWAKE;
        // The drained nodes, oldest first per lane, lanes in index order.
        let mut first: *mut Node<T> = ptr::null_mut();
        let mut last: *mut Node<T> = ptr::null_mut();
        while announced != 0 {
            let index = announced.trailing_zeros() as usize;
            announced &= announced - 1;
            let head = self.lanes[index].head.swap(0, Ordering::Acquire);
            let mut newest = ptr::with_exposed_provenance_mut::<Node<T>>(head);
            let lane_last = newest;
            let mut oldest_first: *mut Node<T> = ptr::null_mut();
            while !newest.is_null() {
                // SAFETY: relies on (1) every node in the list having been published
                // by a `Release` CAS that our `Acquire` swap synchronises with, so it
                // is initialised and visible; (2) the swap having detached the list,
                // so this thread now owns every node in it exclusively.
                let older = unsafe { (*newest).next };
                // SAFETY: as above.
                unsafe { (*newest).next = oldest_first };
                oldest_first = newest;
                newest = older;
            }
            if oldest_first.is_null() {
                // Announced, but an earlier drain took the items already.
                continue;
            }
            if last.is_null() {
                first = oldest_first;
            } else {
                // SAFETY: `last` is a node this drain owns (detached above).
                unsafe { (*last).next = oldest_first };
            }
            last = lane_last;
        }
        Drain {
            next: first,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for WakeQueue<T> {
    fn drop(&mut self) {
        // Announce every lane, so the drain looks at all of them.
        self.pending
            .fetch_or((1 << self.lanes.len()) - 1, Ordering::Relaxed);
        for value in self.drain() {
            drop(value);
        }
    }
}

impl<T> fmt::Debug for WakeQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.pending.load(Ordering::Relaxed);
        f.debug_struct("WakeQueue")
            .field("lanes", &self.lanes.len())
            .field("announced", &format_args!("{:#x}", pending & !AWAKE))
            .field("sleeping", &(pending & AWAKE == 0))
            .finish()
    }
}

/// The items taken by one [`WakeQueue::drain`]; drops the rest on drop.
pub struct Drain<T> {
    /// The next node (owned, detached from the queue), or null.
    next: *mut Node<T>,
    _owns: PhantomData<Box<Node<T>>>,
}

impl<T> Iterator for Drain<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.next.is_null() {
            return None;
        }
        // SAFETY: relies on `self.next` being a node detached by `drain`, owned by this
        // iterator alone and allocated by `Box::new` in `push`; it is unlinked before
        // being freed, so it is reclaimed exactly once.
        let node = unsafe { Box::from_raw(self.next) };
        self.next = node.next;
        Some(node.value)
    }
}

impl<T> Drop for Drain<T> {
    fn drop(&mut self) {
        for value in self.by_ref() {
            drop(value);
        }
    }
}

impl<T> fmt::Debug for Drain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("empty", &self.next.is_null())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn drains_each_lane_in_push_order() {
        let queue = WakeQueue::new(2);
        for i in 0..5 {
            assert_eq!(queue.push(Some(1), 10 + i), PushOutcome::Queued);
            assert_eq!(queue.push(None, 20 + i), PushOutcome::Queued);
            assert_eq!(queue.push(Some(0), i), PushOutcome::Queued);
        }
        assert!(queue.has_pending());
        // Lanes in index order (0, 1, shared), each in push order.
        assert_eq!(
            queue.drain().collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
        );
        assert!(!queue.has_pending());
        assert_eq!(queue.drain().count(), 0);
    }

    #[test]
    fn sources_past_the_lanes_share_the_last_lane() {
        let queue = WakeQueue::new(1);
        let _ = queue.push(Some(5), 1);
        let _ = queue.push(None, 2);
        let _ = queue.push(Some(0), 0);
        assert_eq!(queue.drain().collect::<Vec<_>>(), [0, 1, 2]);
        let wide = WakeQueue::new(1000);
        assert_eq!(wide.lanes.len(), MAX_LANES);
        let _ = wide.push(Some(999), 7);
        let _ = wide.push(Some(61), 6);
        assert_eq!(wide.drain().collect::<Vec<_>>(), [6, 7]);
    }

    #[test]
    fn sleeping_flag_is_seen_by_exactly_one_push() {
        let queue = WakeQueue::new(2);
        assert!(queue.try_sleep());
        assert_eq!(queue.push(Some(0), 1), PushOutcome::WakeConsumer);
        assert_eq!(queue.push(Some(1), 2), PushOutcome::Queued);
        // Something is announced: the consumer may not sleep.
        assert!(!queue.try_sleep());
        assert_eq!(queue.drain().collect::<Vec<_>>(), [1, 2]);
        // Sleeping then waking with nothing queued: drain marks it awake.
        assert!(queue.try_sleep());
        assert_eq!(queue.drain().count(), 0);
        assert_eq!(queue.push(None, 3), PushOutcome::Queued);
    }

    #[test]
    fn drop_frees_queued_and_undrained_items() {
        let item = Arc::new(());
        let queue = WakeQueue::new(3);
        for source in [Some(0), Some(2), None] {
            let _ = queue.push(source, Arc::clone(&item));
        }
        let mut drain = queue.drain();
        drop(drain.next());
        drop(drain);
        let _ = queue.push(Some(1), Arc::clone(&item));
        let _ = queue.push(None, Arc::clone(&item));
        drop(queue);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing() {
        // Two producers with lanes of their own, two sharing the last lane.
        let queue = Arc::new(WakeQueue::new(2));
        let producers: Vec<_> = (0..4_u64)
            .map(|p| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    let source = (p < 2).then_some(p as usize);
                    for i in 0..10_000_u64 {
                        let _ = queue.push(source, p * 1_000_000 + i);
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 40_000 {
            seen.extend(queue.drain());
            std::thread::yield_now();
        }
        for producer in producers {
            producer.join().unwrap();
        }
        // Per-producer FIFO order, and every item exactly once.
        for p in 0..4 {
            let mine: Vec<_> = seen.iter().filter(|v| **v / 1_000_000 == p).collect();
            assert_eq!(mine.len(), 10_000);
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
