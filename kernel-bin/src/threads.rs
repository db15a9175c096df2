//! Threads in the kernel: `keel-sched`'s scheduler on the x86-64 machine.
//!
//! [`KernelArch`] implements the scheduler's `Arch` trait: the current CPU comes from
//! the per-CPU record behind the GS base, the clock is the TSC, the one-shot timer is
//! the local APIC's, cross-CPU wake-ups are IPIs, the idle wait is `sti; hlt`, thread
//! stacks are page runs from the page allocator with an unmapped guard page below, and
//! the thread pointer is the FS base. [`KernelParker`] maps the lock-free mutex's
//! `Parker` onto the scheduler's park/unpark, so `keel-lfmutex` runs on Keel threads.
//!
//! The scheduler is the one kernel static here ([`scheduler`]); [`start`] creates it,
//! installs the timer and wake-up interrupt handlers, and turns the calling context into
//! CPU 0's idle loop.

use crate::memory;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use core::time::Duration;
use keel_arch_x86_64::interrupts::{self, TrapFrame};
use keel_arch_x86_64::{apic, paging, percpu, time};
use keel_pagealloc::{PAGE_SIZE, PageRange};
use keel_sched::{Arch, CpuId, Instant, Scheduler, SchedulerConfig, StackMemory};
use keel_types::VirtAddr;

/// Event counters of the machine side of scheduling (for experiments such as
/// `app=lockbench`; relaxed, approximate under concurrency only in their ordering).
#[derive(Debug, Default)]
pub struct ArchCounters {
    /// Wake-up IPIs sent.
    pub wakeup_ipis: core::sync::atomic::AtomicU64,
    /// Idle waits that halted.
    pub halts: core::sync::atomic::AtomicU64,
    /// Idle waits that returned at once because a wake-up was pending.
    pub halts_skipped: core::sync::atomic::AtomicU64,
    /// Timer interrupts taken.
    pub timer_interrupts: core::sync::atomic::AtomicU64,
}

/// The counters.
pub static COUNTERS: ArchCounters = ArchCounters {
    wakeup_ipis: core::sync::atomic::AtomicU64::new(0),
    halts: core::sync::atomic::AtomicU64::new(0),
    halts_skipped: core::sync::atomic::AtomicU64::new(0),
    timer_interrupts: core::sync::atomic::AtomicU64::new(0),
};

/// The x86-64 machine as the scheduler sees it.
#[derive(Debug)]
pub struct KernelArch {
    cpu_count: usize,
}

/// Restores the interrupt flag saved when it was created.
#[derive(Debug)]
pub struct InterruptGuard {
    were_enabled: bool,
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        if self.were_enabled {
            x86_64::instructions::interrupts::enable();
        }
    }
}

/// A thread stack: a run of pages whose lowest page is an unmapped guard.
#[derive(Debug)]
pub struct KernelStack {
    pages: PageRange,
}

impl StackMemory for KernelStack {
    fn top(&self) -> NonNull<u8> {
        let end = (self.pages.start.as_u64() + self.pages.count) * PAGE_SIZE;
        NonNull::new(end as *mut u8).unwrap_or(NonNull::dangling())
    }

    fn size(&self) -> usize {
        ((self.pages.count - 1) * PAGE_SIZE) as usize
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        let guard = self.pages.start.as_u64() * PAGE_SIZE;
        // The guard page must be mapped again before the pages go back to the allocator.
        if let Err(error) = paging::set_guard_page(VirtAddr::new(guard), false) {
            log::error!("cannot unmap-guard stack page {guard:#x}: {error}; leaking the stack");
            return;
        }
        if let Err(error) = memory::free_pages(self.pages) {
            log::error!("freeing a thread stack failed: {error}");
        }
    }
}

// SAFETY: (1) `current_cpu` reads this CPU's own per-CPU record through the GS base
// and answers `Some` only after `cpu_online` ran on this very CPU, so it names exactly
// the context running `run_cpu` and its threads; (2) the interrupt guard clears IF, so
// no interrupt handler (in particular the timer's, which enters the scheduler) runs
// while it lives; (3) stacks are page runs from the page allocator, owned by the stack
// until dropped.
unsafe impl Arch for KernelArch {
    type InterruptGuard = InterruptGuard;
    type Stack = KernelStack;

    fn cpu_count(&self) -> usize {
        self.cpu_count
    }

    fn current_cpu(&self) -> Option<CpuId> {
        let record = percpu::current();
        record
            .scheduling
            .load(Ordering::Relaxed)
            .then(|| CpuId::new(record.index.load(Ordering::Relaxed)))
    }

    fn cpu_online(&self, _cpu: CpuId) {
        percpu::current().scheduling.store(true, Ordering::Relaxed);
    }

