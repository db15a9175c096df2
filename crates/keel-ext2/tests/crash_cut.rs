//! Crash cuts: a workload of creates, writes, renames, truncates and unlinks with
//! fsyncs at known points runs through Keel's VFS on an ext2 image made by
//! `mkfs.ext2 -d`, over a device that records every write and flush. Then, for every
//! cut point (before each write, and after the last), the image a power cut would
//! leave is rebuilt in three ways: the writes in order up to the cut; the same with
//! the next write torn (only its first half of sectors lands); and with the writes
//! since the last flush landing as a subset (a disk's volatile cache reorders them).
//! For each survivor:
//!
//! - Keel mounts it without panicking (and a read of every file does not panic);
//! - every file of the last completed fsync's state that the workload did not touch
//!   after that fsync is there with exactly those contents (the guarantee the crate
//!   docs give; asserted);
//! - `e2fsck -fn` is run and what it says is recorded, not asserted (ext2 has no
//!   journal; an unclean image may need repair); then `e2fsck -fy` repairs a copy and
//!   a second `e2fsck -fn` must find it clean (asserted).
//!
//! The summary is printed (`cargo test -p keel-ext2 --test crash_cut -- --nocapture`).
//! A second test unmounts after the same workload and checks that a clean unmount
//! makes everything durable and the image clean.

mod common;

use common::{TempDir, e2fsck, fill_tree, have_e2fsprogs, mkfs, pattern, resolve};
use keel_ext2::vfs::Ext2Fs;
use keel_ext2::{Ext2, MountOptions};
use keel_hosted::StdParker;
use keel_vfs::{Context, FixedClock, OpenFlags, Ramfs, Timespec, Vfs};
use keel_virtio::block::{BlockDevice, BlockError, SECTOR_SIZE, check_request};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// One request the filesystem made.
#[derive(Debug, Clone)]
enum Event {
    Write { sector: u64, data: Vec<u8> },
    Flush,
}

#[derive(Debug)]
struct Recorder {
    /// What the filesystem reads back (every write, also after a cut: the machine
    /// runs on, but nothing more reaches the disk).
    image: Vec<u8>,
    /// What the disk holds: writes up to the cut.
    disk: Vec<u8>,
    /// Every write and flush, in order.
    log: Vec<Event>,
    /// Cut power after this many writes: later writes are dropped (not applied, not
    /// logged), as after a real cut.
    cut_after: Option<usize>,
    writes: usize,
}

/// A block device in memory that records every write and flush (shared with the
/// test through the `Arc`).
#[derive(Debug, Clone)]
struct RecordingDevice(Arc<Mutex<Recorder>>);

impl RecordingDevice {
    fn new(image: Vec<u8>, cut_after: Option<usize>) -> Self {
        Self(Arc::new(Mutex::new(Recorder {
            disk: image.clone(),
            image,
            log: Vec::new(),
            cut_after,
            writes: 0,
        })))
    }

    /// Events so far (the position a completed fsync is recorded at).
    fn events(&self) -> usize {
        self.0.lock().unwrap().log.len()
    }
}

