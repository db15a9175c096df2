//! The Keel kernel binary: thin wiring of the crates into a bootable guest.
//!
//! `keel-arch-x86_64` boots the CPU and calls [`keel_kernel_main`], which prints the
//! banner (CPU, memory, boot time), then runs the default application — or, when built
//! with the `ktest` feature, the in-guest test suite (`cargo xtask test`). The kernel
//! owns the statics (the page allocator, the heap); the crates hold the logic.
#![no_std]
#![no_main]

extern crate alloc;

#[cfg(not(feature = "ktest"))]
mod app;
#[cfg(not(feature = "ktest"))]
mod blkbench;
mod devices;
mod elf;
mod files;
#[cfg(feature = "ktest")]
mod ktest;
mod libc;
#[cfg(not(feature = "ktest"))]
mod lockbench;
mod mem;
mod memory;
mod smp;
mod threads;
#[cfg(not(feature = "ktest"))]
mod trapbench;

use core::fmt::Write;
use keel_arch_x86_64::cpu::{self, ExitCode};
use keel_arch_x86_64::{ArchInfo, backtrace, kprintln, serial, time};

// The ELF entry point (`ENTRY` in linker.ld), for whoever runs the kernel ELF as a Linux
// program (`cargo run --bin keel-kernel`): it writes a hint to stderr and exits with
// status 1, through raw Linux system calls, instead of jumping into 32-bit boot code and
// dying of SIGSEGV. QEMU, Firecracker and Cloud Hypervisor boot through the PVH ELF note
// (`keel_pvh_start32`) and never jump to the ELF entry point.
core::arch::global_asm!(
    ".pushsection .text.keel_linux_stub, \"ax\"",
    ".global keel_linux_stub",
    ".type keel_linux_stub, @function",
    ".code64",
    "keel_linux_stub:",
    "    mov eax, 1", // write(2, message, length)
    "    mov edi, 2",
    "    lea rsi, [rip + {message}]",
    "    mov edx, {length}",
    "    syscall",
    "    mov eax, 231", // exit_group(1)
    "    mov edi, 1",
    "    syscall",
    "    ud2",
    ".size keel_linux_stub, . - keel_linux_stub",
    ".popsection",
    message = sym LINUX_STUB_MESSAGE,
    length = const LINUX_STUB_MESSAGE.len(),
);

/// What the ELF entry point stub writes to stderr.
static LINUX_STUB_MESSAGE: [u8; 77] =
    *b"this is the Keel kernel, not a Linux program: boot it with `cargo xtask run`\n";

/// The kernel's main function, called by the architecture crate once the CPU, the page
/// tables, the clock and the APIC are up.
#[unsafe(no_mangle)]
pub fn keel_kernel_main(info: &'static ArchInfo) -> ! {
    let memory_start = time::read_tsc();
    if !command_line::check(info.boot.command_line()) {
        kprintln!(
            "KEEL FATAL: bad kernel command line {:?}",
            info.boot.command_line()
        );
        cpu::exit(ExitCode::Failure)
    }
    log_boot_details(info);
    let memory = match memory::init(info) {
        Ok(report) => report,
        Err(error) => {
            kprintln!("KEEL FATAL: cannot set up memory: {error}");
            cpu::exit(ExitCode::Failure)
        }
    };
    log::debug!(
        "memory: page allocator ready, {} pages free, {} KiB of page metadata",
        memory.free_pages,
        memory.metadata_bytes / 1024
    );
    log::debug!("smp: starting the application processors");
    let cpus_online = smp::start_application_processors(info);
    log::debug!("smp: {cpus_online} CPU(s) online");
    let main_tsc = time::read_tsc();
    print_banner(info, &memory, cpus_online, memory_start, main_tsc);
    #[cfg(feature = "ktest")]
    ktest::run_early_crash(info);
    devices::init(info);
    // The application (or the test suite) runs as the first Keel thread; this context
    // becomes CPU 0's idle loop.
    threads::start(cpus_online, move || {
        // The VFS's locks need a Keel thread (they record their owner).
        files::init(info);
        libc::init();
        #[cfg(feature = "ktest")]
        ktest::run(info);
        #[cfg(not(feature = "ktest"))]
        {
            let passed = |ok: bool| {
                if ok {
                    ExitCode::Success
                } else {
                    ExitCode::Failure
                }
            };
            // `command_line::check` has rejected every other value already.
            let code = match info.boot.command_line_value("app") {
                Some("lockbench") => passed(lockbench::run(info)),
                Some("trapbench") => passed(trapbench::run(info)),
                Some("blkbench") => passed(blkbench::run(info)),
                Some("run") => passed(elf::run_object(info)),
                _ => app::main(info),
            };
            cpu::exit(code)
        }
    })
}

