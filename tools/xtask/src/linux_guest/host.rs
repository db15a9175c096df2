//! Running host commands and installing the host packages the guest's build needs.

use std::path::Path;
use std::process::{Command, Stdio};

/// A host file and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct HostTool {
    /// The file that shows the package is there.
    pub path: &'static str,
    /// The Debian package to install when it is not.
    pub package: &'static str,
}

/// Runs `command`, returning an error that names `what` and quotes its stderr.
pub fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{what}: cannot start: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            crate::qemu::describe_status(output.status),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Installs the Debian packages of the `tools` that are missing (as root, with apt-get,
/// retrying after `apt-get update`), like `qemu::ensure_qemu` does for QEMU.
pub fn ensure_host_tools(tools: &[HostTool]) -> Result<(), String> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|tool| !Path::new(tool.path).exists())
        .map(|tool| tool.package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "building the Linux guest needs {list}. Install with:\n  sudo apt-get install -y {list}"
        ));
    }
    eprintln!("xtask: linux-guest: installing host packages with apt-get: {list}");
    let install = |update: bool| -> bool {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if install(false) || install(true) {
        Ok(())
    } else {
        Err(format!("installing {list} with apt-get failed"))
    }
}

pub fn create_directory(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))
}

pub fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|error| {
        format!(
            "cannot copy {} to {}: {error}",
            from.display(),
            to.display()
        )
    })
}
