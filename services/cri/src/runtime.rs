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
    async fn version(&self, request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("version is not implemented yet"))
    }

    async fn run_pod_sandbox(&self, request: Request<RunPodSandboxRequest>) -> Result<Response<RunPodSandboxResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("run_pod_sandbox is not implemented yet"))
    }

    async fn stop_pod_sandbox(&self, request: Request<StopPodSandboxRequest>) -> Result<Response<StopPodSandboxResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("stop_pod_sandbox is not implemented yet"))
    }

    async fn remove_pod_sandbox(&self, request: Request<RemovePodSandboxRequest>) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("remove_pod_sandbox is not implemented yet"))
    }

    async fn pod_sandbox_status(&self, request: Request<PodSandboxStatusRequest>) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("pod_sandbox_status is not implemented yet"))
    }

    async fn list_pod_sandbox(&self, request: Request<ListPodSandboxRequest>) -> Result<Response<ListPodSandboxResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_pod_sandbox is not implemented yet"))
    }

    type StreamPodSandboxesStream = BoxStream<StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(&self, request: Request<StreamPodSandboxesRequest>) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("stream_pod_sandboxes is not implemented yet"))
    }

    async fn create_container(&self, request: Request<CreateContainerRequest>) -> Result<Response<CreateContainerResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("create_container is not implemented yet"))
    }

    async fn start_container(&self, request: Request<StartContainerRequest>) -> Result<Response<StartContainerResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("start_container is not implemented yet"))
    }

    async fn stop_container(&self, request: Request<StopContainerRequest>) -> Result<Response<StopContainerResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("stop_container is not implemented yet"))
    }

    async fn remove_container(&self, request: Request<RemoveContainerRequest>) -> Result<Response<RemoveContainerResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("remove_container is not implemented yet"))
    }

    async fn list_containers(&self, request: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_containers is not implemented yet"))
    }

    type StreamContainersStream = BoxStream<StreamContainersResponse>;
    async fn stream_containers(&self, request: Request<StreamContainersRequest>) -> Result<Response<Self::StreamContainersStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("stream_containers is not implemented yet"))
    }

    async fn container_status(&self, request: Request<ContainerStatusRequest>) -> Result<Response<ContainerStatusResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("container_status is not implemented yet"))
    }

    async fn update_container_resources(&self, request: Request<UpdateContainerResourcesRequest>) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("update_container_resources is not implemented yet"))
    }

    async fn reopen_container_log(&self, request: Request<ReopenContainerLogRequest>) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("reopen_container_log is not implemented yet"))
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("exec_sync is not implemented yet"))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("exec is not implemented yet"))
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("attach is not implemented yet"))
    }

    async fn port_forward(&self, request: Request<PortForwardRequest>) -> Result<Response<PortForwardResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("port_forward is not implemented yet"))
    }

    async fn container_stats(&self, request: Request<ContainerStatsRequest>) -> Result<Response<ContainerStatsResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("container_stats is not implemented yet"))
    }

    async fn list_container_stats(&self, request: Request<ListContainerStatsRequest>) -> Result<Response<ListContainerStatsResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_container_stats is not implemented yet"))
    }

    type StreamContainerStatsStream = BoxStream<StreamContainerStatsResponse>;
    async fn stream_container_stats(&self, request: Request<StreamContainerStatsRequest>) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("stream_container_stats is not implemented yet"))
    }

    async fn pod_sandbox_stats(&self, request: Request<PodSandboxStatsRequest>) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("pod_sandbox_stats is not implemented yet"))
    }

    async fn list_pod_sandbox_stats(&self, request: Request<ListPodSandboxStatsRequest>) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_pod_sandbox_stats is not implemented yet"))
    }

    type StreamPodSandboxStatsStream = BoxStream<StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(&self, request: Request<StreamPodSandboxStatsRequest>) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("stream_pod_sandbox_stats is not implemented yet"))
    }

    async fn update_runtime_config(&self, request: Request<UpdateRuntimeConfigRequest>) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("update_runtime_config is not implemented yet"))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("status is not implemented yet"))
    }

    async fn checkpoint_container(&self, request: Request<CheckpointContainerRequest>) -> Result<Response<CheckpointContainerResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("checkpoint_container is not implemented yet"))
    }

    type GetContainerEventsStream = BoxStream<ContainerEventResponse>;
    async fn get_container_events(&self, request: Request<GetEventsRequest>) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("get_container_events is not implemented yet"))
    }

    async fn list_metric_descriptors(&self, request: Request<ListMetricDescriptorsRequest>) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_metric_descriptors is not implemented yet"))
    }

    async fn list_pod_sandbox_metrics(&self, request: Request<ListPodSandboxMetricsRequest>) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_pod_sandbox_metrics is not implemented yet"))
    }

    type StreamPodSandboxMetricsStream = BoxStream<StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(&self, request: Request<StreamPodSandboxMetricsRequest>) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("stream_pod_sandbox_metrics is not implemented yet"))
    }

    async fn runtime_config(&self, request: Request<RuntimeConfigRequest>) -> Result<Response<RuntimeConfigResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("runtime_config is not implemented yet"))
    }

    async fn update_pod_sandbox_resources(&self, request: Request<UpdatePodSandboxResourcesRequest>) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("update_pod_sandbox_resources is not implemented yet"))
    }

}
