//! Physical and virtual addresses, page frame numbers and the page size.

use core::fmt;
use core::ops::{Add, Sub};

/// The size of one page frame in bytes (4 KiB, the x86-64 base page).
pub const PAGE_SIZE: u64 = 4096;

/// `log2(PAGE_SIZE)`: how far a physical address is shifted to get its frame number.
pub const PAGE_SHIFT: u32 = PAGE_SIZE.trailing_zeros();

/// Rounds `value` down to a multiple of `align`, a power of two.
const fn align_down(value: u64, align: u64) -> u64 {
    assert!(align.is_power_of_two(), "alignment must be a power of two");
    value & !(align - 1)
}

/// Rounds `value` up to a multiple of `align`, a power of two; `None` on overflow.
const fn align_up(value: u64, align: u64) -> Option<u64> {
    assert!(align.is_power_of_two(), "alignment must be a power of two");
    match value.checked_add(align - 1) {
        Some(sum) => Some(sum & !(align - 1)),
        None => None,
    }
}

/// Writes the alignment helpers and checked arithmetic shared by both address types.
macro_rules! address_methods {
    ($name:ident) => {
        impl $name {
            /// Wraps a raw address.
            #[must_use]
            pub const fn new(address: u64) -> Self {
                Self(address)
            }

            /// The raw address.
            #[must_use]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// The address `bytes` further on, or `None` on overflow.
            #[must_use]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(sum) => Some(Self(sum)),
                    None => None,
                }
            }

            /// The address `bytes` further back, or `None` below zero.
            #[must_use]
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(difference) => Some(Self(difference)),
                    None => None,
                }
            }

            /// Bytes from `earlier` up to `self`, or `None` if `earlier` is higher.
            #[must_use]
            pub const fn checked_offset_from(self, earlier: Self) -> Option<u64> {
                self.0.checked_sub(earlier.0)
            }

            /// Whether the address is a multiple of `align`.
            ///
            /// # Panics
            /// If `align` is not a power of two.
            #[must_use]
            pub const fn is_aligned(self, align: u64) -> bool {
                align_down(self.0, align) == self.0
            }

            /// The address rounded down to a multiple of `align`.
            ///
            /// # Panics
            /// If `align` is not a power of two.
            #[must_use]
            pub const fn align_down(self, align: u64) -> Self {
                Self(align_down(self.0, align))
            }

            /// The address rounded up to a multiple of `align`, or `None` on overflow.
            ///
            /// # Panics
            /// If `align` is not a power of two.
            #[must_use]
            pub const fn align_up(self, align: u64) -> Option<Self> {
                match align_up(self.0, align) {
                    Some(aligned) => Some(Self(aligned)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of [`PAGE_SIZE`] (the start of a page).
            #[must_use]
            pub const fn page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }

            /// The address rounded down to the start of its page.
            #[must_use]
            pub const fn align_down_to_page(self) -> Self {
                self.align_down(PAGE_SIZE)
            }

            /// The address rounded up to the next page boundary, or `None` on overflow.
            #[must_use]
            pub const fn align_up_to_page(self) -> Option<Self> {
                self.align_up(PAGE_SIZE)
            }

            /// The byte offset of the address inside its page.
            #[must_use]
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }
        }

        impl Add<u64> for $name {
            type Output = $name;

            /// The address `bytes` further on; panics on overflow (in every build,
            /// unlike `u64`'s `+`: an address past the top is always a bug). Use
            /// [`checked_add`](Self::checked_add) where it may happen.
            fn add(self, bytes: u64) -> $name {
                self.checked_add(bytes).expect("address overflow")
            }
        }

        impl Sub<u64> for $name {
            type Output = $name;

            /// The address `bytes` further back; panics below zero (see `Add`).
            fn sub(self, bytes: u64) -> $name {
                self.checked_sub(bytes).expect("address underflow")
            }
        }

        impl fmt::Debug for $name {
            /// `PhysAddr(0x1000)`: addresses read best in hex.
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{}({:#x})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, formatter)
            }
        }
    };
}

/// A physical memory address in bytes.
///
/// Any `u64` is accepted; the type itself never dereferences one (reaching physical
/// memory goes through the mapping its owner keeps).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysAddr(u64);

address_methods!(PhysAddr);

impl PhysAddr {
    /// The page frame that contains this address.
    #[must_use]
    pub const fn containing_frame(self) -> PageFrameNumber {
        PageFrameNumber(self.0 >> PAGE_SHIFT)
    }
}

/// A virtual address in bytes, in Keel's one address space.
///
/// Any `u64` is accepted (canonical form is not checked: nothing that takes one here
/// builds page-table indices from a non-canonical address without the paging code's
/// own checks).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtAddr(u64);

address_methods!(VirtAddr);

impl VirtAddr {
    /// The address of `pointer` (its address part only: no provenance is kept).
    #[must_use]
    pub fn from_ptr<T: ?Sized>(pointer: *const T) -> Self {
        Self(pointer.cast::<u8>().addr() as u64)
    }
}

impl From<PageFrameNumber> for PhysAddr {
    /// The start address of the frame. Frame numbers at or above
    /// [`PageFrameNumber::LIMIT`] have no address; their high bits are lost (use
    /// [`PageFrameNumber::start_address`] to check).
    fn from(frame: PageFrameNumber) -> Self {
        Self(frame.0 << PAGE_SHIFT)
    }
}

/// The number of a physical page frame: its start address divided by [`PAGE_SIZE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageFrameNumber(u64);

impl PageFrameNumber {
    /// The first frame number whose start address does not fit in a `u64`.
    pub const LIMIT: u64 = 1 << (64 - PAGE_SHIFT);

