//! `unistd.h`, `fcntl.h` and `sys/stat.h` over a [`Files`]: Keel's VFS [`Context`]
//! (every `Context` is one), so a C `read` is a function call into the VFS, with no
//! system call.
//!
//! Each function returns what glibc's does (-1 with `errno` set on failure) and has
//! its `*64` alias: on x86-64 `off_t` is already 64 bits, so the two are one function,
//! as in glibc. `struct stat` is written in the x86-64 kernel layout glibc uses (144
//! bytes).
//!
//! # Safety
//! Each `unsafe extern "C"` function's contract is the C function's own (the
//! pointers C says are valid are valid, strings are NUL-terminated), so the
//! functions carry no `# Safety` section of their own.

#![allow(clippy::missing_safety_doc)]

use alloc::vec::Vec;
use core::ffi::{c_char, c_int, c_void};

use keel_elf::ExportedSymbols;
use keel_lfmutex::Parker;
use keel_vfs::{
    Context, Errno, FcntlCommand, Fd, Flock, LockCommand, LockKind, OpenFlags, Stat, TimeUpdate,
    Whence,
};

use crate::exports::export;
use crate::string::bytes;

/// The file calls the libc makes, in the C calls' own terms (numbers for descriptors,
/// flags and whence) with Linux's errno values.
pub trait Files: Sync {
    /// `open(path, flags, mode)`.
    fn open(&self, path: &[u8], flags: i32, mode: u32) -> Result<i32, Errno>;
    /// `close(fd)`.
    fn close(&self, fd: i32) -> Result<(), Errno>;
    /// `read(fd, buf)`.
    fn read(&self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno>;
    /// `write(fd, buf)`.
    fn write(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno>;
    /// `pread(fd, buf, offset)`.
    fn pread(&self, fd: i32, buf: &mut [u8], offset: i64) -> Result<usize, Errno>;
    /// `pwrite(fd, buf, offset)`.
    fn pwrite(&self, fd: i32, buf: &[u8], offset: i64) -> Result<usize, Errno>;
    /// `lseek(fd, offset, whence)`.
    fn lseek(&self, fd: i32, offset: i64, whence: i32) -> Result<i64, Errno>;
    /// `stat(path)` (or `lstat` when not `follow`).
    fn stat(&self, path: &[u8], follow: bool) -> Result<Stat, Errno>;
    /// `fstat(fd)`.
    fn fstat(&self, fd: i32) -> Result<Stat, Errno>;
    /// `unlink(path)`.
    fn unlink(&self, path: &[u8]) -> Result<(), Errno>;
    /// `rmdir(path)`.
    fn rmdir(&self, path: &[u8]) -> Result<(), Errno>;
    /// `mkdir(path, mode)`.
    fn mkdir(&self, path: &[u8], mode: u32) -> Result<(), Errno>;
    /// `rename(old, new)`.
    fn rename(&self, old: &[u8], new: &[u8]) -> Result<(), Errno>;
    /// `access(path, mode)`.
    fn access(&self, path: &[u8], mode: u32) -> Result<(), Errno>;
    /// `getcwd()`.
    fn getcwd(&self) -> Result<Vec<u8>, Errno>;
    /// `readlink(path)`.
    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>, Errno>;
    /// `ftruncate(fd, length)`.
    fn ftruncate(&self, fd: i32, length: i64) -> Result<(), Errno>;
    /// `fsync(fd)`, or `fdatasync(fd)` when `data_only`.
    fn fsync(&self, fd: i32, data_only: bool) -> Result<(), Errno>;
    /// `fcntl(fd, cmd, arg)` for the commands that take an integer.
    fn fcntl(&self, fd: i32, cmd: i32, arg: u64) -> Result<i32, Errno>;
    /// `fcntl(fd, cmd, &lock)` for the record-lock commands.
    fn fcntl_lock(&self, fd: i32, command: LockCommand, lock: &mut Flock) -> Result<(), Errno>;
    /// `utimensat(AT_FDCWD, path, times, flags)`.
    fn utimens(
        &self,
        path: &[u8],
        atime: TimeUpdate,
        mtime: TimeUpdate,
        flags: u32,
    ) -> Result<(), Errno>;
}

impl<P: Parker + 'static> Files for Context<P> {
    fn open(&self, path: &[u8], flags: i32, mode: u32) -> Result<i32, Errno> {
        Context::open(self, path, OpenFlags::from_bits(flags as u32), mode).map(Fd::raw)
    }
    fn close(&self, fd: i32) -> Result<(), Errno> {
        Context::close(self, Fd::from_raw(fd)?)
    }
    fn read(&self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        Context::read(self, Fd::from_raw(fd)?, buf)
    }
    fn write(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        Context::write(self, Fd::from_raw(fd)?, buf)
    }
    fn pread(&self, fd: i32, buf: &mut [u8], offset: i64) -> Result<usize, Errno> {
        Context::pread(self, Fd::from_raw(fd)?, buf, offset)
    }
    fn pwrite(&self, fd: i32, buf: &[u8], offset: i64) -> Result<usize, Errno> {
        Context::pwrite(self, Fd::from_raw(fd)?, buf, offset)
    }
    fn lseek(&self, fd: i32, offset: i64, whence: i32) -> Result<i64, Errno> {
        let position = Context::lseek(self, Fd::from_raw(fd)?, offset, Whence::from_raw(whence)?)?;
        i64::try_from(position).map_err(|_| Errno::EOVERFLOW)
    }
    fn stat(&self, path: &[u8], follow: bool) -> Result<Stat, Errno> {
        if follow {
            Context::stat(self, path)
        } else {
            Context::lstat(self, path)
        }
    }
    fn fstat(&self, fd: i32) -> Result<Stat, Errno> {
        Context::fstat(self, Fd::from_raw(fd)?)
    }
    fn unlink(&self, path: &[u8]) -> Result<(), Errno> {
        Context::unlink(self, path)
    }
    fn rmdir(&self, path: &[u8]) -> Result<(), Errno> {
        Context::rmdir(self, path)
    }
    fn mkdir(&self, path: &[u8], mode: u32) -> Result<(), Errno> {
        Context::mkdir(self, path, mode)
    }
    fn rename(&self, old: &[u8], new: &[u8]) -> Result<(), Errno> {
        Context::rename(self, old, new)
    }
    fn access(&self, path: &[u8], mode: u32) -> Result<(), Errno> {
        Context::access(self, path, mode)
    }
    fn getcwd(&self) -> Result<Vec<u8>, Errno> {
        Context::getcwd(self)
    }
    fn readlink(&self, path: &[u8]) -> Result<Vec<u8>, Errno> {
        Context::readlink(self, path)
    }
    fn ftruncate(&self, fd: i32, length: i64) -> Result<(), Errno> {
        Context::ftruncate(self, Fd::from_raw(fd)?, length)
    }
    fn fsync(&self, fd: i32, data_only: bool) -> Result<(), Errno> {
        if data_only {
            Context::fdatasync(self, Fd::from_raw(fd)?)
        } else {
            Context::fsync(self, Fd::from_raw(fd)?)
        }
    }
    fn fcntl(&self, fd: i32, cmd: i32, arg: u64) -> Result<i32, Errno> {
        Context::fcntl(self, Fd::from_raw(fd)?, FcntlCommand::from_raw(cmd, arg)?)
    }
    fn fcntl_lock(&self, fd: i32, command: LockCommand, lock: &mut Flock) -> Result<(), Errno> {
        Context::fcntl_lock(self, Fd::from_raw(fd)?, command, lock)
    }
    fn utimens(
        &self,
        path: &[u8],
        atime: TimeUpdate,
        mtime: TimeUpdate,
        flags: u32,
    ) -> Result<(), Errno> {
        Context::utimensat(self, path, atime, mtime, flags)
    }
}

/// The installed files, or `ENOSYS` without any.
fn files() -> Result<&'static dyn Files, Errno> {
    crate::files().ok_or(Errno::ENOSYS)
}

