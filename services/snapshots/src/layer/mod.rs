//! The layer library: OCI layer tars in and out of directory trees.
//!
//! - [`apply`] unpacks an (uncompressed) OCI layer stream into a directory and returns its
//!   diff id. Owners, modes (setuid/setgid/sticky included), times (nanoseconds from PAX
//!   records), xattrs (`SCHILY.xattr.*`), symlinks, hardlinks and device nodes are kept.
//!   Whiteouts (`.wh.<name>`) and opaque markers (`.wh..wh..opq`) either become overlayfs's own
//!   form ([`Whiteouts::Overlay`]: a 0:0 character device, `trusted.overlay.opaque=y`) when the
//!   target is an overlay upper directory, or delete what they name ([`Whiteouts::Delete`])
//!   when the target is a whole tree.
//! - [`compare`] writes the changes from a lower tree to an upper tree as an OCI layer tar,
//!   deletions as whiteouts and directories whose lower contents are all gone as opaque; for
//!   any lower and upper, `apply(compare(lower, upper))` onto (a copy of) lower gives upper.
//! - [`apply_to_mounts`] applies onto a snapshot's mounts: straight into an overlay's upper
//!   directory, a writable bind's source, or anything else through a temporary mount.
//!
//! Hostile archives cannot reach outside the target: entries with `..` components are
//! refused, leading `/` is dropped, and every path is resolved with openat2's
//! `RESOLVE_IN_ROOT` (symlinks resolve as if the target were `/`), final components are never
//! followed, hardlinks resolve inside the target, and removals work on directory fds without
//! following symlinks. Xattrs under `trusted.overlay.` in an archive are ignored, so a layer
//! cannot forge overlayfs metadata (redirects, opaque markers) except through whiteouts.

mod apply;
mod compare;
#[cfg(test)]
pub(crate) mod tests;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::mount::{Mount, Mounted};

pub use apply::apply;
pub use compare::compare;

/// How the whiteouts of a layer are applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Whiteouts {
    /// The target holds the whole tree: a whiteout deletes what it names, an opaque marker
    /// deletes what the directory held before this layer.
    #[default]
    Delete,
    /// The target is an overlay upper directory: whiteouts become 0:0 character devices and
    /// opaque markers `trusted.overlay.opaque=y`, for overlayfs to honour.
    Overlay,
}

/// How [`apply`] writes.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// What whiteouts become.
    pub whiteouts: Whiteouts,
    /// For an overlay upper target: the lower directories, topmost first. A directory the
    /// layer writes into without listing it gets the owner, mode, xattrs and times it has in
    /// the lowers (as overlayfs's copy-up would), instead of root 0755.
    pub parents: Vec<PathBuf>,
}

/// What [`apply`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the whole uncompressed stream: the layer's diff id.
    pub diff_id: String,
    /// Bytes read from the stream.
    pub size: u64,
}

/// What [`compare`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compared {
    /// `sha256:<hex>` of the tar written: the layer's diff id.
    pub diff_id: String,
    /// Bytes written.
    pub size: u64,
}

/// Applies `layer` onto the filesystem assembled by `mounts` (a snapshot's mounts). An
/// overlay is written through its upper directory and a writable bind through its source;
/// anything else is mounted on a temporary directory inside `scratch` for the time it takes.
pub fn apply_to_mounts(mounts: &[Mount], layer: impl Read, scratch: &Path) -> Result<Applied> {
    if mounts.iter().all(Mount::is_read_only) {
        return Err(Error::InvalidMount {
            reason: "the mounts are read-only: apply a layer onto an active snapshot".into(),
        });
    }
    if let [m] = mounts {
        if m.fs_type == "overlay"
            && let Some(upper) = m.upperdir()
        {
            let options = ApplyOptions {
                whiteouts: Whiteouts::Overlay,
                parents: m.lowerdirs(),
            };
            return apply(&upper, layer, &options);
        }
        if m.fs_type == "bind" {
            return apply(Path::new(&m.source), layer, &ApplyOptions::default());
        }
    }
    let mounted = Mounted::temporary(mounts, scratch)?;
    apply(mounted.path(), layer, &ApplyOptions::default())
}

/// Passes bytes through while hashing them.
struct Digesting<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Digesting<T> {
    fn new(inner: T) -> Self {
        Digesting {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (T, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.bytes)
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Name of the opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of a whiteout.
const WHITEOUT: &[u8] = b".wh.";
/// The xattr overlayfs reads to know a directory is opaque.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
