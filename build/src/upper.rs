//! A layer straight from an overlay upper directory: the fast path of a step's diff.
//!
//! The upper directory of an active overlay snapshot holds exactly what changed above its
//! parents: new and modified entries as they are, deletions as 0:0 character devices
//! (whiteouts) and replaced directories marked `trusted.overlay.opaque=y`. Walking it (in name
//! order) gives the OCI layer directly: a whiteout becomes `.wh.<name>`, an opaque directory
//! gets `.wh..wh..opq`, everything else is written with its owner, mode, times, xattrs (minus
//! overlayfs's own) and content; files linked several times are written once and hardlinked.
//! Directories renamed by overlayfs's `redirect_dir` or files copied up metadata-only
//! (`metacopy`) cannot be read this way: [`write`] then answers `Unsupported` and the caller
//! compares the whole trees instead.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// Writes the layer that the upper directory `upper` holds to `out` (uncompressed tar).
/// `Unsupported` when overlayfs recorded a redirect or a metadata-only copy-up.
pub fn write(upper: &Path, out: impl Write) -> io::Result<()> {
    let mut w = Walker {
        tar: tar::Builder::new(out),
        links: HashMap::new(),
    };
    w.tar.follow_symlinks(false);
    w.dir(upper, Path::new(""))?;
    w.tar.into_inner()?.flush()
}

struct Walker<W: Write> {
    tar: tar::Builder<W>,
    links: HashMap<(u64, u64), std::path::PathBuf>,
}

fn xattr_value(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).ok().flatten()
}

impl<W: Write> Walker<W> {
    fn dir(&mut self, dir: &Path, rel: &Path) -> io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                let mut wh = name.as_bytes().to_vec();
                wh.splice(0..0, b".wh.".iter().copied());
                let wh_rel = rel.with_file_name(OsStr::from_bytes(&wh));
                self.marker(&wh_rel, &meta)?;
                continue;
            }
            if xattr_value(&path, "trusted.overlay.redirect").is_some()
                || xattr_value(&path, "trusted.overlay.metacopy").is_some()
            {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "overlayfs redirect or metacopy in the upper directory",
                ));
            }
            self.entry(&path, &rel, &meta)?;
            if ft.is_dir() {
                if xattr_value(&path, "trusted.overlay.opaque").as_deref() == Some(b"y") {
                    self.marker(&rel.join(".wh..wh..opq"), &meta)?;
                }
                self.dir(&path, &rel)?;
            }
        }
        Ok(())
    }

    /// An empty regular file (whiteout or opaque marker).
    fn marker(&mut self, rel: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_uid(0);
        h.set_gid(0);
        self.tar.append_data(&mut h, rel, io::empty())
    }

    fn entry(&mut self, path: &Path, rel: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(meta.mtime().max(0) as u64);
        // Extended attributes other than overlayfs's own, as PAX records.
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Ok(names) = xattr::list(path) {
            for n in names {
                let n = n.to_string_lossy().into_owned();
                if n.starts_with(OVERLAY_XATTR_PREFIX) {
                    continue;
                }
                if let Some(v) = xattr_value(path, &n) {
                    pax.push((format!("SCHILY.xattr.{n}"), v));
                }
            }
        }
        pax.push((
            "mtime".into(),
            format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()).into_bytes(),
        ));
        self.tar
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            return self.tar.append_data(&mut h, rel, io::empty());
        }
        if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = std::fs::read_link(path)?;
            return self.tar.append_link(&mut h, rel, target);
        }
        if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    let first = first.clone();
                    return self.tar.append_link(&mut h, rel, first);
                }
                self.links.insert(key, rel.to_owned());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            return self.tar.append_data(&mut h, rel, File::open(path)?);
        }
        h.set_size(0);
        if ft.is_fifo() {
            h.set_entry_type(tar::EntryType::Fifo);
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            h.set_device_major(libc::major(rdev))?;
            h.set_device_minor(libc::minor(rdev))?;
        } else {
            // Sockets have no place in a layer.
            return Ok(());
        }
        self.tar.append_data(&mut h, rel, io::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_opaque_dirs_links_and_files_become_layer_entries() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        std::fs::create_dir_all(up.join("etc/conf.d")).unwrap();
        std::fs::write(up.join("etc/new.conf"), "x=1\n").unwrap();
        std::fs::hard_link(up.join("etc/new.conf"), up.join("etc/same.conf")).unwrap();
        std::os::unix::fs::symlink("/etc/new.conf", up.join("link")).unwrap();
        // A whiteout (0:0 character device) and an opaque directory, as overlayfs makes them.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            up.join("etc/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        xattr::set(up.join("etc/conf.d"), "trusted.overlay.opaque", b"y").unwrap();
        let mut out = Vec::new();
        write(up, &mut out).unwrap();
        let mut archive = tar::Archive::new(out.as_slice());
        let entries: Vec<(String, tar::EntryType)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/conf.d",
                "etc/conf.d/.wh..wh..opq",
                "etc/.wh.gone",
                "etc/new.conf",
                "etc/same.conf",
                "link"
            ]
        );
        assert_eq!(entries[5].1, tar::EntryType::Link);
        assert_eq!(entries[6].1, tar::EntryType::Symlink);
    }

    #[test]
    fn a_redirect_makes_the_caller_compare_instead() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("moved")).unwrap();
        xattr::set(
            dir.path().join("moved"),
            "trusted.overlay.redirect",
            b"/old",
        )
        .unwrap();
        let err = write(dir.path(), Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
}
