//! The mapped image of one object: every write (the file bytes, each relocation) and
//! read goes through [`Image`], which checks the target against the object's segments
//! before touching memory, so nothing is ever written outside the mapping. Also the
//! three ways the linker runs code of a loaded object: initializers, finalizers and
//! ifunc resolvers. This is one of the crate's two unsafe modules (with `host`).

use crate::ObjectError;
use crate::memory::Protection;
use crate::object::LoadSegment;

/// One object's mapped segments at a load base (`base + p_vaddr` is where a segment is).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Image<'a> {
    base: u64,
    segments: &'a [LoadSegment],
}

impl<'a> Image<'a> {
    /// The image of `segments` loaded at `base`.
    ///
    /// # Safety
    /// For as long as the value is used: every segment's memory image
    /// `[base + p_vaddr, base + p_vaddr + p_memsz)` is mapped and readable, and the
    /// segments whose final protection is [`Protection::ReadWrite`] (and, while
    /// [`Image::copy_file_bytes`] runs, the segment it copies into) are mapped writable;
    /// nothing else accesses those bytes concurrently (the linker owns them).
    pub(crate) unsafe fn new(base: u64, segments: &'a [LoadSegment]) -> Self {
        Image { base, segments }
    }

    /// The absolute address of `offset`, if `[offset, offset + length)` lies in a
    /// segment that passes `accept`.
    fn checked_address(
        &self,
        offset: u64,
        length: u64,
        accept: impl Fn(&LoadSegment) -> bool,
    ) -> Option<u64> {
        self.segments
            .iter()
            .find(|segment| accept(segment) && segment.contains(offset, length))
            .and_then(|_| self.base.checked_add(offset))
    }

    fn writable_address(&self, offset: u64, length: u64) -> Result<u64, ObjectError> {
        self.checked_address(offset, length, |segment| {
            segment.protection == Protection::ReadWrite
        })
        .ok_or(ObjectError::RelocationOutsideWritableSegment { offset })
    }

    /// Writes `value` at `offset` (relative to the base).
    pub(crate) fn write_u64(&self, offset: u64, value: u64) -> Result<(), ObjectError> {
        let address = self.writable_address(offset, 8)?;
        // SAFETY: the 8 bytes lie inside a writable segment (checked just above), which
        // `new`'s contract says is mapped writable and owned by the linker; the write is
        // unaligned-tolerant.
        unsafe { (address as *mut u64).write_unaligned(value) };
        Ok(())
    }

    /// Writes `value` at `offset` (relative to the base).
    pub(crate) fn write_u32(&self, offset: u64, value: u32) -> Result<(), ObjectError> {
        let address = self.writable_address(offset, 4)?;
        // SAFETY: as in `write_u64`, for 4 bytes inside a writable segment.
        unsafe { (address as *mut u32).write_unaligned(value) };
        Ok(())
    }

    /// Reads the word at `offset` (relative to the base) from any segment.
    pub(crate) fn read_u64(&self, offset: u64) -> Result<u64, ObjectError> {
        let address = self
            .checked_address(offset, 8, |segment| {
                segment.protection != Protection::Inaccessible
            })
            .ok_or(ObjectError::AddressOutsideSegments { offset })?;
        // SAFETY: the 8 bytes lie inside a readable mapped segment (checked above).
        Ok(unsafe { (address as *const u64).read_unaligned() })
    }

    /// Whether `[address, address + length)` (absolute) lies inside a readable segment.
    pub(crate) fn contains_absolute(&self, address: u64, length: u64) -> bool {
        address.checked_sub(self.base).is_some_and(|offset| {
            self.checked_address(offset, length, |segment| {
                segment.protection != Protection::Inaccessible
            })
            .is_some()
        })
    }

    /// Whether the absolute `address` is inside an executable segment.
    pub(crate) fn is_code(&self, address: u64) -> bool {
        address.checked_sub(self.base).is_some_and(|offset| {
            self.checked_address(offset, 1, |segment| {
                segment.protection == Protection::ReadExecute
            })
            .is_some()
        })
    }

