//! The command line of `cargo xtask`, parsed with clap's derive API.
//!
//! The static parts of every `--help` are the doc comments below; the parts read from
//! the workspace when xtask runs (the kernel's Cargo features, the bench names) and the
//! kernel-argument table ([`crate::kernel_args`]) are attached in [`parse`].

use crate::kernel::BuildOptions;
use crate::qemu::{Accel, Machine};
use crate::{bench, features, kernel_args, qemu};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Keel's host tool: build, boot, test and bench the Keel unikernel.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One `cargo xtask` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the kernel and write its symbol table into it; prints the path of the ELF
    /// to boot (target/keel/keel-kernel[-FEATURES][-release].elf).
    Build(BuildArguments),
    /// Build the kernel and boot it in QEMU (TCG), serial console on this terminal;
    /// the guest's exit status becomes ours.
    Run(RunArguments),
    /// Run the host unit tests, the loom models, and the in-guest test suites and crash
    /// tests; closes with one "N passed, N failed" line and fails on any failure.
    Test(TestArguments),
    /// Run one criterion bench of benches/ and print Keel beside its peers.
    Bench(BenchArguments),
    /// Pack a directory into a boot image (a cpio newc archive, made by the host's
    /// cpio) that the kernel unpacks into / at boot (`run --files DIR` does both).
    Image(ImageArguments),
    /// List which of an ELF object's imports (undefined dynamic symbols, with their
    /// versions) Keel's libc provides and which it lacks.
    Imports(ImportsArguments),
}

/// `cargo xtask imports`.
#[derive(Debug, Args)]
pub struct ImportsArguments {
    /// The ELF objects (shared objects, PIEs) to check.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// Fail if any strong import is missing.
    #[arg(long)]
    pub strict: bool,
}

/// `cargo xtask image`.
#[derive(Debug, Args)]
pub struct ImageArguments {
    /// The directory to pack.
    pub directory: std::path::PathBuf,
    /// The archive to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: std::path::PathBuf,
}

/// How to build the kernel (shared by `build` and `run`).
#[derive(Debug, Args)]
pub struct BuildArguments {
    /// Build with the release profile (optimized) instead of dev.
    #[arg(long)]
    release: bool,
    /// Cargo features of keel-kernel, comma-separated or repeated (listed below).
    #[arg(long, value_name = "F,..", value_delimiter = ',')]
    features: Vec<String>,
    /// Build the in-guest test kernel (the same as --features ktest).
    #[arg(long)]
    ktest: bool,
}

impl BuildArguments {
    /// The build these arguments ask for, with the features checked against
    /// kernel-bin/Cargo.toml.
    pub fn build_options(&self) -> Result<BuildOptions, String> {
        let mut features: Vec<String> = self
            .features
            .iter()
            .filter(|feature| !feature.is_empty())
            .cloned()
            .collect();
        if self.ktest {
            features.push("ktest".into());
        }
        features::check(&features)?;
        Ok(BuildOptions {
            release: self.release,
            features,
        })
    }
}

/// `cargo xtask run`.
#[derive(Debug, Args)]
pub struct RunArguments {
    #[command(flatten)]
    pub build: BuildArguments,
    /// The QEMU machine.
    #[arg(long, value_enum, default_value = "q35")]
    pub machine: Machine,
    /// Number of vCPUs (1..=255).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub smp: u32,
    /// QEMU's maxcpus: CPUs the MADT lists as hot-pluggable but not enabled, which the
    /// kernel must not start (at least --smp, at most 255).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=255))]
    pub max_cpus: Option<u32>,
    /// Guest memory: a number with M (MiB) or G (GiB), e.g. 256M or 2G; a bare number is
    /// MiB. The least the kernel boots with depends on --smp and --ktest (see below).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = qemu::parse_memory)]
    pub memory: qemu::MemorySize,
    /// The accelerator (the project's build machines have only a paravirtualised KVM,
    /// on which the kernel fails: use tcg there).
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// Start paused with QEMU's gdb stub on port 1234.
    #[arg(long)]
    pub gdb: bool,
    /// Kill QEMU after this many seconds (default: no limit).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Attach a raw disk image as virtio-blk (PCI on q35, MMIO on microvm); `,ro`
    /// attaches it read-only. Repeat for several disks (vda, vdb, ... in order).
    #[arg(long = "disk", value_name = "FILE[,ro]", value_parser = qemu::parse_disk)]
    pub disks: Vec<qemu::Disk>,
    /// Pack DIR into a boot image (target/keel/files.cpio) and attach it (-initrd):
    /// the kernel unpacks it into / at boot.
    #[arg(long, value_name = "DIR")]
    pub files: Option<std::path::PathBuf>,
    /// Attach a virtio-rng device (`-device virtio-rng-pci`; q35 only). `/dev/random`
    /// uses it on a CPU without RDRAND. `--ktest` attaches one on q35 anyway.
    #[arg(long)]
    pub rng: bool,
    /// Kernel arguments, after `--` (listed below), for example `-- app=lockbench
    /// log=debug`.
    #[arg(last = true, value_name = "KERNEL ARGS")]
    pub kernel_arguments: Vec<String>,
}

