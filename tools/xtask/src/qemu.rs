//! Booting kernels in QEMU: the `run` command and the captured, time-limited boots the
//! test runner uses.

use crate::cli::RunArguments;
use crate::kernel;
use crate::kernel_args;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// QEMU exits with `(code << 1) | 1` after the guest writes `code` to isa-debug-exit.
pub const GUEST_SUCCESS_STATUS: i32 = (0x10 << 1) | 1;
/// The status for the guest's failure code (a failed test, a crash, a panic).
pub const GUEST_FAILURE_STATUS: i32 = (0x11 << 1) | 1;

/// Which QEMU machine to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    /// PCI, ACPI, IOAPIC; SeaBIOS runs first.
    Q35,
    /// Minimal: no PCI, virtio-mmio, no firmware.
    Microvm,
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: works everywhere, the default.
    Tcg,
    /// Hardware virtualization, for hosts where KVM really works.
    Kvm,
}

/// Everything that shapes one QEMU boot.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The machine model.
    pub machine: Machine,
    /// Number of vCPUs.
    pub smp: u32,
    /// QEMU's `maxcpus`: CPUs that could be hot-plugged later, listed in the MADT as
    /// not enabled (`None`: as many as `smp`).
    pub max_cpus: Option<u32>,
    /// Guest memory, in QEMU's syntax (`256M`, `2G`).
    pub memory: String,
    /// Accelerator.
    pub accel: Accel,
    /// Start paused with the gdb stub on port 1234.
    pub gdb: bool,
    /// The kernel command line.
    pub append: Vec<String>,
    /// Another QEMU to run instead of the installed one: the root of an extracted
    /// Debian package tree (see [`ensure_x2apic_qemu`]).
    pub qemu_root: Option<PathBuf>,
    /// Disks, attached as virtio-blk: PCI on q35, MMIO on microvm.
    pub disks: Vec<Disk>,
    /// The boot image (`-initrd`), a cpio newc archive.
    pub initrd: Option<PathBuf>,
    /// Attach a virtio-rng device (`-device virtio-rng-pci`, q35 only).
    pub rng: bool,
}

/// A disk image attached as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The raw image file.
    pub path: PathBuf,
    /// Attached read-only (the device offers VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// The device's queue length (QEMU's `queue-size`; `None`: QEMU's default, 256).
    pub queue_size: Option<u32>,
}

/// Parses `--disk FILE[,ro]`.
pub fn parse_disk(value: &str) -> Result<Disk, String> {
    let (path, read_only) = match value.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some((_, option)) => {
            return Err(format!(
                "--disk {value}: unknown option {option:?} (FILE, FILE,ro or FILE,rw)"
            ));
        }
        None => (value, false),
    };
    if path.is_empty() {
        return Err(format!("--disk {value}: no file name"));
    }
    if path.contains(',') {
        return Err(format!(
            "--disk {value}: QEMU cannot take a file name with a comma"
        ));
    }
    Ok(Disk {
        path: PathBuf::from(path),
        read_only,
        queue_size: None,
    })
}

/// virtio-mmio transports of QEMU's microvm with ACPI on and `ioapic2=off`: eight
/// 512-byte windows from 0xfeb00000, wired to GSI 16 + index of the first I/O APIC
/// (seen in QEMU 7.2's `info irq`; with `acpi=off` QEMU wires them to IRQ 5 + index
/// instead and appends those words itself).
const MICROVM_TRANSPORTS: usize = 8;
const MICROVM_MMIO_BASE: u64 = 0xfeb0_0000;
const MICROVM_MMIO_SIZE: u64 = 512;
const MICROVM_IRQ_BASE: u64 = 16;

