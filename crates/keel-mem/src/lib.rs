//! Keel's memory functions: the bodies of C's `memcpy`, `memmove`, `memset`, `memcmp`
//! and `bcmp`, as ordinary Rust functions for the kernel (whose prebuilt `core` calls
//! those symbols) and, later, for `keel-libc`.
//!
//! The raw-pointer functions ([`copy_nonoverlapping`], [`copy`], [`fill`],
//! [`compare`], [`differ`]) are `unsafe fn`s with C's contracts; the slice functions
//! ([`copy_slice`], [`fill_slice`], [`compare_slices`]) are their safe faces. This
//! crate exports **no** `#[no_mangle]` symbol: `kernel-bin` defines the C symbols as
//! thin wrappers. (A `memcpy` exported from here would replace glibc's in every host
//! test and bench of the workspace that links this crate.)
//!
//! # How they stay fast and never call themselves
//! The compiler turns copy and fill loops into calls to `memcpy`/`memset`; inside
//! `memcpy` that is infinite recursion. So these functions contain no copy or fill
//! loop in Rust:
//! - up to 64 bytes (32 for a fill), straight-line code: two possibly overlapping
//!   loads (or pairs of loads) of the head and the tail, then the stores. Every load
//!   happens before any store, so the small path is also a correct `memmove`.
//! - up to [`MEDIUM_MAX`] (2 KiB), a loop in assembly of 16-byte SSE moves (64 bytes
//!   a step for copies, 32 for fills) whose last step overlaps the end, so there is no
//!   remainder loop. (`rep movsb` starts up too slowly for these sizes.)
//! - above that, `rep movsb` / `rep stosb`, which CPUs with ERMSB/FSRM (Intel since
//!   Ivy Bridge, AMD since Zen 3) run at full cache bandwidth.
//! - an overlapping `memmove` with the destination above the source copies backwards:
//!   in chunks of the distance between the two (each chunk is a forward `rep movsb`
//!   whose source the chunk does not overwrite) when that distance is at least 64
//!   bytes; else with `std; rep movsb; cld`, which is slow but rare.
//! - comparisons read 8 bytes at a time and only load, which the compiler does not
//!   turn into calls.
//!
//! The small paths use `read_unaligned`/`write_unaligned` of fixed-size integers, which
//! compile to single moves at any optimisation level above 0 (the workspace's dev
//! profile uses opt-level 1). The crate is x86-64 only (`rep movsb` is inline assembly).
//!
//! `benches/benches/mem.rs` measures copy and fill against glibc's in the same run.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

// The tests call the raw-pointer functions directly, against naive byte loops.
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;

// Every function here works on raw pointers (or wraps one that does), so the whole
// implementation is the crate's one unsafe module.
#[allow(unsafe_code)]
mod raw;

pub use raw::*;
