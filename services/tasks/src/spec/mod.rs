//! The OCI runtime spec builder: turns an image's configuration plus the user's
//! [`RunOptions`] into the [`Spec`] a container runs with, the way Docker does.
//!
//! It owns the merging rules (Entrypoint/Cmd, Env, WorkingDir, User, Labels, StopSignal,
//! ExposedPorts, image Volumes) and Docker's defaults (mounts, the 14 capabilities, the seccomp
//! profile, masked and read-only paths, namespaces, `RLIMIT_NOFILE`, device rules). It runs on
//! the client side (berthctl, the CRI facade): nothing here talks to a service.
//!
//! What the builder leaves to the tasks service at task Create:
//! - `linux.cgroupsPath` is unset; the tasks service sets it (under its configured cgroup
//!   parent, one cgroup per namespace and container).
//! - the network namespace entry has no path; the tasks service points it at the netns it
//!   attaches (or drops it for host networking, which [`RunOptions::host_network`] already does).
//! - a user given by name (and a bare numeric uid, whose group comes from the image's
//!   /etc/passwd as in Docker) is kept in the annotation [`USER_ANNOTATION`] with
//!   `process.user` 0:0 meanwhile; group names of `group_add` in [`GROUP_ADD_ANNOTATION`];
//!   [`crate::user::apply`] resolves both inside the rootfs.
//! - mounts of type `volume` (source = volume name, empty for an anonymous volume) become bind
//!   mounts through the volume manager.

mod mounts;
mod options;
mod resources;
mod security;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

pub use options::{MountSpec, RunOptions};

/// Prefix of the annotations berth itself sets.
const RESERVED_PREFIX: &str = "berth.io/";
/// Annotation holding a user (`name`, `name:group`, `uid`, `uid:group`) still to be resolved
/// inside the image.
pub const USER_ANNOTATION: &str = "berth.io/user";
/// Annotation holding additional group names (comma-separated) still to be resolved.
pub const GROUP_ADD_ANNOTATION: &str = "berth.io/group-add";
/// Annotation with the signal that stops the container (e.g. `SIGTERM`).
pub const STOP_SIGNAL_ANNOTATION: &str = "berth.io/stop-signal";
/// Annotation with the image's exposed ports, comma-separated (`80/tcp,53/udp`).
pub const EXPOSED_PORTS_ANNOTATION: &str = "berth.io/exposed-ports";
/// Annotation with the image's volume paths, comma-separated.
pub const IMAGE_VOLUMES_ANNOTATION: &str = "berth.io/image-volumes";
/// Annotation set to `true` when stdin is kept open.
pub const STDIN_OPEN_ANNOTATION: &str = "berth.io/stdin-open";

