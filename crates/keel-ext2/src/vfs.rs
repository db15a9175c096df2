//! ext2 under Keel's VFS: [`Ext2Fs`] implements `keel_vfs::FileSystem`, and each inode
//! a `keel_vfs::Vnode`, over the inode-level [`Ext2`] API.
//!
//! [`Ext2`] keeps its state behind a spin lock held across device requests, which
//! sleep. A second thread would then spin for a whole disk request, so every call goes
//! through a gate first: a `keel-lfmutex` mutex, whose waiters sleep. Inside the gate
//! the spin lock is never contended. (One filesystem-wide gate serialises the calls on
//! one ext2 mount, as [`Ext2`] does already; per-inode locking is later work.)
//!
//! `fsync` and `fdatasync` of any file sync the whole filesystem (everything dirty, in
//! the order the crate docs give, which also say what survives a cut): when they
//! return, every change made before them on this mount is durable, directory entries
//! included.
//!
//! `utimensat` sets the times through [`Ext2::set_times`]: whole seconds (the
//! nanoseconds are dropped, ext2 keeps none), clamped to what the on-disk field holds
//! as Keel reads it, 0 to `u32::MAX` seconds since 1970; the change time becomes the
//! mount's clock's now.

use crate::{Error, Ext2, FileType as Ext2Type, InodeNumber};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;
use keel_lfmutex::{Mutex, Parker};
use keel_vfs::{DirEntry, Errno, FileSystem, FileType, Stat, StatFs, Timespec, Vnode};
use keel_virtio::block::BlockDevice;

/// `statfs`'s `f_type` for ext2 (EXT2_SUPER_MAGIC).
const EXT2_MAGIC: u64 = 0xef53;

fn errno(error: Error) -> Errno {
    Errno::from_raw(error.errno()).unwrap_or(Errno::EIO)
}

fn file_type(kind: Ext2Type) -> FileType {
    match kind {
        Ext2Type::Directory => FileType::Directory,
        Ext2Type::Symlink => FileType::Symlink,
        Ext2Type::CharDevice => FileType::CharDevice,
        Ext2Type::BlockDevice => FileType::BlockDevice,
        Ext2Type::Fifo => FileType::Fifo,
        Ext2Type::Socket => FileType::Socket,
        Ext2Type::Regular | Ext2Type::Unknown => FileType::Regular,
    }
}

/// A mounted ext2 filesystem, for `Context::mount`.
pub struct Ext2Fs<D: BlockDevice + 'static, P: Parker + 'static> {
    gate: Mutex<(), P>,
    fs: Ext2<D>,
    me: Weak<Self>,
}

impl<D: BlockDevice + 'static, P: Parker + 'static> core::fmt::Debug for Ext2Fs<D, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ext2Fs")
            .field("fs", &self.fs)
            .finish_non_exhaustive()
    }
}

impl<D: BlockDevice + 'static, P: Parker + 'static> Ext2Fs<D, P> {
    /// The VFS face of `fs`.
    pub fn new(fs: Ext2<D>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            gate: Mutex::new(()),
            fs,
            me: me.clone(),
        })
    }

    fn call<R>(&self, f: impl FnOnce(&Ext2<D>) -> crate::Result<R>) -> keel_vfs::Result<R> {
        let _gate = self.gate.lock();
        f(&self.fs).map_err(errno)
    }

    /// A vnode for the inode `find` gives, found, checked and held under one hold of
    /// the gate (so that it cannot be freed in between).
    fn vnode(
        &self,
        find: impl FnOnce(&Ext2<D>) -> crate::Result<InodeNumber>,
    ) -> keel_vfs::Result<Arc<dyn Vnode>> {
        let fs = self.me.upgrade().ok_or(Errno::EIO)?;
        let (inode, kind) = self.call(|ext2| {
            let inode = find(ext2)?;
            let kind = file_type(ext2.stat(inode)?.file_type);
            ext2.hold(inode);
            Ok((inode, kind))
        })?;
        Ok(Arc::new(Ext2Vnode { fs, inode, kind }))
    }
}

