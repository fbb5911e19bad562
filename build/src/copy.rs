//! `docker cp`'s archive semantics between two directory trees (a container's root and the
//! host's), or between a tree and a tar stream.
//!
//! Paths are resolved in a [`Root`]: a container's root resolves with openat2's
//! `RESOLVE_IN_ROOT` (symlinks, absolute or `..`, resolve as if the process were chroot'ed
//! there, never onto the host); the host's resolves normally. The source is archived by this
//! module (final symlink kept as a link unless `follow`; nothing below it is ever followed)
//! with its top entry already named as the destination needs, and the archive is unpacked with
//! the layer library's [`apply`](berth_snapshots::layer::apply), which resolves every entry
//! inside the destination directory: no entry, symlink or hardlink can write outside it.
//!
//! What lands where, as Docker documents it:
//! - a file onto a missing path creates it (its parent must exist; a trailing `/` asks for an
//!   existing directory), onto a file overwrites it, into a directory keeps its name;
//! - a directory onto a missing path creates it with the source's contents, into an existing
//!   directory lands as a subdirectory, or only its contents when the source ends with `/.`;
//!   onto a file is an error.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use tar::{EntryType, Header};

use crate::error::{Error, Result};

/// Symlinks followed at most while resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;
const WHITEOUT: &[u8] = b".wh.";

/// A tree paths are resolved in.
pub struct Root {
    dir: OwnedFd,
    /// Whether paths resolve inside `dir` (a container's root) or normally (the host).
    in_root: bool,
    /// How messages name the tree, e.g. `container web`.
    label: String,
}

impl Root {
    /// The root directory of a container (its `/proc/<pid>/root` or its mounted snapshot):
    /// paths resolve inside it.
    pub fn container(path: &Path, label: impl Into<String>) -> Result<Root> {
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open the root of", path)(e.into()))?;
        Ok(Root {
            dir,
            in_root: true,
            label: label.into(),
        })
    }

