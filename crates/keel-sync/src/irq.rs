//! [`IrqSpinLock`]: a [`SpinLock`] whose guard keeps interrupts masked on this CPU for
//! its whole life, with the masking supplied by the kernel through [`InterruptMask`].

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use crate::spinlock::{SpinLock, SpinLockGuard};

/// How a CPU masks and restores its interrupts: the policy type of an
/// [`IrqSpinLock`]. The kernel implements it with `cli`/`popf`-style instructions;
/// hosted code and tests use [`NoInterruptMask`] or a recording mask.
///
/// Implementations must make `mask` return only once interrupts cannot be taken on
/// the calling CPU, and `restore(saved)` put back exactly the state `mask` saved, so
/// that masks nest: an inner guard's restore leaves an outer guard's masking alone.
pub trait InterruptMask {
    /// Masks interrupts on this CPU and returns whether they were enabled before.
    fn mask() -> bool;

    /// Restores the state `mask` returned: re-enables interrupts iff `was_enabled`.
    fn restore(was_enabled: bool);
}

/// The mask of code that no interrupt can enter (host tests, benches, the hosted
/// scheduler): does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoInterruptMask;

impl InterruptMask for NoInterruptMask {
    #[inline]
    fn mask() -> bool {
        false
    }

    #[inline]
    fn restore(_: bool) {}
}

/// A FIFO ticket [`SpinLock`] that masks interrupts before it takes the ticket and
/// restores them only after it has served the next one.
///
/// For every lock that an interrupt handler or the context-switch path can take (the
/// page allocator and its caches, the kernel heap, and through them kernel stacks):
/// with interrupts on, a timer interrupt taken while the lock is held could switch
/// to a thread that takes the same lock and spins forever on its own CPU. Because the
/// masking lives in the guard, no caller can forget it: holding the lock with
/// interrupts on cannot be written.
///
/// ```
/// use keel_sync::{IrqSpinLock, NoInterruptMask};
/// let counter: IrqSpinLock<u64, NoInterruptMask> = IrqSpinLock::new(0);
/// *counter.lock() += 1;
/// assert_eq!(counter.into_inner(), 1);
/// ```
pub struct IrqSpinLock<T, M: InterruptMask> {
    lock: SpinLock<T>,
    mask: PhantomData<fn() -> M>,
}

/// Exclusive access to the value of a locked [`IrqSpinLock`], with interrupts masked;
/// dropping it unlocks, then restores the interrupt state.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct IrqSpinLockGuard<'a, T, M: InterruptMask> {
    // Field order matters: fields drop in declaration order, so the lock is released
    // before the interrupts are restored. The other order would open a window where
    // an interrupt is taken with the lock still held.
    guard: SpinLockGuard<'a, T>,
    /// Held only for its `Drop`.
    _restore: MaskRestore<M>,
}

/// Restores the interrupt state saved by [`InterruptMask::mask`] when dropped.
struct MaskRestore<M: InterruptMask> {
    was_enabled: bool,
    mask: PhantomData<fn() -> M>,
}

impl<M: InterruptMask> Drop for MaskRestore<M> {
    #[inline]
    fn drop(&mut self) {
        M::restore(self.was_enabled);
    }
}

impl<T, M: InterruptMask> IrqSpinLock<T, M> {
    /// Creates an unlocked lock holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            lock: SpinLock::new(value),
            mask: PhantomData,
        }
    }

    /// Creates an unlocked lock holding `value` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            lock: SpinLock::new(value),
            mask: PhantomData,
        }
    }

    /// Masks interrupts, then takes a ticket and spins until it is served (with
    /// interrupts masked, so this CPU cannot be switched away while it waits or holds).
    #[inline]
    pub fn lock(&self) -> IrqSpinLockGuard<'_, T, M> {
        let restore = MaskRestore {
            was_enabled: M::mask(),
            mask: PhantomData,
        };
        IrqSpinLockGuard {
            guard: self.lock.lock(),
            _restore: restore,
        }
    }

    /// Locks only if the lock is free and nobody waits; never spins. Interrupts are
    /// masked only while the returned guard lives.
    #[inline]
    pub fn try_lock(&self) -> Option<IrqSpinLockGuard<'_, T, M>> {
        let restore = MaskRestore {
            was_enabled: M::mask(),
            mask: PhantomData,
        };
        // On failure `restore` drops here and puts the interrupt state back.
        let guard = self.lock.try_lock()?;
        Some(IrqSpinLockGuard {
            guard,
            _restore: restore,
        })
    }

    /// Whether the lock is held or waited for (a snapshot, for diagnostics).
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// Consumes the lock and returns the value.
    pub fn into_inner(self) -> T {
        self.lock.into_inner()
    }

    /// The value, through exclusive access to the lock (no locking, no masking).
    pub fn get_mut(&mut self) -> &mut T {
        self.lock.get_mut()
    }
}

