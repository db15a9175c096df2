//! Platform discovery from ACPI: the CPUs (local APIC ids from the MADT) and the I/O
//! APIC, through the `acpi` crate (table parsing is not Keel's contribution).
//!
//! Tables are reached through the identity map. Addresses inside the tables are
//! untrusted: a region that is not mapped is served from a zeroed page instead, so a
//! corrupt pointer makes the `acpi` crate's signature or checksum validation fail
//! cleanly rather than fault.

use crate::paging;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;

/// CPUs recorded at most.
pub const MAX_CPUS: usize = 64;

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
        .all(|page| paging::flags_of(page).is_some())
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

/// What ACPI says about the machine.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    apic_ids: [u32; MAX_CPUS],
    cpu_count: usize,
    /// CPUs listed beyond [`MAX_CPUS`].
    pub cpus_dropped: usize,
    /// Physical address of the first I/O APIC, if any.
    pub io_apic: Option<u64>,
}

impl Platform {
    /// Local APIC ids of the enabled (or online-capable) CPUs, boot CPU first as listed.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.cpu_count]
    }

    /// Number of CPUs.
    pub fn cpu_count(&self) -> usize {
        self.cpu_count
    }
}

/// Reads the MADT. `rsdp` is the start info's RSDP address (0: scan the BIOS area).
pub fn discover(rsdp: u64) -> Result<Platform, acpi::AcpiError> {
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
    let mut platform = Platform {
        apic_ids: [0; MAX_CPUS],
        cpu_count: 0,
        cpus_dropped: 0,
        io_apic: None,
    };
    let add = |platform: &mut Platform, id: u32| {
        if platform.cpu_count < MAX_CPUS {
            platform.apic_ids[platform.cpu_count] = id;
            platform.cpu_count += 1;
        } else {
            platform.cpus_dropped += 1;
        }
    };
    for entry in madt.get().entries() {
        match entry {
            // Flags bit 0: enabled; bit 1: online capable.
            MadtEntry::LocalApic(cpu) if cpu.flags & 0b11 != 0 => {
                add(&mut platform, u32::from(cpu.apic_id))
            }
            MadtEntry::LocalX2Apic(cpu) if cpu.flags & 0b11 != 0 => {
                add(&mut platform, cpu.x2apic_id)
            }
            MadtEntry::IoApic(io_apic) if platform.io_apic.is_none() => {
                platform.io_apic = Some(u64::from(io_apic.io_apic_address));
            }
            _ => {}
        }
    }
    Ok(platform)
}
