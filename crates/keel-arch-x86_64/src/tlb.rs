//! TLB shootdown: flushing a changed translation on every CPU, not just the one that
//! changed the page tables.
//!
//! All CPUs share one set of page tables, but each caches translations in its own TLB.
//! After a change that takes something away (see [`crate::paging`] for when that is),
//! [`shootdown`] flushes the range on the calling CPU, then sends
//! [`apic::SHOOTDOWN_VECTOR`] to every other online CPU and spins until each has
//! flushed the same range and acknowledged it. One round carries one [`Flush`]: a run
//! of 4 KiB pages (one `invlpg` each, up to [`MAX_INVLPG_PAGES`]) or everything (a CR3
//! reload), so a change of several pages costs one IPI round.
//!
//! Deadlock freedom:
//! - Initiators are serialised by one flag (`INITIATOR`), so there is only ever one
//!   request in flight, described by statics that stay unchanged until every target has
//!   acknowledged it.
//! - The initiator may have interrupts masked (page-table changes happen with them
//!   masked), and so may a second CPU that wants to initiate at the same moment. The
//!   second one spins for the flag while calling [`service_pending`], so it
//!   acknowledges the first one's request without taking the IPI; the first one holds
//!   nothing else while it waits. A caller of [`shootdown`] must therefore not hold a
//!   lock that another CPU may spin on with interrupts masked without servicing
//!   requests ([`crate::paging`] drops its page-table lock before it shoots down).
//! - A CPU that spins with interrupts masked for long (an AP waiting for the scheduler
//!   to exist) calls [`service_pending`] in its loop.
//! - Handling a request is idempotent: a target's flag is set only by the one
//!   initiator in flight, and an IPI that finds it clear does nothing (the CPU already
//!   serviced the request by polling).
//!
//! With no other CPU online (early boot, `-smp 1`) a shootdown is the local flush and
//! one atomic load: no IPI, no lock.

use crate::interrupts::{self, TrapFrame};
use crate::{apic, percpu};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use x86_64::VirtAddr;

/// What one shootdown round flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// `count` 4 KiB pages from the page containing `start`.
    Pages {
        /// An address in the first page.
        start: keel_types::VirtAddr,
        /// Number of pages.
        count: u64,
    },
    /// The whole TLB (non-global entries; Keel sets no global pages) and the
    /// paging-structure caches: after a huge page was split, or for long ranges.
    All,
}

/// Above this many pages a flush reloads CR3 instead of issuing one `invlpg` per page.
pub const MAX_INVLPG_PAGES: u64 = 32;

const PAGE: u64 = 4096;
/// `REQUEST_COUNT` value meaning [`Flush::All`].
const COUNT_ALL: u64 = u64::MAX;

/// Held by the one CPU whose request is in flight.
static INITIATOR: AtomicBool = AtomicBool::new(false);
/// The request in flight: first page and page count ([`COUNT_ALL`] for everything).
static REQUEST_START: AtomicU64 = AtomicU64::new(0);
static REQUEST_COUNT: AtomicU64 = AtomicU64::new(0);
/// Per CPU: the request in flight is addressed to this CPU and not yet handled.
static PENDING: [AtomicBool; percpu::MAX_CPUS] =
    [const { AtomicBool::new(false) }; percpu::MAX_CPUS];
/// Targets of the request in flight that have not acknowledged it yet.
static REMAINING: AtomicUsize = AtomicUsize::new(0);
/// Rounds that sent IPIs, and requests handled on targets (statistics, for tests).
static ROUNDS: AtomicU64 = AtomicU64::new(0);
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// Installs the shootdown IPI's handler. Call once, on the boot CPU, after
/// [`interrupts::init`].
pub fn init() {
    interrupts::set_interrupt_handler(apic::SHOOTDOWN_VECTOR, on_shootdown_ipi);
}

fn on_shootdown_ipi(_: &mut TrapFrame) {
    service_pending();
}

