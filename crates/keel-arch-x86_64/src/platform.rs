//! Platform discovery from ACPI: the CPUs (local APIC ids from the MADT), the I/O
//! APICs and interrupt source overrides (MADT), and the PCI Express configuration
//! space (ECAM) windows (MCFG). The `acpi` crate finds and validates the tables; the MADT's entries are parsed
//! by `keel_bootinfo::madt` from the table's bytes, so that the choice of the CPUs to
//! start (enabled ones only, not the merely online-capable) is tested on the host.
//!
//! Tables are reached through the identity map. Addresses inside the tables are
//! untrusted: a region that is not mapped is served from a zeroed page instead, so a
//! corrupt pointer makes the `acpi` crate's signature or checksum validation fail
//! cleanly rather than fault.

use crate::paging;
use acpi::madt::Madt;
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use keel_bootinfo::madt::{self, MadtCpus, MadtError};

/// CPUs recorded at most.
pub const MAX_CPUS: usize = madt::MAX_CPUS;

#[repr(C, align(4096))]
struct ZeroPage([u8; 4096]);

static ZERO_PAGE: ZeroPage = ZeroPage([0; 4096]);

#[derive(Clone, Debug)]
struct IdentityMapped;

fn is_mapped(start: usize, size: usize) -> bool {
    let first = start as u64 & !0xfff;
    let last = (start as u64).saturating_add(size.max(1) as u64 - 1) & !0xfff;
    (first..=last)
        .step_by(4096)
        .all(|page| paging::flags_of(keel_types::VirtAddr::new(page)).is_some())
}

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let mapped = physical_address != 0 && is_mapped(physical_address, size);
        let (virtual_start, length) = if mapped {
            (physical_address as *mut T, size)
        } else {
            (ZERO_PAGE.0.as_ptr() as *mut T, size.min(4096))
        };
        // SAFETY: either the range is mapped by the identity map (checked page by page
        // above) and the acpi crate only reads it, or it points at a static zero page that
        // is at least `length` bytes long and only read. Both pointers are non-null.
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new_unchecked(virtual_start),
                length,
                length,
                self.clone(),
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// PCI segments (ECAM windows) recorded at most.
pub const MAX_PCI_SEGMENTS: usize = 4;

/// One ECAM window from the MCFG: the configuration space of buses
/// `bus_start..=bus_end` of one PCI segment, 1 MiB per bus from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamWindow {
    /// Physical address of bus 0's configuration space (even if `bus_start` > 0).
    pub base: keel_types::PhysAddr,
    /// The PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded.
    pub bus_end: u8,
}

/// What ACPI says about the machine.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// The MADT as parsed: CPUs, I/O APICs, interrupt source overrides.
    pub madt: MadtCpus,
    cpus: MadtCpus,
    ecam: [Option<EcamWindow>; MAX_PCI_SEGMENTS],
    /// Enabled CPUs listed beyond [`MAX_CPUS`].
    pub cpus_dropped: usize,
    /// CPUs the MADT marks online capable but not enabled (hot-pluggable, absent now):
    /// not started.
    pub cpus_online_capable: usize,
    /// Physical address of the first I/O APIC, if any.
    pub io_apic: Option<keel_types::PhysAddr>,
}

impl Platform {
    /// Local APIC ids of the enabled CPUs (MADT flag bit 0), boot CPU first as listed.
    pub fn apic_ids(&self) -> &[u32] {
        self.cpus.apic_ids()
    }

    /// Number of CPUs.
    pub fn cpu_count(&self) -> usize {
        self.cpus.apic_ids().len()
    }

    /// The ECAM windows of the MCFG (none on machines without PCI Express, such as
    /// microvm).
    pub fn ecam_windows(&self) -> impl Iterator<Item = EcamWindow> + '_ {
        self.ecam.iter().flatten().copied()
    }
}

/// The MCFG's ECAM windows, if the table exists and is well formed (a length too
/// short for its fixed part yields none rather than an underflow in the acpi crate).
fn ecam_windows(tables: &AcpiTables<IdentityMapped>) -> [Option<EcamWindow>; MAX_PCI_SEGMENTS] {
    let mut windows = [None; MAX_PCI_SEGMENTS];
    let Ok(mcfg) = tables.find_table::<Mcfg>() else {
        return windows;
    };
    if (mcfg.header().length as usize) < core::mem::size_of::<Mcfg>() {
        return windows;
    }
    for (slot, entry) in windows.iter_mut().zip(mcfg.entries()) {
        let (base, segment, bus_start, bus_end) = (
            entry.base_address,
            entry.pci_segment_group,
            entry.bus_number_start,
            entry.bus_number_end,
        );
        if bus_start <= bus_end {
            *slot = Some(EcamWindow {
                base: keel_types::PhysAddr::new(base),
                segment,
                bus_start,
                bus_end,
            });
        }
    }
    windows
}

/// Why the platform could not be discovered.
#[derive(Debug)]
pub enum PlatformError {
    /// The `acpi` crate found no usable RSDP, RSDT/XSDT or MADT.
    Acpi(acpi::AcpiError),
    /// The MADT's entries are malformed.
    Madt(MadtError),
}

impl From<acpi::AcpiError> for PlatformError {
    fn from(error: acpi::AcpiError) -> Self {
        Self::Acpi(error)
    }
}

/// Reads the MADT. `rsdp` is the start info's RSDP address (0: scan the BIOS area).
pub fn discover(rsdp: keel_types::PhysAddr) -> Result<Platform, PlatformError> {
    let rsdp = rsdp.as_u64();
    // SAFETY: the identity map covers the low megabyte (scanned when rsdp is 0) and every
    // memory-map region, where firmware puts the tables; the handler guards the rest.
    let tables = unsafe {
        if rsdp == 0 {
            AcpiTables::search_for_rsdp_bios(IdentityMapped)?
        } else {
            AcpiTables::from_rsdp(IdentityMapped, rsdp as usize)?
        }
    };
    let madt = tables.find_table::<Madt>()?;
    // SAFETY: the handler returned either the identity-mapped table (checked mapped page
    // by page, only read) or the static zero page, `mapped_length()` bytes in both cases
    // (at most 4096 for the zero page, which is 4096 bytes long); the slice lives no
    // longer than the mapping `madt`. The acpi crate validated the signature and checksum
    // over the table's length; `madt::parse` checks them again and every length within.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            madt.virtual_start().as_ptr().cast::<u8>(),
            madt.mapped_length(),
        )
    };
    let cpus = madt::parse(bytes).map_err(PlatformError::Madt)?;
    drop(madt);
    Ok(Platform {
        madt: cpus,
        ecam: ecam_windows(&tables),
        cpus,
        cpus_dropped: cpus.dropped,
        cpus_online_capable: cpus.online_capable,
        io_apic: cpus.io_apic,
    })
}
