//! Per-CPU data, found through the GS base: each CPU's `IA32_GS_BASE` points at its
//! [`PerCpu`] record, whose first word is the CPU's index, so `mov rax, gs:[0]` names the
//! current CPU in one instruction, without a lock or an APIC read.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use x86_64::registers::model_specific::Msr;

/// CPUs supported.
pub const MAX_CPUS: usize = crate::platform::MAX_CPUS;

const IA32_GS_BASE: u32 = 0xc000_0101;
const IA32_FS_BASE: u32 = 0xc000_0100;

/// One CPU's record. `index` must stay the first field (read as `gs:[0]`).
#[repr(C)]
#[derive(Debug)]
pub struct PerCpu {
    /// The CPU's index, `0..cpu_count` (written before GS base points here).
    pub index: AtomicUsize,
    /// The CPU's local APIC id.
    pub apic_id: AtomicU32,
    /// Set by [`mark_online`] once the CPU runs kernel code with its own tables.
    pub online: AtomicBool,
    /// Set by the wake-up IPI, consumed by the idle wait (see `kernel-bin`).
    pub wakeup_pending: AtomicBool,
    /// Whether the scheduler runs on this CPU (its `current_cpu` answers `Some`).
    pub scheduling: AtomicBool,
    /// The id of the thread running on this CPU (0: none, the idle loop), written
    /// by this CPU's scheduler at every switch; [`current_thread_id`] reads it in
    /// one instruction.
    pub current_thread: AtomicU64,
}

static PER_CPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        index: AtomicUsize::new(0),
        apic_id: AtomicU32::new(0),
        online: AtomicBool::new(false),
        wakeup_pending: AtomicBool::new(false),
        scheduling: AtomicBool::new(false),
        current_thread: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// The thread control block that FS points at on every CPU, in glibc's x86-64
/// layout (`tcbhead_t`): code compiled by gcc for Linux reads its stack-protector
/// canary at `%fs:0x28` and its pointer guard at `%fs:0x30`, and finds the block
/// itself at `%fs:0`. Keel's own code never uses FS. One block serves every thread
/// (FS is not switched with threads yet), so the canary is one per boot, which is all
/// a canary needs; thread-local variables (`__thread`) need per-thread blocks, which
/// the ELF linker's static TLS will bring.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ThreadControlBlock {
    /// `tcb`: the block's own address.
    pub tcb: AtomicU64,
    /// `dtv`: none.
    pub dtv: AtomicU64,
    /// `self`: the block's own address again.
    pub self_pointer: AtomicU64,
    /// `multiple_threads`, `gscope_flag`, `sysinfo`.
    reserved: [AtomicU64; 2],
    /// `stack_guard`, at 0x28.
    pub stack_guard: AtomicU64,
    /// `pointer_guard`, at 0x30.
    pub pointer_guard: AtomicU64,
}

const _: () = assert!(core::mem::offset_of!(ThreadControlBlock, stack_guard) == 0x28);
const _: () = assert!(core::mem::offset_of!(ThreadControlBlock, pointer_guard) == 0x30);

/// The one block (see [`ThreadControlBlock`]).
pub static THREAD_CONTROL_BLOCK: ThreadControlBlock = ThreadControlBlock {
    tcb: AtomicU64::new(0),
    dtv: AtomicU64::new(0),
    self_pointer: AtomicU64::new(0),
    reserved: [const { AtomicU64::new(0) }; 2],
    // Replaced at the boot CPU's init by a random value where RDRAND exists.
    stack_guard: AtomicU64::new(0x4b65_656c_00c0_ffee),
    pointer_guard: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
};