impl<D: BlockDevice + 'static, P: Parker + 'static> FileSystem for Ext2Fs<D, P> {
    fn root(&self) -> Arc<dyn Vnode> {
        let fs = self.me.upgrade().expect("an Ext2Fs lives in its Arc");
        {
            let _gate = self.gate.lock();
            self.fs.hold(self.fs.root());
        }
        Arc::new(Ext2Vnode {
            inode: self.fs.root(),
            fs,
            kind: FileType::Directory,
        })
    }

    fn statfs(&self) -> keel_vfs::Result<StatFs> {
        let stats = self.call(|fs| Ok(fs.statfs()))?;
        Ok(StatFs {
            fs_type: EXT2_MAGIC,
            block_size: u64::from(stats.block_size),
            blocks: stats.blocks,
            blocks_free: stats.free_blocks,
            blocks_available: stats.available_blocks,
            files: stats.inodes,
            files_free: stats.free_inodes,
            name_max: u64::from(stats.name_max),
        })
    }

    fn sync(&self) -> keel_vfs::Result<()> {
        self.call(|fs| fs.sync())
    }
}

/// One inode, held ([`Ext2::hold`]) for the vnode's life: an unlinked file stays
/// readable and writable through its open descriptors, and is freed when the last
/// vnode for it goes (the VFS drops its vnodes when the last descriptor, working
/// directory or cache entry referring to them goes).
struct Ext2Vnode<D: BlockDevice + 'static, P: Parker + 'static> {
    fs: Arc<Ext2Fs<D, P>>,
    inode: InodeNumber,
    kind: FileType,
}

impl<D: BlockDevice + 'static, P: Parker + 'static> Drop for Ext2Vnode<D, P> {
    /// Releases the hold. An error freeing an orphan (a device error) cannot be
    /// returned from here: the inode stays allocated and is freed at unmount, or
    /// reclaimed by `e2fsck`.
    fn drop(&mut self) {
        let _ = self.fs.call(|fs| fs.release(self.inode));
    }
}

impl<D: BlockDevice + 'static, P: Parker + 'static> Ext2Vnode<D, P> {
    /// `other`'s inode, if it is a vnode of this same mount.
    fn same_mount(&self, other: &Arc<dyn Vnode>) -> keel_vfs::Result<InodeNumber> {
        let other = other
            .clone()
            .into_any()
            .downcast::<Ext2Vnode<D, P>>()
            .map_err(|_| Errno::EXDEV)?;
        if Arc::ptr_eq(&other.fs, &self.fs) {
            Ok(other.inode)
        } else {
            Err(Errno::EXDEV)
        }
    }

    fn permissions(mode: u32) -> u16 {
        (mode & 0o7777) as u16
    }
}

impl<D: BlockDevice + 'static, P: Parker + 'static> Vnode for Ext2Vnode<D, P> {
    fn ino(&self) -> u64 {
        u64::from(self.inode.0)
    }

    fn file_type(&self) -> FileType {
        self.kind
    }

