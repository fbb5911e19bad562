//! Writing the changes between two trees as an OCI layer (see the module documentation of
//! `layer`).
//!
//! Both trees are walked together in name order. A path only in upper is added (with all it
//! holds); a path only in lower gets a whiteout; a path in both is added when its type,
//! owner, mode, times, size, xattrs, link target or device differ (and, when both mtimes have
//! no sub-second part and so may have been truncated, when the contents differ). A directory
//! in both whose lower entries are all gone is written as opaque instead of one whiteout per
//! entry. Files linked several times in upper are written once and hardlinked from every other
//! name, including names that did not change, so the links survive a round trip.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, Stat};
use tar::{EntryType, Header};

use super::{Compared, Digesting, OPAQUE, WHITEOUT};
use crate::error::{Error, Result};
use crate::fsutil;

/// Writes the changes from the tree at `lower` to the tree at `upper` to `out` as an
/// uncompressed OCI layer tar and returns its diff id.
pub fn compare(lower: &Path, upper: &Path, out: impl Write) -> Result<Compared> {
    let lower_fd = fsutil::open_dir(lower).map_err(Error::io("open lower tree", lower))?;
    let upper_fd = fsutil::open_dir(upper).map_err(Error::io("open upper tree", upper))?;
    let mut links = Links::default();
    links
        .collect(upper_fd.as_fd(), Path::new(""))
        .map_err(Error::io("walk upper tree", upper))?;
    let mut writer = Writer {
        tar: tar::Builder::new(Digesting::new(out)),
        links,
    };
    writer
        .both_dirs(Some(lower_fd.as_fd()), upper_fd.as_fd(), Path::new(""))
        .map_err(|source| Error::Io {
            op: "compare",
            path: upper.to_owned(),
            source,
        })?;
    let digesting = writer
        .tar
        .into_inner()
        .map_err(Error::io("write layer", upper))?;
    let (mut out, diff_id, size) = digesting.finish();
    out.flush().map_err(Error::io("write layer", upper))?;
    Ok(Compared { diff_id, size })
}

/// Every name of each multiply-linked file in upper.
#[derive(Default)]
struct Links {
    names: HashMap<(u64, u64), Vec<PathBuf>>,
    /// Paths already written as part of their link group.
    written: HashSet<PathBuf>,
}

impl Links {
    fn collect(&mut self, dir: BorrowedFd<'_>, rel: &Path) -> io::Result<()> {
        for name in fsutil::read_names(dir)? {
            let stat = fsutil::stat_at(dir, &name)?;
            if fsutil::file_type(&stat) == FileType::Directory {
                let child = fsutil::open_dir_at(dir, &name)?;
                self.collect(child.as_fd(), &rel.join(&name))?;
            } else if stat.st_nlink > 1 {
                self.names
                    .entry((stat.st_dev, stat.st_ino))
                    .or_default()
                    .push(rel.join(&name));
            }
        }
        Ok(())
    }
}

struct Writer<W: Write> {
    tar: tar::Builder<Digesting<W>>,
    links: Links,
}