impl BlockDevice for RecordingDevice {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let recorder = self.0.lock().unwrap();
        check_request(
            sector,
            buf.len(),
            (recorder.image.len() / SECTOR_SIZE) as u64,
        )?;
        let start = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&recorder.image[start..start + buf.len()]);
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let mut recorder = self.0.lock().unwrap();
        check_request(
            sector,
            buf.len(),
            (recorder.image.len() / SECTOR_SIZE) as u64,
        )?;
        recorder.writes += 1;
        let start = sector as usize * SECTOR_SIZE;
        recorder.image[start..start + buf.len()].copy_from_slice(buf);
        if recorder.cut_after.is_some_and(|cut| recorder.writes > cut) {
            // Power is gone: nothing more reaches the disk.
            return Ok(());
        }
        recorder.disk[start..start + buf.len()].copy_from_slice(buf);
        recorder.log.push(Event::Write {
            sector,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        let mut recorder = self.0.lock().unwrap();
        if recorder.cut_after.is_none_or(|cut| recorder.writes <= cut) {
            recorder.log.push(Event::Flush);
        }
        Ok(())
    }

    fn capacity(&self) -> u64 {
        (self.0.lock().unwrap().image.len() / SECTOR_SIZE) as u64
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

/// A plain device over a survivor image.
#[derive(Debug)]
struct Survivor(Mutex<Vec<u8>>);

impl BlockDevice for Survivor {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let data = self.0.lock().unwrap();
        check_request(sector, buf.len(), (data.len() / SECTOR_SIZE) as u64)?;
        let start = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        let mut data = self.0.lock().unwrap();
        check_request(sector, buf.len(), (data.len() / SECTOR_SIZE) as u64)?;
        let start = sector as usize * SECTOR_SIZE;
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    fn capacity(&self) -> u64 {
        (self.0.lock().unwrap().len() / SECTOR_SIZE) as u64
    }

    fn is_read_only(&self) -> bool {
        false
    }
}

/// The workload's view of the files: path to contents (files only).
type Model = BTreeMap<String, Vec<u8>>;

/// A completed fsync: where it ended in the event log, the state it made durable, and
/// the paths the workload touched between it and the next completed fsync.
#[derive(Debug, Clone)]
struct Durable {
    end: usize,
    model: Model,
    touched_after: BTreeSet<String>,
}

struct Workload {
    ctx: Context<StdParker>,
    device: RecordingDevice,
    model: Model,
    touched: BTreeSet<String>,
    durable: Vec<Durable>,
}

fn vpath(path: &str) -> Vec<u8> {
    format!("/data{path}").into_bytes()
}

impl Workload {
    fn new(image: Vec<u8>, initial: Model, cache_bytes: usize, cut_after: Option<usize>) -> Self {
        let device = RecordingDevice::new(image, cut_after);
        let clock = Arc::new(FixedClock(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let vfs = Vfs::<StdParker>::new(Ramfs::<StdParker>::new(clock.clone()), clock);
        let ctx = Context::new(vfs);
        ctx.mkdir(b"/data", 0o755).unwrap();
        let fs = Ext2::mount_with(
            device.clone(),
            MountOptions {
                read_only: false,
                cache_bytes,
            },
            Box::new(FixedExt2Clock),
        )
        .unwrap();
        ctx.mount(b"/data", Ext2Fs::<_, StdParker>::new(fs))
            .unwrap();
        Self {
            ctx,
            device,
            durable: vec![Durable {
                end: 0,
                model: initial.clone(),
                touched_after: BTreeSet::new(),
            }],
            model: initial,
            touched: BTreeSet::new(),
        }
    }

    fn touch(&mut self, path: &str) {
        self.touched.insert(path.to_string());
    }

    /// Marks `path` and everything under it touched.
    fn touch_tree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let under: Vec<String> = self
            .model
            .keys()
            .filter(|key| key.starts_with(&prefix))
            .cloned()
            .collect();
        self.touched.extend(under);
        self.touch(path);
    }

    fn write(&mut self, path: &str, offset: usize, data: &[u8], create: bool) {
        let mut flags = OpenFlags::O_RDWR;
        if create {
            flags = flags | OpenFlags::O_CREAT;
        }
        let fd = self.ctx.open(&vpath(path), flags, 0o644).unwrap();
        assert_eq!(
            self.ctx.pwrite(fd, data, offset as i64).unwrap(),
            data.len()
        );
        self.ctx.close(fd).unwrap();
        let contents = self.model.entry(path.to_string()).or_default();
        if contents.len() < offset + data.len() {
            contents.resize(offset + data.len(), 0);
        }
        contents[offset..offset + data.len()].copy_from_slice(data);
        self.touch(path);
    }

    fn truncate(&mut self, path: &str, size: usize) {
        self.ctx.truncate(&vpath(path), size as i64).unwrap();
        self.model.get_mut(path).unwrap().resize(size, 0);
        self.touch(path);
    }

    fn mkdir(&mut self, path: &str) {
        self.ctx.mkdir(&vpath(path), 0o755).unwrap();
    }

    fn unlink(&mut self, path: &str) {
        self.ctx.unlink(&vpath(path)).unwrap();
        self.model.remove(path);
        self.touch(path);
    }

    fn rename(&mut self, from: &str, to: &str) {
        self.ctx.rename(&vpath(from), &vpath(to)).unwrap();
        self.touch_tree(from);
        self.touch_tree(to);
        let prefix = format!("{from}/");
        let moved: Vec<String> = self
            .model
            .keys()
            .filter(|key| *key == from || key.starts_with(&prefix))
            .cloned()
            .collect();
        self.model.remove(to);
        for key in moved {
            let contents = self.model.remove(&key).unwrap();
            self.model
                .insert(format!("{to}{}", &key[from.len()..]), contents);
        }
    }

    /// `fsync` on a descriptor for `path`, as a program would after writing it.
    fn fsync(&mut self, path: &str) {
        let fd = self.ctx.open(&vpath(path), OpenFlags::O_RDONLY, 0).unwrap();
        self.ctx.fsync(fd).unwrap();
        self.ctx.close(fd).unwrap();
        let touched = std::mem::take(&mut self.touched);
        self.durable.last_mut().unwrap().touched_after = touched;
        self.durable.push(Durable {
            end: self.device.events(),
            model: self.model.clone(),
            touched_after: BTreeSet::new(),
        });
    }

    /// The workload. Ends with changes that are never fsynced.
    fn run(&mut self) {
        self.write("/a.txt", 0, &pattern(3000, 10), true);
        self.fsync("/a.txt");
        self.mkdir("/dir1");
        self.write("/dir1/b.bin", 0, &pattern(20 * 1024, 11), true);
        self.fsync("/dir1/b.bin");
        // In place and growing past the single-indirect limit at 1 KiB blocks.
        self.write("/a.txt", 1000, &pattern(500, 12), false);
        self.write("/dir1/b.bin", 20 * 1024, &pattern(300 * 1024, 13), false);
        self.write("/c.txt", 0, b"c contents\n", true);
        self.fsync("/c.txt");
        self.rename("/c.txt", "/dir1/c.txt");
        self.unlink("/hello.txt");
        self.fsync("/dir1/c.txt");
        // Write a temporary, fsync it, rename it over the original, fsync.
        self.write("/dir1/a.tmp", 0, &pattern(4500, 14), true);
        self.fsync("/dir1/a.tmp");
        self.rename("/dir1/a.tmp", "/a.txt");
        self.fsync("/a.txt");
        self.truncate("/dir1/b.bin", 5000);
        self.mkdir("/dir2");
        for index in 0..40 {
            let name = format!("/dir2/a-rather-long-file-name-number-{index:03}");
            self.write(&name, 0, &pattern(100 + index * 37, index as u8), true);
        }
        self.fsync("/dir2/a-rather-long-file-name-number-000");
        for index in (0..40).step_by(3) {
            self.unlink(&format!("/dir2/a-rather-long-file-name-number-{index:03}"));
        }
        self.rename("/dir2", "/dir1/dir2");
        self.unlink("/big.bin");
        self.write("/d.txt", 0, &pattern(7000, 15), true);
        self.fsync("/d.txt");
        // Never fsynced: whatever of this reaches the disk came from cache pressure.
        self.write("/d.txt", 0, &pattern(7000, 16), false);
        self.write("/e.txt", 0, &pattern(9000, 17), true);
        self.unlink("/dir1/c.txt");
        let touched = std::mem::take(&mut self.touched);
        self.durable.last_mut().unwrap().touched_after = touched;
    }
}

/// Times for the filesystem (fixed, so that runs are identical).
struct FixedExt2Clock;

impl keel_ext2::Clock for FixedExt2Clock {
    fn now(&self) -> u32 {
        1_700_000_000
    }
}

/// The files of the mkfs tree, by path.
fn tree_model(dir: &Path, prefix: &str, model: &mut Model) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = format!("{prefix}/{name}");
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            tree_model(&entry.path(), &path, model);
        } else if kind.is_file() {
            model.insert(path, std::fs::read(entry.path()).unwrap());
        }
    }
}

