//! The I/O APIC: routes a global system interrupt (GSI) to a vector on a CPU.
//!
//! The MADT lists the chips (address, first GSI) and the interrupt source overrides
//! that move ISA IRQs to other GSIs with their own polarity and trigger mode
//! (`keel_bootinfo::madt`). [`route`] finds the chip whose inputs include the GSI,
//! checks the input exists (the version register's count), and writes the redirection
//! entry: fixed delivery, physical destination, unmasked. Keel programs nothing else,
//! so every other input stays masked as firmware left it (QEMU resets them masked).
//!
//! Registers are reached through the chip's index/data window (IOREGSEL at +0x00, IOWIN
//! at +0x10), which one lock serialises.

use crate::paging;
use keel_bootinfo::madt::{LineShape, MadtCpus};

const REGISTER_SELECT: u64 = 0x00;
const REGISTER_WINDOW: u64 = 0x10;
const REGISTER_VERSION: u32 = 0x01;
const REDIRECTION_BASE: u32 = 0x10;

/// Serialises the index/data register pairs of every chip.
static WINDOW: spin::Mutex<()> = spin::Mutex::new(());

/// Why a GSI could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No I/O APIC in the MADT serves this GSI.
    NoChip(u32),
    /// The chip serving it has fewer inputs.
    NoSuchInput {
        /// The GSI.
        gsi: u32,
        /// Inputs the chip has.
        inputs: u32,
    },
    /// The destination APIC id does not fit the entry's 8 bits (x2APIC ids above 255
    /// need interrupt remapping, which Keel does not program).
    Destination(u32),
    /// The chip's registers could not be mapped.
    Map(paging::PagingError),
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoChip(gsi) => write!(f, "no I/O APIC serves GSI {gsi}"),
            Self::NoSuchInput { gsi, inputs } => {
                write!(f, "GSI {gsi} is beyond its I/O APIC's {inputs} inputs")
            }
            Self::Destination(id) => write!(f, "APIC id {id} cannot be an I/O APIC destination"),
            Self::Map(error) => write!(f, "cannot map the I/O APIC: {error}"),
        }
    }
}

/// The 64-bit redirection entry: `vector`, fixed delivery, physical destination
/// `apic_id`, polarity and trigger from `shape`, unmasked.
pub fn redirection_entry(vector: u8, apic_id: u8, shape: LineShape) -> u64 {
    let mut low = u64::from(vector);
    if shape.active_low {
        low |= 1 << 13;
    }
    if shape.level_triggered {
        low |= 1 << 15;
    }
    low | (u64::from(apic_id) << 56)
}

fn read(base: u64, register: u32) -> u32 {
    // SAFETY: `base` is an I/O APIC's register page, mapped uncached by `route` (or by
    // the page-table builder for the first chip); the index register selects what the
    // window register then reads, under `WINDOW`.
    unsafe {
        core::ptr::write_volatile((base + REGISTER_SELECT) as *mut u32, register);
        core::ptr::read_volatile((base + REGISTER_WINDOW) as *const u32)
    }
}

fn write(base: u64, register: u32, value: u32) {
    // SAFETY: as in `read`.
    unsafe {
        core::ptr::write_volatile((base + REGISTER_SELECT) as *mut u32, register);
        core::ptr::write_volatile((base + REGISTER_WINDOW) as *mut u32, value);
    }
}

/// Routes `gsi` to `vector` on the CPU with local APIC id `apic_id`, with `shape`.
pub fn route(
    madt: &MadtCpus,
    gsi: u32,
    shape: LineShape,
    vector: u8,
    apic_id: u32,
) -> Result<(), RouteError> {
    let (chip, input) = madt.io_apic_for(gsi).ok_or(RouteError::NoChip(gsi))?;
    let destination = u8::try_from(apic_id).map_err(|_| RouteError::Destination(apic_id))?;
    paging::map_device_memory(chip.address, 0x20).map_err(RouteError::Map)?;
    let base = chip.address.as_u64();
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _window = WINDOW.lock();
        let inputs = ((read(base, REGISTER_VERSION) >> 16) & 0xff) + 1;
        if input >= inputs {
            return Err(RouteError::NoSuchInput { gsi, inputs });
        }
        let entry = redirection_entry(vector, destination, shape);
        let register = REDIRECTION_BASE + 2 * input;
        // Masked while the halves change, then the low half (with the mask clear) last.
        write(base, register, 1 << 16);
        write(base, register + 1, (entry >> 32) as u32);
        write(base, register, entry as u32);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirection_entries_encode_vector_shape_and_destination() {
        assert_eq!(redirection_entry(0x50, 0, LineShape::ISA), 0x50);
        let level_low = LineShape {
            active_low: true,
            level_triggered: true,
        };
        assert_eq!(
            redirection_entry(0x61, 3, level_low),
            0x0300_0000_0000_0000 | 1 << 15 | 1 << 13 | 0x61
        );
        // Never masked (bit 16), always fixed delivery (bits 8-10 zero), physical.
        assert_eq!(redirection_entry(0xef, 0xff, level_low) & 0x1_0f00, 0);
    }
}