    /// The host's filesystem, relative paths from the working directory.
    pub fn host() -> Result<Root> {
        let dir = rustix::fs::open(
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open", ".")(e.into()))?;
        Ok(Root {
            dir,
            in_root: false,
            label: "the local filesystem".into(),
        })
    }

    fn open(&self, path: &OsStr, flags: OFlags) -> io::Result<OwnedFd> {
        let path = if path.is_empty() {
            OsStr::new(".")
        } else {
            path
        };
        match self.in_root {
            true => crate::fsops::open_in_root(self.dir.as_fd(), Path::new(path), flags),
            false => Ok(rustix::fs::openat(
                &self.dir,
                path,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
            )?),
        }
    }

    fn not_found(&self, path: &str) -> Error {
        Error::NotFound(format!("could not find the file {path} in {}", self.label))
    }
}

/// A path resolved up to its final component.
struct Located {
    /// The directory holding it (the object itself when the path ends in `.`, `..` or is `/`).
    parent: OwnedFd,
    /// Its name in `parent` (`.` for the directory itself).
    name: OsString,
    /// Its status, None if it does not exist.
    stat: Option<Stat>,
    /// The name it has in the path (its archive name when kept).
    base: OsString,
}

impl Located {
    fn is_dir(&self) -> bool {
        self.stat
            .as_ref()
            .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
    }
}

/// Splits `path` into its directory part and final component (trailing slashes ignored).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    let path = &path[..end];
    match path.iter().rposition(|b| *b == b'/') {
        Some(0) => (b"/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// Resolves `path` in `root`; its final component is followed too when `follow`.
fn locate(root: &Root, path: &str, follow: bool) -> Result<Located> {
    let io_err = |e: io::Error| -> Error {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => root.not_found(path),
            _ => Error::Invalid(format!("cannot resolve {path} in {}: {e}", root.label)),
        }
    };
    let mut current = path.as_bytes().to_vec();
    let base = OsString::from(OsStr::from_bytes(split(path.as_bytes()).1));
    for _ in 0..MAX_LINKS {
        let (dir, name) = split(&current);
        if name.is_empty() || name == b"." || name == b".." {
            let itself = root
                .open(
                    OsStr::from_bytes(&current),
                    OFlags::RDONLY | OFlags::DIRECTORY,
                )
                .map_err(io_err)?;
            let stat = rustix::fs::fstat(&itself).map_err(|e| io_err(e.into()))?;
            return Ok(Located {
                parent: itself,
                name: ".".into(),
                stat: Some(stat),
                base,
            });
        }
        let parent = root
            .open(OsStr::from_bytes(dir), OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(io_err)?;
        let name = OsStr::from_bytes(name).to_owned();
        let stat = match rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Some(s),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(io_err(e.into())),
        };
        let link = stat
            .as_ref()
            .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
        if !(follow && link) {
            return Ok(Located {
                parent,
                name,
                stat,
                base,
            });
        }
        let target =
            rustix::fs::readlinkat(&parent, &name, Vec::new()).map_err(|e| io_err(e.into()))?;
        let target = target.as_bytes();
        current = if target.starts_with(b"/") {
            target.to_vec()
        } else {
            let mut joined = dir.to_vec();
            if !joined.is_empty() && !joined.ends_with(b"/") {
                joined.push(b'/');
            }
            joined.extend_from_slice(target);
            joined
        };
    }
    Err(Error::Invalid(format!(
        "cannot resolve {path} in {}: too many levels of symbolic links",
        root.label
    )))
}

/// How to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Follow a symlink the source path ends with (`-L`).
    pub follow: bool,
    /// Owner of what is written (uid, gid); None keeps the source's (`-a`).
    pub owner: Option<(u32, u32)>,
}

/// What the source is: where it is and whether it is a directory whose contents only are
/// copied (`SRC/.`).
struct Source {
    located: Located,
    contents_only: bool,
}

fn source(root: &Root, path: &str, follow: bool) -> Result<Source> {
    let located = locate(root, path, follow)?;
    if located.stat.is_none() {
        return Err(root.not_found(path));
    }
    let slash = path.ends_with('/') || path.ends_with("/.");
    if slash && !located.is_dir() {
        return Err(Error::Invalid(format!("{path} is not a directory")));
    }
    let contents_only = located.is_dir() && (path.ends_with("/.") || path == ".");
    Ok(Source {
        located,
        contents_only,
    })
}

/// Writes the tar of `src_path` in `root` (its top entry named after it, as Docker does).
pub fn archive(root: &Root, src_path: &str, options: &Options, out: impl Write) -> Result<()> {
    let src = source(root, src_path, options.follow)?;
    let top = match src.contents_only {
        true => None,
        false => Some(top_name(&src.located)),
    };
    write_archive(&src, top.as_deref(), options, false, out)
}

/// The archive name of a located source: its name in the path, or `/`'s stand-in `.`.
fn top_name(located: &Located) -> PathBuf {
    match located.base.as_bytes() {
        b"" | b"." | b".." => PathBuf::from("."),
        _ => PathBuf::from(&located.base),
    }
}

/// Copies `src_path` in `src_root` to `dest_path` in `dest_root`.
pub fn copy(
    src_root: &Root,
    src_path: &str,
    dest_root: &Root,
    dest_path: &str,
    options: &Options,
) -> Result<()> {
    let src = source(src_root, src_path, options.follow)?;
    let src_dir = src.located.is_dir();
    let dest = locate(dest_root, dest_path, true)?;
    let (target, top): (BorrowedFd<'_>, Option<PathBuf>) = match &dest.stat {
        Some(_) if dest.is_dir() => {
            let top = match src.contents_only {
                true => None,
                false => {
                    let name = top_name(&src.located);
                    if name == Path::new(".") {
                        None
                    } else {
                        check_overwrite(&dest, &name, src_dir, dest_path)?;
                        Some(name)
                    }
                }
            };
            // `dest` names the directory itself: entries go into it.
            let fd = dest_dir_fd(&dest, dest_root, dest_path)?;
            return unpack_from(&src, top.as_deref(), fd.as_fd(), options);
        }
        Some(_) if src_dir => {
            return Err(Error::Invalid(format!(
                "cannot copy a directory to a file: {dest_path} is not a directory"
            )));
        }
        Some(_) if dest_path.ends_with('/') => {
            return Err(Error::Invalid(format!("{dest_path} is not a directory")));
        }
        Some(_) => (dest.parent.as_fd(), Some(PathBuf::from(&dest.name))),
        None if dest_path.ends_with('/') && !src_dir => {
            return Err(Error::NotFound(format!(
                "destination directory {dest_path} must exist in {}",
                dest_root.label
            )));
        }
        None => (dest.parent.as_fd(), Some(PathBuf::from(&dest.name))),
    };
    unpack_from(&src, top.as_deref(), target, options)
}

/// An fd of the directory `dest` names.
fn dest_dir_fd(dest: &Located, root: &Root, path: &str) -> Result<OwnedFd> {
    rustix::fs::openat(
        &dest.parent,
        &dest.name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Invalid(format!("cannot open {path} in {}: {e}", root.label)))
}

/// Refuses to replace a directory by a non-directory or the other way round.
fn check_overwrite(dir: &Located, name: &Path, src_dir: bool, dest_path: &str) -> Result<()> {
    let Ok(fd) = rustix::fs::openat(
        &dir.parent,
        &dir.name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(());
    };
    if let Ok(stat) = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        let what = Path::new(dest_path).join(name);
        if is_dir && !src_dir {
            return Err(Error::Invalid(format!(
                "cannot overwrite directory {} with non-directory",
                what.display()
            )));
        }
        if !is_dir && src_dir {
            return Err(Error::Invalid(format!(
                "cannot overwrite non-directory {} with directory",
                what.display()
            )));
        }
    }
    Ok(())
}

