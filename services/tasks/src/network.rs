//! A task's networking: the container extension `berth.io/network` ([`NetworkSettings`]) and
//! what task Create and Delete do with it through the network service.
//!
//! Modes: `bridge` or a network name (a pinned netns attached to each network, with the
//! container's name, hostname and aliases, and its published ports on the first network),
//! `host` (no network namespace; the host's hosts and resolv.conf, read-only), `none` (a fresh
//! namespace with only lo, made by the runtime), `container:<id>` (the netns, hosts and
//! resolv.conf of another container's running task). For the modes with their own namespace,
//! the bundle receives `hostname`, `hosts` and `resolv.conf`, bind-mounted over the
//! container's `/etc` files.

use std::path::{Path, PathBuf};

use berth_api::berth::containers::v1::Container;
use berth_api::berth::network::v1 as net;
use berth_api::berth::network::v1::networks_client::NetworksClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Container extension key that holds the JSON of [`NetworkSettings`].
pub const EXTENSION: &str = "berth.io/network";
/// The predefined network.
pub const DEFAULT_NETWORK: &str = "bridge";

/// How a container is networked (JSON in the container extension `berth.io/network`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkSettings {
    /// "bridge", "host", "none", "container:<id>", or the name of a network.
    pub mode: String,
    /// Networks to attach to (bridge mode); empty = the mode's network.
    pub networks: Vec<NetworkAttachment>,
    /// Ports to publish (on the first network).
    pub ports: Vec<PortSpec>,
    /// Name servers for resolv.conf; empty = the network's defaults.
    pub dns: Vec<String>,
    /// Search domains.
    pub dns_search: Vec<String>,
    /// resolv.conf options.
    pub dns_options: Vec<String>,
    /// Extra `/etc/hosts` entries, "name:address".
    pub extra_hosts: Vec<String>,
    /// Hostname; empty = the first 12 characters of the container id.
    pub hostname: String,
}

/// One network a container joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAttachment {
    /// Network name.
    pub name: String,
    /// Extra names of the container on this network.
    pub aliases: Vec<String>,
    /// Static address; empty = allocated.
    pub ip: String,
}

/// A published port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortSpec {
    /// Host address; empty = every address.
    pub host_ip: String,
    /// Host port; 0 = any free port.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// "tcp" (default), "udp" or "sctp".
    pub protocol: String,
}

/// The parsed networking mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Attach to these networks.
    Networks(Vec<NetworkAttachment>),
    /// Share the host's network namespace.
    Host,
    /// Only a loopback interface.
    None,
    /// Join the namespace of another container.
    Container(String),
}

impl NetworkSettings {
    /// The settings of a container: its extension, or mode "none" when absent.
    pub fn of(container: &Container) -> Result<NetworkSettings> {
        match container.extensions.get(EXTENSION) {
            None => Ok(NetworkSettings {
                mode: "none".into(),
                ..Default::default()
            }),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                Error::invalid("extensions[\"berth.io/network\"]", format!("bad JSON: {e}"))
            }),
        }
    }

    /// The mode, validated.
    pub fn mode(&self) -> Result<Mode> {
        let mode = self.mode.as_str();
        match mode {
            "host" => Ok(Mode::Host),
            "none" => Ok(Mode::None),
            _ if mode.starts_with("container:") => {
                let id = &mode["container:".len()..];
                if id.is_empty() {
                    return Err(Error::invalid(
                        "network mode",
                        "container: needs a container id or name",
                    ));
                }
                Ok(Mode::Container(id.to_owned()))
            }
            _ => {
                let mut networks = self.networks.clone();
                if networks.is_empty() {
                    let name = if mode.is_empty() {
                        DEFAULT_NETWORK
                    } else {
                        mode
                    };
                    networks.push(NetworkAttachment {
                        name: name.to_owned(),
                        ..Default::default()
                    });
                }
                if let Some(n) = networks.iter().find(|n| n.name.is_empty()) {
                    return Err(Error::invalid(
                        "networks",
                        format!("a network without a name (aliases {:?})", n.aliases),
                    ));
                }
                Ok(Mode::Networks(networks))
            }
        }
    }
}

