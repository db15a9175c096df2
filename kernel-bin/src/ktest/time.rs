//! In-guest case of the clock (`keel_arch_x86_64::time`): the TSC is calibrated from
//! a real source, plausible, and monotonic, and busy waits last long enough.

use super::TestResult;
use core::time::Duration;
use keel_arch_x86_64::{ArchInfo, time};

fn tsc_calibrated_and_monotonic(info: &ArchInfo) -> TestResult {
    let hertz = time::tsc_hertz();
    check!(
        (100_000_000..=20_000_000_000).contains(&hertz),
        "TSC frequency implausible",
        hertz
    );
    check!(hertz == info.tsc.hertz, "frequency changed");
    check!(
        info.tsc.source != time::TscSource::Guess,
        "TSC frequency guessed: no PIT or CPUID source worked",
        info.tsc.pit_samples
    );
    let mut previous = time::now();
    for _ in 0..10_000 {
        let now = time::now();
        check!(now >= previous, "clock went backwards", previous, now);
        previous = now;
    }
    let start = time::now();
    time::busy_wait(Duration::from_millis(1));
    let waited = time::now() - start;
    check!(
        waited >= Duration::from_millis(1),
        "busy wait returned early",
        waited
    );
    Ok(())
}
ktest!(tsc_calibrated_and_monotonic);
