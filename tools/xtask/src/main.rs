//! `cargo xtask`: Keel's host tool.
//!
//! - `cargo xtask build` builds the kernel and writes its symbol table into it, printing
//!   the path of the finished ELF (`target/keel/keel-kernel.elf`).
//! - `cargo xtask run` builds and boots it in QEMU with the serial console on the
//!   terminal (q35 by default; `--machine microvm`, `--smp`, `--memory`, `--accel`,
//!   `--gdb`, extra kernel arguments after `--`), then reports QEMU's whole process time.
//! - `cargo xtask test` runs the host unit tests of every crate, the loom models, and the
//!   in-guest test suite and crash tests; any failure makes it exit non-zero.
//! - `cargo xtask bench NAME` runs one criterion bench and prints ours beside the peers.

mod bench;
mod kernel;
mod qemu;
mod symbols;
mod test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--release] [--features F,..] [--ktest]
        build the kernel; prints the path of the ELF to boot
  run   [--release] [--features F,..] [--machine q35|microvm] [--smp N]
        [--max-cpus N] [--memory SIZE] [--accel tcg|kvm] [--gdb] [--timeout SECONDS] [-- KERNEL ARGS..]
        build the kernel and boot it in QEMU, serial console on this terminal
  test  [--no-host] [--no-loom] [--no-guest]
        host unit tests, loom models, in-guest tests and crash tests
  bench NAME
        run one criterion bench (pagealloc, heap, ...) and print ours vs peers
";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = arguments.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let result = match command.as_str() {
        "build" => kernel::BuildOptions::parse(rest).and_then(|options| {
            let path = kernel::build(&options)?;
            println!("{}", path.display());
            Ok(())
        }),
        "run" => qemu::run_command(rest),
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of `tools/`).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .expect("tools/xtask lies two levels below the workspace root")
        .to_path_buf()
}

/// The `cargo` that runs us.
pub fn cargo() -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(workspace_root());
    command
}
