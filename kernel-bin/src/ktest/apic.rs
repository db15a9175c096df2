//! In-guest cases of the local APIC timer (`keel_arch_x86_64::apic`): a one-shot
//! timer fires no earlier than its deadline, and a cancelled one never fires. Both
//! borrow the timer vector from the scheduler and give it back.

use super::TestResult;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use keel_arch_x86_64::interrupts::{self, TrapFrame};
use keel_arch_x86_64::{ArchInfo, apic, kprintln, time};

static TIMER_FIRED: AtomicBool = AtomicBool::new(false);

static TIMER_FIRED_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn on_timer(_: &mut TrapFrame) {
    TIMER_FIRED_TSC.store(time::read_tsc(), Ordering::Relaxed);
    TIMER_FIRED.store(true, Ordering::Release);
}

/// Waits with interrupts enabled until the timer fired or `limit` passed.
fn wait_for_timer(limit: Duration) -> bool {
    let end = time::read_tsc() + time::duration_to_ticks(limit);
    while time::read_tsc() < end {
        if TIMER_FIRED.load(Ordering::Acquire) {
            return true;
        }
        // sti; hlt would sleep until the interrupt; enable_and_hlt does it atomically.
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
    TIMER_FIRED.load(Ordering::Acquire)
}

/// Runs `body` with the test's own timer handler, interrupts masked outside the waits,
/// then gives the timer back to the scheduler.
fn with_test_timer(body: impl FnOnce() -> TestResult) -> TestResult {
    let scheduler_handler = interrupts::interrupt_handler(apic::TIMER_VECTOR);
    let were_enabled = x86_64::instructions::interrupts::are_enabled();
    x86_64::instructions::interrupts::disable();
    interrupts::set_interrupt_handler(apic::TIMER_VECTOR, on_timer);
    let result = body();
    if let Some(handler) = scheduler_handler {
        interrupts::set_interrupt_handler(apic::TIMER_VECTOR, handler);
    }
    if were_enabled {
        x86_64::instructions::interrupts::enable();
    }
    result
}

fn apic_oneshot_timer_fires_after_deadline(info: &ArchInfo) -> TestResult {
    check!(info.apic.timer_hertz > 0, "APIC timer not calibrated");
    with_test_timer(oneshot_deadlines)
}
ktest!(apic_oneshot_timer_fires_after_deadline);

fn oneshot_deadlines() -> TestResult {
    for deadline_micros in [2_000u64, 5_000, 20_000] {
        TIMER_FIRED.store(false, Ordering::Relaxed);
        let start = time::read_tsc();
        apic::arm_oneshot(Duration::from_micros(deadline_micros));
        let fired = wait_for_timer(Duration::from_secs(2));
        check!(fired, "one-shot timer never fired", deadline_micros);
        let elapsed_micros =
            time::ticks_to_duration(TIMER_FIRED_TSC.load(Ordering::Relaxed) - start).as_micros()
                as u64;
        // The APIC and TSC are calibrated against each other; allow 5% calibration error.
        check!(
            elapsed_micros * 100 >= deadline_micros * 95,
            "timer fired before its deadline",
            deadline_micros,
            elapsed_micros
        );
        kprintln!("    one-shot {deadline_micros} us fired after {elapsed_micros} us");
    }
    Ok(())
}

fn apic_timer_cancel_prevents_interrupt(_: &ArchInfo) -> TestResult {
    with_test_timer(cancelled_timer_stays_quiet)
}
ktest!(apic_timer_cancel_prevents_interrupt);

fn cancelled_timer_stays_quiet() -> TestResult {
    TIMER_FIRED.store(false, Ordering::Relaxed);
    apic::arm_oneshot(Duration::from_millis(3));
    apic::cancel_timer();
    x86_64::instructions::interrupts::enable();
    time::busy_wait(Duration::from_millis(10));
    x86_64::instructions::interrupts::disable();
    check!(
        !TIMER_FIRED.load(Ordering::Acquire),
        "cancelled timer fired"
    );
    Ok(())
}
