//! Unpacking one layer stream into a directory (see the module documentation of `layer`).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use tar::EntryType;

use super::{Applied, ApplyOptions, Digesting, OPAQUE, OVERLAY_OPAQUE_XATTR, WHITEOUT, Whiteouts};
use crate::error::{Error, Result};
use crate::fsutil::{self, Meta};

/// How much of the stream is read at once.
const READ_BUFFER: usize = 1 << 20;

/// Applies the uncompressed OCI layer `layer` onto the directory `target` and returns its diff
/// id (the sha256 of every byte read, the end-of-archive padding included).
pub fn apply(target: &Path, layer: impl Read, options: &ApplyOptions) -> Result<Applied> {
    let root = fsutil::open_dir(target).map_err(Error::io("open layer target", target))?;
    let mut parents = Vec::new();
    for p in &options.parents {
        parents.push(fsutil::open_dir(p).map_err(Error::io("open lower layer", p))?);
    }
    let mut applier = Applier {
        root,
        whiteouts: options.whiteouts,
        parents,
        cache: None,
        dirs: Vec::new(),
        touched: HashMap::new(),
        unpacked: HashSet::new(),
        opaque_done: HashSet::new(),
        buf: vec![0; READ_BUFFER],
    };
    let mut archive =
        tar::Archive::new(BufReader::with_capacity(READ_BUFFER, Digesting::new(layer)));
    let entries = archive.entries().map_err(bad_archive)?;
    for entry in entries {
        let mut entry = entry.map_err(bad_archive)?;
        applier.entry(&mut entry)?;
    }
    // Hash what follows the end-of-archive marker too: the diff id covers the whole stream.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(bad_archive)?;
    applier.finish()?;
    let (_, diff_id, size) = rest.into_inner().finish();
    Ok(Applied { diff_id, size })
}

fn bad_archive(e: io::Error) -> Error {
    Error::InvalidLayer {
        entry: "(archive)".into(),
        reason: e.to_string(),
    }
}

struct Applier {
    root: OwnedFd,
    whiteouts: Whiteouts,
    /// Open lower layers (overlay targets), topmost first.
    parents: Vec<OwnedFd>,
    /// The directory of the last entry: consecutive entries usually share it.
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directories whose times are set at the end, once nothing is created in them any more.
    dirs: Vec<(Vec<u8>, Meta)>,
    /// Times of directories this layer writes into, restored at the end unless the layer
    /// lists the directory itself: writing into a directory is not changing it.
    touched: HashMap<Vec<u8>, Meta>,
    /// Paths unpacked by this layer (delete mode: an opaque marker keeps them).
    unpacked: HashSet<Vec<u8>>,
    opaque_done: HashSet<Vec<u8>>,
    buf: Vec<u8>,
}

/// A layer path split into safe components: no `..`, no empty or `.` components.
fn components(raw: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path has a '..' component"),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    out
}

