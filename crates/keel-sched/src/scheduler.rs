//! The scheduler instance: per-CPU state, the scheduling decision, blocking and
//! waking, timers and the load balancer.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::ops::{Deref, DerefMut};

use keel_sync::SpinLock;
use keel_sync::shim::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, spin_loop};

use crate::arch::{Arch, StackMemory};
use crate::context::{self, switch_context};
use crate::handshake;
use crate::policy::{Accounting, FairPolicy, Policy};
use crate::queue::{RunKey, RunQueue, TimerKey, TimerQueue};
use crate::thread::{JoinHandle, Thread, ThreadInner, state};
use crate::wakeup::{PushOutcome, WakeLink, WakeQueue};
use crate::{CpuId, SpawnError, SpawnOptions, ThreadId};
use core::time::Duration;
use intrusive_collections::{LinkedListLink, RBTreeLink};
use keel_types::Instant;

/// Scheduler-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Stack size of threads spawned without [`SpawnOptions::stack_size`].
    pub default_stack_size: usize,
    /// How often (at most) each CPU runs the load balancer; `None` disables
    /// balancing. Balancing runs only at scheduling decisions.
    pub balance_interval: Option<Duration>,
    /// How many times an idle CPU polls its wake-up queue before it sleeps (OSv polls
    /// 10 000 times before halting; hosted CPUs share host cores, so keep it small).
    pub idle_poll_iterations: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            default_stack_size: 256 * 1024,
            balance_interval: Some(Duration::from_millis(10)),
            idle_poll_iterations: 1_000,
        }
    }
}

/// A per-CPU scheduler instance; see the [crate docs](crate) for the design.
///
/// Each CPU runs [`run_cpu`](Scheduler::run_cpu); threads are created with
/// [`spawn`](Scheduler::spawn) and use the blocking calls (`park`, `sleep`,
/// `yield_now`, `join`, `exit`) on themselves.
pub struct Scheduler<A: Arch, P: Policy = FairPolicy> {
    arch: A,
    cpus: Box<[Cpu<P>]>,
    config: SchedulerConfig,
    /// `config.balance_interval` in nanoseconds (saturated), converted once: the
    /// scheduling decision compares it with raw clock readings.
    balance_interval_nanos: Option<u64>,
    /// Source of thread ids (`Relaxed`: only uniqueness matters).
    next_thread_id: AtomicU64,
    /// Set once by `request_shutdown` (`Release`), read by idle CPUs (`Acquire`).
    shutdown: AtomicBool,
}

/// One CPU: the part other CPUs may touch (atomics) and the part only it touches.
#[repr(align(128))]
struct Cpu<P> {
    /// Threads woken, spawned or migrated onto this CPU by others. Its `POLLING`
    /// flag is set while this CPU's idle loop runs and so will look at the queue by
    /// itself, and cleared at the start of every scheduling decision (before the
    /// drain) until the idle loop runs again. A waker that pushes onto a CPU that is
    /// not polling interrupts it even if it is not asleep, so a thread woken onto a
    /// busy CPU is taken in at once (the kernel's wake-up interrupt enters the
    /// scheduler), not when the running thread happens to block. OSv likewise
    /// interrupts the target unless it is idle-polling.
    incoming: WakeQueue<ThreadInner>,
    /// Runnable threads (queued plus running), published for the balancer
    /// (`Relaxed`: a heuristic).
    load: AtomicUsize,
    /// The id of the thread running on this CPU, 0 while the idle loop runs: written
    /// by this CPU at every switch, read by anyone as a hint (`Relaxed`; see
    /// [`Scheduler::is_running_on`]).
    running: AtomicU64,
    /// Only this CPU touches it, with interrupts masked, through a [`LocalRef`].
    local: UnsafeCell<CpuLocal<P>>,
    /// A [`LocalRef`] of this CPU exists. Only this CPU touches it.
    local_borrowed: Cell<bool>,
}

// SAFETY: `local` and `local_borrowed` are only accessed by their own CPU (see
// `Scheduler::try_local`), and the rest is atomic or the lock-free queue; `P: Send`
// moves the policy with the scheduler.
unsafe impl<P: Send> Sync for Cpu<P> {}

/// State private to one CPU.
struct CpuLocal<P> {
    policy: P,
    run_queue: RunQueue,
    /// The running thread; `None` while the CPU's idle loop runs.
    current: Option<Thread>,
    /// The idle loop's saved stack pointer while a thread runs.
    idle_context: usize,
    /// The thread just switched away from, released by the next context after the
    /// switch (its stack may be freed only once nothing runs on it).
    switched_out: Option<Thread>,
    timers: TimerQueue,
    /// When the current thread (or the idle loop) started running.
    running_since: u64,
    /// The deadline the one-shot timer is armed for.
    armed_deadline: Option<u64>,
    last_balance: u64,
    /// The thread pointer last installed.
    thread_pointer: u64,
    /// Increases with every enqueue (ties in the run queue go in this order).
    enqueue_sequence: u64,
    timer_sequence: u64,
}

/// Why the scheduler is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// The current thread blocked or exited (its state is no longer `RUNNING`,
    /// unless a wake-up already raced in).
    Block,
    /// The current thread yields to any other runnable thread.
    Yield,
    /// A preemption point: switch if the policy says so.
    Preempt,
    /// The idle loop looks for work.
    Idle,
}

/// Raw accounting pointer of a thread.
fn accounting(thread: &ThreadInner) -> *mut Accounting {
    thread.accounting.get()
}

/// Exclusive access to the private state of the CPU the caller runs on, with
/// interrupts masked for its whole life (it borrows the mask's guard); made only by
/// [`Scheduler::try_local`]. At most one exists per CPU at a time (a second attempt
/// panics), and none survives a context switch: the switch
/// ([`Scheduler::switch_to`]) consumes it, and the resumed context makes its own.
struct LocalRef<'a, P> {
    cpu: CpuId,
    local: &'a mut CpuLocal<P>,
    borrowed: &'a Cell<bool>,
}

impl<P> Deref for LocalRef<'_, P> {
    type Target = CpuLocal<P>;
    fn deref(&self) -> &CpuLocal<P> {
        self.local
    }
}

