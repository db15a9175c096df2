//! In-guest tests of the virtio-blk driver on the disks `cargo xtask test` attaches to
//! every suite boot: `vda`, a read-write image shared by all the boots of one run (in
//! order), and `vdb`, a small read-only image (see `tools/xtask/src/test.rs`,
//! `DISK_BYTES`). On q35 they are virtio-blk-pci with MSI-X; on microvm virtio-mmio
//! through the I/O APIC.
//!
//! vda's first [`PERSISTENT_SECTORS`] hold the pattern of the boot before
//! (`ktest.disk_previous_seed`, 0 for the fresh zeroed image); this boot checks it,
//! then writes its own (`ktest.disk_seed`), flushes and reads it back, so every
//! boot's writes are read again by the next boot, through the other transport too.
//! The rest of vda is scratch space for the cases of this boot.

use super::TestResult;
use crate::devices::{self, DiskEntry};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use keel_arch_x86_64::ArchInfo;
use keel_virtio::block::{BlockError, SECTOR_SIZE};

/// vda's size as xtask makes it.
const VDA_BYTES: u64 = 16 << 20;
/// vdb's size as xtask makes it.
const VDB_BYTES: u64 = 1 << 20;
/// Sectors at the start of vda that carry one boot's pattern to the next.
const PERSISTENT_SECTORS: u64 = 2048;
/// Where this boot's scratch space starts.
const SCRATCH: u64 = PERSISTENT_SECTORS;

/// The byte at `offset` of `sector` in the pattern `seed` (0: all zeros, the fresh
/// image). Every sector differs from its neighbours and from other seeds.
fn pattern(seed: u64, sector: u64, offset: usize) -> u8 {
    if seed == 0 {
        return 0;
    }
    let mixed = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(sector.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(offset as u64 / 8);
    (mixed >> ((offset % 8) * 8)) as u8
}

fn fill(buffer: &mut [u8], seed: u64, first_sector: u64) {
    for (index, byte) in buffer.iter_mut().enumerate() {
        *byte = pattern(
            seed,
            first_sector + (index / SECTOR_SIZE) as u64,
            index % SECTOR_SIZE,
        );
    }
}

/// The first byte of `buffer` that is not the pattern, as (sector, offset).
fn first_difference(buffer: &[u8], seed: u64, first_sector: u64) -> Option<(u64, usize)> {
    buffer.iter().enumerate().find_map(|(index, &byte)| {
        let sector = first_sector + (index / SECTOR_SIZE) as u64;
        (byte != pattern(seed, sector, index % SECTOR_SIZE))
            .then_some((sector, index % SECTOR_SIZE))
    })
}

fn is_out_of_range(result: &Result<(), BlockError>) -> bool {
    matches!(result, Err(BlockError::OutOfRange { .. }))
}

fn disk(name: &str) -> Option<&'static DiskEntry> {
    devices::disks().iter().find(|entry| entry.name == name)
}

fn seed_argument(info: &ArchInfo, key: &str) -> Option<u64> {
    info.boot.command_line_value(key)?.parse().ok()
}

/// Both disks are found with the sizes and modes xtask gave them, and exactly the
/// devices xtask made unusable (`ktest.expect_failed_disks`, e.g. a queue too short)
/// failed, each with a message naming it.
fn virtio_blk_disks_found_as_attached(info: &ArchInfo) -> TestResult {
    let vda = disk("vda");
    let vdb = disk("vdb");
    check!(
        vda.is_some() && vdb.is_some(),
        "vda and vdb were not both found",
        devices::disks()
    );
    let (vda, vdb) = (vda.unwrap().disk(), vdb.unwrap().disk());
    check!(
        vda.capacity() == VDA_BYTES / 512,
        "vda's capacity",
        vda.capacity()
    );
    check!(
        vdb.capacity() == VDB_BYTES / 512,
        "vdb's capacity",
        vdb.capacity()
    );
    check!(
        !vda.is_read_only() && vdb.is_read_only(),
        "read-only flags",
        vda.is_read_only(),
        vdb.is_read_only()
    );
    let expected_failures = seed_argument(info, "ktest.expect_failed_disks").unwrap_or(0) as usize;
    let failures = devices::failures();
    check!(
        failures.len() == expected_failures,
        "devices that failed their set-up",
        failures,
        expected_failures
    );
    check!(
        failures.iter().all(|text| text.contains("queue")),
        "a failure does not name its cause",
        failures
    );
    Ok(())
}
ktest!(virtio_blk_disks_found_as_attached);

