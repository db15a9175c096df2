//! `fcntl` record locks: POSIX locks (`F_GETLK`/`F_SETLK`/`F_SETLKW`), owned by a
//! [`Context`](crate::Context) (a process), and open-file-description locks
//! (`F_OFD_GETLK`/`F_OFD_SETLK`/`F_OFD_SETLKW`), owned by one [`OpenFile`](crate::OpenFile),
//! with Linux's semantics:
//!
//! - Locks are advisory byte ranges of a file (`(mount, inode)`), shared (`F_RDLCK`) or
//!   exclusive (`F_WRLCK`). Two owners conflict when their ranges overlap and either
//!   lock is exclusive. One owner never conflicts with itself: a new lock replaces
//!   what the owner held in its range (upgrading, downgrading or splitting), and an
//!   owner's adjacent or overlapping ranges of one kind merge.
//! - A range is `l_start` from `l_whence` (the file's start, the description's
//!   offset, or the file's size), `l_len` bytes long; `l_len == 0` means "to the end
//!   of the file, however far it grows"; a negative `l_len` covers the `-l_len` bytes
//!   before `l_start`. A range that would start before byte 0 is `EINVAL`, one that
//!   overflows `off_t` is `EOVERFLOW`.
//! - `F_SETLK` fails with `EAGAIN` on a conflict; `F_SETLKW` sleeps until the conflict
//!   is gone, and fails with `EDEADLK` if sleeping would close a cycle of POSIX owners
//!   each waiting for the next (Linux detects cycles of POSIX owners only, and so does
//!   this).
//! - `F_OFD_GETLK` with `F_UNLCK` reports the caller's own lock on the range (Linux
//!   6.6's extension); `F_GETLK` with `F_UNLCK` is `EINVAL`.
//! - A process's POSIX locks on a file all go when it closes *any* descriptor of that
//!   file (POSIX's rule, which sqlite works around) and when the context is dropped;
//!   an OFD lock goes when its open file description is released (the last
//!   descriptor referring to it is closed), or when unlocked.
//!
//! The table is sharded by file ([`SHARDS`] shards, each a `keel-lfmutex` mutex with
//! a condition variable for `F_SETLKW` sleepers), so locking different files never
//! shares a lock. The wait-for graph for deadlock detection has its own mutex, taken
//! only by an `F_SETLKW` that has to sleep, always after its shard's mutex.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use keel_lfmutex::{Condvar, Mutex, Parker};

use crate::errno::{Errno, Result};
use crate::fs::InodeNumber;

/// Number of shards of the lock table (a power of two).
pub const SHARDS: usize = 16;

/// `l_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `F_RDLCK` (0): shared.
    Read,
    /// `F_WRLCK` (1): exclusive.
    Write,
    /// `F_UNLCK` (2): no lock.
    Unlock,
}

impl LockKind {
    /// The kind `l_type`; `EINVAL` for any other value.
    pub fn from_raw(raw: i16) -> Result<Self> {
        match raw {
            0 => Ok(Self::Read),
            1 => Ok(Self::Write),
            2 => Ok(Self::Unlock),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `l_type`.
    pub fn raw(self) -> i16 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Unlock => 2,
        }
    }
}

/// The record-lock commands of `fcntl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockCommand {
    /// `F_GETLK` (5).
    Get,
    /// `F_SETLK` (6).
    Set,
    /// `F_SETLKW` (7).
    SetWait,
    /// `F_OFD_GETLK` (36).
    OfdGet,
    /// `F_OFD_SETLK` (37).
    OfdSet,
    /// `F_OFD_SETLKW` (38).
    OfdSetWait,
}

impl LockCommand {
    /// The record-lock command `cmd`, or `None` if `cmd` is another command.
    pub fn from_raw(cmd: i32) -> Option<Self> {
        match cmd {
            5 => Some(Self::Get),
            6 => Some(Self::Set),
            7 => Some(Self::SetWait),
            36 => Some(Self::OfdGet),
            37 => Some(Self::OfdSet),
            38 => Some(Self::OfdSetWait),
            _ => None,
        }
    }