impl<P> DerefMut for LocalRef<'_, P> {
    fn deref_mut(&mut self) -> &mut CpuLocal<P> {
        self.local
    }
}

impl<P> Drop for LocalRef<'_, P> {
    fn drop(&mut self) {
        self.borrowed.set(false);
    }
}

impl<A: Arch, P: Policy + Default> Scheduler<A, P> {
    /// A scheduler for `arch.cpu_count()` CPUs, each with a default policy.
    pub fn new(arch: A, config: SchedulerConfig) -> Self {
        Self::with_policy(arch, config, |_| P::default())
    }
}

impl<A: Arch, P: Policy> Scheduler<A, P> {
    /// A scheduler whose CPU `n` uses the policy `make_policy(n)`.
    pub fn with_policy(
        arch: A,
        config: SchedulerConfig,
        mut make_policy: impl FnMut(CpuId) -> P,
    ) -> Self {
        let cpu_count = arch.cpu_count();
        let cpus = (0..cpu_count)
            .map(|index| Cpu {
                incoming: WakeQueue::new(cpu_count),
                load: AtomicUsize::new(0),
                running: AtomicU64::new(0),
                local: UnsafeCell::new(CpuLocal {
                    policy: make_policy(CpuId::new(index)),
                    run_queue: RunQueue::new(P::FIFO_ORDER),
                    current: None,
                    idle_context: 0,
                    switched_out: None,
                    timers: TimerQueue::new(),
                    running_since: 0,
                    armed_deadline: None,
                    last_balance: 0,
                    thread_pointer: 0,
                    enqueue_sequence: 0,
                    timer_sequence: 0,
                }),
                local_borrowed: Cell::new(false),
            })
            .collect();
        Self {
            arch,
            cpus,
            config,
            balance_interval_nanos: config
                .balance_interval
                .map(|interval| u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX)),
            next_thread_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
        }
    }

    /// The architecture implementation.
    pub fn arch(&self) -> &A {
        &self.arch
    }

    /// Number of CPUs.
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The scheduler's settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Monotonic time (the arch clock).
    pub fn now(&self) -> Instant {
        self.arch.now()
    }

    // ----- threads -------------------------------------------------------------

    /// Creates a thread running `function` and makes it runnable on `options.pin` (it
    /// then never migrates), else on the calling CPU, else (called from outside the
    /// scheduler's CPUs) on CPU 0. May be called from anywhere.
    pub fn spawn<F, T>(
        &self,
        options: SpawnOptions,
        function: F,
    ) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let cpu = match options.pin {
            Some(cpu) if cpu.index() >= self.cpus.len() => return Err(SpawnError::NoSuchCpu(cpu)),
            Some(cpu) => cpu,
            None => self.arch.current_cpu().unwrap_or(CpuId::new(0)),
        };
        let size = options.stack_size.unwrap_or(self.config.default_stack_size);
        if size < crate::MIN_STACK_SIZE {
            return Err(SpawnError::StackTooSmall(size));
        }
        let stack = self
            .arch
            .allocate_stack(size)
            .ok_or(SpawnError::StackAllocation)?;
        if stack.size() < crate::MIN_STACK_SIZE {
            return Err(SpawnError::StackAllocation);
        }
        // SAFETY: relies on (1) `StackMemory::top` being 16-byte aligned with `size()`
        // (checked above to be at least one page) usable bytes below it; (2) the
        // `Arch` contract that the stack memory is ours alone.
        let stack_pointer = unsafe { context::prepare_stack(stack.top(), thread_start::<A, P>) };
        let result = Arc::new(SpinLock::new(None));
        let result_slot = Arc::clone(&result);
        let entry: Box<dyn FnOnce() + Send> = Box::new(move || {
            let value = function();
            *result_slot.lock() = Some(value);
        });
        let thread = Thread {
            inner: Arc::new(ThreadInner {
                // Numbered from 1; a u64 counter does not wrap to 0 in any real lifetime.
                id: ThreadId::from_u64(self.next_thread_id.fetch_add(1, Ordering::Relaxed))
                    .expect("thread ids start at 1 and do not wrap"),
                state: AtomicU32::new(state::WAKING),
                token: AtomicBool::new(false),
                home_cpu: AtomicUsize::new(cpu.index()),
                pinned: options.pin.is_some(),
                sleep_generation: AtomicU64::new(0),
                sleep_fired: AtomicU64::new(0),
                context: UnsafeCell::new(stack_pointer),
                accounting: UnsafeCell::new(Accounting::new(options.priority)),
                entry: UnsafeCell::new(Some(entry)),
                spare: UnsafeCell::new(None),
                joiner: SpinLock::new(None),
                wake_link: WakeLink::new(),
                run_link: RBTreeLink::new(),
                fifo_link: LinkedListLink::new(),
                run_key: Cell::new(RunKey::default()),
                timer_link: RBTreeLink::new(),
                timer_key: Cell::new(TimerKey::default()),
                thread_pointer: options.thread_pointer,
                _stack: Box::new(stack),
            }),
        };
        self.deliver(&thread);
        Ok(JoinHandle { thread, result })
    }

    /// Waits (blocking the calling thread) until `handle`'s thread finishes; returns
    /// its result, or `None` if it ended through [`exit`](Scheduler::exit). Must be
    /// called from a thread of this scheduler.
    pub fn join<T>(&self, handle: JoinHandle<T>) -> Option<T> {
        let target = &handle.thread.inner;
        if target.state.load(Ordering::Acquire) != state::TERMINATED {
            let me = self
                .current()
                .expect("join called outside a scheduler thread");
            {
                // Masked, as in `exit_current`: a timer preemption while we hold the
                // lock would leave the exiting thread spinning on it with interrupts
                // masked, on the only CPU that could run us (found as an in-guest
                // test hang on one CPU).
                let _interrupts = self.arch.mask_interrupts();
                *target.joiner.lock() = Some(me);
            }
            self.with_current(|me| {
                while target.state.load(Ordering::Acquire) != state::TERMINATED {
                    self.block_current(me, || {
                        target.state.load(Ordering::SeqCst) == state::TERMINATED
                    });
                }
            });
        }
        handle.result.lock().take()
    }

    /// The calling thread, or `None` outside the scheduler's threads.
    pub fn current(&self) -> Option<Thread> {
        // Mask first, then read the CPU: with interrupts enabled, a timer preemption
        // between the two could let the balancer move this thread to another CPU.
        let interrupts = self.arch.mask_interrupts();
        let local = self.try_local(&interrupts)?;
        local.current.clone()
    }

    /// The calling thread's id, or `None` outside the scheduler's threads; unlike
    /// [`current`](Scheduler::current) it takes no reference (no reference-count
    /// traffic), for callers such as a mutex recording its owner.
    pub fn current_id(&self) -> Option<ThreadId> {
        let interrupts = self.arch.mask_interrupts();
        let local = self.try_local(&interrupts)?;
        local.current.as_ref().map(|current| current.inner.id)
    }

    /// Whether thread `id` is running right now on `cpu`, and the hypervisor has not
    /// preempted `cpu` ([`Arch::is_cpu_preempted`]); false for a CPU that does not
    /// exist. A snapshot without synchronisation, for owner-aware spinning (a lock
    /// waiter spins only while the owner runs): either answer may be stale by the
    /// time the caller acts on it.
    pub fn is_running_on(&self, id: ThreadId, cpu: CpuId) -> bool {
        self.cpus
            .get(cpu.index())
            .is_some_and(|shared| shared.running.load(Ordering::Relaxed) == id.get())
            && !self.arch.is_cpu_preempted(cpu)
    }

    /// Gives the CPU to another runnable thread, if any (the caller is requeued).
    pub fn yield_now(&self) {
        let interrupts = self.arch.mask_interrupts();
        self.schedule(self.local(&interrupts), Entry::Yield);
    }

    /// A preemption point: lets the policy switch to a more deserving thread (for
    /// example when the current one used up its time slice). Hosted code calls it in
    /// long loops; in the kernel the timer interrupt does it (see
    /// [`timer_interrupt`](Scheduler::timer_interrupt)).
    pub fn preempt_check(&self) {
        let interrupts = self.arch.mask_interrupts();
        if let Some(local) = self.try_local(&interrupts) {
            self.schedule(local, Entry::Preempt);
        }
    }

    /// Called by the wake-up interrupt (IPI) handler on its CPU (in the kernel; hosted,
    /// by `keel_hosted::interrupt_point`). Takes in the threads other CPUs queued here
    /// and lets the policy preempt the current thread for them (or arms the timer for
    /// their turn); from the idle loop it switches to them directly.
    pub fn wakeup_interrupt(&self) {
        self.preempt_check();
    }

    /// Called by the one-shot timer's interrupt handler on its CPU (in the kernel;
    /// hosted, by `keel_hosted::interrupt_point`), at a point where switching threads
    /// is allowed (the end of the handler). Fires expired sleep timers and preempts
    /// the current thread if the policy says so.
    pub fn timer_interrupt(&self) {
        let interrupts = self.arch.mask_interrupts();
        let Some(mut local) = self.try_local(&interrupts) else {
            return;
        };
        local.armed_deadline = None;
        self.schedule(local, Entry::Preempt);
    }

    /// Blocks the calling thread until its park token is available, then consumes
    /// it. [`unpark`](Scheduler::unpark) makes the token available (once: tokens do
    /// not accumulate), so an unpark before the park makes it return at once, as with
    /// `std::thread::park`. Unlike std, it never returns spuriously.
    pub fn park(&self) {
        self.with_current(|me| {
            loop {
                // The relaxed load first spares the locked swap when no token is
                // pending (the usual case when parking); a token set after it is seen
                // by `block_current`'s re-check (or its waker's CAS).
                if me.token.load(Ordering::Relaxed) && me.token.swap(false, Ordering::Acquire) {
                    return;
                }
                self.block_current(me, || me.token.load(Ordering::SeqCst));
            }
        });
    }

    /// Makes `thread`'s park token available and wakes it if it is parked. May be
    /// called from anywhere (any CPU, an interrupt handler, a host thread).
    pub fn unpark(&self, thread: &Thread) {
        thread.inner.token.store(true, Ordering::SeqCst);
        self.wake(thread);
    }

    /// Blocks the calling thread for at least `duration` (a duration past the clock's
    /// end sleeps until [`Instant::MAX`]).
    pub fn sleep(&self, duration: Duration) {
        self.sleep_until(self.arch.now().saturating_add(duration));
    }

    /// Blocks the calling thread until the arch clock reads at least `deadline`.
    /// The wake-up is a timer on the thread's CPU; the park token is left untouched.
    pub fn sleep_until(&self, deadline: Instant) {
        if self.arch.now() >= deadline {
            return;
        }
        let deadline_nanos = deadline.as_nanos();
        self.with_current(|me| {
            let generation = me.sleep_generation.load(Ordering::Relaxed);
            {
                let interrupts = self.arch.mask_interrupts();
                let mut local = self.local(&interrupts);
                let thread = local.current.clone().expect("sleep outside a thread");
                local.timer_sequence += 1;
                let key = TimerKey {
                    deadline: deadline_nanos,
                    sequence: local.timer_sequence,
                    generation,
                };
                local.timers.insert(key, thread.inner);
            }
            // Wait for the entry to fire, not for this CPU's clock: the thread may
            // run on another CPU than the entry's by now (a spurious wake-up and the
            // balancer), whose clock may read behind the entry's CPU's; re-checking
            // the deadline there could block with the entry already gone.
            let fired = || me.sleep_fired.load(Ordering::SeqCst) > generation;
            while !fired() {
                self.block_current(me, fired);
            }
            me.sleep_generation.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Ends the calling thread (its closure's remaining frames are not unwound, so
    /// their destructors do not run); its joiner gets `None`.
    pub fn exit(&self) -> ! {
        self.exit_current()
    }

    /// Asks every CPU's [`run_cpu`](Scheduler::run_cpu) to return once it has no
    /// runnable thread left. Threads still blocked then are never resumed.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for cpu in 0..self.cpus.len() {
            self.arch.send_wakeup(CpuId::new(cpu));
        }
    }

    /// Number of runnable threads (queued plus running) of each CPU, as last published.
    pub fn loads(&self) -> Vec<usize> {
        self.cpus
            .iter()
            .map(|cpu| cpu.load.load(Ordering::Relaxed))
            .collect()
    }

    // ----- the CPU loop ----------------------------------------------------------

    /// Runs CPU `cpu`: the calling context becomes its idle loop, which runs threads
    /// until none is runnable, then polls its wake-up queue, then waits for a wake-up
    /// or its timer. Returns after [`request_shutdown`](Scheduler::request_shutdown)
    /// once the CPU has nothing runnable. Call it once per CPU, on that CPU.
    pub fn run_cpu(&self, cpu: CpuId) {
        self.arch.cpu_online(cpu);
        assert_eq!(
            self.arch.current_cpu(),
            Some(cpu),
            "Arch::cpu_online broke current_cpu"
        );
        let this = &self.cpus[cpu.index()];
        {
            let interrupts = self.arch.mask_interrupts();
            let mut local = self.local(&interrupts);
            local.running_since = self.arch.now().as_nanos();
            local.last_balance = local.running_since;
        }
        loop {
            {
                let interrupts = self.arch.mask_interrupts();
                self.schedule(self.local(&interrupts), Entry::Idle);
            }
            // Back in the idle loop: from here on this CPU polls its queue by itself.
            this.incoming.start_polling();
            if self.shutdown.load(Ordering::Acquire) && !this.incoming.has_pending() {
                break;
            }
            let mut polls = 0;
            while polls < self.config.idle_poll_iterations && !this.incoming.has_pending() {
                spin_loop();
                polls += 1;
            }
            if this.incoming.has_pending() {
                continue;
            }
            let deadline = {
                let interrupts = self.arch.mask_interrupts();
                self.local(&interrupts).timers.next_deadline()
            };
            if deadline.is_some_and(|deadline| deadline <= self.arch.now().as_nanos()) {
                continue;
            }
            if this.incoming.try_sleep() && !self.shutdown.load(Ordering::Acquire) {
                self.arch.idle_wait(cpu, deadline.map(Instant::from_nanos));
            }
            // Clears the sleeping flag; what it took is enqueued by the next decision.
            self.absorb(this.incoming.drain().map(|inner| Thread { inner }));
        }
    }

    // ----- internals -------------------------------------------------------------

    /// The private state of the CPU we run on, or `None` off the scheduler's CPUs.
    /// `masked` proves interrupts masked for as long as the result lives. Panics if
    /// this CPU's state is already borrowed (a re-entrant call).
    fn try_local<'a>(&'a self, masked: &'a A::InterruptGuard) -> Option<LocalRef<'a, P>> {
        let _ = masked;
        // Read under the mask: in the kernel a timer preemption between the read and
        // the use could let the balancer migrate this thread to another CPU.
        let cpu = self.arch.current_cpu()?;
        let this = &self.cpus[cpu.index()];
        assert!(
            !this.local_borrowed.replace(true),
            "CPU {} state borrowed twice",
            cpu.index()
        );
        // SAFETY: relies on (1) the `Arch` contract (item 1): `current_cpu` says `cpu`
        // only on the one context that runs that CPU, so no other CPU or host thread
        // touches `this.local` or `this.local_borrowed`; (2) interrupts being masked
        // while the result lives (it borrows `masked`), so no interrupt handler on this
        // CPU enters the scheduler meanwhile (item 2); (3) the `local_borrowed` flag,
        // just checked and set, cleared only by the result's drop: no other `LocalRef`
        // of this CPU is alive, so this `&mut` is the only reference to its state;
        // (4) no context switch while it lives (the one switch, `switch_to`, consumes
        // it first), so the context it belongs to stays on `cpu`, and the resumed
        // context (a thread or the idle loop) makes its own.
        let local = unsafe { &mut *this.local.get() };
        Some(LocalRef {
            cpu,
            local,
            borrowed: &this.local_borrowed,
        })
    }

    /// [`try_local`](Self::try_local) for code that runs on a CPU of the scheduler;
    /// panics elsewhere.
    fn local<'a>(&'a self, masked: &'a A::InterruptGuard) -> LocalRef<'a, P> {
        self.try_local(masked)
            .expect("called outside the scheduler's CPUs")
    }

    /// Takes the spare handle of `thread` (see `ThreadInner::spare`), a thread
    /// whose home CPU `local` is the state of.
    fn take_spare(local: &mut CpuLocal<P>, thread: &ThreadInner) -> Option<Thread> {
        let _ = local;
        // SAFETY: see `spare_argument` below.
        unsafe { (*thread.spare.get()).take() }
    }

    /// Stores `thread`'s own handle as its spare (it just blocked on the CPU whose
    /// state `local` is, its home).
    fn put_spare(local: &mut CpuLocal<P>, thread: Thread) {
        let _ = local;
        let slot = thread.inner.spare.get();
        // SAFETY: see `spare_argument` below; and the record stays alive, since the
        // handle moves into it.
        let previous = unsafe { slot.replace(Some(thread)) };
        debug_assert!(
            previous.is_none(),
            "a blocked thread's spare handle was set"
        );
        drop(previous);
    }

    // spare_argument: a thread's `spare` is accessed only through `take_spare` and
    // `put_spare`, which rely on (1) every caller passing a thread whose home CPU is
    // the one `local` is the state of (the current thread, switched out by
    // `switch_to`; a thread delivered to this CPU, in `deliver` and `make_runnable`):
    // the home CPU changes only for a queued thread (migration), whose spare is empty,
    // and the new CPU receives it through its wake-up queue (release/acquire); (2) the
    // `&mut CpuLocal`, which proves this CPU's state exclusively borrowed and is held
    // across each access, so no two accesses to a spare overlap.

    /// Calls `body` with the running thread's record.
    fn with_current<R>(&self, body: impl FnOnce(&ThreadInner) -> R) -> R {
        let inner: *const ThreadInner = {
            let interrupts = self.arch.mask_interrupts();
            let local = self.local(&interrupts);
            let current = local
                .current
                .as_ref()
                .expect("called outside a scheduler thread");
            Arc::as_ptr(&current.inner)
        };
        // SAFETY: relies on (1) the scheduler holding a strong reference to a thread
        // from the moment it becomes some CPU's current thread until after the switch
        // away from it (`current`, then `switched_out` or the run queue); (2) a thread
        // only running again if someone held a strong reference to wake it, and then
        // becoming current again. So whenever code of `body` runs (on this thread),
        // the record is alive; if the last reference goes while the thread is
        // switched out, `body` never resumes.
        body(unsafe { &*inner })
    }

    /// Blocks the current thread (`me`) until a wake-up, unless `ready()` holds after
    /// it is marked waiting. Spurious returns are possible; callers loop.
    fn block_current(&self, me: &ThreadInner, ready: impl Fn() -> bool) {
        let interrupts = self.arch.mask_interrupts();
        let local = self.local(&interrupts);
        // Mark waiting, then the re-check: pairs with a waker's "publish condition,
        // then claim": either we see its condition, or its claim sees WAITING and it
        // delivers us (see `handshake`).
        handshake::begin_wait(&me.state);
        if ready() && handshake::cancel_wait(&me.state) {
            return;
        }
        self.schedule(local, Entry::Block);
    }

    /// Moves a WAITING thread to WAKING; true if this caller did it (and so must
    /// deliver it). Pairs with `block_current`'s store and re-check (see
    /// `handshake`).
    fn claim_waiting(inner: &ThreadInner) -> bool {
        handshake::claim_waiting(&inner.state)
    }

    /// Wakes `thread` if it is waiting. Returns whether this call woke it.
    fn wake(&self, thread: &Thread) -> bool {
        if Self::claim_waiting(&thread.inner) {
            self.deliver(thread);
            true
        } else {
            false
        }
    }

    /// Makes a `WAKING` thread runnable on its home CPU: directly when that is this
    /// CPU, else through the home CPU's wake-up queue (waking the CPU if asleep).
    fn deliver(&self, thread: &Thread) {
        let home = CpuId::new(thread.inner.home_cpu.load(Ordering::Acquire));
        let interrupts = self.arch.mask_interrupts();
        let local = self.try_local(&interrupts);
        let here = local.as_ref().map(|local| local.cpu);
        // (`deliver` is never called while this CPU's state is borrowed: `schedule`
        // uses `deliver_from` instead.)
        if let Some(mut local) = local
            && local.cpu == home
        {
            // The handle the thread blocked with, if it is switched out; else a clone.
            let owned =
                Self::take_spare(&mut local, &thread.inner).unwrap_or_else(|| thread.clone());
            Self::make_runnable(&mut local, owned);
            if local.current.is_some() {
                // A thread runs here (we are it, or an interrupt handler on it), and
                // no scheduling decision follows by itself: make one due, as OSv's
                // `wake_impl` sets `need_reschedule`. The timer is armed for a past
                // deadline (the current thread's start), so it fires as soon as
                // interrupts are unmasked (never inside the caller's masked section)
                // unless the caller enters the scheduler first (it blocks, say),
                // which re-arms the timer for the real deadline. The decision itself
                // (preempt now, or arm the newcomer's time slice) is the timer
                // interrupt's: computing the slice here cost the hosted switch bench
                // about 130 ns per round trip (exp and ln of the fair policy).
                let due = local.running_since;
                if local.armed_deadline.is_none_or(|armed| armed > due) {
                    local.armed_deadline = Some(due);
                    self.arch.arm_timer(home, Instant::from_nanos(due));
                }
            }
            self.publish_load(home, &local);
        } else {
            self.push_remote(here, home, thread.clone());
        }
    }

    /// `deliver` for callers that already hold this CPU's state.
    fn deliver_from(&self, cpu: CpuId, local: &mut CpuLocal<P>, thread: Thread) {
        let home = CpuId::new(thread.inner.home_cpu.load(Ordering::Acquire));
        if home == cpu {
            Self::make_runnable(local, thread);
        } else {
            self.push_remote(Some(cpu), home, thread);
        }
    }

    /// Hands `thread` to CPU `home` through its wake-up queue, on the lane of
    /// `source` (the CPU we run on, with interrupts masked; `None` off the CPUs), and
    /// interrupts `home` unless it is polling that queue by itself.
    fn push_remote(&self, source: Option<CpuId>, home: CpuId, thread: Thread) {
        let target = &self.cpus[home.index()];
        // SAFETY: relies on (1) `thread` being in `WAKING`, moved there by our caller
        // (a waker's claim, a migration or a spawn), which alone pushes it, and (2) a
        // thread leaving `WAKING` only once its queue was drained: so it is in no
        // wake-up queue now (see `ThreadInner::wake_link`).
        let outcome = unsafe {
            target
                .incoming
                .push(source.map(|cpu| cpu.index()), thread.inner)
        };
        if outcome != PushOutcome::Queued {
            self.arch.send_wakeup(home);
        }
    }

    /// Enqueues a thread delivered to this CPU (or marks the current thread running
    /// again if a wake-up raced with its blocking).
    fn make_runnable(local: &mut CpuLocal<P>, thread: Thread) {
        // Queued or running from now on: the spare handle (if the thread blocked and
        // was delivered with another handle) goes. Not the last one: `thread` is
        // another.
        drop(Self::take_spare(local, &thread.inner));
        if local
            .current
            .as_ref()
            .is_some_and(|current| current.ptr_eq(&thread))
        {
            thread.inner.state.store(state::RUNNING, Ordering::Relaxed);
            return;
        }
        thread.inner.state.store(state::QUEUED, Ordering::Relaxed);
        local.enqueue_sequence += 1;
        let sequence = local.enqueue_sequence;
        // SAFETY: the thread is owned by this CPU (delivered to it), not running, and
        // no other reference to its accounting is alive.
        let accounting = unsafe { &mut *accounting(&thread.inner) };
        local.policy.enqueue(accounting, sequence);
        let key = RunKey {
            key: accounting.key,
            sequence,
        };
        local.run_queue.insert(key, thread.inner);
    }

    /// Enqueues what `drain` took from the wake-up queue.
    fn absorb(&self, drained: impl Iterator<Item = Thread>) {
        let interrupts = self.arch.mask_interrupts();
        let mut local = self.local(&interrupts);
        for thread in drained {
            Self::make_runnable(&mut local, thread);
        }
    }

    fn publish_load(&self, cpu: CpuId, local: &CpuLocal<P>) {
        let load = local.run_queue.len() + usize::from(local.current.is_some());
        let slot = &self.cpus[cpu.index()].load;
        if slot.load(Ordering::Relaxed) != load {
            slot.store(load, Ordering::Relaxed);
        }
    }

    /// The scheduling decision, and the switch, on the CPU whose state `local` is.
    /// Called on a thread of this scheduler or the idle loop. When the calling
    /// context continues it may be on another CPU (a queued thread may migrate).
    fn schedule(&self, mut local: LocalRef<'_, P>, entry: Entry) {
        let cpu = local.cpu;
        let this = &self.cpus[cpu.index()];
        let now = self.arch.now().as_nanos();

        // Before draining: a push the drain misses then finds the queue's `POLLING`
        // flag clear and interrupts us (see `wakeup`).
        this.incoming.stop_polling();
        for inner in this.incoming.drain() {
            Self::make_runnable(&mut local, Thread { inner });
        }
        self.expire_timers(cpu, &mut local, now);
        Self::charge_current(&mut local, now);
        if let Some(interval) = self.balance_interval_nanos
            && self.cpus.len() > 1
            && now.saturating_sub(local.last_balance) >= interval
        {
            local.last_balance = now;
            self.balance(cpu, &mut local);
        }

        let previous_runnable = local
            .current
            .as_ref()
            .is_some_and(|current| current.inner.state.load(Ordering::Relaxed) == state::RUNNING);
        let switch = match (&local.current, local.run_queue.peek()) {
            // Nothing else to run: keep running the current thread (or stay idle).
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(_), Some(_)) if !previous_runnable => true,
            (Some(current), Some(candidate)) => match entry {
                Entry::Yield => true,
                Entry::Block | Entry::Idle => false,
                Entry::Preempt => {
                    // SAFETY: both threads are owned by this CPU and are distinct (one
                    // is current, the other queued); only shared references are made.
                    let (running, candidate) =
                        unsafe { (&*accounting(&current.inner), &*accounting(candidate)) };
                    local.policy.should_preempt(running, candidate, now)
                }
            },
        };
        if !switch {
            let runs_thread = local.current.is_some() && previous_runnable;
            if local.current.is_some() && !previous_runnable {
                // Blocked with nothing else runnable: switch to the idle loop.
                return self.switch_to(local, None, now, false);
            }
            self.arm_timer(cpu, &mut local, now, runs_thread);
            self.publish_load(cpu, &local);
            return;
        }
        let next = local.run_queue.pop().map(|inner| Thread { inner });
        self.switch_to(local, next, now, previous_runnable);
    }

    /// Switches from the current context to `next` (`None`: the idle loop), requeueing
    /// the current thread if it is still runnable. Returns when the calling context is
    /// resumed (possibly on another CPU).
    fn switch_to(
        &self,
        mut local: LocalRef<'_, P>,
        next: Option<Thread>,
        now: u64,
        previous_runnable: bool,
    ) {
        let previous = local.current.take();
        let save_into: *mut usize = match &previous {
            Some(thread) => thread.inner.context.get(),
            None => &raw mut local.idle_context,
        };
        if let Some(thread) = &previous {
            // SAFETY: the current thread is owned by this CPU; no other reference to
            // its accounting is alive.
            let accounting = unsafe { &mut *accounting(&thread.inner) };
            local.policy.switch_out(accounting);
        }
        let resume_from = match &next {
            Some(thread) => {
                thread.inner.state.store(state::RUNNING, Ordering::Relaxed);
                // SAFETY: the thread was just taken from this CPU's run queue; no
                // other reference to its accounting is alive.
                let accounting = unsafe { &mut *accounting(&thread.inner) };
                local.policy.switch_in(accounting, now, previous_runnable);
                if thread.inner.thread_pointer != 0
                    && thread.inner.thread_pointer != local.thread_pointer
                {
                    local.thread_pointer = thread.inner.thread_pointer;
                    // SAFETY: the thread's own thread pointer, given at spawn for it.
                    unsafe { self.arch.set_thread_pointer(local.thread_pointer) };
                }
                // SAFETY: only this CPU touches the saved context of its threads.
                unsafe { *thread.inner.context.get() }
            }
            None => local.idle_context,
        };
        if let Some(thread) = previous {
            if previous_runnable {
                Self::make_runnable(&mut local, thread);
            } else if thread.inner.state.load(Ordering::Relaxed) == state::TERMINATED {
                // Released by the next context, once nothing runs on its stack.
                local.switched_out = Some(thread);
            } else {
                // Blocked: its handle waits for its wake-up (see `ThreadInner::spare`).
                // A waker may have claimed it already; its delivery then drops this.
                Self::put_spare(&mut local, thread);
            }
        }
        local.current = next;
        let cpu = local.cpu;
        let running = local.current.as_ref().map(|thread| thread.inner.id);
        self.cpus[cpu.index()]
            .running
            .store(running.map_or(0, ThreadId::get), Ordering::Relaxed);
        self.arch.set_running_thread(cpu, running);
        local.running_since = now;
        let runs_thread = local.current.is_some();
        self.arm_timer(cpu, &mut local, now, runs_thread);
        self.publish_load(cpu, &local);
        // This CPU's state is released before the switch: the resumed context
        // borrows it anew.
        drop(local);
        // SAFETY: relies on (1) `save_into` pointing at the saved-context slot of the
        // current context (the previous thread's record, kept alive by the run queue
        // or `switched_out`, or this CPU's idle slot); (2) `resume_from` being the
        // stack pointer saved by the last switch away from `next` (or prepared at
        // spawn), on a stack its record keeps alive, not resumed since: only the home
        // CPU resumes a thread, once per enqueue.
        unsafe { switch_context(save_into, resume_from, self as *const Self as usize) };
        self.after_switch();
    }

    /// Runs in the resumed context right after a switch: releases the thread switched
    /// away from.
    fn after_switch(&self) {
        let switched_out = {
            // Masked already (by the switcher); the guard proves it to `local`.
            let interrupts = self.arch.mask_interrupts();
            self.local(&interrupts).switched_out.take()
        };
        // Dropped without the CPU state borrowed: it may free a stack and a closure.
        drop(switched_out);
    }

    fn charge_current(local: &mut CpuLocal<P>, now: u64) {
        let ran = now.saturating_sub(local.running_since);
        local.running_since = now;
        let CpuLocal {
            policy,
            run_queue,
            current,
            ..
        } = local;
        let Some(current) = current else {
            return;
        };
        // SAFETY: the current thread is owned by this CPU; no other reference to its
        // accounting is alive.
        let accounting_of_current = unsafe { &mut *accounting(&current.inner) };
        if policy.charge(accounting_of_current, ran) {
            run_queue.rekey_all(|thread| {
                // SAFETY: queued threads are owned by this CPU and distinct from the
                // current one; one reference at a time.
                let queued = unsafe { &mut *accounting(thread) };
                policy.renormalize(queued);
                queued.key
            });
        }
    }

    fn expire_timers(&self, cpu: CpuId, local: &mut CpuLocal<P>, now: u64) {
        while let Some((timer, sleeper)) = local.timers.pop_expired(now) {
            if sleeper.sleep_generation.load(Ordering::Relaxed) != timer.generation {
                continue;
            }
            // The condition first, then the claim (as every waker): a sleeper not
            // waiting right now sees the flag at its re-check.
            sleeper
                .sleep_fired
                .fetch_max(timer.generation + 1, Ordering::SeqCst);
            if Self::claim_waiting(&sleeper) {
                self.deliver_from(cpu, local, Thread { inner: sleeper });
            }
        }
    }

    /// Arms the one-shot timer for the earliest of the next sleep timer and (when a
    /// thread runs with others waiting) the current thread's preemption point;
    /// disarms it when there is neither (tickless).
    fn arm_timer(&self, cpu: CpuId, local: &mut CpuLocal<P>, now: u64, runs_thread: bool) {
        let mut deadline = local.timers.next_deadline();
        if runs_thread && let (Some(current), Some(next)) = (&local.current, local.run_queue.peek())
        {
            // SAFETY: distinct threads owned by this CPU; shared references only.
            let (running, next) = unsafe { (&*accounting(&current.inner), &*accounting(next)) };
            if let Some(slice) = local.policy.time_slice(running, next, now) {
                let preempt_at = now.saturating_add(slice);
                deadline = Some(deadline.map_or(preempt_at, |timer| timer.min(preempt_at)));
            }
        }
        if deadline != local.armed_deadline {
            local.armed_deadline = deadline;
            match deadline {
                Some(deadline) => self.arch.arm_timer(cpu, Instant::from_nanos(deadline)),
                None => self.arch.cancel_timer(cpu),
            }
        }
    }

    /// Pushes one runnable, unpinned thread to the least loaded CPU if this one has at
    /// least two more runnable threads (OSv's balancer moves one thread at a time
    /// too). The thread travels through the target's wake-up queue, so run queues
    /// stay private to their CPU.
    fn balance(&self, cpu: CpuId, local: &mut CpuLocal<P>) {
        let my_load = local.run_queue.len() + usize::from(local.current.is_some());
        let Some((target, target_load)) = self
            .cpus
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != cpu.index())
            .map(|(index, other)| (index, other.load.load(Ordering::Relaxed)))
            .min_by_key(|(_, load)| *load)
        else {
            return;
        };
        if my_load < target_load + 2 {
            return;
        }
        // The thread that would run last here.
        let Some(inner) = local.run_queue.take_last_where(|thread| !thread.pinned) else {
            return;
        };
        let thread = Thread { inner };
        // SAFETY: the thread was queued on this CPU; no other reference to its
        // accounting is alive.
        local
            .policy
            .export(unsafe { &mut *accounting(&thread.inner) });
        thread.inner.state.store(state::WAKING, Ordering::Relaxed);
        thread.inner.home_cpu.store(target, Ordering::Release);
        // Count it at once so that other CPUs' balancers see it.
        self.cpus[target].load.fetch_add(1, Ordering::Relaxed);
        self.publish_load(cpu, local);
        self.push_remote(Some(cpu), CpuId::new(target), thread);
    }

    /// Ends the current thread: marks it terminated, wakes its joiner, switches away.
    fn exit_current(&self) -> ! {
        let interrupts = self.arch.mask_interrupts();
        self.with_current(|me| {
            me.state.store(state::TERMINATED, Ordering::SeqCst);
            let joiner = me.joiner.lock().take();
            if let Some(joiner) = joiner {
                self.wake(&joiner);
            }
        });
        self.schedule(self.local(&interrupts), Entry::Block);
        // The guard's state dies with this thread.
        core::mem::forget(interrupts);
        unreachable!("a terminated thread was resumed");
    }

    /// The body of every thread, entered through the trampoline.
    fn run_new_thread(&self) -> ! {
        self.after_switch();
        self.arch.enable_interrupts();
        let entry = self.with_current(|me| {
            // SAFETY: `entry` is only touched by the thread itself, here, once (and by
            // the record's drop, which cannot run while the thread runs).
            unsafe { (*me.entry.get()).take() }
        });
        if let Some(entry) = entry {
            entry();
        }
        self.exit_current()
    }
}

