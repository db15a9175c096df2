//! The kernel's files: one VFS with ramfs at `/`, filled at boot from the boot image
//! (the loader's modules, `-initrd`, cpio "newc" archives unpacked by
//! `keel_vfs::cpio`). Wiring only: the VFS, ramfs and the unpacker live in `keel-vfs`.

use crate::threads::KernelParker;
use alloc::sync::Arc;
use keel_arch_x86_64::{ArchInfo, kprintln, time};
use keel_vfs::cpio::{self, UnpackReport};
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