/// What task Create set up, to be torn down at task Delete.
#[derive(Debug, Clone, Default)]
pub struct Attached {
    /// Networks attached.
    pub networks: Vec<String>,
    /// The pinned netns created (its path).
    pub netns: Option<String>,
}

/// The target of `container:<id>` mode: the other task's netns path and bundle.
#[derive(Debug, Clone)]
pub struct JoinTarget {
    /// Path of its network namespace.
    pub netns: String,
    /// Its bundle (holding hosts, resolv.conf, hostname).
    pub bundle: PathBuf,
}

async fn client(socket: &Path, ns: &str) -> Result<NetworksClient<berth_api::client::Channel>> {
    let channel = berth_api::client::connect(socket, ns)
        .await
        .map_err(|e| Error::Unreachable(format!("network service: {e}")))?;
    Ok(NetworksClient::new(channel))
}

fn protocol(p: &str) -> Result<i32> {
    Ok(match p {
        "" | "tcp" => net::Protocol::Tcp,
        "udp" => net::Protocol::Udp,
        "sctp" => net::Protocol::Sctp,
        other => {
            return Err(Error::invalid(
                "ports",
                format!("protocol {other:?}: use tcp, udp or sctp"),
            ));
        }
    } as i32)
}

fn namespaces(spec: &mut Value) -> &mut Vec<Value> {
    if !spec["linux"].is_object() {
        spec["linux"] = json!({});
    }
    if !spec["linux"]["namespaces"].is_array() {
        spec["linux"]["namespaces"] = json!([]);
    }
    match spec["linux"]["namespaces"].as_array_mut() {
        Some(a) => a,
        None => unreachable!("set to an array above"),
    }
}

/// Sets (Some) or removes (None) the spec's network namespace; `Some("")` = a new one.
/// True if the spec joins an existing network namespace by path.
fn joins_netns(spec: &Value) -> bool {
    spec["linux"]["namespaces"].as_array().is_some_and(|list| {
        list.iter()
            .any(|n| n["type"] == "network" && n["path"].as_str().is_some_and(|p| !p.is_empty()))
    })
}

fn set_netns(spec: &mut Value, path: Option<&str>) {
    let list = namespaces(spec);
    list.retain(|n| n["type"] != "network");
    match path {
        Some("") => list.push(json!({ "type": "network" })),
        Some(p) => list.push(json!({ "type": "network", "path": p })),
        None => {}
    }
}

/// Adds a bind mount of `source` at `destination` (replacing a mount already there).
fn bind(spec: &mut Value, source: &Path, destination: &str, readonly: bool) {
    if !spec["mounts"].is_array() {
        spec["mounts"] = json!([]);
    }
    let mut options = vec!["rbind", "rprivate"];
    if readonly {
        options.push("ro");
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.retain(|m| m["destination"] != destination);
        mounts.push(json!({
            "destination": destination,
            "type": "bind",
            "source": source,
            "options": options,
        }));
    }
}

fn write(path: PathBuf, text: &str) -> Result<()> {
    std::fs::write(&path, text).map_err(Error::io(path))
}

