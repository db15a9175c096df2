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
#[cfg(feature = "ktest")]
mod ktest;
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

/// The kernel's main function, called by the architecture crate once the CPU, the page
/// tables, the clock and the APIC are up.
#[unsafe(no_mangle)]
pub fn keel_kernel_main(info: &'static ArchInfo) -> ! {
    let memory_start = time::read_tsc();
    let memory = match memory::init(info) {
        Ok(report) => report,
        Err(error) => {
            kprintln!("KEEL FATAL: cannot set up memory: {error}");
            cpu::exit(ExitCode::Failure)
        }
    };
    let cpus_online = smp::start_application_processors(info);
    let main_tsc = time::read_tsc();
    print_banner(info, &memory, cpus_online, memory_start, main_tsc);
    #[cfg(feature = "ktest")]
    ktest::run_early_crash(info);
    // The application (or the test suite) runs as the first Keel thread; this context
    // becomes CPU 0's idle loop.
    threads::start(cpus_online, move || {
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
            let code = match info.boot.command_line_value("app") {
                Some("lockbench") => passed(lockbench::run(info)),
                Some("trapbench") => passed(trapbench::run(info)),
                _ => app::main(info),
            };
            cpu::exit(code)
        }
    })
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
    let boot_micros = time::nanos_since_entry(main_tsc) / 1_000;
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
    let phase = |from: u64, to: u64| time::ticks_to_nanos(to.saturating_sub(from)) / 1000;
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
