//! The cross-CPU wake-up queue: for each target CPU, one lock-free queue per source
//! CPU (OSv's `incoming_wakeups[source]`), and one word that says which of them have
//! something and whether the target is asleep.
//!
//! - **Lanes.** A waker running on CPU `s` pushes onto lane `s` of the target; wakers
//!   that are not on a CPU of this scheduler (a host thread, in the hosted machine),
//!   and CPUs past the 61st, share one last lane. Each lane is a Treiber list (newest
//!   first) pushed with a compare-and-swap: on its own lane a CPU only races with the
//!   target's drain, so the CAS does not retry under contention from other wakers, as
//!   a single shared head would.
//! - **Intrusive.** The items are `Arc<T>`s whose `T` carries its own [`WakeLink`]
//!   (the scheduler's thread record does), so a wake-up allocates nothing. The price
//!   is the contract of [`WakeQueue::push`]: an item sits in one queue at a time (a
//!   thread is pushed only by whoever moved it to `WAKING`, and leaves that state only
//!   after it was drained).
//! - **The word** (`pending`): bit `i` announces lane `i` (set by a pusher after its
//!   push, cleared by the drain); bit 62, `POLLING`, is set while the target's idle
//!   loop polls the queue by itself; and bit 63, `AWAKE`, is clear only while the
//!   target is in, or about to enter, its idle wait. A push announces itself and marks the
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
//!
//! The same holds for a target that is busy (running a thread, so not polling): it
//! clears `POLLING` with a read-modify-write ([`WakeQueue::stop_polling`]) before it
//! drains at each scheduling decision, so either that comes first (the announcing
//! `fetch_or` finds `POLLING` clear, and its pusher interrupts the target:
//! [`PushOutcome::Interrupt`]) or the announcement does (the drain that follows
//! `stop_polling` sees it). Before this flag lived in the word, it was a separate
//! `SeqCst` flag, a store-load pattern on two words that loom cannot check (it
//! treats `SeqCst` accesses as acquire/release).
//! `loom-tests/tests/wakeup.rs` model-checks this; the atomics come from
//! [`keel_sync::shim`] for that reason.
//!
//! OSv keeps the same per-(source, target) intrusive queues plus a mask of non-empty
//! ones and an `idle_poll` flag; Keel's difference is that the mask and the sleeping
//! flag are one word. Item addresses are stored with exposed provenance.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;

use keel_sync::shim::{AtomicU64, AtomicUsize, Ordering, UnsafeCell};

/// Bit 63 of `pending`: the consumer is not sleeping (clear from its `try_sleep`
/// until the next push or drain).
const AWAKE: u64 = 1 << 63;
/// Bit 62 of `pending`: the consumer's idle loop polls the queue by itself (set by
/// `start_polling`, cleared by `stop_polling`; only the consumer changes it).
const POLLING: u64 = 1 << 62;
/// The most lanes a queue has (bits 0..=61 of `pending`); the last one is shared.
const MAX_LANES: usize = 62;
/// The lane bits of `pending`.
const LANES: u64 = (1 << MAX_LANES) - 1;

/// The link an item carries so that it can sit in a [`WakeQueue`] without an
/// allocation: the address of the next item in its lane (or in a drained list).
/// Written by the pusher before it publishes the item and by the consumer once it
/// owns it; never by two threads at once (loom checks that, through the shim's
/// `UnsafeCell`).
pub struct WakeLink {
    next: UnsafeCell<usize>,
}

// SAFETY: the cell is private to this module, which touches it only as the queue
// protocol allows: by the pusher before it publishes the item (a `Release` CAS), and
// by the consumer after it detached the item (an `Acquire` swap); `push`'s contract
// keeps an item in one queue at a time. So no two threads access it at once, and each
// access happens-after the previous one.
unsafe impl Sync for WakeLink {}
// SAFETY: a link holds only an address; see `Sync`.
unsafe impl Send for WakeLink {}

impl WakeLink {
    /// A link for an item in no queue.
    pub fn new() -> Self {
        Self {
            next: UnsafeCell::new(0),
        }
    }
}

impl Default for WakeLink {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for WakeLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeLink").finish_non_exhaustive()
    }
}

