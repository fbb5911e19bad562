//! berth's network service: bridge networks, IPAM, netns, veth, published ports, DNS and CNI mode.
//!
//! [`hosted`] builds the service for a socket server (berthd hosts it beside the others);
//! [`serve`] runs it alone, as the `berth-network` binary does.
//!
//! Layers: [`model`] (vocabulary), [`ipam`], [`store`], [`kernel`] (netns, rtnetlink, nftables,
//! port reservations), [`dns`], [`cni`], the domain logic in [`manager`], and the thin tonic
//! adapter in [`service`].

#![warn(missing_docs)]

pub mod cni;
pub mod dns;
pub mod error;
pub mod ipam;
pub mod kernel;
pub mod manager;
pub mod model;
pub mod service;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use berth_api::Service;
use berth_api::berth::network::v1::networks_server::NetworksServer;
use berth_api::config::Config;
use berth_api::server::{Hosted, ServeError};

use crate::manager::{Manager, Settings};
use crate::service::NetworksService;

/// The network service's gRPC routes, ready to be served on its socket. Must be called from
/// within a multi-threaded tokio runtime: it opens the database and restores bridges, rules and
/// port reservations before it returns.
pub fn hosted(config: &Config) -> anyhow::Result<Hosted> {
    berth_api::server::preflight(config, Service::Network)?;
    let settings = Settings::from_config(config)?;
    let root = config.service_root(Service::Network.name());
    let runtime = tokio::runtime::Handle::try_current()
        .context("the network service needs a tokio runtime")?;
    let manager = tokio::task::block_in_place(|| runtime.block_on(Manager::open(&root, settings)))
        .context("starting the network service")?;
    let service = NetworksServer::new(NetworksService::new(Arc::new(manager)));
    Ok(Hosted {
        service: Service::Network,
        routes: tonic::service::Routes::new(service),
    })
}

/// Serves the network service alone until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let hosted = hosted(&config)?;
    berth_api::server::serve(&config, vec![hosted])
        .await
        .map_err(|e: ServeError| e.into())
}
