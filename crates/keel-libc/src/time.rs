//! Time and a few system queries: `time`, `gettimeofday`, `clock_gettime` (realtime,
//! monotonic and the CPU-time clocks, which report monotonic time: one application
//! owns the machine), `nanosleep`, `sleep`, `usleep`, `gmtime_r` and `localtime_r`
//! (Keel has no time zones: local time is UTC), `sysconf`, the user ids (0: Keel has
//! one user) and `fchmod`/`fchown` (accepted: Keel has no permissions beyond a
//! file's mode bits, which these calls do not change yet).
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own (the
//! pointers C says are valid are valid), so the functions carry no `# Safety`
//! section of their own.

#![allow(clippy::missing_safety_doc)]

use core::ffi::{c_int, c_long};

use keel_elf::ExportedSymbols;

use crate::exports::export;

/// `ENOSYS`.
const ENOSYS: c_int = 38;
/// `EINVAL`.
const EINVAL: c_int = 22;

/// `struct timespec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Timespec {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: i64,
}

/// `struct timeval`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeval {
    /// Seconds.
    pub sec: i64,
    /// Microseconds.
    pub usec: i64,
}

/// `struct tm`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Tm {
    /// Seconds (0-60).
    pub sec: c_int,
    /// Minutes.
    pub min: c_int,
    /// Hours.
    pub hour: c_int,
    /// Day of the month (1-31).
    pub mday: c_int,
    /// Month (0-11).
    pub mon: c_int,
    /// Years since 1900.
    pub year: c_int,
    /// Day of the week (0 = Sunday).
    pub wday: c_int,
    /// Day of the year (0-365).
    pub yday: c_int,
    /// Daylight saving time (0: none).
    pub isdst: c_int,
    /// Seconds east of UTC (`tm_gmtoff`).
    pub gmtoff: c_long,
    /// The zone's name (`tm_zone`).
    pub zone: *const u8,
}

/// The clock `id` now.
fn clock(id: c_int) -> Result<(i64, i64), c_int> {
    let platform = crate::platform();
    let reading = match id {
        // CLOCK_REALTIME, CLOCK_REALTIME_COARSE
        0 | 5 => platform.realtime(),
        // CLOCK_MONOTONIC, PROCESS/THREAD_CPUTIME, MONOTONIC_RAW/COARSE, BOOTTIME
        1..=4 | 6 | 7 => platform.monotonic(),
        _ => return Err(EINVAL),
    };
    reading.ok_or(ENOSYS)
}

/// `int clock_gettime(clockid_t, struct timespec *)`.
pub unsafe extern "C" fn clock_gettime(id: c_int, out: *mut Timespec) -> c_int {
    match clock(id) {
        Ok((sec, nsec)) => {
            // SAFETY: C's contract.
            unsafe { out.write(Timespec { sec, nsec }) };
            0
        }
        Err(errno) => {
            crate::set_errno(errno);
            -1
        }
    }
}

/// `int gettimeofday(struct timeval *, void *)`.
pub unsafe extern "C" fn gettimeofday(out: *mut Timeval, _zone: *mut core::ffi::c_void) -> c_int {
    match clock(0) {
        Ok((sec, nsec)) => {
            if !out.is_null() {
                // SAFETY: C's contract.
                unsafe {
                    out.write(Timeval {
                        sec,
                        usec: nsec / 1000,
                    })
                };
            }
            0
        }
        Err(errno) => {
            crate::set_errno(errno);
            -1
        }
    }
}

/// `time_t time(time_t *)`.
pub unsafe extern "C" fn time(out: *mut i64) -> i64 {
    match clock(0) {
        Ok((sec, _)) => {
            if !out.is_null() {
                // SAFETY: C's contract.
                unsafe { *out = sec };
            }
            sec
        }
        Err(errno) => {
            crate::set_errno(errno);
            -1
        }
    }
}