/// A C result: the value, or -1 with `errno` set.
fn c_result<T>(result: Result<T, Errno>, failed: T) -> T {
    result.unwrap_or_else(|errno| {
        crate::set_errno(errno.raw());
        failed
    })
}

/// `int open(const char *, int, ...)`: the mode is the third argument when `O_CREAT`
/// or `O_TMPFILE` is given; as an integer it arrives in the same register either way.
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: u32) -> c_int {
    // SAFETY: C's contract: a NUL-terminated path.
    let path = unsafe { bytes(path) };
    c_result(files().and_then(|files| files.open(path, flags, mode)), -1)
}

/// `int openat(int dirfd, const char *, int, ...)`: only `AT_FDCWD` or an absolute
/// path so far (`EBADF`... `ENOSYS` for a directory descriptor).
pub unsafe extern "C" fn openat(
    directory: c_int,
    path: *const c_char,
    flags: c_int,
    mode: u32,
) -> c_int {
    // SAFETY: C's contract.
    let bytes_of_path = unsafe { bytes(path) };
    if directory != AT_FDCWD && bytes_of_path.first() != Some(&b'/') {
        crate::set_errno(Errno::ENOSYS.raw());
        return -1;
    }
    // SAFETY: as above.
    unsafe { open(path, flags, mode) }
}

