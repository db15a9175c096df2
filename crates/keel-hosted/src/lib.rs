//! Keel's hardware traits implemented on the host, so the same scheduler and locks that
//! run in the kernel run inside an ordinary Linux process for tests and benches.
//!
//! - [`HostedArch`] / [`Machine`]: `keel-sched`'s `Arch` with Linux threads as CPUs and
//!   user-space context switches (see [`sched`]).
//! - [`StdParker`]: `keel-lfmutex`'s `Parker` on `std::thread::park` / `unpark`.
//! - [`elf`]: `keel-elf`'s memory, symbol, library and TLS traits over `mmap`, the
//!   host's glibc and `std::fs`, so real Debian libraries load in a test process.
//! - [`FileBlockDevice`]: `keel-virtio`'s `BlockDevice` over a host file, for the tests
//!   of the virtio driver and, later, of the filesystems (see [`block_file`]).
//!
//! This is a crate of its own, with `std`, rather than a `std`/`hosted` feature of
//! `keel-sched` and `keel-lfmutex`: Cargo unifies features across the workspace, so such
//! a feature, switched on by a bench or test, would also link `std` into the kernel
//! binary (which depends on both crates) and break it with a duplicate `panic_impl`.

// Unsafe code only in the modules marked `allow(unsafe_code)` below, each block with
// its `SAFETY:` argument.
#![deny(unsafe_code)]

extern crate alloc;

pub mod block_file;
#[allow(unsafe_code)]
pub mod elf;
#[allow(unsafe_code)]
mod parker;
#[allow(unsafe_code)]
pub mod sched;

pub use block_file::FileBlockDevice;
pub use parker::StdParker;
pub use sched::{HostedArch, Machine, interrupt_point};
