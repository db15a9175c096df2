//! Keel's own symbol hash tables: GNU hash (`DT_GNU_HASH`, with its Bloom filter) and
//! the SysV hash (`DT_HASH`) as the fallback. Both are read from the file bytes with
//! every index checked, and both also give the dynamic symbol count, which the dynamic
//! section does not state.

use alloc::vec::Vec;

use crate::ObjectError;
use crate::reader::Reader;

/// The GNU hash of a symbol name (Bernstein's hash, `h * 33 + c`).
pub fn gnu_hash(name: &[u8]) -> u32 {
    name.iter().fold(5381u32, |hash, &byte| {
        hash.wrapping_mul(33).wrapping_add(u32::from(byte))
    })
}

/// The SysV ELF hash of a symbol name.
pub fn sysv_hash(name: &[u8]) -> u32 {
    let mut hash = 0u32;
    for &byte in name {
        hash = (hash << 4).wrapping_add(u32::from(byte));
        let high = hash & 0xf000_0000;
        if high != 0 {
            hash ^= high >> 24;
        }
        hash &= !high;
    }
    hash
}

/// A decoded `DT_GNU_HASH` table.
#[derive(Debug, Clone)]
pub struct GnuHashTable {
    /// Index of the first symbol the table covers (those below are not exported).
    symbol_offset: u32,
    bloom_shift: u32,
    bloom: Vec<u64>,
    buckets: Vec<u32>,
    /// Chain words for symbols `symbol_offset..symbol_count`.
    chains: Vec<u32>,
}

/// A decoded `DT_HASH` table.
#[derive(Debug, Clone)]
pub struct SysvHashTable {
    buckets: Vec<u32>,
    chains: Vec<u32>,
}

/// The hash table an object is looked up through: GNU when it has one.
#[derive(Debug, Clone)]
pub enum SymbolHashTable {
    /// `DT_GNU_HASH`.
    Gnu(GnuHashTable),
    /// `DT_HASH`, used only when there is no GNU hash table.
    Sysv(SysvHashTable),
}

/// Tables larger than this are refused as malformed (a real libc has about 3000 symbols).
const MAXIMUM_ENTRIES: usize = 1 << 22;

impl GnuHashTable {
    /// Decodes the table at the start of `bytes` (which run to the end of its segment).
    pub fn parse(bytes: &[u8]) -> Result<Self, ObjectError> {
        let malformed = ObjectError::MalformedHashTable;
        let reader = Reader::new(bytes);
        let bucket_count = reader.u32(0).ok_or(malformed)? as usize;
        let symbol_offset = reader.u32(4).ok_or(malformed)?;
        let bloom_count = reader.u32(8).ok_or(malformed)? as usize;
        let bloom_shift = reader.u32(12).ok_or(malformed)?;
        if bucket_count == 0
            || bloom_count == 0
            || bloom_shift >= 32
            || bucket_count > MAXIMUM_ENTRIES
            || bloom_count > MAXIMUM_ENTRIES
        {
            return Err(malformed);
        }
        let bloom_start = 16;
        let bucket_start = bloom_start + bloom_count * 8;
        let chain_start = bucket_start + bucket_count * 4;
        let bloom = (0..bloom_count)
            .map(|index| reader.u64(bloom_start + index * 8).ok_or(malformed))
            .collect::<Result<Vec<_>, _>>()?;
        let buckets = (0..bucket_count)
            .map(|index| reader.u32(bucket_start + index * 4).ok_or(malformed))
            .collect::<Result<Vec<_>, _>>()?;
        // The symbol count: the end of the chain that starts at the highest bucket.
        let mut chains = Vec::new();
        if let Some(&highest) = buckets.iter().max()
            && highest != 0
        {
            if highest < symbol_offset {
                return Err(malformed);
            }
            let chain_length_before = (highest - symbol_offset) as usize;
            let mut index = 0usize;
            loop {
                let word = reader.u32(chain_start + index * 4).ok_or(malformed)?;
                chains.push(word);
                if index >= chain_length_before && word & 1 == 1 {
                    break;
                }
                index += 1;
                if index > MAXIMUM_ENTRIES {
                    return Err(malformed);
                }
            }
        }
        Ok(GnuHashTable {
            symbol_offset,
            bloom_shift,
            bloom,
            buckets,
            chains,
        })
    }

