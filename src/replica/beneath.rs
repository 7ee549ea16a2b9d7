//! Files beneath a folder, named by relative paths that cannot leave it: the only way the
//! recovery side of a backup set touches its copy, its staging and its deltas.
//!
//! A path is checked first ([`check`]: relative, no `.` or `..`, no empty component, no NUL,
//! bounded lengths), then resolved one component at a time from the folder's descriptor with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`: a symbolic link anywhere on the way, even one planted
//! in the copy after the check, is an error, never followed; the last component is created,
//! opened, renamed, removed or stamped without following a link either. The folder itself is
//! the operator's path and is opened as any path is.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest component accepted, in bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;

/// Whether `rel` may name something beneath a folder; why not.
pub fn check(rel: &str) -> Result<(), String> {
    let why = if rel.is_empty() {
        "it is empty"
    } else if rel.len() > MAX_PATH {
        "it is longer than 4096 bytes"
    } else if rel.contains('\0') {
        "it holds a NUL byte"
    } else if rel.starts_with('/') {
        "it is absolute"
    } else if rel.split('/').any(|c| c == "..") {
        "it climbs out with `..`"
    } else if rel.split('/').any(|c| c.is_empty() || c == ".") {
        "it has an empty or `.` component"
    } else if rel.split('/').any(|c| c.len() > MAX_COMPONENT) {
        "it has a component longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(format!("refusing the path `{}`: {why}", shown(rel)))
}

/// A path from another host as a message shows it: control characters escaped (they could
/// drive the operator's terminal), at most 200 characters.
pub fn shown(rel: &str) -> String {
    let mut s: String = rel.escape_debug().take(200).collect();
    if rel.escape_debug().nth(200).is_some() {
        s.push('…');
    }
    s
}

/// What a path names, its last component not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    Other,
}

/// An open folder, and its path for messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, reason)
}

