//! The guest's initramfs: busybox, `/init`, `blkbench` and the virtio modules.

use super::host::{HostTool, copy, create_directory, ensure_host_tools, run};
use super::kernel::{Kernel, MODULES, load_order, module_dependencies};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
