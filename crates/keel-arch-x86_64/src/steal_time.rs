//! KVM's steal-time area, for one fact: whether the hypervisor has preempted a vCPU.
//!
//! Where KVM offers it (CPUID leaf `0x4000_0001`, EAX bit 5, `KVM_FEATURE_STEAL_TIME`,
//! behind the `KVMKVMKVM` signature of leaf `0x4000_0000`), each CPU writes the
//! physical address of a 64-byte aligned area into `MSR_KVM_STEAL_TIME`
//! (`0x4b56_4d03`, bit 0 enables), and KVM keeps the area up to date: the byte at
//! offset 16, `preempted`, has bit 0 set while KVM has descheduled the vCPU (layout
//! and semantics from Linux's `Documentation/virt/kvm/x86/msr.rst`). Linux's
//! `vcpu_is_preempted` reads the same byte, so that a mutex waiter stops spinning on an
//! owner whose vCPU is not running; Keel's lock-free mutex asks the same through
//! `Arch::is_cpu_preempted`.
//!
//! QEMU's TCG offers no KVM leaves at all, so on this project's machines (which cannot
//! run Keel under KVM, see the toolchain note) [`is_preempted`] is always `false`, and
//! the path that enables the area has never run.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;

use crate::percpu::MAX_CPUS;

const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;
/// `preempted` bit 0: `KVM_VCPU_PREEMPTED`.
const KVM_VCPU_PREEMPTED: u8 = 1;

/// `struct kvm_steal_time`: written by KVM, read here (atomics, because the host
/// writes them behind the compiler's back).
#[repr(C, align(64))]
#[derive(Debug)]
struct StealTimeArea {
    steal: AtomicU64,
    _version: AtomicU32,
    _flags: AtomicU32,
    preempted: AtomicU8,
    _padding: [u8; 47],
}

const _: () = assert!(core::mem::size_of::<StealTimeArea>() == 64);

static AREAS: [StealTimeArea; MAX_CPUS] = [const {
    StealTimeArea {
        steal: AtomicU64::new(0),
        _version: AtomicU32::new(0),
        _flags: AtomicU32::new(0),
        preempted: AtomicU8::new(0),
        _padding: [0; 47],
    }
}; MAX_CPUS];

/// Whether CPU `index` registered its area.
static ENABLED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Whether the hypervisor is KVM and offers steal time.
fn kvm_offers_steal_time() -> bool {
    let signature = raw_cpuid::cpuid!(KVM_CPUID_SIGNATURE);
    let is_kvm =
        (signature.ebx, signature.ecx, signature.edx) == (0x4b4d_564b, 0x564b_4d56, 0x0000_004d);
    is_kvm
        && signature.eax >= KVM_CPUID_FEATURES
        && raw_cpuid::cpuid!(KVM_CPUID_FEATURES).eax & KVM_FEATURE_STEAL_TIME != 0
}

/// Registers CPU `index`'s area with KVM if KVM offers steal time; call once on each
/// CPU, on that CPU. Returns whether it did.
pub fn enable_on_this_cpu(index: usize) -> bool {
    if index >= MAX_CPUS || !kvm_offers_steal_time() {
        return false;
    }
    // The kernel's statics are identity-mapped (linked at their physical address), so
    // the area's address is its physical address.
    let physical = &AREAS[index] as *const StealTimeArea as u64;
    // SAFETY: KVM documents this MSR under the feature bit checked above; the area is
    // a 64-byte aligned static in guest RAM that lives forever and is only read here
    // (through atomics), so KVM's writes into it disturb nothing.
    unsafe { Msr::new(MSR_KVM_STEAL_TIME).write(physical | 1) };
    ENABLED[index].store(true, Ordering::Release);
    true
}

/// Whether the hypervisor has preempted CPU `index` right now; `false` where nothing
/// tells (no KVM steal time, or the CPU did not register).
pub fn is_preempted(index: usize) -> bool {
    index < MAX_CPUS
        && ENABLED[index].load(Ordering::Acquire)
        && AREAS[index].preempted.load(Ordering::Relaxed) & KVM_VCPU_PREEMPTED != 0
}

/// The time KVM reports CPU `index` was runnable but not running (zero where nothing
/// tells). Torn reads across KVM's updates are possible (its `version` protocol is not
/// followed): a statistic, not a clock.
pub fn stolen_time(index: usize) -> core::time::Duration {
    if index < MAX_CPUS && ENABLED[index].load(Ordering::Acquire) {
        core::time::Duration::from_nanos(AREAS[index].steal.load(Ordering::Relaxed))
    } else {
        core::time::Duration::ZERO
    }
}

/// Whether any CPU registered a steal-time area (for the boot banner).
pub fn offered() -> bool {
    ENABLED
        .iter()
        .any(|enabled| enabled.load(Ordering::Relaxed))
}
