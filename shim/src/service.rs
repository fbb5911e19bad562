//! The gRPC adapter: converts Shim API messages, calls [`Shim`], maps errors.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::berth::shim::v1::{self as api, shim_server};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::shim::Shim;

/// The Shim service over one [`Shim`].
pub struct ShimService {
    shim: Arc<Shim>,
}

impl ShimService {
    /// Serves `shim`.
    pub fn new(shim: Arc<Shim>) -> ShimService {
        ShimService { shim }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<api::EventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl shim_server::Shim for ShimService {
    async fn create(
        &self,
        request: Request<api::CreateRequest>,
    ) -> Result<Response<api::CreateResponse>, Status> {
        let pid = self.shim.create(request.into_inner()).await?;
        Ok(Response::new(api::CreateResponse { pid }))
    }

    async fn start(
        &self,
        request: Request<api::StartRequest>,
    ) -> Result<Response<api::StartResponse>, Status> {
        let r = request.into_inner();
        let pid = self.shim.start(&r.id, &r.exec_id).await?;
        Ok(Response::new(api::StartResponse { pid }))
    }

    async fn state(
        &self,
        request: Request<api::StateRequest>,
    ) -> Result<Response<api::StateResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.shim.state(&r.id, &r.exec_id).await?))
    }

    async fn kill(
        &self,
        request: Request<api::KillRequest>,
    ) -> Result<Response<api::KillResponse>, Status> {
        let r = request.into_inner();
        self.shim.kill(&r.id, &r.exec_id, r.signal, r.all).await?;
        Ok(Response::new(api::KillResponse {}))
    }

    async fn delete(
        &self,
        request: Request<api::DeleteRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        let r = request.into_inner();
        let (pid, exit) = self.shim.delete(&r.id, &r.exec_id).await?;
        Ok(Response::new(api::DeleteResponse {
            pid,
            exit_status: exit.map(|e| e.to_proto()),
        }))
    }

    async fn wait(
        &self,
        request: Request<api::WaitRequest>,
    ) -> Result<Response<api::WaitResponse>, Status> {
        let r = request.into_inner();
        let exit = self.shim.wait(&r.id, &r.exec_id).await?;
        Ok(Response::new(api::WaitResponse {
            exit_status: Some(exit.to_proto()),
        }))
    }

    async fn exec(
        &self,
        request: Request<api::ExecRequest>,
    ) -> Result<Response<api::ExecResponse>, Status> {
        self.shim.exec(request.into_inner()).await?;
        Ok(Response::new(api::ExecResponse {}))
    }

    async fn resize_pty(
        &self,
        request: Request<api::ResizePtyRequest>,
    ) -> Result<Response<api::ResizePtyResponse>, Status> {
        let r = request.into_inner();
        self.shim
            .resize_pty(&r.id, &r.exec_id, r.width, r.height)
            .await?;
        Ok(Response::new(api::ResizePtyResponse {}))
    }

    async fn close_io(
        &self,
        request: Request<api::CloseIoRequest>,
    ) -> Result<Response<api::CloseIoResponse>, Status> {
        let r = request.into_inner();
        if r.stdin {
            self.shim.close_io(&r.id, &r.exec_id).await?;
        }
        Ok(Response::new(api::CloseIoResponse {}))
    }

    async fn reopen_log(
        &self,
        request: Request<api::ReopenLogRequest>,
    ) -> Result<Response<api::ReopenLogResponse>, Status> {
        self.shim.reopen_log(&request.into_inner().id).await?;
        Ok(Response::new(api::ReopenLogResponse {}))
    }

    async fn pause(
        &self,
        request: Request<api::PauseRequest>,
    ) -> Result<Response<api::PauseResponse>, Status> {
        self.shim.pause(&request.into_inner().id, true).await?;
        Ok(Response::new(api::PauseResponse {}))
    }

    async fn resume(
        &self,
        request: Request<api::ResumeRequest>,
    ) -> Result<Response<api::ResumeResponse>, Status> {
        self.shim.pause(&request.into_inner().id, false).await?;
        Ok(Response::new(api::ResumeResponse {}))
    }

    async fn pids(
        &self,
        request: Request<api::PidsRequest>,
    ) -> Result<Response<api::PidsResponse>, Status> {
        let processes = self.shim.pids(&request.into_inner().id).await?;
        Ok(Response::new(api::PidsResponse { processes }))
    }

    async fn stats(
        &self,
        request: Request<api::StatsRequest>,
    ) -> Result<Response<api::StatsResponse>, Status> {
        let stats = self.shim.stats(&request.into_inner().id).await?;
        Ok(Response::new(api::StatsResponse { stats: Some(stats) }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateRequest>,
    ) -> Result<Response<api::UpdateResponse>, Status> {
        let r = request.into_inner();
        self.shim.update(&r.id, &r.resources).await?;
        Ok(Response::new(api::UpdateResponse {}))
    }

    async fn connect_shim(
        &self,
        request: Request<api::ConnectShimRequest>,
    ) -> Result<Response<api::ConnectShimResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(api::ConnectShimResponse {
            shim_pid: std::process::id(),
            task_pid: self.shim.task_pid(&r.id).await,
            version: berth_api::server::VERSION.to_owned(),
        }))
    }

    async fn shutdown(
        &self,
        request: Request<api::ShutdownRequest>,
    ) -> Result<Response<api::ShutdownResponse>, Status> {
        self.shim.shutdown(request.into_inner().now).await;
        Ok(Response::new(api::ShutdownResponse {}))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        request: Request<api::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let rx = self
            .shim
            .events()
            .subscribe(request.into_inner().after_sequence);
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            Ok,
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
