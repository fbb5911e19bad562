//! The gRPC adapter: converts messages, runs the snapshotter on a blocking thread, maps errors.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::berth::snapshots::v1 as pb;
use berth_api::berth::types::v1 as types;
use berth_api::namespace;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::error::{Error, ErrorKind, Result};
use crate::mount::Mount;
use crate::snapshotter::{Info, Kind, Labels, Snapshotter};

/// Most bytes of snapshot information sent in one List message.
const LIST_BATCH_BYTES: usize = 1 << 20;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match e.kind() {
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<Mount> for types::Mount {
    fn from(m: Mount) -> types::Mount {
        types::Mount {
            r#type: m.fs_type,
            source: m.source,
            target: String::new(),
            options: m.options,
        }
    }
}

impl From<types::Mount> for Mount {
    fn from(m: types::Mount) -> Mount {
        Mount {
            fs_type: m.r#type,
            source: m.source,
            options: m.options,
        }
    }
}

impl From<Kind> for pb::Kind {
    fn from(kind: Kind) -> pb::Kind {
        match kind {
            Kind::Active => pb::Kind::Active,
            Kind::View => pb::Kind::View,
            Kind::Committed => pb::Kind::Committed,
        }
    }
}

impl From<Info> for pb::Info {
    fn from(info: Info) -> pb::Info {
        pb::Info {
            name: info.name,
            parent: info.parent.unwrap_or_default(),
            kind: pb::Kind::from(info.kind) as i32,
            created_at: Some(info.created.into()),
            updated_at: Some(info.updated.into()),
            labels: info.labels.into_iter().collect(),
        }
    }
}

/// The Snapshots gRPC service over one snapshotter.
pub struct SnapshotsService {
    snapshotter: Arc<dyn Snapshotter>,
}

impl SnapshotsService {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<dyn Snapshotter>) -> Self {
        SnapshotsService { snapshotter }
    }

    /// The snapshotter named `name` (empty: the one served).
    fn named(&self, name: &str) -> std::result::Result<&dyn Snapshotter, Status> {
        if !name.is_empty() && name != self.snapshotter.name() {
            return Err(Error::UnknownSnapshotter {
                name: name.to_owned(),
                served: self.snapshotter.name().to_owned(),
            }
            .into());
        }
        Ok(self.snapshotter.as_ref())
    }

    /// Runs `op` on the snapshotter named `name`, off the async threads (it does filesystem
    /// work or waits for a metadata commit).
    async fn call<T: Send + 'static>(
        &self,
        name: &str,
        op: impl FnOnce(&dyn Snapshotter) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        self.named(name)?;
        let snapshotter = self.snapshotter.clone();
        tokio::task::spawn_blocking(move || op(snapshotter.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("snapshot operation failed: {e}")))?
            .map_err(Status::from)
    }
}

fn labels(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

fn parent(name: String) -> Option<String> {
    Some(name).filter(|p| !p.is_empty())
}

fn mounts(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts.into_iter().map(types::Mount::from).collect()
}

type ListStream = Pin<
    Box<
        dyn tokio_stream::Stream<Item = std::result::Result<pb::ListSnapshotsResponse, Status>>
            + Send,
    >,
>;

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> std::result::Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let m = self
            .call(&r.snapshotter, move |s| {
                s.prepare(&ns, &r.key, parent(r.parent).as_deref(), labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> std::result::Result<Response<pb::ViewSnapshotResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let m = self
            .call(&r.snapshotter, move |s| {
                s.view(&ns, &r.key, parent(r.parent).as_deref(), labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> std::result::Result<Response<pb::MountsResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        // A metadata read: quick enough for the async thread.
        let m = self.named(&r.snapshotter)?.mounts(&ns, &r.key)?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> std::result::Result<Response<pb::CommitSnapshotResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        self.call(&r.snapshotter, move |s| {
            s.commit(&ns, &r.name, &r.key, labels(r.labels))
        })
        .await?;
        Ok(Response::new(pb::CommitSnapshotResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> std::result::Result<Response<pb::RemoveSnapshotResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        self.call(&r.snapshotter, move |s| s.remove(&ns, &r.key))
            .await?;
        Ok(Response::new(pb::RemoveSnapshotResponse {}))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> std::result::Result<Response<pb::StatSnapshotResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let info = self.named(&r.snapshotter)?.stat(&ns, &r.key)?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info.into()),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> std::result::Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info is required: name the snapshot"))?;
        let fields = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .call(&r.snapshotter, move |s| {
                s.update(&ns, &info.name, labels(info.labels), &fields)
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(updated.into()),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<Self::ListStream>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let infos = self
            .call(&r.snapshotter, move |s| s.list(&ns, &r.filters))
            .await?;
        let mut batches = Vec::new();
        let mut batch = pb::ListSnapshotsResponse::default();
        for info in infos {
            let info = pb::Info::from(info);
            if !batch.info.is_empty() && batch.encoded_len() + info.encoded_len() > LIST_BATCH_BYTES
            {
                batches.push(Ok(std::mem::take(&mut batch)));
            }
            batch.info.push(info);
        }
        if !batch.info.is_empty() {
            batches.push(Ok(batch));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> std::result::Result<Response<pb::UsageResponse>, Status> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let usage = self
            .call(&r.snapshotter, move |s| s.usage(&ns, &r.key))
            .await?;
        Ok(Response::new(pb::UsageResponse {
            size: usage.size as i64,
            inodes: usage.inodes as i64,
        }))
    }

    async fn cleanup(
        &self,
        request: Request<pb::CleanupRequest>,
    ) -> std::result::Result<Response<pb::CleanupResponse>, Status> {
        let r = request.into_inner();
        let removed = self.call(&r.snapshotter, |s| s.cleanup()).await?;
        Ok(Response::new(pb::CleanupResponse { removed }))
    }
}
