//! The in-guest test suite (`--features ktest`), run by `cargo xtask test`, on the
//! harness of `keel-ktest`.
//!
//! Each case is a function `fn(&ArchInfo) -> TestResult` in the file of the subsystem it
//! tests (`ktest/paging.rs`, `ktest/threads.rs`, ...), registered by `ktest!(name);`
//! right after it: no central list. The registration lands in the linker section
//! `.ktest_cases` ([`registry`]); the runner sorts the cases by file and line, prints
//! one line per case and closes with `N passed, N failed`, then leaves QEMU through
//! `isa-debug-exit` with success only when nothing failed.
//!
//! Command-line arguments:
//! - `ktest.filter=TEXT` runs only the cases whose names contain TEXT (for iterating by
//!   hand; `cargo xtask test` never passes it); `ktest.only=TEXT` is an alias. A filter
//!   that selects nothing fails.
//! - `ktest.crash=NAME` runs one deliberate crash instead ([`crash`], registered by
//!   `crash!`); the host checks that it is reported with symbols and a failure status.
//!   An unknown NAME lists the valid ones.

use core::fmt;
use keel_arch_x86_64::cpu::ExitCode;
use keel_arch_x86_64::{ArchInfo, kprint, kprintln, percpu};
use keel_sched::{CpuId, SpawnOptions};

pub use keel_ktest::{Failure, TestResult};

/// Fails the current case with `message` unless `condition` holds; prints the values.
macro_rules! check {
    ($condition:expr, $message:literal $(, $value:expr)* $(,)?) => {
        let holds: bool = $condition;
        if !holds {
            keel_arch_x86_64::kprintln!(concat!("    check failed: ", stringify!($condition)));
            $( keel_arch_x86_64::kprintln!("      {} = {:?}", stringify!($value), $value); )*
            return Err(::keel_ktest::Failure {
                message: $message,
                file: file!(),
                line: line!(),
            });
        }
    };
}

/// Registers the case functions named (each `fn(&ArchInfo) -> TestResult`) under their
/// own names, in the linker section `.ktest_cases` that [`registry::cases`] reads.
macro_rules! ktest {
    ($($case:ident),+ $(,)?) => {
        $(
            const _: () = {
                // SAFETY: `.ktest_cases` holds nothing but `&'static Case<ArchInfo>`
                // entries, all from this macro; the linker script keeps the section
                // whole between `__ktest_cases_start` and `__ktest_cases_end`, which is
                // how `registry::cases` reads it.
                #[unsafe(link_section = ".ktest_cases")]
                #[used]
                static CASE: &::keel_ktest::Case<::keel_arch_x86_64::ArchInfo> =
                    &::keel_ktest::Case {
                        name: stringify!($case),
                        file: file!(),
                        line: line!(),
                        run: $case,
                    };
            };
        )+
    };
}

/// Registers the crash function named (`fn()`, which must not return) as
/// `ktest.crash=NAME` with `-` for `_`, to run at the stage given (`Boot` or
/// `Threads`, [`keel_ktest::CrashStage`]), in the linker section `.ktest_crashes`.
macro_rules! crash {
    ($stage:ident, $function:ident) => {
        const _: () = {
            // SAFETY: as in `ktest!`, for `.ktest_crashes` and `&'static Crash`.
            #[unsafe(link_section = ".ktest_crashes")]
            #[used]
            static CRASH: &::keel_ktest::Crash = &::keel_ktest::Crash {
                function: stringify!($function),
                stage: ::keel_ktest::CrashStage::$stage,
                run: $function,
            };
        };
    };
}

mod registry;

mod apic;
mod backtrace;
mod boot;
mod cpu;
pub mod crash;
mod elf;
mod files;
mod heap;
mod interrupts;
mod libc;
mod liveness;
mod memory;
mod mutex;
mod paging;
mod shootdown;
mod threads;
mod time;
mod virtio;

/// The console as a `fmt::Write`; each `write_str` is one locked serial write, and the
/// harness writes whole lines.
struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        kprint!("{text}");
        Ok(())
    }
}

/// Runs a crash named on the command line that needs no scheduler, on the boot stack
/// (an unknown name too: it fails at once, listing the valid names).
pub fn run_early_crash(info: &ArchInfo) {
    if let Some(name) = info.boot.command_line_value("ktest.crash") {
        let stage = keel_ktest::find_crash(registry::crashes(), name).map(|crash| crash.stage);
        if !matches!(stage, Ok(keel_ktest::CrashStage::Threads)) {
            crash::run(name);
        }
    }
}

/// Runs the suite (or the crash named on the command line) and exits the VM.
pub fn run(info: &'static ArchInfo) -> ! {
    if let Some(name) = info.boot.command_line_value("ktest.crash") {
        crash::run(name);
    }
    let filter = keel_ktest::Filter::new(
        info.boot.command_line_value("ktest.filter"),
        info.boot.command_line_value("ktest.only"),
    );
    let summary = keel_ktest::run(
        registry::cases(),
        info,
        &filter,
        keel_arch_x86_64::time::now,
        &mut Console,
    );
    keel_arch_x86_64::cpu::exit(if summary.succeeded() {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Whether a cross-CPU case can run on this boot; prints why not otherwise (the case
/// then passes with nothing to check).
fn has_two_cpus() -> bool {
    let cpus = crate::threads::scheduler().cpu_count();
    if cpus < 2 {
        kprintln!("    not run: needs a second CPU (this boot has {cpus})");
    }
    cpus >= 2
}

/// Runs `body` on a thread pinned to each CPU in turn; returns each CPU's result.
fn on_every_cpu<T: Send + 'static>(
    body: fn() -> T,
) -> Result<alloc::vec::Vec<(usize, T)>, Failure> {
    let scheduler = crate::threads::scheduler();
    let mut results = alloc::vec::Vec::new();
    for cpu in 0..scheduler.cpu_count() {
        let spawned = scheduler.spawn(SpawnOptions::new().pin(CpuId::new(cpu)), move || {
            (percpu::current_index(), body())
        });
        check!(spawned.is_ok(), "spawn failed", cpu);
        let Ok(handle) = spawned else {
            return Ok(results);
        };
        let result = scheduler.join(handle);
        check!(
            matches!(result, Some((ran_on, _)) if ran_on == cpu),
            "a pinned thread did not run on its CPU",
            cpu
        );
        if let Some(result) = result {
            results.push(result);
        }
    }
    Ok(results)
}
