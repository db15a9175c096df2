//! `cargo xtask test`: host unit tests, loom models, in-guest tests and crash tests.
//!
//! Every stage's counts are printed, and the run closes with one `N passed, N failed`
//! line over all stages. Any failure, timeout or crash makes the command exit non-zero.

use crate::cli::TestArguments;
use crate::kernel::{self, BuildOptions};
use crate::qemu::{self, GUEST_FAILURE_STATUS, GUEST_SUCCESS_STATUS, Machine, QemuOptions};
use crate::{cargo, workspace_root};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// vda of the in-guest disk tests: read-write, shared by the suite boots of one run,
/// which check each other's patterns (kernel-bin/src/ktest/virtio.rs).
pub const VDA_BYTES: u64 = 16 << 20;
/// vdb: read-only.
pub const VDB_BYTES: u64 = 1 << 20;

/// Makes fresh disk images for the in-guest tests under target/ktest-disks/: vda
/// (read-write, zeroed), vdb (read-only), with `short_queue` a disk whose queue (8
/// entries) is too short for the driver, which must refuse it by name and boot on,
/// and last an ext2 image made by `mkfs.ext2 -d` from the boot-image fixture, which
/// the kernel mounts at /data ([`EXT2_MOUNT`]). Failed devices get no name, so the
/// ext2 disk is vdc either way.
pub fn ktest_disks(short_queue: bool) -> Result<Vec<qemu::Disk>, String> {
    let directory = workspace_root().join("target/ktest-disks");
    std::fs::create_dir_all(&directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let mut disks = Vec::new();
    let images: &[(&str, u64, bool, Option<u32>)] = &[
        ("vda.img", VDA_BYTES, false, None),
        ("vdb.img", VDB_BYTES, true, None),
        ("short-queue.img", 1 << 20, false, Some(8)),
    ];
    for &(name, bytes, read_only, queue_size) in &images[..if short_queue { 3 } else { 2 }] {
        let path = directory.join(name);
        let file = std::fs::File::create(&path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
        file.set_len(bytes)
            .map_err(|error| format!("cannot size {}: {error}", path.display()))?;
        disks.push(qemu::Disk {
            path,
            read_only,
            queue_size,
        });
    }
    let ext2 = ext2_image_path();
    let _ = std::fs::remove_file(&ext2);
    let made = Command::new("mkfs.ext2")
        .args(["-q", "-F", "-b", "1024", "-d"])
        .arg(workspace_root().join("kernel-bin/tests/fixtures/boot-image"))
        .arg(&ext2)
        .arg("8M")
        .output()
        .map_err(|error| format!("cannot run mkfs.ext2 ({error}): apt-get install e2fsprogs"))?;
    if !made.status.success() {
        return Err(format!(
            "mkfs.ext2 failed: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    disks.push(qemu::Disk {
        path: ext2,
        read_only: false,
        queue_size: None,
    });
    Ok(disks)
}

/// The kernel argument that mounts the ext2 test disk.
pub const EXT2_MOUNT: &str = "mount=/data:vdc";

fn ext2_image_path() -> std::path::PathBuf {
    workspace_root().join("target/ktest-disks/ext2.img")
}

/// What suite boot `boot` (1, 2, ...) writes to /data/boot-N.txt (the same function as
/// `boot_file_contents` in kernel-bin/src/ktest/files.rs).
fn boot_file_contents(boot: usize) -> Vec<u8> {
    format!("written by Keel's suite boot {boot}\n")
        .repeat(200 * boot)
        .into_bytes()
}

/// After the suite boots: `e2fsck -fn` finds the ext2 test disk clean, and `debugfs`
/// reads back the file the last boot wrote through Keel's VFS.
fn check_ext2_image(last_boot: usize) -> Result<(), String> {
    let image = ext2_image_path();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .output()
        .map_err(|error| format!("cannot run e2fsck ({error})"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck -fn finds the ext2 disk Keel wrote unclean (status {}): {}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        ));
    }
    let name = format!("/boot-{last_boot}.txt");
    let cat = Command::new("debugfs")
        .args(["-R", &format!("cat {name}")])
        .arg(&image)
        .output()
        .map_err(|error| format!("cannot run debugfs ({error})"))?;
    if cat.stdout != boot_file_contents(last_boot) {
        return Err(format!(
            "debugfs reads {} bytes of {name} back, not what boot {last_boot} wrote",
            cat.stdout.len()
        ));
    }
    Ok(())
}

/// Debian's libraries the libc case loads, and their names in the boot image.
const DEBIAN_LIBRARIES: [(&str, &str); 2] = [
    ("/lib/x86_64-linux-gnu/libz.so.1", "libz.so.1"),
    (
        "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0",
        "libsqlite3.so.0",
    ),
];

/// Builds the in-guest test suite's boot image in target/ktest-disks/: a copy of
/// `kernel-bin/tests/fixtures/boot-image/` plus `/lib/libkeeltest.so` and
/// `/lib/libkeeldep.so`, built here by gcc from `kernel-bin/tests/fixtures/elf/` for
/// the ELF case (ktest/elf.rs), and Debian's `libz.so.1` and `libsqlite3.so.0` in
/// `/lib/x86_64-linux-gnu/` for the libc case (ktest/libc.rs), packed as cpio newc.
pub fn ktest_boot_image() -> Result<std::path::PathBuf, String> {
    let directory = workspace_root().join("target/ktest-disks");
    let root = directory.join("boot-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(workspace_root().join("kernel-bin/tests/fixtures/boot-image"))
        .arg(&root)
        .status()
        .map_err(|error| format!("cannot run cp: {error}"))?;
    if !copied.success() {
        return Err(format!("cp -a of the boot-image fixture failed: {copied}"));
    }
    let lib = root.join("lib");
    std::fs::create_dir_all(&lib)
        .map_err(|error| format!("cannot create {}: {error}", lib.display()))?;
    let sources = workspace_root().join("kernel-bin/tests/fixtures/elf");
    // Freestanding objects that need no libc, bound at load (-z now) with RELRO.
    let common = [
        "-shared",
        "-fPIC",
        "-O2",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-stack-protector",
        "-nostdlib",
        "-Wl,-z,now",
        "-Wl,-z,relro",
        "-Wl,-z,noexecstack",
    ];
    let objects: [(&str, &str, &[&str]); 2] = [
        ("keeldep.c", "libkeeldep.so", &["-Wl,-soname,libkeeldep.so"]),
        ("keeltest.c", "libkeeltest.so", &["-L", "LIB", "-lkeeldep"]),
    ];
    for (source, output, extra) in objects {
        let extra = extra.iter().map(|word| {
            if *word == "LIB" {
                lib.display().to_string()
            } else {
                (*word).to_string()
            }
        });
        // The source before the libraries: with Debian's --as-needed, a library
        // named before the object that needs it is left out of DT_NEEDED.
        let built = Command::new("gcc")
            .args(common)
            .arg("-o")
            .arg(lib.join(output))
            .arg(sources.join(source))
            .args(extra.collect::<Vec<_>>())
            .output()
            .map_err(|error| format!("cannot run gcc ({error}): apt-get install gcc"))?;
        if !built.status.success() {
            return Err(format!(
                "gcc {source} failed: {}",
                String::from_utf8_lossy(&built.stderr).trim()
            ));
        }
    }
    // Debian's own libz and libsqlite3, unmodified, for the libc case: copied (the
    // symlinks' targets) under the names their users ask for.
    let debian = root.join("lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&debian)
        .map_err(|error| format!("cannot create {}: {error}", debian.display()))?;
    for (source, name) in DEBIAN_LIBRARIES {
        std::fs::copy(source, debian.join(name)).map_err(|error| {
            format!("cannot copy {source} ({error}): apt-get install zlib1g libsqlite3-0")
        })?;
    }
    let image = directory.join("boot-image.cpio");
    crate::image::pack(&root, &image)?;
    Ok(image)
}

/// Time limit for one in-guest test-suite boot.
const SUITE_LIMIT: Duration = Duration::from_secs(180);
/// Time limit for one crash-test boot: a crash must be reported within seconds.
const CRASH_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Stage {
    name: String,
    passed: u64,
    failed: u64,
    problems: Vec<String>,
}

/// Runs a `cargo test` command, echoing its output and adding up its result lines.
fn cargo_test(stage: &mut Stage, mut command: Command) -> Result<(), String> {
    command.stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some((passed, failed)) = parse_cargo_result(&line) {
            stage.passed += passed;
            stage.failed += failed;
        }
    }
    let status = child
        .wait()
        .map_err(|error| format!("waiting for cargo: {error}"))?;
    if !status.success() {
        stage
            .problems
            .push(format!("cargo test exited with {status}"));
    }
    Ok(())
}

/// Parses `test result: ok. 4 passed; 0 failed; ...`.
fn parse_cargo_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        let index = rest.find(word)?;
        rest[..index].split_whitespace().last()?.parse().ok()
    };
    Some((number_before(" passed")?, number_before(" failed")?))
}

/// Parses the guest's closing `N passed, N failed` line.
fn parse_guest_result(output: &str) -> Option<(u64, u64)> {
    output.lines().rev().find_map(|line| {
        let line = line.trim();
        let (passed, failed) = line.split_once(" passed, ")?;
        let failed = failed.strip_suffix(" failed")?;
        Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
    })
}

/// The case names that `ktest!(a, b)` registrations in `source` name (comment lines
/// skipped).
fn registered_in(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
    {
        for (index, _) in line.match_indices("ktest!(") {
            let rest = &line[index + "ktest!(".len()..];
            let Some((list, _)) = rest.split_once(')') else {
                continue;
            };
            names.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|name| {
                        !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                    .map(String::from),
            );
        }
    }
    names
}

/// Every in-guest case registered in the kernel's sources (`kernel-bin/src/**.rs`),
/// sorted, so each suite boot can be checked to have run all of them.
fn registered_case_names() -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut directories = vec![workspace_root().join("kernel-bin/src")];
    while let Some(directory) = directories.pop() {
        let entries = std::fs::read_dir(&directory)
            .map_err(|error| format!("cannot list {}: {error}", directory.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|error| format!("cannot list {}: {error}", directory.display()))?
                .path();
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let source = std::fs::read_to_string(&path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                names.extend(registered_in(&source));
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The names of the cases the guest ran (`test NAME ... ok` or `... FAILED`), sorted.
fn run_case_names(output: &str) -> Vec<String> {
    let mut names: Vec<String> = output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("test ")?.split_once(" ... "))
        .map(|(name, _)| name.to_string())
        .collect();
    names.sort();
    names
}

/// What differs between the registered and the run case names (both sorted).
fn case_list_problems(registered: &[String], run: &[String]) -> Option<String> {
    let missing: Vec<&String> = registered.iter().filter(|n| !run.contains(n)).collect();
    let unexpected: Vec<&String> = run.iter().filter(|n| !registered.contains(n)).collect();
    let repeated = run.windows(2).any(|pair| pair[0] == pair[1]);
    (!missing.is_empty() || !unexpected.is_empty() || repeated).then(|| {
        format!(
            "registered cases not run: {missing:?}; run but not registered in the sources: \
             {unexpected:?}{}",
            if repeated { "; some ran twice" } else { "" }
        )
    })
}

/// The crash names the guest lists for an unknown `ktest.crash=` name, sorted.
fn listed_crash_names(output: &str) -> Option<Vec<String>> {
    let (_, list) = output.split_once("valid crash names:")?;
    let mut names: Vec<String> = list
        .lines()
        .next()?
        .split_whitespace()
        .map(String::from)
        .collect();
    names.sort();
    Some(names)
}

fn host_stage() -> Result<Stage, String> {
    let mut stage = Stage {
        name: "host unit tests".into(),
        ..Stage::default()
    };
    eprintln!("xtask: running host unit and property tests (cargo test --workspace)");
    let mut command = cargo();
    command.args(["test", "--workspace", "--exclude", "keel-kernel"]);
    cargo_test(&mut stage, command)?;
    // The mutex's experiment variants get the same unit tests, so they do not rot.
    for features in ["fifo-lfmutex", "strict-lfmutex"] {
        eprintln!("xtask: running keel-lfmutex's unit tests with the feature {features}");
        let mut command = cargo();
        command.args(["test", "--package", "keel-lfmutex", "--features", features]);
        cargo_test(&mut stage, command)?;
    }
    Ok(stage)
}

fn loom_stage() -> Result<Stage, String> {
    let mut stage = Stage {
        name: "loom models".into(),
        ..Stage::default()
    };
    let target = workspace_root().join("loom-target");
    // Each deliberately broken build runs only the model files aimed at the code it
    // breaks: the other files' models run unchanged in the first build already.
    let builds: [(Option<&str>, &[&str]); 5] = [
        (None, &[]),
        // The spinlock's, the wake-up queue's and the page allocator's handed-out
        // bits' broken variants touch disjoint code, so one build checks all three.
        (
            Some("broken-spinlock,broken-wakeup,broken-busy-wakeup,broken-handed-out"),
            &["spinlock", "wakeup", "handed_out"],
        ),
        // The mutex and the scheduler's block/wake handshake: disjoint code again.
        (
            Some("broken-lfmutex,broken-handshake"),
            &["lfmutex", "handshake"],
        ),
        (Some("broken-lfmutex-offer"), &["lfmutex"]),
        (Some("broken-lfmutex-spin"), &["lfmutex_spin"]),
    ];
    for (features, files) in builds {
        eprintln!(
            "xtask: running the loom models{} (--cfg loom, release, target dir loom-target)",
            features.map_or(String::new(), |f| format!(
                " of {} with the deliberately broken variant ({f}), which they must catch",
                files.join(", ")
            ))
        );
        let mut command = cargo();
        command
            .args(["test", "--package", "keel-loom-tests", "--release"])
            .env("RUSTFLAGS", "--cfg loom -C force-frame-pointers=yes")
            .env("CARGO_TARGET_DIR", &target);
        if let Some(features) = features {
            command.args(["--features", features]);
        }
        for file in files {
            command.args(["--test", file]);
        }
        cargo_test(&mut stage, command)?;
    }
    Ok(stage)
}

struct CrashCase {
    name: &'static str,
    /// vCPUs to boot with (`-smp`).
    smp: u32,
    expect: &'static [&'static str],
    /// Whether the output must hold exactly one crash report, whole and uninterrupted
    /// ([`single_report_problems`]).
    single_report: bool,
    /// The least number of backtrace lines the report must have (the faulting function
    /// and its callers; a folded run counts as one line).
    min_frames: usize,
    /// A recursive function whose repeated frames must be folded into one `xN` line
    /// ([`backtrace_problems`]).
    folded: Option<&'static str>,
}

const CRASH_CASES: &[CrashCase] = &[
    CrashCase {
        name: "null-read",
        smp: 1,
        min_frames: 3,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF)",
            "cr2=0x0000000000000000",
            "non-present page on a read access",
            "keel_kernel::ktest::crash::null_read",
            "keel_kernel::ktest::crash::run",
        ],
    },
    CrashCase {
        name: "stack-overflow",
        smp: 1,
        min_frames: 3,
        folded: Some("keel_kernel::ktest::crash::recurse"),
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF)",
            "(guard page: stack overflow)",
            "keel_kernel::ktest::crash::recurse",
        ],
    },
    CrashCase {
        name: "write-rodata",
        smp: 1,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF)",
            "protection violation on a write access",
            "keel_kernel::ktest::crash::write_rodata",
        ],
    },
    CrashCase {
        name: "execute-data",
        smp: 1,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF)",
            "protection violation on a instruction fetch access",
        ],
    },
    CrashCase {
        name: "invalid-opcode",
        smp: 1,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 6 invalid opcode (#UD)",
            "keel_kernel::ktest::crash::invalid_opcode",
        ],
    },
    CrashCase {
        name: "thread-stack-overflow",
        smp: 1,
        min_frames: 3,
        folded: Some("keel_kernel::ktest::crash::recurse"),
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF)",
            "non-present page on a write access",
            "(guard page: stack overflow)",
            "keel_kernel::ktest::crash::recurse",
        ],
    },
    CrashCase {
        name: "panic",
        smp: 1,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL PANIC: deliberate panic for the crash test",
            "keel_kernel::ktest::crash::deliberate_panic",
        ],
    },
    CrashCase {
        name: "thread-guard-rbp",
        smp: 1,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 6 invalid opcode (#UD)",
            "backtrace:",
            "keel_kernel::ktest::crash::fault_with_rbp_in_guard",
            "KEEL FATAL: halting with failure status",
        ],
    },
    CrashCase {
        name: "thread-guard-in-entry-stub",
        smp: 1,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF)",
            "non-present page on a write access (guard page: stack overflow)",
            "keel_isr_stubs+",
            "KEEL FATAL: halting with failure status",
        ],
    },
    CrashCase {
        name: "guard-set-on-another-cpu",
        smp: 2,
        min_frames: 1,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception 14 page fault (#PF) (error code 0x0) on CPU 1",
            "non-present page on a read access",
            "keel_kernel::ktest::shootdown::read_page",
            "KEEL FATAL: halting with failure status",
        ],
    },
    CrashCase {
        name: "two-cpus-crash-at-once",
        smp: 2,
        min_frames: 1,
        folded: None,
        single_report: true,
        expect: &["backtrace:", "halting with failure status"],
    },
    CrashCase {
        name: "two-cpus-fault-at-once",
        smp: 2,
        min_frames: 1,
        folded: None,
        single_report: true,
        expect: &[
            "KEEL FATAL: CPU exception 6 invalid opcode (#UD)",
            "keel_kernel::ktest::crash::fault_on_cpu",
            "KEEL FATAL: halting with failure status",
        ],
    },
    // An AP whose first stack access faults, before it has an IDT of its own (issue 11
    // item 6): without the early fault handler that is a silent triple fault.
    CrashCase {
        name: "ap-early-fault",
        smp: 2,
        min_frames: 0,
        folded: None,
        single_report: false,
        expect: &[
            "KEEL FATAL: CPU exception during application processor start-up (vector 14)",
            "KEEL FATAL: halting with failure status",
        ],
    },
];

