//! The boot image: archives made by the host's `cpio -o -H newc` unpack into ramfs
//! exactly; malformed ones are errors, never panics.

mod common;

use common::context;
use keel_vfs::cpio::{CpioError, unpack};
use keel_vfs::{FileType, OpenFlags};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A fresh directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "keel-vfs-cpio-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A tree with every kind of entry the unpacker creates.
fn fill(root: &Path) {
    std::fs::write(root.join("hello.txt"), b"hello from the boot image\n").unwrap();
    std::fs::create_dir_all(root.join("etc/deep/deeper")).unwrap();
    std::fs::write(root.join("etc/deep/deeper/data.bin"), pattern(70_000)).unwrap();
    std::fs::write(root.join("etc/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../hello.txt", root.join("etc/link-to-hello")).unwrap();
    std::fs::write(root.join("etc/original"), b"linked twice").unwrap();
    std::fs::hard_link(root.join("etc/original"), root.join("etc/second-name")).unwrap();
}

/// `find . | cpio -o -H newc` in `root`, or `None` (with a message) without cpio.
fn archive_of(root: &Path) -> Option<Vec<u8>> {
    let find = Command::new("find")
        .args([".", "-print0"])
        .current_dir(root)
        .output()
        .unwrap();
    let mut cpio = match Command::new("cpio")
        .args(["--null", "--quiet", "-o", "-H", "newc"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            eprintln!("SKIPPED: no cpio on this machine ({error}); apt-get install cpio");
            return None;
        }
    };
    use std::io::Write;
    cpio.stdin.take().unwrap().write_all(&find.stdout).unwrap();
    let output = cpio.wait_with_output().unwrap();
    assert!(output.status.success(), "cpio failed");
    Some(output.stdout)
}

fn read_all(ctx: &common::Ctx, path: &[u8]) -> Vec<u8> {
    let fd = ctx.open(path, OpenFlags::O_RDONLY, 0).unwrap();
    let mut contents = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let count = ctx.read(fd, &mut buffer).unwrap();
        if count == 0 {
            break;
        }
        contents.extend_from_slice(&buffer[..count]);
    }
    ctx.close(fd).unwrap();
    contents
}

#[test]
fn an_archive_made_by_cpio_unpacks_exactly() {
    let root = scratch("exact");
    fill(&root);
    let Some(archive) = archive_of(&root) else {
        return;
    };
    let ctx = context();
    let report = unpack(&ctx, &archive).unwrap();
    assert_eq!(report.directories, 3, "{report:?}");
    assert_eq!(report.files, 4, "{report:?}");
    assert_eq!(report.symlinks, 1, "{report:?}");
    assert_eq!(report.hard_links, 1, "{report:?}");
    assert_eq!(
        read_all(&ctx, b"/hello.txt"),
        b"hello from the boot image\n"
    );
    assert_eq!(
        read_all(&ctx, b"/etc/deep/deeper/data.bin"),
        pattern(70_000)
    );
    assert_eq!(read_all(&ctx, b"/etc/empty"), b"");
    assert_eq!(
        ctx.readlink(b"/etc/link-to-hello").unwrap(),
        b"../hello.txt"
    );
    assert_eq!(
        read_all(&ctx, b"/etc/link-to-hello"),
        b"hello from the boot image\n"
    );
    assert_eq!(read_all(&ctx, b"/etc/second-name"), b"linked twice");
    let original = ctx.stat(b"/etc/original").unwrap();
    let second = ctx.stat(b"/etc/second-name").unwrap();
    assert_eq!((original.ino, original.nlink), (second.ino, 2));
    assert_eq!(
        ctx.stat(b"/etc/deep").unwrap().file_type(),
        Some(FileType::Directory)
    );
    // The archive's permissions and modification times are kept.
    let host = std::fs::metadata(root.join("hello.txt")).unwrap();
    let keel = ctx.stat(b"/hello.txt").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(keel.mode & 0o7777, host.mode() & 0o7777);
    assert_eq!(keel.mtime.sec, host.mtime());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn malformed_archives_are_errors() {
    let root = scratch("malformed");
    fill(&root);
    let Some(archive) = archive_of(&root) else {
        return;
    };
    // Every cut shorter than the whole archive (up to its trailer) is an error.
    let trailer = archive
        .windows(10)
        .position(|window| window == b"TRAILER!!!")
        .unwrap();
    for length in (0..trailer).step_by(13) {
        let result = unpack(&context(), &archive[..length]);
        assert!(
            matches!(result, Err(CpioError::Truncated { .. })),
            "cut at {length}: {result:?}"
        );
    }
    let mut bad_magic = archive.clone();
    bad_magic[0] = b'1';
    assert_eq!(
        unpack(&context(), &bad_magic),
        Err(CpioError::BadMagic { offset: 0 })
    );
    let mut bad_field = archive.clone();
    bad_field[6 + 8] = b'g'; // the mode field
    assert_eq!(
        unpack(&context(), &bad_field),
        Err(CpioError::BadField {
            offset: 0,
            field: "mode"
        })
    );
    let mut no_nul = archive.clone();
    // namesize of the first entry ("." and its NUL: 2) made 1: no NUL in the name.
    no_nul[6 + 11 * 8..6 + 12 * 8].copy_from_slice(b"00000001");
    assert_eq!(
        unpack(&context(), &no_nul),
        Err(CpioError::BadName { offset: 0 })
    );
    let message = format!("{}", unpack(&context(), &archive[..200]).unwrap_err());
    assert!(message.contains("truncated"), "{message}");
    std::fs::remove_dir_all(root).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Flipping bytes anywhere in a real archive gives an error or a tree, never a
    /// panic or a hang.
    #[test]
    fn flipped_bytes_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let archive = sample_archive();
        if let Some(mut archive) = archive {
            for (index, byte) in flips {
                let at = index.index(archive.len());
                archive[at] ^= byte | 1;
            }
            let _ = unpack(&context(), &archive);
        }
    }
}

fn sample_archive() -> Option<Vec<u8>> {
    static ARCHIVE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let root = scratch("sample");
            fill(&root);
            let archive = archive_of(&root);
            std::fs::remove_dir_all(root).unwrap();
            archive
        })
        .clone()
}
