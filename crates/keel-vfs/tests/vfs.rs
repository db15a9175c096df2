//! Unit tests of path resolution, the descriptor table and rename's rules.

mod common;

use common::{clock, context, context_with_limit};
use keel_hosted::StdParker;
use keel_vfs::{Errno, FcntlCommand, Fd, FileType, OpenFlags, Ramfs, Whence};

const RW: OpenFlags = OpenFlags::O_RDWR;
const CREATE: OpenFlags = OpenFlags::from_bits(0o102); // O_RDWR | O_CREAT

#[test]
fn symlink_loops_give_eloop() {
    let ctx = context();
    ctx.symlink(b"a", b"/a").unwrap();
    assert_eq!(ctx.stat(b"/a"), Err(Errno::ELOOP));
    ctx.symlink(b"c", b"/b").unwrap();
    ctx.symlink(b"b", b"/c").unwrap();
    assert_eq!(ctx.open(b"/b", RW, 0), Err(Errno::ELOOP));
    assert_eq!(
        ctx.lstat(b"/a").unwrap().file_type(),
        Some(FileType::Symlink)
    );
    // A chain of exactly 40 links resolves; 41 does not.
    ctx.open(b"/f0", CREATE, 0o644).unwrap();
    for i in 1..=41 {
        let target = format!("f{}", i - 1);
        ctx.symlink(target.as_bytes(), format!("/f{i}").as_bytes())
            .unwrap();
    }
    assert!(ctx.stat(b"/f40").is_ok());
    assert_eq!(ctx.stat(b"/f41"), Err(Errno::ELOOP));
}

#[test]
fn trailing_slashes() {
    let ctx = context();
    ctx.open(b"/file", CREATE, 0o644).unwrap();
    ctx.mkdir(b"/dir/", 0o755).unwrap();
    assert_eq!(ctx.stat(b"/file/"), Err(Errno::ENOTDIR));
    assert!(ctx.stat(b"/dir/").is_ok());
    assert_eq!(ctx.open(b"/new/", CREATE, 0o644), Err(Errno::EISDIR));
    assert_eq!(ctx.unlink(b"/file/"), Err(Errno::ENOTDIR));
    assert_eq!(ctx.symlink(b"x", b"/sl/"), Err(Errno::ENOENT));
    ctx.symlink(b"dir", b"/to_dir").unwrap();
    assert_eq!(
        ctx.stat(b"/to_dir/").unwrap().file_type(),
        Some(FileType::Directory)
    );
    assert_eq!(
        ctx.lstat(b"/to_dir/").unwrap().file_type(),
        Some(FileType::Directory)
    );
    assert_eq!(ctx.rename(b"/file", b"/other/"), Err(Errno::ENOTDIR));
    assert_eq!(ctx.stat(b"/file/x"), Err(Errno::ENOTDIR));
    assert_eq!(ctx.stat(b""), Err(Errno::ENOENT));
    assert_eq!(ctx.stat(b"/a\0b"), Err(Errno::EINVAL));
}

#[test]
fn long_names() {
    let ctx = context();
    let long = vec![b'x'; 256];
    let mut path = b"/".to_vec();
    path.extend_from_slice(&long);
    assert_eq!(ctx.stat(&path), Err(Errno::ENAMETOOLONG));
    assert_eq!(ctx.mkdir(&path, 0o755), Err(Errno::ENAMETOOLONG));
    let ok = vec![b'y'; 255];
    let mut path = b"/".to_vec();
    path.extend_from_slice(&ok);
    ctx.mkdir(&path, 0o755).unwrap();
    let too_long: Vec<u8> = b"/a".iter().cycle().take(4096).copied().collect();
    assert_eq!(ctx.stat(&too_long), Err(Errno::ENAMETOOLONG));
}

