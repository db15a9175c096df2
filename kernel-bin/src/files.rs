//! The kernel's files: one VFS with ramfs at `/`, filled at boot from the boot image
//! (the loader's modules, `-initrd`, cpio "newc" archives unpacked by
//! `keel_vfs::cpio`), and devfs at `/dev` (its console is the serial port, its random
//! devices RDRAND). Wiring only: the VFS, the filesystems and the unpacker
//! live in `keel-vfs`.

use crate::threads::KernelParker;
use alloc::sync::Arc;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_vfs::cpio::{self, UnpackReport};
use keel_vfs::devfs::{Console, Devfs, Entropy};
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
/// few retries per word as Intel advises; nothing when the CPU has no RDRAND (then
/// reads fail with EIO, see `keel_vfs::devfs`). QEMU's TCG offers it with `-cpu max`.
#[derive(Debug)]
struct CpuRandom;

impl Entropy for CpuRandom {
    fn fill(&self, buffer: &mut [u8]) -> bool {
        let Some(source) = x86_64::instructions::random::RdRand::new() else {
            return false;
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
        Arc::new(CpuRandom),
        Arc::new(SinceBoot),
    );
    if let Err(errno) = context
        .mkdir(b"/dev", 0o755)
        .and_then(|()| context.mount(b"/dev", devfs).map(|_| ()))
    {
        kprintln!("files: cannot mount devfs at /dev: {errno}");
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
        Arc::new(CpuRandom),
        Arc::new(SinceBoot),
    );
    let made = match context.mkdir(b"/dev", 0o755) {
        Err(keel_vfs::Errno::EEXIST) => Ok(()),
        other => other,
    };
    if let Err(errno) = made.and_then(|()| context.mount(b"/dev", devfs).map(|_| ())) {
        kprintln!("files: cannot mount devfs at /dev: {errno}");
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
