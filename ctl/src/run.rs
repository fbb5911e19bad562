//! `berthctl run`, `create` and `start`: a container from an image and `docker run`'s flags.
//!
//! Creating a container is client-side work across the services: resolve (or pull) the image,
//! read its config from the content store, unpack it into a snapshot chain, prepare the
//! container's writable snapshot on top, build the OCI spec with the tasks crate's spec
//! builder, and record the container. `run` then creates and starts its task and, in the
//! foreground, attaches to it and ends with its exit code.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::containers::v1 as cpb;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::berth::images::v1 as ipb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::snapshots::v1 as spb;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::berth::types::v1::LogConfig;
use berth_api::client::Channel;
use berth_tasks::NetworkSettings;
use berth_tasks::network::{NetworkAttachment, PortSpec};
use berth_tasks::spec::{self, MountSpec, RunOptions};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::attach::{self, Ended, Session};
use crate::container::{self, CallError, Clients, EXT_NETWORK, EXT_RUN, rpc};
use crate::context::Context;

/// When to pull the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull if the image is not stored yet.
    Missing,
    /// Always pull before creating.
    Always,
    /// Never pull: fail if the image is not stored.
    Never,
}

/// The flags of `docker create` (and of `docker run`, which adds a few).
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct CreateArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Assign a name to the container.
    #[arg(long)]
    name: Option<String>,
    /// Keep STDIN open even if not attached.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(long, short = 't')]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Set environment variables (KEY=VALUE, or KEY to take the host's value).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines; # comments).
    #[arg(long)]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Add additional groups to join.
    #[arg(long)]
    group_add: Vec<String>,
    /// Container host name.
    #[arg(long, short = 'h')]
    hostname: Option<String>,
    /// Container NIS domain name.
    #[arg(long)]
    domainname: Option<String>,
    /// Publish a container's port(s) to the host: [ip:][hostPort:]containerPort[/proto].
    #[arg(long = "publish", short = 'p')]
    publish: Vec<String>,
    /// Publish all exposed ports to random ports.
    #[arg(long, short = 'P')]
    publish_all: bool,
    /// Expose a port or a range of ports (for -P).
    #[arg(long)]
    expose: Vec<String>,
    /// Bind mount a volume: [name|/host/path:]/container/path[:ro|rw|nocopy].
    #[arg(long = "volume", short = 'v')]
    volume: Vec<String>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=...,target=...[,readonly].
    #[arg(long)]
    mount: Vec<String>,
    /// Mount a tmpfs directory: /path[:size=64m,mode=1777].
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Mount volumes from the specified container(s): CONTAINER[:ro|rw].
    #[arg(long)]
    volumes_from: Vec<String>,
    /// Connect a container to a network: bridge, host, none, container:<name|id>, or a
    /// network's name.
    #[arg(long, alias = "net", default_value = "bridge")]
    network: String,
    /// Add a network-scoped alias for the container.
    #[arg(long, alias = "net-alias")]
    network_alias: Vec<String>,
    /// IPv4 address (e.g. 172.30.100.104).
    #[arg(long)]
    ip: Option<String>,
    /// Set custom DNS servers.
    #[arg(long)]
    dns: Vec<String>,
    /// Set custom DNS search domains.
    #[arg(long)]
    dns_search: Vec<String>,
    /// Set DNS options.
    #[arg(long = "dns-option", alias = "dns-opt")]
    dns_option: Vec<String>,
    /// Add a custom host-to-IP mapping (host:ip).
    #[arg(long)]
    add_host: Vec<String>,
    /// Overwrite the default ENTRYPOINT of the image ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Restart policy: no, always, unless-stopped, on-failure[:max-retries].
    #[arg(long, default_value = "no")]
    restart: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Block IO weight (10-1000).
    #[arg(long)]
    blkio_weight: Option<u16>,
    /// Tune host's OOM preferences (-1000 to 1000).
    #[arg(long, allow_hyphen_values = true)]
    oom_score_adj: Option<i32>,
    /// Size of /dev/shm (e.g. 64m).
    #[arg(long)]
    shm_size: Option<String>,
    /// Ulimit options (e.g. nofile=1024:2048).
    #[arg(long)]
    ulimit: Vec<String>,
    /// Sysctl options (e.g. net.ipv4.ip_forward=1).
    #[arg(long)]
    sysctl: Vec<String>,
    /// Add Linux capabilities.
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Give extended privileges to this container.
    #[arg(long)]
    privileged: bool,
    /// Mount the container's root filesystem as read only.
    #[arg(long)]
    read_only: bool,
    /// Security options: no-new-privileges, seccomp=unconfined, seccomp=<profile file>.
    #[arg(long)]
    security_opt: Vec<String>,
    /// Add a host device to the container (host[:container[:rwm]]).
    #[arg(long)]
    device: Vec<String>,
    /// Set meta data on a container (KEY=VALUE).
    #[arg(long, short = 'l')]
    label: Vec<String>,
    /// Runtime to use for this container: builtin, runc or crun (default: the service's).
    #[arg(long)]
    runtime: Option<String>,
    /// Pull image before running.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    /// Signal to stop the container.
    #[arg(long)]
    stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container.
    #[arg(long)]
    stop_timeout: Option<u64>,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long)]
    init: bool,
    /// Log driver options: max-size=10m, max-file=3, path=/file.
    #[arg(long)]
    log_opt: Vec<String>,
    /// Snapshotter the services store filesystems with (the snapshots service's driver).
    #[arg(long, env = "BERTH_SNAPSHOTTER", default_value = "overlay")]
    snapshotter: String,
    /// IMAGE [COMMAND] [ARG...]
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    argv: Vec<String>,
}

