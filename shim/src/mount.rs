//! The root filesystem mounts a Create request brings (e.g. the overlay the snapshots service
//! describes), mounted at the bundle's rootfs with the snapshots crate's mount helper, so the
//! shim mounts exactly what every other caller mounts (long layer chains included).

use std::path::{Path, PathBuf};

use berth_api::berth::types::v1::Mount;
use berth_snapshots::mount as snapshot_mount;

use crate::error::{Error, Result};

/// Mounts `mounts` one over the other at `rootfs`; on failure nothing stays mounted. Returns
/// the mount point to unmount later, or None when there was nothing to mount.
pub fn mount_all(mounts: &[Mount], rootfs: &Path) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let mount_error = |reason: String| Error::Mount {
        target: rootfs.to_owned(),
        reason,
    };
    if let Some(m) = mounts.iter().find(|m| !m.target.is_empty()) {
        return Err(mount_error(format!(
            "root filesystem mounts have no target, but one names {:?}",
            m.target
        )));
    }
    let mounts: Vec<snapshot_mount::Mount> = mounts.iter().cloned().map(Into::into).collect();
    snapshot_mount::mount_all(&mounts, rootfs).map_err(|e| mount_error(e.to_string()))?;
    Ok(Some(rootfs.to_owned()))
}

/// Unmounts what [`mount_all`] mounted (lazily if still busy).
pub fn unmount(point: &Option<PathBuf>) {
    if let Some(point) = point
        && snapshot_mount::unmount(point).is_err()
    {
        let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
    }
}
