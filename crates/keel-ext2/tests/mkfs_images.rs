//! Images made by `mkfs.ext2 -d`: Keel reads what mkfs put there, writes (growing files
//! past the indirect-block limits, creating, deleting, renaming), and afterwards
//! `e2fsck -fn` finds the image clean and `debugfs` reads back what Keel wrote.

mod common;

use common::*;
use keel_ext2::{Error, FileType, InodeNumber};
use std::collections::BTreeSet;
use std::path::Path;

fn names<D: keel_virtio::block::BlockDevice>(
    fs: &keel_ext2::Ext2<D>,
    dir: InodeNumber,
) -> BTreeSet<String> {
    fs.readdir(dir)
        .unwrap()
        .into_iter()
        .map(|entry| String::from_utf8(entry.name).unwrap())
        .collect()
}

fn host_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .chain([".".to_string(), "..".to_string()])
        .collect()
}

/// Compares everything under `host` with Keel's view of `inode`, recursively.
fn compare_tree<D: keel_virtio::block::BlockDevice>(
    fs: &keel_ext2::Ext2<D>,
    inode: InodeNumber,
    host: &Path,
    top: bool,
) -> usize {
    let mut expected = host_names(host);
    if top {
        expected.insert("lost+found".to_string());
    }
    assert_eq!(names(fs, inode), expected, "listing of {host:?}");
    let mut checked = 0;
    for entry in fs.readdir(inode).unwrap() {
        let name = String::from_utf8(entry.name.clone()).unwrap();
        if name == "." || name == ".." || (top && name == "lost+found") {
            continue;
        }
        let path = host.join(&name);
        let host_meta = std::fs::symlink_metadata(&path).unwrap();
        let meta = fs.stat(entry.inode).unwrap();
        assert_eq!(meta.file_type, entry.file_type, "{path:?}");
        if host_meta.file_type().is_symlink() {
            assert_eq!(meta.file_type, FileType::Symlink);
            let target = std::fs::read_link(&path).unwrap();
            assert_eq!(
                fs.readlink(entry.inode).unwrap(),
                target.as_os_str().as_encoded_bytes()
            );
        } else if host_meta.is_dir() {
            assert_eq!(meta.file_type, FileType::Directory);
            let subdirs = std::fs::read_dir(&path)
                .unwrap()
                .filter(|entry| entry.as_ref().unwrap().file_type().unwrap().is_dir())
                .count();
            assert_eq!(meta.links as usize, 2 + subdirs, "links of {path:?}");
            assert_eq!(fs.lookup(entry.inode, b"..").unwrap(), inode);
            checked += compare_tree(fs, entry.inode, &path, false);
        } else {
            assert_eq!(meta.file_type, FileType::Regular);
            assert_eq!(meta.size, host_meta.len());
            assert_eq!(
                read_all(fs, entry.inode),
                std::fs::read(&path).unwrap(),
                "{path:?}"
            );
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                u64::from(meta.links),
                host_meta.nlink(),
                "links of {path:?}"
            );
        }
        checked += 1;
    }
    checked
}

fn read_what_mkfs_wrote(block_size: u32) {
    if !have_e2fsprogs("read_what_mkfs_wrote") {
        return;
    }
    let temp = TempDir::new("read");
    let tree = temp.join("tree");
    std::fs::create_dir(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, block_size, 8192, &[]);
    let fs = mount_file(&image, 1 << 20);
    assert!(!fs.is_read_only());
    let checked = compare_tree(&fs, fs.root(), &tree, true);
    assert_eq!(checked, 12);
    // Hard link: one inode under two names.
    assert_eq!(
        resolve(&fs, "hello.txt").unwrap(),
        resolve(&fs, "sub/hard_link").unwrap()
    );
    let root = fs.stat(fs.root()).unwrap();
    assert_eq!(root.links, 4); // ., .., sub, lost+found
    let statfs = fs.statfs();
    assert_eq!(statfs.block_size, block_size);
    assert_eq!(statfs.blocks * u64::from(block_size), 8192 * 1024);
    assert_eq!(fs.lookup(fs.root(), b"missing"), Err(Error::NotFound));
    assert_eq!(
        fs.lookup(resolve(&fs, "hello.txt").unwrap(), b"x"),
        Err(Error::NotADirectory)
    );
    drop(fs);
    assert_fsck_clean(&image);
}

#[test]
fn read_what_mkfs_wrote_1k() {
    read_what_mkfs_wrote(1024);
}

