//! Booting kernels in QEMU: the `run` command and the captured, time-limited boots the
//! test runner uses.

use crate::kernel::{self, BuildOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// QEMU exits with `(code << 1) | 1` after the guest writes `code` to isa-debug-exit.
pub const GUEST_SUCCESS_STATUS: i32 = (0x10 << 1) | 1;
/// The status for the guest's failure code (a failed test, a crash, a panic).
pub const GUEST_FAILURE_STATUS: i32 = (0x11 << 1) | 1;

/// Which QEMU machine to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// PCI, ACPI, IOAPIC; SeaBIOS runs first.
    Q35,
    /// Minimal: no PCI, virtio-mmio, no firmware.
    Microvm,
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        }
    }
}

fn parse_memory(value: &str) -> Result<String, String> {
    let digits = value.trim_end_matches(['M', 'G', 'm', 'g']);
    match digits.parse::<u64>() {
        Ok(number) if number > 0 && digits.len() < value.len() => Ok(value.to_uppercase()),
        Ok(number) if number > 0 => Ok(format!("{number}M")),
        _ => Err(format!(
            "--memory {value:?}: expected a size such as 256M or 2G"
        )),
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
    let machine = match options.machine {
        Machine::Q35 => "q35",
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
        .arg(kernel);
    if !options.append.is_empty() {
        command.args(["-append", &options.append.join(" ")]);
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
    /// QEMU's exit status, `None` when it was killed at the time limit.
    pub status: Option<i32>,
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
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|error| format!("waiting for QEMU: {error}"))?
        {
            break status.code();
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
        status,
        elapsed,
    })
}

/// `cargo xtask run`.
pub fn run_command(arguments: &[String]) -> Result<(), String> {
    let mut build = BuildOptions::default();
    let mut options = QemuOptions::default();
    let mut limit: Option<Duration> = None;
    let mut iter = arguments.iter();
    let value = |iter: &mut std::slice::Iter<String>, name: &str| -> Result<String, String> {
        iter.next().cloned().ok_or(format!("{name} needs a value"))
    };
    while let Some(argument) = iter.next() {
        match argument.as_str() {
            "--release" => build.release = true,
            "--ktest" => build.features.push("ktest".into()),
            "--features" => build.features.extend(
                value(&mut iter, "--features")?
                    .split(',')
                    .filter(|feature| !feature.is_empty())
                    .map(String::from),
            ),
            "--machine" => {
                options.machine = match value(&mut iter, "--machine")?.as_str() {
                    "q35" => Machine::Q35,
                    "microvm" => Machine::Microvm,
                    other => return Err(format!("--machine {other:?}: expected q35 or microvm")),
                }
            }
            "--smp" => {
                let text = value(&mut iter, "--smp")?;
                options.smp = match text.parse::<u32>() {
                    Ok(count) if (1..=255).contains(&count) => count,
                    _ => return Err(format!("--smp {text:?}: expected a CPU count 1..=255")),
                };
            }
            "--max-cpus" => {
                let text = value(&mut iter, "--max-cpus")?;
                options.max_cpus = match text.parse::<u32>() {
                    Ok(count) if (1..=255).contains(&count) => Some(count),
                    _ => return Err(format!("--max-cpus {text:?}: expected a CPU count 1..=255")),
                };
            }
            "--memory" => options.memory = parse_memory(&value(&mut iter, "--memory")?)?,
            "--accel" => {
                options.accel = match value(&mut iter, "--accel")?.as_str() {
                    "tcg" => Accel::Tcg,
                    "kvm" => Accel::Kvm,
                    other => return Err(format!("--accel {other:?}: expected tcg or kvm")),
                }
            }
            "--gdb" => options.gdb = true,
            "--timeout" => {
                let text = value(&mut iter, "--timeout")?;
                let seconds: u64 = text
                    .parse()
                    .map_err(|_| format!("--timeout {text:?}: expected seconds"))?;
                limit = Some(Duration::from_secs(seconds));
            }
            "--" => {
                options.append.extend(iter.by_ref().cloned());
            }
            other => {
                return Err(format!(
                    "unknown run option {other:?} (kernel arguments go after --)"
                ));
            }
        }
    }
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
        options.memory,
        options.accel
    );
    let start = Instant::now();
    let status = match limit {
        None => command(&kernel, &options)
            .status()
            .map_err(|error| format!("cannot start QEMU: {error}"))?
            .code(),
        Some(limit) => {
            let outcome = boot_captured(&kernel, &options, limit, Some(""))?;
            outcome.status
        }
    };
    let elapsed = start.elapsed();
    eprintln!(
        "xtask: QEMU process time {:.3} s (whole process: start, firmware, kernel, exit)",
        elapsed.as_secs_f64()
    );
    match status {
        Some(GUEST_SUCCESS_STATUS) => Ok(()),
        Some(GUEST_FAILURE_STATUS) => Err("the guest reported failure".into()),
        Some(code) => Err(format!(
            "QEMU exited with status {code} (the guest did not exit through isa-debug-exit)"
        )),
        None => Err("QEMU was stopped at the time limit, or killed by a signal".into()),
    }
}
