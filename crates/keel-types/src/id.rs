//! Thread and CPU identities.

use core::fmt;
use core::num::NonZeroU64;

/// The identity of a thread: a non-zero `u64`, unique among the threads that are alive
/// at the same time in one scheduler (`keel-sched` numbers its threads from 1).
///
/// Non-zero so that `Option<ThreadId>` is one word and 0 can mean "no thread" where an
/// id is kept in an atomic word (a mutex's owner, a CPU's running thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadId(NonZeroU64);

impl ThreadId {
    /// Wraps a non-zero identity.
    #[must_use]
    pub const fn new(id: NonZeroU64) -> Self {
        Self(id)
    }

    /// The identity `id`, or `None` for 0 (the "no thread" encoding).
    #[must_use]
    pub const fn from_u64(id: u64) -> Option<Self> {
        match NonZeroU64::new(id) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }

    /// The identity as a non-zero integer.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread {}", self.0)
    }
}

/// A CPU number, `0..cpu_count` of the machine (or scheduler) that hands it out.
///
/// The index is private so that a CPU id is built on purpose ([`CpuId::new`]) rather
/// than by accident from any integer in reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuId(usize);

impl CpuId {
    /// The CPU with index `index`.
    #[must_use]
    pub const fn new(index: usize) -> Self {
        Self(index)
    }

    /// The CPU's index, `0..cpu_count`.
    #[must_use]
    pub const fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn thread_id_is_one_word_and_never_zero() {
        assert_eq!(
            core::mem::size_of::<Option<ThreadId>>(),
            core::mem::size_of::<u64>()
        );
        assert_eq!(ThreadId::from_u64(0), None);
        let id = ThreadId::from_u64(7).unwrap();
        assert_eq!(id.get(), 7);
        assert_eq!(id, ThreadId::new(NonZeroU64::new(7).unwrap()));
        assert_eq!(format!("{id}"), "thread 7");
    }

    #[test]
    fn cpu_id_round_trips() {
        let cpu = CpuId::new(3);
        assert_eq!(cpu.index(), 3);
        assert!(CpuId::new(0) < cpu);
        assert_eq!(format!("{cpu}"), "CPU 3");
    }
}
