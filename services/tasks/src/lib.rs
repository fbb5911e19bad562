//! berth's tasks service: container metadata and task lifecycle through per-container shims, logs, exec, events.
//!
//! [`hosted`] builds the service for a socket server (berthd hosts it beside the others);
//! [`serve`] runs it alone, as the `berth-tasks` binary does.

#![warn(missing_docs)]

use berth_api::Service;
use berth_api::config::Config;
use berth_api::server::{Hosted, ServeError};

/// The tasks service's gRPC routes, ready to be served on its socket.
pub fn hosted(_config: &Config) -> anyhow::Result<Hosted> {
    Ok(Hosted {
        service: Service::Tasks,
        routes: tonic::service::Routes::default(),
    })
}

/// Serves the tasks service alone until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let hosted = hosted(&config)?;
    berth_api::server::serve(&config, vec![hosted])
        .await
        .map_err(|e: ServeError| e.into())
}