/// `berthctl run` flags: `create`'s plus detaching.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Run container in background and print container ID.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Override the key sequence for detaching a container (default ctrl-p,ctrl-q).
    #[arg(long)]
    detach_keys: Option<String>,
    #[command(flatten)]
    create: CreateArgs,
}

/// `berthctl start` flags.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals.
    #[arg(long, short = 'a')]
    attach: bool,
    /// Attach container's STDIN.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Override the key sequence for detaching a container.
    #[arg(long)]
    detach_keys: Option<String>,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Everything the flags say, checked, before any service is asked.
#[derive(Debug)]
struct Plan {
    image: String,
    options: RunOptions,
    network: NetworkSettings,
    restart: cpb::RestartPolicy,
    log: LogConfig,
    labels: HashMap<String, String>,
    runtime: String,
    record: Value,
}

/// Docker's container name rule.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() >= 2
        && name.len() <= 128;
    if !ok {
        bail!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, 2 to 128 characters"
        );
    }
    Ok(())
}

/// Resource limit flags of `create`/`run` and `update`.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Memory limit (e.g. 512m, 1g).
    #[arg(long, short = 'm')]
    memory: Option<String>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap.
    #[arg(long, allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Memory soft limit.
    #[arg(long)]
    memory_reservation: Option<String>,
    /// Number of CPUs.
    #[arg(long)]
    cpus: Option<f64>,
    /// CPU shares (relative weight).
    #[arg(long, short = 'c')]
    cpu_shares: Option<u64>,
    /// CPUs in which to allow execution (0-3, 0,1).
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Tune container pids limit (-1 for unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
}

impl LimitArgs {
    /// Run options with these limits set and everything else default.
    pub fn options(&self) -> anyhow::Result<RunOptions> {
        let size = |flag: &str, value: &Option<String>| {
            value.as_deref().map(|s| bytes(flag, s)).transpose()
        };
        Ok(RunOptions {
            memory: size("--memory", &self.memory)?,
            memory_swap: match self.memory_swap.as_deref() {
                Some("-1") => Some(-1),
                _ => size("--memory-swap", &self.memory_swap)?,
            },
            memory_reservation: size("--memory-reservation", &self.memory_reservation)?,
            cpus: self.cpus,
            cpu_shares: self.cpu_shares,
            cpuset_cpus: self.cpuset_cpus.clone(),
            pids_limit: self.pids_limit,
            ..Default::default()
        })
    }
}

fn bytes(flag: &str, value: &str) -> anyhow::Result<i64> {
    spec::parse_bytes(value)
        .map_err(|e| anyhow::anyhow!("invalid argument {value:?} for {flag}: {e}"))
}

/// `KEY=VALUE`, or `KEY` taking the host's value (kept bare, which unsets it, when the host
/// has none).
fn env_entry(entry: &str) -> String {
    if entry.contains('=') {
        return entry.to_owned();
    }
    match std::env::var(entry) {
        Ok(v) => format!("{entry}={v}"),
        Err(_) => entry.to_owned(),
    }
}

/// Parses `no`, `always`, `unless-stopped` or `on-failure[:max-retries]`.
pub fn restart_policy(value: &str) -> anyhow::Result<cpb::RestartPolicy> {
    let (name, max) = match value.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (value, None),
    };
    let name = match name {
        "" | "no" => cpb::RestartPolicyName::No,
        "always" => cpb::RestartPolicyName::Always,
        "unless-stopped" => cpb::RestartPolicyName::UnlessStopped,
        "on-failure" => cpb::RestartPolicyName::OnFailure,
        _ => bail!(
            "invalid restart policy {value:?}: expected no, always, unless-stopped or on-failure[:max-retries]"
        ),
    };
    let max_retries = match max {
        Some(m) if name == cpb::RestartPolicyName::OnFailure => m
            .parse()
            .with_context(|| format!("invalid restart policy {value:?}: bad max-retries {m:?}"))?,
        Some(_) => bail!("invalid restart policy {value:?}: only on-failure takes max-retries"),
        None => 0,
    };
    Ok(cpb::RestartPolicy {
        name: name as i32,
        max_retries,
    })
}

