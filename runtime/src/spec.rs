//! The OCI runtime spec (config.json) as the runtime reads it, and its validation.
//!
//! Only the Linux parts the runtime implements are modelled; unknown fields are ignored.
//! Everything that can be checked without touching the system is checked by [`Spec::load`]
//! and [`Process::validate`], so bad input fails before anything is created.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::caps;
use crate::error::{Error, Result};

/// A whole config.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The spec version (required).
    pub oci_version: String,
    /// The container's init process.
    pub process: Option<Process>,
    /// The root filesystem.
    pub root: Option<Root>,
    /// Hostname set in a new UTS namespace.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Domain name set in a new UTS namespace.
    #[serde(default)]
    pub domainname: Option<String>,
    /// Mounts, in order.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Linux specific configuration.
    #[serde(default)]
    pub linux: Linux,
    /// Free-form annotations, reported by `state`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A process: the init process of a spec, or an exec's `--process`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Runs on a pty sent to the console socket.
    #[serde(default)]
    pub terminal: bool,
    /// The pty's initial size.
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    /// Who the process runs as.
    #[serde(default)]
    pub user: User,
    /// argv; the first is looked up in the container's PATH.
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    #[serde(default)]
    pub cwd: String,
    /// Capability sets (names such as `CAP_CHOWN`).
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Sets `PR_SET_NO_NEW_PRIVS`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// oom_score_adj (this host only lets it be raised: lower values are clamped).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

/// A terminal size.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct ConsoleSize {
    /// Rows.
    pub height: u16,
    /// Columns.
    pub width: u16,
}

/// The user of a process.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// File mode creation mask (default 0022).
    #[serde(default)]
    pub umask: Option<u32>,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// A user name, resolved in the container's /etc/passwd (must exist there).
    #[serde(default)]
    pub username: Option<String>,
}

/// The five capability sets, as names.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct Capabilities {
    /// Bounding set.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// Effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// Inheritable set.
    #[serde(default)]
    pub inheritable: Vec<String>,
    /// Permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
    /// Ambient set.
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// One resource limit.
#[derive(Debug, Deserialize, Clone)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE` etc.
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// The root filesystem.
#[derive(Debug, Deserialize)]
pub struct Root {
    /// Absolute, or relative to the bundle.
    pub path: PathBuf,
    /// Mount it read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// One mount.
#[derive(Debug, Deserialize, Clone)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Filesystem type (`bind` for bind mounts).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Device, host path or filesystem name.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// fstab-style options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// The `linux` object.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// User namespace uid mappings.
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    /// User namespace gid mappings.
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
    /// Namespaced sysctls.
    #[serde(default)]
    pub sysctl: HashMap<String, String>,
    /// cgroup limits.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// cgroup path: absolute from each hierarchy's root, or relative to it.
    #[serde(default)]
    pub cgroups_path: Option<String>,
    /// Namespaces to create (no path) or join (path).
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Device nodes to create.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Seccomp profile.
    #[serde(default)]
    pub seccomp: Option<Seccomp>,
    /// Propagation of the rootfs mount: private (default), rprivate, slave, rslave, shared, rshared.
    #[serde(default)]
    pub rootfs_propagation: Option<String>,
    /// Paths made unreadable.
    #[serde(default)]
    pub masked_paths: Vec<PathBuf>,
    /// Paths made read-only.
    #[serde(default)]
    pub readonly_paths: Vec<PathBuf>,
}

/// A user namespace id mapping.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    /// First id inside.
    #[serde(rename = "containerID")]
    pub container_id: u32,
    /// First id outside.
    #[serde(rename = "hostID")]
    pub host_id: u32,
    /// How many.
    pub size: u32,
}

/// Namespace kinds.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    /// User namespace (first to be joined).
    User,
    /// Mount namespace.
    Mount,
    /// Pid namespace.
    Pid,
    /// Network namespace.
    Network,
    /// UTS namespace.
    Uts,
    /// IPC namespace.
    Ipc,
    /// cgroup namespace.
    Cgroup,
    /// Time namespace.
    Time,
}

