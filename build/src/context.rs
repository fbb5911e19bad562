//! The build context: a directory, or a tar stream unpacked into a private temporary
//! directory, with its `.dockerignore` and the Dockerfile to build.
//!
//! A context tar is unpacked with the snapshots crate's layer library, which refuses paths
//! that climb out and resolves every entry inside the target, so a hostile tar cannot write
//! outside it. Symlinks in the context are kept as links: sources are resolved inside the
//! context (see [`crate::fsops`]) and never followed out of it.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsops;
use crate::ignore::Matcher;

/// Where a build reads its files from.
pub struct BuildContext {
    /// The context root.
    pub root: PathBuf,
    /// The root, open (every source is resolved against it).
    pub root_fd: OwnedFd,
    /// `.dockerignore` rules (empty when there is none).
    pub matcher: Matcher,
    /// Keeps an unpacked tar context alive.
    _unpacked: Option<tempfile::TempDir>,
}

/// Where the Dockerfile comes from.
pub enum DockerfileSource {
    /// `Dockerfile` at the context root.
    Default,
    /// A file (`-f`): relative paths are taken from the current directory for a directory
    /// context, from the context root for a tar context.
    Path(PathBuf),
}

impl BuildContext {
    /// Opens a directory context.
    pub fn from_dir(dir: &Path) -> Result<BuildContext> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            Error::Invalid(format!(
                "unable to prepare context: path {:?} not found: {e}",
                dir.display().to_string()
            ))
        })?;
        if !meta.is_dir() {
            return Err(Error::Invalid(format!(
                "unable to prepare context: {} is not a directory",
                dir.display()
            )));
        }
        BuildContext::open(dir.to_owned(), None)
    }

    /// Unpacks a tar context (plain or gzip) into a temporary directory under `scratch`.
    pub fn from_tar(input: impl Read, scratch: &Path) -> Result<BuildContext> {
        let dir = tempfile::Builder::new()
            .prefix(".context-")
            .tempdir_in(scratch)
            .map_err(Error::io("create a directory in", scratch))?;
        let mut input = std::io::BufReader::new(input);
        let head = std::io::BufRead::fill_buf(&mut input)
            .map_err(Error::io("read the context from", "stdin"))?;
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(input))
        } else {
            Box::new(input)
        };
        berth_snapshots::layer::apply(dir.path(), reader, &Default::default())
            .map_err(|e| Error::Invalid(format!("the context tar cannot be read: {e}")))?;
        let root = dir.path().to_owned();
        BuildContext::open(root, Some(dir))
    }

    fn open(root: PathBuf, unpacked: Option<tempfile::TempDir>) -> Result<BuildContext> {
        let root_fd = rustix::fs::open(
            &root,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("open the context", &root)(e.into()))?;
        let matcher = match read_in(&root_fd, ".dockerignore") {
            Some(text) => {
                Matcher::from_dockerignore(&text).map_err(|e| Error::Invalid(e.to_string()))?
            }
            None => Matcher::default(),
        };
        Ok(BuildContext {
            root,
            root_fd,
            matcher,
            _unpacked: unpacked,
        })
    }

    /// Whether the context came from a tar.
    pub fn is_unpacked(&self) -> bool {
        self._unpacked.is_some()
    }

    /// Reads the Dockerfile; returns its name (for messages) and text.
    pub fn dockerfile(&self, source: &DockerfileSource) -> Result<(String, String)> {
        match source {
            DockerfileSource::Default => read_in(&self.root_fd, "Dockerfile")
                .map(|t| ("Dockerfile".to_owned(), t))
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "cannot read {}: no Dockerfile in the context (use -f to name one)",
                        self.root.join("Dockerfile").display()
                    ))
                }),
            DockerfileSource::Path(p) if self.is_unpacked() => {
                let name = p.display().to_string();
                read_in(&self.root_fd, &name)
                    .map(|t| (name.clone(), t))
                    .ok_or_else(|| {
                        Error::NotFound(format!("cannot read {name} in the context tar"))
                    })
            }
            DockerfileSource::Path(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::NotFound(format!("cannot read Dockerfile {}: {e}", p.display()))
                })?;
                let name = p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                Ok((name, text))
            }
        }
    }
}

/// The text of a regular file of the context, resolved inside it; None if there is none.
fn read_in(root: &OwnedFd, rel: &str) -> Option<String> {
    let fd = fsops::open_in_root(
        std::os::fd::AsFd::as_fd(root),
        Path::new(rel),
        rustix::fs::OFlags::RDONLY,
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).ok()?;
    Some(text)
}
