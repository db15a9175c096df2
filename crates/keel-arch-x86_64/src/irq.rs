//! Device interrupts: a vector per device handler, from the range
//! [`FIRST_DEVICE_VECTOR`]..=[`LAST_DEVICE_VECTOR`].
//!
//! A driver registers a `&'static dyn DeviceInterrupt` and gets a vector, which it
//! programs into the device's MSI-X table or an I/O APIC entry. The handler runs in
//! the interrupt (on its IST stack, interrupts masked, after the local APIC's
//! end-of-interrupt) and must do the minimum: acknowledge the device, note the
//! completion and wake the waiting thread through the scheduler.

use crate::interrupts::{self, TrapFrame};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The first vector handed to devices (below: the APIC timer, wake-up and shootdown
/// vectors at 0x40..0x42).
pub const FIRST_DEVICE_VECTOR: u8 = 0x50;
/// The last one (0x9e and 0x9f belong to the interrupt test and the trap bench).
pub const LAST_DEVICE_VECTOR: u8 = 0x8f;
const DEVICE_VECTORS: usize = (LAST_DEVICE_VECTOR - FIRST_DEVICE_VECTOR) as usize + 1;

/// A device's interrupt handler.
pub trait DeviceInterrupt: Sync {
    /// Runs in the interrupt: never blocks, never waits for a lock a thread may hold.
    fn interrupt(&self);
}

static HANDLERS: [spin::Once<&'static dyn DeviceInterrupt>; DEVICE_VECTORS] =
    [const { spin::Once::new() }; DEVICE_VECTORS];
static COUNTS: [AtomicU64; DEVICE_VECTORS] = [const { AtomicU64::new(0) }; DEVICE_VECTORS];
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn on_device_interrupt(frame: &mut TrapFrame) {
    let Some(index) = (frame.vector as usize).checked_sub(usize::from(FIRST_DEVICE_VECTOR)) else {
        return;
    };
    if let Some(handler) = HANDLERS.get(index).and_then(spin::Once::get) {
        COUNTS[index].fetch_add(1, Ordering::Relaxed);
        handler.interrupt();
    }
}

/// Gives `handler` a vector of its own and installs it; `None` when all are taken.
pub fn register(handler: &'static dyn DeviceInterrupt) -> Option<u8> {
    let index = NEXT.fetch_add(1, Ordering::Relaxed);
    if index >= DEVICE_VECTORS {
        NEXT.store(DEVICE_VECTORS, Ordering::Relaxed);
        return None;
    }
    HANDLERS[index].call_once(|| handler);
    let vector = FIRST_DEVICE_VECTOR + index as u8;
    interrupts::set_interrupt_handler(vector, on_device_interrupt);
    Some(vector)
}

/// How many times the handler on `vector` ran.
pub fn count(vector: u8) -> u64 {
    (vector as usize)
        .checked_sub(usize::from(FIRST_DEVICE_VECTOR))
        .and_then(|index| COUNTS.get(index))
        .map_or(0, |count| count.load(Ordering::Relaxed))
}
