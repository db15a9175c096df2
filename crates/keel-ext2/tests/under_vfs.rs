//! ext2 mounted in Keel's VFS (`keel_ext2::vfs::Ext2Fs`): the file calls read what
//! mkfs put there, write and fsync, cross-mount renames give EXDEV, and e2fsck finds
//! the image clean after; debugfs reads back what was written through the VFS.

mod common;

use common::{
    TempDir, assert_fsck_clean, debugfs_cat, fill_tree, have_e2fsprogs, mkfs, mount_file,
};
use keel_hosted::StdParker;
use keel_vfs::{Context, Errno, FileType, FixedClock, OpenFlags, Ramfs, TimeUpdate, Timespec, Vfs};
use std::sync::Arc;

fn read_all(ctx: &Context<StdParker>, path: &[u8]) -> Vec<u8> {
    let fd = ctx.open(path, OpenFlags::O_RDONLY, 0).unwrap();
    let mut contents = Vec::new();
    let mut buffer = [0u8; 3000];
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
fn the_file_calls_work_on_an_ext2_mount() {
    if !have_e2fsprogs("the_file_calls_work_on_an_ext2_mount") {
        return;
    }
    let temp = TempDir::new("under-vfs");
    let tree = temp.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, 1024, 4096, &[]);

    let clock = Arc::new(FixedClock(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
    let ctx = Context::new(vfs);
    ctx.mkdir(b"/data", 0o755).unwrap();
    let fs = keel_ext2::vfs::Ext2Fs::<_, StdParker>::new(mount_file(&image, 1 << 20));
    ctx.mount(b"/data", fs).unwrap();

    assert_eq!(
        read_all(&ctx, b"/data/hello.txt"),
        std::fs::read(tree.join("hello.txt")).unwrap()
    );
    assert_eq!(
        read_all(&ctx, b"/data/big.bin"),
        std::fs::read(tree.join("big.bin")).unwrap()
    );
    assert_eq!(read_all(&ctx, b"/data/fast_link"), b"hello, keel!\n");
    assert_eq!(
        ctx.stat(b"/data/sub").unwrap().file_type(),
        Some(FileType::Directory)
    );
    assert_eq!(ctx.stat(b"/data/hello.txt").unwrap().nlink, 2);

    let written: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let fd = ctx
        .open(
            b"/data/sub/new.bin",
            OpenFlags::O_RDWR | OpenFlags::O_CREAT,
            0o640,
        )
        .unwrap();
    assert_eq!(ctx.write(fd, &written[..20_000]), Ok(20_000));
    assert_eq!(ctx.write(fd, &written[20_000..]), Ok(30_000));
    ctx.fsync(fd).unwrap();
    ctx.close(fd).unwrap();
    ctx.mkdir(b"/data/made", 0o755).unwrap();
    ctx.rename(b"/data/twelve.bin", b"/data/made/twelve.bin")
        .unwrap();
    ctx.unlink(b"/data/block.bin").unwrap();
    assert_eq!(ctx.rename(b"/data/empty", b"/outside"), Err(Errno::EXDEV));
    assert_eq!(ctx.link(b"/data/hello.txt", b"/outside"), Err(Errno::EXDEV));
    assert_eq!(ctx.stat(b"/data/block.bin"), Err(Errno::ENOENT));
    let names: Vec<Vec<u8>> = {
        let fd = ctx.open(b"/data/made", OpenFlags::O_DIRECTORY, 0).unwrap();
        let entries = ctx.getdents(fd, 100).unwrap();
        ctx.close(fd).unwrap();
        entries.into_iter().map(|entry| entry.name).collect()
    };
    assert_eq!(names, [&b"."[..], b"..", b"twelve.bin"]);
    ctx.vfs().root(); // the VFS stays usable
    let dir = ctx.open(b"/data", OpenFlags::O_DIRECTORY, 0).unwrap();
    ctx.fsync(dir).unwrap();
    ctx.close(dir).unwrap();
    drop(ctx);

    assert_fsck_clean(&image);
    assert_eq!(debugfs_cat(&image, "/sub/new.bin"), written);
    assert_eq!(
        debugfs_cat(&image, "/made/twelve.bin"),
        std::fs::read(tree.join("twelve.bin")).unwrap()
    );
}

/// `debugfs`'s `stat` time line `name` (` atime: 0x6b170300:00000000 -- ...`): the
/// seconds and the extra field.
fn debugfs_time(stat: &str, name: &str) -> (u32, u32) {
    let line = stat
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {stat}"));
    let value = line.split_whitespace().nth(1).unwrap();
    let (seconds, extra) = value.trim_start_matches("0x").split_once(':').unwrap();
    (
        u32::from_str_radix(seconds, 16).unwrap(),
        u32::from_str_radix(extra, 16).unwrap(),
    )
}

#[test]
fn utimensat_sets_times_as_debugfs_reads_them() {
    if !have_e2fsprogs("utimensat_sets_times_as_debugfs_reads_them") {
        return;
    }
    let temp = TempDir::new("utimensat");
    let tree = temp.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, 1024, 4096, &[]);
    let before = common::debugfs_stat(&image, "/big.bin");

    let now = Timespec {
        sec: 1_700_000_000,
        nsec: 5,
    };
    let clock = Arc::new(FixedClock(now));
    let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
    let ctx = Context::new(vfs);
    ctx.mkdir(b"/data", 0o755).unwrap();
    let fs = keel_ext2::vfs::Ext2Fs::<_, StdParker>::new(mount_file(&image, 1 << 20));
    ctx.mount(b"/data", fs).unwrap();

    let set = |sec, nsec| TimeUpdate::Set(Timespec { sec, nsec });
    ctx.utimensat(
        b"/data/hello.txt",
        set(1_234_567_890, 999),
        TimeUpdate::Omit,
        0,
    )
    .unwrap();
    ctx.utimensat(b"/data/big.bin", TimeUpdate::Omit, set(1_000_000_001, 0), 0)
        .unwrap();
    ctx.utimensat(b"/data/sub", TimeUpdate::Now, TimeUpdate::Now, 0)
        .unwrap();
    // Out of the on-disk range: clamped.
    ctx.utimensat(b"/data/empty", set(-5, 0), set(1 << 40, 0), 0)
        .unwrap();
    // The link itself, not its target.
    ctx.utimensat(
        b"/data/fast_link",
        set(42, 0),
        set(43, 0),
        keel_vfs::context::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    assert_eq!(
        ctx.utimensat(
            b"/data/hello.txt",
            set(1, 1_000_000_000),
            TimeUpdate::Omit,
            0
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ctx.utimensat(b"/data/missing", TimeUpdate::Now, TimeUpdate::Now, 0),
        Err(Errno::ENOENT)
    );

    let stat = ctx.stat(b"/data/hello.txt").unwrap();
    assert_eq!((stat.atime.sec, stat.atime.nsec), (1_234_567_890, 0));
    let stat = ctx.stat(b"/data/big.bin").unwrap();
    assert_eq!(stat.mtime.sec, 1_000_000_001);
    let stat = ctx.stat(b"/data/sub").unwrap();
    assert_eq!(
        (stat.atime.sec, stat.mtime.sec),
        (1_700_000_000, 1_700_000_000)
    );
    let stat = ctx.lstat(b"/data/fast_link").unwrap();
    assert_eq!((stat.atime.sec, stat.mtime.sec), (42, 43));
    let fd = ctx.open(b"/data", OpenFlags::O_DIRECTORY, 0).unwrap();
    ctx.fsync(fd).unwrap();
    ctx.close(fd).unwrap();
    drop(ctx);

    assert_fsck_clean(&image);
    let hello = common::debugfs_stat(&image, "/hello.txt");
    assert_eq!(debugfs_time(&hello, "atime"), (1_234_567_890, 0));
    let big = common::debugfs_stat(&image, "/big.bin");
    assert_eq!(debugfs_time(&big, "mtime"), (1_000_000_001, 0));
    // UTIME_OMIT left the access time as mkfs wrote it.
    assert_eq!(debugfs_time(&big, "atime"), debugfs_time(&before, "atime"));
    let sub = common::debugfs_stat(&image, "/sub");
    assert_eq!(debugfs_time(&sub, "atime"), (1_700_000_000, 0));
    assert_eq!(debugfs_time(&sub, "mtime"), (1_700_000_000, 0));
    let empty = common::debugfs_stat(&image, "/empty");
    assert_eq!(debugfs_time(&empty, "atime"), (0, 0));
    assert_eq!(debugfs_time(&empty, "mtime"), (u32::MAX, 0));
    let link = common::debugfs_stat(&image, "/fast_link");
    assert_eq!(debugfs_time(&link, "atime"), (42, 0));
    assert_eq!(debugfs_time(&link, "mtime"), (43, 0));
    // The change time is the mount's clock's (the host's) now, not the set times.
    let (ctime, _) = debugfs_time(&hello, "ctime");
    assert!(ctime >= debugfs_time(&before, "ctime").0, "{hello}");
}

/// A file unlinked while open keeps its data for its descriptors and is freed at the
/// last close; afterwards the image is clean and the space is back.
#[test]
fn an_unlinked_open_file_lives_until_its_last_close() {
    if !have_e2fsprogs("an_unlinked_open_file_lives_until_its_last_close") {
        return;
    }
    let temp = TempDir::new("orphan-vfs");
    let tree = temp.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, 1024, 4096, &[]);

    let clock = Arc::new(FixedClock(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
    let ctx = Context::new(vfs);
    ctx.mkdir(b"/data", 0o755).unwrap();
    let fs = keel_ext2::vfs::Ext2Fs::<_, StdParker>::new(mount_file(&image, 1 << 20));
    ctx.mount(b"/data", fs).unwrap();
    let before = ctx.statfs(b"/data").unwrap();

    let contents: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let writer = ctx
        .open(
            b"/data/sub/orphan.bin",
            OpenFlags::O_RDWR | OpenFlags::O_CREAT,
            0o644,
        )
        .unwrap();
    assert_eq!(ctx.write(writer, &contents), Ok(contents.len()));
    let reader = ctx
        .open(b"/data/sub/orphan.bin", OpenFlags::O_RDONLY, 0)
        .unwrap();
    ctx.unlink(b"/data/sub/orphan.bin").unwrap();
    assert_eq!(ctx.stat(b"/data/sub/orphan.bin"), Err(Errno::ENOENT));
    assert_eq!(ctx.fstat(writer).unwrap().nlink, 0);
    // A new file of the same name is another inode.
    let other = ctx
        .open(
            b"/data/sub/orphan.bin",
            OpenFlags::O_RDWR | OpenFlags::O_CREAT,
            0o644,
        )
        .unwrap();
    assert_ne!(
        ctx.fstat(other).unwrap().ino,
        ctx.fstat(writer).unwrap().ino
    );
    ctx.close(other).unwrap();
    // Written and read through the descriptors, truncated, fsynced.
    assert_eq!(ctx.pwrite(writer, b"tail", 50_000), Ok(4));
    let mut expected = contents.clone();
    expected.extend_from_slice(b"tail");
    let mut back = vec![0; expected.len() + 10];
    assert_eq!(ctx.pread(reader, &mut back, 0), Ok(expected.len()));
    assert_eq!(&back[..expected.len()], &expected[..]);
    ctx.fsync(writer).unwrap();
    ctx.ftruncate(writer, 40_000).unwrap();
    assert_eq!(ctx.fstat(reader).unwrap().size, 40_000);
    assert_eq!(
        ctx.utimensat(b"/data/sub/orphan.bin", TimeUpdate::Now, TimeUpdate::Now, 0),
        Ok(())
    );
    let in_use = ctx.statfs(b"/data").unwrap();
    assert!(in_use.blocks_free < before.blocks_free);
    ctx.close(writer).unwrap();
    let mut back = vec![0; 100];
    assert_eq!(ctx.pread(reader, &mut back, 39_950), Ok(50));
    assert_eq!(&back[..50], &contents[39_950..40_000]);
    ctx.close(reader).unwrap();
    ctx.unlink(b"/data/sub/orphan.bin").unwrap();
    // The last close freed it: the counts are as before it was made.
    let after = ctx.statfs(b"/data").unwrap();
    assert_eq!(
        (after.blocks_free, after.files_free),
        (before.blocks_free, before.files_free)
    );
    let dir = ctx.open(b"/data", OpenFlags::O_DIRECTORY, 0).unwrap();
    ctx.fsync(dir).unwrap();
    ctx.close(dir).unwrap();
    drop(ctx);
    assert_fsck_clean(&image);
}
