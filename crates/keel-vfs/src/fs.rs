//! The interface between the VFS and a filesystem: [`FileSystem`] and [`Vnode`].
//!
//! # The contract: who checks what
//! The VFS ([`crate::Context`]) does everything that is the same for every
//! filesystem, before it calls a vnode:
//! - path syntax: components split on `/`, `.` and `..` (a vnode never sees a `/` in
//!   a name; it sees `.` and `..` only in [`Vnode::lookup`]), symlinks, mounts, name
//!   and path lengths (`ENAMETOOLONG`), trailing slashes;
//! - the type rules of each call: `unlink` of a directory (`EISDIR`), `rmdir` of a
//!   non-directory (`ENOTDIR`), `rename` of a file over a directory and back, of a
//!   directory into its own subtree (`EINVAL`), across mounts (`EXDEV`), mount points
//!   (`EBUSY`), hard links to directories (`EPERM`), reads and writes against the open
//!   mode (`EBADF`);
//! - the dentry cache (a filesystem is asked again only after a miss).
//!
//! A filesystem checks what only it can check atomically, under its own locks, and
//! must check it again even where the VFS checked first (another thread may have
//! changed the directory in between): that a name exists (`ENOENT`) or does not
//! (`EEXIST`), that a directory is empty (`ENOTEMPTY`) and, in `rename`, the
//! file-over-directory rules on what it finds when it holds the locks; its own limits
//! (`ENOSPC`, `EFBIG`, `EMLINK`, `EROFS`); that both vnodes of `rename`/`link` are its
//! own (`EXDEV` otherwise). Creating in a directory that was removed gives `ENOENT`.
//!
//! Every method may be called from many threads at once; a filesystem serialises
//! what it must with per-inode locks.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;

use crate::errno::Result;
use crate::poll::{PollEvents, PollRegistration};

/// An inode number, unique within one filesystem.
pub type InodeNumber = u64;

/// The type bits of `st_mode` (`S_IFMT`).
pub const S_IFMT: u32 = 0o170_000;
/// `S_IFREG`: a regular file.
pub const S_IFREG: u32 = 0o100_000;
/// `S_IFDIR`: a directory.
pub const S_IFDIR: u32 = 0o040_000;
/// `S_IFLNK`: a symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// `S_IFCHR`: a character device.
pub const S_IFCHR: u32 = 0o020_000;
/// `S_IFBLK`: a block device.
pub const S_IFBLK: u32 = 0o060_000;
/// `S_IFIFO`: a FIFO.
pub const S_IFIFO: u32 = 0o010_000;
/// `S_IFSOCK`: a socket.
pub const S_IFSOCK: u32 = 0o140_000;
/// The permission bits of a mode (with set-uid, set-gid and sticky).
pub const MODE_PERMISSIONS: u32 = 0o7777;

/// What kind of inode a vnode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

impl FileType {
    /// The `S_IF*` bits of this type.
    pub const fn mode_bits(self) -> u32 {
        match self {
            Self::Regular => S_IFREG,
            Self::Directory => S_IFDIR,
            Self::Symlink => S_IFLNK,
            Self::CharDevice => S_IFCHR,
            Self::BlockDevice => S_IFBLK,
            Self::Fifo => S_IFIFO,
            Self::Socket => S_IFSOCK,
        }
    }

    /// The type named by the `S_IFMT` bits of `mode`.
    pub const fn from_mode(mode: u32) -> Option<Self> {
        match mode & S_IFMT {
            S_IFREG => Some(Self::Regular),
            S_IFDIR => Some(Self::Directory),
            S_IFLNK => Some(Self::Symlink),
            S_IFCHR => Some(Self::CharDevice),
            S_IFBLK => Some(Self::BlockDevice),
            S_IFIFO => Some(Self::Fifo),
            S_IFSOCK => Some(Self::Socket),
            _ => None,
        }
    }

    /// The `d_type` of a `linux_dirent64` (`DT_REG` = 8, `DT_DIR` = 4, ...).
    pub const fn dirent_type(self) -> u8 {
        match self {
            Self::Fifo => 1,
            Self::CharDevice => 2,
            Self::Directory => 4,
            Self::BlockDevice => 6,
            Self::Regular => 8,
            Self::Symlink => 10,
            Self::Socket => 12,
        }
    }
}

/// A time stamp: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timespec {
    /// Whole seconds.
    pub sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nsec: u32,
}

/// Where a filesystem gets the time for its time stamps (passed in, never a global).
pub trait Clock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> Timespec;
}

/// A clock that always says the same time (for tests and for guests without one).
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedClock(pub Timespec);

impl Clock for FixedClock {
    fn now(&self) -> Timespec {
        self.0
    }
}

/// The fields of Linux's `struct stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// The device: filled in by the VFS (one number per mount).
    pub dev: u64,
    /// The inode number.
    pub ino: InodeNumber,
    /// Type bits (`S_IFMT`) and permission bits.
    pub mode: u32,
    /// Number of hard links (for a directory, 2 + its subdirectories).
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The device a device node stands for.
    pub rdev: u64,
    /// Size in bytes (a symlink: the length of its target).
    pub size: u64,
    /// The preferred I/O size.
    pub blksize: u32,
    /// Storage allocated, in 512-byte units.
    pub blocks: u64,
    /// Last access.
    pub atime: Timespec,
    /// Last modification of the contents.
    pub mtime: Timespec,
    /// Last change of the inode.
    pub ctime: Timespec,
}

impl Stat {
    /// The file type named by `mode`.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }
}

/// The fields of Linux's `struct statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    /// The filesystem's magic number (`f_type`).
    pub fs_type: u64,
    /// Block size.
    pub block_size: u64,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks an unprivileged user may use.
    pub blocks_available: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Longest name.
    pub name_max: u64,
}