#[test]
fn dot_dot_and_mounts() {
    let ctx = context();
    ctx.mkdir(b"/mnt", 0o755).unwrap();
    ctx.mkdir(b"/mnt/hidden", 0o755).unwrap();
    ctx.open(b"/top", CREATE, 0o644).unwrap();
    ctx.mount(b"/mnt", Ramfs::<StdParker>::new(clock()))
        .unwrap();
    assert_eq!(ctx.stat(b"/mnt/hidden"), Err(Errno::ENOENT));
    ctx.mkdir(b"/mnt/inner", 0o755).unwrap();
    assert!(ctx.stat(b"/mnt/inner/../../top").is_ok());
    assert!(ctx.stat(b"/mnt/../top").is_ok());
    assert!(ctx.stat(b"/../../top").is_ok());
    ctx.chdir(b"/mnt/inner").unwrap();
    assert_eq!(ctx.getcwd().unwrap(), b"/mnt/inner");
    assert!(ctx.stat(b"../../top").is_ok());
    ctx.chdir(b"..").unwrap();
    assert_eq!(ctx.getcwd().unwrap(), b"/mnt");
    ctx.chdir(b"/").unwrap();
    assert_eq!(ctx.getcwd().unwrap(), b"/");
    // EXDEV across mounts, EBUSY for the mount point.
    assert_eq!(ctx.rename(b"/top", b"/mnt/top"), Err(Errno::EXDEV));
    assert_eq!(ctx.link(b"/top", b"/mnt/top"), Err(Errno::EXDEV));
    assert_eq!(ctx.rmdir(b"/mnt"), Err(Errno::EBUSY));
    assert_eq!(
        ctx.statfs(b"/mnt").unwrap().fs_type,
        keel_vfs::ramfs::RAMFS_MAGIC
    );
    assert_ne!(ctx.stat(b"/mnt").unwrap().dev, ctx.stat(b"/").unwrap().dev);
}

#[test]
fn negative_dentries_are_invalidated() {
    let ctx = context();
    assert_eq!(ctx.stat(b"/x"), Err(Errno::ENOENT));
    ctx.mkdir(b"/x", 0o755).unwrap();
    assert!(ctx.stat(b"/x").is_ok());
    ctx.rename(b"/x", b"/y").unwrap();
    assert_eq!(ctx.stat(b"/x"), Err(Errno::ENOENT));
    assert!(ctx.stat(b"/y").is_ok());
    ctx.rmdir(b"/y").unwrap();
    assert_eq!(ctx.stat(b"/y"), Err(Errno::ENOENT));
}

#[test]
fn fd_table_lowest_free_and_dup() {
    let ctx = context_with_limit(4);
    let a = ctx.open(b"/a", CREATE, 0o644).unwrap();
    let b = ctx.open(b"/b", CREATE, 0o644).unwrap();
    let c = ctx.dup(a).unwrap();
    assert_eq!((a.raw(), b.raw(), c.raw()), (0, 1, 2));
    ctx.close(b).unwrap();
    assert_eq!(ctx.dup(a).unwrap().raw(), 1);
    assert_eq!(ctx.dup(a).unwrap().raw(), 3);
    assert_eq!(ctx.dup(a), Err(Errno::EMFILE));
    assert_eq!(ctx.open(b"/a", RW, 0), Err(Errno::EMFILE));
    // dup2 onto an open descriptor closes it and shares the offset.
    ctx.write(a, b"hello").unwrap();
    let fd3 = Fd::from_raw(3).unwrap();
    assert_eq!(ctx.dup2(a, fd3).unwrap(), fd3);
    assert_eq!(ctx.lseek(fd3, 0, Whence::Current).unwrap(), 5);
    assert_eq!(ctx.dup2(a, Fd::from_raw(9).unwrap()), Err(Errno::EBADF));
    assert_eq!(ctx.dup3(a, a, OpenFlags::O_CLOEXEC), Err(Errno::EINVAL));
    ctx.dup3(a, fd3, OpenFlags::O_CLOEXEC).unwrap();
    assert_eq!(ctx.fcntl(fd3, FcntlCommand::GetFd), Ok(1));
    assert_eq!(Fd::from_raw(-1), Err(Errno::EBADF));
    ctx.close(fd3).unwrap();
    assert_eq!(ctx.close(fd3), Err(Errno::EBADF));
    assert_eq!(ctx.read(fd3, &mut [0; 4]), Err(Errno::EBADF));
}