/// Archives `src` (top entry named `top`, or its contents at the top when None) and unpacks it
/// into the directory `target`.
fn unpack_from(
    src: &Source,
    top: Option<&Path>,
    target: BorrowedFd<'_>,
    options: &Options,
) -> Result<()> {
    let (reader, writer) = io::pipe().map_err(Error::io("create a pipe for", "the copy"))?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || write_archive(src, top, options, true, writer));
        let applied = unpack(reader, target);
        let produced = producer
            .join()
            .map_err(|_| Error::Invalid("the archiver panicked".into()))?;
        produced?;
        applied
    })
}

/// Unpacks the tar `input` into the directory `target` (entries resolved inside it).
fn unpack(input: impl Read, target: BorrowedFd<'_>) -> Result<()> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
    berth_snapshots::layer::apply(&path, input, &Default::default())
        .map_err(Error::layer("write the copied files"))?;
    Ok(())
}

/// Unpacks the tar `input` (`cp - CONTAINER:DEST`) into the existing directory `dest_path` of
/// `root`, owners replaced by `options.owner` when set.
pub fn extract(
    input: impl Read + Send,
    root: &Root,
    dest_path: &str,
    options: &Options,
) -> Result<()> {
    let dest = locate(root, dest_path, true)?;
    if dest.stat.is_none() {
        return Err(root.not_found(dest_path));
    }
    if !dest.is_dir() {
        return Err(Error::Invalid(format!(
            "destination {dest_path} must be a directory to extract an archive into"
        )));
    }
    let fd = dest_dir_fd(&dest, root, dest_path)?;
    let (reader, writer) = io::pipe().map_err(Error::io("create a pipe for", "the copy"))?;
    let owner = options.owner;
    std::thread::scope(|s| {
        let producer = s.spawn(move || rewrite(input, writer, owner));
        let applied = unpack(reader, fd.as_fd());
        let produced = producer
            .join()
            .map_err(|_| Error::Invalid("the archive reader panicked".into()))?;
        produced?;
        applied
    })
}

