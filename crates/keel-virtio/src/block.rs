//! The block-device interface.

use core::fmt;

/// Bytes in one sector, the unit of every address and length here.
pub const SECTOR_SIZE: usize = 512;

/// A disk: sectors that can be read, written and flushed, from several threads at once.
///
/// Every call blocks the calling thread until its request completed (by a wake-up, not
/// by polling, in the virtio driver); several threads calling at once have several
/// requests in flight.
pub trait BlockDevice: Send + Sync {
    /// Reads `buf.len() / SECTOR_SIZE` sectors starting at `sector` into `buf`.
    /// `buf.len()` must be a non-zero multiple of [`SECTOR_SIZE`].
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `buf` to the sectors starting at `sector`.
    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), BlockError>;
    /// The number of sectors.
    fn capacity(&self) -> u64;
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
}

/// Why a block request failed. Bad requests are refused before they reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// `sector .. sector + count` is not inside the disk's `capacity` sectors.
    OutOfRange {
        /// First sector asked for.
        sector: u64,
        /// Sectors asked for.
        count: u64,
        /// Sectors the disk has.
        capacity: u64,
    },
    /// A write to a read-only disk.
    ReadOnly,
    /// A buffer whose length is zero or not a multiple of [`SECTOR_SIZE`].
    BadLength(usize),
    /// The device answered VIRTIO_BLK_S_IOERR.
    Io,
    /// The device answered VIRTIO_BLK_S_UNSUPP (for example a flush it cannot do).
    Unsupported,
    /// The device or the transport failed otherwise (a status byte the spec does not
    /// define, a ring error).
    Device,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange {
                sector,
                count,
                capacity,
            } => write!(
                f,
                "sectors {sector}..{} are outside the disk's {capacity} sectors",
                sector.saturating_add(*count)
            ),
            Self::ReadOnly => f.write_str("the disk is read-only"),
            Self::BadLength(len) => write!(
                f,
                "a buffer of {len} bytes is not a non-zero multiple of {SECTOR_SIZE}"
            ),
            Self::Io => f.write_str("the device reported an I/O error"),
            Self::Unsupported => f.write_str("the device does not support the request"),
            Self::Device => f.write_str("the device or its queue failed"),
        }
    }
}

/// Checks a request against a disk of `capacity` sectors: the buffer length and the
/// range. Shared by every [`BlockDevice`] so that all refuse the same requests.
pub fn check_request(sector: u64, len: usize, capacity: u64) -> Result<u64, BlockError> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::BadLength(len));
    }
    let count = (len / SECTOR_SIZE) as u64;
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(count),
        _ => Err(BlockError::OutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}
