//! The sync shim: atomics, spin hint and `UnsafeCell` from `core`, or from `loom`
//! under `--cfg loom`.
//!
//! Code that is meant to be model-checked imports *only* from this module. The
//! `UnsafeCell` here follows loom's API, not `core`'s: the value is reached through
//! [`UnsafeCell::with`] / [`UnsafeCell::with_mut`] (access for the duration of a
//! closure) or [`UnsafeCell::get`] / [`UnsafeCell::get_mut`] (access for as long as
//! the returned [`ConstPtr`] / [`MutPtr`] lives). Under loom every such access is
//! tracked, and two accesses that are not ordered by happens-before (at least one
//! of them a write) make the model fail; without loom these are zero-cost wrappers
//! around `core::cell::UnsafeCell` and raw pointers.
//!
//! Note that loom's constructors are not `const`; types built on the shim offer a
//! `const fn new` only when `cfg(not(loom))`.

#[cfg(loom)]
pub use loom::{
    cell::{ConstPtr, MutPtr, UnsafeCell},
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
};

#[cfg(not(loom))]
pub use core::{
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence},
};

#[cfg(not(loom))]
pub use self::cell::{ConstPtr, MutPtr, UnsafeCell};

#[cfg(not(loom))]
mod cell {
    /// `core::cell::UnsafeCell` with loom's access API (see the [module docs](super)).
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

    /// A `*const T` obtained from [`UnsafeCell::get`]; loom tracks its lifetime as one
    /// read access, here it is just the pointer.
    #[derive(Debug)]
    pub struct ConstPtr<T: ?Sized>(*const T);

    /// A `*mut T` obtained from [`UnsafeCell::get_mut`]; loom tracks its lifetime as one
    /// write access, here it is just the pointer.
    #[derive(Debug)]
    pub struct MutPtr<T: ?Sized>(*mut T);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        #[inline]
        pub const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        /// Unwraps the value.
        #[inline]
        pub fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Calls `f` with a pointer for reading the value (one read access).
        #[inline]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a pointer for writing the value (one write access).
        #[inline]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }

        /// A read access that lasts as long as the returned pointer.
        #[inline]
        pub fn get(&self) -> ConstPtr<T> {
            ConstPtr(self.0.get())
        }

        /// A write access that lasts as long as the returned pointer.
        #[inline]
        pub fn get_mut(&self) -> MutPtr<T> {
            MutPtr(self.0.get())
        }
    }

    impl<T: ?Sized> ConstPtr<T> {
        /// Dereferences the pointer.
        ///
        /// # Safety
        /// As for dereferencing a `*const T`: the cell must be alive, and no `&mut T`
        /// to the value may exist for the returned lifetime.
        #[inline]
        pub unsafe fn deref(&self) -> &T {
            // SAFETY: forwarded to the caller (see `# Safety`).
            unsafe { &*self.0 }
        }

        /// Calls `f` with the raw pointer.
        #[inline]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0)
        }
    }

    impl<T: ?Sized> MutPtr<T> {
        /// Dereferences the pointer mutably.
        ///
        /// # Safety
        /// As for dereferencing a `*mut T`: the cell must be alive, and no other
        /// reference to the value may exist for the returned lifetime.
        // Mirrors loom's `MutPtr::deref`, which simulates a raw pointer.
        #[allow(clippy::mut_from_ref)]
        #[inline]
        pub unsafe fn deref(&self) -> &mut T {
            // SAFETY: forwarded to the caller (see `# Safety`).
            unsafe { &mut *self.0 }
        }

        /// Calls `f` with the raw pointer.
        #[inline]
        pub fn with<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0)
        }
    }
}
