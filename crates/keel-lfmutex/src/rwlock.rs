//! [`RwLock`]: a reader-writer lock on [`Mutex`] + two [`Condvar`]s.

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use keel_sync::shim::{ConstPtr, MutPtr, UnsafeCell};

use crate::condvar::Condvar;
use crate::mutex::Mutex;
use crate::parker::Parker;

/// The lock's bookkeeping, under the internal mutex.
#[derive(Debug, Default)]
struct State {
    /// Readers inside.
    readers: usize,
    /// Whether a writer is inside.
    writer: bool,
    /// Readers blocked in `read`.
    readers_waiting: usize,
    /// Writers blocked in `write`.
    writers_waiting: usize,
    /// Readers a releasing writer admitted ahead of waiting writers; each entering
    /// reader uses one, and writers wait until they are used up.
    admitted: usize,
}

/// A blocking reader-writer lock protecting a `T`.
///
/// Policy: **writer-preferring with batched reader admission.** A waiting writer
/// stops new readers from entering, so it enters as soon as the readers inside
/// leave: writers never starve. When a writer leaves, every reader waiting at that
/// moment is admitted before the next writer, so a steady stream of writers cannot
/// starve readers either. (A newly arriving reader may use an admission meant for
/// an older waiting reader, which then waits for the next writer's release; in
/// theory that reader can be overtaken repeatedly.) Not recursive: a thread that
/// holds the lock and asks for it again may deadlock.
///
/// ```
/// use keel_hosted::StdParker;
/// use keel_lfmutex::RwLock;
/// let lock = RwLock::<_, StdParker>::new(5);
/// {
///     let first = lock.read();
///     let second = lock.read();
///     assert_eq!(*first + *second, 10);
/// }
/// *lock.write() += 1;
/// assert_eq!(lock.into_inner(), 6);
/// ```
pub struct RwLock<T, P: Parker> {
    /// The bookkeeping.
    state: Mutex<State, P>,
    /// Waiting readers.
    readers: Condvar<P>,
    /// Waiting writers.
    writers: Condvar<P>,
    /// The protected value.
    data: UnsafeCell<T>,
}

// SAFETY: readers share `&T` across threads (needs `T: Sync`), a writer gets `&mut T`
// on whatever thread (needs `T: Send`); the state machine under `state` keeps
// writers exclusive, and the internal mutex orders all entries and exits.
unsafe impl<T: Send + Sync, P: Parker> Sync for RwLock<T, P> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send, P: Parker> Send for RwLock<T, P> {}

/// Shared access to a read-locked [`RwLock`]'s value; leaves on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockReadGuard<'a, T, P: Parker> {
    // Field order: the (loom-tracked) access ends before the release.
    /// The read access.
    data: ConstPtr<T>,
    /// Leaves as a reader on drop.
    _leave: ReaderExit<'a, T, P>,
    /// Not `Send` (kept simple; a reader could in principle leave elsewhere).
    _not_send: PhantomData<*const ()>,
}

/// Exclusive access to a write-locked [`RwLock`]'s value; leaves on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockWriteGuard<'a, T, P: Parker> {
    /// The write access.
    data: MutPtr<T>,
    /// Leaves as the writer on drop.
    _leave: WriterExit<'a, T, P>,
    /// Not `Send`.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing a guard shares `&T`.
unsafe impl<T: Sync, P: Parker> Sync for RwLockReadGuard<'_, T, P> {}
// SAFETY: sharing a guard shares `&T`.
unsafe impl<T: Sync, P: Parker> Sync for RwLockWriteGuard<'_, T, P> {}

/// Leaves as a reader when dropped.
struct ReaderExit<'a, T, P: Parker>(&'a RwLock<T, P>);

/// Leaves as the writer when dropped.
struct WriterExit<'a, T, P: Parker>(&'a RwLock<T, P>);

impl<T, P: Parker> Drop for ReaderExit<'_, T, P> {
    fn drop(&mut self) {
        if crate::unwinding_under_loom() {
            return;
        }
        let lock = self.0;
        let mut state = lock.state.lock();
        state.readers -= 1;
        if state.readers == 0 && state.writers_waiting > 0 {
            lock.writers.notify_one();
        }
    }
}

impl<T, P: Parker> Drop for WriterExit<'_, T, P> {
    fn drop(&mut self) {
        if crate::unwinding_under_loom() {
            return;
        }
        let lock = self.0;
        let mut state = lock.state.lock();
        state.writer = false;
        if state.readers_waiting > 0 {
            state.admitted = state.readers_waiting;
            lock.readers.notify_all();
        } else if state.writers_waiting > 0 {
            lock.writers.notify_one();
        }
    }
}

