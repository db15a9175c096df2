//! Shared set-up for the integration tests.

#![allow(dead_code)]

use std::sync::Arc;

use keel_hosted::StdParker;
use keel_vfs::{Context, FixedClock, Ramfs, Timespec, Vfs};

/// The context type of the tests.
pub type Ctx = Context<StdParker>;

/// A clock at a fixed time.
pub fn clock() -> Arc<FixedClock> {
    Arc::new(FixedClock(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }))
}

/// A fresh VFS over ramfs and a context in it.
pub fn context() -> Ctx {
    let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock()), clock());
    Context::new(vfs)
}

/// A fresh context with a descriptor limit.
pub fn context_with_limit(limit: usize) -> Ctx {
    let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock()), clock());
    Context::with_fd_limit(vfs, limit)
}