impl Dir {
    /// Opens the folder `path`, created with its parents when `create`.
    pub fn open(path: &Path, create: bool) -> io::Result<Dir> {
        if create {
            std::fs::create_dir_all(path)?;
        }
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding `rel`'s last component, and that component; `None` when a folder
    /// on the way does not exist and `create` is false.
    fn parent<'r>(&self, rel: &'r str, create: bool) -> io::Result<Option<(OwnedFd, &'r str)>> {
        check(rel).map_err(invalid)?;
        let (dirs, name) = match rel.rsplit_once('/') {
            Some((dirs, name)) => (Some(dirs), name),
            None => (None, rel),
        };
        let mut fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut walked = String::new();
        for c in dirs.into_iter().flat_map(|d| d.split('/')) {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(c);
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&fd, c, flags, Mode::empty()) {
                Ok(next) => next,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, c, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&fd, c, flags, Mode::empty())
                        .map_err(|e| self.why(&fd, c, &walked, e))?
                }
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.why(&fd, c, &walked, e)),
            };
            fd = next;
        }
        Ok(Some((fd, name)))
    }

    /// The error of a component that could not be entered, saying when it is a link.
    fn why(&self, fd: &OwnedFd, name: &str, walked: &str, e: rustix::io::Errno) -> io::Error {
        let kind = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| FileType::from_raw_mode(st.st_mode));
        let at = format!("{}/{}", self.path.display(), shown(walked));
        match kind {
            Ok(FileType::Symlink) => io::Error::other(format!(
                "{} is a symbolic link: links inside a copy are never followed (remove it)",
                at
            )),
            Ok(FileType::Directory) | Err(_) => io::Error::from(e),
            Ok(_) => io::Error::other(format!("{at} is not a folder")),
        }
    }

    /// What `rel` is, if anything (its last component not followed).
    pub fn kind(&self, rel: &str) -> io::Result<Option<Kind>> {
        let Some((fd, name)) = self.parent(rel, false)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::Symlink => Kind::Link,
                _ => Kind::Other,
            })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates (or empties) the file `rel` for writing, and the folders on its way.
    pub fn create_file(&self, rel: &str) -> io::Result<File> {
        let (fd, name) = self.parent(rel, true)?.expect("created");
        let flags =
            OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&fd, name, flags, Mode::from_raw_mode(0o666))
            .map_err(|e| self.not_a_link(&fd, name, rel, e))?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `rel` for reading.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        let Some((fd, name)) = self.parent(rel, false)? else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&fd, name, flags, Mode::empty())
            .map_err(|e| self.not_a_link(&fd, name, rel, e))?;
        Ok(File::from(fd))
    }

    fn not_a_link(&self, fd: &OwnedFd, name: &str, rel: &str, e: rustix::io::Errno) -> io::Error {
        if e == rustix::io::Errno::LOOP {
            return self.why(fd, name, rel, e);
        }
        e.into()
    }

    /// Moves `rel` to `to_rel` beneath `to` (on the same file system), creating the folders
    /// on the way; a link is moved as a link, never followed.
    pub fn rename(&self, rel: &str, to: &Dir, to_rel: &str) -> io::Result<()> {
        let Some((from_fd, from_name)) = self.parent(rel, false)? else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let (to_fd, to_name) = to.parent(to_rel, true)?.expect("created");
        rustix::fs::renameat(&from_fd, from_name, &to_fd, to_name).map_err(Into::into)
    }

    /// Whether a file can be moved from `from` to `rel` beneath this folder: `false` when the
    /// nearest folder on `rel`'s way that exists (where the move would put it, or create the
    /// folders it needs) is on another mount than `from` (another file system, or a bind
    /// mount of the same one), where a move fails with EXDEV. Found by moving a name that
    /// exists in neither: Linux compares the mounts before it looks the name up, so nothing
    /// is moved (`ENOENT` when they are the same).
    pub fn reachable_by_move(&self, rel: &str, from: &Dir) -> io::Result<bool> {
        const ABSENT: &str = "reprise-mount-probe.absent";
        check(rel).map_err(invalid)?;
        let dirs = rel.rsplit_once('/').map(|(d, _)| d);
        let mut fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for c in dirs.into_iter().flat_map(|d| d.split('/')) {
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
            match rustix::fs::openat(&fd, c, flags, Mode::empty()) {
                Ok(next) => fd = next,
                Err(rustix::io::Errno::NOENT) => break,
                Err(e) => return Err(e.into()),
            }
        }
        match rustix::fs::renameat(&from.fd, ABSENT, &fd, ABSENT) {
            Err(rustix::io::Errno::XDEV) => Ok(false),
            Err(rustix::io::Errno::NOENT) => Ok(true),
            // There after all (never made by reprise): put back where it was.
            Ok(()) => {
                rustix::fs::renameat(&fd, ABSENT, &from.fd, ABSENT)?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the file (or link) `rel`.
    pub fn remove_file(&self, rel: &str) -> io::Result<()> {
        let Some((fd, name)) = self.parent(rel, false)? else {
            return Err(io::ErrorKind::NotFound.into());
        };
        rustix::fs::unlinkat(&fd, name, AtFlags::empty()).map_err(Into::into)
    }

    /// Sets the modification time of `rel` (nanoseconds since the epoch), not following a
    /// link.
    pub fn set_mtime(&self, rel: &str, ns: i128) -> io::Result<()> {
        let Some((fd, name)) = self.parent(rel, false)? else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let secs = i64::try_from(ns.div_euclid(1_000_000_000))
            .map_err(|_| invalid(format!("the time {ns} is out of range")))?;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: secs,
                tv_nsec: ns.rem_euclid(1_000_000_000) as _,
            },
        };
        rustix::fs::utimensat(&fd, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_pass() {
        for good in ["a", "a/b.dump", "sub/dir/x y", ".hidden", "a..b", "..a"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        let long = "x".repeat(256);
        let deep = "a/".repeat(2100) + "a";
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a\0b",
            long.as_str(),
            deep.as_str(),
        ] {
            assert!(check(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn a_link_on_the_way_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("copy");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("file")).unwrap();
        let d = Dir::open(&root, false).unwrap();
        let e = d.create_file("sub/secret").unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let e = d.create_file("file").unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(d.open_file("file").is_err());
        assert!(d.set_mtime("sub/secret", 0).is_err());
        assert!(d.remove_file("sub/secret").is_err());
        assert_eq!(d.kind("file").unwrap(), Some(Kind::Link));
        assert!(d.kind("sub/secret").is_err());
        // Removing the link itself is fine, and leaves its target alone.
        d.remove_file("file").unwrap();
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"keep");
        let meta = std::fs::metadata(outside.join("secret")).unwrap();
        assert!(meta.modified().unwrap() > std::time::UNIX_EPOCH);
        assert!(d.create_file("../outside/x").is_err());
        assert!(!outside.join("x").exists());
    }
}
