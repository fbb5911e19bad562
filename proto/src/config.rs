//! The one configuration file every berth service reads, plus its flag and environment overrides.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config`, `BERTH_CONFIG`, or
//! `/etc/berth/config.toml` when it exists), then `BERTH_ROOT`/`BERTH_STATE`, then flags. Every
//! key is documented in `deploy/config.toml`. An unknown key or a bad value is an error that names
//! the key and where it came from; nothing is created before the whole configuration is valid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration file is looked for when neither `--config` nor `BERTH_CONFIG` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/berth/config.toml";
/// Default persistent root: each service owns `<root>/<service>/`.
pub const DEFAULT_ROOT: &str = "/var/lib/berth";
/// Default state directory: sockets and shim state.
pub const DEFAULT_STATE: &str = "/run/berth";

/// A configuration problem, naming the key (or flag) and the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value parsed but is not acceptable.
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        origin: String,
        key: &'static str,
        reason: String,
    },
}

/// Flags shared by every berth service binary and berthd.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML); default /etc/berth/config.toml when it exists.
    #[arg(long, env = "BERTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Persistent root directory (overrides `root`).
    #[arg(long, env = "BERTH_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// State directory for sockets (overrides `state`).
    #[arg(long, env = "BERTH_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Log format: pretty or json (overrides `log.format`).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `berth=debug` (overrides `log.level`).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// OTLP/gRPC endpoint for trace export, e.g. http://127.0.0.1:4317 (overrides `otlp.endpoint`).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// The validated configuration of a berth process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data root; each service owns `<root>/<service>/`.
    pub root: PathBuf,
    /// Runtime state directory: sockets, shim state.
    pub state: PathBuf,
    /// Group that owns the sockets (name or numeric gid); the process's group when unset.
    pub socket_group: Option<String>,
    /// Seconds in-flight RPCs get to finish after SIGTERM/SIGINT before the process exits.
    pub shutdown_timeout: u64,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry trace export.
    pub otlp: OtlpConfig,
    /// The network service.
    pub network: NetworkConfig,
    /// The snapshots service.
    pub snapshots: SnapshotsConfig,
    /// The tasks service.
    pub tasks: TasksConfig,
    /// The images service.
    pub images: ImagesConfig,
    /// The cri service.
    pub cri: CriConfig,
}

/// CRI facade settings (`[cri]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    /// Address the streaming server (exec, attach, port-forward URLs) listens on.
    pub stream_address: String,
    /// Port of the streaming server; 0 = any free port.
    pub stream_port: u16,
    /// Seconds a PullImage may go without receiving a byte before it fails (time spent
    /// unpacking layers does not count); 0 = no limit.
    pub pull_progress_timeout: u64,
    /// Runtime of pods whose runtime handler is empty: "runc", "crun", "builtin", or empty
    /// for `[tasks] runtime`.
    pub default_runtime: String,
    /// The berth network pod sandboxes join: "bridge" (the predefined network) or the name of
    /// a network created beforehand, e.g. one with driver "cni" to run CNI plugins.
    pub pod_network: String,
    /// Cgroup driver reported to the kubelet: "cgroupfs" or "systemd".
    pub cgroup_driver: String,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            stream_address: "127.0.0.1".into(),
            stream_port: 0,
            pull_progress_timeout: 60,
            default_runtime: String::new(),
            pod_network: "bridge".into(),
            cgroup_driver: "cgroupfs".into(),
        }
    }
}

