//! The filesystem state behind the lock, and every operation on it.

use crate::cache::BlockCache;
use crate::error::{Corruption, Error, IncompatFeatures, MountError, Result, SuperblockProblem};
use crate::layout::*;
use crate::{DirEntry, FileType, InodeNumber, Metadata, MountOptions, StatFs};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use keel_virtio::block::{BlockDevice, SECTOR_SIZE};

/// `s_state` bit: cleanly unmounted.
const STATE_VALID: u16 = 1;
/// Extended-attribute block magic.
const XATTR_MAGIC: u32 = 0xEA02_0000;

/// Where a logical block's pointer lives: `i_block[root]`, then `depth` indirect
/// blocks indexed by `indices`.
struct BlockPath {
    root: usize,
    depth: usize,
    indices: [usize; 3],
}

/// One directory record, as found by [`Inner::scan_dir`].
#[derive(Clone, Copy)]
struct Slot {
    block: u64,
    offset: usize,
    rec_len: usize,
    previous: Option<usize>,
    inode: u32,
    name_len: usize,
    file_type: u8,
}

impl Slot {
    /// Bytes the record needs for its own name (0 for a free record).
    fn used(&self) -> usize {
        if self.inode == 0 {
            0
        } else {
            record_len(self.name_len)
        }
    }
}

fn record_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

fn find_zero_bit(bitmap: &[u8], first: usize, bits: usize) -> Option<usize> {
    let mut index = first;
    while index < bits {
        let byte = bitmap[index / 8];
        if byte == 0xFF && index.is_multiple_of(8) {
            index += 8;
            continue;
        }
        if byte & (1 << (index % 8)) == 0 {
            return Some(index);
        }
        index += 1;
    }
    None
}

/// The directory-entry file type for a mode.
fn entry_type(mode: u16) -> u8 {
    match mode & MODE_TYPE_MASK {
        MODE_REGULAR => 1,
        MODE_DIR => 2,
        MODE_CHAR => 3,
        MODE_BLOCK => 4,
        MODE_FIFO => 5,
        MODE_SOCKET => 6,
        MODE_SYMLINK => 7,
        _ => 0,
    }
}

pub(crate) fn file_type_of_mode(mode: u16) -> FileType {
    match mode & MODE_TYPE_MASK {
        MODE_REGULAR => FileType::Regular,
        MODE_DIR => FileType::Directory,
        MODE_CHAR => FileType::CharDevice,
        MODE_BLOCK => FileType::BlockDevice,
        MODE_FIFO => FileType::Fifo,
        MODE_SOCKET => FileType::Socket,
        MODE_SYMLINK => FileType::Symlink,
        _ => FileType::Unknown,
    }
}

fn file_type_of_entry(code: u8) -> FileType {
    match code {
        1 => FileType::Regular,
        2 => FileType::Directory,
        3 => FileType::CharDevice,
        4 => FileType::BlockDevice,
        5 => FileType::Fifo,
        6 => FileType::Socket,
        7 => FileType::Symlink,
        _ => FileType::Unknown,
    }
}

/// A name for a new entry: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
fn check_new_name(name: &[u8]) -> Result<()> {
    check_name(name)?;
    if name == b"." || name == b".." {
        return Err(Error::Exists);
    }
    Ok(())
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}

fn corrupted(what: Corruption) -> Error {
    Error::Corrupted(what)
}

/// The mounted filesystem: device, parsed metadata and cache.
#[derive(Debug)]
pub(crate) struct Inner<D> {
    pub device: D,
    sb: Superblock,
    groups: Vec<GroupDescriptor>,
    pub cache: BlockCache,
    block_size: usize,
    /// Block numbers per indirect block.
    pointers: u64,
    pub read_only: bool,
    filetype: bool,
    /// The superblock or a group descriptor changed since the last sync.
    metadata_dirty: bool,
    /// Inodes held open by the layer above ([`Inner::hold`]), with their hold counts.
    held: BTreeMap<u32, u32>,
    /// Non-directories whose last link went while they were held: links 0 on disk
    /// (dtime 0), blocks kept, freed at the last release or at unmount.
    orphans: BTreeSet<u32>,
}

impl<D: BlockDevice> Inner<D> {
    // ----- mount -----

