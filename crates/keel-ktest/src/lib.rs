//! Keel's in-guest test harness: what a test case and a deliberate crash case are, how
//! the cases of a test kernel are chosen and ordered, and the runner that prints one
//! line per case and closes with `N passed, N failed` (the line `cargo xtask test`
//! parses).
//!
//! Main types: [`Case`] (a named test function over a context, the kernel's `ArchInfo`
//! in the guest), [`Failure`] (a failed check: message, file, line), [`Filter`] (the
//! `ktest.filter=TEXT` / `ktest.only=TEXT` substring match), [`run`] with its
//! [`Summary`], and [`Crash`] with [`find_crash`], whose error lists the valid crash
//! names.
//!
//! # How cases register
//! Cases register themselves without a central list: the kernel's `ktest!` and `crash!`
//! macros (in `kernel-bin/src/ktest.rs`) put a `&'static Case` (or `&'static Crash`)
//! into the linker section `.ktest_cases` (`.ktest_crashes`) next to the function,
//! taking the name from the function's identifier (`stringify!`, never a hand-typed
//! copy). The kernel's linker script `KEEP`s both sections between start and end
//! symbols, so `--gc-sections` cannot drop a case nobody references (rustc's `#[used]`
//! already marks the statics retained; the `KEEP` does not rely on that), and
//! `kernel-bin/src/ktest/registry.rs` turns those symbols into slices (the only
//! `unsafe` of the harness, beside the linker script that defines the layout). Each
//! section holds pointers, 8 bytes each, so no padding can appear between entries
//! from different object files. This crate knows nothing of sections or linker
//! symbols: it takes slices, and is therefore `forbid(unsafe_code)` and tested on the
//! host like every other pure crate.
//!
//! Why not the `linkme` crate: it would bring a proc-macro (and syn) into the kernel's
//! build for what two `macro_rules!` and four linker-script lines do, and with a custom
//! script whose `PHDRS` fix every segment, where the linker puts an orphan section
//! such as `linkme`'s is not something to leave to chance: the script names the
//! sections itself.
//!
//! # Checking that registration works
//! The runner prints every case's name. `cargo xtask test` reads the `ktest!(...)`
//! registrations in `kernel-bin/src` and fails a suite boot unless the names it ran are
//! exactly those, each once; so a registration lost at link time, or a case the runner
//! skipped, fails the suite (a count against a remembered minimum would not notice one
//! case replaced by another). It also boots `ktest.crash=no-such-crash` and compares
//! the listed crash names with its own crash cases.
//!
//! # Filter
//! `ktest.filter=TEXT` (alias `ktest.only=TEXT`) selects the cases whose name contains
//! TEXT. A filter that selects nothing fails the run (a typo must not look like a
//! pass).
//!
//! # Where the cases live
//! Each subsystem's guest cases live in their own file named after that subsystem under
//! `kernel-bin/src/ktest/` (`paging.rs`, `interrupts.rs`, `cpu.rs`, `time.rs`,
//! `memory.rs`, `threads.rs`, ...), not inside the subsystem crates: an in-guest case
//! needs the composed kernel (the scheduler and heap statics of `kernel-bin`, the
//! booted `ArchInfo`), which the architecture crate must not reach (a crate never
//! depends on a layer above it), and a registration left in an rlib would be linked
//! only because rustc happens to keep `#[used]` statics of libraries. One directory
//! also keeps the whole suite behind the single `#[cfg(feature = "ktest")] mod ktest;`
//! of `main.rs`.
//!
//! # Order
//! The order is deterministic and independent of the link order: cases run sorted by
//! source file path, then by line, so one file's cases run in the order they are
//! written and the subsystems in file-name order ([`ordered`]). Duplicate names (two
//! files registering functions of the same name) are reported as failures, since the
//! name is what `ktest.filter=` and the host's comparison of registered against run
//! names go by.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use keel_types::Instant;

/// A failed check: what failed and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// What the check expected, in words.
    pub message: &'static str,
    /// The source file of the check (`file!()`).
    pub file: &'static str,
    /// The line of the check (`line!()`).
    pub line: u32,
}

/// What a case returns.
pub type TestResult = Result<(), Failure>;

/// One registered in-guest test case over a context of type `C`.
#[derive(Debug)]
pub struct Case<C: 'static> {
    /// The case's name: its function's identifier.
    pub name: &'static str,
    /// The source file that registered it (`file!()`), for ordering.
    pub file: &'static str,
    /// The line of its registration (`line!()`), for ordering.
    pub line: u32,
    /// The test itself.
    pub run: fn(&C) -> TestResult,
}

/// When a deliberate crash can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashStage {
    /// Right after boot, on the boot stack, before the scheduler exists.
    Boot,
    /// Once the scheduler runs (the crash spawns threads or uses other CPUs).
    Threads,
}

