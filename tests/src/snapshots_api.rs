//! Filling an instance's snapshotter over gRPC: a layer tar applied into a new active snapshot
//! (through its mounts, as the images service unpacks) and committed.

use berth_api::berth::snapshots::v1 as pb;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::client::Channel;
use berth_snapshots::layer;
use berth_snapshots::mount::Mount;

/// Applies the layer `tar` into a new snapshot on `parent` (`""`: none) and commits it as
/// `name`.
pub async fn commit_layer(
    snapshots: &mut SnapshotsClient<Channel>,
    name: &str,
    parent: &str,
    tar: &[u8],
) -> anyhow::Result<()> {
    let key = format!("{name}-extract");
    let mounts = snapshots
        .prepare(pb::PrepareSnapshotRequest {
            key: key.clone(),
            parent: parent.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .mounts;
    let mounts: Vec<Mount> = mounts.into_iter().map(Mount::from).collect();
    let scratch = tempfile::Builder::new()
        .prefix("berth-test-mnt-")
        .tempdir()?;
    layer::apply_to_mounts(&mounts, tar, scratch.path())?;
    snapshots
        .commit(pb::CommitSnapshotRequest {
            name: name.into(),
            key,
            ..Default::default()
        })
        .await?;
    Ok(())
}