    fn getattr(&self) -> keel_vfs::Result<Stat> {
        let metadata = self.fs.call(|fs| fs.stat(self.inode))?;
        let time = |sec: u32| Timespec {
            sec: i64::from(sec),
            nsec: 0,
        };
        Ok(Stat {
            ino: u64::from(self.inode.0),
            mode: u32::from(metadata.mode),
            nlink: u64::from(metadata.links),
            uid: metadata.uid,
            gid: metadata.gid,
            rdev: u64::from(metadata.device),
            size: metadata.size,
            blksize: metadata.block_size,
            blocks: u64::from(metadata.sectors),
            atime: time(metadata.atime),
            mtime: time(metadata.mtime),
            ctime: time(metadata.ctime),
            ..Stat::default()
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn lookup(&self, name: &[u8]) -> keel_vfs::Result<Arc<dyn Vnode>> {
        if self.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        self.fs.vnode(|fs| fs.lookup(self.inode, name))
    }

    fn create(&self, name: &[u8], mode: u32) -> keel_vfs::Result<Arc<dyn Vnode>> {
        self.fs
            .vnode(|fs| fs.create(self.inode, name, Self::permissions(mode)))
    }

    fn mkdir(&self, name: &[u8], mode: u32) -> keel_vfs::Result<Arc<dyn Vnode>> {
        self.fs
            .vnode(|fs| fs.mkdir(self.inode, name, Self::permissions(mode)))
    }

    fn symlink(&self, name: &[u8], target: &[u8]) -> keel_vfs::Result<Arc<dyn Vnode>> {
        self.fs.vnode(|fs| fs.symlink(self.inode, name, target))
    }

    fn link(&self, name: &[u8], target: &Arc<dyn Vnode>) -> keel_vfs::Result<()> {
        let target = self.same_mount(target)?;
        self.fs.call(|fs| fs.link(target, self.inode, name))
    }

    fn unlink(&self, name: &[u8]) -> keel_vfs::Result<()> {
        self.fs.call(|fs| fs.unlink(self.inode, name))
    }

    fn rmdir(&self, name: &[u8]) -> keel_vfs::Result<()> {
        self.fs.call(|fs| fs.rmdir(self.inode, name))
    }

    fn rename(
        &self,
        old_name: &[u8],
        new_dir: &Arc<dyn Vnode>,
        new_name: &[u8],
    ) -> keel_vfs::Result<()> {
        let new_dir = self.same_mount(new_dir)?;
        self.fs
            .call(|fs| fs.rename(self.inode, old_name, new_dir, new_name))
    }

    /// The directory's entries in on-disk order; the cookie is the position (an entry
    /// added or removed meanwhile may shift a later listing by one).
    fn readdir(&self, cookie: u64, max: usize) -> keel_vfs::Result<Vec<DirEntry>> {
        if self.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let entries = self.fs.call(|fs| fs.readdir(self.inode))?;
        Ok(entries
            .into_iter()
            .enumerate()
            .skip(usize::try_from(cookie).unwrap_or(usize::MAX))
            .take(max)
            .map(|(position, entry)| DirEntry {
                ino: u64::from(entry.inode.0),
                file_type: file_type(entry.file_type),
                name: entry.name,
                next_cookie: position as u64 + 1,
            })
            .collect())
    }

    fn readlink(&self) -> keel_vfs::Result<Vec<u8>> {
        if self.kind != FileType::Symlink {
            return Err(Errno::EINVAL);
        }
        self.fs.call(|fs| fs.readlink(self.inode))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> keel_vfs::Result<usize> {
        if self.kind == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        self.fs.call(|fs| fs.read_at(self.inode, offset, buf))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> keel_vfs::Result<usize> {
        if self.kind == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        self.fs.call(|fs| fs.write_at(self.inode, offset, buf))
    }

    /// Size and write under one hold of the gate, so appends do not interleave.
    fn append(&self, buf: &[u8]) -> keel_vfs::Result<(u64, usize)> {
        if self.kind == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        self.fs.call(|fs| {
            let size = fs.stat(self.inode)?.size;
            Ok((size, fs.write_at(self.inode, size, buf)?))
        })
    }

    fn truncate(&self, size: u64) -> keel_vfs::Result<()> {
        self.fs.call(|fs| fs.truncate(self.inode, size))
    }

    fn fsync(&self, _data_only: bool) -> keel_vfs::Result<()> {
        self.fs.call(|fs| fs.sync())
    }

    fn set_times(&self, atime: Option<Timespec>, mtime: Option<Timespec>) -> keel_vfs::Result<()> {
        let seconds = |time: Timespec| time.sec.clamp(0, i64::from(u32::MAX)) as u32;
        self.fs
            .call(|fs| fs.set_times(self.inode, atime.map(seconds), mtime.map(seconds)))
    }
}
