//! A Linux guest that runs the same block workloads as Keel, in the same QEMU with the
//! same `-device` options, for `cargo xtask bench blk` (issue 14) to report ratios.
//!
//! What [`prepare`] downloads and builds, all cached under `target/linux-guest/` so that
//! the second call only checks file times:
//! - Debian's kernel package behind `linux-image-amd64` (`linux-image-6.1.0-N-amd64` on
//!   Debian 12), fetched with `apt-get download` and unpacked with `dpkg -x`, never
//!   installed: it is the kernel a Debian user would boot, so the comparison is with an
//!   ordinary distribution kernel. Only `boot/vmlinuz-*` and seven modules are kept
//!   (`kernel/`); the 400 MB unpacked tree is deleted. Debian builds virtio as modules,
//!   so the guest needs `virtio`, `virtio_ring`, `virtio_pci_legacy_dev`,
//!   `virtio_pci_modern_dev`, `virtio_pci`, `virtio_mmio` and `virtio_blk`; their load
//!   order is computed from the `depends=` strings of their `.modinfo` sections.
//! - An initramfs (`initramfs.cpio`, packed with `cpio -o -H newc`, about 3 MB): Debian's
//!   `busybox-static` for the shell, `mount`, `insmod`; `/init` from
//!   `tools/linux-guest/init`; and `blkbench`, a static C program
//!   (`tools/linux-guest/blkbench.c`, built with `gcc -static`) that runs the workloads.
//!   The host packages it needs (`busybox-static`, `cpio`, `gcc`, `libc6-dev`) are
//!   installed with apt-get when missing, as `qemu::ensure_qemu` installs QEMU.
//!
//! Why not fio: Debian 12 packages it, but its binary links 63 shared libraries, 80 MB
//! in all (Ceph's librbd and librados, ICU data, GnuTLS...). That would make the
//! initramfs 80 MB, and the guest would need more than 200 MiB of memory just to hold it
//! unpacked, which rules out giving Linux and Keel the same `-m`. `blkbench` instead
//! issues the very requests Keel's `app=blkbench` (`kernel-bin/src/blkbench.rs`) does:
//! `pread` on an `O_DIRECT` descriptor, in order over the whole disk for the sequential
//! reads (as `dd iflag=direct`), at offsets from Keel's generator and seeds
//! ([`random_offsets`]) for the random reads, queue depth 16 being 16 pinned threads as
//! in Keel. It adds `rand-read-4k-qd16-aio` ([`EXTRA_WORKLOADS`]): one thread keeping 16
//! reads in flight with Linux AIO (`io_submit`), which is what fio's libaio engine does.
//!
//! [`run_blk_bench`] boots the guest on `-M q35 -accel tcg -cpu max` (the options
//! `qemu::command` gives Keel under TCG; microvm Linux guests hang in about half the
//! runs), appends the caller's `-drive`/`-device` options verbatim, and reads one
//! `keel-blk-result` line per workload from the serial console. The guest ends QEMU
//! through isa-debug-exit. The times are the guest's `CLOCK_MONOTONIC` under TCG:
//! emulated time, comparable only with another guest in the same QEMU configuration.
//!
//! To try it by hand (it downloads the kernel; CI never runs it):
//! `cargo test -p xtask linux_guest -- --ignored --nocapture`; `LINUX_GUEST_SMP` (default
//! 2) and `LINUX_GUEST_MEMORY_MIB` (default 256) change the guest, and
//! `LINUX_GUEST_CONSOLE=1` first boots it once more and prints its whole console.

#![allow(
    dead_code,
    reason = "a library for `cargo xtask bench blk`, which is being written beside it"
)]

pub mod boot;
mod host;
mod initramfs;
mod kernel;
pub mod results;

pub use boot::boot;
pub use results::parse_results;

use crate::workspace_root;
use std::path::{Path, PathBuf};

/// The workloads Keel runs too (`app=blkbench`), in the order the guest runs them.
pub const WORKLOADS: [&str; 4] = [
    "seq-read-4k",
    "seq-read-64k",
    "rand-read-4k-qd1",
    "rand-read-4k-qd16",
];

