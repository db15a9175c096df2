//! [`Context`]: a process's view of the VFS (root, working directory, descriptor
//! table) and the system calls, as its methods.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use keel_lfmutex::{Mutex, Parker};

use crate::errno::{Errno, Result};
use crate::file::{
    Access, DEFAULT_FD_LIMIT, FD_CLOEXEC, FcntlCommand, Fd, FdTable, OpenFile, OpenFlags, Whence,
};
use crate::fs::{DirEntry, FileSystem, FileType, MODE_PERMISSIONS, Stat, StatFs, Timespec};
use crate::lock::{Flock, LockCommand, LockKind, LockOwner, Range};
use crate::path::{Last, Start, Walk, check_path};
use crate::poll::{PollEvents, PollFd, PollRegistration, PollSleeper};
use crate::vfs::{Location, MAX_SYMLINKS, MountId, Vfs};

/// `access` mode bits.
pub mod access_mode {
    /// The file exists.
    pub const F_OK: u32 = 0;
    /// Executable (searchable).
    pub const X_OK: u32 = 1;
    /// Writable.
    pub const W_OK: u32 = 2;
    /// Readable.
    pub const R_OK: u32 = 4;
}

/// `utimensat`'s `AT_SYMLINK_NOFOLLOW`.
pub const AT_SYMLINK_NOFOLLOW: u32 = 0x100;

/// One time of `utimensat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUpdate {
    /// `UTIME_NOW`: the clock's time.
    Now,
    /// `UTIME_OMIT`: leave it.
    Omit,
    /// This time.
    Set(Timespec),
}

/// A process's view of the VFS: its root, working directory and descriptors.
///
/// Every method is a system call of that name and may be called from many threads at
/// once (a `Context` is shared by a process's threads, `Send + Sync`).
pub struct Context<P: Parker + 'static> {
    /// The VFS.
    vfs: Arc<Vfs<P>>,
    /// `/` for this context.
    root: Location,
    /// The working directory.
    cwd: Mutex<Location, P>,
    /// The descriptors.
    files: FdTable<P>,
    /// This context's id, unique among contexts: the owner of its POSIX record locks
    /// and the `l_pid` that `F_GETLK` reports for them.
    id: u64,
}

/// The next context's id (ids start at 1, as process ids do).
static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<P: Parker + 'static> Drop for Context<P> {
    fn drop(&mut self) {
        // A process's exit releases its locks.
        self.vfs.locks.release_owner(LockOwner::Process(self.id));
    }
}

impl<P: Parker + 'static> fmt::Debug for Context<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("cwd", &*self.cwd.lock())
            .field("files", &self.files)
            .finish()
    }
}

/// Converts a signed offset or length (`EINVAL` if negative).
fn unsigned(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Errno::EINVAL)
}

