//! Bad input never reaches the device, and a device the driver cannot use is refused
//! with an error that names the problem.

mod support;

use keel_virtio::blk::{InitError, features};
use keel_virtio::block::{BlockDevice, BlockError};
use support::{DiskConfig, FakeDisk, Policy, TestBlock, start_driver};

#[test]
fn out_of_range_requests_are_refused_before_the_device() {
    let (driver, disk) = start_driver(DiskConfig::modern(100, true), Policy::default());
    let mut buf = vec![0; 1024];
    let out_of_range = |sector: u64, count: u64| BlockError::OutOfRange {
        sector,
        count,
        capacity: 100,
    };
    assert_eq!(driver.read(100, &mut buf[..512]), Err(out_of_range(100, 1)));
    assert_eq!(driver.read(99, &mut buf), Err(out_of_range(99, 2)));
    assert_eq!(driver.write(99, &buf), Err(out_of_range(99, 2)));
    assert_eq!(
        driver.read(u64::MAX, &mut buf[..512]),
        Err(out_of_range(u64::MAX, 1))
    );
    assert_eq!(
        driver.write(u64::MAX - 1, &buf),
        Err(out_of_range(u64::MAX - 1, 2))
    );
    assert_eq!(disk.seen(), []);
    // The last sector itself is fine.
    driver.read(99, &mut buf[..512]).unwrap();
    assert_eq!(disk.seen().len(), 1);
}

#[test]
fn empty_and_unaligned_buffers_are_refused_without_a_panic() {
    let (driver, disk) = start_driver(DiskConfig::modern(100, false), Policy::default());
    for len in [0, 1, 100, 511, 513, 1000] {
        let mut buf = vec![0; len];
        assert_eq!(driver.read(0, &mut buf), Err(BlockError::BadLength(len)));
        assert_eq!(driver.write(0, &buf), Err(BlockError::BadLength(len)));
    }
    assert_eq!(disk.seen(), []);
    assert_eq!(driver.stats().requests, 0);
}

#[test]
fn writes_to_a_read_only_device_are_refused_and_reads_work() {
    let mut config = DiskConfig::modern(64, true);
    config.features |= features::RO;
    let (driver, disk) = start_driver(config, Policy::default());
    assert!(driver.is_read_only());
    assert!(driver.info().read_only);
    assert_eq!(driver.write(0, &[1; 512]), Err(BlockError::ReadOnly));
    disk.fill(2, &[7; 512]);
    let mut buf = vec![0; 512];
    driver.read(2, &mut buf).unwrap();
    assert_eq!(buf, [7; 512]);
    assert_eq!(disk.seen().len(), 1);
    assert_eq!(disk.contents(0, 512), [0; 512]);
    assert_eq!(disk.problems(), Vec::<String>::new());
}

const STATUS_FAILED: u32 = 128;

#[test]
fn a_queue_shorter_than_16_is_refused_by_name() {
    let mut config = DiskConfig::modern(64, true);
    config.max_queue_size = 8;
    let (disk, transport) = FakeDisk::start(config, Policy::default());
    let error = TestBlock::new(transport).unwrap_err();
    assert_eq!(
        error,
        InitError::QueueTooShort {
            offered: 8,
            needed: 16
        }
    );
    assert_eq!(
        error.to_string(),
        "its queue holds 8 descriptors, the driver needs 16"
    );
    assert_eq!(disk.status().bits(), STATUS_FAILED);
}

#[test]
fn a_modern_device_without_version_1_is_refused_by_name() {
    let mut config = DiskConfig::modern(64, true);
    config.features &= !features::VERSION_1;
    let offered = config.features;
    let (disk, transport) = FakeDisk::start(config, Policy::default());
    let error = TestBlock::new(transport).unwrap_err();
    assert_eq!(error, InitError::NoUsableFeatures { offered });
    assert!(error.to_string().contains("no usable feature set"));
    assert_eq!(disk.status().bits(), STATUS_FAILED);
}
