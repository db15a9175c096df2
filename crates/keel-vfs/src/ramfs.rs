//! ramfs: the in-memory filesystem Keel mounts at `/` by default.
//!
//! - A regular file is a size and a `BTreeMap` from block index to a 4 KiB block:
//!   blocks never written are holes that read as zeros, so sparse files and large
//!   offsets cost only the blocks written.
//! - A directory is a `BTreeMap` from name to inode, plus a second map from a
//!   per-directory insertion number (the `readdir` cookie) to name, so a listing
//!   resumes correctly while the directory changes.
//! - A symlink holds its target.
//!
//! Locks are per inode (`keel-lfmutex` locks over `P`): a directory's entries and a
//! file's data are each under a `RwLock` (lookups and reads share it, changes take it
//! alone), the metadata (mode, link count, times) under a `Mutex` taken last. An
//! operation that needs several directories (`rmdir`: parent and victim; `rename`: two
//! parents and a replaced directory) locks them in inode-number order, then checks
//! that the names still point where they did and retries if not, so lock order is
//! global and there is no deadlock.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use keel_lfmutex::{Mutex, Parker, RwLock};

use crate::errno::{Errno, Result};
use crate::fs::{
    Clock, DirEntry, FileSystem, FileType, InodeNumber, MODE_PERMISSIONS, Stat, StatFs, Timespec,
    Vnode,
};

/// Bytes per file block.
pub const BLOCK_SIZE: usize = 4096;
/// The largest file size (Linux's `MAX_LFS_FILESIZE` on 64-bit).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// `RAMFS_MAGIC`, ramfs's `f_type`.
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// The longest name.
pub const NAME_MAX: usize = 255;

/// What all inodes of one ramfs share.
struct Shared {
    /// The next inode number to hand out (Relaxed: only uniqueness matters).
    next_ino: AtomicU64,
    /// Allocated file blocks, for `statfs` (Relaxed: a statistic).
    blocks: AtomicU64,
    /// Live inodes, for `statfs` (Relaxed: a statistic).
    inodes: AtomicU64,
    /// Where time stamps come from.
    clock: Arc<dyn Clock>,
}

/// An in-memory filesystem.
pub struct Ramfs<P: Parker + 'static> {
    /// The root directory.
    root: Arc<RamInode<P>>,
    /// Counters and the clock.
    shared: Arc<Shared>,
}

impl<P: Parker + 'static> fmt::Debug for Ramfs<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ramfs")
            .field("inodes", &self.shared.inodes.load(Ordering::Relaxed))
            .field("blocks", &self.shared.blocks.load(Ordering::Relaxed))
            .finish()
    }
}

impl<P: Parker + 'static> Ramfs<P> {
    /// An empty ramfs (a root directory with mode `0o755`) time-stamped by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        let shared = Arc::new(Shared {
            next_ino: AtomicU64::new(1),
            blocks: AtomicU64::new(0),
            inodes: AtomicU64::new(0),
            clock,
        });
        let root = RamInode::new(&shared, Kind::directory(), 0o755, Weak::new());
        Arc::new(Self { root, shared })
    }
}

