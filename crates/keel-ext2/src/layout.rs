//! The on-disk structures: superblock, group descriptor and inode views over their
//! raw little-endian bytes (unknown fields are kept as they were read).

use alloc::vec::Vec;

/// Byte offset of the primary superblock.
pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock.
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;
/// `s_magic`.
pub(crate) const MAGIC: u16 = 0xEF53;
/// Bytes of a group descriptor (no 64bit feature).
pub(crate) const GROUP_DESCRIPTOR_SIZE: usize = 32;
/// The root directory's inode.
pub(crate) const ROOT_INODE: u32 = 2;
/// Inode size in revision 0.
pub(crate) const GOOD_OLD_INODE_SIZE: usize = 128;
/// First non-reserved inode in revision 0.
pub(crate) const GOOD_OLD_FIRST_INODE: u32 = 11;
/// Direct block pointers in `i_block`.
pub(crate) const DIRECT_BLOCKS: u64 = 12;
/// Largest links count (Linux's EXT2_LINK_MAX).
pub(crate) const LINK_MAX: u16 = 32000;

/// INCOMPAT features implemented: filetype.
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE;
/// RO_COMPAT features implemented: sparse_super, large_file.
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(crate) const RO_COMPAT_SUPPORTED: u32 = 0x1 | RO_COMPAT_LARGE_FILE;

/// Inode flag: the directory has an htree index (dir_index), cleared when Keel changes
/// the directory, as Linux's ext2 does, so the stale index is not trusted.
pub(crate) const INODE_INDEX_FLAG: u32 = 0x1000;

pub(crate) const MODE_TYPE_MASK: u16 = 0o170000;
pub(crate) const MODE_FIFO: u16 = 0o010000;
pub(crate) const MODE_CHAR: u16 = 0o020000;
pub(crate) const MODE_DIR: u16 = 0o040000;
pub(crate) const MODE_BLOCK: u16 = 0o060000;
pub(crate) const MODE_REGULAR: u16 = 0o100000;
pub(crate) const MODE_SYMLINK: u16 = 0o120000;
pub(crate) const MODE_SOCKET: u16 = 0o140000;

pub(crate) fn get16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

pub(crate) fn get32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

pub(crate) fn put16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

/// The superblock's fields Keel uses, parsed once at mount; `raw` keeps the rest.
#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    pub raw: Vec<u8>,
    pub inodes_count: u32,
    pub blocks_count: u32,
    pub reserved_blocks: u32,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub first_data_block: u32,
    pub log_block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub magic: u16,
    pub state: u16,
    pub rev_level: u32,
    pub first_inode: u32,
    pub inode_size: u16,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub write_time: u32,
}

impl Superblock {
    pub fn parse(raw: &[u8]) -> Self {
        let rev_level = get32(raw, 76);
        Self {
            raw: raw.to_vec(),
            inodes_count: get32(raw, 0),
            blocks_count: get32(raw, 4),
            reserved_blocks: get32(raw, 8),
            free_blocks: get32(raw, 12),
            free_inodes: get32(raw, 16),
            first_data_block: get32(raw, 20),
            log_block_size: get32(raw, 24),
            blocks_per_group: get32(raw, 32),
            inodes_per_group: get32(raw, 40),
            write_time: get32(raw, 48),
            magic: get16(raw, 56),
            state: get16(raw, 58),
            rev_level,
            first_inode: if rev_level == 0 {
                GOOD_OLD_FIRST_INODE
            } else {
                get32(raw, 84)
            },
            inode_size: if rev_level == 0 {
                GOOD_OLD_INODE_SIZE as u16
            } else {
                get16(raw, 88)
            },
            feature_incompat: if rev_level == 0 { 0 } else { get32(raw, 96) },
            feature_ro_compat: if rev_level == 0 { 0 } else { get32(raw, 100) },
        }
    }

    /// The raw bytes with Keel's changes (free counts, state, write time, RO_COMPAT).
    pub fn serialize(&self) -> Vec<u8> {
        let mut raw = self.raw.clone();
        put32(&mut raw, 12, self.free_blocks);
        put32(&mut raw, 16, self.free_inodes);
        put32(&mut raw, 48, self.write_time);
        put16(&mut raw, 58, self.state);
        if self.rev_level >= 1 {
            put32(&mut raw, 100, self.feature_ro_compat);
        }
        raw
    }
}

/// One block group descriptor.
#[derive(Debug, Clone)]
pub(crate) struct GroupDescriptor {
    pub raw: [u8; GROUP_DESCRIPTOR_SIZE],
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks: u16,
    pub free_inodes: u16,
    pub used_dirs: u16,
}

