//! The tonic adapter: converts messages, calls the [`Manager`], maps errors. Nothing else.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::berth::network::v1 as pb;
use berth_api::namespace;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::model::{
    AttachSpec, Attachment, DnsConfig, Network, NetworkSpec, PortSpec, Protocol, format_mac,
    parse_mac,
};

/// The `berth.network.v1.Networks` service.
pub struct NetworksService {
    manager: Arc<Manager>,
}

impl NetworksService {
    /// Serves `manager`.
    pub fn new(manager: Arc<Manager>) -> NetworksService {
        NetworksService { manager }
    }
}

type Rpc<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::networks_server::Networks for NetworksService {
    async fn create(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Rpc<pb::CreateNetworkResponse> {
        let ns = namespace::of(request.metadata())?;
        let spec = network_spec(request.into_inner())?;
        let network = self.manager.create_network(&ns, spec).await?;
        Ok(Response::new(pb::CreateNetworkResponse {
            network: Some(network_pb(&network, 0)),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectNetworkRequest>,
    ) -> Rpc<pb::InspectNetworkResponse> {
        let ns = namespace::of(request.metadata())?;
        let (network, attachments) = self
            .manager
            .inspect_network(&ns, &request.into_inner().name)
            .await?;
        Ok(Response::new(pb::InspectNetworkResponse {
            network: Some(network_pb(&network, attachments.len())),
            attachments: attachments.iter().map(attachment_pb).collect(),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListNetworksRequest>,
    ) -> Rpc<pb::ListNetworksResponse> {
        let ns = namespace::of(request.metadata())?;
        let networks = self
            .manager
            .list_networks(&ns, &request.into_inner().filters)
            .await?;
        Ok(Response::new(pb::ListNetworksResponse {
            networks: networks
                .iter()
                .map(|(n, count)| network_pb(n, *count))
                .collect(),
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveNetworkRequest>,
    ) -> Rpc<pb::RemoveNetworkResponse> {
        let ns = namespace::of(request.metadata())?;
        self.manager
            .remove_network(&ns, &request.into_inner().name)
            .await?;
        Ok(Response::new(pb::RemoveNetworkResponse {}))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneNetworksRequest>,
    ) -> Rpc<pb::PruneNetworksResponse> {
        let ns = namespace::of(request.metadata())?;
        let names = self
            .manager
            .prune_networks(&ns, &request.into_inner().filters)
            .await?;
        Ok(Response::new(pb::PruneNetworksResponse { names }))
    }

    async fn attach(&self, request: Request<pb::AttachRequest>) -> Rpc<pb::AttachResponse> {
        let ns = namespace::of(request.metadata())?;
        let spec = attach_spec(request.into_inner())?;
        let attachment = self.manager.attach(&ns, spec).await?;
        Ok(Response::new(pb::AttachResponse {
            attachment: Some(attachment_pb(&attachment)),
        }))
    }

    async fn detach(&self, request: Request<pb::DetachRequest>) -> Rpc<pb::DetachResponse> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        self.manager
            .detach(&ns, &r.network, &r.container_id)
            .await?;
        Ok(Response::new(pb::DetachResponse {}))
    }

    async fn list_attachments(
        &self,
        request: Request<pb::ListAttachmentsRequest>,
    ) -> Rpc<pb::ListAttachmentsResponse> {
        let ns = namespace::of(request.metadata())?;
        let r = request.into_inner();
        let attachments = self
            .manager
            .list_attachments(
                &ns,
                Some(r.network.as_str()).filter(|s| !s.is_empty()),
                Some(r.container_id.as_str()).filter(|s| !s.is_empty()),
            )
            .await?;
        Ok(Response::new(pb::ListAttachmentsResponse {
            attachments: attachments.iter().map(attachment_pb).collect(),
        }))
    }

    async fn create_netns(
        &self,
        request: Request<pb::CreateNetnsRequest>,
    ) -> Rpc<pb::CreateNetnsResponse> {
        let ns = namespace::of(request.metadata())?;
        let path = self
            .manager
            .create_netns(&ns, &request.into_inner().sandbox_id)
            .await?;
        Ok(Response::new(pb::CreateNetnsResponse {
            netns_path: path.to_string_lossy().into_owned(),
        }))
    }

    async fn remove_netns(
        &self,
        request: Request<pb::RemoveNetnsRequest>,
    ) -> Rpc<pb::RemoveNetnsResponse> {
        let ns = namespace::of(request.metadata())?;
        self.manager
            .remove_netns(&ns, &request.into_inner().sandbox_id)
            .await?;
        Ok(Response::new(pb::RemoveNetnsResponse {}))
    }
}

fn parse<T: std::str::FromStr>(field: &'static str, text: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| Error::invalid(field, format!("{text:?}: {e}")))
}

fn network_spec(r: pb::CreateNetworkRequest) -> Result<NetworkSpec> {
    Ok(NetworkSpec {
        subnet: parse("subnet", &r.subnet)?,
        gateway: parse("gateway", &r.gateway)?,
        ip_range: parse("ip_range", &r.ip_range)?,
        name: r.name,
        driver: r.driver,
        internal: r.internal,
        icc: r.icc,
        labels: r.labels.into_iter().collect(),
        options: r.options.into_iter().collect(),
        cni_conflist: Some(r.cni_conflist).filter(|c| !c.is_empty()),
    })
}

fn port_u16(field: &'static str, value: u32) -> Result<u16> {
    u16::try_from(value).map_err(|_| Error::invalid(field, format!("port {value} is above 65535")))
}

fn attach_spec(r: pb::AttachRequest) -> Result<AttachSpec> {
    let ports = r
        .ports
        .iter()
        .map(|p| {
            let protocol = match pb::Protocol::try_from(p.protocol) {
                Ok(pb::Protocol::Unspecified | pb::Protocol::Tcp) => Protocol::Tcp,
                Ok(pb::Protocol::Udp) => Protocol::Udp,
                Ok(pb::Protocol::Sctp) => {
                    return Err(Error::invalid("ports", "sctp is not supported"));
                }
                Err(_) => {
                    return Err(Error::invalid(
                        "ports",
                        format!("unknown protocol {}", p.protocol),
                    ));
                }
            };
            let container_port = port_u16("ports", p.container_port)?;
            let end = port_u16("ports", p.container_port_end)?;
            Ok(PortSpec {
                host_ip: parse::<Ipv4Addr>("ports", &p.host_ip)?,
                host_port: port_u16("ports", p.host_port)?,
                container_port,
                container_port_end: if end == 0 { container_port } else { end },
                protocol,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let dns = r.dns.map(|d| DnsConfig {
        servers: d.servers,
        search: d.search,
        options: d.options,
    });
    Ok(AttachSpec {
        network: r.network,
        container_id: r.container_id,
        netns_path: Some(PathBuf::from(&r.netns_path)).filter(|_| !r.netns_path.is_empty()),
        interface: Some(r.interface_name).filter(|s| !s.is_empty()),
        ip: parse("ip", &r.ip)?,
        mac: if r.mac.is_empty() {
            None
        } else {
            Some(parse_mac(&r.mac)?)
        },
        aliases: r.aliases,
        ports,
        dns: dns.unwrap_or_default(),
        extra_hosts: r.extra_hosts,
    })
}

fn network_pb(n: &Network, attachments: usize) -> pb::Network {
    pb::Network {
        id: n.id.clone(),
        name: n.name.clone(),
        driver: n.driver.name().into(),
        subnet: n.subnet.to_string(),
        gateway: n.gateway.to_string(),
        ip_range: n.ip_range.map(|r| r.to_string()).unwrap_or_default(),
        internal: n.internal,
        icc: n.icc,
        labels: n.labels.clone().into_iter().collect(),
        options: n.options.clone().into_iter().collect(),
        created_at: Some(n.created_at.into()),
        bridge: n.bridge.clone(),
        mtu: n.mtu,
        predefined: n.predefined,
        dns_server: if n.dns {
            n.gateway.to_string()
        } else {
            String::new()
        },
        attachments: u32::try_from(attachments).unwrap_or(u32::MAX),
        cni_conflist: n.cni_conflist.clone().unwrap_or_default(),
    }
}

fn attachment_pb(a: &Attachment) -> pb::Attachment {
    pb::Attachment {
        network: a.network.clone(),
        container_id: a.container_id.clone(),
        netns_path: a.netns_path.to_string_lossy().into_owned(),
        interface_name: a.interface.clone(),
        ip: format!("{}/{}", a.ip, a.prefix_len),
        gateway: a.gateway.map(|g| g.to_string()).unwrap_or_default(),
        mac: format_mac(&a.mac),
        ports: a
            .ports
            .iter()
            .map(|p| pb::PortMapping {
                host_ip: if p.host_ip.is_unspecified() {
                    String::new()
                } else {
                    p.host_ip.to_string()
                },
                host_port: p.host_port.into(),
                container_port: p.container_port.into(),
                protocol: match p.protocol {
                    Protocol::Tcp => pb::Protocol::Tcp,
                    Protocol::Udp => pb::Protocol::Udp,
                } as i32,
                container_port_end: 0,
            })
            .collect(),
        aliases: a.aliases.clone(),
        dns: Some(pb::DnsConfig {
            servers: a.dns.servers.clone(),
            search: a.dns.search.clone(),
            options: a.dns.options.clone(),
        }),
        extra_hosts: a.extra_hosts.clone(),
        host_interface: a.host_interface.clone(),
    }
}