impl CriConfig {
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.stream_address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                origin,
                "cri.stream_address",
                format!("{:?} is not an IP address", self.stream_address),
            ));
        }
        if self.pull_progress_timeout > 86_400 {
            return Err(invalid(
                origin,
                "cri.pull_progress_timeout",
                format!(
                    "{} is out of range 0..=86400 seconds",
                    self.pull_progress_timeout
                ),
            ));
        }
        if !matches!(
            self.default_runtime.as_str(),
            "" | "runc" | "crun" | "builtin"
        ) {
            return Err(invalid(
                origin,
                "cri.default_runtime",
                format!(
                    "{:?} is not a runtime: use runc, crun, builtin or \"\"",
                    self.default_runtime
                ),
            ));
        }
        if self.pod_network.is_empty() {
            return Err(invalid(
                origin,
                "cri.pod_network",
                "is empty: name a berth network, e.g. \"bridge\"".into(),
            ));
        }
        if !matches!(self.cgroup_driver.as_str(), "cgroupfs" | "systemd") {
            return Err(invalid(
                origin,
                "cri.cgroup_driver",
                format!(
                    "{:?} is not a cgroup driver: use cgroupfs or systemd",
                    self.cgroup_driver
                ),
            ));
        }
        Ok(())
    }
}

/// Images service settings (`[images]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Registries (`host[:port]`) reached over plain HTTP; loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// Mirrors per registry (`"docker.io" = ["mirror.example:5000"]`), tried in order before it.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Largest uncompressed size of one layer, in bytes: a layer that expands beyond it is
    /// refused while it is unpacked.
    pub max_layer_size: u64,
    /// Docker-style credentials file used when a request carries no credentials; `berthctl
    /// login` writes it. Unset: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub credentials_file: Option<PathBuf>,
    /// Seconds a registry may stay silent during a request (connect, or mid-transfer) before
    /// the transfer fails.
    pub read_timeout: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            insecure_registries: Vec::new(),
            mirrors: std::collections::BTreeMap::new(),
            max_layer_size: 64 << 30,
            credentials_file: None,
            read_timeout: 60,
        }
    }
}

impl ImagesConfig {
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let host_ok = |h: &str| {
            !h.is_empty()
                && !h.contains("://")
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        };
        if let Some(bad) = self.insecure_registries.iter().find(|h| !host_ok(h)) {
            return Err(invalid(
                origin,
                "images.insecure_registries",
                format!("{bad:?} is not a registry host[:port] (no scheme, no path)"),
            ));
        }
        for (registry, mirrors) in &self.mirrors {
            if let Some(bad) = std::iter::once(registry)
                .chain(mirrors)
                .find(|h| !host_ok(h))
            {
                return Err(invalid(
                    origin,
                    "images.mirrors",
                    format!("{bad:?} is not a registry host[:port] (no scheme, no path)"),
                ));
            }
        }
        if self.max_layer_size == 0 {
            return Err(invalid(
                origin,
                "images.max_layer_size",
                "must be more than 0 bytes".into(),
            ));
        }
        if !(1..=3600).contains(&self.read_timeout) {
            return Err(invalid(
                origin,
                "images.read_timeout",
                format!("{} is out of range 1..=3600 seconds", self.read_timeout),
            ));
        }
        if let Some(path) = &self.credentials_file
            && !path.is_absolute()
        {
            return Err(invalid(
                origin,
                "images.credentials_file",
                format!("{} is not an absolute path", path.display()),
            ));
        }
        Ok(())
    }
}

/// Tasks service settings (`[tasks]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Runtime of containers whose record names none: "runc", "crun" or "builtin".
    pub runtime: String,
    /// Cgroup under which containers whose spec sets no cgroupsPath get theirs
    /// (`/<cgroup_parent>/<namespace>-<id>`).
    pub cgroup_parent: String,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            runtime: "builtin".into(),
            cgroup_parent: "berth".into(),
        }
    }
}

impl TasksConfig {
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if !matches!(self.runtime.as_str(), "runc" | "crun" | "builtin") {
            return Err(invalid(
                origin,
                "tasks.runtime",
                format!(
                    "{:?} is not a runtime: use runc, crun or builtin",
                    self.runtime
                ),
            ));
        }
        let ok = !self.cgroup_parent.is_empty()
            && self.cgroup_parent.len() <= 64
            && self
                .cgroup_parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !self.cgroup_parent.starts_with('.');
        if !ok {
            return Err(invalid(
                origin,
                "tasks.cgroup_parent",
                format!(
                    "{:?} is not a cgroup name (1-64 letters, digits, '-', '_', '.')",
                    self.cgroup_parent
                ),
            ));
        }
        Ok(())
    }
}

