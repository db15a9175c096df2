//! Bounds-checked little-endian reads from a byte slice: every read returns `None`
//! rather than panicking when it would run past the end.

/// A view of bytes that reads little-endian integers at byte offsets.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// `length` bytes at `offset`.
    pub fn slice(&self, offset: usize, length: usize) -> Option<&'a [u8]> {
        self.bytes.get(offset..offset.checked_add(length)?)
    }

    fn array<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.slice(offset, N)?.try_into().ok()
    }

    /// The `u16` at `offset`.
    pub fn u16(&self, offset: usize) -> Option<u16> {
        self.array(offset).map(u16::from_le_bytes)
    }

    /// The `u32` at `offset`.
    pub fn u32(&self, offset: usize) -> Option<u32> {
        self.array(offset).map(u32::from_le_bytes)
    }

    /// The `u64` at `offset`.
    pub fn u64(&self, offset: usize) -> Option<u64> {
        self.array(offset).map(u64::from_le_bytes)
    }

    /// The NUL-terminated UTF-8 string at `offset`.
    pub fn string(&self, offset: usize) -> Option<&'a str> {
        let rest = self.bytes.get(offset..)?;
        let length = rest.iter().position(|&byte| byte == 0)?;
        core::str::from_utf8(&rest[..length]).ok()
    }
}