/// openat2 inside `root`: symlinks resolve as if `root` were `/`, no magic links, no mounts.
/// The kernel answers EAGAIN when a rename or mount anywhere raced the lookup: it retries.
fn open_in_root(root: BorrowedFd<'_>, rel: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let path = OsStr::from_bytes(if rel.is_empty() { b"." } else { rel });
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    loop {
        match rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Err(rustix::io::Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY);

/// What was at a path before an entry was written there.
#[derive(PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A directory, kept because the entry is a directory too (merged).
    Dir,
    /// An overlay whiteout, replaced by a directory (which must then be opaque).
    Whiteout,
    /// Something else, removed.
    Removed,
}

impl Applier {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name_of = || String::from_utf8_lossy(&raw).into_owned();
        let invalid = |reason: &str| Error::InvalidLayer {
            entry: name_of(),
            reason: reason.to_owned(),
        };
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let comps = components(&raw).map_err(invalid)?;
        let Some((name, parent)) = comps.split_last() else {
            return Ok(()); // the root itself: the target's own attributes are not the layer's
        };
        let at = |source: io::Error| Error::LayerEntry {
            entry: name_of(),
            source,
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE {
            return self.opaque(parent).map_err(at);
        }
        if let Some(deleted) = name_bytes.strip_prefix(WHITEOUT) {
            if deleted.starts_with(WHITEOUT) {
                return Ok(()); // other aufs metadata (.wh..wh.plnk ...): nothing to apply
            }
            if deleted.is_empty() || deleted == b"." || deleted == b".." {
                return Err(invalid("whiteout names no file"));
            }
            let meta = self.meta(entry, &invalid)?;
            return self
                .whiteout(parent, OsStr::from_bytes(deleted), &meta)
                .map_err(at);
        }
        let meta = self.meta(entry, &invalid)?;
        let dir = self.take_parent(parent, true).map_err(at)?;
        let Some(dir) = dir else {
            return Ok(());
        };
        let result = match kind {
            EntryType::Directory => self.directory(dir.as_fd(), name, &comps, &meta),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(dir.as_fd(), name, &meta, entry)
            }
            EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) if !target.is_empty() => {
                    let target = target.into_owned();
                    self.symlink(dir.as_fd(), name, &target, &meta)
                }
                _ => return Err(invalid("symlink without a target")),
            },
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| invalid("hardlink without a target"))?;
                let target =
                    components(&target).map_err(|r| invalid(&format!("hardlink target: {r}")))?;
                if target.is_empty() {
                    return Err(invalid("hardlink to the root"));
                }
                self.hardlink(dir.as_fd(), name, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let kind = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                self.node(
                    dir.as_fd(),
                    name,
                    kind,
                    rustix::fs::makedev(major, minor),
                    &meta,
                )
            }
            other => {
                return Err(invalid(&format!("unsupported entry type {other:?}")));
            }
        };
        result.map_err(at)?;
        if self.whiteouts == Whiteouts::Delete {
            // The entry and its ancestors: an opaque marker must keep them all.
            for end in (1..=comps.len()).rev() {
                if !self.unpacked.insert(join(&comps[..end])) {
                    break;
                }
            }
        }
        self.put_parent(parent, dir);
        Ok(())
    }

    /// Ownership, mode, times and xattrs of an entry, PAX records included.
    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        invalid: &dyn Fn(&str) -> Error,
    ) -> Result<Meta> {
        let header = entry.header();
        let field =
            |r: io::Result<u64>, what: &str| r.map_err(|e| invalid(&format!("bad {what}: {e}")));
        let uid = field(header.uid(), "uid")?;
        let gid = field(header.gid(), "gid")?;
        let mode = header
            .mode()
            .map_err(|e| invalid(&format!("bad mode: {e}")))?
            & 0o7777;
        let mtime = field(header.mtime(), "mtime")?;
        let mut meta = Meta {
            uid: u32::try_from(uid).map_err(|_| invalid("uid out of range"))?,
            gid: u32::try_from(gid).map_err(|_| invalid("gid out of range"))?,
            mode,
            atime: (mtime as i64, 0),
            mtime: (mtime as i64, 0),
            xattrs: Vec::new(),
        };
        let mut atime = None;
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| invalid(&format!("bad PAX header: {e}")))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| invalid(&format!("bad PAX record: {e}")))?;
                let Ok(key) = ext.key() else { continue };
                let text = || std::str::from_utf8(ext.value_bytes()).ok();
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if !name.starts_with(fsutil::OVERLAY_XATTR_PREFIX) {
                        meta.xattrs
                            .push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                } else if key == "mtime" {
                    meta.mtime = text()
                        .and_then(pax_time)
                        .ok_or_else(|| invalid("bad PAX mtime"))?;
                } else if key == "atime" {
                    atime = text().and_then(pax_time);
                } else if key == "uid" {
                    meta.uid = text()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| invalid("bad PAX uid"))?;
                } else if key == "gid" {
                    meta.gid = text()
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(|| invalid("bad PAX gid"))?;
                }
            }
        }
        meta.atime = atime.unwrap_or(meta.mtime);
        meta.xattrs.sort();
        Ok(meta)
    }

    /// The directory `comps` (relative to the root), from the cache or resolved in the root;
    /// missing directories are created when `create`, else None is returned.
    fn take_parent(&mut self, comps: &[OsString], create: bool) -> io::Result<Option<OwnedFd>> {
        let key = join(comps);
        if let Some((cached, _)) = &self.cache
            && *cached == key
            && let Some((_, fd)) = self.cache.take()
        {
            return Ok(Some(fd));
        }
        match open_in_root(self.root.as_fd(), &key, DIR_FLAGS) {
            Ok(fd) => {
                self.touch(key, fd.as_fd())?;
                Ok(Some(fd))
            }
            Err(rustix::io::Errno::NOENT) if create => self.make_dirs(comps).map(Some),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Remembers the times of the directory `rel` before this layer first writes into it.
    fn touch(&mut self, rel: Vec<u8>, dir: BorrowedFd<'_>) -> io::Result<()> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.touched.entry(rel) {
            e.insert(Meta::from_stat(&rustix::fs::fstat(dir)?));
        }
        Ok(())
    }

    fn put_parent(&mut self, comps: &[OsString], fd: OwnedFd) {
        self.cache = Some((join(comps), fd));
    }

    /// Creates the missing directories of `comps`, giving each the attributes it has in the
    /// lower layers (or root 0755).
    fn make_dirs(&mut self, comps: &[OsString]) -> io::Result<OwnedFd> {
        let mut dir = rustix::io::dup(&self.root)?;
        let mut created = false;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            if !created {
                match open_in_root(self.root.as_fd(), &prefix, DIR_FLAGS) {
                    Ok(fd) => {
                        dir = fd;
                        continue;
                    }
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.touch(join(&comps[..i]), dir.as_fd())?;
            rustix::fs::mkdirat(&dir, comps[i].as_os_str(), Mode::from_raw_mode(0o755))?;
            let child = fsutil::open_dir_at(dir.as_fd(), &comps[i])?;
            if self.copy_up(&prefix, child.as_fd())? {
                self.touch(prefix, child.as_fd())?;
            }
            dir = child;
            created = true;
        }
        Ok(dir)
    }

    /// Gives a directory created in an overlay upper the attributes of the topmost lower
    /// directory at the same path (stopping at anything that is not a directory); returns
    /// whether there was one.
    fn copy_up(&self, rel: &[u8], dir: BorrowedFd<'_>) -> io::Result<bool> {
        for lower in &self.parents {
            match open_in_root(lower.as_fd(), rel, DIR_FLAGS | OFlags::NOFOLLOW) {
                Ok(fd) => {
                    let mut meta = Meta::from_stat(&rustix::fs::fstat(&fd)?);
                    meta.xattrs = fsutil::xattrs_fd(fd.as_fd())?;
                    meta.apply_fd(dir)?;
                    meta.set_times_fd(dir)?;
                    return Ok(true);
                }
                Err(rustix::io::Errno::NOENT) => continue,
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Clears `name` in `dir` for a new entry: a directory stays when the entry is one too.
    fn clear(&mut self, dir: BorrowedFd<'_>, name: &OsStr, new_dir: bool) -> io::Result<Existing> {
        let stat = match fsutil::stat_at(dir, name) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
            Err(e) => return Err(e),
        };
        let kind = fsutil::file_type(&stat);
        if new_dir && kind == FileType::Directory {
            return Ok(Existing::Dir);
        }
        let whiteout = self.whiteouts == Whiteouts::Overlay
            && kind == FileType::CharacterDevice
            && stat.st_rdev == 0;
        // Whatever cached directory went through this name is no longer valid.
        self.cache = None;
        fsutil::remove_tree_at(dir, name)?;
        Ok(if whiteout {
            Existing::Whiteout
        } else {
            Existing::Removed
        })
    }

    fn directory(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        comps: &[OsString],
        meta: &Meta,
    ) -> io::Result<()> {
        let mkdir = || rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700));
        let existing = match mkdir() {
            Ok(()) => Existing::Nothing,
            Err(rustix::io::Errno::EXIST) => {
                let existing = self.clear(dir, name, true)?;
                if existing != Existing::Dir {
                    mkdir()?;
                }
                existing
            }
            Err(e) => return Err(e.into()),
        };
        let fd = fsutil::open_dir_at(dir, name)?;
        meta.apply_fd(fd.as_fd())?;
        if existing == Existing::Whiteout {
            // A directory replacing a deleted one must not show what was below it.
            set_opaque(fd.as_fd())?;
        }
        self.dirs.push((join(comps), meta.clone()));
        Ok(())
    }

    /// Runs `create`; if the name is taken, clears it and runs `create` once more.
    fn create<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        create: impl Fn() -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        match create() {
            Err(rustix::io::Errno::EXIST) => {
                self.clear(dir, name, false)?;
                Ok(create()?)
            }
            other => Ok(other?),
        }
    }

    fn file<R: Read>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        data: &mut R,
    ) -> io::Result<()> {
        let fd = self.create(dir, name, || {
            rustix::fs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })?;
        let mut file = File::from(fd);
        loop {
            let n = data.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])?;
        }
        meta.apply_fd(file.as_fd())?;
        meta.set_times_fd(file.as_fd())
    }

    fn symlink(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        target: &[u8],
        meta: &Meta,
    ) -> io::Result<()> {
        self.create(dir, name, || {
            rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)
        })?;
        meta.apply_at(dir, name, true)
    }

    fn hardlink(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        target: &[OsString],
    ) -> io::Result<()> {
        let (target_name, target_parent) = target
            .split_last()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = open_in_root(self.root.as_fd(), &join(target_parent), DIR_FLAGS)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never what it points to.
        self.create(dir, name, || {
            rustix::fs::linkat(
                &parent,
                target_name.as_os_str(),
                dir,
                name,
                rustix::fs::AtFlags::empty(),
            )
        })
    }

    fn node(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: FileType,
        dev: u64,
        meta: &Meta,
    ) -> io::Result<()> {
        self.create(dir, name, || {
            rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), dev)
        })?;
        meta.apply_at(dir, name, false)
    }

    fn whiteout(&mut self, parent: &[OsString], deleted: &OsStr, meta: &Meta) -> io::Result<()> {
        let create = self.whiteouts == Whiteouts::Overlay;
        let Some(dir) = self.take_parent(parent, create)? else {
            return Ok(()); // nothing below a missing directory to delete
        };
        self.clear(dir.as_fd(), deleted, false)?;
        if create {
            rustix::fs::mknodat(
                &dir,
                deleted,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )?;
            rustix::fs::chownat(
                &dir,
                deleted,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        self.put_parent(parent, dir);
        Ok(())
    }

    fn opaque(&mut self, comps: &[OsString]) -> io::Result<()> {
        let key = join(comps);
        if !self.opaque_done.insert(key.clone()) {
            return Ok(());
        }
        match self.whiteouts {
            Whiteouts::Overlay => {
                let Some(dir) = self.take_parent(comps, true)? else {
                    return Ok(());
                };
                set_opaque(dir.as_fd())?;
                self.put_parent(comps, dir);
                Ok(())
            }
            Whiteouts::Delete => {
                let Some(dir) = self.take_parent(comps, false)? else {
                    return Ok(());
                };
                self.cache = None;
                self.prune(dir.as_fd(), &key)
            }
        }
    }

    /// Deletes what `dir` holds that this layer did not unpack (delete-mode opaque).
    fn prune(&self, dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
        for name in fsutil::read_names(dir)? {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            if !self.unpacked.contains(&path) {
                fsutil::remove_tree_at(dir, &name)?;
            } else if let Ok(child) = fsutil::open_dir_at(dir, &name) {
                self.prune(child.as_fd(), &path)?;
            }
        }
        Ok(())
    }

    /// Sets directory times last: creating entries inside a directory changes its mtime.
    fn finish(&mut self) -> Result<()> {
        self.cache = None;
        let listed: HashSet<&[u8]> = self.dirs.iter().map(|(rel, _)| rel.as_slice()).collect();
        let restore: Vec<(Vec<u8>, Meta)> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter(|(rel, _)| !listed.contains(rel.as_slice()))
            .collect();
        for (rel, meta) in restore
            .into_iter()
            .chain(std::mem::take(&mut self.dirs).into_iter().rev())
        {
            let fd = match open_in_root(self.root.as_fd(), &rel, DIR_FLAGS | OFlags::NOFOLLOW) {
                Ok(fd) => fd,
                // Replaced or deleted by a later entry: nothing to set.
                Err(_) => continue,
            };
            meta.set_times_fd(fd.as_fd())
                .map_err(|source| Error::LayerEntry {
                    entry: String::from_utf8_lossy(&rel).into_owned(),
                    source,
                })?;
        }
        Ok(())
    }
}

fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(
        dir,
        OVERLAY_OPAQUE_XATTR,
        b"y",
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// A PAX time, `<seconds>[.<fraction>]`, as (seconds, nanoseconds).
fn pax_time(text: &str) -> Option<(i64, i64)> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    if text.starts_with('-') && nanos > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    if secs < 0 {
        nanos = 0;
    }
    Some((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("1704067200"), Some((1_704_067_200, 0)));
        assert_eq!(pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(pax_time("1.000000001999"), Some((1, 1)));
        assert_eq!(pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(pax_time("x"), None);
        assert_eq!(pax_time("1.2e3"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(components(b"./a//b/").unwrap(), ["a", "b"]);
        assert_eq!(components(b"/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"").unwrap().is_empty());
    }
}
