//! Readiness for `poll`: what a vnode reports ([`PollEvents`]), how a poller sleeps
//! until a vnode becomes ready ([`ReadinessQueue`], [`PollWake`], [`PollSleeper`]), and
//! the call itself, [`Context::poll`](crate::Context::poll).
//!
//! It is Linux's `poll_table` design, level-triggered:
//! - [`Vnode::poll`](crate::Vnode::poll) returns the events that hold now. Called
//!   with a [`PollRegistration`], a vnode whose readiness can change (a pipe, a
//!   socket, a console with input) also registers the poller's waker on its
//!   [`ReadinessQueue`] *before* it reads its state, so that a change after the read
//!   wakes the poller. Regular files, directories and the devfs devices are always
//!   ready for reading and writing (Linux's `DEFAULT_POLLMASK`) and never register.
//! - [`Context::poll`](crate::Context::poll) asks every descriptor; if none is ready
//!   and the timeout allows, it sleeps through the caller's [`PollSleeper`] until a
//!   queue wakes it or the deadline passes, then asks again. The queue holds only
//!   weak references to wakers, so a poll that returned leaves nothing behind that
//!   must be removed; dead entries are dropped when the queue next wakes.
//!
//! Blocking is the caller's, not the VFS's: the kernel's sleeper parks the thread
//! with a timer, the host tests' uses a condition variable with a timeout.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::ops::BitOr;

use keel_lfmutex::{Mutex, Parker};

/// `poll`'s event bits (`<poll.h>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollEvents(u16);

impl PollEvents {
    /// No events.
    pub const NONE: Self = Self(0);
    /// `POLLIN`: readable without blocking.
    pub const POLLIN: Self = Self(0x001);
    /// `POLLPRI`: urgent data.
    pub const POLLPRI: Self = Self(0x002);
    /// `POLLOUT`: writable without blocking.
    pub const POLLOUT: Self = Self(0x004);
    /// `POLLERR`: an error (always reported).
    pub const POLLERR: Self = Self(0x008);
    /// `POLLHUP`: hung up (always reported).
    pub const POLLHUP: Self = Self(0x010);
    /// `POLLNVAL`: the descriptor is not open (always reported).
    pub const POLLNVAL: Self = Self(0x020);
    /// `POLLRDNORM`.
    pub const POLLRDNORM: Self = Self(0x040);
    /// `POLLWRNORM`.
    pub const POLLWRNORM: Self = Self(0x100);
    /// What a regular file, a directory or a device that never blocks reports
    /// (Linux's `DEFAULT_POLLMASK`).
    pub const ALWAYS_READY: Self = Self(0x001 | 0x004 | 0x040 | 0x100);
    /// The events reported whether asked for or not.
    const UNMASKABLE: Self = Self(0x008 | 0x010 | 0x020);

    /// The events of the bits `bits` (unknown bits are kept: they select nothing).
    pub const fn from_bits(bits: u16) -> Self {
        Self(bits)
    }

    /// The bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// What of `self` (the state) `poll` reports for a request of `requested`.
    pub const fn reported_for(self, requested: Self) -> Self {
        Self(self.0 & (requested.0 | Self::UNMASKABLE.0))
    }
}

impl BitOr for PollEvents {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// One entry of `poll`'s array (`struct pollfd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollFd {
    /// `fd`: a negative one is skipped (its `revents` is 0).
    pub fd: i32,
    /// `events`: what the caller waits for.
    pub events: PollEvents,
    /// `revents`: what holds, set by `poll`.
    pub revents: PollEvents,
}

/// Wakes one sleeping poller.
pub trait PollWake: Send + Sync {
    /// Makes the poller's sleep return (if it has not slept yet, its next sleep
    /// returns at once).
    fn wake(&self);
}

/// How [`Context::poll`](crate::Context::poll) sleeps.
pub trait PollSleeper {
    /// The waker that vnodes register; its `wake` ends this sleeper's `sleep`.
    fn waker(&self) -> Arc<dyn PollWake>;
    /// Sleeps until woken or until `deadline_nanos` (on the sleeper's own clock;
    /// `None`: no deadline) has passed; true if woken, false if the deadline passed.
    fn sleep(&self, deadline_nanos: Option<u64>) -> bool;
    /// The sleeper's clock now, in nanoseconds (the base of deadlines).
    fn now_nanos(&self) -> u64;
}

/// What a vnode's `poll` registers a poller with.
pub struct PollRegistration<'a> {
    /// The poller's waker.
    pub(crate) waker: &'a Arc<dyn PollWake>,
}

impl core::fmt::Debug for PollRegistration<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PollRegistration").finish_non_exhaustive()
    }
}

impl PollRegistration<'_> {
    /// Registers the poller on `queue`: a later [`ReadinessQueue::wake_all`] wakes it.
    pub fn wait_on<P: Parker + 'static>(&self, queue: &ReadinessQueue<P>) {
        queue.register(self.waker);
    }
}

/// The pollers waiting for one vnode's readiness to change.
pub struct ReadinessQueue<P: Parker + 'static> {
    /// The registered wakers (weak: a poll that returned drops its waker).
    waiters: Mutex<Vec<Weak<dyn PollWake>>, P>,
}

impl<P: Parker + 'static> Default for ReadinessQueue<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Parker + 'static> core::fmt::Debug for ReadinessQueue<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadinessQueue")
            .field("waiters", &self.waiters.lock().len())
            .finish()
    }
}

impl<P: Parker + 'static> ReadinessQueue<P> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// Adds `waker` (dropping entries whose poller is gone).
    fn register(&self, waker: &Arc<dyn PollWake>) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|waiter| waiter.strong_count() > 0);
        waiters.push(Arc::downgrade(waker));
    }

    /// Wakes every registered poller and empties the queue (each poller registers
    /// again if it sleeps again). Call it after the vnode's state changed.
    pub fn wake_all(&self) {
        let waiters = core::mem::take(&mut *self.waiters.lock());
        for waiter in waiters {
            if let Some(waiter) = waiter.upgrade() {
                waiter.wake();
            }
        }
    }

    /// How many live pollers are registered.
    pub fn len(&self) -> usize {
        self.waiters
            .lock()
            .iter()
            .filter(|waiter| waiter.strong_count() > 0)
            .count()
    }

    /// Whether no live poller is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
