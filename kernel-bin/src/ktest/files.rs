//! In-guest tests of the kernel's files: the boot image `cargo xtask test` attaches
//! to every suite boot (`kernel-bin/tests/fixtures/boot-image/`, packed by the host's
//! cpio) is unpacked into `/` exactly, devfs's nodes behave, and threads on every CPU
//! create and write separate files in ramfs concurrently.

use super::TestResult;
use crate::files;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use keel_arch_x86_64::ArchInfo;
use keel_vfs::{Context, FileType, OpenFlags};

type Files = Context<crate::threads::KernelParker>;

const HELLO: &[u8] = include_bytes!("../../tests/fixtures/boot-image/hello.txt");
const DATA: &[u8] = include_bytes!("../../tests/fixtures/boot-image/etc/nested/data.txt");

/// The whole file at `path`, or why not.
fn read_file(files: &Files, path: &[u8]) -> Result<Vec<u8>, keel_vfs::Errno> {
    let fd = files.open(path, OpenFlags::O_RDONLY, 0)?;
    let mut contents = Vec::new();
    let mut buffer = [0u8; 1000];
    let result = loop {
        match files.read(fd, &mut buffer) {
            Ok(0) => break Ok(contents),
            Ok(count) => contents.extend_from_slice(&buffer[..count]),
            Err(errno) => break Err(errno),
        }
    };
    files.close(fd)?;
    result
}

/// The fixture's files, directories and symlink are in `/` with their exact bytes (and
/// `/lib` holds the ELF case's two objects).
fn boot_image_is_unpacked_into_the_root(_: &ArchInfo) -> TestResult {
    let files = files::context();
    check!(files.is_some(), "no file context");
    let files = files.unwrap();
    let report = files::boot_image();
    check!(
        report.is_some(),
        "no boot image was unpacked (is -initrd attached?)"
    );
    let report = report.unwrap();
    check!(
        // The fixture's 2 files, 1 symlink and 2 directories, /lib with the ELF
        // case's 2 objects (built by xtask), and /lib/x86_64-linux-gnu with Debian's
        // libz and libsqlite3.
        report.files == 6 && report.symlinks == 1 && report.directories == 4,
        "the boot image's counts",
        report
    );
    let hello = read_file(files, b"/hello.txt");
    check!(hello.as_deref() == Ok(HELLO), "/hello.txt", hello);
    let data = read_file(files, b"/etc/nested/data.txt");
    check!(data.as_deref() == Ok(DATA), "/etc/nested/data.txt differs");
    let link = files.readlink(b"/etc/hello-link");
    check!(
        link.as_deref() == Ok(&b"../hello.txt"[..]),
        "the symlink's target",
        link
    );
    let through = read_file(files, b"/etc/hello-link");
    check!(
        through.as_deref() == Ok(HELLO),
        "reading through the symlink",
        through
    );
    let nested = files.stat(b"/etc/nested").map(|stat| stat.file_type());
    check!(
        nested == Ok(Some(FileType::Directory)),
        "/etc/nested",
        nested
    );
    Ok(())
}
ktest!(boot_image_is_unpacked_into_the_root);

