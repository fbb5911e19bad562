//! Resolution of a container's user inside its image: `name`, `uid`, `name:group`, `uid:gid`...
//! turned into uid, gid and supplementary groups by reading the image's /etc/passwd and
//! /etc/group the way Docker (runc) does.
//!
//! The files are opened with openat2 and `RESOLVE_IN_ROOT`, so a symlink in the image (even an
//! absolute one, or `../..`) resolves inside the rootfs and can never make berth read a host file.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::Spec;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::spec::{GROUP_ADD_ANNOTATION, USER_ANNOTATION};

/// Largest /etc/passwd or /etc/group read (a hostile image could ship a huge one).
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// A user resolved in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership, or the explicit group).
    pub additional_gids: Vec<u32>,
}

/// Why a user cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The user string does not parse.
    #[error("invalid user {user:?}: expected name, uid, name:group or uid:gid")]
    Invalid {
        /// The user as given.
        user: String,
    },
    /// No such user in the image's /etc/passwd.
    #[error("unable to find user {name}: no matching entry in the image's /etc/passwd")]
    NoUser {
        /// The user name.
        name: String,
    },
    /// No such group in the image's /etc/group.
    #[error("unable to find group {name}: no matching entry in the image's /etc/group")]
    NoGroup {
        /// The group name.
        name: String,
    },
    /// The rootfs or one of its files cannot be read.
    #[error("cannot read {path} in the container's rootfs: {source}")]
    Read {
        /// The file, relative to the rootfs.
        path: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl From<UserError> for tonic::Status {
    fn from(e: UserError) -> tonic::Status {
        match e {
            UserError::Read { .. } => tonic::Status::internal(e.to_string()),
            _ => tonic::Status::failed_precondition(e.to_string()),
        }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (`""` = root) inside the image at `rootfs`.
///
/// A name must exist in /etc/passwd (a group name in /etc/group); a numeric uid that is not
/// listed runs with gid 0, as in Docker.
pub fn resolve(rootfs: &Path, user: &str) -> Result<ResolvedUser, UserError> {
    let invalid = || UserError::Invalid {
        user: user.to_owned(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if g.is_some_and(str::is_empty) || (u.is_empty() && g.is_some()) {
        return Err(invalid());
    }
    let root = open_rootfs(rootfs)?;
    let passwd = parse_passwd(&read_in_root(root.as_fd(), "etc/passwd")?);
    let (uid, mut gid, name) = if u.is_empty() {
        (
            0,
            0,
            passwd.iter().find(|p| p.uid == 0).map(|p| p.name.clone()),
        )
    } else if let Ok(uid) = u.parse::<u32>() {
        match passwd.iter().find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, Some(p.name.clone())),
            None => (uid, 0, None),
        }
    } else {
        let p = passwd
            .iter()
            .find(|p| p.name == u)
            .ok_or_else(|| UserError::NoUser { name: u.to_owned() })?;
        (p.uid, p.gid, Some(p.name.clone()))
    };
    let groups = parse_group(&read_in_root(root.as_fd(), "etc/group")?);
    let additional_gids = match g {
        Some(g) => {
            gid = group_id(&groups, g)?;
            Vec::new()
        }
        None => name
            .map(|n| {
                groups
                    .iter()
                    .filter(|gr| gr.members.contains(&n))
                    .map(|gr| gr.gid)
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Resolves the spec's unresolved user and group names (the annotations the spec builder
/// writes) inside `rootfs` and sets `process.user`; a spec without them is left as it is.
pub fn apply(rootfs: &Path, spec: &mut Spec) -> Result<(), UserError> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let user = annotations.get(USER_ANNOTATION);
    let group_names: Vec<&str> = annotations
        .get(GROUP_ADD_ANNOTATION)
        .map(|g| g.split(',').filter(|g| !g.is_empty()).collect())
        .unwrap_or_default();
    if user.is_none() && group_names.is_empty() {
        return Ok(());
    }
    let Some(process) = spec.process_mut() else {
        return Ok(());
    };
    if let Some(user) = user {
        let resolved = resolve(rootfs, user)?;
        let explicit = process.user().additional_gids().clone().unwrap_or_default();
        let mut gids = resolved.additional_gids;
        for g in explicit {
            if !gids.contains(&g) {
                gids.push(g);
            }
        }
        process.user_mut().set_uid(resolved.uid);
        process.user_mut().set_gid(resolved.gid);
        process.user_mut().set_additional_gids(Some(gids));
    }
    if !group_names.is_empty() {
        let root = open_rootfs(rootfs)?;
        let groups = parse_group(&read_in_root(root.as_fd(), "etc/group")?);
        let mut gids = process.user().additional_gids().clone().unwrap_or_default();
        for name in group_names {
            let gid = group_id(&groups, name)?;
            if !gids.contains(&gid) {
                gids.push(gid);
            }
        }
        process.user_mut().set_additional_gids(Some(gids));
    }
    Ok(())
}

fn group_id(groups: &[GroupEntry], g: &str) -> Result<u32, UserError> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    groups
        .iter()
        .find(|gr| gr.name == g)
        .map(|gr| gr.gid)
        .ok_or_else(|| UserError::NoGroup { name: g.to_owned() })
}

fn open_rootfs(rootfs: &Path) -> Result<OwnedFd, UserError> {
    rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UserError::Read {
        path: "/",
        source: e.into(),
    })
}

/// openat2 inside `root`: symlinks resolve as if `root` were `/`, no magic links; retried
/// when the kernel answers EAGAIN (a rename or mount anywhere raced the lookup).
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    rel: &OsStr,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    loop {
        match rustix::fs::openat2(root, rel, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Err(rustix::io::Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

/// The content of a file in the rootfs; a missing file (or directory) reads as empty.
fn read_in_root(root: BorrowedFd<'_>, path: &'static str) -> Result<String, UserError> {
    let fd = match open_in_root(root, OsStr::new(path), OFlags::RDONLY | OFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(String::new()),
        Err(e) => {
            return Err(UserError::Read {
                path,
                source: e.into(),
            });
        }
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| UserError::Read {
        path,
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(UserError::Read {
            path,
            source: std::io::Error::other("not a regular file"),
        });
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE)
        .read_to_end(&mut buf)
        .map_err(|source| UserError::Read { path, source })?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000::/home/app:/bin/sh\n\
             other:x:1001:100::/:/bin/sh\nbroken:x:notanumber:1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app, other\napp:x:1000:\nusers:x:100:\n",
        )
        .unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        let dir = rootfs();
        let r = |u: &str| resolve(dir.path(), u);
        assert_eq!(r("").unwrap(), user(0, 0, &[10]));
        assert_eq!(r("app").unwrap(), user(1000, 1000, &[10, 50]));
        assert_eq!(r("1000").unwrap(), user(1000, 1000, &[10, 50]));
        assert_eq!(r("other").unwrap(), user(1001, 100, &[50]));
        assert_eq!(r("app:staff").unwrap(), user(1000, 50, &[]));
        assert_eq!(r("app:7").unwrap(), user(1000, 7, &[]));
        assert_eq!(r("4242").unwrap(), user(4242, 0, &[]));
        assert_eq!(r("4242:staff").unwrap(), user(4242, 50, &[]));
        assert!(matches!(r("nobody"), Err(UserError::NoUser { name }) if name == "nobody"));
        assert!(matches!(r("app:nogroup"), Err(UserError::NoGroup { name }) if name == "nogroup"));
        assert!(matches!(r("broken"), Err(UserError::NoUser { .. })));
        for bad in ["app:", ":staff"] {
            assert!(matches!(r(bad), Err(UserError::Invalid { .. })), "{bad}");
        }
    }

    #[test]
    fn missing_files_allow_numeric_users_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(dir.path(), "123:456").unwrap(), user(123, 456, &[]));
        assert_eq!(resolve(dir.path(), "123").unwrap(), user(123, 0, &[]));
        assert!(matches!(
            resolve(dir.path(), "app"),
            Err(UserError::NoUser { .. })
        ));
        assert!(matches!(
            resolve(&dir.path().join("missing"), "0"),
            Err(UserError::Read { .. })
        ));
    }

    #[test]
    fn symlinks_never_leave_the_rootfs() {
        // A host directory with a passwd naming "evil", and an image whose /etc/passwd and
        // /etc/group point at it with absolute and relative symlinks.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "evil:x:4242:4242::/:/bin/sh\n").unwrap();
        std::fs::write(host.path().join("group"), "evilgroup:x:4343:evil\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(host.path().join("passwd"), dir.path().join("etc/passwd"))
            .unwrap();
        let depth = dir.path().components().count();
        let up = "../".repeat(depth + 2);
        let rel = format!("{up}{}", host.path().join("group").display());
        std::os::unix::fs::symlink(&rel, dir.path().join("etc/group")).unwrap();
        assert!(matches!(
            resolve(dir.path(), "evil"),
            Err(UserError::NoUser { .. })
        ));
        assert!(matches!(
            resolve(dir.path(), "0:evilgroup"),
            Err(UserError::NoGroup { .. })
        ));
        // The same files inside the rootfs are what the symlinks reach.
        let inside = dir.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("passwd"), "inner:x:7:7::/:/bin/sh\n").unwrap();
        assert_eq!(resolve(dir.path(), "inner").unwrap(), user(7, 7, &[]));
        // A directory or a fifo in place of the file is refused, not read.
        std::fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        std::fs::create_dir(dir.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            resolve(dir.path(), "inner"),
            Err(UserError::Read { .. })
        ));
    }

    #[test]
    fn apply_sets_the_process_user() {
        let dir = rootfs();
        let image = oci_spec::image::ImageConfigurationBuilder::default()
            .config(
                oci_spec::image::ConfigBuilder::default()
                    .cmd(vec!["sh".to_string()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let opts = crate::spec::RunOptions {
            user: Some("app".into()),
            group_add: vec!["users".into(), "5".into()],
            ..Default::default()
        };
        let mut spec = crate::spec::build(&image, &opts).unwrap();
        apply(dir.path(), &mut spec).unwrap();
        let u = spec.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (1000, 1000));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![10, 50, 5, 100]);

        let opts = crate::spec::RunOptions {
            group_add: vec!["nosuch".into()],
            ..Default::default()
        };
        let mut spec = crate::spec::build(&image, &opts).unwrap();
        assert!(matches!(
            apply(dir.path(), &mut spec),
            Err(UserError::NoGroup { .. })
        ));
    }
}
