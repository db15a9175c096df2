//! The VFS: the mount table, the dentry cache and the clock that every
//! [`Context`](crate::Context) resolves paths through.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use keel_lfmutex::{Mutex, Parker, RwLock};

use crate::dcache::DentryCache;
use crate::errno::{Errno, Result};
use crate::fs::{Clock, FileSystem, FileType, InodeNumber, Vnode};
use crate::lock::LockTable;

/// A mount's number in the table (the root filesystem is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountId(pub(crate) u32);

impl MountId {
    /// The number.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

/// A vnode and the mount it was reached through.
#[derive(Clone)]
pub struct Location {
    /// The mount.
    pub(crate) mount: u32,
    /// The vnode.
    pub(crate) vnode: Arc<dyn Vnode>,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location")
            .field("mount", &self.mount)
            .field("ino", &self.vnode.ino())
            .finish()
    }
}

impl Location {
    /// The vnode.
    pub fn vnode(&self) -> &Arc<dyn Vnode> {
        &self.vnode
    }

    /// The mount.
    pub fn mount(&self) -> MountId {
        MountId(self.mount)
    }

    /// Whether this is a directory.
    pub(crate) fn is_dir(&self) -> bool {
        self.vnode.file_type() == FileType::Directory
    }

    /// Whether both name the same inode of the same mount.
    pub(crate) fn same(&self, other: &Location) -> bool {
        self.mount == other.mount && self.vnode.ino() == other.vnode.ino()
    }
}

/// One mounted filesystem.
pub(crate) struct Mount<P: Parker + 'static> {
    /// The filesystem.
    pub(crate) fs: Arc<dyn FileSystem>,
    /// Its root vnode.
    pub(crate) root: Arc<dyn Vnode>,
    /// The directory it covers (none for the root mount).
    pub(crate) covered: Option<Location>,
    /// Serialises cross-directory renames in this filesystem, so that the "not into
    /// its own subtree" check stays true until the rename is done (Linux's
    /// `s_vfs_rename_mutex`).
    pub(crate) rename_lock: Mutex<(), P>,
}

/// The mount table.
struct MountTable<P: Parker + 'static> {
    /// Mounts by number.
    mounts: Vec<Arc<Mount<P>>>,
    /// Mount points: `(mount, inode)` of a covered directory to what covers it.
    covering: BTreeMap<(u32, InodeNumber), u32>,
}

/// The longest path, with its terminating NUL (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// The longest name (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// The most symlinks one resolution follows (`MAXSYMLINKS`).
pub const MAX_SYMLINKS: u32 = 40;

/// The virtual filesystem: mounts, the dentry cache and the clock.
pub struct Vfs<P: Parker + 'static> {
    /// The mount table. Read (shared) on every mount-point check of a walk; written
    /// only by `mount`.
    table: RwLock<MountTable<P>, P>,
    /// The dentry cache.
    pub(crate) dcache: DentryCache<P>,
    /// The time for `utimensat`'s `UTIME_NOW`.
    pub(crate) clock: Arc<dyn Clock>,
    /// The `fcntl` record locks of every file.
    pub(crate) locks: LockTable<P>,
}

impl<P: Parker + 'static> fmt::Debug for Vfs<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vfs")
            .field("mounts", &self.table.read().mounts.len())
            .finish()
    }
}