impl GroupDescriptor {
    pub fn parse(bytes: &[u8]) -> Self {
        let mut raw = [0; GROUP_DESCRIPTOR_SIZE];
        raw.copy_from_slice(&bytes[..GROUP_DESCRIPTOR_SIZE]);
        Self {
            raw,
            block_bitmap: get32(&raw, 0),
            inode_bitmap: get32(&raw, 4),
            inode_table: get32(&raw, 8),
            free_blocks: get16(&raw, 12),
            free_inodes: get16(&raw, 14),
            used_dirs: get16(&raw, 16),
        }
    }

    pub fn serialize(&self) -> [u8; GROUP_DESCRIPTOR_SIZE] {
        let mut raw = self.raw;
        put16(&mut raw, 12, self.free_blocks);
        put16(&mut raw, 14, self.free_inodes);
        put16(&mut raw, 16, self.used_dirs);
        raw
    }
}

/// An inode record (`s_inode_size` bytes), read and changed in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inode {
    pub raw: Vec<u8>,
}

impl Inode {
    pub fn mode(&self) -> u16 {
        get16(&self.raw, 0)
    }
    pub fn set_mode(&mut self, mode: u16) {
        put16(&mut self.raw, 0, mode);
    }
    pub fn kind(&self) -> u16 {
        self.mode() & MODE_TYPE_MASK
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == MODE_DIR
    }
    pub fn is_regular(&self) -> bool {
        self.kind() == MODE_REGULAR
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == MODE_SYMLINK
    }
    pub fn uid(&self) -> u32 {
        u32::from(get16(&self.raw, 2)) | (u32::from(get16(&self.raw, 120)) << 16)
    }
    pub fn gid(&self) -> u32 {
        u32::from(get16(&self.raw, 24)) | (u32::from(get16(&self.raw, 122)) << 16)
    }
    /// `i_size`, with `i_size_high` for regular files.
    pub fn size(&self) -> u64 {
        let low = u64::from(get32(&self.raw, 4));
        if self.is_regular() {
            low | (u64::from(get32(&self.raw, 108)) << 32)
        } else {
            low
        }
    }
    pub fn set_size(&mut self, size: u64) {
        put32(&mut self.raw, 4, size as u32);
        if self.is_regular() {
            put32(&mut self.raw, 108, (size >> 32) as u32);
        }
    }
    pub fn atime(&self) -> u32 {
        get32(&self.raw, 8)
    }
    pub fn ctime(&self) -> u32 {
        get32(&self.raw, 12)
    }
    pub fn mtime(&self) -> u32 {
        get32(&self.raw, 16)
    }
    pub fn set_atime(&mut self, time: u32) {
        put32(&mut self.raw, 8, time);
    }
    pub fn set_ctime(&mut self, time: u32) {
        put32(&mut self.raw, 12, time);
    }
    pub fn set_mtime(&mut self, time: u32) {
        put32(&mut self.raw, 16, time);
    }
    pub fn set_dtime(&mut self, time: u32) {
        put32(&mut self.raw, 20, time);
    }
    pub fn links(&self) -> u16 {
        get16(&self.raw, 26)
    }
    pub fn set_links(&mut self, links: u16) {
        put16(&mut self.raw, 26, links);
    }
    /// `i_blocks`: 512-byte units, data and indirect blocks.
    pub fn sectors(&self) -> u32 {
        get32(&self.raw, 28)
    }
    pub fn set_sectors(&mut self, sectors: u32) {
        put32(&mut self.raw, 28, sectors);
    }
    pub fn flags(&self) -> u32 {
        get32(&self.raw, 32)
    }
    pub fn set_flags(&mut self, flags: u32) {
        put32(&mut self.raw, 32, flags);
    }
    /// `i_block[index]`, `index < 15`.
    pub fn block(&self, index: usize) -> u32 {
        get32(&self.raw, 40 + 4 * index)
    }
    pub fn set_block(&mut self, index: usize, block: u32) {
        put32(&mut self.raw, 40 + 4 * index, block);
    }
    /// The 60 bytes of `i_block` (a fast symlink's target).
    pub fn block_bytes(&self) -> &[u8] {
        &self.raw[40..100]
    }
    pub fn block_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[40..100]
    }
    /// `i_file_acl`: the extended-attribute block.
    pub fn file_acl(&self) -> u32 {
        get32(&self.raw, 104)
    }
    pub fn set_file_acl(&mut self, block: u32) {
        put32(&mut self.raw, 104, block);
    }
    /// `i_dev`-style device number of a special file, from `i_block[0]` / `[1]`.
    pub fn device_number(&self) -> u32 {
        match self.block(0) {
            0 => self.block(1),
            old => old,
        }
    }
}
