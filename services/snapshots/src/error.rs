//! The one error type of this crate, and how errors are classified.
//!
//! The gRPC status of an error is decided in one place, `service.rs`, from [`Error::kind`].

use std::io;
use std::path::PathBuf;

use crate::snapshotter::Kind;

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an error is classified for callers; the gRPC adapter maps each to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named snapshot (or parent) does not exist.
    NotFound,
    /// The key or name is already taken.
    AlreadyExists,
    /// The request itself is malformed: a bad key, label, filter, field or layer.
    InvalidArgument,
    /// The request is well formed but the snapshot is in the wrong state for it.
    FailedPrecondition,
    /// The service cannot serve now (its metadata writer stopped, the disk is full).
    Unavailable,
    /// Anything else: a bug or an unexpected system failure.
    Internal,
}

/// What went wrong, naming the snapshot, path or entry concerned.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each field is the key, path or cause its message names"
)]
pub enum Error {
    /// No snapshot has this key or name.
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },
    /// The key or name is taken.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    /// The parent named by Prepare or View does not exist.
    #[error("parent snapshot {parent:?} not found")]
    ParentNotFound { parent: String },
    /// The parent named by Prepare or View is not committed.
    #[error("parent snapshot {parent:?} is {kind}: only a committed snapshot can be a parent")]
    ParentNotCommitted { parent: String, kind: Kind },
    /// Commit of something other than an active snapshot.
    #[error("snapshot {key:?} is {kind}: only an active snapshot can be committed")]
    NotCommittable { key: String, kind: Kind },
    /// Mounts of a committed snapshot.
    #[error("snapshot {key:?} is committed and has no mounts: make a view of it")]
    NoMounts { key: String },
    /// Remove of a snapshot other snapshots are built on.
    #[error(
        "snapshot {key:?} is the parent of {count} snapshot(s) (e.g. {child:?}): remove them first"
    )]
    HasChildren {
        key: String,
        count: usize,
        child: String,
    },
    /// A key or name that is not acceptable.
    #[error("invalid snapshot key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A label that is not acceptable.
    #[error("invalid label {key:?}: {reason}")]
    InvalidLabel { key: String, reason: &'static str },
    /// A List filter that does not parse.
    #[error("invalid filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },
    /// An Update field path other than `labels` or `labels.<key>`.
    #[error("cannot update field {field:?}: only \"labels\" and \"labels.<key>\" can be updated")]
    InvalidField { field: String },
    /// A request for a snapshotter this service does not run.
    #[error("snapshotter {name:?} is not served here (this service runs {served:?})")]
    UnknownSnapshotter { name: String, served: String },
    /// A layer archive that is malformed or tries to reach outside its target.
    #[error("layer entry {entry:?}: {reason}")]
    InvalidLayer { entry: String, reason: String },
    /// A layer entry that could not be written (e.g. its parent is not a directory).
    #[error("layer entry {entry:?}: {source}")]
    LayerEntry { entry: String, source: io::Error },
    /// A mount that is malformed or of a type the mount helper does not know.
    #[error("invalid mount: {reason}")]
    InvalidMount { reason: String },
    /// A mount(2)-family call failed; `detail` carries the kernel's own message when it gave one.
    #[error("mount {what} at {}: {source}{detail}", target.display())]
    Mount {
        what: String,
        target: PathBuf,
        source: io::Error,
        detail: String,
    },
    /// A filesystem operation on the service's own files failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    /// The metadata database is opened by another process.
    #[error("metadata database {} is in use by another process: is berth-snapshots already running?", path.display())]
    DbInUse { path: PathBuf },
    /// A transaction shared with other operations failed to commit; nothing was changed.
    #[error("metadata transaction failed, nothing was changed: {reason}")]
    CommitFailed { reason: String },
    /// A stored record does not decode.
    #[error("metadata record of {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// The thread that writes metadata is gone (the service is shutting down or crashed).
    #[error("the metadata writer has stopped")]
    WriterGone,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::NotFound { .. } | Error::ParentNotFound { .. } => K::NotFound,
            Error::AlreadyExists { .. } => K::AlreadyExists,
            Error::InvalidKey { .. }
            | Error::InvalidLabel { .. }
            | Error::InvalidFilter { .. }
            | Error::InvalidField { .. }
            | Error::UnknownSnapshotter { .. }
            | Error::InvalidLayer { .. }
            | Error::InvalidMount { .. } => K::InvalidArgument,
            Error::ParentNotCommitted { .. }
            | Error::NotCommittable { .. }
            | Error::NoMounts { .. }
            | Error::HasChildren { .. } => K::FailedPrecondition,
            Error::LayerEntry { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => K::Unavailable,
                Some(
                    libc::ENOTDIR
                    | libc::EISDIR
                    | libc::ELOOP
                    | libc::EEXIST
                    | libc::ENOENT
                    | libc::EXDEV
                    | libc::EINVAL
                    | libc::ENAMETOOLONG
                    | libc::EPERM
                    | libc::ENOTEMPTY,
                ) => K::InvalidArgument,
                _ if source.kind() == io::ErrorKind::InvalidData => K::InvalidArgument,
                _ if source.kind() == io::ErrorKind::UnexpectedEof => K::InvalidArgument,
                _ => K::Internal,
            },
            Error::Io { source, .. } | Error::Mount { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => K::Unavailable,
                _ => K::Internal,
            },
            Error::DbInUse { .. } | Error::WriterGone => K::Unavailable,
            Error::Db(_) | Error::CommitFailed { .. } | Error::Corrupt { .. } => K::Internal,
        }
    }

    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Converts any of redb's specific errors into [`Error::Db`].
pub(crate) fn db(e: impl Into<redb::Error>) -> Error {
    Error::Db(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_cause() {
        let e = Error::LayerEntry {
            entry: "a/b".into(),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        };
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = Error::Io {
            op: "rename",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            Error::HasChildren {
                key: "a".into(),
                count: 1,
                child: "b".into()
            }
            .kind(),
            ErrorKind::FailedPrecondition
        );
    }
}
