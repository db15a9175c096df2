//! Scheduling policies: OSv's fair policy (the default) and round-robin / FIFO.
//!
//! A policy owns one CPU's scheduling state (one instance per CPU) and each thread's
//! [`Accounting`]; the scheduler keeps the run queue ordered by [`Accounting::key`]
//! (smallest first, ties in enqueue order) and asks the policy when to preempt.

use crate::Priority;

/// Per-thread scheduling state. Touched only by the CPU that owns the thread (the one
/// whose run queue holds it or that runs it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accounting {
    /// The run-queue ordering key: the runnable thread with the smallest key runs.
    /// Fair: the CPU-local normalised runtime; FIFO: an enqueue sequence number.
    pub key: f64,
    /// Scales the runtime charged to the thread (1 is the default; larger runs less).
    pub priority: Priority,
    /// Fair: the hysteresis credit subtracted from `key` while the thread runs.
    pub borrowed: f64,
    /// Fair: the CPU's renormalisation epoch `key` is expressed in.
    pub epoch: u64,
    /// Fair: `key` was exported to a CPU-independent value (the thread is migrating).
    pub exported: bool,
    /// When the thread was last switched in (nanoseconds).
    pub slice_start: u64,
}

impl Accounting {
    /// Fresh accounting for a new thread.
    pub fn new(priority: Priority) -> Self {
        Self {
            key: 0.0,
            priority,
            borrowed: 0.0,
            epoch: 0,
            exported: false,
            slice_start: 0,
        }
    }
}

/// One CPU's scheduling policy. All methods run on that CPU with interrupts masked.
pub trait Policy: Send + 'static {
    /// Whether [`enqueue`](Policy::enqueue) always gives a key at least as large as
    /// every queued thread's (the key is the enqueue sequence): the run queue is then
    /// a FIFO list (O(1) insert and pop) instead of a tree ordered by key.
    const FIFO_ORDER: bool = false;

    /// `thread` becomes runnable on this CPU (new, woken, migrated in, preempted or
    /// yielding); `sequence` increases with every enqueue on this CPU. Sets its key.
    fn enqueue(&mut self, thread: &mut Accounting, sequence: u64);

    /// Charges `ran_nanos` of CPU time to the running `thread`. Returns `true` if the
    /// policy renormalised its scale: the scheduler then calls
    /// [`renormalize`](Policy::renormalize) on every other queued thread.
    fn charge(&mut self, thread: &mut Accounting, ran_nanos: u64) -> bool;

    /// Brings a queued or running thread's key to the new scale after a renormalisation.
    fn renormalize(&mut self, thread: &mut Accounting);

    /// `thread` starts running at `now`; `previous_preempted` tells whether the thread
    /// it replaces was still runnable (so this switch is an extra cost).
    fn switch_in(&mut self, thread: &mut Accounting, now: u64, previous_preempted: bool);

    /// `thread` stops running (it blocks, is preempted or yields).
    fn switch_out(&mut self, thread: &mut Accounting);

    /// `thread` leaves this CPU (migration): make its key CPU-independent.
    fn export(&mut self, thread: &mut Accounting);

    /// Whether the queued `candidate` should replace the running `running` now.
    fn should_preempt(&self, running: &Accounting, candidate: &Accounting, now: u64) -> bool;

    /// Nanoseconds from `now` until `running` should give way to the queued `next`;
    /// `None` for never. The scheduler arms the one-shot timer for it.
    fn time_slice(&self, running: &Accounting, next: &Accounting, now: u64) -> Option<u64>;
}

/// Parameters of [`FairPolicy`]; [`Default`] gives OSv's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FairParams {
    /// Time constant of the exponential decay of runtimes, in nanoseconds. OSv:
    /// `tau = 200_ms` (`core/sched.cc`, cloudius-systems/osv).
    pub tau_nanos: f64,
    /// Hysteresis: runtime credit a thread borrows while it runs, so that another
    /// thread preempts it (or a waking thread preempts) only with an advantage of more
    /// than this. Two CPU-bound equal threads then alternate every `2 * thyst`. OSv:
    /// `thyst = 2_ms`.
    pub hysteresis_nanos: f64,
    /// Runtime charged to a thread switched in in place of a still-runnable thread.
    /// OSv: `context_switch_penalty = 10_us`.
    pub context_switch_penalty_nanos: f64,
}