impl NsKind {
    /// The CLONE_NEW* flag.
    pub fn flag(self) -> libc::c_int {
        match self {
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Mount => libc::CLONE_NEWNS,
            NsKind::Pid => libc::CLONE_NEWPID,
            NsKind::Network => libc::CLONE_NEWNET,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
            NsKind::Time => 0x80, // CLONE_NEWTIME
        }
    }

    /// The file name under /proc/PID/ns.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::User => "user",
            NsKind::Mount => "mnt",
            NsKind::Pid => "pid",
            NsKind::Network => "net",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Cgroup => "cgroup",
            NsKind::Time => "time",
        }
    }
}

/// A namespace entry.
#[derive(Debug, Deserialize, Clone)]
pub struct Namespace {
    /// Kind.
    #[serde(rename = "type")]
    pub kind: NsKind,
    /// Join the namespace at this path instead of creating one.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// A device node to create in the container.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// `c`, `u`, `b` or `p`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path inside the container.
    pub path: PathBuf,
    /// Major number.
    #[serde(default)]
    pub major: i64,
    /// Minor number.
    #[serde(default)]
    pub minor: i64,
    /// Permission bits.
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// Owner.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// cgroup limits (`linux.resources`).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Device cgroup rules.
    #[serde(default)]
    pub devices: Vec<DeviceRule>,
    /// Memory.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// CPU.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// Pids.
    #[serde(default)]
    pub pids: Option<Pids>,
    /// Block IO.
    #[serde(default, rename = "blockIO")]
    pub block_io: Option<BlockIo>,
    /// Raw cgroup v2 files.
    #[serde(default)]
    pub unified: BTreeMap<String, String>,
}

/// A device cgroup rule.
#[derive(Debug, Deserialize, Clone)]
pub struct DeviceRule {
    /// Allow (true) or deny.
    pub allow: bool,
    /// `a`, `c` or `b`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Major (None = any).
    #[serde(default)]
    pub major: Option<i64>,
    /// Minor (None = any).
    #[serde(default)]
    pub minor: Option<i64>,
    /// Access: any of `rwm`.
    #[serde(default)]
    pub access: Option<String>,
}

/// Memory limits.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct Memory {
    /// Hard limit in bytes.
    pub limit: Option<i64>,
    /// Soft limit in bytes.
    pub reservation: Option<i64>,
    /// Memory + swap limit in bytes.
    pub swap: Option<i64>,
    /// Swappiness (v1).
    pub swappiness: Option<u64>,
    /// Disable the OOM killer (v1).
    #[serde(rename = "disableOOMKiller")]
    pub disable_oom_killer: Option<bool>,
}

/// CPU limits.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// Relative weight (v1 shares; v2 weight is derived).
    pub shares: Option<u64>,
    /// CFS quota in µs per period.
    pub quota: Option<i64>,
    /// CFS period in µs.
    pub period: Option<u64>,
    /// cpuset.cpus.
    pub cpus: Option<String>,
    /// cpuset.mems.
    pub mems: Option<String>,
}

/// Pids limit.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct Pids {
    /// Maximum number of tasks (≤0: unlimited).
    pub limit: i64,
}

/// Block IO weight.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct BlockIo {
    /// 10..1000.
    pub weight: Option<u16>,
}

/// A seccomp profile.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    /// Action when no rule matches.
    pub default_action: SeccompAction,
    /// errno for a default action of SCMP_ACT_ERRNO (default EPERM).
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// SCMP_ARCH_* names; only the native architecture is filtered, others are denied.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// Seccomp actions.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum SeccompAction {
    /// Kill the thread.
    #[serde(rename = "SCMP_ACT_KILL", alias = "SCMP_ACT_KILL_THREAD")]
    Kill,
    /// Kill the process.
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    /// SIGSYS.
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    /// Fail with an errno.
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    /// Notify a tracer (ENOSYS without one).
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    /// Allow and log.
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    /// Allow.
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
}

/// One seccomp rule.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// System call names.
    pub names: Vec<String>,
    /// Action when matched.
    pub action: SeccompAction,
    /// errno for SCMP_ACT_ERRNO (default EPERM).
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Argument conditions (all must hold).
    #[serde(default)]
    pub args: Vec<SeccompArg>,
}

