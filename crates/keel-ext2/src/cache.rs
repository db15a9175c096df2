//! The block cache: whole filesystem blocks kept in memory, written back later.
//!
//! At most `capacity` blocks are held. A miss when full evicts the least recently used
//! clean block; when every block is dirty, all dirty blocks are first written back in
//! the [`BlockCache::write_back`] order (data, flush, metadata, flush), then the least
//! recently used is evicted. A block that failed to write stays dirty.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use keel_virtio::block::{BlockDevice, BlockError, SECTOR_SIZE};

#[derive(Debug)]
struct CacheEntry {
    data: Vec<u8>,
    dirty: bool,
    last_use: u64,
}

/// Blocks by number, with their dirty bit and last use.
#[derive(Debug)]
pub(crate) struct BlockCache {
    block_size: usize,
    capacity: usize,
    entries: BTreeMap<u64, CacheEntry>,
    /// Counts uses, for least-recently-used eviction.
    tick: u64,
    /// Sorted, disjoint `(first, end)` block ranges holding metadata (superblock, group
    /// descriptors, bitmaps, inode tables): written after everything else.
    metadata: Vec<(u64, u64)>,
    /// Blocks read from the device, for tests and statistics.
    pub misses: u64,
    /// Blocks written to the device.
    pub writes: u64,
}

impl BlockCache {
    pub fn new(block_size: usize, capacity: usize, mut metadata: Vec<(u64, u64)>) -> Self {
        metadata.sort_unstable();
        Self {
            block_size,
            capacity: capacity.max(8),
            entries: BTreeMap::new(),
            tick: 0,
            metadata,
            misses: 0,
            writes: 0,
        }
    }

    fn sector(&self, block: u64) -> u64 {
        block * (self.block_size / SECTOR_SIZE) as u64
    }

    fn is_metadata(&self, block: u64) -> bool {
        let index = self.metadata.partition_point(|&(first, _)| first <= block);
        index > 0 && block < self.metadata[index - 1].1
    }

    /// Makes room for one more entry.
    fn make_room<D: BlockDevice>(&mut self, device: &D) -> Result<(), BlockError> {
        if self.entries.len() < self.capacity {
            return Ok(());
        }
        let victim = |entries: &BTreeMap<u64, CacheEntry>| {
            entries
                .iter()
                .filter(|(_, entry)| !entry.dirty)
                .min_by_key(|(_, entry)| entry.last_use)
                .map(|(&block, _)| block)
        };
        let block = match victim(&self.entries) {
            Some(block) => block,
            None => {
                self.write_back(device)?;
                victim(&self.entries).unwrap_or(0)
            }
        };
        self.entries.remove(&block);
        Ok(())
    }

    fn entry<D: BlockDevice>(
        &mut self,
        device: &D,
        block: u64,
        zeroed: bool,
    ) -> Result<&mut CacheEntry, BlockError> {
        self.tick += 1;
        let tick = self.tick;
        if !self.entries.contains_key(&block) {
            self.make_room(device)?;
            let mut data = vec![0; self.block_size];
            if !zeroed {
                device.read(self.sector(block), &mut data)?;
                self.misses += 1;
            }
            self.entries.insert(
                block,
                CacheEntry {
                    data,
                    dirty: false,
                    last_use: tick,
                },
            );
        }
        let entry = self.entries.get_mut(&block).ok_or(BlockError::Device)?;
        entry.last_use = tick;
        if zeroed {
            entry.data.fill(0);
            entry.dirty = true;
        }
        Ok(entry)
    }

    /// The contents of `block`.
    pub fn read<D: BlockDevice>(&mut self, device: &D, block: u64) -> Result<&[u8], BlockError> {
        Ok(&self.entry(device, block, false)?.data)
    }

    /// The contents of `block`, to change (marked dirty).
    pub fn modify<D: BlockDevice>(
        &mut self,
        device: &D,
        block: u64,
    ) -> Result<&mut [u8], BlockError> {
        let entry = self.entry(device, block, false)?;
        entry.dirty = true;
        Ok(&mut entry.data)
    }

    /// `block` filled with zeros and marked dirty, without reading it: for a block just
    /// allocated.
    pub fn zeroed<D: BlockDevice>(
        &mut self,
        device: &D,
        block: u64,
    ) -> Result<&mut [u8], BlockError> {
        Ok(&mut self.entry(device, block, true)?.data)
    }

    /// Writes every dirty block: first those that are not metadata (file data,
    /// directory and indirect blocks), then a device flush, then metadata (inode
    /// tables, bitmaps, group descriptors, superblock), then a flush. Each group goes
    /// out in ascending block order.
    pub fn write_back<D: BlockDevice>(&mut self, device: &D) -> Result<(), BlockError> {
        for metadata_pass in [false, true] {
            let mut wrote = false;
            let blocks: Vec<u64> = self
                .entries
                .iter()
                .filter(|(block, entry)| entry.dirty && self.is_metadata(**block) == metadata_pass)
                .map(|(&block, _)| block)
                .collect();
            for block in blocks {
                let sector = self.sector(block);
                if let Some(entry) = self.entries.get_mut(&block) {
                    device.write(sector, &entry.data)?;
                    entry.dirty = false;
                    self.writes += 1;
                    wrote = true;
                }
            }
            if wrote {
                device.flush()?;
            }
        }
        Ok(())
    }

    /// Dirty blocks held.
    pub fn dirty_blocks(&self) -> usize {
        self.entries.values().filter(|entry| entry.dirty).count()
    }
}
