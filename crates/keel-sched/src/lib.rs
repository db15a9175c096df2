//! Keel's per-CPU thread scheduler, after OSv's (`core/sched.cc`), generic over the
//! machine.
//!
//! **Design.** A [`Scheduler`] is an instance (no global state): one [`Arch`]
//! implementation, one policy instance and run queue per CPU, and the CPUs' wake-up
//! queues. Each CPU calls [`Scheduler::run_cpu`], which turns the calling context
//! into that CPU's idle loop. Threads ([`Scheduler::spawn`]) have their own stacks
//! and are switched by this crate's x86-64 assembly (callee-saved registers, stack
//! pointer, MXCSR and the x87 control word), directly from thread to thread; the idle
//! loop runs only when nothing is runnable.
//!
//! - **Per-CPU run queues** are touched only by their own CPU, with interrupts
//!   masked. Other CPUs (and host threads) hand threads over through the target's
//!   lock-free [`wakeup::WakeQueue`] (one lane per source CPU, as OSv's
//!   `incoming_wakeups`, and one word announcing the non-empty lanes that also holds
//!   the target's "sleeping" flag), and send a wake-up (IPI) only when the target is
//!   asleep or not polling its queue. Run queues and timer queues are intrusive
//!   (the links live in the thread record): the switch, wake-up and timer paths
//!   allocate nothing.
//! - **Policies** ([`Policy`]) order the run queue and decide preemption.
//!   [`FairPolicy`] (the default) is OSv's: the runnable thread with the smallest
//!   exponentially decayed runtime (time constant `tau` = 200 ms) runs, with 2 ms of
//!   hysteresis and a 10 µs switch penalty (OSv's constants); priorities scale the
//!   runtime charged. [`RoundRobinPolicy`] is FIFO/round-robin for experiments.
//! - **Tickless timers**: each CPU keeps its sleeping threads' deadlines and arms the
//!   one-shot timer only for the next deadline or preemption point, never when idle
//!   with nothing pending.
//! - **Blocking**: [`Scheduler::park`] / [`Scheduler::unpark`] (a token, tolerant of
//!   unpark-before-park, like std; what a lock-free mutex's "parker" maps onto),
//!   [`Scheduler::sleep`], [`Scheduler::join`], [`Scheduler::yield_now`],
//!   [`Scheduler::exit`].
//! - **Load balancing**: at scheduling decisions, at most every
//!   [`SchedulerConfig::balance_interval`], a CPU with at least two more
//!   runnable threads than the least loaded one pushes one unpinned queued thread
//!   there (through the wake-up queue). Pinned threads never migrate.
//!
//! **The `Arch` contract** ([`Arch`], an `unsafe trait`): current CPU id, interrupt
//! masking guard, a monotonic clock (`now`, an [`Instant`]), arm/cancel a one-shot
//! timer at an `Instant`, `send_wakeup` (IPI), `idle_wait` (hlt), stack allocation
//! with a guard page, `set_thread_pointer` (FS base). See the trait for what an
//! implementation must guarantee.
//!
//! **Time at the boundaries** is typed: the clock and timer deadlines are
//! [`Instant`]s, spans ([`Scheduler::sleep`], [`SchedulerConfig::balance_interval`])
//! are [`core::time::Duration`]s. Inside, the scheduler keeps raw `u64` nanoseconds
//! ([`Instant::as_nanos`]) where a `Duration` would cost divisions on the switch
//! path; the [`Policy`] trait is part of that inside (its `now`, `slice_start`,
//! charged runtimes and time slices are `u64` nanoseconds, and [`FairParams`] are
//! `f64` nanoseconds for its exponentials).
//!
//! **Hosted vs kernel.** The same scheduler code runs in both. The `keel-hosted` crate's
//! `HostedArch` maps CPUs to Linux threads (wake-up = unpark of
//! the CPU's OS thread, idle wait = park with timeout, stacks = `mmap` with a
//! `PROT_NONE` guard page, thread pointer = no-op since std's TLS lives in FS), and
//! `keel_hosted::Machine` starts them. The one difference: a hosted CPU cannot be
//! interrupted asynchronously, so preemption happens only at scheduler entry points
//! (`yield_now`, `park`, `sleep`, `join`, [`Scheduler::preempt_check`]) and where a
//! spinning thread calls `keel_hosted::interrupt_point`, which takes a pending wake-up
//! IPI or expired timer as the kernel's handlers do ([`Scheduler::wakeup_interrupt`],
//! [`Scheduler::timer_interrupt`]).
//!
//! Threads must not unwind: a panic that escapes a thread's closure aborts.
#![no_std]
// Unsafe code only in the modules marked `allow(unsafe_code)` below, each block with
// its `SAFETY:` argument.
#![deny(unsafe_code)]

