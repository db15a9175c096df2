//! A point on the kernel's monotonic clock, in nanoseconds.

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;

/// A point on a monotonic clock: nanoseconds since the clock's arbitrary origin (the
/// arch clock's: the TSC since boot in the kernel, since the hosted arch was created
/// on the host). Spans are [`core::time::Duration`]s.
///
/// Instants from different clocks (two hosted arches, two boots) do not compare
/// meaningfully; the type does not know which clock an instant came from.
///
/// Arithmetic: `Instant + Duration` panics on overflow, as `std`'s does (use
/// [`checked_add`](Instant::checked_add) or [`saturating_add`](Instant::saturating_add)
/// where a far deadline is possible); `Instant - Instant` saturates to zero when the
/// right side is later, as `std`'s does (clocks read on different CPUs may disagree by
/// a little).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The clock's origin.
    pub const ZERO: Self = Self(0);

    /// The last representable instant (about 584 years after the origin); a deadline
    /// that never comes.
    pub const MAX: Self = Self(u64::MAX);

    /// The instant `nanos` nanoseconds after the clock's origin.
    #[must_use]
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the clock's origin.
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + duration`, or `None` if that is past [`Instant::MAX`].
    #[must_use]
    pub const fn checked_add(self, duration: Duration) -> Option<Self> {
        match duration_nanos(duration) {
            Some(nanos) => match self.0.checked_add(nanos) {
                Some(sum) => Some(Self(sum)),
                None => None,
            },
            None => None,
        }
    }

    /// `self + duration`, or [`Instant::MAX`] if that is past it.
    #[must_use]
    pub const fn saturating_add(self, duration: Duration) -> Self {
        match self.checked_add(duration) {
            Some(sum) => sum,
            None => Self::MAX,
        }
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    #[must_use]
    pub const fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// `duration` in whole nanoseconds, or `None` if that does not fit a `u64`.
const fn duration_nanos(duration: Duration) -> Option<u64> {
    let nanos = duration.as_nanos();
    if nanos <= u64::MAX as u128 {
        Some(nanos as u64)
    } else {
        None
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Panics if the sum is past [`Instant::MAX`].
    fn add(self, duration: Duration) -> Instant {
        self.checked_add(duration)
            .expect("overflow when adding a duration to an instant")
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturates to zero if `earlier` is later (see the type's docs).
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Display for Instant {
    /// Seconds since the origin, with nanosecond precision (`12.000345678s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn adding_durations() {
        let start = Instant::from_nanos(1_000);
        assert_eq!(start + Duration::from_micros(2), Instant::from_nanos(3_000));
        assert_eq!(
            start.checked_add(Duration::from_secs(1)),
            Some(Instant::from_nanos(1_000_001_000))
        );
    }

    #[test]
    fn adding_overflows_checked_and_saturating() {
        let late = Instant::from_nanos(u64::MAX - 10);
        assert_eq!(
            late.checked_add(Duration::from_nanos(10)),
            Some(Instant::MAX)
        );
        assert_eq!(late.checked_add(Duration::from_nanos(11)), None);
        assert_eq!(late.saturating_add(Duration::from_nanos(11)), Instant::MAX);
        // A duration that does not fit u64 nanoseconds at all.
        assert_eq!(Instant::ZERO.checked_add(Duration::MAX), None);
        assert_eq!(Instant::ZERO.saturating_add(Duration::MAX), Instant::MAX);
        assert_eq!(
            Instant::ZERO.saturating_add(Duration::from_nanos(u64::MAX)),
            Instant::MAX
        );
    }

    #[test]
    #[should_panic(expected = "overflow")]
    fn add_operator_panics_on_overflow() {
        let _ = Instant::MAX + Duration::from_nanos(1);
    }

    #[test]
    fn differences() {
        let earlier = Instant::from_nanos(1_500);
        let later = Instant::from_nanos(4_000_000_002);
        assert_eq!(later - earlier, Duration::new(3, 999_998_502));
        assert_eq!(earlier - later, Duration::ZERO);
        assert_eq!(
            later.saturating_duration_since(earlier),
            Duration::from_nanos(3_999_998_502)
        );
        assert_eq!(earlier.saturating_duration_since(later), Duration::ZERO);
        assert_eq!(later.saturating_duration_since(later), Duration::ZERO);
        assert_eq!(Instant::MAX - Instant::ZERO, Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn ordering_and_display() {
        assert!(Instant::ZERO < Instant::from_nanos(1));
        assert_eq!(Instant::default(), Instant::ZERO);
        assert_eq!(
            format!("{}", Instant::from_nanos(12_000_345_678)),
            "12.000345678s"
        );
        assert_eq!(format!("{}", Instant::ZERO), "0.000000000s");
    }
}