/// The names of the deliberate crashes (`ktest.crash=NAME`) this runner checks.
pub fn crash_case_names() -> Vec<&'static str> {
    CRASH_CASES.iter().map(|case| case.name).collect()
}

/// What is wrong with the backtrace of the first report in `output`: fewer than
/// `min_frames` frame lines, or, for a `folded` function, its repeated frames not folded
/// into one `xN` line (the faulting frame #0 may name it once more).
fn backtrace_problems(output: &str, min_frames: usize, folded: Option<&str>) -> Vec<String> {
    let frames: Vec<&str> = output
        .lines()
        .skip_while(|line| line.trim_end() != "backtrace:")
        .skip(1)
        .map(str::trim)
        .take_while(|line| line.starts_with('#') || line.starts_with("..."))
        .collect();
    let mut problems = Vec::new();
    if frames.len() < min_frames {
        problems.push(format!(
            "{} backtrace line(s), want at least {min_frames}: {frames:?}",
            frames.len()
        ));
    }
    if let Some(function) = folded {
        let naming: Vec<&&str> = frames
            .iter()
            .filter(|line| line.contains(&format!("{function}+")))
            .collect();
        let folded_line = naming.iter().any(|line| {
            line.split_whitespace().any(|word| {
                word.strip_prefix('x')
                    .and_then(|count| count.parse::<u64>().ok())
                    .is_some_and(|count| count >= 2)
            })
        });
        if !folded_line || naming.len() > 2 {
            problems.push(format!(
                "the repeated {function} frames are not folded into one xN line: {naming:?}"
            ));
        }
    }
    problems
}