/// `int nanosleep(const struct timespec *, struct timespec *)`.
pub unsafe extern "C" fn nanosleep(request: *const Timespec, _remaining: *mut Timespec) -> c_int {
    // SAFETY: C's contract.
    let request = unsafe { request.read() };
    if request.sec < 0 || !(0..1_000_000_000).contains(&request.nsec) {
        crate::set_errno(EINVAL);
        return -1;
    }
    let nanos = (request.sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(request.nsec as u64);
    if crate::platform().sleep(nanos) {
        0
    } else {
        crate::set_errno(ENOSYS);
        -1
    }
}

/// `unsigned sleep(unsigned)`: 0, or the whole time if the platform cannot sleep.
pub extern "C" fn sleep(seconds: u32) -> u32 {
    if crate::platform().sleep(u64::from(seconds) * 1_000_000_000) {
        0
    } else {
        seconds
    }
}

/// `int usleep(useconds_t)`.
pub extern "C" fn usleep(micros: u32) -> c_int {
    if crate::platform().sleep(u64::from(micros) * 1000) {
        0
    } else {
        crate::set_errno(ENOSYS);
        -1
    }
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31): the civil-from-days
/// algorithm of Howard Hinnant's "chrono-compatible low-level date algorithms".
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `year` is a leap year.
fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The UTC broken-down time of `seconds` since 1970.
pub fn utc(seconds: i64) -> Tm {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = BEFORE_MONTH[month as usize - 1] + i64::from(day) - 1
        + i64::from(month > 2 && is_leap(year));
    Tm {
        sec: (second_of_day % 60) as c_int,
        min: (second_of_day / 60 % 60) as c_int,
        hour: (second_of_day / 3600) as c_int,
        mday: day as c_int,
        mon: month as c_int - 1,
        year: (year - 1900) as c_int,
        // 1970-01-01 was a Thursday.
        wday: (days + 4).rem_euclid(7) as c_int,
        yday: yday as c_int,
        isdst: 0,
        gmtoff: 0,
        zone: c"UTC".as_ptr().cast(),
    }
}

/// `struct tm *gmtime_r(const time_t *, struct tm *)`; also `localtime_r` (UTC).
pub unsafe extern "C" fn gmtime_r(time: *const i64, out: *mut Tm) -> *mut Tm {
    // SAFETY: C's contract.
    unsafe { out.write(utc(*time)) };
    out
}

/// `long sysconf(int)`: the page size, the CPU count (1 until the kernel says),
/// the open-files limit, the clock ticks; `EINVAL` for other names.
pub extern "C" fn sysconf(name: c_int) -> c_long {
    match name {
        // _SC_CLK_TCK
        2 => 100,
        // _SC_OPEN_MAX
        4 => keel_vfs::file::DEFAULT_FD_LIMIT as c_long,
        // _SC_PAGESIZE
        30 => 4096,
        // _SC_NPROCESSORS_CONF, _SC_NPROCESSORS_ONLN
        83 | 84 => 1,
        _ => {
            crate::set_errno(EINVAL);
            -1
        }
    }
}

/// `uid_t geteuid(void)` and the other ids: 0.
pub extern "C" fn user_id() -> u32 {
    0
}

/// `int fchmod(int, mode_t)` and `fchown(int, uid_t, gid_t)`: accepted, no effect.
pub extern "C" fn accepted() -> c_int {
    0
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    let functions: [(&str, usize); 18] = [
        ("clock_gettime", clock_gettime as *const () as usize),
        ("gettimeofday", gettimeofday as *const () as usize),
        ("time", time as *const () as usize),
        ("nanosleep", nanosleep as *const () as usize),
        ("sleep", sleep as *const () as usize),
        ("usleep", usleep as *const () as usize),
        ("gmtime_r", gmtime_r as *const () as usize),
        ("localtime_r", gmtime_r as *const () as usize),
        ("sysconf", sysconf as *const () as usize),
        ("__sysconf", sysconf as *const () as usize),
        ("geteuid", user_id as *const () as usize),
        ("getuid", user_id as *const () as usize),
        ("getegid", user_id as *const () as usize),
        ("getgid", user_id as *const () as usize),
        ("fchmod", accepted as *const () as usize),
        ("fchown", accepted as *const () as usize),
        ("chmod", accepted as *const () as usize),
        ("chown", accepted as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}
