//! The embedded DNS resolver of user-defined networks.
//!
//! Why a resolver and not managed /etc/hosts files: names change while containers run (connect,
//! disconnect, restarts of peers), and a resolver sees every change at once without rewriting
//! files inside other containers' root filesystems, which the network service does not own. Like
//! Docker's, it answers the names and aliases of the containers attached to one network, on
//! that network's gateway address (UDP port 53, bound from the host, so nothing runs inside the
//! containers). A name it does not know is forwarded to the configured upstream servers when
//! there are any (`network.dns_upstreams`), and answered REFUSED otherwise: nothing leaves the
//! host unless configured.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// TTL of the answers, in seconds (short: containers come and go).
const TTL: u32 = 5;
/// How long a forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight per network at most.
const MAX_FORWARDS: usize = 64;

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// Response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// Success (possibly with no answer).
    NoError = 0,
    /// The query could not be parsed.
    FormErr = 1,
    /// The server failed.
    ServFail = 2,
    /// Not implemented (non-standard opcode).
    NotImp = 4,
    /// The server refuses to answer (names it does not know, without upstreams).
    Refused = 5,
}

/// One network's names: lower-case name -> addresses.
type Table = HashMap<String, Vec<Ipv4Addr>>;

/// Names of every network: network id -> its table.
#[derive(Debug, Default, Clone)]
pub struct Names {
    inner: Arc<RwLock<HashMap<String, Table>>>,
}

impl Names {
    /// Adds `names` for `ip` on a network.
    pub fn add(&self, network_id: &str, names: &[String], ip: Ipv4Addr) {
        let mut all = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let network = all.entry(network_id.to_owned()).or_default();
        for name in names {
            let ips = network.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }

    /// Removes `names` for `ip` on a network.
    pub fn remove(&self, network_id: &str, names: &[String], ip: Ipv4Addr) {
        let mut all = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(network) = all.get_mut(network_id) {
            for name in names {
                let key = name.to_ascii_lowercase();
                if let Some(ips) = network.get_mut(&key) {
                    ips.retain(|i| *i != ip);
                    if ips.is_empty() {
                        network.remove(&key);
                    }
                }
            }
        }
    }

    /// Forgets a network.
    pub fn forget(&self, network_id: &str) {
        let mut all = self.inner.write().unwrap_or_else(|e| e.into_inner());
        all.remove(network_id);
    }

    /// The addresses of `name` on a network.
    pub fn lookup(&self, network_id: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let all = self.inner.read().unwrap_or_else(|e| e.into_inner());
        all.get(network_id)
            .and_then(|n| n.get(&name.to_ascii_lowercase()))
            .cloned()
    }
}

/// A parsed question.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    /// Query id.
    pub id: u16,
    /// Recursion desired.
    pub rd: bool,
    /// Name without the trailing dot.
    pub name: String,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// End of the question section in the packet.
    pub end: usize,
}

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this answer.
    Reply(Vec<u8>),
    /// Forward the query upstream.
    Forward,
    /// Drop it (not a query).
    Ignore,
}

/// Parses the question of a query.
pub fn parse(packet: &[u8]) -> Result<Question, Rcode> {
    if packet.len() < 12 {
        return Err(Rcode::FormErr);
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if (flags >> 11) & 0xf != 0 {
        return Err(Rcode::NotImp);
    }
    let qdcount = u16::from_be_bytes([packet[4], packet[5]]);
    if qdcount != 1 {
        return Err(Rcode::FormErr);
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *packet.get(pos).ok_or(Rcode::FormErr)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(Rcode::FormErr);
        }
        let label = packet.get(pos..pos + len).ok_or(Rcode::FormErr)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += len;
        if pos > 12 + 255 {
            return Err(Rcode::FormErr);
        }
    }
    let tail = packet.get(pos..pos + 4).ok_or(Rcode::FormErr)?;
    Ok(Question {
        id,
        rd: flags & 0x0100 != 0,
        name: labels.join("."),
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        end: pos + 4,
    })
}

