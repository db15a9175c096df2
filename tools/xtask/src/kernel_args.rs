//! The kernel command line as xtask knows it: the keys for `cargo xtask run --help`,
//! and a cheap check before building, so `-- app=nosuch` fails at once instead of after
//! a build and a boot.
//!
//! The kernel checks its command line itself (`mod command_line` in
//! kernel-bin/src/main.rs, which any loader reaches); this table mirrors that one, and a
//! test below checks that every key here appears in the kernel's source.

use crate::test::crash_case_names;

/// What a key accepts.
#[derive(Debug, Clone, Copy)]
enum Values {
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A decimal number, at least this much.
    NumberAtLeast(u64),
    /// Free text (the kernel's own code checks it).
    Text,
    /// A bare word without `=value`.
    Flag,
}

/// One kernel argument.
#[derive(Debug)]
struct Key {
    name: &'static str,
    values: Values,
    /// Read only by a kernel built with `--ktest`.
    ktest_only: bool,
    help: &'static str,
}

const KEYS: &[Key] = &[
    Key {
        name: "app",
        values: Values::OneOf(&["default", "lockbench", "trapbench", "blkbench", "run"]),
        ktest_only: false,
        help: "the application: default (kernel-bin/src/app.rs), lockbench (the \
               lock-holder-preemption experiment), trapbench (interrupt round trips), \
               blkbench (disk reads on vda, for cargo xtask bench blk), run (load \
               run.object from the files and call its run.entry)",
    },
    Key {
        name: "run.object",
        values: Values::Text,
        ktest_only: false,
        help: "app=run: the shared object to load, a path or a name searched in /lib \
               and /usr/lib (its DT_NEEDED too)",
    },
    Key {
        name: "run.entry",
        values: Values::Text,
        ktest_only: false,
        help: "app=run: the function to call, int NAME(void) (default keel_main); \
               the VM exits with success if it returns 0",
    },
    Key {
        name: "log",
        values: Values::OneOf(&["off", "error", "warn", "info", "debug", "trace"]),
        ktest_only: false,
        help: "log level (default info; debug adds the memory map, ACPI, paging and \
               CPU bring-up)",
    },
    Key {
        name: "lockbench.threads",
        values: Values::NumberAtLeast(1),
        ktest_only: false,
        help: "app=lockbench: threads (default 16)",
    },
    Key {
        name: "lockbench.acquisitions",
        values: Values::NumberAtLeast(1),
        ktest_only: false,
        help: "app=lockbench: lock acquisitions in total (default 200000)",
    },
    Key {
        name: "lockbench.work",
        values: Values::NumberAtLeast(0),
        ktest_only: false,
        help: "app=lockbench: extra updates inside each critical section (default 0)",
    },
    Key {
        name: "trapbench.trips",
        values: Values::NumberAtLeast(1),
        ktest_only: false,
        help: "app=trapbench: round trips per sample (default 20000)",
    },
    Key {
        name: "trapbench.samples",
        values: Values::NumberAtLeast(1),
        ktest_only: false,
        help: "app=trapbench: samples (default 21)",
    },
    Key {
        name: "blkbench.random_reads",
        values: Values::NumberAtLeast(1),
        ktest_only: false,
        help: "app=blkbench: random 4 KiB reads per random workload (default 8192)",
    },
    Key {
        name: "ktest.crash",
        values: Values::Text,
        ktest_only: true,
        help: "run one deliberate crash instead of the suite",
    },
    Key {
        name: "ktest.filter",
        values: Values::Text,
        ktest_only: true,
        help: "run only the cases whose name contains TEXT",
    },
    Key {
        name: "ktest.only",
        values: Values::Text,
        ktest_only: true,
        help: "the same as ktest.filter (its older name)",
    },
    Key {
        name: "ktest.expect_cpus",
        values: Values::NumberAtLeast(1),
        ktest_only: true,
        help: "check that the MADT lists exactly N CPUs",
    },
    Key {
        name: "ktest.disk_seed",
        values: Values::NumberAtLeast(1),
        ktest_only: true,
        help: "the disk test writes pattern N over vda's persistent area",
    },
    Key {
        name: "ktest.disk_previous_seed",
        values: Values::NumberAtLeast(0),
        ktest_only: true,
        help: "the disk test first checks vda's persistent area holds pattern N from the \
               previous boot (0: a fresh, zeroed image)",
    },
    Key {
        name: "mount",
        values: Values::Text,
        ktest_only: false,
        help: "mount=/PATH:DISK mounts the ext2 filesystem on DISK (vda, vdb, ... in the \
               order of --disk) at /PATH; repeat for several",
    },
    Key {
        name: "virtio_mmio.device",
        values: Values::Text,
        ktest_only: false,
        help: "a virtio-mmio device, SIZE@BASE:IRQ as Linux reads it (QEMU's microvm \
               appends one per device; cargo xtask run --disk does it for you)",
    },
    Key {
        name: "ktest.ap_stack_above_4g",
        values: Values::Flag,
        ktest_only: false,
        help: "start every AP on a stack above 4 GiB (any build; boot with --memory 6G)",
    },
];

