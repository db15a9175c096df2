//! Errors: [`MountError`] for [`Ext2::mount`](crate::Ext2::mount), [`Error`] for every
//! operation after it (with [`Error::errno`], the Linux errno number a VFS returns).

use core::fmt;
use keel_virtio::block::BlockError;

/// Why an image was not mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountError {
    /// Reading the superblock, the group descriptors or the root inode failed.
    Io(BlockError),
    /// The device is too small to hold even a superblock.
    NoSuperblock {
        /// Sectors the device has.
        sectors: u64,
    },
    /// The superblock's magic number is not 0xEF53.
    BadMagic(u16),
    /// A revision other than 0 (good old) or 1 (dynamic).
    UnsupportedRevision(u32),
    /// `s_log_block_size` gives a block size outside 1024..=65536.
    BadBlockSize(u32),
    /// A superblock field is out of range or disagrees with another.
    BadSuperblock(SuperblockProblem),
    /// The filesystem says it has more blocks than the device holds.
    DeviceTooSmall {
        /// Bytes the filesystem needs (`s_blocks_count * block size`).
        needed_bytes: u64,
        /// Bytes the device has.
        device_bytes: u64,
    },
    /// Features this implementation does not understand and that change the on-disk
    /// format (INCOMPAT): mounting would misread the image.
    UnsupportedFeatures(IncompatFeatures),
    /// A group descriptor points outside the filesystem or has impossible counts.
    BadGroupDescriptor {
        /// The group.
        group: u32,
    },
    /// The root inode (2) is not a live directory.
    BadRoot,
}

/// Which superblock check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperblockProblem {
    /// `s_blocks_per_group` is 0 or more than a bitmap block can map.
    BlocksPerGroup,
    /// `s_inodes_per_group` is 0 or more than a bitmap block can map.
    InodesPerGroup,
    /// `s_first_data_block` is not 1 for 1 KiB blocks, 0 otherwise.
    FirstDataBlock,
    /// `s_blocks_count` leaves no group.
    BlocksCount,
    /// `s_inodes_count` is not groups x inodes per group.
    InodesCount,
    /// `s_inode_size` is not a power of two in 128..=block size.
    InodeSize,
    /// `s_first_ino` is below 11 or past the inodes.
    FirstInode,
    /// A free count is larger than the total.
    FreeCounts,
    /// The group descriptor table does not fit in the filesystem.
    GroupDescriptorTable,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "reading the filesystem's metadata failed: {error}"),
            Self::NoSuperblock { sectors } => {
                write!(f, "a device of {sectors} sectors holds no superblock")
            }
            Self::BadMagic(magic) => write!(f, "superblock magic {magic:#06x}, not 0xef53"),
            Self::UnsupportedRevision(rev) => write!(f, "unsupported ext2 revision {rev}"),
            Self::BadBlockSize(log) => write!(f, "s_log_block_size {log} is not in 0..=6"),
            Self::BadSuperblock(problem) => write!(f, "bad superblock: {problem:?}"),
            Self::DeviceTooSmall {
                needed_bytes,
                device_bytes,
            } => write!(
                f,
                "the filesystem needs {needed_bytes} bytes, the device has {device_bytes}"
            ),
            Self::UnsupportedFeatures(features) => {
                write!(f, "unsupported incompatible features: {features}")
            }
            Self::BadGroupDescriptor { group } => write!(f, "bad group descriptor {group}"),
            Self::BadRoot => f.write_str("the root inode is not a directory"),
        }
    }
}

impl From<BlockError> for MountError {
    fn from(error: BlockError) -> Self {
        Self::Io(error)
    }
}

/// INCOMPAT feature bits (`s_feature_incompat`); Display names each bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncompatFeatures(pub u32);

/// RO_COMPAT feature bits (`s_feature_ro_compat`); Display names each bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoCompatFeatures(pub u32);

const INCOMPAT_NAMES: [(u32, &str); 16] = [
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];

const RO_COMPAT_NAMES: [(u32, &str); 14] = [
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x4, "btree_dir"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x1000, "readonly"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
];