#[test]
fn read_what_mkfs_wrote_4k() {
    read_what_mkfs_wrote(4096);
}

/// Writes, grows, creates, deletes and renames; checks with e2fsck and debugfs after a
/// sync, then after a remount.
fn write_and_check(block_size: u32, cache_bytes: usize) {
    if !have_e2fsprogs("write_and_check") {
        return;
    }
    let temp = TempDir::new("write");
    let tree = temp.join("tree");
    std::fs::create_dir(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, block_size, 16384, &[]);
    let fs = mount_file(&image, cache_bytes);
    let root = fs.root();
    let free_before = fs.statfs();

    // A new file written in uneven chunks past the double-indirect start.
    let grown = fs.create(root, b"grown.bin", 0o644).unwrap();
    let grown_data = pattern(700 * 1024 + 333, 9);
    let mut offset = 0;
    for chunk in grown_data.chunks(12345) {
        assert_eq!(
            fs.write_at(grown, offset as u64, chunk).unwrap(),
            chunk.len()
        );
        offset += chunk.len();
    }
    assert_eq!(read_all(&fs, grown), grown_data);

    // A sparse file past the triple-indirect start (1 KiB: 64.3 MiB; 4 KiB: 4 GiB,
    // which also needs i_size_high).
    let sparse = fs.create(root, b"sparse.bin", 0o600).unwrap();
    let pointers = u64::from(block_size / 4);
    let triple_start = (12 + pointers + pointers * pointers) * u64::from(block_size);
    let far = triple_start + 12345;
    assert_eq!(fs.write_at(sparse, far, b"far away").unwrap(), 8);
    assert_eq!(fs.write_at(sparse, 100, b"near").unwrap(), 4);
    let meta = fs.stat(sparse).unwrap();
    assert_eq!(meta.size, far + 8);
    let mut buf = [1u8; 16];
    assert_eq!(fs.read_at(sparse, far - 8, &mut buf).unwrap(), 16);
    assert_eq!(&buf, b"\0\0\0\0\0\0\0\0far away");
    assert_eq!(fs.read_at(sparse, 96, &mut buf[..8]).unwrap(), 8);
    assert_eq!(&buf[..8], b"\0\0\0\0near");

    // Overwrite inside an existing file, and append to it.
    let twelve = resolve(&fs, "twelve.bin").unwrap();
    let mut twelve_data = pattern(12 * 1024 + 100, 1);
    fs.write_at(twelve, 5000, b"OVERWRITTEN").unwrap();
    twelve_data[5000..5011].copy_from_slice(b"OVERWRITTEN");
    let tail = pattern(300 * 1024, 5);
    fs.write_at(twelve, twelve_data.len() as u64, &tail)
        .unwrap();
    twelve_data.extend_from_slice(&tail);
    assert_eq!(read_all(&fs, twelve), twelve_data);

    // Truncate: shrink big.bin across the double-indirect boundary (frees indirect
    // blocks), then grow it back sparsely.
    let big = resolve(&fs, "big.bin").unwrap();
    fs.truncate(big, 20_000).unwrap();
    fs.truncate(big, 30_000).unwrap();
    let mut big_data = pattern(300 * 1024 + 7, 2);
    big_data.truncate(20_000);
    big_data.resize(30_000, 0);
    assert_eq!(read_all(&fs, big), big_data);

    // Directories: mkdir, nested, rename across directories (`..` follows), rmdir.
    let a = fs.mkdir(root, b"a", 0o755).unwrap();
    let b = fs.mkdir(a, b"b", 0o755).unwrap();
    assert_eq!(fs.stat(a).unwrap().links, 3);
    let note = fs.create(b, b"note.txt", 0o644).unwrap();
    fs.write_at(note, 0, b"written by keel\n").unwrap();
    let sub = resolve(&fs, "sub").unwrap();
    fs.rename(a, b"b", sub, b"b_moved").unwrap();
    assert_eq!(fs.lookup(b, b"..").unwrap(), sub);
    assert_eq!(fs.stat(a).unwrap().links, 2);
    assert_eq!(fs.rmdir(root, b"sub"), Err(Error::NotEmpty));
    assert_eq!(
        fs.rename(root, b"sub", b, b"loop"),
        Err(Error::InvalidArgument)
    );
    fs.rmdir(sub, b"empty_dir").unwrap();
    fs.rmdir(root, b"a").unwrap();
    assert_eq!(fs.lookup(root, b"a"), Err(Error::NotFound));

    // Many entries: the directory grows past one block.
    let many = fs.mkdir(root, b"many", 0o755).unwrap();
    for index in 0..300 {
        let name = format!("file-with-a-longish-name-{index:04}");
        let inode = fs.create(many, name.as_bytes(), 0o644).unwrap();
        fs.write_at(inode, 0, name.as_bytes()).unwrap();
    }
    for index in (0..300).step_by(3) {
        let name = format!("file-with-a-longish-name-{index:04}");
        fs.unlink(many, name.as_bytes()).unwrap();
    }
    assert_eq!(fs.readdir(many).unwrap().len(), 2 + 200);

    // Files: rename over an existing file, link, unlink, symlinks of both kinds.
    fs.rename(root, b"block.bin", root, b"hello.txt").unwrap();
    assert_eq!(
        read_all(&fs, resolve(&fs, "hello.txt").unwrap()),
        pattern(4096, 3)
    );
    // The old hello.txt lives on through its hard link.
    let hard = resolve(&fs, "sub/hard_link").unwrap();
    assert_eq!(fs.stat(hard).unwrap().links, 1);
    assert_eq!(read_all(&fs, hard), b"hello, keel!\n");
    fs.link(grown, sub, b"grown_link").unwrap();
    assert_eq!(fs.stat(grown).unwrap().links, 2);
    assert_eq!(fs.link(sub, root, b"dirlink"), Err(Error::NotPermitted));
    fs.unlink(root, b"empty").unwrap();
    fs.unlink(root, b"slow_link").unwrap();
    let long_target = "x/".repeat(200);
    let slow = fs
        .symlink(root, b"new_slow", long_target.as_bytes())
        .unwrap();
    let fast = fs.symlink(sub, b"new_fast", b"../grown.bin").unwrap();
    assert_eq!(fs.readlink(slow).unwrap(), long_target.as_bytes());
    assert_eq!(fs.readlink(fast).unwrap(), b"../grown.bin");
    assert_eq!(fs.create(root, b"grown.bin", 0o644), Err(Error::Exists));
    assert_eq!(fs.unlink(root, b"many"), Err(Error::IsADirectory));
    assert_eq!(fs.rmdir(root, b"grown.bin"), Err(Error::NotADirectory));

    fs.sync().unwrap();
    assert_eq!(fs.dirty_blocks(), 0);
    assert!(fs.statfs().free_blocks < free_before.free_blocks);
    assert_fsck_clean(&image);
    assert_eq!(debugfs_cat(&image, "/grown.bin"), grown_data);
    assert_eq!(debugfs_cat(&image, "/twelve.bin"), twelve_data);
    assert_eq!(debugfs_cat(&image, "/big.bin"), big_data);
    assert_eq!(
        debugfs_cat(&image, "/sub/b_moved/note.txt"),
        b"written by keel\n"
    );
    assert_eq!(
        debugfs_cat(&image, "/many/file-with-a-longish-name-0299"),
        b"file-with-a-longish-name-0299"
    );
    assert!(debugfs_stat(&image, "/new_slow").contains(&format!("Size: {}", long_target.len())));
    let sparse_stat = debugfs_stat(&image, "/sparse.bin");
    assert!(
        sparse_stat.contains(&format!("Size: {}", far + 8)),
        "{sparse_stat}"
    );
    if block_size == 1024 {
        let sparse_bytes = debugfs_cat(&image, "/sparse.bin");
        assert_eq!(sparse_bytes.len() as u64, far + 8);
        assert_eq!(&sparse_bytes[sparse_bytes.len() - 8..], b"far away");
        assert_eq!(&sparse_bytes[100..104], b"near");
    }

    // Remount and read back.
    fs.unmount().unwrap();
    assert_fsck_clean(&image);
    let fs = mount_file(&image, cache_bytes);
    assert_eq!(
        read_all(&fs, resolve(&fs, "grown.bin").unwrap()),
        grown_data
    );
    assert_eq!(
        read_all(&fs, resolve(&fs, "sub/grown_link").unwrap()),
        grown_data
    );
    assert_eq!(
        read_all(&fs, resolve(&fs, "twelve.bin").unwrap()),
        twelve_data
    );
    let sparse = resolve(&fs, "sparse.bin").unwrap();
    assert_eq!(fs.read_at(sparse, far, &mut buf[..8]).unwrap(), 8);
    assert_eq!(&buf[..8], b"far away");
    // Shrinking the sparse file to 0 frees its triple-indirect chain.
    let free = fs.statfs().free_blocks;
    fs.truncate(sparse, 0).unwrap();
    // One direct block, and the triple, double, single indirect and data blocks.
    assert_eq!(fs.statfs().free_blocks, free + 1 + 4);
    fs.unlink(root, b"grown.bin").unwrap();
    fs.unmount().unwrap();
    assert_fsck_clean(&image);
}

