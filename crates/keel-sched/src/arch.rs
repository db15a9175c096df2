//! The architecture interface the scheduler is generic over.

use core::ptr::NonNull;

use crate::{CpuId, Instant, ThreadId};

/// What the scheduler needs from the machine: CPU identity, interrupt masking, a
/// monotonic clock, a one-shot timer, wake-up IPIs, an idle wait, thread stacks and
/// the thread pointer. The kernel implements it for x86-64; the `keel-hosted` crate
/// implements it on Linux threads for tests and benches.
///
/// The context switch itself is *not* part of the trait: it is this crate's own
/// x86-64 assembly, identical in the kernel and hosted.
///
/// # Safety
///
/// The scheduler gives each CPU exclusive, unsynchronised access to that CPU's run
/// queue, so an implementation must guarantee:
///
/// 1. [`current_cpu`](Arch::current_cpu) returns `Some(cpu)` only on the execution
///    context that called [`Scheduler::run_cpu(cpu)`](crate::Scheduler::run_cpu) for
///    that `cpu` (including the threads it switches to), never on two such contexts
///    at once, and `None` everywhere else. Its result must not be cached across a
///    context switch (a thread may resume on another CPU).
/// 2. While the guard of [`mask_interrupts`](Arch::mask_interrupts) is alive, no
///    interrupt handler that calls into the scheduler runs on this CPU.
/// 3. [`allocate_stack`](Arch::allocate_stack) returns memory that is readable and
///    writable, not used by anything else, and stays valid until the stack is dropped.
pub unsafe trait Arch: Send + Sync + 'static {
    /// Restores the previous interrupt state when dropped.
    type InterruptGuard;
    /// A thread stack; freed when dropped.
    type Stack: StackMemory;

    /// Number of CPUs; they are numbered `0..cpu_count()`.
    fn cpu_count(&self) -> usize;

    /// The CPU this code runs on, or `None` outside the scheduler's CPUs (for example
    /// a host thread that spawns or unparks).
    fn current_cpu(&self) -> Option<CpuId>;

    /// Called once on `cpu` when [`Scheduler::run_cpu`](crate::Scheduler::run_cpu)
    /// starts, before anything else (hosted: records the OS thread).
    fn cpu_online(&self, cpu: CpuId);

    /// Masks interrupts on this CPU until the guard is dropped (nests).
    fn mask_interrupts(&self) -> Self::InterruptGuard;

    /// Unmasks interrupts unconditionally. Called once when a new thread starts: it
    /// begins with the masked state of the scheduler code that switched to it.
    fn enable_interrupts(&self);

    /// Monotonic time: nanoseconds since an arbitrary origin, as an [`Instant`].
    fn now(&self) -> Instant;

    /// Arms `cpu`'s one-shot timer for `deadline` (replacing any armed one); a
    /// deadline already past fires as soon as possible. Called on `cpu`. In the kernel
    /// its interrupt handler must call
    /// [`Scheduler::timer_interrupt`](crate::Scheduler::timer_interrupt).
    fn arm_timer(&self, cpu: CpuId, deadline: Instant);

    /// Disarms `cpu`'s one-shot timer. Called on `cpu`.
    fn cancel_timer(&self, cpu: CpuId);

    /// Makes `cpu` return from [`idle_wait`](Arch::idle_wait) (an IPI in the kernel, an
    /// unpark of the CPU's OS thread when hosted). A wake-up sent before the wait
    /// begins must still end it (or the wait must not begin).
    fn send_wakeup(&self, cpu: CpuId);

    /// Waits on `cpu` (called on it) until a wake-up, an interrupt, or
    /// `deadline` (the armed timer; `None` when nothing is armed). Spurious returns
    /// are allowed.
    fn idle_wait(&self, cpu: CpuId, deadline: Option<Instant>);

    /// Allocates a stack of at least `size` bytes, with a guard page below it where
    /// the platform can provide one. `None` if memory is exhausted.
    fn allocate_stack(&self, size: usize) -> Option<Self::Stack>;

    /// Whether the hypervisor has preempted `cpu` right now (its vCPU is not running
    /// on a host CPU), as far as the platform tells; a hint for owner-aware spinning,
    /// read by other CPUs. `false` where nothing tells, the default (the kernel reads
    /// KVM's steal-time "preempted" flag where KVM offers it; QEMU's TCG offers
    /// none; the hosted arch reports what a test sets).
    fn is_cpu_preempted(&self, cpu: CpuId) -> bool {
        let _ = cpu;
        false
    }

    /// The scheduler on `cpu` (the calling CPU) has chosen `thread` to run next
    /// (`None`: the idle loop), with interrupts masked, just before it switches. A
    /// platform can keep the id where one instruction reads it, so that "which thread
    /// am I" needs neither an interrupt mask nor the scheduler's CPU state (the kernel
    /// keeps it in the per-CPU record behind GS, for the lock-free mutex's owner). The
    /// outgoing context runs only the rest of the switch, with interrupts still
    /// masked, after this call. The default keeps nothing.
    fn set_running_thread(&self, cpu: CpuId, thread: Option<ThreadId>) {
        let _ = (cpu, thread);
    }

    /// Sets the thread pointer (FS base on x86-64, for TLS) of this CPU.
    ///
    /// # Safety
    ///
    /// `value` must be a valid thread pointer for the code that runs next on this CPU
    /// (in the kernel: point at the incoming thread's TLS block).
    unsafe fn set_thread_pointer(&self, value: u64);
}

/// The memory of one thread stack.
pub trait StackMemory: Send + Sync + 'static {
    /// One past the highest usable byte, 16-byte aligned; the stack grows down from it.
    fn top(&self) -> NonNull<u8>;
    /// Usable bytes below [`top`](StackMemory::top) (guard page excluded).
    fn size(&self) -> usize;
}
