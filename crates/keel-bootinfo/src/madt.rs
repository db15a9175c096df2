//! Choosing the CPUs to start from ACPI's MADT ("APIC" table): the enabled processors'
//! local APIC ids (xAPIC and x2APIC entries), the processors that are only online
//! capable (hot-pluggable, not present now), and the first I/O APIC.
//!
//! The `acpi` crate still finds the table in the guest (RSDP, RSDT/XSDT, signature and
//! checksum). Its entries are parsed here, from the table's raw bytes, because which
//! CPUs get INIT/SIPI is a decision that must be testable on the host: the architecture
//! crate cannot run host tests, and the `acpi` crate's entry iterator walks a `Madt`
//! that it reads through pointers into mapped memory, not a byte slice. This parser
//! checks the signature, the checksum and every length (the table's, and each entry's
//! against its type's minimum and the table end), and returns a [`MadtError`] for bad
//! input, never a panic.
//!
//! Local APIC flags (ACPI 6.5, section 5.2.12.2, table 5.23; the x2APIC entry uses the
//! same flags): bit 0 `Enabled`: the processor is ready for use. Bit 1
//! `Online Capable`: when `Enabled` is clear, the processor can be enabled at run time
//! (hot plug); when `Enabled` is set, the bit is reserved. So only entries with bit 0 set
//! are started; an entry with flags `0b10` is counted in
//! [`MadtCpus::online_capable`] and one with neither bit in [`MadtCpus::absent`].

use core::fmt;

use crate::PhysAddr;

/// CPUs whose ids are kept at most (the architecture crate's limit).
pub const MAX_CPUS: usize = 64;

/// Bytes of the standard ACPI table header.
const HEADER_LEN: usize = 36;
/// The header plus the local APIC address and the MADT flags: where entries start.
const ENTRIES_OFFSET: usize = HEADER_LEN + 8;

const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_INTERRUPT_OVERRIDE: u8 = 2;
const TYPE_LOCAL_X2APIC: u8 = 9;

const FLAG_ENABLED: u32 = 1 << 0;
const FLAG_ONLINE_CAPABLE: u32 = 1 << 1;

/// What is wrong with a MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadtError {
    /// Fewer bytes than the fixed part of the table (or than its own length field says).
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The signature is not `APIC`.
    BadSignature([u8; 4]),
    /// The table's length field is smaller than the fixed part of a MADT.
    BadTableLength(u32),
    /// The bytes of the table do not sum to zero (mod 256).
    BadChecksum,
    /// An entry's length is shorter than its header, shorter than its type needs, or
    /// runs past the table's end.
    BadEntry {
        /// Offset of the entry in the table.
        offset: usize,
        /// The entry's type.
        kind: u8,
        /// The entry's length field.
        length: u8,
    },
}

impl fmt::Display for MadtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(f, "MADT truncated: {available} bytes, {needed} needed")
            }
            Self::BadSignature(signature) => write!(f, "MADT signature is {signature:?}"),
            Self::BadTableLength(length) => write!(f, "MADT length field {length} too small"),
            Self::BadChecksum => write!(f, "MADT checksum does not sum to zero"),
            Self::BadEntry {
                offset,
                kind,
                length,
            } => write!(
                f,
                "MADT entry at offset {offset} (type {kind}) has bad length {length}"
            ),
        }
    }
}

/// I/O APICs recorded at most.
pub const MAX_IO_APICS: usize = 8;
/// Interrupt source overrides recorded at most.
pub const MAX_OVERRIDES: usize = 16;

/// One I/O APIC (MADT entry type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoApicEntry {
    /// Its I/O APIC id.
    pub id: u8,
    /// Physical address of its registers.
    pub address: PhysAddr,
    /// The first global system interrupt (GSI) its inputs serve.
    pub gsi_base: u32,
}

/// The electrical shape of an interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineShape {
    /// Active low (else active high).
    pub active_low: bool,
    /// Level triggered (else edge).
    pub level_triggered: bool,
}

impl LineShape {
    /// ISA interrupts: edge triggered, active high.
    pub const ISA: Self = Self {
        active_low: false,
        level_triggered: false,
    };
}

