//! Booting the Linux guest in QEMU, time-limited, with its console captured.

use super::LinuxGuest;
use crate::qemu::{GUEST_FAILURE_STATUS, GUEST_SUCCESS_STATUS, describe_status, ensure_qemu};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// QEMU is killed after this long: a hung guest becomes an error, never a hang.
pub const QEMU_TIME_LIMIT: Duration = Duration::from_secs(600);

/// The kernel command line: the console on the first serial port, and a reboot (which
/// `-no-reboot` turns into QEMU's exit) at once on a panic, such as `/init` exiting.
/// `blkbench.random_reads=N` follows (the kernel ignores dotted options it has no module
/// for; blkbench reads it from `/proc/cmdline`, as Keel reads its own).
const KERNEL_COMMAND_LINE: &str = "console=ttyS0 quiet panic=-1";

/// The QEMU command that boots `guest` with `device_args` appended verbatim, the random
/// workloads doing `random_reads` reads.
pub fn qemu_command(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
    random_reads: u64,
) -> Command {
    // Keel's own QEMU command line (crate::qemu::command), so both guests of the bench
    // get the same machine options by construction.
    let options = crate::qemu::QemuOptions {
        machine: crate::qemu::Machine::Q35,
        smp,
        memory: format!("{memory_mib}M"),
        append: vec![format!(
            "{KERNEL_COMMAND_LINE} blkbench.random_reads={random_reads}"
        )],
        initrd: Some(guest.initramfs.clone()),
        ..crate::qemu::QemuOptions::default()
    };
    let mut command = crate::qemu::command(&guest.kernel, &options);
    command.args(device_args);
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
    pub(super) fn context(&self) -> String {
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

/// Boots `guest` as [`super::run_blk_bench`] does and returns its console once it has ended
/// through isa-debug-exit with the success code; any other end is an error.
pub fn boot(
    guest: &LinuxGuest,
    smp: u32,
    memory_mib: u64,
    device_args: &[String],
    random_reads: u64,
) -> Result<GuestRun, String> {
    ensure_qemu()?;
    let mut command = qemu_command(guest, smp, memory_mib, device_args, random_reads);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
