//! Readiness for `poll` through [`keel_vfs::Context::poll`]: files and devices are
//! always ready, closed descriptors report `POLLNVAL`, a poller sleeps until a
//! vnode's readiness changes (a test "doorbell" vnode on a mounted test filesystem,
//! rung by another thread), and a timeout ends a poll that nothing woke.

mod common;

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keel_hosted::StdParker;
use keel_vfs::fs::InodeNumber;
use keel_vfs::poll::PollRegistration;
use keel_vfs::{
    DirEntry, Errno, FileSystem, FileType, OpenFlags, PollEvents, PollFd, PollSleeper, PollWake,
    ReadinessQueue, Stat, StatFs, Timespec, Vnode,
};

/// A sleeper on a std condition variable.
#[derive(Default)]
struct Sleeper {
    state: Arc<Bell>,
}

#[derive(Default)]
struct Bell {
    woken: Mutex<bool>,
    condvar: Condvar,
}

impl PollWake for Bell {
    fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.condvar.notify_all();
    }
}

/// The clock of deadlines: nanoseconds since the first call.
fn now() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl PollSleeper for Sleeper {
    fn waker(&self) -> Arc<dyn PollWake> {
        self.state.clone()
    }

    fn sleep(&self, deadline: Option<u64>) -> bool {
        let mut woken = self.state.woken.lock().unwrap();
        while !*woken {
            match deadline {
                None => woken = self.state.condvar.wait(woken).unwrap(),
                Some(deadline) => {
                    let left = deadline.saturating_sub(now());
                    if left == 0 {
                        return false;
                    }
                    woken = self
                        .state
                        .condvar
                        .wait_timeout(woken, Duration::from_nanos(left))
                        .unwrap()
                        .0;
                }
            }
        }
        *woken = false;
        true
    }

    fn now_nanos(&self) -> u64 {
        now()
    }
}

/// A vnode that is readable once rung.
#[derive(Default)]
struct Doorbell {
    rung: AtomicBool,
    queue: ReadinessQueue<StdParker>,
}

impl Doorbell {
    fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        self.queue.wake_all();
    }
}

