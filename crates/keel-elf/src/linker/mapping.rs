//! Mapping an object's segments, and the [`Image`] through which the linker reads
//! and writes a mapped object: the linker's unsafe mapping code.

use keel_types::VirtAddr;

use super::{LibrarySource, Linker, LoadedObject};
use crate::ObjectError;
use crate::image::Image;
use crate::memory::{Memory, PAGE_SIZE, PageRange, Protection, align_down, align_up};
use crate::object::ObjectFile;
use crate::symbols::SymbolProvider;
use crate::tls::ThreadLocalStorage;

impl LoadedObject {
    /// The object's mapped image, for bounds-checked reads and writes.
    pub(super) fn image(&self) -> Image<'_> {
        // SAFETY: the linker maps every segment before it creates an image (objects are
        // pushed only after `map_object` succeeded), keeps the writable segments
        // writable (RELRO pages are never written after sealing: relocations are all
        // applied before), and owns the reservation until `Drop` releases it.
        unsafe { Image::new(self.base, &self.file.segments) }
    }
}

impl<M: Memory, E: SymbolProvider, L: LibrarySource, T: ThreadLocalStorage> Linker<M, E, L, T> {
    /// Maps `file`'s segments at `base` inside `reservation`: read-write, its file
    /// bytes copied, then its final protection.
    pub(super) fn map_segments(
        memory: &mut M,
        file: &ObjectFile,
        base: u64,
        bytes: &[u8],
        reservation: &PageRange,
    ) -> Result<(), ObjectError> {
        for (index, segment) in file.segments.iter().enumerate() {
            let start = align_down(segment.virtual_address, PAGE_SIZE as u64);
            let end = align_up(
                segment.virtual_address + segment.memory_size,
                PAGE_SIZE as u64,
            )
            .ok_or(ObjectError::SegmentAddressOverflow { index })?;
            let range = PageRange {
                start: VirtAddr::new(base.wrapping_add(start)),
                length: (end - start) as usize,
            };
            if range.length == 0 {
                continue;
            }
            if !reservation.contains_range(&range) {
                return Err(ObjectError::SegmentAddressOverflow { index });
            }
            memory
                .map(range, Protection::ReadWrite)
                .map_err(ObjectError::Memory)?;
            let file_bytes = bytes
                .get(
                    segment.file_offset as usize
                        ..(segment.file_offset + segment.file_size) as usize,
                )
                .ok_or(ObjectError::SegmentOutsideFile { index })?;
            // `Image` checks writes against a segment's final protection; for the copy
            // the segment counts as writable, which it is right now.
            let mut writable = *segment;
            writable.protection = Protection::ReadWrite;
            // SAFETY: this segment was just mapped writable inside the object's
            // reservation, which the linker owns; the image is used only for this copy.
            let image_for_copy = unsafe { Image::new(base, core::slice::from_ref(&writable)) };
            image_for_copy.copy_file_bytes(index, &writable, file_bytes)?;
            if segment.protection != Protection::ReadWrite {
                memory
                    .protect(range, segment.protection)
                    .map_err(ObjectError::Memory)?;
            }
        }
        Ok(())
    }
}
