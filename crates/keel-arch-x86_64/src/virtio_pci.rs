//! virtio-pci (modern) with MSI-X: `virtio-drivers`' `PciTransport`, plus the
//! interrupt vector it leaves unset.
//!
//! `PciTransport` walks the virtio vendor capabilities and drives the common
//! configuration, but never writes `queue_msix_vector`. With MSI-X enabled a queue
//! whose vector is `VIRTIO_MSI_NO_VECTOR` (what a device reset leaves) raises no
//! interrupt at all (virtio 1.2, 4.1.4.3 and 4.1.5.1.3). [`MsixPciTransport`] forwards
//! every call to the inner transport and, in `queue_set`, first selects the queue and
//! writes its vector, as the spec's queue set-up sequence orders it (before the queue
//! is enabled). It finds the common and notification configurations by its own walk
//! of the capability list (vendor capabilities, `cfg_type` 1 and 2).
//!
//! Two device-register accesses per request are saved on the way, each a trip into
//! the hypervisor's device model: `PciTransport::notify` selects the queue and reads
//! its `queue_notify_off` before every doorbell write, so the wrapper computes the
//! doorbell's address once per queue, in `queue_set`, and writes only it; and with
//! MSI-X the vector already says which queue fired, so `ack_interrupt` does not read
//! the ISR status (which only INTx needs to tell a queue interrupt from a
//! configuration change).

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
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
/// Queues whose doorbell address is remembered.
const CACHED_QUEUES: usize = 4;
/// "No vector": what the device answers when it could not assign one.
pub const NO_VECTOR: u16 = 0xffff;

const CFG_TYPE_NOTIFY: u8 = 2;
/// Where a notification capability keeps its `notify_off_multiplier`.
const NOTIFY_MULTIPLIER_OFFSET: u8 = 16;

/// Where a device's virtio-pci structures are, in its mapped BARs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciLayout {
    /// The common configuration (at least 0x38 bytes).
    pub common: u64,
    /// The notification region's start, its length and its multiplier.
    pub notify: u64,
    /// Bytes of the notification region.
    pub notify_length: u64,
    /// `notify_off_multiplier`.
    pub notify_multiplier: u32,
}

/// The start of the structure a vendor capability at `offset` describes, if it lies
/// inside a mapped memory BAR and is at least `minimum` bytes long; and its length.
fn structure(
    segment: &PciSegment,
    function: PciAddress,
    bars: &[Option<MappedBar>; 6],
    offset: u8,
    minimum: u64,
) -> Option<(u64, u64)> {
    let bar = segment.read_config(function, offset + 4) as u8;
    let start = u64::from(segment.read_config(function, offset + 8));
    let length = u64::from(segment.read_config(function, offset + 12));
    let mapped = bars.get(usize::from(bar)).copied().flatten()?;
    (length >= minimum && start.checked_add(length)? <= mapped.size)
        .then_some((mapped.address + start, length))
}

/// The first common (`cfg_type` 1, at least 0x38 bytes) and notification (`cfg_type`
/// 2, with its multiplier) structures of `function`, each inside a mapped BAR.
pub fn layout(
    segment: &PciSegment,
    function: PciAddress,
    bars: &[Option<MappedBar>; 6],
) -> Option<VirtioPciLayout> {
    let vendor = |kind: u8| {
        segment
            .capabilities(function)
            .filter(move |&(_, id, header)| id == CAPABILITY_VENDOR && (header >> 8) as u8 == kind)
            .map(|(offset, _, _)| offset)
    };
    let (common, _) = vendor(CFG_TYPE_COMMON)
        .find_map(|offset| structure(segment, function, bars, offset, 0x38))?;
    let (notify, notify_length, notify_multiplier) =
        vendor(CFG_TYPE_NOTIFY).find_map(|offset| {
            let (start, length) = structure(segment, function, bars, offset, 2)?;
            let multiplier = segment.read_config(function, offset + NOTIFY_MULTIPLIER_OFFSET);
            Some((start, length, multiplier))
        })?;
    Some(VirtioPciLayout {
        common,
        notify,
        notify_length,
        notify_multiplier,
    })
}

/// `PciTransport` with an MSI-X vector for every queue.
#[derive(Debug)]
pub struct MsixPciTransport {
    inner: PciTransport,
    layout: VirtioPciLayout,
    vector_entry: u16,
    /// What the device read back for the last queue's vector.
    assigned: u16,
    /// Each set-up queue's doorbell address (`None`: forward to `PciTransport`).
    doorbells: [Option<u64>; CACHED_QUEUES],
}

impl MsixPciTransport {
    /// Wraps `inner`, whose structures are at `layout` (from [`layout`], mapped
    /// uncached). Every queue gets MSI-X table entry `vector_entry`.
    pub fn new(inner: PciTransport, layout: VirtioPciLayout, vector_entry: u16) -> Self {
        Self {
            inner,
            layout,
            vector_entry,
            assigned: NO_VECTOR,
            doorbells: [None; CACHED_QUEUES],
        }
    }

    /// The vector entry the device accepted for the last queue set up, or
    /// [`NO_VECTOR`] if it refused (then the queue raises no interrupt).
    pub fn assigned_vector(&self) -> u16 {
        self.assigned
    }

    fn write_u16(&mut self, offset: u64, value: u16) {
        // SAFETY: `layout.common` is the device's common configuration, mapped uncached
        // and at least 0x38 bytes long (checked by `layout`); every register used is
        // an aligned 16-bit field inside it.
        unsafe { ((self.layout.common + offset) as *mut u16).write_volatile(value) }
    }

    fn read_u16(&self, offset: u64) -> u16 {
        // SAFETY: as in `write_u16`.
        unsafe { ((self.layout.common + offset) as *const u16).read_volatile() }
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
        match self.doorbells.get(usize::from(queue)).copied().flatten() {
            // SAFETY: the address was computed in `queue_set` from the device's
            // `queue_notify_off` and checked to hold a 16-bit register inside the
            // mapped notification region; the doorbell takes the queue's index
            // (VIRTIO_F_NOTIFICATION_DATA is never negotiated).
            Some(doorbell) => unsafe { (doorbell as *mut u16).write_volatile(queue) },
            None => self.inner.notify(queue),
        }
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
        let offset =
            u64::from(self.read_u16(QUEUE_NOTIFY_OFF)) * u64::from(self.layout.notify_multiplier);
        let doorbell = (offset + 2 <= self.layout.notify_length && offset.is_multiple_of(2))
            .then_some(self.layout.notify + offset);
        if let Some(slot) = self.doorbells.get_mut(usize::from(queue)) {
            *slot = doorbell;
        }
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    /// With a vector assigned, MSI-X says the queue fired: the ISR status is not read
    /// (nor cleared; only INTx uses it). Without one, the inner transport reads it.
    fn ack_interrupt(&mut self) -> InterruptStatus {
        if self.assigned == NO_VECTOR {
            self.inner.ack_interrupt()
        } else {
            InterruptStatus::QUEUE_INTERRUPT
        }
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
