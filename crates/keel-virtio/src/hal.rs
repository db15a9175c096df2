//! Keel's `virtio_drivers::Hal`: DMA memory, address translation and MMIO mapping for
//! the drivers, over the small [`DmaMemory`] trait that the kernel implements with its
//! page allocator and its identity map (and host tests with the global allocator).
//!
//! Keel maps RAM at its physical address (virtual = physical), so a driver's buffer is
//! reached by the device at the address the driver sees, and a buffer that is
//! contiguous in virtual memory is contiguous in physical memory. There is no IOMMU and
//! no bounce buffer: [`share`](Hal::share) only translates.

use core::marker::PhantomData;
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Where DMA memory and MMIO mappings come from.
///
/// # Safety
/// Implementers guarantee that:
/// - [`alloc_zeroed`](DmaMemory::alloc_zeroed) returns `pages` zeroed 4 KiB pages that
///   are physically contiguous, owned by the caller until freed, readable and writable
///   through the returned pointer, and reachable by a device at the returned physical
///   address;
/// - [`phys_of`](DmaMemory::phys_of) gives the physical address of any byte of memory
///   a driver hands to a device, and a range contiguous in virtual memory is contiguous
///   at those physical addresses (the kernel's identity map);
/// - [`map_mmio`](DmaMemory::map_mmio) returns a pointer through which the `size`
///   bytes of device registers at `phys` are mapped uncached and stay mapped.
pub unsafe trait DmaMemory: 'static {
    /// Allocates `pages` zeroed, physically contiguous pages; `None` when out of memory.
    fn alloc_zeroed(pages: usize) -> Option<(PhysAddr, NonNull<u8>)>;
    /// Frees pages from [`alloc_zeroed`](DmaMemory::alloc_zeroed).
    ///
    /// # Safety
    /// `phys`, `virt` and `pages` are one allocation's, which is no longer used.
    unsafe fn free(phys: PhysAddr, virt: NonNull<u8>, pages: usize);
    /// The physical address of the byte at `virt`.
    fn phys_of(virt: *const u8) -> PhysAddr;
    /// Maps `size` bytes of device registers at `phys`, uncached.
    fn map_mmio(phys: PhysAddr, size: usize) -> NonNull<u8>;
}

/// The `Hal` the drivers use in Keel: `KeelHal<TheKernelsMemory>`.
#[derive(Debug)]
pub struct KeelHal<M>(PhantomData<M>);

// SAFETY: every function forwards to `DmaMemory`, whose contract gives exactly what
// `Hal` requires: zeroed, contiguous, device-reachable DMA pages (the `Dma` wrapper
// frees them once), uncached MMIO mappings, and physical addresses for buffers that the
// device may access directly (no bounce buffer, so unshare has nothing to copy back).
unsafe impl<M: DmaMemory> Hal for KeelHal<M> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // `virtio_drivers::hal::Dma::new` treats physical address 0 as failure.
        M::alloc_zeroed(pages).unwrap_or((0, NonNull::dangling()))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: virtio-drivers frees each allocation once, with its own address and
        // size, after the device stopped using it (the queue was reset).
        unsafe { M::free(paddr, vaddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        M::map_mmio(paddr, size)
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        M::phys_of(buffer.as_ptr().cast::<u8>())
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Shared in place: nothing to copy back or release.
    }
}
