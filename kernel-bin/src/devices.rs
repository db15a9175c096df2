//! Device discovery at boot and the kernel's side of the drivers: wiring only.
//!
//! - PCI (q35): each ECAM window of the MCFG is mapped and enumerated
//!   (`keel_arch_x86_64::pci`); every virtio-blk function gets its BARs sized and
//!   mapped, an interrupt vector, MSI-X table entry 0 programmed to the boot CPU, and a
//!   `MsixPciTransport` (virtio-drivers' `PciTransport` plus the queue's vector).
//! - MMIO (microvm): every `virtio_mmio.device=` word of the command line is mapped and
//!   its interrupt routed through the I/O APIC (the MADT's chips and overrides).
//!
//! A virtio-rng function on PCI (`-device virtio-rng-pci`) becomes the kernel's
//! [`virtio_entropy`] source, which `/dev/random` falls back on when the CPU has no
//! RDRAND (files.rs). It uses virtio-drivers' `VirtIORng`, whose request waits by
//! polling the used ring: an entropy request is rare and QEMU answers it from the
//! host's `/dev/urandom` at once, so it gets no interrupt vector. Not on MMIO yet.
//!
//! Each disk is a `keel_virtio::blk::VirtioBlock` over Keel's DMA Hal ([`KernelDma`]:
//! pages from the page allocator, identity-mapped) and the scheduler's parker, so a
//! request's thread sleeps until the interrupt wakes it, and a CPU with nothing else
//! to do halts. A device that fails its initialisation is reported by name and left
//! out; the kernel boots on.

use crate::memory;
use crate::threads::{self, KernelParker};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::ptr::NonNull;
use keel_arch_x86_64::irq::{self, DeviceInterrupt};
use keel_arch_x86_64::pci::{PciAddress, PciSegment};
use keel_arch_x86_64::virtio_pci::{self, MsixPciTransport};
use keel_arch_x86_64::{ArchInfo, ioapic, paging, virtio_mmio};
use keel_bootinfo::madt::LineShape;
use keel_pagealloc::{PageFrameNumber, PageRange};
use keel_virtio::blk::{BlkStats, VirtioBlock};
use keel_virtio::block::BlockDevice;
use keel_virtio::hal::{DmaMemory, KeelHal};
use virtio_drivers::PhysAddr;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::virtio_device_type;
use virtio_drivers::transport::{DeviceType, Transport};

/// DMA memory for virtio: whole pages from the page allocator, which Keel maps at their
/// physical addresses.
#[derive(Debug)]
pub struct KernelDma;

// SAFETY: pages come from the page allocator (owned until freed, physically
// contiguous as one run of frames) and are zeroed here; RAM is identity-mapped
// write-back, so the device reaches them at the address the driver uses, and a buffer
// contiguous in virtual memory is contiguous physically. `map_mmio` maps uncached
// through the paging module, which refuses a range mapped cacheable.
unsafe impl DmaMemory for KernelDma {
    fn alloc_zeroed(pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let range = memory::alloc_pages(pages as u64).ok()?;
        let start = range.start.start_address()?.as_u64();
        let pointer = NonNull::new(start as *mut u8)?;
        // SAFETY: the run is ours, `pages` pages long, identity-mapped read-write.
        unsafe { core::ptr::write_bytes(pointer.as_ptr(), 0, pages * 4096) };
        Some((start, pointer))
    }

    unsafe fn free(phys: PhysAddr, _virt: NonNull<u8>, pages: usize) {
        let range = PageRange::new(PageFrameNumber::new(phys / 4096), pages as u64);
        if let Err(error) = memory::free_pages(range) {
            log::error!("virtio: freeing DMA pages at {phys:#x}: {error:?}");
        }
    }

    fn phys_of(virt: *const u8) -> PhysAddr {
        virt as PhysAddr
    }

    fn map_mmio(phys: PhysAddr, size: usize) -> NonNull<u8> {
        if let Err(error) =
            paging::map_device_memory(keel_pagealloc::PhysAddr::new(phys), size as u64)
        {
            // The access then faults with a full report rather than reading RAM.
            log::error!("virtio: cannot map registers at {phys:#x}: {error}");
        }
        NonNull::new(phys as *mut u8).unwrap_or(NonNull::dangling())
    }
}

/// The Hal every Keel virtio driver uses.
pub type Hal = KeelHal<KernelDma>;

/// What the kernel needs of a disk beyond `BlockDevice`.
pub trait Disk: BlockDevice {
    /// The device's interrupt (see `VirtioBlock::handle_interrupt`).
    fn handle_interrupt(&self);
    /// The driver's counters.
    fn stats(&self) -> BlkStats;
}

impl<T> Disk for VirtioBlock<Hal, T, KernelParker>
where
    T: Transport + Send + Sync,
{
    fn handle_interrupt(&self) {
        VirtioBlock::handle_interrupt(self);
    }

    fn stats(&self) -> BlkStats {
        VirtioBlock::stats(self)
    }
}

