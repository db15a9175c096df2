//! `keel-types`: the vocabulary types that Keel's subsystem crates pass to each other,
//! so that no crate boundary trades a raw `u64` whose meaning only a comment gives.
//!
//! - [`ThreadId`]: a thread's identity, non-zero (so `Option<ThreadId>` is one word
//!   and 0 can encode "no thread" in an atomic owner word). The scheduler
//!   (`keel-sched`) numbers its threads with it, and the lock-free mutex
//!   (`keel-lfmutex`) records its owner with it: one type, so a parker passes the
//!   scheduler's id to the mutex as it is.
//! - [`CpuId`]: a CPU index, `0..cpu_count`, behind [`CpuId::new`] and
//!   [`CpuId::index`].
//! - [`PhysAddr`], [`VirtAddr`], [`PageFrameNumber`] and the page size
//!   ([`PAGE_SIZE`], [`PAGE_SHIFT`]): byte addresses in the two address spaces and
//!   4 KiB frame numbers, with checked arithmetic (`checked_add`, `checked_sub`, and
//!   `+`/`-` of a byte count that panic on overflow in every build) and alignment
//!   helpers; `Debug` prints them in hex. Neither address type is dereferenceable by
//!   itself, and neither converts into the other: turning one into a pointer, or a
//!   virtual address into a physical one, is the business of the crate that owns the
//!   mapping (Keel's kernel identity-maps RAM, and says so where it relies on it).
//! - [`Instant`]: a point on the kernel's monotonic clock in nanoseconds since an
//!   arbitrary origin (the arch clock's), with [`core::time::Duration`] for spans:
//!   `Instant + Duration` (panics past [`Instant::MAX`]; `checked_add` and
//!   `saturating_add` do not), `Instant - Instant -> Duration` (saturating at zero, as
//!   `std`'s).
//!
//! The crate is a leaf: no dependencies, no `unsafe`, no global state, nothing that
//! touches hardware. Every future subsystem crate (virtio, VFS, ELF, libc) is meant to
//! speak these types at its boundaries; a crate's internal arithmetic may still work
//! on the raw integers ([`PhysAddr::as_u64`], [`Instant::as_nanos`]) where that keeps
//! a hot path plain.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

mod address;
mod id;
mod time;

pub use address::{PAGE_SHIFT, PAGE_SIZE, PageFrameNumber, PhysAddr, VirtAddr};
pub use id::{CpuId, ThreadId};
pub use time::Instant;
