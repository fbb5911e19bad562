//! The gRPC adapters: convert messages, call the domain, map errors. Nothing else lives here.
//!
//! The domain is synchronous (files and redb); every call runs on tokio's blocking pool.

mod archive;
mod content;
mod images;
mod leases;

use std::collections::BTreeMap;
use std::time::SystemTime;

use berth_api::namespace::LEASE_HEADER;
pub use content::ContentService;
pub use images::ImagesService;
pub use leases::LeasesService;
use tonic::metadata::MetadataMap;

use crate::error::{Error, Kind, Result};

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let code = match e.kind() {
            Kind::NotFound => tonic::Code::NotFound,
            Kind::AlreadyExists => tonic::Code::AlreadyExists,
            Kind::InvalidArgument => tonic::Code::InvalidArgument,
            Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
            Kind::Unavailable => tonic::Code::Unavailable,
            Kind::Unauthenticated => tonic::Code::Unauthenticated,
            Kind::PermissionDenied => tonic::Code::PermissionDenied,
            Kind::Internal => {
                tracing::error!(error = %e, "internal error");
                tonic::Code::Internal
            }
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Runs a domain call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| tonic::Status::internal(format!("task failed: {e}")))?
        .map_err(tonic::Status::from)
}

/// Collects garbage after a delete: before answering when the caller asked for `sync`, in the
/// background otherwise.
async fn collect_after_delete(gc: &crate::gc::Collector, sync: bool) -> Result<(), tonic::Status> {
    let gc = gc.clone();
    let collect = blocking(move || gc.collect());
    if sync {
        collect.await?;
    } else {
        tokio::spawn(collect);
    }
    Ok(())
}

/// The namespace of a request.
#[allow(clippy::result_large_err)]
fn namespace(metadata: &MetadataMap) -> Result<String, tonic::Status> {
    berth_api::namespace::of(metadata)
}

/// The lease a request names in its `berth-lease` metadata, if any.
#[allow(clippy::result_large_err)]
fn lease(metadata: &MetadataMap) -> Result<Option<String>, tonic::Status> {
    match metadata.get(LEASE_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| tonic::Status::invalid_argument("invalid lease: metadata is not ASCII")),
    }
}

fn timestamp(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

fn system_time(t: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>> {
    t.map(|t| {
        SystemTime::try_from(t)
            .map_err(|e| Error::invalid("timestamp", format!("out of range: {e}")))
    })
    .transpose()
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn digest(field: &'static str, s: &str) -> Result<crate::digest::Digest> {
    if s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    s.parse()
}

/// A non-negative int64 from a message as u64.
fn unsigned(field: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::invalid(field, format!("{v} is negative")))
}