    /// Whether this is an OFD command.
    pub fn is_ofd(self) -> bool {
        matches!(self, Self::OfdGet | Self::OfdSet | Self::OfdSetWait)
    }
}

/// `struct flock`, as the caller gives it and as `F_GETLK` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flock {
    /// `l_type`.
    pub kind: LockKind,
    /// `l_whence`: `SEEK_SET` (0), `SEEK_CUR` (1) or `SEEK_END` (2).
    pub whence: i16,
    /// `l_start`.
    pub start: i64,
    /// `l_len`.
    pub len: i64,
    /// `l_pid`: for `F_GETLK`, the owning context's id, or -1 for an OFD lock. Must
    /// be 0 for the OFD commands.
    pub pid: i32,
}

/// Who owns a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LockOwner {
    /// A context (process), by its id.
    Process(u64),
    /// An open file description, by its address (unique while it lives, and its
    /// locks go before it is freed).
    Description(usize),
}

impl LockOwner {
    /// `l_pid` as `F_GETLK` reports this owner.
    fn pid(self) -> i32 {
        match self {
            Self::Process(id) => i32::try_from(id).unwrap_or(i32::MAX),
            Self::Description(_) => -1,
        }
    }
}

/// A byte range `start..end`; `end == u64::MAX` is "to the end, however far".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    /// First byte.
    pub(crate) start: u64,
    /// One past the last byte.
    pub(crate) end: u64,
}

impl Range {
    /// The range of `l_start`/`l_len` from `base` (0, the offset or the size).
    pub(crate) fn from_flock(base: u64, start: i64, len: i64) -> Result<Self> {
        let base = i64::try_from(base).map_err(|_| Errno::EOVERFLOW)?;
        let first = base.checked_add(start).ok_or(Errno::EOVERFLOW)?;
        let (first, end) = match len {
            0 => (first, None),
            len if len > 0 => (first, Some(first.checked_add(len).ok_or(Errno::EOVERFLOW)?)),
            len => (first.checked_add(len).ok_or(Errno::EINVAL)?, Some(first)),
        };
        if first < 0 {
            return Err(Errno::EINVAL);
        }
        Ok(Self {
            start: first as u64,
            end: end.map_or(u64::MAX, |end| end as u64),
        })
    }

    /// Whether the ranges share a byte.
    fn overlaps(self, other: Range) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether the ranges overlap or touch.
    fn touches(self, other: Range) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// `l_start`/`l_len` of this range (`l_whence` = `SEEK_SET`).
    fn to_flock(self) -> (i64, i64) {
        let len = if self.end == u64::MAX {
            0
        } else {
            (self.end - self.start) as i64
        };
        (self.start as i64, len)
    }
}

/// One held lock.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// The owner.
    owner: LockOwner,
    /// Shared or exclusive (never `Unlock`).
    kind: LockKind,
    /// The bytes.
    range: Range,
}

impl Record {
    /// Whether a lock of `kind` on `range` by `owner` conflicts with this one.
    fn conflicts(&self, owner: LockOwner, kind: LockKind, range: Range) -> bool {
        self.owner != owner
            && self.range.overlaps(range)
            && (self.kind == LockKind::Write || kind == LockKind::Write)
    }
}

/// A file, as the table knows it.
pub(crate) type FileKey = (u32, InodeNumber);

/// One shard: the locks of the files that hash here.
struct Shard {
    /// Held locks per file.
    files: BTreeMap<FileKey, Vec<Record>>,
}