/// Logging settings (`[log]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `berth_api=debug,info`.
    pub level: String,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Trace export settings (`[otlp]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC collector endpoint (`http://host:port`); no export when unset.
    pub endpoint: Option<String>,
}

/// Snapshots service settings (`[snapshots]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// Which snapshotter stores layers and container filesystems.
    pub driver: SnapshotDriver,
}

/// A snapshotter (`[snapshots] driver`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotDriver {
    /// overlayfs layers: nothing is copied.
    #[default]
    Overlay,
    /// Full copies of the parent, for filesystems without overlay support.
    Copy,
}

/// Network service settings (`[network]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Bridge interface of the predefined network `bridge` (at most 15 characters).
    pub default_bridge: String,
    /// Pools that subnets are picked from when a network names none.
    pub pools: Vec<AddressPool>,
    /// MTU of bridges and container interfaces.
    pub mtu: u32,
    /// Name of the nftables table (family `ip`) that berth alone creates and removes.
    pub nft_table: String,
    /// Servers (`ip` or `ip:port`) the embedded DNS resolver forwards names it does not know to;
    /// empty: it answers REFUSED and nothing is forwarded.
    pub dns_upstreams: Vec<String>,
    /// Directories searched for CNI plugin binaries, in order.
    pub cni_plugin_dirs: Vec<PathBuf>,
}

/// A pool of subnets: `base` split into subnets of prefix length `size`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPool {
    /// IPv4 CIDR the subnets are carved from, e.g. `172.17.0.0/12`.
    pub base: String,
    /// Prefix length of each subnet, e.g. 16.
    pub size: u8,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            default_bridge: "berth0".into(),
            pools: vec![
                AddressPool {
                    base: "172.17.0.0/16".into(),
                    size: 16,
                },
                AddressPool {
                    base: "172.18.0.0/15".into(),
                    size: 16,
                },
                AddressPool {
                    base: "172.20.0.0/14".into(),
                    size: 16,
                },
                AddressPool {
                    base: "172.24.0.0/14".into(),
                    size: 16,
                },
                AddressPool {
                    base: "172.28.0.0/14".into(),
                    size: 16,
                },
                AddressPool {
                    base: "192.168.0.0/16".into(),
                    size: 20,
                },
            ],
            mtu: 1500,
            nft_table: "berth".into(),
            dns_upstreams: Vec::new(),
            cni_plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        }
    }
}

