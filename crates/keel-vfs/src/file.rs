//! Open file descriptions and descriptor tables.
//!
//! An [`OpenFile`] is Linux's `struct file`: a vnode, the access mode, the status
//! flags and the offset. `dup` shares one between descriptors (they share the
//! offset); `open` makes a new one. A [`FdTable`] maps descriptor numbers to open
//! files, handing out the lowest free number, up to a limit (`EMFILE` beyond).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::BitOr;
use core::sync::atomic::{AtomicU32, Ordering};

use keel_lfmutex::{Mutex, Parker};

use crate::errno::{Errno, Result};
use crate::lock::{FileKey, LockOwner};
use crate::vfs::{Location, Vfs};

/// A file descriptor number (never negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fd(u32);

impl Fd {
    /// The descriptor `raw`, or `EBADF` for a negative number.
    pub fn from_raw(raw: i32) -> Result<Self> {
        u32::try_from(raw).map(Self).map_err(|_| Errno::EBADF)
    }

    /// The number.
    pub const fn raw(self) -> i32 {
        self.0 as i32
    }

    /// The index in a table.
    const fn index(self) -> usize {
        self.0 as usize
    }
}

/// `open` flags, with Linux's x86-64 values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpenFlags(u32);

impl fmt::Debug for OpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenFlags({:#o})", self.0)
    }
}

impl OpenFlags {
    /// Open for reading only.
    pub const O_RDONLY: Self = Self(0);
    /// Open for writing only.
    pub const O_WRONLY: Self = Self(0o1);
    /// Open for reading and writing.
    pub const O_RDWR: Self = Self(0o2);
    /// The access-mode bits.
    pub const O_ACCMODE: Self = Self(0o3);
    /// Create the file if it does not exist.
    pub const O_CREAT: Self = Self(0o100);
    /// With `O_CREAT`: fail with `EEXIST` if it exists (and do not follow a symlink).
    pub const O_EXCL: Self = Self(0o200);
    /// Do not make a terminal the controlling one (ignored).
    pub const O_NOCTTY: Self = Self(0o400);
    /// Truncate a regular file to 0.
    pub const O_TRUNC: Self = Self(0o1000);
    /// Every write appends.
    pub const O_APPEND: Self = Self(0o2000);
    /// Non-blocking I/O (recorded; ramfs never blocks).
    pub const O_NONBLOCK: Self = Self(0o4000);
    /// Synchronous data writes (recorded).
    pub const O_DSYNC: Self = Self(0o10000);
    /// Signal-driven I/O (recorded).
    pub const O_ASYNC: Self = Self(0o20000);
    /// Direct I/O (recorded).
    pub const O_DIRECT: Self = Self(0o40000);
    /// Large-file offsets (always on for 64-bit; `F_GETFL` reports it).
    pub const O_LARGEFILE: Self = Self(0o100000);
    /// Fail with `ENOTDIR` unless the path names a directory.
    pub const O_DIRECTORY: Self = Self(0o200000);
    /// Fail with `ELOOP` if the last component is a symlink.
    pub const O_NOFOLLOW: Self = Self(0o400000);
    /// Do not update the access time (recorded).
    pub const O_NOATIME: Self = Self(0o1000000);
    /// Close on `exec`.
    pub const O_CLOEXEC: Self = Self(0o2000000);
    /// Synchronous writes (recorded).
    pub const O_SYNC: Self = Self(0o4010000);
    /// A path-only descriptor (not supported yet: `EINVAL`).
    pub const O_PATH: Self = Self(0o10000000);
    /// An unnamed temporary file (not supported yet: `EINVAL`).
    pub const O_TMPFILE: Self = Self(0o20000000 | 0o200000);

    /// The status flags `F_SETFL` may change.
    pub const SETTABLE: Self = Self(
        Self::O_APPEND.0
            | Self::O_NONBLOCK.0
            | Self::O_ASYNC.0
            | Self::O_DIRECT.0
            | Self::O_NOATIME.0,
    );

