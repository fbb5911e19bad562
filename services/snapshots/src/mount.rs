//! Mount data, and the helper that turns it into real mounts.
//!
//! Snapshotters return [`Mount`]s as data (type, source, options, like containerd's) that any
//! caller can mount: the tasks service for a container's rootfs, the images service to unpack
//! a layer, berthctl, tests. [`mount_all`] mounts them:
//!
//! - `overlay` through the new mount API (fsopen/fsconfig/fsmount/move_mount). Each lower
//!   directory of `lowerdir=a:b:c` is passed on its own as `lowerdir+`, so a chain of any depth
//!   mounts (one `lowerdir=` string is capped at a page, about 60 layers with usual paths).
//! - `bind` through open_tree: a detached copy of the source is made read-only (`ro`) before it
//!   is attached, so a read-only bind is never writable, not even for a moment.
//! - anything else through mount(2), with the usual flag options (`ro`, `nosuid`, ...).
//!
//! [`unmount`] undoes them; [`Mounted`] does both around a scope.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, OpenTreeFlags,
    UnmountFlags,
};
use serde::Serialize;

use crate::error::{Error, Result};

/// One filesystem mount, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Filesystem type: `overlay`, `bind`, or any type mount(2) knows.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// What to mount: a directory for `bind`, a name for pseudo filesystems.
    pub source: String,
    /// fstab-style options, e.g. `ro`, `lowerdir=/a:/b`, `upperdir=/u`, `workdir=/w`.
    pub options: Vec<String>,
}

impl Mount {
    /// An overlay of `lowers` (topmost first) with an optional `(upperdir, workdir)`, plus
    /// `extra` options (`index=off`, `volatile`, ...). Without an upper it is read-only.
    pub fn overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, extra: &[&str]) -> Mount {
        let mut options: Vec<String> = extra.iter().map(|o| (*o).to_owned()).collect();
        let joined: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        options.push(format!("lowerdir={}", joined.join(":")));
        if let Some((upper, work)) = upper {
            options.push(format!("upperdir={}", upper.display()));
            options.push(format!("workdir={}", work.display()));
        }
        Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options,
        }
    }

    /// A bind mount of the directory `source`.
    pub fn bind(source: &Path, read_only: bool) -> Mount {
        Mount {
            fs_type: "bind".into(),
            source: source.display().to_string(),
            options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
        }
    }

    /// The value of option `key=value`, if present.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// Whether the bare option `flag` is present.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.options.iter().any(|o| o == flag)
    }

    /// The lower directories of an overlay, topmost first.
    pub fn lowerdirs(&self) -> Vec<PathBuf> {
        self.option("lowerdir")
            .map(|l| {
                l.split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The upper directory of an overlay, if it has one.
    pub fn upperdir(&self) -> Option<PathBuf> {
        self.option("upperdir").map(PathBuf::from)
    }

    /// Whether the mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.has_flag("ro") || (self.fs_type == "overlay" && self.upperdir().is_none())
    }

    /// The equivalent `mount(8)` command line for `target`.
    pub fn command(&self, target: &Path) -> String {
        format!(
            "mount -t {} {} {} -o {}",
            self.fs_type,
            self.source,
            target.display(),
            self.options.join(",")
        )
    }

    /// Mounts this at `target` (an existing directory).
    pub fn mount(&self, target: &Path) -> Result<()> {
        match self.fs_type.as_str() {
            "overlay" => self.mount_overlay(target),
            "bind" => self.mount_bind(target),
            _ => self.mount_classic(target),
        }
    }

    fn mount_overlay(&self, target: &Path) -> Result<()> {
        let fail =
            |what: &str, source: rustix::io::Errno, fs: Option<BorrowedFd<'_>>| Error::Mount {
                what: format!("overlay ({what})"),
                target: target.to_owned(),
                source: source.into(),
                detail: fs.map(kernel_messages).unwrap_or_default(),
            };
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|e| fail("fsopen", e, None))?;
        let mut attrs = MountAttrFlags::empty();
        for option in &self.options {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option.as_str(), None),
            };
            let set = match (key, value) {
                ("lowerdir", Some(list)) => set_lowers(fs.as_fd(), list),
                ("ro", None) => {
                    attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
                    Ok(())
                }
                ("rw", None) => Ok(()),
                (_, None) => match attr_flag(key) {
                    Some(flag) => {
                        attrs |= flag;
                        Ok(())
                    }
                    None => rustix::mount::fsconfig_set_flag(fs.as_fd(), key),
                },
                (_, Some(v)) => rustix::mount::fsconfig_set_string(fs.as_fd(), key, v),
            };
            set.map_err(|e| fail(option, e, Some(fs.as_fd())))?;
        }
        rustix::mount::fsconfig_create(fs.as_fd())
            .map_err(|e| fail("create", e, Some(fs.as_fd())))?;
        let mnt = rustix::mount::fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
            .map_err(|e| fail("fsmount", e, Some(fs.as_fd())))?;
        rustix::mount::move_mount(
            mnt.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| fail("move_mount", e, None))
    }

    fn mount_bind(&self, target: &Path) -> Result<()> {
        let fail = |what: &str, source: io::Error| Error::Mount {
            what: format!("bind of {} ({what})", self.source),
            target: target.to_owned(),
            source,
            detail: String::new(),
        };
        let recursive = self.has_flag("rbind");
        let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        if recursive {
            flags |= OpenTreeFlags::AT_RECURSIVE;
        }
        let tree = rustix::mount::open_tree(rustix::fs::CWD, self.source.as_str(), flags)
            .map_err(|e| fail("open_tree", e.into()))?;
        let mut attrs = 0u64;
        for option in &self.options {
            if let Some(flag) = attr_flag(option) {
                attrs |= u64::from(flag.bits());
            }
        }
        if attrs != 0 {
            set_attrs(tree.as_fd(), attrs, recursive).map_err(|e| fail("mount_setattr", e))?;
        }
        rustix::mount::move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| fail("move_mount", e.into()))
    }

    fn mount_classic(&self, target: &Path) -> Result<()> {
        let mut flags = MountFlags::empty();
        let mut data = Vec::new();
        for option in &self.options {
            match option.as_str() {
                "ro" => flags |= MountFlags::RDONLY,
                "rw" => {}
                "nosuid" => flags |= MountFlags::NOSUID,
                "nodev" => flags |= MountFlags::NODEV,
                "noexec" => flags |= MountFlags::NOEXEC,
                "noatime" => flags |= MountFlags::NOATIME,
                "relatime" => flags |= MountFlags::RELATIME,
                other => data.push(other),
            }
        }
        let data = std::ffi::CString::new(data.join(",")).map_err(|_| Error::InvalidMount {
            reason: "an option contains a NUL byte".into(),
        })?;
        rustix::mount::mount(
            self.source.as_str(),
            target,
            self.fs_type.as_str(),
            flags,
            Some(data.as_c_str()),
        )
        .map_err(|e| Error::Mount {
            what: self.fs_type.clone(),
            target: target.to_owned(),
            source: e.into(),
            detail: String::new(),
        })
    }
}