/// Run after [`WORKLOADS`], with no Keel counterpart yet: the random reads at queue
/// depth 16 from one thread through Linux AIO (`io_submit`), as fio's libaio engine
/// issues them, beside `rand-read-4k-qd16`'s 16 threads of synchronous reads.
pub const EXTRA_WORKLOADS: [&str; 1] = ["rand-read-4k-qd16-aio"];

/// How many 4 KiB reads each random workload issues unless told otherwise: Keel's
/// default for `blkbench.random_reads` (`RANDOM_READS_DEFAULT` in `blkbench.c`).
pub const RANDOM_READS: u64 = 8192;

/// The seed of the random workloads, Keel's (`SEED` in `blkbench.c`): the single reader
/// uses it, the reader `t` of 16 uses `RANDOM_SEED + t`.
pub const RANDOM_SEED: u64 = 0x5eed;

/// The byte offsets one reader seeded with `seed` reads on a device of `device_bytes`:
/// xorshift64* from `seed | 1`, modulo the 4 KiB blocks, as in `blkbench.c` and Keel's
/// `kernel-bin/src/blkbench.rs`, so both guests read the very same blocks.
pub fn random_offsets(seed: u64, reads: u64, device_bytes: u64) -> impl Iterator<Item = u64> {
    let blocks = (device_bytes / 4096).max(1);
    let mut state = seed | 1;
    (0..reads).map(move |_| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % blocks) * 4096
    })
}

/// A prepared Linux guest: a Debian kernel and an initramfs that runs the workloads.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// `vmlinuz` from the Debian package, for QEMU's `-kernel`.
    pub kernel: PathBuf,
    /// The initramfs, for QEMU's `-initrd`.
    pub initramfs: PathBuf,
    /// The Debian package the kernel came from (`linux-image-6.1.0-57-amd64`).
    pub kernel_package: String,
}

/// One workload's result, as the guest measured it (guest time under TCG).
#[derive(Debug, Clone, PartialEq)]
pub struct BlkResult {
    /// One of [`WORKLOADS`].
    pub workload: String,
    /// Bytes read per second of guest time, in MB (10^6 bytes).
    pub mb_per_s: f64,
    /// Requests completed per second of guest time.
    pub iops: f64,
}

/// The cache directory, `target/linux-guest/`.
pub fn cache_directory() -> PathBuf {
    workspace_root().join("target/linux-guest")
}

