//! Connecting to a berth service over its Unix socket.
//!
//! Every call made through a [`Channel`] carries the caller's namespace (`berth-namespace`) and
//! the current span's W3C trace context, so the server continues the caller's trace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use crate::{namespace, telemetry};

/// A connection to one service; pass it to any generated client's `new`.
pub type Channel = InterceptedService<tonic::transport::Channel, CallContext>;

/// Why a service could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The namespace name is not valid.
    #[error("{0}")]
    Namespace(String),
    /// Nothing accepted a connection on the socket.
    #[error("cannot connect to {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
}

/// Adds namespace (unless the request names its own) and trace context metadata to every call.
#[derive(Clone)]
pub struct CallContext {
    namespace: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for CallContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if !request.metadata().contains_key(namespace::HEADER) {
            request
                .metadata_mut()
                .insert(namespace::HEADER, self.namespace.clone());
        }
        telemetry::inject(&tracing::Span::current(), request.metadata_mut());
        Ok(request)
    }
}

/// Connects to the socket at `socket`, for calls in `namespace`.
pub async fn connect(socket: &Path, namespace: &str) -> Result<Channel, ConnectError> {
    namespace::validate(namespace).map_err(ConnectError::Namespace)?;
    let value = namespace
        .parse()
        .map_err(|_| ConnectError::Namespace(format!("invalid namespace {namespace:?}")))?;
    let path = socket.to_owned();
    let unreachable = |reason: String| ConnectError::Unreachable {
        socket: socket.to_owned(),
        reason,
    };
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://berth.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| unreachable(root_cause(&e)))?;
    Ok(InterceptedService::new(
        channel,
        CallContext { namespace: value },
    ))
}

/// The innermost error message: tonic wraps the io error that says what went wrong.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
