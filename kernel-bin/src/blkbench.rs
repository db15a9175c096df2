//! Block-device throughput in the guest (`app=blkbench`), for `cargo xtask bench blk`,
//! which runs the same workloads on a Linux guest in the same QEMU and compares.
//!
//! On vda (the first disk), it runs, one after the other:
//! - `seq-read-4k`, `seq-read-64k`: the whole disk read in order by one thread, in
//!   4 KiB and 64 KiB requests;
//! - `rand-read-4k-qd1`: `blkbench.random_reads` (default 8192) 4 KiB reads at
//!   uniformly random aligned offsets by one thread;
//! - `rand-read-4k-qd16`: the same number of reads by 16 threads (queue depth 16),
//!   spread over the CPUs.
//!
//! Each prints one `blkbench:` line: requests, bytes, guest nanoseconds (the TSC clock;
//! under TCG that is emulated time, comparable only with another guest in the same
//! QEMU), MB/s (10^6 bytes) and IOPS, and the driver's interrupts, wake-ups and
//! used-ring looks per request, which say where the time goes.

use alloc::vec;
use alloc::vec::Vec;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_virtio::block::SECTOR_SIZE;

use crate::devices::{self, Disk};

fn option(info: &ArchInfo, name: &str, default: u64) -> u64 {
    info.boot
        .command_line_value(name)
        .and_then(|value| value.parse().ok())
        .filter(|&value| value > 0)
        .unwrap_or(default)
}

/// xorshift64*: a fast, well-spread stream of offsets (not for anything secret).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Reads `reads` random 4 KiB blocks; the first error, if any.
fn random_reads(
    disk: &dyn Disk,
    reads: u64,
    seed: u64,
) -> Result<(), keel_virtio::block::BlockError> {
    let blocks = disk.capacity() / 8;
    let mut buffer = vec![0u8; 4096];
    let mut state = seed | 1;
    for _ in 0..reads {
        let block = next_random(&mut state) % blocks;
        disk.read(block * 8, &mut buffer)?;
    }
    Ok(())
}

fn report(
    workload: &str,
    disk: &dyn Disk,
    requests: u64,
    bytes: u64,
    nanos: u64,
    before: keel_virtio::blk::BlkStats,
) {
    let after = disk.stats();
    let per_request = |count: u64| count as f64 / requests.max(1) as f64;
    let seconds = nanos.max(1) as f64 / 1e9;
    kprintln!(
        "blkbench: workload={workload} requests={requests} bytes={bytes} nanos={nanos} \
         mb_per_s={:.2} iops={:.0} interrupts_per_request={:.3} wakeups_per_request={:.3} \
         used_ring_checks_per_request={:.3}",
        bytes as f64 / 1e6 / seconds,
        requests as f64 / seconds,
        per_request(after.interrupts - before.interrupts),
        per_request(after.wakeups - before.wakeups),
        per_request(after.used_ring_checks - before.used_ring_checks),
    );
}

/// Runs the workloads; false when there is no disk or a request fails.
pub fn run(info: &ArchInfo) -> bool {
    let Some(entry) = devices::disks().first() else {
        kprintln!("blkbench: no disk: boot with cargo xtask run --disk FILE -- app=blkbench");
        return false;
    };
    for failure in devices::failures() {
        kprintln!("blkbench: note: {failure}");
    }
    let disk = entry.disk();
    let capacity_bytes = disk.capacity() * SECTOR_SIZE as u64;
    kprintln!(
        "blkbench: {} at {}, {} MiB",
        entry.name,
        entry.location,
        capacity_bytes >> 20
    );
    for (workload, request_bytes) in [("seq-read-4k", 4096u64), ("seq-read-64k", 65536)] {
        let requests = capacity_bytes / request_bytes;
        let mut buffer = vec![0u8; request_bytes as usize];
        let before = disk.stats();
        let start = time::now();
        for request in 0..requests {
            if let Err(error) = disk.read(request * request_bytes / 512, &mut buffer) {
                kprintln!("blkbench: {workload}: request {request}: {error}");
                return false;
            }
        }
        let nanos = time::now().as_nanos() - start.as_nanos();
        report(
            workload,
            disk,
            requests,
            requests * request_bytes,
            nanos,
            before,
        );
    }
    let reads = option(info, "blkbench.random_reads", 8192);
    let before = disk.stats();
    let start = time::now();
    if let Err(error) = random_reads(disk, reads, 0x5eed) {
        kprintln!("blkbench: rand-read-4k-qd1: {error}");
        return false;
    }
    let nanos = time::now().as_nanos() - start.as_nanos();
    report("rand-read-4k-qd1", disk, reads, reads * 4096, nanos, before);

    const DEPTH: u64 = 16;
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let before = disk.stats();
    let start = time::now();
    let mut handles = Vec::new();
    for thread in 0..DEPTH {
        let options =
            keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(thread as usize % cpus));
        let share = reads / DEPTH + u64::from(thread < reads % DEPTH);
        match scheduler.spawn(options, move || random_reads(disk, share, 0x5eed + thread)) {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                kprintln!("blkbench: rand-read-4k-qd16: cannot spawn: {error:?}");
                return false;
            }
        }
    }
    let mut ok = true;
    for handle in handles {
        if !matches!(scheduler.join(handle), Some(Ok(()))) {
            ok = false;
        }
    }
    let nanos = time::now().as_nanos() - start.as_nanos();
    if !ok {
        kprintln!("blkbench: rand-read-4k-qd16: a reader failed");
        return false;
    }
    report(
        "rand-read-4k-qd16",
        disk,
        reads,
        reads * 4096,
        nanos,
        before,
    );
    kprintln!(
        "blkbench: {} interrupts on vector {:#x} in all",
        entry.interrupts(),
        entry.vector
    );
    true
}
