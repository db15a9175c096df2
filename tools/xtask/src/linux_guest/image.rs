//! Building the Linux guest's files under `target/linux-guest/`: the kernel and modules
//! from Debian's package (downloaded and unpacked, never installed), and the initramfs.

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

/// A host file and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct HostTool {
    /// The file that shows the package is there.
    pub path: &'static str,
    /// The Debian package to install when it is not.
    pub package: &'static str,
}

/// What building the initramfs needs on the host.
pub const INITRAMFS_TOOLS: [HostTool; 4] = [
    HostTool {
        path: "/bin/busybox",
        package: "busybox-static",
    },
    HostTool {
        path: "/usr/bin/cpio",
        package: "cpio",
    },
    HostTool {
        path: "/usr/bin/gcc",
        package: "gcc",
    },
    HostTool {
        path: "/usr/lib/x86_64-linux-gnu/libc.a",
        package: "libc6-dev",
    },
];

/// Runs `command`, returning an error that names `what` and quotes its stderr.
fn run(command: &mut Command, what: &str) -> Result<String, String> {
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

fn is_root() -> bool {
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

fn create_directory(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|error| {
        format!(
            "cannot copy {} to {}: {error}",
            from.display(),
            to.display()
        )
    })
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

/// Whether `output` exists and is newer than every one of `inputs`.
fn up_to_date(output: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
    };
    let Some(built) = modified(output) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| modified(input).is_some_and(|time| time <= built))
}

/// Builds `directory/initramfs.cpio` (unless it is newer than its inputs): busybox,
/// `tools/linux-guest/init` as `/init`, `tools/linux-guest/blkbench.c` built with
/// `gcc -static`, the modules of `kernel` and their load order, `/dev/console`; packed
/// with `cpio -o -H newc`.
pub fn ensure_initramfs(
    directory: &Path,
    kernel: &Kernel,
    sources: &Path,
) -> Result<PathBuf, String> {
    let output = directory.join("initramfs.cpio");
    let init = sources.join("init");
    let blkbench = sources.join("blkbench.c");
    let mut inputs = vec![init.clone(), blkbench.clone(), kernel.vmlinuz.clone()];
    inputs.extend(
        MODULES
            .iter()
            .map(|module| kernel.modules.join(format!("{module}.ko"))),
    );
    if up_to_date(&output, &inputs) {
        return Ok(output);
    }
    ensure_host_tools(&INITRAMFS_TOOLS)?;
    eprintln!(
        "xtask: linux-guest: building {} (busybox-static, blkbench built with gcc -static, \
         the virtio modules of {})",
        output.display(),
        kernel.package
    );
    let root = directory.join("initramfs.root");
    let _ = std::fs::remove_dir_all(&root);
    for subdirectory in ["bin", "dev", "proc", "sys", "lib/modules"] {
        create_directory(&root.join(subdirectory))?;
    }
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    let applets = run(Command::new("/bin/busybox").arg("--list"), "busybox --list")?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "busybox")
    {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|error| format!("cannot link busybox applet {applet}: {error}"))?;
    }
    copy(&init, &root.join("init"))?;
    run(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(root.join("bin/blkbench"))
            .arg(&blkbench),
        &format!("gcc -static {}", blkbench.display()),
    )?;
    let dependencies = |name: &str| -> Result<Vec<String>, String> {
        let path = kernel.modules.join(format!("{name}.ko"));
        let bytes = std::fs::read(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        module_dependencies(&bytes).map_err(|error| format!("{}: {error}", path.display()))
    };
    let order = load_order(&MODULES, &dependencies)?;
    for module in &order {
        copy(
            &kernel.modules.join(format!("{module}.ko")),
            &root.join("lib/modules").join(format!("{module}.ko")),
        )?;
    }
    std::fs::write(root.join("lib/modules/load-order"), order.join("\n") + "\n")
        .map_err(|error| format!("cannot write the module load order: {error}"))?;
    run(
        Command::new("mknod")
            .args(["-m", "600"])
            .arg(root.join("dev/console"))
            .args(["c", "5", "1"]),
        "mknod dev/console (needs root)",
    )?;
    let mut files = Vec::new();
    list_tree(&root, Path::new("."), &mut files);
    files.sort();
    let partial = directory.join("initramfs.cpio.partial");
    let archive = std::fs::File::create(&partial)
        .map_err(|error| format!("cannot create {}: {error}", partial.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(archive)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start cpio: {error}"))?;
    {
        use std::io::Write;
        let mut stdin = cpio.stdin.take().ok_or("cpio has no stdin")?;
        for file in &files {
            writeln!(stdin, "{}", file.display())
                .map_err(|error| format!("writing cpio's file list: {error}"))?;
        }
    }
    let finished = cpio
        .wait_with_output()
        .map_err(|error| format!("waiting for cpio: {error}"))?;
    if !finished.status.success() {
        return Err(format!(
            "cpio -o -H newc failed: {}",
            String::from_utf8_lossy(&finished.stderr).trim()
        ));
    }
    std::fs::rename(&partial, &output)
        .map_err(|error| format!("cannot move {}: {error}", partial.display()))?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(output)
}

/// Every path under `root` (directories too), relative, as `./a`, `./a/b`.
fn list_tree(root: &Path, relative: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(relative)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = relative.join(entry.file_name());
        found.push(path.clone());
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            list_tree(root, &path, found);
        }
    }
}