/// An item type that carries a [`WakeLink`].
pub trait Linked {
    /// The item's link (always the same one).
    fn wake_link(&self) -> &WakeLink;
}

/// Per-source lock-free queues of `Arc<T>` towards one consumer, with the consumer's
/// sleeping flag (see the [module docs](self)).
pub struct WakeQueue<T: Linked> {
    /// Encoding: bit `i < lanes.len()` set = lane `i` may hold items; [`POLLING`];
    /// [`AWAKE`].
    ///
    /// Orderings: every change is a read-modify-write of this word, so they are
    /// totally ordered (see the module docs); `SeqCst` is kept on them, although
    /// acquire/release suffices; the items themselves travel through the lanes.
    pending: AtomicU64,
    /// Lane `i` for source `i`, the last lane for everyone else.
    lanes: Box<[Lane]>,
    /// The queue owns one reference count of every item in it.
    _owns: PhantomData<Arc<T>>,
}

/// One source's queue: the address of its newest item (`Arc::into_raw`), 0 if
/// empty; items link newest to oldest. A push publishes its item with a `Release`
/// compare-and-swap; the consumer takes the list with an `Acquire` swap, which makes
/// every item reached from it (and its link) visible.
struct Lane {
    head: AtomicUsize,
}

/// Whether a push needs the consumer woken or interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "unless the consumer was polling, the pusher must wake or interrupt it"]
pub enum PushOutcome {
    /// The consumer was polling the queue: it will see the item without help.
    Queued,
    /// The consumer was awake but not polling (busy with other work): interrupt it,
    /// or the item waits until it next drains.
    Interrupt,
    /// The consumer was asleep (and is now marked awake): send it a wake-up.
    WakeConsumer,
}

// SAFETY: the queue moves `Arc<T>`s from producers to the consumer, which is sound
// when `Arc<T>: Send`, i.e. `T: Send + Sync`; the shared state is atomics and the
// items' links, each written by one owner at a time (the pusher before publication,
// the consumer after its swap).
unsafe impl<T: Linked + Send + Sync> Send for WakeQueue<T> {}
// SAFETY: as above: `&WakeQueue` only allows pushing (moving an `Arc<T>` in) and, for
// the single consumer, draining (moving them out).
unsafe impl<T: Linked + Send + Sync> Sync for WakeQueue<T> {}

/// The link of the item at `address` (from `Arc::into_raw`).
///
/// # Safety
/// `address` must come from `Arc::<T>::into_raw` of an item whose reference the
/// caller's queue or drain still holds.
unsafe fn link_of<'a, T: Linked + 'a>(address: usize) -> &'a WakeLink {
    // SAFETY: relies on (1) the caller's guarantee: the item is alive.
    unsafe { &*ptr::with_exposed_provenance::<T>(address) }.wake_link()
}