impl Vnode for Doorbell {
    fn ino(&self) -> InodeNumber {
        2
    }
    fn file_type(&self) -> FileType {
        FileType::CharDevice
    }
    fn getattr(&self) -> keel_vfs::Result<Stat> {
        Ok(Stat {
            ino: 2,
            mode: FileType::CharDevice.mode_bits() | 0o666,
            nlink: 1,
            ..Stat::default()
        })
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> keel_vfs::Result<usize> {
        Ok(0)
    }
    fn set_times(&self, _: Option<Timespec>, _: Option<Timespec>) -> keel_vfs::Result<()> {
        Ok(())
    }
    fn poll(&self, registration: Option<&PollRegistration<'_>>) -> PollEvents {
        if let Some(registration) = registration {
            registration.wait_on(&self.queue);
        }
        if self.rung.load(Ordering::SeqCst) {
            PollEvents::POLLIN | PollEvents::POLLRDNORM
        } else {
            PollEvents::NONE
        }
    }
}

/// A directory holding the doorbell as `bell`.
struct BellDir(Arc<Doorbell>);

impl Vnode for BellDir {
    fn ino(&self) -> InodeNumber {
        1
    }
    fn file_type(&self) -> FileType {
        FileType::Directory
    }
    fn getattr(&self) -> keel_vfs::Result<Stat> {
        Ok(Stat {
            ino: 1,
            mode: FileType::Directory.mode_bits() | 0o755,
            nlink: 2,
            ..Stat::default()
        })
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn lookup(&self, name: &[u8]) -> keel_vfs::Result<Arc<dyn Vnode>> {
        match name {
            b"bell" => Ok(self.0.clone()),
            _ => Err(Errno::ENOENT),
        }
    }
    fn readdir(&self, _cookie: u64, _max: usize) -> keel_vfs::Result<Vec<DirEntry>> {
        Ok(Vec::new())
    }
    fn set_times(&self, _: Option<Timespec>, _: Option<Timespec>) -> keel_vfs::Result<()> {
        Ok(())
    }
}

struct BellFs(Arc<BellDir>);

impl FileSystem for BellFs {
    fn root(&self) -> Arc<dyn Vnode> {
        self.0.clone()
    }
    fn statfs(&self) -> keel_vfs::Result<StatFs> {
        Ok(StatFs::default())
    }
    fn sync(&self) -> keel_vfs::Result<()> {
        Ok(())
    }
}

/// A context with a doorbell at `/bells/bell`.
fn with_doorbell() -> (common::Ctx, Arc<Doorbell>) {
    let context = common::context();
    let bell = Arc::new(Doorbell::default());
    context.mkdir(b"/bells", 0o755).unwrap();
    context
        .mount(b"/bells", Arc::new(BellFs(Arc::new(BellDir(bell.clone())))))
        .unwrap();
    (context, bell)
}

fn entry(fd: i32, events: PollEvents) -> PollFd {
    PollFd {
        fd,
        events,
        revents: PollEvents::NONE,
    }
}

#[test]
fn files_are_ready_closed_descriptors_are_invalid_and_negative_ones_skipped() {
    let context = common::context();
    let file = context
        .open(b"/file", OpenFlags::O_RDWR | OpenFlags::O_CREAT, 0o644)
        .unwrap();
    let mut fds = [
        entry(file.raw(), PollEvents::POLLIN | PollEvents::POLLOUT),
        entry(file.raw(), PollEvents::POLLOUT),
        entry(77, PollEvents::POLLIN),
        entry(-1, PollEvents::POLLIN),
    ];
    assert_eq!(context.poll(&mut fds, 0, &Sleeper::default()), Ok(3));
    assert_eq!(fds[0].revents, PollEvents::POLLIN | PollEvents::POLLOUT);
    assert_eq!(fds[1].revents, PollEvents::POLLOUT);
    assert_eq!(fds[2].revents, PollEvents::POLLNVAL);
    assert_eq!(fds[3].revents, PollEvents::NONE);
    let mut too_many = vec![entry(-1, PollEvents::POLLIN); 2000];
    assert_eq!(
        context.poll(&mut too_many, 0, &Sleeper::default()),
        Err(Errno::EINVAL)
    );
}

#[test]
fn a_poller_sleeps_until_the_vnode_becomes_ready() {
    let (context, bell) = with_doorbell();
    let fd = context
        .open(b"/bells/bell", OpenFlags::O_RDONLY, 0)
        .unwrap();
    // Not ready: a zero timeout returns at once with nothing.
    let mut fds = [entry(fd.raw(), PollEvents::POLLIN)];
    assert_eq!(context.poll(&mut fds, 0, &Sleeper::default()), Ok(0));
    assert_eq!(
        bell.queue.len(),
        0,
        "a poll that cannot sleep registers nothing"
    );

    let context = Arc::new(context);
    let returned = Arc::new(AtomicBool::new(false));
    let poller = {
        let (context, returned) = (context.clone(), returned.clone());
        std::thread::spawn(move || {
            let mut fds = [entry(fd.raw(), PollEvents::POLLIN)];
            let result = context.poll(&mut fds, -1, &Sleeper::default());
            returned.store(true, Ordering::SeqCst);
            (result, fds[0].revents)
        })
    };
    while bell.queue.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !returned.load(Ordering::SeqCst),
        "poll returned before the bell rang"
    );
    bell.ring();
    let (result, revents) = poller.join().unwrap();
    assert_eq!(result, Ok(1));
    assert_eq!(revents, PollEvents::POLLIN);
    // The poller is gone: its registration is dead.
    assert_eq!(bell.queue.len(), 0);
}

#[test]
fn a_timeout_ends_a_poll_that_nothing_woke() {
    let (context, bell) = with_doorbell();
    let fd = context
        .open(b"/bells/bell", OpenFlags::O_RDONLY, 0)
        .unwrap();
    let mut fds = [entry(fd.raw(), PollEvents::POLLIN)];
    assert_eq!(context.poll(&mut fds, 10, &Sleeper::default()), Ok(0));
    assert_eq!(fds[0].revents, PollEvents::NONE);
    assert!(!bell.rung.load(Ordering::SeqCst));
}
