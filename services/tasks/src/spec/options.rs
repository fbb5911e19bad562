//! What a user asks for when creating a container: the input of [`super::build`], mirroring
//! the flags of `docker run`.

use std::collections::BTreeMap;

/// User options for a container, applied on top of the image's configuration.
///
/// Every field defaults to "what the image says" or Docker's default. Sizes are in bytes;
/// [`super::parse_bytes`] turns `512m`-style strings into bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// Entrypoint override: `None` keeps the image's, `Some(vec![])` clears it. Setting it
    /// also drops the image's Cmd (as Docker does).
    pub entrypoint: Option<Vec<String>>,
    /// Command (arguments to the entrypoint); empty keeps the image's Cmd.
    pub cmd: Vec<String>,
    /// Environment: `KEY=VALUE` sets, a bare `KEY` removes the image's value. Wins over the image.
    pub env: Vec<String>,
    /// Working directory (absolute); `None` keeps the image's, default `/`.
    pub workdir: Option<String>,
    /// User: `uid`, `uid:gid`, `name`, `name:group`; `None` keeps the image's.
    pub user: Option<String>,
    /// Hostname; `None` leaves it to the tasks service (the short container id).
    pub hostname: Option<String>,
    /// NIS domain name.
    pub domainname: Option<String>,
    /// Container labels, recorded as spec annotations (over the image's labels).
    pub labels: BTreeMap<String, String>,
    /// Allocate a terminal for the init process.
    pub tty: bool,
    /// Keep stdin open (recorded as the annotation `berth.io/stdin-open`).
    pub stdin_open: bool,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// All capabilities, no seccomp, all host devices, no masked or read-only paths.
    pub privileged: bool,
    /// Capabilities to add (`NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities to drop (same syntax; `ALL` drops every default one).
    pub cap_drop: Vec<String>,
    /// Security options as for `docker run --security-opt`: `no-new-privileges[:true|false]`,
    /// `seccomp=unconfined`, or `seccomp=<profile JSON>` (the client reads the profile file and
    /// passes its contents, as Docker's CLI does); `apparmor=unconfined` and `label=disable` are
    /// accepted (berth applies no AppArmor or SELinux profile).
    pub security_opt: Vec<String>,
    /// Namespaced sysctls (`net.*`, `kernel.msg*`, `kernel.sem`, `kernel.shm*`, `fs.mqueue.*`).
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits as `name=soft[:hard]` (`nofile=1024:2048`); name with or without `RLIMIT_`.
    pub ulimits: Vec<String>,
    /// Memory limit in bytes (at least 6 MiB).
    pub memory: Option<i64>,
    /// Memory soft limit in bytes.
    pub memory_reservation: Option<i64>,
    /// Memory + swap limit in bytes; -1 = unlimited swap; must be at least `memory`.
    pub memory_swap: Option<i64>,
    /// Relative CPU weight (cgroup v1 shares, 2..=262144).
    pub cpu_shares: Option<u64>,
    /// Number of CPUs (e.g. 1.5), turned into a CFS quota over a 100 ms period.
    pub cpus: Option<f64>,
    /// CPUs the container may run on (`0-1`, `0,2`).
    pub cpuset_cpus: Option<String>,
    /// Maximum number of processes; 0 or -1 = unlimited.
    pub pids_limit: Option<i64>,
    /// Block IO weight (10..=1000).
    pub blkio_weight: Option<u16>,
    /// OOM score adjustment (-1000..=1000).
    pub oom_score_adj: Option<i32>,
    /// Bind, volume and tmpfs mounts.
    pub mounts: Vec<MountSpec>,
    /// Run an init process as PID 1 (not supported yet: rejected when set).
    pub init: bool,
    /// Signal that stops the container (`SIGTERM`, `TERM`, `15`); `None` keeps the image's.
    pub stop_signal: Option<String>,
    /// Host devices: `host path[:container path[:permissions]]`, permissions from `rwm`.
    pub devices: Vec<String>,
    /// Additional groups of the process (numeric gids, or names resolved in the image).
    pub group_add: Vec<String>,
    /// Size of /dev/shm in bytes (default 64 MiB).
    pub shm_size: Option<i64>,
    /// Share the host's network namespace (`--network host`): the spec gets no network
    /// namespace and keeps the host's hostname.
    pub host_network: bool,
}

/// A mount asked for by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A host path bind-mounted into the container.
    Bind {
        /// Host path (absolute; must exist when the task is created).
        source: String,
        /// Path in the container (absolute).
        target: String,
        /// Mount read-only.
        readonly: bool,
        /// Propagation: `private`, `rprivate` (default), `shared`, `rshared`, `slave`, `rslave`.
        propagation: Option<String>,
    },
    /// A named or anonymous volume.
    Volume {
        /// Volume name; empty = a new anonymous volume.
        name: String,
        /// Path in the container (absolute).
        target: String,
        /// Mount read-only.
        readonly: bool,
        /// Do not fill a new volume with the image's content at `target`.
        nocopy: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Path in the container (absolute).
        target: String,
        /// Size limit in bytes (`None` = the kernel's default, half of RAM).
        size: Option<i64>,
        /// Permission bits of the tmpfs root (`None` = 1777).
        mode: Option<u32>,
    },
}

impl MountSpec {
    /// The path in the container.
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Bind { target, .. }
            | MountSpec::Volume { target, .. }
            | MountSpec::Tmpfs { target, .. } => target,
        }
    }
}
