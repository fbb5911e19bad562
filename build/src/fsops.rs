//! File copies for `COPY` and `ADD`, confined to their roots.
//!
//! Every path is resolved with openat2 and `RESOLVE_IN_ROOT` against a directory fd: a symlink
//! in the build context resolves inside the context, one in the image's rootfs inside the
//! rootfs (as in a chroot), so neither a hostile context nor a hostile base image can make the
//! builder read or write a host file. The last component of a source is never followed: a
//! symlink is copied as a link, whatever it points to. Everything below a resolved directory is
//! reached with `*at` calls on directory fds opened with `O_NOFOLLOW`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};

use crate::ignore::Matcher;

/// Opens `rel` below `root`, resolving every symlink as if `root` were `/`.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    loop {
        match rustix::fs::openat2(root, rel, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Err(rustix::io::Errno::AGAIN) => continue,
            other => return other.map_err(Into::into),
        }
    }
}

/// Opens a directory (path `/` or relative, resolved in `root`).
pub fn open_dir_in_root(root: BorrowedFd<'_>, rel: &Path) -> std::io::Result<OwnedFd> {
    open_in_root(root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// `path` made relative and lexically cleaned; None if it climbs above its root.
pub fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

/// Creates the directory `rel` and its missing parents inside `root` (owner `owner`, 0755);
/// returns it open.
pub fn mkdir_all(root: BorrowedFd<'_>, rel: &Path, owner: (u32, u32)) -> std::io::Result<OwnedFd> {
    let mut dir = open_dir_in_root(root, Path::new("."))?;
    let mut sofar = PathBuf::new();
    for c in rel.components() {
        let Component::Normal(name) = c else { continue };
        sofar.push(name);
        match open_dir_in_root(root, &sofar) {
            Ok(fd) => dir = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        let _ = rustix::fs::chownat(
                            &dir,
                            name,
                            Some(rustix::fs::Uid::from_raw(owner.0)),
                            Some(rustix::fs::Gid::from_raw(owner.1)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        );
                    }
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                dir = open_dir_in_root(root, &sofar)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// How copied entries are owned and moded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    /// Owner of every copied entry; None keeps the source's.
    pub owner: Option<(u32, u32)>,
    /// Permission bits of every copied entry; None keeps the source's.
    pub mode: Option<u32>,
}

/// A source selected for a copy: its parent directory and name in the source root, and its
/// path relative to the root (for `.dockerignore`).
pub struct Selected {
    /// Parent directory.
    pub parent: OwnedFd,
    /// Name in the parent.
    pub name: OsString,
    /// Path relative to the source root.
    pub rel: PathBuf,
    /// Its type.
    pub kind: FileType,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Shell-style match of one path component (`*`, `?`, `[...]`).
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(b'['), Some(&c)) => {
            let Some(end) = pattern
                .iter()
                .skip(1)
                .position(|&b| b == b']')
                .map(|i| i + 1)
            else {
                return pattern[0] == c && glob_match(&pattern[1..], &name[1..]);
            };
            let class = &pattern[1..end];
            let (negate, class) = match class.first() {
                Some(b'!' | b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_match(&pattern[end + 1..], &name[1..])
        }
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Resolves a source path (wildcards allowed in its last component) below `root`. Errors name
/// the source as written: missing, or outside the root.
pub fn select(
    root: BorrowedFd<'_>,
    source: &str,
    matcher: Option<&Matcher>,
) -> Result<Vec<Selected>, String> {
    let rel = clean(source)
        .ok_or_else(|| format!("{source}: forbidden path outside the build context"))?;
    let (parent_rel, name) = match rel.file_name() {
        Some(n) => (
            rel.parent().unwrap_or(Path::new("")).to_owned(),
            n.to_owned(),
        ),
        None => (PathBuf::new(), OsString::from(".")),
    };
    let missing = || format!("{source}: no such file or directory");
    let parent = open_dir_in_root(root, &parent_rel).map_err(|_| missing())?;
    let names: Vec<OsString> = if is_glob(&name.to_string_lossy()) {
        let dir = rustix::fs::Dir::read_from(&parent).map_err(|e| format!("{source}: {e}"))?;
        let mut names: Vec<OsString> = dir
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n != "." && n != "..")
            .filter(|n| glob_match(name.as_bytes(), n.as_bytes()))
            .collect();
        names.sort();
        names
    } else {
        vec![name]
    };
    let mut out = Vec::new();
    for name in names {
        let rel = if name == "." {
            parent_rel.clone()
        } else {
            parent_rel.join(&name)
        };
        if !rel.as_os_str().is_empty() && matcher.is_some_and(|m| m.excluded(&rel)) {
            continue;
        }
        let stat =
            rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(|_| missing())?;
        out.push(Selected {
            parent: rustix::io::dup(&parent).map_err(|e| format!("{source}: {e}"))?,
            name,
            rel,
            kind: FileType::from_raw_mode(stat.st_mode),
        });
    }
    if out.is_empty() {
        return Err(missing());
    }
    Ok(out)
}

fn set_attrs(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    stat: &rustix::fs::Stat,
    attrs: Attrs,
    symlink: bool,
) -> std::io::Result<()> {
    let (uid, gid) = attrs.owner.unwrap_or((stat.st_uid, stat.st_gid));
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !symlink {
        let mode = attrs.mode.unwrap_or(stat.st_mode & 0o7777);
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    };
    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Removes `name` in `dir` unless it is a directory (to be replaced by a non-directory).
fn clear(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(std::io::Error::other(format!(
                "cannot replace directory {} with a file",
                name.to_string_lossy()
            )))
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A destination directory: its fd, and its path inside the destination root (through which
/// an existing symlink to a directory is resolved, inside the root).
#[derive(Clone, Copy)]
pub struct Dest<'a> {
    /// The destination root (the image's rootfs).
    pub root: BorrowedFd<'a>,
    /// The directory, open.
    pub dir: BorrowedFd<'a>,
    /// The directory's path below `root`.
    pub rel: &'a Path,
}

/// Copies the entry `name` of `src_dir` to `dst_name` in the destination directory: a
/// directory with what it holds (minus what `matcher` excludes, `rel` being the entry's path
/// in the source root; an existing directory, or symlink to one inside the root, is merged
/// into), a file's content, a symlink as a link.
pub fn copy_entry(
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    dest: Dest<'_>,
    dst_name: &OsStr,
    attrs: Attrs,
    matcher: Option<&Matcher>,
) -> std::io::Result<()> {
    let dst_dir = dest.dir;
    let stat = rustix::fs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => {
            match rustix::fs::mkdirat(dst_dir, dst_name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let src = rustix::fs::openat(
                src_dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let dst_rel = dest.rel.join(dst_name);
            let dst = open_dir_in_root(dest.root, &dst_rel)?;
            let inner = Dest {
                root: dest.root,
                dir: dst.as_fd(),
                rel: &dst_rel,
            };
            copy_children(src.as_fd(), rel, inner, attrs, matcher)?;
            if is_dir_at(dst_dir, dst_name) {
                set_attrs(dst_dir, dst_name, &stat, attrs, false)?;
            }
            Ok(())
        }
        FileType::RegularFile => {
            clear(dst_dir, dst_name)?;
            let src = rustix::fs::openat(
                src_dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let dst = rustix::fs::openat(
                dst_dir,
                dst_name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            std::io::copy(&mut File::from(src), &mut File::from(dst))?;
            set_attrs(dst_dir, dst_name, &stat, attrs, false)
        }
        FileType::Symlink => {
            clear(dst_dir, dst_name)?;
            let target = rustix::fs::readlinkat(src_dir, name, Vec::new())?;
            rustix::fs::symlinkat(target.as_c_str(), dst_dir, dst_name)?;
            set_attrs(dst_dir, dst_name, &stat, attrs, true)
        }
        FileType::Fifo => {
            clear(dst_dir, dst_name)?;
            rustix::fs::mknodat(
                dst_dir,
                dst_name,
                FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )?;
            set_attrs(dst_dir, dst_name, &stat, attrs, false)
        }
        // Sockets and device nodes have no place in an image built from a context.
        _ => Ok(()),
    }
}

fn children(dir: BorrowedFd<'_>) -> std::io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = rustix::fs::Dir::read_from(dir)?
        .filter_map(|e| e.ok())
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    Ok(names)
}

fn skipped(matcher: Option<&Matcher>, rel: &Path, dir: bool) -> bool {
    match matcher {
        Some(m) if m.excluded(rel) => !(dir && m.might_include_under(rel)),
        _ => false,
    }
}

/// Copies what the directory `src` holds into the destination directory `dst`.
pub fn copy_children(
    src: BorrowedFd<'_>,
    rel: &Path,
    dst: Dest<'_>,
    attrs: Attrs,
    matcher: Option<&Matcher>,
) -> std::io::Result<()> {
    for child in children(src)? {
        let child_rel = rel.join(&child);
        let is_dir = rustix::fs::statat(src, &child, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
        if skipped(matcher, &child_rel, is_dir) {
            continue;
        }
        copy_entry(src, &child, &child_rel, dst, &child, attrs, matcher)?;
    }
    Ok(())
}

/// Feeds the content and metadata of an entry (recursively) into `hasher`: what the cache key
/// of a `COPY` covers. Owners count only when `owners` (sources from an image, not a context).
pub fn hash_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    matcher: Option<&Matcher>,
    owners: bool,
    hasher: &mut Sha256,
) -> std::io::Result<()> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    hasher.update(rel.as_os_str().as_bytes());
    hasher.update([0]);
    hasher.update(format!("{:o}", stat.st_mode).as_bytes());
    if owners {
        hasher.update(format!(" {}:{}", stat.st_uid, stat.st_gid).as_bytes());
    }
    hasher.update([0]);
    match kind {
        FileType::Directory => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            for child in children(fd.as_fd())? {
                let child_rel = rel.join(&child);
                let is_dir = rustix::fs::statat(&fd, &child, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
                if skipped(matcher, &child_rel, is_dir) {
                    continue;
                }
                hash_entry(fd.as_fd(), &child, &child_rel, matcher, owners, hasher)?;
            }
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut file = File::from(fd);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
            hasher.update(target.as_bytes());
        }
        _ => {}
    }
    hasher.update([0xff]);
    Ok(())
}

/// Writes `data` as the file `name` in `dir` (replacing a non-directory).
pub fn write_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> std::io::Result<()> {
    clear(dir, name)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = File::from(fd);
    file.write_all(data)?;
    rustix::fs::fchown(
        &file,
        Some(rustix::fs::Uid::from_raw(owner.0)),
        Some(rustix::fs::Gid::from_raw(owner.1)),
    )?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Whether the entry `name` of `dir` is a directory (following nothing).
pub fn is_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
}

/// The path through which a directory fd can be handed to code that takes paths.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_one_component() {
        assert!(glob_match(b"*.txt", b"a.txt"));
        assert!(!glob_match(b"*.txt", b"a.txd"));
        assert!(glob_match(b"f?le[0-9]", b"file7"));
        assert!(!glob_match(b"f?le[!0-9]", b"file7"));
    }

    #[test]
    fn clean_refuses_climbing_out() {
        assert_eq!(clean("/a/./b/../c").unwrap(), PathBuf::from("a/c"));
        assert_eq!(clean("."), Some(PathBuf::new()));
        assert!(clean("../x").is_none());
        assert!(clean("a/../../x").is_none());
    }
}