/// One directory entry, as `readdir` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's inode number.
    pub ino: InodeNumber,
    /// The entry's type.
    pub file_type: FileType,
    /// The entry's name (no `/`, not empty).
    pub name: Vec<u8>,
    /// The cookie to pass to [`Vnode::readdir`] to continue after this entry. Cookies
    /// stay valid while the directory changes: an entry present for the whole
    /// listing is returned exactly once.
    pub next_cookie: u64,
}

/// A filesystem instance, mountable in the VFS.
pub trait FileSystem: Send + Sync {
    /// The root directory.
    fn root(&self) -> Arc<dyn Vnode>;
    /// Usage figures.
    fn statfs(&self) -> Result<StatFs>;
    /// Writes everything cached back to storage.
    fn sync(&self) -> Result<()>;
}

/// An inode of some filesystem: a file, directory, symlink or device.
///
/// The default methods give the errno Linux gives for a call that does not apply to
/// the type (`ENOTDIR` for directory calls on a non-directory, `EINVAL` for
/// `readlink` of a non-symlink, `EISDIR` for reading a directory).
pub trait Vnode: Send + Sync + 'static {
    /// The inode number (fixed for the vnode's life).
    fn ino(&self) -> InodeNumber;
    /// The type (fixed for the vnode's life).
    fn file_type(&self) -> FileType;
    /// The `stat` fields (`dev` is left for the VFS to fill in).
    fn getattr(&self) -> Result<Stat>;
    /// This vnode as `Any`, so that a filesystem can recognise its own vnodes in
    /// `rename` and `link`.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;

    /// A directory's child `name`; `.` is the directory itself, `..` its parent (the
    /// root's parent is the root). `ENOENT` if there is none.
    fn lookup(&self, _name: &[u8]) -> Result<Arc<dyn Vnode>> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Creates the regular file `name` with permission bits `mode`; `EEXIST` if the
    /// name is taken.
    fn create(&self, _name: &[u8], _mode: u32) -> Result<Arc<dyn Vnode>> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Creates the directory `name`; `EEXIST` if the name is taken.
    fn mkdir(&self, _name: &[u8], _mode: u32) -> Result<Arc<dyn Vnode>> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Creates the symlink `name` pointing at `target`; `EEXIST` if the name is taken.
    fn symlink(&self, _name: &[u8], _target: &[u8]) -> Result<Arc<dyn Vnode>> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Adds the name `name` for `target` (a non-directory of this filesystem).
    fn link(&self, _name: &[u8], _target: &Arc<dyn Vnode>) -> Result<()> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Removes the non-directory `name`; `EISDIR` if it is a directory.
    fn unlink(&self, _name: &[u8]) -> Result<()> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Removes the empty directory `name`; `ENOTEMPTY`, `ENOTDIR`.
    fn rmdir(&self, _name: &[u8]) -> Result<()> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Moves this directory's `old_name` to `new_dir`'s `new_name`, atomically
    /// replacing what is there: a non-directory by a non-directory, an empty directory
    /// by a directory (`ENOTEMPTY`, `EISDIR`, `ENOTDIR` otherwise). Renaming a name
    /// onto a name for the same inode succeeds and changes nothing.
    fn rename(&self, _old_name: &[u8], _new_dir: &Arc<dyn Vnode>, _new_name: &[u8]) -> Result<()> {
        Err(crate::Errno::ENOTDIR)
    }
    /// Up to `max` entries from `cookie` on (0 starts at the beginning, with `.` and
    /// `..`); an empty vector at the end.
    fn readdir(&self, _cookie: u64, _max: usize) -> Result<Vec<DirEntry>> {
        Err(crate::Errno::ENOTDIR)
    }
    /// A symlink's target.
    fn readlink(&self) -> Result<Vec<u8>> {
        Err(crate::Errno::EINVAL)
    }
    /// Reads from `offset`; returns the bytes read, 0 at or past the end.
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<usize> {
        Err(crate::Errno::EISDIR)
    }
    /// Writes at `offset`, growing the file as needed; returns the bytes written.
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<usize> {
        Err(crate::Errno::EISDIR)
    }
    /// Writes at the end of the file, atomically with respect to other appends;
    /// returns the offset written at and the bytes written. The default reads the
    /// size and writes there, which is not atomic: filesystems should override it.
    fn append(&self, buf: &[u8]) -> Result<(u64, usize)> {
        let size = self.getattr()?.size;
        Ok((size, self.write_at(size, buf)?))
    }
    /// Sets the size, dropping or zero-filling the tail.
    fn truncate(&self, _size: u64) -> Result<()> {
        Err(crate::Errno::EINVAL)
    }
    /// Makes the data (and, unless `data_only`, the metadata) durable.
    fn fsync(&self, _data_only: bool) -> Result<()> {
        Ok(())
    }
    /// Sets the access and/or modification time (`None`: leave it).
    fn set_times(&self, atime: Option<Timespec>, mtime: Option<Timespec>) -> Result<()>;
    /// The `poll` events that hold now (see [`crate::poll`]). A vnode whose
    /// readiness can change registers `registration` (when given) on its
    /// [`ReadinessQueue`](crate::poll::ReadinessQueue) before reading its state. The
    /// default, for files, directories and devices that never block, is always ready.
    fn poll(&self, _registration: Option<&PollRegistration<'_>>) -> PollEvents {
        PollEvents::ALWAYS_READY
    }
    /// Whether the dentry cache may remember this directory's lookups. False for a
    /// directory whose entries change behind the VFS's back (`/proc/self/fd`).
    fn cache_lookups(&self) -> bool {
        true
    }
}
