//! The kernel's own symbol table, for symbolized backtraces.
//!
//! QEMU's PVH loader loads only the `PT_LOAD` segments of the kernel ELF, so the ELF
//! `.symtab` never reaches guest memory. Instead the kernel's linker script reserves a
//! zero-filled, loaded section (`.ksyms`), and after linking `cargo xtask build` writes a
//! sorted table of the kernel's function symbols into it (see [`SymbolTableWriter`]).
//! At run time the kernel wraps the section's bytes in a [`SymbolTable`] and calls
//! [`SymbolTable::lookup`] for each return address of a backtrace.
//!
//! Patching a reserved section in place keeps every address of the image unchanged, so a
//! single link suffices (no two-pass link). The format is little-endian:
//!
//! ```text
//! header : magic "KSYM" (4) | version u32 | count u32 | strings_len u32
//! entries: count x { address u64 | size u32 | name_offset u32 }   sorted by address
//! strings: strings_len bytes of UTF-8 names (demangled, without hash), not terminated
//! ```
//!
//! Reading validates every offset: a truncated, zeroed or corrupted table yields
//! [`SymbolTableError`] or no match, never a panic. The crate is `no_std`, has no unsafe
//! code, and is shared by the kernel (reader) and the host tool (writer, which needs only
//! `core` and a caller-provided buffer).
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

/// The four bytes every table starts with.
pub const MAGIC: [u8; 4] = *b"KSYM";
/// The format version written and understood by this crate.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 16;

/// Why a byte region is not a usable symbol table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolTableError {
    /// The region does not start with [`MAGIC`] (for example: the table was never written).
    BadMagic,
    /// The version field names a format this crate does not know.
    UnsupportedVersion(u32),
    /// The header announces more entries or string bytes than the region holds.
    Truncated,
    /// The writer's buffer is too small for the table.
    BufferTooSmall {
        /// Bytes the table needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// Entries were not added in address order.
    Unsorted,
}

impl core::fmt::Display for SymbolTableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic => write!(f, "symbol table missing (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "symbol table version {v} not supported"),
            Self::Truncated => write!(f, "symbol table truncated"),
            Self::BufferTooSmall { needed, available } => write!(
                f,
                "symbol table needs {needed} bytes but the reserved section has {available}"
            ),
            Self::Unsorted => write!(f, "symbols must be added in address order"),
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(slice.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(slice.try_into().ok()?))
}

/// A symbol found for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// The demangled function name.
    pub name: &'a str,
    /// The function's start address.
    pub address: u64,
    /// The function's size in bytes (0 when the linker did not record one).
    pub size: u32,
}

impl Symbol<'_> {
    /// The offset of `address` from the symbol's start.
    pub fn offset_of(&self, address: u64) -> u64 {
        address.wrapping_sub(self.address)
    }
}

/// A validated, read-only view of a symbol table.
#[derive(Debug, Clone, Copy)]
pub struct SymbolTable<'a> {
    entries: &'a [u8],
    strings: &'a [u8],
    count: usize,
}