/// The PATH a container gets when neither the image nor the user sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bad options: every variant says which value is wrong and why.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No entrypoint and no command, neither from the image nor from the user.
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// An unknown capability name.
    #[error("unknown capability {name:?}")]
    Capability {
        /// The name as given.
        name: String,
    },
    /// A bad `name=soft[:hard]` ulimit.
    #[error("invalid ulimit {value:?}: {reason}")]
    Ulimit {
        /// The ulimit as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad mount.
    #[error("invalid mount at {target:?}: {reason}")]
    Mount {
        /// The mount's target as given.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A resource value out of range (memory, cpus, pids...).
    #[error("invalid {field}: {reason}")]
    Resource {
        /// The option (`memory`, `cpus`, ...).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A bad security option or seccomp profile.
    #[error("invalid security option {option:?}: {reason}")]
    SecurityOpt {
        /// The option as given (a profile is shortened).
        option: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad `--device`.
    #[error("invalid device {device:?}: {reason}")]
    Device {
        /// The device as given.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// A sysctl that is not namespaced or not allowed.
    #[error("invalid sysctl {name:?}: {reason}")]
    Sysctl {
        /// The sysctl name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Any other bad option (env, workdir, user, stop signal, hostname...).
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The option.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<SpecError> for tonic::Status {
    fn from(e: SpecError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Builds the runtime spec of a container from its image's configuration and `opts`.
pub fn build(image: &ImageConfiguration, opts: &RunOptions) -> Result<Spec, SpecError> {
    let config = image.config().clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    // Annotations under `berth.io/` carry what the builder hands to the tasks service (a user
    // to resolve, ...): labels never set them.
    if let Some(labels) = config.labels() {
        annotations.extend(
            labels
                .iter()
                .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    if let Some(key) = opts.labels.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
        return Err(invalid(
            "label",
            key,
            "label keys under berth.io/ are reserved for berth",
        ));
    }
    annotations.extend(opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));

    if opts.init {
        return Err(invalid(
            "init",
            "true",
            "an init process is not supported yet; run without --init",
        ));
    }
    let args = command(config.entrypoint(), config.cmd(), opts)?;
    let hostname = match &opts.hostname {
        Some(h) => {
            validate_hostname(h)?;
            Some(h.clone())
        }
        None => None,
    };
    let mut env = merge_env(config.env().as_deref().unwrap_or_default(), &opts.env)?;
    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    if let Some(h) = &hostname
        && !env.iter().any(|e| e.starts_with("HOSTNAME="))
    {
        env.insert(0, format!("HOSTNAME={h}"));
    }
    let cwd = working_dir(opts.workdir.as_deref(), config.working_dir().as_deref())?;

    let user_text = opts
        .user
        .clone()
        .or_else(|| config.user().clone())
        .unwrap_or_default();
    let (uid, gid, unresolved) = numeric_user(&user_text)?;
    if unresolved {
        annotations.insert(USER_ANNOTATION.into(), user_text.clone());
    }
    let (extra_gids, group_names) = group_add(&opts.group_add)?;
    if !group_names.is_empty() {
        annotations.insert(GROUP_ADD_ANNOTATION.into(), group_names.join(","));
    }

    let stop_signal = match opts
        .stop_signal
        .as_deref()
        .or(config.stop_signal().as_deref())
    {
        Some(s) => normalize_signal(s)?,
        None => "SIGTERM".to_owned(),
    };
    annotations.insert(STOP_SIGNAL_ANNOTATION.into(), stop_signal);
    if let Some(ports) = config.exposed_ports().as_ref().filter(|p| !p.is_empty()) {
        let mut ports = ports.clone();
        ports.sort();
        annotations.insert(EXPOSED_PORTS_ANNOTATION.into(), ports.join(","));
    }
    let image_volumes = config.volumes().clone().unwrap_or_default();
    if !image_volumes.is_empty() {
        let mut v = image_volumes.clone();
        v.sort();
        annotations.insert(IMAGE_VOLUMES_ANNOTATION.into(), v.join(","));
    }
    if opts.stdin_open {
        annotations.insert(STDIN_OPEN_ANNOTATION.into(), "true".into());
    }

    let security = security::Security::from_options(opts)?;
    let rlimits = resources::rlimits(&opts.ulimits)?;
    let resources = resources::resources(opts, security.device_rules.clone())?;
    let sysctl = resources::sysctls(&opts.sysctls, opts.host_network)?;
    let mounts = mounts::mounts(opts, &image_volumes)?;

    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(extra_gids)
        .build()
        .map_err(internal)?;
    let mut process = ProcessBuilder::default()
        .terminal(opts.tty)
        .user(user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(security.capabilities)
        .rlimits(rlimits)
        .no_new_privileges(security.no_new_privileges)
        .build()
        .map_err(internal)?;
    if let Some(adj) = opts.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(SpecError::Resource {
                field: "oom_score_adj",
                reason: format!("{adj} is outside -1000..=1000"),
            });
        }
        process.set_oom_score_adj(Some(adj));
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(opts.host_network))
        .resources(resources)
        .devices(security.devices)
        .build()
        .map_err(internal)?;
    if !sysctl.is_empty() {
        linux.set_sysctl(Some(sysctl));
    }
    linux.set_seccomp(security.seccomp);
    if opts.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        linux.set_masked_paths(Some(security::MASKED_PATHS.map(String::from).to_vec()));
        linux.set_readonly_paths(Some(security::READONLY_PATHS.map(String::from).to_vec()));
    }

    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(opts.read_only)
            .build()
            .map_err(internal)?,
    ));
    spec.set_process(Some(process));
    spec.set_hostname(hostname);
    spec.set_domainname(opts.domainname.clone());
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(annotations.into_iter().collect::<HashMap<_, _>>()));
    Ok(spec)
}

fn internal(e: oci_spec::OciSpecError) -> SpecError {
    invalid("spec", "", e.to_string())
}

/// Docker's rules: a user entrypoint replaces the image's and drops its Cmd; a user cmd
/// replaces the image's Cmd.
fn command(
    image_entrypoint: &Option<Vec<String>>,
    image_cmd: &Option<Vec<String>>,
    opts: &RunOptions,
) -> Result<Vec<String>, SpecError> {
    let entrypoint = match &opts.entrypoint {
        Some(e) => e.clone(),
        None => image_entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if !opts.cmd.is_empty() {
        opts.cmd.clone()
    } else if opts.entrypoint.is_some() {
        Vec::new()
    } else {
        image_cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    if let Some(a) = args.iter().find(|a| a.contains('\0')) {
        return Err(invalid("command", a, "contains a NUL byte"));
    }
    Ok(args)
}

/// The image's environment with the user's on top (`KEY=V` sets, `KEY` removes), and PATH.
fn merge_env(image: &[String], user: &[String]) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set =
        |key: &str, value: Option<&str>| match (env.iter().position(|(k, _)| k == key), value) {
            (Some(i), Some(v)) => env[i].1 = v.to_owned(),
            (None, Some(v)) => env.push((key.to_owned(), v.to_owned())),
            (Some(i), None) => {
                env.remove(i);
            }
            (None, None) => {}
        };
    for e in image {
        // Image configs are not validated by us: keep what parses, as Docker does.
        if let Some((k, v)) = e.split_once('=')
            && !k.is_empty()
        {
            set(k, Some(v));
        }
    }
    for e in user {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (e.as_str(), None),
        };
        if k.is_empty() || k.chars().any(char::is_whitespace) {
            return Err(invalid(
                "env",
                e,
                "expected KEY=VALUE or KEY with a non-empty KEY without spaces",
            ));
        }
        if e.contains('\0') {
            return Err(invalid("env", e, "contains a NUL byte"));
        }
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The user's working directory (absolute) or the image's (joined to `/`), cleaned.
fn working_dir(user: Option<&str>, image: Option<&str>) -> Result<PathBuf, SpecError> {
    let dir = match (user, image) {
        (Some(d), _) if !d.is_empty() => {
            if !d.starts_with('/') {
                return Err(invalid(
                    "workdir",
                    d,
                    "the working directory must be an absolute path",
                ));
            }
            d
        }
        (_, Some(d)) if !d.is_empty() => d,
        _ => "/",
    };
    Ok(clean_path(dir))
}

/// `dir` made absolute and lexically cleaned (`.`, `..`, repeated slashes).
pub(crate) fn clean_path(dir: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(dir).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Splits a user string: `(uid, gid, needs resolution in the image)`.
fn numeric_user(user: &str) -> Result<(u32, u32, bool), SpecError> {
    if user.is_empty() {
        return Ok((0, 0, false));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        return Err(invalid(
            "user",
            user,
            "expected name, uid, name:group or uid:gid",
        ));
    }
    match (u.parse::<u32>(), g.map(str::parse::<u32>)) {
        // A bare root needs no lookup.
        (Ok(0), None) => Ok((0, 0, false)),
        (Ok(uid), Some(Ok(gid))) => Ok((uid, gid, false)),
        // A bare uid takes its group from /etc/passwd when it is listed there.
        _ => Ok((0, 0, true)),
    }
}

/// Numeric extra gids, and the group names to resolve in the image.
fn group_add(groups: &[String]) -> Result<(Vec<u32>, Vec<String>), SpecError> {
    let mut gids = Vec::new();
    let mut names = Vec::new();
    for g in groups {
        if let Ok(gid) = g.parse::<u32>() {
            gids.push(gid);
        } else if g.is_empty() || g.contains([',', ':', '\0']) || g.chars().any(char::is_whitespace)
        {
            return Err(invalid(
                "group_add",
                g,
                "expected a group name or a numeric gid",
            ));
        } else {
            names.push(g.clone());
        }
    }
    Ok((gids, names))
}

/// `TERM`, `SIGTERM`, `15`, `SIGRTMIN+3` → `SIGTERM` / `SIGRTMIN+3` form.
fn normalize_signal(s: &str) -> Result<String, SpecError> {
    let upper = s.to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return match nix::sys::signal::Signal::try_from(n) {
            Ok(sig) => Ok(sig.as_str().to_owned()),
            Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) => {
                Ok(format!("SIGRTMIN+{}", n - libc::SIGRTMIN()))
            }
            Err(_) => Err(invalid("stop signal", s, "not a signal number")),
        };
    }
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(off) = name.strip_prefix("SIGRTMIN+") {
        return match off.parse::<i32>() {
            Ok(n) if n >= 0 && libc::SIGRTMIN() + n <= libc::SIGRTMAX() => Ok(name),
            _ => Err(invalid("stop signal", s, "real-time signal out of range")),
        };
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig.as_str().to_owned())
        .map_err(|_| invalid("stop signal", s, "unknown signal name"))
}

fn validate_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            h,
            "expected an RFC 1123 host name (letters, digits, '-', dot-separated labels)",
        ))
    }
}