fn write_names(f: &mut fmt::Formatter<'_>, bits: u32, names: &[(u32, &str)]) -> fmt::Result {
    let mut rest = bits;
    let mut first = true;
    for &(bit, name) in names {
        if bits & bit != 0 {
            if !first {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
            first = false;
            rest &= !bit;
        }
    }
    if rest != 0 {
        if !first {
            f.write_str(", ")?;
        }
        write!(f, "unknown bits {rest:#x}")?;
    }
    Ok(())
}

impl fmt::Display for IncompatFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_names(f, self.0, &INCOMPAT_NAMES)
    }
}

impl fmt::Display for RoCompatFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_names(f, self.0, &RO_COMPAT_NAMES)
    }
}

/// What an operation found wrong on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// A block number outside `s_first_data_block..s_blocks_count`.
    BlockOutOfRange(u32),
    /// An inode number outside `1..=s_inodes_count`, or a reserved one in a directory.
    InodeOutOfRange(u32),
    /// A directory entry pointing at a deleted inode (links count 0).
    DeletedInode(u32),
    /// An inode whose mode, size or block count is impossible.
    BadInode(u32),
    /// A directory record whose length is 0, unaligned, crosses its block or is shorter
    /// than its name.
    BadDirectoryEntry {
        /// The directory.
        directory: u32,
        /// Its logical block.
        block: u64,
        /// The byte offset of the record in the block.
        offset: usize,
    },
    /// A directory whose size is not whole blocks, or has a hole, or lacks `.`/`..`.
    BadDirectory(u32),
    /// Freeing a block or inode whose bitmap bit was already clear.
    DoubleFree,
}

/// Why an operation failed. [`Error::errno`] gives the Linux errno number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No such name in the directory (ENOENT).
    NotFound,
    /// The name exists already (EEXIST).
    Exists,
    /// A directory was needed (ENOTDIR).
    NotADirectory,
    /// A directory was given where it is not allowed (EISDIR).
    IsADirectory,
    /// rmdir of a directory that has entries (ENOTEMPTY).
    NotEmpty,
    /// No free block or inode (ENOSPC).
    NoSpace,
    /// A name longer than 255 bytes, or a symlink target longer than a block
    /// (ENAMETOOLONG).
    NameTooLong,
    /// A bad argument: an empty name, one with `/` or NUL, `.` or `..` where not
    /// allowed, moving a directory into itself, readlink of a non-symlink (EINVAL).
    InvalidArgument,
    /// The filesystem is mounted read-only (EROFS).
    ReadOnly,
    /// The links count would pass 32000 (EMLINK).
    TooManyLinks,
    /// An offset past the largest file the block map can hold (EFBIG).
    FileTooLarge,
    /// A hard link to a directory (EPERM).
    NotPermitted,
    /// The image is inconsistent (EUCLEAN, Linux's EFSCORRUPTED).
    Corrupted(Corruption),
    /// The device failed (EIO).
    Io(BlockError),
}

impl Error {
    /// The Linux errno number for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotPermitted => 1,
            Self::NotFound => 2,
            Self::Io(_) => 5,
            Self::Exists => 17,
            Self::NotADirectory => 20,
            Self::IsADirectory => 21,
            Self::InvalidArgument => 22,
            Self::FileTooLarge => 27,
            Self::NoSpace => 28,
            Self::ReadOnly => 30,
            Self::TooManyLinks => 31,
            Self::NameTooLong => 36,
            Self::NotEmpty => 39,
            Self::Corrupted(_) => 117,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("no such file or directory"),
            Self::Exists => f.write_str("file exists"),
            Self::NotADirectory => f.write_str("not a directory"),
            Self::IsADirectory => f.write_str("is a directory"),
            Self::NotEmpty => f.write_str("directory not empty"),
            Self::NoSpace => f.write_str("no space left on device"),
            Self::NameTooLong => f.write_str("file name too long"),
            Self::InvalidArgument => f.write_str("invalid argument"),
            Self::ReadOnly => f.write_str("read-only filesystem"),
            Self::TooManyLinks => f.write_str("too many links"),
            Self::FileTooLarge => f.write_str("file too large"),
            Self::NotPermitted => f.write_str("operation not permitted"),
            Self::Corrupted(what) => write!(f, "filesystem corrupted: {what:?}"),
            Self::Io(error) => write!(f, "I/O error: {error}"),
        }
    }
}

impl From<BlockError> for Error {
    fn from(error: BlockError) -> Self {
        Self::Io(error)
    }
}

/// Shorthand for operation results.
pub type Result<T> = core::result::Result<T, Error>;
