//! procfs: `/proc/cpuinfo`, `/proc/meminfo`, `/proc/uptime` and `/proc/self/maps`, in
//! Linux's formats, generated when read from a [`ProcSource`] the kernel implements
//! (its CPUID, its page allocator, its clock and its page tables).
//!
//! As in Linux, the files report size 0 and are generated afresh by every read (so a
//! read in several pieces may see two different snapshots; Linux's seq_file files can
//! too). The tree is fixed (`EPERM` for changes), except `/proc/self/fd/`: one
//! symlink per open descriptor of the process, named by its number and pointing at
//! the file's path ([`ProcSource::fds`], [`ProcSource::fd_target`]; the kernel answers
//! them from its context's [`Context::open_fds`](crate::Context::open_fds) and
//! [`Context::fd_target`](crate::Context::fd_target)). That directory changes with
//! every `open` and `close`, so the dentry cache does not remember its lookups
//! ([`Vnode::cache_lookups`]). Following such a link resolves its text, unlike
//! Linux's "magic" links, which open the very file even after it was removed. Not
//! there yet: `/proc/self/status` and the per-process
//! directories (`/proc/PID`).

use crate::errno::{Errno, Result};
use crate::fs::{
    Clock, DirEntry, FileSystem, FileType, InodeNumber, Stat, StatFs, Timespec, Vnode,
};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;

/// Where the files' contents come from.
pub trait ProcSource: Send + Sync {
    /// `/proc/self/maps`: one line per mapping,
    /// `start-end perms offset dev inode   path` (hex addresses, perms like `r-xp`).
    fn maps(&self) -> Vec<u8>;
    /// `/proc/cpuinfo`.
    fn cpuinfo(&self) -> Vec<u8>;
    /// `/proc/meminfo`.
    fn meminfo(&self) -> Vec<u8>;
    /// `/proc/uptime`: seconds since boot and idle seconds, two decimals each.
    fn uptime(&self) -> Vec<u8>;
    /// `/proc/self/fd/`: the process's open descriptors, in increasing order. The
    /// default has none.
    fn fds(&self) -> Vec<i32> {
        Vec::new()
    }
    /// `/proc/self/fd/FD`'s target, `None` if `fd` is not open.
    fn fd_target(&self, _fd: i32) -> Option<Vec<u8>> {
        None
    }
}

/// `/proc/self/fd/`'s inode number; its links are [`FD_LINK_BASE`] + the descriptor.
const FD_DIRECTORY_INO: InodeNumber = 7;
/// The first inode number of `/proc/self/fd/`'s links.
const FD_LINK_BASE: InodeNumber = 1000;

/// `statfs`'s `f_type` for procfs (Linux's PROC_SUPER_MAGIC).
const PROC_MAGIC: u64 = 0x9fa0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generated {
    Maps,
    Cpuinfo,
    Meminfo,
    Uptime,
}

/// The procfs instance: mount it at `/proc`.
pub struct Procfs {
    root: Arc<ProcDirectory>,
}

impl core::fmt::Debug for Procfs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Procfs").finish_non_exhaustive()
    }
}

impl Procfs {
    /// A procfs over `source`.
    pub fn new(source: Arc<dyn ProcSource>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let created = clock.now();
        let file = |ino, kind| -> Arc<dyn Vnode> {
            Arc::new(ProcFile {
                ino,
                kind,
                source: source.clone(),
                created,
            })
        };
        let cpuinfo = file(3, Generated::Cpuinfo);
        let meminfo = file(4, Generated::Meminfo);
        let uptime = file(5, Generated::Uptime);
        let maps = file(6, Generated::Maps);
        let root = Arc::new_cyclic(|root: &Weak<ProcDirectory>| {
            let own = Arc::new_cyclic(|me: &Weak<ProcDirectory>| {
                let fd: Arc<dyn Vnode> = Arc::new_cyclic(|fd_me: &Weak<FdDirectory>| FdDirectory {
                    me: fd_me.clone(),
                    parent: me.clone(),
                    source: source.clone(),
                    created,
                });
                ProcDirectory {
                    ino: 2,
                    me: me.clone(),
                    parent: root.clone(),
                    entries: alloc::vec![(&b"fd"[..], fd), (&b"maps"[..], maps)],
                    created,
                }
            });
            ProcDirectory {
                ino: 1,
                me: root.clone(),
                parent: root.clone(),
                entries: alloc::vec![
                    (&b"cpuinfo"[..], cpuinfo),
                    (&b"meminfo"[..], meminfo),
                    (&b"self"[..], own as Arc<dyn Vnode>),
                    (&b"uptime"[..], uptime),
                ],
                created,
            }
        });
        Arc::new(Self { root })
    }
}