/// An interrupt source override (MADT entry type 2): ISA IRQ `source` arrives at
/// `gsi`, with `shape`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptOverride {
    /// The ISA IRQ.
    pub source: u8,
    /// The GSI it is wired to.
    pub gsi: u32,
    /// Polarity and trigger mode.
    pub shape: LineShape,
}

/// Decodes the MPS INTI flags of an override: polarity bits 0-1 (0 = bus default,
/// 1 = high, 3 = low), trigger bits 2-3 (0 = bus default, 1 = edge, 3 = level). ISA's
/// default is edge, active high.
fn line_shape(flags: u16) -> LineShape {
    LineShape {
        active_low: flags & 0b11 == 0b11,
        level_triggered: (flags >> 2) & 0b11 == 0b11,
    }
}

/// What the MADT says about the processors and the I/O APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadtCpus {
    apic_ids: [u32; MAX_CPUS],
    count: usize,
    /// Enabled CPUs listed beyond [`MAX_CPUS`] (not kept).
    pub dropped: usize,
    /// Entries with `Online Capable` but not `Enabled`: hot-pluggable CPUs, not started.
    pub online_capable: usize,
    /// Entries with neither flag: CPUs that are not there and cannot be plugged in.
    pub absent: usize,
    /// Physical address of the first I/O APIC entry, if any.
    pub io_apic: Option<PhysAddr>,
    io_apics: [IoApicEntry; MAX_IO_APICS],
    io_apic_count: usize,
    overrides: [Option<InterruptOverride>; MAX_OVERRIDES],
    override_count: usize,
    /// I/O APIC or override entries beyond the limits (not kept).
    pub interrupt_entries_dropped: usize,
}