/// One `-v` value.
fn volume_flag(value: &str) -> anyhow::Result<MountSpec> {
    let parts: Vec<&str> = value.split(':').collect();
    let bad = |why: &str| anyhow::anyhow!("invalid volume specification {value:?}: {why}");
    let (source, target, mode) = match parts.as_slice() {
        [t] => ("", *t, ""),
        [a, b] if b.starts_with('/') => (*a, *b, ""),
        [t, m] => ("", *t, *m),
        [s, t, m] => (*s, *t, *m),
        _ => return Err(bad("expected [source:]/container/path[:options]")),
    };
    if !target.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    let mut readonly = false;
    let mut nocopy = false;
    let mut propagation = None;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => readonly = true,
            "rw" => readonly = false,
            "nocopy" => nocopy = true,
            "z" | "Z" => {}
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                propagation = Some(opt.to_owned())
            }
            other => return Err(bad(&format!("unknown option {other:?}"))),
        }
    }
    Ok(if source.starts_with('/') || source.starts_with('.') {
        let source = std::path::absolute(source)
            .with_context(|| format!("invalid volume specification {value:?}"))?;
        MountSpec::Bind {
            source: source.to_string_lossy().into_owned(),
            target: target.to_owned(),
            readonly,
            propagation,
        }
    } else {
        MountSpec::Volume {
            name: source.to_owned(),
            target: target.to_owned(),
            readonly,
            nocopy,
        }
    })
}

/// One `--mount` value.
fn mount_flag(value: &str) -> anyhow::Result<MountSpec> {
    let bad = |why: String| anyhow::anyhow!("invalid mount {value:?}: {why}");
    let mut kind = "volume";
    let mut source = String::new();
    let mut target = String::new();
    let mut readonly = false;
    let mut nocopy = false;
    let mut propagation = None;
    let mut size = None;
    let mut mode = None;
    for field in value.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        let flag = |v: Option<&str>| match v {
            None | Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(bad(format!("{k}={other}: expected true or false"))),
        };
        match (k, v) {
            ("type", Some(t @ ("bind" | "volume" | "tmpfs"))) => kind = t,
            ("type", Some(t)) => return Err(bad(format!("unknown type {t:?}"))),
            ("source" | "src", Some(s)) => source = s.to_owned(),
            ("target" | "destination" | "dst", Some(t)) => target = t.to_owned(),
            ("readonly" | "ro", v) => readonly = flag(v)?,
            ("volume-nocopy", v) => nocopy = flag(v)?,
            ("bind-propagation", Some(p)) => propagation = Some(p.to_owned()),
            ("tmpfs-size", Some(s)) => size = Some(bytes("--mount tmpfs-size", s)?),
            ("tmpfs-mode", Some(m)) => {
                mode = Some(
                    u32::from_str_radix(m, 8)
                        .map_err(|_| bad(format!("tmpfs-mode {m:?} is not octal")))?,
                )
            }
            _ => return Err(bad(format!("unknown field {field:?}"))),
        }
    }
    if target.is_empty() {
        return Err(bad("target is required".into()));
    }
    Ok(match kind {
        "bind" => {
            if source.is_empty() {
                return Err(bad("source is required for a bind mount".into()));
            }
            MountSpec::Bind {
                source,
                target,
                readonly,
                propagation,
            }
        }
        "tmpfs" => MountSpec::Tmpfs { target, size, mode },
        _ => MountSpec::Volume {
            name: source,
            target,
            readonly,
            nocopy,
        },
    })
}

/// One `--tmpfs` value: `/path[:size=64m,mode=1777]`.
fn tmpfs_flag(value: &str) -> anyhow::Result<MountSpec> {
    let (target, opts) = value.split_once(':').unwrap_or((value, ""));
    let mut size = None;
    let mut mode = None;
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", s)) => size = Some(bytes("--tmpfs size", s)?),
            Some(("mode", m)) => {
                mode = Some(u32::from_str_radix(m, 8).map_err(|_| {
                    anyhow::anyhow!("invalid --tmpfs {value:?}: mode {m:?} is not octal")
                })?)
            }
            _ => bail!("invalid --tmpfs {value:?}: unknown option {opt:?} (size=, mode=)"),
        }
    }
    Ok(MountSpec::Tmpfs {
        target: target.to_owned(),
        size,
        mode,
    })
}

fn key_value(flag: &str, value: &str) -> anyhow::Result<(String, String)> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .with_context(|| format!("invalid {flag} {value:?}: expected KEY=VALUE"))
}

