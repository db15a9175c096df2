//! What devfs and procfs share: directories whose entries are fixed when the
//! filesystem is made.

use crate::fs::{DirEntry, FileType, InodeNumber};
use alloc::vec::Vec;

/// `readdir` of a fixed directory: `entries` in order (`.` and `..` first), the
/// cookie being the position.
pub(crate) fn listing<'a>(
    entries: impl Iterator<Item = (&'a [u8], InodeNumber, FileType)>,
    cookie: u64,
    max: usize,
) -> Vec<DirEntry> {
    entries
        .enumerate()
        .skip(usize::try_from(cookie).unwrap_or(usize::MAX))
        .take(max)
        .map(|(position, (name, ino, file_type))| DirEntry {
            ino,
            file_type,
            name: name.to_vec(),
            next_cookie: position as u64 + 1,
        })
        .collect()
}

/// The `Vnode` methods that would change a fixed directory, each refusing with
/// `EPERM`.
macro_rules! refuse_directory_changes {
    () => {
        fn create(&self, _name: &[u8], _mode: u32) -> Result<Arc<dyn Vnode>> {
            Err(Errno::EPERM)
        }

        fn mkdir(&self, _name: &[u8], _mode: u32) -> Result<Arc<dyn Vnode>> {
            Err(Errno::EPERM)
        }

        fn symlink(&self, _name: &[u8], _target: &[u8]) -> Result<Arc<dyn Vnode>> {
            Err(Errno::EPERM)
        }

        fn link(&self, _name: &[u8], _target: &Arc<dyn Vnode>) -> Result<()> {
            Err(Errno::EPERM)
        }

        fn unlink(&self, _name: &[u8]) -> Result<()> {
            Err(Errno::EPERM)
        }

        fn rmdir(&self, _name: &[u8]) -> Result<()> {
            Err(Errno::EPERM)
        }

        fn rename(&self, _old: &[u8], _new_dir: &Arc<dyn Vnode>, _new: &[u8]) -> Result<()> {
            Err(Errno::EPERM)
        }

        fn set_times(&self, _atime: Option<Timespec>, _mtime: Option<Timespec>) -> Result<()> {
            Err(Errno::EPERM)
        }
    };
}

pub(crate) use refuse_directory_changes;