/// Passes each lower directory as `lowerdir+` (topmost first); kernels without `lowerdir+`
/// get the classic single `lowerdir=` string instead.
fn set_lowers(fs: BorrowedFd<'_>, list: &str) -> rustix::io::Result<()> {
    for (i, dir) in list.split(':').filter(|d| !d.is_empty()).enumerate() {
        match rustix::mount::fsconfig_set_string(fs, "lowerdir+", dir) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) if i == 0 => {
                return rustix::mount::fsconfig_set_string(fs, "lowerdir", list);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The mount attribute a flag option stands for.
fn attr_flag(option: &str) -> Option<MountAttrFlags> {
    Some(match option {
        "ro" => MountAttrFlags::MOUNT_ATTR_RDONLY,
        "nosuid" => MountAttrFlags::MOUNT_ATTR_NOSUID,
        "nodev" => MountAttrFlags::MOUNT_ATTR_NODEV,
        "noexec" => MountAttrFlags::MOUNT_ATTR_NOEXEC,
        "noatime" => MountAttrFlags::MOUNT_ATTR_NOATIME,
        _ => return None,
    })
}

/// mount_setattr(2) on a detached mount tree (rustix has no wrapper for it).
fn set_attrs(tree: BorrowedFd<'_>, attrs: u64, recursive: bool) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads `size_of::<mount_attr>()` bytes from `&attr`, a live, fully
    // initialised mount_attr; the path is a NUL-terminated empty string literal; `tree` is an
    // open fd borrowed for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The messages the kernel queued on an fs context ("e overlay: ..."), for error reports.
fn kernel_messages(fs: BorrowedFd<'_>) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                out.push_str(" (kernel: ");
                out.push_str(String::from_utf8_lossy(&buf[..n]).trim());
                out.push(')');
            }
            _ => break,
        }
    }
    out
}

/// Mounts `mounts` one over the other at `target` (all snapshot mounts are root mounts); if one
/// fails, those already made are unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    if mounts.is_empty() {
        return Err(Error::InvalidMount {
            reason: "no mounts to mount".into(),
        });
    }
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = m.mount(target) {
            for _ in 0..done {
                let _ = rustix::mount::unmount(target, UnmountFlags::NOFOLLOW);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything mounted at `target` (stacked mounts included). Fails if nothing was.
pub fn unmount(target: &Path) -> Result<()> {
    let mut unmounted = 0;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => unmounted += 1,
            Err(rustix::io::Errno::INVAL) if unmounted > 0 => return Ok(()),
            Err(e) => {
                return Err(Error::Mount {
                    what: "unmount".into(),
                    target: target.to_owned(),
                    source: e.into(),
                    detail: String::new(),
                });
            }
        }
    }
}

