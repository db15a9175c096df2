//! virtio-blk requests on `virtio-drivers`' split virtqueue: Keel's own request layer,
//! in place of `virtio_drivers::device::blk::VirtIOBlk`.
//!
//! `VirtIOBlk` offers non-blocking reads and writes, but its flush adds the request and
//! then polls the used ring until it returns (and fails if another request is in
//! flight). Keel's rule is that no driver polls while it waits, so this module builds
//! the three requests Keel sends (read, write, flush; virtio 1.2, 5.2.6) itself, each
//! as a descriptor chain `header (driver to device) | data | status (device to
//! driver)` added with [`VirtQueue::add`] and completed with [`VirtQueue::pop_used`],
//! and leaves the waiting to the caller. Feature negotiation and queue set-up follow
//! the spec's initialisation order (3.1.1).

use crate::blk::features;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};
use virtio_drivers::{Error, Hal};

/// The request queue's index.
const QUEUE: u16 = 0;
/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 16;

/// VIRTIO_BLK_T_IN, _OUT and _FLUSH.
const TYPE_IN: u32 = 0;
const TYPE_OUT: u32 = 1;
const TYPE_FLUSH: u32 = 4;

/// VIRTIO_BLK_S_OK, _IOERR and _UNSUPP.
pub const STATUS_OK: u8 = 0;
/// The device reported an I/O error.
pub const STATUS_IO_ERROR: u8 = 1;
/// The device does not support the request.
pub const STATUS_UNSUPPORTED: u8 = 2;

/// A request's 16-byte header: type, reserved, sector, little endian.
#[derive(Debug, Clone, Copy, Default)]
pub struct Header([u8; 16]);

impl Header {
    fn new(kind: u32, sector: u64) -> Self {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&kind.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        Self(bytes)
    }
}

/// The status byte the device writes last.
#[derive(Debug, Clone, Copy)]
pub struct Status([u8; 1]);

impl Default for Status {
    /// A value the device never writes, so an untouched status is not "OK".
    fn default() -> Self {
        Self([0xff])
    }
}

impl Status {
    /// The byte.
    pub fn byte(&self) -> u8 {
        self.0[0]
    }
}

