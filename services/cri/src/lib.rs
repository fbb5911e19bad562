//! berth's cri service: the Kubernetes CRI v1 facade over the other berth services.
//!
//! [`hosted`] builds the service for a socket server (berthd hosts it beside the others);
//! [`serve`] runs it alone, as the `berth-cri` binary does.
//!
//! Layers: [`runtime`] and [`images`] are the thin tonic adapters of the CRI RuntimeService and
//! ImageService; [`sandbox`] owns pod sandboxes, [`container`] the pods' containers, and
//! [`streaming`] the exec/attach/port-forward server. Every berth object the facade makes lives
//! in the [`NAMESPACE`] namespace of the other services.

#![warn(missing_docs)]

pub mod container;
pub mod images;
pub mod runtime;
pub mod sandbox;
pub mod streaming;

use std::path::PathBuf;
use std::sync::Arc;

use berth_api::Service;
use berth_api::config::Config;
use berth_api::runtime::v1::image_service_server::ImageServiceServer;
use berth_api::runtime::v1::runtime_service_server::RuntimeServiceServer;
use berth_api::server::{Hosted, ServeError};

/// The berth namespace of everything made through the CRI.
pub const NAMESPACE: &str = "k8s.io";

/// State shared by every CRI RPC.
pub struct Cri {
    /// The process's configuration.
    pub config: Config,
    /// The cri service's persistent root (`<root>/cri`).
    pub root: PathBuf,
    /// The cri service's database (`<root>/cri/meta.redb`); each module keeps its own tables.
    pub db: Arc<redb::Database>,
    /// The pod sandbox records.
    pub sandboxes: sandbox::Sandboxes,
    /// The CRI's view of the images service.
    pub images: images::Images,
    /// The streaming server of Exec, Attach and PortForward.
    pub streaming: Arc<streaming::Streaming>,
    /// The containers side's channels, locks, stats samples and event subscribers.
    pub containers: container::State,
}

impl Cri {
    /// The socket of another berth service.
    pub fn socket(&self, service: Service) -> PathBuf {
        service.socket(&self.config.state)
    }

    /// A channel to another berth service, for calls in [`NAMESPACE`]; Unavailable if it does
    /// not answer.
    pub async fn connect(
        &self,
        service: Service,
    ) -> Result<berth_api::client::Channel, tonic::Status> {
        berth_api::client::connect(&self.socket(service), NAMESPACE)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{service} service: {e}")))
    }
}

/// The cri service's gRPC routes, ready to be served on its socket.
pub fn hosted(config: &Config) -> anyhow::Result<Hosted> {
    let root = config.service_root(Service::Cri.name());
    std::fs::create_dir_all(&root)?;
    let db = Arc::new(redb::Database::create(root.join("meta.redb"))?);
    let sandboxes = sandbox::Sandboxes::open(db.clone())?;
    let orphans = sandbox::lifecycle::sweep_orphans(&config.state, &sandboxes)?;
    let (stream_server, stream_listener) = streaming::Streaming::bind(&config.cri)?;
    let cri = Arc::new(Cri {
        config: config.clone(),
        root,
        db,
        sandboxes,
        images: images::Images::new(config),
        streaming: Arc::new(stream_server),
        containers: container::State::default(),
    });
    sandbox::lifecycle::release_orphans(cri.clone(), orphans);
    streaming::Streaming::spawn(stream_listener, cri.clone())?;
    let routes = tonic::service::Routes::new(RuntimeServiceServer::new(runtime::RuntimeApi::new(
        cri.clone(),
    )))
    .add_service(ImageServiceServer::new(images::ImageApi::new(cri)));
    Ok(Hosted {
        service: Service::Cri,
        routes,
    })
}

/// Serves the cri service alone until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let hosted = hosted(&config)?;
    berth_api::server::serve(&config, vec![hosted])
        .await
        .map_err(|e: ServeError| e.into())
}
