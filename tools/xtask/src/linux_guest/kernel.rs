//! The kernel and its virtio modules, from Debian's package behind `linux-image-amd64`
//! (downloaded with `apt-get download` and unpacked with `dpkg -x`, never installed).

use super::host::{copy, create_directory, run};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The virtio modules the guest loads (the order is computed from their `depends=`).
pub const MODULES: [&str; 7] = [
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
];

/// Debian's metapackage that names the current kernel package.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";

/// The kernel package behind `linux-image-amd64` (`linux-image-6.1.0-N-amd64` on
/// Debian 12), from `apt-cache depends`.
fn kernel_package_name() -> Result<String, String> {
    let mut output = run(
        Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]),
        "apt-cache depends linux-image-amd64",
    )?;
    if !output.contains("Depends: linux-image-") {
        // The package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(Stdio::null())
            .status();
        output = run(
            Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]),
            "apt-cache depends linux-image-amd64",
        )?;
    }
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-") && name.ends_with("-amd64"))
        .map(String::from)
        .ok_or(format!(
            "apt-cache depends {KERNEL_METAPACKAGE} names no linux-image-*-amd64 package:\n{output}"
        ))
}

/// The unpacked kernel: `vmlinuz` and the [`MODULES`] `.ko` files.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The Debian package it came from (`linux-image-6.1.0-57-amd64`).
    pub package: String,
    /// `boot/vmlinuz-*`, bootable with QEMU's `-kernel`.
    pub vmlinuz: PathBuf,
    /// A directory holding `NAME.ko` for each of [`MODULES`].
    pub modules: PathBuf,
}

/// The kernel cached in `directory/kernel/`, downloading and unpacking it first when it
/// is not there. A cached kernel is used without asking apt (delete the directory to
/// pick up a newer one).
pub fn ensure_kernel(directory: &Path) -> Result<Kernel, String> {
    let kernel_directory = directory.join("kernel");
    let stamp = kernel_directory.join("package");
    let cached = |package: String| Kernel {
        package,
        vmlinuz: kernel_directory.join("vmlinuz"),
        modules: kernel_directory.join("modules"),
    };
    if let Ok(package) = std::fs::read_to_string(&stamp) {
        return Ok(cached(package.trim().to_string()));
    }
    let package = kernel_package_name()?;
    let download = directory.join("download");
    let _ = std::fs::remove_dir_all(&download);
    let _ = std::fs::remove_dir_all(&kernel_directory);
    create_directory(&download)?;
    eprintln!(
        "xtask: linux-guest: downloading {package} (behind {KERNEL_METAPACKAGE}) with \
         apt-get download, to unpack it with dpkg -x (not installing it)"
    );
    run(
        Command::new("apt-get")
            // The download directory belongs to root; apt's _apt user could not write it.
            .args(["-o", "APT::Sandbox::User=root", "download", "-q", &package])
            .current_dir(&download),
        &format!("apt-get download {package}"),
    )?;
    let deb = std::fs::read_dir(&download)
        .map_err(|error| format!("cannot read {}: {error}", download.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .ok_or(format!(
            "apt-get download left no .deb in {}",
            download.display()
        ))?;
    let unpacked = download.join("root");
    run(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked),
        &format!("dpkg -x {}", deb.display()),
    )?;
    let staging = directory.join("kernel.partial");
    let _ = std::fs::remove_dir_all(&staging);
    create_directory(&staging.join("modules"))?;
    let vmlinuz = only_entry(&unpacked.join("boot"), "vmlinuz-")?;
    copy(&vmlinuz, &staging.join("vmlinuz"))?;
    let release_directory = only_entry(&unpacked.join("lib/modules"), "")?;
    let mut found = Vec::new();
    find_files(&release_directory.join("kernel"), &mut found);
    for module in MODULES {
        let file_name = format!("{module}.ko");
        let source = found
            .iter()
            .find(|path| path.file_name().is_some_and(|name| *name == *file_name))
            .ok_or(format!(
                "{package} has no {file_name} under {}",
                release_directory.display()
            ))?;
        copy(source, &staging.join("modules").join(&file_name))?;
    }
    std::fs::write(staging.join("package"), format!("{package}\n"))
        .map_err(|error| format!("cannot write in {}: {error}", staging.display()))?;
    std::fs::rename(&staging, &kernel_directory)
        .map_err(|error| format!("cannot move {}: {error}", staging.display()))?;
    // The unpacked package is about 400 MB; only vmlinuz and seven modules are kept.
    let _ = std::fs::remove_dir_all(&download);
    Ok(cached(package))
}

/// The one entry of `directory` whose name starts with `prefix`.
fn only_entry(directory: &Path, prefix: &str) -> Result<PathBuf, String> {
    let entries: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(|error| format!("cannot read {}: {error}", directory.display()))?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect();
    match entries.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(format!(
            "expected one {prefix}* in {}, found {entries:?}",
            directory.display()
        )),
    }
}

fn find_files(directory: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_files(&path, found);
        } else {
            found.push(path);
        }
    }
}

/// The `depends=` list in a kernel module's `.modinfo` section.
pub fn module_dependencies(module: &[u8]) -> Result<Vec<String>, String> {
    let elf = goblin::elf::Elf::parse(module).map_err(|error| format!("not an ELF: {error}"))?;
    let section = elf
        .section_headers
        .iter()
        .find(|header| elf.shdr_strtab.get_at(header.sh_name) == Some(".modinfo"))
        .ok_or("no .modinfo section")?;
    let range = section.file_range().ok_or("empty .modinfo section")?;
    let modinfo = module.get(range).ok_or(".modinfo lies outside the file")?;
    Ok(modinfo
        .split(|&byte| byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.strip_prefix("depends="))
        .flat_map(|list| list.split(','))
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect())
}

/// The modules in an order that loads every module after its dependencies (keeping the
/// given order otherwise); `dependencies(name)` lists what `name` needs.
pub fn load_order(
    modules: &[&str],
    dependencies: &dyn Fn(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        modules: &[&str],
        dependencies: &dyn Fn(&str) -> Result<Vec<String>, String>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        if path.iter().any(|open| open == name) {
            return Err(format!("modules depend on each other in a cycle: {path:?}"));
        }
        if !modules.contains(&name) {
            return Err(format!(
                "{} needs module {name}, which the initramfs does not carry",
                path.last().map_or("?", String::as_str)
            ));
        }
        path.push(name.to_string());
        for dependency in dependencies(name)? {
            visit(&dependency, modules, dependencies, order, path)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for module in modules {
        visit(module, modules, dependencies, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let dependencies = |name: &str| -> Result<Vec<String>, String> {
            Ok(match name {
                "virtio" => vec!["virtio_ring".into()],
                "virtio_pci" => vec![
                    "virtio_ring".into(),
                    "virtio_pci_modern_dev".into(),
                    "virtio_pci_legacy_dev".into(),
                    "virtio".into(),
                ],
                "virtio_mmio" | "virtio_blk" => vec!["virtio".into(), "virtio_ring".into()],
                _ => Vec::new(),
            })
        };
        let order = load_order(&MODULES, &dependencies).unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_mmio",
                "virtio_blk"
            ]
        );
        let missing = |_: &str| -> Result<Vec<String>, String> { Ok(vec!["failover".into()]) };
        assert!(
            load_order(&["virtio_net"], &missing)
                .unwrap_err()
                .contains("failover")
        );
    }
}
