//! Parsing the PVH `hvm_start_info` structure: memory map, command line, modules, RSDP.
//!
//! The structure arrives from the hypervisor, so it is treated as untrusted input: the
//! parser reads it through [`PhysicalMemory`] (a fake on the host, identity-mapped
//! memory in the guest), validates the magic, version and every count and length, and
//! copies what it keeps into a fixed-size [`BootInfo`] (no heap exists yet). Bad input
//! yields a [`BootInfoError`], never a panic. Physical addresses (the structure's own,
//! memory regions, modules, the RSDP, the MADT's I/O APIC) are `keel-types`'
//! [`PhysAddr`], re-exported here. Layout: Xen's
//! `xen/include/public/arch-x86/hvm/start_info.h`.
//!
//! A crate of its own (rather than a module of `keel-arch-x86_64`) so that it has no
//! unsafe code and its tests run on the host: the architecture crate links boot
//! assembly that cannot be linked into a host test executable.
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

pub use keel_types::PhysAddr;

pub mod madt;
pub mod virtio_mmio;

/// The value of `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Memory-map entries kept at most.
pub const MAX_MEMORY_REGIONS: usize = 128;
/// Command-line bytes kept at most.
pub const MAX_COMMAND_LINE: usize = 4096;
/// Modules (`-initrd` files) kept at most.
pub const MAX_MODULES: usize = 8;

/// Read access to guest-physical memory during boot.
pub trait PhysicalMemory {
    /// Fills `out` with the bytes at physical `address`, or fails if they are not
    /// readable.
    fn read(&self, address: PhysAddr, out: &mut [u8]) -> Result<(), BootInfoError>;
}

/// What is wrong with the start-info structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// The magic field is not [`START_INFO_MAGIC`]: not booted through PVH.
    BadMagic(u32),
    /// Version 0 structures carry no memory map, which Keel needs.
    NoMemoryMap {
        /// The structure's version field.
        version: u32,
    },
    /// A referenced address cannot be read.
    Unreadable {
        /// The physical address.
        address: PhysAddr,
        /// Bytes that were to be read.
        len: usize,
    },
    /// The memory map lists no usable RAM.
    NoUsableMemory,
    /// The command line is not valid UTF-8.
    CommandLineNotUtf8,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(magic) => write!(
                f,
                "start info magic is {magic:#x}, expected {START_INFO_MAGIC:#x} (not a PVH boot?)"
            ),
            Self::NoMemoryMap { version } => {
                write!(f, "start info version {version} carries no memory map")
            }
            Self::Unreadable { address, len } => {
                write!(f, "cannot read {len} bytes of boot data at {address:#x}")
            }
            Self::NoUsableMemory => write!(f, "the memory map lists no usable RAM"),
            Self::CommandLineNotUtf8 => write!(f, "the kernel command line is not UTF-8"),
        }
    }
}

/// The type of a memory-map region (E820 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram,
    /// Reserved (firmware, MMIO).
    Reserved,
    /// ACPI tables, reclaimable after parsing.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Defective memory.
    Unusable,
    /// Any other type number.
    Other(u32),
}

impl MemoryKind {
    fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            other => Self::Other(other),
        }
    }

    /// Whether the region is ordinary memory (write-back cacheable) rather than MMIO.
    pub fn is_memory(self) -> bool {
        matches!(self, Self::Ram | Self::AcpiReclaimable | Self::AcpiNvs)
    }
}

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Physical start address.
    pub start: PhysAddr,
    /// Length in bytes.
    pub size: u64,
    /// What the region is.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the last byte (saturating).
    pub fn end(&self) -> PhysAddr {
        PhysAddr::new(self.start.as_u64().saturating_add(self.size))
    }
}

/// A module handed over by the loader (QEMU's `-initrd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootModule {
    /// Physical address.
    pub start: PhysAddr,
    /// Size in bytes.
    pub size: u64,
}

/// What the kernel keeps of the start-info structure.
#[derive(Debug, Clone)]
pub struct BootInfo {
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: usize,
    /// Memory-map entries beyond [`MAX_MEMORY_REGIONS`] that were dropped.
    pub regions_dropped: usize,
    command_line: [u8; MAX_COMMAND_LINE],
    command_line_len: usize,
    /// True when the command line was longer than [`MAX_COMMAND_LINE`] and was cut.
    pub command_line_truncated: bool,
    modules: [BootModule; MAX_MODULES],
    module_count: usize,
    /// Physical address of the ACPI RSDP, 0 when the loader gave none.
    pub rsdp: PhysAddr,
    /// The start-info version.
    pub version: u32,
}

const EMPTY_REGION: MemoryRegion = MemoryRegion {
    start: PhysAddr::new(0),
    size: 0,
    kind: MemoryKind::Reserved,
};