impl NetworkConfig {
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let name_ok = |n: &str, max: usize, extra: &[u8]| {
            !n.is_empty()
                && n.len() <= max
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        };
        if !name_ok(&self.default_bridge, 15, b"-_.") {
            return Err(invalid(
                origin,
                "network.default_bridge",
                format!(
                    "{:?} is not an interface name (1-15 letters, digits, '-', '_', '.')",
                    self.default_bridge
                ),
            ));
        }
        if self.pools.is_empty() {
            return Err(invalid(origin, "network.pools", "no pool given".into()));
        }
        for pool in &self.pools {
            let prefix = parse_cidr4(&pool.base).map_err(|reason| {
                invalid(
                    origin,
                    "network.pools",
                    format!("base {:?}: {reason}", pool.base),
                )
            })?;
            if pool.size < prefix || pool.size > 30 {
                return Err(invalid(
                    origin,
                    "network.pools",
                    format!(
                        "size {} of pool {} must be between {prefix} and 30",
                        pool.size, pool.base
                    ),
                ));
            }
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(invalid(
                origin,
                "network.mtu",
                format!("{} is out of range 576..=65535", self.mtu),
            ));
        }
        if !name_ok(&self.nft_table, 32, b"_") {
            return Err(invalid(
                origin,
                "network.nft_table",
                format!(
                    "{:?} is not a table name (1-32 letters, digits, '_')",
                    self.nft_table
                ),
            ));
        }
        for server in &self.dns_upstreams {
            let ok = server.parse::<std::net::SocketAddr>().is_ok()
                || server.parse::<std::net::IpAddr>().is_ok();
            if !ok {
                return Err(invalid(
                    origin,
                    "network.dns_upstreams",
                    format!("{server:?} is not an address or address:port"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks an IPv4 CIDR (`a.b.c.d/n`, no host bits set) and returns its prefix length.
fn parse_cidr4(text: &str) -> Result<u8, String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| "not in a.b.c.d/n notation".to_owned())?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| format!("bad address {addr:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("bad prefix length {len:?}"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    if u32::from(addr) & !mask != 0 {
        return Err("host bits are set".into());
    }
    Ok(len)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            socket_group: None,
            shutdown_timeout: 10,
            log: LogConfig::default(),
            otlp: OtlpConfig::default(),
            network: NetworkConfig::default(),
            snapshots: SnapshotsConfig::default(),
            tasks: TasksConfig::default(),
            images: ImagesConfig::default(),
            cri: CriConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads the file named by `args` (or the default file when present) and applies overrides.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let path = match &args.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut config = match &path {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        config.apply(args)?;
        Ok(config)
    }

    /// Parses and validates one TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let de = toml::Deserializer::parse(&text).map_err(|e| parse_error(one_line(&e, &text)))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let reason = one_line(e.inner(), &text);
            parse_error(match key.as_str() {
                "." | "" => reason,
                _ => format!("key `{key}`: {reason}"),
            })
        })?;
        config.validate(&format!("config {}", path.display()))?;
        Ok(config)
    }

    fn apply(&mut self, args: &ConfigArgs) -> Result<(), ConfigError> {
        let mut changed = Config {
            root: args.root.clone().unwrap_or_else(|| self.root.clone()),
            state: args.state.clone().unwrap_or_else(|| self.state.clone()),
            ..self.clone()
        };
        if let Some(format) = &args.log_format {
            changed.log.format = match format.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "--log-format",
                        "log.format",
                        format!("unknown format {other:?}, expected pretty or json"),
                    ));
                }
            };
        }
        if let Some(level) = &args.log_level {
            changed.log.level = level.clone();
        }
        if let Some(endpoint) = &args.otlp_endpoint {
            changed.otlp.endpoint = Some(endpoint.clone()).filter(|e| !e.is_empty());
        }
        changed.validate("flags and environment")?;
        *self = changed;
        Ok(())
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        for (key, dir) in [("root", &self.root), ("state", &self.state)] {
            if !dir.is_absolute() {
                return Err(invalid(
                    origin,
                    key,
                    format!("{} is not an absolute path", dir.display()),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                origin,
                "log.level",
                format!("bad filter {:?}: {e}", self.log.level),
            ));
        }
        if let Some(endpoint) = &self.otlp.endpoint {
            let ok = endpoint
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
            if ok.is_none() {
                return Err(invalid(
                    origin,
                    "otlp.endpoint",
                    format!("{endpoint:?} is not an http(s)://host:port URL"),
                ));
            }
        }
        if let Some(group) = &self.socket_group {
            resolve_group(group).map_err(|reason| invalid(origin, "socket_group", reason))?;
        }
        self.network.validate(origin)?;
        self.tasks.validate(origin)?;
        self.images.validate(origin)?;
        self.cri.validate(origin)?;
        if !(1..=3600).contains(&self.shutdown_timeout) {
            return Err(invalid(
                origin,
                "shutdown_timeout",
                format!("{} is out of range 1..=3600 seconds", self.shutdown_timeout),
            ));
        }
        Ok(())
    }

    /// The directory a service owns under the root.
    pub fn service_root(&self, service: &str) -> PathBuf {
        self.root.join(service)
    }

    /// How long in-flight RPCs may run after a shutdown signal.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    /// The gid that should own sockets, if one is configured.
    pub fn socket_gid(&self) -> Option<nix::unistd::Gid> {
        self.socket_group
            .as_deref()
            .and_then(|g| resolve_group(g).ok())
    }
}

