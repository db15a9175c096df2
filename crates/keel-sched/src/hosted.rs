//! The hosted [`Arch`]: the real scheduler inside an ordinary Linux process, for
//! tests and benches (feature `hosted`).
//!
//! - **CPUs are OS threads.** [`Machine`] starts one per CPU, each running
//!   [`Scheduler::run_cpu`]. Keel threads run on those OS threads' cores with
//!   user-space context switches (this crate's assembly), and may migrate between
//!   them.
//! - **Current CPU**: one `thread_local!` per OS thread records which CPU of which
//!   `HostedArch` it is (the only thread-local; the scheduler itself has no global
//!   state). It is read through a non-inlined function so the compiler cannot reuse a
//!   TLS address across a context switch after which the code runs on another OS
//!   thread.
//! - **Wake-up** = `Thread::unpark` of the CPU's OS thread; **idle wait** =
//!   `std::thread::park_timeout` until the armed timer (a deadline stored per CPU).
//!   Nothing can interrupt a running keel thread, so the timer only bounds idle waits;
//!   preemption happens at scheduler entry points (see the crate docs).
//! - **Interrupt masking** is a no-op guard: there are no interrupts.
//! - **Stacks** are `mmap`ed with a `PROT_NONE` guard page below them, so an
//!   overflow faults instead of corrupting memory.
//! - **`set_thread_pointer` is a no-op**: on Linux, FS holds std's own TLS for the OS
//!   thread; changing it would break every thread-local of the process.
//! - The clock is the TSC, calibrated against `std::time::Instant` (CLOCK_MONOTONIC)
//!   for 2 ms when the arch is created, if CPUID reports an invariant TSC (reading
//!   CLOCK_MONOTONIC costs ~60 ns on a VM, `rdtsc` ~30 ns, and the scheduler reads
//!   the clock at every decision); else `Instant`. Nanoseconds since creation.

use core::cell::Cell;
use core::ptr::NonNull;
use std::boxed::Box;
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use keel_sync::shim::{AtomicU64, Ordering};

use crate::arch::{Arch, StackMemory};
use crate::policy::{FairPolicy, Policy};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::{CpuId, SpawnOptions};

std::thread_local! {
    /// `(identity of the HostedArch, CPU index)` of the CPU this OS thread runs, or
    /// `(0, 0)` when it runs none.
    static CURRENT_CPU: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Reads [`CURRENT_CPU`]; never inlined (see the module docs).
#[inline(never)]
fn read_current_cpu() -> (usize, usize) {
    CURRENT_CPU.with(Cell::get)
}

/// Linux as a machine with `cpu_count` CPUs; see the [module docs](self).
#[derive(Debug)]
pub struct HostedArch {
    cpus: Box<[HostedCpu]>,
    clock: Clock,
}

/// The monotonic clock: the TSC scaled to nanoseconds when the CPU says it is
/// invariant (about half the cost of `Instant::now` on a VM), else `Instant`.
#[derive(Debug)]
enum Clock {
    /// `nanos = (rdtsc - base_ticks) * nanos_per_tick`, calibrated against `Instant`
    /// when the arch is created.
    Tsc {
        base_ticks: u64,
        nanos_per_tick: f64,
    },
    /// `Instant` since `origin`.
    Instant { origin: Instant },
}

/// The time-stamp counter.
fn read_tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU and has no memory effects; Linux
    // leaves it enabled for user space (CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Clock {
    fn new() -> Self {
        use core::arch::x86_64::__cpuid;
        // CPUID 0x8000_0007 EDX bit 8: invariant TSC (constant rate, runs in idle).
        let max_extended = __cpuid(0x8000_0000).eax;
        let invariant = max_extended >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0;
        if !invariant {
            return Clock::Instant {
                origin: Instant::now(),
            };
        }
        let start = Instant::now();
        let base_ticks = read_tsc();
        while start.elapsed() < Duration::from_millis(2) {
            core::hint::spin_loop();
        }
        let ticks = read_tsc().wrapping_sub(base_ticks);
        let nanos = start.elapsed().as_nanos() as f64;
        if ticks == 0 {
            return Clock::Instant { origin: start };
        }
        Clock::Tsc {
            base_ticks,
            nanos_per_tick: nanos / ticks as f64,
        }
    }

    fn now_nanos(&self) -> u64 {
        match self {
            Clock::Tsc {
                base_ticks,
                nanos_per_tick,
            } => (read_tsc().saturating_sub(*base_ticks) as f64 * nanos_per_tick) as u64,
            Clock::Instant { origin } => origin.elapsed().as_nanos() as u64,
        }
    }
}