/// A read-only version of `mounts`, for reading a snapshot while it may be in use (diffs): an
/// overlay's upper becomes its topmost lower (nothing touches its work directory), binds and
/// other mounts get `ro`.
pub fn read_only(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            if m.fs_type == "overlay"
                && let Some(upper) = m.upperdir()
            {
                let mut lowers = vec![upper];
                lowers.extend(m.lowerdirs());
                let keep: Vec<&str> = m
                    .options
                    .iter()
                    .map(String::as_str)
                    .filter(|o| {
                        !o.starts_with("lowerdir=")
                            && !o.starts_with("upperdir=")
                            && !o.starts_with("workdir=")
                            && *o != "volatile"
                            && *o != "rw"
                    })
                    .collect();
                return Mount::overlay(&lowers, None, &keep);
            }
            let mut ro = m.clone();
            ro.options.retain(|o| o != "rw");
            if !ro.has_flag("ro") {
                ro.options.insert(0, "ro".into());
            }
            ro
        })
        .collect()
}

/// Mounts that are unmounted (and their temporary directory removed) when this is dropped.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    temporary: bool,
}

impl Mounted {
    /// Mounts `mounts` at the existing directory `target`.
    pub fn at(mounts: &[Mount], target: &Path) -> Result<Mounted> {
        mount_all(mounts, target)?;
        Ok(Mounted {
            target: target.to_owned(),
            temporary: false,
        })
    }

    /// Mounts `mounts` on a new directory made inside `parent`.
    pub fn temporary(mounts: &[Mount], parent: &Path) -> Result<Mounted> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            ".berth-mount-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let target = parent.join(name);
        std::fs::create_dir(&target).map_err(Error::io("create mount point", &target))?;
        if let Err(e) = mount_all(mounts, &target) {
            let _ = std::fs::remove_dir(&target);
            return Err(e);
        }
        Ok(Mounted {
            target,
            temporary: true,
        })
    }

    /// Where the mounts are.
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.target) {
            tracing::warn!(error = %e, "cannot unmount");
            return;
        }
        if self.temporary {
            let _ = std::fs::remove_dir(&self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_turns_upper_into_a_lower() {
        let m = Mount::overlay(
            &["/l1".into(), "/l2".into()],
            Some((Path::new("/u"), Path::new("/w"))),
            &["index=off", "volatile"],
        );
        let ro = read_only(&[m]);
        assert_eq!(ro[0].options, vec!["index=off", "lowerdir=/u:/l1:/l2"]);
        assert!(ro[0].is_read_only());
        let b = read_only(&[Mount::bind(Path::new("/x"), false)]);
        assert_eq!(b[0].options, vec!["ro", "rbind"]);
    }

    #[test]
    fn deep_overlay_and_ro_bind_mount() {
        let dir = tempfile::tempdir().unwrap();
        let mut lowers = Vec::new();
        for i in 0..140 {
            // Long paths: the joined lowerdir string is far beyond a page.
            let l = dir.path().join(format!("{}-{i:03}", "layer".repeat(8)));
            std::fs::create_dir(&l).unwrap();
            std::fs::write(l.join(format!("f{i}")), format!("{i}")).unwrap();
            std::fs::write(l.join("top"), format!("{i}")).unwrap();
            lowers.insert(0, l);
        }
        let (u, w, t) = (
            dir.path().join("u"),
            dir.path().join("w"),
            dir.path().join("t"),
        );
        for d in [&u, &w, &t] {
            std::fs::create_dir(d).unwrap();
        }
        let m = Mount::overlay(&lowers, Some((&u, &w)), &["index=off"]);
        assert!(m.option("lowerdir").unwrap().len() > 4096);
        {
            let mounted = Mounted::at(&[m], &t).unwrap();
            assert_eq!(
                std::fs::read_to_string(mounted.path().join("top")).unwrap(),
                "139"
            );
            assert_eq!(
                std::fs::read_to_string(mounted.path().join("f0")).unwrap(),
                "0"
            );
            std::fs::write(mounted.path().join("new"), "x").unwrap();
        }
        assert!(u.join("new").exists());

        let ro = Mount::bind(&u, true);
        let mounted = Mounted::temporary(&[ro], dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(mounted.path().join("new")).unwrap(),
            "x"
        );
        let err = std::fs::write(mounted.path().join("nope"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let path = mounted.path().to_owned();
        drop(mounted);
        assert!(!path.exists());
    }

    #[test]
    fn bad_overlay_reports_the_kernel_message() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount::overlay(&[dir.path().join("missing")], None, &[]);
        let err = m.mount(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lowerdir"), "{err}");
    }
}
