//! The intrusive lock-free multi-producer single-consumer queue of wait records.
//!
//! Producers push [`Node`]s they own (in the mutex: a record on the waiting thread's
//! stack) with one compare-and-swap on the head of a LIFO *push list*. The single
//! consumer takes the whole push list with one swap, reverses it into a private FIFO
//! *pop list* and pops from there, so records come out oldest first (OSv's
//! `lockfree::queue_mpsc`, the well-known Boost example). Pushing is lock-free,
//! popping is wait-free apart from the reversal.
//!
//! "Single consumer" is a protocol obligation of the caller, not a runtime check:
//! [`MpscQueue::pop`] is `unsafe` and its callers (the mutex's unlocker and whoever
//! takes the hand-off token, see the [crate docs](crate)) must be ordered by
//! happens-before. Under loom the `next` links are loom cells, so a violation shows
//! up as a causality violation in the models.

use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use keel_sync::shim::{AtomicUsize, Ordering, UnsafeCell};

/// A queue element: a link plus a value. Producers own their nodes; a node must stay
/// in place (not moved, not freed) from its push until its pop.
pub struct Node<T> {
    /// The next node: towards older pushes while on the push list, towards newer
    /// ones once reversed onto the pop list. Written by the pusher before the
    /// publishing compare-and-swap and by the consumer while reversing.
    next: UnsafeCell<*const Node<T>>,
    /// The payload, shared by the producer and the consumer.
    value: T,
}

impl<T> Node<T> {
    /// A node holding `value`, not linked anywhere.
    pub fn new(value: T) -> Self {
        Self {
            next: UnsafeCell::new(ptr::null()),
            value,
        }
    }

    /// The payload.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("value", &self.value).finish()
    }
}

/// The intrusive MPSC queue (see the [module docs](self)).
///
/// Both lists are stored as pointer addresses in `AtomicUsize`s because the sync
/// shim offers no `AtomicPtr`; pointers round-trip through
/// `<*const T>::expose_provenance` and
/// [`with_exposed_provenance`](core::ptr::with_exposed_provenance). Address 0 is null.
pub struct MpscQueue<T> {
    /// Head of the LIFO push list (newest first), or 0.
    ///
    /// Pushes publish a node with `compare_exchange_weak(.., AcqRel, Relaxed)`: the
    /// Release half publishes the node's `next` link (and its payload) to the
    /// consumer's Acquire swap; the Acquire half lets a pusher synchronise with a
    /// read-modify-write that preceded it in the modification order (the unlocker's
    /// [`MpscQueue::has_pushes_after`], on which the mutex's hand-off relies). The
    /// consumer takes the list with `swap(0, AcqRel)`.
    push_list: AtomicUsize,
    /// Head of the FIFO pop list (oldest first), or 0. Written only by the consumer
    /// (Release), read by the consumer (Acquire, so that a later consumer sees the
    /// links an earlier one reversed) and by emptiness checks of anybody (only
    /// compared with 0).
    pop_list: AtomicUsize,
    /// The queue links `Node<T>`s it does not own.
    _nodes: PhantomData<*const Node<T>>,
}

// SAFETY: the queue only stores addresses of nodes; it never drops or moves a `T`,
// and the payloads are reached by producers and the consumer through `&Node<T>`, so
// sharing the queue across threads shares `&T` across threads: sound when
// `T: Sync` (and `T: Send`, since whoever pops may use the payload on its thread).
unsafe impl<T: Send + Sync> Send for MpscQueue<T> {}
// SAFETY: as for `Send`; all shared mutation goes through the atomics and the
// `next` cells, whose accesses the push/pop protocol orders (see `push`/`pop`).
unsafe impl<T: Send + Sync> Sync for MpscQueue<T> {}

impl<T> Default for MpscQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for MpscQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpscQueue")
            .field("empty", &self.is_empty())
            .finish()
    }
}

