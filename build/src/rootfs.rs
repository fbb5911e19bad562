//! A container's root filesystem reached from this client process (which runs as root on the
//! services' host), for `diff`, `export`, `commit` and `cp`.
//!
//! - [`with_trees`] mounts the container's snapshot read-only (an overlay's upper becomes a
//!   lower, so a running container is not disturbed) and, through a temporary view, its parent
//!   (the image), on private temporary directories, runs a blocking function on both trees,
//!   then unmounts them and removes the view, whatever happened; [`with_tree`] does the same
//!   with the container's tree alone.
//! - [`Rootfs::open`] gives a directory to copy files from or into: a running container's
//!   `/proc/<pid>/root` (its mount namespace: volumes and bind mounts included), or else its
//!   snapshot mounted on a private temporary directory (read-write when asked) until dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_api::berth::containers::v1::Container;
use berth_api::berth::snapshots::v1 as spb;
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::types::v1::TaskStatus;
use berth_snapshots::mount::{self, Mount, Mounted};

use crate::clients::Clients;
use crate::error::{Error, Result};
use crate::image::mounts_from;

/// The mounts of the container's (active) snapshot.
pub async fn snapshot_mounts(clients: &mut Clients, container: &Container) -> Result<Vec<Mount>> {
    if container.snapshot_key.is_empty() {
        return Err(Error::Invalid(format!(
            "container {} has no snapshot: its root filesystem is not berth's",
            container.id
        )));
    }
    let reply = clients
        .snapshots
        .mounts(spb::MountsRequest {
            snapshotter: container.snapshotter.clone(),
            key: container.snapshot_key.clone(),
        })
        .await
        .map_err(Error::rpc(format!(
            "get the mounts of container {}'s snapshot",
            container.id
        )))?;
    Ok(mounts_from(reply.into_inner().mounts))
}

/// A private temporary directory for mount points, removed when dropped only if empty: never
/// recursively, so a mount that failed to go away is not emptied through.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("berth-rootfs-")
            .tempdir()
            .map_err(Error::io(
                "create a temporary directory in",
                std::env::temp_dir(),
            ))?;
        Ok(Scratch(dir.keep()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("empty"));
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a temporary directory");
        }
    }
}

/// Mounts the container's image tree (`lower`; empty when it has no parent) and its own tree
/// (`upper`) read-only, runs `f(lower, upper)` on a blocking thread, and unmounts both.
pub async fn with_trees<T, F>(clients: &mut Clients, container: &Container, f: F) -> Result<T>
where
    F: FnOnce(&Path, &Path) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    with_snapshot(clients, container, true, f).await
}

/// Mounts the container's own tree read-only (without the mounts its runtime adds), runs `f`
/// on it on a blocking thread, and unmounts it.
pub async fn with_tree<T, F>(clients: &mut Clients, container: &Container, f: F) -> Result<T>
where
    F: FnOnce(&Path) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    with_snapshot(clients, container, false, move |_, upper| f(upper)).await
}

async fn with_snapshot<T, F>(
    clients: &mut Clients,
    container: &Container,
    parent: bool,
    f: F,
) -> Result<T>
where
    F: FnOnce(&Path, &Path) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let upper = mount::read_only(&snapshot_mounts(clients, container).await?);
    let info = clients
        .snapshots
        .stat(spb::StatSnapshotRequest {
            snapshotter: container.snapshotter.clone(),
            key: container.snapshot_key.clone(),
        })
        .await
        .map_err(Error::rpc(format!(
            "stat container {}'s snapshot",
            container.id
        )))?
        .into_inner()
        .info
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let view = format!("berth-rootfs-view-{}-{nanos}", std::process::id());
    let lower = match !parent || info.parent.is_empty() {
        true => None,
        false => Some(
            clients
                .snapshots
                .view(spb::ViewSnapshotRequest {
                    snapshotter: container.snapshotter.clone(),
                    key: view.clone(),
                    parent: info.parent.clone(),
                    labels: HashMap::new(),
                })
                .await
                .map_err(Error::rpc(format!(
                    "view the image of container {}",
                    container.id
                )))?
                .into_inner()
                .mounts,
        ),
    };
    let has_view = lower.is_some();
    let lower = lower.map(mounts_from).unwrap_or_default();
    let result = tokio::task::spawn_blocking(move || {
        let scratch = Scratch::new()?;
        let empty = scratch.0.join("empty");
        std::fs::create_dir(&empty).map_err(Error::io("create", &empty))?;
        let lower = match lower.is_empty() {
            true => None,
            false => Some(
                Mounted::temporary(&lower, &scratch.0)
                    .map_err(Error::layer("mount the container's image"))?,
            ),
        };
        let upper = Mounted::temporary(&upper, &scratch.0)
            .map_err(Error::layer("mount the container's snapshot"))?;
        f(
            lower.as_ref().map_or(empty.as_path(), Mounted::path),
            upper.path(),
        )
    })
    .await
    .map_err(|e| Error::Invalid(format!("the snapshot reader panicked: {e}")));
    if has_view {
        let removed = clients
            .snapshots
            .remove(spb::RemoveSnapshotRequest {
                snapshotter: container.snapshotter.clone(),
                key: view.clone(),
            })
            .await;
        if let Err(status) = removed {
            tracing::warn!(view, error = %status.message(), "cannot remove a temporary view");
        }
    }
    result?
}

/// The pid of the container's task while its process exists (created, running or paused):
/// its root is then reachable through `/proc/<pid>/root`, and its snapshot is mounted.
pub async fn running_pid(clients: &mut Clients, container: &Container) -> Result<Option<u32>> {
    let answer = clients
        .tasks
        .get(tpb::GetTaskRequest {
            container_id: container.id.clone(),
            exec_id: String::new(),
        })
        .await;
    let task = match answer {
        Ok(r) => r.into_inner().task,
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(Error::rpc(format!("get container {}'s task", container.id))(s)),
    };
    Ok(task
        .filter(|t| {
            t.pid != 0
                && matches!(
                    t.status(),
                    TaskStatus::Created
                        | TaskStatus::Running
                        | TaskStatus::Paused
                        | TaskStatus::Pausing
                )
        })
        .map(|t| t.pid))
}

/// A container's root directory, reachable while this lives.
pub struct Rootfs {
    path: PathBuf,
    // Field order: unmount before the scratch directory goes.
    _mounted: Option<Mounted>,
    _scratch: Option<Scratch>,
}

impl Rootfs {
    /// The running container's root, or its snapshot mounted (read-write if `writable`).
    pub async fn open(
        clients: &mut Clients,
        container: &Container,
        writable: bool,
    ) -> Result<Rootfs> {
        if let Some(pid) = running_pid(clients, container).await? {
            return Ok(Rootfs {
                path: PathBuf::from(format!("/proc/{pid}/root")),
                _mounted: None,
                _scratch: None,
            });
        }
        let mut mounts = snapshot_mounts(clients, container).await?;
        if !writable {
            mounts = mount::read_only(&mounts);
        }
        let scratch = Scratch::new()?;
        let mounted = Mounted::temporary(&mounts, &scratch.0)
            .map_err(Error::layer("mount the container's snapshot"))?;
        Ok(Rootfs {
            path: mounted.path().to_owned(),
            _mounted: Some(mounted),
            _scratch: Some(scratch),
        })
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