/// Debug-level details of what the loader and the firmware handed over (`log=debug`).
fn log_boot_details(info: &ArchInfo) {
    let boot = &info.boot;
    log::debug!(
        "boot: PVH start info version {}, {} memory-map entries ({} dropped), {} module(s), \
         RSDP {:#x}",
        boot.version,
        boot.memory_regions().len(),
        boot.regions_dropped,
        boot.modules().len(),
        boot.rsdp
    );
    for region in boot.memory_regions() {
        log::debug!(
            "memory map: {:#012x}..{:#012x} {:>9} KiB {:?}",
            region.start,
            region.end(),
            region.size / 1024,
            region.kind
        );
    }
    for module in boot.modules() {
        log::debug!("boot: module at {:#x}, {} bytes", module.start, module.size);
    }
    let paging = &info.paging;
    log::debug!(
        "paging: table frames at {:#x} ({} used), {} overlapping map entries skipped",
        paging.table_region_start,
        paging.table_frames_used,
        paging.overlaps_skipped
    );
    match &info.platform {
        Ok(platform) => log::debug!(
            "acpi: MADT lists APIC ids {:?} ({} dropped, {} hot-pluggable), I/O APIC at {}",
            platform.apic_ids(),
            platform.cpus_dropped,
            platform.cpus_online_capable,
            OptionalAddress(platform.io_apic)
        ),
        Err(error) => log::debug!("acpi: no platform tables: {error:?}"),
    }
    log::debug!(
        "cpu: boot CPU APIC id {}, extended state {:?} in {} B, TSC {} Hz via {:?}",
        info.apic.id,
        info.extended_state.save,
        info.extended_state.save_area_bytes,
        info.tsc.hertz,
        info.tsc.source
    );
}

/// An address in hex, or `none`; formats without allocating (this runs before the heap
/// exists).
struct OptionalAddress(Option<keel_pagealloc::PhysAddr>);

impl core::fmt::Display for OptionalAddress {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(address) => write!(out, "{address:#x}"),
            None => write!(out, "none"),
        }
    }
}

/// The kernel's own check of its command line: `key=value` words and bare flags.
///
/// A known key with a bad value is an error that lists the valid values (the kernel then
/// exits with the failure status); an unknown key, and a `ktest.*` key in a kernel built
/// without the `ktest` feature, get a warning and are ignored. `cargo xtask run --help`
/// lists the same keys (`tools/xtask/src/kernel_args.rs`); keep the two tables in step.
mod command_line {
    use keel_arch_x86_64::kprintln;