fn invalid(origin: &str, key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        key,
        reason,
    }
}

/// Resolves a group name or numeric gid.
fn resolve_group(group: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(gid));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("no group named {group:?}")),
        Err(e) => Err(format!("looking up group {group:?}: {e}")),
    }
}

/// toml's messages span several lines (a source excerpt); keep the line number and the reason.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let reason = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!("line {line}: {reason}")
        }
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::from_file(&path)
    }

    #[test]
    fn defaults_when_empty() {
        let c = parse("").unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.log.format, LogFormat::Pretty);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse("root = \"/x\"\n[log]\nformatt = \"json\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("formatt"), "{err}");
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("root = \"relative\"", "`root`"),
            ("[log]\nformat = \"xml\"", "xml"),
            ("[log]\nlevel = \"a=b=c\"", "`log.level`"),
            ("[otlp]\nendpoint = \"nope\"", "`otlp.endpoint`"),
            ("shutdown_timeout = 0", "`shutdown_timeout`"),
            ("socket_group = \"no-such-group-x\"", "`socket_group`"),
            ("root = 5", "`root`"),
            ("[snapshots]\ndriver = \"zfs\"", "`snapshots.driver`"),
            ("[snapshots]\ndrvier = \"copy\"", "drvier"),
            (
                "[network]\ndefault_bridge = \"a-very-long-bridge-name\"",
                "`network.default_bridge`",
            ),
            (
                "[network]\npools = [{ base = \"10.0.0.1/8\", size = 16 }]",
                "`network.pools`",
            ),
            (
                "[network]\npools = [{ base = \"10.0.0.0/16\", size = 8 }]",
                "`network.pools`",
            ),
            ("[network]\nmtu = 10", "`network.mtu`"),
            (
                "[images]\ninsecure_registries = [\"http://x\"]",
                "`images.insecure_registries`",
            ),
            ("[images]\nmax_layer_size = 0", "`images.max_layer_size`"),
            ("[network]\nnft_table = \"a b\"", "`network.nft_table`"),
            (
                "[network]\ndns_upstreams = [\"nope\"]",
                "`network.dns_upstreams`",
            ),
            ("[cri]\nstream_address = \"lo\"", "`cri.stream_address`"),
            ("[cri]\nstream_port = 70000", "`cri.stream_port`"),
            (
                "[cri]\npull_progress_timeout = 100000",
                "`cri.pull_progress_timeout`",
            ),
            ("[cri]\ndefault_runtime = \"kata\"", "`cri.default_runtime`"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn sample_config_is_valid_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml");
        Config::from_file(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for key in [
            "root =",
            "state =",
            "socket_group =",
            "shutdown_timeout =",
            "[log]",
            "format =",
            "level =",
            "[otlp]",
            "endpoint =",
            "[network]",
            "default_bridge =",
            "pools =",
            "mtu =",
            "nft_table =",
            "dns_upstreams =",
            "cni_plugin_dirs =",
            "[snapshots]",
            "driver =",
            "[tasks]",
            "runtime =",
            "cgroup_parent =",
            "[images]",
            "insecure_registries =",
            "mirrors",
            "max_layer_size =",
            "credentials_file =",
            "read_timeout =",
            "[cri]",
            "stream_address =",
            "stream_port =",
            "pull_progress_timeout =",
            "default_runtime =",
        ] {
            assert!(text.contains(key), "deploy/config.toml lacks {key}");
        }
    }

    #[test]
    fn flags_override_file() {
        let args = ConfigArgs {
            root: Some("/tmp/r".into()),
            log_format: Some("json".into()),
            ..Default::default()
        };
        let mut c = Config::default();
        c.apply(&args).unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/r"));
        assert_eq!(c.log.format, LogFormat::Json);
        let bad = ConfigArgs {
            log_format: Some("xml".into()),
            ..Default::default()
        };
        assert!(
            c.apply(&bad)
                .unwrap_err()
                .to_string()
                .contains("--log-format")
        );
    }
}
