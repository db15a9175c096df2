//! Path resolution ("namei"), as Linux does it.
//!
//! A path is split on `/` (runs of slashes count as one); it starts at the context's
//! root if it begins with `/`, else at its working directory. Every component but
//! the last must be (or, through symlinks, lead to) a directory, else `ENOTDIR`; `.`
//! stays, `..` goes up (not above the root, and out of a mount root to the parent of
//! the directory it covers); a component naming a mount point enters the mounted
//! root. Symlinks in the middle are always followed, the last one as the call says;
//! a trailing slash makes the last component follow and require a directory. At most
//! [`MAX_SYMLINKS`] symlinks are followed in one resolution (`ELOOP` beyond). A
//! component longer than [`NAME_MAX`] bytes, or a path of [`PATH_MAX`] bytes or more,
//! is `ENAMETOOLONG`; an empty path `ENOENT`; a NUL byte in it `EINVAL` (a C caller's
//! string ends before its NUL).

use crate::errno::{Errno, Result};
use crate::fs::FileType;
use crate::vfs::{Location, MAX_SYMLINKS, PATH_MAX, Vfs};
use keel_lfmutex::Parker;

/// The last component of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last<'a> {
    /// A name.
    Normal(&'a [u8]),
    /// `.`.
    Dot,
    /// `..`.
    DotDot,
    /// No component at all: the path was only slashes.
    Root,
}

/// A path walked up to its last component.
#[derive(Debug, Clone)]
pub(crate) struct Walk<'a> {
    /// The directory holding the last component.
    pub(crate) parent: Location,
    /// The last component.
    pub(crate) last: Last<'a>,
    /// Whether the path ended in `/`.
    pub(crate) trailing_slash: bool,
}

/// The start of a resolution: the context's root and working directory.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    /// `/`.
    pub(crate) root: Location,
    /// The directory relative paths start at.
    pub(crate) cwd: Location,
}

/// Checks a path's syntax.
pub(crate) fn check_path(path: &[u8]) -> Result<()> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if path.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl<P: Parker + 'static> Vfs<P> {
    /// Walks `path` up to its last component.
    pub(crate) fn walk<'a>(
        &self,
        start: &Start,
        path: &'a [u8],
        links: &mut u32,
    ) -> Result<Walk<'a>> {
        check_path(path)?;
        let mut current = if path[0] == b'/' {
            start.root.clone()
        } else {
            start.cwd.clone()
        };
        let trailing_slash = path.ends_with(b"/");
        let mut components = path.split(|&byte| byte == b'/').filter(|c| !c.is_empty());
        let Some(mut component) = components.next() else {
            return Ok(Walk {
                parent: current,
                last: Last::Root,
                trailing_slash: false,
            });
        };
        for next in components {
            let dir_start = Start {
                root: start.root.clone(),
                cwd: current.clone(),
            };
            current = self.step(&dir_start, component, true, links)?;
            if !current.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            component = next;
        }
        let last = match component {
            b"." => Last::Dot,
            b".." => Last::DotDot,
            name => Last::Normal(name),
        };
        Ok(Walk {
            parent: current,
            last,
            trailing_slash,
        })
    }

    /// Resolves one component in the directory `start.cwd`, following a symlink if
    /// `follow`, entering mounts.
    fn step(
        &self,
        start: &Start,
        component: &[u8],
        follow: bool,
        links: &mut u32,
    ) -> Result<Location> {
        let directory = &start.cwd;
        match component {
            b"." => Ok(directory.clone()),
            b".." => self.parent_of(&start.root, directory),
            name => {
                let child = self.lookup_child(directory, name)?;
                if follow && child.vnode.file_type() == FileType::Symlink {
                    self.follow_link(start, &child, links)
                } else {
                    Ok(self.enter_mounts(child))
                }
            }
        }
    }

    /// Where the symlink `link` (in the directory `start.cwd`) leads.
    pub(crate) fn follow_link(
        &self,
        start: &Start,
        link: &Location,
        links: &mut u32,
    ) -> Result<Location> {
        *links += 1;
        if *links > MAX_SYMLINKS {
            return Err(Errno::ELOOP);
        }
        let target = link.vnode.readlink()?;
        self.resolve(start, &target, true, links)
    }

    /// Resolves `path`, following a final symlink if `follow`.
    pub(crate) fn resolve(
        &self,
        start: &Start,
        path: &[u8],
        follow: bool,
        links: &mut u32,
    ) -> Result<Location> {
        let walk = self.walk(start, path, links)?;
        self.resolve_last(&start.root, walk, follow, links)
    }

    /// Resolves the last component of `walk`.
    pub(crate) fn resolve_last(
        &self,
        root: &Location,
        walk: Walk<'_>,
        follow: bool,
        links: &mut u32,
    ) -> Result<Location> {
        let start = Start {
            root: root.clone(),
            cwd: walk.parent.clone(),
        };
        let location = match walk.last {
            Last::Root | Last::Dot => walk.parent,
            Last::DotDot => self.parent_of(root, &walk.parent)?,
            Last::Normal(name) => self.step(&start, name, follow || walk.trailing_slash, links)?,
        };
        if walk.trailing_slash && !location.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(location)
    }
}