    /// The flags with these bits (unknown bits are kept and ignored, as Linux does).
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set (`O_RDONLY`, being 0, is always "set": use
    /// [`Self::access`] for the access mode).
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The access mode, or `EINVAL` for the value 3.
    pub fn access(self) -> Result<Access> {
        match self.0 & Self::O_ACCMODE.0 {
            0 => Ok(Access::ReadOnly),
            1 => Ok(Access::WriteOnly),
            2 => Ok(Access::ReadWrite),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl BitOr for OpenFlags {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// What an open file may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `O_RDONLY`.
    ReadOnly,
    /// `O_WRONLY`.
    WriteOnly,
    /// `O_RDWR`.
    ReadWrite,
}

impl Access {
    /// Reading is allowed.
    pub const fn readable(self) -> bool {
        matches!(self, Self::ReadOnly | Self::ReadWrite)
    }
    /// Writing is allowed.
    pub const fn writable(self) -> bool {
        matches!(self, Self::WriteOnly | Self::ReadWrite)
    }
    /// The `O_ACCMODE` bits.
    pub const fn flags(self) -> OpenFlags {
        match self {
            Self::ReadOnly => OpenFlags::O_RDONLY,
            Self::WriteOnly => OpenFlags::O_WRONLY,
            Self::ReadWrite => OpenFlags::O_RDWR,
        }
    }
}

/// `lseek`'s origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// `SEEK_SET` (0): from the start.
    Set,
    /// `SEEK_CUR` (1): from the current offset.
    Current,
    /// `SEEK_END` (2): from the end.
    End,
}

impl Whence {
    /// The origin numbered `raw`; `EINVAL` for others (`SEEK_DATA`/`SEEK_HOLE` are
    /// not supported yet).
    pub fn from_raw(raw: i32) -> Result<Self> {
        match raw {
            0 => Ok(Self::Set),
            1 => Ok(Self::Current),
            2 => Ok(Self::End),
            _ => Err(Errno::EINVAL),
        }
    }
}

/// `FD_CLOEXEC`, the one descriptor flag.
pub const FD_CLOEXEC: i32 = 1;

/// The `fcntl` commands supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FcntlCommand {
    /// `F_DUPFD` (0): duplicate onto the lowest free descriptor `>= min`.
    DupFd(i32),
    /// `F_DUPFD_CLOEXEC` (1030): the same with `FD_CLOEXEC`.
    DupFdCloexec(i32),
    /// `F_GETFD` (1).
    GetFd,
    /// `F_SETFD` (2).
    SetFd(i32),
    /// `F_GETFL` (3).
    GetFl,
    /// `F_SETFL` (4).
    SetFl(u32),
}

impl FcntlCommand {
    /// The command `cmd` with argument `arg`; `EINVAL` for the ones not supported.
    /// The record locks (`F_GETLK`, `F_SETLK`, `F_SETLKW` and the `F_OFD_*` ones)
    /// take a `struct flock` and are [`LockCommand`](crate::LockCommand)s, for
    /// [`Context::fcntl_lock`](crate::Context::fcntl_lock).
    pub fn from_raw(cmd: i32, arg: u64) -> Result<Self> {
        match cmd {
            0 => Ok(Self::DupFd(arg as i32)),
            1030 => Ok(Self::DupFdCloexec(arg as i32)),
            1 => Ok(Self::GetFd),
            2 => Ok(Self::SetFd(arg as i32)),
            3 => Ok(Self::GetFl),
            4 => Ok(Self::SetFl(arg as u32)),
            _ => Err(Errno::EINVAL),
        }
    }
}

/// An open file description.
pub struct OpenFile<P: Parker + 'static> {
    /// The vnode and its mount.
    pub(crate) location: Location,
    /// The access mode (fixed).
    access: Access,
    /// Status flags ([`OpenFlags::SETTABLE`] bits). Relaxed: each use reads it once
    /// and nothing else is ordered by it.
    status: AtomicU32,
    /// The file offset (for a directory: the `readdir` cookie). The lock also makes
    /// `read`/`write`/`lseek` on one description atomic with respect to each other,
    /// like Linux's `f_pos_lock`.
    pub(crate) offset: Mutex<u64, P>,
    /// The VFS whose lock table holds this description's OFD locks, set by its first
    /// `F_OFD_SETLK`; they are released when the description is.
    pub(crate) ofd_locks: Mutex<Option<Arc<Vfs<P>>>, P>,
    /// The directory the file was opened in (for `/proc/self/fd`'s link), if `open`
    /// knew it.
    pub(crate) parent: Option<Location>,
}

impl<P: Parker + 'static> Drop for OpenFile<P> {
    fn drop(&mut self) {
        if let Some(vfs) = self.ofd_locks.get_mut().take() {
            vfs.locks.release_file(
                self.lock_key(),
                LockOwner::Description(self.lock_owner_id()),
            );
        }
    }
}

