//! [`Mutex`] (exclusive `&mut T`) and [`ReentrantMutex`] (recursive `&T`), both on
//! [`RawMutex`].

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use keel_sync::shim::{MutPtr, UnsafeCell};

use crate::parker::Parker;
use crate::raw::RawMutex;

/// A blocking mutex protecting a `T`, on OSv's lock-free [`RawMutex`].
///
/// Unlike the raw mutex it is **not** recursive: a guard hands out `&mut T`, which
/// must be unique, so locking it again from the thread that holds it panics (rather
/// than deadlocking), and [`Mutex::try_lock`] returns `None`. For recursion over
/// shared data use [`ReentrantMutex`].
///
/// ```
/// use keel_hosted::StdParker;
/// use keel_lfmutex::Mutex;
/// let counter = Mutex::<u32, StdParker>::new(0);
/// *counter.lock() += 1;
/// assert_eq!(counter.into_inner(), 1);
/// ```
pub struct Mutex<T, P: Parker> {
    /// The lock.
    pub(crate) raw: RawMutex<P>,
    /// The protected value, reached only through a guard.
    data: UnsafeCell<T>,
}

// SAFETY: the mutex gives one thread at a time access to `data` (through a guard,
// which is not `Send`), and the raw mutex's Release/Acquire hand-over orders
// successive holders, so sharing `&Mutex<T, P>` only moves exclusive access to the
// `T` between threads: sound when `T: Send` (as for `std::sync::Mutex`).
unsafe impl<T: Send, P: Parker> Sync for Mutex<T, P> {}
// SAFETY: moving the mutex moves the `T`; the raw mutex holds nothing thread-bound.
unsafe impl<T: Send, P: Parker> Send for Mutex<T, P> {}

/// Exclusive access to the value of a locked [`Mutex`]; unlocks when dropped. Not
/// `Send`: the unlock must come from the locking thread (the mutex records it).
#[must_use = "the mutex is unlocked as soon as the guard is dropped"]
pub struct MutexGuard<'a, T, P: Parker> {
    // Field order matters: `data` (under loom, the tracked write access to the cell)
    // must end before `unlock` hands the mutex over.
    /// The write access to the value, valid while the mutex is held.
    pub(crate) data: MutPtr<T>,
    /// The locked mutex (for `Condvar::wait`, which unlocks and relocks it).
    pub(crate) mutex: &'a Mutex<T, P>,
    /// Unlocks on drop.
    pub(crate) unlock: Unlocker<'a, P>,
    /// Makes the guard `!Send`.
    pub(crate) _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing `&MutexGuard` across threads only shares `&T` (`Deref`), sound when
// `T: Sync`; the guard itself stays on its thread (`!Send`).
unsafe impl<T: Sync, P: Parker> Sync for MutexGuard<'_, T, P> {}

/// Unlocks a held raw mutex once, when dropped.
pub(crate) struct Unlocker<'a, P: Parker> {
    /// The held mutex.
    pub(crate) raw: &'a RawMutex<P>,
}

impl<P: Parker> Drop for Unlocker<'_, P> {
    #[inline]
    fn drop(&mut self) {
        if crate::unwinding_under_loom() {
            return;
        }
        // SAFETY: relies on (1) an `Unlocker` being created only by a thread that has
        // just locked `raw`, and living in a `!Send` guard, so the dropping thread
        // holds it.
        unsafe { self.raw.unlock_owned() };
    }
}

impl<T, P: Parker> Mutex<T, P> {
    /// An unlocked mutex holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            raw: RawMutex::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// An unlocked mutex holding `value` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            raw: RawMutex::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Locks, blocking while another thread holds the mutex.
    ///
    /// # Panics
    /// If the calling thread holds the mutex already (a second `&mut T` would alias).
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T, P> {
        let me = P::current_id();
        assert!(
            !self.raw.is_owned_by(me),
            "keel_lfmutex::Mutex locked again by its holder"
        );
        self.raw.acquire();
        self.raw.set_owner(me);
        self.guard()
    }

