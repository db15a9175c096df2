//! devfs mounted at /dev: what each node reads and writes, their numbers, the fixed
//! directory, and random devices with and without an entropy source.

mod common;

use common::{clock, context};
use keel_vfs::devfs::{Console, Devfs, Entropy};
use keel_vfs::{Errno, FileType, OpenFlags};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Recorder(Mutex<Vec<u8>>);

impl Console for Recorder {
    fn write(&self, bytes: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(bytes);
    }
}

/// Counts up: distinct bytes on every call.
#[derive(Default)]
struct Counter(AtomicU8);

impl Entropy for Counter {
    fn fill(&self, buffer: &mut [u8]) -> bool {
        for byte in buffer {
            *byte = self.0.fetch_add(1, Ordering::Relaxed) | 0x80;
        }
        true
    }
}

struct Nothing;

impl Entropy for Nothing {
    fn fill(&self, _buffer: &mut [u8]) -> bool {
        false
    }
}

fn with_devfs(entropy: Arc<dyn Entropy>) -> (common::Ctx, Arc<Recorder>) {
    let ctx = context();
    let console = Arc::new(Recorder::default());
    ctx.mkdir(b"/dev", 0o755).unwrap();
    ctx.mount(b"/dev", Devfs::new(console.clone(), entropy, clock()))
        .unwrap();
    (ctx, console)
}

#[test]
fn each_node_reads_and_writes_as_linux_does() {
    let (ctx, console) = with_devfs(Arc::new(Counter::default()));
    let rw = OpenFlags::O_RDWR;
    let mut buffer = [0xaau8; 64];

    let null = ctx.open(b"/dev/null", rw | OpenFlags::O_TRUNC, 0).unwrap();
    assert_eq!(ctx.write(null, b"gone"), Ok(4));
    assert_eq!(ctx.read(null, &mut buffer), Ok(0));

    let zero = ctx.open(b"/dev/zero", rw, 0).unwrap();
    assert_eq!(ctx.read(zero, &mut buffer), Ok(64));
    assert_eq!(buffer, [0; 64]);
    assert_eq!(ctx.write(zero, b"x"), Ok(1));

    let full = ctx.open(b"/dev/full", rw, 0).unwrap();
    assert_eq!(ctx.write(full, b"x"), Err(Errno::ENOSPC));
    buffer.fill(1);
    assert_eq!(ctx.read(full, &mut buffer), Ok(64));
    assert_eq!(buffer, [0; 64]);

    let urandom = ctx.open(b"/dev/urandom", OpenFlags::O_RDONLY, 0).unwrap();
    let mut first = [0u8; 32];
    let mut second = [0u8; 32];
    assert_eq!(ctx.read(urandom, &mut first), Ok(32));
    assert_eq!(ctx.read(urandom, &mut second), Ok(32));
    assert_ne!(first, second);
    assert!(
        first.iter().all(|&byte| byte & 0x80 != 0),
        "from the source"
    );

    let console_fd = ctx.open(b"/dev/console", OpenFlags::O_WRONLY, 0).unwrap();
    assert_eq!(ctx.write(console_fd, b"to the console\n"), Ok(15));
    assert_eq!(*console.0.lock().unwrap(), b"to the console\n");
    let appending = ctx
        .open(
            b"/dev/console",
            OpenFlags::O_WRONLY | OpenFlags::O_APPEND,
            0,
        )
        .unwrap();
    assert_eq!(ctx.write(appending, b"more"), Ok(4));
    assert_eq!(*console.0.lock().unwrap(), b"to the console\nmore");
}

#[test]
fn nodes_have_linux_numbers_and_the_directory_is_fixed() {
    let (ctx, _) = with_devfs(Arc::new(Counter::default()));
    for (name, major, minor) in [
        (&b"/dev/null"[..], 1, 3),
        (b"/dev/zero", 1, 5),
        (b"/dev/full", 1, 7),
        (b"/dev/random", 1, 8),
        (b"/dev/urandom", 1, 9),
        (b"/dev/console", 5, 1),
    ] {
        let stat = ctx.stat(name).unwrap();
        assert_eq!(stat.file_type(), Some(FileType::CharDevice));
        assert_eq!(stat.rdev, (major << 8) | minor, "{name:?}");
    }
    let fd = ctx.open(b"/dev", OpenFlags::O_DIRECTORY, 0).unwrap();
    let names: Vec<Vec<u8>> = ctx
        .getdents(fd, 100)
        .unwrap()
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    assert_eq!(
        names,
        [
            &b"."[..],
            b"..",
            b"console",
            b"full",
            b"null",
            b"random",
            b"urandom",
            b"zero"
        ]
    );
    assert_eq!(
        ctx.open(b"/dev/new", OpenFlags::O_CREAT | OpenFlags::O_RDWR, 0o644),
        Err(Errno::EPERM)
    );
    assert_eq!(ctx.unlink(b"/dev/null"), Err(Errno::EPERM));
    assert_eq!(ctx.mkdir(b"/dev/sub", 0o755), Err(Errno::EPERM));
    assert_eq!(ctx.stat(b"/dev/nothing"), Err(Errno::ENOENT));
    // `..` leaves the mount.
    ctx.chdir(b"/dev").unwrap();
    assert!(ctx.stat(b"../dev/null").is_ok());
    assert_eq!(ctx.getcwd().unwrap(), b"/dev");
}

#[test]
fn random_without_a_source_fails_instead_of_returning_predictable_bytes() {
    let (ctx, _) = with_devfs(Arc::new(Nothing));
    let fd = ctx.open(b"/dev/random", OpenFlags::O_RDONLY, 0).unwrap();
    let mut buffer = [0u8; 8];
    assert_eq!(ctx.read(fd, &mut buffer), Err(Errno::EIO));
}