impl FileSystem for Procfs {
    fn root(&self) -> Arc<dyn Vnode> {
        self.root.clone()
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            fs_type: PROC_MAGIC,
            block_size: 4096,
            name_max: 255,
            ..StatFs::default()
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

struct ProcDirectory {
    ino: InodeNumber,
    me: Weak<ProcDirectory>,
    parent: Weak<ProcDirectory>,
    entries: Vec<(&'static [u8], Arc<dyn Vnode>)>,
    created: Timespec,
}

impl Vnode for ProcDirectory {
    fn ino(&self) -> InodeNumber {
        self.ino
    }

    fn file_type(&self) -> FileType {
        FileType::Directory
    }

    fn getattr(&self) -> Result<Stat> {
        let subdirectories = self
            .entries
            .iter()
            .filter(|(_, node)| node.file_type() == FileType::Directory)
            .count() as u64;
        Ok(Stat {
            ino: self.ino,
            mode: FileType::Directory.mode_bits() | 0o555,
            nlink: 2 + subdirectories,
            blksize: 4096,
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            ..Stat::default()
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn lookup(&self, name: &[u8]) -> Result<Arc<dyn Vnode>> {
        let directory = match name {
            b"." => &self.me,
            b".." => &self.parent,
            _ => {
                return self
                    .entries
                    .iter()
                    .find(|(entry, _)| *entry == name)
                    .map(|(_, node)| node.clone())
                    .ok_or(Errno::ENOENT);
            }
        };
        directory
            .upgrade()
            .map(|directory| directory as Arc<dyn Vnode>)
            .ok_or(Errno::ENOENT)
    }

    crate::fixed::refuse_directory_changes!();

    /// `.`, `..`, then the entries in name order; the cookie is the position.
    fn readdir(&self, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        let parent = self.parent.upgrade().map_or(self.ino, |parent| parent.ino);
        let entries = [
            (&b"."[..], self.ino, FileType::Directory),
            (&b".."[..], parent, FileType::Directory),
        ]
        .into_iter()
        .chain(
            self.entries
                .iter()
                .map(|(name, node)| (*name, node.ino(), node.file_type())),
        );
        Ok(crate::fixed::listing(entries, cookie, max))
    }
}

struct ProcFile {
    ino: InodeNumber,
    kind: Generated,
    source: Arc<dyn ProcSource>,
    created: Timespec,
}

impl Vnode for ProcFile {
    fn ino(&self) -> InodeNumber {
        self.ino
    }

    fn file_type(&self) -> FileType {
        FileType::Regular
    }

    fn getattr(&self) -> Result<Stat> {
        Ok(Stat {
            ino: self.ino,
            mode: FileType::Regular.mode_bits() | 0o444,
            nlink: 1,
            blksize: 4096,
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            ..Stat::default()
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let contents = match self.kind {
            Generated::Maps => self.source.maps(),
            Generated::Cpuinfo => self.source.cpuinfo(),
            Generated::Meminfo => self.source.meminfo(),
            Generated::Uptime => self.source.uptime(),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(contents.len());
        let count = buf.len().min(contents.len() - start);
        buf[..count].copy_from_slice(&contents[start..start + count]);
        Ok(count)
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<usize> {
        Err(Errno::EACCES)
    }

    fn append(&self, _buf: &[u8]) -> Result<(u64, usize)> {
        Err(Errno::EACCES)
    }

    fn truncate(&self, _size: u64) -> Result<()> {
        Err(Errno::EACCES)
    }

    fn fsync(&self, _data_only: bool) -> Result<()> {
        Ok(())
    }

    fn set_times(&self, _atime: Option<Timespec>, _mtime: Option<Timespec>) -> Result<()> {
        Err(Errno::EPERM)
    }
}

/// `/proc/self/fd/`.
struct FdDirectory {
    me: Weak<FdDirectory>,
    parent: Weak<ProcDirectory>,
    source: Arc<dyn ProcSource>,
    created: Timespec,
}

/// The descriptor a name of `/proc/self/fd/` stands for: a decimal number without
/// leading zeros.
fn descriptor_name(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 10 || (name.len() > 1 && name[0] == b'0') {
        return None;
    }
    let mut value: i64 = 0;
    for &byte in name {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(byte - b'0');
    }
    i32::try_from(value).ok()
}

impl Vnode for FdDirectory {
    fn ino(&self) -> InodeNumber {
        FD_DIRECTORY_INO
    }

    fn file_type(&self) -> FileType {
        FileType::Directory
    }

    fn getattr(&self) -> Result<Stat> {
        Ok(Stat {
            ino: FD_DIRECTORY_INO,
            mode: FileType::Directory.mode_bits() | 0o500,
            nlink: 2,
            blksize: 4096,
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            ..Stat::default()
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn cache_lookups(&self) -> bool {
        false
    }

    fn lookup(&self, name: &[u8]) -> Result<Arc<dyn Vnode>> {
        match name {
            b"." => self.me.upgrade().map(|me| me as Arc<dyn Vnode>),
            b".." => self.parent.upgrade().map(|parent| parent as Arc<dyn Vnode>),
            _ => descriptor_name(name)
                .filter(|fd| self.source.fds().contains(fd))
                .map(|fd| {
                    Arc::new(FdLink {
                        fd,
                        source: self.source.clone(),
                        created: self.created,
                    }) as Arc<dyn Vnode>
                }),
        }
        .ok_or(Errno::ENOENT)
    }

    crate::fixed::refuse_directory_changes!();

    /// `.`, `..`, then the descriptors; the cookie after descriptor N is N + 3, so a
    /// listing continues at the right place while descriptors come and go.
    fn readdir(&self, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        let dots: [(&[u8], InodeNumber); 2] = [(b".", FD_DIRECTORY_INO), (b"..", 2)];
        for (position, (name, ino)) in dots.into_iter().enumerate() {
            if cookie <= position as u64 && entries.len() < max {
                entries.push(DirEntry {
                    ino,
                    file_type: FileType::Directory,
                    name: name.to_vec(),
                    next_cookie: position as u64 + 1,
                });
            }
        }
        for fd in self.source.fds() {
            let next_cookie = fd as u64 + 3;
            if next_cookie <= cookie || fd < 0 {
                continue;
            }
            if entries.len() == max {
                break;
            }
            entries.push(DirEntry {
                ino: FD_LINK_BASE + fd as u64,
                file_type: FileType::Symlink,
                name: alloc::format!("{fd}").into_bytes(),
                next_cookie,
            });
        }
        Ok(entries)
    }
}

/// `/proc/self/fd/FD`.
struct FdLink {
    fd: i32,
    source: Arc<dyn ProcSource>,
    created: Timespec,
}

impl Vnode for FdLink {
    fn ino(&self) -> InodeNumber {
        FD_LINK_BASE + self.fd as u64
    }

    fn file_type(&self) -> FileType {
        FileType::Symlink
    }

    fn getattr(&self) -> Result<Stat> {
        let size = self
            .source
            .fd_target(self.fd)
            .map_or(0, |target| target.len()) as u64;
        Ok(Stat {
            ino: self.ino(),
            mode: FileType::Symlink.mode_bits() | 0o700,
            nlink: 1,
            size,
            blksize: 4096,
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            ..Stat::default()
        })
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn readlink(&self) -> Result<Vec<u8>> {
        self.source.fd_target(self.fd).ok_or(Errno::ENOENT)
    }

    fn set_times(&self, _atime: Option<Timespec>, _mtime: Option<Timespec>) -> Result<()> {
        Err(Errno::EPERM)
    }
}
