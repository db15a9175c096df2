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
//! - An initramfs (`initramfs.cpio`, packed with `cpio -o -H newc`, about 4 MB): Debian's
//!   `busybox-static` for the shell, `mount`, `insmod`; `/init` from
//!   `tools/linux-guest/init`; and `blkbench`, a static C program
//!   (`tools/linux-guest/blkbench.c`, built with `gcc -static`) that runs the workloads.
//!   The host packages it needs (`busybox-static`, `cpio`, `gcc`, `libc6-dev`) are
//!   installed with apt-get when missing, as `qemu::ensure_qemu` installs QEMU.
//!
//! Why not fio: Debian 12 packages it, but its binary links 63 shared libraries, 80 MB
//! in all (Ceph's librbd and librados, ICU data, GnuTLS...). That would make the
//! initramfs 80 MB, and the guest would need more than 200 MiB of memory just to hold it
//! unpacked, which rules out giving Linux and Keel the same `-m`. `blkbench` issues the
//! same requests fio would with `--direct=1`: `pread` on an `O_DIRECT` descriptor for the
//! sequential reads (as `dd iflag=direct`) and Linux AIO (`io_submit`, as fio's libaio
//! engine) for the random reads at queue depth 1 and 16, with a fixed xorshift64 seed so
//! that every run reads the same blocks.
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

mod image;

use crate::qemu::{GUEST_FAILURE_STATUS, GUEST_SUCCESS_STATUS, describe_status, ensure_qemu};
use crate::workspace_root;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The workloads, in the order the guest runs them.
pub const WORKLOADS: [&str; 4] = [
    "seq-read-4k",
    "seq-read-64k",
    "rand-read-4k-qd1",
    "rand-read-4k-qd16",
];

/// QEMU is killed after this long: a hung guest becomes an error, never a hang.
pub const QEMU_TIME_LIMIT: Duration = Duration::from_secs(600);

/// The kernel command line: the console on the first serial port, and a reboot (which
/// `-no-reboot` turns into QEMU's exit) at once on a panic, such as `/init` exiting.
const KERNEL_COMMAND_LINE: &str = "console=ttyS0 quiet panic=-1";

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
    let kernel = image::ensure_kernel(&directory)?;
    let initramfs = image::ensure_initramfs(
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

/// The QEMU command that boots `guest` with `device_args` appended verbatim.
pub fn qemu_command(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &smp.to_string()])
        .args(["-m", &format!("{memory_mib}M")])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initramfs)
        .args(["-append", KERNEL_COMMAND_LINE])
        .args(device_args);
    command
}

