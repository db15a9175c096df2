//! What the virtio-blk driver puts on the queue: the request bytes the fake device
//! saw (type, sector, lengths, indirect or not), splitting of large requests,
//! completion out of order, error statuses and flush.

mod support;

use keel_virtio::blk::{MAX_REQUEST_BYTES, features};
use keel_virtio::block::{BlockDevice, BlockError};
use std::sync::Arc;
use std::thread;
use support::{
    DiskConfig, Policy, REQUEST_FLUSH, REQUEST_IN, REQUEST_OUT, STATUS_IOERR, STATUS_UNSUPP,
    SeenRequest, pattern, start_driver,
};

fn both_layouts(test: impl Fn(bool)) {
    for indirect in [false, true] {
        test(indirect);
    }
}

#[test]
fn a_write_and_a_read_are_encoded_as_the_spec_says() {
    both_layouts(|indirect| {
        let (driver, disk) = start_driver(DiskConfig::modern(64, indirect), Policy::default());
        let data = pattern(5, 1, 1024);
        driver.write(5, &data).unwrap();
        assert_eq!(disk.contents(5, 1024), data);
        let mut back = vec![0; 1024];
        driver.read(5, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            disk.seen(),
            [
                SeenRequest {
                    kind: REQUEST_OUT,
                    sector: 5,
                    data_len: 1024,
                    indirect,
                },
                SeenRequest {
                    kind: REQUEST_IN,
                    sector: 5,
                    data_len: 1024,
                    indirect,
                },
            ]
        );
        assert_eq!(disk.problems(), Vec::<String>::new());
        assert_eq!(driver.stats().requests, 2);
        assert_eq!(
            driver.max_requests_in_flight(),
            if indirect { 16 } else { 5 },
            "indirect = {indirect}"
        );
    });
}

#[test]
fn the_driver_reports_what_it_negotiated() {
    let mut config = DiskConfig::modern(4096, true);
    config.features |= features::RING_EVENT_IDX | (1 << 6) | (1 << 12);
    let offered = config.features;
    let (driver, disk) = start_driver(config, Policy::default());
    let info = driver.info();
    assert_eq!(info.capacity, 4096);
    assert!(!info.read_only);
    assert_eq!(info.device_features, offered);
    assert_eq!(
        info.negotiated_features,
        features::VERSION_1
            | features::FLUSH
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
    );
    assert_eq!(disk.driver_features(), info.negotiated_features);
    assert_eq!(info.queue_size, 16);
    assert_eq!(driver.capacity(), 4096);
    // The device is live: DRIVER_OK.
    assert!(disk.status().bits() & 4 != 0);
}

