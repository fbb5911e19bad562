//! berth's snapshots service: overlay snapshotter (with a copy fallback) and the layer
//! apply/compare library.
//!
//! - [`snapshotter`]: the domain — what a snapshot is ([`Snapshotter`], kinds, lifecycle).
//! - [`OverlaySnapshotter`] and [`CopySnapshotter`]: the implementations, sharing one metadata
//!   store and crash-repair engine (`local`).
//! - [`layer`]: apply OCI layer tars to trees and compare trees into layer tars.
//! - [`mount`]: mount data and the helper that mounts it.
//! - `service`: the thin gRPC adapter; [`hosted`] builds it for a socket server (berthd hosts it
//!   beside the others), [`serve`] runs it alone, as the `berth-snapshots` binary does.

#![warn(missing_docs)]

pub mod copy;
pub mod error;
mod failpoint;
mod fsutil;
pub mod layer;
pub mod local;
pub mod mount;
pub mod overlay;
mod service;
pub mod snapshotter;
mod store;
#[cfg(test)]
mod testsuite;

use std::sync::Arc;

use berth_api::Service;
use berth_api::berth::snapshots::v1::snapshots_server::SnapshotsServer;
use berth_api::config::{Config, SnapshotDriver};
use berth_api::server::{Hosted, ServeError};

pub use error::{Error, ErrorKind, Result};
pub use failpoint::ENV as FAILPOINT_ENV;
pub use snapshotter::Snapshotter;

/// The overlay snapshotter.
pub type OverlaySnapshotter = local::Local<overlay::OverlayDriver>;
/// The copy snapshotter, for filesystems without overlay.
pub type CopySnapshotter = local::Local<copy::CopyDriver>;

pub use service::SnapshotsService;

/// Opens the snapshotter the configuration names, under `<root>/snapshots/<driver>/`.
pub fn open(config: &Config) -> Result<Arc<dyn Snapshotter>> {
    let root = config.service_root(Service::Snapshots.name());
    Ok(match config.snapshots.driver {
        SnapshotDriver::Overlay => Arc::new(OverlaySnapshotter::open(
            &root.join("overlay"),
            overlay::OverlayDriver,
        )?),
        SnapshotDriver::Copy => {
            Arc::new(CopySnapshotter::open(&root.join("copy"), copy::CopyDriver)?)
        }
    })
}

/// The snapshots service's gRPC routes, ready to be served on its socket.
pub fn hosted(config: &Config) -> anyhow::Result<Hosted> {
    // Refuse before touching the database when another instance serves this socket.
    berth_api::server::preflight(config, Service::Snapshots)?;
    let snapshotter = open(config)?;
    Ok(Hosted {
        service: Service::Snapshots,
        routes: tonic::service::Routes::new(SnapshotsServer::new(SnapshotsService::new(
            snapshotter,
        ))),
    })
}

/// Serves the snapshots service alone until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let hosted = hosted(&config)?;
    berth_api::server::serve(&config, vec![hosted])
        .await
        .map_err(|e: ServeError| e.into())
}