/// The previous boot's pattern is on vda; this boot's pattern, written, flushed and
/// read back, is there for the next one.
fn virtio_blk_pattern_survives_into_the_next_boot(info: &ArchInfo) -> TestResult {
    let Some(vda) = disk("vda") else {
        check!(false, "no vda");
        return Ok(());
    };
    let vda = vda.disk();
    let previous = seed_argument(info, "ktest.disk_previous_seed").unwrap_or(0);
    let seed = seed_argument(info, "ktest.disk_seed").unwrap_or(1);
    let mut buffer = vec![0u8; PERSISTENT_SECTORS as usize * SECTOR_SIZE];
    check!(
        vda.read(0, &mut buffer).is_ok(),
        "reading the persistent area"
    );
    let stale = first_difference(&buffer, previous, 0);
    check!(
        stale.is_none(),
        "the previous boot's pattern is not on the disk",
        previous,
        stale
    );
    fill(&mut buffer, seed, 0);
    let written = vda.write(0, &buffer);
    check!(written.is_ok(), "writing this boot's pattern", written);
    let flushed = vda.flush();
    check!(flushed.is_ok(), "flushing", flushed);
    buffer.fill(0);
    check!(vda.read(0, &mut buffer).is_ok(), "reading back");
    let wrong = first_difference(&buffer, seed, 0);
    check!(
        wrong.is_none(),
        "this boot's pattern did not read back",
        seed,
        wrong
    );
    Ok(())
}
ktest!(virtio_blk_pattern_survives_into_the_next_boot);

/// Requests of one sector up to 256 KiB (more than one request's worth, so the driver
/// splits it) write and read back exactly, at unaligned sector offsets too.
fn virtio_blk_request_sizes_round_trip(_: &ArchInfo) -> TestResult {
    let Some(vda) = disk("vda") else {
        check!(false, "no vda");
        return Ok(());
    };
    let vda = vda.disk();
    let mut sector = SCRATCH;
    for (round, sectors) in [1u64, 3, 8, 128, 512].into_iter().enumerate() {
        let seed = 100 + round as u64;
        let mut buffer = vec![0u8; sectors as usize * SECTOR_SIZE];
        fill(&mut buffer, seed, sector);
        let written = vda.write(sector, &buffer);
        check!(written.is_ok(), "write", sectors, written);
        buffer.fill(0xa5);
        let read = vda.read(sector, &mut buffer);
        check!(read.is_ok(), "read", sectors, read);
        let wrong = first_difference(&buffer, seed, sector);
        check!(wrong.is_none(), "read back differs", sectors, wrong);
        sector += sectors + 1;
    }
    Ok(())
}
ktest!(virtio_blk_request_sizes_round_trip);

/// Threads on every CPU issuing interleaved writes and reads.
const THREADS: usize = 16;
/// Sectors each thread owns.
const SECTORS_PER_THREAD: u64 = 256;
/// Sectors per request.
const REQUEST_SECTORS: u64 = 8;