/// Sets up the networking of `container`'s new task: edits `spec`, writes the files under
/// `bundle`. On error nothing it made is left (the caller still calls [`teardown`] with what
/// it got on success only).
pub async fn setup(
    socket: &Path,
    ns: &str,
    container: &Container,
    settings: &NetworkSettings,
    join: Option<JoinTarget>,
    bundle: &Path,
    spec: &mut Value,
) -> Result<Attached> {
    let hostname = if !settings.hostname.is_empty() {
        settings.hostname.clone()
    } else if let Some(h) = spec["hostname"].as_str().filter(|h| !h.is_empty()) {
        h.to_owned()
    } else {
        container.id.chars().take(12).collect()
    };
    match settings.mode()? {
        Mode::Host => {
            set_netns(spec, None);
            bind(spec, Path::new("/etc/hosts"), "/etc/hosts", true);
            bind(
                spec,
                Path::new("/etc/resolv.conf"),
                "/etc/resolv.conf",
                true,
            );
            Ok(Attached::default())
        }
        // A spec that joins a network namespace by path (a pod's, set up by the CRI) is
        // kept as it is: namespaces, hostname and /etc files are the pod's.
        Mode::None if !container.extensions.contains_key(EXTENSION) && joins_netns(spec) => {
            Ok(Attached::default())
        }
        Mode::None => {
            set_netns(spec, Some(""));
            spec["hostname"] = json!(hostname);
            write(bundle.join("hostname"), &format!("{hostname}\n"))?;
            write(
                bundle.join("hosts"),
                &format!("{}127.0.0.1\t{hostname}\n", hosts_header()),
            )?;
            bind(spec, &bundle.join("hostname"), "/etc/hostname", false);
            bind(spec, &bundle.join("hosts"), "/etc/hosts", false);
            Ok(Attached::default())
        }
        Mode::Container(_) => {
            let target = join.ok_or_else(|| {
                Error::Precondition(format!("network mode {:?}: no running task", settings.mode))
            })?;
            set_netns(spec, Some(&target.netns));
            for (file, dest) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
                let source = target.bundle.join(file);
                if source.exists() {
                    bind(spec, &source, dest, true);
                }
            }
            Ok(Attached::default())
        }
        Mode::Networks(networks) => {
            let mut attached = Attached::default();
            let result = attach_all(
                socket,
                ns,
                container,
                settings,
                &networks,
                &hostname,
                bundle,
                spec,
                &mut attached,
            )
            .await;
            match result {
                Ok(()) => Ok(attached),
                Err(e) => {
                    teardown(socket, ns, &container.id, &attached).await;
                    Err(e)
                }
            }
        }
    }
}

fn hosts_header() -> &'static str {
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
}