#[test]
fn file_io_and_flags() {
    let ctx = context();
    let fd = ctx
        .open(b"/f", CREATE | OpenFlags::O_APPEND, 0o644)
        .unwrap();
    ctx.write(fd, b"abc").unwrap();
    ctx.pwrite(fd, b"de", 0).unwrap(); // appends, as on Linux
    let mut buf = [0; 8];
    assert_eq!(ctx.pread(fd, &mut buf, 0).unwrap(), 5);
    assert_eq!(&buf[..5], b"abcde");
    assert_eq!(ctx.lseek(fd, -1, Whence::Set), Err(Errno::EINVAL));
    assert_eq!(ctx.lseek(fd, -2, Whence::End).unwrap(), 3);
    let flags = ctx.fcntl(fd, FcntlCommand::GetFl).unwrap() as u32;
    assert!(OpenFlags::from_bits(flags).contains(OpenFlags::O_APPEND));
    ctx.fcntl(fd, FcntlCommand::SetFl(0)).unwrap();
    ctx.lseek(fd, 1 << 20, Whence::Set).unwrap();
    ctx.writev(fd, &[b"x", b"yz"]).unwrap();
    assert_eq!(ctx.fstat(fd).unwrap().size, (1 << 20) + 3);
    assert_eq!(ctx.fstat(fd).unwrap().blocks, 16); // two 4 KiB blocks: sparse
    let (mut one, mut two) = ([0u8; 2], [0u8; 4]);
    ctx.lseek(fd, (1 << 20) - 1, Whence::Set).unwrap();
    assert_eq!(ctx.readv(fd, &mut [&mut one, &mut two]).unwrap(), 4);
    assert_eq!((&one, &two[..2]), (&[0, b'x'], &b"yz"[..]));
    ctx.ftruncate(fd, 2).unwrap();
    ctx.ftruncate(fd, 10).unwrap();
    assert_eq!(ctx.pread(fd, &mut buf, 0).unwrap(), 8);
    assert_eq!(&buf, b"ab\0\0\0\0\0\0");
    let read_only = ctx.open(b"/f", OpenFlags::O_RDONLY, 0).unwrap();
    assert_eq!(ctx.write(read_only, b"no"), Err(Errno::EBADF));
    assert_eq!(ctx.ftruncate(read_only, 0), Err(Errno::EINVAL));
    assert_eq!(
        ctx.open(b"/f", CREATE | OpenFlags::O_EXCL, 0),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        ctx.open(b"/f", OpenFlags::O_DIRECTORY, 0),
        Err(Errno::ENOTDIR)
    );
    assert_eq!(ctx.open(b"/", RW, 0), Err(Errno::EISDIR));
    ctx.symlink(b"f", b"/l").unwrap();
    assert_eq!(ctx.open(b"/l", OpenFlags::O_NOFOLLOW, 0), Err(Errno::ELOOP));
    assert_eq!(
        ctx.open(b"/f", OpenFlags::from_bits(3), 0),
        Err(Errno::EINVAL)
    );
    // access from the owner's mode bits
    ctx.access(b"/f", keel_vfs::context::access_mode::R_OK)
        .unwrap();
    assert_eq!(
        ctx.access(b"/f", keel_vfs::context::access_mode::X_OK),
        Err(Errno::EACCES)
    );
    assert_eq!(ctx.access(b"/nope", 0), Err(Errno::ENOENT));
}

