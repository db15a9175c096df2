//! `exp` and `ln` for the fair policy: `core` has neither (they live in `std`/libm),
//! and the scheduler needs only a few digits. Both are plain range reduction plus a
//! short series, accurate to about 1e-8 relative, which is far below the precision the
//! policy relies on (it compares runtimes and overshoots preemption deadlines anyway).

use core::f64::consts::{LN_2, LOG2_E, SQRT_2};

/// `e^x`; saturates to `+inf` above 709 and to 0 below -745.
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let magnitude = if x < 0.0 { -x } else { x };
    if magnitude < 1e-3 {
        // The common case (a run of microseconds against tau = 200 ms): two terms of
        // the series, error below x^3/6 < 2e-10.
        return 1.0 + x + 0.5 * x * x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -745.0 {
        return 0.0;
    }
    // x = k ln2 + r with |r| <= ln2 / 2, so e^x = 2^k e^r.
    let scaled = x * LOG2_E;
    let k = (if scaled < 0.0 {
        scaled - 0.5
    } else {
        scaled + 0.5
    }) as i64;
    let r = x - (k as f64) * LN_2;
    // Taylor series of e^r to degree 8 (Horner): error below r^9/9! < 2e-9.
    let mut series = 1.0;
    let mut term_index = 8.0;
    while term_index >= 1.0 {
        series = 1.0 + r * series / term_index;
        term_index -= 1.0;
    }
    series * power_of_two(k)
}

/// `ln x` for `x > 0` (returns `-inf` for 0 and subnormals, NaN for negatives).
pub(crate) fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x < f64::MIN_POSITIVE {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    if mantissa > SQRT_2 {
        mantissa *= 0.5;
        exponent += 1;
    }
    // ln m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| <= 0.172.
    let s = (mantissa - 1.0) / (mantissa + 1.0);
    let s2 = s * s;
    let series = s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 / 9.0))));
    exponent as f64 * LN_2 + 2.0 * series
}

/// `2^k` for `k` in the normal exponent range (saturating outside it).
fn power_of_two(k: i64) -> f64 {
    if k > 1023 {
        f64::INFINITY
    } else if k < -1022 {
        // Go through two steps to reach the subnormal range without overflow.
        power_of_two(k + 1022) * f64::MIN_POSITIVE
    } else {
        f64::from_bits(((k + 1023) as u64) << 52)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        let diff = if a > b { a - b } else { b - a };
        diff <= 1e-8 * (if b < 0.0 { -b } else { b }).max(1.0)
    }

    #[test]
    fn exp_matches_std() {
        for i in -2000..=2000 {
            let x = i as f64 * 0.173;
            assert!(
                close(exp(x), x.exp()),
                "exp({x}) = {} vs {}",
                exp(x),
                x.exp()
            );
        }
        for x in [1e-9, -1e-9, 5e-4, -5e-4, 0.0] {
            assert!(close(exp(x), x.exp()));
        }
        assert_eq!(exp(1000.0), f64::INFINITY);
        assert_eq!(exp(-1000.0), 0.0);
    }

    #[test]
    fn ln_matches_std() {
        for i in 1..=4000 {
            let x = i as f64 * 0.0371;
            assert!(close(ln(x), x.ln()), "ln({x}) = {} vs {}", ln(x), x.ln());
        }
        for x in [1e-300, 1e300, 1.0, 2.0, 0.5] {
            assert!(close(ln(x), x.ln()));
        }
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
    }
}
