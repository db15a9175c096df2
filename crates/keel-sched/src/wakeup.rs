//! The cross-CPU wake-up queue: one lock-free multi-producer, single-consumer queue
//! per target CPU, whose head word also carries the target's "sleeping" flag.
//!
//! OSv keeps one queue per (source, target) pair plus a bit mask of non-empty queues
//! and an `idle_poll` flag. Keel folds that into a single word per target CPU:
//!
//! - **Producers** (any CPU, or a host thread) push a boxed node with one
//!   compare-and-swap on the head (a Treiber list, newest first).
//! - **The consumer** (the target CPU, and only it) takes the whole list with one swap
//!   and reverses it, so items come out in push order. It never pops single nodes,
//!   so there is no ABA problem.
//! - **Bit 0 of the head is `SLEEPING`**: the consumer sets it with a
//!   compare-and-swap from "empty" just before waiting for an interrupt
//!   ([`WakeQueue::try_sleep`]); it fails if anything is queued. A push replaces the
//!   head (clearing the bit) and reports whether it saw the bit; exactly that producer
//!   then sends the wake-up (IPI). While the target runs threads or polls, the bit is
//!   clear and producers send nothing.
//!
//! Because the queue and the flag are one atomic word, every push and the
//! consumer's "go to sleep" step are totally ordered by that word's modification
//! order: either the consumer's `try_sleep` comes first (the push sees `SLEEPING` and
//! wakes it) or the push comes first (`try_sleep` fails and the consumer drains).
//! No wake-up can be lost, and no fence is needed. `loom-tests/tests/wakeup.rs`
//! model-checks this; the atomics come from [`keel_sync::shim`] for that reason.
//!
//! Nodes are boxed (one allocation per cross-CPU wake-up). Node addresses are stored
//! in the word with exposed provenance; nodes are at least 2-aligned, so bit 0 is free.

use alloc::boxed::Box;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;

use keel_sync::shim::{AtomicUsize, Ordering};

/// Bit 0 of the head: the consumer is in, or about to enter, its idle wait.
const SLEEPING: usize = 1;

/// A multi-producer, single-consumer queue of `T` with the consumer's sleeping flag
/// (see the [module docs](self)).
pub struct WakeQueue<T> {
    /// Encoding: `address of newest node | SLEEPING?`; an address of 0 means empty.
    /// Nodes link newest to oldest through `Node::next`.
    ///
    /// Orderings: a push publishes its node with a `Release` compare-and-swap; the
    /// consumer takes the list with an `Acquire` swap, which makes every node reached
    /// from it (and the value inside) visible. Setting and clearing `SLEEPING` carries
    /// no data, so it is `Relaxed`: correctness rests on this being a single word.
    head: AtomicUsize,
    /// The queue owns the nodes in the list.
    _owns: PhantomData<Box<Node<T>>>,
}

/// One queued value; `next` is written only before the node is published.
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
    /// The consumer was asleep (and its flag is now clear): send it a wake-up.
    WakeConsumer,
}

// SAFETY: the queue moves `T`s from producers to the consumer (so `T: Send`), and
// the only shared state is the atomic head; nodes are exclusively owned by the
// pushing thread before publication and by the consumer after its swap.
unsafe impl<T: Send> Send for WakeQueue<T> {}
// SAFETY: as above: `&WakeQueue` only allows pushing (moving a `T` in) and, for the
// single consumer, draining (moving `T`s out); no `&T` is ever shared.
unsafe impl<T: Send> Sync for WakeQueue<T> {}