#[derive(Debug)]
struct HostedCpu {
    /// The OS thread running this CPU (set by `cpu_online`).
    os_thread: OnceLock<thread::Thread>,
    /// The armed one-shot deadline in nanoseconds, `u64::MAX` when disarmed. Written
    /// and read only by this CPU (`Relaxed`).
    timer_deadline: AtomicU64,
}

impl HostedArch {
    /// A machine with `cpu_count` CPUs (at least one).
    pub fn new(cpu_count: usize) -> Self {
        assert!(cpu_count > 0, "a machine needs a CPU");
        Self {
            cpus: (0..cpu_count)
                .map(|_| HostedCpu {
                    os_thread: OnceLock::new(),
                    timer_deadline: AtomicU64::new(u64::MAX),
                })
                .collect(),
            clock: Clock::new(),
        }
    }

    /// A non-zero identity for this instance (the address of its CPU table, which
    /// never moves while it lives).
    fn identity(&self) -> usize {
        self.cpus.as_ptr().addr()
    }
}

// SAFETY: relies on (1) `current_cpu` returning `Some(cpu)` only on the OS thread
// that called `cpu_online(cpu)` for this instance (`cpu_online` is called by
// `run_cpu`, once per CPU, and the TLS slot names this instance), and keel threads
// running only on those OS threads; a second `cpu_online` for the same CPU panics;
// (2) there being no interrupts at all; (3) stacks being fresh private mappings.
unsafe impl Arch for HostedArch {
    type InterruptGuard = ();
    type Stack = HostedStack;

    fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    fn current_cpu(&self) -> Option<CpuId> {
        let (identity, cpu) = read_current_cpu();
        (identity == self.identity()).then_some(CpuId(cpu))
    }

    fn cpu_online(&self, cpu: CpuId) {
        assert!(
            self.cpus[cpu.0].os_thread.set(thread::current()).is_ok(),
            "CPU {} started twice",
            cpu.0
        );
        assert_eq!(read_current_cpu().0, 0, "this OS thread already runs a CPU");
        CURRENT_CPU.with(|slot| slot.set((self.identity(), cpu.0)));
    }

    fn mask_interrupts(&self) -> Self::InterruptGuard {}

    fn enable_interrupts(&self) {}

    fn now_nanos(&self) -> u64 {
        self.clock.now_nanos()
    }

    fn arm_timer(&self, cpu: CpuId, deadline_nanos: u64) {
        self.cpus[cpu.0]
            .timer_deadline
            .store(deadline_nanos, Ordering::Relaxed);
    }

    fn cancel_timer(&self, cpu: CpuId) {
        self.cpus[cpu.0]
            .timer_deadline
            .store(u64::MAX, Ordering::Relaxed);
    }

    fn send_wakeup(&self, cpu: CpuId) {
        // Not online yet: it will look at its queue when it starts.
        if let Some(os_thread) = self.cpus[cpu.0].os_thread.get() {
            os_thread.unpark();
        }
    }

    fn idle_wait(&self, cpu: CpuId, deadline_nanos: Option<u64>) {
        let armed = self.cpus[cpu.0].timer_deadline.load(Ordering::Relaxed);
        let deadline = deadline_nanos.unwrap_or(u64::MAX).min(armed);
        if deadline == u64::MAX {
            thread::park();
        } else {
            let now = self.now_nanos();
            if deadline > now {
                thread::park_timeout(Duration::from_nanos(deadline - now));
            }
        }
    }

    fn allocate_stack(&self, size: usize) -> Option<HostedStack> {
        HostedStack::new(size)
    }

    unsafe fn set_thread_pointer(&self, _value: u64) {
        // Deliberately nothing: see the module docs.
    }
}

/// An `mmap`ed stack with a `PROT_NONE` guard page below it.
#[derive(Debug)]
pub struct HostedStack {
    /// Start of the mapping (the guard page).
    base: NonNull<u8>,
    /// Length of the mapping, guard page included.
    length: usize,
}

