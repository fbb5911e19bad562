//! `berth.leases.v1.Leases` over a [`LeaseManager`].

use std::sync::Arc;

use berth_api::berth::leases::v1 as pb;
use berth_api::berth::leases::v1::leases_server::Leases;
use tonic::{Request, Response, Status};

use super::{blocking, collect_after_delete, labels, namespace, system_time, timestamp};
use crate::error::{Error, Result};
use crate::gc::Collector;
use crate::leases::{Lease, LeaseManager, Resource, ResourceKind};
use berth_api::filters::Filters;

/// The Leases service.
pub struct LeasesService<L> {
    leases: Arc<L>,
    gc: Collector,
}

impl<L> LeasesService<L> {
    /// Serves `leases`; a synchronous Delete runs `gc`.
    pub fn new(leases: Arc<L>, gc: Collector) -> Self {
        LeasesService { leases, gc }
    }
}

fn lease(l: Lease) -> pb::Lease {
    pb::Lease {
        id: l.id,
        created_at: timestamp(l.created_at),
        labels: l.labels.into_iter().collect(),
        expires_at: l.expires_at.and_then(timestamp),
    }
}

fn resource(r: Option<pb::Resource>) -> Result<Resource> {
    let r = r.ok_or_else(|| Error::invalid("resource", "must be set"))?;
    Ok(Resource {
        kind: ResourceKind::parse(&r.r#type)?,
        id: r.id,
    })
}

#[tonic::async_trait]
impl<L: LeaseManager> Leases for LeasesService<L> {
    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let leases = self.leases.clone();
        let req = request.into_inner();
        let l = blocking(move || {
            let id = Some(req.id.as_str()).filter(|id| !id.is_empty());
            leases.create(&ns, id, labels(req.labels), system_time(req.expires_at)?)
        })
        .await?;
        Ok(Response::new(pb::CreateResponse {
            lease: Some(lease(l)),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let leases = self.leases.clone();
        let req = request.into_inner();
        blocking(move || leases.delete(&ns, &req.id)).await?;
        collect_after_delete(&self.gc, req.sync).await?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let leases = self.leases.clone();
        let filters = request.into_inner().filters;
        let all = blocking(move || leases.list(&ns, &Filters::parse(&filters)?)).await?;
        Ok(Response::new(pb::ListResponse {
            leases: all.into_iter().map(lease).collect(),
        }))
    }

    async fn add_resource(
        &self,
        request: Request<pb::AddResourceRequest>,
    ) -> Result<Response<pb::AddResourceResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let leases = self.leases.clone();
        let req = request.into_inner();
        blocking(move || leases.add_resource(&ns, &req.id, &resource(req.resource)?)).await?;
        Ok(Response::new(pb::AddResourceResponse {}))
    }

    async fn delete_resource(
        &self,
        request: Request<pb::DeleteResourceRequest>,
    ) -> Result<Response<pb::DeleteResourceResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let leases = self.leases.clone();
        let req = request.into_inner();
        blocking(move || leases.delete_resource(&ns, &req.id, &resource(req.resource)?)).await?;
        Ok(Response::new(pb::DeleteResourceResponse {}))
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let leases = self.leases.clone();
        let id = request.into_inner().id;
        let all = blocking(move || leases.resources(&ns, &id)).await?;
        Ok(Response::new(pb::ListResourcesResponse {
            resources: all
                .into_iter()
                .map(|r| pb::Resource {
                    id: r.id,
                    r#type: r.kind.name(),
                })
                .collect(),
        }))
    }
}
