//! `vfs/*`: Keel's VFS over ramfs on the host beside Linux tmpfs through `std::fs` and
//! the `vfs` crate's `MemoryFS`, in the same run.
//!
//! - `keel`: a `keel_vfs::Context` over a `Vfs` with a `Ramfs` root, blocking through
//!   `keel_hosted::StdParker`, with a fixed clock (as in `crates/keel-vfs/tests`). Every
//!   call goes through the whole system-call layer: path walk, dentry cache, descriptor
//!   table, open file description.
//! - `tmpfs`: `std::fs` on a fresh directory under `/dev/shm`, checked with `statfs` to
//!   be tmpfs (the bench stops if it is not). The process's working directory is set to
//!   that directory, so the paths are the same relative `bench/dir/file` (three
//!   components) as Keel's `/bench/dir/file`. Each call is a real Linux system call.
//! - `vfs-memoryfs`: `vfs::MemoryFS` (version 0.13), a `BTreeMap` from the whole path
//!   string to the file under one `RwLock`: no path walk at all. It has no descriptors
//!   and no positional I/O: `read-4k` seeks and reads a handle opened once outside the
//!   loop; `write-4k` seeks and writes a handle from `append_file` opened once, which is
//!   a private copy of the file published to the filesystem only when dropped (so this
//!   row is a `memcpy` into a `Vec`, and makes no write visible to other readers).
//!
//! Rows (one criterion group each; everything is set up before the timed loop):
//! - `open-close`: open `bench/dir/file` read-only and close it.
//! - `stat`: `stat` of `bench/dir/file` by path.
//! - `read-4k`: `pread` of 4 KiB at offset 400 KiB of that file, 1 MiB long.
//! - `write-4k`: `pwrite` of 4 KiB at the same offset.
//! - `readdir-1000`: list `bench/list`, a directory of 1000 files: open it, read every
//!   entry, close it. Keel: `open(O_DIRECTORY)`, `getdents64` into a 32 KiB buffer
//!   (glibc's `readdir` buffer) until it returns 0, each record's `d_reclen` walked as
//!   `readdir` does, `close`. tmpfs: `std::fs::read_dir` (the same system calls, plus a
//!   `DirEntry` per entry). MemoryFS: `read_dir`, its iterator of names drained.
//!
//! Run: `cargo xtask bench vfs` (or `cargo bench -p keel-benches --bench vfs`).

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use keel_hosted::StdParker;
use keel_vfs::{Context, FixedClock, OpenFlags, Ramfs, Timespec, Vfs};
use vfs::FileSystem as _;

/// The length of the file read and written.
const FILE_LENGTH: usize = 1 << 20;
/// The size of one read or write.
const BLOCK: usize = 4096;
/// Where the reads and writes go (page-aligned, inside the file).
const OFFSET: u64 = 100 * BLOCK as u64;
/// The entries of the listed directory.
const ENTRIES: usize = 1000;
/// glibc's `readdir` buffer.
const DIRENT_BUFFER: usize = 32 * 1024;
/// Linux's `TMPFS_MAGIC` (`f_type` of `statfs`).
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn entry_name(index: usize) -> String {
    format!("entry-{index:04}")
}

