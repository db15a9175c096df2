//! virtio-pci (modern) with MSI-X: `virtio-drivers`' `PciTransport`, plus the
//! interrupt vector it leaves unset.
//!
//! `PciTransport` walks the virtio vendor capabilities and drives the common
//! configuration, but never writes `queue_msix_vector`. With MSI-X enabled a queue
//! whose vector is `VIRTIO_MSI_NO_VECTOR` (what a device reset leaves) raises no
//! interrupt at all (virtio 1.2, 4.1.4.3 and 4.1.5.1.3). [`MsixPciTransport`] forwards
//! every call to the inner transport and, in `queue_set`, first selects the queue and
//! writes its vector, as the spec's queue set-up sequence orders it (before the queue
//! is enabled). It finds the common configuration by its own walk of the capability
//! list (vendor capability, `cfg_type` 1).

use crate::pci::{MappedBar, PciAddress, PciSegment};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const CAPABILITY_VENDOR: u8 = 0x09;
const CFG_TYPE_COMMON: u8 = 1;
/// Offsets in the common configuration (virtio 1.2, 4.1.4.3).
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
/// "No vector": what the device answers when it could not assign one.
pub const NO_VECTOR: u16 = 0xffff;

/// Where the common configuration is: the first vendor capability with `cfg_type` 1,
/// in a mapped memory BAR, at least 0x38 bytes long.
pub fn common_config(
    segment: &PciSegment,
    function: PciAddress,
    bars: &[Option<MappedBar>; 6],
) -> Option<u64> {
    segment
        .capabilities(function)
        .filter(|&(_, id, header)| {
            id == CAPABILITY_VENDOR && (header >> 8) as u8 == CFG_TYPE_COMMON
        })
        .find_map(|(offset, _, _)| {
            let bar = segment.read_config(function, offset + 4) as u8;
            let start = u64::from(segment.read_config(function, offset + 8));
            let length = u64::from(segment.read_config(function, offset + 12));
            let mapped = bars.get(usize::from(bar)).copied().flatten()?;
            (length >= 0x38 && start.checked_add(length)? <= mapped.size)
                .then_some(mapped.address + start)
        })
}

/// `PciTransport` with an MSI-X vector for every queue.
#[derive(Debug)]
pub struct MsixPciTransport {
    inner: PciTransport,
    common: u64,
    vector_entry: u16,
    /// What the device read back for the last queue's vector.
    assigned: u16,
}

impl MsixPciTransport {
    /// Wraps `inner`, whose common configuration is at `common` (from
    /// [`common_config`], mapped uncached). Every queue gets MSI-X table entry
    /// `vector_entry`.
    pub fn new(inner: PciTransport, common: u64, vector_entry: u16) -> Self {
        Self {
            inner,
            common,
            vector_entry,
            assigned: NO_VECTOR,
        }
    }

    /// The vector entry the device accepted for the last queue set up, or
    /// [`NO_VECTOR`] if it refused (then the queue raises no interrupt).
    pub fn assigned_vector(&self) -> u16 {
        self.assigned
    }

    fn write_u16(&mut self, offset: u64, value: u16) {
        // SAFETY: `common` is the device's common configuration, mapped uncached and at
        // least 0x38 bytes long (checked by `common_config`); both registers are
        // aligned 16-bit fields inside it.
        unsafe { ((self.common + offset) as *mut u16).write_volatile(value) }
    }

    fn read_u16(&self, offset: u64) -> u16 {
        // SAFETY: as in `write_u16`.
        unsafe { ((self.common + offset) as *const u16).read_volatile() }
    }
}

impl Transport for MsixPciTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue);
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size);
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.write_u16(QUEUE_SELECT, queue);
        self.write_u16(QUEUE_MSIX_VECTOR, self.vector_entry);
        self.assigned = self.read_u16(QUEUE_MSIX_VECTOR);
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), Error> {
        self.inner.write_config_space(offset, value)
    }
}