impl<'a> SymbolTable<'a> {
    /// Validates the header of `bytes` and returns a view of the table.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SymbolTableError> {
        if bytes.get(0..4) != Some(&MAGIC[..]) {
            return Err(SymbolTableError::BadMagic);
        }
        let version = read_u32(bytes, 4).ok_or(SymbolTableError::Truncated)?;
        if version != VERSION {
            return Err(SymbolTableError::UnsupportedVersion(version));
        }
        let count = read_u32(bytes, 8).ok_or(SymbolTableError::Truncated)? as usize;
        let strings_len = read_u32(bytes, 12).ok_or(SymbolTableError::Truncated)? as usize;
        let entries_end = count
            .checked_mul(ENTRY_LEN)
            .and_then(|len| len.checked_add(HEADER_LEN))
            .ok_or(SymbolTableError::Truncated)?;
        let strings_end = entries_end
            .checked_add(strings_len)
            .ok_or(SymbolTableError::Truncated)?;
        let entries = bytes
            .get(HEADER_LEN..entries_end)
            .ok_or(SymbolTableError::Truncated)?;
        let strings = bytes
            .get(entries_end..strings_end)
            .ok_or(SymbolTableError::Truncated)?;
        Ok(Self {
            entries,
            strings,
            count,
        })
    }

    /// Number of symbols in the table.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the table holds no symbol.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn entry(&self, index: usize) -> Option<(u64, u32, u32)> {
        let at = index.checked_mul(ENTRY_LEN)?;
        Some((
            read_u64(self.entries, at)?,
            read_u32(self.entries, at + 8)?,
            read_u32(self.entries, at + 12)?,
        ))
    }

    fn name_at(&self, offset: u32) -> &'a str {
        let rest = self.strings.get(offset as usize..).unwrap_or(&[]);
        // Each name is followed by a NUL separator written by the writer.
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        core::str::from_utf8(&rest[..end]).unwrap_or("<invalid utf-8 symbol>")
    }

    /// The symbol at `index` (in address order), if any.
    pub fn get(&self, index: usize) -> Option<Symbol<'a>> {
        if index >= self.count {
            return None;
        }
        let (address, size, name_offset) = self.entry(index)?;
        Some(Symbol {
            name: self.name_at(name_offset),
            address,
            size,
        })
    }

    /// The function containing `address`: the last symbol starting at or below it,
    /// provided `address` lies within its recorded size (or the size is unknown).
    pub fn lookup(&self, address: u64) -> Option<Symbol<'a>> {
        // Binary search for the number of symbols starting at or below `address`.
        let (mut low, mut high) = (0usize, self.count);
        while low < high {
            let middle = low + (high - low) / 2;
            let (start, _, _) = self.entry(middle)?;
            if start <= address {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let symbol = self.get(low.checked_sub(1)?)?;
        let within = symbol.size == 0 || address - symbol.address < u64::from(symbol.size);
        within.then_some(symbol)
    }
}

/// Writes a table into a caller-provided buffer (used by `cargo xtask build`).
#[derive(Debug)]
pub struct SymbolTableWriter<'b> {
    buffer: &'b mut [u8],
    count: usize,
    capacity: usize,
    strings_len: usize,
    last_address: u64,
}

impl<'b> SymbolTableWriter<'b> {
    /// Starts a table of at most `capacity` symbols in `buffer`.
    pub fn new(buffer: &'b mut [u8], capacity: usize) -> Result<Self, SymbolTableError> {
        let needed = capacity
            .checked_mul(ENTRY_LEN)
            .and_then(|len| len.checked_add(HEADER_LEN))
            .unwrap_or(usize::MAX);
        if needed > buffer.len() {
            return Err(SymbolTableError::BufferTooSmall {
                needed,
                available: buffer.len(),
            });
        }
        Ok(Self {
            buffer,
            count: 0,
            capacity,
            strings_len: 0,
            last_address: 0,
        })
    }

    fn strings_start(&self) -> usize {
        HEADER_LEN + self.capacity * ENTRY_LEN
    }

    /// Appends a symbol; symbols must come in non-decreasing address order.
    pub fn push(&mut self, address: u64, size: u32, name: &str) -> Result<(), SymbolTableError> {
        if self.count == self.capacity {
            return Err(SymbolTableError::BufferTooSmall {
                needed: HEADER_LEN + (self.capacity + 1) * ENTRY_LEN,
                available: self.buffer.len(),
            });
        }
        if address < self.last_address {
            return Err(SymbolTableError::Unsorted);
        }
        let name_start = self.strings_start() + self.strings_len;
        let name_end = name_start + name.len() + 1;
        if name_end > self.buffer.len() {
            return Err(SymbolTableError::BufferTooSmall {
                needed: name_end,
                available: self.buffer.len(),
            });
        }
        self.buffer[name_start..name_end - 1].copy_from_slice(name.as_bytes());
        self.buffer[name_end - 1] = 0;
        let at = HEADER_LEN + self.count * ENTRY_LEN;
        self.buffer[at..at + 8].copy_from_slice(&address.to_le_bytes());
        self.buffer[at + 8..at + 12].copy_from_slice(&size.to_le_bytes());
        let name_offset =
            u32::try_from(self.strings_len).map_err(|_| SymbolTableError::BufferTooSmall {
                needed: name_end,
                available: self.buffer.len(),
            })?;
        self.buffer[at + 12..at + 16].copy_from_slice(&name_offset.to_le_bytes());
        self.strings_len += name.len() + 1;
        self.count += 1;
        self.last_address = address;
        Ok(())
    }