/// The lock table of a [`Vfs`](crate::Vfs).
pub(crate) struct LockTable<P: Parker + 'static> {
    /// The shards, each with the condition variable its sleepers wait on.
    shards: Vec<(Mutex<Shard, P>, Condvar<P>)>,
    /// The wait-for graph: a sleeping POSIX owner to the POSIX owner it waits for.
    waiting: Mutex<BTreeMap<u64, u64>, P>,
}

/// The shard of a file.
fn shard_index(file: FileKey) -> usize {
    let mixed = (file.1 ^ (u64::from(file.0) << 48)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 58) as usize & (SHARDS - 1)
}

impl<P: Parker + 'static> LockTable<P> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    (
                        Mutex::new(Shard {
                            files: BTreeMap::new(),
                        }),
                        Condvar::new(),
                    )
                })
                .collect(),
            waiting: Mutex::new(BTreeMap::new()),
        }
    }

    /// `F_GETLK`: the first lock that would conflict with `kind` on `range` by
    /// `owner`, as a `struct flock`, or `Unlock` if none. With `kind` `Unlock`, the
    /// first of `owner`'s own locks on `range` (Linux's `F_OFD_GETLK` with `F_UNLCK`).
    pub(crate) fn get(
        &self,
        file: FileKey,
        owner: LockOwner,
        kind: LockKind,
        range: Range,
    ) -> Flock {
        let shard = self.shards[shard_index(file)].0.lock();
        let found = shard.files.get(&file).and_then(|records| {
            records
                .iter()
                .find(|record| {
                    if kind == LockKind::Unlock {
                        // Linux 6.6's extension for F_OFD_GETLK: `F_UNLCK` asks for
                        // the caller's own locks.
                        record.owner == owner && record.range.overlaps(range)
                    } else {
                        record.conflicts(owner, kind, range)
                    }
                })
                .copied()
        });
        match found {
            Some(record) => {
                let (start, len) = record.range.to_flock();
                Flock {
                    kind: record.kind,
                    whence: 0,
                    start,
                    len,
                    pid: record.owner.pid(),
                }
            }
            None => Flock {
                kind: LockKind::Unlock,
                whence: 0,
                start: range.to_flock().0,
                len: range.to_flock().1,
                pid: 0,
            },
        }
    }

    /// `F_SETLK`/`F_SETLKW`: sets (or with `Unlock`, clears) `owner`'s lock on
    /// `range`. With `wait`, sleeps while another owner's lock is in the way.
    pub(crate) fn set(
        &self,
        file: FileKey,
        owner: LockOwner,
        kind: LockKind,
        range: Range,
        wait: bool,
    ) -> Result<()> {
        let (mutex, condvar) = &self.shards[shard_index(file)];
        let mut shard = mutex.lock();
        loop {
            let records = shard.files.entry(file).or_default();
            let blocker = (kind != LockKind::Unlock)
                .then(|| {
                    records
                        .iter()
                        .find(|record| record.conflicts(owner, kind, range))
                        .map(|record| record.owner)
                })
                .flatten();
            let Some(blocker) = blocker else {
                replace(records, owner, kind, range);
                if records.is_empty() {
                    shard.files.remove(&file);
                }
                drop(shard);
                // Whatever changed may let a sleeper through.
                condvar.notify_all();
                return Ok(());
            };
            if records.is_empty() {
                shard.files.remove(&file);
            }
            if !wait {
                return Err(Errno::EAGAIN);
            }
            if let (LockOwner::Process(me), LockOwner::Process(them)) = (owner, blocker) {
                let mut waiting = self.waiting.lock();
                // Follow the chain from the blocker; reaching me is a deadlock.
                let mut next = them;
                for _ in 0..=waiting.len() {
                    if next == me {
                        return Err(Errno::EDEADLK);
                    }
                    match waiting.get(&next) {
                        Some(&after) => next = after,
                        None => break,
                    }
                }
                waiting.insert(me, them);
                drop(waiting);
                shard = condvar.wait(shard);
                self.waiting.lock().remove(&me);
            } else {
                shard = condvar.wait(shard);
            }
        }
    }

    /// How many POSIX owners sleep in `F_SETLKW`.
    pub(crate) fn sleepers(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Releases every lock `owner` holds on `file`.
    pub(crate) fn release_file(&self, file: FileKey, owner: LockOwner) {
        let (mutex, condvar) = &self.shards[shard_index(file)];
        let mut shard = mutex.lock();
        let Some(records) = shard.files.get_mut(&file) else {
            return;
        };
        let before = records.len();
        records.retain(|record| record.owner != owner);
        let changed = records.len() != before;
        if records.is_empty() {
            shard.files.remove(&file);
        }
        drop(shard);
        if changed {
            condvar.notify_all();
        }
    }

    /// Releases every lock `owner` holds on any file.
    pub(crate) fn release_owner(&self, owner: LockOwner) {
        for (mutex, condvar) in &self.shards {
            let mut shard = mutex.lock();
            let mut changed = false;
            shard.files.retain(|_, records| {
                let before = records.len();
                records.retain(|record| record.owner != owner);
                changed |= records.len() != before;
                !records.is_empty()
            });
            drop(shard);
            if changed {
                condvar.notify_all();
            }
        }
    }

    /// The locks held on `file` (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self, file: FileKey) -> Vec<(LockOwner, LockKind, Range)> {
        let shard = self.shards[shard_index(file)].0.lock();
        shard
            .files
            .get(&file)
            .map(|records| {
                records
                    .iter()
                    .map(|record| (record.owner, record.kind, record.range))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Makes `owner` hold `kind` (or nothing, for `Unlock`) on exactly `range`, keeping
/// its other bytes as they were and merging touching ranges of one kind.
///
/// The list keeps each owner's locks together, sorted by start, and the owners in the
/// order they first took a lock, as Linux's per-inode list does; `F_GETLK` reports
/// the first conflict in this order, so it answers as Linux does.
fn replace(records: &mut Vec<Record>, owner: LockOwner, kind: LockKind, range: Range) {
    let position = records.iter().position(|record| record.owner == owner);
    let mut mine = Vec::new();
    let mut merged = range;
    for record in records.iter().filter(|record| record.owner == owner) {
        if record.kind == kind && record.range.touches(merged) {
            // Same kind, touching: one lock.
            merged = Range {
                start: record.range.start.min(merged.start),
                end: record.range.end.max(merged.end),
            };
            continue;
        }
        if !record.range.overlaps(range) {
            mine.push(*record);
            continue;
        }
        // Another kind (or an unlock) over part of it: keep the parts outside.
        if record.range.start < range.start {
            mine.push(Record {
                range: Range {
                    start: record.range.start,
                    end: range.start,
                },
                ..*record
            });
        }
        if record.range.end > range.end {
            mine.push(Record {
                range: Range {
                    start: range.end,
                    end: record.range.end,
                },
                ..*record
            });
        }
    }
    // A merge may have swallowed kept pieces of the same kind: drop those inside.
    mine.retain(|record| {
        !(record.kind == kind
            && record.range.start >= merged.start
            && record.range.end <= merged.end)
    });
    if kind != LockKind::Unlock {
        mine.push(Record {
            owner,
            kind,
            range: merged,
        });
    }
    mine.sort_by_key(|record| record.range.start);
    records.retain(|record| record.owner != owner);
    let at = position.map_or(records.len(), |position| position.min(records.len()));
    records.splice(at..at, mine);
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_hosted::StdParker;

    const FILE: FileKey = (0, 7);
    const A: LockOwner = LockOwner::Process(1);
    const B: LockOwner = LockOwner::Process(2);

    fn range(start: u64, end: u64) -> Range {
        Range { start, end }
    }

    #[test]
    fn ranges_from_flock() {
        assert_eq!(Range::from_flock(0, 10, 5).unwrap(), range(10, 15));
        assert_eq!(Range::from_flock(100, -10, 0).unwrap(), range(90, u64::MAX));
        assert_eq!(Range::from_flock(0, 10, -4).unwrap(), range(6, 10));
        assert_eq!(Range::from_flock(0, 2, -4), Err(Errno::EINVAL));
        assert_eq!(Range::from_flock(0, -1, 1), Err(Errno::EINVAL));
        assert_eq!(Range::from_flock(0, i64::MAX, 1), Err(Errno::EOVERFLOW));
    }

    #[test]
    fn one_owner_splits_merges_and_converts() {
        let table = LockTable::<StdParker>::new();
        table
            .set(FILE, A, LockKind::Read, range(0, 100), false)
            .unwrap();
        table
            .set(FILE, A, LockKind::Write, range(40, 60), false)
            .unwrap();
        let mut held = table.held(FILE);
        held.sort_by_key(|(_, _, r)| r.start);
        assert_eq!(
            held,
            [
                (A, LockKind::Read, range(0, 40)),
                (A, LockKind::Write, range(40, 60)),
                (A, LockKind::Read, range(60, 100)),
            ]
        );
        table
            .set(FILE, A, LockKind::Read, range(40, 60), false)
            .unwrap();
        assert_eq!(table.held(FILE), [(A, LockKind::Read, range(0, 100))]);
        table
            .set(FILE, A, LockKind::Unlock, range(10, 20), false)
            .unwrap();
        let mut held = table.held(FILE);
        held.sort_by_key(|(_, _, r)| r.start);
        assert_eq!(
            held,
            [
                (A, LockKind::Read, range(0, 10)),
                (A, LockKind::Read, range(20, 100))
            ]
        );
        table.release_file(FILE, A);
        assert!(table.held(FILE).is_empty());
    }

    #[test]
    fn owners_conflict_only_with_a_writer() {
        let table = LockTable::<StdParker>::new();
        table
            .set(FILE, A, LockKind::Read, range(0, 10), false)
            .unwrap();
        table
            .set(FILE, B, LockKind::Read, range(5, 15), false)
            .unwrap();
        assert_eq!(
            table.set(FILE, B, LockKind::Write, range(0, 1), false),
            Err(Errno::EAGAIN)
        );
        table
            .set(FILE, B, LockKind::Write, range(10, 20), false)
            .unwrap();
        let found = table.get(FILE, A, LockKind::Write, range(0, u64::MAX));
        assert_eq!(
            (found.kind, found.start, found.len, found.pid),
            (LockKind::Read, 5, 5, 2)
        );
        let free = table.get(FILE, A, LockKind::Read, range(0, 10));
        assert_eq!(free.kind, LockKind::Unlock);
    }

    #[test]
    fn a_sleeper_runs_when_the_lock_goes_and_a_cycle_is_refused() {
        let table = std::sync::Arc::new(LockTable::<StdParker>::new());
        const OTHER: FileKey = (0, 8);
        table
            .set(FILE, A, LockKind::Write, range(0, 1), false)
            .unwrap();
        table
            .set(OTHER, B, LockKind::Write, range(0, 1), false)
            .unwrap();
        let sleeper = {
            let table = table.clone();
            std::thread::spawn(move || table.set(FILE, B, LockKind::Write, range(0, 1), true))
        };
        // B sleeps on A; A asking for B's lock would close the cycle.
        while table.waiting.lock().get(&2) != Some(&1) {
            std::thread::yield_now();
        }
        assert_eq!(
            table.set(OTHER, A, LockKind::Write, range(0, 1), true),
            Err(Errno::EDEADLK)
        );
        assert!(!sleeper.is_finished());
        table
            .set(FILE, A, LockKind::Unlock, range(0, 1), false)
            .unwrap();
        assert_eq!(sleeper.join().unwrap(), Ok(()));
        assert_eq!(table.held(FILE), [(B, LockKind::Write, range(0, 1))]);
    }
}
