//! The boot image: a cpio archive in the "newc" format (the one Linux's initramfs
//! uses: `find . | cpio -o -H newc`), unpacked into the VFS at boot.
//!
//! Each entry is a 110-byte ASCII header (`070701`, or `070702` with a checksum, then
//! 13 fields of 8 hex digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
//! devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated name, padding
//! to 4 bytes, the data, padding to 4 bytes; the entry named `TRAILER!!!` ends the
//! archive. Directories, regular files, symlinks (the data is the target) and hard
//! links (entries sharing ino, devmajor and devminor: later ones are linked to the
//! first, and the data, which newc stores with one of them, is written through
//! whichever has it) are created; device nodes, FIFOs and sockets are counted and
//! skipped (there is no devfs node creation yet).
//!
//! The archive comes from outside the kernel: every length and offset is checked, and
//! a malformed archive is a [`CpioError`] that says where and why, never a panic. What
//! was unpacked before the error stays.

use crate::context::{Context, TimeUpdate};
use crate::errno::Errno;
use crate::file::OpenFlags;
use crate::fs::Timespec;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use keel_lfmutex::Parker;

const HEADER_LEN: usize = 110;
const TRAILER: &[u8] = b"TRAILER!!!";
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
/// The longest path accepted (Linux's PATH_MAX).
const MAX_NAME: usize = 4096;

/// Why an archive could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioError {
    /// The archive ends inside an entry (at `offset`), or has no trailer.
    Truncated {
        /// Where the entry that does not fit starts.
        offset: usize,
    },
    /// The entry at `offset` does not start with `070701` or `070702`.
    BadMagic {
        /// The entry's offset.
        offset: usize,
    },
    /// A header field is not 8 hexadecimal digits.
    BadField {
        /// The entry's offset.
        offset: usize,
        /// The field's name.
        field: &'static str,
    },
    /// The name is empty, too long or not NUL-terminated.
    BadName {
        /// The entry's offset.
        offset: usize,
    },
    /// The VFS refused to create an entry.
    Create {
        /// The entry's name.
        name: Vec<u8>,
        /// Why.
        errno: Errno,
    },
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { offset } => {
                write!(f, "cpio archive truncated in the entry at byte {offset}")
            }
            Self::BadMagic { offset } => {
                write!(f, "no cpio newc header (070701/070702) at byte {offset}")
            }
            Self::BadField { offset, field } => write!(
                f,
                "cpio entry at byte {offset}: field {field} is not 8 hex digits"
            ),
            Self::BadName { offset } => write!(
                f,
                "cpio entry at byte {offset}: its name is empty, too long or not NUL-terminated"
            ),
            Self::Create { name, errno } => write!(
                f,
                "cannot create {:?} from the cpio archive: {errno}",
                alloc::string::String::from_utf8_lossy(name)
            ),
        }
    }
}

/// What [`unpack`] created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Directories made.
    pub directories: usize,
    /// Regular files created (hard links not counted).
    pub files: usize,
    /// Symlinks made.
    pub symlinks: usize,
    /// Hard links made.
    pub hard_links: usize,
    /// Device nodes, FIFOs and sockets skipped.
    pub skipped: usize,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// One header's fields.
#[derive(Debug, Clone, Copy)]
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    file_size: usize,
    dev_major: u32,
    dev_minor: u32,
    name_size: usize,
}

const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

fn hex_field(bytes: &[u8], offset: usize, index: usize) -> Result<u32, CpioError> {
    let start = 6 + index * 8;
    let text = bytes
        .get(start..start + 8)
        .ok_or(CpioError::Truncated { offset })?;
    let mut value = 0u32;
    for &digit in text {
        let nibble = (digit as char).to_digit(16).ok_or(CpioError::BadField {
            offset,
            field: FIELDS[index],
        })?;
        value = (value << 4) | nibble;
    }
    Ok(value)
}

fn parse_header(archive: &[u8], offset: usize) -> Result<Header, CpioError> {
    let header = archive
        .get(
            offset
                ..offset
                    .checked_add(HEADER_LEN)
                    .ok_or(CpioError::Truncated { offset })?,
        )
        .ok_or(CpioError::Truncated { offset })?;
    if &header[..6] != b"070701" && &header[..6] != b"070702" {
        return Err(CpioError::BadMagic { offset });
    }
    let field = |index| hex_field(header, offset, index);
    Ok(Header {
        ino: field(0)?,
        mode: field(1)?,
        nlink: field(4)?,
        mtime: field(5)?,
        file_size: field(6)? as usize,
        dev_major: field(7)?,
        dev_minor: field(8)?,
        name_size: field(11)? as usize,
    })
}

fn align4(value: usize) -> Option<usize> {
    value.checked_add(3).map(|value| value & !3)
}

