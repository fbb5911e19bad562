//! The containers of pod sandboxes: records, OCI specs from CRI configs, lifecycle, status,
//! stats, events and logs.
//!
//! A CRI container is an ordinary container record of the tasks service in the
//! [`crate::NAMESPACE`] namespace (CRI id = record id, `sandbox_id` = the pod), with its CRI view
//! in [`record::Meta`]; its process is the record's task, made by StartContainer. [`spec`]
//! builds the OCI spec, [`image`] finds the image, [`lifecycle`] creates, starts, stops and
//! removes, [`status`] lists and reports, [`exec`] runs ExecSync, [`stats`] reads usage,
//! [`events`] streams GetContainerEvents, and [`update`] changes resources and reopens logs.

pub mod events;
pub mod exec;
pub mod image;
pub mod lifecycle;
pub mod record;
pub mod spec;
pub mod stats;
pub mod status;
pub mod update;

use berth_api::Service;
use berth_api::berth::containers::v1 as containers;
use berth_api::berth::containers::v1::containers_client::ContainersClient;
use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::tasks::v1::tasks_client::TasksClient;
use berth_api::client::Channel;
use tokio::sync::{Mutex, OnceCell};
use tonic::{Code, Status};

use crate::Cri;

/// The containers side's state in [`Cri`]: channels to the other services (made on first use,
/// reconnecting by themselves) and the lock that makes name reservation atomic.
#[derive(Default)]
pub struct State {
    tasks: OnceCell<Channel>,
    images: OnceCell<Channel>,
    snapshots: OnceCell<Channel>,
    /// Held while a container is being created: its name check and its record are one step.
    creating: Mutex<()>,
    /// The previous cpu sample of each container, for usage rates.
    samples: stats::Samples,
    /// Subscribers of GetContainerEvents.
    events: events::Events,
}

impl State {
    /// A channel to the tasks, images or snapshots service (any other service: a new one).
    async fn channel(&self, cri: &Cri, service: Service) -> Result<Channel, Status> {
        let cell = match service {
            Service::Tasks => &self.tasks,
            Service::Images => &self.images,
            Service::Snapshots => &self.snapshots,
            _ => return cri.connect(service).await,
        };
        cell.get_or_try_init(|| cri.connect(service)).await.cloned()
    }
}

/// A Containers client on the tasks service.
pub(crate) async fn containers_client(cri: &Cri) -> Result<ContainersClient<Channel>, Status> {
    Ok(ContainersClient::new(
        cri.containers.channel(cri, Service::Tasks).await?,
    ))
}

/// A Tasks client on the tasks service.
pub(crate) async fn tasks_client(cri: &Cri) -> Result<TasksClient<Channel>, Status> {
    Ok(TasksClient::new(
        cri.containers.channel(cri, Service::Tasks).await?,
    ))
}

/// The CRI container `id` (its record and CRI view). NotFound names it.
pub(crate) async fn find(
    cri: &Cri,
    id: &str,
) -> Result<(containers::Container, record::Meta), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("container id is empty"));
    }
    let c = containers_client(cri)
        .await?
        .get(containers::GetContainerRequest { id: id.to_owned() })
        .await
        .map_err(|s| match s.code() {
            Code::NotFound => Status::not_found(format!("container {id:?} not found")),
            _ => remote("tasks", s),
        })?
        .into_inner()
        .container
        .ok_or_else(|| Status::internal("the tasks service answered without a container"))?;
    let meta = record::Meta::of(&c)?;
    Ok((c, meta))
}

/// The container's task (init process), or None when it has none.
pub(crate) async fn task(cri: &Cri, id: &str) -> Result<Option<tasks::Task>, Status> {
    match tasks_client(cri)
        .await?
        .get(tasks::GetTaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().task),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(remote("tasks", s)),
    }
}

/// A failed call to another service, keeping its code.
pub(crate) fn remote(service: &str, s: Status) -> Status {
    Status::new(s.code(), format!("{service} service: {}", s.message()))
}