/// `-p` values as the network extension's port entries (ranges expanded).
fn ports(publish: &[String]) -> anyhow::Result<Vec<PortSpec>> {
    let mut out = Vec::new();
    for p in publish {
        let m = crate::network::parse_publish(p)
            .map_err(|e| anyhow::anyhow!("invalid argument for -p: {e:#}"))?;
        let protocol = if m.protocol == berth_api::berth::network::v1::Protocol::Udp as i32 {
            "udp"
        } else {
            "tcp"
        };
        for (i, cport) in
            (m.container_port..=m.container_port_end.max(m.container_port)).enumerate()
        {
            let host_port = if m.host_port == 0 {
                0
            } else {
                m.host_port + i as u32
            };
            out.push(PortSpec {
                host_ip: m.host_ip.clone(),
                host_port: u16::try_from(host_port).with_context(|| {
                    format!("invalid argument for -p {p}: host port range beyond 65535")
                })?,
                container_port: u16::try_from(cport)
                    .with_context(|| format!("invalid argument for -p {p}: port beyond 65535"))?,
                protocol: protocol.to_owned(),
            });
        }
    }
    Ok(out)
}

impl CreateArgs {
    /// Checks every flag and turns them into what the services take.
    fn plan(&self) -> anyhow::Result<Plan> {
        let (image, cmd) = self
            .argv
            .split_first()
            .context("an image is required: berthctl run [OPTIONS] IMAGE [COMMAND] [ARG...]")?;
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        let mut env = Vec::new();
        for file in &self.env_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read env file {}", file.display()))?;
            env.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(env_entry),
            );
        }
        env.extend(self.env.iter().map(|e| env_entry(e)));
        let mut labels = HashMap::new();
        for l in &self.label {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            labels.insert(k.to_owned(), v.to_owned());
        }
        let mut mounts = Vec::new();
        for v in &self.volume {
            mounts.push(volume_flag(v)?);
        }
        for m in &self.mount {
            mounts.push(mount_flag(m)?);
        }
        for t in &self.tmpfs {
            mounts.push(tmpfs_flag(t)?);
        }
        let mut security_opt = Vec::new();
        for opt in &self.security_opt {
            match opt.split_once(['=', ':']) {
                Some(("seccomp", profile)) if profile != "unconfined" => {
                    let text = std::fs::read_to_string(profile)
                        .with_context(|| format!("cannot read seccomp profile {profile}"))?;
                    security_opt.push(format!("seccomp={text}"));
                }
                _ => security_opt.push(opt.clone()),
            }
        }
        let network_mode = self.network.as_str();
        let host_network = network_mode == "host";
        let options = RunOptions {
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.clone()]
                }
            }),
            cmd: cmd.to_vec(),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            domainname: self.domainname.clone(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            tty: self.tty,
            stdin_open: self.interactive,
            read_only: self.read_only,
            privileged: self.privileged,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            security_opt,
            sysctls: self
                .sysctl
                .iter()
                .map(|s| key_value("--sysctl", s))
                .collect::<anyhow::Result<_>>()?,
            ulimits: self.ulimit.clone(),
            blkio_weight: self.blkio_weight,
            oom_score_adj: self.oom_score_adj,
            mounts,
            init: self.init,
            stop_signal: self.stop_signal.clone(),
            devices: self.device.clone(),
            group_add: self.group_add.clone(),
            shm_size: self
                .shm_size
                .as_deref()
                .map(|s| bytes("--shm-size", s))
                .transpose()?,
            host_network,
            ..self.limits.options()?
        };
        let ports = ports(&self.publish)?;
        for e in &self.expose {
            let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
            if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp") {
                bail!("invalid --expose {e:?}: expected PORT[/tcp|udp]");
            }
        }
        if let Some(ip) = &self.ip {
            ip.parse::<IpAddr>()
                .map_err(|_| anyhow::anyhow!("invalid --ip {ip:?}: not an IP address"))?;
        }
        for d in &self.dns {
            d.parse::<IpAddr>()
                .map_err(|_| anyhow::anyhow!("invalid --dns {d:?}: not an IP address"))?;
        }
        for h in &self.add_host {
            let ok = h.split_once(':').is_some_and(|(name, ip)| {
                !name.is_empty() && (ip == "host-gateway" || ip.parse::<IpAddr>().is_ok())
            });
            if !ok {
                bail!("invalid --add-host {h:?}: expected HOST:IP");
            }
        }
        let (mode, networks) = match network_mode {
            "host" | "none" => (network_mode.to_owned(), Vec::new()),
            m if m.starts_with("container:") => (m.to_owned(), Vec::new()),
            "" => bail!(
                "invalid --network \"\": expected bridge, host, none, container:<name> or a network name"
            ),
            name => (
                "bridge".to_owned(),
                vec![NetworkAttachment {
                    name: if name == "default" { "bridge" } else { name }.to_owned(),
                    aliases: self.network_alias.clone(),
                    ip: self.ip.clone().unwrap_or_default(),
                }],
            ),
        };
        if mode != "bridge" {
            if !ports.is_empty() || self.publish_all {
                eprintln!("WARNING: published ports are discarded when using {mode} network mode");
            }
            if !self.network_alias.is_empty() || self.ip.is_some() {
                bail!("--network-alias and --ip need a bridge or user network, not {mode}");
            }
        }
        let network = NetworkSettings {
            ports: if mode == "bridge" { ports } else { Vec::new() },
            mode,
            networks,
            dns: self.dns.clone(),
            dns_search: self.dns_search.clone(),
            dns_options: self.dns_option.clone(),
            extra_hosts: self.add_host.clone(),
            hostname: self.hostname.clone().unwrap_or_default(),
        };
        let mut log = LogConfig::default();
        for opt in &self.log_opt {
            match key_value("--log-opt", opt)? {
                (k, v) if k == "max-size" => log.max_size = bytes("--log-opt max-size", &v)? as u64,
                (k, v) if k == "max-file" => {
                    log.max_files = v
                        .parse()
                        .with_context(|| format!("invalid --log-opt max-file={v}: not a number"))?
                }
                (k, v) if k == "path" => log.path = v,
                (k, _) => bail!("invalid --log-opt {k:?}: expected max-size, max-file or path"),
            }
        }
        if let Some(r) = &self.runtime
            && !matches!(r.as_str(), "builtin" | "runc" | "crun")
        {
            bail!("invalid --runtime {r:?}: expected builtin, runc or crun");
        }
        let restart = restart_policy(&self.restart)?;
        if self.rm && restart.name() != cpb::RestartPolicyName::No {
            bail!("conflicting options: --restart {} and --rm", self.restart);
        }
        let record = json!({
            "auto_remove": self.rm,
            "stop_timeout": self.stop_timeout,
            "privileged": self.privileged,
            "cap_add": self.cap_add,
            "cap_drop": self.cap_drop,
            "cmd": cmd,
            "entrypoint": self.entrypoint,
            "publish_all": self.publish_all,
            "expose": self.expose,
        });
        Ok(Plan {
            image: image.clone(),
            options,
            network,
            restart,
            log,
            labels,
            runtime: self.runtime.clone().unwrap_or_default(),
            record,
        })
    }
}

