//! `cargo xtask image DIR -o FILE`: the boot image, a cpio "newc" archive of DIR made
//! by the host's own `cpio` (the format Linux's initramfs uses), which the kernel
//! unpacks into `/` at boot (`keel_vfs::cpio`). `cargo xtask run --files DIR` packs
//! and attaches one in a step (QEMU's `-initrd`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Packs `directory` into `output` with `find . -print0 | cpio --null -o -H newc`,
/// run inside `directory` (so the archive's names are relative to it).
pub fn pack(directory: &Path, output: &Path) -> Result<(), String> {
    if !directory.is_dir() {
        return Err(format!("{}: not a directory", directory.display()));
    }
    let find = Command::new("find")
        .args([".", "-print0"])
        .current_dir(directory)
        .output()
        .map_err(|error| format!("cannot run find: {error}"))?;
    if !find.status.success() {
        return Err(format!(
            "find in {} failed: {}",
            directory.display(),
            String::from_utf8_lossy(&find.stderr).trim()
        ));
    }
    let mut cpio = Command::new("cpio")
        .args(["--null", "--quiet", "-o", "-H", "newc"])
        .current_dir(directory)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            format!("cannot run cpio ({error}): install it with apt-get install cpio")
        })?;
    cpio.stdin
        .take()
        .ok_or("cpio has no stdin")?
        .write_all(&find.stdout)
        .map_err(|error| format!("writing to cpio: {error}"))?;
    let archive = cpio
        .wait_with_output()
        .map_err(|error| format!("waiting for cpio: {error}"))?;
    if !archive.status.success() {
        return Err(format!(
            "cpio failed: {}",
            String::from_utf8_lossy(&archive.stderr).trim()
        ));
    }
    if let Some(parent) = output
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    std::fs::write(output, &archive.stdout)
        .map_err(|error| format!("cannot write {}: {error}", output.display()))?;
    eprintln!(
        "xtask: boot image {} ({} bytes) from {}",
        output.display(),
        archive.stdout.len(),
        directory.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_directory_as_newc_and_refuses_a_file() {
        let directory =
            std::env::temp_dir().join(format!("keel-xtask-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(directory.join("etc")).unwrap();
        std::fs::write(directory.join("etc/motd"), b"hi\n").unwrap();
        let output = directory.with_extension("cpio");
        pack(&directory, &output).unwrap();
        let archive = std::fs::read(&output).unwrap();
        assert!(archive.starts_with(b"070701"), "not newc");
        assert!(archive.windows(8).any(|window| window == b"etc/motd"));
        assert!(archive.windows(10).any(|window| window == b"TRAILER!!!"));
        assert!(pack(&output, &output).is_err());
        std::fs::remove_dir_all(&directory).unwrap();
        std::fs::remove_file(&output).unwrap();
    }
}
