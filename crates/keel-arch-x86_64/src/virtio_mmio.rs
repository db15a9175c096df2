//! virtio-mmio devices (microvm, Firecracker): map the register window the command
//! line names and hand it to `virtio-drivers`' `MmioTransport`, which checks the magic
//! value and version (legacy 1 or modern 2) before anything else touches it.

use crate::paging::{self, PagingError};
use core::ptr::NonNull;
use keel_bootinfo::virtio_mmio::MmioDevice;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};

/// Why a virtio-mmio window gave no transport.
#[derive(Debug)]
pub enum MmioSetupError {
    /// The window is smaller than a virtio-mmio register block.
    TooSmall(u64),
    /// The window could not be mapped.
    Map(PagingError),
    /// `virtio-drivers` refused the registers (bad magic, version or device id 0: no
    /// device behind this window).
    Transport(MmioError),
}

impl core::fmt::Display for MmioSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooSmall(size) => write!(f, "a {size}-byte window is too small"),
            Self::Map(error) => write!(f, "cannot map it: {error}"),
            Self::Transport(error) => write!(f, "{error}"),
        }
    }
}

/// Maps `device`'s registers uncached and makes its transport.
pub fn transport(device: MmioDevice) -> Result<MmioTransport<'static>, MmioSetupError> {
    let header_size = core::mem::size_of::<VirtIOHeader>() as u64;
    if device.size < header_size {
        return Err(MmioSetupError::TooSmall(device.size));
    }
    paging::map_device_memory(keel_types::PhysAddr::new(device.base), device.size)
        .map_err(MmioSetupError::Map)?;
    let header =
        NonNull::new(device.base as *mut VirtIOHeader).ok_or(MmioSetupError::TooSmall(0))?;
    let size = usize::try_from(device.size).map_err(|_| MmioSetupError::TooSmall(device.size))?;
    // SAFETY: the window (at least a header long, checked above) is mapped uncached for
    // good, is device registers rather than RAM, and Keel makes one transport per
    // window (the command line names each device once; the kernel walks the list
    // once at boot).
    unsafe { MmioTransport::new(header, size) }.map_err(MmioSetupError::Transport)
}
