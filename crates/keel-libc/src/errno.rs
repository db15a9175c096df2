//! `errno`: glibc's `__errno_location`, the calling thread's `int`, from the
//! [`Platform`](crate::Platform).

/// `int *__errno_location(void)`.
pub extern "C" fn errno_location() -> *mut i32 {
    crate::platform().errno_location()
}
