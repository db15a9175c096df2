//! Keel's virtio layer.
//!
//! - [`block`]: the block-device trait every storage consumer (the VFS, filesystems,
//!   the block cache) is written against, and its error type.
//! - [`blk`]: the virtio-blk driver. It lets several threads have requests in flight
//!   at once; each request (flushes too) completes by a wake-up through
//!   `keel-lfmutex`'s `Parker`, never by polling.
//! - [`request`]: the virtio-blk requests themselves on `virtio-drivers`' virtqueue
//!   (Keel's own, because `virtio-drivers`' `VirtIOBlk` polls for its flush).
//! - [`hal`]: Keel's `virtio_drivers::Hal`, over a small [`hal::DmaMemory`] trait that
//!   the kernel implements with its page allocator and identity map.
//! - [`handoff`]: the pending-flag hand-off that lets the interrupt handler pass its
//!   work to the queue lock's holder instead of waiting for the lock.
//! - A file-backed block device for host tests is `keel_hosted::FileBlockDevice`.
//!
//! Drivers are generic over `Hal`, `Transport` and `Parker`, so they run on the host
//! against fakes (`tests/support/`) exactly as in the guest.
#![no_std]
// The fence: `unsafe` only where the buffers' lifetimes meet the device (the Hal, the
// request layer's queue calls and the driver's calls of them), each block argued.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod blk;
pub mod block;
#[allow(unsafe_code)]
pub mod hal;
pub mod handoff;
#[allow(unsafe_code)]
pub mod request;
