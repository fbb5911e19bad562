//! The tonic adapter of berth.volumes.v1: converts messages, calls the [`VolumeManager`] on a
//! blocking thread, maps errors. Nothing else.

use std::sync::Arc;

use berth_api::berth::volumes::v1 as pb;
use berth_api::filters::Filters;
use berth_api::namespace;
use tonic::{Request, Response, Status};

use super::{CreateOptions, Result, VolumeManager};

/// The `berth.volumes.v1.Volumes` service.
pub struct VolumesService {
    manager: Arc<VolumeManager>,
}

/// The service ready to add to a socket's routes.
pub fn server(manager: Arc<VolumeManager>) -> pb::volumes_server::VolumesServer<VolumesService> {
    pb::volumes_server::VolumesServer::new(VolumesService { manager })
}

type Rpc<T> = std::result::Result<Response<T>, Status>;

impl VolumesService {
    /// Runs `f` on a blocking thread (the manager commits to disk and walks directories).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&VolumeManager) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let manager = self.manager.clone();
        tokio::task::spawn_blocking(move || f(&manager))
            .await
            .map_err(|e| Status::internal(format!("volume operation failed: {e}")))?
            .map_err(Status::from)
    }
}

fn filters(filters: &[String]) -> std::result::Result<Filters, Status> {
    Filters::parse(filters).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for VolumesService {
    async fn create(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Rpc<pb::CreateVolumeResponse> {
        let ns = namespace::of(request.metadata())?;
        let req = request.into_inner();
        let opts = CreateOptions {
            driver: req.driver,
            labels: req.labels.into_iter().collect(),
            options: req.options.into_iter().collect(),
        };
        let volume = self
            .blocking(move |m| m.create(&ns, &req.name, opts))
            .await?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectVolumeRequest>,
    ) -> Rpc<pb::InspectVolumeResponse> {
        let ns = namespace::of(request.metadata())?;
        let name = request.into_inner().name;
        let volume = self.blocking(move |m| m.inspect(&ns, &name)).await?;
        Ok(Response::new(pb::InspectVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn list(&self, request: Request<pb::ListVolumesRequest>) -> Rpc<pb::ListVolumesResponse> {
        let ns = namespace::of(request.metadata())?;
        let req = request.into_inner();
        let filters = filters(&req.filters)?;
        let volumes = self
            .blocking(move |m| m.list(&ns, &filters, req.usage))
            .await?;
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveVolumeRequest>,
    ) -> Rpc<pb::RemoveVolumeResponse> {
        let ns = namespace::of(request.metadata())?;
        let req = request.into_inner();
        self.blocking(move |m| m.remove(&ns, &req.name, req.force))
            .await?;
        Ok(Response::new(pb::RemoveVolumeResponse {}))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneVolumesRequest>,
    ) -> Rpc<pb::PruneVolumesResponse> {
        let ns = namespace::of(request.metadata())?;
        let req = request.into_inner();
        let filters = filters(&req.filters)?;
        let (names, space_reclaimed) = self
            .blocking(move |m| m.prune(&ns, &filters, req.all))
            .await?;
        Ok(Response::new(pb::PruneVolumesResponse {
            names,
            space_reclaimed,
        }))
    }
}