#[test]
fn write_and_check_1k() {
    write_and_check(1024, 4 << 20);
}

#[test]
fn write_and_check_4k() {
    write_and_check(4096, 4 << 20);
}

/// A cache of 8 blocks: every operation evicts, and write-back happens on eviction.
#[test]
fn write_and_check_tiny_cache() {
    write_and_check(1024, 8 * 1024);
}

#[test]
fn full_disk_gives_enospc_and_stays_clean() {
    if !have_e2fsprogs("full_disk") {
        return;
    }
    let temp = TempDir::new("full");
    let image = temp.join("image");
    mkfs(None, &image, 1024, 1024, &["-N", "64"]);
    let fs = mount_file(&image, 1 << 20);
    let root = fs.root();
    let file = fs.create(root, b"fill", 0o644).unwrap();
    let chunk = pattern(64 * 1024, 7);
    let mut written = 0u64;
    let error = loop {
        match fs.write_at(file, written, &chunk) {
            Ok(count) => written += count as u64,
            Err(error) => break error,
        }
    };
    assert_eq!(error, Error::NoSpace);
    assert_eq!(fs.statfs().free_blocks, 0);
    assert_eq!(fs.stat(file).unwrap().size, written);
    assert_eq!(fs.mkdir(root, b"nodir", 0o755), Err(Error::NoSpace));
    assert_eq!(fs.symlink(root, b"slow", &[b'y'; 100]), Err(Error::NoSpace));
    // Inodes run out too (fast symlinks need no block).
    let mut made = 0;
    let error = loop {
        match fs.symlink(root, format!("l{made}").as_bytes(), b"fill") {
            Ok(_) => made += 1,
            Err(error) => break error,
        }
        if made > 1000 {
            panic!("inodes never ran out");
        }
    };
    // Either the inodes or the root directory's blocks run out first.
    assert_eq!(error, Error::NoSpace);
    fs.sync().unwrap();
    assert_fsck_clean(&image);
    // Freeing makes room again.
    fs.truncate(file, 0).unwrap();
    let again = fs
        .create(root, b"again", 0o644)
        .unwrap_or_else(|_| resolve(&fs, "fill").unwrap());
    fs.write_at(again, 0, &chunk).unwrap();
    fs.unmount().unwrap();
    assert_fsck_clean(&image);
}