/// A command line as one could paste it into a shell (arguments with spaces quoted).
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| {
            let text = part.to_string_lossy();
            if text.contains([' ', '"', '\'', '?', '*']) {
                format!("'{text}'")
            } else {
                text.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots `guest` with `smp` vCPUs and `memory_mib` MiB, `device_args` appended verbatim
/// (the disk: it must appear as `/dev/vda`, e.g. a virtio-blk-pci device), runs the four
/// [`WORKLOADS`] on `/dev/vda`, and returns their results in that order.
pub fn run_blk_bench(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
) -> Result<Vec<BlkResult>, String> {
    let run = boot(guest, smp, memory_mib, device_args)?;
    for line in run.console.lines().filter(|line| {
        line.starts_with("keel-linux-guest ") || line.starts_with("keel-blk-device ")
    }) {
        eprintln!("xtask: linux-guest: the guest says: {line}");
    }
    parse_results(&run.console).map_err(|error| format!("{error}{}", run.context()))
}

/// What one boot of the guest produced.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// Everything the guest printed on the serial console.
    pub console: String,
    /// QEMU's stderr.
    pub qemu_errors: String,
    /// QEMU's whole process time (boot, workloads, exit).
    pub elapsed: Duration,
}

impl GuestRun {
    /// The end of the console and QEMU's stderr, to append to an error message.
    fn context(&self) -> String {
        let mut text = format!("\n--- the guest's console ---\n{}", tail(&self.console, 60));
        if !self.qemu_errors.trim().is_empty() {
            text.push_str(&format!(
                "\n--- QEMU's stderr ---\n{}",
                self.qemu_errors.trim()
            ));
        }
        text
    }
}

/// Boots `guest` as [`run_blk_bench`] does and returns its console once it has ended
/// through isa-debug-exit with the success code; any other end is an error.
pub fn boot(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
) -> Result<GuestRun, String> {
    ensure_qemu()?;
    let mut command = qemu_command(guest, smp, memory_mib, device_args);
    eprintln!("xtask: linux-guest: {}", command_line(&command));
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start QEMU for the Linux guest: {error}"))?;
    let stdout = child.stdout.take().ok_or("QEMU's stdout is not piped")?;
    let mut stderr = child.stderr.take().ok_or("QEMU's stderr is not piped")?;
    let reader = std::thread::spawn(move || {
        let mut console = String::new();
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            console.push_str(&String::from_utf8_lossy(&line).replace('\r', ""));
            line.clear();
        }
        console
    });
    let error_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for QEMU: {error}"));
            }
        }
        if start.elapsed() > QEMU_TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let console = reader.join().unwrap_or_default();
    let qemu_errors = error_reader.join().unwrap_or_default();
    eprintln!(
        "xtask: linux-guest: QEMU process time {:.1} s",
        elapsed.as_secs_f64()
    );
    let run = GuestRun {
        console,
        qemu_errors,
        elapsed,
    };
    let Some(exit) = exit else {
        return Err(format!(
            "the Linux guest did not finish within {} s; QEMU was killed{}",
            QEMU_TIME_LIMIT.as_secs(),
            run.context()
        ));
    };
    match exit.code() {
        Some(GUEST_SUCCESS_STATUS) => Ok(run),
        Some(GUEST_FAILURE_STATUS) => Err(format!(
            "the Linux guest's benchmark failed (it said why on the console){}",
            run.context()
        )),
        _ => Err(format!(
            "QEMU ended with {} instead of the guest's isa-debug-exit (a kernel panic \
             reboots, and -no-reboot makes that an exit with status 0){}",
            describe_status(exit),
            run.context()
        )),
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The results in the console output: one line per workload,
/// `keel-blk-result workload=NAME ops=N bytes=N ns=N`, all of [`WORKLOADS`] present.
pub fn parse_results(console: &str) -> Result<Vec<BlkResult>, String> {
    if let Some(error) = console
        .lines()
        .find(|line| line.starts_with("keel-blk-error"))
    {
        return Err(format!("the guest reported: {error}"));
    }
    let mut results = Vec::new();
    for line in console.lines() {
        let Some(fields) = line.trim().strip_prefix("keel-blk-result ") else {
            continue;
        };
        let field = |key: &str| -> Result<&str, String> {
            fields
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .ok_or(format!("no {key}= in {line:?}"))
        };
        let number = |key: &str| -> Result<f64, String> {
            let text = field(key)?;
            text.parse::<u64>()
                .map(|value| value as f64)
                .map_err(|_| format!("{key}={text} is not a count in {line:?}"))
        };
        let workload = field("workload")?.to_string();
        let (ops, bytes, nanos) = (number("ops")?, number("bytes")?, number("ns")?);
        if nanos <= 0.0 || ops <= 0.0 {
            return Err(format!("no time or no requests in {line:?}"));
        }
        results.push(BlkResult {
            workload,
            mb_per_s: bytes * 1e3 / nanos,
            iops: ops * 1e9 / nanos,
        });
    }
    let mut ordered = Vec::new();
    for workload in WORKLOADS {
        let found = results
            .iter()
            .find(|result| result.workload == workload)
            .ok_or(format!("the guest printed no result for {workload}"))?;
        ordered.push(found.clone());
    }
    Ok(ordered)
}

/// Creates (or keeps) a `size_mib` MiB disk image at `path` whose every 4 KiB block
/// starts with its own number: every block is written, so that no read hits a sparse
/// file's hole, which the host would answer without touching its disk.
pub fn create_disk_image(path: &Path, size_mib: u64) -> Result<(), String> {
    let size = size_mib * 1024 * 1024;
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

    #[test]
    fn parses_results_in_workload_order() {
        let console = "noise\n\
            keel-blk-device path=/dev/vda bytes=268435456 random_reads=16384 seed=1\n\
            keel-blk-result workload=seq-read-64k ops=4096 bytes=268435456 ns=2000000000\n\
            keel-blk-result workload=seq-read-4k ops=65536 bytes=268435456 ns=4000000000\r\n\
            keel-blk-result workload=rand-read-4k-qd1 ops=1000 bytes=4096000 ns=1000000000\n\
            keel-blk-result workload=rand-read-4k-qd16 ops=2000 bytes=8192000 ns=500000000\n\
            keel-blk-done\n";
        let results = parse_results(console).unwrap();
        let names: Vec<&str> = results.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(names, WORKLOADS);
        assert!((results[0].mb_per_s - 67.108864).abs() < 1e-9);
        assert!((results[0].iops - 16384.0).abs() < 1e-9);
        assert!((results[3].iops - 4000.0).abs() < 1e-9);
        assert!((results[3].mb_per_s - 16.384).abs() < 1e-9);
    }

    #[test]
    fn missing_or_failed_workloads_are_errors() {
        let partial = "keel-blk-result workload=seq-read-4k ops=1 bytes=4096 ns=10\n";
        assert!(parse_results(partial).unwrap_err().contains("seq-read-64k"));
        let failed = "keel-blk-error workload=seq-read-4k pread: Input/output error\n";
        assert!(parse_results(failed).unwrap_err().contains("pread"));
        let garbled = "keel-blk-result workload=seq-read-4k ops=x bytes=4096 ns=10\n";
        assert!(parse_results(garbled).unwrap_err().contains("ops=x"));
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let dependencies = |name: &str| -> Result<Vec<String>, String> {
            Ok(match name {
                "virtio" => vec!["virtio_ring".into()],
                "virtio_pci" => vec![
                    "virtio_ring".into(),
                    "virtio_pci_modern_dev".into(),
                    "virtio_pci_legacy_dev".into(),
                    "virtio".into(),
                ],
                "virtio_mmio" | "virtio_blk" => vec!["virtio".into(), "virtio_ring".into()],
                _ => Vec::new(),
            })
        };
        let order = image::load_order(&image::MODULES, &dependencies).unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_mmio",
                "virtio_blk"
            ]
        );
        let missing = |_: &str| -> Result<Vec<String>, String> { Ok(vec!["failover".into()]) };
        assert!(
            image::load_order(&["virtio_net"], &missing)
                .unwrap_err()
                .contains("failover")
        );
    }

    #[test]
    fn quotes_the_command_line() {
        let mut command = Command::new("qemu-system-x86_64");
        command.args([
            "-append",
            "console=ttyS0 quiet",
            "-drive",
            "file=a,cache=none",
        ]);
        assert_eq!(
            command_line(&command),
            "qemu-system-x86_64 -append 'console=ttyS0 quiet' -drive file=a,cache=none"
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
            let run = boot(&guest, smp, memory_mib, &device_args)
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