/// The `virtio_mmio.device=` words naming `disks` on microvm, as Firecracker names its
/// devices. QEMU plugs the first `-device` into the last transport, the next into the
/// one before, and so on. (QEMU appends such words itself only with `acpi=off`, and
/// then the guest has no MADT; with ACPI on it describes the devices only in the
/// DSDT's AML, which Keel does not interpret.)
pub fn microvm_mmio_words(disks: usize) -> Result<Vec<String>, String> {
    if disks > MICROVM_TRANSPORTS {
        return Err(format!(
            "microvm has {MICROVM_TRANSPORTS} virtio-mmio transports: {disks} disks do not fit"
        ));
    }
    Ok((0..disks)
        .map(|index| {
            let transport = (MICROVM_TRANSPORTS - 1 - index) as u64;
            format!(
                "virtio_mmio.device={MICROVM_MMIO_SIZE}@{:#x}:{}",
                MICROVM_MMIO_BASE + transport * MICROVM_MMIO_SIZE,
                MICROVM_IRQ_BASE + transport
            )
        })
        .collect())
}

/// The QEMU arguments that attach `disks` on `machine`.
pub fn disk_arguments(machine: Machine, disks: &[Disk]) -> Vec<String> {
    let mut arguments = Vec::new();
    for (index, disk) in disks.iter().enumerate() {
        arguments.push("-drive".to_string());
        arguments.push(format!(
            "file={},if=none,id=disk{index},format=raw{}",
            disk.path.display(),
            if disk.read_only { ",readonly=on" } else { "" }
        ));
        arguments.push("-device".to_string());
        let device = match machine {
            Machine::Q35 => "virtio-blk-pci",
            Machine::Microvm => "virtio-blk-device",
        };
        arguments.push(format!(
            "{device},drive=disk{index}{}",
            disk.queue_size
                .map(|size| format!(",queue-size={size}"))
                .unwrap_or_default()
        ));
    }
    arguments
}

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            machine: Machine::Q35,
            smp: 1,
            max_cpus: None,
            memory: "256M".into(),
            accel: Accel::Tcg,
            gdb: false,
            append: Vec::new(),
            qemu_root: None,
            disks: Vec::new(),
            initrd: None,
            rng: false,
        }
    }
}

/// A guest memory size, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize {
    /// Mebibytes.
    pub mebibytes: u64,
}

impl MemorySize {
    /// QEMU's `-m` syntax.
    pub fn qemu_argument(self) -> String {
        format!("{}M", self.mebibytes)
    }
}

impl std::fmt::Display for MemorySize {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mebibytes >= 1024 && self.mebibytes.is_multiple_of(1024) {
            write!(out, "{} GiB", self.mebibytes / 1024)
        } else {
            write!(out, "{} MiB", self.mebibytes)
        }
    }
}

/// The largest `--memory` accepted: 1 TiB (QEMU's own limit depends on the host).
const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Parses `--memory`: `256M`, `2G`, `256` (MiB), case-insensitive.
pub fn parse_memory(value: &str) -> Result<MemorySize, String> {
    let text = value.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((index, 'm' | 'M')) => (&text[..index], 1),
        Some((index, 'g' | 'G')) => (&text[..index], 1024),
        _ => (text, 1),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a size such as 256M or 2G"))?;
    match number.checked_mul(unit) {
        Some(mebibytes) if (1..=MAX_MEMORY_MIB).contains(&mebibytes) => {
            Ok(MemorySize { mebibytes })
        }
        _ => Err(format!(
            "{value:?} is out of range (1M..={}G)",
            MAX_MEMORY_MIB / 1024
        )),
    }
}

/// The least memory the kernel boots with, in MiB, for `smp` vCPUs, measured on q35 by
/// booting at decreasing sizes (issue 12 item 2):
/// - the default application needs about 8 MiB plus 5/8 MiB per vCPU (boot data, page
///   metadata, page tables, each CPU's stacks and caches): 9 MiB booted at `--smp 1`
///   and 8 failed, 10/9 at 2, 11/10 at 4, 13/12 at 8; 17 booted at 16;
/// - the in-guest suite (`--ktest`) checks for 64 MiB of usable RAM and spawns
///   thousands of threads; near its edge a run passes or not by chance: with 72 MiB it
///   passed at `--smp 1` (68 failed) and failed at 4; 76 and 78 passed at 4; 76, 80 and
///   86 passed at 8; 80 passed at 2 and 4. So 80 MiB up to 8 vCPUs, and 1 MiB more
///   per further vCPU (extrapolated, not measured).
pub fn minimum_memory_mib(smp: u32, ktest: bool) -> u64 {
    let smp = u64::from(smp);
    let default_app = 8 + (smp * 5).div_ceil(8);
    if ktest {
        default_app.max(KTEST_MINIMUM_MIB + smp.saturating_sub(8))
    } else {
        default_app
    }
}

