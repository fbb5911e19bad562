//! Recovery at service start: every recorded task of every namespace is found again.
//!
//! A task whose shim answers is reconnected (its stdio FIFOs reopened, its events followed
//! from the last sequence handled, so an exit that happened while the service was down is
//! recorded with its real status and the restart policy applied). A task whose shim is gone
//! is cleaned up (runtime state, rootfs mount, network, directories) and marked stopped with
//! exit 255; `always` and `unless-stopped` containers are then started again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::Service;

use crate::error::Result;
use crate::manager::Manager;

/// Reconnects or cleans up every recorded task. Shims are reconnected before this returns;
/// cleanup of dead ones and restarts continue in the background (they may need services that
/// start after this one).
pub async fn recover(manager: &Arc<Manager>) -> Result<()> {
    let tasks = manager.store().live_tasks()?;
    let mut dead = Vec::new();
    for (ns, id, record) in tasks {
        let Some(live) = record.live else { continue };
        if manager.reconnect(&ns, &id, &live).await {
            tracing::info!(%ns, %id, "reconnected to the shim");
        } else {
            tracing::warn!(%ns, %id, "the shim is gone: cleaning up its task");
            dead.push((ns, id, live));
        }
    }
    manager.follow_all();
    if !dead.is_empty() {
        let manager = manager.clone();
        tokio::spawn(async move {
            // berthd serves the network and snapshots sockets only once every service is
            // built: wait for them (bounded) before tearing down networks.
            for service in [Service::Network, Service::Snapshots] {
                wait_for_socket(&service.socket(&manager.settings().state)).await;
            }
            for (ns, id, live) in dead {
                manager.recover_dead(&ns, &id, &live).await;
            }
        });
    }
    Ok(())
}

/// Waits up to 10 s until something accepts connections on `socket`.
async fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(socket).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
