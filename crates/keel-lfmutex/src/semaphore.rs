//! [`Semaphore`]: a counting semaphore on [`Mutex`] + [`Condvar`].

use core::fmt;

use crate::condvar::Condvar;
use crate::mutex::Mutex;
use crate::parker::Parker;

/// A counting semaphore: [`post`](Semaphore::post) adds units, [`wait`](Semaphore::wait)
/// blocks until it can take one.
///
/// Built on the crate's [`Mutex`] and wait-morphing [`Condvar`]; posts notify while
/// holding the mutex, so a woken waiter is handed the mutex by the poster's unlock
/// and wakes exactly once. Waiters are served roughly in FIFO order (the condvar's
/// and the mutex's queues are FIFO) but a thread arriving while units are available
/// may take one first: not strictly fair.
///
/// ```
/// use keel_hosted::StdParker;
/// use keel_lfmutex::Semaphore;
/// let semaphore = Semaphore::<StdParker>::new(1);
/// semaphore.wait();
/// assert!(!semaphore.try_wait());
/// semaphore.post(2);
/// assert!(semaphore.try_wait());
/// assert_eq!(semaphore.available(), 1);
/// ```
pub struct Semaphore<P: Parker> {
    /// The number of available units.
    units: Mutex<usize, P>,
    /// Waiters for a unit.
    available: Condvar<P>,
}

impl<P: Parker> Semaphore<P> {
    /// A semaphore holding `units` units.
    #[cfg(not(loom))]
    pub const fn new(units: usize) -> Self {
        Self {
            units: Mutex::new(units),
            available: Condvar::new(),
        }
    }

    /// A semaphore holding `units` units (not `const` under loom).
    #[cfg(loom)]
    pub fn new(units: usize) -> Self {
        Self {
            units: Mutex::new(units),
            available: Condvar::new(),
        }
    }

    /// Adds `units` units, waking as many waiters as may use them.
    ///
    /// # Panics
    /// If the count would overflow a `usize`.
    pub fn post(&self, units: usize) {
        let mut available = self.units.lock();
        *available = available
            .checked_add(units)
            .expect("Semaphore count overflow");
        match units {
            0 => {}
            1 => self.available.notify_one(),
            _ => self.available.notify_all(),
        }
    }

    /// Takes one unit, blocking until one is available.
    pub fn wait(&self) {
        let mut available = self
            .available
            .wait_while(self.units.lock(), |available| *available == 0);
        *available -= 1;
    }

    /// Takes one unit if one is available right now; never blocks on an empty
    /// semaphore (it may briefly wait for the internal mutex).
    pub fn try_wait(&self) -> bool {
        let mut available = self.units.lock();
        if *available == 0 {
            return false;
        }
        *available -= 1;
        true
    }

    /// The number of available units; only a snapshot.
    pub fn available(&self) -> usize {
        *self.units.lock()
    }
}

impl<P: Parker> fmt::Debug for Semaphore<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Semaphore");
        match self.units.try_lock() {
            Some(units) => debug.field("available", &*units),
            None => debug.field("available", &format_args!("<locked>")),
        };
        debug.finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_parker::TestParker;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    #[test]
    fn producers_and_consumers_balance() {
        const PRODUCERS: usize = 3;
        const CONSUMERS: usize = 4;
        const ITEMS: usize = 6_000; // divisible by both
        let items = Arc::new(Semaphore::<TestParker>::new(0));
        let consumed = Arc::new(core::sync::atomic::AtomicUsize::new(0));
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let items = Arc::clone(&items);
                let consumed = Arc::clone(&consumed);
                thread::spawn(move || {
                    for _ in 0..ITEMS / CONSUMERS {
                        items.wait();
                        consumed.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|index| {
                let items = Arc::clone(&items);
                thread::spawn(move || {
                    let mut posted = 0;
                    while posted < ITEMS / PRODUCERS {
                        // Mix single and batched posts.
                        let batch = if index == 0 {
                            1
                        } else {
                            4.min(ITEMS / PRODUCERS - posted)
                        };
                        items.post(batch);
                        posted += batch;
                    }
                })
            })
            .collect();
        for handle in producers.into_iter().chain(consumers) {
            handle.join().unwrap();
        }
        assert_eq!(consumed.load(core::sync::atomic::Ordering::Relaxed), ITEMS);
        assert_eq!(items.available(), 0);
        assert!(!items.try_wait());
    }

    #[test]
    fn try_wait_counts_and_debug() {
        let semaphore = Semaphore::<TestParker>::new(2);
        assert!(semaphore.try_wait());
        assert!(semaphore.try_wait());
        assert!(!semaphore.try_wait());
        semaphore.post(0);
        assert!(!semaphore.try_wait());
        semaphore.post(1);
        assert_eq!(std::format!("{semaphore:?}"), "Semaphore { available: 1 }");
    }
}
