//! x86-64 dynamic relocations as a typed enum, and the decoding of `DT_RELR` packed
//! relative relocations.

use alloc::vec::Vec;

use crate::ObjectError;
use crate::reader::Reader;

/// The x86-64 relocation kinds the linker knows (psABI names after `R_X86_64_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelocationKind {
    /// `R_X86_64_NONE` (0): nothing.
    None,
    /// `R_X86_64_64` (1): `S + A`, 64 bits.
    Absolute64,
    /// `R_X86_64_PC32` (2): `S + A - P`, 32 bits signed.
    Pc32,
    /// `R_X86_64_COPY` (5): copy the symbol's bytes from the defining object.
    Copy,
    /// `R_X86_64_GLOB_DAT` (6): `S`.
    GlobalData,
    /// `R_X86_64_JUMP_SLOT` (7): `S` (bound now, never lazily).
    JumpSlot,
    /// `R_X86_64_RELATIVE` (8): `B + A`.
    Relative,
    /// `R_X86_64_DTPMOD64` (16): TLS module id (thread-local storage, not yet done).
    TlsModuleId64,
    /// `R_X86_64_DTPOFF64` (17): offset in the TLS block (not yet done).
    TlsBlockOffset64,
    /// `R_X86_64_TPOFF64` (18): offset from the thread pointer (not yet done).
    TlsThreadPointerOffset64,
    /// `R_X86_64_IRELATIVE` (37): the value the resolver at `B + A` returns.
    IndirectRelative,
}

impl RelocationKind {
    /// The kind of an `r_type`, or `None` if the linker does not know it.
    pub fn from_type(relocation_type: u32) -> Option<Self> {
        Some(match relocation_type {
            0 => RelocationKind::None,
            1 => RelocationKind::Absolute64,
            2 => RelocationKind::Pc32,
            5 => RelocationKind::Copy,
            6 => RelocationKind::GlobalData,
            7 => RelocationKind::JumpSlot,
            8 => RelocationKind::Relative,
            16 => RelocationKind::TlsModuleId64,
            17 => RelocationKind::TlsBlockOffset64,
            18 => RelocationKind::TlsThreadPointerOffset64,
            37 => RelocationKind::IndirectRelative,
            _ => return None,
        })
    }

    /// Whether the relocation refers to a symbol it needs resolved.
    pub fn uses_symbol(self) -> bool {
        matches!(
            self,
            RelocationKind::Absolute64
                | RelocationKind::Pc32
                | RelocationKind::Copy
                | RelocationKind::GlobalData
                | RelocationKind::JumpSlot
                | RelocationKind::TlsModuleId64
                | RelocationKind::TlsBlockOffset64
                | RelocationKind::TlsThreadPointerOffset64
        )
    }

    /// Whether the relocation belongs to thread-local storage.
    pub fn is_thread_local(self) -> bool {
        matches!(
            self,
            RelocationKind::TlsModuleId64
                | RelocationKind::TlsBlockOffset64
                | RelocationKind::TlsThreadPointerOffset64
        )
    }
}

/// One `Elf64_Rela` entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    /// Where to write, relative to the object's load base (`r_offset`).
    pub offset: u64,
    /// What to compute.
    pub kind: RelocationKind,
    /// Index into the dynamic symbol table (0 for none).
    pub symbol_index: u32,
    /// `r_addend`.
    pub addend: i64,
}

/// Decodes a `DT_RELR` table into the offsets (relative to the load base) of the words
/// to which the base is added. An even entry is an address (then the next word); an odd
/// entry is a bitmap of the 63 words that follow the last address.
pub fn decode_relr(bytes: &[u8]) -> Result<Vec<u64>, ObjectError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(ObjectError::BadTableEntrySize(
            crate::Table::PackedRelocations,
        ));
    }
    let reader = Reader::new(bytes);
    let mut offsets = Vec::new();
    let mut next: Option<u64> = None;
    for index in 0..bytes.len() / 8 {
        let entry = reader
            .u64(index * 8)
            .ok_or(ObjectError::MalformedPackedRelocations)?;
        if entry & 1 == 0 {
            offsets.push(entry);
            next = Some(
                entry
                    .checked_add(8)
                    .ok_or(ObjectError::MalformedPackedRelocations)?,
            );
        } else {
            // A bitmap must follow an address.
            let base = next.ok_or(ObjectError::MalformedPackedRelocations)?;
            let mut bitmap = entry >> 1;
            let mut word = 0u64;
            while bitmap != 0 {
                if bitmap & 1 == 1 {
                    let offset = base
                        .checked_add(word * 8)
                        .ok_or(ObjectError::MalformedPackedRelocations)?;
                    offsets.push(offset);
                }
                bitmap >>= 1;
                word += 1;
            }
            next = Some(
                base.checked_add(63 * 8)
                    .ok_or(ObjectError::MalformedPackedRelocations)?,
            );
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn table(entries: &[u64]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|entry| entry.to_le_bytes())
            .collect()
    }

    #[test]
    fn relr_addresses_and_bitmaps() {
        // 0x1000, then a bitmap marking words 0x1008 and 0x1018, then a bitmap whose
        // first bit is the word 63 words after 0x1008.
        let bytes = table(&[0x1000, (0b101 << 1) | 1, (1 << 1) | 1]);
        assert_eq!(
            decode_relr(&bytes),
            Ok(vec![0x1000, 0x1008, 0x1018, 0x1008 + 63 * 8])
        );
    }

    #[test]
    fn relr_bitmap_without_address_is_refused() {
        assert_eq!(
            decode_relr(&table(&[3])),
            Err(ObjectError::MalformedPackedRelocations)
        );
        assert!(decode_relr(&[0; 7]).is_err());
    }
}