/// Reads a path on a mounted survivor; `None` if it cannot be found or read.
fn read_path<D: BlockDevice>(fs: &Ext2<D>, path: &str) -> Option<Vec<u8>> {
    let inode = resolve(fs, path).ok()?;
    let size = fs.stat(inode).ok()?.size as usize;
    let mut buf = vec![0; size];
    let mut done = 0;
    while done < size {
        let count = fs.read_at(inode, done as u64, &mut buf[done..]).ok()?;
        if count == 0 {
            return None;
        }
        done += count;
    }
    Some(buf)
}

/// Walks the whole tree of a survivor, reading every file, ignoring errors: this
/// must not panic, whatever the image holds.
fn walk_everything<D: BlockDevice>(fs: &Ext2<D>, dir: keel_ext2::InodeNumber, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs.readdir(dir) else { return };
    for entry in entries {
        if entry.name == b"." || entry.name == b".." {
            continue;
        }
        let Ok(meta) = fs.stat(entry.inode) else {
            continue;
        };
        match meta.file_type {
            keel_ext2::FileType::Directory => walk_everything(fs, entry.inode, depth + 1),
            keel_ext2::FileType::Regular => {
                let mut buf = vec![0; 64 * 1024];
                let mut offset = 0u64;
                while let Ok(count) = fs.read_at(entry.inode, offset, &mut buf) {
                    if count == 0 {
                        break;
                    }
                    offset += count as u64;
                }
            }
            keel_ext2::FileType::Symlink => {
                let _ = fs.readlink(entry.inode);
            }
            _ => {}
        }
    }
}