/// Whether a line opens a crash report (an exception's or a panic's).
fn is_report_header(line: &str) -> bool {
    line.starts_with("KEEL FATAL: CPU exception")
        || (line.starts_with("KEEL PANIC: ") && !line.starts_with("KEEL PANIC: halting"))
        || line.starts_with("KEEL FATAL: nested")
}

/// What is wrong with `output` as the output of one crash: it must hold exactly one
/// report header, followed by nothing but report lines (indented register, fault and
/// backtrace lines, `backtrace:`) up to the report's `halting with failure status`
/// line; an exception's report must have its register dump, and every report at least
/// one backtrace frame. Anything else in between is another CPU's output
/// interleaved, and a missing closing line is a cut report.
fn single_report_problems(output: &str) -> Vec<String> {
    let lines: Vec<&str> = output.lines().map(|line| line.trim_end()).collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&index| is_report_header(lines[index]))
        .collect();
    if headers.len() != 1 {
        return vec![format!(
            "{} report headers, want 1: {:?}",
            headers.len(),
            headers
                .iter()
                .map(|&index| lines[index])
                .collect::<Vec<_>>()
        )];
    }
    let header = lines[headers[0]];
    let mut problems = Vec::new();
    let mut closed = false;
    let (mut registers, mut frames) = (false, 0);
    for line in &lines[headers[0] + 1..] {
        if line.ends_with(": halting with failure status") {
            closed = true;
            break;
        }
        if *line == "backtrace:" {
            continue;
        }
        if !line.starts_with("  ") {
            problems.push(format!("not a report line inside the report: {line:?}"));
            continue;
        }
        registers |= line.contains(" rax=");
        frames += usize::from(line.trim_start().starts_with("#"));
    }
    if !closed {
        problems.push("the report has no closing \"halting with failure status\" line".into());
    }
    if header.starts_with("KEEL FATAL: CPU exception") && !registers {
        problems.push("the exception report has no register dump".into());
    }
    if frames == 0 {
        problems.push("the report has no backtrace frame".into());
    }
    problems
}