/// An argument condition.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    /// Argument index 0..5.
    pub index: u32,
    /// Value compared.
    pub value: u64,
    /// Second value (the expected result for SCMP_CMP_MASKED_EQ).
    #[serde(default)]
    pub value_two: u64,
    /// Comparison.
    pub op: SeccompOp,
}

/// Seccomp argument comparisons.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum SeccompOp {
    /// !=
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    /// <
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    /// <=
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    /// ==
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    /// >=
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    /// >
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    /// (arg & value) == value_two
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// Rlimit names the kernel knows.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Spec {
    /// Reads `bundle/config.json` and validates it.
    pub fn load(bundle: &Path) -> Result<Spec> {
        let path = bundle.join("config.json");
        let data = std::fs::read(&path).map_err(Error::io(&path))?;
        let de = &mut serde_json::Deserializer::from_slice(&data);
        let spec: Spec = serde_path_to_error::deserialize(de)
            .map_err(|e| invalid(e.path().to_string(), format!("config.json: {}", e.inner())))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The root filesystem directory.
    pub fn rootfs(&self, bundle: &Path) -> Result<PathBuf> {
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| invalid("root", "missing: the spec names no root filesystem"))?;
        let path = bundle.join(&root.path);
        if !path.is_dir() {
            return Err(invalid(
                "root.path",
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(path)
    }

    /// Whether a namespace of `kind` is created or joined.
    pub fn namespace(&self, kind: NsKind) -> Option<&Namespace> {
        self.linux.namespaces.iter().find(|n| n.kind == kind)
    }

    fn validate(&self) -> Result<()> {
        if self.root.is_none() {
            return Err(invalid(
                "root",
                "missing: the spec names no root filesystem",
            ));
        }
        let process = self
            .process
            .as_ref()
            .ok_or_else(|| invalid("process", "missing"))?;
        process.validate("process")?;
        let mut seen = Vec::new();
        for ns in &self.linux.namespaces {
            if seen.contains(&ns.kind) {
                return Err(invalid(
                    "linux.namespaces",
                    format!("{:?} namespace listed twice", ns.kind),
                ));
            }
            seen.push(ns.kind);
            if let Some(p) = &ns.path
                && !p.exists()
            {
                return Err(invalid(
                    "linux.namespaces",
                    format!(
                        "{:?} namespace path {} does not exist",
                        ns.kind,
                        p.display()
                    ),
                ));
            }
        }
        let userns = self
            .namespace(NsKind::User)
            .is_some_and(|n| n.path.is_none());
        if userns && (self.linux.uid_mappings.is_empty() || self.linux.gid_mappings.is_empty()) {
            return Err(invalid(
                "linux.uidMappings",
                "a new user namespace needs uid and gid mappings",
            ));
        }
        if !userns && (!self.linux.uid_mappings.is_empty() || !self.linux.gid_mappings.is_empty()) {
            return Err(invalid(
                "linux.uidMappings",
                "mappings given without a new user namespace",
            ));
        }
        check_mappings("linux.uidMappings", &self.linux.uid_mappings)?;
        check_mappings("linux.gidMappings", &self.linux.gid_mappings)?;
        if (self.hostname.as_deref().is_some_and(|h| !h.is_empty())
            || self.domainname.as_deref().is_some_and(|h| !h.is_empty()))
            && self.namespace(NsKind::Uts).is_none_or(|n| n.path.is_some())
        {
            return Err(invalid(
                "hostname",
                "setting a hostname needs a new uts namespace",
            ));
        }
        if let Some(p) = &self.linux.rootfs_propagation
            && !matches!(
                p.as_str(),
                "" | "private"
                    | "rprivate"
                    | "slave"
                    | "rslave"
                    | "shared"
                    | "rshared"
                    | "unbindable"
                    | "runbindable"
            )
        {
            return Err(invalid(
                "linux.rootfsPropagation",
                format!("unknown propagation {p:?}"),
            ));
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if !m.destination.is_absolute() {
                return Err(invalid(
                    format!("mounts[{i}].destination"),
                    format!("{} is not absolute", m.destination.display()),
                ));
            }
            crate::mounts::parse_options(&m.options).map_err(|o| {
                invalid(
                    format!("mounts[{i}].options"),
                    format!("unknown option {o:?}"),
                )
            })?;
        }
        for (i, d) in self.linux.devices.iter().enumerate() {
            if !matches!(d.kind.as_str(), "c" | "u" | "b" | "p") {
                return Err(invalid(
                    format!("linux.devices[{i}].type"),
                    format!("{:?} is not one of c, u, b, p", d.kind),
                ));
            }
            if !d.path.is_absolute() {
                return Err(invalid(
                    format!("linux.devices[{i}].path"),
                    format!("{} is not absolute", d.path.display()),
                ));
            }
        }
        for k in self.linux.sysctl.keys() {
            crate::init::check_sysctl(k, self).map_err(|r| invalid("linux.sysctl", r))?;
        }
        if let Some(s) = &self.linux.seccomp {
            crate::seccomp::compile(s).map_err(|r| invalid("linux.seccomp", r))?;
        }
        Ok(())
    }
}

fn check_mappings(field: &str, maps: &[IdMapping]) -> Result<()> {
    let mut inside: Vec<(u64, u64)> = Vec::new();
    let mut outside: Vec<(u64, u64)> = Vec::new();
    for m in maps {
        if m.size == 0 {
            return Err(invalid(field, "a mapping of size 0"));
        }
        let a = (m.container_id as u64, m.container_id as u64 + m.size as u64);
        let b = (m.host_id as u64, m.host_id as u64 + m.size as u64);
        for (list, r, what) in [(&mut inside, a, "container"), (&mut outside, b, "host")] {
            if list.iter().any(|o| r.0 < o.1 && o.0 < r.1) {
                return Err(invalid(
                    field,
                    format!("{what} ids {}..{} overlap another mapping", r.0, r.1 - 1),
                ));
            }
            list.push(r);
        }
    }
    Ok(())
}

impl Process {
    /// Checks what can be checked without the rootfs.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.args.is_empty() {
            return Err(invalid(format!("{field}.args"), "empty"));
        }
        if !self.cwd.starts_with('/') {
            return Err(invalid(
                format!("{field}.cwd"),
                format!("{:?} is not absolute", self.cwd),
            ));
        }
        if let Some(c) = &self.capabilities {
            for (set, names) in [
                ("bounding", &c.bounding),
                ("effective", &c.effective),
                ("inheritable", &c.inheritable),
                ("permitted", &c.permitted),
                ("ambient", &c.ambient),
            ] {
                for n in names {
                    if caps::number(n).is_none() {
                        return Err(invalid(
                            format!("{field}.capabilities.{set}"),
                            format!("unknown capability {n:?}"),
                        ));
                    }
                }
            }
        }
        for r in &self.rlimits {
            if rlimit_resource(&r.kind).is_none() {
                return Err(invalid(
                    format!("{field}.rlimits"),
                    format!("unknown rlimit {:?}", r.kind),
                ));
            }
            if r.soft > r.hard {
                return Err(invalid(
                    format!("{field}.rlimits"),
                    format!(
                        "{}: soft limit {} above hard limit {}",
                        r.kind, r.soft, r.hard
                    ),
                ));
            }
        }
        for e in &self.env {
            if !e.contains('=') {
                return Err(invalid(
                    format!("{field}.env"),
                    format!("{e:?} is not KEY=value"),
                ));
            }
        }
        Ok(())
    }

    /// The value of `PATH` in the process's environment.
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_maps_are_refused() {
        let m = |c, h, s| IdMapping {
            container_id: c,
            host_id: h,
            size: s,
        };
        assert!(check_mappings("x", &[m(0, 1000, 10), m(10, 2000, 5)]).is_ok());
        assert!(check_mappings("x", &[m(0, 1000, 10), m(5, 2000, 5)]).is_err());
        assert!(check_mappings("x", &[m(0, 1000, 10), m(10, 1005, 5)]).is_err());
    }
}
