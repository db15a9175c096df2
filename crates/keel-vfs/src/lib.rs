//! Keel's virtual filesystem: the layer between the libc's file calls and the
//! filesystems.
//!
//! - [`FileSystem`] and [`Vnode`] ([`fs`]): the traits every filesystem implements
//!   (ramfs here; ext2, devfs and procfs later), with the contract of who checks what.
//! - [`Ramfs`] ([`ramfs`]): the in-memory root filesystem, files as sparse maps of
//!   4 KiB blocks.
//! - [`Vfs`] ([`vfs`]): the mount table, the dentry cache ([`dcache`]) and the clock;
//!   path resolution ([`path`]) as Linux does it.
//! - [`Context`] ([`context`]): a process's root, working directory and descriptor
//!   table ([`FdTable`] of [`OpenFile`]s, [`file`]); the system calls are its methods
//!   (`open`, `read`, `rename`, ...), returning [`Errno`] on failure and never
//!   panicking on any path, descriptor or flag.
//! - [`lock`]: `fcntl` record locks, POSIX (per context) and OFD (per open file
//!   description), with `F_SETLKW` sleeping and deadlock detection, as Linux has them.
//! - [`poll`]: readiness for `poll`, level-triggered, with wait queues for vnodes whose
//!   readiness changes.
//! - [`cpio`]: the boot image, a cpio "newc" archive, unpacked into the VFS.
//! - [`devfs`]: `/dev/console`, `null`, `zero`, `full`, `random` and `urandom`.
//! - [`procfs`]: `/proc/cpuinfo`, `meminfo`, `uptime`, `self/maps` and `self/fd/`,
//!   generated when read.
//!
//! Everything is generic over `keel-lfmutex`'s [`Parker`](keel_lfmutex::Parker), the
//! "block this thread" trait: in the kernel the scheduler's, on the host
//! `keel_hosted::StdParker`.
//!
//! # Concurrency: no global lock
//! - **Lookups** take no exclusive lock on the path they walk. Each component is
//!   looked up in the dentry cache under its shard's `RwLock` taken *shared* (64
//!   shards by directory); a miss asks the filesystem, which (ramfs) takes that one
//!   directory's `RwLock` shared. Mount-point checks read the mount table under a
//!   shared `RwLock` written only by `mount`. (A `keel-lfmutex` `RwLock::read` does
//!   take the lock's internal bookkeeping mutex for a few instructions; readers never
//!   wait for a writer's critical section unless a writer is in one. An RCU or
//!   seqlock walk like Linux's is a later step.)
//! - **Data**: each ramfs file has its own `RwLock`; writers to different files never
//!   share a lock. One open file's offset has its own mutex.
//! - **Namespace changes** lock only the directories involved (in inode-number order
//!   when there are several), then invalidate the dentry cache entries they changed.
//!   A cache miss inserts its answer only if no invalidation hit the shard meanwhile
//!   (a generation number), so a stale answer is never cached. Cross-directory
//!   renames in one filesystem are serialised by that mount's rename mutex (as Linux's
//!   `s_vfs_rename_mutex`) so "not into its own subtree" stays true while they run.
//! - The descriptor table has one mutex per context, held for the table operation
//!   only, never across I/O.
//!
//! # Not there yet
//! The `*at` calls with a directory descriptor, `O_PATH`/`O_TMPFILE`, `unmount`,
//! `chmod`/`chown`, and permission checks beyond `access` (Keel has one user).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod context;
pub mod cpio;
pub mod dcache;
pub mod devfs;
pub mod errno;
pub mod file;
mod fixed;
pub mod fs;
pub mod lock;
pub mod path;
pub mod poll;
pub mod procfs;
pub mod ramfs;
pub mod vfs;

pub use context::{Context, TimeUpdate};
pub use errno::{Errno, Result};
pub use file::{Access, FcntlCommand, Fd, FdTable, OpenFile, OpenFlags, Whence};
pub use fs::{Clock, DirEntry, FileSystem, FileType, FixedClock, Stat, StatFs, Timespec, Vnode};
pub use lock::{Flock, LockCommand, LockKind};
pub use poll::{PollEvents, PollFd, PollSleeper, PollWake, ReadinessQueue};
pub use ramfs::Ramfs;
pub use vfs::{Location, MountId, Vfs};
