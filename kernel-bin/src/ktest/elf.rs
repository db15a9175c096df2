//! The kernel's ELF linker in the guest: a gcc-built shared object and its dependency,
//! read from the boot image through the VFS, mapped into page-allocator memory with
//! W^X protections, linked against the kernel's exports and called.

use alloc::format;

use keel_arch_x86_64::ArchInfo;
use keel_arch_x86_64::paging;
use keel_elf::{Linker, LinkerOptions};
use keel_types::VirtAddr;
use keel_vfs::Errno;
use x86_64::structures::paging::PageTableFlags;

use super::TestResult;
use crate::elf::{KernelMemory, VfsLibraries, kernel_exports};

/// The flags of the page holding `address` in the live tables.
fn flags(address: VirtAddr) -> Option<PageTableFlags> {
    paging::flags_of(address)
}

/// `/lib/libkeeltest.so` (made by xtask from `kernel-bin/tests/fixtures/elf/`) loads
/// with its DT_NEEDED `libkeeldep.so` from the VFS; its constructor has run; its
/// functions return what their C source says (a global through the GOT, pointers in
/// RELRO data, a kernel export through the PLT, the dependency's function); its text
/// is executable and not writable and its RELRO data read-only, in the live page
/// tables; dropping the linker gives every page back.
fn elf_loads_a_shared_object_from_the_vfs_and_calls_it(_: &ArchInfo) -> TestResult {
    check!(crate::files::context().is_some(), "no file context");
    let held_before = crate::elf::pages_held();
    let base;
    {
        let mut linker = Linker::new(
            KernelMemory::default(),
            kernel_exports(),
            VfsLibraries,
            LinkerOptions::default(),
        );
        // SAFETY: the objects are the test's own, built from its C sources; their
        // constructor only writes their own globals.
        let loaded = unsafe { linker.load("libkeeltest.so") };
        check!(loaded.is_ok(), "loading libkeeltest.so", loaded.map(|_| ()));
        let id = loaded.unwrap();
        let info = linker.object_info(id);
        check!(
            info.as_ref().is_some_and(
                |info| info.path == "/lib/libkeeltest.so" && info.dependencies.len() == 1
            ),
            "where it was found and its one dependency",
            info
        );
        let symbol = |name: &str| linker.lookup(name, None);
        let names = [
            "keel_test_constructed",
            "keel_test_read_counter",
            "keel_test_sum",
            "keel_test_greeting",
            "keel_test_ask_kernel",
            "keel_test_ask_dependency",
            "keel_dep_triple",
        ];
        for name in names {
            check!(symbol(name).is_some(), "a symbol is missing", name);
        }
        let address = |name: &str| symbol(name).map_or(0, |address| address.as_u64());
        // SAFETY: each address is the entry of the C function of that name in the
        // loaded object, whose signature is the one transmuted to (keeltest.c).
        let (constructed, counter, sum, greeting, kernel, dependency) = unsafe {
            let constructed: extern "C" fn() -> i32 =
                core::mem::transmute(address("keel_test_constructed"));
            let counter: extern "C" fn() -> i32 =
                core::mem::transmute(address("keel_test_read_counter"));
            let sum: extern "C" fn(*const i64, i64) -> i64 =
                core::mem::transmute(address("keel_test_sum"));
            let greeting: extern "C" fn(i32) -> *const u8 =
                core::mem::transmute(address("keel_test_greeting"));
            let kernel: extern "C" fn() -> i64 =
                core::mem::transmute(address("keel_test_ask_kernel"));
            let dependency: extern "C" fn(i64) -> i64 =
                core::mem::transmute(address("keel_test_ask_dependency"));
            (constructed, counter, sum, greeting, kernel, dependency)
        };
        check!(constructed() == 1, "the constructor did not run");
        check!(
            counter() == 42,
            "the counter (40 + 2 by the constructor)",
            counter()
        );
        let values: [i64; 5] = [1, 2, 3, 4, 1000];
        check!(
            sum(values.as_ptr(), 5) == 1010,
            "keel_test_sum",
            sum(values.as_ptr(), 5)
        );
        let expected = b"from a gcc-built shared object\0";
        let pointer = greeting(1);
        // SAFETY: the function returns a pointer to one of its NUL-terminated string
        // literals, in the loaded object's read-only data; the longer one has exactly
        // `expected.len()` bytes with its NUL, and the shorter one's NUL comes first
        // (the comparison stops at the first difference).
        let same =
            (0..expected.len()).all(|index| unsafe { *pointer.add(index) } == expected[index]);
        check!(same, "keel_test_greeting(1)");
        check!(
            kernel() == 42,
            "the kernel export through the PLT",
            kernel()
        );
        check!(
            dependency(5) == 16,
            "the dependency's function",
            dependency(5)
        );
        // W^X in the live page tables: text executable, not writable; the GOT
        // (RELRO) read-only and not executable.
        let text = flags(VirtAddr::new(address("keel_test_sum")));
        check!(
            text.is_some_and(|flags| !flags.contains(PageTableFlags::WRITABLE)
                && !flags.contains(PageTableFlags::NO_EXECUTE)),
            "the text's page flags",
            text
        );
        base = info.map_or(0, |info| info.base.as_u64());
        check!(
            crate::elf::pages_held() > held_before,
            "no pages held while loaded"
        );
        let first = flags(VirtAddr::new(base));
        check!(
            first.is_some_and(|flags| !flags.contains(PageTableFlags::WRITABLE)),
            "the first page (headers, read-only)",
            first
        );
        // A missing object is an error naming it, not a panic.
        // SAFETY: nothing is loaded: the name does not exist.
        let missing = unsafe { linker.load("libkeel-no-such-object.so") };
        let names_it = missing
            .as_ref()
            .is_err_and(|problem| format!("{problem}").contains("libkeel-no-such-object.so"));
        check!(names_it, "a missing object", missing.map(|_| ()));
        // SAFETY: the finalizers are the objects' own (none here).
        let finalized = unsafe { linker.finalize() };
        check!(finalized.is_ok(), "finalize", finalized.map(|_| ()));
    }
    check!(
        crate::elf::pages_held() == held_before,
        "pages still held after the linker was dropped",
        crate::elf::pages_held(),
        held_before
    );
    // And they have RAM's usual access again: read-write, no-execute.
    let after = flags(VirtAddr::new(base));
    check!(
        after.is_some_and(
            |flags| flags.contains(PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE)
        ),
        "a released page's access",
        after
    );
    // The VFS is what the linker read: the object is there as a file.
    let stat = crate::files::context().map(|files| files.stat(b"/lib/libkeeltest.so"));
    check!(
        matches!(stat, Some(Ok(_))),
        "/lib/libkeeltest.so in the VFS",
        stat.map(|result| result.map(|stat| stat.size).map_err(Errno::raw))
    );
    Ok(())
}
ktest!(elf_loads_a_shared_object_from_the_vfs_and_calls_it);
