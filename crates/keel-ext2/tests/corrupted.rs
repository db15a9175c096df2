//! Corrupted and truncated images: mount or the operation returns an error, never a
//! panic or a hang. Ends with a proptest that flips random bytes of a small valid image
//! and runs mount, a bounded tree walk, reads and a few writes.

mod common;

use common::*;
use keel_ext2::{
    Corruption, Error, Ext2, InodeNumber, MountError, MountOptions, NoClock, SuperblockProblem,
};
use keel_virtio::block::BlockDevice;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// A small 1 KiB-block image of the test tree, made once (None without e2fsprogs).
fn base_image() -> Option<&'static Vec<u8>> {
    static IMAGE: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if !have_e2fsprogs("corrupted images") {
                return None;
            }
            let temp = TempDir::new("corrupt-base");
            let tree = temp.join("tree");
            std::fs::create_dir(&tree).unwrap();
            fill_tree(&tree);
            let image = temp.join("image");
            mkfs(Some(&tree), &image, 1024, 1024, &["-N", "64"]);
            Some(std::fs::read(&image).unwrap())
        })
        .as_ref()
}

fn mount(image: Vec<u8>) -> Result<Ext2<MemoryDevice>, MountError> {
    Ext2::mount_with(
        MemoryDevice::new(image),
        MountOptions::default(),
        Box::new(NoClock),
    )
}

