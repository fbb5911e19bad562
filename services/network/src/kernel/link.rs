//! Bridges, veth pairs, addresses and routes over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::{Error, Result};

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().abs(),
        _ => 0,
    }
}

/// The index of the link named `name`, if it exists.
pub async fn index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == ENODEV => Ok(None),
        Err(e) => Err(Error::netlink(format!("look up link {name}"), e)),
    }
}

/// Sets the link named `name` up.
pub async fn set_up_by_name(handle: &Handle, name: &str) -> Result<()> {
    let index = index(handle, name)
        .await?
        .ok_or_else(|| Error::io("set up", name, std::io::Error::from_raw_os_error(ENODEV)))?;
    set_up(handle, index, name).await
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("set {name} up"), e))
}

/// Creates the bridge `name` with `address` (the gateway), `mac` and `mtu`, up, unless it
/// exists; returns its index. The MAC is set explicitly: a bridge without one takes the lowest
/// MAC of its ports and changes it when that port leaves, which breaks the containers' ARP
/// entries for the gateway.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    address: Ipv4Net,
    mac: [u8; 6],
    mtu: u32,
) -> Result<u32> {
    let index = match index(handle, name).await? {
        Some(index) => index,
        None => {
            let message = LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build();
            match handle.link().add(message).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == EEXIST => {}
                Err(e) => return Err(Error::netlink(format!("create bridge {name}"), e)),
            }
            index(handle, name).await?.ok_or_else(|| {
                Error::io(
                    "create bridge",
                    name,
                    std::io::Error::from_raw_os_error(ENODEV),
                )
            })?
        }
    };
    match handle
        .address()
        .add(index, IpAddr::V4(address.addr()), address.prefix_len())
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == EEXIST => {}
        Err(e) => return Err(Error::netlink(format!("add {address} to {name}"), e)),
    }
    set_up(handle, index, name).await?;
    Ok(index)
}

/// Deletes the link named `name`; a missing link is not an error.
pub async fn delete(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == ENODEV => Ok(()),
        Err(e) => Err(Error::netlink(format!("delete link {name}"), e)),
    }
}

/// Takes the link named `name` out of service at once (sets it down, so the bridge stops
/// forwarding to it) and deletes it in the background on a netlink socket of its own: a
/// deletion waits in the kernel for RCU callbacks (tens of milliseconds) and nothing needs the
/// link gone synchronously once it is down. Returns the deletion task (none when the link is
/// missing, which is not an error).
pub async fn retire(handle: &Handle, name: &str) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(index) = index(handle, name).await? else {
        return Ok(None);
    };
    match handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == ENODEV => return Ok(None),
        Err(e) => return Err(Error::netlink(format!("set {name} down"), e)),
    }
    let own = crate::kernel::netns::connect()?;
    let name = name.to_owned();
    Ok(Some(tokio::spawn(async move {
        match own.link().del(index).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == ENODEV => {}
            Err(e) => tracing::warn!(link = %name, error = %e, "could not delete a retired link"),
        }
    })))
}

/// What one veth pair looks like.
pub struct Veth<'a> {
    /// Host end name.
    pub host: &'a str,
    /// Bridge the host end joins.
    pub bridge_index: u32,
    /// Container end name (inside the netns).
    pub peer: &'a str,
    /// Container end MAC.
    pub mac: [u8; 6],
    /// MTU of both ends.
    pub mtu: u32,
    /// Isolate the bridge port (no traffic with other isolated ports: icc off).
    pub isolated: bool,
}

/// Creates a veth pair in one request: the host end up in its bridge, the peer inside the
/// network namespace `netns`.
pub async fn create_veth(handle: &Handle, veth: &Veth<'_>, netns: BorrowedFd<'_>) -> Result<()> {
    let peer: LinkMessage = LinkMessageBuilder::<LinkUnspec>::new()
        .name(veth.peer.to_owned())
        .mtu(veth.mtu)
        .address(veth.mac.to_vec())
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(veth.host.to_owned())
        .mtu(veth.mtu)
        .controller(veth.bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("create veth pair {}", veth.host), e))?;
    if veth.isolated {
        let result = async {
            let index = index(handle, veth.host).await?.ok_or_else(|| {
                Error::io(
                    "isolate",
                    veth.host,
                    std::io::Error::from_raw_os_error(ENODEV),
                )
            })?;
            handle
                .link()
                .set_port(LinkBridgePort::new(index).isolated(true).build())
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("isolate bridge port {}", veth.host), e))
        }
        .await;
        if let Err(e) = result {
            let _ = delete(handle, veth.host).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Inside a container's netns: loopback up, `interface` up with `address`, and a default route
/// via `gateway` when given.
pub async fn configure_container(
    handle: &Handle,
    interface: &str,
    address: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    set_up_by_name(handle, "lo").await?;
    let index = index(handle, interface).await?.ok_or_else(|| {
        Error::io(
            "configure",
            interface,
            std::io::Error::from_raw_os_error(ENODEV),
        )
    })?;
    handle
        .address()
        .add(index, IpAddr::V4(address.addr()), address.prefix_len())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("add {address} to {interface}"), e))?;
    set_up(handle, index, interface).await?;
    if let Some(gateway) = gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("add default route via {gateway}"), e))?;
    }
    Ok(())
}

/// Deletes `interface` inside a netns (the CNI-less cleanup of a failed attach).
pub async fn delete_in(handle: &Handle, interface: &str) -> Result<()> {
    delete(handle, interface).await
}

/// Every IPv4 destination the host routes somewhere (default routes excluded) and every
/// subnet of an address on a host interface: what a new network must not overlap.
pub async fn host_prefixes(handle: &Handle) -> Result<Vec<Ipv4Net>> {
    let mut found = Vec::new();
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(route) = routes
        .try_next()
        .await
        .map_err(|e| Error::netlink("list routes", e))?
    {
        let len = route.header.destination_prefix_length;
        if len == 0 || route.header.table == 255 || route.header.kind != RouteType::Unicast {
            continue;
        }
        for attr in &route.attributes {
            if let RouteAttribute::Destination(RouteAddress::Inet(dst)) = attr
                && let Ok(net) = Ipv4Net::new(*dst, len)
            {
                found.push(net.trunc());
            }
        }
    }
    let mut addresses = handle.address().get().execute();
    while let Some(address) = addresses
        .try_next()
        .await
        .map_err(|e| Error::netlink("list addresses", e))?
    {
        for attr in &address.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr
                && !ip.is_loopback()
                && let Ok(net) = Ipv4Net::new(*ip, address.header.prefix_len)
            {
                found.push(net.trunc());
            }
        }
    }
    Ok(found)
}

/// Names of the links enslaved to the bridge with index `bridge`.
pub async fn bridge_ports(handle: &Handle, bridge: u32) -> Result<Vec<String>> {
    let mut ports = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| Error::netlink("list links", e))?
    {
        let enslaved = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == bridge));
        if enslaved
            && let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        {
            ports.push(name);
        }
    }
    Ok(ports)
}