/// `AT_FDCWD`.
const AT_FDCWD: c_int = -100;

/// `int creat(const char *, mode_t)`.
pub unsafe extern "C" fn creat(path: *const c_char, mode: u32) -> c_int {
    let flags = (OpenFlags::O_CREAT | OpenFlags::O_WRONLY | OpenFlags::O_TRUNC).bits() as c_int;
    // SAFETY: C's contract.
    unsafe { open(path, flags, mode) }
}

/// `int close(int)`.
pub extern "C" fn close(fd: c_int) -> c_int {
    c_result(files().and_then(|files| files.close(fd)).map(|()| 0), -1)
}

/// A byte count as `ssize_t`.
fn count(result: Result<usize, Errno>) -> isize {
    c_result(result.map(|count| count as isize), -1)
}

/// `ssize_t read(int, void *, size_t)`.
pub unsafe extern "C" fn read(fd: c_int, buffer: *mut c_void, length: usize) -> isize {
    // SAFETY: C's contract: `length` writable bytes.
    let buffer = unsafe { slice_mut(buffer, length) };
    count(files().and_then(|files| files.read(fd, buffer)))
}

/// `ssize_t write(int, const void *, size_t)`.
pub unsafe extern "C" fn write(fd: c_int, buffer: *const c_void, length: usize) -> isize {
    // SAFETY: C's contract: `length` readable bytes.
    let buffer = unsafe { slice(buffer, length) };
    count(files().and_then(|files| files.write(fd, buffer)))
}

/// `ssize_t pread(int, void *, size_t, off_t)`.
pub unsafe extern "C" fn pread(
    fd: c_int,
    buffer: *mut c_void,
    length: usize,
    offset: i64,
) -> isize {
    // SAFETY: C's contract.
    let buffer = unsafe { slice_mut(buffer, length) };
    count(files().and_then(|files| files.pread(fd, buffer, offset)))
}

/// `ssize_t pwrite(int, const void *, size_t, off_t)`.
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buffer: *const c_void,
    length: usize,
    offset: i64,
) -> isize {
    // SAFETY: C's contract.
    let buffer = unsafe { slice(buffer, length) };
    count(files().and_then(|files| files.pwrite(fd, buffer, offset)))
}

/// `off_t lseek(int, off_t, int)`.
pub extern "C" fn lseek(fd: c_int, offset: i64, whence: c_int) -> i64 {
    c_result(
        files().and_then(|files| files.lseek(fd, offset, whence)),
        -1,
    )
}

/// `length` bytes at `buffer` (an empty slice for a zero length, whatever the pointer).
///
/// # Safety
/// For a non-zero length, `buffer` is valid for `length` bytes.
unsafe fn slice<'a>(buffer: *const c_void, length: usize) -> &'a [u8] {
    if length == 0 {
        return &[];
    }
    // SAFETY: per the contract.
    unsafe { core::slice::from_raw_parts(buffer.cast(), length) }
}

