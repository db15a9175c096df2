//! The kernel's files: one VFS with ramfs at `/`, filled at boot from the boot image
//! (the loader's modules, `-initrd`, cpio "newc" archives unpacked by
//! `keel_vfs::cpio`), and devfs at `/dev` (its console is the serial port, its random
//! devices RDRAND), descriptors 0-2 on `/dev/console`, procfs at `/proc`, and ext2
//! filesystems on disks where the command line says (`mount=/PATH:DISK`). Wiring only: the VFS, the filesystems and the unpacker
//! live in `keel-vfs`.

use crate::threads::KernelParker;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_vfs::cpio::{self, UnpackReport};
use keel_vfs::devfs::{Console, Devfs, Entropy};
use keel_vfs::procfs::{ProcSource, Procfs};
use keel_vfs::{Clock, Context, Ramfs, Timespec, Vfs};

/// The VFS's clock: Keel has no wall clock yet, so time stamps count from boot.
#[derive(Debug)]
struct SinceBoot;

impl Clock for SinceBoot {
    fn now(&self) -> Timespec {
        let nanos = time::now().as_nanos();
        Timespec {
            sec: (nanos / 1_000_000_000) as i64,
            nsec: (nanos % 1_000_000_000) as u32,
        }
    }
}

/// `/dev/console`: the serial console.
#[derive(Debug)]
struct SerialConsole;

impl Console for SerialConsole {
    fn write(&self, bytes: &[u8]) {
        keel_arch_x86_64::serial::with_console(|port| port.write_bytes(bytes));
    }
}

/// `/dev/random` and `/dev/urandom`: RDRAND, which the CPU reseeds from its own
/// entropy source (Intel's DRNG guide: at least every 511 128-bit samples), with a
/// few retries per word as Intel advises; on a CPU without RDRAND, a virtio-rng
/// device if there is one (`devices::virtio_entropy`); with neither, reads fail with
/// EIO (see `keel_vfs::devfs`). QEMU's TCG offers RDRAND with `-cpu max`. (RDSEED,
/// the raw conditioner output, is not used: RDRAND is what Intel recommends for
/// random numbers, RDSEED for seeding another generator.)
#[derive(Debug)]
struct KernelRandom;

impl Entropy for KernelRandom {
    fn fill(&self, buffer: &mut [u8]) -> bool {
        let Some(source) = x86_64::instructions::random::RdRand::new() else {
            return crate::devices::virtio_entropy(buffer);
        };
        for chunk in buffer.chunks_mut(8) {
            let Some(word) = (0..10).find_map(|_| source.get_u64()) else {
                return false;
            };
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
        true
    }
}

/// `/proc`'s contents: the page tables, CPUID, the page allocator and the clock.
#[derive(Debug)]
struct KernelProc {
    image: (u64, u64),
    usable_bytes: u64,
}

impl ProcSource for KernelProc {
    /// The live page tables' mappings, coalesced, each named by what it is.
    fn maps(&self) -> Vec<u8> {
        let mut text = String::new();
        keel_arch_x86_64::paging::mappings(|mapping| {
            let name = if mapping.start < self.image.1 && mapping.end > self.image.0 {
                "[kernel]"
            } else if mapping.uncached {
                "[device]"
            } else {
                ""
            };
            let _ = writeln!(
                text,
                "{:08x}-{:08x} r{}{}p 00000000 00:00 0          {name}",
                mapping.start,
                mapping.end,
                if mapping.writable { 'w' } else { '-' },
                if mapping.executable { 'x' } else { '-' },
            );
        });
        text.into_bytes()
    }

    fn cpuinfo(&self) -> Vec<u8> {
        let cpuid = raw_cpuid::CpuId::new();
        let vendor = cpuid
            .get_vendor_info()
            .map_or_else(String::new, |vendor| String::from(vendor.as_str()));
        let brand = cpuid
            .get_processor_brand_string()
            .map_or_else(String::new, |brand| String::from(brand.as_str().trim()));
        let (family, model, stepping) = cpuid.get_feature_info().map_or((0, 0, 0), |info| {
            (info.family_id(), info.model_id(), info.stepping_id())
        });
        let features = cpuid.get_feature_info();
        let flag = |name: &'static str, present: bool| present.then_some(name);
        let flags: Vec<&str> = features
            .map(|info| {
                [
                    flag("fpu", info.has_fpu()),
                    flag("tsc", info.has_tsc()),
                    flag("apic", info.has_apic()),
                    flag("sse", info.has_sse()),
                    flag("sse2", info.has_sse2()),
                    flag("sse3", info.has_sse3()),
                    flag("ssse3", info.has_ssse3()),
                    flag("sse4_1", info.has_sse41()),
                    flag("sse4_2", info.has_sse42()),
                    flag("x2apic", info.has_x2apic()),
                    flag("xsave", info.has_xsave()),
                    flag("avx", info.has_avx()),
                    flag("rdrand", info.has_rdrand()),
                ]
                .into_iter()
                .flatten()
                .collect()
            })
            .unwrap_or_default();
        let cpus = crate::threads::try_scheduler().map_or(1, |scheduler| scheduler.cpu_count());
        let mut text = String::new();
        for cpu in 0..cpus {
            let _ = write!(
                text,
                "processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n\
                 model\t\t: {model}\nmodel name\t: {brand}\nstepping\t: {stepping}\n\
                 flags\t\t: {}\n\n",
                flags.join(" ")
            );
        }
        text.into_bytes()
    }