    /// Locks if that needs no waiting; `None` if another thread holds the mutex, or
    /// if the calling thread does.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T, P>> {
        let me = P::current_id();
        if self.raw.is_owned_by(me) || !self.raw.try_acquire() {
            return None;
        }
        self.raw.set_owner(me);
        Some(self.guard())
    }

    /// Whether some thread holds (or waits for) the mutex; only a snapshot.
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// The value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// Mutable access without locking: `&mut self` proves nobody holds the mutex.
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: relies on (1) `&mut self`: no guard is alive and no other reference
        // to `data` exists for the returned lifetime, which is tied to that borrow.
        self.data.with_mut(|value| unsafe { &mut *value })
    }

    /// The guard, once the calling thread holds the mutex at depth 1.
    #[inline]
    pub(crate) fn guard(&self) -> MutexGuard<'_, T, P> {
        MutexGuard {
            data: self.data.get_mut(),
            mutex: self,
            unlock: Unlocker { raw: &self.raw },
            _not_send: PhantomData,
        }
    }
}

impl<T: Default, P: Parker> Default for Mutex<T, P> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for Mutex<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Mutex");
        match self.try_lock() {
            Some(guard) => debug.field("data", &&*guard),
            None => debug.field("data", &format_args!("<locked>")),
        };
        debug.finish()
    }
}

impl<T, P: Parker> Deref for MutexGuard<'_, T, P> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: relies on (1) the guard existing only while its thread holds the
        // mutex non-recursively, so no other guard or reference to the value exists;
        // (2) the mutex outliving the guard; (3) the `&T` borrowing the guard.
        unsafe { self.data.deref() }
    }
}

impl<T, P: Parker> DerefMut for MutexGuard<'_, T, P> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; the `&mut self` borrow makes the `&mut T` unique.
        unsafe { self.data.deref() }
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for MutexGuard<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("data", &&**self)
            .finish()
    }
}

/// A recursive mutex giving shared access (`&T`) to a value: the holder may lock it
/// again, each guard unlocks once. Use `Cell`/`RefCell`-like interior mutability
/// inside for writes (as with `std`'s `ReentrantLock`).
///
/// ```
/// use keel_hosted::StdParker;
/// use keel_lfmutex::ReentrantMutex;
/// let mutex = ReentrantMutex::<_, StdParker>::new(core::cell::Cell::new(1));
/// let outer = mutex.lock();
/// let inner = mutex.lock();
/// inner.set(outer.get() + 1);
/// drop((inner, outer));
/// assert_eq!(mutex.into_inner().get(), 2);
/// ```
pub struct ReentrantMutex<T, P: Parker> {
    /// The recursive lock.
    raw: RawMutex<P>,
    /// The value; only shared references are ever handed out.
    data: T,
}

// SAFETY: `&T` is handed out to one thread at a time (guards are `!Send`, and the raw
// mutex orders successive holders), so `T: Send` suffices, as for `std`'s
// `ReentrantLock`.
unsafe impl<T: Send, P: Parker> Sync for ReentrantMutex<T, P> {}

/// Shared access to the value of a locked [`ReentrantMutex`]; unlocks once when
/// dropped. Not `Send`.
#[must_use = "the mutex is unlocked as soon as the guard is dropped"]
pub struct ReentrantMutexGuard<'a, T, P: Parker> {
    /// The value.
    data: &'a T,
    /// Unlocks once on drop.
    _unlock: Unlocker<'a, P>,
    /// Makes the guard `!Send`.
    _not_send: PhantomData<*const ()>,
}