/// Copies a tar, refusing whiteout names and setting owners when `owner` is given.
fn rewrite(input: impl Read, out: impl Write, owner: Option<(u32, u32)>) -> Result<()> {
    let bad = |e: io::Error| Error::Invalid(format!("the input is not a tar archive: {e}"));
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        reserved(&path)?;
        let mut header = entry.header().clone();
        if let Some((uid, gid)) = owner {
            header.set_uid(u64::from(uid));
            header.set_gid(u64::from(gid));
        }
        let write = |e: io::Error| Error::io("copy", path.clone())(e);
        match entry.link_name().map_err(bad)?.map(|l| l.into_owned()) {
            Some(link) => builder
                .append_link(&mut header, &path, link)
                .map_err(write)?,
            None => builder
                .append_data(&mut header, &path, &mut entry)
                .map_err(write)?,
        }
    }
    builder
        .into_inner()
        .map_err(Error::io("copy", "the archive"))?
        .flush()
        .map_err(Error::io("copy", "the archive"))
}

/// Refuses names the layer library would take for whiteouts.
fn reserved(path: &Path) -> Result<()> {
    if path
        .components()
        .any(|c| c.as_os_str().as_bytes().starts_with(WHITEOUT))
    {
        return Err(Error::Invalid(format!(
            "cannot copy {}: names starting with .wh. are reserved for layer whiteouts",
            path.display()
        )));
    }
    Ok(())
}

fn write_archive(
    src: &Source,
    top: Option<&Path>,
    options: &Options,
    check_names: bool,
    out: impl Write,
) -> Result<()> {
    let mut writer = Archiver {
        tar: tar::Builder::new(out),
        owner: options.owner,
        check_names,
    };
    let located = &src.located;
    let stat = located
        .stat
        .as_ref()
        .ok_or_else(|| Error::NotFound("the source is gone".into()))?;
    match top {
        Some(name) if name != Path::new(".") => {
            writer.entry(located.parent.as_fd(), &located.name, stat, name)?;
        }
        _ => {
            let dir = open_dir_at(located.parent.as_fd(), &located.name)
                .map_err(Error::io("open", PathBuf::from(&located.base)))?;
            writer.children(dir.as_fd(), Path::new(""))?;
        }
    }
    writer
        .tar
        .into_inner()
        .map_err(Error::io("write", "the archive"))?
        .flush()
        .map_err(Error::io("write", "the archive"))
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Writes a tree walked by fds, never following a symlink.
struct Archiver<W: Write> {
    tar: tar::Builder<W>,
    owner: Option<(u32, u32)>,
    check_names: bool,
}

impl<W: Write> Archiver<W> {
    fn children(&mut self, dir: BorrowedFd<'_>, rel: &Path) -> Result<()> {
        let mut names = Vec::new();
        let mut iter =
            rustix::fs::Dir::read_from(dir).map_err(|e| Error::io("read", rel)(e.into()))?;
        for entry in iter.by_ref() {
            let entry = entry.map_err(|e| Error::io("read", rel)(e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        for name in names {
            let path = rel.join(&name);
            let stat = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io("stat", &path)(e.into()))?;
            self.entry(dir, &name, &stat, &path)?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: BorrowedFd<'_>, name: &OsStr, stat: &Stat, path: &Path) -> Result<()> {
        if self.check_names {
            reserved(path)?;
        }
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Socket {
            return Ok(());
        }
        let fail = |e: io::Error| Error::io("archive", path.to_owned())(e);
        let mut h = Header::new_gnu();
        h.set_mode(stat.st_mode & 0o7777);
        let (uid, gid) = self.owner.unwrap_or((stat.st_uid, stat.st_gid));
        h.set_uid(u64::from(uid));
        h.set_gid(u64::from(gid));
        h.set_mtime(stat.st_mtime.max(0) as u64);
        h.set_size(0);
        match kind {
            FileType::Directory => {
                h.set_entry_type(EntryType::Directory);
                let mut p = path.as_os_str().to_owned();
                p.push("/");
                self.tar.append_data(&mut h, p, io::empty()).map_err(fail)?;
                let child = open_dir_at(dir, name).map_err(fail)?;
                self.children(child.as_fd(), path)
            }
            FileType::Symlink => {
                h.set_entry_type(EntryType::Symlink);
                let target =
                    rustix::fs::readlinkat(dir, name, Vec::new()).map_err(|e| fail(e.into()))?;
                self.tar
                    .append_link(&mut h, path, OsStr::from_bytes(target.as_bytes()))
                    .map_err(fail)
            }
            FileType::RegularFile => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(stat.st_size as u64);
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail(e.into()))?;
                let mut data = Exact {
                    inner: File::from(fd).take(stat.st_size as u64),
                    left: stat.st_size as u64,
                };
                self.tar
                    .append_data(&mut h, path, &mut data)
                    .map_err(fail)?;
                if data.left != 0 {
                    return Err(fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was copied",
                    )));
                }
                Ok(())
            }
            other => {
                h.set_entry_type(match other {
                    FileType::CharacterDevice => EntryType::Char,
                    FileType::BlockDevice => EntryType::Block,
                    _ => EntryType::Fifo,
                });
                h.set_device_major(rustix::fs::major(stat.st_rdev))
                    .map_err(fail)?;
                h.set_device_minor(rustix::fs::minor(stat.st_rdev))
                    .map_err(fail)?;
                self.tar
                    .append_data(&mut h, path, io::empty())
                    .map_err(fail)
            }
        }
    }
}