fn e2fsck_with(image: &Path, option: &str) -> (i32, String) {
    let output = Command::new("/usr/sbin/e2fsck")
        .arg(option)
        .arg(image)
        .output()
        .or_else(|_| Command::new("e2fsck").arg(option).arg(image).output())
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// The kinds of problem `e2fsck -fn` names in `report`.
fn problem_kinds(report: &str) -> BTreeSet<String> {
    const KINDS: &[(&str, &str)] = &[
        ("i_size is", "inode i_size wrong"),
        ("i_blocks is", "inode i_blocks wrong"),
        ("deleted/unused inode", "entry names a deleted/unused inode"),
        ("incorrect filetype", "entry has an incorrect filetype"),
        (
            "Block bitmap differences:  +",
            "block bitmap: used blocks marked free (+)",
        ),
        (
            "Block bitmap differences:  -",
            "block bitmap: free blocks marked used (-)",
        ),
        (
            "Inode bitmap differences:  +",
            "inode bitmap: used inodes marked free (+)",
        ),
        (
            "Inode bitmap differences:  -",
            "inode bitmap: free inodes marked used (-)",
        ),
        ("Free blocks count wrong", "free blocks count wrong"),
        ("Free inodes count wrong", "free inodes count wrong"),
        ("Directories count wrong", "directories count wrong"),
        ("multiply-claimed", "multiply-claimed blocks"),
        ("illegal block", "illegal block in an inode"),
        ("ref count is", "inode links count wrong"),
        ("Unattached inode", "unattached inode (to lost+found)"),
        (
            "Unattached zero-length inode",
            "unattached zero-length inode",
        ),
        (
            "Unconnected directory inode",
            "unconnected directory (to lost+found)",
        ),
        ("' in ", "'..' of a directory wrong"),
    ];
    let mut kinds = BTreeSet::new();
    for line in report.lines() {
        if let Some((_, kind)) = KINDS.iter().find(|(needle, _)| line.contains(needle)) {
            kinds.insert(kind.to_string());
        } else if line.contains("Clear?")
            || line.contains("Fix?")
            || line.contains("should be")
            || line.contains("wrong")
        {
            kinds.insert(format!(
                "other: {}",
                line.chars().take(80).collect::<String>()
            ));
        }
    }
    kinds
}

#[derive(Default)]
struct Summary {
    survivors: usize,
    fsck_exit: BTreeMap<i32, usize>,
    kinds: BTreeMap<String, usize>,
    promise_checked_files: usize,
    /// Survivors where a promised file was missing or wrong (asserted to be none
    /// except for torn writes), and an example.
    broken_promises: usize,
    example: Option<String>,
    /// Files the last fsync promised that were missing or different after
    /// `e2fsck -fy` (recorded: the guarantee is about Keel's view before repair).
    lost_by_repair: usize,
}

/// Builds survivor `variant` for a cut after event `cut` (a write), checks it, adds
/// to `summary`.
fn check_survivor(
    label: &str,
    survivor: Vec<u8>,
    cut: usize,
    durable: &[Durable],
    temp: &TempDir,
    summary: &mut Summary,
    assert_promise: bool,
) {
    // The last fsync completed at or before the cut (its final flush is in the log
    // before the cut).
    let last = durable
        .iter()
        .rev()
        .find(|durable| durable.end <= cut)
        .unwrap();
    let promised: Vec<(&String, &Vec<u8>)> = last
        .model
        .iter()
        .filter(|(path, _)| !last.touched_after.contains(*path))
        .collect();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let fs = match Ext2::mount(Survivor(Mutex::new(survivor.clone()))) {
            Ok(fs) => fs,
            Err(error) => return Err(format!("mount failed: {error}")),
        };
        let mut wrong = Vec::new();
        for (path, contents) in &promised {
            match read_path(&fs, path) {
                Some(found) if found == **contents => {}
                Some(found) => wrong.push(format!(
                    "{path}: {} bytes, expected {}",
                    found.len(),
                    contents.len()
                )),
                None => wrong.push(format!("{path}: not found or unreadable")),
            }
        }
        walk_everything(&fs, fs.root(), 0);
        Ok(wrong)
    }));
    let wrong = match result {
        Err(_) => panic!("{label}: Keel panicked on the survivor of cut {cut}"),
        Ok(Err(error)) => panic!("{label}: cut {cut}: {error}"),
        Ok(Ok(wrong)) => wrong,
    };
    if !wrong.is_empty() {
        assert!(
            !assert_promise,
            "{label}: cut {cut}: a file the fsync at event {} made durable is wrong: {wrong:?}",
            last.end
        );
        summary.broken_promises += 1;
        if let Ok(dir) = std::env::var("KEEL_CRASH_KEEP") {
            std::fs::write(format!("{dir}/{label}-{cut}.img"), &survivor).unwrap();
        }
        summary
            .example
            .get_or_insert_with(|| format!("cut {cut}: {wrong:?}"));
    }
    summary.survivors += 1;
    summary.promise_checked_files += promised.len();

    let path = temp.join("survivor.img");
    std::fs::write(&path, &survivor).unwrap();
    let (code, report) = e2fsck(&path);
    *summary.fsck_exit.entry(code).or_default() += 1;
    if code >= 8
        && let Ok(dir) = std::env::var("KEEL_CRASH_KEEP")
    {
        std::fs::write(format!("{dir}/fsck{code}-{label}-{cut}.img"), &survivor).unwrap();
    }
    for kind in problem_kinds(&report) {
        *summary.kinds.entry(kind).or_default() += 1;
    }
    if code != 0 {
        let (fix_code, fix_report) = e2fsck_with(&path, "-fy");
        assert!(
            fix_code <= 2,
            "{label}: cut {cut}: e2fsck -fy exited {fix_code}:\n{fix_report}"
        );
        let (after, after_report) = e2fsck(&path);
        assert_eq!(
            after, 0,
            "{label}: cut {cut}: still unclean after e2fsck -fy:\n{after_report}"
        );
        let repaired = std::fs::read(&path).unwrap();
        let fs = Ext2::mount(Survivor(Mutex::new(repaired))).unwrap();
        for (path, contents) in &promised {
            if read_path(&fs, path).as_ref() != Some(*contents) {
                summary.lost_by_repair += 1;
            }
        }
    }
}

