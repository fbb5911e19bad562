//! Filling a new volume with the image's content at its mount path, as Docker does: files,
//! directories, symlinks (as links), device nodes and fifos, with modes, owners, times and
//! extended attributes.
//!
//! The source directory is found with openat2 `RESOLVE_IN_ROOT` and walked through directory
//! file descriptors with `O_NOFOLLOW`, so no symlink in the image leads the copy out of the rootfs.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

use crate::user::open_in_root;

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

type Result<T> = std::io::Result<T>;

/// Copies the directory `target` (absolute, in the container) of `rootfs` into `dest` (an
/// empty directory). Nothing is copied when `target` does not exist or is not a directory.
pub(super) fn fill(rootfs: &Path, target: &Path, dest: &Path) -> Result<()> {
    let root = rustix::fs::open(rootfs, DIR, Mode::empty())?;
    let rel = target.strip_prefix("/").unwrap_or(target);
    let rel = if rel.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        rel.as_os_str()
    };
    let src = match open_in_root(root.as_fd(), rel, DIR) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let dst = File::from(rustix::fs::open(dest, DIR, Mode::empty())?);
    // The volume's root takes the image directory's mode and owner.
    let st = rustix::fs::fstat(&src)?;
    copy_dir(&src, &dst)?;
    rustix::fs::fchown(
        &dst,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    rustix::fs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    copy_xattrs(&src, &dst)?;
    Ok(())
}

fn names(dir: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    let fd = rustix::fs::openat(dir, ".", DIR, Mode::empty())?;
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(out)
}

/// A directory being copied: its entries still to copy, and the source directory's stat to
/// give the copy once they are done (none for the top, which [`fill`] finishes).
struct Level {
    src: File,
    dst: File,
    names: std::vec::IntoIter<OsString>,
    stat: Option<rustix::fs::Stat>,
}

/// Copies the entries of `src` into `dst`, depth first with an explicit stack (an image can
/// nest directories deeper than a thread's stack would allow recursion).
fn copy_dir(src: &File, dst: &File) -> Result<()> {
    let mut stack = vec![Level {
        names: names(src.as_fd())?.into_iter(),
        src: src.try_clone()?,
        dst: dst.try_clone()?,
        stat: None,
    }];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.next() else {
            let done = stack.pop().expect("the stack is not empty");
            if let Some(st) = done.stat {
                finish(
                    done.dst.as_fd(),
                    &st,
                    Mode::from_raw_mode(st.st_mode & 0o7777),
                )?;
                copy_xattrs(&done.src, &done.dst)?;
            }
            continue;
        };
        let (src, dst) = (level.src.as_fd(), level.dst.as_fd());
        let st = rustix::fs::statat(src, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            rustix::fs::mkdirat(dst, &name, Mode::from_raw_mode(0o700))?;
            let s = File::from(rustix::fs::openat(src, &name, DIR, Mode::empty())?);
            let d = File::from(rustix::fs::openat(dst, &name, DIR, Mode::empty())?);
            let child = Level {
                names: names(s.as_fd())?.into_iter(),
                src: s,
                dst: d,
                stat: Some(st),
            };
            stack.push(child);
        } else {
            copy_entry(src, dst, &name, &st)?;
        }
    }
    Ok(())
}

/// Copies one entry that is not a directory.
fn copy_entry(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &OsStr,
    st: &rustix::fs::Stat,
) -> Result<()> {
    let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
    let owner = (
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    );
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let s = rustix::fs::openat(
                src,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let d = rustix::fs::openat(
                dst,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let (mut s, mut d) = (File::from(s), File::from(d));
            std::io::copy(&mut s, &mut d)?;
            finish(d.as_fd(), st, mode)?;
            copy_xattrs(&s, &d)?;
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(src, name, Vec::new())?;
            rustix::fs::symlinkat(&target, dst, name)?;
            rustix::fs::chownat(dst, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)?;
            set_times(dst, name, st)?;
        }
        typ @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
            rustix::fs::mknodat(dst, name, typ, mode, st.st_rdev)?;
            rustix::fs::chownat(dst, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)?;
            rustix::fs::chmodat(dst, name, mode, AtFlags::empty())?;
            set_times(dst, name, st)?;
        }
        // Sockets are not content; directories are walked by the caller.
        _ => {}
    }
    Ok(())
}

/// Owner, then mode (chown clears set-id bits), then times of an open copy.
fn finish(fd: BorrowedFd<'_>, st: &rustix::fs::Stat, mode: Mode) -> Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )?;
    rustix::fs::fchmod(fd, mode)?;
    rustix::fs::futimens(fd, &timestamps(st))?;
    Ok(())
}

fn timestamps(st: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

fn set_times(dir: BorrowedFd<'_>, name: &OsStr, st: &rustix::fs::Stat) -> Result<()> {
    rustix::fs::utimensat(dir, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Copies the extended attributes of an open file or directory (overlay's private
/// `trusted.overlay.*` attributes excepted).
fn copy_xattrs(s: &File, d: &File) -> Result<()> {
    let list = match xattr::FileExt::list_xattr(s) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in list {
        if name.as_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        if let Some(value) = xattr::FileExt::get_xattr(s, &name)? {
            xattr::FileExt::set_xattr(d, &name, &value)?;
        }
    }
    Ok(())
}

/// Bytes used by the files under `path` (not following symlinks); 0 if it does not exist.
pub(super) fn disk_usage(path: &Path) -> u64 {
    let Ok(top) = rustix::fs::open(path, DIR, Mode::empty()) else {
        return 0;
    };
    let mut total = 0;
    // Directories to visit, as (parent, name): a directory is opened when visited, so open
    // descriptors stay bounded by the depth, not by the number of directories.
    let mut pending: Vec<(std::rc::Rc<std::os::fd::OwnedFd>, OsString)> = Vec::new();
    let mut visit =
        |dir: std::rc::Rc<std::os::fd::OwnedFd>,
         pending: &mut Vec<(std::rc::Rc<std::os::fd::OwnedFd>, OsString)>| {
            for name in names(dir.as_fd()).unwrap_or_default() {
                let Ok(st) = rustix::fs::statat(&*dir, &name, AtFlags::SYMLINK_NOFOLLOW) else {
                    continue;
                };
                total += st.st_blocks as u64 * 512;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    pending.push((dir.clone(), name));
                }
            }
        };
    visit(std::rc::Rc::new(top), &mut pending);
    while let Some((parent, name)) = pending.pop() {
        if let Ok(dir) = rustix::fs::openat(&*parent, &name, DIR, Mode::empty()) {
            drop(parent);
            visit(std::rc::Rc::new(dir), &mut pending);
        }
    }
    total
}
