//! A CPU's run queue and timer queue, both intrusive: the links live in the thread
//! record ([`ThreadInner`]), so queueing a thread, taking the next one and firing a
//! timer allocate nothing (the switch, wake-up and interrupt paths must not, see
//! `crates/keel-hosted/tests/no_alloc.rs`).
//!
//! - [`RunQueue`]: for an ordering policy (the fair one), a red-black tree
//!   (`intrusive-collections`' `RBTree`) keyed on [`RunKey`], the policy's key with
//!   the enqueue sequence breaking ties; for a FIFO policy
//!   ([`Policy::FIFO_ORDER`](crate::Policy::FIFO_ORDER), round-robin), a doubly linked
//!   list: push at the back, pop at the front, all O(1). Only one of the two is used
//!   by a given policy (the choice is a constant, so the other branch folds away).
//! - [`TimerQueue`]: sleeping threads ordered by (deadline, sequence), another tree.
//!
//! Each queue holds one `Arc` of each of its threads (moved in on insert, moved out on
//! removal: no reference-count traffic). A thread sits in at most one run queue (it is
//! queued only by its home CPU, when `QUEUED`, and taken out before it runs or
//! migrates) and in at most one timer queue (a sleep waits until its entry fired, and
//! the entry leaves the queue as it fires). The tree and list panic rather than link a
//! thread that is already linked. Links and keys are touched only by the CPU whose
//! queue holds the thread, with interrupts masked (like `Accounting`).
//!
//! The adapter macro expands to `unsafe impl`s of the crate's `Adapter` trait (field
//! offsets within `ThreadInner`); this module writes no `unsafe` of its own.

use alloc::sync::Arc;
use core::cmp::Ordering as CmpOrdering;

use intrusive_collections::{
    KeyAdapter, LinkedList, LinkedListLink, RBTree, RBTreeLink, intrusive_adapter,
};

use crate::thread::ThreadInner;

/// A queued thread's place in an ordered run queue: the policy's key, then the
/// enqueue sequence (ties run in enqueue order). Ordered by `f64::total_cmp`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunKey {
    pub(crate) key: f64,
    pub(crate) sequence: u64,
}

impl PartialEq for RunKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for RunKey {}
impl PartialOrd for RunKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for RunKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.key
            .total_cmp(&other.key)
            .then(self.sequence.cmp(&other.sequence))
    }
}

/// A sleeping thread's timer: its deadline, a sequence number (ties fire in the
/// order the sleeps began), and the sleep generation the entry belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TimerKey {
    pub(crate) deadline: u64,
    pub(crate) sequence: u64,
    pub(crate) generation: u64,
}

intrusive_adapter!(pub(crate) SortedAdapter = Arc<ThreadInner>: ThreadInner { run_link => RBTreeLink });
intrusive_adapter!(pub(crate) FifoAdapter = Arc<ThreadInner>: ThreadInner { fifo_link => LinkedListLink });
intrusive_adapter!(pub(crate) TimerAdapter = Arc<ThreadInner>: ThreadInner { timer_link => RBTreeLink });

impl<'a> KeyAdapter<'a> for SortedAdapter {
    type Key = RunKey;
    fn get_key(&self, thread: &'a ThreadInner) -> RunKey {
        thread.run_key.get()
    }
}

impl<'a> KeyAdapter<'a> for TimerAdapter {
    type Key = (u64, u64);
    fn get_key(&self, thread: &'a ThreadInner) -> (u64, u64) {
        let key = thread.timer_key.get();
        (key.deadline, key.sequence)
    }
}

/// One CPU's queued (runnable, not running) threads; see the [module docs](self).
pub(crate) struct RunQueue {
    /// `FIFO_ORDER` of the CPU's policy: use `fifo`, not `sorted`.
    fifo_order: bool,
    /// Ordered queues: the thread that runs next, kept out of `sorted` (whose other
    /// threads all run after it), so that peeking is O(1) and the common switch
    /// between a few threads (one queued at a time) never touches the tree. `None`
    /// only when the queue is empty.
    first: Option<Arc<ThreadInner>>,
    sorted: RBTree<SortedAdapter>,
    fifo: LinkedList<FifoAdapter>,
    /// Number of queued threads (neither collection counts).
    len: usize,
}

impl RunQueue {
    /// An empty queue, FIFO (a list) or ordered by key (a tree).
    pub(crate) fn new(fifo_order: bool) -> Self {
        Self {
            fifo_order,
            first: None,
            sorted: RBTree::new(SortedAdapter::new()),
            fifo: LinkedList::new(FifoAdapter::new()),
            len: 0,
        }
    }

