//! loom models of Keel's concurrency primitives. The models are integration tests
//! (`tests/*.rs`), compiled only under `--cfg loom`; without it this crate builds to
//! nothing and `cargo test` trivially passes. See `README.md` for the two commands.
//!
//! The models exercise the real crates unchanged: `keel-sync`'s [shim] switches its
//! atomics and cells to loom's under `--cfg loom`, so what loom explores is the code
//! the kernel runs. The feature `broken-spinlock` swaps in a deliberately broken
//! `SpinLock` and flips every spinlock model into a `should_panic` test that passes
//! only if loom reports the bug.
//!
//! [shim]: keel_sync::shim
#![no_std]