impl Default for FairParams {
    fn default() -> Self {
        Self {
            tau_nanos: 200e6,
            hysteresis_nanos: 2e6,
            context_switch_penalty_nanos: 10e3,
        }
    }
}

/// OSv's fair policy: the runnable thread with the smallest exponentially decayed
/// runtime runs.
///
/// A thread's decayed runtime is `R(t) = Σ priority · run · e^-(t - t_run)/tau`.
/// Like OSv, the policy avoids decaying every queued thread by keeping a CPU-wide
/// normalisation factor `c = e^(busy time / tau)` and, per thread, `key = R · c`
/// (the "local runtime"): running for `d` multiplies `c` by `e^(d/tau)` and adds
/// `priority · (c_new - c_old)` to the running thread's key. Keys of threads that do
/// not run stay fixed, so the order of the run queue never changes while they wait,
/// and a thread that slept long enough has a small key relative to `c`. When `c`
/// exceeds 2^512 everything is scaled down by 2^-512 (an epoch); sleeping threads
/// catch up when they wake (one epoch behind: scaled; more: reset to 0). A migrating
/// thread's key is divided by the source's `c` and multiplied by the target's.
#[derive(Debug, Clone)]
pub struct FairPolicy {
    params: FairParams,
    /// `e^(thyst/tau) - 1`, precomputed (the hysteresis credit per unit of `p·c`).
    hysteresis_factor: f64,
    /// `e^(penalty/tau) - 1`, precomputed.
    penalty_factor: f64,
    /// `1 / tau`, precomputed: `charge` runs at every switch, and a multiply has a
    /// fraction of a division's latency on its critical path.
    inverse_tau: f64,
    /// The normalisation factor `c` (starts at 1).
    scale: f64,
    /// Renormalisation count of this CPU.
    epoch: u64,
}

/// Above this `c`, renormalise.
const RENORMALIZE_ABOVE: f64 = 1.3407807929942597e154; // 2^512
/// The factor applied at a renormalisation.
const RENORMALIZE_FACTOR: f64 = 7.458340731200207e-155; // 2^-512

/// Below this `x`, `1 + x + x²/2` is `e^x` to within half an ulp: the rest of the
/// series is below `x³/6 · e^x < 1.0e-17`, under half the spacing of doubles near 1
/// (`2^-53 ≈ 1.1e-16`). 2^-18 of tau = 200 ms is 763 ns, longer than most runs
/// between two switches of a thread that blocks often.
const SMALL_EXPONENT: f64 = 3.814697265625e-6; // 2^-18

/// `e^x` for the decay factor of a run of `x` time constants: `libm::exp`, except for
/// short runs (every switch charges one), where the second-order series is already
/// exact to rounding and costs a multiply-add instead of `exp`'s ~30 ns here (the
/// largest item of the switch's profile, papers/0010-switch.md).
fn growth(x: f64) -> f64 {
    if (0.0..SMALL_EXPONENT).contains(&x) {
        1.0 + x * (1.0 + 0.5 * x)
    } else {
        libm::exp(x)
    }
}

/// Below this `y`, [`slice_exponent`] uses three terms of the series.
const SMALL_GAP: f64 = 1.0 / 32.0;

/// `ln(1 + y)`: the time-slice length in units of tau for a key gap of `y` units.
/// `libm::log1p`, except for small gaps (two threads alternating are about the
/// hysteresis apart, `y ≈ 0.01`), where `y - y²/2 + y³/3` is within `y³/4 < 8e-6`
/// relative of it: far below the 1% overshoot the slice is given anyway, and a few
/// multiplies instead of `log1p`'s ~30 ns on every switch with others waiting.
fn slice_exponent(y: f64) -> f64 {
    if (0.0..SMALL_GAP).contains(&y) {
        y * (1.0 - y * (0.5 - y * (1.0 / 3.0)))
    } else {
        libm::log1p(y)
    }
}

