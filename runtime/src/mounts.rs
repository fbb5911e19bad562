//! Mounts inside the rootfs, done by the container init before pivot_root.
//!
//! Every target is resolved inside the rootfs with openat2(RESOLVE_IN_ROOT) (a symlink in
//! the rootfs can never lead out of it; proc and sysfs targets may not be symlinks at all),
//! missing directories are created through the resolved parent, and the mount is made on the
//! resolved descriptor through its /proc/self/fd magic link, so a symlink swapped in after
//! the check cannot redirect it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MsFlags, mount};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Result};
use crate::spec::Mount;

/// Flags and data of a mount's options.
#[derive(Debug, Clone)]
pub struct Options {
    /// mount(2) flags.
    pub flags: MsFlags,
    /// Propagation to apply after the mount.
    pub propagation: MsFlags,
    /// The rest, comma-joined, as the filesystem's data.
    pub data: String,
    /// rbind (recursive bind).
    pub recursive: bool,
}

/// Splits fstab-style options into flags, propagation and data (unknown options are data).
pub fn parse_options(options: &[String]) -> std::result::Result<Options, String> {
    let mut o = Options {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
        recursive: false,
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => {
                o.recursive = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let mut p = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if opt.starts_with('r') {
                    p |= MsFlags::MS_REC;
                }
                o.propagation = p;
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            "" => return Err(String::new()),
            other => {
                data.push(other.to_owned());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
    }
    o.data = data.join(",");
    Ok(o)
}

/// The rootfs being set up: an O_PATH descriptor of it.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What to create at a missing mount target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A directory.
    Dir,
    /// An empty file (bind mount of a file).
    File,
}

fn rel(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// `path` made relative to the root with `.` and `..` applied lexically (`..` stops at the
/// root, as RESOLVE_IN_ROOT does).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

impl Root {
    /// Opens the rootfs at `path`.
    pub fn open(path: &Path) -> Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path)(e.into()))?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// The rootfs descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `path` inside the rootfs (symlinks resolved as if it were `/`).
    pub fn open_in(
        &self,
        path: &Path,
        flags: OFlags,
        no_symlinks: bool,
    ) -> rustix::io::Result<OwnedFd> {
        let resolve = if no_symlinks {
            ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
        } else {
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
        };
        let p = rel(path);
        let p = if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p
        };
        // The kernel answers EAGAIN when a rename or mount anywhere raced the lookup: retry.
        loop {
            match rustix::fs::openat2(
                &self.fd,
                &p,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            ) {
                Err(rustix::io::Errno::AGAIN) => continue,
                other => return other,
            }
        }
    }

    /// Resolves `dest` inside the rootfs, creating what is missing (a dangling symlink on the
    /// way is followed inside the rootfs and its target created); an O_PATH descriptor.
    pub fn resolve(&self, dest: &Path, target: Target, no_symlinks: bool) -> Result<OwnedFd> {
        self.resolve_depth(dest, target, no_symlinks, 0)
    }

    fn resolve_depth(
        &self,
        dest: &Path,
        target: Target,
        no_symlinks: bool,
        depth: u32,
    ) -> Result<OwnedFd> {
        let fail = |e: rustix::io::Errno| Error::Io {
            path: self.path.join(rel(dest)),
            source: e.into(),
        };
        match self.open_in(dest, OFlags::PATH, no_symlinks) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::LOOP) if no_symlinks => {
                return Err(Error::Init(format!(
                    "mount target {} is a symlink in the rootfs",
                    dest.display()
                )));
            }
            Err(e) => return Err(fail(e)),
        }
        // Walk down, creating missing components through their resolved parent.
        let r = rel(dest);
        let comps: Vec<_> = r.components().collect();
        let mut prefix = PathBuf::new();
        for (i, c) in comps.iter().enumerate() {
            let parent = self
                .open_in(&prefix, OFlags::PATH | OFlags::DIRECTORY, no_symlinks)
                .map_err(fail)?;
            prefix.push(c);
            match self.open_in(&prefix, OFlags::PATH, no_symlinks) {
                Ok(_) => continue,
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(fail(e)),
            }
            let last = i + 1 == comps.len();
            let name = c.as_os_str();
            if last && target == Target::File {
                let f = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::RDONLY
                        | OFlags::CLOEXEC
                        | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o644),
                );
                match f {
                    Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(fail(e)),
                }
            } else {
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        // A dangling symlink: continue from its target, inside the rootfs.
                        let Ok(link) = rustix::fs::readlinkat(&parent, name, Vec::new()) else {
                            continue;
                        };
                        if no_symlinks || depth >= 40 {
                            return Err(fail(rustix::io::Errno::LOOP));
                        }
                        let link = PathBuf::from(
                            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                                link.as_bytes(),
                            ),
                        );
                        let base = prefix.parent().map(Path::to_path_buf).unwrap_or_default();
                        let mut next = if link.is_absolute() {
                            link
                        } else {
                            base.join(link)
                        };
                        for c in &comps[i + 1..] {
                            next.push(c);
                        }
                        return self.resolve_depth(
                            &normalize(&next),
                            target,
                            no_symlinks,
                            depth + 1,
                        );
                    }
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        self.open_in(dest, OFlags::PATH, no_symlinks).map_err(fail)
    }
}