#[test]
fn threads_write_separate_files() {
    if !have_e2fsprogs("threads") {
        return;
    }
    let temp = TempDir::new("threads");
    let image = temp.join("image");
    mkfs(None, &image, 1024, 16384, &[]);
    let fs = std::sync::Arc::new(mount_file(&image, 1 << 20));
    let threads: Vec<_> = (0..8u8)
        .map(|thread| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let dir = fs
                    .mkdir(fs.root(), format!("t{thread}").as_bytes(), 0o755)
                    .unwrap();
                for index in 0..10u8 {
                    let file = fs
                        .create(dir, format!("f{index}").as_bytes(), 0o644)
                        .unwrap();
                    let data = pattern(20_000 + usize::from(index) * 1000, thread ^ index);
                    for (number, chunk) in data.chunks(3000).enumerate() {
                        fs.write_at(file, (number * 3000) as u64, chunk).unwrap();
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for thread in 0..8u8 {
        for index in 0..10u8 {
            let file = resolve(&fs, &format!("t{thread}/f{index}")).unwrap();
            assert_eq!(
                read_all(&fs, file),
                pattern(20_000 + usize::from(index) * 1000, thread ^ index)
            );
        }
    }
    let fs = std::sync::Arc::into_inner(fs).unwrap();
    fs.unmount().unwrap();
    assert_fsck_clean(&image);
    assert_eq!(debugfs_cat(&image, "/t3/f4"), pattern(24_000, 3 ^ 4));
}

#[test]
fn unknown_features_refuse_or_mount_read_only() {
    if !have_e2fsprogs("features") {
        return;
    }
    let temp = TempDir::new("features");
    let image = temp.join("image");
    mkfs(None, &image, 4096, 8192, &["-t", "ext4"]);
    match keel_ext2::Ext2::mount(open_device(&image)) {
        Err(keel_ext2::MountError::UnsupportedFeatures(features)) => {
            let text = features.to_string();
            assert!(text.contains("extent") && text.contains("64bit"), "{text}");
        }
        other => panic!("ext4 mounted: {other:?}"),
    }
    let image2 = temp.join("image2");
    mkfs(None, &image2, 1024, 8192, &["-O", "uninit_bg"]);
    let fs = keel_ext2::Ext2::mount(open_device(&image2)).unwrap();
    assert!(fs.is_read_only());
    assert_eq!(fs.create(fs.root(), b"x", 0o644), Err(Error::ReadOnly));
    assert_eq!(fs.readdir(fs.root()).unwrap().len(), 3);
}

/// Held inodes ([`keel_ext2::Ext2::hold`]): the last unlink (or a rename over it)
/// keeps a held file, the last release frees it, unmount frees those still held, and
/// a crash leaves them for e2fsck.
#[test]
fn held_unlinked_inodes_are_freed_at_release_or_unmount() {
    if !have_e2fsprogs("held_unlinked_inodes_are_freed_at_release_or_unmount") {
        return;
    }
    let temp = TempDir::new("orphans");
    let tree = temp.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, 1024, 4096, &[]);
    let pristine = std::fs::read(&image).unwrap();

    let fs = mount_file(&image, 1 << 20);
    let before = fs.statfs();
    let root = fs.root();
    let a = fs.create(root, b"a", 0o644).unwrap();
    fs.write_at(a, 0, &pattern(30_000, 5)).unwrap();
    let b = fs.create(root, b"b", 0o644).unwrap();
    fs.write_at(b, 0, &pattern(20_000, 6)).unwrap();
    fs.hold(a);
    fs.hold(a);
    fs.hold(b);
    fs.unlink(root, b"a").unwrap();
    // Renaming over a held file orphans it too.
    let c = fs.create(root, b"c", 0o644).unwrap();
    fs.rename(root, b"c", root, b"b").unwrap();
    assert_eq!(fs.open_unlinked(), 2);
    assert_eq!(fs.lookup(root, b"a"), Err(Error::NotFound));
    assert_eq!(fs.lookup(root, b"b"), Ok(c));
    assert_eq!(fs.stat(a).unwrap().links, 0);
    assert_eq!(read_all(&fs, a), pattern(30_000, 5));
    assert_eq!(fs.write_at(b, 20_000, b"more"), Ok(4));
    // No new name for an unlinked inode (as Linux without O_TMPFILE).
    assert_eq!(fs.link(a, root, b"again"), Err(Error::NotFound));
    fs.release(a).unwrap();
    assert_eq!(fs.open_unlinked(), 2);
    fs.release(a).unwrap();
    assert_eq!(fs.open_unlinked(), 1);
    assert!(fs.stat(a).is_err());
    // b stays held through unmount, which frees it.
    fs.unlink(root, b"b").unwrap();
    fs.sync().unwrap();
    drop(fs.unmount().unwrap());
    assert_fsck_clean(&image);
    let fs = mount_file(&image, 1 << 20);
    let after = fs.statfs();
    assert_eq!(
        (after.free_blocks, after.free_inodes),
        (before.free_blocks, before.free_inodes)
    );
    drop(fs.unmount().unwrap());

    // A crash while an unlinked file is held, after a sync wrote it with 0 links:
    // e2fsck finds the inode and repairs the image.
    std::fs::write(&image, &pristine).unwrap();
    let fs = mount_file(&image, 1 << 20);
    let a = fs.create(fs.root(), b"a", 0o644).unwrap();
    fs.write_at(a, 0, &pattern(30_000, 5)).unwrap();
    fs.hold(a);
    fs.unlink(fs.root(), b"a").unwrap();
    fs.sync().unwrap();
    drop(fs); // no unmount, nothing more written: a power cut here
    let (code, report) = e2fsck(&image);
    println!("e2fsck -fn after a crash with an open unlinked file (exit {code}):\n{report}");
    assert_eq!(code, 4, "{report}");
    assert!(report.contains("has zero dtime"), "{report}");
    let output = std::process::Command::new("/usr/sbin/e2fsck")
        .arg("-fy")
        .arg(&image)
        .output()
        .unwrap();
    assert!(output.status.code().unwrap() <= 1, "{output:?}");
    assert_fsck_clean(&image);
    let fs = mount_file(&image, 1 << 20);
    let repaired = fs.statfs();
    assert_eq!(
        (repaired.free_blocks, repaired.free_inodes),
        (before.free_blocks, before.free_inodes)
    );
}