/// The memory `--ktest` needs at up to 8 vCPUs.
const KTEST_MINIMUM_MIB: u64 = 80;

/// The `--memory` part of `run --help`.
pub fn memory_help() -> String {
    format!(
        "Memory (--memory): QEMU's -m, in MiB (M) or GiB (G); default 256M. The kernel needs \
         at least 8 MiB + 5/8 MiB per vCPU for the default app ({} MiB at --smp 1, {} at \
         --smp 4, {} at --smp 8), and with --ktest {} MiB up to --smp 8, 1 MiB more per \
         further vCPU ({} at --smp 16); smaller sizes are refused.\n",
        minimum_memory_mib(1, false),
        minimum_memory_mib(4, false),
        minimum_memory_mib(8, false),
        KTEST_MINIMUM_MIB,
        minimum_memory_mib(16, true),
    )
}

/// What an exit status means, in words: the code, or the signal by name.
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(signal) => format!(
            "signal {signal} ({}){}",
            signal_name(signal),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        None => format!("{status}"),
    }
}

/// The usual name of a Linux signal number.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT: QEMU aborted, for example on a failed assertion",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "unnamed signal",
    }
}

/// Makes sure `qemu-system-x86_64` exists; installs it when running as root.
pub fn ensure_qemu() -> Result<(), String> {
    let found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Ok(());
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Err("QEMU is not installed. Install it with:\n  \
             sudo apt-get install -y qemu-system-x86"
            .into());
    }
    eprintln!("xtask: QEMU is missing; installing it with apt-get (qemu-system-x86)");
    let install = |update: bool| -> bool {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    if install(false) || install(true) {
        Ok(())
    } else {
        Err("installing qemu-system-x86 with apt-get failed".into())
    }
}

/// The Debian release whose backports carry a QEMU whose TCG emulates x2APIC (10.0
/// there; the 7.2 of Debian 12 rejects `+x2apic` under TCG).
const X2APIC_QEMU_SUITE: &str = "bookworm-backports";