impl<T> MpscQueue<T> {
    /// An empty queue.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            push_list: AtomicUsize::new(0),
            pop_list: AtomicUsize::new(0),
            _nodes: PhantomData,
        }
    }

    /// An empty queue (not `const` under loom).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            push_list: AtomicUsize::new(0),
            pop_list: AtomicUsize::new(0),
            _nodes: PhantomData,
        }
    }

    /// Pushes `node`; lock-free, may run concurrently with other pushes and a pop.
    ///
    /// # Safety
    /// `node` must point to a live `Node<T>` that is in no queue, and it must stay
    /// alive and in place (not moved, not reused) until a [`pop`](Self::pop) returns
    /// it and the consumer is done with it.
    pub unsafe fn push(&self, node: NonNull<Node<T>>) {
        let address = node.as_ptr().expose_provenance();
        let mut head = self.push_list.load(Ordering::Relaxed);
        loop {
            let old_head: *const Node<T> = ptr::with_exposed_provenance(head);
            // SAFETY: relies on (1) the caller's guarantee that `node` is live and in
            // no queue, so nobody else reads or writes its link now: the consumer
            // reaches it only after our compare-and-swap publishes it.
            node_ref(node)
                .next
                .with_mut(|next| unsafe { *next = old_head });
            match self.push_list.compare_exchange_weak(
                head,
                address,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Pops the oldest node, or `None` if the queue is empty.
    ///
    /// # Safety
    /// No other `pop` may run concurrently: every two pops must be ordered by
    /// happens-before (the queue's single-consumer rule).
    pub unsafe fn pop(&self) -> Option<NonNull<Node<T>>> {
        let head = self.pop_list.load(Ordering::Acquire);
        if let Some(node) = NonNull::new(ptr::with_exposed_provenance_mut::<Node<T>>(head)) {
            // SAFETY: relies on (1) `node` being on the pop list, hence pushed and not
            // yet popped, so alive by `push`'s contract; (2) the single-consumer rule:
            // only we touch pop-list links, and the previous consumer that wrote them
            // happens-before us.
            let next = node_ref(node).next.with(|next| unsafe { *next });
            self.pop_list
                .store(next.expose_provenance(), Ordering::Release);
            return Some(node);
        }
        let taken = self.push_list.swap(0, Ordering::AcqRel);
        let mut oldest = NonNull::new(ptr::with_exposed_provenance_mut::<Node<T>>(taken))?;
        // Reverse the taken LIFO list: `oldest` walks to its end (the oldest node, which
        // we return), `reversed` collects the others newest-last, i.e. oldest first.
        let mut reversed: *const Node<T> = ptr::null();
        loop {
            // SAFETY: relies on (1) every node on the taken list being pushed and not
            // popped, so alive; (2) our Acquire swap synchronising with each push's
            // Release compare-and-swap, so their link writes happen-before ours; (3) the
            // single-consumer rule: these nodes are now reachable only by us.
            let next = node_ref(oldest).next.with(|next| unsafe { *next });
            let Some(next) = NonNull::new(next.cast_mut()) else {
                break;
            };
            // SAFETY: as above.
            node_ref(oldest)
                .next
                .with_mut(|link| unsafe { *link = reversed });
            reversed = oldest.as_ptr();
            oldest = next;
        }
        self.pop_list
            .store(reversed.expose_provenance(), Ordering::Release);
        Some(oldest)
    }

    /// Whether the queue is empty right now (only a snapshot; may be called by
    /// anybody).
    pub fn is_empty(&self) -> bool {
        self.pop_list.load(Ordering::Acquire) == 0 && self.push_list.load(Ordering::Acquire) == 0
    }

    /// Whether anything is on the push list, read with a read-modify-write
    /// (`fetch_add(0, AcqRel)`) instead of a load.
    ///
    /// Being an RMW, it reads the latest value in the push list's modification order
    /// and, if it reads 0, every later push's Acquire compare-and-swap synchronises
    /// with it. The mutex's unlocker calls this right after publishing a hand-off
    /// token: either it sees the racing locker's push, or that locker's push (and so
    /// its subsequent token load) happens after the token was published. A plain
    /// load (even `SeqCst`) would need a `SeqCst` fence to give this, which loom does
    /// not model faithfully.
    pub(crate) fn has_pushes_after(&self) -> bool {
        self.push_list.fetch_add(0, Ordering::AcqRel) != 0
    }
}

/// `&Node<T>` from a pointer the queue protocol guarantees to be live.
fn node_ref<'a, T>(node: NonNull<Node<T>>) -> &'a Node<T> {
    // SAFETY: only called on nodes that the callers above have shown to be live (pushed
    // and not popped, or being pushed by their owner), and only shared references are
    // made: all mutation goes through the `next` cell.
    unsafe { node.as_ref() }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    #[test]
    fn fifo_order_single_thread() {
        let queue = MpscQueue::new();
        let nodes: Vec<_> = (0..5).map(Node::new).collect();
        assert!(queue.is_empty());
        // SAFETY: the nodes outlive the queue's use of them and are pushed once.
        unsafe {
            queue.push(NonNull::from(&nodes[0]));
            queue.push(NonNull::from(&nodes[1]));
            assert_eq!(*queue.pop().unwrap().as_ref().value(), 0);
            queue.push(NonNull::from(&nodes[2]));
            queue.push(NonNull::from(&nodes[3]));
            assert!(!queue.is_empty());
            assert_eq!(*queue.pop().unwrap().as_ref().value(), 1);
            queue.push(NonNull::from(&nodes[4]));
            for expected in 2..5 {
                assert_eq!(*queue.pop().unwrap().as_ref().value(), expected);
            }
            assert!(queue.pop().is_none());
        }
        assert!(queue.is_empty());
    }

    #[test]
    fn producers_in_parallel_each_in_order() {
        const PER_PRODUCER: usize = 2_000;
        let queue = Arc::new(MpscQueue::<(usize, usize)>::new());
        let producers: Vec<_> = (0..3)
            .map(|producer| {
                let queue = Arc::clone(&queue);
                thread::spawn(move || {
                    for index in 0..PER_PRODUCER {
                        let node = Box::leak(Box::new(Node::new((producer, index))));
                        // SAFETY: the node is leaked until the consumer frees it.
                        unsafe { queue.push(NonNull::from(node)) };
                    }
                })
            })
            .collect();
        let mut next_expected = [0_usize; 3];
        let mut received = 0;
        while received < 3 * PER_PRODUCER {
            // SAFETY: this thread is the only consumer.
            if let Some(node) = unsafe { queue.pop() } {
                // SAFETY: the node was leaked by its producer and is popped once.
                let node = unsafe { Box::from_raw(node.as_ptr()) };
                let (producer, index) = *node.value();
                assert_eq!(index, next_expected[producer]);
                next_expected[producer] += 1;
                received += 1;
            } else {
                thread::yield_now();
            }
        }
        for producer in producers {
            producer.join().unwrap();
        }
        assert!(queue.is_empty());
    }
}