/// The same bytes for every implementation's file.
fn contents() -> Vec<u8> {
    (0..FILE_LENGTH).map(|index| (index % 251) as u8).collect()
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Keel: a context over ramfs holding `/bench/dir/file` (1 MiB) and `/bench/list`
/// (1000 empty files).
fn keel_context() -> Context<StdParker> {
    let clock = Arc::new(FixedClock(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
    let context = Context::new(vfs);
    let create = OpenFlags::O_RDWR | OpenFlags::O_CREAT;
    context.mkdir(b"/bench", 0o755).expect("mkdir /bench");
    context
        .mkdir(b"/bench/dir", 0o755)
        .expect("mkdir /bench/dir");
    context
        .mkdir(b"/bench/list", 0o755)
        .expect("mkdir /bench/list");
    let fd = context
        .open(b"/bench/dir/file", create, 0o644)
        .expect("create the file");
    assert_eq!(context.pwrite(fd, &contents(), 0), Ok(FILE_LENGTH));
    context.close(fd).expect("close");
    for index in 0..ENTRIES {
        let path = format!("/bench/list/{}", entry_name(index));
        let fd = context
            .open(path.as_bytes(), create, 0o644)
            .expect("create");
        context.close(fd).expect("close");
    }
    context
}

/// tmpfs: a fresh directory under `/dev/shm` holding `bench/dir/file` and `bench/list`,
/// made the working directory. Panics unless `/dev/shm` is tmpfs.
fn tmpfs_directory() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let path = c"/dev/shm";
    // SAFETY: `statfs` is plain data, for which all-zero bytes are a valid value.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `info` is a valid, writable `statfs` for the
    // duration of the call.
    let status = unsafe { libc::statfs(path.as_ptr(), &mut info) };
    assert_eq!(status, 0, "statfs(/dev/shm) failed");
    assert_eq!(
        info.f_type as i64, TMPFS_MAGIC,
        "/dev/shm is not tmpfs (f_type {:#x}): this bench compares with tmpfs",
        info.f_type
    );
    let root = shm.join(format!("keel-vfs-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bench/dir")).expect("mkdir bench/dir");
    std::fs::create_dir_all(root.join("bench/list")).expect("mkdir bench/list");
    std::fs::write(root.join("bench/dir/file"), contents()).expect("write the file");
    for index in 0..ENTRIES {
        File::create(root.join("bench/list").join(entry_name(index))).expect("create");
    }
    std::env::set_current_dir(&root).expect("chdir");
    root
}

/// MemoryFS: `/bench/dir/file` and `/bench/list` as in the others.
fn memory_fs() -> vfs::MemoryFS {
    let fs = vfs::MemoryFS::new();
    fs.create_dir("/bench").expect("mkdir /bench");
    fs.create_dir("/bench/dir").expect("mkdir /bench/dir");
    fs.create_dir("/bench/list").expect("mkdir /bench/list");
    let mut file = fs.create_file("/bench/dir/file").expect("create the file");
    file.write_all(&contents()).expect("write the file");
    drop(file);
    for index in 0..ENTRIES {
        let path = format!("/bench/list/{}", entry_name(index));
        drop(fs.create_file(&path).expect("create"));
    }
    fs
}

/// The `linux_dirent64` records in `buffer[..used]` (walked by `d_reclen`, as
/// `readdir` does), checked for a nonzero inode.
fn count_records(buffer: &[u8], used: usize) -> usize {
    let mut records = 0;
    let mut at = 0;
    while at < used {
        let record = &buffer[at..];
        let inode = u64::from_ne_bytes(record[0..8].try_into().expect("8 bytes"));
        let length = u16::from_ne_bytes([record[16], record[17]]) as usize;
        black_box(inode);
        records += 1;
        at += length;
    }
    records
}

fn vfs_benches(criterion: &mut Criterion) {
    let keel = keel_context();
    let tmpfs_root = tmpfs_directory();
    let memory = memory_fs();
    let read_only = OpenFlags::O_RDONLY;
    let directory = OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY;
    let relative = Path::new("bench/dir/file");

    {
        let mut group = criterion.benchmark_group("vfs/open-close");
        configure(&mut group);
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let fd = keel
                    .open(black_box(b"/bench/dir/file"), read_only, 0)
                    .expect("open");
                keel.close(black_box(fd)).expect("close");
            })
        });
        group.bench_function("tmpfs", |bencher| {
            bencher.iter(|| drop(black_box(File::open(black_box(relative)).expect("open"))))
        });
        group.bench_function("vfs-memoryfs", |bencher| {
            bencher.iter(|| {
                drop(black_box(
                    memory
                        .open_file(black_box("/bench/dir/file"))
                        .expect("open"),
                ))
            })
        });
        group.finish();
    }

    {
        let mut group = criterion.benchmark_group("vfs/stat");
        configure(&mut group);
        group.bench_function("keel", |bencher| {
            bencher.iter(|| black_box(keel.stat(black_box(b"/bench/dir/file")).expect("stat")))
        });
        group.bench_function("tmpfs", |bencher| {
            bencher.iter(|| black_box(std::fs::metadata(black_box(relative)).expect("stat")))
        });
        group.bench_function("vfs-memoryfs", |bencher| {
            bencher.iter(|| black_box(memory.metadata(black_box("/bench/dir/file")).expect("stat")))
        });
        group.finish();
    }

    {
        let mut group = criterion.benchmark_group("vfs/read-4k");
        configure(&mut group);
        let mut buffer = vec![0_u8; BLOCK];
        let expected = contents()[OFFSET as usize..OFFSET as usize + BLOCK].to_vec();
        let fd = keel.open(b"/bench/dir/file", read_only, 0).expect("open");
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let read = keel
                    .pread(black_box(fd), black_box(&mut buffer), OFFSET as i64)
                    .expect("pread");
                black_box(read)
            })
        });
        assert_eq!(buffer, expected);
        keel.close(fd).expect("close");
        let file = File::open(relative).expect("open");
        group.bench_function("tmpfs", |bencher| {
            bencher.iter(|| {
                black_box(
                    black_box(&file)
                        .read_at(black_box(&mut buffer), OFFSET)
                        .expect("pread"),
                )
            })
        });
        assert_eq!(buffer, expected);
        drop(file);
        let mut handle = memory.open_file("/bench/dir/file").expect("open");
        group.bench_function("vfs-memoryfs", |bencher| {
            bencher.iter(|| {
                handle.seek(SeekFrom::Start(OFFSET)).expect("seek");
                handle.read_exact(black_box(&mut buffer)).expect("read");
            })
        });
        assert_eq!(buffer, expected);
        drop(handle);
        group.finish();
    }

    {
        let mut group = criterion.benchmark_group("vfs/write-4k");
        configure(&mut group);
        let block = vec![0x5a_u8; BLOCK];
        let fd = keel
            .open(b"/bench/dir/file", OpenFlags::O_RDWR, 0)
            .expect("open");
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let written = keel
                    .pwrite(black_box(fd), black_box(&block), OFFSET as i64)
                    .expect("pwrite");
                black_box(written)
            })
        });
        keel.close(fd).expect("close");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(relative)
            .expect("open");
        group.bench_function("tmpfs", |bencher| {
            bencher.iter(|| {
                black_box(
                    black_box(&file)
                        .write_at(black_box(&block), OFFSET)
                        .expect("pwrite"),
                )
            })
        });
        drop(file);
        let mut handle = memory.append_file("/bench/dir/file").expect("open");
        group.bench_function("vfs-memoryfs", |bencher| {
            bencher.iter(|| {
                handle.seek(SeekFrom::Start(OFFSET)).expect("seek");
                handle.write_all(black_box(&block)).expect("write");
            })
        });
        drop(handle);
        group.finish();
    }

    {
        let mut group = criterion.benchmark_group("vfs/readdir-1000");
        configure(&mut group);
        let mut buffer = vec![0_u8; DIRENT_BUFFER];
        group.bench_function("keel", |bencher| {
            bencher.iter(|| {
                let fd = keel
                    .open(black_box(b"/bench/list"), directory, 0)
                    .expect("open");
                let mut records = 0;
                loop {
                    let used = keel.getdents64(fd, &mut buffer).expect("getdents64");
                    if used == 0 {
                        break;
                    }
                    records += count_records(&buffer, used);
                }
                keel.close(fd).expect("close");
                // `.` and `..` as well.
                assert_eq!(records, ENTRIES + 2);
            })
        });
        let list = Path::new("bench/list");
        group.bench_function("tmpfs", |bencher| {
            bencher.iter(|| {
                let mut entries = 0;
                for entry in std::fs::read_dir(black_box(list)).expect("read_dir") {
                    black_box(entry.expect("entry"));
                    entries += 1;
                }
                assert_eq!(entries, ENTRIES);
            })
        });
        group.bench_function("vfs-memoryfs", |bencher| {
            bencher.iter(|| {
                let mut entries = 0;
                for name in memory.read_dir(black_box("/bench/list")).expect("read_dir") {
                    black_box(name);
                    entries += 1;
                }
                assert_eq!(entries, ENTRIES);
            })
        });
        group.finish();
    }

    std::env::set_current_dir("/").expect("chdir /");
    std::fs::remove_dir_all(&tmpfs_root).expect("remove the tmpfs directory");
}

criterion_group!(benches, vfs_benches);
criterion_main!(benches);
