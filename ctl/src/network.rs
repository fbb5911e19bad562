//! `berthctl network ...` and `berthctl port`: networks, attachments and published ports.
//!
//! Until the tasks service runs containers, `network connect` attaches the network namespace
//! pinned for the container id (created on demand, see `network netns`).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::network::v1 as pb;
use berth_api::berth::network::v1::networks_client::NetworksClient;
use serde_json::{Value, json};

use crate::context::{Context, Output};
use crate::output;

/// `berthctl network` subcommands.
#[derive(clap::Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks in detail, with their attachments (JSON).
    Inspect {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while containers are attached).
    #[command(alias = "remove")]
    Rm {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every network without attachments.
    Prune {
        /// Only networks matching this filter (repeatable), e.g. label=app=web or name~=^test-.
        #[arg(long, short = 'f')]
        filter: Vec<String>,
    },
    /// Attach a container to a network.
    Connect(ConnectArgs),
    /// Detach a container from a network.
    Disconnect {
        /// Network name.
        network: String,
        /// Container id.
        container: String,
    },
    /// Pinned network namespaces (low level).
    #[command(subcommand)]
    Netns(NetnsCommand),
}

impl NetworkCommand {
    /// The command's name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            NetworkCommand::Create(_) => "network create",
            NetworkCommand::Ls(_) => "network ls",
            NetworkCommand::Inspect { .. } => "network inspect",
            NetworkCommand::Rm { .. } => "network rm",
            NetworkCommand::Prune { .. } => "network prune",
            NetworkCommand::Connect(_) => "network connect",
            NetworkCommand::Disconnect { .. } => "network disconnect",
            NetworkCommand::Netns(_) => "network netns",
        }
    }
}