impl<P: Parker + 'static> Context<P> {
    /// A context at `/` with no descriptors and the default limit.
    pub fn new(vfs: Arc<Vfs<P>>) -> Self {
        Self::with_fd_limit(vfs, DEFAULT_FD_LIMIT)
    }

    /// A context at `/` whose descriptors are `0..limit`.
    pub fn with_fd_limit(vfs: Arc<Vfs<P>>, limit: usize) -> Self {
        let root = vfs.root();
        Self {
            cwd: Mutex::new(root.clone()),
            root,
            vfs,
            files: FdTable::new(limit),
            id: NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This context's id (the `l_pid` of its record locks).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The VFS.
    pub fn vfs(&self) -> &Arc<Vfs<P>> {
        &self.vfs
    }

    /// The descriptor table.
    pub fn files(&self) -> &FdTable<P> {
        &self.files
    }

    /// Where resolutions start.
    fn start(&self) -> Start {
        Start {
            root: self.root.clone(),
            cwd: self.cwd.lock().clone(),
        }
    }

    /// Resolves `path`.
    fn resolve(&self, path: &[u8], follow: bool) -> Result<Location> {
        let mut links = 0;
        self.vfs.resolve(&self.start(), path, follow, &mut links)
    }

    /// Walks `path` to its parent.
    fn walk<'a>(&self, path: &'a [u8]) -> Result<Walk<'a>> {
        let mut links = 0;
        self.vfs.walk(&self.start(), path, &mut links)
    }

    /// Mounts `fs` on the directory `path`.
    pub fn mount(&self, path: &[u8], fs: Arc<dyn FileSystem>) -> Result<MountId> {
        let at = self.resolve(path, true)?;
        let id = self.vfs.mount_at(&at, fs)?;
        // Entries under the covered directory now lead elsewhere.
        self.vfs.dcache.forget_directory(at.mount, at.vnode.ino());
        Ok(id)
    }

    /// `open(path, flags, mode)`.
    pub fn open(&self, path: &[u8], flags: OpenFlags, mode: u32) -> Result<Fd> {
        let access = flags.access()?;
        let creating = flags.contains(OpenFlags::O_CREAT);
        if creating && flags.contains(OpenFlags::O_DIRECTORY) {
            return Err(Errno::EINVAL); // as Linux since 6.4
        }
        if flags.contains(OpenFlags::O_PATH) || flags.contains(OpenFlags::O_TMPFILE) {
            return Err(Errno::EINVAL); // not supported yet
        }
        let exclusive = creating && flags.contains(OpenFlags::O_EXCL);
        let follow = !(flags.contains(OpenFlags::O_NOFOLLOW) || exclusive);
        let start = self.start();
        let mut links = 0;
        let walk = self.vfs.walk(&start, path, &mut links)?;
        let parent = walk.parent.clone();
        let (location, created) = if creating {
            self.open_create(&start, walk, follow, mode, &mut links)?
        } else {
            (
                self.vfs
                    .resolve_last(&self.root, walk, follow, &mut links)?,
                false,
            )
        };
        let file_type = location.vnode.file_type();
        if creating {
            if exclusive && !created {
                return Err(Errno::EEXIST);
            }
            if file_type == FileType::Directory {
                return Err(Errno::EISDIR);
            }
        }
        if flags.contains(OpenFlags::O_DIRECTORY) && file_type != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        match file_type {
            FileType::Symlink => return Err(Errno::ELOOP),
            FileType::Directory
                if access != Access::ReadOnly || flags.contains(OpenFlags::O_TRUNC) =>
            {
                return Err(Errno::EISDIR);
            }
            _ => {}
        }
        if flags.contains(OpenFlags::O_TRUNC) && file_type == FileType::Regular && !created {
            location.vnode.truncate(0)?;
        }
        let file = Arc::new(OpenFile::new(location, access, flags).with_parent(parent));
        self.files
            .insert(file, flags.contains(OpenFlags::O_CLOEXEC), 0)
    }

    /// The last step of `open` with `O_CREAT`: finds or creates the file, following
    /// symlinks (a dangling one creates its target) if `follow`.
    fn open_create(
        &self,
        start: &Start,
        walk: Walk<'_>,
        follow: bool,
        mode: u32,
        links: &mut u32,
    ) -> Result<(Location, bool)> {
        let name = match walk.last {
            Last::Normal(name) => name,
            _ => {
                return Ok((
                    self.vfs.resolve_last(&start.root, walk, follow, links)?,
                    false,
                ));
            }
        };
        if walk.trailing_slash {
            return Err(Errno::EISDIR);
        }
        loop {
            match self.vfs.lookup_child(&walk.parent, name) {
                Ok(child) => {
                    if follow && child.vnode.file_type() == FileType::Symlink {
                        *links += 1;
                        if *links > MAX_SYMLINKS {
                            return Err(Errno::ELOOP);
                        }
                        let target = child.vnode.readlink()?;
                        let link_start = Start {
                            root: start.root.clone(),
                            cwd: walk.parent.clone(),
                        };
                        let next = self.vfs.walk(&link_start, &target, links)?;
                        return self.open_create(&link_start, next, follow, mode, links);
                    }
                    return Ok((self.vfs.enter_mounts(child), false));
                }
                Err(Errno::ENOENT) => {
                    match walk.parent.vnode.create(name, mode & MODE_PERMISSIONS) {
                        Ok(vnode) => {
                            self.vfs.invalidate(&walk.parent, name);
                            let location = Location {
                                mount: walk.parent.mount,
                                vnode,
                            };
                            return Ok((location, true));
                        }
                        // Created by someone else meanwhile: open theirs.
                        Err(Errno::EEXIST) => self.vfs.invalidate(&walk.parent, name),
                        Err(error) => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// `close(fd)`. As POSIX says, this releases every record lock this context
    /// holds on the file, whichever descriptor took them.
    pub fn close(&self, fd: Fd) -> Result<()> {
        let file = self.files.remove(fd)?;
        self.release_posix_locks(&file);
        Ok(())
    }

    /// Releases this context's POSIX locks on `file`'s file (it closed a descriptor).
    fn release_posix_locks(&self, file: &OpenFile<P>) {
        self.vfs
            .locks
            .release_file(file.lock_key(), LockOwner::Process(self.id));
    }

    /// `dup(fd)`: the lowest free descriptor, sharing `fd`'s open file.
    pub fn dup(&self, fd: Fd) -> Result<Fd> {
        let file = self.files.get(fd)?;
        self.files.insert(file, false, 0)
    }

    /// `dup2(old, new)`.
    pub fn dup2(&self, old: Fd, new: Fd) -> Result<Fd> {
        if old == new {
            self.files.get(old)?;
            return Ok(new);
        }
        let replaced = self.files.get(new).ok();
        self.files.duplicate_onto(old, new, false)?;
        if let Some(replaced) = replaced {
            self.release_posix_locks(&replaced);
        }
        Ok(new)
    }

    /// `dup3(old, new, flags)`: `flags` is 0 or `O_CLOEXEC`; `EINVAL` if `old == new`.
    pub fn dup3(&self, old: Fd, new: Fd, flags: OpenFlags) -> Result<Fd> {
        if flags.bits() & !OpenFlags::O_CLOEXEC.bits() != 0 || old == new {
            return Err(Errno::EINVAL);
        }
        let replaced = self.files.get(new).ok();
        self.files
            .duplicate_onto(old, new, flags.contains(OpenFlags::O_CLOEXEC))?;
        if let Some(replaced) = replaced {
            self.release_posix_locks(&replaced);
        }
        Ok(new)
    }

    /// The open file of `fd`, if it may read.
    fn readable(&self, fd: Fd) -> Result<Arc<OpenFile<P>>> {
        let file = self.files.get(fd)?;
        if !file.access().readable() {
            return Err(Errno::EBADF);
        }
        Ok(file)
    }

    /// The open file of `fd`, if it may write.
    fn writable(&self, fd: Fd) -> Result<Arc<OpenFile<P>>> {
        let file = self.files.get(fd)?;
        if !file.access().writable() {
            return Err(Errno::EBADF);
        }
        Ok(file)
    }

    /// `read(fd, buf)`.
    pub fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        self.readv(fd, &mut [buf])
    }

    /// `readv(fd, buffers)`: fills the buffers in turn, stopping at the end of file.
    pub fn readv(&self, fd: Fd, buffers: &mut [&mut [u8]]) -> Result<usize> {
        let file = self.readable(fd)?;
        let mut offset = file.offset.lock();
        let mut total = 0;
        for buffer in buffers.iter_mut() {
            let count = file.location.vnode.read_at(*offset, buffer)?;
            *offset += count as u64;
            total += count;
            if count < buffer.len() {
                break;
            }
        }
        Ok(total)
    }

    /// `pread(fd, buf, offset)`: the file offset does not move.
    pub fn pread(&self, fd: Fd, buf: &mut [u8], offset: i64) -> Result<usize> {
        let file = self.readable(fd)?;
        let offset = unsigned(offset)?;
        file.location.vnode.read_at(offset, buf)
    }

    /// `write(fd, buf)`.
    pub fn write(&self, fd: Fd, buf: &[u8]) -> Result<usize> {
        self.writev(fd, &[buf])
    }

    /// `writev(fd, buffers)`: writes the buffers in turn, as one write.
    pub fn writev(&self, fd: Fd, buffers: &[&[u8]]) -> Result<usize> {
        let file = self.writable(fd)?;
        let mut offset = file.offset.lock();
        let total: usize = buffers.iter().map(|buffer| buffer.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let joined;
        let data: &[u8] = if buffers.len() == 1 {
            buffers[0]
        } else {
            joined = buffers.concat();
            &joined
        };
        let vnode = &file.location.vnode;
        let written = if file.appends() {
            let (at, written) = vnode.append(data)?;
            *offset = at + written as u64;
            written
        } else {
            let written = vnode.write_at(*offset, data)?;
            *offset += written as u64;
            written
        };
        Ok(written)
    }

    /// `pwrite(fd, buf, offset)`: the file offset does not move. On an `O_APPEND` file
    /// it appends, as on Linux.
    pub fn pwrite(&self, fd: Fd, buf: &[u8], offset: i64) -> Result<usize> {
        let file = self.writable(fd)?;
        let offset = unsigned(offset)?;
        if buf.is_empty() {
            return Ok(0);
        }
        if file.appends() {
            return file.location.vnode.append(buf).map(|(_, written)| written);
        }
        file.location.vnode.write_at(offset, buf)
    }

    /// `lseek(fd, offset, whence)`; `EINVAL` if the result would be negative.
    pub fn lseek(&self, fd: Fd, offset: i64, whence: Whence) -> Result<u64> {
        let file = self.files.get(fd)?;
        let mut position = file.offset.lock();
        let base = match whence {
            Whence::Set => 0,
            Whence::Current => *position as i64,
            Whence::End => file.location.vnode.getattr()?.size as i64,
        };
        let new = base.checked_add(offset).ok_or(Errno::EINVAL)?;
        *position = unsigned(new)?;
        Ok(*position)
    }

    /// Fills in the VFS's part of a `stat`.
    fn stat_of(&self, location: &Location) -> Result<Stat> {
        let mut stat = location.vnode.getattr()?;
        stat.dev = u64::from(location.mount) + 1;
        Ok(stat)
    }

    /// `stat(path)`.
    pub fn stat(&self, path: &[u8]) -> Result<Stat> {
        self.stat_of(&self.resolve(path, true)?)
    }

    /// `lstat(path)`: a final symlink is not followed.
    pub fn lstat(&self, path: &[u8]) -> Result<Stat> {
        self.stat_of(&self.resolve(path, false)?)
    }

    /// `fstat(fd)`.
    pub fn fstat(&self, fd: Fd) -> Result<Stat> {
        self.stat_of(&self.files.get(fd)?.location)
    }

    /// Up to `max` entries of the directory `fd`, from its offset on (including `.`
    /// and `..`); an empty vector at the end.
    pub fn getdents(&self, fd: Fd, max: usize) -> Result<Vec<DirEntry>> {
        let file = self.files.get(fd)?;
        if !file.location.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut offset = file.offset.lock();
        let entries = file.location.vnode.readdir(*offset, max)?;
        if let Some(last) = entries.last() {
            *offset = last.next_cookie;
        }
        Ok(entries)
    }

    /// `getdents64(fd, buf)`: entries as `struct linux_dirent64` records; `EINVAL` if
    /// the first does not fit.
    pub fn getdents64(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        let file = self.files.get(fd)?;
        if !file.location.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut offset = file.offset.lock();
        let entries = file.location.vnode.readdir(*offset, buf.len() / 24 + 1)?;
        let mut used = 0;
        for entry in &entries {
            let length = (19 + entry.name.len() + 1).next_multiple_of(8);
            if used + length > buf.len() {
                if used == 0 {
                    return Err(Errno::EINVAL);
                }
                break;
            }
            let record = &mut buf[used..used + length];
            record.fill(0);
            record[0..8].copy_from_slice(&entry.ino.to_ne_bytes());
            record[8..16].copy_from_slice(&(entry.next_cookie as i64).to_ne_bytes());
            record[16..18].copy_from_slice(&(length as u16).to_ne_bytes());
            record[18] = entry.file_type.dirent_type();
            record[19..19 + entry.name.len()].copy_from_slice(&entry.name);
            used += length;
            *offset = entry.next_cookie;
        }
        Ok(used)
    }

    /// The name a creating call (`mkdir`, `symlink`, `link`) makes, checked as Linux's
    /// `filename_create`: `EEXIST` for `.`, `..` or `/`; a trailing slash is allowed
    /// only for `mkdir` (`ENOENT` if the name is free, `EEXIST` if not).
    fn creation_name<'a>(&self, walk: &Walk<'a>, directory: bool) -> Result<&'a [u8]> {
        let Last::Normal(name) = walk.last else {
            return Err(Errno::EEXIST);
        };
        if walk.trailing_slash && !directory {
            return match self.vfs.lookup_child(&walk.parent, name) {
                Ok(_) => Err(Errno::EEXIST),
                Err(error) => Err(error),
            };
        }
        if name.len() > crate::vfs::NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(name)
    }

    /// `mkdir(path, mode)`.
    pub fn mkdir(&self, path: &[u8], mode: u32) -> Result<()> {
        let walk = self.walk(path)?;
        let name = self.creation_name(&walk, true)?;
        walk.parent.vnode.mkdir(name, mode & MODE_PERMISSIONS)?;
        self.vfs.invalidate(&walk.parent, name);
        Ok(())
    }

    /// `symlink(target, path)`: makes `path` a symlink to `target`.
    pub fn symlink(&self, target: &[u8], path: &[u8]) -> Result<()> {
        check_path(target)?;
        let walk = self.walk(path)?;
        let name = self.creation_name(&walk, false)?;
        walk.parent.vnode.symlink(name, target)?;
        self.vfs.invalidate(&walk.parent, name);
        Ok(())
    }

    /// `link(old, new)`: a new name for `old` (a final symlink is not followed).
    pub fn link(&self, old: &[u8], new: &[u8]) -> Result<()> {
        let source = self.resolve(old, false)?;
        let walk = self.walk(new)?;
        let name = self.creation_name(&walk, false)?;
        match self.vfs.lookup_child(&walk.parent, name) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(Errno::ENOENT) => {}
            Err(error) => return Err(error),
        }
        if source.mount != walk.parent.mount {
            return Err(Errno::EXDEV);
        }
        if source.is_dir() {
            return Err(Errno::EPERM);
        }
        walk.parent.vnode.link(name, &source.vnode)?;
        self.vfs.invalidate(&walk.parent, name);
        Ok(())
    }

    /// `unlink(path)`: `EISDIR` for a directory.
    pub fn unlink(&self, path: &[u8]) -> Result<()> {
        let walk = self.walk(path)?;
        let Last::Normal(name) = walk.last else {
            return Err(Errno::EISDIR);
        };
        let victim = self.vfs.lookup_child(&walk.parent, name)?;
        if victim.is_dir() {
            return Err(Errno::EISDIR);
        }
        if walk.trailing_slash {
            return Err(Errno::ENOTDIR);
        }
        let result = walk.parent.vnode.unlink(name);
        self.vfs.invalidate(&walk.parent, name);
        result
    }

    /// `rmdir(path)`: `ENOTEMPTY`, `EBUSY` for a mount point.
    pub fn rmdir(&self, path: &[u8]) -> Result<()> {
        let walk = self.walk(path)?;
        let name = match walk.last {
            Last::Normal(name) => name,
            Last::Dot => return Err(Errno::EINVAL),
            Last::DotDot => return Err(Errno::ENOTEMPTY),
            Last::Root => return Err(Errno::EBUSY),
        };
        let victim = self.vfs.lookup_child(&walk.parent, name)?;
        if !victim.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if self.vfs.is_mount_point(&victim) {
            return Err(Errno::EBUSY);
        }
        let result = walk.parent.vnode.rmdir(name);
        self.vfs.invalidate(&walk.parent, name);
        if result.is_ok() {
            self.vfs
                .dcache
                .forget_directory(victim.mount, victim.vnode.ino());
        }
        result
    }

    /// `rename(old, new)`, with Linux's rules and errno order.
    pub fn rename(&self, old: &[u8], new: &[u8]) -> Result<()> {
        let old_walk = self.walk(old)?;
        let new_walk = self.walk(new)?;
        if old_walk.parent.mount != new_walk.parent.mount {
            return Err(Errno::EXDEV);
        }
        let (Last::Normal(old_name), Last::Normal(new_name)) = (old_walk.last, new_walk.last)
        else {
            return Err(Errno::EBUSY);
        };
        let same_parent = old_walk.parent.same(&new_walk.parent);
        let mount = self.vfs.mount_record(old_walk.parent.mount);
        let _serialised = (!same_parent).then(|| mount.rename_lock.lock());
        let source = self.vfs.lookup_child(&old_walk.parent, old_name)?;
        let target = match self.vfs.lookup_child(&new_walk.parent, new_name) {
            Ok(target) => Some(target),
            Err(Errno::ENOENT) => None,
            Err(error) => return Err(error),
        };
        if !source.is_dir() && (old_walk.trailing_slash || new_walk.trailing_slash) {
            return Err(Errno::ENOTDIR);
        }
        if !same_parent {
            if source.is_dir() && self.vfs.is_ancestor(&source, &new_walk.parent)? {
                return Err(Errno::EINVAL);
            }
            if let Some(target) = &target
                && target.is_dir()
                && self.vfs.is_ancestor(target, &old_walk.parent)?
            {
                return Err(Errno::ENOTEMPTY);
            }
        }
        if let Some(target) = &target {
            if target.vnode.ino() == source.vnode.ino() {
                return Ok(());
            }
            match (source.is_dir(), target.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
            if self.vfs.is_mount_point(target) {
                return Err(Errno::EBUSY);
            }
        }
        if self.vfs.is_mount_point(&source) {
            return Err(Errno::EBUSY);
        }
        let result = old_walk
            .parent
            .vnode
            .rename(old_name, &new_walk.parent.vnode, new_name);
        self.vfs.invalidate(&old_walk.parent, old_name);
        self.vfs.invalidate(&new_walk.parent, new_name);
        if result.is_ok()
            && let Some(target) = target
            && target.is_dir()
        {
            self.vfs
                .dcache
                .forget_directory(target.mount, target.vnode.ino());
        }
        result
    }

    /// `readlink(path)`: `EINVAL` if it is not a symlink.
    pub fn readlink(&self, path: &[u8]) -> Result<Vec<u8>> {
        self.resolve(path, false)?.vnode.readlink()
    }

    /// Truncates a regular file's vnode.
    fn truncate_location(location: &Location, length: u64) -> Result<()> {
        match location.vnode.file_type() {
            FileType::Regular => location.vnode.truncate(length),
            FileType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `truncate(path, length)`.
    pub fn truncate(&self, path: &[u8], length: i64) -> Result<()> {
        let length = unsigned(length)?;
        Self::truncate_location(&self.resolve(path, true)?, length)
    }

    /// `ftruncate(fd, length)`: `EINVAL` unless `fd` is a regular file open for
    /// writing.
    pub fn ftruncate(&self, fd: Fd, length: i64) -> Result<()> {
        let length = unsigned(length)?;
        let file = self.files.get(fd)?;
        if !file.access().writable() || file.location.vnode.file_type() != FileType::Regular {
            return Err(Errno::EINVAL);
        }
        file.location.vnode.truncate(length)
    }

    /// `fsync(fd)`.
    pub fn fsync(&self, fd: Fd) -> Result<()> {
        self.files.get(fd)?.location.vnode.fsync(false)
    }

    /// `fdatasync(fd)`.
    pub fn fdatasync(&self, fd: Fd) -> Result<()> {
        self.files.get(fd)?.location.vnode.fsync(true)
    }

    /// `access(path, mode)`: Keel has one user, the owner, so the owner's permission
    /// bits decide `R_OK`, `W_OK` and `X_OK` (`EACCES`).
    pub fn access(&self, path: &[u8], mode: u32) -> Result<()> {
        if mode & !7 != 0 {
            return Err(Errno::EINVAL);
        }
        let stat = self.stat(path)?;
        let owner = (stat.mode >> 6) & 7;
        if owner & mode != mode {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    /// `chdir(path)`.
    pub fn chdir(&self, path: &[u8]) -> Result<()> {
        let location = self.resolve(path, true)?;
        if !location.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        *self.cwd.lock() = location;
        Ok(())
    }

    /// `fchdir(fd)`.
    pub fn fchdir(&self, fd: Fd) -> Result<()> {
        let file = self.files.get(fd)?;
        if !file.location.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        *self.cwd.lock() = file.location.clone();
        Ok(())
    }

    /// `getcwd()`: the working directory's absolute path, found by walking `..` up
    /// and looking for each directory in its parent; `ENOENT` if it was removed.
    pub fn getcwd(&self) -> Result<Vec<u8>> {
        let cwd = self.cwd.lock().clone();
        self.directory_path(cwd)
    }

    /// The absolute path of the directory `directory`, found by walking `..` up and
    /// looking for each directory in its parent; `ENOENT` if it was removed.
    fn directory_path(&self, directory: Location) -> Result<Vec<u8>> {
        let mut current = directory;
        let mut names: Vec<Vec<u8>> = Vec::new();
        while !current.same(&self.root) {
            if current.vnode.getattr()?.nlink == 0 {
                return Err(Errno::ENOENT);
            }
            // Step out of mount roots to the covered directory, whose name we need.
            while self.vfs.is_mount_root(&current) && !current.same(&self.root) {
                match self.vfs.mount_record(current.mount).covered.clone() {
                    Some(covered) => current = covered,
                    None => break,
                }
            }
            if current.same(&self.root) {
                break;
            }
            let parent = self.vfs.parent_of(&self.root, &current)?;
            let name = find_name(&parent, current.vnode.ino())?;
            names.push(name);
            current = parent;
        }
        let mut path = Vec::new();
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        Ok(path)
    }

    /// `statfs(path)`.
    pub fn statfs(&self, path: &[u8]) -> Result<StatFs> {
        let location = self.resolve(path, true)?;
        self.vfs.mount_record(location.mount).fs.statfs()
    }

    /// `fstatfs(fd)`.
    pub fn fstatfs(&self, fd: Fd) -> Result<StatFs> {
        let file = self.files.get(fd)?;
        self.vfs.mount_record(file.location.mount).fs.statfs()
    }

    /// `utimensat(AT_FDCWD, path, [atime, mtime], flags)`; `flags` is 0 or
    /// [`AT_SYMLINK_NOFOLLOW`].
    pub fn utimensat(
        &self,
        path: &[u8],
        atime: TimeUpdate,
        mtime: TimeUpdate,
        flags: u32,
    ) -> Result<()> {
        if flags & !AT_SYMLINK_NOFOLLOW != 0 {
            return Err(Errno::EINVAL);
        }
        let location = self.resolve(path, flags & AT_SYMLINK_NOFOLLOW == 0)?;
        let now = self.vfs.clock.now();
        let pick = |update: TimeUpdate| match update {
            TimeUpdate::Now => Some(now),
            TimeUpdate::Omit => None,
            TimeUpdate::Set(time) => Some(time),
        };
        if let (TimeUpdate::Set(time), _) | (_, TimeUpdate::Set(time)) = (atime, mtime)
            && time.nsec >= 1_000_000_000
        {
            return Err(Errno::EINVAL);
        }
        location.vnode.set_times(pick(atime), pick(mtime))
    }

    /// `fcntl(fd, command)`.
    pub fn fcntl(&self, fd: Fd, command: FcntlCommand) -> Result<i32> {
        match command {
            FcntlCommand::DupFd(min) | FcntlCommand::DupFdCloexec(min) => {
                let min = usize::try_from(min).map_err(|_| Errno::EINVAL)?;
                let file = self.files.get(fd)?;
                if min >= self.files.limit() {
                    return Err(Errno::EINVAL);
                }
                let cloexec = matches!(command, FcntlCommand::DupFdCloexec(_));
                Ok(self.files.insert(file, cloexec, min)?.raw())
            }
            FcntlCommand::GetFd => Ok(if self.files.close_on_exec(fd)? {
                FD_CLOEXEC
            } else {
                0
            }),
            FcntlCommand::SetFd(flags) => {
                self.files.set_close_on_exec(fd, flags & FD_CLOEXEC != 0)?;
                Ok(0)
            }
            FcntlCommand::GetFl => Ok(self.files.get(fd)?.flags().bits() as i32),
            FcntlCommand::SetFl(flags) => {
                self.files.get(fd)?.set_flags(flags);
                Ok(0)
            }
        }
    }
}

impl<P: Parker + 'static> Context<P> {
    /// `fcntl(fd, command, lock)` for the record-lock commands (see [`crate::lock`]).
    /// `F_GETLK` rewrites `lock` with the first conflicting lock, or sets its kind to
    /// `F_UNLCK` if there is none; the set commands leave it as it was.
    pub fn fcntl_lock(&self, fd: Fd, command: LockCommand, lock: &mut Flock) -> Result<()> {
        let file = self.files.get(fd)?;
        if command.is_ofd() && lock.pid != 0 {
            return Err(Errno::EINVAL);
        }
        let base = match lock.whence {
            0 => 0,
            1 => *file.offset.lock(),
            2 => file.location.vnode.getattr()?.size,
            _ => return Err(Errno::EINVAL),
        };
        let range = Range::from_flock(base, lock.start, lock.len)?;
        let owner = if command.is_ofd() {
            LockOwner::Description(file.lock_owner_id())
        } else {
            LockOwner::Process(self.id)
        };
        match command {
            LockCommand::Get | LockCommand::OfdGet => {
                // `F_UNLCK` asks for one's own locks, for OFD locks only (Linux 6.6).
                if lock.kind == LockKind::Unlock && command == LockCommand::Get {
                    return Err(Errno::EINVAL);
                }
                let found = self.vfs.locks.get(file.lock_key(), owner, lock.kind, range);
                if found.kind == LockKind::Unlock {
                    // As Linux: only the type changes when nothing is in the way.
                    lock.kind = LockKind::Unlock;
                } else {
                    *lock = found;
                }
                Ok(())
            }
            LockCommand::Set
            | LockCommand::SetWait
            | LockCommand::OfdSet
            | LockCommand::OfdSetWait => {
                let allowed = match lock.kind {
                    LockKind::Read => file.access().readable(),
                    LockKind::Write => file.access().writable(),
                    LockKind::Unlock => true,
                };
                if !allowed {
                    return Err(Errno::EBADF);
                }
                if command.is_ofd() && lock.kind != LockKind::Unlock {
                    let mut registered = file.ofd_locks.lock();
                    if registered.is_none() {
                        *registered = Some(self.vfs.clone());
                    }
                }
                let wait = matches!(command, LockCommand::SetWait | LockCommand::OfdSetWait);
                self.vfs
                    .locks
                    .set(file.lock_key(), owner, lock.kind, range, wait)
            }
        }
    }
}

impl<P: Parker + 'static> Context<P> {
    /// `poll(fds, nfds, timeout)`: sets each entry's `revents` and returns how many
    /// entries have any. A negative `fd` is skipped, one that is not open reports
    /// `POLLNVAL`. With none ready it sleeps through `sleeper` until a vnode's
    /// readiness changes or `timeout_ms` passes (negative: no limit; 0: never sleeps).
    /// `EINVAL` for more entries than the descriptor limit, as Linux.
    pub fn poll(
        &self,
        fds: &mut [PollFd],
        timeout_ms: i32,
        sleeper: &dyn PollSleeper,
    ) -> Result<usize> {
        if fds.len() > self.files.limit() {
            return Err(Errno::EINVAL);
        }
        let deadline = u64::try_from(timeout_ms).ok().map(|ms| {
            sleeper
                .now_nanos()
                .saturating_add(ms.saturating_mul(1_000_000))
        });
        let waker = (timeout_ms != 0).then(|| sleeper.waker());
        let mut timed_out = false;
        loop {
            // Register only while a sleep may follow.
            let registration = waker
                .as_ref()
                .filter(|_| !timed_out)
                .map(|waker| PollRegistration { waker });
            let mut ready = 0;
            for entry in fds.iter_mut() {
                entry.revents = if entry.fd < 0 {
                    PollEvents::NONE
                } else {
                    match Fd::from_raw(entry.fd).and_then(|fd| self.files.get(fd)) {
                        Ok(file) => file
                            .location
                            .vnode
                            .poll(registration.as_ref())
                            .reported_for(entry.events),
                        Err(_) => PollEvents::POLLNVAL,
                    }
                };
                if !entry.revents.is_empty() {
                    ready += 1;
                }
            }
            if ready > 0 || timeout_ms == 0 || timed_out {
                return Ok(ready);
            }
            timed_out = !sleeper.sleep(deadline);
        }
    }
}

impl<P: Parker + 'static> Context<P> {
    /// The open descriptors, in increasing order (`/proc/self/fd`'s entries).
    pub fn open_fds(&self) -> Vec<Fd> {
        self.files.open_descriptors()
    }

    /// What `/proc/self/fd/N` links to: the path of `fd`'s file. For a directory,
    /// its path; for another file, the directory it was opened in and the name it
    /// has there now. A file removed from that directory is `PATH (deleted)` as on
    /// Linux, with PATH its directory's path and `#INODE` for the name it had; one
    /// whose name cannot be found (moved elsewhere, or opened through a symlink to
    /// another directory) is `inode:[INODE]`.
    pub fn fd_target(&self, fd: Fd) -> Result<Vec<u8>> {
        let file = self.files.get(fd)?;
        let location = &file.location;
        if location.is_dir() {
            return self.directory_path(location.clone());
        }
        let ino = location.vnode.ino();
        if let Some(parent) = &file.parent {
            let directory = self.directory_path(parent.clone())?;
            let mut path = directory.clone();
            if path != b"/" {
                path.push(b'/');
            }
            match find_name(parent, ino) {
                Ok(name) => {
                    path.extend_from_slice(&name);
                    return Ok(path);
                }
                Err(_) if location.vnode.getattr()?.nlink == 0 => {
                    path.extend_from_slice(alloc::format!("#{ino} (deleted)").as_bytes());
                    return Ok(path);
                }
                Err(_) => {}
            }
        }
        Ok(alloc::format!("inode:[{ino}]").into_bytes())
    }
}

/// The name under which the directory `parent` holds inode `ino`.
fn find_name(parent: &Location, ino: u64) -> Result<Vec<u8>> {
    let mut cookie = 0;
    loop {
        let entries = parent.vnode.readdir(cookie, 64)?;
        let Some(last) = entries.last() else {
            return Err(Errno::ENOENT);
        };
        cookie = last.next_cookie;
        for entry in entries {
            if entry.ino == ino && entry.name != b"." && entry.name != b".." {
                return Ok(entry.name);
            }
        }
    }
}