impl<P: Parker + 'static> fmt::Debug for OpenFile<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenFile")
            .field("ino", &self.location.vnode.ino())
            .field("access", &self.access)
            .field("status", &self.status.load(Ordering::Relaxed))
            .finish()
    }
}

impl<P: Parker + 'static> OpenFile<P> {
    /// A description of `location` opened with `flags`.
    pub(crate) fn new(location: Location, access: Access, flags: OpenFlags) -> Self {
        Self {
            location,
            access,
            status: AtomicU32::new(flags.bits() & OpenFlags::SETTABLE.bits()),
            offset: Mutex::new(0),
            ofd_locks: Mutex::new(None),
            parent: None,
        }
    }

    /// The same, remembering the directory it was opened in.
    pub(crate) fn with_parent(mut self, parent: Location) -> Self {
        self.parent = Some(parent);
        self
    }

    /// The file, as the lock table knows it.
    pub(crate) fn lock_key(&self) -> FileKey {
        (self.location.mount, self.location.vnode.ino())
    }

    /// This description's identity as an OFD lock owner: its address, unique while
    /// it lives (its locks are released before it is freed).
    pub(crate) fn lock_owner_id(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }

    /// The access mode.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The status flags (as `F_GETFL` reports them, with the access mode).
    pub fn flags(&self) -> OpenFlags {
        OpenFlags::from_bits(
            self.status.load(Ordering::Relaxed)
                | self.access.flags().bits()
                | OpenFlags::O_LARGEFILE.bits(),
        )
    }

    /// Whether writes append.
    pub fn appends(&self) -> bool {
        self.status.load(Ordering::Relaxed) & OpenFlags::O_APPEND.bits() != 0
    }

    /// Sets the changeable status flags (`F_SETFL`).
    pub(crate) fn set_flags(&self, flags: u32) {
        self.status
            .store(flags & OpenFlags::SETTABLE.bits(), Ordering::Relaxed);
    }
}

/// One descriptor.
struct Descriptor<P: Parker + 'static> {
    /// The open file.
    file: Arc<OpenFile<P>>,
    /// `FD_CLOEXEC`.
    close_on_exec: bool,
}

impl<P: Parker + 'static> Clone for Descriptor<P> {
    fn clone(&self) -> Self {
        Self {
            file: self.file.clone(),
            close_on_exec: self.close_on_exec,
        }
    }
}

/// The default descriptor limit (`RLIMIT_NOFILE`).
pub const DEFAULT_FD_LIMIT: usize = 1024;

/// A descriptor table.
pub struct FdTable<P: Parker + 'static> {
    /// Descriptors by number.
    slots: Mutex<Vec<Option<Descriptor<P>>>, P>,
    /// Numbers are `0..limit`.
    limit: usize,
}

impl<P: Parker + 'static> fmt::Debug for FdTable<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = self
            .slots
            .lock()
            .iter()
            .filter(|slot| slot.is_some())
            .count();
        f.debug_struct("FdTable")
            .field("open", &open)
            .field("limit", &self.limit)
            .finish()
    }
}