#[test]
fn large_requests_are_split_at_64_kib() {
    both_layouts(|indirect| {
        let (driver, disk) = start_driver(DiskConfig::modern(1024, indirect), Policy::default());
        assert_eq!(driver.max_request_bytes(), MAX_REQUEST_BYTES);
        let len = 3 * MAX_REQUEST_BYTES + 8 * 512;
        let data = pattern(7, 2, len);
        driver.write(7, &data).unwrap();
        let mut back = vec![0; len];
        driver.read(7, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(disk.contents(7, len), data);
        let expected_chunks = [(7, 65536), (135, 65536), (263, 65536), (391, 4096)];
        let seen = disk.seen();
        assert_eq!(seen.len(), 8);
        for (kind, requests) in [(REQUEST_OUT, &seen[..4]), (REQUEST_IN, &seen[4..])] {
            let got: Vec<_> = requests
                .iter()
                .map(|request| {
                    assert_eq!(request.kind, kind);
                    (request.sector, request.data_len)
                })
                .collect();
            assert_eq!(got, expected_chunks);
        }
        assert_eq!(disk.problems(), Vec::<String>::new());
    });
}

#[test]
fn the_devices_size_max_bounds_each_request() {
    let mut config = DiskConfig::modern(256, true);
    config.size_max = Some(4096 + 100);
    let (driver, disk) = start_driver(config, Policy::default());
    assert_eq!(driver.max_request_bytes(), 4096);
    let data = pattern(0, 3, 12 * 512);
    driver.write(0, &data).unwrap();
    let sizes: Vec<_> = disk.seen().iter().map(|r| (r.sector, r.data_len)).collect();
    assert_eq!(sizes, [(0, 4096), (8, 2048)]);
    assert_eq!(disk.contents(0, data.len()), data);
}

#[test]
fn requests_completed_in_reverse_order_all_finish_with_their_own_data() {
    both_layouts(|indirect| {
        let in_flight = 4;
        let (driver, disk) = start_driver(
            DiskConfig::modern(256, indirect),
            Policy {
                hold_until_in_flight: in_flight,
                reverse: true,
                ..Policy::default()
            },
        );
        for index in 0..in_flight as u64 {
            disk.fill(index * 8, &pattern(index * 8, 9, 8 * 512));
        }
        let readers: Vec<_> = (0..in_flight as u64)
            .map(|index| {
                let driver = Arc::clone(&driver);
                thread::spawn(move || {
                    let mut buf = vec![0; 8 * 512];
                    driver.read(index * 8, &mut buf).unwrap();
                    assert_eq!(buf, pattern(index * 8, 9, 8 * 512));
                })
            })
            .collect();
        for reader in readers {
            reader.join().unwrap();
        }
        assert_eq!(disk.max_in_flight(), in_flight);
        assert_eq!(disk.problems(), Vec::<String>::new());
        // The last one completed first woke nobody but the heads after it.
        assert!(driver.stats().wakeups >= 1);
    });
}

#[test]
fn error_statuses_become_block_errors_and_the_device_keeps_working() {
    let (driver, disk) = start_driver(DiskConfig::modern(64, true), Policy::default());
    let mut buf = vec![0; 512];
    for (status, expected) in [
        (STATUS_IOERR, BlockError::Io),
        (STATUS_UNSUPP, BlockError::Unsupported),
        (3, BlockError::Device),
        (0x7f, BlockError::Device),
    ] {
        disk.set_policy(Policy {
            fail_sector: Some((10, status)),
            ..Policy::default()
        });
        assert_eq!(driver.read(10, &mut buf), Err(expected), "status {status}");
        assert_eq!(driver.write(10, &buf), Err(expected), "status {status}");
        // Other sectors still work.
        driver.write(11, &pattern(11, 1, 512)).unwrap();
        driver.read(11, &mut buf).unwrap();
        assert_eq!(buf, pattern(11, 1, 512));
    }
    assert_eq!(disk.problems(), Vec::<String>::new());
}

#[test]
fn flush_sends_one_flush_request_and_reports_its_status() {
    both_layouts(|indirect| {
        let (driver, disk) = start_driver(DiskConfig::modern(64, indirect), Policy::default());
        driver.write(1, &pattern(1, 1, 512)).unwrap();
        driver.flush().unwrap();
        assert_eq!(disk.flushes(), 1);
        assert_eq!(
            disk.seen().last(),
            Some(&SeenRequest {
                kind: REQUEST_FLUSH,
                sector: 0,
                data_len: 0,
                indirect,
            })
        );
        disk.set_policy(Policy {
            flush_status: Some(STATUS_IOERR),
            ..Policy::default()
        });
        assert_eq!(driver.flush(), Err(BlockError::Io));
        disk.set_policy(Policy {
            flush_status: Some(STATUS_UNSUPP),
            ..Policy::default()
        });
        assert_eq!(driver.flush(), Err(BlockError::Unsupported));
        assert_eq!(disk.problems(), Vec::<String>::new());
    });
}

#[test]
fn flush_without_a_write_cache_sends_nothing() {
    let mut config = DiskConfig::modern(64, true);
    config.features &= !features::FLUSH;
    let (driver, disk) = start_driver(config, Policy::default());
    driver.flush().unwrap();
    assert_eq!(disk.seen(), []);
}

#[test]
fn flushes_interleaved_with_concurrent_writes_all_complete() {
    both_layouts(|indirect| {
        let (driver, disk) = start_driver(DiskConfig::modern(512, indirect), Policy::default());
        let workers: Vec<_> = (0..8u64)
            .map(|worker| {
                let driver = Arc::clone(&driver);
                thread::spawn(move || {
                    for round in 0..10u8 {
                        let sector = worker * 32 + u64::from(round);
                        driver.write(sector, &pattern(sector, round, 512)).unwrap();
                        if round % 3 == worker as u8 % 3 {
                            driver.flush().unwrap();
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        for worker in 0..8u64 {
            for round in 0..10u8 {
                let sector = worker * 32 + u64::from(round);
                assert_eq!(disk.contents(sector, 512), pattern(sector, round, 512));
            }
        }
        assert!(disk.flushes() > 0);
        assert_eq!(disk.problems(), Vec::<String>::new());
    });
}

#[test]
fn a_legacy_transport_without_version_1_is_driven() {
    let mut config = DiskConfig::modern(64, false);
    config.features &= !features::VERSION_1;
    config.legacy = true;
    let (driver, disk) = start_driver(config, Policy::default());
    driver.write(3, &pattern(3, 4, 512)).unwrap();
    assert_eq!(disk.contents(3, 512), pattern(3, 4, 512));
    assert_eq!(disk.problems(), Vec::<String>::new());
}