/// The same, writable.
///
/// # Safety
/// For a non-zero length, `buffer` is valid for writing `length` bytes.
unsafe fn slice_mut<'a>(buffer: *mut c_void, length: usize) -> &'a mut [u8] {
    if length == 0 {
        return &mut [];
    }
    // SAFETY: per the contract.
    unsafe { core::slice::from_raw_parts_mut(buffer.cast(), length) }
}

/// glibc's `struct stat` on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CStat {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_nlink`.
    pub nlink: u64,
    /// `st_mode`.
    pub mode: u32,
    /// `st_uid`.
    pub uid: u32,
    /// `st_gid`.
    pub gid: u32,
    /// Padding.
    pub pad0: i32,
    /// `st_rdev`.
    pub rdev: u64,
    /// `st_size`.
    pub size: i64,
    /// `st_blksize`.
    pub blksize: i64,
    /// `st_blocks`.
    pub blocks: i64,
    /// `st_atim` (seconds, nanoseconds).
    pub atime: [i64; 2],
    /// `st_mtim`.
    pub mtime: [i64; 2],
    /// `st_ctim`.
    pub ctime: [i64; 2],
    /// Reserved.
    pub reserved: [i64; 3],
}

const _: () = assert!(core::mem::size_of::<CStat>() == 144);

impl From<Stat> for CStat {
    fn from(stat: Stat) -> Self {
        CStat {
            dev: stat.dev,
            ino: stat.ino,
            nlink: stat.nlink,
            mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            pad0: 0,
            rdev: stat.rdev,
            size: stat.size as i64,
            blksize: i64::from(stat.blksize),
            blocks: stat.blocks as i64,
            atime: [stat.atime.sec, i64::from(stat.atime.nsec)],
            mtime: [stat.mtime.sec, i64::from(stat.mtime.nsec)],
            ctime: [stat.ctime.sec, i64::from(stat.ctime.nsec)],
            reserved: [0; 3],
        }
    }
}

/// Writes `stat` to `out`, or sets errno.
///
/// # Safety
/// `out` is writable for a `struct stat`.
unsafe fn put_stat(result: Result<Stat, Errno>, out: *mut CStat) -> c_int {
    match result {
        Ok(stat) => {
            // SAFETY: per the contract.
            unsafe { out.write_unaligned(CStat::from(stat)) };
            0
        }
        Err(errno) => {
            crate::set_errno(errno.raw());
            -1
        }
    }
}

/// `int stat(const char *, struct stat *)`.
pub unsafe extern "C" fn stat(path: *const c_char, out: *mut CStat) -> c_int {
    // SAFETY: C's contract.
    unsafe { put_stat(files().and_then(|files| files.stat(bytes(path), true)), out) }
}

/// `int lstat(const char *, struct stat *)`.
pub unsafe extern "C" fn lstat(path: *const c_char, out: *mut CStat) -> c_int {
    // SAFETY: C's contract.
    unsafe {
        put_stat(
            files().and_then(|files| files.stat(bytes(path), false)),
            out,
        )
    }
}

/// `int fstat(int, struct stat *)`.
pub unsafe extern "C" fn fstat(fd: c_int, out: *mut CStat) -> c_int {
    // SAFETY: C's contract.
    unsafe { put_stat(files().and_then(|files| files.fstat(fd)), out) }
}

/// A path call returning 0 or -1.
///
/// # Safety
/// `path` is NUL-terminated.
unsafe fn path_call(
    path: *const c_char,
    call: impl FnOnce(&dyn Files, &[u8]) -> Result<(), Errno>,
) -> c_int {
    // SAFETY: per the contract.
    let path = unsafe { bytes(path) };
    c_result(files().and_then(|files| call(files, path)).map(|()| 0), -1)
}

/// `int unlink(const char *)`.
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    // SAFETY: C's contract.
    unsafe { path_call(path, |files, path| files.unlink(path)) }
}