    /// What a key accepts.
    #[derive(Debug, Clone, Copy)]
    enum Values {
        /// One of these words.
        OneOf(&'static [&'static str]),
        /// A decimal number, at least this much.
        NumberAtLeast(u64),
        /// Any non-empty text.
        Text,
        /// A bare word without `=value`.
        Flag,
    }

    /// One known key.
    #[derive(Debug)]
    struct Key {
        name: &'static str,
        values: Values,
        /// Read only by the `ktest` build.
        ktest_only: bool,
    }

    const fn key(name: &'static str, values: Values) -> Key {
        Key {
            name,
            values,
            ktest_only: false,
        }
    }

    const fn ktest_key(name: &'static str, values: Values) -> Key {
        Key {
            name,
            values,
            ktest_only: true,
        }
    }

    /// Every key the kernel reads.
    const KEYS: &[Key] = &[
        key(
            "app",
            Values::OneOf(&["default", "lockbench", "trapbench", "blkbench", "run"]),
        ),
        // `app=run`: the shared object to load from the VFS and the function to call
        // (elf.rs).
        key("run.object", Values::Text),
        key("run.entry", Values::Text),
        key(
            "log",
            Values::OneOf(&["off", "error", "warn", "info", "debug", "trace"]),
        ),
        key("lockbench.threads", Values::NumberAtLeast(1)),
        key("lockbench.acquisitions", Values::NumberAtLeast(1)),
        key("lockbench.work", Values::NumberAtLeast(0)),
        key("trapbench.trips", Values::NumberAtLeast(1)),
        key("trapbench.samples", Values::NumberAtLeast(1)),
        key("blkbench.random_reads", Values::NumberAtLeast(1)),
        // The harness checks the crash and case names itself.
        ktest_key("ktest.crash", Values::Text),
        ktest_key("ktest.filter", Values::Text),
        ktest_key("ktest.only", Values::Text),
        ktest_key("ktest.expect_cpus", Values::NumberAtLeast(1)),
        // QEMU's microvm and Firecracker name their virtio-mmio devices so (devices.rs).
        key("virtio_mmio.device", Values::Text),
        // An ext2 filesystem to mount: `mount=/PATH:DISK` (files.rs).
        key("mount", Values::Text),
        // The disk test's patterns (ktest/virtio.rs).
        ktest_key("ktest.disk_seed", Values::NumberAtLeast(1)),
        ktest_key("ktest.disk_previous_seed", Values::NumberAtLeast(0)),
        ktest_key("ktest.expect_failed_disks", Values::NumberAtLeast(0)),
        // Whether xtask attached a virtio-rng device (ktest/virtio.rs).
        ktest_key("ktest.expect_rng", Values::NumberAtLeast(0)),
        // Read by the SMP start-up in every build (smp.rs).
        key("ktest.ap_stack_above_4g", Values::Flag),
    ];

    /// Checks every word of `command_line`; returns false when one is an error (already
    /// reported on the console).
    pub fn check(command_line: &str) -> bool {
        let mut ok = true;
        for word in command_line.split_ascii_whitespace() {
            let (name, value) = match word.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (word, None),
            };
            log::trace!("command line: {name} = {value:?}");
            let Some(key) = KEYS.iter().find(|key| key.name == name) else {
                if name.starts_with("ktest.") && !cfg!(feature = "ktest") {
                    log::warn!(
                        "kernel argument {word:?} is ignored: ktest.* keys need a kernel \
                         built with the ktest feature (cargo xtask run --ktest)"
                    );
                } else {
                    log::warn!(
                        "unknown kernel argument {word:?} is ignored (known keys: {})",
                        KnownKeys
                    );
                }
                continue;
            };
            if key.ktest_only && !cfg!(feature = "ktest") {
                log::warn!(
                    "kernel argument {word:?} is ignored: ktest.* keys need a kernel built \
                     with the ktest feature (cargo xtask run --ktest)"
                );
                continue;
            }
            if key.name == "app" && cfg!(feature = "ktest") {
                log::warn!("kernel argument {word:?} is ignored: this kernel runs the ktest suite");
            }
            if let Err(expected) = check_value(key.values, value) {
                kprintln!("KEEL FATAL: kernel argument {word:?}: {expected}");
                ok = false;
            }
        }
        ok
    }

    /// Why `value` does not fit `values`, as "expected ..." text.
    fn check_value(values: Values, value: Option<&str>) -> Result<(), Expected> {
        match (values, value) {
            (Values::Flag, None) => Ok(()),
            (Values::Flag, Some(_)) => Err(Expected(values)),
            (_, None) => Err(Expected(values)),
            (Values::OneOf(words), Some(value)) if words.contains(&value) => Ok(()),
            (Values::NumberAtLeast(minimum), Some(value))
                if value.parse::<u64>().is_ok_and(|number| number >= minimum) =>
            {
                Ok(())
            }
            (Values::Text, Some(value)) if !value.is_empty() => Ok(()),
            _ => Err(Expected(values)),
        }
    }

    /// The "expected ..." part of an error message.
    struct Expected(Values);

    impl core::fmt::Display for Expected {
        fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self.0 {
                Values::OneOf(words) => {
                    write!(out, "valid values are ")?;
                    for (index, word) in words.iter().enumerate() {
                        let separator = if index == 0 { "" } else { ", " };
                        write!(out, "{separator}{word}")?;
                    }
                    Ok(())
                }
                Values::NumberAtLeast(minimum) => {
                    write!(out, "expected a decimal number, at least {minimum}")
                }
                Values::Text => write!(out, "expected a non-empty value"),
                Values::Flag => write!(out, "this flag takes no value"),
            }
        }
    }

    /// The known keys, comma-separated.
    struct KnownKeys;

    impl core::fmt::Display for KnownKeys {
        fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            for (index, key) in KEYS.iter().enumerate() {
                let separator = if index == 0 { "" } else { ", " };
                write!(out, "{separator}{}", key.name)?;
            }
            Ok(())
        }
    }
}