    fn meminfo(&self) -> Vec<u8> {
        let free = crate::memory::free_page_count() * 4;
        format!(
            "MemTotal:       {:>8} kB\nMemFree:        {free:>8} kB\nMemAvailable:   {free:>8} kB\n",
            self.usable_bytes / 1024
        )
        .into_bytes()
    }

    /// Idle time is not counted yet: 0.00.
    fn uptime(&self) -> Vec<u8> {
        let centis = time::now().as_nanos() / 10_000_000;
        format!("{}.{:02} 0.00\n", centis / 100, centis % 100).into_bytes()
    }

    /// The kernel's one context's descriptors.
    fn fds(&self) -> Vec<i32> {
        context().map_or_else(Vec::new, |files| {
            files.open_fds().into_iter().map(|fd| fd.raw()).collect()
        })
    }

    fn fd_target(&self, fd: i32) -> Option<Vec<u8>> {
        context()?.fd_target(keel_vfs::Fd::from_raw(fd).ok()?).ok()
    }
}

/// A disk the kernel found, as the block device a filesystem sits on.
#[derive(Clone, Copy)]
struct DiskDevice(&'static dyn crate::devices::Disk);

impl keel_virtio::block::BlockDevice for DiskDevice {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), keel_virtio::block::BlockError> {
        self.0.read(sector, buf)
    }
    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), keel_virtio::block::BlockError> {
        self.0.write(sector, buf)
    }
    fn flush(&self) -> Result<(), keel_virtio::block::BlockError> {
        self.0.flush()
    }
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

/// ext2's clock: seconds since boot (no wall clock yet).
struct Ext2Clock;

impl keel_ext2::Clock for Ext2Clock {
    fn now(&self) -> u32 {
        (time::now().as_nanos() / 1_000_000_000) as u32
    }
}

/// Mounts the ext2 filesystem on disk `disk` (`vda`, ...) at `path`, making the
/// directory if needed; the message says why not.
fn mount_disk(context: &Context<KernelParker>, path: &str, disk: &str) -> Result<(), String> {
    let entry = crate::devices::disks()
        .iter()
        .find(|entry| entry.name == disk)
        .ok_or_else(|| format!("no disk named {disk}"))?;
    let fs = keel_ext2::Ext2::mount_with(
        DiskDevice(entry.disk()),
        keel_ext2::MountOptions::default(),
        alloc::boxed::Box::new(Ext2Clock),
    )
    .map_err(|error| format!("{error}"))?;
    let read_only = fs.is_read_only();
    match context.mkdir(path.as_bytes(), 0o755) {
        Ok(()) | Err(keel_vfs::Errno::EEXIST) => {}
        Err(errno) => return Err(format!("cannot make {path}: {errno}")),
    }
    context
        .mount(
            path.as_bytes(),
            keel_ext2::vfs::Ext2Fs::<_, KernelParker>::new(fs),
        )
        .map_err(|errno| format!("cannot mount at {path}: {errno}"))?;
    kprintln!(
        "files: {disk} (ext2{}) mounted at {path}",
        if read_only { ", read-only" } else { "" }
    );
    Ok(())
}

static FILES: spin::Once<Context<KernelParker>> = spin::Once::new();

/// The kernel's file context (root and working directory `/`), for the application
/// and the tests; `None` before [`init`].
pub fn context() -> Option<&'static Context<KernelParker>> {
    FILES.get()
}

/// What the boot image gave, for the tests.
static UNPACKED: spin::Once<UnpackReport> = spin::Once::new();

/// The boot image's unpacking report (all modules added up), if there was one.
pub fn boot_image() -> Option<&'static UnpackReport> {
    UNPACKED.get()
}