impl<P: Parker + 'static> FileSystem for Ramfs<P> {
    fn root(&self) -> Arc<dyn Vnode> {
        self.root.clone()
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            fs_type: RAMFS_MAGIC,
            block_size: BLOCK_SIZE as u64,
            blocks: self.shared.blocks.load(Ordering::Relaxed),
            blocks_free: 0,
            blocks_available: 0,
            files: self.shared.inodes.load(Ordering::Relaxed),
            files_free: 0,
            name_max: NAME_MAX as u64,
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// The metadata of an inode.
#[derive(Debug)]
struct Meta {
    /// Permission bits.
    mode: u32,
    /// Hard links (directories: 2 + subdirectories while linked, 0 once removed).
    nlink: u64,
    /// Last access.
    atime: Timespec,
    /// Last content change.
    mtime: Timespec,
    /// Last inode change.
    ctime: Timespec,
}

/// A file's contents.
#[derive(Debug, Default)]
struct FileData {
    /// Size in bytes.
    size: u64,
    /// Written blocks by index; missing blocks are holes.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

/// One name in a directory.
struct Slot<P: Parker + 'static> {
    /// The inode the name is for.
    inode: Arc<RamInode<P>>,
    /// Its position in `by_cookie`.
    cookie: u64,
}

/// A directory's contents.
struct DirData<P: Parker + 'static> {
    /// Entries by name.
    entries: BTreeMap<Vec<u8>, Slot<P>>,
    /// Names by insertion number: the `readdir` order.
    by_cookie: BTreeMap<u64, Vec<u8>>,
    /// The next insertion number (0 and 1 are `.` and `..`).
    next_cookie: u64,
    /// Set by `rmdir`: nothing may be created here any more.
    removed: bool,
}

impl<P: Parker + 'static> DirData<P> {
    /// Adds `name` (which must be free).
    fn insert(&mut self, name: &[u8], inode: Arc<RamInode<P>>) {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.by_cookie.insert(cookie, name.to_vec());
        self.entries.insert(name.to_vec(), Slot { inode, cookie });
    }

    /// Removes `name`, returning its inode.
    fn remove(&mut self, name: &[u8]) -> Option<Arc<RamInode<P>>> {
        let slot = self.entries.remove(name)?;
        self.by_cookie.remove(&slot.cookie);
        Some(slot.inode)
    }

    /// The inode of `name`.
    fn get(&self, name: &[u8]) -> Option<&Arc<RamInode<P>>> {
        self.entries.get(name).map(|slot| &slot.inode)
    }
}

/// What an inode is, with its contents.
enum Kind<P: Parker + 'static> {
    /// A regular file.
    File(RwLock<FileData, P>),
    /// A directory, and its parent (`Weak`: a parent owns its children).
    Directory(RwLock<DirData<P>, P>, Mutex<Weak<RamInode<P>>, P>),
    /// A symlink and its target.
    Symlink(Vec<u8>),
}

impl<P: Parker + 'static> Kind<P> {
    /// An empty directory.
    fn directory() -> Self {
        Kind::Directory(
            RwLock::new(DirData {
                entries: BTreeMap::new(),
                by_cookie: BTreeMap::new(),
                next_cookie: 2,
                removed: false,
            }),
            Mutex::new(Weak::new()),
        )
    }
}

/// A ramfs inode.
pub struct RamInode<P: Parker + 'static> {
    /// The inode number.
    ino: InodeNumber,
    /// This inode itself (so `.` and the root's `..` can hand out an `Arc`).
    this: Weak<RamInode<P>>,
    /// The filesystem's counters and clock.
    shared: Arc<Shared>,
    /// Type and contents.
    kind: Kind<P>,
    /// Mode, links and times; always locked last.
    meta: Mutex<Meta, P>,
}

impl<P: Parker + 'static> fmt::Debug for RamInode<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamInode")
            .field("ino", &self.ino)
            .field("type", &self.file_type())
            .finish()
    }
}

impl<P: Parker + 'static> Drop for RamInode<P> {
    fn drop(&mut self) {
        self.shared.inodes.fetch_sub(1, Ordering::Relaxed);
        if let Kind::File(data) = &mut self.kind {
            let blocks = data.get_mut().blocks.len() as u64;
            self.shared.blocks.fetch_sub(blocks, Ordering::Relaxed);
        }
    }
}