/// pid, ipc, uts, mount and network namespaces, and cgroup on a cgroup v2 host.
fn namespaces(host_network: bool) -> Vec<oci_spec::runtime::LinuxNamespace> {
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
    ];
    if !host_network {
        types.push(LinuxNamespaceType::Uts);
        types.push(LinuxNamespaceType::Network);
    }
    if cgroup_v2_host() {
        types.push(LinuxNamespaceType::Cgroup);
    }
    types
        .into_iter()
        .map(|typ| {
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .expect("a namespace with a type is complete")
        })
        .collect()
}

/// True if /sys/fs/cgroup is a cgroup2 mount (a unified host).
fn cgroup_v2_host() -> bool {
    rustix::fs::statfs("/sys/fs/cgroup")
        .map(|s| s.f_type == libc::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Parses a size such as `512m`, `1g`, `1.5GiB`, `64k` or `1048576` into bytes (binary units).
pub fn parse_bytes(s: &str) -> Result<i64, SpecError> {
    let bad = |reason: &str| invalid("size", s, reason);
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| bad("expected a number with an optional unit (b, k, m, g, t)"))?;
    let unit = unit.trim();
    let mult: f64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad("unknown unit (use b, k, m, g or t)")),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod runc_tests;
#[cfg(test)]
mod tests;
