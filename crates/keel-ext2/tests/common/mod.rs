//! Helpers for the host tests: temporary directories, images made by e2fsprogs'
//! `mkfs.ext2 -d`, `e2fsck -fn` and `debugfs`, an in-memory block device.

#![allow(dead_code)]

use keel_ext2::{Clock, Ext2, MountOptions};
use keel_hosted::FileBlockDevice;
use keel_virtio::block::{BlockDevice, BlockError, SECTOR_SIZE, check_request};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "keel-ext2-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
}

/// Whether e2fsprogs is installed; prints why a test is skipped if not.
pub fn have_e2fsprogs(test: &str) -> bool {
    let ok = tool("mkfs.ext2").is_some() && tool("e2fsck").is_some() && tool("debugfs").is_some();
    if !ok {
        eprintln!("SKIPPED {test}: e2fsprogs (mkfs.ext2, e2fsck, debugfs) is not installed");
    }
    ok
}

/// Deterministic file contents.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|index| ((index * 31 + usize::from(seed) * 7 + index / 251) % 251) as u8)
        .collect()
}

/// The long target of the slow symlink (more than 60 bytes).
pub const SLOW_TARGET: &str =
    "sub/deeper/and/a/long/path/that/does/not/fit/in/the/sixty/bytes/of/i_block.txt";

/// Fills `dir` with the test tree: files of several sizes (one crossing the single-
/// and one the double-indirect limit at 1 KiB blocks), subdirectories, a fast and a
/// slow symlink, a hard link.
pub fn fill_tree(dir: &Path) {
    std::fs::write(dir.join("hello.txt"), b"hello, keel!\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("twelve.bin"), pattern(12 * 1024 + 100, 1)).unwrap();
    std::fs::write(dir.join("big.bin"), pattern(300 * 1024 + 7, 2)).unwrap();
    std::fs::write(dir.join("block.bin"), pattern(4096, 3)).unwrap();
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("sub/empty_dir")).unwrap();
    std::fs::write(dir.join("sub/deeper/file.txt"), pattern(5000, 4)).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("fast_link")).unwrap();
    std::os::unix::fs::symlink(SLOW_TARGET, dir.join("slow_link")).unwrap();
    std::fs::hard_link(dir.join("hello.txt"), dir.join("sub/hard_link")).unwrap();
}

/// `mkfs.ext2 -q -F -b BLOCK -d DIR IMAGE SIZE_KIB` (plus `extra` options).
pub fn mkfs(dir: Option<&Path>, image: &Path, block_size: u32, size_kib: u64, extra: &[&str]) {
    let mut command = Command::new(tool("mkfs.ext2").unwrap());
    command.args(["-q", "-F", "-b", &block_size.to_string()]);
    command.args(extra);
    if let Some(dir) = dir {
        command.arg("-d").arg(dir);
    }
    command.arg(image).arg(format!("{size_kib}k"));
    let output = command.output().unwrap();
    assert!(output.status.success(), "mkfs failed: {output:?}");
}

/// `e2fsck -fn IMAGE`: exit code and output.
pub fn e2fsck(image: &Path) -> (i32, String) {
    let output = Command::new(tool("e2fsck").unwrap())
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Asserts that `e2fsck -fn` finds `image` clean (exit 0).
pub fn assert_fsck_clean(image: &Path) {
    let (code, text) = e2fsck(image);
    assert_eq!(code, 0, "e2fsck -fn exited {code}:\n{text}");
}

/// `debugfs -R "cat PATH" IMAGE`.
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let output = Command::new(tool("debugfs").unwrap())
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(output.status.success(), "debugfs failed: {output:?}");
    output.stdout
}

/// `debugfs -R "stat PATH" IMAGE` output.
pub fn debugfs_stat(image: &Path, path: &str) -> String {
    let output = Command::new(tool("debugfs").unwrap())
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The host's time.
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32
    }
}

pub fn open_device(image: &Path) -> FileBlockDevice {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    FileBlockDevice::new(file, false).unwrap()
}

pub fn mount_file(image: &Path, cache_bytes: usize) -> Ext2<FileBlockDevice> {
    Ext2::mount_with(
        open_device(image),
        MountOptions {
            read_only: false,
            cache_bytes,
        },
        Box::new(HostClock),
    )
    .unwrap()
}

/// A disk in memory.
#[derive(Debug)]
pub struct MemoryDevice {
    pub data: Mutex<Vec<u8>>,
}

impl MemoryDevice {
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data: Mutex::new(data),
        }
    }
}

impl BlockDevice for MemoryDevice {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let data = self.data.lock().unwrap();
        check_request(sector, buf.len(), (data.len() / SECTOR_SIZE) as u64)?;
        let start = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let mut data = self.data.lock().unwrap();
        check_request(sector, buf.len(), (data.len() / SECTOR_SIZE) as u64)?;
        let start = sector as usize * SECTOR_SIZE;
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    fn capacity(&self) -> u64 {
        (self.data.lock().unwrap().len() / SECTOR_SIZE) as u64
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

/// Reads a whole regular file through Keel.
pub fn read_all<D: BlockDevice>(fs: &Ext2<D>, inode: keel_ext2::InodeNumber) -> Vec<u8> {
    let size = fs.stat(inode).unwrap().size as usize;
    let mut buf = vec![0; size];
    let mut done = 0;
    while done < size {
        let count = fs.read_at(inode, done as u64, &mut buf[done..]).unwrap();
        assert!(count > 0);
        done += count;
    }
    buf
}

/// Looks a `/`-separated path up from the root (no symlink following).
pub fn resolve<D: BlockDevice>(
    fs: &Ext2<D>,
    path: &str,
) -> keel_ext2::Result<keel_ext2::InodeNumber> {
    let mut inode = fs.root();
    for part in path.split('/').filter(|part| !part.is_empty()) {
        inode = fs.lookup(inode, part.as_bytes())?;
    }
    Ok(inode)
}

/// Byte offset of inode `ino`'s record in an image (1 KiB..64 KiB blocks, group 0's
/// descriptor table right after the superblock).
pub fn inode_offset(image: &[u8], ino: u32) -> usize {
    let le32 = |offset: usize| u32::from_le_bytes(image[offset..offset + 4].try_into().unwrap());
    let block_size = 1024usize << le32(1024 + 24);
    let first_data_block = le32(1024 + 20) as usize;
    let inodes_per_group = le32(1024 + 40);
    let inode_size = u16::from_le_bytes(image[1024 + 88..1024 + 90].try_into().unwrap()) as usize;
    let group = ((ino - 1) / inodes_per_group) as usize;
    let descriptor = (first_data_block + 1) * block_size + group * 32;
    let table = le32(descriptor + 8) as usize;
    table * block_size + ((ino - 1) % inodes_per_group) as usize * inode_size
}

pub fn block_size_of(image: &[u8]) -> usize {
    1024usize << u32::from_le_bytes(image[1024 + 24..1024 + 28].try_into().unwrap())
}
