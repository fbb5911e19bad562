//! The shim's one error type, its classification, and its one conversion to a gRPC status.

use std::path::PathBuf;

use crate::task::Status;

/// gRPC metadata key on a Create/Exec error that tells the exit code a shell (or Docker)
/// reports for it: 127 when the command does not exist, 126 when it cannot be executed.
pub const EXIT_CODE_METADATA: &str = "berth-exit-code";

/// What went wrong, with the container, process or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this id in this shim.
    #[error("container {id} not found")]
    ContainerNotFound { id: String },
    /// No exec process with this id in the container.
    #[error("exec process {exec_id} not found in container {id}")]
    ExecNotFound { id: String, exec_id: String },
    /// A container with this id already exists (or is being created).
    #[error("container {id} already exists")]
    ContainerExists { id: String },
    /// An exec process with this id already exists in the container.
    #[error("exec process {exec_id} already exists in container {id}")]
    ExecExists { id: String, exec_id: String },
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The bundle is missing, or its config.json is unreadable or not a valid OCI spec.
    #[error("invalid bundle {}: {reason}", path.display())]
    InvalidBundle { path: PathBuf, reason: String },
    /// The runtime name is neither known nor an absolute path.
    #[error(
        "unknown runtime {name:?}: use \"builtin\", \"runc\", \"crun\" or the absolute path of an OCI runtime"
    )]
    UnknownRuntime { name: String },
    /// The runtime binary does not exist or cannot be executed.
    #[error("OCI runtime {} cannot be run: {reason}", path.display())]
    RuntimeMissing { path: PathBuf, reason: String },
    /// The runtime ran and failed.
    #[error("OCI runtime {command} failed: {message}")]
    RuntimeFailed {
        command: &'static str,
        message: String,
    },
    /// The process's command does not exist in the container (a shell reports 127).
    #[error("exec: {command:?}: executable file not found in $PATH")]
    CommandNotFound { command: String },
    /// The process's command exists but cannot be executed (a shell reports 126).
    #[error("exec: {command:?}: permission denied")]
    CommandNotExecutable { command: String },
    /// The process has exited: it can no longer be signalled, resized or fed.
    #[error("process {process} of container {id} already finished")]
    ProcessFinished { id: String, process: String },
    /// The request is not allowed in the process's current state.
    #[error("container {id} is {state}: cannot {action}")]
    BadState {
        id: String,
        state: Status,
        action: &'static str,
    },
    /// The process has no terminal (ResizePty) or no stdin (CloseIO).
    #[error("process {process} of container {id} has no {what}")]
    NoSuchIo {
        id: String,
        process: String,
        what: &'static str,
    },
    /// A file or directory of the shim, the bundle or a cgroup could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    /// Mounting or unmounting a root filesystem mount failed.
    #[error("cannot mount the root filesystem on {}: {reason}", target.display())]
    Mount { target: PathBuf, reason: String },
    /// The shim is shutting down and accepts no new work.
    #[error("the shim is shutting down")]
    ShuttingDown,
}

/// How an [`Error`] is classified (a subset of the gRPC codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    Internal,
}

/// The shim's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The class of the error, which decides its gRPC code.
    pub fn kind(&self) -> Kind {
        match self {
            Error::ContainerNotFound { .. }
            | Error::ExecNotFound { .. }
            | Error::CommandNotFound { .. }
            | Error::ProcessFinished { .. } => Kind::NotFound,
            Error::ContainerExists { .. } | Error::ExecExists { .. } => Kind::AlreadyExists,
            Error::InvalidArgument { .. }
            | Error::InvalidBundle { .. }
            | Error::UnknownRuntime { .. } => Kind::InvalidArgument,
            Error::RuntimeMissing { .. }
            | Error::CommandNotExecutable { .. }
            | Error::BadState { .. }
            | Error::NoSuchIo { .. } => Kind::FailedPrecondition,
            Error::ShuttingDown => Kind::Unavailable,
            Error::RuntimeFailed { .. }
            | Error::Io { .. }
            | Error::Sys { .. }
            | Error::Mount { .. } => Kind::Internal,
        }
    }

    /// The exit code a shell reports for this error, when it is about the process's command.
    pub fn exit_code(&self) -> Option<u32> {
        match self {
            Error::CommandNotFound { .. } => Some(127),
            Error::CommandNotExecutable { .. } => Some(126),
            _ => None,
        }
    }

    /// An [`Error::Io`] about `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// An [`Error::Sys`] for the system call described by `what`.
    pub fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> Error {
        move |source| Error::Sys { what, source }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let code = match e.kind() {
            Kind::NotFound => tonic::Code::NotFound,
            Kind::AlreadyExists => tonic::Code::AlreadyExists,
            Kind::InvalidArgument => tonic::Code::InvalidArgument,
            Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
            Kind::Unavailable => tonic::Code::Unavailable,
            Kind::Internal => tonic::Code::Internal,
        };
        let mut status = tonic::Status::new(code, e.to_string());
        if let Some(exit) = e.exit_code() {
            status
                .metadata_mut()
                .insert(EXIT_CODE_METADATA, exit.into());
        }
        status
    }
}
