//! The runtime's errors; each command prints the message of one of these and exits 1.

use std::path::{Path, PathBuf};

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec (or a process JSON) is invalid.
    #[error("invalid spec: {field}: {reason}")]
    InvalidSpec {
        /// JSON path of the offending field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// No container with this id.
    #[error("container {id:?} does not exist")]
    NotFound {
        /// Container id.
        id: String,
    },
    /// A container with this id exists.
    #[error("container {id:?} already exists")]
    Exists {
        /// Container id.
        id: String,
    },
    /// The container is not in a state that allows the command.
    #[error("container {id:?}: {reason}")]
    State {
        /// Container id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {errno}")]
    Sys {
        /// The call and its object.
        what: String,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// The container's init failed while being set up.
    #[error("container init: {0}")]
    Init(String),
}

impl Error {
    /// Maps an io::Error on `path`.
    pub fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_owned();
        move |source| Error::Io { path, source }
    }

    /// Maps an errno of the call `what`.
    pub fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
        let what = what.into();
        move |errno| Error::Sys { what, errno }
    }
}
