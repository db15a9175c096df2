//! virtio-mmio devices named on the kernel command line, in Linux's syntax
//! (`Documentation/admin-guide/kernel-parameters.txt`):
//! `virtio_mmio.device=<size>@<baseaddr>:<irq>[:<id>]`, where size and base take C
//! number syntax (`0x` hex, `0` octal, decimal) with an optional `K`, `M` or `G`
//! suffix, as Linux's `memparse` reads them. QEMU's `microvm` machine appends one such
//! word per device, and Firecracker does the same.
//!
//! The words come from the command line, so a malformed one is an error naming it, and
//! the kernel boots on without that device.

use core::fmt;

/// Devices kept at most.
pub const MAX_MMIO_DEVICES: usize = 16;

/// One virtio-mmio device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Physical address of its registers.
    pub base: u64,
    /// Bytes of registers.
    pub size: u64,
    /// Its interrupt: a GSI of the I/O APIC (on microvm, ISA-style numbering).
    pub irq: u32,
}

/// A malformed `virtio_mmio.device=` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioParseError<'a> {
    /// The value as written.
    pub value: &'a str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for MmioParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "virtio_mmio.device={}: {} (expected SIZE@BASE:IRQ)",
            self.value, self.reason
        )
    }
}

/// Reads a number like Linux's `memparse`: C syntax, then an optional K/M/G suffix.
fn memparse(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse().ok()?
    };
    value.checked_mul(1 << shift)
}

/// Parses one value (the text after `virtio_mmio.device=`).
pub fn parse_device(value: &str) -> Result<MmioDevice, MmioParseError<'_>> {
    let error = |reason| MmioParseError { value, reason };
    let (size, rest) = value.split_once('@').ok_or(error("no '@'"))?;
    let (base, rest) = rest.split_once(':').ok_or(error("no ':' before the IRQ"))?;
    // An optional platform-device id follows a second ':'; Keel numbers devices itself.
    let irq = rest.split_once(':').map_or(rest, |(irq, _)| irq);
    let size = memparse(size).ok_or(error("bad size"))?;
    let base = memparse(base).ok_or(error("bad base address"))?;
    let irq: u32 = irq.parse().map_err(|_| error("bad IRQ"))?;
    if size == 0 {
        return Err(error("size is zero"));
    }
    if base.checked_add(size).is_none() {
        return Err(error("base + size overflows"));
    }
    if !base.is_multiple_of(4) {
        return Err(error("base is not 4-byte aligned"));
    }
    Ok(MmioDevice { base, size, irq })
}

/// Every `virtio_mmio.device=` word of `command_line`, in order, parsed; at most
/// [`MAX_MMIO_DEVICES`] are looked at.
pub fn devices(
    command_line: &str,
) -> impl Iterator<Item = Result<MmioDevice, MmioParseError<'_>>> + '_ {
    command_line
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix("virtio_mmio.device="))
        .take(MAX_MMIO_DEVICES)
        .map(parse_device)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn reads_what_qemu_microvm_appends() {
        // QEMU 7.2 microvm with two virtio-blk-device disks (`-append` text first).
        let line = "console=ttyS0 ktest virtio_mmio.device=512@0xfeb00e00:12 \
                    virtio_mmio.device=512@0xfeb00c00:11";
        let found: Vec<_> = devices(line).collect();
        assert_eq!(
            found,
            [
                Ok(MmioDevice {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                }),
                Ok(MmioDevice {
                    base: 0xfeb0_0c00,
                    size: 512,
                    irq: 11
                }),
            ]
        );
    }

    #[test]
    fn reads_suffixes_ids_and_c_numbers() {
        assert_eq!(
            parse_device("4K@0xd0000000:5:3"),
            Ok(MmioDevice {
                base: 0xd000_0000,
                size: 4096,
                irq: 5
            })
        );
        assert_eq!(parse_device("1M@256M:7").unwrap().base, 256 << 20);
        assert_eq!(parse_device("0x200@010:7").unwrap().base, 8);
        assert_eq!(parse_device("0x200@010:7").unwrap().size, 512);
    }

    #[test]
    fn malformed_values_are_errors_that_name_them() {
        for (value, reason) in [
            ("512", "no '@'"),
            ("512@0xfeb00e00", "no ':' before the IRQ"),
            ("lots@0xfeb00e00:12", "bad size"),
            ("512@0xzz:12", "bad base address"),
            ("512@0xfeb00e00:twelve", "bad IRQ"),
            ("512@0xfeb00e00:", "bad IRQ"),
            ("0@0xfeb00e00:12", "size is zero"),
            ("0x100000000000G@0x1000:1", "bad size"),
            ("0x200@0xffffffffffffff00:1", "base + size overflows"),
            ("512@0xfeb00e01:12", "base is not 4-byte aligned"),
            ("@:", "bad size"),
        ] {
            let error = parse_device(value).unwrap_err();
            assert_eq!(error.reason, reason, "{value}");
            assert!(std::format!("{error}").contains(value));
        }
    }

    #[test]
    fn other_words_are_ignored_and_the_count_is_bounded() {
        assert_eq!(devices("virtio_mmio.devicex=1@2:3 a=b").count(), 0);
        let many = "virtio_mmio.device=512@0x1000:1 ".repeat(40);
        assert_eq!(devices(&many).count(), MAX_MMIO_DEVICES);
    }
}
