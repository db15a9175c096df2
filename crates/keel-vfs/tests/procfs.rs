//! procfs mounted at /proc: the files come from the source at every read, in pieces
//! too; the tree is fixed; `..` from /proc/self leads back to /proc.

mod common;

use common::{clock, context};
use keel_vfs::procfs::{ProcSource, Procfs};
use keel_vfs::{Errno, FileType, OpenFlags};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Fake {
    reads: AtomicU64,
}

impl ProcSource for Fake {
    fn maps(&self) -> Vec<u8> {
        b"00100000-00200000 r-xp 00000000 00:00 0          [kernel]\n".to_vec()
    }
    fn cpuinfo(&self) -> Vec<u8> {
        b"processor\t: 0\n".repeat(300)
    }
    fn meminfo(&self) -> Vec<u8> {
        b"MemTotal:       262144 kB\n".to_vec()
    }
    fn uptime(&self) -> Vec<u8> {
        let reads = self.reads.fetch_add(1, Ordering::Relaxed);
        format!("{reads}.00 0.00\n").into_bytes()
    }
}

fn read_all(ctx: &common::Ctx, path: &[u8], piece: usize) -> Vec<u8> {
    let fd = ctx.open(path, OpenFlags::O_RDONLY, 0).unwrap();
    let mut contents = Vec::new();
    let mut buffer = vec![0u8; piece];
    loop {
        let count = ctx.read(fd, &mut buffer).unwrap();
        if count == 0 {
            break;
        }
        contents.extend_from_slice(&buffer[..count]);
    }
    ctx.close(fd).unwrap();
    contents
}

fn with_procfs() -> common::Ctx {
    let ctx = context();
    ctx.mkdir(b"/proc", 0o555).unwrap();
    ctx.mount(b"/proc", Procfs::new(Arc::new(Fake::default()), clock()))
        .unwrap();
    ctx
}

#[test]
fn files_are_generated_from_the_source_and_read_in_pieces() {
    let ctx = with_procfs();
    assert_eq!(
        read_all(&ctx, b"/proc/self/maps", 4096),
        b"00100000-00200000 r-xp 00000000 00:00 0          [kernel]\n"
    );
    assert_eq!(
        read_all(&ctx, b"/proc/cpuinfo", 7),
        b"processor\t: 0\n".repeat(300)
    );
    assert_eq!(
        read_all(&ctx, b"/proc/meminfo", 4096),
        b"MemTotal:       262144 kB\n"
    );
    // Generated again at every read.
    let first = read_all(&ctx, b"/proc/uptime", 4096);
    let second = read_all(&ctx, b"/proc/uptime", 4096);
    assert_ne!(first, second);
    // Linux reports size 0 for these files.
    assert_eq!(ctx.stat(b"/proc/cpuinfo").unwrap().size, 0);
}

#[test]
fn the_tree_is_fixed_and_dotdot_leads_back() {
    let ctx = with_procfs();
    assert_eq!(
        ctx.open(b"/proc/meminfo", OpenFlags::O_WRONLY, 0)
            .and_then(|fd| ctx.write(fd, b"x")),
        Err(Errno::EACCES)
    );
    assert_eq!(ctx.unlink(b"/proc/meminfo"), Err(Errno::EPERM));
    assert_eq!(ctx.mkdir(b"/proc/new", 0o755), Err(Errno::EPERM));
    assert_eq!(
        ctx.stat(b"/proc/self").unwrap().file_type(),
        Some(FileType::Directory)
    );
    assert!(ctx.stat(b"/proc/self/../cpuinfo").is_ok());
    ctx.chdir(b"/proc/self").unwrap();
    assert_eq!(ctx.getcwd().unwrap(), b"/proc/self");
    assert!(ctx.stat(b"../../proc/uptime").is_ok());
    let fd = ctx.open(b"/proc", OpenFlags::O_DIRECTORY, 0).unwrap();
    let names: Vec<Vec<u8>> = ctx
        .getdents(fd, 100)
        .unwrap()
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    assert_eq!(
        names,
        [&b"."[..], b"..", b"cpuinfo", b"meminfo", b"self", b"uptime"]
    );
}

/// A source whose `/proc/self/fd` is a context's descriptors.
#[derive(Default)]
struct WithFds {
    context: std::sync::OnceLock<std::sync::Weak<common::Ctx>>,
}