/// One thread's part: write its range request by request with a pattern of its own,
/// reading each request back right after (while the other threads' requests are in
/// flight), then read the whole range again. Returns the first wrong (sector, offset)
/// or the failed request's error.
fn interleaved_thread(
    vda: &'static dyn devices::Disk,
    thread: usize,
) -> Result<(), (u64, usize, Option<BlockError>)> {
    let first = SCRATCH + 4096 + thread as u64 * SECTORS_PER_THREAD;
    let seed = 1000 + thread as u64;
    let mut buffer = vec![0u8; (REQUEST_SECTORS as usize) * SECTOR_SIZE];
    for request in 0..SECTORS_PER_THREAD / REQUEST_SECTORS {
        let sector = first + request * REQUEST_SECTORS;
        fill(&mut buffer, seed, sector);
        vda.write(sector, &buffer)
            .map_err(|error| (sector, 0, Some(error)))?;
        buffer.fill(0);
        vda.read(sector, &mut buffer)
            .map_err(|error| (sector, 0, Some(error)))?;
        if let Some((sector, offset)) = first_difference(&buffer, seed, sector) {
            return Err((sector, offset, None));
        }
    }
    let mut whole = vec![0u8; SECTORS_PER_THREAD as usize * SECTOR_SIZE];
    vda.read(first, &mut whole)
        .map_err(|error| (first, 0, Some(error)))?;
    match first_difference(&whole, seed, first) {
        Some((sector, offset)) => Err((sector, offset, None)),
        None => Ok(()),
    }
}

/// 16 threads over every CPU, disjoint ranges, interleaved writes and reads: every
/// byte is exact, checked by each thread as it goes and by this thread after all have
/// joined (so a write that landed in another thread's range shows up either way).
fn virtio_blk_sixteen_threads_interleaved(_: &ArchInfo) -> TestResult {
    let Some(entry) = disk("vda") else {
        check!(false, "no vda");
        return Ok(());
    };
    let vda = entry.disk();
    let requests_before = vda.stats().requests;
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let mut handles = Vec::new();
    for thread in 0..THREADS {
        let options = keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(thread % cpus));
        let spawned = scheduler.spawn(options, move || interleaved_thread(vda, thread));
        check!(spawned.is_ok(), "spawning a disk thread", thread);
        handles.push(spawned.unwrap());
    }
    let mut failures = Vec::new();
    for (thread, handle) in handles.into_iter().enumerate() {
        match scheduler.join(handle) {
            Some(Ok(())) => {}
            Some(Err(failure)) => failures.push((thread, failure)),
            None => failures.push((thread, (0, 0, None))),
        }
    }
    check!(
        failures.is_empty(),
        "a thread saw wrong contents or an error",
        failures
    );
    for thread in 0..THREADS {
        let first = SCRATCH + 4096 + thread as u64 * SECTORS_PER_THREAD;
        let mut whole = vec![0u8; SECTORS_PER_THREAD as usize * SECTOR_SIZE];
        check!(
            vda.read(first, &mut whole).is_ok(),
            "reading a range after the join",
            thread
        );
        let wrong = first_difference(&whole, 1000 + thread as u64, first);
        check!(
            wrong.is_none(),
            "a range is wrong after the join",
            thread,
            wrong
        );
    }
    let requests = vda.stats().requests - requests_before;
    check!(
        requests >= (THREADS as u64) * (2 * SECTORS_PER_THREAD / REQUEST_SECTORS + 1),
        "fewer requests reached the driver than were issued",
        requests
    );
    Ok(())
}
ktest!(virtio_blk_sixteen_threads_interleaved);