/// Flushes `flush` on this CPU only.
pub fn flush_local(flush: Flush) {
    match flush {
        Flush::Pages { start, count } if count <= MAX_INVLPG_PAGES => {
            let first = start.align_down_to_page().as_u64();
            for page in 0..count {
                x86_64::instructions::tlb::flush(VirtAddr::new_truncate(first + page * PAGE));
            }
        }
        _ => x86_64::instructions::tlb::flush_all(),
    }
}

/// Handles the request in flight if it is addressed to this CPU and not handled yet:
/// flushes its range here and acknowledges it. One atomic load when nothing is
/// pending. Call it from any loop that spins with interrupts masked for longer than a
/// moment.
pub fn service_pending() {
    let pending = &PENDING[percpu::current_index()];
    if !pending.load(Ordering::Acquire) || !pending.swap(false, Ordering::AcqRel) {
        return;
    }
    // The initiator wrote the request before setting our flag (release) and keeps it
    // unchanged until REMAINING reaches zero, which needs our acknowledgement below.
    let start = REQUEST_START.load(Ordering::Relaxed);
    let count = REQUEST_COUNT.load(Ordering::Relaxed);
    flush_local(if count == COUNT_ALL {
        Flush::All
    } else {
        Flush::Pages {
            start: keel_types::VirtAddr::new(start),
            count,
        }
    });
    HANDLED.fetch_add(1, Ordering::Relaxed);
    REMAINING.fetch_sub(1, Ordering::AcqRel);
}

/// Flushes `flush` on every online CPU: here first, then on the others through the
/// shootdown IPI, returning once all of them have flushed. Call after the page-table
/// change has been written. May be called with interrupts enabled or masked, but not
/// while holding a lock that another CPU may spin on with interrupts masked (see the
/// module doc).
pub fn shootdown(flush: Flush) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        flush_local(flush);
        if percpu::online_count() <= 1 {
            return;
        }
        while INITIATOR
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Another CPU's request may be waiting for us.
            service_pending();
            core::hint::spin_loop();
        }
        let me = percpu::current_index();
        let (start, count) = match flush {
            Flush::Pages { start, count } => (start.as_u64(), count),
            Flush::All => (0, COUNT_ALL),
        };
        REQUEST_START.store(start, Ordering::Relaxed);
        REQUEST_COUNT.store(count, Ordering::Relaxed);
        let mut targets = [false; percpu::MAX_CPUS];
        let mut target_count = 0;
        for (index, target) in targets.iter_mut().enumerate() {
            if index != me
                && percpu::get(index).is_some_and(|cpu| cpu.online.load(Ordering::Acquire))
            {
                *target = true;
                target_count += 1;
            }
        }
        if target_count == 0 {
            INITIATOR.store(false, Ordering::Release);
            return;
        }
        REMAINING.store(target_count, Ordering::Relaxed);
        // Release: a target that sees its flag also sees the request, REMAINING, and
        // the page-table change written before this call.
        for (index, _) in targets.iter().enumerate().filter(|(_, target)| **target) {
            PENDING[index].store(true, Ordering::Release);
        }
        for (index, _) in targets.iter().enumerate().filter(|(_, target)| **target) {
            if let Some(cpu) = percpu::get(index) {
                apic::send_ipi(
                    cpu.apic_id.load(Ordering::Relaxed),
                    apic::IpiKind::Fixed(apic::SHOOTDOWN_VECTOR),
                );
            }
        }
        ROUNDS.fetch_add(1, Ordering::Relaxed);
        while REMAINING.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
        INITIATOR.store(false, Ordering::Release);
    });
}

/// Shootdown rounds that sent IPIs so far.
pub fn rounds() -> u64 {
    ROUNDS.load(Ordering::Relaxed)
}

/// Requests handled on target CPUs so far.
pub fn requests_handled() -> u64 {
    HANDLED.load(Ordering::Relaxed)
}