/// The archive's path as an absolute VFS path: `./a/b`, `a/b` and `/a/b` all name
/// `/a/b`; `.` names the root.
fn absolute(name: &[u8]) -> Vec<u8> {
    let mut rest = name;
    loop {
        if let Some(stripped) = rest.strip_prefix(b"./") {
            rest = stripped;
        } else if let Some(stripped) = rest.strip_prefix(b"/") {
            rest = stripped;
        } else {
            break;
        }
    }
    let mut path = Vec::with_capacity(rest.len() + 1);
    path.push(b'/');
    if rest != b"." {
        path.extend_from_slice(rest);
    }
    path
}

/// Unpacks `archive` below the root of `context`'s VFS. Existing directories are kept
/// (an archive may list `.` or a directory twice); an existing file is replaced.
pub fn unpack<P: Parker + 'static>(
    context: &Context<P>,
    archive: &[u8],
) -> Result<UnpackReport, CpioError> {
    let mut report = UnpackReport::default();
    // (ino, devmajor, devminor) of a multiply-linked file -> its first path.
    let mut links: BTreeMap<(u32, u32, u32), Vec<u8>> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let header = parse_header(archive, offset)?;
        let name_start = offset + HEADER_LEN;
        if header.name_size == 0 || header.name_size > MAX_NAME {
            return Err(CpioError::BadName { offset });
        }
        let name_end = name_start
            .checked_add(header.name_size)
            .ok_or(CpioError::Truncated { offset })?;
        let name = archive
            .get(name_start..name_end)
            .ok_or(CpioError::Truncated { offset })?;
        let Some((&0, name)) = name.split_last() else {
            return Err(CpioError::BadName { offset });
        };
        if name.is_empty() || name.contains(&0) {
            return Err(CpioError::BadName { offset });
        }
        let data_start = align4(name_end).ok_or(CpioError::Truncated { offset })?;
        let data_end = data_start
            .checked_add(header.file_size)
            .ok_or(CpioError::Truncated { offset })?;
        let data = archive
            .get(data_start..data_end)
            .ok_or(CpioError::Truncated { offset })?;
        if name == TRAILER {
            return Ok(report);
        }
        create(context, &header, name, data, &mut links, &mut report)?;
        offset = align4(data_end).ok_or(CpioError::Truncated { offset })?;
    }
}

fn create<P: Parker + 'static>(
    context: &Context<P>,
    header: &Header,
    name: &[u8],
    data: &[u8],
    links: &mut BTreeMap<(u32, u32, u32), Vec<u8>>,
    report: &mut UnpackReport,
) -> Result<(), CpioError> {
    let path = absolute(name);
    let failed = |errno| CpioError::Create {
        name: name.to_vec(),
        errno,
    };
    let permissions = header.mode & 0o7777;
    match header.mode & S_IFMT {
        S_IFDIR => {
            if path != b"/" {
                match context.mkdir(&path, permissions) {
                    Ok(()) => report.directories += 1,
                    Err(Errno::EEXIST) if is_directory(context, &path) => {}
                    Err(errno) => return Err(failed(errno)),
                }
            }
        }
        S_IFLNK => {
            let _ = context.unlink(&path);
            context.symlink(data, &path).map_err(failed)?;
            report.symlinks += 1;
        }
        S_IFREG => {
            let key = (header.ino, header.dev_major, header.dev_minor);
            let first = if header.nlink > 1 {
                links.get(&key).cloned()
            } else {
                None
            };
            let flags = OpenFlags::O_WRONLY | OpenFlags::O_CREAT | OpenFlags::O_TRUNC;
            match first {
                Some(first) => {
                    let _ = context.unlink(&path);
                    context.link(&first, &path).map_err(failed)?;
                    report.hard_links += 1;
                    if data.is_empty() {
                        return Ok(());
                    }
                }
                None => {
                    if header.nlink > 1 {
                        links.insert(key, path.clone());
                    }
                    report.files += 1;
                }
            }
            let fd = context.open(&path, flags, permissions).map_err(failed)?;
            let mut written = 0;
            while written < data.len() {
                match context.write(fd, &data[written..]) {
                    Ok(0) => {
                        let _ = context.close(fd);
                        return Err(failed(Errno::EIO));
                    }
                    Ok(count) => written += count,
                    Err(errno) => {
                        let _ = context.close(fd);
                        return Err(failed(errno));
                    }
                }
            }
            context.close(fd).map_err(failed)?;
            report.bytes += data.len() as u64;
        }
        _ => {
            report.skipped += 1;
            return Ok(());
        }
    }
    let time = Timespec {
        sec: i64::from(header.mtime),
        nsec: 0,
    };
    // The archive's mtime, best effort (a symlink's own time is not kept).
    if header.mode & S_IFMT != S_IFLNK {
        let _ = context.utimensat(&path, TimeUpdate::Set(time), TimeUpdate::Set(time), 0);
    }
    Ok(())
}

fn is_directory<P: Parker + 'static>(context: &Context<P>, path: &[u8]) -> bool {
    context
        .stat(path)
        .is_ok_and(|stat| stat.file_type() == Some(crate::fs::FileType::Directory))
}