/// 64 random hex digits, like Docker's container ids.
pub fn random_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot open /dev/urandom")?,
        &mut bytes,
    )?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

const ADJECTIVES: [&str; 24] = [
    "admiring",
    "brave",
    "clever",
    "dreamy",
    "eager",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "loving",
    "modest",
    "nifty",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "tender",
    "upbeat",
    "vibrant",
    "wizardly",
    "zealous",
];
const NAMES: [&str; 24] = [
    "babbage", "curie", "darwin", "euler", "fermat", "galois", "hopper", "hypatia", "johnson",
    "kepler", "lamarr", "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon",
    "thompson", "turing", "volta", "wozniak", "yalow", "zuse", "lumiere",
];

/// A Docker-style random name (`brave_turing`) from `seed` bytes.
fn generated_name(seed: &str, attempt: usize) -> String {
    let n = usize::from_str_radix(&seed[..8], 16).unwrap_or(0) + attempt * 7;
    let name = format!("{}_{}", ADJECTIVES[n % 24], NAMES[(n / 24) % 24]);
    if attempt > 2 {
        format!("{name}{}", attempt)
    } else {
        name
    }
}

/// The image to run, pulled first when the policy says so.
async fn ensure_image(
    images: &mut ImagesClient<Channel>,
    reference: &str,
    policy: PullPolicy,
) -> anyhow::Result<ipb::Image> {
    if policy != PullPolicy::Always {
        match images
            .get(ipb::GetImageRequest {
                name: reference.to_owned(),
            })
            .await
        {
            Ok(r) => {
                return r
                    .into_inner()
                    .image
                    .context("the service answered without an image");
            }
            Err(e) if e.code() == Code::NotFound && policy == PullPolicy::Missing => {
                eprintln!("Unable to find image '{reference}' locally");
            }
            Err(e) if e.code() == Code::NotFound => {
                return Err(CallError {
                    code: Code::NotFound,
                    message: format!(
                        "no such image: {reference} (pull it with `berthctl pull {reference}`, or use --pull missing)"
                    ),
                }
                .into());
            }
            Err(e) => return Err(rpc(e)),
        }
    }
    let mut stream = images
        .pull(ipb::PullRequest {
            reference: reference.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut image = None;
    let mut shown = HashMap::new();
    while let Some(message) = stream.next().await {
        let message = message.map_err(rpc)?;
        for p in &message.progress {
            if p.status() == ipb::ProgressStatus::Downloaded
                && shown.insert(p.r#ref.clone(), ()).is_none()
            {
                eprintln!("{}: Download complete", p.r#ref);
            }
        }
        if message.image.is_some() {
            image = message.image;
        }
    }
    let image = image.context("the pull ended without recording an image")?;
    eprintln!("Status: Downloaded image for {}", image.name);
    Ok(image)
}

/// The mounts of another container that `--volumes-from` copies: named volumes and binds.
fn volumes_from(other: &cpb::Container, mode: &str) -> Vec<MountSpec> {
    let spec = container::spec_json(other);
    spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let options = container::strings(&m["options"]);
            let readonly = match mode {
                "ro" => true,
                "rw" => false,
                _ => options.contains(&"ro"),
            };
            let target = m["destination"].as_str()?.to_owned();
            let source = m["source"].as_str().unwrap_or_default().to_owned();
            match m["type"].as_str()? {
                "volume" if !source.is_empty() => Some(MountSpec::Volume {
                    name: source,
                    target,
                    readonly,
                    nocopy: true,
                }),
                "bind" if options.contains(&"rbind") && m["source"].as_str()?.starts_with('/') => {
                    let skip = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];
                    (!skip.contains(&target.as_str())).then_some(MountSpec::Bind {
                        source,
                        target,
                        readonly,
                        propagation: None,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Makes the container record (and its writable snapshot); nothing is left behind on failure.
/// Records a container as `args` describe it; `auto_remove` asks the tasks service to delete it
/// once it exits (`run -d --rm`: no client is left to do it).
async fn create(
    ctx: &Context,
    args: &CreateArgs,
    auto_remove: bool,
) -> anyhow::Result<cpb::Container> {
    let mut plan = args.plan()?;
    let mut clients = Clients::new(ctx).await?;
    for from in &args.volumes_from {
        let (name, mode) = from.split_once(':').unwrap_or((from, ""));
        if !matches!(mode, "" | "ro" | "rw") {
            bail!("invalid --volumes-from {from:?}: expected CONTAINER[:ro|rw]");
        }
        let other = clients.find(name).await?;
        let copied = volumes_from(&other, mode);
        plan.options
            .mounts
            .retain(|m| !copied.iter().any(|c| c.target() == m.target()));
        plan.options.mounts.extend(copied);
    }
    if let Some(target) = plan.network.mode.strip_prefix("container:") {
        let other = clients.find(target).await?;
        plan.network.mode = format!("container:{}", other.id);
    }
    let images_channel = container::connect(ctx, Service::Images).await?;
    let mut images = ImagesClient::new(images_channel.clone());
    let image = ensure_image(&mut images, &plan.image, args.pull).await?;
    let target = image
        .target
        .clone()
        .context("the image record has no target")?;
    let resolved = crate::image::resolve(&mut ContentClient::new(images_channel), &target)
        .await
        .with_context(|| format!("cannot read the config of image {}", image.name))?;
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_value(resolved.config.clone())
            .with_context(|| format!("image {} has an invalid config", image.name))?;
    if args.publish_all {
        let mut exposed: Vec<String> = config
            .config()
            .as_ref()
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        exposed.extend(args.expose.iter().cloned());
        let publish = exposed;
        if plan.network.mode == "bridge" {
            for p in ports(&publish)? {
                let list = &mut plan.network.ports;
                if !list
                    .iter()
                    .any(|q| q.container_port == p.container_port && q.protocol == p.protocol)
                {
                    list.push(p);
                }
            }
        }
    }
    let spec = spec::build(&config, &plan.options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let unpacked = images
        .unpack(ipb::UnpackRequest {
            name: image.name.clone(),
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let id = random_id()?;
    let mut snapshots = SnapshotsClient::new(container::connect(ctx, Service::Snapshots).await?);
    snapshots
        .prepare(spb::PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: id.clone(),
            parent: unpacked.chain_id,
            labels: HashMap::new(),
        })
        .await
        .map_err(rpc)?;
    let mut record = cpb::Container {
        id: id.clone(),
        name: String::new(),
        labels: plan.labels.clone(),
        image: image.name.clone(),
        image_digest: target.digest.clone(),
        runtime: Some(cpb::Runtime {
            name: plan.runtime.clone(),
            options: Vec::new(),
        }),
        spec: serde_json::to_vec(&spec)?,
        snapshotter: args.snapshotter.clone(),
        snapshot_key: id.clone(),
        restart_policy: Some(plan.restart),
        log_config: Some(plan.log.clone()),
        extensions: HashMap::from([
            (EXT_NETWORK.to_owned(), serde_json::to_vec(&plan.network)?),
            (EXT_RUN.to_owned(), serde_json::to_vec(&plan.record)?),
        ]),
        ..Default::default()
    };
    if auto_remove {
        record.labels.insert(
            berth_tasks::manager::AUTO_REMOVE.to_owned(),
            "true".to_owned(),
        );
    }
    let mut attempt = 0;
    let created = loop {
        record.name = match &args.name {
            Some(n) => n.clone(),
            None => generated_name(&id, attempt),
        };
        match clients
            .containers
            .create(cpb::CreateContainerRequest {
                container: Some(record.clone()),
            })
            .await
        {
            Ok(r) => break Ok(r.into_inner().container.unwrap_or(record)),
            Err(e) if e.code() == Code::AlreadyExists && args.name.is_none() && attempt < 10 => {
                attempt += 1;
            }
            Err(e) => break Err(rpc(e)),
        }
    };
    if created.is_err() {
        // The record was not made: the snapshot is ours to remove.
        let _ = snapshots
            .remove(spb::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: id,
            })
            .await;
    }
    created
}

/// `berthctl create`: prints the new container's id.
pub async fn create_cmd(ctx: &Context, args: CreateArgs) -> ExitCode {
    match create(ctx, &args, false).await {
        Ok(c) => {
            println!("{}", c.id);
            ExitCode::SUCCESS
        }
        Err(e) => container::fail(e, container::EXIT_BERTH),
    }
}

/// `berthctl run`.
pub async fn run(ctx: &Context, args: RunArgs) -> ExitCode {
    let detach_keys = match attach::parse_detach_keys(args.detach_keys.as_deref()) {
        Ok(k) => k,
        Err(e) => return container::fail(e, container::EXIT_BERTH),
    };
    let container = match create(ctx, &args.create, args.detach && args.create.rm).await {
        Ok(c) => c,
        Err(e) => return container::fail(e, container::EXIT_BERTH),
    };
    match run_created(ctx, &args, &container, detach_keys).await {
        Ok(code) => code,
        Err(e) => {
            let code = container::exit_code_of(&e);
            if args.create.rm
                && let Ok(mut c) = Clients::new(ctx).await
            {
                let _ = container::remove(&mut c, &container, true, true).await;
            }
            container::fail(e, code)
        }
    }
}

async fn run_created(
    ctx: &Context,
    args: &RunArgs,
    container: &cpb::Container,
    detach_keys: Vec<u8>,
) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let a = &args.create;
    if a.tty && !args.detach && a.interactive && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY; run without -t, or from a terminal");
    }
    c.create_task(container, a.interactive, a.tty).await?;
    if args.detach {
        c.start(&container.id, "").await?;
        println!("{}", container.id);
        return Ok(ExitCode::SUCCESS);
    }
    let ended = start_attached(&c, &container.id, a.interactive, a.tty, detach_keys).await?;
    match ended {
        Ended::Detached => Ok(ExitCode::SUCCESS),
        Ended::Exited(status) => {
            if a.rm {
                container::remove(&mut c, container, true, true).await?;
            }
            Ok(ExitCode::from(status.exit_code.min(255) as u8))
        }
        Ended::Closed => {
            // The stream ended without an exit status: ask for it.
            let status = c.wait(&container.id, None).await?.unwrap_or_default();
            if a.rm {
                container::remove(&mut c, container, true, true).await?;
            }
            Ok(ExitCode::from(status.exit_code.min(255) as u8))
        }
    }
}

/// Attaches to the container's init process, starts it and follows it until the session ends.
async fn start_attached(
    c: &Clients,
    container_id: &str,
    stdin: bool,
    tty: bool,
    detach_keys: Vec<u8>,
) -> anyhow::Result<Ended> {
    let session = Session {
        container_id: container_id.to_owned(),
        exec_id: String::new(),
        stdin,
        tty,
        detach_keys,
        proxy_signals: !tty,
    };
    let mut starter = c.clone();
    let id = container_id.to_owned();
    session
        .run(c.tasks.clone(), async move {
            starter.start(&id, "").await.map(|_| ())
        })
        .await
}

/// `berthctl start`: starts created or stopped containers; with `-a`, attaches to the one
/// container and ends with its exit code.
pub async fn start(ctx: &Context, args: StartArgs) -> ExitCode {
    match start_inner(ctx, args).await {
        Ok(code) => code,
        Err(e) => {
            let code = container::exit_code_of(&e);
            container::fail(e, code)
        }
    }
}

async fn start_inner(ctx: &Context, args: StartArgs) -> anyhow::Result<ExitCode> {
    let detach_keys = attach::parse_detach_keys(args.detach_keys.as_deref())?;
    let mut c = Clients::new(ctx).await?;
    if args.attach || args.interactive {
        if args.containers.len() != 1 {
            bail!("you cannot start and attach multiple containers at once");
        }
        let container = c.find(&args.containers[0]).await?;
        let tty = container::spec_json(&container)["process"]["terminal"]
            .as_bool()
            .unwrap_or(false);
        if let Some(t) = c.task(&container.id).await? {
            if t.status() == berth_api::berth::types::v1::TaskStatus::Running {
                bail!("container {} is already running", container.name);
            }
            if t.status() != berth_api::berth::types::v1::TaskStatus::Created {
                c.delete_task(&container.id).await?;
                c.create_task(&container, args.interactive, tty).await?;
            }
        } else {
            c.create_task(&container, args.interactive, tty).await?;
        }
        let ended = start_attached(&c, &container.id, args.interactive, tty, detach_keys).await?;
        return Ok(match ended {
            Ended::Detached => ExitCode::SUCCESS,
            Ended::Exited(s) => ExitCode::from(s.exit_code.min(255) as u8),
            Ended::Closed => {
                let s = c.wait(&container.id, None).await?.unwrap_or_default();
                ExitCode::from(s.exit_code.min(255) as u8)
            }
        });
    }
    let mut failed = None;
    for name in &args.containers {
        let result: anyhow::Result<()> = async {
            let container = c.find(name).await?;
            match c.task(&container.id).await? {
                Some(t) if t.status() == berth_api::berth::types::v1::TaskStatus::Running => {}
                _ => container::restart_task(&mut c, &container).await?,
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                let code = container::exit_code_of(&e);
                eprintln!("berthctl: error: {e:#}");
                failed = Some(code);
            }
        }
    }
    Ok(failed.map_or(ExitCode::SUCCESS, ExitCode::from))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parses").run
    }

    #[test]
    fn flags_after_the_image_belong_to_the_command() {
        let a = parse(&[
            "-d", "--name", "web", "-h", "box", "busybox", "ls", "-la", "-d",
        ]);
        assert!(a.detach);
        assert_eq!(a.create.hostname.as_deref(), Some("box"));
        assert_eq!(a.create.argv, ["busybox", "ls", "-la", "-d"]);
        let plan = a.create.plan().unwrap();
        assert_eq!(plan.image, "busybox");
        assert_eq!(plan.options.cmd, ["ls", "-la", "-d"]);
    }

    #[test]
    fn bad_values_are_refused_before_any_call() {
        for (flags, needle) in [
            (&["-m", "12q"][..], "--memory"),
            (&["-p", "99999:80"][..], "-p"),
            (&["--restart", "sometimes"][..], "restart"),
            (&["--name=-bad"][..], "name"),
            (&["--dns", "x.y"][..], "--dns"),
            (&["--add-host", "nohost"][..], "--add-host"),
            (&["-v", "data:relative"][..], "volume"),
            (&["--mount", "type=nfs,target=/x"][..], "mount"),
            (&["--log-opt", "color=red"][..], "log-opt"),
            (&["--runtime", "kata"][..], "runtime"),
            (&["--rm", "--restart", "always"][..], "conflicting"),
        ] {
            let mut argv: Vec<&str> = flags.to_vec();
            argv.push("busybox");
            let err = parse(&argv).create.plan().unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn volumes_mounts_and_tmpfs() {
        assert_eq!(
            volume_flag("/data").unwrap(),
            MountSpec::Volume {
                name: String::new(),
                target: "/data".into(),
                readonly: false,
                nocopy: false
            }
        );
        assert_eq!(
            volume_flag("db:/var/lib/db:ro,nocopy").unwrap(),
            MountSpec::Volume {
                name: "db".into(),
                target: "/var/lib/db".into(),
                readonly: true,
                nocopy: true
            }
        );
        assert!(matches!(
            volume_flag("/srv:/srv:ro").unwrap(),
            MountSpec::Bind { readonly: true, .. }
        ));
        assert!(matches!(
            mount_flag("type=bind,src=/a,dst=/b,readonly").unwrap(),
            MountSpec::Bind { readonly: true, .. }
        ));
        assert!(matches!(
            mount_flag("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700").unwrap(),
            MountSpec::Tmpfs {
                size: Some(1048576),
                mode: Some(0o700),
                ..
            }
        ));
        assert!(matches!(
            tmpfs_flag("/run:size=64m").unwrap(),
            MountSpec::Tmpfs {
                size: Some(67108864),
                ..
            }
        ));
    }

    #[test]
    fn network_settings_follow_the_agreed_shape() {
        let a = parse(&[
            "-p",
            "127.0.0.1:8080-8081:80-81",
            "--network-alias",
            "web",
            "--dns",
            "10.0.0.2",
            "busybox",
        ]);
        let plan = a.create.plan().unwrap();
        assert_eq!(plan.network.mode, "bridge");
        assert_eq!(plan.network.networks[0].name, "bridge");
        assert_eq!(plan.network.networks[0].aliases, ["web"]);
        let ports = &plan.network.ports;
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].host_port, 8081);
        assert_eq!(ports[1].container_port, 81);
        assert_eq!(ports[1].host_ip, "127.0.0.1");
        let host = parse(&["--net", "host", "busybox"]).create.plan().unwrap();
        assert_eq!(host.network.mode, "host");
        assert!(host.options.host_network);
        assert_eq!(restart_policy("on-failure:3").unwrap().max_retries, 3);
    }

    #[test]
    fn generated_names_look_like_dockers() {
        let id = "0123456789abcdef".repeat(4);
        let name = generated_name(&id, 0);
        assert!(check_name(&name).is_ok());
        assert!(name.contains('_'));
        assert_ne!(name, generated_name(&id, 1));
    }
}
