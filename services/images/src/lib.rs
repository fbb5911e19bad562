//! berth's images service: content store, image metadata, registry client, import/export and unpack.
//!
//! Domain modules (no tonic): [`content`] (the [`content::ContentStore`] of blobs and ingests),
//! [`leases`] ([`leases::LeaseManager`]), [`images`] ([`images::ImageStore`]), [`gc`] (garbage
//! collection), [`pull`] (registry pulls), [`archive`] (image tar archives), [`reference`] (Docker reference normalisation), [`filters`] (list filters) and
//! [`digest`]. [`service`] adapts them to gRPC. State lives under `<root>/images/`: blobs and
//! ingests under `content/`, records in the redb database `metadata.redb`.
//!
//! Namespaces: images, leases and ingests are per namespace; blob data is stored once and shared,
//! but a blob is visible only in the namespaces that committed it (each with its own labels).
//!
//! [`hosted`] builds the service for a socket server (berthd hosts it beside the others);
//! [`serve`] runs it alone, as the `berth-images` binary does.

#![warn(missing_docs)]

pub mod archive;
pub mod content;
mod db;
pub mod digest;
pub mod error;
pub mod gc;
pub mod images;
pub mod leases;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod service;
pub mod unpack;

use std::sync::Arc;

use berth_api::Service;
use berth_api::berth::content::v1::content_server::ContentServer;
use berth_api::berth::images::v1::images_server::ImagesServer;
use berth_api::berth::leases::v1::leases_server::LeasesServer;
use berth_api::config::Config;
use berth_api::server::{Hosted, ServeError};

pub use error::{Error, Kind};

/// The images service's gRPC routes, ready to be served on its socket.
pub fn hosted(config: &Config) -> anyhow::Result<Hosted> {
    berth_api::server::preflight(config, Service::Images)?;
    let root = config.service_root(Service::Images.name());
    let db = Arc::new(db::Db::open(&root.join("metadata.redb"))?);
    let content = content::LocalContent::open(db.clone(), &root.join("content"))?;
    let gc = gc::Collector::new(db.clone(), content.clone());
    let images = Arc::new(images::DbImages::new(db.clone()));
    let leases = Arc::new(leases::DbLeases::new(db));
    let registries = registry::Registries::from_config(&config.images);
    let puller = pull::Puller::new(
        content.clone(),
        images.clone(),
        leases.clone(),
        registries.clone(),
    );
    let pusher = push::Pusher::new(content.clone(), images.clone(), registries.clone());
    let unpacker = unpack::Unpacker::new(
        content.clone(),
        images.clone(),
        Service::Snapshots.socket(&config.state),
        snapshotter_name(config.snapshots.driver).into(),
        root.join("unpack"),
        config.images.max_layer_size,
    );
    let archiver =
        archive::Archiver::new(content.clone(), images.clone(), leases.clone(), gc.clone());
    let routes = tonic::service::Routes::default()
        .add_service(ContentServer::new(service::ContentService::new(
            content,
            gc.clone(),
        )))
        .add_service(ImagesServer::new(service::ImagesService::new(
            images,
            puller,
            pusher,
            registries,
            unpacker,
            archiver,
            gc.clone(),
        )))
        .add_service(LeasesServer::new(service::LeasesService::new(leases, gc)));
    Ok(Hosted {
        service: Service::Images,
        routes,
    })
}

/// The name clients use for the snapshotter the configuration selects.
fn snapshotter_name(driver: berth_api::config::SnapshotDriver) -> &'static str {
    use berth_snapshots::local::Driver;
    match driver {
        berth_api::config::SnapshotDriver::Overlay => berth_snapshots::overlay::OverlayDriver::NAME,
        berth_api::config::SnapshotDriver::Copy => berth_snapshots::copy::CopyDriver::NAME,
    }
}

/// Serves the images service alone until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let hosted = hosted(&config)?;
    berth_api::server::serve(&config, vec![hosted])
        .await
        .map_err(|e: ServeError| e.into())
}
