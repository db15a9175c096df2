//! Keel's synchronisation base: a *sync shim* and the kernel's FIFO ticket spinlock.
//!
//! - [`shim`] re-exports the atomics (`AtomicBool`, `AtomicU32`, `AtomicUsize`,
//!   `AtomicU64`, `Ordering`), the `spin_loop` hint and an `UnsafeCell` either from
//!   `core` or, under `--cfg loom`, from [loom](https://docs.rs/loom). Every lock-free
//!   crate of Keel imports its primitives from here (never from `core` directly), so
//!   that its code can be model-checked by `loom-tests/` unchanged. This follows
//!   crossbeam-epoch's private `mod primitive` and tokio's `loom` module.
//! - [`SpinLock`] (with its RAII [`SpinLockGuard`]) is a FIFO ticket spinlock for
//!   short critical sections that never block: the global page allocator, the kernel
//!   heap (`keel-heap`), the serial port. Waiters spin, so it must not be held across
//!   anything that can sleep; blocking locks live in the lock-free mutex crate.
//! - [`IrqSpinLock`] (guard [`IrqSpinLockGuard`]) is that spinlock with its
//!   interrupt policy as a type parameter ([`InterruptMask`], after Asterinas's
//!   `SpinLock<T, G>`): the guard masks interrupts on this CPU for its whole life, so a
//!   lock that an interrupt or the switch path can take (page allocator, page caches,
//!   heap) can never be held with interrupts on. The kernel supplies the mask; hosted
//!   code uses [`NoInterruptMask`]. Safe code: it only composes the spinlock.
//!
//! Why hand-written rather than `spin::Mutex`: the lock must be built on the shim so
//! that loom can check it (and everything built on it), it must be FIFO (a ticket lock
//! bounds waiting under contention from many vCPUs, where `spin`'s test-and-set lock
//! can starve one), and it is small enough to audit line by line. The crate is
//! `no_std`; its only `unsafe` is the access to the protected data through the cell.
#![no_std]
// Unsafe code only in the modules marked `allow(unsafe_code)` below, each block with
// its `SAFETY:` argument.
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

mod irq;
#[allow(unsafe_code)]
pub mod shim;
#[allow(unsafe_code)]
mod spinlock;

pub use irq::{InterruptMask, IrqSpinLock, IrqSpinLockGuard, NoInterruptMask};
pub use spinlock::{SpinLock, SpinLockGuard};
