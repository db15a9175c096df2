//! Concurrency: 8 threads creating and writing files, in one directory and in
//! separate ones, with exact contents after; lookups while another thread writes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use keel_vfs::{Errno, OpenFlags};

const CREATE: OpenFlags = OpenFlags::from_bits(0o102);

fn contents(thread: usize, file: usize) -> Vec<u8> {
    (0..5000 + file * 37)
        .map(|i| (i * 31 + thread * 7 + file) as u8)
        .collect()
}

fn writers(separate_directories: bool) {
    let ctx = Arc::new(common::context());
    ctx.mkdir(b"/shared", 0o755).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let ctx = ctx.clone();
            thread::spawn(move || {
                let dir = if separate_directories {
                    format!("/d{t}")
                } else {
                    "/shared".into()
                };
                if separate_directories {
                    ctx.mkdir(dir.as_bytes(), 0o755).unwrap();
                }
                for f in 0..20 {
                    let path = format!("{dir}/t{t}-f{f}");
                    let fd = ctx.open(path.as_bytes(), CREATE, 0o644).unwrap();
                    let data = contents(t, f);
                    for chunk in data.chunks(1000) {
                        ctx.write(fd, chunk).unwrap();
                    }
                    ctx.close(fd).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    for t in 0..8 {
        let dir = if separate_directories {
            format!("/d{t}")
        } else {
            "/shared".into()
        };
        for f in 0..20 {
            let path = format!("{dir}/t{t}-f{f}");
            let fd = ctx.open(path.as_bytes(), OpenFlags::O_RDONLY, 0).unwrap();
            let mut buf = vec![0; 8000];
            let n = ctx.read(fd, &mut buf).unwrap();
            assert_eq!(&buf[..n], &contents(t, f)[..]);
            ctx.close(fd).unwrap();
        }
    }
}

#[test]
fn eight_writers_in_one_directory() {
    writers(false);
}

#[test]
fn eight_writers_in_separate_directories() {
    writers(true);
}

#[test]
fn lookups_while_another_file_is_written() {
    let ctx = Arc::new(common::context());
    ctx.mkdir(b"/dir", 0o755).unwrap();
    let fd = ctx.open(b"/dir/busy", CREATE, 0o644).unwrap();
    ctx.open(b"/dir/quiet", CREATE, 0o644).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        thread::spawn(move || {
            let block = [7u8; 4096];
            let mut offset = 0;
            while !stop.load(Ordering::Relaxed) {
                ctx.pwrite(fd, &block, offset).unwrap();
                offset = (offset + 4096) % (1 << 22);
            }
        })
    };
    for _ in 0..20_000 {
        assert!(ctx.stat(b"/dir/quiet").is_ok());
        assert_eq!(ctx.stat(b"/dir/missing"), Err(Errno::ENOENT));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}