// SAFETY: the mapping is owned by this value alone; it is plain memory.
unsafe impl Send for HostedStack {}
// SAFETY: `&HostedStack` only exposes addresses, never the memory.
unsafe impl Sync for HostedStack {}

/// The host page size (4 KiB on x86-64 Linux).
const PAGE_SIZE: usize = 4096;

impl HostedStack {
    /// Maps `size` bytes (rounded up to pages) plus a guard page.
    pub fn new(size: usize) -> Option<Self> {
        let usable = size.checked_next_multiple_of(PAGE_SIZE)?.max(PAGE_SIZE);
        let length = usable.checked_add(PAGE_SIZE)?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice
        // touches no existing memory.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the first page lies inside the mapping just created, which nothing
        // else uses yet.
        let protected = unsafe { libc::mprotect(base, PAGE_SIZE, libc::PROT_NONE) };
        let stack = Self {
            base: NonNull::new(base.cast())?,
            length,
        };
        (protected == 0).then_some(stack)
    }
}

impl StackMemory for HostedStack {
    fn top(&self) -> NonNull<u8> {
        // SAFETY: one past the end of the mapping: in bounds of the same allocation
        // (or one past it), and page-aligned, hence 16-byte aligned.
        unsafe { self.base.add(self.length) }
    }

    fn size(&self) -> usize {
        self.length - PAGE_SIZE
    }
}

impl Drop for HostedStack {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `new` with this address and length and is
        // unmapped once; the scheduler drops a stack only when nothing runs on it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.length) };
    }
}

/// A running hosted machine: the scheduler plus one OS thread per CPU. Dropping it
/// shuts the CPUs down (they return once nothing is runnable) and joins them.
#[derive(Debug)]
pub struct Machine<P: Policy = FairPolicy> {
    scheduler: Arc<Scheduler<HostedArch, P>>,
    cpu_threads: Vec<thread::JoinHandle<()>>,
}

impl<P: Policy + Default> Machine<P> {
    /// Starts `cpu_count` CPUs with the default configuration.
    pub fn start(cpu_count: usize) -> Self {
        Self::with_config(cpu_count, SchedulerConfig::default())
    }

    /// Starts `cpu_count` CPUs with `config`.
    pub fn with_config(cpu_count: usize, config: SchedulerConfig) -> Self {
        Self::with_policy(cpu_count, config, |_| P::default())
    }
}

impl<P: Policy> Machine<P> {
    /// Starts `cpu_count` CPUs with `config`, CPU `n` using `make_policy(n)`.
    pub fn with_policy(
        cpu_count: usize,
        config: SchedulerConfig,
        make_policy: impl FnMut(CpuId) -> P,
    ) -> Self {
        let scheduler = Arc::new(Scheduler::with_policy(
            HostedArch::new(cpu_count),
            config,
            make_policy,
        ));
        let cpu_threads = (0..cpu_count)
            .map(|cpu| {
                let scheduler = Arc::clone(&scheduler);
                thread::Builder::new()
                    .name(std::format!("keel-cpu{cpu}"))
                    .spawn(move || scheduler.run_cpu(CpuId(cpu)))
                    .expect("could not start a CPU thread")
            })
            .collect();
        Self {
            scheduler,
            cpu_threads,
        }
    }

    /// The scheduler (clone the `Arc` to move it into threads).
    pub fn scheduler(&self) -> &Arc<Scheduler<HostedArch, P>> {
        &self.scheduler
    }

    /// Runs `function` as a keel thread (on CPU 0 unless `options` pins it
    /// elsewhere) and blocks the calling OS thread until it returns its value.
    pub fn run<R, F>(&self, options: SpawnOptions, function: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (sender, receiver) = mpsc::channel();
        self.scheduler
            .spawn(options, move || {
                // Never blocks: the channel is unbounded.
                let _ = sender.send(function());
            })
            .expect("could not spawn the main thread");
        receiver
            .recv()
            .expect("the main thread ended without a result")
    }

    /// Shuts down and joins the CPUs (also done on drop).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.scheduler.request_shutdown();
        for cpu in self.cpu_threads.drain(..) {
            cpu.join().expect("a CPU thread panicked");
        }
    }
}

impl<P: Policy> Drop for Machine<P> {
    fn drop(&mut self) {
        self.stop();
    }
}
