//! The network service's vocabulary: networks, attachments, port mappings, resolver settings.
//!
//! A *network* is a layer-2 segment (a Linux bridge, or what a CNI conflist sets up) with a
//! subnet and a gateway. An *attachment* connects one container's network namespace to one
//! network: a veth pair, an address from the network's IPAM, port mappings and DNS names.
//! These are the persisted domain records; the wire messages live in the adapter.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the predefined network every namespace sees.
pub const DEFAULT_NETWORK: &str = "bridge";

/// What implements a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// berth's own bridge driver: bridge, veth pairs, nftables, embedded DNS.
    Bridge,
    /// CNI plugins run from a conflist.
    Cni,
}

impl Driver {
    /// The driver's name, as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::Cni => "cni",
        }
    }

    /// Parses a driver name; empty means bridge.
    pub fn parse(name: &str) -> Result<Driver> {
        match name {
            "" | "bridge" => Ok(Driver::Bridge),
            "cni" => Ok(Driver::Cni),
            other => Err(Error::invalid(
                "driver",
                format!("unknown driver {other:?}: expected \"bridge\" or \"cni\""),
            )),
        }
    }
}

/// A network as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Generated id: 64 hex digits.
    pub id: String,
    /// Namespace the network belongs to; empty for the predefined network.
    pub namespace: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Driver.
    pub driver: Driver,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Gateway: the bridge's address.
    pub gateway: Ipv4Addr,
    /// Sub-range addresses are allocated from; the whole subnet when unset.
    pub ip_range: Option<Ipv4Net>,
    /// No route out: no masquerading, no published ports, no default route in containers.
    pub internal: bool,
    /// Containers of the network may talk to each other.
    pub icc: bool,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options as given.
    pub options: BTreeMap<String, String>,
    /// Host bridge interface.
    pub bridge: String,
    /// MTU.
    pub mtu: u32,
    /// When it was created.
    pub created_at: SystemTime,
    /// The predefined network: shared by every namespace, never removed.
    pub predefined: bool,
    /// Embedded DNS resolver on the gateway address.
    pub dns: bool,
    /// The CNI conflist (JSON) of a CNI network.
    pub cni_conflist: Option<String>,
}

impl Network {
    /// The range addresses are allocated from.
    pub fn range(&self) -> Ipv4Net {
        self.ip_range.unwrap_or(self.subnet)
    }

    /// Whether the network is visible in `namespace`.
    pub fn visible_in(&self, namespace: &str) -> bool {
        self.predefined || self.namespace == namespace
    }
}

/// What a user asks for when creating a network.
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    /// Name.
    pub name: String,
    /// Driver name; empty = bridge.
    pub driver: String,
    /// Subnet; a free one from the pools when unset.
    pub subnet: Option<Ipv4Net>,
    /// Gateway; the first address of the subnet when unset.
    pub gateway: Option<Ipv4Addr>,
    /// Allocation range; the whole subnet when unset.
    pub ip_range: Option<Ipv4Net>,
    /// No route out.
    pub internal: bool,
    /// Inter-container communication.
    pub icc: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// CNI conflist (driver "cni").
    pub cni_conflist: Option<String>,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A requested port publication (possibly a range, possibly with a host port to pick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Host address; every address when unset.
    pub host_ip: Option<Ipv4Addr>,
    /// First host port; 0 = pick free ports.
    pub host_port: u16,
    /// First container port.
    pub container_port: u16,
    /// Last container port (equal to `container_port` for one port).
    pub container_port_end: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One published port, as set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address; `0.0.0.0` = every address.
    pub host_ip: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Resolver settings for a container's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Options.
    pub options: Vec<String>,
}

impl DnsConfig {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// What a caller asks for when attaching a container to a network.
#[derive(Debug, Clone, Default)]
pub struct AttachSpec {
    /// Network name.
    pub network: String,
    /// Container (or sandbox) id.
    pub container_id: String,
    /// Netns path; the pinned netns of the container when unset.
    pub netns_path: Option<PathBuf>,
    /// Interface name in the netns; `ethN` when unset.
    pub interface: Option<String>,
    /// Static address.
    pub ip: Option<Ipv4Addr>,
    /// MAC address; derived from the address when unset.
    pub mac: Option<[u8; 6]>,
    /// DNS names.
    pub aliases: Vec<String>,
    /// Ports to publish.
    pub ports: Vec<PortSpec>,
    /// Resolver settings requested by the user.
    pub dns: DnsConfig,
    /// Extra hosts entries (`name:address`).
    pub extra_hosts: Vec<String>,
}

/// An attachment as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Namespace of the container.
    pub namespace: String,
    /// Network name.
    pub network: String,
    /// Network id.
    pub network_id: String,
    /// Container (or sandbox) id.
    pub container_id: String,
    /// Netns path.
    pub netns_path: PathBuf,
    /// Interface name in the netns.
    pub interface: String,
    /// Host end of the veth pair (empty for CNI networks).
    pub host_interface: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length of the address.
    pub prefix_len: u8,
    /// Default gateway; none on internal networks.
    pub gateway: Option<Ipv4Addr>,
    /// MAC address.
    pub mac: [u8; 6],
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// DNS names.
    pub aliases: Vec<String>,
    /// Resolver settings for resolv.conf.
    pub dns: DnsConfig,
    /// Extra hosts entries.
    pub extra_hosts: Vec<String>,
    /// The CNI result (JSON) of a CNI attachment, kept for DEL and CHECK.
    pub cni_result: Option<String>,
}

impl Attachment {
    /// The attachment's database key.
    pub fn key(&self) -> String {
        attachment_key(&self.namespace, &self.container_id, &self.network_id)
    }
}

/// Database key of an attachment.
pub fn attachment_key(namespace: &str, container_id: &str, network_id: &str) -> String {
    format!("{namespace}/{container_id}/{network_id}")
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`; a unicast address is required.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bad = || {
        Error::invalid(
            "mac",
            format!("{text:?} is not a MAC address aa:bb:cc:dd:ee:ff"),
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(Error::invalid(
            "mac",
            format!("{text} is a multicast address"),
        ));
    }
    Ok(mac)
}

/// The stable MAC of an address: locally administered `02:42` followed by the address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Checks an object name (network names, container ids, aliases' shape is checked apart).
pub fn validate_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{name:?} is not a valid name: 1-128 letters, digits, '_', '.', '-', \
                 starting with a letter or digit"
            ),
        ))
    }
}

/// Checks a DNS name given as an alias: dot-separated labels of letters, digits and inner '-'.
pub fn validate_alias(alias: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if alias.len() <= 253 && alias.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(Error::invalid(
            "aliases",
            format!("{alias:?} is not a DNS name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = mac_for(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(format_mac(&mac), "02:42:0a:01:02:03");
        assert_eq!(parse_mac("02:42:0a:01:02:03").unwrap(), mac);
        for bad in [
            "",
            "02:42",
            "02:42:0a:01:02:03:04",
            "zz:42:0a:01:02:03",
            "01:00:5e:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_aliases() {
        for ok in ["web", "a.b-c_d", "x1"] {
            validate_name("name", ok).unwrap();
        }
        for bad in ["", "-a", "a/b", "a b", ".x"] {
            assert!(validate_name("name", bad).is_err(), "{bad}");
        }
        validate_alias("db.internal").unwrap();
        for bad in ["", "a..b", "-a", "a b"] {
            assert!(validate_alias(bad).is_err(), "{bad}");
        }
    }
}
