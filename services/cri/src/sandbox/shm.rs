//! The pod's shared `/dev/shm`: a tmpfs (64 MiB, mode 1777, nosuid, nodev, noexec) mounted at
//! `shm` in the pod's directory by RunPodSandbox and bind-mounted at `/dev/shm` into every
//! container of a pod with its own ipc namespace, so that the pod's containers share POSIX
//! shared memory as they share System V IPC (containerd's sandbox shm).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Size and mode of the tmpfs (containerd's defaults for a pod's /dev/shm).
const OPTIONS: &str = "mode=1777,size=65536k";

/// Mounts the pod's shm tmpfs at `dir/shm` and returns its path. Nothing is left on error.
pub fn mount(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join("shm");
    std::fs::create_dir(&path)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = nix::mount::mount(Some("shm"), &path, Some("tmpfs"), flags, Some(OPTIONS)) {
        let _ = std::fs::remove_dir(&path);
        return Err(io::Error::other(format!(
            "mount the pod's shm tmpfs at {}: {e}",
            path.display()
        )));
    }
    Ok(path)
}

/// Unmounts (lazily: a container may still hold it) and deletes the pod's shm directory;
/// a missing one is fine.
pub fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_line(path: &Path) -> Option<String> {
        let path = path.to_str()?;
        std::fs::read_to_string("/proc/self/mounts")
            .ok()?
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .map(str::to_owned)
    }

    #[test]
    fn mounts_a_private_tmpfs_and_unmounts_it() {
        let dir = std::env::temp_dir().join(format!("berth-cri-shm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = mount(&dir).unwrap();
        let line = mount_line(&path).expect("mounted");
        for option in ["tmpfs", "nosuid", "nodev", "noexec", "size=65536k"] {
            assert!(line.contains(option), "{option}: {line}");
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        assert_eq!(mode & 0o7777, 0o1777);
        // A second mount on the same pod directory is refused and leaves the first alone.
        assert!(mount(&dir).is_err());
        assert!(mount_line(&path).is_some());
        std::fs::write(path.join("f"), "x").unwrap();
        unmount(&path);
        assert_eq!(mount_line(&path), None);
        assert!(!path.exists());
        unmount(&path);
        std::fs::remove_dir(&dir).unwrap();
    }
}