/// One request's data.
#[derive(Debug)]
pub enum Data<'a> {
    /// Read into the buffer.
    Read(&'a mut [u8]),
    /// Write the buffer.
    Write(&'a [u8]),
    /// A flush: no data.
    Flush,
}

/// The transport and the request queue of one virtio-blk device.
pub struct BlkQueue<H: Hal, T: Transport> {
    transport: T,
    queue: VirtQueue<H, { QUEUE_SIZE as usize }>,
}

impl<H: Hal, T: Transport> core::fmt::Debug for BlkQueue<H, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkQueue")
            .field("used_ring_head", &self.queue.peek_used())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport> BlkQueue<H, T> {
    /// Negotiates `device_features & features::DRIVER_SUPPORTED` (FEATURES_OK must
    /// stick, else `Error::Unsupported`), sets up the queue (indirect descriptors and
    /// event-idx as negotiated), tells the device DRIVER_OK and enables its
    /// interrupts. Returns the queue and the negotiated features.
    pub fn new(mut transport: T, indirect_allowed: bool) -> Result<(Self, u64), Error> {
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let mut wanted = features::DRIVER_SUPPORTED;
        if !indirect_allowed {
            wanted &= !features::RING_INDIRECT_DESC;
        }
        let negotiated = transport.read_device_features() & wanted;
        transport.write_driver_features(negotiated);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK,
        );
        if !transport.requires_legacy_layout()
            && !transport.get_status().contains(DeviceStatus::FEATURES_OK)
        {
            transport.set_status(DeviceStatus::FAILED);
            return Err(Error::Unsupported);
        }
        transport.set_guest_page_size(4096);
        let mut queue = match VirtQueue::new(
            &mut transport,
            QUEUE,
            negotiated & features::RING_INDIRECT_DESC != 0,
            negotiated & features::RING_EVENT_IDX != 0,
        ) {
            Ok(queue) => queue,
            Err(error) => {
                transport.set_status(DeviceStatus::FAILED);
                return Err(error);
            }
        };
        queue.set_dev_notify(true);
        transport.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        Ok((Self { transport, queue }, negotiated))
    }

    /// Sectors, from the configuration space (read consistently, both halves from one
    /// configuration generation).
    pub fn capacity(&self) -> Result<u64, Error> {
        self.transport.read_consistent(|| {
            let low: u32 = self.transport.read_config_space(0)?;
            let high: u32 = self.transport.read_config_space(4)?;
            Ok(u64::from(low) | (u64::from(high) << 32))
        })
    }

    /// The transport, for configuration reads.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Entries in the queue.
    pub fn queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    /// Acknowledges the device's interrupt.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }

    /// The token at the head of the used ring, if any.
    pub fn peek_used(&self) -> Option<u16> {
        self.queue.peek_used()
    }

    /// Adds the request and notifies the device if it asks to be; returns the token.
    ///
    /// # Safety
    /// `header`, `data`'s buffer and `status` are the device's until
    /// [`complete`](BlkQueue::complete) returned for this token: the caller neither
    /// touches nor moves them before that. A read or write buffer is non-empty and a
    /// multiple of 512 bytes.
    pub unsafe fn submit(
        &mut self,
        sector: u64,
        header: &mut Header,
        data: &mut Data<'_>,
        status: &mut Status,
    ) -> Result<u16, Error> {
        // The caller keeps the buffers in place and untouched until the token is
        // popped, which is `add`'s contract.
        let token = match data {
            Data::Read(buffer) => {
                *header = Header::new(TYPE_IN, sector);
                // SAFETY: per the caller's contract, above.
                unsafe {
                    self.queue
                        .add(&[&header.0], &mut [&mut **buffer, &mut status.0])?
                }
            }
            Data::Write(buffer) => {
                *header = Header::new(TYPE_OUT, sector);
                // SAFETY: per the caller's contract, above.
                unsafe { self.queue.add(&[&header.0, buffer], &mut [&mut status.0])? }
            }
            Data::Flush => {
                *header = Header::new(TYPE_FLUSH, 0);
                // SAFETY: per the caller's contract, above.
                unsafe { self.queue.add(&[&header.0], &mut [&mut status.0])? }
            }
        };
        if self.queue.should_notify() {
            self.transport.notify(QUEUE);
        }
        Ok(token)
    }

    /// Pops the request `token`, which must be at the head of the used ring.
    ///
    /// # Safety
    /// `header`, `data` and `status` are the ones given to [`submit`](BlkQueue::submit)
    /// for `token`.
    pub unsafe fn complete(
        &mut self,
        token: u16,
        header: &Header,
        data: &mut Data<'_>,
        status: &mut Status,
    ) -> Result<(), Error> {
        // The same buffers as were added for this token, per the caller's contract.
        match data {
            // SAFETY: per the caller's contract, above.
            Data::Read(buffer) => unsafe {
                self.queue
                    .pop_used(token, &[&header.0], &mut [&mut **buffer, &mut status.0])?
            },
            // SAFETY: per the caller's contract, above.
            Data::Write(buffer) => unsafe {
                self.queue
                    .pop_used(token, &[&header.0, buffer], &mut [&mut status.0])?
            },
            // SAFETY: per the caller's contract, above.
            Data::Flush => unsafe {
                self.queue
                    .pop_used(token, &[&header.0], &mut [&mut status.0])?
            },
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_type_reserved_sector_little_endian() {
        let header = Header::new(TYPE_OUT, 0x0102_0304_0506_0708);
        assert_eq!(header.0, [1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Header::new(TYPE_FLUSH, 0).0[..4], [4, 0, 0, 0]);
        assert_eq!(Status::default().byte(), 0xff);
    }
}