impl<P: Parker + 'static> FdTable<P> {
    /// An empty table for numbers `0..limit`.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Mutex::new(Vec::new()),
            limit: limit.min(i32::MAX as usize),
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Installs `file` at the lowest free number `>= min`; `EMFILE` if none.
    pub fn insert(&self, file: Arc<OpenFile<P>>, close_on_exec: bool, min: usize) -> Result<Fd> {
        let mut slots = self.slots.lock();
        let free = (min..self.limit)
            .find(|&index| slots.get(index).is_none_or(|slot| slot.is_none()))
            .ok_or(Errno::EMFILE)?;
        if slots.len() <= free {
            slots.resize_with(free + 1, || None);
        }
        slots[free] = Some(Descriptor {
            file,
            close_on_exec,
        });
        Ok(Fd(free as u32))
    }

    /// The open file of `fd`; `EBADF` if closed.
    pub fn get(&self, fd: Fd) -> Result<Arc<OpenFile<P>>> {
        self.slots
            .lock()
            .get(fd.index())
            .and_then(|slot| slot.as_ref())
            .map(|descriptor| descriptor.file.clone())
            .ok_or(Errno::EBADF)
    }

    /// Closes `fd`, returning its open file; `EBADF` if closed.
    pub fn remove(&self, fd: Fd) -> Result<Arc<OpenFile<P>>> {
        let mut slots = self.slots.lock();
        let descriptor = slots
            .get_mut(fd.index())
            .and_then(|slot| slot.take())
            .ok_or(Errno::EBADF)?;
        while slots.last().is_some_and(|slot| slot.is_none()) {
            slots.pop();
        }
        Ok(descriptor.file)
    }

    /// Makes `new` a copy of `old` (closing what `new` had), as `dup2`/`dup3`.
    pub fn duplicate_onto(&self, old: Fd, new: Fd, close_on_exec: bool) -> Result<Fd> {
        if new.index() >= self.limit {
            return Err(Errno::EBADF);
        }
        let mut slots = self.slots.lock();
        let file = slots
            .get(old.index())
            .and_then(|slot| slot.as_ref())
            .map(|descriptor| descriptor.file.clone())
            .ok_or(Errno::EBADF)?;
        if slots.len() <= new.index() {
            slots.resize_with(new.index() + 1, || None);
        }
        // The replaced open file is dropped after the table lock is released.
        let replaced = slots[new.index()].replace(Descriptor {
            file,
            close_on_exec,
        });
        drop(slots);
        drop(replaced);
        Ok(new)
    }

    /// `FD_CLOEXEC` of `fd`.
    pub fn close_on_exec(&self, fd: Fd) -> Result<bool> {
        self.slots
            .lock()
            .get(fd.index())
            .and_then(|slot| slot.as_ref())
            .map(|descriptor| descriptor.close_on_exec)
            .ok_or(Errno::EBADF)
    }

    /// Sets `FD_CLOEXEC` of `fd`.
    pub fn set_close_on_exec(&self, fd: Fd, close_on_exec: bool) -> Result<()> {
        let mut slots = self.slots.lock();
        let descriptor = slots
            .get_mut(fd.index())
            .and_then(|slot| slot.as_mut())
            .ok_or(Errno::EBADF)?;
        descriptor.close_on_exec = close_on_exec;
        Ok(())
    }

    /// Closes every descriptor marked `FD_CLOEXEC` (what `exec` does).
    pub fn close_all_on_exec(&self) {
        let mut slots = self.slots.lock();
        let closed: Vec<_> = slots
            .iter_mut()
            .filter(|slot| {
                slot.as_ref()
                    .is_some_and(|descriptor| descriptor.close_on_exec)
            })
            .filter_map(|slot| slot.take())
            .collect();
        drop(slots);
        drop(closed);
    }

    /// The open descriptors, in increasing order.
    pub fn open_descriptors(&self) -> Vec<Fd> {
        self.slots
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.is_some())
            .map(|(index, _)| Fd(index as u32))
            .collect()
    }

    /// A copy of the table (what `fork` does: the copies share open files).
    pub fn duplicate(&self) -> Self {
        Self {
            slots: Mutex::new(self.slots.lock().clone()),
            limit: self.limit,
        }
    }
}