/// `int rmdir(const char *)`.
pub unsafe extern "C" fn rmdir(path: *const c_char) -> c_int {
    // SAFETY: C's contract.
    unsafe { path_call(path, |files, path| files.rmdir(path)) }
}

/// `int mkdir(const char *, mode_t)`.
pub unsafe extern "C" fn mkdir(path: *const c_char, mode: u32) -> c_int {
    // SAFETY: C's contract.
    unsafe { path_call(path, |files, path| files.mkdir(path, mode)) }
}

/// `int access(const char *, int)`.
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: C's contract.
    unsafe { path_call(path, |files, path| files.access(path, mode as u32)) }
}

/// `int rename(const char *, const char *)`.
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    // SAFETY: C's contract: both NUL-terminated.
    let new = unsafe { bytes(new) };
    // SAFETY: as above.
    unsafe { path_call(old, |files, old| files.rename(old, new)) }
}

/// Copies `bytes` and a NUL into `buffer` of `size` bytes; `ERANGE` if they do not fit.
///
/// # Safety
/// `buffer` is writable for `size` bytes.
unsafe fn copy_out(bytes: &[u8], buffer: *mut c_char, size: usize) -> Result<(), Errno> {
    if bytes.len() >= size {
        return Err(Errno::ERANGE);
    }
    // SAFETY: per the contract, and it fits.
    unsafe {
        keel_mem::copy_nonoverlapping(buffer.cast(), bytes.as_ptr(), bytes.len());
        *buffer.add(bytes.len()) = 0;
    }
    Ok(())
}

/// `char *getcwd(char *, size_t)`; a NULL buffer is malloc'd (the glibc extension).
pub unsafe extern "C" fn getcwd(buffer: *mut c_char, size: usize) -> *mut c_char {
    let path = match files().and_then(|files| files.getcwd()) {
        Ok(path) => path,
        Err(errno) => {
            crate::set_errno(errno.raw());
            return core::ptr::null_mut();
        }
    };
    let (buffer, size) = if buffer.is_null() {
        let size = if size == 0 { path.len() + 1 } else { size };
        (crate::malloc::malloc(size).cast::<c_char>(), size)
    } else {
        (buffer, size)
    };
    if buffer.is_null() {
        return buffer;
    }
    // SAFETY: `buffer` has `size` writable bytes (the caller's or ours).
    match unsafe { copy_out(&path, buffer, size) } {
        Ok(()) => buffer,
        Err(errno) => {
            crate::set_errno(errno.raw());
            core::ptr::null_mut()
        }
    }
}

/// `ssize_t readlink(const char *, char *, size_t)`: truncates silently, no NUL.
pub unsafe extern "C" fn readlink(path: *const c_char, buffer: *mut c_char, size: usize) -> isize {
    // SAFETY: C's contract.
    let path = unsafe { bytes(path) };
    match files().and_then(|files| files.readlink(path)) {
        Ok(target) => {
            let count = target.len().min(size);
            // SAFETY: C's contract: `size` writable bytes.
            unsafe { keel_mem::copy_nonoverlapping(buffer.cast(), target.as_ptr(), count) };
            count as isize
        }
        Err(errno) => {
            crate::set_errno(errno.raw());
            -1
        }
    }
}

/// `int ftruncate(int, off_t)`.
pub extern "C" fn ftruncate(fd: c_int, length: i64) -> c_int {
    c_result(
        files()
            .and_then(|files| files.ftruncate(fd, length))
            .map(|()| 0),
        -1,
    )
}

/// `int fsync(int)`.
pub extern "C" fn fsync(fd: c_int) -> c_int {
    c_result(
        files().and_then(|files| files.fsync(fd, false)).map(|()| 0),
        -1,
    )
}

/// `int fdatasync(int)`.
pub extern "C" fn fdatasync(fd: c_int) -> c_int {
    c_result(
        files().and_then(|files| files.fsync(fd, true)).map(|()| 0),
        -1,
    )
}

/// glibc's `struct flock` on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CFlock {
    /// `l_type`.
    pub kind: i16,
    /// `l_whence`.
    pub whence: i16,
    /// `l_start`.
    pub start: i64,
    /// `l_len`.
    pub len: i64,
    /// `l_pid`.
    pub pid: i32,
}

