//! ext2 mounted in Keel's VFS (`keel_ext2::vfs::Ext2Fs`): the file calls read what
//! mkfs put there, write and fsync, cross-mount renames give EXDEV, and e2fsck finds
//! the image clean after; debugfs reads back what was written through the VFS.

mod common;

use common::{
    TempDir, assert_fsck_clean, debugfs_cat, fill_tree, have_e2fsprogs, mkfs, mount_file,
};
use keel_hosted::StdParker;
use keel_vfs::{Context, Errno, FileType, FixedClock, OpenFlags, Ramfs, Timespec, Vfs};
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
