//! `fcntl` record locks through [`keel_vfs::Context::fcntl_lock`]:
//! - a property test against Linux: random OFD lock sequences on four open file
//!   descriptions of one file, run on Keel and on a real file with Linux's
//!   `F_OFD_SETLK`/`F_OFD_GETLK` (OFD locks conflict within one process, so Linux can
//!   be the oracle in one test process); results and `F_OFD_GETLK` answers must agree;
//! - POSIX owners (contexts): conflicts between two contexts, "closing any descriptor
//!   releases", a context's drop releases, and `F_SETLKW` sleeping until the holder
//!   unlocks, with a deadlock refused.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keel_hosted::StdParker;
use keel_vfs::{Context, Errno, Fd, Flock, LockCommand, LockKind, OpenFlags, Vfs};
use proptest::prelude::*;

fn flock(kind: LockKind, start: i64, len: i64) -> Flock {
    Flock {
        kind,
        whence: 0,
        start,
        len,
        pid: 0,
    }
}

fn rw() -> OpenFlags {
    OpenFlags::O_RDWR | OpenFlags::O_CREAT
}

/// One step: description `who` asks for `kind` on `start, len` (set or get).
#[derive(Debug, Clone)]
struct Step {
    who: usize,
    get: bool,
    kind: u8,
    start: i64,
    len: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..4usize,
        prop::bool::weighted(0.3),
        0..3u8,
        0..40i64,
        -8..24i64,
    )
        .prop_map(|(who, get, kind, start, len)| Step {
            who,
            get,
            kind,
            start,
            len,
        })
}

fn kind_of(raw: u8) -> LockKind {
    LockKind::from_raw(i16::from(raw)).unwrap()
}