    fn mask_interrupts(&self) -> InterruptGuard {
        let were_enabled = x86_64::instructions::interrupts::are_enabled();
        x86_64::instructions::interrupts::disable();
        InterruptGuard { were_enabled }
    }

    fn enable_interrupts(&self) {
        x86_64::instructions::interrupts::enable();
    }

    fn now(&self) -> Instant {
        time::now()
    }

    fn arm_timer(&self, _cpu: CpuId, deadline: Instant) {
        let delay = deadline.saturating_duration_since(time::now());
        apic::arm_oneshot(delay.max(Duration::from_micros(1)));
    }

    fn cancel_timer(&self, _cpu: CpuId) {
        apic::cancel_timer();
    }

    fn send_wakeup(&self, cpu: CpuId) {
        if let Some(record) = percpu::get(cpu.index()) {
            record.wakeup_pending.store(true, Ordering::SeqCst);
            if cpu.index() != percpu::current_index() {
                COUNTERS.wakeup_ipis.fetch_add(1, Ordering::Relaxed);
                apic::send_ipi(
                    record.apic_id.load(Ordering::Relaxed),
                    apic::IpiKind::Fixed(apic::WAKEUP_VECTOR),
                );
            }
        }
    }

    fn idle_wait(&self, _cpu: CpuId, _deadline: Option<Instant>) {
        let record = percpu::current();
        x86_64::instructions::interrupts::disable();
        // A wake-up that arrived since the scheduler set its sleeping flag left this
        // mark; one arriving from here on is held pending by the CPU (interrupts are
        // off) and ends the `hlt` below at once (`sti` takes effect after `hlt` starts).
        if record.wakeup_pending.swap(false, Ordering::SeqCst) {
            COUNTERS.halts_skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            COUNTERS.halts.fetch_add(1, Ordering::Relaxed);
            // The timer is not re-armed here: the scheduler armed it for its earliest
            // deadline, and `deadline` may be stale (read before a timer
            // interrupt switched to a thread that slept with an earlier deadline);
            // re-arming for it made such sleepers oversleep.
            x86_64::instructions::interrupts::enable_and_hlt();
            x86_64::instructions::interrupts::disable();
            record.wakeup_pending.store(false, Ordering::SeqCst);
        }
        x86_64::instructions::interrupts::enable();
    }

    fn is_cpu_preempted(&self, cpu: CpuId) -> bool {
        keel_arch_x86_64::steal_time::is_preempted(cpu.index())
    }

    fn set_running_thread(&self, _cpu: CpuId, thread: Option<keel_sched::ThreadId>) {
        percpu::set_current_thread_id(thread.map_or(0, keel_sched::ThreadId::get));
    }

    fn allocate_stack(&self, size: usize) -> Option<KernelStack> {
        let pages = (size as u64).div_ceil(PAGE_SIZE) + 1;
        let range = memory::alloc_pages(pages).ok()?;
        let guard = range.start.as_u64() * PAGE_SIZE;
        if paging::set_guard_page(VirtAddr::new(guard), true).is_err() {
            let _ = memory::free_pages(range);
            return None;
        }
        Some(KernelStack { pages: range })
    }

    unsafe fn set_thread_pointer(&self, value: u64) {
        // SAFETY: the scheduler passes the incoming thread's thread pointer.
        unsafe { percpu::set_thread_pointer(value) };
    }
}

/// The scheduling policy under test: OSv's fair policy by default, round-robin with a
/// 10 ms quantum with the `sched-round-robin` feature (for experiments that compare
/// two kernels differing only in the policy).
#[cfg(not(feature = "sched-round-robin"))]
pub type KernelPolicy = keel_sched::FairPolicy;
/// The scheduling policy under test (see the default build's documentation).
#[cfg(feature = "sched-round-robin")]
pub type KernelPolicy = keel_sched::RoundRobinPolicy;

/// The kernel's scheduler type.
pub type KernelScheduler = Scheduler<KernelArch, KernelPolicy>;

#[cfg(not(feature = "sched-round-robin"))]
fn make_policy(_cpu: CpuId) -> KernelPolicy {
    keel_sched::FairPolicy::default()
}

#[cfg(feature = "sched-round-robin")]
fn make_policy(_cpu: CpuId) -> KernelPolicy {
    keel_sched::RoundRobinPolicy::default()
}

/// Bytes of a thread's stack unless its spawn options say otherwise (the main thread's
/// too; `memory::boot_demand` counts it).
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;

static SCHEDULER: spin::Once<KernelScheduler> = spin::Once::new();

/// The scheduler; panics if [`start`] has not created it.
pub fn scheduler() -> &'static KernelScheduler {
    SCHEDULER
        .get()
        .expect("threads::start has not created the scheduler")
}

