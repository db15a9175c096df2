//! The default application: what `cargo xtask run` shows after the banner. It exercises
//! the heap (strings, vectors, a B-tree map) and reports what it did.

use crate::memory;
use crate::threads::{self, KernelParker};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use keel_arch_x86_64::cpu::ExitCode;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_lfmutex::Mutex;
use keel_sched::{CpuId, SpawnOptions};

const TEXT: &str = "the mutex that never spins the scheduler that never ticks when idle \
    the channel that carries packets to the thread that wants them the linker that \
    runs ordinary shared objects one application one address space the kernel is the \
    library and the library is the kernel";

/// Prints the names at the top of the file tree.
fn list_root(files: &keel_vfs::Context<crate::threads::KernelParker>) {
    let Ok(fd) = files.open(b"/", keel_vfs::OpenFlags::O_DIRECTORY, 0) else {
        return;
    };
    if let Ok(entries) = files.getdents(fd, 64) {
        let names: Vec<_> = entries
            .iter()
            .map(|entry| alloc::string::String::from_utf8_lossy(&entry.name).into_owned())
            .filter(|name| name != "." && name != "..")
            .collect();
        kprintln!("app: / holds {}", names.join(" "));
    }
    let _ = files.close(fd);
}

/// Runs the application and returns how the VM should exit.
pub fn main(info: &ArchInfo) -> ExitCode {
    let start = time::now();
    kprintln!("hello from Keel: one application, one address space, no system calls");
    // The boot image (`cargo xtask run --files DIR`): what is at the top of `/`.
    if let (Some(files), Some(_)) = (crate::files::context(), crate::files::boot_image()) {
        list_root(files);
    }

    // A sieve of Eratosthenes over a heap-allocated table.
    let limit = 1_000_000usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    for candidate in 2..=limit {
        if !composite[candidate] {
            primes.push(candidate);
            for multiple in (candidate * candidate..=limit).step_by(candidate) {
                composite[multiple] = true;
            }
        }
    }
    kprintln!(
        "app: {} primes up to {limit}; the largest is {}",
        primes.len(),
        primes.last().copied().unwrap_or(0)
    );

    // Word frequencies: one worker thread per CPU counts its share of the words and
    // merges into a B-tree map behind the lock-free mutex.
    static COUNTS: Mutex<BTreeMap<String, usize>, KernelParker> = Mutex::new(BTreeMap::new());
    let scheduler = threads::scheduler();
    let workers = scheduler.cpu_count();
    let mut handles = Vec::new();
    for worker in 0..workers {
        let options = SpawnOptions::new().pin(CpuId::new(worker));
        let spawned = scheduler.spawn(options, move || {
            let mut local: BTreeMap<&str, usize> = BTreeMap::new();
            for word in TEXT.split_whitespace().skip(worker).step_by(workers) {
                *local.entry(word).or_default() += 1;
            }
            let mut shared = COUNTS.lock();
            for (word, count) in local {
                *shared.entry(String::from(word)).or_default() += count;
            }
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                kprintln!("app: cannot spawn a worker: {error:?}");
                return ExitCode::Failure;
            }
        }
    }
    for handle in handles {
        scheduler.join(handle);
    }
    let counts = COUNTS.lock();
    let mut ranked: Vec<(&String, &usize)> = counts.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = ranked
        .iter()
        .take(4)
        .map(|(word, count)| alloc::format!("{word} x{count}"))
        .collect();
    kprintln!(
        "app: {} distinct words counted by {workers} threads on {workers} CPUs; most frequent: {}",
        counts.len(),
        top.join(", ")
    );
    drop(counts);

    let stats = memory::heap_stats();
    kprintln!(
        "app: heap holds {} pages for {} live allocations ({} bytes), {} MiB of pages \
         free, {} page frees refused; done in {} us; command line {:?}",
        stats.pages_held,
        stats.live_allocations,
        stats.bytes_in_use,
        memory::free_page_count() * 4096 / (1024 * 1024),
        memory::rejected_free_count(),
        (time::now() - start).as_micros(),
        info.boot.command_line()
    );
    ExitCode::Success
}
