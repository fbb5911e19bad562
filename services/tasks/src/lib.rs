//! berth's tasks service: container metadata and task lifecycle through per-container shims, logs, exec, events.
//!
//! [`hosted`] builds the service for a socket server (berthd hosts it beside the others);
//! [`serve`] runs it alone, as the `berth-tasks` binary does.
//!
//! Layers: [`store`] (the metadata database), [`containers`] (record rules), [`manager`] (the
//! domain: tasks through shims, with [`network`], [`attach`], [`restart`] and [`recover`]),
//! [`events`] (the Events service), and the thin tonic adapters in [`service`]. The OCI spec
//! builder ([`spec`]), user resolution ([`user`]), volumes ([`volumes`], whose Volumes service
//! is served on tasks.sock too) and the log reader ([`logs`]) are called by the manager and
//! by clients.

#![warn(missing_docs)]

pub mod attach;
pub mod containers;
pub mod error;
pub mod events;
pub mod logs;
pub mod manager;
pub mod network;
pub mod recover;
pub mod restart;
pub mod service;
pub mod spec;
pub mod store;
pub mod user;
pub mod volumes;

use anyhow::Context as _;
use berth_api::Service;
use berth_api::berth::containers::v1::containers_server::ContainersServer;
use berth_api::berth::events::v1::events_server::EventsServer;
use berth_api::berth::tasks::v1::tasks_server::TasksServer;
use berth_api::config::Config;
use berth_api::server::{Hosted, ServeError};

pub use network::NetworkSettings;

/// The tasks service's gRPC routes, ready to be served on its socket. Must be called from
/// within a multi-threaded tokio runtime: it opens the database and reconnects to the shims
/// of the recorded tasks before it returns.
pub fn hosted(config: &Config) -> anyhow::Result<Hosted> {
    berth_api::server::preflight(config, Service::Tasks)?;
    let settings = manager::Settings::from_config(config)?;
    let store = store::Store::open(&settings.root.join("meta.redb"))
        .context("opening the tasks database")?;
    let broadcaster = events::Broadcaster::default();
    let volumes = std::sync::Arc::new(
        volumes::VolumeManager::new(store.database(), &settings.root)
            .context("opening the volumes")?,
    );
    let manager = manager::Manager::new(settings, store, broadcaster.clone(), volumes.clone());
    let runtime =
        tokio::runtime::Handle::try_current().context("the tasks service needs a tokio runtime")?;
    tokio::task::block_in_place(|| runtime.block_on(recover::recover(&manager)))
        .context("recovering tasks")?;
    let routes = tonic::service::Routes::new(ContainersServer::new(
        service::ContainersService::new(manager.clone()),
    ))
    .add_service(TasksServer::new(service::TasksService::new(manager)))
    .add_service(EventsServer::new(events::EventsService::new(broadcaster)))
    .add_service(volumes::service::server(volumes));
    Ok(Hosted {
        service: Service::Tasks,
        routes,
    })
}

/// Serves the tasks service alone until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let hosted = hosted(&config)?;
    berth_api::server::serve(&config, vec![hosted])
        .await
        .map_err(|e: ServeError| e.into())
}