extern crate alloc;

#[cfg(test)]
extern crate std;

#[allow(unsafe_code)]
mod arch;
#[allow(unsafe_code)]
mod context;
pub mod handshake;
pub mod policy;
// Safe code; `allow` only for the `unsafe impl`s that `intrusive_adapter!` expands to.
#[allow(unsafe_code)]
mod queue;
#[allow(unsafe_code)]
mod scheduler;
#[allow(unsafe_code)]
mod thread;
#[allow(unsafe_code)]
pub mod wakeup;

pub use arch::{Arch, StackMemory};
pub use policy::{Accounting, FairParams, FairPolicy, Policy, RoundRobinPolicy};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use thread::{JoinHandle, Thread};

use core::fmt;

/// The smallest stack [`Scheduler::spawn`] accepts, in bytes.
pub const MIN_STACK_SIZE: usize = 4096;

/// A point on the arch clock (`keel-types`'s, re-exported); spans are
/// [`core::time::Duration`]s.
pub use keel_types::Instant;

/// A CPU number, `0..cpu_count` (`keel-types`'s, re-exported).
pub use keel_types::CpuId;

/// A thread's unique id within its scheduler, numbered from 1 (so that 0 can mean
/// "no thread", as in a mutex's owner word). `keel-types`'s one thread id,
/// re-exported: the same type `keel-lfmutex` records its owner with.
pub use keel_types::ThreadId;

/// The factor by which a thread's runtime is charged (OSv's convention): 1 is the
/// default, 2 makes the thread look as if it ran twice as long (it gets half the CPU
/// share of a priority-1 thread under the fair policy).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Priority(f64);

impl Priority {
    /// The default priority, 1.
    pub const DEFAULT: Priority = Priority(1.0);

    /// A priority factor; `None` unless finite and positive.
    pub fn new(factor: f64) -> Option<Self> {
        (factor.is_finite() && factor > 0.0).then_some(Self(factor))
    }

    /// The factor.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How to create a thread; [`Default`] gives the scheduler's stack size, priority 1,
/// no pinning and no thread pointer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpawnOptions {
    /// Stack size in bytes; `None` for [`SchedulerConfig::default_stack_size`].
    pub stack_size: Option<usize>,
    /// Runtime accounting factor.
    pub priority: Priority,
    /// Run only on this CPU (never migrated).
    pub pin: Option<CpuId>,
    /// Thread pointer (FS base) to install when the thread runs; 0 for none.
    pub thread_pointer: u64,
}

impl SpawnOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the stack size.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Pins the thread to `cpu`.
    pub fn pin(mut self, cpu: CpuId) -> Self {
        self.pin = Some(cpu);
        self
    }

    /// Sets the thread pointer.
    pub fn thread_pointer(mut self, value: u64) -> Self {
        self.thread_pointer = value;
        self
    }
}

/// Why a thread could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// The stack could not be allocated.
    StackAllocation,
    /// The requested stack size is below [`MIN_STACK_SIZE`].
    StackTooSmall(usize),
    /// The requested CPU does not exist.
    NoSuchCpu(CpuId),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::StackAllocation => f.write_str("could not allocate a thread stack"),
            SpawnError::StackTooSmall(size) => write!(f, "stack of {size} bytes is too small"),
            SpawnError::NoSuchCpu(cpu) => write!(f, "no CPU {}", cpu.index()),
        }
    }
}

impl core::error::Error for SpawnError {}
