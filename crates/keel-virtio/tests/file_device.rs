//! `FileBlockDevice`: round trip on a temporary file, read-only refusal, range checks.

use keel_hosted::FileBlockDevice;
use keel_virtio::block::{BlockDevice, BlockError};
use std::fs::{File, OpenOptions};
use std::path::PathBuf;

/// A fresh file of `len` zero bytes, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, len: u64) -> Self {
        let path =
            std::env::temp_dir().join(format!("keel-virtio-{}-{name}.img", std::process::id()));
        File::create(&path).unwrap().set_len(len).unwrap();
        Self(path)
    }

    fn open(&self, writable: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.0)
            .unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_round_trip_through_the_file() {
    let file = TempFile::new("round-trip", 64 * 512);
    let disk = FileBlockDevice::new(file.open(true), false).unwrap();
    assert_eq!(disk.capacity(), 64);
    assert!(!disk.is_read_only());
    let data: Vec<u8> = (0..3 * 512).map(|i| (i % 251) as u8).collect();
    disk.write(10, &data).unwrap();
    disk.flush().unwrap();
    let mut back = vec![0; data.len()];
    disk.read(10, &mut back).unwrap();
    assert_eq!(back, data);
    let raw = std::fs::read(&file.0).unwrap();
    assert_eq!(&raw[10 * 512..13 * 512], &data[..]);
    // A second device over the same file sees the data.
    let again = FileBlockDevice::new(file.open(false), true).unwrap();
    let mut other = vec![0; 512];
    again.read(11, &mut other).unwrap();
    assert_eq!(other, data[512..1024]);
}

#[test]
fn a_read_only_device_refuses_writes() {
    let file = TempFile::new("read-only", 8 * 512);
    let disk = FileBlockDevice::new(file.open(false), true).unwrap();
    assert!(disk.is_read_only());
    assert_eq!(disk.write(0, &[1; 512]), Err(BlockError::ReadOnly));
    disk.flush().unwrap();
    let mut buf = vec![1; 512];
    disk.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0; 512]);
}

#[test]
fn bad_requests_get_the_same_errors_as_the_virtio_driver() {
    // 10.5 sectors: the partial one is not part of the disk.
    let file = TempFile::new("range", 10 * 512 + 256);
    let disk = FileBlockDevice::new(file.open(true), false).unwrap();
    assert_eq!(disk.capacity(), 10);
    let mut buf = vec![0; 1024];
    assert_eq!(
        disk.read(9, &mut buf),
        Err(BlockError::OutOfRange {
            sector: 9,
            count: 2,
            capacity: 10
        })
    );
    assert_eq!(
        disk.write(u64::MAX, &buf),
        Err(BlockError::OutOfRange {
            sector: u64::MAX,
            count: 2,
            capacity: 10
        })
    );
    assert_eq!(disk.read(0, &mut buf[..0]), Err(BlockError::BadLength(0)));
    assert_eq!(disk.write(0, &buf[..700]), Err(BlockError::BadLength(700)));
    disk.read(9, &mut buf[..512]).unwrap();
}