/// `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArguments {
    /// Skip the host unit and property tests (cargo test --workspace).
    #[arg(long)]
    pub no_host: bool,
    /// Skip the loom models (--cfg loom, target dir loom-target).
    #[arg(long)]
    pub no_loom: bool,
    /// Skip the in-guest test suites and crash tests (QEMU boots).
    #[arg(long)]
    pub no_guest: bool,
}

/// `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArguments {
    /// The bench to run (a file of benches/benches/, listed below).
    pub name: Option<String>,
    /// A short run for a quick look: criterion's --warm-up-time 1 --measurement-time 2
    /// (noisier numbers; not for papers/).
    #[arg(long)]
    pub quick: bool,
    /// Arguments for criterion, after `--` (for example `-- --sample-size 20` or a
    /// filter such as `heap/alloc`).
    #[arg(last = true, value_name = "CRITERION ARGS")]
    pub criterion_arguments: Vec<String>,
}

/// The text after `build --help` and `run --help`: the kernel's Cargo features.
fn features_help() -> String {
    format!(
        "Cargo features of keel-kernel (read from kernel-bin/Cargo.toml):\n{}",
        features::help_text()
    )
}

/// Parses the process's arguments; `Err` carries clap's help, version or usage error.
pub fn parse() -> Result<Command, clap::Error> {
    let features = features_help();
    let benches = bench::names();
    let bench_help = if benches.is_empty() {
        "Benches: none found in benches/benches/".to_string()
    } else {
        format!(
            "Benches (benches/benches/*.rs): {}\nIn the guest: blk (Keel's virtio-blk reads beside a Linux guest's, \
             same QEMU, same disk; needs root the first time to fetch Debian's kernel)",
            benches.join(", ")
        )
    };
    let run_help = format!(
        "{features}\n{}\n{}",
        kernel_args::help_text(),
        qemu::memory_help()
    );
    let command = Cli::command()
        .mut_subcommand("build", |command| command.after_help(features.clone()))
        .mut_subcommand("run", |command| command.after_help(run_help))
        .mut_subcommand("bench", |command| command.after_help(bench_help));
    let matches = command.try_get_matches()?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(cli.command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(arguments: &[&str]) -> Result<Command, clap::Error> {
        let matches = Cli::command().try_get_matches_from(
            std::iter::once("cargo xtask").chain(arguments.iter().copied()),
        )?;
        Ok(Cli::from_arg_matches(&matches)?.command)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_help() {
        for command in ["build", "run", "test", "bench"] {
            for flag in ["--help", "-h"] {
                let error = parse_from(&[command, flag]).expect_err("help is an early exit");
                assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
            }
        }
    }

    #[test]
    fn the_documented_commands_parse() {
        let Command::Run(run) = parse_from(&[
            "run",
            "--release",
            "--smp",
            "4",
            "--",
            "app=lockbench",
            "lockbench.threads=8",
        ])
        .unwrap() else {
            panic!("not run");
        };
        assert!(run.build.release);
        assert_eq!(run.smp, 4);
        assert_eq!(
            run.kernel_arguments,
            ["app=lockbench", "lockbench.threads=8"]
        );
        let Command::Test(test) = parse_from(&["test", "--no-host", "--no-loom"]).unwrap() else {
            panic!("not test");
        };
        assert!(test.no_host && test.no_loom && !test.no_guest);
        let Command::Bench(bench) = parse_from(&["bench", "heap"]).unwrap() else {
            panic!("not bench");
        };
        assert_eq!(bench.name.as_deref(), Some("heap"));
        let Command::Build(build) = parse_from(&[
            "build",
            "--features",
            "ktest,sched-round-robin",
            "--features",
            "",
        ])
        .unwrap() else {
            panic!("not build");
        };
        assert_eq!(
            build.build_options().unwrap().features,
            ["ktest", "sched-round-robin"]
        );
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(parse_from(&["run", "--smp", "0"]).is_err());
        assert!(parse_from(&["run", "--machine", "pc"]).is_err());
        assert!(parse_from(&["run", "--memory", "lots"]).is_err());
        assert!(parse_from(&["run", "app=lockbench"]).is_err());
        let Command::Build(build) =
            parse_from(&["build", "--features", "no-such-feature"]).unwrap()
        else {
            panic!("not build");
        };
        assert!(build.build_options().is_err());
    }
}