impl<T> WakeQueue<T> {
    /// An empty queue whose consumer is awake.
    pub fn new() -> Self {
        Self {
            head: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// Pushes `value` (any thread). Returns [`PushOutcome::WakeConsumer`] if the
    /// consumer was asleep: the caller must then send it a wake-up.
    pub fn push(&self, value: T) -> PushOutcome {
        let node = Box::into_raw(Box::new(Node {
            value,
            next: ptr::null_mut(),
        }));
        let address = node.expose_provenance();
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let older = ptr::with_exposed_provenance_mut::<Node<T>>(head & !SLEEPING);
            // SAFETY: relies on (1) `node` coming from `Box::into_raw` above, so it is
            // valid and aligned; (2) it not being published yet (the CAS below has not
            // succeeded), so no other thread can access it.
            unsafe { (*node).next = older };
            // SeqCst (not just Release): the scheduler pairs this push with a later
            // SeqCst load of the target's "polls its queue" flag, against the target's
            // SeqCst store of that flag followed by its drain (a store-load pattern that
            // needs both sides in the single total order).
            match self.head.compare_exchange_weak(
                head,
                address,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(previous) if previous & SLEEPING != 0 => return PushOutcome::WakeConsumer,
                Ok(_) => return PushOutcome::Queued,
                Err(actual) => head = actual,
            }
        }
    }

    /// Whether something is queued (a hint for the consumer's polling loop).
    pub fn has_pending(&self) -> bool {
        self.head.load(Ordering::SeqCst) & !SLEEPING != 0
    }

    /// Consumer only: sets the sleeping flag if and only if the queue is empty.
    /// Returns `false` if something is queued (then drain instead of sleeping).
    /// After waking up, the consumer calls [`drain`](Self::drain), which clears it.
    pub fn try_sleep(&self) -> bool {
        self.head
            .compare_exchange(0, SLEEPING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Consumer only: takes everything queued, in push order, and clears the sleeping
    /// flag. Calling it from two threads at once is safe but splits the items
    /// arbitrarily between them.
    pub fn drain(&self) -> Drain<T> {
        // Fast path: no read-modify-write (no cache-line write) when empty and awake.
        // SeqCst: the scheduler's store-then-drain must not miss a push whose waker
        // then read the "polls its queue" flag (see `Cpu::idle_polling`).
        if self.head.load(Ordering::SeqCst) == 0 {
            return Drain {
                next: ptr::null_mut(),
                _owns: PhantomData,
            };
        }
        let head = self.head.swap(0, Ordering::Acquire);
        let mut newest = ptr::with_exposed_provenance_mut::<Node<T>>(head & !SLEEPING);
        let mut oldest_first: *mut Node<T> = ptr::null_mut();
        while !newest.is_null() {
            // SAFETY: relies on (1) every node in the list having been published by a
            // `Release` CAS that our `Acquire` swap synchronises with, so it is
            // initialised and visible; (2) the swap having detached the list, so this
            // thread now owns every node in it exclusively.
            let older = unsafe { (*newest).next };
            // SAFETY: as above.
            unsafe { (*newest).next = oldest_first };
            oldest_first = newest;
            newest = older;
        }
        Drain {
            next: oldest_first,
            _owns: PhantomData,
        }
    }
}

impl<T> Default for WakeQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for WakeQueue<T> {
    fn drop(&mut self) {
        for value in self.drain() {
            drop(value);
        }
    }
}

impl<T> fmt::Debug for WakeQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.head.load(Ordering::Relaxed);
        f.debug_struct("WakeQueue")
            .field("pending", &(head & !SLEEPING != 0))
            .field("sleeping", &(head & SLEEPING != 0))
            .finish()
    }
}

/// The items taken by one [`WakeQueue::drain`], oldest first; drops the rest on drop.
pub struct Drain<T> {
    /// The oldest remaining node (owned, detached from the queue), or null.
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
    fn drains_in_push_order() {
        let queue = WakeQueue::new();
        for i in 0..5 {
            assert_eq!(queue.push(i), PushOutcome::Queued);
        }
        assert!(queue.has_pending());
        assert_eq!(queue.drain().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert!(!queue.has_pending());
        assert_eq!(queue.drain().count(), 0);
    }

    #[test]
    fn sleeping_flag_is_seen_by_exactly_one_push() {
        let queue = WakeQueue::new();
        assert!(queue.try_sleep());
        assert_eq!(queue.push(1), PushOutcome::WakeConsumer);
        assert_eq!(queue.push(2), PushOutcome::Queued);
        // Something is queued: the consumer may not sleep.
        assert!(!queue.try_sleep());
        assert_eq!(queue.drain().collect::<Vec<_>>(), [1, 2]);
        // Sleeping then waking with nothing queued: drain clears the flag.
        assert!(queue.try_sleep());
        assert_eq!(queue.drain().count(), 0);
        assert_eq!(queue.push(3), PushOutcome::Queued);
    }

    #[test]
    fn drop_frees_queued_and_undrained_items() {
        let item = Arc::new(());
        let queue = WakeQueue::new();
        for _ in 0..3 {
            let _ = queue.push(Arc::clone(&item));
        }
        let mut drain = queue.drain();
        drop(drain.next());
        drop(drain);
        let _ = queue.push(Arc::clone(&item));
        drop(queue);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing() {
        let queue = Arc::new(WakeQueue::new());
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    for i in 0..10_000_u64 {
                        let _ = queue.push(p * 1_000_000 + i);
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
