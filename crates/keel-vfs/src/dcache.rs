//! The dentry cache: `(mount, directory inode, name)` to a vnode, or to "no such
//! name" (a negative entry).
//!
//! The cache is split into [`SHARDS`] shards by `(mount, directory)`, each a
//! `keel-lfmutex` `RwLock` over a map: a lookup takes its shard's lock shared, so
//! lookups never wait for each other's whole walk, and changes in one directory touch
//! one shard. A miss asks the filesystem without any cache lock held and inserts the
//! answer only if the shard's generation has not moved meanwhile (every invalidation
//! bumps it), so an answer that an unlink or rename overtook is never cached.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use keel_lfmutex::{Parker, RwLock};

use crate::fs::{InodeNumber, Vnode};

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;
/// Entries a shard holds before it is emptied (a crude bound on memory).
pub const SHARD_CAPACITY: usize = 4096;

/// A cached answer: `Some` vnode, or `None` for a name known not to exist.
pub type CachedEntry = Option<Arc<dyn Vnode>>;

/// One shard.
struct Shard {
    /// Bumped by every invalidation.
    generation: u64,
    /// Entries per `(mount, directory)`.
    directories: BTreeMap<(u32, InodeNumber), BTreeMap<Vec<u8>, CachedEntry>>,
    /// Total entries.
    count: usize,
}

/// The dentry cache.
pub struct DentryCache<P: Parker> {
    /// The shards.
    shards: Vec<RwLock<Shard, P>>,
}

impl<P: Parker> fmt::Debug for DentryCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DentryCache")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl<P: Parker> Default for DentryCache<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// The shard of a directory.
fn shard_index(mount: u32, directory: InodeNumber) -> usize {
    let mixed = (directory ^ (u64::from(mount) << 48)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 58) as usize % SHARDS
}

impl<P: Parker> DentryCache<P> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        generation: 0,
                        directories: BTreeMap::new(),
                        count: 0,
                    })
                })
                .collect(),
        }
    }

    /// The cached answer for `name` in `directory`, and the shard's generation (to
    /// pass to [`Self::insert`] after a miss).
    pub fn get(
        &self,
        mount: u32,
        directory: InodeNumber,
        name: &[u8],
    ) -> (Option<CachedEntry>, u64) {
        let shard = self.shards[shard_index(mount, directory)].read();
        let entry = shard
            .directories
            .get(&(mount, directory))
            .and_then(|names| names.get(name))
            .cloned();
        (entry, shard.generation)
    }

    /// Caches `entry` unless the shard changed since `generation`.
    pub fn insert(
        &self,
        mount: u32,
        directory: InodeNumber,
        name: &[u8],
        entry: CachedEntry,
        generation: u64,
    ) {
        let mut shard = self.shards[shard_index(mount, directory)].write();
        if shard.generation != generation {
            return;
        }
        if shard.count >= SHARD_CAPACITY {
            shard.directories.clear();
            shard.count = 0;
        }
        let names = shard.directories.entry((mount, directory)).or_default();
        if names.insert(name.to_vec(), entry).is_none() {
            shard.count += 1;
        }
    }

    /// Forgets `name` in `directory`.
    pub fn invalidate(&self, mount: u32, directory: InodeNumber, name: &[u8]) {
        let mut shard = self.shards[shard_index(mount, directory)].write();
        shard.generation += 1;
        let removed = shard
            .directories
            .get_mut(&(mount, directory))
            .and_then(|names| names.remove(name))
            .is_some();
        if removed {
            shard.count -= 1;
        }
    }

    /// Forgets every name in `directory` (removed, or its inode number reused).
    pub fn forget_directory(&self, mount: u32, directory: InodeNumber) {
        let mut shard = self.shards[shard_index(mount, directory)].write();
        shard.generation += 1;
        if let Some(names) = shard.directories.remove(&(mount, directory)) {
            shard.count -= names.len();
        }
    }
}
