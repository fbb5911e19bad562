//! The tasks service's error type, its classification, and its gRPC status.

use std::path::PathBuf;

/// How an [`Error`] is classified (and which gRPC code it becomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The named object does not exist.
    NotFound,
    /// The object already exists.
    AlreadyExists,
    /// The request itself is malformed.
    InvalidArgument,
    /// The request is valid but the current state forbids it.
    FailedPrecondition,
    /// A service or shim the tasks service depends on does not answer.
    Unavailable,
    /// A bug or an unexpected system failure.
    Internal,
}

/// Everything that can go wrong in the tasks service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container has this id, short id or name.
    #[error("container {id:?} not found")]
    ContainerNotFound {
        /// What was asked for.
        id: String,
    },
    /// A short id matches several containers.
    #[error("container id prefix {prefix:?} is ambiguous: it matches {}", matches.join(", "))]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// The ids it matches.
        matches: Vec<String>,
    },
    /// A container with this id exists.
    #[error("container {id:?} already exists")]
    ContainerExists {
        /// The id.
        id: String,
    },
    /// The name is held by another container.
    #[error("container name {name:?} is already in use by container {holder}")]
    NameInUse {
        /// The name.
        name: String,
        /// Id of the container that holds it.
        holder: String,
    },
    /// The container has no task.
    #[error("container {id} has no task")]
    TaskNotFound {
        /// Container id.
        id: String,
    },
    /// The container already has a task.
    #[error("container {id} already has a task: delete it first")]
    TaskExists {
        /// Container id.
        id: String,
    },
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The state of the container or task forbids the request.
    #[error("{0}")]
    Precondition(String),
    /// A status returned by another service or a shim, passed on with context.
    #[error("{context}: {}", status.message())]
    Remote {
        /// What was being done.
        context: String,
        /// The status received.
        status: tonic::Status,
    },
    /// A service or shim cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(#[from] redb::Error),
    /// A record in the database does not decode.
    #[error("metadata database: corrupt record {key}: {reason}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Launching a shim failed.
    #[error("cannot start the shim of container {id}: {reason}")]
    Shim {
        /// Container id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Result with the tasks service's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies the error.
    pub fn kind(&self) -> Kind {
        match self {
            Error::ContainerNotFound { .. } | Error::TaskNotFound { .. } => Kind::NotFound,
            Error::ContainerExists { .. } | Error::NameInUse { .. } | Error::TaskExists { .. } => {
                Kind::AlreadyExists
            }
            Error::Ambiguous { .. } | Error::Invalid { .. } => Kind::InvalidArgument,
            Error::Precondition(_) => Kind::FailedPrecondition,
            Error::Remote { status, .. } => match status.code() {
                tonic::Code::NotFound => Kind::NotFound,
                tonic::Code::AlreadyExists => Kind::AlreadyExists,
                tonic::Code::InvalidArgument => Kind::InvalidArgument,
                tonic::Code::FailedPrecondition => Kind::FailedPrecondition,
                tonic::Code::Unavailable => Kind::Unavailable,
                _ => Kind::Internal,
            },
            Error::Unreachable(_) => Kind::Unavailable,
            Error::Database(_) | Error::Corrupt { .. } | Error::Io { .. } | Error::Shim { .. } => {
                Kind::Internal
            }
        }
    }

    /// An invalid request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Wraps a status from another service or a shim.
    pub fn remote(context: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
        let context = context.into();
        move |status| Error::Remote { context, status }
    }

    /// Wraps an io error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

macro_rules! db_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Database(e.into())
            }
        }
    )*};
}
db_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e.kind() {
            Kind::NotFound => tonic::Status::not_found(message),
            Kind::AlreadyExists => tonic::Status::already_exists(message),
            Kind::InvalidArgument => tonic::Status::invalid_argument(message),
            Kind::FailedPrecondition => tonic::Status::failed_precondition(message),
            Kind::Unavailable => tonic::Status::unavailable(message),
            Kind::Internal => tonic::Status::internal(message),
        }
    }
}