/// One disk the kernel found.
pub struct DiskEntry {
    /// `vda`, `vdb`, ... in discovery order.
    pub name: String,
    /// Where it is: `pci 00:02.0` or `mmio 0xfeb00e00`.
    pub location: String,
    /// Its interrupt vector.
    pub vector: u8,
    slot: &'static InterruptSlot,
}

impl DiskEntry {
    /// The driver.
    pub fn disk(&self) -> &'static dyn Disk {
        self.slot
            .disk
            .get()
            .copied()
            .expect("a listed disk has its driver")
    }

    /// Interrupts taken on its vector.
    pub fn interrupts(&self) -> u64 {
        irq::count(self.vector)
    }
}

impl core::fmt::Debug for DiskEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DiskEntry")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("vector", &self.vector)
            .finish_non_exhaustive()
    }
}

/// The vector's handler; the driver is filled in once it exists (the vector must be
/// programmed into the device before its set-up).
struct InterruptSlot {
    disk: spin::Once<&'static dyn Disk>,
}

impl DeviceInterrupt for InterruptSlot {
    fn interrupt(&self) {
        if let Some(disk) = self.disk.get() {
            disk.handle_interrupt();
            // A thread woken onto this CPU runs now if the policy says so.
            if let Some(scheduler) = threads::try_scheduler() {
                scheduler.wakeup_interrupt();
            }
        }
    }
}

static DISKS: spin::Once<Vec<DiskEntry>> = spin::Once::new();

/// The disks found at boot (empty before [`init`]).
pub fn disks() -> &'static [DiskEntry] {
    DISKS.get().map_or(&[], Vec::as_slice)
}

/// A device that failed, as printed at boot (for the tests).
static FAILED: spin::Once<Vec<String>> = spin::Once::new();

/// The messages of devices that failed their set-up.
pub fn failures() -> &'static [String] {
    FAILED.get().map_or(&[], Vec::as_slice)
}

fn leak_slot() -> &'static InterruptSlot {
    Box::leak(Box::new(InterruptSlot {
        disk: spin::Once::new(),
    }))
}

fn pci_location(address: PciAddress) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "pci {:02x}:{:02x}.{}",
        address.bus, address.device, address.function
    );
    text
}

struct Discovery {
    disks: Vec<DiskEntry>,
    failed: Vec<String>,
}

/// The virtio-rng device, if one was found: its requests one at a time.
static ENTROPY: spin::Once<keel_lfmutex::Mutex<VirtIORng<Hal, PciTransport>, KernelParker>> =
    spin::Once::new();

/// Fills `buffer` from the virtio-rng device; false if there is none or it failed.
/// Must run on a Keel thread (the device's mutex parks).
pub fn virtio_entropy(buffer: &mut [u8]) -> bool {
    let Some(device) = ENTROPY.get() else {
        return false;
    };
    let mut device = device.lock();
    let mut filled = 0;
    // The device may return fewer bytes than asked: ask again, a bounded number of
    // times, so that a device that returns nothing cannot hold the caller forever.
    for _ in 0..buffer.len().div_ceil(16) + 16 {
        if filled == buffer.len() {
            return true;
        }
        match device.request_entropy(&mut buffer[filled..]) {
            Ok(count) => filled += count.min(buffer.len() - filled),
            Err(error) => {
                log::warn!("devices: virtio-rng request failed: {error}");
                return false;
            }
        }
    }
    filled == buffer.len()
}

/// Whether a virtio-rng device was found.
pub fn has_virtio_entropy() -> bool {
    ENTROPY.get().is_some()
}

impl Discovery {
    fn fail(&mut self, what: &str, reason: impl core::fmt::Display) {
        let mut text = String::new();
        let _ = write!(text, "virtio-blk at {what}: {reason}; left out");
        keel_arch_x86_64::kprintln!("devices: {text}");
        self.failed.push(text);
    }