impl MadtCpus {
    /// Local APIC ids of the enabled CPUs, in table order (the boot CPU is usually first).
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.count]
    }

    /// The I/O APICs, in table order.
    pub fn io_apics(&self) -> &[IoApicEntry] {
        &self.io_apics[..self.io_apic_count]
    }

    /// The interrupt source overrides, in table order.
    pub fn overrides(&self) -> impl Iterator<Item = InterruptOverride> + '_ {
        self.overrides[..self.override_count]
            .iter()
            .flatten()
            .copied()
    }

    /// Where ISA IRQ `irq` arrives: its override's GSI and shape, else GSI `irq`,
    /// edge triggered and active high (ACPI's identity mapping for ISA IRQs).
    pub fn isa_irq(&self, irq: u8) -> (u32, LineShape) {
        self.overrides()
            .find(|entry| entry.source == irq)
            .map_or((u32::from(irq), LineShape::ISA), |entry| {
                (entry.gsi, entry.shape)
            })
    }

    /// The I/O APIC whose inputs include `gsi`, and the input's index: the one with
    /// the highest base at or below `gsi` (the caller checks the index against the
    /// chip's own count of inputs).
    pub fn io_apic_for(&self, gsi: u32) -> Option<(IoApicEntry, u32)> {
        self.io_apics()
            .iter()
            .filter(|chip| chip.gsi_base <= gsi)
            .max_by_key(|chip| chip.gsi_base)
            .map(|chip| (*chip, gsi - chip.gsi_base))
    }

    fn add(&mut self, id: u32) {
        if self.count < MAX_CPUS {
            self.apic_ids[self.count] = id;
            self.count += 1;
        } else {
            self.dropped += 1;
        }
    }

    fn note(&mut self, flags: u32, id: u32) {
        if flags & FLAG_ENABLED != 0 {
            self.add(id);
        } else if flags & FLAG_ONLINE_CAPABLE != 0 {
            self.online_capable += 1;
        } else {
            self.absent += 1;
        }
    }
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    // Callers checked `offset + 4 <= bytes.len()`; a zero fallback keeps this total.
    bytes
        .get(offset..offset + 4)
        .and_then(|field| field.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Parses a whole MADT (`bytes` starts at the table header; bytes past the header's
/// length are ignored).
pub fn parse(bytes: &[u8]) -> Result<MadtCpus, MadtError> {
    if bytes.len() < ENTRIES_OFFSET {
        return Err(MadtError::Truncated {
            needed: ENTRIES_OFFSET,
            available: bytes.len(),
        });
    }
    let signature = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if &signature != b"APIC" {
        return Err(MadtError::BadSignature(signature));
    }
    let length_field = u32_at(bytes, 4);
    let length = usize::try_from(length_field).unwrap_or(usize::MAX);
    if length < ENTRIES_OFFSET {
        return Err(MadtError::BadTableLength(length_field));
    }
    if length > bytes.len() {
        return Err(MadtError::Truncated {
            needed: length,
            available: bytes.len(),
        });
    }
    let table = &bytes[..length];
    if table.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte)) != 0 {
        return Err(MadtError::BadChecksum);
    }
    let mut cpus = MadtCpus {
        apic_ids: [0; MAX_CPUS],
        count: 0,
        dropped: 0,
        online_capable: 0,
        absent: 0,
        io_apic: None,
        io_apics: [IoApicEntry::default(); MAX_IO_APICS],
        io_apic_count: 0,
        overrides: [None; MAX_OVERRIDES],
        override_count: 0,
        interrupt_entries_dropped: 0,
    };
    let mut offset = ENTRIES_OFFSET;
    while offset < length {
        let bad = |kind: u8, entry_length: u8| MadtError::BadEntry {
            offset,
            kind,
            length: entry_length,
        };
        let kind = table[offset];
        let Some(&entry_length) = table.get(offset + 1) else {
            return Err(bad(kind, 0));
        };
        let minimum = match kind {
            TYPE_LOCAL_APIC => 8,
            TYPE_IO_APIC => 12,
            TYPE_INTERRUPT_OVERRIDE => 10,
            TYPE_LOCAL_X2APIC => 16,
            _ => 2,
        };
        let end = offset + usize::from(entry_length);
        if usize::from(entry_length) < minimum || end > length {
            return Err(bad(kind, entry_length));
        }
        let entry = &table[offset..end];
        match kind {
            // Type 0: ACPI processor uid (u8), APIC id (u8), flags (u32).
            TYPE_LOCAL_APIC => cpus.note(u32_at(entry, 4), u32::from(entry[3])),
            // Type 1: I/O APIC id (u8), reserved (u8), address (u32), GSI base (u32).
            TYPE_IO_APIC => {
                let chip = IoApicEntry {
                    id: entry[2],
                    address: PhysAddr::new(u64::from(u32_at(entry, 4))),
                    gsi_base: u32_at(entry, 8),
                };
                cpus.io_apic.get_or_insert(chip.address);
                if cpus.io_apic_count < MAX_IO_APICS {
                    cpus.io_apics[cpus.io_apic_count] = chip;
                    cpus.io_apic_count += 1;
                } else {
                    cpus.interrupt_entries_dropped += 1;
                }
            }
            // Type 2: bus (u8, 0 = ISA), source IRQ (u8), GSI (u32), flags (u16).
            TYPE_INTERRUPT_OVERRIDE => {
                let flags = u16::from_le_bytes([entry[8], entry[9]]);
                let item = InterruptOverride {
                    source: entry[3],
                    gsi: u32_at(entry, 4),
                    shape: line_shape(flags),
                };
                if cpus.override_count < MAX_OVERRIDES {
                    cpus.overrides[cpus.override_count] = Some(item);
                    cpus.override_count += 1;
                } else {
                    cpus.interrupt_entries_dropped += 1;
                }
            }
            // Type 9: reserved (u16), x2APIC id (u32), flags (u32), ACPI uid (u32).
            TYPE_LOCAL_X2APIC => cpus.note(u32_at(entry, 8), u32_at(entry, 4)),
            _ => {}
        }
        offset = end;
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Captured from QEMU 7.2 q35 `-smp 2,maxcpus=4` (see tests/fixtures/README.md).
    const QEMU_Q35_SMP2_MAXCPUS4: &[u8] =
        include_bytes!("../tests/fixtures/qemu-q35-smp2-maxcpus4.madt");

    /// A MADT with the given entries and a correct length and checksum.
    fn table(entries: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"APIC");
        bytes.extend_from_slice(&[0; 4]); // length, below
        bytes.push(5); // revision
        bytes.push(0); // checksum, below
        bytes.extend_from_slice(b"KEELOS");
        bytes.extend_from_slice(b"KEELTEST");
        bytes.extend_from_slice(&[0; 12]); // OEM revision, creator id and revision
        bytes.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for entry in entries {
            bytes.extend_from_slice(entry);
        }
        let length = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        fix_checksum(&mut bytes);
        bytes
    }

    fn fix_checksum(bytes: &mut [u8]) {
        bytes[9] = 0;
        let sum = bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte));
        bytes[9] = 0u8.wrapping_sub(sum);
    }

    fn local_apic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut entry = std::vec![0, 8, uid, id];
        entry.extend_from_slice(&flags.to_le_bytes());
        entry
    }

    fn local_x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut entry = std::vec![9, 16, 0, 0];
        entry.extend_from_slice(&id.to_le_bytes());
        entry.extend_from_slice(&flags.to_le_bytes());
        entry.extend_from_slice(&id.to_le_bytes());
        entry
    }

    fn io_apic(address: u32) -> Vec<u8> {
        io_apic_with(0, address, 0)
    }

    fn io_apic_with(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
        let mut entry = std::vec![1, 12, id, 0];
        entry.extend_from_slice(&address.to_le_bytes());
        entry.extend_from_slice(&gsi_base.to_le_bytes());
        entry
    }

    fn interrupt_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
        let mut entry = std::vec![2, 10, 0, source];
        entry.extend_from_slice(&gsi.to_le_bytes());
        entry.extend_from_slice(&flags.to_le_bytes());
        entry
    }

    #[test]
    fn qemu_q35_lists_its_io_apic_and_the_timer_override() {
        let cpus = parse(QEMU_Q35_SMP2_MAXCPUS4).unwrap();
        assert_eq!(
            cpus.io_apics(),
            &[IoApicEntry {
                id: 0,
                address: PhysAddr::new(0xfec0_0000),
                gsi_base: 0
            }]
        );
        // QEMU wires the PIT's IRQ 0 to GSI 2 and marks the ACPI SCI (IRQ 9) level
        // triggered, active high.
        assert_eq!(cpus.isa_irq(0).0, 2);
        assert_eq!(
            cpus.isa_irq(9),
            (
                9,
                LineShape {
                    active_low: false,
                    level_triggered: true
                }
            )
        );
        assert_eq!(
            cpus.isa_irq(4),
            (4, LineShape::ISA),
            "no override: identity"
        );
    }

    #[test]
    fn overrides_and_several_io_apics_route_gsis() {
        let bytes = table(&[
            &local_apic(0, 0, 1),
            &io_apic_with(1, 0xfec0_0000, 0),
            &io_apic_with(2, 0xfec1_0000, 24),
            &interrupt_override(0, 2, 0),
            &interrupt_override(5, 30, 0b1111),
        ]);
        let cpus = parse(&bytes).unwrap();
        assert_eq!(cpus.io_apics().len(), 2);
        assert_eq!(cpus.isa_irq(0), (2, LineShape::ISA));
        assert_eq!(
            cpus.isa_irq(5),
            (
                30,
                LineShape {
                    active_low: true,
                    level_triggered: true
                }
            )
        );
        let (chip, input) = cpus.io_apic_for(30).unwrap();
        assert_eq!((chip.id, input), (2, 6));
        let (chip, input) = cpus.io_apic_for(23).unwrap();
        assert_eq!((chip.id, input), (1, 23));
        // A short override entry is malformed, not read past its end.
        let short = table(&[&[2, 8, 0, 0, 0, 0, 0, 0]]);
        assert!(matches!(
            parse(&short),
            Err(MadtError::BadEntry { kind: 2, .. })
        ));
    }

    #[test]
    fn qemu_q35_maxcpus_starts_only_the_present_cpus() {
        let cpus = parse(QEMU_Q35_SMP2_MAXCPUS4).unwrap();
        assert_eq!(cpus.apic_ids(), &[0, 1]);
        // QEMU 7.2 lists the two not-yet-plugged CPUs with flags 0.
        assert_eq!(cpus.absent, 2);
        assert_eq!(cpus.online_capable, 0);
        assert_eq!(cpus.dropped, 0);
        assert_eq!(cpus.io_apic, Some(PhysAddr::new(0xfec0_0000)));
    }

    #[test]
    fn online_capable_but_disabled_cpus_are_skipped_and_counted() {
        let bytes = table(&[
            &local_apic(0, 0, 0b01),
            &local_apic(1, 1, 0b10),
            &local_apic(2, 2, 0b11), // enabled; bit 1 reserved when enabled
            &local_x2apic(0x100, 0b10),
            &local_x2apic(0x101, 0b01),
            &local_x2apic(0x102, 0b00),
            &io_apic(0xfec0_0000),
            &io_apic(0xfec1_0000),
        ]);
        let cpus = parse(&bytes).unwrap();
        assert_eq!(cpus.apic_ids(), &[0, 2, 0x101]);
        assert_eq!(cpus.online_capable, 2);
        assert_eq!(cpus.absent, 1);
        assert_eq!(
            cpus.io_apic,
            Some(PhysAddr::new(0xfec0_0000)),
            "the first I/O APIC"
        );
    }

    #[test]
    fn cpus_beyond_the_limit_are_dropped_and_counted() {
        let entries: Vec<Vec<u8>> = (0..MAX_CPUS as u32 + 3)
            .map(|id| local_x2apic(id, 1))
            .collect();
        let entries: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        let cpus = parse(&table(&entries)).unwrap();
        assert_eq!(cpus.apic_ids().len(), MAX_CPUS);
        assert_eq!(cpus.dropped, 3);
    }

    #[test]
    fn unknown_entry_types_are_skipped() {
        let bytes = table(&[&[4, 6, 0xff, 0, 0, 1], &local_apic(0, 7, 1)]);
        assert_eq!(parse(&bytes).unwrap().apic_ids(), &[7]);
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = table(&[&local_apic(0, 0, 1)]);
        let mut signature = good.clone();
        signature[0] = b'X';
        assert_eq!(parse(&signature), Err(MadtError::BadSignature(*b"XPIC")));
        let mut checksum = good.clone();
        checksum[9] ^= 1;
        assert_eq!(parse(&checksum), Err(MadtError::BadChecksum));
        let mut short_length = good.clone();
        short_length[4..8].copy_from_slice(&43u32.to_le_bytes());
        assert_eq!(parse(&short_length), Err(MadtError::BadTableLength(43)));
        let mut long_length = good.clone();
        long_length[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&long_length),
            Err(MadtError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_entry_lengths_are_errors() {
        for entry in [
            std::vec![0u8, 0],                   // zero length would never advance
            std::vec![0u8, 1],                   // shorter than an entry header
            std::vec![0u8, 6, 0, 0, 0, 0],       // local APIC needs 8
            std::vec![9u8, 8, 0, 0, 0, 0, 0, 0], // x2APIC needs 16
            std::vec![1u8, 8, 0, 0, 0, 0, 0, 0], // I/O APIC needs 12
            std::vec![0u8, 9, 0, 0, 1, 0, 0, 0], // runs past the end
            std::vec![0u8],                      // a lone type byte at the end
        ] {
            let bytes = table(&[&local_apic(0, 0, 1), &entry]);
            assert!(
                matches!(parse(&bytes), Err(MadtError::BadEntry { offset: 52, .. })),
                "{entry:?}: {:?}",
                parse(&bytes)
            );
        }
    }

    #[test]
    fn every_truncation_of_the_captured_table_is_an_error() {
        for cut in 0..QEMU_Q35_SMP2_MAXCPUS4.len() {
            assert!(
                parse(&QEMU_Q35_SMP2_MAXCPUS4[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Every single-byte corruption of the captured table, with the checksum fixed
        // up so that the entry walk sees it, and a cheap xorshift stream of random tables.
        for offset in 0..QEMU_Q35_SMP2_MAXCPUS4.len() {
            for value in [0u8, 1, 2, 7, 8, 9, 0x10, 0x7f, 0x80, 0xff] {
                let mut bytes = QEMU_Q35_SMP2_MAXCPUS4.to_vec();
                bytes[offset] = value;
                if offset != 9 {
                    fix_checksum(&mut bytes);
                }
                let _ = parse(&bytes);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20_000 {
            let mut bytes = table(&[]);
            for _ in 0..(round % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8 % 12);
                bytes.push((state >> 8) as u8 % 20);
            }
            let length = bytes.len() as u32;
            bytes[4..8].copy_from_slice(&length.to_le_bytes());
            fix_checksum(&mut bytes);
            let _ = parse(&bytes);
        }
    }
}