impl<P: Parker + 'static> RamInode<P> {
    /// A new inode of `kind` whose parent (for a directory) is `parent`.
    fn new(shared: &Arc<Shared>, kind: Kind<P>, mode: u32, parent: Weak<RamInode<P>>) -> Arc<Self> {
        let now = shared.clock.now();
        let nlink = if matches!(kind, Kind::Directory(..)) {
            2
        } else {
            1
        };
        if let Kind::Directory(_, up) = &kind {
            *up.lock() = parent;
        }
        shared.inodes.fetch_add(1, Ordering::Relaxed);
        Arc::new_cyclic(|this| Self {
            ino: shared.next_ino.fetch_add(1, Ordering::Relaxed),
            this: this.clone(),
            shared: shared.clone(),
            kind,
            meta: Mutex::new(Meta {
                mode: mode & MODE_PERMISSIONS,
                nlink,
                atime: now,
                mtime: now,
                ctime: now,
            }),
        })
    }

    /// This inode as an `Arc`.
    fn arc(&self) -> Arc<Self> {
        self.this.upgrade().expect("an inode being used is alive")
    }

    /// The directory contents, or `ENOTDIR`.
    fn dir(&self) -> Result<&RwLock<DirData<P>, P>> {
        match &self.kind {
            Kind::Directory(data, _) => Ok(data),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// The file contents, or `EISDIR`/`EINVAL`.
    fn file(&self) -> Result<&RwLock<FileData, P>> {
        match &self.kind {
            Kind::File(data) => Ok(data),
            Kind::Directory(..) => Err(Errno::EISDIR),
            Kind::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    /// Marks a content change.
    fn touch_modified(&self) {
        let now = self.shared.clock.now();
        let mut meta = self.meta.lock();
        meta.mtime = now;
        meta.ctime = now;
    }

    /// Marks an inode change.
    fn touch_changed(&self) {
        let now = self.shared.clock.now();
        self.meta.lock().ctime = now;
    }

    /// Adds `delta` to the link count.
    fn add_links(&self, delta: i64) {
        let now = self.shared.clock.now();
        let mut meta = self.meta.lock();
        meta.nlink = meta.nlink.saturating_add_signed(delta);
        meta.ctime = now;
    }

    /// Makes `inode` (built by `make`) the child `name` of this directory.
    fn add_child(
        &self,
        name: &[u8],
        make: impl FnOnce(&Self) -> Arc<RamInode<P>>,
    ) -> Result<Arc<dyn Vnode>> {
        check_name(name)?;
        let mut dir = self.dir()?.write();
        if dir.removed {
            return Err(Errno::ENOENT);
        }
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let inode = make(self);
        if inode.file_type() == FileType::Directory {
            self.add_links(1);
        }
        dir.insert(name, inode.clone());
        drop(dir);
        self.touch_modified();
        Ok(inode)
    }

    /// Downcasts a vnode to one of this filesystem's inodes (`EXDEV` otherwise).
    fn own(&self, vnode: &Arc<dyn Vnode>) -> Result<Arc<RamInode<P>>> {
        let inode = vnode
            .clone()
            .into_any()
            .downcast::<RamInode<P>>()
            .map_err(|_| Errno::EXDEV)?;
        if Arc::ptr_eq(&inode.shared, &self.shared) {
            Ok(inode)
        } else {
            Err(Errno::EXDEV)
        }
    }
}

/// Checks a name the VFS hands over (defensively: the VFS checked it already).
fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Locks the directories `dirs` (deduplicated by the caller) for writing in
/// inode-number order, returning the guards in the order of `dirs`.
fn lock_in_order<'a, P: Parker + 'static>(
    dirs: &[&'a RamInode<P>],
) -> Result<Vec<keel_lfmutex::RwLockWriteGuard<'a, DirData<P>, P>>> {
    let mut order: Vec<usize> = (0..dirs.len()).collect();
    order.sort_by_key(|&index| dirs[index].ino);
    let mut guards: Vec<Option<keel_lfmutex::RwLockWriteGuard<'a, DirData<P>, P>>> =
        (0..dirs.len()).map(|_| None).collect();
    for index in order {
        guards[index] = Some(dirs[index].dir()?.write());
    }
    Ok(guards.into_iter().flatten().collect())
}

impl<P: Parker + 'static> Vnode for RamInode<P> {
    fn ino(&self) -> InodeNumber {
        self.ino
    }

    fn file_type(&self) -> FileType {
        match &self.kind {
            Kind::File(_) => FileType::Regular,
            Kind::Directory(..) => FileType::Directory,
            Kind::Symlink(_) => FileType::Symlink,
        }
    }

    fn getattr(&self) -> Result<Stat> {
        let (size, blocks) = match &self.kind {
            Kind::File(data) => {
                let data = data.read();
                (
                    data.size,
                    data.blocks.len() as u64 * (BLOCK_SIZE as u64 / 512),
                )
            }
            Kind::Directory(..) => (0, 0),
            Kind::Symlink(target) => (target.len() as u64, 0),
        };
        let meta = self.meta.lock();
        Ok(Stat {
            dev: 0,
            ino: self.ino,
            mode: self.file_type().mode_bits() | meta.mode,
            nlink: meta.nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            blksize: BLOCK_SIZE as u32,
            blocks,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn lookup(&self, name: &[u8]) -> Result<Arc<dyn Vnode>> {
        let Kind::Directory(data, parent) = &self.kind else {
            return Err(Errno::ENOTDIR);
        };
        match name {
            b"." => Ok(self.arc()),
            b".." => Ok(parent.lock().upgrade().unwrap_or_else(|| self.arc())),
            _ => {
                if name.len() > NAME_MAX {
                    return Err(Errno::ENAMETOOLONG);
                }
                match data.read().get(name) {
                    Some(inode) => Ok(inode.clone()),
                    None => Err(Errno::ENOENT),
                }
            }
        }
    }

    fn create(&self, name: &[u8], mode: u32) -> Result<Arc<dyn Vnode>> {
        self.add_child(name, |dir| {
            RamInode::new(
                &dir.shared,
                Kind::File(RwLock::new(FileData::default())),
                mode,
                Weak::new(),
            )
        })
    }

    fn mkdir(&self, name: &[u8], mode: u32) -> Result<Arc<dyn Vnode>> {
        self.add_child(name, |dir| {
            RamInode::new(&dir.shared, Kind::directory(), mode, dir.this.clone())
        })
    }

    fn symlink(&self, name: &[u8], target: &[u8]) -> Result<Arc<dyn Vnode>> {
        self.add_child(name, |dir| {
            RamInode::new(
                &dir.shared,
                Kind::Symlink(target.to_vec()),
                0o777,
                Weak::new(),
            )
        })
    }

    fn link(&self, name: &[u8], target: &Arc<dyn Vnode>) -> Result<()> {
        check_name(name)?;
        let target = self.own(target)?;
        if target.file_type() == FileType::Directory {
            return Err(Errno::EPERM);
        }
        let mut dir = self.dir()?.write();
        if dir.removed {
            return Err(Errno::ENOENT);
        }
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        {
            // A file unlinked everywhere (still open) cannot get a name back.
            let mut meta = target.meta.lock();
            if meta.nlink == 0 {
                return Err(Errno::ENOENT);
            }
            meta.nlink += 1;
            meta.ctime = self.shared.clock.now();
        }
        dir.insert(name, target);
        drop(dir);
        self.touch_modified();
        Ok(())
    }

    fn unlink(&self, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let mut dir = self.dir()?.write();
        let inode = dir.get(name).ok_or(Errno::ENOENT)?;
        if inode.file_type() == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        let inode = dir.remove(name).expect("the name was just found");
        drop(dir);
        inode.add_links(-1);
        self.touch_modified();
        Ok(())
    }

    fn rmdir(&self, name: &[u8]) -> Result<()> {
        check_name(name)?;
        loop {
            let victim = self.dir()?.read().get(name).cloned().ok_or(Errno::ENOENT)?;
            if victim.file_type() != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            let mut guards = lock_in_order(&[self, &*victim])?;
            let (parent, rest) = guards.split_at_mut(1);
            let (parent, child) = (&mut parent[0], &mut rest[0]);
            if !parent
                .get(name)
                .is_some_and(|now| Arc::ptr_eq(now, &victim))
            {
                continue; // renamed or replaced meanwhile: look again
            }
            if !child.entries.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            child.removed = true;
            parent.remove(name);
            drop(guards);
            victim.meta.lock().nlink = 0;
            self.add_links(-1);
            self.touch_modified();
            return Ok(());
        }
    }

    fn rename(&self, old_name: &[u8], new_dir: &Arc<dyn Vnode>, new_name: &[u8]) -> Result<()> {
        check_name(old_name)?;
        check_name(new_name)?;
        let new_dir = self.own(new_dir)?;
        new_dir.dir()?;
        let same_dir = new_dir.ino == self.ino;
        loop {
            let source = self
                .dir()?
                .read()
                .get(old_name)
                .cloned()
                .ok_or(Errno::ENOENT)?;
            let target = new_dir.dir()?.read().get(new_name).cloned();
            if let Some(target) = &target {
                if Arc::ptr_eq(target, &source) {
                    return Ok(());
                }
                match (source.file_type(), target.file_type()) {
                    (FileType::Directory, FileType::Directory) => {}
                    (FileType::Directory, _) => return Err(Errno::ENOTDIR),
                    (_, FileType::Directory) => return Err(Errno::EISDIR),
                    _ => {}
                }
                if target.ino == self.ino {
                    // The target is the source's own parent: not empty.
                    return Err(Errno::ENOTEMPTY);
                }
            }
            let victim_dir = target
                .as_ref()
                .filter(|target| target.file_type() == FileType::Directory);
            let mut dirs: Vec<&RamInode<P>> = vec![self];
            if !same_dir {
                dirs.push(&new_dir);
            }
            if let Some(victim) = victim_dir {
                dirs.push(victim);
            }
            let mut guards = lock_in_order(&dirs)?;
            // Still the same source and target?
            let unchanged = guards[0]
                .get(old_name)
                .is_some_and(|now| Arc::ptr_eq(now, &source))
                && {
                    let new_guard = if same_dir { &guards[0] } else { &guards[1] };
                    match (&target, new_guard.get(new_name)) {
                        (None, None) => true,
                        (Some(old), Some(now)) => Arc::ptr_eq(old, now),
                        _ => false,
                    }
                };
            if !unchanged {
                continue;
            }
            let new_index = usize::from(!same_dir);
            if guards[new_index].removed {
                return Err(Errno::ENOENT);
            }
            if victim_dir.is_some() {
                let victim_guard = guards.last_mut().expect("the victim is locked");
                if !victim_guard.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                victim_guard.removed = true;
            }
            let moved = guards[0].remove(old_name).expect("the source was checked");
            let replaced = guards[new_index].remove(new_name);
            guards[new_index].insert(new_name, moved.clone());
            drop(guards);
            let moved_is_dir = moved.file_type() == FileType::Directory;
            if let Some(replaced) = replaced {
                if replaced.file_type() == FileType::Directory {
                    replaced.meta.lock().nlink = 0;
                    new_dir.add_links(-1);
                } else {
                    replaced.add_links(-1);
                }
            }
            if moved_is_dir {
                if let Kind::Directory(_, parent) = &moved.kind {
                    *parent.lock() = Arc::downgrade(&new_dir);
                }
                if !same_dir {
                    self.add_links(-1);
                    new_dir.add_links(1);
                }
            }
            moved.touch_changed();
            self.touch_modified();
            if !same_dir {
                new_dir.touch_modified();
            }
            return Ok(());
        }
    }

    fn readdir(&self, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        let Kind::Directory(data, parent) = &self.kind else {
            return Err(Errno::ENOTDIR);
        };
        let mut entries = Vec::new();
        let mut position = cookie;
        while position < 2 && entries.len() < max {
            let (name, ino): (&[u8], InodeNumber) = if position == 0 {
                (b".", self.ino)
            } else {
                let up = parent.lock().upgrade();
                (b"..", up.map_or(self.ino, |up| up.ino))
            };
            entries.push(DirEntry {
                ino,
                file_type: FileType::Directory,
                name: name.to_vec(),
                next_cookie: position + 1,
            });
            position += 1;
        }
        let data = data.read();
        for (&slot_cookie, name) in data.by_cookie.range(position.max(2)..) {
            if entries.len() >= max {
                break;
            }
            let inode = data.get(name).expect("the two maps agree");
            entries.push(DirEntry {
                ino: inode.ino,
                file_type: inode.file_type(),
                name: name.clone(),
                next_cookie: slot_cookie + 1,
            });
        }
        Ok(entries)
    }

    fn readlink(&self) -> Result<Vec<u8>> {
        match &self.kind {
            Kind::Symlink(target) => Ok(target.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let data = self.file()?.read();
        if offset >= data.size {
            return Ok(0);
        }
        let length = (buf.len() as u64).min(data.size - offset) as usize;
        let mut done = 0;
        while done < length {
            let position = offset + done as u64;
            let index = position / BLOCK_SIZE as u64;
            let within = (position % BLOCK_SIZE as u64) as usize;
            let count = (BLOCK_SIZE - within).min(length - done);
            let out = &mut buf[done..done + count];
            match data.blocks.get(&index) {
                Some(block) => out.copy_from_slice(&block[within..within + count]),
                None => out.fill(0),
            }
            done += count;
        }
        Ok(length)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<usize> {
        let mut data = self.file()?.write();
        let written = self.write_locked(&mut data, offset, buf)?;
        drop(data);
        self.touch_modified();
        Ok(written)
    }

    fn append(&self, buf: &[u8]) -> Result<(u64, usize)> {
        let mut data = self.file()?.write();
        let offset = data.size;
        let written = self.write_locked(&mut data, offset, buf)?;
        drop(data);
        self.touch_modified();
        Ok((offset, written))
    }

    fn truncate(&self, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let mut data = self.file()?.write();
        if size < data.size {
            let keep = size.div_ceil(BLOCK_SIZE as u64);
            let dropped = data.blocks.split_off(&keep);
            self.shared
                .blocks
                .fetch_sub(dropped.len() as u64, Ordering::Relaxed);
            // Zero the tail of the last block so that growing again reads zeros.
            let within = (size % BLOCK_SIZE as u64) as usize;
            if within != 0
                && let Some(block) = data.blocks.get_mut(&(keep - 1))
            {
                block[within..].fill(0);
            }
        }
        data.size = size;
        drop(data);
        self.touch_modified();
        Ok(())
    }

    fn set_times(&self, atime: Option<Timespec>, mtime: Option<Timespec>) -> Result<()> {
        let now = self.shared.clock.now();
        let mut meta = self.meta.lock();
        if let Some(atime) = atime {
            meta.atime = atime;
        }
        if let Some(mtime) = mtime {
            meta.mtime = mtime;
        }
        meta.ctime = now;
        Ok(())
    }
}

impl<P: Parker + 'static> RamInode<P> {
    /// Writes `buf` at `offset` into `data` (locked by the caller).
    fn write_locked(&self, data: &mut FileData, offset: u64, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(Errno::EFBIG)?;
        let mut done = 0;
        while done < buf.len() {
            let position = offset + done as u64;
            let index = position / BLOCK_SIZE as u64;
            let within = (position % BLOCK_SIZE as u64) as usize;
            let count = (BLOCK_SIZE - within).min(buf.len() - done);
            let block = data.blocks.entry(index).or_insert_with(|| {
                self.shared.blocks.fetch_add(1, Ordering::Relaxed);
                vec![0; BLOCK_SIZE].into_boxed_slice()
            });
            block[within..within + count].copy_from_slice(&buf[done..done + count]);
            done += count;
        }
        data.size = data.size.max(end);
        Ok(buf.len())
    }
}