fn print_banner(
    info: &ArchInfo,
    memory: &memory::MemoryReport,
    cpus_online: usize,
    memory_start: u64,
    main_tsc: u64,
) {
    let mut brand_buffer = [0u8; 48];
    let brand = cpu::brand(&mut brand_buffer);
    let boot_micros = time::instant_at_tsc(main_tsc).as_nanos() / 1_000;
    kprintln!("");
    kprintln!("Keel {} - a research unikernel", env!("CARGO_PKG_VERSION"));
    let cpus = match &info.platform {
        Ok(platform) if platform.cpus_online_capable > 0 => alloc::format!(
            "{cpus_online} of {} online, {} hot-pluggable not started",
            platform.cpu_count(),
            platform.cpus_online_capable
        ),
        Ok(platform) => alloc::format!("{cpus_online} of {} online", platform.cpu_count()),
        Err(error) => alloc::format!("1 online (ACPI MADT unreadable: {error:?})"),
    };
    kprintln!(
        "  cpus:   {cpus} ({brand}, TSC {}.{:03} GHz via {:?}, AVX {}, traps save {:?} in {} B)",
        info.tsc.hertz / 1_000_000_000,
        info.tsc.hertz / 1_000_000 % 1000,
        info.tsc.source,
        if info.extended_state.avx { "on" } else { "off" },
        info.extended_state.save,
        info.extended_state.save_area_bytes
    );
    kprintln!(
        "  memory: {} MiB usable in {} regions; kernel image {:#x}..{:#x}",
        info.boot.usable_memory() / (1024 * 1024),
        info.boot.memory_regions().len(),
        info.layout.start,
        info.layout.end
    );
    kprintln!(
        "  pages:  {} MiB free for allocation ({} KiB of page metadata)",
        memory.free_pages * 4096 / (1024 * 1024),
        memory.metadata_bytes / 1024
    );
    kprintln!(
        "  paging: {} MiB in 2 MiB pages, {} KiB in 4 KiB pages, {} table frames",
        info.paging.huge_bytes / (1024 * 1024),
        info.paging.small_bytes / 1024,
        info.paging.table_frames_used
    );
    kprintln!(
        "  apic:   {} id {}, timer {} kHz",
        if info.apic.x2apic { "x2APIC" } else { "xAPIC" },
        info.apic.id,
        info.apic.timer_hertz / 1000
    );
    kprintln!("  cmdline: {:?}", info.boot.command_line());
    let phase = |from: u64, to: u64| time::ticks_to_duration(to.saturating_sub(from)).as_micros();
    let phases = &info.phases;
    kprintln!(
        "boot: early {} us, TSC calibration {} us, paging {} us, APIC {} us, memory and APs {} us",
        phase(info.tsc_at_entry, phases.early),
        phase(phases.early, phases.tsc_calibrated),
        phase(phases.tsc_calibrated, phases.paging),
        phase(phases.paging, phases.apic),
        phase(memory_start, main_tsc)
    );
    kprintln!("boot: entry to main {boot_micros} us");
}

/// A panic's report. Like a fatal exception's, it first enters the crash
/// (`interrupts::begin_crash`): the first CPU to crash stops the others and prints its
/// whole report; a later crash on another CPU halts silently; a panic inside this CPU's
/// own crash report prints one line and exits.
#[panic_handler]
fn panic(panic: &core::panic::PanicInfo<'_>) -> ! {
    let mut out = serial::emergency_writer();
    if !keel_arch_x86_64::interrupts::begin_crash() {
        let _ = writeln!(
            out,
            "\nKEEL PANIC: nested panic while reporting a crash: {}",
            panic.message()
        );
        cpu::exit(ExitCode::Failure)
    }
    let _ = write!(out, "\nKEEL PANIC: {}", panic.message());
    if let Some(location) = panic.location() {
        let _ = write!(
            out,
            " at {}:{}:{}",
            location.file(),
            location.line(),
            location.column()
        );
    }
    let _ = writeln!(
        out,
        " on CPU {}\nbacktrace:",
        keel_arch_x86_64::percpu::current_index()
    );
    backtrace::write_current_backtrace(&mut out);
    let _ = writeln!(out, "KEEL PANIC: halting with failure status");
    cpu::exit(ExitCode::Failure)
}