/// devfs at /dev: null, zero, full, urandom (RDRAND under TCG's `-cpu max`) and the
/// console behave as Linux's.
fn devfs_nodes_behave_as_linux(_: &ArchInfo) -> TestResult {
    let files = files::context();
    check!(files.is_some(), "no file context");
    let files = files.unwrap();
    let open = |path: &[u8], flags| files.open(path, flags, 0);
    let null = open(b"/dev/null", OpenFlags::O_RDWR);
    check!(null.is_ok(), "opening /dev/null", null);
    let null = null.unwrap();
    let mut buffer = [0xaau8; 64];
    check!(files.write(null, b"gone") == Ok(4), "writing /dev/null");
    check!(files.read(null, &mut buffer) == Ok(0), "reading /dev/null");
    let zero = open(b"/dev/zero", OpenFlags::O_RDONLY).unwrap_or(null);
    check!(
        files.read(zero, &mut buffer) == Ok(64) && buffer == [0; 64],
        "reading /dev/zero"
    );
    let full = open(b"/dev/full", OpenFlags::O_WRONLY).unwrap_or(null);
    let refused = files.write(full, b"x");
    check!(
        refused == Err(keel_vfs::Errno::ENOSPC),
        "writing /dev/full",
        refused
    );
    let random = open(b"/dev/urandom", OpenFlags::O_RDONLY).unwrap_or(null);
    let (mut first, mut second) = ([0u8; 32], [0u8; 32]);
    let reads = (
        files.read(random, &mut first),
        files.read(random, &mut second),
    );
    check!(reads == (Ok(32), Ok(32)), "reading /dev/urandom", reads);
    check!(
        first != second && first != [0; 32],
        "/dev/urandom repeats itself",
        first,
        second
    );
    let console = open(b"/dev/console", OpenFlags::O_WRONLY).unwrap_or(null);
    let line = b"    (written through /dev/console)\n";
    check!(
        files.write(console, line) == Ok(line.len()),
        "writing /dev/console"
    );
    let stat = files.stat(b"/dev/null");
    check!(
        stat.map(|stat| (stat.file_type(), stat.rdev)) == Ok((Some(FileType::CharDevice), 0x103)),
        "/dev/null is not character device 1:3",
        stat
    );
    for fd in [null, zero, full, random, console] {
        let _ = files.close(fd);
    }
    Ok(())
}
ktest!(devfs_nodes_behave_as_linux);

/// The range and permissions of the `/proc/self/maps` line that holds `address`.
fn maps_line_holding(maps: &str, address: u64) -> Option<(u64, u64, &str)> {
    maps.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (start, end) = words.next()?.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let permissions = words.next()?;
        (start <= address && address < end).then_some((start, end, permissions))
    })
}

/// `/proc/self/maps` lists the kernel's text as `r-xp` and its data as `rw-p`, from
/// the live page tables; `/proc/cpuinfo` has one entry per CPU, `/proc/meminfo` and
/// `/proc/uptime` their first fields; `/proc/self/fd/N` names an open file until it is
/// closed.
fn procfs_lists_the_kernels_mappings(_: &ArchInfo) -> TestResult {
    let files = files::context();
    check!(files.is_some(), "no file context");
    let files = files.unwrap();
    let maps = read_file(files, b"/proc/self/maps");
    check!(maps.is_ok(), "reading /proc/self/maps", maps);
    let maps = alloc::string::String::from_utf8(maps.unwrap()).unwrap_or_default();
    let text = procfs_lists_the_kernels_mappings as *const () as u64;
    let line = maps_line_holding(&maps, text);
    check!(
        line.is_some_and(|(_, _, permissions)| permissions == "r-xp"),
        "kernel text",
        line,
        text
    );
    static DATA: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let data = (&raw const DATA) as u64;
    let line = maps_line_holding(&maps, data);
    check!(
        line.is_some_and(|(_, _, permissions)| permissions == "rw-p"),
        "kernel data",
        line,
        data
    );
    // /proc/self/fd: an open file's link names it, and goes when it is closed.
    let opened = files.open(b"/proc/cpuinfo", OpenFlags::O_RDONLY, 0);
    check!(opened.is_ok(), "opening /proc/cpuinfo", opened);
    let fd = opened.unwrap();
    let link = alloc::format!("/proc/self/fd/{}", fd.raw());
    let target = files.readlink(link.as_bytes());
    check!(
        target.as_deref() == Ok(&b"/proc/cpuinfo"[..]),
        "/proc/self/fd link",
        target.map(|bytes| alloc::string::String::from_utf8_lossy(&bytes).into_owned())
    );
    let _ = files.close(fd);
    let gone = files.readlink(link.as_bytes());
    check!(
        gone == Err(keel_vfs::Errno::ENOENT),
        "closed fd's link",
        gone
    );
    let cpuinfo = read_file(files, b"/proc/cpuinfo").unwrap_or_default();
    let processors = alloc::string::String::from_utf8_lossy(&cpuinfo)
        .lines()
        .filter(|line| line.starts_with("processor\t: "))
        .count();
    let cpus = crate::threads::scheduler().cpu_count();
    check!(
        processors == cpus,
        "/proc/cpuinfo's processors",
        processors,
        cpus
    );
    let meminfo = read_file(files, b"/proc/meminfo").unwrap_or_default();
    let total = alloc::string::String::from_utf8_lossy(&meminfo)
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok());
    check!(
        total.is_some_and(|kib| kib > 1024),
        "/proc/meminfo's MemTotal",
        total
    );
    let uptime = read_file(files, b"/proc/uptime").unwrap_or_default();
    let seconds = alloc::string::String::from_utf8_lossy(&uptime)
        .split_whitespace()
        .next()
        .and_then(|word| word.parse::<f64>().ok());
    check!(
        seconds.is_some_and(|seconds| seconds > 0.0),
        "/proc/uptime",
        seconds
    );
    Ok(())
}
ktest!(procfs_lists_the_kernels_mappings);