impl FairPolicy {
    /// A fair policy with the given parameters.
    pub fn new(params: FairParams) -> Self {
        Self {
            params,
            hysteresis_factor: libm::expm1(params.hysteresis_nanos / params.tau_nanos),
            penalty_factor: libm::expm1(params.context_switch_penalty_nanos / params.tau_nanos),
            inverse_tau: 1.0 / params.tau_nanos,
            scale: 1.0,
            epoch: 0,
        }
    }

    /// The key increase that running for the duration behind `factor` (`e^(d/tau) - 1`)
    /// would cause to `thread` now.
    fn runtime_increment(&self, thread: &Accounting, factor: f64) -> f64 {
        thread.priority.get() * self.scale * factor
    }

    /// A thread's decayed runtime in nanosecond-like units (for tests and debugging).
    pub fn decayed_runtime(&self, thread: &Accounting) -> f64 {
        thread.key / self.scale
    }
}

impl Default for FairPolicy {
    fn default() -> Self {
        Self::new(FairParams::default())
    }
}

impl Policy for FairPolicy {
    fn enqueue(&mut self, thread: &mut Accounting, _sequence: u64) {
        if thread.exported {
            thread.key *= self.scale;
            thread.exported = false;
            thread.epoch = self.epoch;
        } else if thread.epoch != self.epoch {
            if thread.epoch + 1 == self.epoch {
                thread.key *= RENORMALIZE_FACTOR;
            } else {
                thread.key = 0.0;
            }
            thread.epoch = self.epoch;
        }
    }

    fn charge(&mut self, thread: &mut Accounting, ran_nanos: u64) -> bool {
        let old = self.scale;
        // `ran_nanos` fits an i64 (292 years): a one-instruction conversion.
        let ran = i64::try_from(ran_nanos).unwrap_or(i64::MAX) as f64;
        let new = old * growth(ran * self.inverse_tau);
        if !new.is_finite() {
            // A clock jump; ignore the interval (as OSv does).
            return false;
        }
        self.scale = new;
        thread.key += thread.priority.get() * (new - old);
        if self.scale > RENORMALIZE_ABOVE {
            self.scale *= RENORMALIZE_FACTOR;
            self.epoch += 1;
            self.renormalize(thread);
            return true;
        }
        false
    }

    fn renormalize(&mut self, thread: &mut Accounting) {
        if thread.epoch + 1 == self.epoch {
            thread.key *= RENORMALIZE_FACTOR;
            thread.borrowed *= RENORMALIZE_FACTOR;
            thread.epoch = self.epoch;
        }
    }

    fn switch_in(&mut self, thread: &mut Accounting, now: u64, previous_preempted: bool) {
        if previous_preempted {
            thread.key += self.runtime_increment(thread, self.penalty_factor);
        }
        thread.borrowed = self.runtime_increment(thread, self.hysteresis_factor);
        thread.key -= thread.borrowed;
        thread.slice_start = now;
    }

    fn switch_out(&mut self, thread: &mut Accounting) {
        thread.key += thread.borrowed;
        thread.borrowed = 0.0;
    }

    fn export(&mut self, thread: &mut Accounting) {
        thread.key /= self.scale;
        thread.exported = true;
    }

    fn should_preempt(&self, running: &Accounting, candidate: &Accounting, _now: u64) -> bool {
        // `running.key` already has the hysteresis credit subtracted.
        candidate.key < running.key
    }

    fn time_slice(&self, running: &Accounting, next: &Accounting, _now: u64) -> Option<u64> {
        // Solve key + p·c·(e^(t/tau) - 1) = next.key for t.
        let gap = next.key - running.key;
        if gap <= 0.0 {
            return Some(0);
        }
        let per_unit = running.priority.get() * self.scale;
        let nanos = self.params.tau_nanos * slice_exponent(gap / per_unit);
        // Overshoot by 1% like OSv: running a little long is paid back in runtime.
        Some((nanos * 1.01) as u64)
    }
}

