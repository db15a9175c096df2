//! [`InterruptHandoff`]: how an interrupt handler that must not wait for a lock passes
//! its work to whoever holds the lock, without the work ever being lost.
//!
//! The virtio-blk driver's queue lock is taken by threads (to submit and to complete
//! requests) and by the device's interrupt handler (to acknowledge the interrupt and
//! wake the thread whose request completed). The handler runs on whatever CPU the
//! interrupt arrives on, possibly in the middle of a thread on that CPU that holds the
//! lock, so it must never spin on it. Instead:
//!
//! - the handler [`raise`](InterruptHandoff::raise)s a `pending` flag and then tries to
//!   take the lock itself ([`drain`](InterruptHandoff::drain));
//! - whoever holds the lock — the handler that got it, or a thread — calls
//!   [`drain`](InterruptHandoff::drain) right after every unlock: if `pending` is set it
//!   takes the lock again (with `try_lock` only), clears the flag and does the
//!   handler's work.
//!
//! **No lost interrupt.** Suppose the handler raised `pending` and its `try_lock`
//! failed because some locker L held the lock. L unlocks and then reads `pending`.
//! This is the store-buffer pattern: the handler writes `pending` then reads the lock
//! word; L writes the lock word (unlock) then reads `pending`. With a `SeqCst` fence
//! between the write and the read on both sides (in [`raise`](InterruptHandoff::raise)
//! and at the start of [`drain`](InterruptHandoff::drain)), the outcome "the handler
//! saw the lock held *and* L saw `pending` clear" is impossible: one of the two fences
//! comes first in the single total order of `SeqCst` operations, and the read after the
//! later fence sees the write before the earlier one. So either the handler's
//! `try_lock` succeeds, or L sees `pending` and drains it (or L's own `try_lock` fails
//! because yet another locker took the lock — which then drains it after its unlock,
//! by the same argument). The flag is cleared with a `swap` only while holding the
//! lock, and the work is done after that swap under the same lock hold, so a raise
//! that comes after the swap leaves `pending` set for the next drain.
//!
//! The type is generic over the lock (any `try_lock` closure and guard), so that
//! `loom-tests/tests/virtio_handoff.rs` model-checks exactly this code with a
//! loom-aware lock; the driver uses it with `spin::Mutex`.

use keel_sync::shim::{AtomicBool, Ordering, fence};

/// A `pending` flag between an interrupt handler and the holders of a lock (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct InterruptHandoff {
    /// `true` when an interrupt was raised and its work not yet done. Written with
    /// `SeqCst` (the store in `raise`, the `swap` in `drain`), each side's write and
    /// read separated by a `SeqCst` fence.
    pending: AtomicBool,
}

impl InterruptHandoff {
    /// No interrupt pending.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            pending: AtomicBool::new(false),
        }
    }

    /// No interrupt pending (not `const` under loom).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            pending: AtomicBool::new(false),
        }
    }

    /// Records that an interrupt needs its work done. The caller then calls
    /// [`drain`](Self::drain).
    pub fn raise(&self) {
        self.pending.store(true, Ordering::SeqCst);
        // Orders the store above before the lock-word read in `drain`'s `try_lock`
        // (the handler's half of the store-buffer argument in the module docs).
        fence(Ordering::SeqCst);
    }

    /// Whether an interrupt is pending right now (a snapshot, for tests).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Does the work of every pending interrupt whose lock can be taken without
    /// waiting: while `pending` is set, takes the lock with `try_lock` (returning at
    /// once if it is held: its holder drains after unlocking), clears `pending` and
    /// runs `service` under the lock. Returns how many times `service` ran.
    ///
    /// Call it after [`raise`](Self::raise) and after *every* unlock of the lock.
    pub fn drain<G>(
        &self,
        mut try_lock: impl FnMut() -> Option<G>,
        mut service: impl FnMut(&mut G),
    ) -> usize {
        let mut serviced = 0;
        loop {
            // Orders the caller's unlock (a store to the lock word) before the read of
            // `pending` (the lock holder's half of the store-buffer argument).
            fence(Ordering::SeqCst);
            if !self.pending.load(Ordering::SeqCst) {
                return serviced;
            }
            let Some(mut guard) = try_lock() else {
                // Its holder drains after its unlock.
                return serviced;
            };
            if self.pending.swap(false, Ordering::SeqCst) {
                service(&mut guard);
                serviced += 1;
            }
            drop(guard);
            // Loop: a raise that found the lock held while we had it is ours to do.
        }
    }
}

impl Default for InterruptHandoff {
    fn default() -> Self {
        Self::new()
    }
}
