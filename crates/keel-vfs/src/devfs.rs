//! devfs: the device nodes Linux programs expect in `/dev`: `console`, `null`,
//! `zero`, `full`, `random` and `urandom`, with Linux's major/minor numbers.
//!
//! - `null` reads as end of file and swallows writes; `zero` reads as zeros and
//!   swallows writes; `full` reads as zeros and refuses writes with `ENOSPC`.
//! - `console` writes to the kernel's console ([`Console`]); it has no input yet
//!   (reads return end of file).
//! - `random` and `urandom` read from an [`Entropy`] source (the kernel's is
//!   RDRAND, or RDSEED); writes are accepted and dropped, as Linux accepts them (it
//!   mixes them in without crediting entropy). With no source at all a read fails
//!   with `EIO` rather than return predictable bytes.
//!
//! The directory is fixed: nodes cannot be created, removed or renamed (`EPERM`).

use crate::errno::{Errno, Result};
use crate::fs::{
    Clock, DirEntry, FileSystem, FileType, InodeNumber, Stat, StatFs, Timespec, Vnode,
};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;

/// Where `/dev/console` writes.
pub trait Console: Send + Sync {
    /// Writes `bytes` to the console.
    fn write(&self, bytes: &[u8]);
}

/// Where `/dev/random` and `/dev/urandom` read from.
pub trait Entropy: Send + Sync {
    /// Fills `buffer` with random bytes; false if no source could give them.
    fn fill(&self, buffer: &mut [u8]) -> bool;
}

/// `statfs`'s `f_type` for devtmpfs (Linux reports TMPFS_MAGIC).
const DEVFS_MAGIC: u64 = 0x0102_1994;

/// What a device node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    Console,
    Null,
    Zero,
    Full,
    Random,
    Urandom,
}

/// The nodes: name, device, major, minor (Linux's Documentation/admin-guide/devices.txt).
const NODES: [(&[u8], Device, u32, u32); 6] = [
    (b"console", Device::Console, 5, 1),
    (b"full", Device::Full, 1, 7),
    (b"null", Device::Null, 1, 3),
    (b"random", Device::Random, 1, 8),
    (b"urandom", Device::Urandom, 1, 9),
    (b"zero", Device::Zero, 1, 5),
];

/// Linux's `new_encode_dev`.
fn encode_device(major: u32, minor: u32) -> u64 {
    u64::from((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// The devfs instance: mount it at `/dev`.
pub struct Devfs {
    root: Arc<DevDirectory>,
}

impl core::fmt::Debug for Devfs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Devfs").finish_non_exhaustive()
    }
}

impl Devfs {
    /// A devfs whose console and random devices use `console` and `entropy`.
    pub fn new(
        console: Arc<dyn Console>,
        entropy: Arc<dyn Entropy>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let created = clock.now();
        let nodes: Vec<Arc<DevNode>> = NODES
            .iter()
            .enumerate()
            .map(|(index, &(name, device, major, minor))| {
                Arc::new(DevNode {
                    ino: 2 + index as InodeNumber,
                    name,
                    device,
                    rdev: encode_device(major, minor),
                    console: console.clone(),
                    entropy: entropy.clone(),
                    created,
                })
            })
            .collect();
        Arc::new(Self {
            root: Arc::new_cyclic(|me| DevDirectory {
                me: me.clone(),
                nodes,
                created,
            }),
        })
    }
}

impl FileSystem for Devfs {
    fn root(&self) -> Arc<dyn Vnode> {
        self.root.clone()
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            fs_type: DEVFS_MAGIC,
            block_size: 4096,
            files: NODES.len() as u64 + 1,
            name_max: 255,
            ..StatFs::default()
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

struct DevDirectory {
    me: Weak<DevDirectory>,
    nodes: Vec<Arc<DevNode>>,
    created: Timespec,
}

impl Vnode for DevDirectory {
    fn ino(&self) -> InodeNumber {
        1
    }

    fn file_type(&self) -> FileType {
        FileType::Directory
    }

    fn getattr(&self) -> Result<Stat> {
        Ok(Stat {
            ino: 1,
            mode: FileType::Directory.mode_bits() | 0o755,
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

    fn lookup(&self, name: &[u8]) -> Result<Arc<dyn Vnode>> {
        if name == b"." || name == b".." {
            // The root is its own parent (the VFS takes `..` out of a mount's root
            // itself before it asks).
            return self
                .me
                .upgrade()
                .map(|me| me as Arc<dyn Vnode>)
                .ok_or(Errno::ENOENT);
        }
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .map(|node| node.clone() as Arc<dyn Vnode>)
            .ok_or(Errno::ENOENT)
    }

    crate::fixed::refuse_directory_changes!();

    /// `.`, `..`, then the nodes in name order; the cookie is the position.
    fn readdir(&self, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        let entries = [
            (&b"."[..], 1, FileType::Directory),
            (&b".."[..], 1, FileType::Directory),
        ]
        .into_iter()
        .chain(
            self.nodes
                .iter()
                .map(|node| (node.name, node.ino, FileType::CharDevice)),
        );
        Ok(crate::fixed::listing(entries, cookie, max))
    }
}

struct DevNode {
    ino: InodeNumber,
    name: &'static [u8],
    device: Device,
    rdev: u64,
    console: Arc<dyn Console>,
    entropy: Arc<dyn Entropy>,
    created: Timespec,
}

impl Vnode for DevNode {
    fn ino(&self) -> InodeNumber {
        self.ino
    }

    fn file_type(&self) -> FileType {
        FileType::CharDevice
    }

    fn getattr(&self) -> Result<Stat> {
        let permissions = if self.device == Device::Console {
            0o600
        } else {
            0o666
        };
        Ok(Stat {
            ino: self.ino,
            mode: FileType::CharDevice.mode_bits() | permissions,
            nlink: 1,
            rdev: self.rdev,
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

    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self.device {
            Device::Null | Device::Console => Ok(0),
            Device::Zero | Device::Full => {
                buf.fill(0);
                Ok(buf.len())
            }
            Device::Random | Device::Urandom => {
                if self.entropy.fill(buf) {
                    Ok(buf.len())
                } else {
                    Err(Errno::EIO)
                }
            }
        }
    }

    fn write_at(&self, _offset: u64, buf: &[u8]) -> Result<usize> {
        match self.device {
            Device::Full => Err(Errno::ENOSPC),
            Device::Console => {
                self.console.write(buf);
                Ok(buf.len())
            }
            Device::Null | Device::Zero | Device::Random | Device::Urandom => Ok(buf.len()),
        }
    }

    fn append(&self, buf: &[u8]) -> Result<(u64, usize)> {
        Ok((0, self.write_at(0, buf)?))
    }

    /// `O_TRUNC` on a device is ignored, as Linux ignores it.
    fn truncate(&self, _size: u64) -> Result<()> {
        Ok(())
    }

    fn fsync(&self, _data_only: bool) -> Result<()> {
        Ok(())
    }

    fn set_times(&self, _atime: Option<Timespec>, _mtime: Option<Timespec>) -> Result<()> {
        Ok(())
    }
}