/// Round-robin: threads run in enqueue order, each for at most `quantum_nanos` while
/// others wait; with an infinite quantum ([`RoundRobinPolicy::fifo`]) it is FIFO
/// (a thread runs until it blocks or yields). Priorities are ignored. For experiments
/// against the fair policy.
#[derive(Debug, Clone)]
pub struct RoundRobinPolicy {
    /// Time slice in nanoseconds; `u64::MAX` means none.
    quantum_nanos: u64,
}

impl RoundRobinPolicy {
    /// Round-robin with the given time slice.
    pub fn new(quantum_nanos: u64) -> Self {
        Self { quantum_nanos }
    }

    /// FIFO: no time slice.
    pub fn fifo() -> Self {
        Self::new(u64::MAX)
    }
}

impl Default for RoundRobinPolicy {
    /// A 10 ms quantum.
    fn default() -> Self {
        Self::new(10_000_000)
    }
}

impl Policy for RoundRobinPolicy {
    const FIFO_ORDER: bool = true;

    fn enqueue(&mut self, thread: &mut Accounting, sequence: u64) {
        // Exact in an f64 up to 2^53 enqueues.
        thread.key = sequence as f64;
    }

    fn charge(&mut self, _thread: &mut Accounting, _ran_nanos: u64) -> bool {
        false
    }

    fn renormalize(&mut self, _thread: &mut Accounting) {}

    fn switch_in(&mut self, thread: &mut Accounting, now: u64, _previous_preempted: bool) {
        thread.slice_start = now;
    }

    fn switch_out(&mut self, _thread: &mut Accounting) {}

    fn export(&mut self, _thread: &mut Accounting) {}

    fn should_preempt(&self, running: &Accounting, _candidate: &Accounting, now: u64) -> bool {
        now.saturating_sub(running.slice_start) >= self.quantum_nanos
    }

