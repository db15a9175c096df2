//! PCI Express: configuration space through ECAM, enumeration, BARs, capability
//! lists and MSI-X.
//!
//! The ECAM windows come from the ACPI MCFG ([`crate::platform::EcamWindow`]). Keel
//! implements `virtio-drivers`' `ConfigurationAccess` over them ([`Ecam`]), so the
//! well-kept enumeration, BAR sizing and capability walking of
//! `virtio_drivers::transport::pci::bus::PciRoot` serve every PCI driver; what Keel
//! adds here is the mapping (ECAM and BARs, uncached), the MSI-X table programming,
//! and the command-register set-up a DMA device needs.
//!
//! Firmware (SeaBIOS on q35) assigns the BARs before Keel runs; a memory BAR still at
//! address 0 is reported as unassigned and its device left alone.

use crate::paging::{self, PagingError};
use crate::platform::EcamWindow;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, PciRoot,
};

pub use virtio_drivers::transport::pci::bus::DeviceFunction as PciAddress;

/// The MSI-X capability's id.
const CAPABILITY_MSIX: u8 = 0x11;
/// Bytes of ECAM configuration space per bus.
const BUS_BYTES: u64 = 1 << 20;

/// ECAM configuration access to one window's buses.
#[derive(Debug)]
pub struct Ecam {
    window: EcamWindow,
}

impl Ecam {
    /// Maps the window's configuration space (its buses only) uncached.
    pub fn new(window: EcamWindow) -> Result<Self, PagingError> {
        let first = window.base.as_u64() + u64::from(window.bus_start) * BUS_BYTES;
        let buses = u64::from(window.bus_end - window.bus_start) + 1;
        paging::map_device_memory(keel_types::PhysAddr::new(first), buses * BUS_BYTES)?;
        Ok(Self { window })
    }

    /// The window.
    pub fn window(&self) -> EcamWindow {
        self.window
    }

    /// The address of `register` of `function`, if the window decodes its bus and the
    /// register is an aligned word of its 4 KiB.
    fn address(&self, function: DeviceFunction, register: u8) -> Option<u64> {
        let decoded = (self.window.bus_start..=self.window.bus_end).contains(&function.bus);
        (decoded && function.valid() && register.is_multiple_of(4)).then(|| {
            self.window.base.as_u64()
                + (u64::from(function.bus) << 20)
                + (u64::from(function.device) << 15)
                + (u64::from(function.function) << 12)
                + u64::from(register)
        })
    }
}

impl ConfigurationAccess for Ecam {
    /// All ones (what a bus answers for an absent function) outside the window.
    fn read_word(&self, function: DeviceFunction, register: u8) -> u32 {
        match self.address(function, register) {
            // SAFETY: `new` mapped every bus of the window uncached; the address is an
            // aligned word inside the function's configuration space.
            Some(address) => unsafe { core::ptr::read_volatile(address as *const u32) },
            None => u32::MAX,
        }
    }

    fn write_word(&mut self, function: DeviceFunction, register: u8, data: u32) {
        if let Some(address) = self.address(function, register) {
            // SAFETY: as in `read_word`; `&mut self` serialises writers of this access.
            unsafe { core::ptr::write_volatile(address as *mut u32, data) }
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        Self {
            window: self.window,
        }
    }
}

/// One function found by [`PciSegment::functions`].
#[derive(Debug, Clone)]
pub struct PciFunction {
    /// Bus, device, function.
    pub address: DeviceFunction,
    /// Vendor, device id, class.
    pub info: DeviceFunctionInfo,
}

/// Why a device could not be prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciSetupError {
    /// Sizing the BARs failed.
    Bars,
    /// A memory BAR is unassigned (address 0): firmware gave it no space.
    Unassigned {
        /// The BAR.
        bar: u8,
    },
    /// A BAR could not be mapped.
    Map(PagingError),
    /// The device has no MSI-X capability.
    NoMsix,
    /// Its MSI-X table has fewer entries than asked for.
    MsixTooSmall {
        /// Entries it has.
        entries: u16,
    },
    /// The MSI-X table's BAR is not a mapped memory BAR.
    MsixBar(u8),
    /// The destination APIC id does not fit an MSI address (ids above 255 need
    /// interrupt remapping).
    Destination(u32),
}

impl core::fmt::Display for PciSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Bars => f.write_str("cannot size its BARs"),
            Self::Unassigned { bar } => write!(f, "BAR {bar} was given no address"),
            Self::Map(error) => write!(f, "cannot map a BAR: {error}"),
            Self::NoMsix => f.write_str("no MSI-X capability"),
            Self::MsixTooSmall { entries } => write!(f, "MSI-X table has only {entries} entries"),
            Self::MsixBar(bar) => write!(f, "MSI-X table in BAR {bar}, not a memory BAR"),
            Self::Destination(id) => write!(f, "APIC id {id} cannot be an MSI destination"),
        }
    }
}

/// A memory BAR as mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedBar {
    /// The BAR's index.
    pub index: u8,
    /// Physical (= virtual) address.
    pub address: u64,
    /// Bytes.
    pub size: u64,
}

/// The MSI message that delivers `vector` to the CPU with APIC id `apic_id`: fixed
/// delivery, edge, physical destination (Intel SDM vol. 3, 11.11).
pub fn msi_message(vector: u8, apic_id: u8) -> (u64, u32) {
    (0xfee0_0000 | (u64::from(apic_id) << 12), u32::from(vector))
}

/// One PCI segment: its ECAM window and `virtio-drivers`' root over it.
#[derive(Debug)]
pub struct PciSegment {
    root: PciRoot<Ecam>,
    window: EcamWindow,
}

