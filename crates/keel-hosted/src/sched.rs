//! The hosted [`Arch`]: the real scheduler inside an ordinary Linux process, for
//! tests and benches.
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
//!   Nothing can interrupt a running keel thread asynchronously. Instead a CPU has
//!   two pending "interrupt lines", as the kernel's CPUs do: a wake-up IPI (set by
//!   [`send_wakeup`](Arch::send_wakeup) aimed at another CPU; like the kernel, a CPU
//!   sends itself none) and the one-shot timer (armed, and its deadline passed).
//!   A thread that spins takes them at the points where it calls [`interrupt_point`],
//!   which enters the scheduler exactly as the kernel's handlers do
//!   ([`Scheduler::wakeup_interrupt`], [`Scheduler::timer_interrupt`]), and only
//!   then. So a hosted test sees the same liveness as the kernel: a thread queued on a
//!   busy CPU runs only if somebody raised one of those lines.
//! - **Preemption by the hypervisor** is never real here; a test makes
//!   [`Arch::is_cpu_preempted`] report it for a CPU with
//!   [`HostedArch::set_cpu_preempted`].
//! - **Clock offsets** ([`HostedArch::with_clock_offsets`]): each CPU may read the
//!   clock ahead of the others by a fixed amount, to test code that compares times
//!   taken on different CPUs.
//! - **Interrupt masking** is a no-op guard: there are no interrupts.
//! - **Stacks** are `mmap`ed with a `PROT_NONE` guard page below them, so an
//!   overflow faults instead of corrupting memory.
//! - **`set_thread_pointer` is a no-op**: on Linux, FS holds std's own TLS for the OS
//!   thread; changing it would break every thread-local of the process.
//! - The clock is the TSC, calibrated against `std::time::Instant` (CLOCK_MONOTONIC)
//!   for 2 ms when the arch is created, if CPUID reports an invariant TSC (reading
//!   CLOCK_MONOTONIC costs ~60 ns on a VM, `rdtsc` ~30 ns, and the scheduler reads
//!   the clock at every decision); else `Instant`. Nanoseconds since creation,
//!   converted from ticks in fixed point (a multiply and a shift, no `f64` round trip:
//!   the switch's accounting waits on the result).

use core::cell::Cell;
use core::ptr::NonNull;
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use keel_sync::shim::{AtomicBool, AtomicU64, Ordering};

use keel_sched::{
    Arch, CpuId, FairPolicy, Policy, Scheduler, SchedulerConfig, SpawnOptions, StackMemory,
};

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
    /// Some CPU's clock offset is not zero.
    has_clock_offsets: bool,
}

/// Takes the interrupts pending on the calling CPU, as the kernel's interrupt handlers
/// would at this point: a wake-up IPI enters
/// [`Scheduler::wakeup_interrupt`], an expired one-shot timer (disarmed as it fires)
/// [`Scheduler::timer_interrupt`]. Either may switch to another thread and resume
/// this one later, possibly on another CPU. Does nothing off the scheduler's CPUs.
///
/// Hosted threads that spin call it in their loops where a kernel thread would be
/// interrupted; unlike [`Scheduler::preempt_check`], it enters the scheduler only if
/// an interrupt was raised, so it cannot hide a missing wake-up or timer.
pub fn interrupt_point<P: Policy>(scheduler: &Scheduler<HostedArch, P>) {
    let arch = scheduler.arch();
    let Some(cpu) = arch.current_cpu() else {
        return;
    };
    if arch.cpus[cpu.index()]
        .wakeup_pending
        .swap(false, Ordering::SeqCst)
    {
        scheduler.wakeup_interrupt();
    }
    // Read again: the wake-up may have switched away and resumed us elsewhere.
    let Some(cpu) = arch.current_cpu() else {
        return;
    };
    let timer = &arch.cpus[cpu.index()].timer_deadline;
    let deadline = timer.load(Ordering::Relaxed);
    if deadline != u64::MAX && arch.now().as_nanos() >= deadline {
        timer.store(u64::MAX, Ordering::Relaxed);
        scheduler.timer_interrupt();
    }
}