/// The scheduler, if [`start`] created it already.
pub fn try_scheduler() -> Option<&'static KernelScheduler> {
    SCHEDULER.get()
}

fn on_timer(_: &mut TrapFrame) {
    COUNTERS.timer_interrupts.fetch_add(1, Ordering::Relaxed);
    if let Some(scheduler) = SCHEDULER.get() {
        scheduler.timer_interrupt();
    }
}

/// The wake-up IPI: marks the wake-up for a concurrent idle wait, then enters the
/// scheduler, which takes in the threads other CPUs queued here and switches to one
/// if the policy says so (or arms the preemption timer for them). Without the second
/// step a thread woken onto a CPU whose only thread spins waited until that thread
/// blocked (the liveness issue's first bug).
fn on_wakeup(_: &mut TrapFrame) {
    percpu::current()
        .wakeup_pending
        .store(true, Ordering::SeqCst);
    if let Some(scheduler) = SCHEDULER.get() {
        scheduler.wakeup_interrupt();
    }
}

/// Creates the scheduler, spawns `main` as the first thread, and runs CPU 0's idle
/// loop. `main` ends the VM (the idle loop returns only after a shutdown request).
pub fn start(cpu_count: usize, main: impl FnOnce() + Send + 'static) -> ! {
    let scheduler = SCHEDULER.call_once(|| {
        Scheduler::with_policy(
            KernelArch { cpu_count },
            SchedulerConfig {
                default_stack_size: DEFAULT_STACK_SIZE,
                balance_interval: Some(Duration::from_millis(10)),
                // OSv polls 10 000 times before halting. Here polling vCPUs steal host
                // time from the vCPU that holds (or is handed) a lock, and `pause` is
                // slow under TCG: 2000 polls made a contended lockbench run 30x
                // slower than 100 (papers/0004).
                idle_poll_iterations: 100,
            },
            make_policy,
        )
    });
    interrupts::set_interrupt_handler(apic::TIMER_VECTOR, on_timer);
    interrupts::set_interrupt_handler(apic::WAKEUP_VECTOR, on_wakeup);
    if let Err(error) = scheduler.spawn(keel_sched::SpawnOptions::new(), main) {
        panic!("cannot spawn the main thread: {error:?}");
    }
    scheduler.run_cpu(CpuId::new(0));
    panic!("CPU 0's idle loop returned although the application is still running")
}

/// `keel-lfmutex`'s blocking interface on Keel threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelParker;

// SAFETY: `Scheduler::unpark` makes the thread's park token available and wakes it, so
// a concurrent or later `park` of that thread returns (an earlier one too, once woken);
// thread ids are unique while threads live.
unsafe impl keel_lfmutex::Parker for KernelParker {
    type Handle = keel_sched::Thread;

    fn current() -> Self::Handle {
        scheduler()
            .current()
            .expect("lock-free mutex used outside a Keel thread")
    }

    /// The id the scheduler recorded in this CPU's per-CPU record at its last switch
    /// (`KernelArch::set_running_thread`), read in one instruction with no interrupt
    /// mask: the mutex asks at every lock. The mutex's `ThreadId` is the scheduler's
    /// type, and the record holds 0 while the idle loop runs.
    fn current_id() -> keel_sched::ThreadId {
        keel_sched::ThreadId::from_u64(percpu::current_thread_id())
            .expect("lock-free mutex used outside a Keel thread")
    }

    fn park() {
        scheduler().park();
    }

    fn unpark(handle: &Self::Handle) {
        scheduler().unpark(handle);
    }

    /// Interrupts masked: no timer preemption between a hand-off or offer and its
    /// wake-up. A preemption that came due (for example for the thread just woken on
    /// this CPU, whose timer `deliver` armed) happens once the guard is dropped.
    fn without_preemption<R>(section: impl FnOnce() -> R) -> R {
        let _masked = keel_sched::Arch::mask_interrupts(scheduler().arch());
        section()
    }

    /// The CPU index (a hint: the thread may migrate right after).
    fn current_cpu_hint() -> u32 {
        u32::try_from(percpu::current_index()).unwrap_or(u32::MAX)
    }

    /// The kernel's monotonic clock (the TSC, scaled).
    fn fairness_clock_nanos() -> Option<u64> {
        Some(time::now().as_nanos())
    }

    /// Whether the owner runs on the CPU it took the mutex on, and that vCPU is not
    /// preempted (KVM's steal-time flag; never set under TCG). An owner that has
    /// migrated since counts as not running: the spinner then sleeps, which is
    /// always safe.
    fn owner_is_running(owner: keel_sched::ThreadId, cpu_hint: u32) -> bool {
        let Ok(cpu) = usize::try_from(cpu_hint) else {
            return false;
        };
        scheduler().is_running_on(owner, CpuId::new(cpu))
    }
}