fn put32(image: &mut [u8], offset: usize, value: u32) {
    image[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put16(image: &mut [u8], offset: usize, value: u16) {
    image[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

/// Walks the tree from the root, bounded in depth and visits, reading every file and
/// link; returns how many operations failed.
fn walk<D: BlockDevice>(fs: &Ext2<D>) -> usize {
    let mut errors = 0;
    let mut seen = BTreeSet::new();
    let mut stack = vec![(fs.root(), 0)];
    let mut buf = vec![0; 8192];
    while let Some((dir, depth)) = stack.pop() {
        if !seen.insert(dir) || depth > 16 || seen.len() > 2000 {
            continue;
        }
        let Ok(entries) = fs.readdir(dir) else {
            errors += 1;
            continue;
        };
        for entry in entries {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            errors += usize::from(fs.lookup(dir, &entry.name).is_err());
            match fs.stat(entry.inode) {
                Err(_) => errors += 1,
                Ok(meta) => match meta.file_type {
                    keel_ext2::FileType::Directory => stack.push((entry.inode, depth + 1)),
                    keel_ext2::FileType::Symlink => {
                        errors += usize::from(fs.readlink(entry.inode).is_err())
                    }
                    keel_ext2::FileType::Regular => {
                        let mut offset = 0u64;
                        while offset < meta.size.min(1 << 20) {
                            match fs.read_at(entry.inode, offset, &mut buf) {
                                Ok(0) => break,
                                Ok(count) => offset += count as u64,
                                Err(_) => {
                                    errors += 1;
                                    break;
                                }
                            }
                        }
                    }
                    _ => {}
                },
            }
        }
    }
    errors
}

fn inode_of(image: &[u8], path: &str) -> u32 {
    let fs = mount(image.to_vec()).unwrap();
    resolve(&fs, path).unwrap().0
}

#[test]
fn the_base_image_walks_without_errors() {
    let Some(image) = base_image() else { return };
    let fs = mount(image.clone()).unwrap();
    assert_eq!(walk(&fs), 0);
}

/// A corruption's name, how to make it, and the mount error it must give.
type SuperblockCase = (
    &'static str,
    Box<dyn Fn(&mut Vec<u8>)>,
    fn(&MountError) -> bool,
);

#[test]
fn bad_superblocks_refuse_the_mount() {
    let Some(image) = base_image() else { return };
    let cases: Vec<SuperblockCase> = vec![
        (
            "magic",
            Box::new(|image| image[1024 + 56] ^= 0xFF),
            |error| matches!(error, MountError::BadMagic(_)),
        ),
        (
            "revision",
            Box::new(|image| put32(image, 1024 + 76, 7)),
            |error| matches!(error, MountError::UnsupportedRevision(7)),
        ),
        (
            "block size",
            Box::new(|image| put32(image, 1024 + 24, 20)),
            |error| matches!(error, MountError::BadBlockSize(20)),
        ),
        (
            "blocks per group 0",
            Box::new(|image| put32(image, 1024 + 32, 0)),
            |error| *error == MountError::BadSuperblock(SuperblockProblem::BlocksPerGroup),
        ),
        (
            "inodes per group huge",
            Box::new(|image| put32(image, 1024 + 40, 1 << 30)),
            |error| *error == MountError::BadSuperblock(SuperblockProblem::InodesPerGroup),
        ),
        (
            "blocks count huge",
            Box::new(|image| put32(image, 1024 + 4, u32::MAX)),
            |error| matches!(error, MountError::DeviceTooSmall { .. }),
        ),
        (
            "inodes count",
            Box::new(|image| put32(image, 1024, 12345)),
            |error| *error == MountError::BadSuperblock(SuperblockProblem::InodesCount),
        ),
        (
            "inode size",
            Box::new(|image| put16(image, 1024 + 88, 100)),
            |error| *error == MountError::BadSuperblock(SuperblockProblem::InodeSize),
        ),
        (
            "first inode",
            Box::new(|image| put32(image, 1024 + 84, 3)),
            |error| *error == MountError::BadSuperblock(SuperblockProblem::FirstInode),
        ),
        (
            "free blocks",
            Box::new(|image| put32(image, 1024 + 12, u32::MAX)),
            |error| *error == MountError::BadSuperblock(SuperblockProblem::FreeCounts),
        ),
        (
            "incompat extent",
            Box::new(|image| image[1024 + 96] |= 0x40),
            |error| matches!(error, MountError::UnsupportedFeatures(features) if features.to_string() == "extent"),
        ),
        (
            "descriptor inode table",
            Box::new(|image| put32(image, 2048 + 8, 0xFFFF_FF00)),
            |error| *error == MountError::BadGroupDescriptor { group: 0 },
        ),
        (
            "descriptor block bitmap",
            Box::new(|image| put32(image, 2048, 0)),
            |error| *error == MountError::BadGroupDescriptor { group: 0 },
        ),
        (
            "descriptor free count",
            Box::new(|image| put16(image, 2048 + 12, 60000)),
            |error| *error == MountError::BadGroupDescriptor { group: 0 },
        ),
        (
            "truncated to half",
            Box::new(|image| image.truncate(image.len() / 2)),
            |error| matches!(error, MountError::DeviceTooSmall { .. }),
        ),
        (
            "truncated to 1 KiB",
            Box::new(|image| image.truncate(1024)),
            |error| matches!(error, MountError::NoSuperblock { sectors: 2 }),
        ),
        (
            "root not a directory",
            Box::new(|image| {
                let offset = inode_offset(image, 2);
                put16(image, offset, 0o100644);
            }),
            |error| *error == MountError::BadRoot,
        ),
    ];
    for (name, corrupt, expected) in cases {
        let mut bad = image.clone();
        corrupt(&mut bad);
        match mount(bad) {
            Ok(_) => panic!("{name}: mounted"),
            Err(error) => {
                assert!(expected(&error), "{name}: {error:?}");
                assert!(!error.to_string().is_empty());
            }
        }
    }
}

#[test]
fn bad_block_pointers_give_errors() {
    let Some(image) = base_image() else { return };
    // hello.txt's first block far past the end.
    let mut bad = image.clone();
    let hello = inode_of(image, "hello.txt");
    put32(&mut bad, inode_offset(image, hello) + 40, 0xFFFF_FF00);
    let fs = mount(bad).unwrap();
    let mut buf = [0; 16];
    let error = fs.read_at(InodeNumber(hello), 0, &mut buf).unwrap_err();
    assert_eq!(
        error,
        Error::Corrupted(Corruption::BlockOutOfRange(0xFFFF_FF00))
    );
    assert_eq!(error.errno(), 117);
    assert!(fs.write_at(InodeNumber(hello), 0, b"x").is_err());
    assert!(
        fs.unlink(fs.root(), b"hello.txt").is_err() || fs.unlink(fs.root(), b"hello.txt").is_err()
    );
    assert!(walk(&fs) > 0);

    // big.bin's double-indirect block far past the end: the first 268 KiB read, the
    // rest is an error.
    let mut bad = image.clone();
    let big = inode_of(image, "big.bin");
    put32(
        &mut bad,
        inode_offset(image, big) + 40 + 13 * 4,
        0x7FFF_FFFF,
    );
    let fs = mount(bad).unwrap();
    let mut buf = vec![0; 1024];
    assert_eq!(
        fs.read_at(InodeNumber(big), 200 * 1024, &mut buf).unwrap(),
        1024
    );
    assert!(matches!(
        fs.read_at(InodeNumber(big), 290 * 1024, &mut buf),
        Err(Error::Corrupted(_))
    ));
    assert!(fs.truncate(InodeNumber(big), 0).is_err());

    // A symlink whose size says more than its inode holds.
    let mut bad = image.clone();
    let fast = inode_of(image, "fast_link");
    put32(&mut bad, inode_offset(image, fast) + 4, 5000);
    let fs = mount(bad).unwrap();
    assert!(matches!(
        fs.readlink(InodeNumber(fast)),
        Err(Error::Corrupted(_))
    ));
}

#[test]
fn bad_directory_records_give_errors() {
    let Some(image) = base_image() else { return };
    let block_size = block_size_of(image);
    let root_block = {
        let offset = inode_offset(image, 2) + 40;
        u32::from_le_bytes(image[offset..offset + 4].try_into().unwrap()) as usize
    };
    let first_record = root_block * block_size;
    let second_record = first_record + 12;
    for (name, corrupt) in [
        (
            "rec_len 0",
            Box::new(|image: &mut Vec<u8>| put16(image, first_record + 4, 0))
                as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        (
            "rec_len past the block",
            Box::new(|image: &mut Vec<u8>| put16(image, second_record + 4, 4000)),
        ),
        (
            "rec_len unaligned",
            Box::new(|image: &mut Vec<u8>| put16(image, first_record + 4, 13)),
        ),
        (
            "name longer than record",
            Box::new(|image: &mut Vec<u8>| image[first_record + 6] = 200),
        ),
        (
            "directory size not whole blocks",
            Box::new(|image: &mut Vec<u8>| {
                let offset = inode_offset(image, 2) + 4;
                put32(image, offset, 1000);
            }),
        ),
        (
            "directory with a hole",
            Box::new(|image: &mut Vec<u8>| {
                let offset = inode_offset(image, 2) + 4;
                put32(image, offset, 64 * 1024);
            }),
        ),
    ] {
        let mut bad = image.clone();
        corrupt(&mut bad);
        let fs = mount(bad).unwrap();
        let root = fs.root();
        assert!(
            matches!(fs.readdir(root), Err(Error::Corrupted(_))),
            "{name}"
        );
        assert!(
            matches!(fs.lookup(root, b"missing"), Err(Error::Corrupted(_))),
            "{name}"
        );
        assert!(fs.create(root, b"new", 0o644).is_err(), "{name}");
        assert!(fs.rename(root, b"hello.txt", root, b"x").is_err(), "{name}");
    }
    // An entry naming an inode past the end, or a reserved one.
    for bad_inode in [0x00FF_FFFF, 7] {
        let mut bad = image.clone();
        put32(&mut bad, second_record + 12, bad_inode);
        let fs = mount(bad).unwrap();
        let entries = fs.readdir(fs.root());
        let name = entries
            .ok()
            .and_then(|entries| entries.get(2).map(|entry| entry.name.clone()));
        if let Some(name) = name {
            assert!(matches!(
                fs.lookup(fs.root(), &name),
                Err(Error::Corrupted(_))
            ));
            assert!(fs.unlink(fs.root(), &name).is_err());
        }
    }
}

/// Mount, walk, read, and try a few writes and a sync on `image`: any result but a
/// panic is fine.
fn exercise(image: Vec<u8>) {
    let Ok(fs) = mount(image) else { return };
    walk(&fs);
    let root = fs.root();
    if let Ok(file) = fs.create(root, b"fuzz", 0o644) {
        let _ = fs.write_at(file, 30_000, &[7; 3000]);
        let _ = fs.truncate(file, 100);
    }
    let _ = fs.mkdir(root, b"fuzzdir", 0o755);
    let _ = fs.rename(root, b"hello.txt", root, b"fuzzdir");
    let _ = fs.unlink(root, b"big.bin");
    let _ = fs.rmdir(root, b"sub");
    let _ = fs.sync();
    walk(&fs);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes flipped, mostly in the metadata at the front of the image.
    #[test]
    fn flipped_bytes_never_panic(
        flips in proptest::collection::vec((0usize..1 << 20, any::<u8>(), any::<bool>()), 1..24),
    ) {
        let Some(image) = base_image() else { return Ok(()) };
        let mut bad = image.clone();
        for (position, value, front) in flips {
            // Metadata (superblock, descriptors, bitmaps, inode table, directories)
            // lives in the first ~64 KiB of this image.
            let offset = if front { position % (64 * 1024) } else { position % bad.len() };
            bad[offset] ^= value.max(1);
        }
        exercise(bad);
    }
}