impl<T: Linked> WakeQueue<T> {
    /// An empty queue for pushers on CPUs `0..sources` (each with a lane of its own,
    /// up to 61 of them) and anyone else (one shared lane); the consumer is awake
    /// and busy (not polling).
    pub fn new(sources: usize) -> Self {
        let lanes = (0..sources.min(MAX_LANES - 1) + 1)
            .map(|_| Lane {
                head: AtomicUsize::new(0),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            pending: AtomicU64::new(AWAKE),
            lanes,
            _owns: PhantomData,
        }
    }

    /// The lane of a pusher on CPU `source` (`None`: not on one of the sources).
    fn lane_index(&self, source: Option<usize>) -> usize {
        let shared = self.lanes.len() - 1;
        source.map_or(shared, |source| source.min(shared))
    }

    /// Pushes `item` from a pusher running on CPU `source` (`None` for anyone else;
    /// pushes from one source should not run concurrently, for their lane to stay
    /// uncontended, but nothing breaks if they do). Returns
    /// [`PushOutcome::WakeConsumer`] if the consumer was asleep and
    /// [`PushOutcome::Interrupt`] if it was awake but not polling: either way the
    /// caller must then send it a wake-up.
    ///
    /// # Safety
    /// `item` must not be in any `WakeQueue` (pushed and not drained since): its link
    /// is overwritten here.
    pub unsafe fn push(&self, source: Option<usize>, item: Arc<T>) -> PushOutcome {
        let index = self.lane_index(source);
        let lane = &self.lanes[index];
        let address = Arc::into_raw(item).expose_provenance();
        // SAFETY: relies on (1) the queue holding the reference just released by
        // `into_raw` until a drain takes it back.
        let link = unsafe { link_of::<T>(address) };
        let mut head = lane.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: relies on (1) the caller's guarantee that the item is in no
            // queue, and (2) it not being published yet (the CAS below has not
            // succeeded), so nobody else accesses its link.
            link.next.with_mut(|next| unsafe { *next = head });
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
        // DELIBERATELY BROKEN with the test-only feature `broken-wakeup` (for the loom
        // models): the wake-up of a sleeping consumer is never requested; with
        // `broken-busy-wakeup`, a busy consumer is never interrupted.
        if previous & AWAKE == 0 {
            if cfg!(feature = "broken-wakeup") {
                PushOutcome::Queued
            } else {
                PushOutcome::WakeConsumer
            }
        } else if previous & POLLING == 0 && !cfg!(feature = "broken-busy-wakeup") {
            PushOutcome::Interrupt
        } else {
            PushOutcome::Queued
        }
    }

    /// Consumer only: from now on it polls the queue by itself (its idle loop), so
    /// pushes need not interrupt it ([`PushOutcome::Queued`]).
    pub fn start_polling(&self) {
        self.pending.fetch_or(POLLING, Ordering::SeqCst);
    }

    /// Consumer only, before each drain of a scheduling decision: from now on it is
    /// busy, so pushes ask for an interrupt ([`PushOutcome::Interrupt`]). A push it
    /// does not see in the drain that follows finds the flag clear (see the module
    /// docs). The read-modify-write happens only when the flag was set, so threads
    /// running back to back pay one plain load.
    pub fn stop_polling(&self) {
        // Only the consumer sets the flag, so its own relaxed load is exact.
        if self.pending.load(Ordering::Relaxed) & POLLING != 0 {
            self.pending.fetch_and(!POLLING, Ordering::SeqCst);
        }
    }

    /// Whether something is announced (a hint for the consumer's polling loop).
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst) & LANES != 0
    }

    /// Consumer only: marks the consumer asleep if and only if nothing is announced.
    /// Returns `false` if something is (then drain instead of sleeping). After waking
    /// up, the consumer calls [`drain`](Self::drain), which marks it awake.
    pub fn try_sleep(&self) -> bool {
        // Only the consumer changes `POLLING`, so it is known here; the exchange
        // fails if anything is announced (or the consumer is already asleep).
        let polling = self.pending.load(Ordering::Relaxed) & POLLING;
        self.pending
            .compare_exchange(
                AWAKE | polling,
                polling,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Consumer only: takes everything announced, each lane in push order, and marks
    /// the consumer awake. Calling it from two threads at once is safe but splits
    /// the items arbitrarily between them.
    pub fn drain(&self) -> Drain<T> {
        // Fast path: no read-modify-write (no cache-line write) when empty and awake.
        // A push that this load misses although it came before our `stop_polling`
        // cannot exist: that read-modify-write came after it in the word's order, and
        // this load reads that value or a later one.
        let current = self.pending.load(Ordering::SeqCst);
        if current & (LANES | AWAKE) == AWAKE {
            return Drain {
                next: 0,
                _owns: PhantomData,
            };
        }
        // Only the consumer changes `POLLING`: keep it as it is.
        let announced = self
            .pending
            .swap(AWAKE | (current & POLLING), Ordering::SeqCst)
            & LANES;
        self.take_lanes(announced)
    }

    /// Takes the lists of the lanes whose bits are set in `announced`, each reversed
    /// to push order, chained in lane order.
    fn take_lanes(&self, mut announced: u64) -> Drain<T> {
        let mut first = 0;
        let mut last = 0;
        while announced != 0 {
            let index = announced.trailing_zeros() as usize;
            announced &= announced - 1;
            let mut newest = self.lanes[index].head.swap(0, Ordering::Acquire);
            let lane_last = newest;
            let mut oldest_first = 0;
            while newest != 0 {
                // SAFETY: relies on (1) every item in the list having been published
                // by a `Release` CAS that our `Acquire` swap synchronises with, so its
                // link is visible; (2) the swap having detached the list, so this
                // thread now owns every item in it (and its link) exclusively.
                let link = unsafe { link_of::<T>(newest) };
                // SAFETY: as above.
                let older = link.next.with_mut(|next| unsafe {
                    let older = *next;
                    *next = oldest_first;
                    older
                });
                oldest_first = newest;
                newest = older;
            }
            if oldest_first == 0 {
                // Announced, but an earlier drain took the items already.
                continue;
            }
            if last == 0 {
                first = oldest_first;
            } else {
                // SAFETY: `last` is an item this drain owns (detached above).
                let link = unsafe { link_of::<T>(last) };
                // SAFETY: as above.
                link.next.with_mut(|next| unsafe { *next = oldest_first });
            }
            last = lane_last;
        }
        Drain {
            next: first,
            _owns: PhantomData,
        }
    }
}

impl<T: Linked> Drop for WakeQueue<T> {
    fn drop(&mut self) {
        // Every lane, announced or not.
        drop(self.take_lanes((1 << self.lanes.len()) - 1));
    }
}

impl<T: Linked> fmt::Debug for WakeQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.pending.load(Ordering::Relaxed);
        f.debug_struct("WakeQueue")
            .field("lanes", &self.lanes.len())
            .field("announced", &format_args!("{:#x}", pending & LANES))
            .field("polling", &(pending & POLLING != 0))
            .field("sleeping", &(pending & AWAKE == 0))
            .finish()
    }
}