impl PciSegment {
    /// Maps `window`'s configuration space.
    pub fn new(window: EcamWindow) -> Result<Self, PagingError> {
        Ok(Self {
            root: PciRoot::new(Ecam::new(window)?),
            window,
        })
    }

    /// The root, for transports that walk the capabilities themselves
    /// (`virtio_drivers::transport::pci::PciTransport::new`).
    pub fn root_mut(&mut self) -> &mut PciRoot<Ecam> {
        &mut self.root
    }

    /// Every function on every bus of the window, in bus order.
    pub fn functions(&self) -> impl Iterator<Item = PciFunction> + '_ {
        let window = self.window;
        (window.bus_start..=window.bus_end).flat_map(move |bus| {
            self.root
                .enumerate_bus(bus)
                .map(|(address, info)| PciFunction { address, info })
        })
    }

    /// A plain access to the same window (it is only the window's description; the
    /// mapping was made by [`PciSegment::new`]).
    fn access(&self) -> Ecam {
        Ecam {
            window: self.window,
        }
    }

    /// Reads the configuration-space word at `register` of `function`.
    pub fn read_config(&self, function: DeviceFunction, register: u8) -> u32 {
        self.access().read_word(function, register)
    }

    /// The capabilities of `function`: (offset, id, the 16 bits after the id byte and
    /// the next pointer).
    pub fn capabilities(
        &self,
        function: DeviceFunction,
    ) -> impl Iterator<Item = (u8, u8, u16)> + '_ {
        self.root
            .capabilities(function)
            .map(|capability| (capability.offset, capability.id, capability.private_header))
    }

    /// Sizes every BAR of `function` and maps the memory BARs uncached; turns on
    /// memory decoding and bus mastering (the device does DMA) and turns off INTx
    /// (Keel uses MSI-X). Returns the memory BARs.
    pub fn prepare(
        &mut self,
        function: DeviceFunction,
    ) -> Result<[Option<MappedBar>; 6], PciSetupError> {
        let bars = self.root.bars(function).map_err(|_| PciSetupError::Bars)?;
        let mut mapped = [None; 6];
        for (index, bar) in bars.iter().enumerate() {
            let Some(bar @ BarInfo::Memory { .. }) = bar else {
                continue;
            };
            let Some((address, size)) = bar.memory_address_size() else {
                continue;
            };
            if size == 0 {
                continue;
            }
            let index = index as u8;
            if address == 0 {
                return Err(PciSetupError::Unassigned { bar: index });
            }
            paging::map_device_memory(keel_types::PhysAddr::new(address), size)
                .map_err(PciSetupError::Map)?;
            mapped[usize::from(index)] = Some(MappedBar {
                index,
                address,
                size,
            });
        }
        let (_, command) = self.root.get_status_command(function);
        self.root.set_command(
            function,
            command | Command::MEMORY_SPACE | Command::BUS_MASTER | Command::INTERRUPT_DISABLE,
        );
        Ok(mapped)
    }

    /// Programs entry `entry` of `function`'s MSI-X table to deliver `vector` to
    /// `apic_id`, unmasks it, and enables MSI-X (function mask clear). `bars` are the
    /// function's mapped BARs from [`PciSegment::prepare`].
    pub fn enable_msix(
        &mut self,
        function: DeviceFunction,
        bars: &[Option<MappedBar>; 6],
        entry: u16,
        vector: u8,
        apic_id: u32,
    ) -> Result<(), PciSetupError> {
        let capability = self
            .root
            .capabilities(function)
            .find(|capability| capability.id == CAPABILITY_MSIX)
            .ok_or(PciSetupError::NoMsix)?;
        let entries = (capability.private_header & 0x7ff) + 1;
        if entry >= entries {
            return Err(PciSetupError::MsixTooSmall { entries });
        }
        let destination = u8::try_from(apic_id).map_err(|_| PciSetupError::Destination(apic_id))?;
        let mut access = self.access();
        // The table's BAR indicator (bits 0-2) and offset, in the word after the header.
        let table = access.read_word(function, capability.offset + 4);
        let bar = (table & 0x7) as u8;
        let mapped = bars
            .get(usize::from(bar))
            .copied()
            .flatten()
            .ok_or(PciSetupError::MsixBar(bar))?;
        let slot = u64::from(table & !0x7) + u64::from(entry) * 16;
        if slot + 16 > mapped.size {
            return Err(PciSetupError::MsixTooSmall { entries });
        }
        let (address, data) = msi_message(vector, destination);
        let words = (mapped.address + slot) as *mut u32;
        // SAFETY: the entry lies inside the mapped (uncached) BAR, checked above; an
        // MSI-X table entry is four aligned 32-bit registers: address low, address
        // high, data, vector control (bit 0: masked). Masked while it changes,
        // unmasked last.
        unsafe {
            words.add(3).write_volatile(1);
            words.write_volatile(address as u32);
            words.add(1).write_volatile((address >> 32) as u32);
            words.add(2).write_volatile(data);
            words.add(3).write_volatile(0);
        }
        // Message control is the upper half of the capability's first word: enable
        // (bit 15) set, function mask (bit 14) clear.
        let header = access.read_word(function, capability.offset);
        let control = (((header >> 16) as u16) | 1 << 15) & !(1 << 14);
        access.write_word(
            function,
            capability.offset,
            (header & 0xffff) | (u32::from(control) << 16),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_messages_name_the_cpu_and_the_vector() {
        assert_eq!(msi_message(0x50, 0), (0xfee0_0000, 0x50));
        assert_eq!(msi_message(0x61, 3), (0xfee0_3000, 0x61));
    }
}