/// Downloads Debian's kernel package and builds the initramfs, or finds both in
/// `target/linux-guest/` (see the module documentation).
pub fn prepare() -> Result<LinuxGuest, String> {
    let directory = cache_directory();
    std::fs::create_dir_all(&directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let kernel = kernel::ensure_kernel(&directory)?;
    let initramfs = initramfs::ensure_initramfs(
        &directory,
        &kernel,
        &workspace_root().join("tools/linux-guest"),
    )?;
    Ok(LinuxGuest {
        kernel: kernel.vmlinuz,
        initramfs,
        kernel_package: kernel.package,
    })
}

/// Boots `guest` with `smp` vCPUs and `memory_mib` MiB, `device_args` appended verbatim
/// (the disk: it must appear as `/dev/vda`, e.g. a virtio-blk-pci device), runs the four
/// [`WORKLOADS`] on `/dev/vda` (the random ones with [`RANDOM_READS`] reads), and
/// returns their results in that order, followed by those of [`EXTRA_WORKLOADS`].
pub fn run_blk_bench(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
) -> Result<Vec<BlkResult>, String> {
    run_blk_bench_with_reads(guest, smp, memory_mib, device_args, RANDOM_READS)
}

/// [`run_blk_bench`] with `random_reads` reads in each random workload (Keel's
/// `blkbench.random_reads=N`).
pub fn run_blk_bench_with_reads(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
    random_reads: u64,
) -> Result<Vec<BlkResult>, String> {
    let run = boot(guest, smp, memory_mib, device_args, random_reads)?;
    for line in run.console.lines().filter(|line| {
        line.starts_with("keel-linux-guest ") || line.starts_with("keel-blk-device ")
    }) {
        eprintln!("xtask: linux-guest: the guest says: {line}");
    }
    parse_results(&run.console).map_err(|error| format!("{error}{}", run.context()))
}

/// Creates (or keeps) a `size_mib` MiB disk image at `path` whose every 4 KiB block
/// starts with its own number: every block is written, so that no read hits a sparse
/// file's hole, which the host would answer without touching its disk.
pub fn create_disk_image(path: &Path, size_mib: u64) -> Result<(), String> {
    let size = size_mib
        .checked_mul(1024 * 1024)
        .ok_or(format!("a {size_mib} MiB disk is too large"))?;
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() == size) {
        return Ok(());
    }
    let mut data = vec![0u8; usize::try_from(size).map_err(|_| "disk too large")?];
    for (block, chunk) in data.chunks_mut(4096).enumerate() {
        chunk[..8].copy_from_slice(&(block as u64).to_le_bytes());
    }
    std::fs::write(path, data).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn random_offsets_match_blkbench() {
        let source =
            std::fs::read_to_string(workspace_root().join("tools/linux-guest/blkbench.c")).unwrap();
        assert!(source.contains(&format!("#define RANDOM_READS_DEFAULT {RANDOM_READS}\n")));
        assert!(source.contains(&format!("#define SEED {RANDOM_SEED:#x}\n")));
        let offsets: Vec<u64> = random_offsets(RANDOM_SEED, RANDOM_READS, 256 << 20).collect();
        assert_eq!(offsets.len(), 8192);
        // The first three, as blkbench.c's generator computes them (checked with gcc).
        assert_eq!(offsets[..3], [25468928, 76382208, 73932800]);
        assert!(
            offsets
                .iter()
                .all(|offset| offset % 4096 == 0 && *offset < 256 << 20)
        );
    }

    /// The end-to-end check: downloads the kernel (once), boots the guest on a 256 MiB
    /// disk with virtio-blk-pci, and prints the numbers. Not for CI.
    #[test]
    #[ignore = "downloads Debian's kernel and boots QEMU for about a minute"]
    fn linux_guest_blk_bench_end_to_end() {
        let start = Instant::now();
        let guest = prepare().unwrap_or_else(|error| panic!("prepare: {error}"));
        eprintln!(
            "prepare took {:.2} s: {guest:?}",
            start.elapsed().as_secs_f64()
        );
        let start = Instant::now();
        let again = prepare().unwrap_or_else(|error| panic!("prepare again: {error}"));
        eprintln!("cached prepare took {:.3} s", start.elapsed().as_secs_f64());
        assert_eq!(again.kernel, guest.kernel);
        let disk = cache_directory().join("self-check-disk.img");
        create_disk_image(&disk, 256).unwrap_or_else(|error| panic!("{error}"));
        let smp: u32 = std::env::var("LINUX_GUEST_SMP")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(2);
        let device_args: Vec<String> = [
            "-drive",
            &format!(
                "file={},if=none,id=disk0,format=raw,cache=none",
                disk.display()
            ),
            "-device",
            "virtio-blk-pci,drive=disk0",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let memory_mib: u64 = std::env::var("LINUX_GUEST_MEMORY_MIB")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(256);
        if std::env::var_os("LINUX_GUEST_CONSOLE").is_some() {
            let run = boot(&guest, smp, memory_mib, &device_args, RANDOM_READS)
                .unwrap_or_else(|error| panic!("boot: {error}"));
            eprintln!("--- the guest's console ---\n{}---", run.console);
        }
        let results = run_blk_bench(&guest, smp, memory_mib, &device_args)
            .unwrap_or_else(|error| panic!("run_blk_bench: {error}"));
        for result in &results {
            eprintln!(
                "{:<18} {:>9.1} MB/s {:>10.0} IOPS",
                result.workload, result.mb_per_s, result.iops
            );
        }
    }
}