/// Reads a file's data as archived: exactly the size its header announced (less means it
/// shrank).
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    struct Trees {
        _dir: tempfile::TempDir,
        host: PathBuf,
        container: PathBuf,
    }

    /// A host tree and a container tree whose `/etc` is a symlink to `/real-etc` and
    /// `/up` a symlink to `../../..`.
    fn trees() -> Trees {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        let container = dir.path().join("container");
        fs::create_dir_all(host.join("src/sub")).unwrap();
        fs::write(host.join("src/a"), "a").unwrap();
        fs::write(host.join("src/sub/b"), "b").unwrap();
        fs::write(host.join("file"), "file").unwrap();
        fs::create_dir_all(container.join("real-etc")).unwrap();
        fs::write(container.join("real-etc/passwd"), "inside").unwrap();
        symlink("/real-etc", container.join("etc")).unwrap();
        symlink("../../..", container.join("up")).unwrap();
        fs::create_dir(container.join("dir")).unwrap();
        Trees {
            _dir: dir,
            host,
            container,
        }
    }

    fn run(t: &Trees, to_container: bool, src: &str, dest: &str, options: Options) -> Result<()> {
        let h = Root::container(&t.host, "the host tree")?;
        let c = Root::container(&t.container, "container c")?;
        match to_container {
            true => copy(&h, src, &c, dest, &options),
            false => copy(&c, src, &h, dest, &options),
        }
    }

    #[test]
    fn docker_rules_for_files_and_directories() {
        let t = trees();
        let o = Options::default();
        // File onto a missing path: created under the new name.
        run(&t, true, "/file", "/dir/renamed", o).unwrap();
        assert_eq!(
            fs::read_to_string(t.container.join("dir/renamed")).unwrap(),
            "file"
        );
        // File into a directory: keeps its name; onto a file: overwrites.
        run(&t, true, "/file", "/dir", o).unwrap();
        run(&t, true, "/src/a", "/dir/file", o).unwrap();
        assert_eq!(
            fs::read_to_string(t.container.join("dir/file")).unwrap(),
            "a"
        );
        // Directory onto a missing path: created with the contents.
        run(&t, true, "/src", "/copy", o).unwrap();
        assert_eq!(
            fs::read_to_string(t.container.join("copy/sub/b")).unwrap(),
            "b"
        );
        // Directory into an existing one: a subdirectory; with `/.`: only its contents.
        run(&t, true, "/src", "/dir", o).unwrap();
        assert!(t.container.join("dir/src/sub/b").exists());
        run(&t, true, "/src/.", "/dir", o).unwrap();
        assert!(t.container.join("dir/sub/b").exists());
        // Errors.
        let e = run(&t, true, "/src", "/dir/file", o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot copy a directory to a file"), "{e}");
        let e = run(&t, true, "/file", "/missing/", o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must exist"), "{e}");
        let e = run(&t, true, "/file", "/missing/x", o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not find the file /missing/x"), "{e}");
        let e = run(&t, true, "/nope", "/dir", o).unwrap_err().to_string();
        assert!(
            e.contains("could not find the file /nope in the host tree"),
            "{e}"
        );
        let e = run(&t, true, "/file/", "/dir", o).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        fs::create_dir_all(t.container.join("dir2/file")).unwrap();
        let e = run(&t, true, "/file", "/dir2", o).unwrap_err().to_string();
        assert!(e.contains("cannot overwrite directory"), "{e}");
    }

    #[test]
    fn symlinks_resolve_inside_the_container() {
        let t = trees();
        let o = Options::default();
        // `/etc` -> `/real-etc` inside, never the host's /etc.
        run(&t, true, "/file", "/etc/new", o).unwrap();
        assert_eq!(
            fs::read_to_string(t.container.join("real-etc/new")).unwrap(),
            "file"
        );
        // `/up` -> `../../..` stays at the container's root.
        run(&t, true, "/file", "/up/escaped", o).unwrap();
        assert!(t.container.join("escaped").exists());
        run(&t, false, "/up/etc/passwd", "/out", o).unwrap();
        assert_eq!(fs::read_to_string(t.host.join("out")).unwrap(), "inside");
        // Without -L a final symlink is copied as a link; with -L its target is.
        run(&t, false, "/etc", "/link", o).unwrap();
        assert_eq!(
            fs::read_link(t.host.join("link")).unwrap(),
            Path::new("/real-etc")
        );
        let follow = Options { follow: true, ..o };
        run(&t, false, "/etc", "/followed", follow).unwrap();
        assert_eq!(
            fs::read_to_string(t.host.join("followed/passwd")).unwrap(),
            "inside"
        );
    }

    #[test]
    fn owners_are_set_unless_archive_mode() {
        let t = trees();
        let h = Root::container(&t.host, "host").unwrap();
        let c = Root::container(&t.container, "c").unwrap();
        rustix::fs::chown(
            t.host.join("file"),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(55)),
        )
        .unwrap();
        let owner = Options {
            owner: Some((0, 0)),
            ..Options::default()
        };
        copy(&h, "/file", &c, "/rooted", &owner).unwrap();
        assert_eq!(fs::metadata(t.container.join("rooted")).unwrap().uid(), 0);
        copy(&h, "/file", &c, "/kept", &Options::default()).unwrap();
        let kept = fs::metadata(t.container.join("kept")).unwrap();
        assert_eq!((kept.uid(), kept.gid()), (1234, 55));
        // Through a tar stream.
        let mut tar = Vec::new();
        archive(&h, "/src", &Options::default(), &mut tar).unwrap();
        extract(tar.as_slice(), &c, "/dir", &owner).unwrap();
        assert_eq!(
            fs::read_to_string(t.container.join("dir/src/sub/b")).unwrap(),
            "b"
        );
        let e = extract(&b"not a tar"[..], &c, "/dir", &owner)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a tar archive") || e.contains("layer"),
            "{e}"
        );
    }
}