    fn time_slice(&self, running: &Accounting, _next: &Accounting, now: u64) -> Option<u64> {
        if self.quantum_nanos == u64::MAX {
            return None;
        }
        let used = now.saturating_sub(running.slice_start);
        Some(self.quantum_nanos.saturating_sub(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn thread(priority: f64) -> Accounting {
        Accounting::new(Priority::new(priority).unwrap())
    }

    #[test]
    fn fair_charges_runtime_scaled_by_priority() {
        let mut policy = FairPolicy::default();
        let mut normal = thread(1.0);
        let mut background = thread(2.0);
        policy.enqueue(&mut normal, 0);
        policy.enqueue(&mut background, 1);
        policy.charge(&mut normal, 10 * MS);
        policy.charge(&mut background, 10 * MS);
        let ratio = policy.decayed_runtime(&background) / policy.decayed_runtime(&normal);
        // Same run time, charged twice; background ran later so decayed less.
        assert!(ratio > 2.0 && ratio < 2.2, "ratio {ratio}");
    }

    #[test]
    fn fair_runtime_decays_with_tau() {
        let mut policy = FairPolicy::default();
        let mut sleeper = thread(1.0);
        let mut runner = thread(1.0);
        policy.charge(&mut sleeper, 10 * MS);
        let before = policy.decayed_runtime(&sleeper);
        // Another thread runs for one tau: the sleeper's runtime decays by e.
        policy.charge(&mut runner, 200 * MS);
        let after = policy.decayed_runtime(&sleeper);
        let decay = before / after;
        assert!((decay - core::f64::consts::E).abs() < 1e-6, "decay {decay}");
    }

    #[test]
    fn growth_matches_libm_exp() {
        let mut x = 1e-12;
        while x < 1.0 {
            let (fast, exact) = (growth(x), libm::exp(x));
            assert!(
                (fast - exact).abs() <= f64::EPSILON * exact,
                "e^{x}: {fast} vs {exact}"
            );
            x *= 1.1;
        }
        assert_eq!(growth(0.0), 1.0);
        assert_eq!(growth(2.0), libm::exp(2.0));
    }

    #[test]
    fn slice_exponent_matches_libm_log1p() {
        let mut y = 1e-12;
        while y < 100.0 {
            let (fast, exact) = (slice_exponent(y), libm::log1p(y));
            assert!(
                (fast - exact).abs() <= 1e-5 * exact,
                "ln(1 + {y}): {fast} vs {exact}"
            );
            y *= 1.1;
        }
        assert_eq!(slice_exponent(0.0), 0.0);
    }

    #[test]
    fn fair_hysteresis_blocks_small_advantages() {
        let mut policy = FairPolicy::default();
        let mut running = thread(1.0);
        let mut waking = thread(1.0);
        // The waking thread ran 1 ms less than the running one: within thyst (2 ms).
        policy.charge(&mut waking, 4 * MS);
        policy.charge(&mut running, 5 * MS);
        policy.switch_in(&mut running, 0, false);
        assert!(!policy.should_preempt(&running, &waking, 0));
        // After 3 ms more the advantage exceeds the hysteresis.
        policy.charge(&mut running, 3 * MS);
        assert!(policy.should_preempt(&running, &waking, 0));
        // Switching out returns the credit exactly.
        let key = running.key;
        let borrowed = running.borrowed;
        policy.switch_out(&mut running);
        assert_eq!(running.key, key + borrowed);
    }

    #[test]
    fn fair_time_slice_reaches_the_next_key() {
        let mut policy = FairPolicy::default();
        let mut running = thread(1.0);
        let mut next = thread(1.0);
        policy.charge(&mut next, 6 * MS);
        policy.switch_in(&mut running, 0, false);
        let slice = policy.time_slice(&running, &next, 0).unwrap();
        // About 6 ms to catch up (a little less: `next` ran at a smaller scale, so its
        // runtime has decayed) plus the 2 ms hysteresis credit, plus 1% overshoot.
        assert!(
            slice > 7 * MS + MS / 2 && slice < 8 * MS + MS / 5,
            "slice {slice}"
        );
        policy.charge(&mut running, slice);
        assert!(policy.should_preempt(&running, &next, 0));
    }

    #[test]
    fn fair_renormalizes_and_keeps_order() {
        let mut policy = FairPolicy::default();
        let mut light = thread(1.0);
        let mut heavy = thread(1.0);
        let mut sleeper = thread(1.0);
        policy.charge(&mut sleeper, MS);
        policy.charge(&mut light, MS);
        policy.charge(&mut heavy, 3 * MS);
        // ~2^512 = e^355: about 71 s of CPU time at tau = 200 ms.
        let mut renormalized = false;
        for _ in 0..80 {
            if policy.charge(&mut heavy, 1_000 * MS) {
                policy.renormalize(&mut light);
                renormalized = true;
            }
        }
        assert!(renormalized && policy.epoch == 1);
        assert!(light.key < heavy.key && light.key.is_finite() && heavy.key.is_finite());
        // The sleeper is one epoch behind: it is scaled when it wakes.
        policy.enqueue(&mut sleeper, 0);
        assert_eq!(sleeper.epoch, 1);
        assert!(sleeper.key <= light.key);
    }

    #[test]
    fn fair_export_import_preserves_decayed_runtime() {
        let mut source = FairPolicy::default();
        let mut target = FairPolicy::default();
        let mut migrant = thread(1.0);
        let mut other = thread(1.0);
        target.charge(&mut other, 300 * MS);
        source.charge(&mut migrant, 50 * MS);
        let runtime = source.decayed_runtime(&migrant);
        source.export(&mut migrant);
        target.enqueue(&mut migrant, 0);
        assert!((target.decayed_runtime(&migrant) - runtime).abs() < 1e-9 * runtime);
    }

    #[test]
    fn round_robin_orders_by_enqueue_and_slices() {
        let mut policy = RoundRobinPolicy::new(5 * MS);
        let mut first = thread(1.0);
        let mut second = thread(1.0);
        policy.enqueue(&mut first, 7);
        policy.enqueue(&mut second, 8);
        assert!(first.key < second.key);
        policy.switch_in(&mut first, 100 * MS, false);
        assert!(!policy.should_preempt(&first, &second, 104 * MS));
        assert!(policy.should_preempt(&first, &second, 105 * MS));
        assert_eq!(policy.time_slice(&first, &second, 101 * MS), Some(4 * MS));
        assert_eq!(
            RoundRobinPolicy::fifo().time_slice(&first, &second, 0),
            None
        );
    }
}