    /// Queues `thread` at `key`. For a FIFO queue keys must not decrease from one
    /// insert to the next (they are the enqueue sequence).
    pub(crate) fn insert(&mut self, key: RunKey, thread: Arc<ThreadInner>) {
        thread.run_key.set(key);
        if self.fifo_order {
            debug_assert!(
                self.fifo
                    .back()
                    .get()
                    .is_none_or(|last| last.run_key.get() <= key),
                "FIFO run queue keys must not decrease"
            );
            self.fifo.push_back(thread);
        } else {
            match self.first.take() {
                None => self.first = Some(thread),
                Some(first) if key < first.run_key.get() => {
                    self.sorted.insert(first);
                    self.first = Some(thread);
                }
                Some(first) => {
                    self.sorted.insert(thread);
                    self.first = Some(first);
                }
            }
        }
        self.len += 1;
    }

    /// Takes the thread that runs next (the smallest key).
    pub(crate) fn pop(&mut self) -> Option<Arc<ThreadInner>> {
        let thread = if self.fifo_order {
            self.fifo.pop_front()
        } else {
            let first = self.first.take();
            if first.is_some() && !self.sorted.is_empty() {
                self.first = self.sorted.front_mut().remove();
            }
            first
        };
        if thread.is_some() {
            self.len -= 1;
        }
        thread
    }

    /// The thread that runs next.
    pub(crate) fn peek(&self) -> Option<&ThreadInner> {
        if self.fifo_order {
            self.fifo.front().get()
        } else {
            self.first.as_deref()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Takes the thread that would run last among those `eligible` accepts.
    pub(crate) fn take_last_where(
        &mut self,
        eligible: impl Fn(&ThreadInner) -> bool,
    ) -> Option<Arc<ThreadInner>> {
        let thread = if self.fifo_order {
            let mut cursor = self.fifo.back_mut();
            while cursor.get().is_some_and(|thread| !eligible(thread)) {
                cursor.move_prev();
            }
            cursor.remove()
        } else {
            let mut cursor = self.sorted.back_mut();
            while cursor.get().is_some_and(|thread| !eligible(thread)) {
                cursor.move_prev();
            }
            match cursor.remove() {
                Some(thread) => Some(thread),
                // Only `first` is left to look at.
                None if self.first.as_deref().is_some_and(&eligible) => {
                    let first = self.first.take();
                    self.first = self.sorted.front_mut().remove();
                    first
                }
                None => None,
            }
        };
        if thread.is_some() {
            self.len -= 1;
        }
        thread
    }

    /// Calls `rekey` on every queued thread and re-sorts by the keys it returns. The
    /// tree is rebuilt (taken apart and re-linked node by node, allocating nothing),
    /// since a new key may reorder threads (rare: the fair policy's renormalisation,
    /// about once per 71 s of CPU time).
    pub(crate) fn rekey_all(&mut self, mut rekey: impl FnMut(&ThreadInner) -> f64) {
        if self.fifo_order {
            for thread in self.fifo.iter() {
                let old = thread.run_key.get();
                thread.run_key.set(RunKey {
                    key: rekey(thread),
                    ..old
                });
            }
            return;
        }
        let mut old = self.sorted.take();
        if let Some(first) = self.first.take() {
            old.insert(first);
        }
        let mut cursor = old.front_mut();
        while let Some(thread) = cursor.remove() {
            let key = RunKey {
                key: rekey(&thread),
                ..thread.run_key.get()
            };
            thread.run_key.set(key);
            self.sorted.insert(thread);
        }
        self.first = self.sorted.front_mut().remove();
    }
}

/// One CPU's sleep timers; see the [module docs](self).
pub(crate) struct TimerQueue {
    tree: RBTree<TimerAdapter>,
}

impl TimerQueue {
    pub(crate) fn new() -> Self {
        Self {
            tree: RBTree::new(TimerAdapter::new()),
        }
    }

    /// Adds the timer `key` of `thread`, which must be in no timer queue.
    pub(crate) fn insert(&mut self, key: TimerKey, thread: Arc<ThreadInner>) {
        thread.timer_key.set(key);
        self.tree.insert(thread);
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.tree
            .front()
            .get()
            .map(|thread| thread.timer_key.get().deadline)
    }

    /// Removes and returns the earliest timer if its deadline is at most `now`.
    pub(crate) fn pop_expired(&mut self, now: u64) -> Option<(TimerKey, Arc<ThreadInner>)> {
        let mut front = self.tree.front_mut();
        let key = front.get()?.timer_key.get();
        if key.deadline > now {
            return None;
        }
        front.remove().map(|thread| (key, thread))
    }
}
