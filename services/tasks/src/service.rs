//! The thin tonic adapters of the Containers and Tasks APIs over the [`Manager`].

use std::pin::Pin;
use std::sync::Arc;

use berth_api::berth::containers::v1 as cpb;
use berth_api::berth::containers::v1::containers_server::Containers;
use berth_api::berth::shim::v1 as shim;
use berth_api::berth::tasks::v1 as api;
use berth_api::berth::tasks::v1::attach_request::Msg as In;
use berth_api::berth::tasks::v1::attach_response::Msg as Out;
use berth_api::berth::tasks::v1::tasks_server::Tasks;
use berth_api::namespace;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::attach::IoMessage;
use crate::error::Error;
use crate::events::async_stream;
use crate::manager::{Manager, exit_to};

type Rpc<T> = Result<Response<T>, Status>;

fn ns<T>(r: &Request<T>) -> Result<String, Status> {
    namespace::of(r.metadata())
}

/// The Containers service.
pub struct ContainersService {
    manager: Arc<Manager>,
}

impl ContainersService {
    /// Serves the containers of `manager`.
    pub fn new(manager: Arc<Manager>) -> Self {
        ContainersService { manager }
    }
}

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(&self, r: Request<cpb::GetContainerRequest>) -> Rpc<cpb::GetContainerResponse> {
        let ns = ns(&r)?;
        let container = self.manager.resolve(&ns, &r.into_inner().id)?;
        Ok(Response::new(cpb::GetContainerResponse {
            container: Some(container),
        }))
    }

    async fn list(
        &self,
        r: Request<cpb::ListContainersRequest>,
    ) -> Rpc<cpb::ListContainersResponse> {
        let ns = ns(&r)?;
        let containers = self.manager.list_containers(&ns, &r.into_inner().filters)?;
        Ok(Response::new(cpb::ListContainersResponse { containers }))
    }

    async fn create(
        &self,
        r: Request<cpb::CreateContainerRequest>,
    ) -> Rpc<cpb::CreateContainerResponse> {
        let ns = ns(&r)?;
        let c = r
            .into_inner()
            .container
            .ok_or_else(|| Status::invalid_argument("container: required"))?;
        let container = self.manager.create_container(&ns, c)?;
        Ok(Response::new(cpb::CreateContainerResponse {
            container: Some(container),
        }))
    }

    async fn update(
        &self,
        r: Request<cpb::UpdateContainerRequest>,
    ) -> Rpc<cpb::UpdateContainerResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let c = req
            .container
            .ok_or_else(|| Status::invalid_argument("container: required"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let container = self.manager.update_container(&ns, c, &paths).await?;
        Ok(Response::new(cpb::UpdateContainerResponse {
            container: Some(container),
        }))
    }

    async fn delete(
        &self,
        r: Request<cpb::DeleteContainerRequest>,
    ) -> Rpc<cpb::DeleteContainerResponse> {
        let ns = ns(&r)?;
        self.manager
            .delete_container(&ns, &r.into_inner().id, false)
            .await?;
        Ok(Response::new(cpb::DeleteContainerResponse {}))
    }
}

/// The Tasks service.
pub struct TasksService {
    manager: Arc<Manager>,
}

impl TasksService {
    /// Serves the tasks of `manager`.
    pub fn new(manager: Arc<Manager>) -> Self {
        TasksService { manager }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn remote(what: &str) -> impl FnOnce(Status) -> Status + '_ {
    move |s| Error::remote(what)(s).into()
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(&self, r: Request<api::CreateTaskRequest>) -> Rpc<api::CreateTaskResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let given = req.container_id.clone();
        let pid = self.manager.create_task(&ns, req).await?;
        let id = self.manager.resolve(&ns, &given)?.id;
        Ok(Response::new(api::CreateTaskResponse {
            container_id: id,
            pid,
        }))
    }

