//! Keel's benches: criterion benchmarks of each primitive beside its best peer crate,
//! measured in the same run. The benches live in `benches/benches/*.rs`; run one group
//! with `cargo xtask bench NAME`, which prints ours beside the peers with medians and
//! ratios.
//!
//! Naming convention, relied on by `cargo xtask bench`: each criterion group is named
//! `NAME/case` (for example `pagealloc/single-page`), and each function inside it is
//! named after the implementation: `keel` for ours, the peer crate's name for a peer.
#![no_std]