    pub fn mount(device: D, options: &MountOptions) -> core::result::Result<Self, MountError> {
        let sectors = device.capacity();
        let device_bytes = sectors.saturating_mul(SECTOR_SIZE as u64);
        if device_bytes < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64 {
            return Err(MountError::NoSuperblock { sectors });
        }
        let mut raw = vec![0; SUPERBLOCK_SIZE];
        device.read(SUPERBLOCK_OFFSET / SECTOR_SIZE as u64, &mut raw)?;
        let sb = Superblock::parse(&raw);
        if sb.magic != MAGIC {
            return Err(MountError::BadMagic(sb.magic));
        }
        if sb.rev_level > 1 {
            return Err(MountError::UnsupportedRevision(sb.rev_level));
        }
        if sb.log_block_size > 6 {
            return Err(MountError::BadBlockSize(sb.log_block_size));
        }
        let block_size = 1024usize << sb.log_block_size;
        let bad = |problem| Err(MountError::BadSuperblock(problem));
        let bits_per_block = 8 * block_size as u32;
        if sb.blocks_per_group == 0 || sb.blocks_per_group > bits_per_block {
            return bad(SuperblockProblem::BlocksPerGroup);
        }
        if sb.inodes_per_group == 0 || sb.inodes_per_group > bits_per_block {
            return bad(SuperblockProblem::InodesPerGroup);
        }
        let expected_first = u32::from(block_size == 1024);
        if sb.first_data_block != expected_first {
            return bad(SuperblockProblem::FirstDataBlock);
        }
        if sb.blocks_count <= sb.first_data_block + 1 {
            return bad(SuperblockProblem::BlocksCount);
        }
        let needed_bytes = u64::from(sb.blocks_count) * block_size as u64;
        if needed_bytes > device_bytes {
            return Err(MountError::DeviceTooSmall {
                needed_bytes,
                device_bytes,
            });
        }
        let group_count = (sb.blocks_count - sb.first_data_block).div_ceil(sb.blocks_per_group);
        if u64::from(sb.inodes_count) != u64::from(group_count) * u64::from(sb.inodes_per_group) {
            return bad(SuperblockProblem::InodesCount);
        }
        let inode_size = usize::from(sb.inode_size);
        if inode_size < GOOD_OLD_INODE_SIZE
            || !inode_size.is_power_of_two()
            || inode_size > block_size
        {
            return bad(SuperblockProblem::InodeSize);
        }
        if sb.first_inode < GOOD_OLD_FIRST_INODE || sb.first_inode >= sb.inodes_count {
            return bad(SuperblockProblem::FirstInode);
        }
        if sb.free_blocks > sb.blocks_count || sb.free_inodes > sb.inodes_count {
            return bad(SuperblockProblem::FreeCounts);
        }
        let unknown_incompat = sb.feature_incompat & !INCOMPAT_SUPPORTED;
        if unknown_incompat != 0 {
            return Err(MountError::UnsupportedFeatures(IncompatFeatures(
                unknown_incompat,
            )));
        }
        let descriptor_bytes = group_count as usize * GROUP_DESCRIPTOR_SIZE;
        let descriptor_blocks = descriptor_bytes.div_ceil(block_size) as u32;
        let descriptor_first = sb.first_data_block + 1;
        if u64::from(descriptor_first) + u64::from(descriptor_blocks) > u64::from(sb.blocks_count) {
            return bad(SuperblockProblem::GroupDescriptorTable);
        }
        let mut table = vec![0; descriptor_blocks as usize * block_size];
        device.read(
            u64::from(descriptor_first) * (block_size / SECTOR_SIZE) as u64,
            &mut table,
        )?;
        let table_blocks =
            (u64::from(sb.inodes_per_group) * inode_size as u64).div_ceil(block_size as u64);
        let mut groups = Vec::with_capacity(group_count as usize);
        let mut metadata = vec![
            (
                SUPERBLOCK_OFFSET / block_size as u64,
                SUPERBLOCK_OFFSET / block_size as u64 + 1,
            ),
            (
                u64::from(descriptor_first),
                u64::from(descriptor_first + descriptor_blocks),
            ),
        ];
        let in_range = |block: u32, count: u64| {
            block >= sb.first_data_block && u64::from(block) + count <= u64::from(sb.blocks_count)
        };
        for group in 0..group_count {
            let offset = group as usize * GROUP_DESCRIPTOR_SIZE;
            let descriptor = GroupDescriptor::parse(&table[offset..]);
            let group_blocks =
                (sb.blocks_count - sb.first_data_block - group * sb.blocks_per_group)
                    .min(sb.blocks_per_group);
            if !in_range(descriptor.block_bitmap, 1)
                || !in_range(descriptor.inode_bitmap, 1)
                || !in_range(descriptor.inode_table, table_blocks)
                || u32::from(descriptor.free_blocks) > group_blocks
                || u32::from(descriptor.free_inodes) > sb.inodes_per_group
                || u32::from(descriptor.used_dirs) > sb.inodes_per_group
            {
                return Err(MountError::BadGroupDescriptor { group });
            }
            for (first, count) in [
                (descriptor.block_bitmap, 1),
                (descriptor.inode_bitmap, 1),
                (descriptor.inode_table, table_blocks),
            ] {
                metadata.push((u64::from(first), u64::from(first) + count));
            }
            groups.push(descriptor);
        }
        let unknown_ro = sb.feature_ro_compat & !RO_COMPAT_SUPPORTED;
        let read_only = options.read_only || device.is_read_only() || unknown_ro != 0;
        let cache_blocks = options.cache_bytes / block_size;
        let mut inner = Self {
            device,
            filetype: sb.feature_incompat & INCOMPAT_FILETYPE != 0,
            sb,
            groups,
            cache: BlockCache::new(block_size, cache_blocks, metadata),
            block_size,
            pointers: block_size as u64 / 4,
            read_only,
            metadata_dirty: false,
            held: BTreeMap::new(),
            orphans: BTreeSet::new(),
        };
        let root = inner.read_inode(ROOT_INODE).map_err(|error| match error {
            Error::Io(error) => MountError::Io(error),
            _ => MountError::BadRoot,
        })?;
        if !root.is_dir() || root.links() == 0 {
            return Err(MountError::BadRoot);
        }
        Ok(inner)
    }

    /// Marks the filesystem not cleanly unmounted (on disk at the next sync), as Linux
    /// does on a read-write mount, so that a crash sends the image to fsck.
    pub fn mark_mounted(&mut self) {
        if !self.read_only {
            self.sb.state &= !STATE_VALID;
            self.metadata_dirty = true;
        }
    }

    /// Marks the filesystem cleanly unmounted (the caller syncs after).
    pub fn mark_unmounted(&mut self) {
        if !self.read_only {
            self.sb.state |= STATE_VALID;
            self.metadata_dirty = true;
        }
    }

    pub fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    // ----- blocks and inodes -----

    fn sectors_per_block(&self) -> u32 {
        (self.block_size / SECTOR_SIZE) as u32
    }

    fn check_block(&self, block: u32) -> Result<u64> {
        if block < self.sb.first_data_block.max(1) || block >= self.sb.blocks_count {
            return Err(corrupted(Corruption::BlockOutOfRange(block)));
        }
        Ok(u64::from(block))
    }

    fn read_block(&mut self, block: u32) -> Result<&[u8]> {
        let block = self.check_block(block)?;
        Ok(self.cache.read(&self.device, block)?)
    }

    fn modify_block(&mut self, block: u32) -> Result<&mut [u8]> {
        let block = self.check_block(block)?;
        Ok(self.cache.modify(&self.device, block)?)
    }

    fn group_of_inode(&self, ino: u32) -> u32 {
        (ino - 1) / self.sb.inodes_per_group
    }

    fn group_blocks(&self, group: u32) -> u32 {
        (self.sb.blocks_count - self.sb.first_data_block - group * self.sb.blocks_per_group)
            .min(self.sb.blocks_per_group)
    }