/// The monotonic clock: the TSC scaled to nanoseconds when the CPU says it is
/// invariant (about half the cost of `Instant::now` on a VM), else `Instant`.
#[derive(Debug)]
enum Clock {
    /// `nanos = (rdtsc - base_ticks) * nanos_per_tick`, calibrated against `Instant`
    /// when the arch is created. Computed in fixed point (`nanos_per_tick` scaled by
    /// 2^32, one 64x64->128-bit multiply) rather than through `f64`: the scheduler's
    /// accounting depends on the result, so its latency is on every switch's critical
    /// path (u64<->f64 conversions are multi-instruction sequences on x86-64).
    Tsc {
        base_ticks: u64,
        /// `nanos_per_tick * 2^TSC_SHIFT`.
        nanos_per_tick_fixed: u64,
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

/// Fraction bits of [`Clock::Tsc`]'s fixed-point rate.
const TSC_SHIFT: u32 = 32;

/// `ticks * rate / 2^TSC_SHIFT`, saturating at `u64::MAX`.
fn tsc_to_nanos(ticks: u64, nanos_per_tick_fixed: u64) -> u64 {
    let nanos = (u128::from(ticks) * u128::from(nanos_per_tick_fixed)) >> TSC_SHIFT;
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

impl Clock {
    fn new() -> Self {
        // CPUID 0x8000_0007 EDX bit 8: invariant TSC (constant rate, runs in idle).
        let invariant = raw_cpuid::CpuId::new()
            .get_advanced_power_mgmt_info()
            .is_some_and(|info| info.has_invariant_tsc());
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
        let nanos_per_tick = nanos / ticks as f64;
        // Sane rates only (0.01 to 1000 ns per tick), else fall back to `Instant`.
        if !(1e-2..=1e3).contains(&nanos_per_tick) {
            return Clock::Instant { origin: start };
        }
        Clock::Tsc {
            base_ticks,
            nanos_per_tick_fixed: (nanos_per_tick * (1_u64 << TSC_SHIFT) as f64) as u64,
        }
    }

    fn now_nanos(&self) -> u64 {
        match self {
            Clock::Tsc {
                base_ticks,
                nanos_per_tick_fixed,
            } => tsc_to_nanos(
                read_tsc().saturating_sub(*base_ticks),
                *nanos_per_tick_fixed,
            ),
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
    /// A wake-up IPI is pending (set by other CPUs' `send_wakeup`, taken by
    /// [`interrupt_point`] or cleared when the idle wait ends). SeqCst: the waker's
    /// queue push precedes it, so whoever takes it then sees the pushed thread.
    wakeup_pending: AtomicBool,
    /// Added to the clock when read on this CPU (see [`HostedArch::with_clock_offsets`]).
    clock_offset_nanos: u64,
    /// What [`Arch::is_cpu_preempted`] reports (set by
    /// [`HostedArch::set_cpu_preempted`]; `Relaxed`, a hint as in the kernel).
    preempted: AtomicBool,
}

impl HostedArch {
    /// A machine with `cpu_count` CPUs (at least one).
    pub fn new(cpu_count: usize) -> Self {
        Self::with_clock_offsets(&std::vec![Duration::ZERO; cpu_count])
    }

    /// A machine with one CPU per entry of `offsets`, whose clock reads
    /// `offsets[cpu]` ahead when read on that CPU (and with no offset off the CPUs;
    /// an offset past `u64::MAX` nanoseconds saturates). Each CPU's clock stays
    /// monotonic; a thread that migrates sees it jump.
    pub fn with_clock_offsets(offsets: &[Duration]) -> Self {
        assert!(!offsets.is_empty(), "a machine needs a CPU");
        Self {
            cpus: offsets
                .iter()
                .map(|offset| HostedCpu {
                    os_thread: OnceLock::new(),
                    timer_deadline: AtomicU64::new(u64::MAX),
                    wakeup_pending: AtomicBool::new(false),
                    preempted: AtomicBool::new(false),
                    clock_offset_nanos: u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX),
                })
                .collect(),
            clock: Clock::new(),
            has_clock_offsets: offsets.iter().any(|offset| !offset.is_zero()),
        }
    }

    /// Makes [`Arch::is_cpu_preempted`] report `preempted` for `cpu`, as a
    /// hypervisor's steal-time flag would while it has descheduled that vCPU. Only
    /// the report changes: the CPU's OS thread goes on running, so a test can show
    /// what a lock waiter does when it is told that the owner's CPU is preempted.
    ///
    /// # Panics
    /// If `cpu` does not exist.
    pub fn set_cpu_preempted(&self, cpu: CpuId, preempted: bool) {
        self.cpus[cpu.index()]
            .preempted
            .store(preempted, Ordering::Relaxed);
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
        (identity == self.identity()).then_some(CpuId::new(cpu))
    }

    fn cpu_online(&self, cpu: CpuId) {
        assert!(
            self.cpus[cpu.index()]
                .os_thread
                .set(thread::current())
                .is_ok(),
            "CPU {} started twice",
            cpu.index()
        );
        assert_eq!(read_current_cpu().0, 0, "this OS thread already runs a CPU");
        CURRENT_CPU.with(|slot| slot.set((self.identity(), cpu.index())));
    }

    fn mask_interrupts(&self) -> Self::InterruptGuard {}

    fn enable_interrupts(&self) {}

    fn now(&self) -> keel_sched::Instant {
        let now = self.clock.now_nanos();
        if !self.has_clock_offsets {
            // The usual case: no CPU lookup (a thread-local read) on every decision.
            return keel_sched::Instant::from_nanos(now);
        }
        let offset = self
            .current_cpu()
            .map_or(0, |cpu| self.cpus[cpu.index()].clock_offset_nanos);
        keel_sched::Instant::from_nanos(now.saturating_add(offset))
    }

    fn arm_timer(&self, cpu: CpuId, deadline: keel_sched::Instant) {
        self.cpus[cpu.index()]
            .timer_deadline
            .store(deadline.as_nanos(), Ordering::Relaxed);
    }

    fn cancel_timer(&self, cpu: CpuId) {
        self.cpus[cpu.index()]
            .timer_deadline
            .store(u64::MAX, Ordering::Relaxed);
    }

    fn send_wakeup(&self, cpu: CpuId) {
        // Like the kernel, a CPU sends itself no IPI: only another CPU's (or a host
        // thread's) wake-up raises the line.
        if self.current_cpu() != Some(cpu) {
            self.cpus[cpu.index()]
                .wakeup_pending
                .store(true, Ordering::SeqCst);
        }
        // Not online yet: it will look at its queue when it starts.
        if let Some(os_thread) = self.cpus[cpu.index()].os_thread.get() {
            os_thread.unpark();
        }
    }

    fn idle_wait(&self, cpu: CpuId, deadline: Option<keel_sched::Instant>) {
        let armed = self.cpus[cpu.index()]
            .timer_deadline
            .load(Ordering::Relaxed);
        let deadline = deadline
            .map_or(u64::MAX, keel_sched::Instant::as_nanos)
            .min(armed);
        if deadline == u64::MAX {
            thread::park();
        } else {
            let now = self.now().as_nanos();
            if deadline > now {
                thread::park_timeout(Duration::from_nanos(deadline - now));
            }
        }
        // The wake-up that ended the wait was taken by it (the idle loop drains the
        // queue next), as the kernel's `hlt` takes the IPI.
        self.cpus[cpu.index()]
            .wakeup_pending
            .store(false, Ordering::SeqCst);
    }

    fn is_cpu_preempted(&self, cpu: CpuId) -> bool {
        self.cpus
            .get(cpu.index())
            .is_some_and(|shared| shared.preempted.load(Ordering::Relaxed))
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
        Self::with_arch(HostedArch::new(cpu_count), config, make_policy)
    }

    /// Starts the CPUs of `arch` (for example one with clock offsets) with `config`,
    /// CPU `n` using `make_policy(n)`.
    pub fn with_arch(
        arch: HostedArch,
        config: SchedulerConfig,
        make_policy: impl FnMut(CpuId) -> P,
    ) -> Self {
        let cpu_count = arch.cpu_count();
        let scheduler = Arc::new(Scheduler::with_policy(arch, config, make_policy));
        let cpu_threads = (0..cpu_count)
            .map(|cpu| {
                let scheduler = Arc::clone(&scheduler);
                thread::Builder::new()
                    .name(std::format!("keel-cpu{cpu}"))
                    .spawn(move || scheduler.run_cpu(CpuId::new(cpu)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_fixed_point_conversion() {
        let one = 1_u64 << TSC_SHIFT;
        assert_eq!(tsc_to_nanos(12_345, one), 12_345);
        // 0.25 ns per tick (a 4 GHz TSC).
        assert_eq!(tsc_to_nanos(4_000_000_000, one / 4), 1_000_000_000);
        // 1/3 ns per tick, rounded down.
        let third = (one as f64 / 3.0) as u64;
        let nanos = tsc_to_nanos(3_000_000_000_000, third);
        assert!(
            (999_999_999_000..=1_000_000_000_000).contains(&nanos),
            "{nanos}"
        );
        // No overflow in the product; saturates only when the result does not fit.
        assert_eq!(tsc_to_nanos(u64::MAX, one / 2), u64::MAX / 2);
        assert_eq!(tsc_to_nanos(u64::MAX, one * 2), u64::MAX);
    }

    #[test]
    fn clock_is_monotonic_and_tracks_instant() {
        let clock = Clock::new();
        let start = Instant::now();
        let first = clock.now_nanos();
        let mut last = first;
        while start.elapsed() < Duration::from_millis(20) {
            let now = clock.now_nanos();
            assert!(now >= last);
            last = now;
        }
        let elapsed = start.elapsed().as_nanos() as f64;
        let measured = (last - first) as f64;
        // Only a sanity bound: the 2 ms calibration can be skewed by host preemption
        // on a loaded machine, and that must not make this test flaky.
        assert!(
            measured > elapsed / 10.0 && measured < elapsed * 10.0,
            "{measured} vs {elapsed}"
        );
    }
}