/// Points this CPU's GS base at record `index`, and its FS base at the
/// [`THREAD_CONTROL_BLOCK`]. Call once per CPU, early.
pub fn init_this_cpu(index: usize, apic_id: u32) {
    let record = &PER_CPU[index];
    record.index.store(index, Ordering::Relaxed);
    record.apic_id.store(apic_id, Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE only affects gs-relative accesses, which only this module
    // makes; the record is a static that lives forever.
    unsafe { Msr::new(IA32_GS_BASE).write(record as *const PerCpu as u64) };
    let block = &THREAD_CONTROL_BLOCK as *const ThreadControlBlock as u64;
    if index == 0 && THREAD_CONTROL_BLOCK.tcb.load(Ordering::Relaxed) == 0 {
        THREAD_CONTROL_BLOCK.tcb.store(block, Ordering::Relaxed);
        THREAD_CONTROL_BLOCK
            .self_pointer
            .store(block, Ordering::Relaxed);
        if let Some(random) = x86_64::instructions::random::RdRand::new() {
            // glibc zeroes the canary's low byte, so that a string overflow that
            // copies up to a NUL cannot reproduce it.
            if let Some(value) = (0..10).find_map(|_| random.get_u64()) {
                THREAD_CONTROL_BLOCK
                    .stack_guard
                    .store(value & !0xff, Ordering::Relaxed);
            }
            if let Some(value) = (0..10).find_map(|_| random.get_u64()) {
                THREAD_CONTROL_BLOCK
                    .pointer_guard
                    .store(value, Ordering::Relaxed);
            }
        }
    }
    // SAFETY: FS-relative accesses are made only by loaded objects' code, which finds
    // this static block (glibc's layout) there; the block lives forever.
    unsafe { Msr::new(IA32_FS_BASE).write(block) };
}

/// CPUs marked online so far.
static ONLINE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Marks this CPU as running (once per CPU).
pub fn mark_online() {
    let record = current();
    if !record.online.swap(true, Ordering::AcqRel) {
        ONLINE_COUNT.fetch_add(1, Ordering::AcqRel);
        crate::steal_time::enable_on_this_cpu(record.index.load(Ordering::Relaxed));
    }
}

/// How many CPUs [`mark_online`] has marked: 1 until the first AP is up (0 before the
/// boot CPU marks itself). CPUs never go offline.
pub fn online_count() -> usize {
    ONLINE_COUNT.load(Ordering::Acquire)
}

/// The current CPU's index. The boot CPU calls [`init_this_cpu`] first thing in Rust,
/// and application processors before any Rust code that could call this.
#[inline]
pub fn current_index() -> usize {
    let index: usize;
    // SAFETY: GS base points at this CPU's `PerCpu` (set up before any caller runs),
    // whose first field is `index`.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index
}

/// The id of the thread running on the calling CPU, as its scheduler last recorded
/// it with [`set_current_thread_id`] (0: none). Read with one gs-relative load: a
/// thread that is preempted and moved to another CPU either before or after that
/// instruction reads its own id either way, because each CPU's word names the thread
/// that CPU runs, and the word only changes while its CPU switches, never in the
/// middle of an instruction. So a thread always reads its own id here, without an
/// interrupt mask.
#[inline]
pub fn current_thread_id() -> u64 {
    let id: u64;
    // SAFETY: GS base points at this CPU's `PerCpu` (set up before any caller runs);
    // the offset is that of the `current_thread` field, an aligned `AtomicU64`, and a
    // single aligned 8-byte load of it is atomic.
    unsafe {
        core::arch::asm!(
            "mov {}, gs:[{offset}]",
            out(reg) id,
            offset = const core::mem::offset_of!(PerCpu, current_thread),
            options(nostack, readonly, preserves_flags)
        )
    };
    id
}

/// Records `id` as the thread that runs next on the calling CPU (0: none). Only
/// that CPU's scheduler calls this, at a switch, with interrupts masked.
pub fn set_current_thread_id(id: u64) {
    current().current_thread.store(id, Ordering::Relaxed);
}

/// The current CPU's record.
pub fn current() -> &'static PerCpu {
    &PER_CPU[current_index()]
}

/// CPU `index`'s record.
pub fn get(index: usize) -> Option<&'static PerCpu> {
    PER_CPU.get(index)
}

/// Sets this CPU's FS base (the thread pointer for TLS).
///
/// # Safety
/// `value` must be what the code running next expects in FS (or unused by it).
pub unsafe fn set_thread_pointer(value: u64) {
    // SAFETY: per the contract; Keel itself makes no fs-relative accesses.
    unsafe { Msr::new(IA32_FS_BASE).write(value) };
}