impl<W: Write> Writer<W> {
    /// Compares the contents of a directory present in both trees (`lower` None: only in
    /// upper, everything is added).
    fn both_dirs(
        &mut self,
        lower: Option<BorrowedFd<'_>>,
        upper: BorrowedFd<'_>,
        rel: &Path,
    ) -> io::Result<()> {
        let upper_names = fsutil::read_names(upper)?;
        let lower_names = match lower {
            Some(l) => fsutil::read_names(l)?,
            None => Vec::new(),
        };
        let (mut u, mut l) = (0, 0);
        while u < upper_names.len() || l < lower_names.len() {
            let order = match (upper_names.get(u), lower_names.get(l)) {
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.add(upper, &upper_names[u], rel)?;
                    u += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.marker(rel, &whiteout_name(&lower_names[l]))?;
                    l += 1;
                }
                std::cmp::Ordering::Equal => {
                    // Equal implies both lists have an entry here; `lower` is then Some.
                    if let Some(lower) = lower {
                        self.both(lower, upper, &upper_names[u], rel)?;
                    }
                    u += 1;
                    l += 1;
                }
            }
        }
        Ok(())
    }

    /// A name present in both trees.
    fn both(
        &mut self,
        lower: BorrowedFd<'_>,
        upper: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
    ) -> io::Result<()> {
        let ls = fsutil::stat_at(lower, name)?;
        let us = fsutil::stat_at(upper, name)?;
        let path = rel.join(name);
        let (lt, ut) = (fsutil::file_type(&ls), fsutil::file_type(&us));
        if lt == FileType::Directory && ut == FileType::Directory {
            let l = fsutil::open_dir_at(lower, name)?;
            let u = fsutil::open_dir_at(upper, name)?;
            let lower_names = fsutil::read_names(l.as_fd())?;
            let upper_names: HashSet<OsString> =
                fsutil::read_names(u.as_fd())?.into_iter().collect();
            let opaque =
                !lower_names.is_empty() && !lower_names.iter().any(|n| upper_names.contains(n));
            if opaque || !same_meta(&ls, &us) || !same_xattrs(l.as_fd(), u.as_fd())? {
                self.header(upper, name, &us, &path)?;
            }
            if opaque {
                self.marker(&path, OsStr::from_bytes(OPAQUE))?;
                return self.both_dirs(None, u.as_fd(), &path);
            }
            return self.both_dirs(Some(l.as_fd()), u.as_fd(), &path);
        }
        if lt == ut && ut != FileType::Directory && self.same(lower, upper, name, &ls, &us)? {
            return Ok(());
        }
        self.add(upper, name, rel)
    }

    /// Whether a non-directory is unchanged.
    fn same(
        &self,
        lower: BorrowedFd<'_>,
        upper: BorrowedFd<'_>,
        name: &OsStr,
        ls: &Stat,
        us: &Stat,
    ) -> io::Result<bool> {
        if !same_meta(ls, us) || ls.st_rdev != us.st_rdev {
            return Ok(false);
        }
        let kind = fsutil::file_type(us);
        if kind == FileType::Symlink
            && rustix::fs::readlinkat(lower, name, Vec::new())?
                != rustix::fs::readlinkat(upper, name, Vec::new())?
        {
            return Ok(false);
        }
        if fsutil::xattrs_at(lower, name)? != fsutil::xattrs_at(upper, name)? {
            return Ok(false);
        }
        if kind == FileType::RegularFile
            && ls.st_mtime_nsec == 0
            && us.st_mtime_nsec == 0
            && !same_contents(lower, upper, name)?
        {
            return Ok(false);
        }
        Ok(true)
    }

    /// Adds `name` in upper, and everything below it.
    fn add(&mut self, upper: BorrowedFd<'_>, name: &OsStr, rel: &Path) -> io::Result<()> {
        let stat = fsutil::stat_at(upper, name)?;
        let path = rel.join(name);
        self.header(upper, name, &stat, &path)?;
        if fsutil::file_type(&stat) == FileType::Directory {
            let dir = fsutil::open_dir_at(upper, name)?;
            self.both_dirs(None, dir.as_fd(), &path)?;
        }
        Ok(())
    }

    /// Writes the entry for `name` (stat `stat`) at `path`, its data, and for a multiply-linked
    /// file the hardlinks from every other name it has.
    fn header(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        stat: &Stat,
        path: &Path,
    ) -> io::Result<()> {
        if self.links.written.contains(path) {
            return Ok(());
        }
        let kind = fsutil::file_type(stat);
        if kind == FileType::Socket {
            return Ok(()); // sockets cannot be archived
        }
        let mut h = Header::new_gnu();
        h.set_mode(stat.st_mode & 0o7777);
        h.set_uid(u64::from(stat.st_uid));
        h.set_gid(u64::from(stat.st_gid));
        h.set_mtime(stat.st_mtime.max(0) as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if stat.st_mtime_nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", stat.st_mtime, stat.st_mtime_nsec).into_bytes(),
            ));
        }
        let xattrs = if kind == FileType::Directory {
            let fd = fsutil::open_dir_at(dir, name)?;
            fsutil::xattrs_fd(fd.as_fd())?
        } else {
            fsutil::xattrs_at(dir, name)?
        };
        for (key, value) in xattrs {
            pax.push((format!("SCHILY.xattr.{key}"), value));
        }
        self.tar
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        match kind {
            FileType::Directory => {
                h.set_entry_type(EntryType::Directory);
                let mut p = path.as_os_str().to_owned();
                p.push("/");
                self.tar.append_data(&mut h, p, io::empty())
            }
            FileType::Symlink => {
                h.set_entry_type(EntryType::Symlink);
                let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
                let target = target.as_bytes();
                if target.len() < 100 {
                    // Verbatim: append_link would normalise `./x` or `a//b`.
                    h.set_link_name_literal(target)?;
                    self.tar.append_data(&mut h, path, io::empty())
                } else {
                    self.tar
                        .append_link(&mut h, path, OsStr::from_bytes(target))
                }
            }
            FileType::RegularFile => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(stat.st_size as u64);
                let file = File::from(open_file(dir, name)?);
                let mut exact = Exact {
                    inner: file.take(stat.st_size as u64),
                    left: stat.st_size as u64,
                };
                self.tar.append_data(&mut h, path, &mut exact)?;
                if exact.left != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} shrank while it was archived", path.display()),
                    ));
                }
                self.link_group(stat, path)
            }
            other => {
                h.set_entry_type(match other {
                    FileType::CharacterDevice => EntryType::Char,
                    FileType::BlockDevice => EntryType::Block,
                    _ => EntryType::Fifo,
                });
                h.set_device_major(rustix::fs::major(stat.st_rdev))?;
                h.set_device_minor(rustix::fs::minor(stat.st_rdev))?;
                self.tar.append_data(&mut h, path, io::empty())?;
                self.link_group(stat, path)
            }
        }
    }

    /// After the first name of a multiply-linked file: hardlinks from all its other names.
    fn link_group(&mut self, stat: &Stat, first: &Path) -> io::Result<()> {
        let Some(names) = self.links.names.remove(&(stat.st_dev, stat.st_ino)) else {
            return Ok(());
        };
        for other in names.into_iter().filter(|n| n != first) {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Link);
            h.set_mode(stat.st_mode & 0o7777);
            h.set_uid(u64::from(stat.st_uid));
            h.set_gid(u64::from(stat.st_gid));
            h.set_mtime(stat.st_mtime.max(0) as u64);
            h.set_size(0);
            self.tar.append_link(&mut h, &other, first)?;
            self.links.written.insert(other);
        }
        self.links.written.insert(first.to_owned());
        Ok(())
    }

    /// An empty marker file `rel/name` (a whiteout or the opaque marker).
    fn marker(&mut self, rel: &Path, name: &OsStr) -> io::Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(0);
        self.tar.append_data(&mut h, rel.join(name), io::empty())
    }
}

fn whiteout_name(name: &OsStr) -> OsString {
    let mut out = OsString::from(OsStr::from_bytes(WHITEOUT));
    out.push(name);
    out
}

fn same_meta(a: &Stat, b: &Stat) -> bool {
    a.st_mode == b.st_mode
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
        && a.st_mtime == b.st_mtime
        && a.st_mtime_nsec == b.st_mtime_nsec
        && (fsutil::file_type(a) == FileType::Directory || a.st_size == b.st_size)
}

fn same_xattrs(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(fsutil::xattrs_fd(a)? == fsutil::xattrs_fd(b)?)
}

fn open_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn same_contents(lower: BorrowedFd<'_>, upper: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let mut a = File::from(open_file(lower, name)?);
    let mut b = File::from(open_file(upper, name)?);
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Reads a file's data as archived: exactly the size its header announced.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
}
