//! Building the kernel ELF: `cargo build` of `keel-kernel`, then the symbol table.

use crate::{cargo, symbols, workspace_root};
use std::path::PathBuf;

/// How to build the kernel.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Release profile instead of dev.
    pub release: bool,
    /// Cargo features of `keel-kernel`.
    pub features: Vec<String>,
}

impl BuildOptions {
    fn image_name(&self) -> String {
        let mut name = String::from("keel-kernel");
        let mut features = self.features.clone();
        features.sort();
        features.dedup();
        for feature in features {
            name.push('-');
            name.push_str(&feature);
        }
        if self.release {
            name.push_str("-release");
        }
        name + ".elf"
    }
}

/// Builds the kernel and returns the path of the finished ELF.
pub fn build(options: &BuildOptions) -> Result<PathBuf, String> {
    let root = workspace_root();
    eprintln!(
        "xtask: building the kernel ({} profile{}{})",
        if options.release { "release" } else { "dev" },
        if options.features.is_empty() {
            ""
        } else {
            ", features "
        },
        options.features.join(",")
    );
    let mut command = cargo();
    command.args(["build", "--package", "keel-kernel", "--bin", "keel-kernel"]);
    if options.release {
        command.arg("--release");
    }
    if !options.features.is_empty() {
        command.args(["--features", &options.features.join(",")]);
    }
    let status = command
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err("building the kernel failed".into());
    }
    let built = root
        .join("target")
        .join(if options.release { "release" } else { "debug" })
        .join("keel-kernel");
    let mut image = std::fs::read(&built)
        .map_err(|error| format!("cannot read {}: {error}", built.display()))?;
    let count = symbols::embed(&mut image)?;
    let output_directory = root.join("target").join("keel");
    std::fs::create_dir_all(&output_directory)
        .map_err(|error| format!("cannot create {}: {error}", output_directory.display()))?;
    let output = output_directory.join(options.image_name());
    std::fs::write(&output, image)
        .map_err(|error| format!("cannot write {}: {error}", output.display()))?;
    eprintln!(
        "xtask: kernel ready with {count} symbols: {}",
        output.display()
    );
    Ok(output)
}
