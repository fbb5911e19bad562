//! The mounts of a container: Docker's defaults, the user's bind, volume and tmpfs mounts, and
//! an anonymous volume for each image volume no user mount covers.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::{MountSpec, RunOptions, SpecError, clean_path};
use crate::volumes::validate_name;

/// Default size of /dev/shm (64 MiB).
const DEFAULT_SHM_SIZE: i64 = 64 * 1024 * 1024;

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .expect("a mount is complete")
}

fn bad(target: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Mount {
        target: target.into(),
        reason: reason.into(),
    }
}

/// Every mount of the spec, in mount order (parents before children).
pub(super) fn mounts(opts: &RunOptions, image_volumes: &[String]) -> Result<Vec<Mount>, SpecError> {
    let shm = opts.shm_size.unwrap_or(DEFAULT_SHM_SIZE);
    if shm <= 0 {
        return Err(SpecError::Resource {
            field: "shm_size",
            reason: format!("{shm} must be positive"),
        });
    }
    let shm_size = format!("size={shm}");
    let sys_mode = if opts.privileged { "rw" } else { "ro" };
    let defaults = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        ),
    ];

    let mut user: Vec<Mount> = Vec::new();
    let mut targets: Vec<PathBuf> = Vec::new();
    for m in &opts.mounts {
        let target = m.target();
        if !target.starts_with('/') {
            return Err(bad(target, "the target must be an absolute path"));
        }
        if target.contains('\0') {
            return Err(bad(target, "the target contains a NUL byte"));
        }
        let dest = clean_path(target);
        if dest == Path::new("/") {
            return Err(bad(target, "cannot mount over the container's root"));
        }
        if targets.contains(&dest) {
            return Err(bad(target, "duplicate mount target"));
        }
        let dest_str = dest.to_string_lossy().into_owned();
        targets.push(dest);
        user.push(match m {
            MountSpec::Bind {
                source,
                readonly,
                propagation,
                ..
            } => {
                if !source.starts_with('/') {
                    return Err(bad(
                        target,
                        format!("the bind source {source:?} must be an absolute path"),
                    ));
                }
                if source.contains('\0') {
                    return Err(bad(target, "the bind source contains a NUL byte"));
                }
                let prop = propagation.as_deref().unwrap_or("rprivate");
                if !matches!(
                    prop,
                    "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                ) {
                    return Err(bad(
                        target,
                        format!(
                            "unknown propagation {prop:?} (private, rprivate, shared, rshared, slave, rslave)"
                        ),
                    ));
                }
                let mode = if *readonly { "ro" } else { "rw" };
                mount(&dest_str, "bind", source, &["rbind", mode, prop])
            }
            MountSpec::Volume {
                name,
                readonly,
                nocopy,
                ..
            } => {
                if !name.is_empty() {
                    validate_name(name).map_err(|reason| bad(target, reason))?;
                }
                let mut options = vec![if *readonly { "ro" } else { "rw" }];
                if *nocopy {
                    options.push("nocopy");
                }
                mount(&dest_str, "volume", name, &options)
            }
            MountSpec::Tmpfs { size, mode, .. } => {
                let mut options = vec!["nosuid".to_owned(), "nodev".into(), "noexec".into()];
                if let Some(size) = size {
                    if *size <= 0 {
                        return Err(bad(target, format!("tmpfs size {size} must be positive")));
                    }
                    options.push(format!("size={size}"));
                }
                let mode = mode.unwrap_or(0o1777);
                if mode > 0o7777 {
                    return Err(bad(target, format!("tmpfs mode {mode:o} is above 7777")));
                }
                options.push(format!("mode={mode:o}"));
                let options: Vec<&str> = options.iter().map(String::as_str).collect();
                mount(&dest_str, "tmpfs", "tmpfs", &options)
            }
        });
    }
    for v in image_volumes {
        let dest = clean_path(v);
        if dest == Path::new("/") || targets.contains(&dest) {
            continue;
        }
        user.push(mount(&dest.to_string_lossy(), "volume", "", &["rw"]));
        targets.push(dest);
    }

    let mut all: Vec<Mount> = defaults
        .into_iter()
        .filter(|d| !targets.iter().any(|t| t == d.destination()))
        .collect();
    // Parents before children: a stable sort on depth keeps the given order otherwise.
    user.sort_by_key(|m| m.destination().components().count());
    all.extend(user);
    Ok(all)
}
