//! Attaching containers' network namespaces to networks, and pinned network namespaces.

use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::kernel::link::{self, Veth};
use crate::kernel::netns;
use crate::kernel::ports::{self, Reservation};
use crate::model::{
    AttachSpec, Attachment, DnsConfig, Driver, Network, PortMapping, PortSpec, attachment_key,
    mac_for, validate_alias, validate_name,
};
use crate::store::Change;

use super::{Manager, State, VETH_PREFIX, dns_names, random_hex};

impl Manager {
    /// Attaches a container's netns to a network.
    pub async fn attach(&self, namespace: &str, spec: AttachSpec) -> Result<Attachment> {
        validate_name("container_id", &spec.container_id)?;
        for alias in &spec.aliases {
            validate_alias(alias)?;
        }
        for entry in &spec.extra_hosts {
            let ok = entry.split_once(':').is_some_and(|(name, ip)| {
                !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok()
            });
            if !ok {
                return Err(Error::invalid(
                    "extra_hosts",
                    format!("{entry:?} is not name:address"),
                ));
            }
        }
        if let Some(name) = &spec.interface {
            let ok = !name.is_empty()
                && name.len() <= 15
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(Error::invalid(
                    "interface_name",
                    format!("{name:?} is not an interface name (1-15 characters)"),
                ));
            }
        }
        for p in &spec.ports {
            check_port_spec(p)?;
        }
        let mut st = self.state.lock().await;
        let network = st.find(namespace, &spec.network)?.clone();
        let key = attachment_key(namespace, &spec.container_id, &network.id);
        if st.attachments.contains_key(&key) {
            return Err(Error::AlreadyAttached {
                container: spec.container_id,
                network: network.name,
            });
        }
        if network.internal && !spec.ports.is_empty() {
            return Err(Error::invalid(
                "ports",
                format!(
                    "network {:?} is internal: no port can be published",
                    network.name
                ),
            ));
        }
        let netns_path = match &spec.netns_path {
            Some(path) => {
                netns::check(path)?;
                path.clone()
            }
            None => {
                let path = self.netns_path(namespace, &spec.container_id);
                if !netns::is_netns(&path) {
                    return Err(Error::NetnsNotFound {
                        id: spec.container_id.clone(),
                    });
                }
                path
            }
        };
        let interface = match &spec.interface {
            Some(name) => name.clone(),
            None => {
                let used: HashSet<&str> = st
                    .attachments
                    .values()
                    .filter(|a| a.netns_path == netns_path)
                    .map(|a| a.interface.as_str())
                    .collect();
                (0..)
                    .map(|i| format!("eth{i}"))
                    .find(|n| !used.contains(n.as_str()))
                    .unwrap_or_else(|| "eth0".into())
            }
        };
        if network.driver == Driver::Cni {
            return self
                .attach_cni(&mut st, namespace, &network, &spec, netns_path, interface)
                .await;
        }
        // The predefined network gets its bridge (and possibly a new subnet) first.
        let network = self.activate(&mut st, &network).await?;
        let owner = format!("container {:?}", spec.container_id);
        let result = match st.ipam.allocate(&network, spec.ip, &owner) {
            Ok(ip) => {
                let attached = self
                    .attach_bridge(
                        &mut st, namespace, &network, &spec, netns_path, interface, ip,
                    )
                    .await;
                if attached.is_err() {
                    st.ipam.release(&network.id, ip);
                }
                attached
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self.release_predefined(&mut st, &network.id).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn attach_bridge(
        &self,
        st: &mut State,
        namespace: &str,
        network: &Network,
        spec: &AttachSpec,
        netns_path: std::path::PathBuf,
        interface: String,
        ip: Ipv4Addr,
    ) -> Result<Attachment> {
        // A veth retired from this netns keeps its container end (and so its name) until the
        // deletion ends.
        for deletion in st.retiring.remove(&netns_path).unwrap_or_default() {
            let _ = deletion.await;
        }
        let (ports, reservations) = self.publish(st, network, &spec.ports)?;
        let network = self.activate(st, network).await?;
        let gateway = (!network.internal).then_some(network.gateway);
        let key = &attachment_key(namespace, &spec.container_id, &network.id);
        let attachment = Attachment {
            namespace: namespace.to_owned(),
            network: network.name.clone(),
            network_id: network.id.clone(),
            container_id: spec.container_id.clone(),
            netns_path,
            interface,
            host_interface: format!("{VETH_PREFIX}{}", &random_hex(5)),
            ip,
            prefix_len: network.subnet.prefix_len(),
            gateway,
            mac: spec.mac.unwrap_or_else(|| mac_for(ip)),
            ports,
            aliases: spec.aliases.clone(),
            dns: self.dns_config(&network, &spec.dns),
            extra_hosts: spec.extra_hosts.clone(),
            cni_result: None,
        };
        self.plumb(&network, &attachment).await?;
        st.attachments.insert(key.to_owned(), attachment.clone());
        let persisted = async {
            self.sync_firewall(st).await?;
            self.store.commit(&[
                Change::PutAttachment(&attachment),
                Change::SetLast(&network.id, ip),
            ])
        }
        .await;
        if let Err(e) = persisted {
            st.attachments.remove(key);
            let _ = link::delete(&self.host, &attachment.host_interface).await;
            let _ = self.sync_firewall(st).await;
            return Err(e);
        }
        st.reservations.insert(key.to_owned(), reservations);
        if network.dns {
            self.names.add(&network.id, &dns_names(&attachment), ip);
        }
        tracing::info!(container = %attachment.container_id, network = %network.name, %ip, "attached");
        Ok(attachment)
    }

    /// Creates the veth pair and configures the container end; removes the pair on failure.
    async fn plumb(&self, network: &Network, a: &Attachment) -> Result<()> {
        let bridge_index = link::index(&self.host, &network.bridge)
            .await?
            .ok_or_else(|| {
                Error::io(
                    "find bridge",
                    &network.bridge,
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
        let netns_file =
            File::open(&a.netns_path).map_err(|e| Error::io("open netns", &a.netns_path, e))?;
        let veth = Veth {
            host: &a.host_interface,
            bridge_index,
            peer: &a.interface,
            mac: a.mac,
            mtu: network.mtu,
            isolated: !network.icc,
        };
        link::create_veth(&self.host, &veth, netns_file.as_fd()).await?;
        let address =
            Ipv4Net::new(a.ip, a.prefix_len).map_err(|e| Error::invalid("ip", e.to_string()))?;
        let interface = a.interface.clone();
        let gateway = a.gateway;
        let configured = netns::run_in(&a.netns_path, move |handle| async move {
            link::configure_container(&handle, &interface, address, gateway).await
        })
        .await;
        if let Err(e) = configured {
            let _ = link::delete(&self.host, &a.host_interface).await;
            return Err(e);
        }
        Ok(())
    }

    /// Expands and reserves the requested ports.
    pub(super) fn publish(
        &self,
        st: &State,
        network: &Network,
        specs: &[PortSpec],
    ) -> Result<(Vec<PortMapping>, Vec<Reservation>)> {
        let mut mappings: Vec<PortMapping> = Vec::new();
        let mut held = Vec::new();
        for spec in specs {
            let count = spec.container_port_end - spec.container_port;
            for i in 0..=count {
                let host_ip = spec.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                let host_port = if spec.host_port == 0 {
                    0
                } else {
                    spec.host_port + i
                };
                let clash = |ip: Ipv4Addr, port: u16| {
                    port == host_port
                        && (ip == host_ip || ip.is_unspecified() || host_ip.is_unspecified())
                };
                if host_port != 0 {
                    if let Some(owner) = st.attachments.values().find(|a| {
                        a.ports
                            .iter()
                            .any(|p| p.protocol == spec.protocol && clash(p.host_ip, p.host_port))
                    }) {
                        return Err(Error::PortInUse {
                            ip: host_ip,
                            port: host_port,
                            protocol: spec.protocol,
                            holder: format!(
                                "container {:?} (network {:?})",
                                owner.container_id, owner.network
                            ),
                        });
                    }
                    if mappings
                        .iter()
                        .any(|p| p.protocol == spec.protocol && clash(p.host_ip, p.host_port))
                    {
                        return Err(Error::invalid(
                            "ports",
                            format!("host port {host_port}/{} is published twice", spec.protocol),
                        ));
                    }
                }
                let reservation = ports::reserve(host_ip, host_port, spec.protocol)?;
                mappings.push(PortMapping {
                    host_ip,
                    host_port: reservation.port,
                    container_port: spec.container_port + i,
                    protocol: spec.protocol,
                });
                held.push(reservation);
            }
        }
        let _ = network;
        Ok((mappings, held))
    }

    /// The resolver settings of a container on `network`.
    fn dns_config(&self, network: &Network, requested: &DnsConfig) -> DnsConfig {
        if !requested.is_empty() {
            return requested.clone();
        }
        if network.dns {
            return DnsConfig {
                servers: vec![network.gateway.to_string()],
                search: Vec::new(),
                options: vec!["ndots:0".into()],
            };
        }
        host_resolv_conf()
    }

    /// Detaches a container from a network; not attached is success.
    pub async fn detach(&self, namespace: &str, network: &str, container_id: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let Ok(net) = st.find(namespace, network).cloned() else {
            return Ok(());
        };
        let key = attachment_key(namespace, container_id, &net.id);
        let Some(attachment) = st.attachments.get(&key).cloned() else {
            return Ok(());
        };
        match net.driver {
            Driver::Bridge => {
                if let Some(deletion) = link::retire(&self.host, &attachment.host_interface).await?
                {
                    st.retiring.retain(|_, running| {
                        running.retain(|d| !d.is_finished());
                        !running.is_empty()
                    });
                    st.retiring
                        .entry(attachment.netns_path.clone())
                        .or_default()
                        .push(deletion);
                }
            }
            Driver::Cni => self.detach_cni(&net, &attachment).await?,
        }
        st.attachments.remove(&key);
        let persisted = async {
            self.sync_firewall(&mut st).await?;
            self.store.commit(&[Change::DeleteAttachment(&attachment)])
        }
        .await;
        if let Err(e) = persisted {
            st.attachments.insert(key, attachment);
            return Err(e);
        }
        st.ipam.release(&net.id, attachment.ip);
        st.reservations.remove(&key);
        if net.dns {
            self.names
                .remove(&net.id, &dns_names(&attachment), attachment.ip);
        }
        self.release_predefined(&mut st, &net.id).await?;
        tracing::info!(container = %container_id, network = %net.name, "detached");
        Ok(())
    }

    /// Attachments in `namespace`, of one network and/or one container when given.
    pub async fn list_attachments(
        &self,
        namespace: &str,
        network: Option<&str>,
        container_id: Option<&str>,
    ) -> Result<Vec<Attachment>> {
        let st = self.state.lock().await;
        let network_id = match network {
            Some(name) => Some(st.find(namespace, name)?.id.clone()),
            None => None,
        };
        Ok(st
            .attachments
            .values()
            .filter(|a| a.namespace == namespace)
            .filter(|a| network_id.as_ref().is_none_or(|id| &a.network_id == id))
            .filter(|a| container_id.is_none_or(|c| a.container_id == c))
            .cloned()
            .collect())
    }

    /// Creates (or returns) the pinned netns of a sandbox.
    pub async fn create_netns(
        &self,
        namespace: &str,
        sandbox_id: &str,
    ) -> Result<std::path::PathBuf> {
        validate_name("sandbox_id", sandbox_id)?;
        let _st = self.state.lock().await;
        let path = self.netns_path(namespace, sandbox_id);
        netns::create(&path).await?;
        Ok(path)
    }

    /// Removes the pinned netns of a sandbox, which must be detached from every network.
    pub async fn remove_netns(&self, namespace: &str, sandbox_id: &str) -> Result<()> {
        validate_name("sandbox_id", sandbox_id)?;
        let st = self.state.lock().await;
        let path = self.netns_path(namespace, sandbox_id);
        let networks: Vec<&str> = st
            .attachments
            .values()
            .filter(|a| a.netns_path == path)
            .map(|a| a.network.as_str())
            .collect();
        if !networks.is_empty() {
            return Err(Error::NetnsInUse {
                id: sandbox_id.to_owned(),
                networks: networks.join(", "),
            });
        }
        netns::remove(&path)
    }
}

/// Checks one requested port publication.
fn check_port_spec(p: &PortSpec) -> Result<()> {
    if p.container_port == 0 {
        return Err(Error::invalid("ports", "container port 0"));
    }
    if p.container_port_end < p.container_port {
        return Err(Error::invalid(
            "ports",
            format!(
                "range {}-{} ends before it starts",
                p.container_port, p.container_port_end
            ),
        ));
    }
    let count = u32::from(p.container_port_end - p.container_port);
    if p.host_port != 0 && u32::from(p.host_port) + count > 65535 {
        return Err(Error::invalid(
            "ports",
            format!("host range from {} runs past 65535", p.host_port),
        ));
    }
    if count >= 1024 {
        return Err(Error::invalid(
            "ports",
            "a range publishes at most 1024 ports",
        ));
    }
    Ok(())
}

/// The host's resolvers (what the predefined network's containers use, like Docker's default
/// bridge): loopback servers are dropped, they cannot work from another netns.
pub(super) fn host_resolv_conf() -> DnsConfig {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(server) = words.next()
                    && !server
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                {
                    dns.servers.push(server.to_owned());
                }
            }
            Some("search") => dns.search = words.map(str::to_owned).collect(),
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}