impl<T, P: Parker> ReentrantMutex<T, P> {
    /// An unlocked mutex holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            raw: RawMutex::new(),
            data: value,
        }
    }

    /// An unlocked mutex holding `value` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            raw: RawMutex::new(),
            data: value,
        }
    }

    /// Locks (recursively if the calling thread holds it already).
    ///
    /// # Panics
    /// If the recursion depth would overflow a `u32`.
    #[inline]
    pub fn lock(&self) -> ReentrantMutexGuard<'_, T, P> {
        self.raw.lock();
        self.guard()
    }

    /// Locks if that needs no waiting.
    #[inline]
    pub fn try_lock(&self) -> Option<ReentrantMutexGuard<'_, T, P>> {
        self.raw.try_lock().then(|| self.guard())
    }

    /// The value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.data
    }

    /// Mutable access without locking.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.data
    }

    fn guard(&self) -> ReentrantMutexGuard<'_, T, P> {
        ReentrantMutexGuard {
            data: &self.data,
            _unlock: Unlocker { raw: &self.raw },
            _not_send: PhantomData,
        }
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for ReentrantMutex<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ReentrantMutex");
        match self.try_lock() {
            Some(guard) => debug.field("data", &&*guard),
            None => debug.field("data", &format_args!("<locked>")),
        };
        debug.finish()
    }
}

impl<T, P: Parker> Deref for ReentrantMutexGuard<'_, T, P> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.data
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for ReentrantMutexGuard<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantMutexGuard")
            .field("data", self.data)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_parker::TestParker;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    type TestMutex<T> = Mutex<T, TestParker>;

    fn count_with_threads(threads: usize, increments: usize) {
        let counter = Arc::new(TestMutex::new(0_usize));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || {
                    for _ in 0..increments {
                        let mut guard = counter.lock();
                        let value = *guard;
                        core::hint::black_box(&value);
                        *guard = value + 1;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*counter.lock(), threads * increments);
        assert!(!counter.is_locked());
    }

    #[test]
    fn two_threads_count_exactly() {
        count_with_threads(2, 50_000);
    }

    #[test]
    fn sixteen_threads_count_exactly() {
        count_with_threads(16, 5_000);
    }

    #[test]
    fn try_lock_semantics() {
        let mutex = Arc::new(TestMutex::new(1));
        let guard = mutex.lock();
        // The holder may not lock again through `Mutex`.
        assert!(mutex.try_lock().is_none());
        let other = Arc::clone(&mutex);
        assert!(
            thread::spawn(move || other.try_lock().is_none())
                .join()
                .unwrap()
        );
        drop(guard);
        let other = Arc::clone(&mutex);
        assert_eq!(
            thread::spawn(move || *other.try_lock().unwrap())
                .join()
                .unwrap(),
            1
        );
        *mutex.try_lock().unwrap() += 1;
        assert_eq!(std::format!("{mutex:?}"), "Mutex { data: 2 }");
        let guard = mutex.lock();
        assert_eq!(std::format!("{mutex:?}"), "Mutex { data: <locked> }");
        assert_eq!(std::format!("{guard:?}"), "MutexGuard { data: 2 }");
    }

    #[test]
    #[should_panic(expected = "locked again by its holder")]
    fn relocking_by_holder_panics() {
        let mutex = TestMutex::new(());
        let _first = mutex.lock();
        let _second = mutex.lock();
    }

    #[test]
    fn get_mut_and_into_inner() {
        let mut mutex = TestMutex::new(3);
        *mutex.get_mut() += 1;
        assert_eq!(mutex.into_inner(), 4);
    }

    #[test]
    fn reentrant_mutex_nests_and_excludes() {
        let mutex = Arc::new(ReentrantMutex::<_, TestParker>::new(core::cell::Cell::new(
            0,
        )));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mutex = Arc::clone(&mutex);
                thread::spawn(move || {
                    for _ in 0..2_000 {
                        let outer = mutex.lock();
                        let inner = mutex.try_lock().expect("recursive try_lock");
                        let value = outer.get();
                        inner.set(value + 1);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(mutex.lock().get(), 8_000);
    }
}