fn guest_stage() -> Result<Stage, String> {
    let mut stage = Stage {
        name: "in-guest tests".into(),
        ..Stage::default()
    };
    qemu::ensure_qemu()?;
    let registered = registered_case_names()?;
    let image = kernel::build(&BuildOptions {
        release: false,
        features: vec!["ktest".into()],
    })?;
    // The same suite on a kernel that differs only in the scheduling policy.
    let round_robin_image = kernel::build(&BuildOptions {
        release: false,
        features: vec!["ktest".into(), "sched-round-robin".into()],
    })?;
    // The fields after the memory size: QEMU's maxcpus (CPUs the MADT lists as not
    // enabled, which the kernel must not try to start, issue 11 item 10; `ktest.expect_cpus`
    // and "not every CPU came online" then check that exactly `smp` CPUs were listed and
    // started), and extra kernel arguments. `ktest.ap_stack_above_4g` puts every AP's
    // first stack above 4 GiB, beyond the boot code's tables (issue 11 item 6).
    let suites = [
        ("q35", &image, Machine::Q35, 1, "256M", None, None),
        (
            "q35-smp4-6G-high-ap-stacks",
            &image,
            Machine::Q35,
            4,
            "6G",
            None,
            Some("ktest.ap_stack_above_4g"),
        ),
        // The most CPUs `cargo xtask run --smp` is documented for.
        ("q35-smp8-1G", &image, Machine::Q35, 8, "1G", None, None),
        (
            "microvm-smp2",
            &image,
            Machine::Microvm,
            2,
            "256M",
            None,
            None,
        ),
        (
            "q35-smp2-maxcpus4-round-robin",
            &round_robin_image,
            Machine::Q35,
            2,
            "256M",
            Some(4),
            None,
        ),
    ];
    // One more boot runs the x2APIC path (issue 11 item 11): Debian 12's QEMU 7.2
    // offers no x2APIC under TCG, the QEMU 10 of bookworm-backports does. It is
    // downloaded and unpacked under target/ (never installed); where that cannot be
    // done (not root, no network) the boot is skipped with a message.
    let x2apic_qemu = match qemu::ensure_x2apic_qemu(&workspace_root().join("target/qemu-x2apic")) {
        Ok(root) => Some(root),
        Err(error) => {
            eprintln!("xtask: SKIPPING the x2APIC suite boot: {error}");
            None
        }
    };
    let x2apic_suite = x2apic_qemu.as_ref().map(|root| {
        (
            "q35-smp2-x2apic-qemu10",
            &image,
            Machine::Q35,
            2,
            "256M",
            None,
            None,
            Some(root.clone()),
        )
    });
    let suites = suites
        .into_iter()
        .map(|(label, image, machine, smp, memory, max_cpus, extra)| {
            (label, image, machine, smp, memory, max_cpus, extra, None)
        })
        .chain(x2apic_suite);
    // vda carries each boot's pattern to the next (seed = the boot's number); the
    // first boot also gets a disk the driver must refuse.
    let mut disks = ktest_disks(true)?;
    let boot_image = ktest_boot_image()?;
    let mut booted = 0;
    for (boot, (label, image, machine, smp, memory, max_cpus, extra, qemu_root)) in
        suites.enumerate()
    {
        eprintln!("xtask: booting the in-guest test suite on {label}");
        let mut append = vec![
            format!("ktest.expect_cpus={smp}"),
            format!("ktest.disk_seed={}", boot + 1),
            format!("ktest.disk_previous_seed={boot}"),
            format!("ktest.expect_failed_disks={}", disks.len() - 3),
            format!("ktest.expect_rng={}", u8::from(machine == Machine::Q35)),
            EXT2_MOUNT.into(),
        ];
        append.extend(extra.map(String::from));
        let wants_x2apic = qemu_root.is_some();
        let options = QemuOptions {
            machine,
            smp,
            max_cpus,
            memory: memory.into(),
            append,
            qemu_root,
            disks: disks.clone(),
            initrd: Some(boot_image.clone()),
            rng: machine == Machine::Q35,
            ..QemuOptions::default()
        };
        // Later boots: no short-queue disk (vda, vdb and the ext2 disk stay).
        if disks.len() == 4 {
            disks.remove(2);
        }
        booted = boot + 1;
        let outcome = qemu::boot_captured(image, &options, SUITE_LIMIT, Some("  | "))?;
        if wants_x2apic && !outcome.output.contains("apic:   x2APIC") {
            stage.failed += 1;
            stage
                .problems
                .push(format!("{label}: the kernel did not report x2APIC mode"));
        }
        eprintln!(
            "xtask: {label}: QEMU process time {:.3} s",
            outcome.elapsed.as_secs_f64()
        );
        // Every case registered in the sources must have run, each once: a
        // registration the linker dropped, or a case the runner skipped, fails here.
        if let Some(problem) = case_list_problems(&registered, &run_case_names(&outcome.output)) {
            stage.failed += 1;
            stage.problems.push(format!("{label}: {problem}"));
        }
        match (parse_guest_result(&outcome.output), outcome.status) {
            (Some((passed, 0)), Some(GUEST_SUCCESS_STATUS)) => {
                stage.passed += passed;
            }
            (counts, status) => {
                let (passed, failed) = counts.unwrap_or((0, 1));
                stage.passed += passed;
                stage.failed += failed.max(1);
                stage.problems.push(format!(
                    "{label}: suite ended with status {status:?} and counts {counts:?}"
                ));
            }
        }
    }
    match check_ext2_image(booted) {
        Ok(()) => {
            eprintln!(
                "xtask: the ext2 disk is clean (e2fsck -fn) and boot {booted}'s file reads back (debugfs)"
            );
            stage.passed += 1;
        }
        Err(problem) => {
            stage.failed += 1;
            stage.problems.push(problem);
        }
    }
    for case in CRASH_CASES {
        eprintln!(
            "xtask: crash test {}: the kernel must report it and fail",
            case.name
        );
        let options = QemuOptions {
            smp: case.smp,
            append: vec![format!("ktest.crash={}", case.name)],
            ..QemuOptions::default()
        };
        let outcome = qemu::boot_captured(&image, &options, CRASH_LIMIT, Some("  | "))?;
        let missing: Vec<&str> = case
            .expect
            .iter()
            .copied()
            .filter(|text| !outcome.output.contains(text))
            .collect();
        let mut report_problems = if case.single_report {
            single_report_problems(&outcome.output)
        } else {
            Vec::new()
        };
        report_problems.extend(backtrace_problems(
            &outcome.output,
            case.min_frames,
            case.folded,
        ));
        if outcome.status == Some(GUEST_FAILURE_STATUS)
            && missing.is_empty()
            && report_problems.is_empty()
        {
            stage.passed += 1;
            eprintln!(
                "xtask: crash test {} ok: reported and failed in {:.3} s",
                case.name,
                outcome.elapsed.as_secs_f64()
            );
        } else {
            stage.failed += 1;
            stage.problems.push(format!(
                "crash test {}: status {:?} (want {GUEST_FAILURE_STATUS}), missing {missing:?}, \
                 report problems {report_problems:?}",
                case.name, outcome.status
            ));
        }
    }
    // An unknown crash name must fail and list every registered crash, and that list
    // must be exactly the crash cases above (none registered without a host check).
    eprintln!("xtask: crash test with an unknown name: the kernel must list the valid ones");
    let options = QemuOptions {
        append: vec!["ktest.crash=no-such-crash".into()],
        ..QemuOptions::default()
    };
    let outcome = qemu::boot_captured(&image, &options, CRASH_LIMIT, Some("  | "))?;
    let mut expected: Vec<String> = CRASH_CASES.iter().map(|case| case.name.into()).collect();
    expected.sort();
    let listed = listed_crash_names(&outcome.output);
    if outcome.status == Some(GUEST_FAILURE_STATUS) && listed.as_ref() == Some(&expected) {
        stage.passed += 1;
        eprintln!("xtask: crash test with an unknown name ok: the valid names are listed");
    } else {
        stage.failed += 1;
        stage.problems.push(format!(
            "unknown crash name: status {:?} (want {GUEST_FAILURE_STATUS}), listed {listed:?}, \
             want {expected:?}",
            outcome.status
        ));
    }
    Ok(stage)
}

