//! The CRI RuntimeService: a thin adapter from tonic to [`crate::sandbox`], [`crate::container`]
//! and [`crate::streaming`].

use std::pin::Pin;
use std::sync::Arc;

use berth_api::runtime::v1::runtime_service_server::RuntimeService;
use berth_api::runtime::v1::*;
use tonic::{Request, Response, Status};

use crate::Cri;

/// A boxed server stream of `T`.
pub type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Most items in one message of a CRIListStreaming RPC.
pub const STREAM_PAGE: usize = 100;

/// The answer of a CRIListStreaming RPC (StreamPodSandboxes, StreamContainers,
/// StreamContainerStats, StreamPodSandboxStats, StreamPodSandboxMetrics, StreamImages), as
/// cri-api v0.36.3's api.proto asks: `items` in messages of 1 to [`STREAM_PAGE`] items, each
/// item in exactly one message, then EOF; no message at all when there is no item.
pub fn pages<T, R: Send + 'static>(items: Vec<T>, wrap: impl Fn(Vec<T>) -> R) -> BoxStream<R> {
    let mut items = items.into_iter().peekable();
    let mut messages = Vec::new();
    while items.peek().is_some() {
        messages.push(Ok(wrap(items.by_ref().take(STREAM_PAGE).collect())));
    }
    Box::pin(futures::stream::iter(messages))
}

/// The RuntimeService over the shared [`Cri`] state.
pub struct RuntimeApi {
    cri: Arc<Cri>,
}

impl RuntimeApi {
    /// The service over `cri`.
    pub fn new(cri: Arc<Cri>) -> RuntimeApi {
        RuntimeApi { cri }
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let _ = request;
        Ok(Response::new(crate::sandbox::node::version()))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        Ok(Response::new(RunPodSandboxResponse {
            pod_sandbox_id: crate::sandbox::lifecycle::run(&self.cri, request.into_inner()).await?,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        crate::sandbox::lifecycle::stop(&self.cri, &request.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        crate::sandbox::lifecycle::remove(&self.cri, &request.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(crate::sandbox::status::status(
            &self.cri,
            &r.pod_sandbox_id,
            r.verbose,
        )?))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let items = crate::sandbox::status::list(&self.cri, request.into_inner().filter.as_ref())?;
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = BoxStream<StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let items = crate::sandbox::status::list(&self.cri, request.into_inner().filter.as_ref())?;
        Ok(Response::new(pages(items, |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        Ok(Response::new(CreateContainerResponse {
            container_id: crate::container::lifecycle::create(&self.cri, request.into_inner())
                .await?,
        }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        crate::container::lifecycle::start(&self.cri, &request.into_inner().container_id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let r = request.into_inner();
        crate::container::lifecycle::stop(&self.cri, &r.container_id, r.timeout).await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        crate::container::lifecycle::remove(&self.cri, &request.into_inner().container_id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers =
            crate::container::status::list(&self.cri, request.into_inner().filter).await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type StreamContainersStream = BoxStream<StreamContainersResponse>;
    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let containers =
            crate::container::status::list(&self.cri, request.into_inner().filter).await?;
        Ok(Response::new(pages(containers, |containers| {
            StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        Ok(Response::new(
            crate::container::status::status(&self.cri, request.into_inner()).await?,
        ))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        crate::container::update::update_resources(&self.cri, request.into_inner()).await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        crate::container::update::reopen_log(&self.cri, &request.into_inner().container_id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        Ok(Response::new(
            crate::container::exec::exec_sync(&self.cri, request.into_inner()).await?,
        ))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        crate::streaming::exec(&self.cri, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        crate::streaming::attach(&self.cri, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        crate::streaming::port_forward(&self.cri, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let stats =
            crate::container::stats::container_stats(&self.cri, &request.into_inner().container_id)
                .await?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let stats = crate::container::stats::list(&self.cri, request.into_inner().filter).await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = BoxStream<StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        request: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let container_stats =
            crate::container::stats::list(&self.cri, request.into_inner().filter).await?;
        Ok(Response::new(pages(container_stats, |container_stats| {
            StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let stats =
            crate::sandbox::stats::pod_stats(&self.cri, &request.into_inner().pod_sandbox_id)
                .await?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let stats =
            crate::sandbox::stats::list(&self.cri, request.into_inner().filter.as_ref()).await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = BoxStream<StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let pod_sandbox_stats =
            crate::sandbox::stats::list(&self.cri, request.into_inner().filter.as_ref()).await?;
        Ok(Response::new(pages(
            pod_sandbox_stats,
            |pod_sandbox_stats| StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        crate::sandbox::node::update_runtime_config(&self.cri, &request.into_inner())?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(
            crate::sandbox::node::status(&self.cri, request.into_inner().verbose).await,
        ))
    }

    async fn checkpoint_container(
        &self,
        request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented(
            "CheckpointContainer is not supported: berth has no checkpoint/restore (CRIU) support",
        ))
    }

    type GetContainerEventsStream = BoxStream<ContainerEventResponse>;
    async fn get_container_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let _ = request;
        Ok(Response::new(
            crate::container::events::subscribe(self.cri.clone()).await?,
        ))
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        // berth exports no pod metrics beyond the stats RPCs: the list is empty.
        let _ = request;
        Ok(Response::new(ListMetricDescriptorsResponse {
            descriptors: Vec::new(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        // berth exports no pod metrics beyond the stats RPCs: the list is empty.
        let _ = request;
        Ok(Response::new(ListPodSandboxMetricsResponse {
            pod_metrics: Vec::new(),
        }))
    }

    type StreamPodSandboxMetricsStream = BoxStream<StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        request: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        // berth exports no pod metrics beyond the stats RPCs: no message, only EOF.
        let _ = request;
        Ok(Response::new(pages(Vec::new(), |pod_sandbox_metrics| {
            StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        })))
    }

    async fn runtime_config(
        &self,
        request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        let _ = request;
        Ok(Response::new(crate::sandbox::node::runtime_config(
            &self.cri,
        )))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        crate::sandbox::status::update_resources(&self.cri, &request.into_inner())?;
        Ok(Response::new(UpdatePodSandboxResourcesResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn pages_hold_each_item_once_and_nothing_when_empty() {
        let sizes: Vec<Vec<usize>> = pages((0..250).collect(), |v: Vec<usize>| v)
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(
            sizes.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(sizes.concat(), (0..250).collect::<Vec<_>>());
        let none: Vec<_> = pages(Vec::<u8>::new(), |v| v).collect().await;
        assert!(none.is_empty());
    }
}