/// Answers `packet` from `names` of network `network_id`.
pub fn answer(packet: &[u8], names: &Names, network_id: &str, forwarding: bool) -> Action {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Action::Ignore;
    }
    let q = match parse(packet) {
        Ok(q) => q,
        Err(rcode) => {
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return Action::Reply(header(id, false, rcode, 0, 0, forwarding));
        }
    };
    let question = &packet[12..q.end];
    match names.lookup(network_id, &q.name) {
        Some(ips) if q.qclass == CLASS_IN => {
            let wanted = matches!(q.qtype, TYPE_A | TYPE_ANY);
            let count = if wanted { ips.len() as u16 } else { 0 };
            let mut out = header(q.id, q.rd, Rcode::NoError, 1, count, forwarding);
            out.extend_from_slice(question);
            if wanted {
                for ip in ips {
                    out.extend_from_slice(&[0xc0, 12]);
                    out.extend_from_slice(&TYPE_A.to_be_bytes());
                    out.extend_from_slice(&CLASS_IN.to_be_bytes());
                    out.extend_from_slice(&TTL.to_be_bytes());
                    out.extend_from_slice(&4u16.to_be_bytes());
                    out.extend_from_slice(&ip.octets());
                }
            }
            Action::Reply(out)
        }
        _ if forwarding => Action::Forward,
        _ => {
            let mut out = header(q.id, q.rd, Rcode::Refused, 1, 0, false);
            out.extend_from_slice(question);
            Action::Reply(out)
        }
    }
}

fn header(id: u16, rd: bool, rcode: Rcode, qd: u16, an: u16, ra: bool) -> Vec<u8> {
    // QR=1, opcode 0, AA=1, RD copied, RA when forwarding.
    let mut flags: u16 = 0x8400 | rcode as u16;
    if rd {
        flags |= 0x0100;
    }
    if ra {
        flags |= 0x0080;
    }
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qd.to_be_bytes());
    out.extend_from_slice(&an.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// Serves DNS for one network on `socket` until the task is aborted.
pub async fn serve(
    socket: UdpSocket,
    names: Names,
    network_id: String,
    upstreams: Vec<SocketAddr>,
) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns receive failed");
                continue;
            }
        };
        let packet = buf[..len].to_vec();
        match answer(&packet, &names, &network_id, !upstreams.is_empty()) {
            Action::Reply(out) => {
                let _ = socket.send_to(&out, peer).await;
            }
            Action::Ignore => {}
            Action::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    if let Ok(q) = parse(&packet) {
                        let mut out = header(q.id, q.rd, Rcode::ServFail, 1, 0, true);
                        out.extend_from_slice(&packet[12..q.end]);
                        let _ = socket.send_to(&out, peer).await;
                    }
                    continue;
                };
                let socket = socket.clone();
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = forward(&packet, &upstreams).await {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

/// Asks each upstream in turn; the first answer wins.
async fn forward(packet: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.send_to(packet, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((len, from))) =
            tokio::time::timeout(FORWARD_TIMEOUT, socket.recv_from(&mut buf)).await
            && from == *upstream
            && len >= 2
            && buf[..2] == packet[..2]
        {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn answers_known_names_and_refuses_others() {
        let names = Names::default();
        names.add(
            "n",
            &["Web".into(), "alias".into()],
            Ipv4Addr::new(10, 0, 0, 2),
        );
        let Action::Reply(out) = answer(&query("web", TYPE_A), &names, "n", false) else {
            panic!("no reply");
        };
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(out[3] & 0xf, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 1, "one answer");
        assert_eq!(&out[out.len() - 4..], &[10, 0, 0, 2]);

        let Action::Reply(out) = answer(&query("alias", 28), &names, "n", false) else {
            panic!("no reply");
        };
        assert_eq!(out[3] & 0xf, 0);
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 0, "AAAA: no data");

        let Action::Reply(out) = answer(&query("example.com", TYPE_A), &names, "n", false) else {
            panic!("no reply");
        };
        assert_eq!(out[3] & 0xf, Rcode::Refused as u8);
        assert_eq!(
            answer(&query("example.com", TYPE_A), &names, "n", true),
            Action::Forward
        );
        assert!(matches!(
            answer(&query("web", TYPE_A), &names, "other", false),
            Action::Reply(r) if r[3] & 0xf == Rcode::Refused as u8
        ));

        names.remove("n", &["web".into()], Ipv4Addr::new(10, 0, 0, 2));
        assert!(names.lookup("n", "web").is_none());
        assert!(names.lookup("n", "alias").is_some());
    }

    #[test]
    fn garbage_never_panics() {
        let names = Names::default();
        for packet in [
            &[][..],
            &[0u8; 11][..],
            &[0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 200][..],
            &[0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1][..],
            &[0, 0, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0][..],
        ] {
            let _ = answer(packet, &names, "n", false);
        }
    }
}