/// Writes of `log` among its first `cut` events, applied to `base`.
fn apply(base: &[u8], log: &[Event], events: impl Iterator<Item = usize>) -> Vec<u8> {
    let mut image = base.to_vec();
    for index in events {
        if let Event::Write { sector, data } = &log[index] {
            let start = *sector as usize * SECTOR_SIZE;
            image[start..start + data.len()].copy_from_slice(data);
        }
    }
    image
}

fn setup(temp: &TempDir) -> (Vec<u8>, Model) {
    let tree = temp.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    fill_tree(&tree);
    let image = temp.join("image");
    mkfs(Some(&tree), &image, 1024, 4096, &[]);
    let mut model = Model::new();
    tree_model(&tree, "", &mut model);
    (std::fs::read(&image).unwrap(), model)
}

fn run_cuts(name: &str, cache_bytes: usize) {
    if !have_e2fsprogs(name) {
        return;
    }
    let temp = TempDir::new(name);
    let (base, initial) = setup(&temp);
    let mut workload = Workload::new(base.clone(), initial.clone(), cache_bytes, None);
    workload.run();
    let log = workload.device.0.lock().unwrap().log.clone();
    let durable = workload.durable.clone();
    drop(workload);
    let writes: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, event)| matches!(event, Event::Write { .. }))
        .map(|(index, _)| index)
        .collect();

    // The recording is what a cut device leaves: check a few cuts by running the
    // workload again on a device that drops writes after the cut.
    for &cut_writes in &[1, writes.len() / 3, writes.len() / 2, writes.len() - 1] {
        let mut cut = Workload::new(base.clone(), initial.clone(), cache_bytes, Some(cut_writes));
        cut.run();
        let live = cut.device.0.lock().unwrap().disk.clone();
        drop(cut);
        let replay = apply(&base, &log, 0..writes[cut_writes - 1] + 1);
        assert!(live == replay, "cut after {cut_writes} writes differs");
    }

    let mut in_order = Summary::default();
    let mut torn = Summary::default();
    let mut reordered = Summary::default();
    // Cut just before write `position` (the whole log for the last): every event
    // before it happened.
    for position in 0..=writes.len() {
        let cut = writes.get(position).copied().unwrap_or(log.len());
        check_survivor(
            "in order",
            apply(&base, &log, 0..cut),
            cut,
            &durable,
            &temp,
            &mut in_order,
            true,
        );
        // Write `position` torn: its first half of sectors lands.
        if let Some(Event::Write { sector, data }) = log.get(cut)
            && data.len() > SECTOR_SIZE
        {
            let mut image = apply(&base, &log, 0..cut);
            let half = (data.len() / SECTOR_SIZE / 2) * SECTOR_SIZE;
            let start = *sector as usize * SECTOR_SIZE;
            image[start..start + half].copy_from_slice(&data[..half]);
            check_survivor("torn", image, cut, &durable, &temp, &mut torn, true);
        }
        // Writes since the last flush land as a subset (every other one, from a
        // position-dependent start).
        let flushed = log[..cut]
            .iter()
            .rposition(|event| matches!(event, Event::Flush))
            .map_or(0, |index| index + 1);
        if cut - flushed > 1 {
            let image = apply(
                &base,
                &log,
                (0..flushed).chain((flushed..cut).filter(|index| (index + position) % 2 == 0)),
            );
            check_survivor(
                "reordered",
                image,
                cut,
                &durable,
                &temp,
                &mut reordered,
                true,
            );
        }
    }
    println!(
        "{name}: {} events ({} writes), {} fsyncs",
        log.len(),
        writes.len(),
        durable.len() - 1
    );
    for (label, summary) in [
        ("in order", &in_order),
        ("torn", &torn),
        ("reordered", &reordered),
    ] {
        println!(
            "  {label}: {} survivors, {} promised file checks, {} survivors with a promised \
             file wrong (e.g. {:?}), e2fsck -fn exit codes {:?}, promised files lost or \
             changed by e2fsck -fy: {}",
            summary.survivors,
            summary.promise_checked_files,
            summary.broken_promises,
            summary.example,
            summary.fsck_exit,
            summary.lost_by_repair
        );
        for (kind, count) in &summary.kinds {
            println!("    {count:4} x {kind}");
        }
    }
}