/// Entry function of new threads (see [`context`]): `scheduler` is the address of
/// the scheduler that switched to the thread for the first time.
extern "sysv64" fn thread_start<A: Arch, P: Policy>(scheduler: usize) -> ! {
    let scheduler = scheduler as *const Scheduler<A, P>;
    // SAFETY: relies on (1) `switch_to` passing `self` as the switch argument, so this
    // is the scheduler whose CPU is running us; (2) that scheduler being borrowed by
    // the `run_cpu` call of this CPU, underneath every context it runs, for as long as
    // this thread runs. (Threads only run inside `run_cpu`.)
    let scheduler = unsafe { &*scheduler };
    scheduler.run_new_thread()
}

impl<A: Arch + fmt::Debug, P: Policy> fmt::Debug for Scheduler<A, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("arch", &self.arch)
            .field("cpus", &self.cpus.len())
            .field("config", &self.config)
            .field("loads", &self.loads())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Priority;
    use core::ptr::NonNull;
    use std::vec::Vec;

    /// A stack that is never run on (run-queue tests only look at records).
    struct NoStack;

    impl StackMemory for NoStack {
        fn top(&self) -> NonNull<u8> {
            NonNull::dangling()
        }
        fn size(&self) -> usize {
            0
        }
    }

    fn thread(id: u64) -> Arc<ThreadInner> {
        Arc::new(ThreadInner {
            id: ThreadId::from_u64(id).expect("test ids start at 1"),
            state: AtomicU32::new(state::QUEUED),
            token: AtomicBool::new(false),
            home_cpu: AtomicUsize::new(0),
            pinned: id.is_multiple_of(3),
            sleep_generation: AtomicU64::new(0),
            sleep_fired: AtomicU64::new(0),
            context: UnsafeCell::new(0),
            accounting: UnsafeCell::new(Accounting::new(Priority::DEFAULT)),
            entry: UnsafeCell::new(None),
            spare: UnsafeCell::new(None),
            joiner: SpinLock::new(None),
            wake_link: WakeLink::new(),
            run_link: RBTreeLink::new(),
            fifo_link: LinkedListLink::new(),
            run_key: Cell::new(RunKey::default()),
            timer_link: RBTreeLink::new(),
            timer_key: Cell::new(TimerKey::default()),
            thread_pointer: 0,
            _stack: Box::new(NoStack),
        })
    }

    fn key(key: f64, sequence: u64) -> RunKey {
        RunKey { key, sequence }
    }

    /// Pops everything, returning thread ids in run order.
    fn drain(queue: &mut RunQueue) -> Vec<u64> {
        let ids: Vec<u64> =
            core::iter::from_fn(|| queue.pop().map(|thread| thread.id.get())).collect();
        assert_eq!(queue.len(), 0);
        ids
    }

    #[test]
    fn run_queue_pops_smallest_key_first_then_enqueue_order() {
        let mut queue = RunQueue::new(false);
        let inserts: [(f64, u64); 8] = [
            (5.0, 1),
            (3.0, 2),
            (9.0, 3),
            (3.0, 4),
            (1.0, 5),
            (7.0, 6),
            (3.0, 7),
            (0.5, 8),
        ];
        for (value, sequence) in inserts {
            queue.insert(key(value, sequence), thread(sequence));
            assert_eq!(queue.len(), sequence as usize);
        }
        assert_eq!(queue.peek().map(|thread| thread.id), ThreadId::from_u64(8));
        assert_eq!(drain(&mut queue), [8, 5, 2, 4, 7, 1, 6, 3]);
        assert!(queue.peek().is_none());
    }

    #[test]
    fn run_queue_matches_a_sorted_reference() {
        // Pseudo-random keys with many ties, against a stable sort.
        let mut queue = RunQueue::new(false);
        let mut reference = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for sequence in 1..=500_u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let value = (seed % 16) as f64;
            queue.insert(key(value, sequence), thread(sequence));
            reference.push((value, sequence));
            // Interleave pops, as the scheduler does.
            if seed.is_multiple_of(5) {
                reference.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let expected = reference.remove(0).1;
                assert_eq!(queue.pop().map(|thread| thread.id.get()), Some(expected));
            }
            assert_eq!(queue.len(), reference.len());
        }
        reference.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let expected: Vec<u64> = reference.iter().map(|entry| entry.1).collect();
        assert_eq!(drain(&mut queue), expected);
    }

    #[test]
    fn fifo_run_queue_is_first_in_first_out() {
        let mut queue = RunQueue::new(true);
        for sequence in 1..=6 {
            queue.insert(key(sequence as f64, sequence), thread(sequence));
        }
        assert_eq!(queue.pop().map(|thread| thread.id.get()), Some(1));
        queue.insert(key(7.0, 7), thread(7));
        assert_eq!(queue.peek().map(|thread| thread.id.get()), Some(2));
        assert_eq!(drain(&mut queue), [2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn take_last_where_skips_ineligible_threads() {
        // `thread(id)` is pinned when `id` is a multiple of 3.
        for fifo in [false, true] {
            let mut queue = RunQueue::new(fifo);
            for sequence in 1..=6 {
                queue.insert(key(sequence as f64, sequence), thread(sequence));
            }
            let taken = queue.take_last_where(|thread| !thread.pinned);
            assert_eq!(taken.map(|thread| thread.id.get()), Some(5));
            assert_eq!(queue.len(), 5);
            assert_eq!(drain(&mut queue), [1, 2, 3, 4, 6]);
            assert!(queue.take_last_where(|_| true).is_none());
        }
    }

    #[test]
    fn rekey_all_reorders() {
        let mut queue = RunQueue::new(false);
        for sequence in 1..=5 {
            queue.insert(key(sequence as f64, sequence), thread(sequence));
        }
        // Reverse the order: the tree must be rebuilt, not patched in place.
        queue.rekey_all(|thread| -(thread.id.get() as f64));
        assert_eq!(queue.len(), 5);
        assert_eq!(drain(&mut queue), [5, 4, 3, 2, 1]);
    }

    #[test]
    fn timer_queue_fires_in_deadline_then_sequence_order() {
        let mut timers = TimerQueue::new();
        let entries = [(30, 1), (10, 2), (20, 3), (10, 4)];
        for (deadline, sequence) in entries {
            let timer = TimerKey {
                deadline,
                sequence,
                generation: sequence * 100,
            };
            timers.insert(timer, thread(sequence));
        }
        assert_eq!(timers.next_deadline(), Some(10));
        assert!(timers.pop_expired(9).is_none());
        let mut fired = Vec::new();
        while let Some((timer, thread)) = timers.pop_expired(25) {
            assert_eq!(timer.generation, thread.id.get() * 100);
            fired.push(thread.id.get());
        }
        assert_eq!(fired, [2, 4, 3]);
        assert_eq!(timers.next_deadline(), Some(30));
        assert_eq!(
            timers
                .pop_expired(u64::MAX)
                .map(|(_, thread)| thread.id.get()),
            Some(1)
        );
        assert_eq!(timers.next_deadline(), None);
    }
}