fn describe(values: Values) -> String {
    match values {
        Values::OneOf(words) => words.join("|"),
        Values::NumberAtLeast(0) => "N".into(),
        Values::NumberAtLeast(minimum) => format!("N (at least {minimum})"),
        Values::Text => "TEXT".into(),
        Values::Flag => String::new(),
    }
}

/// The kernel arguments as help text.
pub fn help_text() -> String {
    let mut text = String::from(
        "Kernel arguments (after --; a bad value of a known key fails the boot, an unknown \
         key is warned about):\n",
    );
    for key in KEYS {
        let syntax = match key.values {
            Values::Flag => key.name.to_string(),
            Values::Text if key.name == "ktest.crash" => "ktest.crash=NAME".into(),
            values => format!("{}={}", key.name, describe(values)),
        };
        let build = if key.ktest_only {
            " [--ktest only]"
        } else {
            ""
        };
        text.push_str(&format!("  {syntax}\n      {}{build}\n", key.help));
        if key.name == "ktest.crash" {
            text.push_str(&format!("      NAME: {}\n", crash_case_names().join(", ")));
        }
    }
    text
}

/// Checks the kernel arguments before a build: a known key's value must fit. Returns
/// warnings for what the kernel would ignore (unknown keys, `ktest.*` without
/// `--ktest`), or the first error.
pub fn check(arguments: &[String], ktest: bool) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for word in arguments
        .iter()
        .flat_map(|argument| argument.split_ascii_whitespace())
    {
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (word, None),
        };
        let Some(key) = KEYS.iter().find(|key| key.name == name) else {
            if name.starts_with("ktest.") && !ktest {
                warnings.push(format!(
                    "kernel argument {word:?} needs --ktest; the kernel will ignore it"
                ));
            } else {
                warnings.push(format!(
                    "unknown kernel argument {word:?}; the kernel will ignore it (see \
                     `cargo xtask run --help`)"
                ));
            }
            continue;
        };
        if key.ktest_only && !ktest {
            warnings.push(format!(
                "kernel argument {word:?} needs --ktest; the kernel will ignore it"
            ));
            continue;
        }
        let fits = match (key.values, value) {
            (Values::Flag, None) => true,
            (Values::Flag, Some(_)) | (_, None) => false,
            (Values::OneOf(words), Some(value)) => words.contains(&value),
            (Values::NumberAtLeast(minimum), Some(value)) => {
                value.parse::<u64>().is_ok_and(|number| number >= minimum)
            }
            (Values::Text, Some(value)) => !value.is_empty(),
        };
        if !fits {
            let expected = match key.values {
                Values::OneOf(words) => format!("valid values are {}", words.join(", ")),
                Values::NumberAtLeast(minimum) => {
                    format!("expected a decimal number, at least {minimum}")
                }
                Values::Text => "expected a non-empty value".into(),
                Values::Flag => "this flag takes no value".into(),
            };
            return Err(format!("kernel argument {word:?}: {expected}"));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn bad_values_of_known_keys_are_errors() {
        let error = check(&words("app=nosuch"), false).unwrap_err();
        assert!(error.contains("default, lockbench, trapbench"), "{error}");
        let error = check(&words("log=bogus"), false).unwrap_err();
        assert!(error.contains("debug"), "{error}");
        assert!(check(&words("lockbench.threads=x"), false).is_err());
        assert!(check(&words("ktest.ap_stack_above_4g=1"), true).is_err());
    }

    #[test]
    fn unknown_keys_and_ktest_keys_without_ktest_warn() {
        assert_eq!(check(&words("app=lockbench log=debug"), false), Ok(vec![]));
        let warnings = check(&words("quiet ktest.crash=null-read"), false).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(warnings[1].contains("--ktest"));
        assert_eq!(check(&words("ktest.crash=null-read"), true), Ok(vec![]));
    }

    #[test]
    fn the_kernel_reads_every_key_listed_here() {
        let root = crate::workspace_root().join("kernel-bin/src/main.rs");
        let kernel = std::fs::read_to_string(root).expect("kernel-bin/src/main.rs");
        for key in KEYS {
            assert!(
                kernel.contains(&format!("\"{}\"", key.name)),
                "kernel-bin/src/main.rs does not list {}",
                key.name
            );
        }
    }
}
