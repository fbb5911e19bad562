//! The builder's errors: one enum, each variant naming what it concerns.

use std::path::PathBuf;

/// A result with the builder's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a build (or an image-writing helper) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to a berth service failed.
    #[error("{op}: {}", status.message())]
    Rpc {
        /// What was being done.
        op: String,
        /// The service's answer.
        status: tonic::Status,
    },
    /// A local file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The layer library or a mount failed.
    #[error("{op}: {source}")]
    Layer {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: berth_snapshots::Error,
    },
    /// Bad input from the user (flags, context, Dockerfile) that no step has started on yet.
    #[error("{0}")]
    Invalid(String),
    /// An image, stage or file the build names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Content read from the services is not what an image should be.
    #[error("{0}")]
    BadContent(String),
    /// A Dockerfile step failed: the message names the file and line.
    #[error("{file}:{line}: {message}")]
    Step {
        /// Dockerfile name.
        file: String,
        /// 1-based line of the instruction.
        line: usize,
        /// What went wrong.
        message: String,
        /// Exit code of a failed RUN (the build ends with it).
        exit_code: Option<u32>,
    },
}

impl Error {
    /// An `Rpc` error maker for `map_err`.
    pub fn rpc(op: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
        let op = op.into();
        move |status| Error::Rpc { op, status }
    }

    /// An `Io` error maker for `map_err`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// A `Layer` error maker for `map_err`.
    pub fn layer(op: &'static str) -> impl FnOnce(berth_snapshots::Error) -> Error {
        move |source| Error::Layer { op, source }
    }

    /// The exit code a command-line client should end with: a failed RUN's own code, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Step {
                exit_code: Some(c), ..
            } => (*c).clamp(1, 255) as u8,
            _ => 1,
        }
    }

    /// The gRPC code that classifies this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Rpc { status, .. } => status.code(),
            Error::Invalid(_) | Error::Step { .. } => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::BadContent(_) => tonic::Code::FailedPrecondition,
            Error::Io { .. } | Error::Layer { .. } => tonic::Code::Internal,
        }
    }
}