#[test]
fn every_cut_keeps_what_was_fsynced_large_cache() {
    run_cuts("crash-large-cache", 4 << 20);
}

#[test]
fn every_cut_keeps_what_was_fsynced_small_cache() {
    // Eight 1 KiB blocks: the cache is often full of dirty blocks and writes back in
    // the middle of operations.
    run_cuts("crash-small-cache", 8 * 1024);
}

#[test]
fn a_clean_unmount_makes_everything_durable() {
    if !have_e2fsprogs("a_clean_unmount_makes_everything_durable") {
        return;
    }
    let temp = TempDir::new("crash-unmount");
    let (base, initial) = setup(&temp);
    let device = RecordingDevice::new(base, None);
    let fs = Ext2::mount_with(
        device.clone(),
        MountOptions::default(),
        Box::new(FixedExt2Clock),
    )
    .unwrap();
    // The same kind of changes, through the inode API, none of them synced.
    let root = fs.root();
    let a = fs.create(root, b"a.txt", 0o644).unwrap();
    fs.write_at(a, 0, &pattern(30_000, 1)).unwrap();
    let dir = fs.mkdir(root, b"dir1", 0o755).unwrap();
    fs.rename(root, b"big.bin", dir, b"big.bin").unwrap();
    fs.unlink(root, b"hello.txt").unwrap();
    let mut expected = initial;
    expected.remove("/hello.txt");
    let big = expected.remove("/big.bin").unwrap();
    expected.insert("/dir1/big.bin".into(), big);
    expected.insert("/a.txt".into(), pattern(30_000, 1));
    fs.unmount().unwrap();
    let image = device.0.lock().unwrap().image.clone();
    let path = temp.join("unmounted.img");
    std::fs::write(&path, &image).unwrap();
    let (code, report) = e2fsck(&path);
    assert_eq!(code, 0, "{report}");
    // Clean flag set: e2fsck without -f skips the check.
    let (code, report) = e2fsck_with(&path, "-n");
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("clean"), "{report}");
    let fs = Ext2::mount(Survivor(Mutex::new(image))).unwrap();
    for (path, contents) in &expected {
        assert_eq!(read_path(&fs, path).as_ref(), Some(contents), "{path}");
    }
}