const _: () = assert!(core::mem::size_of::<CFlock>() == 32);

/// `int fcntl(int, int, ...)`: the argument, an integer or a `struct flock *`, comes
/// in the third argument register either way.
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, argument: u64) -> c_int {
    let Some(command) = LockCommand::from_raw(cmd) else {
        return c_result(files().and_then(|files| files.fcntl(fd, cmd, argument)), -1);
    };
    let pointer = argument as *mut CFlock;
    // SAFETY: C's contract: the lock commands pass a valid `struct flock *`.
    let raw = unsafe { pointer.read_unaligned() };
    let mut lock = match LockKind::from_raw(raw.kind) {
        Ok(kind) => Flock {
            kind,
            whence: raw.whence,
            start: raw.start,
            len: raw.len,
            pid: raw.pid,
        },
        Err(errno) => {
            crate::set_errno(errno.raw());
            return -1;
        }
    };
    match files().and_then(|files| files.fcntl_lock(fd, command, &mut lock)) {
        Ok(()) => {
            let out = CFlock {
                kind: lock.kind.raw(),
                whence: lock.whence,
                start: lock.start,
                len: lock.len,
                pid: lock.pid,
            };
            // SAFETY: as above; F_GETLK writes the answer back.
            unsafe { pointer.write_unaligned(out) };
            0
        }
        Err(errno) => {
            crate::set_errno(errno.raw());
            -1
        }
    }
}

/// `struct utimbuf`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Utimbuf {
    /// `actime`.
    pub actime: i64,
    /// `modtime`.
    pub modtime: i64,
}

/// `int utime(const char *, const struct utimbuf *)`: NULL sets both times to now.
pub unsafe extern "C" fn utime(path: *const c_char, times: *const Utimbuf) -> c_int {
    let (atime, mtime) = if times.is_null() {
        (TimeUpdate::Now, TimeUpdate::Now)
    } else {
        // SAFETY: C's contract.
        let times = unsafe { times.read() };
        let at = |sec: i64| TimeUpdate::Set(keel_vfs::Timespec { sec, nsec: 0 });
        (at(times.actime), at(times.modtime))
    };
    // SAFETY: C's contract.
    unsafe { path_call(path, |files, path| files.utimens(path, atime, mtime, 0)) }
}

/// `int utimensat(int dirfd, const char *, const struct timespec[2], int flags)`
/// (`AT_FDCWD` or an absolute path; `UTIME_NOW` and `UTIME_OMIT` as Linux's).
pub unsafe extern "C" fn utimensat(
    directory: c_int,
    path: *const c_char,
    times: *const [i64; 4],
    flags: c_int,
) -> c_int {
    // SAFETY: C's contract.
    if directory != AT_FDCWD && unsafe { bytes(path) }.first() != Some(&b'/') {
        crate::set_errno(Errno::ENOSYS.raw());
        return -1;
    }
    const UTIME_NOW: i64 = (1 << 30) - 1;
    const UTIME_OMIT: i64 = (1 << 30) - 2;
    let update = |sec: i64, nsec: i64| match nsec {
        UTIME_NOW => TimeUpdate::Now,
        UTIME_OMIT => TimeUpdate::Omit,
        _ => TimeUpdate::Set(keel_vfs::Timespec {
            sec,
            nsec: nsec.clamp(0, u32::MAX.into()) as u32,
        }),
    };
    let (atime, mtime) = if times.is_null() {
        (TimeUpdate::Now, TimeUpdate::Now)
    } else {
        // SAFETY: C's contract: two timespecs.
        let [asec, ansec, msec, mnsec] = unsafe { times.read() };
        if !(0..1_000_000_000).contains(&ansec) && ansec != UTIME_NOW && ansec != UTIME_OMIT
            || !(0..1_000_000_000).contains(&mnsec) && mnsec != UTIME_NOW && mnsec != UTIME_OMIT
        {
            crate::set_errno(Errno::EINVAL.raw());
            return -1;
        }
        (update(asec, ansec), update(msec, mnsec))
    };
    // SAFETY: C's contract.
    unsafe {
        path_call(path, |files, path| {
            files.utimens(path, atime, mtime, flags as u32)
        })
    }
}