    fn inode_location(&self, ino: u32) -> Result<(u64, usize)> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(corrupted(Corruption::InodeOutOfRange(ino)));
        }
        let index = ino - 1;
        let group = &self.groups[(index / self.sb.inodes_per_group) as usize];
        let byte = u64::from(index % self.sb.inodes_per_group) * u64::from(self.sb.inode_size);
        Ok((
            u64::from(group.inode_table) + byte / self.block_size as u64,
            (byte % self.block_size as u64) as usize,
        ))
    }

    fn read_inode(&mut self, ino: u32) -> Result<Inode> {
        let (block, offset) = self.inode_location(ino)?;
        let size = usize::from(self.sb.inode_size);
        let data = self.cache.read(&self.device, block)?;
        Ok(Inode {
            raw: data[offset..offset + size].to_vec(),
        })
    }

    fn write_inode(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        let (block, offset) = self.inode_location(ino)?;
        let data = self.cache.modify(&self.device, block)?;
        data[offset..offset + inode.raw.len()].copy_from_slice(&inode.raw);
        Ok(())
    }

    /// An inode that a directory entry or the caller names: in range, not reserved
    /// (except the root), not deleted, of a known type.
    fn live_inode(&mut self, ino: u32) -> Result<Inode> {
        if ino != ROOT_INODE && ino < self.sb.first_inode {
            return Err(corrupted(Corruption::InodeOutOfRange(ino)));
        }
        let inode = self.read_inode(ino)?;
        if inode.links() == 0 && !self.orphans.contains(&ino) {
            return Err(corrupted(Corruption::DeletedInode(ino)));
        }
        if file_type_of_mode(inode.mode()) == FileType::Unknown {
            return Err(corrupted(Corruption::BadInode(ino)));
        }
        Ok(inode)
    }

    fn directory(&mut self, ino: u32) -> Result<Inode> {
        let inode = self.live_inode(ino)?;
        if !inode.is_dir() {
            return Err(Error::NotADirectory);
        }
        Ok(inode)
    }

    /// Whether `i_block` holds block pointers (not a fast symlink's text or a device
    /// number).
    fn has_block_map(&self, inode: &Inode) -> bool {
        inode.is_regular() || inode.is_dir() || (inode.is_symlink() && !self.is_fast_symlink(inode))
    }

    fn is_fast_symlink(&self, inode: &Inode) -> bool {
        let acl = if inode.file_acl() != 0 {
            self.sectors_per_block()
        } else {
            0
        };
        inode.is_symlink() && inode.sectors() == acl
    }

    /// The largest file size the block map (and `i_blocks`) can describe.
    fn max_file_size(&self) -> u64 {
        let p = self.pointers;
        let blocks = DIRECT_BLOCKS + p + p * p + p * p * p;
        let by_sectors = (u64::from(u32::MAX) / u64::from(self.sectors_per_block())) * 9 / 10;
        blocks.min(by_sectors) * self.block_size as u64
    }

    fn block_path(&self, logical: u64) -> Result<BlockPath> {
        let p = self.pointers;
        if logical < DIRECT_BLOCKS {
            return Ok(BlockPath {
                root: logical as usize,
                depth: 0,
                indices: [0; 3],
            });
        }
        let mut rest = logical - DIRECT_BLOCKS;
        if rest < p {
            return Ok(BlockPath {
                root: 12,
                depth: 1,
                indices: [rest as usize, 0, 0],
            });
        }
        rest -= p;
        if rest < p * p {
            return Ok(BlockPath {
                root: 13,
                depth: 2,
                indices: [(rest / p) as usize, (rest % p) as usize, 0],
            });
        }
        rest -= p * p;
        if rest < p * p * p {
            return Ok(BlockPath {
                root: 14,
                depth: 3,
                indices: [
                    (rest / (p * p)) as usize,
                    ((rest / p) % p) as usize,
                    (rest % p) as usize,
                ],
            });
        }
        Err(Error::FileTooLarge)
    }

    /// The physical block of `logical`, or `None` for a hole.
    fn map(&mut self, inode: &Inode, logical: u64) -> Result<Option<u32>> {
        let path = self.block_path(logical)?;
        let mut block = inode.block(path.root);
        for &index in &path.indices[..path.depth] {
            if block == 0 {
                return Ok(None);
            }
            block = get32(self.read_block(block)?, index * 4);
        }
        if block == 0 {
            return Ok(None);
        }
        self.check_block(block)?;
        Ok(Some(block))
    }

    /// Counts one more block in `i_blocks`.
    fn charge_block(&self, inode: &mut Inode) -> Result<()> {
        let sectors = inode
            .sectors()
            .checked_add(self.sectors_per_block())
            .ok_or(Error::FileTooLarge)?;
        inode.set_sectors(sectors);
        Ok(())
    }

    fn uncharge_block(&self, inode: &mut Inode) {
        inode.set_sectors(inode.sectors().saturating_sub(self.sectors_per_block()));
    }

    /// The physical block of `logical`, allocating it and any indirect blocks on the
    /// way (zeroed). The inode's pointers and `i_blocks` change in `inode`; the caller
    /// writes it back, also on error.
    fn map_alloc(&mut self, ino: u32, inode: &mut Inode, logical: u64) -> Result<u32> {
        let path = self.block_path(logical)?;
        let goal = self.group_of_inode(ino);
        let mut block = inode.block(path.root);
        if block == 0 {
            self.charge_block(inode)?;
            block = match self.alloc_block(goal) {
                Ok(block) => block,
                Err(error) => {
                    self.uncharge_block(inode);
                    return Err(error);
                }
            };
            self.cache.zeroed(&self.device, u64::from(block))?;
            inode.set_block(path.root, block);
        } else {
            self.check_block(block)?;
        }
        for &index in &path.indices[..path.depth] {
            let child = get32(self.read_block(block)?, index * 4);
            if child == 0 {
                self.charge_block(inode)?;
                let new = match self.alloc_block(goal) {
                    Ok(new) => new,
                    Err(error) => {
                        self.uncharge_block(inode);
                        return Err(error);
                    }
                };
                self.cache.zeroed(&self.device, u64::from(new))?;
                put32(self.modify_block(block)?, index * 4, new);
                block = new;
            } else {
                self.check_block(child)?;
                block = child;
            }
        }
        Ok(block)
    }

    // ----- allocation -----

    fn alloc_block(&mut self, goal: u32) -> Result<u32> {
        let count = self.groups.len() as u32;
        for step in 0..count {
            let group = (goal + step) % count;
            if self.groups[group as usize].free_blocks == 0 {
                continue;
            }
            let bitmap = u64::from(self.groups[group as usize].block_bitmap);
            let bits = self.group_blocks(group) as usize;
            let found = find_zero_bit(self.cache.read(&self.device, bitmap)?, 0, bits);
            let Some(bit) = found else { continue };
            let block = self.sb.first_data_block + group * self.sb.blocks_per_group + bit as u32;
            self.check_block(block)?;
            self.cache.modify(&self.device, bitmap)?[bit / 8] |= 1 << (bit % 8);
            self.groups[group as usize].free_blocks -= 1;
            self.sb.free_blocks = self.sb.free_blocks.saturating_sub(1);
            self.metadata_dirty = true;
            return Ok(block);
        }
        Err(Error::NoSpace)
    }

    fn free_block(&mut self, block: u32) -> Result<()> {
        self.check_block(block)?;
        let relative = block - self.sb.first_data_block;
        let group = (relative / self.sb.blocks_per_group) as usize;
        let bit = (relative % self.sb.blocks_per_group) as usize;
        let bitmap = u64::from(self.groups[group].block_bitmap);
        let data = self.cache.read(&self.device, bitmap)?;
        if data[bit / 8] & (1 << (bit % 8)) == 0 {
            return Err(corrupted(Corruption::DoubleFree));
        }
        self.cache.modify(&self.device, bitmap)?[bit / 8] &= !(1 << (bit % 8));
        let descriptor = &mut self.groups[group];
        descriptor.free_blocks = descriptor.free_blocks.saturating_add(1);
        self.sb.free_blocks = self.sb.free_blocks.saturating_add(1);
        self.metadata_dirty = true;
        Ok(())
    }

    fn alloc_inode(&mut self, parent_group: u32, directory: bool) -> Result<u32> {
        let count = self.groups.len() as u32;
        // Directories spread out (the group with most free inodes), files stay near
        // their directory.
        let start = if directory {
            (0..count)
                .max_by_key(|&group| (self.groups[group as usize].free_inodes, u32::MAX - group))
                .unwrap_or(0)
        } else {
            parent_group
        };
        for step in 0..count {
            let group = (start + step) % count;
            if self.groups[group as usize].free_inodes == 0 {
                continue;
            }
            let base = group * self.sb.inodes_per_group;
            let first = (self.sb.first_inode - 1).saturating_sub(base) as usize;
            let bitmap = u64::from(self.groups[group as usize].inode_bitmap);
            let bits = self.sb.inodes_per_group as usize;
            let found = find_zero_bit(self.cache.read(&self.device, bitmap)?, first, bits);
            let Some(bit) = found else { continue };
            self.cache.modify(&self.device, bitmap)?[bit / 8] |= 1 << (bit % 8);
            let descriptor = &mut self.groups[group as usize];
            descriptor.free_inodes -= 1;
            if directory {
                descriptor.used_dirs = descriptor.used_dirs.saturating_add(1);
            }
            self.sb.free_inodes = self.sb.free_inodes.saturating_sub(1);
            self.metadata_dirty = true;
            return Ok(base + bit as u32 + 1);
        }
        Err(Error::NoSpace)
    }

    fn free_inode(&mut self, ino: u32, directory: bool) -> Result<()> {
        self.inode_location(ino)?;
        let group = self.group_of_inode(ino) as usize;
        let bit = ((ino - 1) % self.sb.inodes_per_group) as usize;
        let bitmap = u64::from(self.groups[group].inode_bitmap);
        if self.cache.read(&self.device, bitmap)?[bit / 8] & (1 << (bit % 8)) == 0 {
            return Err(corrupted(Corruption::DoubleFree));
        }
        self.cache.modify(&self.device, bitmap)?[bit / 8] &= !(1 << (bit % 8));
        let descriptor = &mut self.groups[group];
        descriptor.free_inodes = descriptor.free_inodes.saturating_add(1);
        if directory {
            descriptor.used_dirs = descriptor.used_dirs.saturating_sub(1);
        }
        self.sb.free_inodes = self.sb.free_inodes.saturating_add(1);
        self.metadata_dirty = true;
        Ok(())
    }

    fn block_pointers(&mut self, block: u32) -> Result<Vec<u32>> {
        let data = self.read_block(block)?;
        Ok(data.chunks_exact(4).map(|word| get32(word, 0)).collect())
    }

    /// Frees `block` and, for `level > 0`, everything it points at.
    fn free_tree(&mut self, block: u32, level: u32, inode: &mut Inode) -> Result<()> {
        if level > 0 {
            for child in self.block_pointers(block)? {
                if child != 0 {
                    self.free_tree(child, level - 1, inode)?;
                }
            }
        }
        self.free_block(block)?;
        self.uncharge_block(inode);
        Ok(())
    }

    /// Frees the blocks of the indirect tree at `block` (`level` 1..=3) from logical
    /// block `keep` (relative to the tree) on; returns whether the tree is now empty.
    fn truncate_tree(
        &mut self,
        block: u32,
        level: u32,
        keep: u64,
        inode: &mut Inode,
    ) -> Result<bool> {
        let child_span = self.pointers.pow(level - 1);
        let pointers = self.block_pointers(block)?;
        let mut cleared = Vec::new();
        let mut empty = true;
        for (index, &child) in pointers.iter().enumerate() {
            if child == 0 {
                continue;
            }
            let start = index as u64 * child_span;
            if start >= keep {
                self.free_tree(child, level - 1, inode)?;
                cleared.push(index);
            } else if level > 1 && keep < start + child_span {
                if self.truncate_tree(child, level - 1, keep - start, inode)? {
                    self.free_block(child)?;
                    self.uncharge_block(inode);
                    cleared.push(index);
                } else {
                    empty = false;
                }
            } else {
                empty = false;
            }
        }
        if !cleared.is_empty() {
            let data = self.modify_block(block)?;
            for index in cleared {
                put32(data, index * 4, 0);
            }
        }
        Ok(empty)
    }

    /// Frees every block from logical block `keep` on.
    fn truncate_blocks(&mut self, inode: &mut Inode, keep: u64) -> Result<()> {
        for index in keep.min(DIRECT_BLOCKS)..DIRECT_BLOCKS {
            let block = inode.block(index as usize);
            if block != 0 {
                self.free_tree(block, 0, inode)?;
                inode.set_block(index as usize, 0);
            }
        }
        let mut base = DIRECT_BLOCKS;
        let mut span = self.pointers;
        for level in 1..=3u32 {
            let root = 11 + level as usize;
            let block = inode.block(root);
            if block != 0 {
                if keep <= base {
                    self.free_tree(block, level, inode)?;
                    inode.set_block(root, 0);
                } else if keep < base + span
                    && self.truncate_tree(block, level, keep - base, inode)?
                {
                    self.free_block(block)?;
                    self.uncharge_block(inode);
                    inode.set_block(root, 0);
                }
            }
            base += span;
            span *= self.pointers;
        }
        Ok(())
    }

    /// Frees an inode whose links count reached 0: its blocks, its extended-attribute
    /// block (or one reference to it), and its bitmap bit.
    fn release_inode(&mut self, ino: u32, mut inode: Inode, now: u32) -> Result<()> {
        let directory = inode.is_dir();
        if self.has_block_map(&inode) {
            self.truncate_blocks(&mut inode, 0)?;
        } else if inode.is_symlink() {
            inode.block_bytes_mut().fill(0);
        }
        let acl = inode.file_acl();
        if acl != 0 {
            let block = self.check_block(acl)?;
            let data = self.cache.read(&self.device, block)?;
            let references = get32(data, 4);
            if get32(data, 0) == XATTR_MAGIC && references > 1 {
                put32(self.cache.modify(&self.device, block)?, 4, references - 1);
            } else {
                self.free_block(acl)?;
            }
            self.uncharge_block(&mut inode);
            inode.set_file_acl(0);
        }
        inode.set_size(0);
        inode.set_links(0);
        inode.set_dtime(now.max(1));
        self.write_inode(ino, &inode)?;
        self.free_inode(ino, directory)
    }

    // ----- file data -----

    fn read_data(&mut self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = inode.size();
        if offset >= size {
            return Ok(0);
        }
        let total = buf
            .len()
            .min((size - offset).min(usize::MAX as u64) as usize);
        let block_size = self.block_size as u64;
        let mut done = 0;
        while done < total {
            let position = offset + done as u64;
            let within = (position % block_size) as usize;
            let count = (self.block_size - within).min(total - done);
            let target = &mut buf[done..done + count];
            match self.map(inode, position / block_size)? {
                None => target.fill(0),
                Some(block) => {
                    target.copy_from_slice(&self.read_block(block)?[within..within + count])
                }
            }
            done += count;
        }
        Ok(total)
    }

    fn write_data(
        &mut self,
        ino: u32,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
        now: u32,
    ) -> Result<usize> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Error::FileTooLarge)?;
        if end > self.max_file_size() {
            return Err(Error::FileTooLarge);
        }
        let block_size = self.block_size as u64;
        let mut done = 0;
        let mut failure = None;
        while done < data.len() {
            let position = offset + done as u64;
            let within = (position % block_size) as usize;
            let count = (self.block_size - within).min(data.len() - done);
            match self.map_alloc(ino, inode, position / block_size) {
                Ok(block) => {
                    self.modify_block(block)?[within..within + count]
                        .copy_from_slice(&data[done..done + count]);
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
            done += count;
        }
        let new_end = offset + done as u64;
        if new_end > inode.size() {
            inode.set_size(new_end);
            if new_end > i32::MAX as u64 && self.sb.feature_ro_compat & RO_COMPAT_LARGE_FILE == 0 {
                self.sb.feature_ro_compat |= RO_COMPAT_LARGE_FILE;
                self.metadata_dirty = true;
            }
        }
        if done > 0 {
            inode.set_mtime(now);
            inode.set_ctime(now);
        }
        self.write_inode(ino, inode)?;
        match failure {
            Some(error) if done == 0 => Err(error),
            _ => Ok(done),
        }
    }

    // ----- directories -----

    /// Visits every record of directory `dir` (free ones too) until `visit` returns
    /// `Some`. Every record is checked before it is visited.
    fn scan_dir<T>(
        &mut self,
        ino: u32,
        dir: &Inode,
        mut visit: impl FnMut(&Slot, &[u8]) -> Option<T>,
    ) -> Result<Option<T>> {
        let size = dir.size();
        let block_size = self.block_size;
        if !size.is_multiple_of(block_size as u64)
            || size / block_size as u64 > u64::from(self.sb.blocks_count)
        {
            return Err(corrupted(Corruption::BadDirectory(ino)));
        }
        for logical in 0..size / block_size as u64 {
            let Some(block) = self.map(dir, logical)? else {
                return Err(corrupted(Corruption::BadDirectory(ino)));
            };
            let data = self.read_block(block)?.to_vec();
            let mut offset = 0;
            let mut previous = None;
            while offset < block_size {
                let bad = corrupted(Corruption::BadDirectoryEntry {
                    directory: ino,
                    block: logical,
                    offset,
                });
                if offset + 8 > block_size {
                    return Err(bad);
                }
                let inode = get32(&data, offset);
                let rec_len = usize::from(get16(&data, offset + 4));
                let name_len = usize::from(data[offset + 6]);
                let file_type = if self.filetype { data[offset + 7] } else { 0 };
                if rec_len < 8
                    || !rec_len.is_multiple_of(4)
                    || offset + rec_len > block_size
                    || (inode != 0 && (8 + name_len > rec_len || name_len == 0))
                    || (inode != 0 && !self.filetype && data[offset + 7] != 0)
                {
                    return Err(bad);
                }
                let slot = Slot {
                    block: u64::from(block),
                    offset,
                    rec_len,
                    previous,
                    inode,
                    name_len: if inode == 0 { 0 } else { name_len },
                    file_type,
                };
                let name = &data[offset + 8..offset + 8 + slot.name_len];
                if let Some(found) = visit(&slot, name) {
                    return Ok(Some(found));
                }
                previous = Some(offset);
                offset += rec_len;
            }
        }
        Ok(None)
    }

    fn find_entry(&mut self, ino: u32, dir: &Inode, name: &[u8]) -> Result<Option<Slot>> {
        self.scan_dir(ino, dir, |slot, entry_name| {
            (slot.inode != 0 && entry_name == name).then_some(*slot)
        })
    }

    /// The inode `name` names in directory `ino`, checked to be in range.
    fn lookup_in(&mut self, ino: u32, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
        match self.find_entry(ino, dir, name)? {
            None => Ok(None),
            Some(slot) => {
                if slot.inode > self.sb.inodes_count
                    || (slot.inode != ROOT_INODE && slot.inode < self.sb.first_inode)
                {
                    return Err(corrupted(Corruption::InodeOutOfRange(slot.inode)));
                }
                Ok(Some(slot.inode))
            }
        }
    }

    /// Marks directory `dir` changed: times, and its htree index (if any) dropped.
    fn touch_dir(dir: &mut Inode, now: u32) {
        dir.set_flags(dir.flags() & !INODE_INDEX_FLAG);
        dir.set_mtime(now);
        dir.set_ctime(now);
    }

    fn add_entry(
        &mut self,
        ino: u32,
        name: &[u8],
        child: u32,
        file_type: u8,
        now: u32,
    ) -> Result<()> {
        let mut dir = self.directory(ino)?;
        let need = record_len(name.len());
        let space = self.scan_dir(ino, &dir, |slot, _| {
            (slot.rec_len - slot.used() >= need).then_some(*slot)
        })?;
        let result = match space {
            Some(slot) => {
                let used = slot.used();
                if used == 0 {
                    self.write_record_at(
                        slot.block,
                        slot.offset,
                        slot.rec_len,
                        child,
                        name,
                        file_type,
                    )
                } else {
                    put16(
                        self.cache.modify(&self.device, slot.block)?,
                        slot.offset + 4,
                        used as u16,
                    );
                    self.write_record_at(
                        slot.block,
                        slot.offset + used,
                        slot.rec_len - used,
                        child,
                        name,
                        file_type,
                    )
                }
            }
            None => {
                let logical = dir.size() / self.block_size as u64;
                match self.map_alloc(ino, &mut dir, logical) {
                    Ok(block) => {
                        dir.set_size(dir.size() + self.block_size as u64);
                        self.write_record_at(
                            u64::from(block),
                            0,
                            self.block_size,
                            child,
                            name,
                            file_type,
                        )
                    }
                    Err(error) => Err(error),
                }
            }
        };
        if result.is_ok() {
            Self::touch_dir(&mut dir, now);
        }
        self.write_inode(ino, &dir)?;
        result
    }

    fn write_record_at(
        &mut self,
        block: u64,
        offset: usize,
        rec_len: usize,
        child: u32,
        name: &[u8],
        file_type: u8,
    ) -> Result<()> {
        let filetype = self.filetype;
        let data = self.cache.modify(&self.device, block)?;
        put32(data, offset, child);
        put16(data, offset + 4, rec_len as u16);
        data[offset + 6] = name.len() as u8;
        data[offset + 7] = if filetype { file_type } else { 0 };
        data[offset + 8..offset + 8 + name.len()].copy_from_slice(name);
        Ok(())
    }

    /// Removes `name` from directory `ino` (merging its record into the previous one).
    fn remove_entry(&mut self, ino: u32, name: &[u8], now: u32) -> Result<()> {
        let mut dir = self.directory(ino)?;
        let slot = self.find_entry(ino, &dir, name)?.ok_or(Error::NotFound)?;
        let data = self.cache.modify(&self.device, slot.block)?;
        match slot.previous {
            Some(previous) => {
                let merged = usize::from(get16(data, previous + 4)) + slot.rec_len;
                put16(data, previous + 4, merged as u16);
            }
            None => put32(data, slot.offset, 0),
        }
        Self::touch_dir(&mut dir, now);
        self.write_inode(ino, &dir)
    }

    /// Points the existing entry `name` of directory `ino` at `child`.
    fn replace_entry(
        &mut self,
        ino: u32,
        name: &[u8],
        child: u32,
        file_type: u8,
        now: u32,
    ) -> Result<()> {
        let mut dir = self.directory(ino)?;
        let slot = self.find_entry(ino, &dir, name)?.ok_or(Error::NotFound)?;
        let filetype = self.filetype;
        let data = self.cache.modify(&self.device, slot.block)?;
        put32(data, slot.offset, child);
        if filetype {
            data[slot.offset + 7] = file_type;
        }
        Self::touch_dir(&mut dir, now);
        self.write_inode(ino, &dir)
    }

    fn is_empty_dir(&mut self, ino: u32, dir: &Inode) -> Result<bool> {
        let other = self.scan_dir(ino, dir, |slot, name| {
            (slot.inode != 0 && name != b"." && name != b"..").then_some(())
        })?;
        Ok(other.is_none())
    }

    fn adjust_links(&mut self, ino: u32, delta: i32, now: u32) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        let links = (i32::from(inode.links()) + delta).clamp(0, i32::from(u16::MAX)) as u16;
        inode.set_links(links);
        inode.set_ctime(now);
        self.write_inode(ino, &inode)
    }

    /// A new inode of `mode` for an entry `name` in `parent`: checked and allocated,
    /// not yet written nor linked.
    fn new_inode(&mut self, parent: u32, name: &[u8], mode: u16, now: u32) -> Result<(u32, Inode)> {
        self.writable()?;
        check_new_name(name)?;
        let dir = self.directory(parent)?;
        if self.lookup_in(parent, &dir, name)?.is_some() {
            return Err(Error::Exists);
        }
        let directory = mode & MODE_TYPE_MASK == MODE_DIR;
        if directory && dir.links() >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let ino = self.alloc_inode(self.group_of_inode(parent), directory)?;
        let mut inode = Inode {
            raw: vec![0; usize::from(self.sb.inode_size)],
        };
        inode.set_mode(mode);
        inode.set_atime(now);
        inode.set_ctime(now);
        inode.set_mtime(now);
        inode.set_links(if directory { 2 } else { 1 });
        if inode.raw.len() >= 160 {
            // i_extra_isize: the fixed part of the large inode, as libext2fs writes it.
            put16(&mut inode.raw, 128, 32);
        }
        Ok((ino, inode))
    }

    /// Undoes [`new_inode`](Self::new_inode) after a later step failed.
    fn abandon_inode(&mut self, ino: u32, mut inode: Inode, now: u32) -> Result<()> {
        if self.has_block_map(&inode) {
            self.truncate_blocks(&mut inode, 0)?;
        }
        let directory = inode.is_dir();
        inode.set_links(0);
        inode.set_dtime(now.max(1));
        self.write_inode(ino, &inode)?;
        self.free_inode(ino, directory)
    }

    // ----- operations -----

    pub fn lookup(&mut self, dir: u32, name: &[u8]) -> Result<u32> {
        check_name(name)?;
        let inode = self.directory(dir)?;
        self.lookup_in(dir, &inode, name)?.ok_or(Error::NotFound)
    }

    pub fn stat(&mut self, ino: u32) -> Result<Metadata> {
        let inode = self.live_inode(ino)?;
        let kind = file_type_of_mode(inode.mode());
        Ok(Metadata {
            inode: InodeNumber(ino),
            file_type: kind,
            mode: inode.mode(),
            uid: inode.uid(),
            gid: inode.gid(),
            size: inode.size(),
            links: inode.links(),
            sectors: inode.sectors(),
            atime: inode.atime(),
            mtime: inode.mtime(),
            ctime: inode.ctime(),
            block_size: self.block_size as u32,
            device: if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
                inode.device_number()
            } else {
                0
            },
        })
    }

    pub fn read_at(&mut self, ino: u32, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.live_inode(ino)?;
        if inode.is_dir() {
            return Err(Error::IsADirectory);
        }
        if !inode.is_regular() {
            return Err(Error::InvalidArgument);
        }
        self.read_data(&inode, offset, buf)
    }

    pub fn write_at(&mut self, ino: u32, offset: u64, data: &[u8], now: u32) -> Result<usize> {
        self.writable()?;
        let mut inode = self.live_inode(ino)?;
        if inode.is_dir() {
            return Err(Error::IsADirectory);
        }
        if !inode.is_regular() {
            return Err(Error::InvalidArgument);
        }
        if data.is_empty() {
            return Ok(0);
        }
        self.write_data(ino, &mut inode, offset, data, now)
    }

    pub fn truncate(&mut self, ino: u32, size: u64, now: u32) -> Result<()> {
        self.writable()?;
        let mut inode = self.live_inode(ino)?;
        if inode.is_dir() {
            return Err(Error::IsADirectory);
        }
        if !inode.is_regular() {
            return Err(Error::InvalidArgument);
        }
        if size > self.max_file_size() {
            return Err(Error::FileTooLarge);
        }
        let block_size = self.block_size as u64;
        if size < inode.size() {
            self.truncate_blocks(&mut inode, size.div_ceil(block_size))?;
            let within = (size % block_size) as usize;
            if within != 0
                && let Some(block) = self.map(&inode, size / block_size)?
            {
                self.modify_block(block)?[within..].fill(0);
            }
        }
        inode.set_size(size);
        if size > i32::MAX as u64 && self.sb.feature_ro_compat & RO_COMPAT_LARGE_FILE == 0 {
            self.sb.feature_ro_compat |= RO_COMPAT_LARGE_FILE;
            self.metadata_dirty = true;
        }
        inode.set_mtime(now);
        inode.set_ctime(now);
        self.write_inode(ino, &inode)
    }

    pub fn create(&mut self, parent: u32, name: &[u8], permissions: u16, now: u32) -> Result<u32> {
        let (ino, inode) =
            self.new_inode(parent, name, MODE_REGULAR | (permissions & 0o7777), now)?;
        self.write_inode(ino, &inode)?;
        if let Err(error) = self.add_entry(parent, name, ino, 1, now) {
            self.abandon_inode(ino, inode, now)?;
            return Err(error);
        }
        Ok(ino)
    }

    pub fn mkdir(&mut self, parent: u32, name: &[u8], permissions: u16, now: u32) -> Result<u32> {
        let (ino, mut inode) =
            self.new_inode(parent, name, MODE_DIR | (permissions & 0o7777), now)?;
        let block = match self.map_alloc(ino, &mut inode, 0) {
            Ok(block) => block,
            Err(error) => {
                self.abandon_inode(ino, inode, now)?;
                return Err(error);
            }
        };
        inode.set_size(self.block_size as u64);
        self.write_record_at(u64::from(block), 0, 12, ino, b".", 2)?;
        self.write_record_at(u64::from(block), 12, self.block_size - 12, parent, b"..", 2)?;
        self.write_inode(ino, &inode)?;
        if let Err(error) = self.add_entry(parent, name, ino, 2, now) {
            self.abandon_inode(ino, inode, now)?;
            return Err(error);
        }
        self.adjust_links(parent, 1, now)?;
        Ok(ino)
    }

    pub fn symlink(&mut self, parent: u32, name: &[u8], target: &[u8], now: u32) -> Result<u32> {
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        if target.len() >= self.block_size || target.len() > 4095 {
            return Err(Error::NameTooLong);
        }
        let (ino, mut inode) = self.new_inode(parent, name, MODE_SYMLINK | 0o777, now)?;
        inode.set_size(target.len() as u64);
        if target.len() < 60 {
            inode.block_bytes_mut()[..target.len()].copy_from_slice(target);
        } else {
            match self.map_alloc(ino, &mut inode, 0) {
                Ok(block) => self.modify_block(block)?[..target.len()].copy_from_slice(target),
                Err(error) => {
                    self.abandon_inode(ino, inode, now)?;
                    return Err(error);
                }
            }
        }
        self.write_inode(ino, &inode)?;
        if let Err(error) = self.add_entry(parent, name, ino, 7, now) {
            self.abandon_inode(ino, inode, now)?;
            return Err(error);
        }
        Ok(ino)
    }

    pub fn readlink(&mut self, ino: u32) -> Result<Vec<u8>> {
        let inode = self.live_inode(ino)?;
        if !inode.is_symlink() {
            return Err(Error::InvalidArgument);
        }
        let size = inode.size();
        if self.is_fast_symlink(&inode) {
            if size > 60 {
                return Err(corrupted(Corruption::BadInode(ino)));
            }
            return Ok(inode.block_bytes()[..size as usize].to_vec());
        }
        if size >= self.block_size as u64 {
            return Err(corrupted(Corruption::BadInode(ino)));
        }
        let block = self
            .map(&inode, 0)?
            .ok_or(corrupted(Corruption::BadInode(ino)))?;
        Ok(self.read_block(block)?[..size as usize].to_vec())
    }

    pub fn link(&mut self, ino: u32, parent: u32, name: &[u8], now: u32) -> Result<()> {
        self.writable()?;
        check_new_name(name)?;
        let mut inode = self.live_inode(ino)?;
        if inode.is_dir() {
            return Err(Error::NotPermitted);
        }
        if inode.links() == 0 {
            // Open but unlinked: as Linux, no new name for it.
            return Err(Error::NotFound);
        }
        if inode.links() >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let dir = self.directory(parent)?;
        if self.lookup_in(parent, &dir, name)?.is_some() {
            return Err(Error::Exists);
        }
        self.add_entry(parent, name, ino, entry_type(inode.mode()), now)?;
        inode.set_links(inode.links() + 1);
        inode.set_ctime(now);
        self.write_inode(ino, &inode)
    }

    /// Drops one link of `ino` (all of a directory's), freeing it at 0, unless it is a
    /// held non-directory: that becomes an orphan, freed at its last release.
    fn drop_link(&mut self, ino: u32, now: u32) -> Result<()> {
        let mut inode = self.read_inode(ino)?;
        let links = if inode.is_dir() {
            0
        } else {
            inode.links().saturating_sub(1)
        };
        if links == 0 {
            if !inode.is_dir() && self.held.contains_key(&ino) {
                inode.set_links(0);
                inode.set_ctime(now);
                self.orphans.insert(ino);
                return self.write_inode(ino, &inode);
            }
            return self.release_inode(ino, inode, now);
        }
        inode.set_links(links);
        inode.set_ctime(now);
        self.write_inode(ino, &inode)
    }

    pub fn unlink(&mut self, parent: u32, name: &[u8], now: u32) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        if name == b"." || name == b".." {
            return Err(Error::IsADirectory);
        }
        let child = self.lookup(parent, name)?;
        if self.live_inode(child)?.is_dir() {
            return Err(Error::IsADirectory);
        }
        self.remove_entry(parent, name, now)?;
        self.drop_link(child, now)
    }

    pub fn rmdir(&mut self, parent: u32, name: &[u8], now: u32) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        if name == b"." {
            return Err(Error::InvalidArgument);
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        let child = self.lookup(parent, name)?;
        let inode = self.live_inode(child)?;
        if !inode.is_dir() {
            return Err(Error::NotADirectory);
        }
        if !self.is_empty_dir(child, &inode)? {
            return Err(Error::NotEmpty);
        }
        self.remove_entry(parent, name, now)?;
        self.adjust_links(parent, -1, now)?;
        self.drop_link(child, now)
    }

    pub fn rename(
        &mut self,
        from_dir: u32,
        from_name: &[u8],
        to_dir: u32,
        to_name: &[u8],
        now: u32,
    ) -> Result<()> {
        self.writable()?;
        check_name(from_name)?;
        check_name(to_name)?;
        for name in [from_name, to_name] {
            if name == b"." || name == b".." {
                return Err(Error::InvalidArgument);
            }
        }
        let child = self.lookup(from_dir, from_name)?;
        let mut child_inode = self.live_inode(child)?;
        let to_inode = self.directory(to_dir)?;
        let existing = self.lookup_in(to_dir, &to_inode, to_name)?;
        if existing == Some(child) {
            return Ok(());
        }
        let moving_dir = child_inode.is_dir();
        if let Some(existing) = existing {
            let existing_inode = self.live_inode(existing)?;
            if moving_dir {
                if !existing_inode.is_dir() {
                    return Err(Error::NotADirectory);
                }
                if !self.is_empty_dir(existing, &existing_inode)? {
                    return Err(Error::NotEmpty);
                }
            } else if existing_inode.is_dir() {
                return Err(Error::IsADirectory);
            }
        }
        if moving_dir && from_dir != to_dir {
            // The target directory must not be the moved one or inside it.
            let mut current = to_dir;
            for _ in 0..=self.sb.inodes_count {
                if current == child {
                    return Err(Error::InvalidArgument);
                }
                if current == ROOT_INODE {
                    break;
                }
                current = self.lookup(current, b"..")?;
            }
            if existing.is_none() && to_inode.links() >= LINK_MAX {
                return Err(Error::TooManyLinks);
            }
        }
        let file_type = entry_type(child_inode.mode());
        match existing {
            Some(existing) => {
                let existing_dir = self.read_inode(existing)?.is_dir();
                self.replace_entry(to_dir, to_name, child, file_type, now)?;
                self.drop_link(existing, now)?;
                if existing_dir {
                    self.adjust_links(to_dir, -1, now)?;
                }
            }
            None => self.add_entry(to_dir, to_name, child, file_type, now)?,
        }
        self.remove_entry(from_dir, from_name, now)?;
        if moving_dir && from_dir != to_dir {
            let slot = self
                .find_entry(child, &child_inode, b"..")?
                .ok_or(corrupted(Corruption::BadDirectory(child)))?;
            put32(
                self.cache.modify(&self.device, slot.block)?,
                slot.offset,
                to_dir,
            );
            Self::touch_dir(&mut child_inode, now);
            self.adjust_links(from_dir, -1, now)?;
            self.adjust_links(to_dir, 1, now)?;
        }
        child_inode.set_ctime(now);
        self.write_inode(child, &child_inode)
    }

    /// Sets the access and/or modification time (`None`: leave it) and the change time
    /// to `now`. ext2 keeps whole seconds: where the inode has the ext4 extra time
    /// fields, those of the times set are zeroed, so that no stale nanoseconds stay.
    pub fn set_times(
        &mut self,
        ino: u32,
        atime: Option<u32>,
        mtime: Option<u32>,
        now: u32,
    ) -> Result<()> {
        self.writable()?;
        let mut inode = self.live_inode(ino)?;
        // i_ctime_extra, i_mtime_extra, i_atime_extra.
        let mut extra = vec![132];
        if let Some(atime) = atime {
            inode.set_atime(atime);
            extra.push(140);
        }
        if let Some(mtime) = mtime {
            inode.set_mtime(mtime);
            extra.push(136);
        }
        inode.set_ctime(now);
        if inode.raw.len() > GOOD_OLD_INODE_SIZE {
            let extra_size = usize::from(get16(&inode.raw, GOOD_OLD_INODE_SIZE));
            for offset in extra {
                if offset + 4 <= GOOD_OLD_INODE_SIZE + extra_size && offset + 4 <= inode.raw.len() {
                    put32(&mut inode.raw, offset, 0);
                }
            }
        }
        self.write_inode(ino, &inode)
    }

    pub fn readdir(&mut self, ino: u32) -> Result<Vec<DirEntry>> {
        let dir = self.directory(ino)?;
        let mut entries = Vec::new();
        let filetype = self.filetype;
        self.scan_dir(ino, &dir, |slot, name| {
            if slot.inode != 0 {
                entries.push((slot.inode, name.to_vec(), slot.file_type));
            }
            None::<()>
        })?;
        let mut listing = Vec::with_capacity(entries.len());
        for (child, name, code) in entries {
            if child > self.sb.inodes_count {
                return Err(corrupted(Corruption::InodeOutOfRange(child)));
            }
            let file_type = if filetype {
                file_type_of_entry(code)
            } else {
                file_type_of_mode(self.read_inode(child)?.mode())
            };
            listing.push(DirEntry {
                inode: InodeNumber(child),
                name,
                file_type,
            });
        }
        Ok(listing)
    }

    pub fn statfs(&self) -> StatFs {
        StatFs {
            block_size: self.block_size as u32,
            blocks: u64::from(self.sb.blocks_count),
            free_blocks: u64::from(self.sb.free_blocks),
            available_blocks: u64::from(
                self.sb.free_blocks.saturating_sub(self.sb.reserved_blocks),
            ),
            inodes: u64::from(self.sb.inodes_count),
            free_inodes: u64::from(self.sb.free_inodes),
            name_max: 255,
        }
    }

    /// Counts one more hold of `ino` (an open vnode of the layer above).
    pub fn hold(&mut self, ino: u32) {
        *self.held.entry(ino).or_default() += 1;
    }

    /// Drops one hold of `ino`; at the last, frees it if it is an orphan.
    pub fn release(&mut self, ino: u32, now: u32) -> Result<()> {
        match self.held.get_mut(&ino) {
            None => return Ok(()),
            Some(count) if *count > 1 => {
                *count -= 1;
                return Ok(());
            }
            Some(_) => {
                self.held.remove(&ino);
            }
        }
        self.free_orphan(ino, now)
    }

    /// Frees orphan `ino` (nothing if it is not one); on failure it stays an orphan.
    fn free_orphan(&mut self, ino: u32, now: u32) -> Result<()> {
        if !self.orphans.remove(&ino) {
            return Ok(());
        }
        let result = self
            .read_inode(ino)
            .and_then(|inode| self.release_inode(ino, inode, now));
        if result.is_err() {
            self.orphans.insert(ino);
        }
        result
    }

    /// Frees every orphan, held or not (at unmount).
    pub fn free_orphans(&mut self, now: u32) -> Result<()> {
        let orphans: Vec<u32> = self.orphans.iter().copied().collect();
        for ino in orphans {
            self.free_orphan(ino, now)?;
        }
        Ok(())
    }

    /// Orphans: unlinked inodes kept because they are held.
    pub fn orphan_count(&self) -> usize {
        self.orphans.len()
    }

    /// Writes the superblock and group descriptors into the cache, then every dirty
    /// block to the device (see [`BlockCache::write_back`]).
    pub fn sync(&mut self, now: u32) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.metadata_dirty {
            if now != 0 {
                self.sb.write_time = now;
            }
            let raw = self.sb.serialize();
            let block = SUPERBLOCK_OFFSET / self.block_size as u64;
            let offset = (SUPERBLOCK_OFFSET % self.block_size as u64) as usize;
            self.cache.modify(&self.device, block)?[offset..offset + SUPERBLOCK_SIZE]
                .copy_from_slice(&raw);
            let first = u64::from(self.sb.first_data_block) + 1;
            for (index, group) in self.groups.iter().enumerate() {
                let byte = index * GROUP_DESCRIPTOR_SIZE;
                let block = first + (byte / self.block_size) as u64;
                let offset = byte % self.block_size;
                self.cache.modify(&self.device, block)?[offset..offset + GROUP_DESCRIPTOR_SIZE]
                    .copy_from_slice(&group.serialize());
            }
            self.metadata_dirty = false;
        }
        self.cache.write_back(&self.device)?;
        Ok(())
    }
}