/// `cargo xtask test`.
pub fn run(arguments: &TestArguments) -> Result<(), String> {
    let (host, loom, guest) = (!arguments.no_host, !arguments.no_loom, !arguments.no_guest);
    if !(host || loom || guest) {
        return Err(
            "--no-host, --no-loom and --no-guest together leave nothing to run; drop one".into(),
        );
    }
    let mut stages = Vec::new();
    if host {
        stages.push(host_stage()?);
    }
    if loom {
        stages.push(loom_stage()?);
    }
    if guest {
        stages.push(guest_stage()?);
    }
    println!("\nxtask test summary:");
    let (mut passed, mut failed) = (0, 0);
    let mut ok = true;
    for stage in &stages {
        println!(
            "  {:<16} {:>5} passed, {:>3} failed",
            stage.name, stage.passed, stage.failed
        );
        for problem in &stage.problems {
            println!("    problem: {problem}");
        }
        passed += stage.passed;
        failed += stage.failed;
        ok &= stage.failed == 0 && stage.problems.is_empty();
    }
    println!("{passed} passed, {failed} failed");
    if ok {
        Ok(())
    } else {
        Err("some tests failed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_result_lines() {
        assert_eq!(
            parse_cargo_result(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out"
            ),
            Some((12, 0))
        );
        assert_eq!(
            parse_cargo_result("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(parse_cargo_result("running 3 tests"), None);
    }

    #[test]
    fn single_report_check_catches_cut_and_interleaved_reports() {
        let whole = "boot\nKEEL FATAL: CPU exception 6 invalid opcode (#UD) (error code 0x0) on CPU 0\n  \
                     rip=0x1 cs=0x8\n  rax=0x0 rbx=0x0 rcx=0x0\nbacktrace:\n  #0  0x1 f+0x1\n\
                     KEEL FATAL: halting with failure status\n";
        assert!(single_report_problems(whole).is_empty());
        let cut = "KEEL FATAL: CPU exception 6 invalid opcode (#UD)\n  rax=0x0\nbacktrace:\n";
        assert!(!single_report_problems(cut).is_empty());
        let interleaved = "KEEL FATAL: CPU exception 6 invalid opcode (#UD)\n  rax=0x0\n\
                           KEEL PANIC: boom at a.rs:1:1\nbacktrace:\n  #0 f\n\
                           KEEL PANIC: halting with failure status\n";
        assert!(!single_report_problems(interleaved).is_empty());
        let mixed_line = "KEEL PANIC: boom at a.rs:1:1\nbacktrace:\n  #0 f\nstray output\n\
                          KEEL PANIC: halting with failure status\n";
        assert!(!single_report_problems(mixed_line).is_empty());
    }

    #[test]
    fn backtrace_check_wants_callers_and_folded_recursion() {
        let folded = "KEEL FATAL: CPU exception 14\nbacktrace:\n  #0  0x1 k::recurse+0x27\n  \
                      #1  0x2 k::recurse+0x4e x881 (frames #1-#881)\n  #882 0x3 k::run+0xc6\n\
                      KEEL FATAL: halting with failure status\n";
        assert!(backtrace_problems(folded, 3, Some("k::recurse")).is_empty());
        let unfolded = "backtrace:\n  #0  0x1 k::recurse+0x27\n  #1  0x2 k::recurse+0x4e\n  \
                        #2  0x2 k::recurse+0x4e\n  #3  0x2 k::recurse+0x4e\nKEEL FATAL: halting\n";
        assert!(!backtrace_problems(unfolded, 3, Some("k::recurse")).is_empty());
        let empty = "backtrace:\nKEEL FATAL: halting with failure status\n";
        assert_eq!(backtrace_problems(empty, 1, None).len(), 1);
        assert!(backtrace_problems(empty, 0, None).is_empty());
    }

    #[test]
    fn compares_registered_with_run_case_names() {
        let source = "//! registered by `ktest!(name);`\nfn a() {}\nktest!(a);\n\
                      ktest!(b, c_d);\n    // ktest!(commented)\n";
        assert_eq!(registered_in(source), ["a", "b", "c_d"]);
        let output = "boot\ntest a ... ok (3 us)\n    note\ntest c_d ... FAILED: x at f:1\n";
        assert_eq!(run_case_names(output), ["a", "c_d"]);
        let registered: Vec<String> = ["a", "b", "c_d"].map(String::from).into();
        let problem = case_list_problems(&registered, &run_case_names(output));
        assert!(problem.is_some_and(|text| text.contains("[\"b\"]")));
        let all = "test a ... ok\ntest b ... ok\ntest c_d ... ok\n";
        assert_eq!(case_list_problems(&registered, &run_case_names(all)), None);
        let twice = "test a ... ok\ntest a ... ok\ntest b ... ok\ntest c_d ... ok\n";
        assert!(case_list_problems(&registered, &run_case_names(twice)).is_some());
    }

    #[test]
    fn parses_the_listed_crash_names() {
        let output = "ktest: unknown crash \"x\"; valid crash names: panic null-read\nnext\n";
        assert_eq!(
            listed_crash_names(output),
            Some(vec!["null-read".into(), "panic".into()])
        );
        assert_eq!(listed_crash_names("nothing"), None);
    }

    #[test]
    fn parses_guest_result_line() {
        let output = "boot\ntest a ... ok\n7 passed, 0 failed\n";
        assert_eq!(parse_guest_result(output), Some((7, 0)));
        assert_eq!(parse_guest_result("ktest: 3 passed, 2 failed"), None);
        assert_eq!(parse_guest_result("no summary"), None);
    }
}
