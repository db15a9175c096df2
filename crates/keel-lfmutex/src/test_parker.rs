//! The unit tests' parker: host threads blocked with `std::thread::park`.
//!
//! The crate's own unit tests cannot use `keel_hosted::StdParker`: `keel-hosted`
//! depends on this crate, so inside the unit-test build its `Parker` would be another
//! copy of the trait. This one is the same protocol, kept minimal; the integration
//! tests under `tests/` and the benches use `keel_hosted::StdParker`.

use crate::{Parker, RunningTable, ThreadId};
use core::cell::Cell;
use core::num::NonZeroU64;
use core::sync::atomic::{AtomicU64, Ordering};

/// Blocks the unit tests' host threads; owner-aware spinning through a
/// [`RunningTable`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TestParker;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static RUNNING: RunningTable = RunningTable::new();

std::thread_local! {
    static CURRENT_ID: Cell<u64> = const { Cell::new(0) };
    /// Run by this thread's next `owner_is_running` calls (one per spin look) while
    /// set: lets a test act at an exact point of a spin.
    static LOOK_HOOK: core::cell::RefCell<Option<std::boxed::Box<dyn FnMut()>>> =
        const { core::cell::RefCell::new(None) };
}

impl TestParker {
    /// Makes `hook` run at each of this thread's spin looks until it is cleared with
    /// `None`.
    pub(crate) fn set_look_hook(hook: Option<std::boxed::Box<dyn FnMut()>>) {
        LOOK_HOOK.with(|slot| *slot.borrow_mut() = hook);
    }
}

// SAFETY: `std::thread::park`/`unpark` have token semantics and may return
// spuriously; ids come from one counter (distinct, non-zero), cached per thread.
unsafe impl Parker for TestParker {
    type Handle = std::thread::Thread;

    fn current() -> Self::Handle {
        std::thread::current()
    }

    fn current_id() -> ThreadId {
        CURRENT_ID.with(|cached| {
            if cached.get() == 0 {
                cached.set(NEXT_ID.fetch_add(1, Ordering::Relaxed));
                RUNNING.mark_running(id_of(cached.get()));
            }
            id_of(cached.get())
        })
    }

    fn park() {
        let id = Self::current_id();
        RUNNING.mark_parked(id);
        std::thread::park();
        RUNNING.mark_running(id);
    }

    fn unpark(handle: &Self::Handle) {
        handle.unpark();
    }

    fn owner_is_running(owner: ThreadId, _cpu_hint: u32) -> bool {
        LOOK_HOOK.with(|slot| {
            if let Some(hook) = slot.borrow_mut().as_mut() {
                hook();
            }
        });
        RUNNING.is_running(owner)
    }
}

fn id_of(raw: u64) -> ThreadId {
    ThreadId::new(NonZeroU64::new(raw).expect("ids start at 1"))
}