/// The items taken by one [`WakeQueue::drain`]; drops the rest on drop.
pub struct Drain<T: Linked> {
    /// The address of the next item (owned, detached from the queue), or 0.
    next: usize,
    _owns: PhantomData<Arc<T>>,
}

impl<T: Linked> Iterator for Drain<T> {
    type Item = Arc<T>;

    fn next(&mut self) -> Option<Arc<T>> {
        if self.next == 0 {
            return None;
        }
        // SAFETY: relies on `self.next` being an item detached by `drain`, whose
        // reference this iterator alone owns; its link is read before the reference
        // is handed out, so each item is returned exactly once.
        let link = unsafe { link_of::<T>(self.next) };
        // SAFETY: as above: the drain owns the link.
        let following = link.next.with(|next| unsafe { *next });
        // SAFETY: as above; the address came from `Arc::into_raw` in `push`.
        let item = unsafe { Arc::from_raw(ptr::with_exposed_provenance::<T>(self.next)) };
        self.next = following;
        Some(item)
    }
}

impl<T: Linked> Drop for Drain<T> {
    fn drop(&mut self) {
        for item in self.by_ref() {
            drop(item);
        }
    }
}

impl<T: Linked> fmt::Debug for Drain<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("empty", &(self.next == 0))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A test item: a number and its link.
    struct Item {
        value: u64,
        link: WakeLink,
    }

    impl Linked for Item {
        fn wake_link(&self) -> &WakeLink {
            &self.link
        }
    }

    fn item(value: u64) -> Arc<Item> {
        Arc::new(Item {
            value,
            link: WakeLink::new(),
        })
    }

    fn push(queue: &WakeQueue<Item>, source: Option<usize>, value: u64) -> PushOutcome {
        // SAFETY: a fresh item is in no queue.
        unsafe { queue.push(source, item(value)) }
    }

    fn values(drain: Drain<Item>) -> Vec<u64> {
        drain.map(|item| item.value).collect()
    }

    #[test]
    fn drains_each_lane_in_push_order() {
        let queue = WakeQueue::new(2);
        queue.start_polling();
        for i in 0..5 {
            assert_eq!(push(&queue, Some(1), 10 + i), PushOutcome::Queued);
            assert_eq!(push(&queue, None, 20 + i), PushOutcome::Queued);
            assert_eq!(push(&queue, Some(0), i), PushOutcome::Queued);
        }
        assert!(queue.has_pending());
        // Lanes in index order (0, 1, shared), each in push order.
        assert_eq!(
            values(queue.drain()),
            [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
        );
        assert!(!queue.has_pending());
        assert_eq!(queue.drain().count(), 0);
    }

    #[test]
    fn sources_past_the_lanes_share_the_last_lane() {
        let queue = WakeQueue::new(1);
        let _ = push(&queue, Some(5), 1);
        let _ = push(&queue, None, 2);
        let _ = push(&queue, Some(0), 0);
        assert_eq!(values(queue.drain()), [0, 1, 2]);
        let wide = WakeQueue::new(1000);
        assert_eq!(wide.lanes.len(), MAX_LANES);
        let _ = push(&wide, Some(999), 7);
        let _ = push(&wide, Some(60), 6);
        assert_eq!(values(wide.drain()), [6, 7]);
    }

    #[test]
    fn sleeping_flag_is_seen_by_exactly_one_push() {
        let queue = WakeQueue::new(2);
        queue.start_polling();
        assert!(queue.try_sleep());
        assert_eq!(push(&queue, Some(0), 1), PushOutcome::WakeConsumer);
        assert_eq!(push(&queue, Some(1), 2), PushOutcome::Queued);
        // Something is announced: the consumer may not sleep.
        assert!(!queue.try_sleep());
        assert_eq!(values(queue.drain()), [1, 2]);
        // Sleeping then waking with nothing queued: drain marks it awake.
        assert!(queue.try_sleep());
        assert_eq!(queue.drain().count(), 0);
        assert_eq!(push(&queue, None, 3), PushOutcome::Queued);
    }

    #[test]
    fn a_busy_consumer_is_interrupted_and_a_polling_one_is_not() {
        let queue = WakeQueue::new(2);
        // New queues start awake and busy (not polling).
        assert_eq!(push(&queue, Some(0), 1), PushOutcome::Interrupt);
        queue.start_polling();
        assert_eq!(push(&queue, Some(1), 2), PushOutcome::Queued);
        // The drain keeps the flag; stop_polling clears it, once.
        assert_eq!(values(queue.drain()), [1, 2]);
        assert_eq!(push(&queue, None, 3), PushOutcome::Queued);
        queue.stop_polling();
        queue.stop_polling();
        assert_eq!(push(&queue, Some(0), 4), PushOutcome::Interrupt);
        assert_eq!(values(queue.drain()), [4, 3]);
        // Asleep wins over busy: the sleeper must be woken.
        assert!(queue.try_sleep());
        assert_eq!(push(&queue, Some(0), 5), PushOutcome::WakeConsumer);
        assert_eq!(push(&queue, Some(1), 6), PushOutcome::Interrupt);
        assert_eq!(values(queue.drain()), [5, 6]);
    }

    #[test]
    fn an_item_can_be_queued_again_once_drained() {
        let queue = WakeQueue::new(2);
        let shared = item(9);
        for source in [Some(0), None, Some(1)] {
            // SAFETY: `shared` is in no queue: it was drained below each time.
            let _ = unsafe { queue.push(source, Arc::clone(&shared)) };
            let _ = push(&queue, source, 1);
            assert_eq!(values(queue.drain()), [9, 1]);
        }
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn drop_releases_queued_and_undrained_items() {
        let items: Vec<_> = (0..5).map(item).collect();
        let queue = WakeQueue::new(3);
        for (source, item) in [Some(0), Some(2), None].into_iter().zip(&items) {
            // SAFETY: each item is pushed once.
            let _ = unsafe { queue.push(source, Arc::clone(item)) };
        }
        let mut drain = queue.drain();
        drop(drain.next());
        drop(drain);
        // SAFETY: items 3 and 4 were never pushed.
        let _ = unsafe { queue.push(Some(1), Arc::clone(&items[3])) };
        // SAFETY: as above.
        let _ = unsafe { queue.push(None, Arc::clone(&items[4])) };
        drop(queue);
        assert!(items.iter().all(|item| Arc::strong_count(item) == 1));
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
                        let _ = push(&queue, source, p * 1_000_000 + i);
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 40_000 {
            seen.extend(values(queue.drain()));
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