    /// Writes the header and returns the number of bytes the table occupies.
    ///
    /// Unused entry slots between the entries and the strings are compacted away, so the
    /// table reads back with exactly the symbols pushed.
    pub fn finish(self) -> usize {
        let strings_from = self.strings_start();
        let strings_to = HEADER_LEN + self.count * ENTRY_LEN;
        self.buffer
            .copy_within(strings_from..strings_from + self.strings_len, strings_to);
        self.buffer[0..4].copy_from_slice(&MAGIC);
        self.buffer[4..8].copy_from_slice(&VERSION.to_le_bytes());
        self.buffer[8..12].copy_from_slice(&(self.count as u32).to_le_bytes());
        self.buffer[12..16].copy_from_slice(&(self.strings_len as u32).to_le_bytes());
        strings_to + self.strings_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(symbols: &[(u64, u32, &str)]) -> std::vec::Vec<u8> {
        let mut buffer = std::vec![0u8; 4096];
        let mut writer = SymbolTableWriter::new(&mut buffer, symbols.len() + 3).unwrap();
        for &(address, size, name) in symbols {
            writer.push(address, size, name).unwrap();
        }
        let used = writer.finish();
        buffer.truncate(used);
        buffer
    }

    #[test]
    fn lookup_finds_containing_function() {
        let bytes = build(&[
            (0x1000, 0x10, "a"),
            (0x1010, 0x20, "b::c"),
            (0x2000, 0, "d"),
        ]);
        let table = SymbolTable::parse(&bytes).unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(table.lookup(0x1000).unwrap().name, "a");
        assert_eq!(table.lookup(0x100f).unwrap().name, "a");
        let b = table.lookup(0x1015).unwrap();
        assert_eq!((b.name, b.offset_of(0x1015)), ("b::c", 5));
        assert_eq!(table.lookup(0x1030), None, "past b's end, before d");
        assert_eq!(table.lookup(0xfff), None, "below the first symbol");
        assert_eq!(
            table.lookup(0x9999).unwrap().name,
            "d",
            "unknown size extends"
        );
    }

    #[test]
    fn zeroed_or_truncated_regions_are_rejected() {
        assert_eq!(
            SymbolTable::parse(&[0u8; 64]).unwrap_err(),
            SymbolTableError::BadMagic
        );
        let bytes = build(&[(0x1000, 0x10, "a"), (0x2000, 0x10, "b")]);
        for cut in 0..bytes.len() {
            let result = SymbolTable::parse(&bytes[..cut]);
            assert!(result.is_err(), "cut at {cut} must be rejected");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 9;
        assert_eq!(
            SymbolTable::parse(&wrong_version).unwrap_err(),
            SymbolTableError::UnsupportedVersion(9)
        );
    }

    #[test]
    fn corrupted_name_offsets_do_not_panic() {
        let mut bytes = build(&[(0x1000, 0x10, "a")]);
        bytes[HEADER_LEN + 12..HEADER_LEN + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        let table = SymbolTable::parse(&bytes).unwrap();
        assert_eq!(table.lookup(0x1001).unwrap().name, "");
    }

    #[test]
    fn writer_rejects_unsorted_and_overflow() {
        let mut buffer = [0u8; 64];
        let mut writer = SymbolTableWriter::new(&mut buffer, 2).unwrap();
        writer.push(0x2000, 1, "x").unwrap();
        assert_eq!(writer.push(0x1000, 1, "y"), Err(SymbolTableError::Unsorted));
        assert!(
            writer
                .push(0x3000, 1, "a-very-long-name-that-cannot-fit")
                .is_err()
        );
        assert!(SymbolTableWriter::new(&mut [0u8; 8], 1).is_err());
    }
}
