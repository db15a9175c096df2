//! The default application: what `cargo xtask run` shows after the banner.

use keel_arch_x86_64::cpu::ExitCode;
use keel_arch_x86_64::{ArchInfo, kprintln, time};

/// Runs the application and returns how the VM should exit.
pub fn main(info: &ArchInfo) -> ExitCode {
    let start = time::monotonic_nanos();
    kprintln!("hello from Keel: one application, one address space, no syscalls");
    let mut primes = 0u32;
    for candidate in 2..20_000u32 {
        if (2..candidate)
            .take_while(|d| d * d <= candidate)
            .all(|d| candidate % d != 0)
        {
            primes += 1;
        }
    }
    kprintln!(
        "app: {primes} primes below 20000 in {} us; command line {:?}",
        (time::monotonic_nanos() - start) / 1000,
        info.boot.command_line()
    );
    ExitCode::Success
}
