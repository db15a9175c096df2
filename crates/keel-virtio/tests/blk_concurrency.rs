//! Many threads at once: interleaved reads and writes with exact contents, several
//! requests really in flight at the device, completion by interrupt and wake-up with a
//! bounded number of used-ring checks per request (no polling).

mod support;

use keel_virtio::blk::features;
use keel_virtio::block::BlockDevice;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use support::{DiskConfig, Policy, pattern, start_driver};

const THREADS: u64 = 16;
const SECTORS_PER_THREAD: u64 = 24;

fn sixteen_threads_on_disjoint_ranges(indirect: bool, extra_features: u64, policy: Policy) {
    let mut config = DiskConfig::modern(THREADS * SECTORS_PER_THREAD, indirect);
    config.features |= extra_features;
    let (driver, disk) = start_driver(config, policy);
    let start = Arc::new(Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|worker| {
            let driver = Arc::clone(&driver);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let base = worker * SECTORS_PER_THREAD;
                // What this thread's range must hold, sector by sector.
                let mut expected = vec![0u8; (SECTORS_PER_THREAD * 512) as usize];
                start.wait();
                for round in 0..24u64 {
                    let offset = (round * 5 + worker) % (SECTORS_PER_THREAD - 8);
                    let count = 1 + (round + worker) % 8;
                    let len = (count * 512) as usize;
                    let sector = base + offset;
                    let data = pattern(sector, (round + worker) as u8, len);
                    driver.write(sector, &data).unwrap();
                    let at = (offset * 512) as usize;
                    expected[at..at + len].copy_from_slice(&data);
                    // Read back a different, overlapping stretch and check it now.
                    let read_offset = (offset + count / 2) % (SECTORS_PER_THREAD - 8);
                    let mut back = vec![0; 8 * 512];
                    driver.read(base + read_offset, &mut back).unwrap();
                    let read_at = (read_offset * 512) as usize;
                    assert_eq!(
                        back,
                        expected[read_at..read_at + 8 * 512],
                        "thread {worker} round {round}"
                    );
                }
                expected
            })
        })
        .collect();
    for (worker, handle) in workers.into_iter().enumerate() {
        let expected = handle.join().unwrap();
        let base = worker as u64 * SECTORS_PER_THREAD;
        assert_eq!(
            disk.contents(base, expected.len()),
            expected,
            "thread {worker}"
        );
    }
    assert_eq!(disk.problems(), Vec::<String>::new());
    let stats = driver.stats();
    assert_eq!(stats.requests, THREADS * 24 * 2);
    assert!(stats.interrupts > 0);
}

#[test]
fn sixteen_threads_with_indirect_descriptors() {
    sixteen_threads_on_disjoint_ranges(true, 0, Policy::default());
}

#[test]
fn sixteen_threads_with_direct_descriptors() {
    sixteen_threads_on_disjoint_ranges(false, 0, Policy::default());
}

#[test]
fn sixteen_threads_with_completions_in_reverse() {
    sixteen_threads_on_disjoint_ranges(
        true,
        0,
        Policy {
            hold_until_in_flight: 3,
            reverse: true,
            ..Policy::default()
        },
    );
}

/// With VIRTIO_F_EVENT_IDX the device interrupts only when the used ring goes from
/// empty to non-empty (as the driver last saw it): the poppers' wake-ups carry the rest.
#[test]
fn sixteen_threads_with_event_idx_and_completions_in_reverse() {
    for indirect in [false, true] {
        sixteen_threads_on_disjoint_ranges(
            indirect,
            features::RING_EVENT_IDX,
            Policy {
                hold_until_in_flight: 4,
                reverse: true,
                ..Policy::default()
            },
        );
    }
}

/// The device holds the first request until `limit` are queued: they can only all
/// arrive if the driver has that many in flight at once.
#[test]
fn as_many_requests_as_the_queue_allows_are_in_flight_at_once() {
    for indirect in [false, true] {
        let (driver, disk) = start_driver(DiskConfig::modern(1024, indirect), Policy::default());
        let limit = driver.max_requests_in_flight();
        disk.set_policy(Policy {
            hold_until_in_flight: limit,
            ..Policy::default()
        });
        let readers: Vec<_> = (0..limit as u64)
            .map(|reader| {
                let driver = Arc::clone(&driver);
                thread::spawn(move || {
                    let mut buf = vec![0; 512];
                    driver.read(reader * 4, &mut buf).unwrap();
                })
            })
            .collect();
        for reader in readers {
            reader.join().unwrap();
        }
        assert_eq!(disk.max_in_flight(), limit, "indirect = {indirect}");
        assert_eq!(disk.problems(), Vec::<String>::new());
    }
}

/// With every completion 50 ms late, a polling driver would look at the used ring
/// thousands of times per request; this one looks a few times.
#[test]
fn waiting_threads_sleep_instead_of_polling() {
    let (driver, disk) = start_driver(
        DiskConfig::modern(256, true),
        Policy {
            delay: Duration::from_millis(50),
            ..Policy::default()
        },
    );
    let readers: Vec<_> = (0..8u64)
        .map(|reader| {
            let driver = Arc::clone(&driver);
            thread::spawn(move || {
                let mut buf = vec![0; 1024];
                for round in 0..3 {
                    driver.read(reader * 16 + round * 2, &mut buf).unwrap();
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
    let stats = driver.stats();
    println!("{stats:?}");
    assert_eq!(stats.requests, 24);
    assert!(stats.interrupts > 0, "{stats:?}");
    assert!(stats.wakeups > 0, "{stats:?}");
    assert!(
        stats.used_ring_checks <= 6 * stats.requests,
        "{} used-ring checks for {} requests",
        stats.used_ring_checks,
        stats.requests
    );
    assert!(disk.interrupts_raised() > 0);
    assert_eq!(disk.problems(), Vec::<String>::new());
}

/// A flush is waited for asleep too (virtio-drivers' own flush polls): with the
/// device 50 ms late, flushes from several threads beside writers look at the used
/// ring a few times per request, and every flush reaches the device.
#[test]
fn flushes_sleep_instead_of_polling() {
    let (driver, disk) = start_driver(
        DiskConfig::modern(256, true),
        Policy {
            delay: Duration::from_millis(50),
            ..Policy::default()
        },
    );
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let driver = Arc::clone(&driver);
            thread::spawn(move || {
                let buf = vec![worker as u8; 512];
                for round in 0..2 {
                    driver.write(worker * 8 + round, &buf).unwrap();
                    driver.flush().unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let stats = driver.stats();
    assert_eq!(stats.requests, 16, "{stats:?}");
    assert_eq!(disk.flushes(), 8);
    assert!(
        stats.used_ring_checks <= 6 * stats.requests,
        "{} used-ring checks for {} requests",
        stats.used_ring_checks,
        stats.requests
    );
    assert_eq!(disk.problems(), Vec::<String>::new());
}

#[test]
fn the_driver_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<support::TestBlock>();
    fn assert_block_device<T: BlockDevice>() {}
    assert_block_device::<support::TestBlock>();
}