/// One registered deliberate crash, run by `ktest.crash=NAME`.
#[derive(Debug)]
pub struct Crash {
    /// The function's identifier; the command-line name is the same with `-` for `_`
    /// ([`Crash::matches`], [`Crash::write_name`]).
    pub function: &'static str,
    /// When it can run.
    pub stage: CrashStage,
    /// The crash: it must not return (returning is reported as a failure).
    pub run: fn(),
}

impl Crash {
    /// Whether `name` (the command line's spelling, `null-read`) names this crash.
    pub fn matches(&self, name: &str) -> bool {
        name.len() == self.function.len()
            && name.bytes().zip(self.function.bytes()).all(|(asked, own)| {
                if own == b'_' {
                    asked == b'-'
                } else {
                    asked == own
                }
            })
    }

    /// Writes the command line's spelling of the name (`_` becomes `-`).
    pub fn write_name(&self, out: &mut impl Write) -> fmt::Result {
        for part in self.function.split('_').enumerate() {
            if part.0 > 0 {
                out.write_char('-')?;
            }
            out.write_str(part.1)?;
        }
        Ok(())
    }
}

/// `ktest.crash=NAME` named no registered crash; displays the valid names.
#[derive(Debug)]
pub struct UnknownCrash<'a> {
    /// The name asked for.
    pub name: &'a str,
    /// Every registered crash.
    pub crashes: &'a [&'static Crash],
}

impl fmt::Display for UnknownCrash<'_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(out, "unknown crash {:?}; valid crash names:", self.name)?;
        let mut sorted: Vec<&Crash> = self.crashes.to_vec();
        sorted.sort_by_key(|crash| crash.function);
        for crash in sorted {
            out.write_char(' ')?;
            crash.write_name(out)?;
        }
        Ok(())
    }
}

/// Finds the crash `name` names, or says which names are valid.
pub fn find_crash<'a>(
    crashes: &'a [&'static Crash],
    name: &'a str,
) -> Result<&'static Crash, UnknownCrash<'a>> {
    crashes
        .iter()
        .copied()
        .find(|crash| crash.matches(name))
        .ok_or(UnknownCrash { name, crashes })
}

/// Which cases to run: those whose name contains every given text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    texts: [Option<&'a str>; 2],
}

impl<'a> Filter<'a> {
    /// A filter from the values of `ktest.filter=` and of its alias `ktest.only=` (when
    /// both are given, a case must match both).
    pub fn new(filter: Option<&'a str>, only: Option<&'a str>) -> Self {
        Self {
            texts: [filter, only],
        }
    }

    /// Whether the filter lets every case run.
    pub fn is_empty(&self) -> bool {
        self.texts.iter().all(Option::is_none)
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        self.texts.iter().flatten().all(|text| name.contains(text))
    }
}