    async fn start(&self, r: Request<api::StartRequest>) -> Rpc<api::StartResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let pid = self
            .manager
            .start(&ns, &req.container_id, &req.exec_id)
            .await?;
        Ok(Response::new(api::StartResponse { pid }))
    }

    async fn delete(&self, r: Request<api::DeleteTaskRequest>) -> Rpc<api::DeleteTaskResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let id = self.manager.resolve(&ns, &req.container_id)?.id;
        let (pid, exit) = self.manager.delete_task(&ns, &id, &req.exec_id).await?;
        Ok(Response::new(api::DeleteTaskResponse {
            container_id: id,
            pid,
            exit_status: Some(exit_to(&exit)),
        }))
    }

    async fn kill(&self, r: Request<api::KillRequest>) -> Rpc<api::KillResponse> {
        let ns = ns(&r)?;
        self.manager.kill(&ns, r.into_inner()).await?;
        Ok(Response::new(api::KillResponse {}))
    }

    async fn wait(&self, r: Request<api::WaitRequest>) -> Rpc<api::WaitResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let exit = self
            .manager
            .wait(&ns, &req.container_id, &req.exec_id)
            .await?;
        Ok(Response::new(api::WaitResponse {
            exit_status: Some(exit_to(&exit)),
        }))
    }

    async fn exec(&self, r: Request<api::ExecProcessRequest>) -> Rpc<api::ExecProcessResponse> {
        let ns = ns(&r)?;
        self.manager.exec(&ns, r.into_inner()).await?;
        Ok(Response::new(api::ExecProcessResponse {}))
    }

    async fn pause(&self, r: Request<api::PauseTaskRequest>) -> Rpc<api::PauseTaskResponse> {
        let ns = ns(&r)?;
        self.manager
            .pause(&ns, &r.into_inner().container_id, true)
            .await?;
        Ok(Response::new(api::PauseTaskResponse {}))
    }

    async fn resume(&self, r: Request<api::ResumeTaskRequest>) -> Rpc<api::ResumeTaskResponse> {
        let ns = ns(&r)?;
        self.manager
            .pause(&ns, &r.into_inner().container_id, false)
            .await?;
        Ok(Response::new(api::ResumeTaskResponse {}))
    }

    async fn resize_pty(&self, r: Request<api::ResizePtyRequest>) -> Rpc<api::ResizePtyResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let (id, mut shim) = self.manager.shim_of(&ns, &req.container_id)?;
        shim.resize_pty(shim::ResizePtyRequest {
            id,
            exec_id: req.exec_id,
            width: req.width,
            height: req.height,
        })
        .await
        .map_err(remote("resize the terminal"))?;
        Ok(Response::new(api::ResizePtyResponse {}))
    }

    async fn close_io(&self, r: Request<api::CloseIoRequest>) -> Rpc<api::CloseIoResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let (id, mut shim) = self.manager.shim_of(&ns, &req.container_id)?;
        shim.close_io(shim::CloseIoRequest {
            id,
            exec_id: req.exec_id,
            stdin: req.stdin,
        })
        .await
        .map_err(remote("close stdin"))?;
        Ok(Response::new(api::CloseIoResponse {}))
    }

    async fn reopen_log(&self, r: Request<api::ReopenLogRequest>) -> Rpc<api::ReopenLogResponse> {
        let ns = ns(&r)?;
        let (id, mut shim) = self.manager.shim_of(&ns, &r.into_inner().container_id)?;
        shim.reopen_log(shim::ReopenLogRequest { id })
            .await
            .map_err(remote("reopen the log"))?;
        Ok(Response::new(api::ReopenLogResponse {}))
    }

    async fn pids(&self, r: Request<api::PidsRequest>) -> Rpc<api::PidsResponse> {
        let ns = ns(&r)?;
        let (id, mut shim) = self.manager.shim_of(&ns, &r.into_inner().container_id)?;
        let processes = shim
            .pids(shim::PidsRequest { id })
            .await
            .map_err(remote("list processes"))?
            .into_inner()
            .processes;
        Ok(Response::new(api::PidsResponse { processes }))
    }

    async fn stats(&self, r: Request<api::StatsRequest>) -> Rpc<api::StatsResponse> {
        let ns = ns(&r)?;
        let (id, mut shim) = self.manager.shim_of(&ns, &r.into_inner().container_id)?;
        let stats = shim
            .stats(shim::StatsRequest { id })
            .await
            .map_err(remote("stats"))?
            .into_inner()
            .stats;
        Ok(Response::new(api::StatsResponse { stats }))
    }

    async fn update(&self, r: Request<api::UpdateTaskRequest>) -> Rpc<api::UpdateTaskResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let (id, mut shim) = self.manager.shim_of(&ns, &req.container_id)?;
        shim.update(shim::UpdateRequest {
            id,
            resources: req.resources,
        })
        .await
        .map_err(remote("update resources"))?;
        Ok(Response::new(api::UpdateTaskResponse {}))
    }

    async fn get(&self, r: Request<api::GetTaskRequest>) -> Rpc<api::GetTaskResponse> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let task = self
            .manager
            .get(&ns, &req.container_id, &req.exec_id)
            .await?;
        Ok(Response::new(api::GetTaskResponse { task: Some(task) }))
    }

    async fn list(&self, r: Request<api::ListTasksRequest>) -> Rpc<api::ListTasksResponse> {
        let ns = ns(&r)?;
        let tasks = self.manager.list(&ns, &r.into_inner().filters).await?;
        Ok(Response::new(api::ListTasksResponse { tasks }))
    }

    type AttachStream = BoxStream<api::AttachResponse>;

    async fn attach(&self, r: Request<Streaming<api::AttachRequest>>) -> Rpc<Self::AttachStream> {
        let ns = ns(&r)?;
        let mut input = r.into_inner();
        let start = match input.message().await? {
            Some(api::AttachRequest {
                msg: Some(In::Start(s)),
            }) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "the first Attach message must be an AttachStart",
                ));
            }
        };
        let io = self
            .manager
            .process_io(&ns, &start.container_id, &start.exec_id)?;
        if start.stdin && !io.has_stdin() {
            return Err(Status::failed_precondition(
                "stdin: the process was created without stdin (create it with stdin = true)",
            ));
        }
        let (id, shim) = self.manager.shim_of(&ns, &start.container_id)?;
        let subscription = io.subscribe();
        // Client messages: stdin, resizes, close-stdin; the loop ends with the client.
        let writer = io.clone();
        let exec_id = start.exec_id.clone();
        let forward_stdin = start.stdin;
        tokio::spawn(async move {
            let mut shim = shim;
            while let Ok(Some(msg)) = input.message().await {
                match msg.msg {
                    Some(In::Stdin(data))
                        if forward_stdin && writer.write_stdin(&data).await.is_err() =>
                    {
                        break;
                    }
                    Some(In::Resize(size)) => {
                        let _ = shim
                            .resize_pty(shim::ResizePtyRequest {
                                id: id.clone(),
                                exec_id: exec_id.clone(),
                                width: size.width,
                                height: size.height,
                            })
                            .await;
                    }
                    Some(In::CloseStdin(true)) if forward_stdin => {
                        let _ = shim
                            .close_io(shim::CloseIoRequest {
                                id: id.clone(),
                                exec_id: exec_id.clone(),
                                stdin: true,
                            })
                            .await;
                    }
                    _ => {}
                }
            }
        });
        let (want_out, want_err) = if start.stdout || start.stderr {
            (start.stdout, start.stderr)
        } else {
            (true, true)
        };
        let stream = async_stream(move |tx| async move {
            let mut rx = match subscription {
                Ok(rx) => rx,
                Err(exit) => {
                    let _ = tx
                        .send(Ok(api::AttachResponse {
                            msg: Some(Out::Exit(exit_to(&exit))),
                        }))
                        .await;
                    return;
                }
            };
            loop {
                let msg = match rx.recv().await {
                    Ok(IoMessage::Output(stream, data)) => {
                        let wanted = match stream {
                            api::OutputStream::Stderr => want_err,
                            _ => want_out,
                        };
                        if !wanted {
                            continue;
                        }
                        Out::Output(api::Output {
                            stream: stream as i32,
                            data,
                        })
                    }
                    Ok(IoMessage::Exit(exit)) => Out::Exit(exit_to(&exit)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = matches!(msg, Out::Exit(_));
                if tx
                    .send(Ok(api::AttachResponse { msg: Some(msg) }))
                    .await
                    .is_err()
                    || last
                {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    type LogsStream = BoxStream<api::LogsResponse>;

    async fn logs(&self, r: Request<api::LogsRequest>) -> Rpc<Self::LogsStream> {
        let ns = ns(&r)?;
        let req = r.into_inner();
        let (path, running) = self.manager.log_of(&ns, &req.container_id)?;
        Ok(Response::new(Box::pin(crate::logs::stream(
            path, &req, running,
        ))))
    }
}