/// What suite boot `boot` writes to /data/boot-N.txt (xtask's `boot_file_contents`
/// checks the last one with debugfs on the host).
fn boot_file_contents(boot: u64) -> Vec<u8> {
    format!("written by Keel's suite boot {boot}\n")
        .repeat(200 * boot as usize)
        .into_bytes()
}

fn seed(info: &ArchInfo, key: &str) -> u64 {
    info.boot
        .command_line_value(key)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The ext2 disk mounted at /data (`mount=/data:vdc`, made by mkfs.ext2 -d from the
/// boot-image fixture): mkfs's files read back, the previous boot's file is there
/// with its bytes, and this boot's file is written and fsynced for the next boot (and
/// for e2fsck and debugfs on the host after the last boot).
fn ext2_disk_keeps_files_from_boot_to_boot(info: &ArchInfo) -> TestResult {
    let files = files::context();
    check!(files.is_some(), "no file context");
    let files = files.unwrap();
    let statfs = files.statfs(b"/data").map(|statfs| statfs.fs_type);
    check!(statfs == Ok(0xef53), "/data is not the ext2 mount", statfs);
    let hello = read_file(files, b"/data/hello.txt");
    check!(hello.as_deref() == Ok(HELLO), "mkfs's /hello.txt", hello);
    let data = read_file(files, b"/data/etc/nested/data.txt");
    check!(
        data.as_deref() == Ok(DATA),
        "mkfs's /etc/nested/data.txt differs"
    );
    let previous = seed(info, "ktest.disk_previous_seed");
    if previous > 0 {
        let path = format!("/data/boot-{previous}.txt");
        let back = read_file(files, path.as_bytes());
        check!(
            back.as_deref() == Ok(&boot_file_contents(previous)[..]),
            "the previous boot's file is not on the disk",
            path
        );
    }
    let this = seed(info, "ktest.disk_seed").max(1);
    let path = format!("/data/boot-{this}.txt");
    let contents = boot_file_contents(this);
    let flags = OpenFlags::O_WRONLY | OpenFlags::O_CREAT | OpenFlags::O_TRUNC;
    let fd = files.open(path.as_bytes(), flags, 0o644);
    check!(fd.is_ok(), "creating this boot's file", fd);
    let fd = fd.unwrap();
    let (first, second) = contents.split_at(contents.len() / 2);
    let written = (files.write(fd, first), files.write(fd, second));
    check!(
        written == (Ok(first.len()), Ok(second.len())),
        "writing it",
        written
    );
    let synced = files.fsync(fd);
    check!(synced.is_ok(), "fsync", synced);
    check!(files.close(fd).is_ok(), "close");
    let back = read_file(files, path.as_bytes());
    check!(
        back.as_deref() == Ok(&contents[..]),
        "reading it back in this boot"
    );
    Ok(())
}
ktest!(ext2_disk_keeps_files_from_boot_to_boot);

const WRITERS: usize = 8;
const FILES_EACH: usize = 16;

/// The bytes of writer `writer`'s file `file`: a few KiB, different for every file.
fn contents(writer: usize, file: usize) -> Vec<u8> {
    let length = 1000 + (writer * 977 + file * 131) % 7000;
    (0..length)
        .map(|index| (index * 31 + writer * 7 + file) as u8)
        .collect()
}

/// One writer: creates its files (in a directory shared by all and in its own),
/// writes them in two pieces, reads each back at once.
fn writer(files: &'static Files, writer: usize) -> Result<(), (usize, keel_vfs::Errno)> {
    let own = format!("/writers/w{writer}");
    files
        .mkdir(own.as_bytes(), 0o755)
        .map_err(|errno| (usize::MAX, errno))?;
    for file in 0..FILES_EACH {
        let bytes = contents(writer, file);
        for path in [
            format!("/writers/shared/w{writer}-f{file}"),
            format!("{own}/f{file}"),
        ] {
            let flags = OpenFlags::O_RDWR | OpenFlags::O_CREAT | OpenFlags::O_EXCL;
            let fd = files
                .open(path.as_bytes(), flags, 0o644)
                .map_err(|errno| (file, errno))?;
            let (first, second) = bytes.split_at(bytes.len() / 3);
            files.write(fd, first).map_err(|errno| (file, errno))?;
            files.write(fd, second).map_err(|errno| (file, errno))?;
            let mut back = vec![0u8; bytes.len()];
            let read = files
                .pread(fd, &mut back, 0)
                .map_err(|errno| (file, errno))?;
            files.close(fd).map_err(|errno| (file, errno))?;
            if read != bytes.len() || back != bytes {
                return Err((file, keel_vfs::Errno::EIO));
            }
        }
    }
    Ok(())
}

/// 8 threads over every CPU create and write separate files, in one shared directory
/// and in one directory each, at the same time; every file is exact afterwards.
fn files_eight_writers_concurrently(_: &ArchInfo) -> TestResult {
    let files = files::context();
    check!(files.is_some(), "no file context");
    let files = files.unwrap();
    let made = files
        .mkdir(b"/writers", 0o755)
        .and_then(|()| files.mkdir(b"/writers/shared", 0o755));
    check!(made.is_ok(), "making the directories", made);
    let scheduler = crate::threads::scheduler();
    let cpus = scheduler.cpu_count();
    let mut handles = Vec::new();
    for index in 0..WRITERS {
        let options = keel_sched::SpawnOptions::new().pin(keel_sched::CpuId::new(index % cpus));
        let spawned = scheduler.spawn(options, move || writer(files, index));
        check!(spawned.is_ok(), "spawning a writer", index);
        handles.push(spawned.unwrap());
    }
    let mut failures = Vec::new();
    for (index, handle) in handles.into_iter().enumerate() {
        match scheduler.join(handle) {
            Some(Ok(())) => {}
            other => failures.push((index, other)),
        }
    }
    check!(failures.is_empty(), "a writer failed", failures);
    for index in 0..WRITERS {
        for file in 0..FILES_EACH {
            let bytes = contents(index, file);
            for path in [
                format!("/writers/shared/w{index}-f{file}"),
                format!("/writers/w{index}/f{file}"),
            ] {
                let back = read_file(files, path.as_bytes());
                check!(
                    back.as_deref() == Ok(&bytes[..]),
                    "a file is wrong after the join",
                    path
                );
            }
        }
    }
    let shared = files
        .open(b"/writers/shared", OpenFlags::O_DIRECTORY, 0)
        .and_then(|fd| {
            let entries = files.getdents(fd, 1000);
            files.close(fd)?;
            entries
        })
        .map(|entries| entries.len());
    // The files plus `.` and `..`.
    check!(
        shared == Ok(WRITERS * FILES_EACH + 2),
        "the shared directory's entries",
        shared
    );
    Ok(())
}
ktest!(files_eight_writers_concurrently);