/// The cases in their deterministic order: by file, then line (see the crate docs).
pub fn ordered<C>(cases: &[&'static Case<C>]) -> Vec<&'static Case<C>> {
    let mut sorted = cases.to_vec();
    sorted.sort_by(|a, b| (a.file, a.line, a.name).cmp(&(b.file, b.line, b.name)));
    sorted
}

/// The counts of one run; displays as `N passed, N failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that returned `Ok`.
    pub passed: u32,
    /// Cases that failed, plus harness problems (duplicate names).
    pub failed: u32,
    /// Cases registered in all.
    pub registered: u32,
    /// Cases the filter selected.
    pub selected: u32,
}

impl Summary {
    /// Whether the run succeeded: nothing failed and the filter selected something.
    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.selected > 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(out, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// Writes `line` with one `write_str` call, so a console that locks per call keeps
/// the line whole.
fn write_line(out: &mut impl Write, arguments: fmt::Arguments<'_>) {
    let mut line = String::new();
    // Formatting into a String cannot fail.
    let _ = line.write_fmt(arguments);
    line.push('\n');
    // A console that cannot print has nowhere to report that either.
    let _ = out.write_str(&line);
}

/// Runs the selected cases in order over `context`, printing `test NAME ... ok (T us)`
/// or `test NAME ... FAILED: message at file:line` for each, and closes with the
/// summary line. `now` is the clock for the per-case times (passed in, so host tests
/// control it).
pub fn run<C>(
    cases: &[&'static Case<C>],
    context: &C,
    filter: &Filter<'_>,
    now: impl Fn() -> Instant,
    out: &mut impl Write,
) -> Summary {
    let cases = ordered(cases);
    let mut summary = Summary {
        registered: cases.len() as u32,
        ..Summary::default()
    };
    let mut names: Vec<&str> = cases.iter().map(|case| case.name).collect();
    names.sort_unstable();
    for pair in names.windows(2).filter(|pair| pair[0] == pair[1]) {
        summary.failed += 1;
        write_line(
            out,
            format_args!(
                "ktest: FAILED: two cases are named {:?}; rename one",
                pair[0]
            ),
        );
    }
    for case in cases.iter().filter(|case| filter.matches(case.name)) {
        summary.selected += 1;
        let start = now();
        match (case.run)(context) {
            Ok(()) => {
                summary.passed += 1;
                let micros = (now() - start).as_micros();
                write_line(out, format_args!("test {} ... ok ({micros} us)", case.name));
            }
            Err(failure) => {
                summary.failed += 1;
                write_line(
                    out,
                    format_args!(
                        "test {} ... FAILED: {} at {}:{}",
                        case.name, failure.message, failure.file, failure.line
                    ),
                );
            }
        }
    }
    if summary.selected == 0 {
        write_line(
            out,
            format_args!(
                "ktest: FAILED: the filter selected none of the {} registered cases",
                summary.registered
            ),
        );
    } else if !filter.is_empty() {
        write_line(
            out,
            format_args!(
                "ktest: the filter selected {} of {} registered cases",
                summary.selected, summary.registered
            ),
        );
    }
    write_line(out, format_args!("{summary}"));
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::string::ToString;

    fn pass(_: &u32) -> TestResult {
        Ok(())
    }

    fn fail(_: &u32) -> TestResult {
        Err(Failure {
            message: "wrong",
            file: "f.rs",
            line: 7,
        })
    }

    static A: Case<u32> = Case {
        name: "alpha",
        file: "src/b.rs",
        line: 20,
        run: pass,
    };
    static B: Case<u32> = Case {
        name: "beta",
        file: "src/b.rs",
        line: 10,
        run: fail,
    };
    static C: Case<u32> = Case {
        name: "gamma",
        file: "src/a.rs",
        line: 99,
        run: pass,
    };
    static C_AGAIN: Case<u32> = Case {
        name: "gamma",
        file: "src/c.rs",
        line: 1,
        run: pass,
    };

    #[test]
    fn order_is_file_then_line_whatever_the_link_order() {
        let names = |cases: &[&'static Case<u32>]| -> Vec<&str> {
            ordered(cases).iter().map(|case| case.name).collect()
        };
        assert_eq!(names(&[&A, &B, &C]), ["gamma", "beta", "alpha"]);
        assert_eq!(names(&[&C, &A, &B]), ["gamma", "beta", "alpha"]);
    }

    #[test]
    fn runner_prints_each_case_and_the_summary_line() {
        let mut out = String::new();
        let clock = Cell::new(0u64);
        let tick = || {
            clock.set(clock.get() + 3000);
            Instant::from_nanos(clock.get())
        };
        let summary = run(&[&A, &B, &C], &0, &Filter::default(), tick, &mut out);
        assert_eq!(
            out,
            "test gamma ... ok (3 us)\n\
             test beta ... FAILED: wrong at f.rs:7\n\
             test alpha ... ok (3 us)\n\
             2 passed, 1 failed\n"
        );
        assert_eq!(
            (summary.passed, summary.failed, summary.selected),
            (2, 1, 3)
        );
        assert!(!summary.succeeded());
    }

    #[test]
    fn filter_and_its_alias_select_by_substring() {
        let mut out = String::new();
        let filter = Filter::new(Some("a"), None);
        let summary = run(&[&A, &B, &C], &0, &filter, || Instant::ZERO, &mut out);
        assert_eq!(summary.selected, 3);
        let filter = Filter::new(None, Some("mm"));
        let summary = run(&[&A, &B, &C], &0, &filter, || Instant::ZERO, &mut out);
        assert_eq!((summary.selected, summary.passed), (1, 1));
        assert!(out.contains("selected 1 of 3 registered"));
        let both = Filter::new(Some("a"), Some("l"));
        assert!(both.matches("alpha") && !both.matches("gamma"));
    }

    #[test]
    fn a_filter_that_selects_nothing_fails() {
        let mut out = String::new();
        let filter = Filter::new(Some("nothing"), None);
        let summary = run(&[&A, &C], &0, &filter, || Instant::ZERO, &mut out);
        assert!(!summary.succeeded());
        assert!(out.ends_with("0 passed, 0 failed\n"), "{out}");
    }

    #[test]
    fn duplicate_names_fail_the_run() {
        let mut out = String::new();
        let summary = run(
            &[&C, &C_AGAIN],
            &0,
            &Filter::default(),
            || Instant::ZERO,
            &mut out,
        );
        assert_eq!((summary.passed, summary.failed), (2, 1));
        assert!(out.contains("two cases are named \"gamma\""));
    }

    fn noop() {}

    static NULL_READ: Crash = Crash {
        function: "null_read",
        stage: CrashStage::Boot,
        run: noop,
    };
    static PANIC: Crash = Crash {
        function: "panic",
        stage: CrashStage::Threads,
        run: noop,
    };

    #[test]
    fn crash_names_use_dashes_and_unknown_names_list_the_valid_ones() {
        let crashes: &[&'static Crash] = &[&PANIC, &NULL_READ];
        assert!(find_crash(crashes, "null-read").is_ok_and(|c| c.function == "null_read"));
        assert!(find_crash(crashes, "null_read").is_err());
        assert!(find_crash(crashes, "null-rea").is_err());
        let error = find_crash(crashes, "bogus").map(|_| ()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown crash \"bogus\"; valid crash names: null-read panic"
        );
    }
}