/// Linux's answer to one step on descriptor `fd`: `Err(errno)` or the returned flock
/// as `(type, start, len, pid)` for a get.
fn linux_step(fd: i32, step: &Step) -> Result<Option<(i16, i64, i64, i32)>, i32> {
    // SAFETY: an all-zero `flock` is a valid value of the C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = i16::from(step.kind);
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_start = step.start;
    lock.l_len = step.len;
    let command = if step.get {
        libc::F_OFD_GETLK
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: `fd` is open and `lock` a valid, writable `flock`.
    let result = unsafe { libc::fcntl(fd, command, &mut lock) };
    if result < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(step
        .get
        .then_some((lock.l_type, lock.l_start, lock.l_len, lock.l_pid)))
}

fn keel_step(
    context: &Context<StdParker>,
    fd: Fd,
    step: &Step,
) -> Result<Option<(i16, i64, i64, i32)>, i32> {
    let mut lock = flock(kind_of(step.kind), step.start, step.len);
    let command = if step.get {
        LockCommand::OfdGet
    } else {
        LockCommand::OfdSet
    };
    context
        .fcntl_lock(fd, command, &mut lock)
        .map_err(Errno::raw)?;
    Ok(step
        .get
        .then_some((lock.kind.raw(), lock.start, lock.len, lock.pid)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn ofd_locks_agree_with_linux(steps in prop::collection::vec(step(), 1..40)) {
        let dir = std::env::temp_dir().join(format!("keel-vfs-locks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A fresh file per case, its descriptors closed however the case ends.
        let path = dir.join(format!("file-{}", CASE.fetch_add(1, Ordering::Relaxed)));
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        let linux = LinuxFds((0..4)
            // SAFETY: `c_path` is a NUL-terminated path.
            .map(|_| unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644) })
            .collect());
        assert!(linux.0.iter().all(|&fd| fd >= 0));
        let context = common::context();
        let keel: Vec<Fd> = (0..4).map(|_| context.open(b"/file", rw(), 0o644).unwrap()).collect();
        for step in &steps {
            let theirs = linux_step(linux.0[step.who], step);
            let ours = keel_step(&context, keel[step.who], step);
            prop_assert_eq!(ours, theirs, "step {:?}", step);
        }
        drop(linux);
        std::fs::remove_file(&path).unwrap();
    }
}

/// The case counter, for fresh file names.
static CASE: AtomicU64 = AtomicU64::new(0);

/// Linux descriptors, closed on drop.
struct LinuxFds(Vec<i32>);

impl Drop for LinuxFds {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: `fd` was opened by this test and is closed once.
            unsafe { libc::close(fd) };
        }
    }
}

/// Two contexts (processes) over one VFS.
fn two_contexts() -> (Arc<Context<StdParker>>, Arc<Context<StdParker>>) {
    let first = common::context();
    let vfs: Arc<Vfs<StdParker>> = first.vfs().clone();
    let file = first.open(b"/file", rw(), 0o644).unwrap();
    first.close(file).unwrap();
    (Arc::new(first), Arc::new(Context::new(vfs)))
}

#[test]
fn posix_owners_conflict_and_report_their_id() {
    let (a, b) = two_contexts();
    let fa = a.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    let fb = b.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    a.fcntl_lock(fa, LockCommand::Set, &mut flock(LockKind::Write, 0, 10))
        .unwrap();
    assert_eq!(
        b.fcntl_lock(fb, LockCommand::Set, &mut flock(LockKind::Read, 5, 1)),
        Err(Errno::EAGAIN)
    );
    let mut probe = flock(LockKind::Read, 0, 0);
    b.fcntl_lock(fb, LockCommand::Get, &mut probe).unwrap();
    assert_eq!(
        (probe.kind, probe.start, probe.len, probe.pid),
        (LockKind::Write, 0, 10, a.id() as i32)
    );
    // The owner itself sees no conflict.
    let mut own = flock(LockKind::Write, 0, 0);
    a.fcntl_lock(fa, LockCommand::Get, &mut own).unwrap();
    assert_eq!(own.kind, LockKind::Unlock);
    b.fcntl_lock(fb, LockCommand::Set, &mut flock(LockKind::Read, 10, 5))
        .unwrap();
}

#[test]
fn closing_any_descriptor_of_the_file_releases_a_process_locks() {
    let (a, b) = two_contexts();
    let first = a.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    let second = a.open(b"/file", OpenFlags::O_RDONLY, 0).unwrap();
    let fb = b.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    a.fcntl_lock(first, LockCommand::Set, &mut flock(LockKind::Write, 0, 0))
        .unwrap();
    a.close(second).unwrap();
    b.fcntl_lock(fb, LockCommand::Set, &mut flock(LockKind::Write, 0, 0))
        .unwrap();
    // And dropping a context releases what it held.
    drop(b);
    a.fcntl_lock(first, LockCommand::Set, &mut flock(LockKind::Write, 0, 0))
        .unwrap();
}

#[test]
fn an_ofd_lock_lives_as_long_as_its_description() {
    let context = common::context();
    let first = context.open(b"/file", rw(), 0o644).unwrap();
    let copy = context.dup(first).unwrap();
    let other = context.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    context
        .fcntl_lock(
            first,
            LockCommand::OfdSet,
            &mut flock(LockKind::Write, 0, 0),
        )
        .unwrap();
    context.close(first).unwrap();
    // The duplicate still refers to the description: the lock stays.
    assert_eq!(
        context.fcntl_lock(other, LockCommand::OfdSet, &mut flock(LockKind::Read, 0, 1)),
        Err(Errno::EAGAIN)
    );
    context.close(copy).unwrap();
    context
        .fcntl_lock(other, LockCommand::OfdSet, &mut flock(LockKind::Read, 0, 1))
        .unwrap();
}

#[test]
fn access_mode_whence_and_bad_arguments() {
    let context = common::context();
    let fd = context.open(b"/file", rw(), 0o644).unwrap();
    context.write(fd, &[7; 100]).unwrap();
    let reader = context.open(b"/file", OpenFlags::O_RDONLY, 0).unwrap();
    assert_eq!(
        context.fcntl_lock(reader, LockCommand::Set, &mut flock(LockKind::Write, 0, 1)),
        Err(Errno::EBADF)
    );
    let mut ofd_with_pid = flock(LockKind::Read, 0, 1);
    ofd_with_pid.pid = 5;
    assert_eq!(
        context.fcntl_lock(fd, LockCommand::OfdSet, &mut ofd_with_pid),
        Err(Errno::EINVAL)
    );
    let mut bad_whence = flock(LockKind::Read, 0, 1);
    bad_whence.whence = 3;
    assert_eq!(
        context.fcntl_lock(fd, LockCommand::Set, &mut bad_whence),
        Err(Errno::EINVAL)
    );
    // SEEK_END: the last 10 bytes of the 100, held by one description, seen by another.
    let mut tail = flock(LockKind::Write, -10, 10);
    tail.whence = 2;
    context
        .fcntl_lock(fd, LockCommand::OfdSet, &mut tail)
        .unwrap();
    let mut probe = flock(LockKind::Read, 0, 0);
    context
        .fcntl_lock(reader, LockCommand::OfdGet, &mut probe)
        .unwrap();
    assert_eq!((probe.start, probe.len, probe.pid), (90, 10, -1));
    assert_eq!(
        context.fcntl_lock(fd, LockCommand::Get, &mut flock(LockKind::Unlock, 0, 0)),
        Err(Errno::EINVAL)
    );
}

#[test]
fn a_waiting_locker_runs_once_the_holder_unlocks_and_a_deadlock_is_refused() {
    let (a, b) = two_contexts();
    let other = a.open(b"/other", rw(), 0o644).unwrap();
    let fa = a.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    let fb = b.open(b"/file", OpenFlags::O_RDWR, 0).unwrap();
    let fb_other = b.open(b"/other", OpenFlags::O_RDWR, 0).unwrap();
    a.fcntl_lock(fa, LockCommand::Set, &mut flock(LockKind::Write, 0, 0))
        .unwrap();
    b.fcntl_lock(
        fb_other,
        LockCommand::Set,
        &mut flock(LockKind::Write, 0, 0),
    )
    .unwrap();
    let locked = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (b, locked) = (b.clone(), locked.clone());
        std::thread::spawn(move || {
            let result = b.fcntl_lock(fb, LockCommand::SetWait, &mut flock(LockKind::Write, 0, 0));
            locked.store(true, Ordering::SeqCst);
            result
        })
    };
    // Wait until B sleeps on A: then A waiting on B's lock would close a cycle.
    while a.vfs().lock_sleepers() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let deadlock = a.fcntl_lock(
        other,
        LockCommand::SetWait,
        &mut flock(LockKind::Write, 0, 0),
    );
    assert_eq!(deadlock, Err(Errno::EDEADLK));
    assert!(
        !locked.load(Ordering::SeqCst),
        "B got the lock while A held it"
    );
    a.fcntl_lock(fa, LockCommand::Set, &mut flock(LockKind::Unlock, 0, 0))
        .unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(()));
    assert!(locked.load(Ordering::SeqCst));
}