/// `berthctl network netns` subcommands.
#[derive(clap::Subcommand)]
pub enum NetnsCommand {
    /// Create (or show) the pinned network namespace of a sandbox or container; prints its path.
    Create {
        /// Sandbox or container id.
        id: String,
    },
    /// Remove the pinned network namespace of a sandbox or container (detach it first).
    Rm {
        /// Sandbox or container id.
        id: String,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Network name.
    name: String,
    /// Driver: bridge or cni.
    #[arg(long, short = 'd', default_value = "bridge")]
    driver: String,
    /// Subnet in CIDR notation; a free one from the pools by default.
    #[arg(long)]
    subnet: Option<String>,
    /// Gateway address; the first address of the subnet by default.
    #[arg(long)]
    gateway: Option<String>,
    /// Allocate container addresses from this sub-range of the subnet.
    #[arg(long)]
    ip_range: Option<String>,
    /// No route to the outside, no published ports.
    #[arg(long)]
    internal: bool,
    /// Allow traffic between the network's containers.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    icc: bool,
    /// Label KEY=VALUE (repeatable).
    #[arg(long)]
    label: Vec<String>,
    /// Driver option KEY=VALUE (repeatable): mtu, bridge.name.
    #[arg(long)]
    opt: Vec<String>,
    /// CNI conflist file (driver cni).
    #[arg(long, value_name = "FILE")]
    cni_conflist: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Filter (repeatable), e.g. driver==bridge or labels."app"==web.
    #[arg(long, short = 'f')]
    filter: Vec<String>,
    /// Only names.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// Network name.
    network: String,
    /// Container id.
    container: String,
    /// Static IPv4 address.
    #[arg(long)]
    ip: Option<String>,
    /// DNS alias on the network (repeatable).
    #[arg(long)]
    alias: Vec<String>,
    /// Publish a port: [ip:][hostPort[-end]:]containerPort[-end][/tcp|udp] (repeatable); a
    /// missing host port picks a free one.
    #[arg(long = "publish", short = 'p')]
    publish: Vec<String>,
    /// Network namespace path; default: the one pinned for the container (created if missing).
    #[arg(long)]
    netns: Option<String>,
    /// MAC address; derived from the address by default.
    #[arg(long)]
    mac: Option<String>,
    /// Interface name in the namespace; eth0, eth1... by default.
    #[arg(long)]
    interface: Option<String>,
}

/// `berthctl port` arguments.
#[derive(clap::Args)]
pub struct PortArgs {
    /// Container id.
    container: String,
    /// Only this container port: PORT[/PROTO].
    port: Option<String>,
}

async fn client(ctx: &Context) -> anyhow::Result<NetworksClient<berth_api::client::Channel>> {
    Ok(NetworksClient::new(ctx.connect(Service::Network).await?))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

fn key_values(field: &str, items: &[String]) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--{field} {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Runs a `network` subcommand.
pub async fn run(ctx: &Context, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    let mut c = client(ctx).await?;
    match cmd {
        NetworkCommand::Create(a) => {
            let cni_conflist = match &a.cni_conflist {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
                None => String::new(),
            };
            let request = pb::CreateNetworkRequest {
                name: a.name,
                driver: a.driver,
                subnet: a.subnet.unwrap_or_default(),
                gateway: a.gateway.unwrap_or_default(),
                ip_range: a.ip_range.unwrap_or_default(),
                internal: a.internal,
                icc: a.icc,
                labels: key_values("label", &a.label)?,
                options: key_values("opt", &a.opt)?,
                cni_conflist,
            };
            let network = c
                .create(request)
                .await
                .map_err(status)?
                .into_inner()
                .network;
            let network = network.context("no network in the answer")?;
            match ctx.output {
                Output::Json => println!("{}", output::json(&network_json(&network))?),
                Output::Table => println!("{}", network.id),
            }
        }
        NetworkCommand::Ls(a) => {
            let networks = c
                .list(pb::ListNetworksRequest { filters: a.filter })
                .await
                .map_err(status)?
                .into_inner()
                .networks;
            if a.quiet {
                for n in &networks {
                    println!("{}", n.name);
                }
            } else {
                match ctx.output {
                    Output::Json => {
                        let all: Vec<Value> = networks.iter().map(network_json).collect();
                        println!("{}", output::json(&all)?);
                    }
                    Output::Table => println!(
                        "{}",
                        output::table(
                            &[
                                "NETWORK ID",
                                "NAME",
                                "DRIVER",
                                "SUBNET",
                                "GATEWAY",
                                "CONTAINERS"
                            ],
                            networks.iter().map(|n| {
                                vec![
                                    n.id.chars().take(12).collect::<String>(),
                                    n.name.clone(),
                                    n.driver.clone(),
                                    n.subnet.clone(),
                                    n.gateway.clone(),
                                    n.attachments.to_string(),
                                ]
                            }),
                        )
                    ),
                }
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut all = Vec::new();
            let mut missing = false;
            for name in names {
                match c.inspect(pb::InspectNetworkRequest { name }).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let mut n = r.network.as_ref().map(network_json).unwrap_or(Value::Null);
                        n["containers"] = r.attachments.iter().map(attachment_json).collect();
                        all.push(n);
                    }
                    Err(e) => {
                        eprintln!("berthctl: error: {}", e.message());
                        missing = true;
                    }
                }
            }
            println!("{}", output::json(&all)?);
            if missing {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkCommand::Rm { names } => {
            let mut failed = false;
            for name in names {
                match c
                    .remove(pb::RemoveNetworkRequest { name: name.clone() })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        eprintln!("berthctl: error: {}", e.message());
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkCommand::Prune { filter } => {
            let names = c
                .prune(pb::PruneNetworksRequest { filters: filter })
                .await
                .map_err(status)?
                .into_inner()
                .names;
            match ctx.output {
                Output::Json => println!("{}", output::json(&names)?),
                Output::Table => {
                    for name in names {
                        println!("{name}");
                    }
                }
            }
        }
        NetworkCommand::Connect(a) => {
            let netns_path = match a.netns {
                Some(path) => path,
                None => {
                    c.create_netns(pb::CreateNetnsRequest {
                        sandbox_id: a.container.clone(),
                    })
                    .await
                    .map_err(status)?;
                    String::new()
                }
            };
            let ports = a
                .publish
                .iter()
                .map(|p| parse_publish(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let request = pb::AttachRequest {
                network: a.network,
                container_id: a.container,
                netns_path,
                interface_name: a.interface.unwrap_or_default(),
                ip: a.ip.unwrap_or_default(),
                mac: a.mac.unwrap_or_default(),
                aliases: a.alias,
                ports,
                dns: None,
                extra_hosts: Vec::new(),
            };
            let attachment = c
                .attach(request)
                .await
                .map_err(status)?
                .into_inner()
                .attachment;
            let attachment = attachment.context("no attachment in the answer")?;
            match ctx.output {
                Output::Json => println!("{}", output::json(&attachment_json(&attachment))?),
                Output::Table => println!("{}", attachment.ip),
            }
        }
        NetworkCommand::Disconnect { network, container } => {
            c.detach(pb::DetachRequest {
                network,
                container_id: container,
            })
            .await
            .map_err(status)?;
        }
        NetworkCommand::Netns(NetnsCommand::Create { id }) => {
            let path = c
                .create_netns(pb::CreateNetnsRequest { sandbox_id: id })
                .await
                .map_err(status)?
                .into_inner()
                .netns_path;
            println!("{path}");
        }
        NetworkCommand::Netns(NetnsCommand::Rm { id }) => {
            c.remove_netns(pb::RemoveNetnsRequest { sandbox_id: id })
                .await
                .map_err(status)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `berthctl port CONTAINER [PORT[/PROTO]]`: the container's published ports, Docker style.
pub async fn port(ctx: &Context, args: PortArgs) -> anyhow::Result<ExitCode> {
    let c = client(ctx).await?;
    let list = |container_id: String| {
        let mut c = c.clone();
        async move {
            c.list_attachments(pb::ListAttachmentsRequest {
                network: String::new(),
                container_id,
            })
            .await
            .map(|r| r.into_inner().attachments)
            .map_err(status)
        }
    };
    let mut attachments = list(args.container.clone()).await?;
    if attachments.is_empty() {
        // A container's name or id prefix: its attachments are under its full id.
        if let Ok(found) = async {
            crate::container::Clients::new(ctx)
                .await?
                .find(&args.container)
                .await
        }
        .await
        {
            attachments = list(found.id).await?;
        }
    }
    if attachments.is_empty() {
        bail!(
            "container {:?} is not attached to any network",
            args.container
        );
    }
    let wanted = match &args.port {
        Some(p) => {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let port: u32 = port.parse().with_context(|| format!("bad port {p:?}"))?;
            Some((port, proto.to_owned()))
        }
        None => None,
    };
    let mut lines = Vec::new();
    for a in &attachments {
        for p in &a.ports {
            let proto = protocol_name(p.protocol);
            if wanted
                .as_ref()
                .is_some_and(|(port, pr)| *port != p.container_port || pr != proto)
            {
                continue;
            }
            let host_ip = if p.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                &p.host_ip
            };
            lines.push(json!({
                "container_port": p.container_port,
                "protocol": proto,
                "host_ip": host_ip,
                "host_port": p.host_port,
                "network": a.network,
            }));
        }
    }
    if let Some(port) = &args.port
        && lines.is_empty()
    {
        bail!("no public port {port:?} published for {:?}", args.container);
    }
    match ctx.output {
        Output::Json => println!("{}", output::json(&lines)?),
        Output::Table => {
            for l in &lines {
                if args.port.is_some() {
                    println!("{}:{}", l["host_ip"].as_str().unwrap_or(""), l["host_port"]);
                } else {
                    println!(
                        "{}/{} -> {}:{}",
                        l["container_port"],
                        l["protocol"].as_str().unwrap_or(""),
                        l["host_ip"].as_str().unwrap_or(""),
                        l["host_port"]
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn protocol_name(p: i32) -> &'static str {
    match pb::Protocol::try_from(p) {
        Ok(pb::Protocol::Udp) => "udp",
        Ok(pb::Protocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

/// Parses `[ip:][hostPort[-end]:]containerPort[-end][/proto]`.
pub fn parse_publish(spec: &str) -> anyhow::Result<pb::PortMapping> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p),
        None => (spec, "tcp"),
    };
    let protocol = match proto {
        "tcp" => pb::Protocol::Tcp,
        "udp" => pb::Protocol::Udp,
        other => bail!("-p {spec}: unknown protocol {other:?} (tcp or udp)"),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [c] => ("", "", *c),
        [h, c] => ("", *h, *c),
        [ip, h, c] => (*ip, *h, *c),
        _ => bail!("-p {spec}: expected [ip:][hostPort:]containerPort[/proto]"),
    };
    let range = |text: &str, what: &str| -> anyhow::Result<(u32, u32)> {
        let (a, b) = text.split_once('-').unwrap_or((text, text));
        let a: u16 = a
            .parse()
            .with_context(|| format!("-p {spec}: bad {what} port {a:?}"))?;
        let b: u16 = b
            .parse()
            .with_context(|| format!("-p {spec}: bad {what} port {b:?}"))?;
        if b < a {
            bail!("-p {spec}: {what} range {a}-{b} ends before it starts");
        }
        Ok((a.into(), b.into()))
    };
    let (cstart, cend) = range(container, "container")?;
    let (hstart, hend) = if host.is_empty() {
        (0, 0)
    } else {
        range(host, "host")?
    };
    if hstart != 0 && hend - hstart != cend - cstart {
        bail!("-p {spec}: host and container ranges differ in length");
    }
    Ok(pb::PortMapping {
        host_ip: host_ip.to_owned(),
        host_port: hstart,
        container_port: cstart,
        protocol: protocol as i32,
        container_port_end: cend,
    })
}

fn network_json(n: &pb::Network) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "driver": n.driver,
        "subnet": n.subnet,
        "gateway": n.gateway,
        "ip_range": n.ip_range,
        "internal": n.internal,
        "icc": n.icc,
        "labels": n.labels,
        "options": n.options,
        "bridge": n.bridge,
        "mtu": n.mtu,
        "predefined": n.predefined,
        "dns_server": n.dns_server,
        "attachments": n.attachments,
        "created_at": n.created_at.as_ref().map(|t| t.to_string()),
    })
}

fn attachment_json(a: &pb::Attachment) -> Value {
    json!({
        "network": a.network,
        "container_id": a.container_id,
        "netns_path": a.netns_path,
        "interface": a.interface_name,
        "host_interface": a.host_interface,
        "ip": a.ip,
        "gateway": a.gateway,
        "mac": a.mac,
        "aliases": a.aliases,
        "ports": a.ports.iter().map(|p| json!({
            "host_ip": if p.host_ip.is_empty() { "0.0.0.0" } else { p.host_ip.as_str() },
            "host_port": p.host_port,
            "container_port": p.container_port,
            "protocol": protocol_name(p.protocol),
        })).collect::<Vec<_>>(),
        "dns": a.dns.as_ref().map(|d| json!({
            "servers": d.servers, "search": d.search, "options": d.options,
        })),
        "extra_hosts": a.extra_hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.container_port_end),
            (8080, 80, 80)
        );
        let p = parse_publish("127.0.0.1:8000-8001:80-81/udp").unwrap();
        assert_eq!(p.host_ip, "127.0.0.1");
        assert_eq!(
            (p.host_port, p.container_port, p.container_port_end),
            (8000, 80, 81)
        );
        assert_eq!(p.protocol, pb::Protocol::Udp as i32);
        let p = parse_publish("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = parse_publish("127.0.0.1::80").unwrap();
        assert_eq!((p.host_ip.as_str(), p.host_port), ("127.0.0.1", 0));
        for bad in [
            "",
            "x:80",
            "80/sctp",
            "8000-8002:80-81",
            "1:2:3:4",
            "90-80",
            "70000",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
