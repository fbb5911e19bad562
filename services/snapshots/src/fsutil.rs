//! File-descriptor-relative filesystem helpers: every walk, copy and removal here works on
//! directory fds and never follows a symlink or crosses into another mount, so nothing a tree
//! contains can make it act outside that tree.

use std::collections::HashMap;
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, Timespec, Timestamps};

use crate::snapshotter::Usage;

/// Extended attributes that describe overlayfs's own bookkeeping; never copied or archived.
pub const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// Opens the directory at `path` (following symlinks: the caller names it).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` inside `dir`, refusing a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `lstat` of `name` inside `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The entries of an open directory, without `.` and `..`, sorted by name bytes.
pub fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut reader = Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort();
    Ok(names)
}

/// The type bits of a stat's mode.
pub fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// A path through `/proc/self/fd` that names `name` inside the open directory `dir`, for calls
/// that have no fd-relative form (xattrs on symlinks and device nodes). The directory part is a
/// kernel reference to `dir` itself, so only `name` is looked up, and the `l*` calls used with
/// it never follow `name`.
pub fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    path
}

/// Removes `name` inside `dir` and everything below it. Entries that vanish meanwhile are fine;
/// a directory on another filesystem (something mounted inside) is refused with EBUSY.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let stat = match stat_at(dir, name) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if file_type(&stat) != FileType::Directory {
        return ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::empty()));
    }
    let parent_dev = rustix::fs::fstat(dir)?.st_dev;
    if stat.st_dev != parent_dev {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    let child = match open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in read_names(child.as_fd())? {
        remove_tree_at(child.as_fd(), &entry)?;
    }
    drop(child);
    ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))
}

/// Removes the tree at `path` (which must not be `/`); a missing path is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a root",
        ));
    };
    let parent = match open_dir(parent) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_tree_at(parent.as_fd(), name)
}

