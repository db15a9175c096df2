//! loom models of Keel's concurrency primitives. The models are integration tests
//! (`tests/*.rs`), compiled only under `--cfg loom`; without it this crate builds to
//! nothing and `cargo test` trivially passes. See `README.md` for the four commands
//! (all run by `cargo xtask test`).
//!
//! The models exercise the real crates unchanged: `keel-sync`'s [shim] switches its
//! atomics and cells to loom's under `--cfg loom`, so what loom explores is the code
//! the kernel runs. The features `broken-spinlock`, `broken-lfmutex`,
//! `broken-lfmutex-offer` and `broken-wakeup` swap in a deliberately broken
//! `SpinLock`, lock-free mutex or wake-up queue and flip the models aimed at it into
//! `should_panic` tests that pass only if loom reports the bug.
//!
//! [shim]: keel_sync::shim
#![no_std]