impl<T, P: Parker> RwLock<T, P> {
    /// An unlocked lock holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            state: Mutex::new(State {
                readers: 0,
                writer: false,
                readers_waiting: 0,
                writers_waiting: 0,
                admitted: 0,
            }),
            readers: Condvar::new(),
            writers: Condvar::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// An unlocked lock holding `value` (not `const` under loom).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            state: Mutex::new(State::default()),
            readers: Condvar::new(),
            writers: Condvar::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Enters as a reader, blocking while a writer is inside or waiting (unless
    /// admitted by a releasing writer).
    pub fn read(&self) -> RwLockReadGuard<'_, T, P> {
        let mut state = self.state.lock();
        if Self::reader_must_wait(&state) {
            state.readers_waiting += 1;
            state = self
                .readers
                .wait_while(state, |state| Self::reader_must_wait(state));
            state.readers_waiting -= 1;
        }
        state.admitted = state.admitted.saturating_sub(1);
        state.readers += 1;
        drop(state);
        self.read_guard()
    }

    /// Enters as a reader if no writer is inside or waiting.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T, P>> {
        let mut state = self.state.lock();
        if Self::reader_must_wait(&state) {
            return None;
        }
        state.admitted = state.admitted.saturating_sub(1);
        state.readers += 1;
        drop(state);
        Some(self.read_guard())
    }

    /// Enters as the writer, blocking while anybody is inside or admitted.
    pub fn write(&self) -> RwLockWriteGuard<'_, T, P> {
        let mut state = self.state.lock();
        if Self::writer_must_wait(&state) {
            state.writers_waiting += 1;
            state = self
                .writers
                .wait_while(state, |state| Self::writer_must_wait(state));
            state.writers_waiting -= 1;
        }
        state.writer = true;
        drop(state);
        self.write_guard()
    }

    /// Enters as the writer if nobody is inside or admitted.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T, P>> {
        let mut state = self.state.lock();
        if Self::writer_must_wait(&state) {
            return None;
        }
        state.writer = true;
        drop(state);
        Some(self.write_guard())
    }

    /// The value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// Mutable access without locking: `&mut self` proves nobody is inside.
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: relies on (1) `&mut self`: no guard is alive, and the returned
        // borrow is tied to it.
        self.data.with_mut(|value| unsafe { &mut *value })
    }

    fn reader_must_wait(state: &State) -> bool {
        state.writer || (state.writers_waiting > 0 && state.admitted == 0)
    }

    fn writer_must_wait(state: &State) -> bool {
        state.writer || state.readers > 0 || state.admitted > 0
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, T, P> {
        RwLockReadGuard {
            data: self.data.get(),
            _leave: ReaderExit(self),
            _not_send: PhantomData,
        }
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, T, P> {
        RwLockWriteGuard {
            data: self.data.get_mut(),
            _leave: WriterExit(self),
            _not_send: PhantomData,
        }
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for RwLock<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RwLock");
        match self.try_read() {
            Some(guard) => debug.field("data", &&*guard),
            None => debug.field("data", &format_args!("<locked>")),
        };
        debug.finish()
    }
}

impl<T, P: Parker> Deref for RwLockReadGuard<'_, T, P> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: relies on (1) the guard existing only while its reader is inside,
        // so no writer (no `&mut T`) exists; (2) the lock outliving the guard.
        unsafe { self.data.deref() }
    }
}

impl<T, P: Parker> Deref for RwLockWriteGuard<'_, T, P> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: relies on (1) the guard existing only while its writer is inside
        // alone; (2) the lock outliving the guard; (3) the borrow of the guard.
        unsafe { self.data.deref() }
    }
}

impl<T, P: Parker> DerefMut for RwLockWriteGuard<'_, T, P> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the `&mut T` unique.
        unsafe { self.data.deref() }
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for RwLockReadGuard<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLockReadGuard")
            .field("data", &&**self)
            .finish()
    }
}

impl<T: fmt::Debug, P: Parker> fmt::Debug for RwLockWriteGuard<'_, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLockWriteGuard")
            .field("data", &&**self)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_parker::TestParker;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::vec::Vec;

    type TestRwLock<T> = RwLock<T, TestParker>;

    #[test]
    fn readers_are_concurrent() {
        const READERS: usize = 4;
        let lock = Arc::new(TestRwLock::new(7));
        // All readers must be inside at once to pass the barrier.
        let barrier = Arc::new(Barrier::new(READERS));
        let handles: Vec<_> = (0..READERS)
            .map(|_| {
                let lock = Arc::clone(&lock);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let guard = lock.read();
                    barrier.wait();
                    assert!(lock.try_write().is_none());
                    *guard
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), 7);
        }
        assert!(lock.try_write().is_some());
    }

    #[test]
    fn writer_is_exclusive() {
        const THREADS: usize = 6;
        const ROUNDS: usize = 1_000;
        let lock = Arc::new(TestRwLock::new(0_usize));
        let inside = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|index| {
                let lock = Arc::clone(&lock);
                let inside = Arc::clone(&inside);
                thread::spawn(move || {
                    for round in 0..ROUNDS {
                        if (index + round) % 3 == 0 {
                            let mut guard = lock.write();
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            *guard += 1;
                            inside.fetch_sub(1, Ordering::SeqCst);
                        } else {
                            let guard = lock.read();
                            // Readers count as 1000 so a writer overlap shows.
                            assert!(
                                inside
                                    .fetch_add(1000, Ordering::SeqCst)
                                    .is_multiple_of(1000)
                            );
                            core::hint::black_box(*guard);
                            inside.fetch_sub(1000, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*lock.read(), THREADS * ROUNDS / 3);
    }

    #[test]
    fn waiting_writer_blocks_new_readers() {
        let lock = Arc::new(TestRwLock::new(0));
        let reader = lock.read();
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.write() += 1)
        };
        while lock.state.lock().writers_waiting == 0 {
            thread::yield_now();
        }
        assert!(lock.try_read().is_none(), "writer preference");
        drop(reader);
        writer.join().unwrap();
        assert_eq!(*lock.read(), 1);
        assert_eq!(std::format!("{lock:?}"), "RwLock { data: 1 }");
    }
}