    /// Wraps a raw frame number.
    #[must_use]
    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    /// The raw frame number.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The frame's start address, or `None` if the frame number is at or above
    /// [`Self::LIMIT`].
    #[must_use]
    pub const fn start_address(self) -> Option<PhysAddr> {
        if self.0 < Self::LIMIT {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        } else {
            None
        }
    }

    /// Whether the frame number is a multiple of `2^order`, i.e. whether a block of
    /// `2^order` pages may start here. Orders of 64 and above are never aligned.
    #[must_use]
    pub const fn is_aligned(self, order: u32) -> bool {
        order < 64 && self.0 & ((1u64 << order) - 1) == 0
    }

    /// The frame `count` frames further on, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, count: u64) -> Option<Self> {
        match self.0.checked_add(count) {
            Some(number) => Some(Self(number)),
            None => None,
        }
    }
}

impl fmt::Display for PageFrameNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "pfn {:#x}", self.0)
    }
}

impl From<PhysAddr> for PageFrameNumber {
    /// The frame containing the address (rounding down).
    fn from(address: PhysAddr) -> Self {
        address.containing_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn page_helpers() {
        let address = PhysAddr::new(0x1234_5678);
        assert!(!address.page_aligned());
        assert_eq!(address.align_down_to_page(), PhysAddr(0x1234_5000));
        assert_eq!(address.align_up_to_page(), Some(PhysAddr(0x1234_6000)));
        assert_eq!(address.page_offset(), 0x678);
        assert_eq!(address.containing_frame(), PageFrameNumber(0x12345));
        assert_eq!(PageFrameNumber::from(address), PageFrameNumber(0x12345));
        assert!(PhysAddr(0x3000).page_aligned());
        assert_eq!(PhysAddr(0x3000).align_up_to_page(), Some(PhysAddr(0x3000)));
        assert_eq!(PhysAddr(u64::MAX).align_up_to_page(), None);
        assert_eq!(
            VirtAddr::new(0xffff_8000_0000_0fff).align_down_to_page(),
            VirtAddr::new(0xffff_8000_0000_0000)
        );
    }

    #[test]
    fn general_alignment() {
        let address = VirtAddr::new(0x20_1234);
        assert!(address.is_aligned(4));
        assert!(!address.is_aligned(8));
        assert!(address.is_aligned(1));
        assert_eq!(address.align_down(0x20_0000), VirtAddr::new(0x20_0000));
        assert_eq!(address.align_up(0x20_0000), Some(VirtAddr::new(0x40_0000)));
        assert_eq!(VirtAddr::new(u64::MAX - 2).align_up(4), None);
        assert_eq!(
            VirtAddr::new(u64::MAX).align_up(1),
            Some(VirtAddr::new(u64::MAX))
        );
    }

    #[test]
    fn operators() {
        assert_eq!(VirtAddr::new(0x1000) + 0x10, VirtAddr::new(0x1010));
        assert_eq!(PhysAddr::new(0x1000) - 0x1000, PhysAddr::new(0));
    }

    #[test]
    #[should_panic(expected = "address overflow")]
    fn add_operator_panics_on_overflow() {
        let _ = VirtAddr::new(u64::MAX) + 1;
    }

    #[test]
    #[should_panic(expected = "address underflow")]
    fn sub_operator_panics_below_zero() {
        let _ = PhysAddr::new(4) - 5;
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn alignment_must_be_a_power_of_two() {
        let _ = PhysAddr::new(0x1000).is_aligned(3);
    }

    #[test]
    fn checked_arithmetic() {
        let address = PhysAddr::new(0x1000);
        assert_eq!(address.checked_add(0x234), Some(PhysAddr(0x1234)));
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr(u64::MAX).checked_add(0), Some(PhysAddr(u64::MAX)));
        assert_eq!(address.checked_sub(0x1000), Some(PhysAddr(0)));
        assert_eq!(address.checked_sub(0x1001), None);
        assert_eq!(PhysAddr(0x1800).checked_offset_from(address), Some(0x800));
        assert_eq!(address.checked_offset_from(PhysAddr(0x1800)), None);
    }

    #[test]
    fn frames() {
        assert_eq!(
            PageFrameNumber(0x12345).start_address(),
            Some(PhysAddr(0x1234_5000))
        );
        assert_eq!(PhysAddr::from(PageFrameNumber(2)), PhysAddr(0x2000));
        assert_eq!(
            PageFrameNumber(PageFrameNumber::LIMIT).start_address(),
            None
        );
        assert_eq!(
            PageFrameNumber(PageFrameNumber::LIMIT - 1).start_address(),
            Some(PhysAddr(!(PAGE_SIZE - 1)))
        );
        assert!(PageFrameNumber(8).is_aligned(3));
        assert!(!PageFrameNumber(8).is_aligned(4));
        assert!(!PageFrameNumber(0).is_aligned(64));
        assert_eq!(PageFrameNumber(u64::MAX).checked_add(1), None);
        assert_eq!(PageFrameNumber(1).checked_add(2), Some(PageFrameNumber(3)));
    }

    #[test]
    fn formatting() {
        assert_eq!(format!("{}", PhysAddr(0x1000)), "0x1000");
        assert_eq!(format!("{:#x}", VirtAddr(0xabc)), "0xabc");
        assert_eq!(format!("{:08x}", PhysAddr(0xabc)), "00000abc");
        assert_eq!(format!("{}", PageFrameNumber(0x10)), "pfn 0x10");
        assert_eq!(format!("{:?}", PhysAddr(0x1000)), "PhysAddr(0x1000)");
        assert_eq!(
            format!("{:?}", Some(VirtAddr(0x20))),
            "Some(VirtAddr(0x20))"
        );
        let value = 5u32;
        assert_eq!(
            VirtAddr::from_ptr(&raw const value).as_u64(),
            (&raw const value).addr() as u64
        );
    }
}