fn ignore_missing(result: rustix::io::Result<()>) -> io::Result<()> {
    match result {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// Disk usage of the tree at `path`, counted like `du`: allocated blocks and inodes, each inode
/// once however many links it has, the root included; other filesystems are not entered.
pub fn disk_usage(path: &Path) -> io::Result<Usage> {
    let root = open_dir(path)?;
    let stat = rustix::fs::fstat(&root)?;
    let mut walk = UsageWalk {
        dev: stat.st_dev,
        seen: HashSet::new(),
        usage: Usage::default(),
    };
    walk.count(&stat);
    walk.dir(root.as_fd())?;
    Ok(walk.usage)
}

struct UsageWalk {
    dev: u64,
    seen: HashSet<(u64, u64)>,
    usage: Usage,
}

impl UsageWalk {
    fn count(&mut self, stat: &Stat) {
        if stat.st_nlink > 1 && !self.seen.insert((stat.st_dev, stat.st_ino)) {
            return;
        }
        self.usage.size += stat.st_blocks as u64 * 512;
        self.usage.inodes += 1;
    }

    fn dir(&mut self, dir: BorrowedFd<'_>) -> io::Result<()> {
        for name in read_names(dir)? {
            let stat = match stat_at(dir, &name) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            self.count(&stat);
            if file_type(&stat) == FileType::Directory && stat.st_dev == self.dev {
                match open_dir_at(dir, &name) {
                    Ok(child) => self.dir(child.as_fd())?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Ownership, permissions, times and extended attributes of one filesystem object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Last access (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Last modification (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// The metadata in `stat` (xattrs are read separately).
    pub fn from_stat(stat: &Stat) -> Meta {
        Meta {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
            atime: (stat.st_atime, stat.st_atime_nsec as i64),
            mtime: (stat.st_mtime, stat.st_mtime_nsec as i64),
            xattrs: Vec::new(),
        }
    }

    fn timestamps(&self) -> Timestamps {
        let ts = |(tv_sec, tv_nsec): (i64, i64)| Timespec { tv_sec, tv_nsec };
        Timestamps {
            last_access: ts(self.atime),
            last_modification: ts(self.mtime),
        }
    }

    /// Applies owner, mode, xattrs (in that order: chown clears setuid bits and capabilities)
    /// to an open regular file or directory. Times are separate: see [`Meta::set_times_fd`].
    pub fn apply_fd(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
        )?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(self.mode))?;
        for (name, value) in &self.xattrs {
            set_xattr(
                rustix::fs::fsetxattr(fd, name.as_str(), value, rustix::fs::XattrFlags::empty()),
                name,
            )?;
        }
        Ok(())
    }

    /// Sets the times of an open file or directory.
    pub fn set_times_fd(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(rustix::fs::futimens(fd, &self.timestamps())?)
    }

    /// Applies everything, times included, to `name` inside `dir` without following it
    /// (symlinks, device nodes, fifos). The mode is not changed on a symlink.
    pub fn apply_at(&self, dir: BorrowedFd<'_>, name: &OsStr, symlink: bool) -> io::Result<()> {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if !symlink {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(self.mode), AtFlags::empty())?;
        }
        if !self.xattrs.is_empty() {
            let path = proc_path(dir, name);
            for (key, value) in &self.xattrs {
                set_xattr(
                    rustix::fs::lsetxattr(
                        &path,
                        key.as_str(),
                        value,
                        rustix::fs::XattrFlags::empty(),
                    ),
                    key,
                )?;
            }
        }
        Ok(rustix::fs::utimensat(
            dir,
            name,
            &self.timestamps(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// Tolerates what the target filesystem cannot store: xattrs it does not support, and `user.*`
/// xattrs on objects other than files and directories (which Linux refuses).
fn set_xattr(result: rustix::io::Result<()>, name: &str) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            tracing::debug!(xattr = name, "xattr not supported here: skipped");
            Ok(())
        }
        Err(rustix::io::Errno::PERM) if name.starts_with("user.") => {
            tracing::debug!(
                xattr = name,
                "user xattr not allowed on this object: skipped"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The extended attributes of an open file or directory, sorted, overlay's own excluded.
pub fn xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<(String, Vec<u8>)>> {
    read_xattrs(
        |buf| rustix::fs::flistxattr(fd, buf),
        |name, buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}

/// The extended attributes of `name` inside `dir`, not following it.
pub fn xattrs_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<(String, Vec<u8>)>> {
    let path = proc_path(dir, name);
    read_xattrs(
        |buf| rustix::fs::llistxattr(&path, buf),
        |key, buf| rustix::fs::lgetxattr(&path, key, buf),
    )
}

fn read_xattrs(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&CStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match grow(|buf| list(buf)) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        if name.starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let key = CString::new(raw).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        match grow(|buf| get(&key, buf)) {
            Ok(value) => out.push((name.to_owned(), value)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Calls a size-probing syscall with a growing buffer until the answer fits.
fn grow(call: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => {
                let len = buf.len() * 4;
                buf.resize(len, 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies the contents of the directory `src` into the empty directory `dst`, keeping types,
/// owners, modes, times, xattrs, hardlinks (within the tree) and device nodes; `dst` itself gets
/// `src`'s metadata. Sockets are skipped. Used by the copy snapshotter.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let src_fd = open_dir(src)?;
    let dst_fd = open_dir(dst)?;
    let mut copy = TreeCopy {
        dev: rustix::fs::fstat(&src_fd)?.st_dev,
        links: HashMap::new(),
        dst_root: rustix::io::dup(&dst_fd)?,
    };
    copy.dir(src_fd.as_fd(), dst_fd.as_fd(), Path::new(""))?;
    let stat = rustix::fs::fstat(&src_fd)?;
    let mut meta = Meta::from_stat(&stat);
    meta.xattrs = xattrs_fd(src_fd.as_fd())?;
    meta.apply_fd(dst_fd.as_fd())?;
    meta.set_times_fd(dst_fd.as_fd())
}

struct TreeCopy {
    dev: u64,
    /// First copy of each multiply-linked inode, relative to the destination root.
    links: HashMap<(u64, u64), PathBuf>,
    dst_root: OwnedFd,
}

impl TreeCopy {
    fn dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path) -> io::Result<()> {
        for name in read_names(src)? {
            let stat = stat_at(src, &name)?;
            let rel = rel.join(&name);
            let mut meta = Meta::from_stat(&stat);
            let kind = file_type(&stat);
            if kind == FileType::Socket {
                continue;
            }
            if kind != FileType::Directory && stat.st_nlink > 1 {
                let id = (stat.st_dev, stat.st_ino);
                if let Some(first) = self.links.get(&id) {
                    rustix::fs::linkat(&self.dst_root, first, dst, &name, AtFlags::empty())?;
                    continue;
                }
                self.links.insert(id, rel.clone());
            }
            match kind {
                FileType::Directory => {
                    if stat.st_dev != self.dev {
                        return Err(io::Error::from_raw_os_error(libc::EXDEV));
                    }
                    rustix::fs::mkdirat(dst, &name, Mode::from_raw_mode(0o700))?;
                    let s = open_dir_at(src, &name)?;
                    let d = open_dir_at(dst, &name)?;
                    self.dir(s.as_fd(), d.as_fd(), &rel)?;
                    meta.xattrs = xattrs_fd(s.as_fd())?;
                    meta.apply_fd(d.as_fd())?;
                    meta.set_times_fd(d.as_fd())?;
                }
                FileType::RegularFile => {
                    let s = rustix::fs::openat(
                        src,
                        &name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    let d = rustix::fs::openat(
                        dst,
                        &name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )?;
                    copy_data(s.as_fd(), d.as_fd(), stat.st_size as u64)?;
                    meta.xattrs = xattrs_fd(s.as_fd())?;
                    meta.apply_fd(d.as_fd())?;
                    meta.set_times_fd(d.as_fd())?;
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(src, &name, Vec::new())?;
                    rustix::fs::symlinkat(target.as_c_str(), dst, &name)?;
                    meta.xattrs = xattrs_at(src, &name)?;
                    meta.apply_at(dst, &name, true)?;
                }
                other => {
                    rustix::fs::mknodat(
                        dst,
                        &name,
                        other,
                        Mode::from_raw_mode(0o600),
                        stat.st_rdev,
                    )?;
                    meta.xattrs = xattrs_at(src, &name)?;
                    meta.apply_at(dst, &name, false)?;
                }
            }
        }
        Ok(())
    }
}

/// Copies `len` bytes between files, in the kernel when it can (reflinks on filesystems that
/// have them).
fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
                let mut from = std::fs::File::from(rustix::io::dup(src)?);
                let mut to = std::fs::File::from(rustix::io::dup(dst)?);
                io::copy(&mut from, &mut to)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn remove_tree_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(victim.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&outside, victim.join("a/link")).unwrap();
        std::fs::write(victim.join("a/b/f"), "y").unwrap();
        remove_tree(&victim).unwrap();
        assert!(!victim.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&victim).unwrap();
    }

    #[test]
    fn usage_counts_like_du() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let usage = disk_usage(dir.path()).unwrap();
        assert_eq!(usage.inodes, 3);
        let blocks = |p: &str| {
            std::fs::symlink_metadata(dir.path().join(p))
                .unwrap()
                .blocks()
        };
        assert_eq!(usage.size, (blocks("") + blocks("a") + blocks("d")) * 512);
    }

    #[test]
    fn copy_keeps_links_modes_and_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("sub/f"), "data").unwrap();
        std::fs::hard_link(src.join("sub/f"), src.join("g")).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("l")).unwrap();
        rustix::fs::chmod(src.join("sub/f"), Mode::from_raw_mode(0o4750)).unwrap();
        rustix::fs::setxattr(
            src.join("g"),
            "user.k",
            b"v",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        copy_tree(&src, &dst).unwrap();
        let f = std::fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4750);
        assert_eq!(f.ino(), std::fs::metadata(dst.join("g")).unwrap().ino());
        assert_eq!(
            std::fs::read_link(dst.join("l")).unwrap(),
            Path::new("sub/f")
        );
        let fd = rustix::fs::open(dst.join("g"), OFlags::RDONLY, Mode::empty()).unwrap();
        assert_eq!(
            xattrs_fd(fd.as_fd()).unwrap(),
            vec![("user.k".to_owned(), b"v".to_vec())]
        );
        assert_eq!(
            std::fs::metadata(&src).unwrap().mtime(),
            std::fs::metadata(&dst).unwrap().mtime()
        );
    }
}