impl ProcSource for WithFds {
    fn maps(&self) -> Vec<u8> {
        Vec::new()
    }
    fn cpuinfo(&self) -> Vec<u8> {
        Vec::new()
    }
    fn meminfo(&self) -> Vec<u8> {
        Vec::new()
    }
    fn uptime(&self) -> Vec<u8> {
        Vec::new()
    }
    fn fds(&self) -> Vec<i32> {
        let context = self.context.get().and_then(|weak| weak.upgrade());
        context.map_or_else(Vec::new, |context| {
            context.open_fds().into_iter().map(|fd| fd.raw()).collect()
        })
    }
    fn fd_target(&self, fd: i32) -> Option<Vec<u8>> {
        let context = self.context.get()?.upgrade()?;
        context.fd_target(keel_vfs::Fd::from_raw(fd).ok()?).ok()
    }
}

fn names_in(ctx: &common::Ctx, path: &[u8]) -> Vec<Vec<u8>> {
    let fd = ctx
        .open(path, OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY, 0)
        .unwrap();
    let mut names: Vec<Vec<u8>> = Vec::new();
    loop {
        let entries = ctx.getdents(fd, 2).unwrap();
        if entries.is_empty() {
            break;
        }
        names.extend(entries.into_iter().map(|entry| entry.name));
    }
    ctx.close(fd).unwrap();
    names
}

#[test]
fn proc_self_fd_follows_opens_closes_renames_and_unlinks() {
    let ctx = Arc::new(context());
    let source = Arc::new(WithFds::default());
    source.context.set(Arc::downgrade(&ctx)).unwrap();
    ctx.mkdir(b"/proc", 0o555).unwrap();
    ctx.mount(b"/proc", Procfs::new(source, clock())).unwrap();
    ctx.mkdir(b"/etc", 0o755).unwrap();

    // Before fd 1 exists its link is absent, and stays absent for no stale reason.
    assert_eq!(ctx.readlink(b"/proc/self/fd/1"), Err(Errno::ENOENT));
    let file = ctx
        .open(
            b"/etc/config",
            OpenFlags::O_RDWR | OpenFlags::O_CREAT,
            0o644,
        )
        .unwrap();
    ctx.chdir(b"/etc").unwrap();
    let directory = ctx.open(b".", OpenFlags::O_RDONLY, 0).unwrap();
    let null_dir = ctx.open(b"/proc/self/fd", OpenFlags::O_RDONLY, 0).unwrap();
    assert_eq!((file.raw(), directory.raw(), null_dir.raw()), (0, 1, 2));
    assert_eq!(ctx.readlink(b"/proc/self/fd/0").unwrap(), b"/etc/config");
    assert_eq!(ctx.readlink(b"/proc/self/fd/1").unwrap(), b"/etc");
    assert_eq!(ctx.readlink(b"/proc/self/fd/2").unwrap(), b"/proc/self/fd");
    assert_eq!(
        ctx.lstat(b"/proc/self/fd/0").unwrap().file_type(),
        Some(FileType::Symlink)
    );
    // The listing, two entries per call (the cookie survives the pieces).
    let mut expected: Vec<Vec<u8>> = [".", "..", "0", "1"]
        .iter()
        .map(|name| name.as_bytes().to_vec())
        .collect();
    expected.push(b"2".to_vec());
    // names_in opens one more descriptor (3) for the listing itself.
    expected.push(b"3".to_vec());
    assert_eq!(names_in(&ctx, b"/proc/self/fd"), expected);
    assert_eq!(ctx.readlink(b"/proc/self/fd/00"), Err(Errno::ENOENT));
    assert_eq!(ctx.readlink(b"/proc/self/fd/x"), Err(Errno::ENOENT));

    // A rename shows; following the link reaches the file.
    ctx.rename(b"/etc/config", b"/etc/settings").unwrap();
    assert_eq!(ctx.readlink(b"/proc/self/fd/0").unwrap(), b"/etc/settings");
    ctx.write(file, b"hello").unwrap();
    assert_eq!(ctx.stat(b"/proc/self/fd/0").unwrap().size, 5);
    // An unlinked file is "(deleted)".
    let ino = ctx.fstat(file).unwrap().ino;
    ctx.unlink(b"/etc/settings").unwrap();
    assert_eq!(
        ctx.readlink(b"/proc/self/fd/0").unwrap(),
        format!("/etc/#{ino} (deleted)").into_bytes()
    );
    // A closed descriptor's link goes at once, and a new file under its number shows.
    ctx.close(file).unwrap();
    assert_eq!(ctx.readlink(b"/proc/self/fd/0"), Err(Errno::ENOENT));
    let other = ctx
        .open(b"/etc/other", OpenFlags::O_RDWR | OpenFlags::O_CREAT, 0o644)
        .unwrap();
    assert_eq!(other.raw(), 0);
    assert_eq!(ctx.readlink(b"/proc/self/fd/0").unwrap(), b"/etc/other");
}
