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
//!
//! The command line is parsed with clap ([`cli`]); every subcommand has a `--help` that
//! also lists what is read from the workspace at run time: the Cargo features of
//! `keel-kernel` (from `kernel-bin/Cargo.toml`, [`features`]) and the bench names (the
//! files of `benches/benches/`).

mod bench;
mod bench_blk;
mod cli;
mod features;
mod image;
mod imports;
mod kernel;
mod kernel_args;
mod linux_guest;
mod qemu;
mod symbols;
mod test;

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::parse() {
        Ok(command) => command,
        Err(error) => {
            // Help and version go to stdout with status 0; usage errors to stderr with 2.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    let result = match command {
        cli::Command::Build(arguments) => arguments.build_options().and_then(|options| {
            let path = kernel::build(&options)?;
            println!("{}", path.display());
            Ok(())
        }),
        cli::Command::Run(arguments) => qemu::run_command(arguments),
        cli::Command::Test(arguments) => test::run(&arguments),
        cli::Command::Bench(arguments) => bench::run(&arguments),
        cli::Command::Image(arguments) => image::pack(&arguments.directory, &arguments.output),
        cli::Command::Imports(arguments) => imports::run(&arguments.files, arguments.strict),
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