#[test]
fn rename_rules() {
    let ctx = context();
    ctx.mkdir(b"/d", 0o755).unwrap();
    ctx.mkdir(b"/d/sub", 0o755).unwrap();
    ctx.mkdir(b"/e", 0o755).unwrap();
    ctx.open(b"/f", CREATE, 0o644).unwrap();
    ctx.open(b"/e/g", CREATE, 0o644).unwrap();
    assert_eq!(ctx.rename(b"/f", b"/d"), Err(Errno::EISDIR));
    assert_eq!(ctx.rename(b"/d", b"/f"), Err(Errno::ENOTDIR));
    assert_eq!(ctx.rename(b"/d", b"/e"), Err(Errno::ENOTEMPTY));
    assert_eq!(ctx.rename(b"/d", b"/d/sub/x"), Err(Errno::EINVAL));
    assert_eq!(ctx.rename(b"/d", b"/d/x"), Err(Errno::EINVAL));
    assert_eq!(ctx.rename(b"/d/sub", b"/d/sub/x"), Err(Errno::EINVAL));
    assert_eq!(ctx.rename(b"/d/sub", b"/d"), Err(Errno::ENOTEMPTY));
    assert_eq!(ctx.rename(b"/missing", b"/x"), Err(Errno::ENOENT));
    assert_eq!(ctx.rename(b"/d/.", b"/x"), Err(Errno::EBUSY));
    ctx.link(b"/f", b"/f2").unwrap();
    ctx.rename(b"/f", b"/f2").unwrap(); // same inode: nothing happens
    assert!(ctx.stat(b"/f").is_ok());
    ctx.rename(b"/f", b"/e/g").unwrap(); // over a file
    assert_eq!(ctx.stat(b"/f"), Err(Errno::ENOENT));
    assert_eq!(ctx.stat(b"/e/g").unwrap().nlink, 2);
    ctx.rmdir(b"/d/sub").unwrap();
    ctx.rename(b"/e", b"/d").unwrap(); // over an empty directory
    assert!(ctx.stat(b"/d/g").is_ok());
    assert_eq!(ctx.stat(b"/").unwrap().nlink, 3);
    assert_eq!(ctx.rmdir(b"/d"), Err(Errno::ENOTEMPTY));
    assert_eq!(ctx.unlink(b"/d"), Err(Errno::EISDIR));
    assert_eq!(ctx.rmdir(b"/f2"), Err(Errno::ENOTDIR));
    assert_eq!(ctx.link(b"/d", b"/dl"), Err(Errno::EPERM));
    assert_eq!(ctx.rmdir(b"/d/."), Err(Errno::EINVAL));
    assert_eq!(ctx.mkdir(b"/", 0o755), Err(Errno::EEXIST));
}

#[test]
fn getdents_lists_and_resumes() {
    let ctx = context();
    for i in 0..10 {
        ctx.open(format!("/n{i}").as_bytes(), CREATE, 0o644)
            .unwrap();
    }
    let dir = ctx.open(b"/", OpenFlags::O_DIRECTORY, 0).unwrap();
    let mut names = Vec::new();
    loop {
        let batch = ctx.getdents(dir, 3).unwrap();
        if batch.is_empty() {
            break;
        }
        if names.len() == 3 {
            ctx.unlink(b"/n9").unwrap(); // removal during listing
        }
        names.extend(batch.into_iter().map(|entry| entry.name));
    }
    assert_eq!(names.len(), 11); // . .. n0..n8
    ctx.lseek(dir, 0, Whence::Set).unwrap();
    let mut buf = [0u8; 4096];
    let used = ctx.getdents64(dir, &mut buf).unwrap();
    assert!(used > 0 && used.is_multiple_of(8));
    assert_eq!(ctx.getdents64(dir, &mut buf).unwrap(), 0); // at the end
    ctx.lseek(dir, 0, Whence::Set).unwrap();
    assert_eq!(ctx.getdents64(dir, &mut [0u8; 4]), Err(Errno::EINVAL));
}