    fn add<T>(&mut self, location: String, transport: T, vector: u8, slot: &'static InterruptSlot)
    where
        T: Transport + Send + Sync + 'static,
    {
        match VirtioBlock::<Hal, T, KernelParker>::new(transport) {
            Ok(device) => {
                let device: &'static VirtioBlock<Hal, T, KernelParker> =
                    Box::leak(Box::new(device));
                slot.disk.call_once(|| device);
                let mut name = String::from("vd");
                name.push(char::from(b'a' + (self.disks.len() % 26) as u8));
                let info = device.info();
                keel_arch_x86_64::kprintln!(
                    "devices: {name}: virtio-blk, {location}, vector {vector:#x}, \
                     features {:#x} (device {:#x}), {} sectors ({} MiB), {}, queue {}",
                    info.negotiated_features,
                    info.device_features,
                    info.capacity,
                    info.capacity / 2048,
                    if info.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    info.queue_size
                );
                self.disks.push(DiskEntry {
                    name,
                    location,
                    vector,
                    slot,
                });
            }
            Err(error) => self.fail(&location, error),
        }
    }

    fn pci(&mut self, info: &ArchInfo, segment: &mut PciSegment, address: PciAddress) {
        let location = pci_location(address);
        let bars = match segment.prepare(address) {
            Ok(bars) => bars,
            Err(error) => return self.fail(&location, error),
        };
        let Some(layout) = virtio_pci::layout(segment, address, &bars) else {
            return self.fail(
                &location,
                "no virtio common or notification configuration in a mapped BAR",
            );
        };
        let slot = leak_slot();
        let Some(vector) = irq::register(slot) else {
            return self.fail(&location, "no interrupt vector left");
        };
        if let Err(error) = segment.enable_msix(address, &bars, 0, vector, info.apic.id) {
            return self.fail(&location, error);
        }
        let transport = match PciTransport::new::<Hal, _>(segment.root_mut(), address) {
            Ok(transport) => transport,
            Err(error) => return self.fail(&location, error),
        };
        self.add(
            location,
            MsixPciTransport::new(transport, layout, 0),
            vector,
            slot,
        );
    }

    /// A virtio-rng function: no interrupt, the driver polls.
    fn pci_rng(&mut self, segment: &mut PciSegment, address: PciAddress) {
        let location = pci_location(address);
        let failed = |reason: &dyn core::fmt::Display| {
            keel_arch_x86_64::kprintln!("devices: virtio-rng at {location}: {reason}; left out");
        };
        if ENTROPY.get().is_some() {
            return failed(&"a second virtio-rng device");
        }
        if let Err(error) = segment.prepare(address) {
            return failed(&error);
        }
        let transport = match PciTransport::new::<Hal, _>(segment.root_mut(), address) {
            Ok(transport) => transport,
            Err(error) => return failed(&error),
        };
        match VirtIORng::<Hal, PciTransport>::new(transport) {
            Ok(mut device) => {
                device.disable_interrupts();
                ENTROPY.call_once(|| keel_lfmutex::Mutex::new(device));
                keel_arch_x86_64::kprintln!("devices: virtio-rng, {location}");
            }
            Err(error) => failed(&error),
        }
    }

    fn mmio(&mut self, info: &ArchInfo, device: keel_bootinfo::virtio_mmio::MmioDevice) {
        let mut location = String::new();
        let _ = write!(location, "mmio {:#x} irq {}", device.base, device.irq);
        let transport: MmioTransport<'static> = match virtio_mmio::transport(device) {
            Ok(transport) => transport,
            Err(error) => return self.fail(&location, error),
        };
        if transport.device_type() != DeviceType::Block {
            log::debug!(
                "devices: {location}: {:?}, no driver",
                transport.device_type()
            );
            return;
        }
        let Ok(platform) = &info.platform else {
            return self.fail(&location, "no MADT to route its interrupt");
        };
        let (gsi, shape) = match u8::try_from(device.irq) {
            Ok(isa) if isa < 16 => platform.madt.isa_irq(isa),
            _ => (device.irq, LineShape::ISA),
        };
        let slot = leak_slot();
        let Some(vector) = irq::register(slot) else {
            return self.fail(&location, "no interrupt vector left");
        };
        // Edge triggered whatever the override says: the handler acknowledges the
        // device before it reads the used ring, so a completion after the
        // acknowledgement raises a new edge; a level line would fire once more after
        // every interrupt (the end of interrupt comes before the handler here).
        let shape = LineShape {
            level_triggered: false,
            ..shape
        };
        if let Err(error) = ioapic::route(&platform.madt, gsi, shape, vector, info.apic.id) {
            return self.fail(&location, error);
        }
        let _ = write!(location, " (GSI {gsi})");
        self.add(location, transport, vector, slot);
    }
}

/// Finds and sets up every disk; prints each one (transport, features, capacity) and
/// each failure.
pub fn init(info: &ArchInfo) {
    let mut found = Discovery {
        disks: Vec::new(),
        failed: Vec::new(),
    };
    if let Ok(platform) = &info.platform {
        for window in platform.ecam_windows() {
            let mut segment = match PciSegment::new(window) {
                Ok(segment) => segment,
                Err(error) => {
                    keel_arch_x86_64::kprintln!(
                        "devices: cannot map PCI segment {} at {:#x}: {error}",
                        window.segment,
                        window.base
                    );
                    continue;
                }
            };
            let functions: Vec<_> = segment.functions().collect();
            for function in functions {
                log::debug!(
                    "pci: {} {:04x}:{:04x} class {:02x}.{:02x}",
                    pci_location(function.address),
                    function.info.vendor_id,
                    function.info.device_id,
                    function.info.class,
                    function.info.subclass
                );
                match virtio_device_type(&function.info) {
                    Some(DeviceType::Block) => found.pci(info, &mut segment, function.address),
                    Some(DeviceType::EntropySource) => {
                        found.pci_rng(&mut segment, function.address);
                    }
                    _ => {}
                }
            }
        }
    }
    for device in keel_bootinfo::virtio_mmio::devices(info.boot.command_line()) {
        match device {
            Ok(device) => found.mmio(info, device),
            Err(error) => {
                let mut text = String::new();
                let _ = write!(text, "{error}; left out");
                keel_arch_x86_64::kprintln!("devices: {text}");
                found.failed.push(text);
            }
        }
    }
    FAILED.call_once(|| found.failed);
    DISKS.call_once(|| found.disks);
}