#[allow(clippy::too_many_arguments)]
async fn attach_all(
    socket: &Path,
    ns: &str,
    container: &Container,
    settings: &NetworkSettings,
    networks: &[NetworkAttachment],
    hostname: &str,
    bundle: &Path,
    spec: &mut Value,
    attached: &mut Attached,
) -> Result<()> {
    let mut client = client(socket, ns).await?;
    let netns = client
        .create_netns(net::CreateNetnsRequest {
            sandbox_id: container.id.clone(),
        })
        .await
        .map_err(Error::remote("create the network namespace"))?
        .into_inner()
        .netns_path;
    attached.netns = Some(netns.clone());
    let mut ports = Vec::new();
    for p in &settings.ports {
        ports.push(net::PortMapping {
            host_ip: p.host_ip.clone(),
            host_port: p.host_port.into(),
            container_port: p.container_port.into(),
            protocol: protocol(&p.protocol)?,
            container_port_end: 0,
        });
    }
    let dns = (!settings.dns.is_empty()
        || !settings.dns_search.is_empty()
        || !settings.dns_options.is_empty())
    .then(|| net::DnsConfig {
        servers: settings.dns.clone(),
        search: settings.dns_search.clone(),
        options: settings.dns_options.clone(),
    });
    let mut first: Option<net::Attachment> = None;
    let mut extra = Vec::new();
    for (i, n) in networks.iter().enumerate() {
        let mut aliases = Vec::new();
        for a in [container.name.as_str(), hostname]
            .into_iter()
            .chain(n.aliases.iter().map(String::as_str))
        {
            if !a.is_empty() && !aliases.iter().any(|x| x == a) {
                aliases.push(a.to_owned());
            }
        }
        let attachment = client
            .attach(net::AttachRequest {
                network: n.name.clone(),
                container_id: container.id.clone(),
                netns_path: netns.clone(),
                interface_name: String::new(),
                ip: n.ip.clone(),
                mac: String::new(),
                aliases,
                ports: if i == 0 { ports.clone() } else { Vec::new() },
                dns: dns.clone(),
                extra_hosts: settings.extra_hosts.clone(),
            })
            .await
            .map_err(Error::remote(format!("attach to network {:?}", n.name)))?
            .into_inner()
            .attachment
            .unwrap_or_default();
        attached.networks.push(n.name.clone());
        if first.is_none() {
            first = Some(attachment);
        } else {
            extra.push(attachment);
        }
    }
    let first = first.unwrap_or_default();
    set_netns(spec, Some(&netns));
    spec["hostname"] = json!(hostname);
    let mut hosts = hosts_header().to_owned();
    for a in std::iter::once(&first).chain(extra.iter()) {
        if let Some((ip, _)) = a.ip.split_once('/') {
            let mut names = vec![hostname.to_owned()];
            if !container.name.is_empty() && container.name != hostname {
                names.push(container.name.clone());
            }
            hosts.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
    }
    for h in &first.extra_hosts {
        if let Some((name, addr)) = h.split_once(':') {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    let mut resolv = String::new();
    if let Some(d) = &first.dns {
        for s in &d.servers {
            resolv.push_str(&format!("nameserver {s}\n"));
        }
        if !d.search.is_empty() {
            resolv.push_str(&format!("search {}\n", d.search.join(" ")));
        }
        if !d.options.is_empty() {
            resolv.push_str(&format!("options {}\n", d.options.join(" ")));
        }
    }
    write(bundle.join("hostname"), &format!("{hostname}\n"))?;
    write(bundle.join("hosts"), &hosts)?;
    write(bundle.join("resolv.conf"), &resolv)?;
    bind(spec, &bundle.join("hostname"), "/etc/hostname", false);
    bind(spec, &bundle.join("hosts"), "/etc/hosts", false);
    bind(spec, &bundle.join("resolv.conf"), "/etc/resolv.conf", false);
    Ok(())
}

/// Detaches the container from its networks and removes its pinned netns; failures are
/// logged (Detach and RemoveNetns are idempotent, so recovery can retry).
pub async fn teardown(socket: &Path, ns: &str, id: &str, attached: &Attached) {
    if attached.networks.is_empty() && attached.netns.is_none() {
        return;
    }
    let mut client = match client(socket, ns).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%id, error = %e, "cannot tear down the network");
            return;
        }
    };
    for n in attached.networks.iter().rev() {
        if let Err(e) = client
            .detach(net::DetachRequest {
                network: n.clone(),
                container_id: id.to_owned(),
            })
            .await
        {
            tracing::warn!(%id, network = %n, error = %e, "detach failed");
        }
    }
    if attached.netns.is_some()
        && let Err(e) = client
            .remove_netns(net::RemoveNetnsRequest {
                sandbox_id: id.to_owned(),
            })
            .await
    {
        tracing::warn!(%id, error = %e, "cannot remove the network namespace");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let s = |mode: &str| NetworkSettings {
            mode: mode.into(),
            ..Default::default()
        };
        assert_eq!(s("host").mode().unwrap(), Mode::Host);
        assert_eq!(s("none").mode().unwrap(), Mode::None);
        assert_eq!(
            s("container:web").mode().unwrap(),
            Mode::Container("web".into())
        );
        assert!(s("container:").mode().is_err());
        match s("").mode().unwrap() {
            Mode::Networks(n) => assert_eq!(n[0].name, "bridge"),
            m => panic!("{m:?}"),
        }
        match s("front").mode().unwrap() {
            Mode::Networks(n) => assert_eq!(n[0].name, "front"),
            m => panic!("{m:?}"),
        }
        let parsed: NetworkSettings = serde_json::from_str(
            r#"{"mode":"bridge","networks":[{"name":"bridge","aliases":[],"ip":""}],
                "ports":[{"host_ip":"","host_port":8080,"container_port":80,"protocol":"tcp"}],
                "dns":[],"dns_search":[],"dns_options":[],"extra_hosts":[],"hostname":"web"}"#,
        )
        .unwrap();
        assert_eq!(parsed.ports[0].host_port, 8080);
        assert_eq!(parsed.hostname, "web");
    }

    #[test]
    fn netns_edits() {
        let mut spec = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}});
        set_netns(&mut spec, Some("/run/x"));
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network", "path": "/run/x"}])
        );
        set_netns(&mut spec, None);
        assert_eq!(spec["linux"]["namespaces"], json!([{"type": "pid"}]));
    }
}
