//! Mounting the root filesystem mounts a Create request brings (e.g. the overlay the
//! snapshots service describes) at the bundle's rootfs, and unmounting them.

use std::path::{Path, PathBuf};

use berth_api::berth::types::v1::Mount;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

fn flags_and_data(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            _ => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts `mounts` in order on `target` (each on top of the previous); on failure, unmounts
/// what was mounted. Returns the mount points to unmount later, innermost last.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for m in mounts {
        let point = if m.target.is_empty() {
            target.to_path_buf()
        } else {
            target.join(m.target.trim_start_matches('/'))
        };
        let (flags, data) = flags_and_data(&m.options);
        let fstype = if m.r#type == "bind" {
            None
        } else {
            Some(m.r#type.as_str())
        };
        let data = (!data.is_empty()).then_some(data.as_str());
        let result = nix::mount::mount(Some(m.source.as_str()), &point, fstype, flags, data);
        if let Err(source) = result {
            unmount_all(&done);
            return Err(Error::Mount {
                source_path: m.source.clone(),
                target: point,
                source,
            });
        }
        done.push(point);
    }
    Ok(done)
}

/// Unmounts `points`, last first (lazily if busy).
pub fn unmount_all(points: &[PathBuf]) {
    for p in points.iter().rev() {
        if nix::mount::umount2(p, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(p, MntFlags::MNT_DETACH);
        }
    }
}
