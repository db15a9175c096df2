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