/// Makes sure a QEMU whose TCG offers x2APIC is extracted under `directory` (the
/// packages `qemu-system-x86` and `qemu-system-data` from bookworm-backports,
/// downloaded with `apt-get download` and unpacked with `dpkg -x`, never installed),
/// and returns the root of that tree. Needs root for apt (it adds the backports source
/// for the download and removes it again). Its firmware comes from the installed
/// `seabios` package, which the installed QEMU brings.
pub fn ensure_x2apic_qemu(directory: &Path) -> Result<PathBuf, String> {
    let root = directory.join("root");
    if root.join("usr/bin/qemu-system-x86_64").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let sources = Path::new("/etc/apt/sources.list.d/keel-xtask-backports.list");
    std::fs::write(
        sources,
        format!("deb http://deb.debian.org/debian {X2APIC_QEMU_SUITE} main\n"),
    )
    .map_err(|error| format!("cannot write {} (not root?): {error}", sources.display()))?;
    let run = |command: &mut Command| -> bool {
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .current_dir(directory)
            .status()
            .is_ok_and(|status| status.success())
    };
    let downloaded = run(Command::new("apt-get").args(["update", "-q"]))
        && run(Command::new("apt-get").args([
            "download",
            "-q",
            &format!("qemu-system-x86/{X2APIC_QEMU_SUITE}"),
            &format!("qemu-system-data/{X2APIC_QEMU_SUITE}"),
        ]));
    let _ = std::fs::remove_file(sources);
    let _ = run(Command::new("apt-get").args(["update", "-q"]));
    if !downloaded {
        return Err(format!("downloading QEMU from {X2APIC_QEMU_SUITE} failed"));
    }
    let packages: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(|error| format!("cannot read {}: {error}", directory.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .collect();
    for package in &packages {
        if !run(Command::new("dpkg").arg("-x").arg(package).arg(&root)) {
            return Err(format!("dpkg -x {} failed", package.display()));
        }
    }
    if root.join("usr/bin/qemu-system-x86_64").exists() {
        Ok(root)
    } else {
        Err(format!("no qemu-system-x86_64 in {}", root.display()))
    }
}

/// The QEMU command line for `kernel` with `options`.
pub fn command(kernel: &Path, options: &QemuOptions) -> Command {
    let mut command = match &options.qemu_root {
        Some(root) => {
            let mut command = Command::new(root.join("usr/bin/qemu-system-x86_64"));
            command
                .arg("-L")
                .arg(root.join("usr/share/qemu"))
                .args(["-L", "/usr/share/seabios"]);
            command
        }
        None => Command::new("qemu-system-x86_64"),
    };
    let mut append = options.append.clone();
    let machine = match options.machine {
        Machine::Q35 => "q35",
        // One I/O APIC and eight transports: the layout `microvm_mmio_words` names.
        Machine::Microvm if !options.disks.is_empty() => {
            // `run_command` and the test harness check the count first.
            append.extend(microvm_mmio_words(options.disks.len()).unwrap_or_default());
            "microvm,ioapic2=off"
        }
        Machine::Microvm => "microvm",
    };
    command.args(["-M", machine]);
    match options.accel {
        Accel::Tcg => command.args(["-accel", "tcg", "-cpu", "max"]),
        Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
    };
    command
        .args([
            "-smp",
            &match options.max_cpus {
                Some(max) => format!("{},maxcpus={max}", options.smp),
                None => options.smp.to_string(),
            },
        ])
        .args(["-m", &options.memory])
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
        .arg(kernel)
        .args(disk_arguments(options.machine, &options.disks));
    // After the disks, so that their PCI slots stay where they were.
    if options.rng && options.machine == Machine::Q35 {
        command.args(["-device", "virtio-rng-pci"]);
    }
    if let Some(initrd) = &options.initrd {
        command.arg("-initrd").arg(initrd);
    }
    if !append.is_empty() {
        command.args(["-append", &append.join(" ")]);
    }
    if options.gdb {
        command.args(["-s", "-S"]);
    }
    command
}

/// What a captured boot produced.
#[derive(Debug)]
pub struct BootOutcome {
    /// Everything the guest printed on the serial console.
    pub output: String,
    /// QEMU's exit code, `None` when it was killed at the time limit or by a signal.
    pub status: Option<i32>,
    /// QEMU's whole exit status, `None` when xtask killed it at the time limit.
    pub exit: Option<ExitStatus>,
    /// Whole QEMU process time.
    pub elapsed: Duration,
}

/// Boots `kernel`, echoing the console with `prefix` when `echo` is set, and kills QEMU
/// after `limit`.
pub fn boot_captured(
    kernel: &Path,
    options: &QemuOptions,
    limit: Duration,
    echo: Option<&str>,
) -> Result<BootOutcome, String> {
    let start = Instant::now();
    let mut child = command(kernel, options)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start QEMU: {error}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (sender, receiver) = mpsc::channel::<String>();
    let prefix = echo.map(String::from);
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if let Some(prefix) = &prefix {
                eprint!("{prefix}{text}");
            }
            let _ = sender.send(text);
            line.clear();
        }
    });
    let error_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let exit = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|error| format!("waiting for QEMU: {error}"))?
        {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let _ = reader.join();
    let qemu_errors = error_reader.join().unwrap_or_default();
    let mut output: String = receiver.try_iter().collect();
    if !qemu_errors.trim().is_empty() {
        output.push_str("\n[qemu stderr] ");
        output.push_str(&qemu_errors);
    }
    Ok(BootOutcome {
        output,
        status: exit.and_then(|status| status.code()),
        exit,
        elapsed,
    })
}