fn read_array<const N: usize>(
    memory: &impl PhysicalMemory,
    address: u64,
) -> Result<[u8; N], BootInfoError> {
    let mut bytes = [0u8; N];
    memory.read(PhysAddr::new(address), &mut bytes)?;
    Ok(bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | (u64::from(u32_at(bytes, at + 4)) << 32)
}

impl BootInfo {
    /// Parses the structure at physical `address`.
    pub fn parse(memory: &impl PhysicalMemory, address: PhysAddr) -> Result<Self, BootInfoError> {
        let header: [u8; 56] = read_array(memory, address.as_u64())?;
        let magic = u32_at(&header, 0);
        if magic != START_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(magic));
        }
        let version = u32_at(&header, 4);
        if version < 1 {
            return Err(BootInfoError::NoMemoryMap { version });
        }
        let module_count_raw = u32_at(&header, 12) as usize;
        let modlist = u64_at(&header, 16);
        let command_line_address = u64_at(&header, 24);
        let rsdp = u64_at(&header, 32);
        let memmap = u64_at(&header, 40);
        let memmap_entries = u32_at(&header, 48) as usize;

        let mut info = BootInfo {
            regions: [EMPTY_REGION; MAX_MEMORY_REGIONS],
            region_count: 0,
            regions_dropped: memmap_entries.saturating_sub(MAX_MEMORY_REGIONS),
            command_line: [0; MAX_COMMAND_LINE],
            command_line_len: 0,
            command_line_truncated: false,
            modules: [BootModule::default(); MAX_MODULES],
            module_count: 0,
            rsdp: PhysAddr::new(rsdp),
            version,
        };
        for index in 0..memmap_entries.min(MAX_MEMORY_REGIONS) {
            let entry: [u8; 24] = read_array(memory, memmap + index as u64 * 24)?;
            let region = MemoryRegion {
                start: PhysAddr::new(u64_at(&entry, 0)),
                size: u64_at(&entry, 8),
                kind: MemoryKind::from_raw(u32_at(&entry, 16)),
            };
            if region.size > 0 {
                info.regions[info.region_count] = region;
                info.region_count += 1;
            }
        }
        if !info
            .memory_regions()
            .iter()
            .any(|r| r.kind == MemoryKind::Ram)
        {
            return Err(BootInfoError::NoUsableMemory);
        }
        for index in 0..module_count_raw.min(MAX_MODULES) {
            let entry: [u8; 32] = read_array(memory, modlist + index as u64 * 32)?;
            info.modules[index] = BootModule {
                start: PhysAddr::new(u64_at(&entry, 0)),
                size: u64_at(&entry, 8),
            };
            info.module_count += 1;
        }
        if command_line_address != 0 {
            // Read byte-wise up to the terminator: the string's length is not given.
            while info.command_line_len < MAX_COMMAND_LINE {
                let [byte]: [u8; 1] =
                    read_array(memory, command_line_address + info.command_line_len as u64)?;
                if byte == 0 {
                    break;
                }
                info.command_line[info.command_line_len] = byte;
                info.command_line_len += 1;
            }
            if info.command_line_len == MAX_COMMAND_LINE {
                let mut next = [0u8; 1];
                memory.read(
                    PhysAddr::new(command_line_address + MAX_COMMAND_LINE as u64),
                    &mut next,
                )?;
                info.command_line_truncated = next[0] != 0;
            }
            if core::str::from_utf8(&info.command_line[..info.command_line_len]).is_err() {
                return Err(BootInfoError::CommandLineNotUtf8);
            }
        }
        Ok(info)
    }

    /// The memory map, in the loader's order.
    pub fn memory_regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// Total bytes of usable RAM.
    pub fn usable_memory(&self) -> u64 {
        self.memory_regions()
            .iter()
            .filter(|region| region.kind == MemoryKind::Ram)
            .map(|region| region.size)
            .sum()
    }

    /// The kernel command line.
    pub fn command_line(&self) -> &str {
        // Validated as UTF-8 by `parse`; a cut in the middle of a character would have
        // failed that validation, so this never falls back in practice.
        core::str::from_utf8(&self.command_line[..self.command_line_len]).unwrap_or("")
    }

    /// The value of `key=value` on the command line, if present (last one wins).
    pub fn command_line_value(&self, key: &str) -> Option<&str> {
        self.command_line()
            .split_ascii_whitespace()
            .filter_map(|word| word.split_once('='))
            .filter(|(name, _)| *name == key)
            .map(|(_, value)| value)
            .next_back()
    }

    /// Whether the bare word `flag` is on the command line.
    pub fn command_line_has(&self, flag: &str) -> bool {
        self.command_line()
            .split_ascii_whitespace()
            .any(|word| word == flag)
    }

    /// Modules handed over by the loader.
    pub fn modules(&self) -> &[BootModule] {
        &self.modules[..self.module_count]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    use std::vec::Vec;

    /// Guest memory as a byte vector starting at physical 0.
    struct FakeMemory(Vec<u8>);

    impl PhysicalMemory for FakeMemory {
        fn read(&self, address: PhysAddr, out: &mut [u8]) -> Result<(), BootInfoError> {
            let start = address.as_u64() as usize;
            let bytes = self
                .0
                .get(start..start + out.len())
                .ok_or(BootInfoError::Unreadable {
                    address,
                    len: out.len(),
                })?;
            out.copy_from_slice(bytes);
            Ok(())
        }
    }

    fn put(memory: &mut [u8], at: usize, bytes: &[u8]) {
        memory[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn sample(command_line: &[u8], regions: &[(u64, u64, u32)]) -> FakeMemory {
        let mut memory = std::vec![0u8; 0x4000];
        put(&mut memory, 0x100, &START_INFO_MAGIC.to_le_bytes());
        put(&mut memory, 0x104, &1u32.to_le_bytes());
        put(&mut memory, 0x100 + 24, &0x800u64.to_le_bytes());
        put(&mut memory, 0x100 + 32, &0xf0000u64.to_le_bytes());
        put(&mut memory, 0x100 + 40, &0x1000u64.to_le_bytes());
        put(
            &mut memory,
            0x100 + 48,
            &(regions.len() as u32).to_le_bytes(),
        );
        put(&mut memory, 0x800, command_line);
        for (index, &(start, size, kind)) in regions.iter().enumerate() {
            let at = 0x1000 + index * 24;
            put(&mut memory, at, &start.to_le_bytes());
            put(&mut memory, at + 8, &size.to_le_bytes());
            put(&mut memory, at + 16, &kind.to_le_bytes());
        }
        FakeMemory(memory)
    }

    #[test]
    fn parses_memory_map_and_command_line() {
        let memory = sample(
            b"log=debug ktest quiet=1 log=info\0",
            &[
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x100000, 0x7f00000, 1),
            ],
        );
        let info = BootInfo::parse(&memory, PhysAddr::new(0x100)).unwrap();
        assert_eq!(info.memory_regions().len(), 3);
        assert_eq!(info.usable_memory(), 0x9fc00 + 0x7f00000);
        assert_eq!(info.memory_regions()[1].kind, MemoryKind::Reserved);
        assert_eq!(info.command_line_value("log"), Some("info"));
        assert!(info.command_line_has("ktest"));
        assert!(!info.command_line_has("quiet"));
        assert_eq!(info.rsdp, PhysAddr::new(0xf0000));
    }

    #[test]
    fn rejects_bad_input_with_errors() {
        let mut memory = sample(b"\0", &[(0x100000, 0x100000, 1)]);
        memory.0[0x100] = 0;
        assert!(matches!(
            BootInfo::parse(&memory, PhysAddr::new(0x100)),
            Err(BootInfoError::BadMagic(_))
        ));
        let memory = sample(b"\0", &[(0x100000, 0x100000, 2)]);
        assert_eq!(
            BootInfo::parse(&memory, PhysAddr::new(0x100)).unwrap_err(),
            BootInfoError::NoUsableMemory
        );
        let memory = sample(b"\xff\xfe\0", &[(0x100000, 0x100000, 1)]);
        assert_eq!(
            BootInfo::parse(&memory, PhysAddr::new(0x100)).unwrap_err(),
            BootInfoError::CommandLineNotUtf8
        );
        // A memory map pointer past the end of memory.
        let mut memory = sample(b"\0", &[(0x100000, 0x100000, 1)]);
        put(&mut memory.0, 0x100 + 40, &0xffff_0000u64.to_le_bytes());
        assert!(matches!(
            BootInfo::parse(&memory, PhysAddr::new(0x100)),
            Err(BootInfoError::Unreadable { .. })
        ));
        // Start info itself unreadable.
        assert!(BootInfo::parse(&memory, PhysAddr::new(0x10_0000)).is_err());
    }

    #[test]
    fn huge_entry_counts_are_clamped() {
        // u32::MAX entries announced: only the first MAX_MEMORY_REGIONS are read, the rest
        // are counted as dropped; no attempt to read 96 GiB of entries.
        let mut memory = sample(b"\0", &[(0x100000, 0x100000, 1)]);
        put(&mut memory.0, 0x100 + 48, &u32::MAX.to_le_bytes());
        let info = BootInfo::parse(&memory, PhysAddr::new(0x100)).unwrap();
        assert_eq!(info.regions_dropped, u32::MAX as usize - MAX_MEMORY_REGIONS);
        assert_eq!(info.memory_regions().len(), 1, "zeroed entries are skipped");
        let mut memory = sample(b"\0", &[(0x100000, 0x100000, 1)]);
        put(&mut memory.0, 0x100 + 48, &200u32.to_le_bytes());
        let info = BootInfo::parse(&memory, PhysAddr::new(0x100)).unwrap();
        assert_eq!(info.regions_dropped, 200 - MAX_MEMORY_REGIONS);
    }
}
