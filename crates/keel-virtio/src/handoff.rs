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
//! **No lost interrupt.** Every access to `pending` is a read-modify-write with
//! `AcqRel` ordering: the handler's raise is `fetch_or(true)`, and the check after an
//! unlock is `fetch_or(false)` (a read that is also a write, so that it takes a place
//! in `pending`'s modification order). Take a raise R whose `try_lock` failed because
//! a locker L held the lock, and L's check C after its unlock. R and C are ordered in
//! `pending`'s modification order:
//! - C after R: C, an RMW, reads the latest value, so it sees `true` (or a later
//!   raise's `true`, or a `false` written by a drain that already took R's work under
//!   the lock after R), and L drains.
//! - C before R: R reads from C (or later), and an `AcqRel` RMW reading from an
//!   `AcqRel` RMW synchronises with it, so L's unlock (before C in L's program order)
//!   happens before R's `try_lock`, which therefore sees the lock free: it fails only
//!   if another locker M took it since, and then the same two cases apply to M.
//!
//! So the work is always done by someone, after the raise. A plain `SeqCst` store and
//! load with fences would also do (the store-buffer pattern), but this form needs only
//! Release/Acquire reasoning, which loom models exactly (loom weakens `SeqCst`). The
//! flag is cleared with a `swap` only while holding the lock, and the work is done
//! after that swap under the same lock hold, so a raise that comes after the swap
//! leaves `pending` set for the next check.
//!
//! The type is generic over the lock (any `try_lock` closure and guard), so that
//! `loom-tests/tests/virtio_handoff.rs` model-checks exactly this code with a
//! loom-aware lock; the driver uses it with `spin::Mutex`.

use keel_sync::shim::{AtomicBool, Ordering};

/// A `pending` flag between an interrupt handler and the holders of a lock (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct InterruptHandoff {
    /// `true` when an interrupt was raised and its work not yet done. Only
    /// read-modify-writes with `AcqRel` (see the module docs), except the snapshot
    /// in `is_pending`.
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
        // An RMW, so that a later check after an unlock either sees it or
        // synchronises with it (module docs).
        self.pending.fetch_or(true, Ordering::AcqRel);
    }

    /// Whether an interrupt is pending right now (a snapshot, for tests).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
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
            // A read as an RMW (`fetch_or(false)`): it either sees a raise or makes the
            // caller's unlock visible to that raise's `try_lock` (module docs).
            if !self.pending.fetch_or(false, Ordering::AcqRel) {
                return serviced;
            }
            let Some(mut guard) = try_lock() else {
                // Its holder drains after its unlock.
                return serviced;
            };
            if self.pending.swap(false, Ordering::AcqRel) {
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