    /// Copies a segment's file bytes to its place (the rest of its memory is already
    /// zero). The segment must be one of this image's writable segments, and `bytes`
    /// `p_filesz` long (checked at parse time; re-checked here). `index` is the
    /// segment's index among the object's `PT_LOAD`s, for errors.
    pub(crate) fn copy_file_bytes(
        &self,
        index: usize,
        segment: &LoadSegment,
        bytes: &[u8],
    ) -> Result<(), ObjectError> {
        let offset = segment.virtual_address;
        if bytes.len() as u64 != segment.file_size
            || !segment.contains(offset, segment.file_size)
            || segment.protection != Protection::ReadWrite
            || !self.segments.contains(segment)
        {
            return Err(ObjectError::SegmentOutsideFile { index });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let address = self
            .base
            .checked_add(offset)
            .ok_or(ObjectError::SegmentAddressOverflow { index })?;
        // SAFETY: the destination is this segment's memory image, which `new`'s contract
        // says is mapped writable while this runs; the source is a separate file buffer.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
        Ok(())
    }

    /// `R_X86_64_COPY`: copies `length` bytes from the absolute `source` to `offset`.
    ///
    /// # Safety
    /// `[source, source + length)` is readable and does not overlap this image's
    /// writable segments (it belongs to another object or to the kernel's exports).
    pub(crate) unsafe fn copy_in(
        &self,
        offset: u64,
        source: u64,
        length: u64,
    ) -> Result<(), ObjectError> {
        let address = self.writable_address(offset, length)?;
        // SAFETY: the destination lies in a writable segment (checked above); the caller
        // guarantees the source is readable and does not overlap it.
        unsafe {
            core::ptr::copy_nonoverlapping(source as *const u8, address as *mut u8, length as usize)
        };
        Ok(())
    }
}

/// The C signature of `DT_INIT`, `DT_INIT_ARRAY` and `DT_PREINIT_ARRAY` entries (glibc
/// passes `argc`, `argv`, `envp`).
type Initializer = unsafe extern "C" fn(i32, *const *const u8, *const *const u8);
/// `DT_FINI` and `DT_FINI_ARRAY` entries.
type Finalizer = unsafe extern "C" fn();
/// An ifunc resolver: returns the address of the implementation it chose.
type Resolver = unsafe extern "C" fn() -> u64;

/// An empty, NUL-terminated vector, for `argv` and `envp` of initializers.
static EMPTY_VECTOR: [usize; 1] = [0];

/// Runs the initializer at `address` with `argc = 0` and empty `argv`, `envp`.
///
/// # Safety
/// `address` is the entry of a function with the [`Initializer`] signature, in mapped
/// executable memory, and running it now is what its object expects (its relocations
/// are applied and its dependencies initialized).
pub(crate) unsafe fn run_initializer(address: u64) {
    // SAFETY: the caller guarantees `address` is such a function.
    let function: Initializer =
        unsafe { core::mem::transmute::<usize, Initializer>(address as usize) };
    let empty = EMPTY_VECTOR.as_ptr().cast::<*const u8>();
    // SAFETY: as above; the vectors are valid, NUL-terminated and static.
    unsafe { function(0, empty, empty) };
}

/// Runs the finalizer at `address`.
///
/// # Safety
/// `address` is the entry of a `void (void)` function in mapped executable memory, and
/// its object is still mapped and was initialized.
pub(crate) unsafe fn run_finalizer(address: u64) {
    // SAFETY: the caller guarantees `address` is such a function.
    let function: Finalizer = unsafe { core::mem::transmute::<usize, Finalizer>(address as usize) };
    // SAFETY: as above.
    unsafe { function() };
}

/// Runs the ifunc resolver at `address` and returns the address it chose.
///
/// # Safety
/// `address` is the entry of a resolver (`void *(void)`) in mapped executable memory,
/// and whatever it reads (CPU features, its own object's data) is ready.
pub(crate) unsafe fn run_resolver(address: u64) -> u64 {
    // SAFETY: the caller guarantees `address` is a resolver.
    let function: Resolver = unsafe { core::mem::transmute::<usize, Resolver>(address as usize) };
    // SAFETY: as above.
    unsafe { function() }
}
