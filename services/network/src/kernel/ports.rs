//! Host port reservations for published ports.
//!
//! Published ports are DNAT rules, not proxies; still, the service binds (without listening)
//! each published host port, so no other program can take it while it is published and a port
//! already taken is refused at attach time. A port asked as 0 is picked by the kernel the same
//! way. When the bind fails, /proc tells which process holds the port.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket};

use crate::error::{Error, Result};
use crate::model::Protocol;

/// A bound host port, released when dropped.
#[derive(Debug)]
pub struct Reservation {
    _socket: OwnedFd,
    /// The bound port.
    pub port: u16,
}

/// Binds `ip:port` for `protocol` (port 0: a free port the kernel picks).
pub fn reserve(ip: Ipv4Addr, port: u16, protocol: Protocol) -> Result<Reservation> {
    let kind = match protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    let socket = socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Error::io("create socket", "port reservation", e.into()))?;
    let address = SockaddrIn::from(SocketAddrV4::new(ip, port));
    match bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &address) {
        Ok(()) => {}
        Err(nix::errno::Errno::EADDRINUSE) => {
            return Err(Error::PortInUse {
                ip,
                port,
                protocol,
                holder: holder(port, protocol),
            });
        }
        Err(nix::errno::Errno::EADDRNOTAVAIL) => {
            return Err(Error::invalid(
                "ports",
                format!("{ip} is not an address of this host"),
            ));
        }
        Err(e) => {
            return Err(Error::io(
                "bind host port",
                format!("{ip}:{port}/{protocol}"),
                e.into(),
            ));
        }
    }
    let bound: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&socket))
        .map_err(|e| Error::io("getsockname", "port reservation", e.into()))?;
    Ok(Reservation {
        _socket: socket,
        port: bound.port(),
    })
}

/// Describes who holds `port`: "process <pid> (<name>)", or what /proc could tell.
pub fn holder(port: u16, protocol: Protocol) -> String {
    let tables: &[&str] = match protocol {
        Protocol::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
        Protocol::Udp => &["/proc/net/udp", "/proc/net/udp6"],
    };
    let mut inodes = Vec::new();
    for table in tables {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(socket_inodes(&text, port));
    }
    if inodes.is_empty() {
        return "another socket on this host".into();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return format!("socket inode {}", inodes[0]);
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if inodes.iter().any(|i| link == format!("socket:[{i}]")) {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "?".into());
                return format!("process {pid} ({name})");
            }
        }
    }
    format!("socket inode {} (owner not visible)", inodes[0])
}

/// Inodes of the sockets bound to `port` in a /proc/net/{tcp,udp}[6] table.
fn socket_inodes(table: &str, port: u16) -> Vec<u64> {
    let wanted = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, p) = local.rsplit_once(':')?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            (p == wanted && inode != 0).then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        assert_eq!(socket_inodes(table, 8080), vec![4242]);
        assert_eq!(socket_inodes(table, 80), vec![77]);
        assert!(socket_inodes(table, 81).is_empty());
    }

    #[test]
    fn a_taken_port_names_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = reserve(Ipv4Addr::LOCALHOST, port, Protocol::Tcp).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        let free = reserve(Ipv4Addr::LOCALHOST, 0, Protocol::Udp).unwrap();
        assert_ne!(free.port, 0);
    }
}