/// An out-of-range sector, a bad length and a write to the read-only disk are errors
/// (not panics), the device sees none of them, and it works on afterwards.
fn virtio_blk_bad_requests_are_errors(_: &ArchInfo) -> TestResult {
    let (Some(vda), Some(vdb)) = (disk("vda"), disk("vdb")) else {
        check!(false, "no vda and vdb");
        return Ok(());
    };
    let (vda, vdb) = (vda.disk(), vdb.disk());
    let capacity = vda.capacity();
    let before = vda.stats().requests;
    let mut sector = [0u8; SECTOR_SIZE];
    let past_end = vda.read(capacity, &mut sector);
    check!(is_out_of_range(&past_end), "reading past the end", past_end);
    let straddling = vda.write(capacity - 1, &[0u8; 2 * SECTOR_SIZE]);
    check!(
        is_out_of_range(&straddling),
        "a write across the end",
        straddling
    );
    let huge = vda.read(u64::MAX, &mut sector);
    check!(is_out_of_range(&huge), "sector u64::MAX", huge);
    let short = vda.read(0, &mut sector[..100]);
    check!(
        short == Err(BlockError::BadLength(100)),
        "a 100-byte read",
        short
    );
    let empty = vda.write(0, &[]);
    check!(
        empty == Err(BlockError::BadLength(0)),
        "an empty write",
        empty
    );
    check!(
        vda.stats().requests == before,
        "a refused request reached the device",
        vda.stats().requests - before
    );
    let read_only = vdb.write(0, &sector);
    check!(
        read_only == Err(BlockError::ReadOnly),
        "a write to the read-only disk",
        read_only
    );
    check!(
        vdb.read(0, &mut sector).is_ok(),
        "a read of the read-only disk"
    );
    check!(
        vda.read(SCRATCH, &mut sector).is_ok(),
        "vda after the bad requests"
    );
    Ok(())
}
ktest!(virtio_blk_bad_requests_are_errors);

/// Requests complete by interrupt, and the waiting thread sleeps instead of polling:
/// over 64 reads the driver looks at the used ring a bounded number of times per
/// request, the vector's interrupt count grows, and the CPUs halted meanwhile (the
/// waiting thread was the only one; its CPU had nothing to do).
fn virtio_blk_waits_sleep_until_the_interrupt(_: &ArchInfo) -> TestResult {
    let Some(entry) = disk("vda") else {
        check!(false, "no vda");
        return Ok(());
    };
    let vda = entry.disk();
    let before = vda.stats();
    let interrupts_before = entry.interrupts();
    let halts_before = crate::threads::COUNTERS.halts.load(Ordering::Relaxed);
    let mut buffer = vec![0u8; 8 * SECTOR_SIZE];
    const READS: u64 = 64;
    for request in 0..READS {
        let read = vda.read(SCRATCH + request * 8, &mut buffer);
        check!(read.is_ok(), "a read failed", request, read);
    }
    let after = vda.stats();
    let interrupts = entry.interrupts() - interrupts_before;
    let halts = crate::threads::COUNTERS.halts.load(Ordering::Relaxed) - halts_before;
    let checks = after.used_ring_checks - before.used_ring_checks;
    check!(
        interrupts > 0,
        "no interrupt arrived on the disk's vector",
        interrupts
    );
    check!(
        after.interrupts > before.interrupts,
        "the driver's handler did not run",
        after.interrupts
    );
    check!(
        checks <= 4 * READS,
        "the driver polled the used ring",
        checks
    );
    check!(
        halts > 0,
        "no CPU halted while the reads were in flight",
        halts
    );
    Ok(())
}
ktest!(virtio_blk_waits_sleep_until_the_interrupt);

/// With `ktest.expect_rng=1` (xtask attaches `-device virtio-rng-pci` on q35), the
/// virtio-rng device was found and gives bytes: two 256-byte reads, neither all zero
/// and not equal to each other (a device or driver that returns an untouched buffer,
/// or the same bytes twice, fails).
fn virtio_rng_gives_fresh_bytes(info: &ArchInfo) -> TestResult {
    let expected = seed_argument(info, "ktest.expect_rng").unwrap_or(0) == 1;
    check!(
        devices::has_virtio_entropy() == expected,
        "virtio-rng found",
        devices::has_virtio_entropy(),
        expected
    );
    if !expected {
        return Ok(());
    }
    let mut first = [0u8; 256];
    let mut second = [0u8; 256];
    check!(devices::virtio_entropy(&mut first), "first virtio-rng read");
    check!(
        devices::virtio_entropy(&mut second),
        "second virtio-rng read"
    );
    check!(first.iter().any(|&byte| byte != 0), "all zero", first);
    check!(first != second, "the same bytes twice", first);
    Ok(())
}
ktest!(virtio_rng_gives_fresh_bytes);
