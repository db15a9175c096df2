//! `math.h` through the `libm` crate (a port of musl's libm, the well-kept no_std
//! implementation; the issue names it), exported under glibc's names and versions.
//! `exp`, `log` and `pow` carry `GLIBC_2.29` (glibc's new error handling, the same
//! functions) as well as the base version.

use keel_elf::ExportedSymbols;

use crate::exports::export;

/// Declares `extern "C"` wrappers over `libm` functions of one shape and registers
/// them.
macro_rules! wrappers {
    ($table:ident; $( $name:ident ( $($argument:ident : $type:ty),* ) -> $result:ty ),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "` (libm).")]
            pub extern "C" fn $name($($argument: $type),*) -> $result {
                libm::$name($($argument),*)
            }
            export($table, stringify!($name), $name as *const () as usize);
        )*
    };
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    wrappers! { table;
        sin(x: f64) -> f64, cos(x: f64) -> f64, tan(x: f64) -> f64,
        asin(x: f64) -> f64, acos(x: f64) -> f64, atan(x: f64) -> f64,
        atan2(y: f64, x: f64) -> f64,
        sinh(x: f64) -> f64, cosh(x: f64) -> f64, tanh(x: f64) -> f64,
        asinh(x: f64) -> f64, acosh(x: f64) -> f64, atanh(x: f64) -> f64,
        exp(x: f64) -> f64, exp2(x: f64) -> f64, expm1(x: f64) -> f64,
        log(x: f64) -> f64, log2(x: f64) -> f64, log10(x: f64) -> f64, log1p(x: f64) -> f64,
        pow(x: f64, y: f64) -> f64, sqrt(x: f64) -> f64, cbrt(x: f64) -> f64,
        hypot(x: f64, y: f64) -> f64, fmod(x: f64, y: f64) -> f64,
        floor(x: f64) -> f64, ceil(x: f64) -> f64, round(x: f64) -> f64, trunc(x: f64) -> f64,
        fabs(x: f64) -> f64, fmin(x: f64, y: f64) -> f64, fmax(x: f64, y: f64) -> f64,
        copysign(x: f64, y: f64) -> f64, nextafter(x: f64, y: f64) -> f64,
        remainder(x: f64, y: f64) -> f64, ldexp(x: f64, n: i32) -> f64,
        sinf(x: f32) -> f32, cosf(x: f32) -> f32, tanf(x: f32) -> f32,
        expf(x: f32) -> f32, logf(x: f32) -> f32, powf(x: f32, y: f32) -> f32,
        sqrtf(x: f32) -> f32, floorf(x: f32) -> f32, ceilf(x: f32) -> f32,
        fabsf(x: f32) -> f32, fmodf(x: f32, y: f32) -> f32,
    }
    // `frexp` and `modf` return through a pointer.
    export(table, "frexp", frexp as *const () as usize);
    export(table, "modf", modf as *const () as usize);
}

/// `double frexp(double, int *)`.
///
/// # Safety
/// `exponent` is writable.
pub unsafe extern "C" fn frexp(x: f64, exponent: *mut i32) -> f64 {
    let (mantissa, power) = libm::frexp(x);
    // SAFETY: C's contract.
    unsafe { *exponent = power };
    mantissa
}

/// `double modf(double, double *)`.
///
/// # Safety
/// `integral` is writable.
pub unsafe extern "C" fn modf(x: f64, integral: *mut f64) -> f64 {
    let (fraction, whole) = libm::modf(x);
    // SAFETY: C's contract.
    unsafe { *integral = whole };
    fraction
}