/// Makes the VFS and unpacks every module into it, printing what it unpacked or why a
/// module could not be (the kernel boots on with what was unpacked).
pub fn init(info: &ArchInfo) {
    let clock: Arc<dyn Clock> = Arc::new(SinceBoot);
    let vfs = Vfs::<KernelParker>::new(Ramfs::<KernelParker>::new(clock.clone()), clock);
    let context = FILES.call_once(|| Context::new(vfs));
    let devfs = Devfs::new(
        Arc::new(SerialConsole),
        Arc::new(KernelRandom),
        Arc::new(SinceBoot),
    );
    if let Err(errno) = context
        .mkdir(b"/dev", 0o755)
        .and_then(|()| context.mount(b"/dev", devfs).map(|_| ()))
    {
        kprintln!("files: cannot mount devfs at /dev: {errno}");
    }
    let random = if x86_64::instructions::random::RdRand::new().is_some() {
        "RDRAND"
    } else if crate::devices::has_virtio_entropy() {
        "virtio-rng"
    } else {
        "nothing (reads fail with EIO)"
    };
    log::info!("files: /dev/random and /dev/urandom read from {random}");
    // Descriptors 0, 1 and 2 on the console, as a process starts with them: C code
    // writes to them, and some (sqlite) refuses to put its files on them.
    for _ in 0..3 {
        if let Err(errno) = context.open(b"/dev/console", keel_vfs::OpenFlags::O_RDWR, 0) {
            kprintln!("files: cannot open /dev/console for stdio: {errno}");
            break;
        }
    }
    let mut total = UnpackReport::default();
    let modules = info.boot.modules();
    for module in modules {
        let Ok(size) = usize::try_from(module.size) else {
            continue;
        };
        // SAFETY: the loader put the module in RAM, which is identity-mapped; the page
        // allocator never hands its pages out (memory.rs reserves every module), and
        // nothing writes them, so the bytes are valid and unchanging for this borrow.
        let bytes =
            unsafe { core::slice::from_raw_parts(module.start.as_u64() as *const u8, size) };
        match cpio::unpack(context, bytes) {
            Ok(report) => {
                total.directories += report.directories;
                total.files += report.files;
                total.symlinks += report.symlinks;
                total.hard_links += report.hard_links;
                total.skipped += report.skipped;
                total.bytes += report.bytes;
            }
            Err(error) => kprintln!("files: boot image at {:#x}: {error}", module.start),
        }
    }
    // devfs goes over /dev after the boot image, which may bring a /dev of its own
    // (its device nodes are skipped; the directory is then covered).
    let devfs = Devfs::new(
        Arc::new(SerialConsole),
        Arc::new(KernelRandom),
        Arc::new(SinceBoot),
    );
    let made = match context.mkdir(b"/dev", 0o755) {
        Err(keel_vfs::Errno::EEXIST) => Ok(()),
        other => other,
    };
    if let Err(errno) = made.and_then(|()| context.mount(b"/dev", devfs).map(|_| ())) {
        kprintln!("files: cannot mount devfs at /dev: {errno}");
    }
    let procfs = Procfs::new(
        Arc::new(KernelProc {
            image: (info.layout.start.as_u64(), info.layout.end.as_u64()),
            usable_bytes: info.boot.usable_memory(),
        }),
        Arc::new(SinceBoot),
    );
    let made = match context.mkdir(b"/proc", 0o555) {
        Err(keel_vfs::Errno::EEXIST) => Ok(()),
        other => other,
    };
    if let Err(errno) = made.and_then(|()| context.mount(b"/proc", procfs).map(|_| ())) {
        kprintln!("files: cannot mount procfs at /proc: {errno}");
    }
    // `mount=PATH:DISK`, once per filesystem to mount.
    for word in info.boot.command_line().split_ascii_whitespace() {
        let Some(value) = word.strip_prefix("mount=") else {
            continue;
        };
        let result = match value.split_once(':') {
            Some((path, disk)) if path.starts_with('/') && !disk.is_empty() => {
                mount_disk(context, path, disk)
            }
            _ => Err(String::from("expected mount=/PATH:DISK")),
        };
        if let Err(why) = result {
            kprintln!("files: {word}: {why}");
        }
    }
    if !modules.is_empty() {
        kprintln!(
            "files: boot image: {} files ({} bytes), {} directories, {} symlinks, {} hard \
             links{}",
            total.files,
            total.bytes,
            total.directories,
            total.symlinks,
            total.hard_links,
            if total.skipped > 0 {
                " (device nodes skipped)"
            } else {
                ""
            }
        );
        UNPACKED.call_once(|| total);
    }
}
