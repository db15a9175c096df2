//! [`FileBlockDevice`]: a [`BlockDevice`] over a host file, for host tests and tools.
//!
//! Sector `n` is bytes `n * 512 .. (n + 1) * 512` of the file; reads and writes are
//! positioned (`pread` / `pwrite` through [`FileExt`]), so several threads use one
//! device without a lock; [`flush`](BlockDevice::flush) is `fdatasync`. Requests are
//! checked with the same [`check_request`] as the virtio driver's, so both refuse the
//! same requests with the same errors.

use keel_virtio::block::{BlockDevice, BlockError, SECTOR_SIZE, check_request};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A disk backed by a file: `file length / 512` sectors (a partial last sector is not
/// part of the disk).
#[derive(Debug)]
pub struct FileBlockDevice {
    file: File,
    capacity: u64,
    read_only: bool,
}

impl FileBlockDevice {
    /// A disk over `file`; with `read_only`, writes are refused with
    /// [`BlockError::ReadOnly`] (the file may then be opened read-only).
    pub fn new(file: File, read_only: bool) -> io::Result<Self> {
        let capacity = file.metadata()?.len() / SECTOR_SIZE as u64;
        Ok(Self {
            file,
            capacity,
            read_only,
        })
    }

    /// The byte offset of `sector` (in range: checked by `check_request`).
    fn offset(sector: u64) -> u64 {
        sector * SECTOR_SIZE as u64
    }
}

impl BlockDevice for FileBlockDevice {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(sector, buf.len(), self.capacity)?;
        self.file
            .read_exact_at(buf, Self::offset(sector))
            .map_err(|_| BlockError::Io)
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_request(sector, buf.len(), self.capacity)?;
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.file
            .write_all_at(buf, Self::offset(sector))
            .map_err(|_| BlockError::Io)
    }

    fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|_| BlockError::Io)
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}