impl<P: Parker + 'static> Vfs<P> {
    /// A VFS with `root` mounted at `/`.
    pub fn new(root: Arc<dyn FileSystem>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let root_vnode = root.root();
        Arc::new(Self {
            table: RwLock::new(MountTable {
                mounts: alloc::vec![Arc::new(Mount {
                    fs: root,
                    root: root_vnode,
                    covered: None,
                    rename_lock: Mutex::new(()),
                })],
                covering: BTreeMap::new(),
            }),
            dcache: DentryCache::new(),
            clock,
            locks: LockTable::new(),
        })
    }

    /// How many contexts sleep in `F_SETLKW` for a POSIX record lock now (a
    /// diagnostic, like the waiters `/proc/locks` lists on Linux).
    pub fn lock_sleepers(&self) -> usize {
        self.locks.sleepers()
    }

    /// The root of the root mount.
    pub fn root(&self) -> Location {
        Location {
            mount: 0,
            vnode: self.table.read().mounts[0].root.clone(),
        }
    }

    /// The mount numbered `mount`.
    pub(crate) fn mount_record(&self, mount: u32) -> Arc<Mount<P>> {
        self.table.read().mounts[mount as usize].clone()
    }

    /// Mounts `fs` on the directory `at`; `ENOTDIR` if it is not one, `EBUSY` if
    /// something is mounted there already or it is a mount's root.
    pub(crate) fn mount_at(&self, at: &Location, fs: Arc<dyn FileSystem>) -> Result<MountId> {
        if !at.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut table = self.table.write();
        let key = (at.mount, at.vnode.ino());
        if table.covering.contains_key(&key) {
            return Err(Errno::EBUSY);
        }
        let id = u32::try_from(table.mounts.len()).map_err(|_| Errno::ENOMEM)?;
        let root = fs.root();
        table.mounts.push(Arc::new(Mount {
            fs,
            root,
            covered: Some(at.clone()),
            rename_lock: Mutex::new(()),
        }));
        table.covering.insert(key, id);
        Ok(MountId(id))
    }

    /// Whether `location` is covered by a mount.
    pub(crate) fn is_mount_point(&self, location: &Location) -> bool {
        self.table
            .read()
            .covering
            .contains_key(&(location.mount, location.vnode.ino()))
    }

    /// Whether `location` is the root of its mount.
    pub(crate) fn is_mount_root(&self, location: &Location) -> bool {
        self.table.read().mounts[location.mount as usize].root.ino() == location.vnode.ino()
    }

    /// What is seen at `location`: the root of what is mounted there, repeatedly.
    pub(crate) fn enter_mounts(&self, mut location: Location) -> Location {
        let table = self.table.read();
        while let Some(&id) = table.covering.get(&(location.mount, location.vnode.ino())) {
            location = Location {
                mount: id,
                vnode: table.mounts[id as usize].root.clone(),
            };
        }
        location
    }

    /// `..` of the directory `location`, not going above `root`; crosses out of mount
    /// roots to the parent of the covered directory.
    pub(crate) fn parent_of(&self, root: &Location, location: &Location) -> Result<Location> {
        let mut current = location.clone();
        loop {
            if current.same(root) {
                return Ok(current);
            }
            let mount = self.mount_record(current.mount);
            if mount.root.ino() != current.vnode.ino() {
                break;
            }
            match &mount.covered {
                Some(covered) => current = covered.clone(),
                None => return Ok(current), // the global root
            }
        }
        let parent = current.vnode.lookup(b"..")?;
        Ok(Location {
            mount: current.mount,
            vnode: parent,
        })
    }

    /// The child `name` of the directory `directory`, through the dentry cache;
    /// mounts are not entered.
    pub(crate) fn lookup_child(&self, directory: &Location, name: &[u8]) -> Result<Location> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = directory.vnode.ino();
        let (cached, generation) = self.dcache.get(directory.mount, ino, name);
        let vnode = match cached {
            Some(Some(vnode)) => vnode,
            Some(None) => return Err(Errno::ENOENT),
            None if !directory.vnode.cache_lookups() => directory.vnode.lookup(name)?,
            None => match directory.vnode.lookup(name) {
                Ok(vnode) => {
                    self.dcache
                        .insert(directory.mount, ino, name, Some(vnode.clone()), generation);
                    vnode
                }
                Err(Errno::ENOENT) => {
                    self.dcache
                        .insert(directory.mount, ino, name, None, generation);
                    return Err(Errno::ENOENT);
                }
                Err(error) => return Err(error),
            },
        };
        Ok(Location {
            mount: directory.mount,
            vnode,
        })
    }

    /// Forgets the cached `name` in `directory` (after a change there).
    pub(crate) fn invalidate(&self, directory: &Location, name: &[u8]) {
        self.dcache
            .invalidate(directory.mount, directory.vnode.ino(), name);
    }

    /// Whether the directory `ancestor` is `location` or above it (same mount).
    pub(crate) fn is_ancestor(&self, ancestor: &Location, location: &Location) -> Result<bool> {
        if ancestor.mount != location.mount {
            return Ok(false);
        }
        let root = self.mount_record(location.mount).root.ino();
        let mut current = location.vnode.clone();
        // The tree is finite; the bound only guards against a corrupt filesystem.
        for _ in 0..1 << 16 {
            if current.ino() == ancestor.vnode.ino() {
                return Ok(true);
            }
            if current.ino() == root {
                return Ok(false);
            }
            current = current.lookup(b"..")?;
        }
        Err(Errno::ELOOP)
    }
}