/// `cargo xtask run`.
pub fn run_command(arguments: RunArguments) -> Result<(), String> {
    let build = arguments.build.build_options()?;
    let ktest = build.features.iter().any(|feature| feature == "ktest");
    if let Some(max) = arguments.max_cpus
        && max < arguments.smp
    {
        return Err(format!(
            "--max-cpus {max} is below --smp {}: maxcpus counts the started CPUs too",
            arguments.smp
        ));
    }
    let minimum = minimum_memory_mib(arguments.smp, ktest);
    if arguments.memory.mebibytes < minimum {
        return Err(format!(
            "--memory {}: the kernel needs at least {minimum} MiB with --smp {}{} \
             ({}; see `cargo xtask run --help`)",
            arguments.memory,
            arguments.smp,
            if ktest { " and --ktest" } else { "" },
            if ktest {
                "the test suite: 80 MiB up to 8 vCPUs, 1 MiB more per further vCPU"
            } else {
                "8 MiB + 5/8 MiB per vCPU"
            }
        ));
    }
    for warning in kernel_args::check(&arguments.kernel_arguments, ktest)? {
        eprintln!("xtask: warning: {warning}");
    }
    let options = QemuOptions {
        machine: arguments.machine,
        smp: arguments.smp,
        max_cpus: arguments.max_cpus,
        memory: arguments.memory.qemu_argument(),
        accel: arguments.accel,
        gdb: arguments.gdb,
        append: arguments.kernel_arguments,
        qemu_root: None,
        disks: arguments.disks,
        initrd: None,
        rng: arguments.rng,
    };
    let mut options = options;
    if let Some(directory) = &arguments.files {
        let image = crate::workspace_root().join("target/keel/files.cpio");
        crate::image::pack(directory, &image)?;
        options.initrd = Some(image);
    }
    // The test suite's disk cases need their disks: attach fresh ones unless the
    // developer gave some.
    if ktest && options.disks.is_empty() {
        options.disks = crate::test::ktest_disks(false)?;
        options.append.extend([
            "ktest.disk_seed=1".into(),
            "ktest.disk_previous_seed=0".into(),
            crate::test::EXT2_MOUNT.into(),
        ]);
    }
    // The virtio-rng case expects the device on q35.
    if ktest && options.machine == Machine::Q35 {
        options.rng = true;
    }
    if ktest {
        options.append.push(format!(
            "ktest.expect_rng={}",
            u8::from(options.rng && options.machine == Machine::Q35)
        ));
    }
    if options.rng && options.machine != Machine::Q35 {
        return Err("--rng: virtio-rng is attached on q35 only (virtio-rng-pci)".into());
    }
    // And the boot image the file cases compare with, unless --files gave one.
    if ktest && options.initrd.is_none() {
        options.initrd = Some(crate::test::ktest_boot_image()?);
    }
    if options.machine == Machine::Microvm {
        microvm_mmio_words(options.disks.len())?;
    }
    for disk in &options.disks {
        if !disk.path.is_file() {
            return Err(format!("--disk {}: no such file", disk.path.display()));
        }
    }
    let limit = arguments.timeout.map(Duration::from_secs);
    ensure_qemu()?;
    let kernel = kernel::build(&build)?;
    if options.gdb {
        eprintln!(
            "xtask: QEMU waits for gdb on port 1234. Attach with:\n  \
             gdb {} -ex 'target remote :1234' -ex 'hbreak keel_kernel_main' -ex continue",
            kernel.display()
        );
    }
    eprintln!(
        "xtask: booting {} on {:?} with {} vCPU(s){}, {} of memory ({:?})",
        kernel.display(),
        options.machine,
        options.smp,
        options
            .max_cpus
            .map(|max| format!(" (maxcpus={max})"))
            .unwrap_or_default(),
        arguments.memory,
        options.accel
    );
    let start = Instant::now();
    let exit = match limit {
        None => {
            let mut command = command(&kernel, &options);
            // QEMU's -serial stdio reads stdin; where that is not a terminal (a pipe, a
            // `while read` loop) it would eat input meant for someone else.
            if !std::io::stdin().is_terminal() {
                command.stdin(Stdio::null());
            }
            Some(
                command
                    .status()
                    .map_err(|error| format!("cannot start QEMU: {error}"))?,
            )
        }
        Some(limit) => boot_captured(&kernel, &options, limit, Some(""))?.exit,
    };
    let elapsed = start.elapsed();
    eprintln!(
        "xtask: QEMU process time {:.3} s (whole process: start, firmware, kernel, exit)",
        elapsed.as_secs_f64()
    );
    let Some(exit) = exit else {
        return Err(format!(
            "QEMU was stopped at the time limit (--timeout {} s)",
            limit.map_or(0, |limit| limit.as_secs())
        ));
    };
    match exit.code() {
        Some(GUEST_SUCCESS_STATUS) => Ok(()),
        Some(GUEST_FAILURE_STATUS) => Err("the guest reported failure".into()),
        Some(0) => Err("QEMU exited with status 0, but not through the guest's \
             isa-debug-exit: the guest reset or triple-faulted (-no-reboot turns that into \
             an exit), or QEMU was told to quit (SIGTERM, SIGINT)"
            .into()),
        Some(code) => Err(format!(
            "QEMU exited with status {code}, not through the guest's isa-debug-exit \
             (QEMU's own error, if any, is above)"
        )),
        None => Err(format!("QEMU was killed by {}", describe_status(exit))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_sizes() {
        assert_eq!(parse_memory("256M"), Ok(MemorySize { mebibytes: 256 }));
        assert_eq!(parse_memory("2g"), Ok(MemorySize { mebibytes: 2048 }));
        assert_eq!(parse_memory("64"), Ok(MemorySize { mebibytes: 64 }));
        assert!(parse_memory("0M").is_err());
        assert!(parse_memory("1.5G").is_err());
        assert!(parse_memory("M").is_err());
        assert!(parse_memory("99999999999999999999G").is_err());
        assert_eq!(MemorySize { mebibytes: 6144 }.qemu_argument(), "6144M");
    }

    #[test]
    fn minimum_memory_grows_with_cpus_and_ktest() {
        assert_eq!(minimum_memory_mib(1, false), 9);
        assert_eq!(minimum_memory_mib(4, false), 11);
        assert_eq!(minimum_memory_mib(8, false), 13);
        assert_eq!(minimum_memory_mib(1, true), 80);
        assert_eq!(minimum_memory_mib(8, true), 80);
        assert_eq!(minimum_memory_mib(16, true), 88);
        // The sizes the test suites boot with stay allowed.
        assert!(minimum_memory_mib(8, true) <= 256);
    }

    #[test]
    fn parses_disks_and_attaches_them_per_machine() {
        let disk = parse_disk("a.img,ro").unwrap();
        assert_eq!((disk.path.to_str(), disk.read_only), (Some("a.img"), true));
        assert!(!parse_disk("b.img").unwrap().read_only);
        assert!(parse_disk("b.img,fast").is_err());
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("a,b.img,ro").is_err());
        let disks = [disk, parse_disk("b.img").unwrap()];
        assert_eq!(
            disk_arguments(Machine::Q35, &disks),
            [
                "-drive",
                "file=a.img,if=none,id=disk0,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=disk0",
                "-drive",
                "file=b.img,if=none,id=disk1,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk1",
            ]
        );
        assert_eq!(
            disk_arguments(Machine::Microvm, &disks[1..])[3],
            "virtio-blk-device,drive=disk0"
        );
        // QEMU 7.2 puts the first two disks at these windows (what it appends itself
        // with acpi=off names the same windows, with IRQs 12 and 11).
        assert_eq!(
            microvm_mmio_words(2).unwrap(),
            [
                "virtio_mmio.device=512@0xfeb00e00:23",
                "virtio_mmio.device=512@0xfeb00c00:22"
            ]
        );
        assert!(microvm_mmio_words(9).is_err());
    }

    #[test]
    fn names_signals() {
        let aborted = ExitStatus::from_raw(6);
        assert!(describe_status(aborted).starts_with("signal 6 (SIGABRT"));
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe_status(exited), "exit status 3");
    }
}