/// The magic-link path of an open descriptor.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn msys(what: &str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> Error {
    let what = format!("{what} {}", path.display());
    move |e| Error::Sys { what, errno: e }
}

/// Applies `o.propagation` to the mount at `target`.
pub fn propagate(target: &Path, flags: MsFlags) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(msys("propagation of", target))
}

/// Mounts one spec mount in the rootfs. `userns`: the container has a new user namespace.
pub fn mount_one(
    root: &Root,
    m: &Mount,
    cg: &crate::cgroups::Cgroups,
    cgroupns: bool,
) -> Result<()> {
    let o = parse_options(&m.options).map_err(|_| Error::InvalidSpec {
        field: "mounts".into(),
        reason: "empty option".into(),
    })?;
    let kind = m.kind.as_deref().unwrap_or("");
    let dest = &m.destination;
    let bind = o.flags.contains(MsFlags::MS_BIND) || kind == "bind";
    if bind {
        let source = m.source.clone().unwrap_or_default();
        let meta = std::fs::metadata(&source).map_err(Error::io(&source))?;
        let target = root.resolve(
            dest,
            if meta.is_dir() {
                Target::Dir
            } else {
                Target::File
            },
            false,
        )?;
        let tpath = fd_path(&target);
        let mut flags = MsFlags::MS_BIND;
        if o.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&source), &tpath, None::<&str>, flags, None::<&str>)
            .map_err(msys("bind mount on", dest))?;
        let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // Re-open: the descriptor resolved before the mount still names the lower dentry.
            let target = root.resolve(dest, Target::Dir, false)?;
            remount_bind(&fd_path(&target), extra, dest)?;
        }
        let target = root.resolve(dest, Target::Dir, false)?;
        return propagate(&fd_path(&target), o.propagation);
    }
    let special = matches!(kind, "proc" | "sysfs");
    let target = root.resolve(dest, Target::Dir, special)?;
    let tpath = fd_path(&target);
    match kind {
        "cgroup" | "cgroup2" => return mount_cgroups(root, dest, &o, cg, cgroupns),
        "sysfs" => {
            if let Err(e) = mount(Some("sysfs"), &tpath, Some("sysfs"), o.flags, None::<&str>) {
                // A sysfs may not be mounted from a user namespace that does not own the
                // network namespace: bind the host's instead (as runc does).
                if e != nix::errno::Errno::EPERM {
                    return Err(msys("mount sysfs on", dest)(e));
                }
                mount(
                    Some("/sys"),
                    &tpath,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(msys("bind /sys on", dest))?;
                let target = root.resolve(dest, Target::Dir, true)?;
                remount_bind(&fd_path(&target), o.flags, dest)?;
            }
        }
        _ => {
            let source = m.source.clone().unwrap_or_else(|| PathBuf::from(kind));
            let data = (!o.data.is_empty()).then_some(o.data.as_str());
            // A read-only tmpfs is a writable filesystem under a read-only mount (as runc
            // makes it), so it can be filled before being locked.
            let late_ro = kind == "tmpfs" && o.flags.contains(MsFlags::MS_RDONLY);
            let flags = o.flags & !MsFlags::MS_REMOUNT;
            let flags = if late_ro {
                flags & !MsFlags::MS_RDONLY
            } else {
                flags
            };
            mount(Some(&source), &tpath, Some(kind), flags, data)
                .map_err(msys(&format!("mount {kind} on"), dest))?;
            if late_ro {
                let target = root.resolve(dest, Target::Dir, false)?;
                remount_bind(&fd_path(&target), MsFlags::MS_RDONLY, dest)?;
            }
        }
    }
    if !o.propagation.is_empty() {
        let target = root.resolve(dest, Target::Dir, special)?;
        propagate(&fd_path(&target), o.propagation)?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags`, keeping the flags the mount already has that the
/// kernel refuses to drop in a user namespace (nosuid, nodev, noexec, atime).
pub fn remount_bind(target: &Path, flags: MsFlags, what: &Path) -> Result<()> {
    let locked = rustix::fs::statvfs(target)
        .map(|s| {
            let f = s.f_flag;
            let mut m = MsFlags::empty();
            for (st, ms) in [
                (rustix::fs::StatVfsMountFlags::NOSUID, MsFlags::MS_NOSUID),
                (rustix::fs::StatVfsMountFlags::NODEV, MsFlags::MS_NODEV),
                (rustix::fs::StatVfsMountFlags::NOEXEC, MsFlags::MS_NOEXEC),
                (rustix::fs::StatVfsMountFlags::NOATIME, MsFlags::MS_NOATIME),
                (
                    rustix::fs::StatVfsMountFlags::NODIRATIME,
                    MsFlags::MS_NODIRATIME,
                ),
                (
                    rustix::fs::StatVfsMountFlags::RELATIME,
                    MsFlags::MS_RELATIME,
                ),
            ] {
                if f.contains(st) {
                    m |= ms;
                }
            }
            m
        })
        .unwrap_or(MsFlags::empty());
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        None::<&str>,
    )
    .map_err(msys("remount", what))
}

/// The cgroup mount: cgroup2 on a unified host; on v1, a tmpfs holding one mount per
/// hierarchy (a cgroup mount in a new cgroup namespace, else a bind of the container's own
/// cgroup directory, read-only as the spec asks) plus the usual symlinks for co-mounted
/// controllers. The tmpfs itself stays writable, as runc leaves it.
fn mount_cgroups(
    root: &Root,
    dest: &Path,
    o: &Options,
    cg: &crate::cgroups::Cgroups,
    cgroupns: bool,
) -> Result<()> {
    let flags = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if cg.unified {
        let target = root.resolve(dest, Target::Dir, false)?;
        if cgroupns {
            mount(
                Some("cgroup2"),
                &fd_path(&target),
                Some("cgroup2"),
                flags,
                None::<&str>,
            )
            .map_err(msys("mount cgroup2 on", dest))?;
        } else if let Some(dir) = &cg.v2 {
            mount(
                Some(dir),
                &fd_path(&target),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(msys("bind cgroup on", dest))?;
            let target = root.resolve(dest, Target::Dir, false)?;
            remount_bind(&fd_path(&target), flags, dest)?;
        }
        return Ok(());
    }
    let target = root.resolve(dest, Target::Dir, false)?;
    mount(
        Some("tmpfs"),
        &fd_path(&target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(msys("mount tmpfs on", dest))?;
    for (controllers, dir) in &cg.v1 {
        let name = controllers
            .iter()
            .map(|c| c.strip_prefix("name=").unwrap_or(c))
            .collect::<Vec<_>>()
            .join(",");
        let sub = dest.join(&name);
        let t = root.resolve(&sub, Target::Dir, false)?;
        if cgroupns {
            let data = controllers.join(",");
            // Named hierarchies (name=systemd) are mounted with their name as the source.
            let source = controllers
                .iter()
                .find_map(|c| c.strip_prefix("name="))
                .unwrap_or("cgroup");
            mount(
                Some(source),
                &fd_path(&t),
                Some("cgroup"),
                flags,
                Some(data.as_str()),
            )
            .map_err(msys("mount cgroup on", &sub))?;
        } else {
            mount(
                Some(dir),
                &fd_path(&t),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(msys("bind cgroup on", &sub))?;
            let t = root.resolve(&sub, Target::Dir, false)?;
            remount_bind(&fd_path(&t), flags, &sub)?;
        }
        if controllers.len() > 1 {
            let dirfd = root.resolve(dest, Target::Dir, false)?;
            let dirfd = rustix::fs::openat(
                &dirfd,
                ".",
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(dest)(e.into()))?;
            for c in controllers {
                let _ = rustix::fs::symlinkat(name.as_str(), &dirfd, c.as_str());
            }
        }
    }
    Ok(())
}

/// A C string of a path (for raw calls).
pub fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| Error::InvalidSpec {
        field: "path".into(),
        reason: format!("{} contains a NUL byte", p.display()),
    })
}