/// Adds this module's functions to the export table.
pub(crate) fn register(table: &mut ExportedSymbols) {
    export(table, "utime", utime as *const () as usize);
    export(table, "utimensat", utimensat as *const () as usize);
    let functions: [(&str, usize); 43] = [
        ("open", open as *const () as usize),
        ("open64", open as *const () as usize),
        ("__open_2", open as *const () as usize),
        ("__open64_2", open as *const () as usize),
        ("openat", openat as *const () as usize),
        ("openat64", openat as *const () as usize),
        ("creat", creat as *const () as usize),
        ("creat64", creat as *const () as usize),
        ("close", close as *const () as usize),
        ("read", read as *const () as usize),
        ("write", write as *const () as usize),
        ("pread", pread as *const () as usize),
        ("pread64", pread as *const () as usize),
        ("pwrite", pwrite as *const () as usize),
        ("pwrite64", pwrite as *const () as usize),
        ("lseek", lseek as *const () as usize),
        ("lseek64", lseek as *const () as usize),
        ("stat", stat as *const () as usize),
        ("stat64", stat as *const () as usize),
        ("lstat", lstat as *const () as usize),
        ("lstat64", lstat as *const () as usize),
        ("fstat", fstat as *const () as usize),
        ("fstat64", fstat as *const () as usize),
        ("unlink", unlink as *const () as usize),
        ("rmdir", rmdir as *const () as usize),
        ("mkdir", mkdir as *const () as usize),
        ("access", access as *const () as usize),
        ("rename", rename as *const () as usize),
        ("getcwd", getcwd as *const () as usize),
        ("readlink", readlink as *const () as usize),
        ("ftruncate", ftruncate as *const () as usize),
        ("ftruncate64", ftruncate as *const () as usize),
        ("fsync", fsync as *const () as usize),
        ("fdatasync", fdatasync as *const () as usize),
        ("fcntl", fcntl as *const () as usize),
        ("fcntl64", fcntl as *const () as usize),
        ("__fcntl", fcntl as *const () as usize),
        // `__open_2` & co. are the fortified opens (no mode argument).
        ("__openat_2", openat as *const () as usize),
        ("__openat64_2", openat as *const () as usize),
        ("__read_chk", read_chk as *const () as usize),
        ("__pread_chk", pread_chk as *const () as usize),
        ("__pread64_chk", pread_chk as *const () as usize),
        ("__getcwd_chk", getcwd_chk as *const () as usize),
    ];
    for (name, address) in functions {
        export(table, name, address);
    }
}

/// The fortified functions' overflow.
fn check_failed() -> ! {
    crate::platform().abort("*** buffer overflow detected ***: terminated")
}

/// `ssize_t __read_chk(int, void *, size_t, size_t)`.
pub unsafe extern "C" fn read_chk(
    fd: c_int,
    buffer: *mut c_void,
    length: usize,
    size: usize,
) -> isize {
    if length > size {
        check_failed();
    }
    // SAFETY: C's contract, and it fits.
    unsafe { read(fd, buffer, length) }
}

/// `ssize_t __pread_chk(int, void *, size_t, off_t, size_t)`.
pub unsafe extern "C" fn pread_chk(
    fd: c_int,
    buffer: *mut c_void,
    length: usize,
    offset: i64,
    size: usize,
) -> isize {
    if length > size {
        check_failed();
    }
    // SAFETY: C's contract, and it fits.
    unsafe { pread(fd, buffer, length, offset) }
}

/// `char *__getcwd_chk(char *, size_t, size_t)`.
pub unsafe extern "C" fn getcwd_chk(
    buffer: *mut c_char,
    size: usize,
    actual: usize,
) -> *mut c_char {
    if size > actual {
        check_failed();
    }
    // SAFETY: C's contract.
    unsafe { getcwd(buffer, size) }
}
