//! The virtio-blk driver: `virtio-drivers`' `VirtIOBlk` behind Keel's [`BlockDevice`],
//! with several requests in flight from several threads, each completed by a wake-up.
//!
//! (Being written: see issue 14. The public surface below is fixed.)

use crate::block::{BlockDevice, BlockError};
use core::fmt;
use core::marker::PhantomData;
use keel_lfmutex::Parker;
use virtio_drivers::Hal;
use virtio_drivers::transport::Transport;

/// Why a virtio-blk device could not be brought up. The kernel prints it, naming the
/// device, and boots on without the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The device offers none of the feature sets the driver can work with (for
    /// example a modern transport without VIRTIO_F_VERSION_1). `offered` is the
    /// device's feature bits.
    NoUsableFeatures {
        /// The device's feature bits.
        offered: u64,
    },
    /// The device's request queue is shorter than the driver's.
    QueueTooShort {
        /// The longest queue the device offers.
        offered: u32,
        /// The length the driver needs.
        needed: u16,
    },
    /// The transport or the queue set-up failed otherwise.
    Virtio(virtio_drivers::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUsableFeatures { offered } => {
                write!(f, "no usable feature set (device offers {offered:#x})")
            }
            Self::QueueTooShort { offered, needed } => write!(
                f,
                "its queue holds {offered} descriptors, the driver needs {needed}"
            ),
            Self::Virtio(error) => write!(f, "virtio set-up failed: {error}"),
        }
    }
}

/// What the device is, as the kernel prints it at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Sectors.
    pub capacity: u64,
    /// VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The device's feature bits.
    pub device_features: u64,
    /// The bits the driver accepted.
    pub negotiated_features: u64,
    /// Descriptors in the request queue.
    pub queue_size: u16,
}

/// Counters, for tests and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests submitted.
    pub requests: u64,
    /// Calls of [`VirtioBlock::handle_interrupt`].
    pub interrupts: u64,
    /// Times a waiting thread was woken (by the interrupt or by the thread that
    /// completed the request before it in the used ring).
    pub wakeups: u64,
    /// Times a thread or the handler looked at the used ring. A driver that polls
    /// makes this grow while it waits; this one looks a bounded number of times per
    /// request.
    pub used_ring_checks: u64,
}

/// A virtio-blk device.
pub struct VirtioBlock<H: Hal, T: Transport, P: Parker> {
    _marker: PhantomData<(fn() -> H, T, fn() -> P)>,
}

impl<H: Hal, T: Transport, P: Parker> fmt::Debug for VirtioBlock<H, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioBlock").finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport, P: Parker> VirtioBlock<H, T, P> {
    /// Negotiates features, sets up the request queue and enables its interrupt.
    pub fn new(transport: T) -> Result<Self, InitError> {
        let _ = transport;
        todo!("issue 14")
    }

    /// What the device is.
    pub fn info(&self) -> DeviceInfo {
        todo!("issue 14")
    }

    /// The device's interrupt: acknowledges it and wakes the thread whose request
    /// completed first. Safe to call from an interrupt handler: it never blocks and
    /// never spins on a lock a thread might hold.
    pub fn handle_interrupt(&self) {
        todo!("issue 14")
    }

    /// The counters.
    pub fn stats(&self) -> BlkStats {
        todo!("issue 14")
    }
}

impl<H: Hal, T: Transport, P: Parker> BlockDevice for VirtioBlock<H, T, P>
where
    T: Send + Sync,
{
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let _ = (sector, buf);
        todo!("issue 14")
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let _ = (sector, buf);
        todo!("issue 14")
    }

    fn flush(&self) -> Result<(), BlockError> {
        todo!("issue 14")
    }

    fn capacity(&self) -> u64 {
        todo!("issue 14")
    }

    fn is_read_only(&self) -> bool {
        todo!("issue 14")
    }
}