impl<T: Default, M: InterruptMask> Default for IrqSpinLock<T, M> {
    fn default() -> Self {
        Self {
            lock: SpinLock::default(),
            mask: PhantomData,
        }
    }
}

impl<T: fmt::Debug, M: InterruptMask> fmt::Debug for IrqSpinLock<T, M> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("IrqSpinLock")
            .field("lock", &self.lock)
            .finish()
    }
}

impl<T, M: InterruptMask> Deref for IrqSpinLockGuard<'_, T, M> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, M: InterruptMask> DerefMut for IrqSpinLockGuard<'_, T, M> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: fmt::Debug, M: InterruptMask> fmt::Debug for IrqSpinLockGuard<'_, T, M> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, formatter)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::vec::Vec;

    use super::{InterruptMask, IrqSpinLock};

    std::thread_local! {
        /// The recording mask's "interrupts enabled" flag, per test thread.
        static ENABLED: Cell<bool> = const { Cell::new(true) };
        /// Every transition, in order.
        static EVENTS: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }

    /// A mask that records the interrupt state it would set.
    struct RecordingMask;

    impl InterruptMask for RecordingMask {
        fn mask() -> bool {
            EVENTS.with_borrow_mut(|events| events.push("mask"));
            ENABLED.replace(false)
        }

        fn restore(was_enabled: bool) {
            EVENTS.with_borrow_mut(|events| events.push("restore"));
            if was_enabled {
                assert!(!LOCK.is_locked(), "interrupts restored with the lock held");
            }
            ENABLED.set(was_enabled);
        }
    }

    static LOCK: IrqSpinLock<u32, RecordingMask> = IrqSpinLock::new(0);
    static OTHER: IrqSpinLock<u32, RecordingMask> = IrqSpinLock::new(0);

    fn enabled() -> bool {
        ENABLED.get()
    }

    #[test]
    fn the_guard_masks_for_its_whole_life_and_nests() {
        assert!(enabled());
        {
            let mut guard = LOCK.lock();
            assert!(!enabled(), "lock taken with interrupts on");
            *guard += 1;
            {
                let inner = OTHER.lock();
                assert!(!enabled());
                drop(inner);
                // The inner guard restores the outer guard's masked state.
                assert!(!enabled(), "inner guard re-enabled interrupts");
            }
            assert!(LOCK.is_locked());
            assert!(!enabled());
        }
        assert!(enabled(), "interrupts not restored");
        assert!(!LOCK.is_locked());
        // A failed try_lock leaves the state as it was; a successful one masks.
        let held = LOCK.lock();
        assert!(LOCK.try_lock().is_none());
        assert!(!enabled());
        drop(held);
        assert!(enabled());
        let guard = LOCK.try_lock().expect("free");
        assert!(!enabled());
        assert_eq!(*guard, 1);
        drop(guard);
        assert!(enabled());
        // Masked with interrupts already off: the guard leaves them off.
        ENABLED.set(false);
        drop(LOCK.lock());
        assert!(!enabled());
        ENABLED.set(true);
        EVENTS.with_borrow(|events| {
            let masks = events.iter().filter(|event| **event == "mask").count();
            let restores = events.iter().filter(|event| **event == "restore").count();
            assert_eq!(masks, restores);
        });
    }
}