    /// The number of dynamic symbols (the table covers all of them).
    pub fn symbol_count(&self) -> usize {
        self.symbol_offset as usize + self.chains.len()
    }

    /// The first symbol named `name` for which `matches` holds.
    pub fn lookup(&self, name: &[u8], mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let hash = gnu_hash(name);
        let word = self.bloom[(hash as usize / 64) % self.bloom.len()];
        let mask = (1u64 << (hash % 64)) | (1u64 << ((hash >> self.bloom_shift) % 64));
        if word & mask != mask {
            return None;
        }
        let mut index = self.buckets[hash as usize % self.buckets.len()];
        if index < self.symbol_offset {
            return None;
        }
        loop {
            let chain = *self.chains.get((index - self.symbol_offset) as usize)?;
            if chain | 1 == hash | 1 && matches(index) {
                return Some(index);
            }
            if chain & 1 == 1 {
                return None;
            }
            index = index.checked_add(1)?;
        }
    }
}

impl SysvHashTable {
    /// Decodes the table at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ObjectError> {
        let malformed = ObjectError::MalformedHashTable;
        let reader = Reader::new(bytes);
        let bucket_count = reader.u32(0).ok_or(malformed)? as usize;
        let chain_count = reader.u32(4).ok_or(malformed)? as usize;
        if bucket_count == 0 || bucket_count > MAXIMUM_ENTRIES || chain_count > MAXIMUM_ENTRIES {
            return Err(malformed);
        }
        let word = |index: usize| reader.u32(8 + index * 4).ok_or(malformed);
        let buckets = (0..bucket_count).map(word).collect::<Result<Vec<_>, _>>()?;
        let chains = (bucket_count..bucket_count + chain_count)
            .map(word)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SysvHashTable { buckets, chains })
    }

    /// The number of dynamic symbols (`nchain`).
    pub fn symbol_count(&self) -> usize {
        self.chains.len()
    }

    /// The first symbol named `name` for which `matches` holds.
    pub fn lookup(&self, name: &[u8], mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        let hash = sysv_hash(name);
        let mut index = self.buckets[hash as usize % self.buckets.len()];
        // A malformed chain may loop: never take more steps than there are symbols.
        for _ in 0..self.chains.len() {
            if index == 0 {
                return None;
            }
            if matches(index) {
                return Some(index);
            }
            index = *self.chains.get(index as usize)?;
        }
        None
    }
}

impl SymbolHashTable {
    /// The number of dynamic symbols.
    pub fn symbol_count(&self) -> usize {
        match self {
            SymbolHashTable::Gnu(table) => table.symbol_count(),
            SymbolHashTable::Sysv(table) => table.symbol_count(),
        }
    }

    /// The first symbol named `name` for which `matches` holds (the caller's predicate
    /// compares the name itself and the version).
    pub fn lookup(&self, name: &[u8], matches: impl FnMut(u32) -> bool) -> Option<u32> {
        match self {
            SymbolHashTable::Gnu(table) => table.lookup(name, matches),
            SymbolHashTable::Sysv(table) => table.lookup(name, matches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_published_values() {
        // Values from the GNU hash and SysV ABI descriptions.
        assert_eq!(gnu_hash(b""), 0x0000_1505);
        assert_eq!(gnu_hash(b"printf"), 0x156b_2bb8);
        assert_eq!(gnu_hash(b"exit"), 0x7c96_7e3f);
        assert_eq!(sysv_hash(b""), 0);
        assert_eq!(sysv_hash(b"printf"), 0x0779_05a6);
        assert_eq!(sysv_hash(b"exit"), 0x0006_cf04);
    }
}
