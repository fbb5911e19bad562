//! Port-forward targets: TCP connections to `127.0.0.1:<port>` inside a pod's network
//! namespace.

use std::io;
use std::os::fd::AsFd as _;

/// What a port-forward token stands for.
#[derive(Debug, Clone)]
pub struct Target {
    /// Pod sandbox id.
    pub pod_id: String,
    /// The pod's network namespace file; empty when the pod uses the host's network.
    pub netns_path: String,
    /// Ports the PortForward request named; empty = any port the client asks for.
    pub ports: Vec<u16>,
}

impl Target {
    /// Whether the client may forward `port`.
    pub fn allows(&self, port: u16) -> bool {
        port != 0 && (self.ports.is_empty() || self.ports.contains(&port))
    }
}

/// Connects to `127.0.0.1:port` in the network namespace at `netns_path` (the caller's own
/// when empty). The connect runs on a thread of its own that joins the namespace and ends
/// after it, so no thread of the process stays in the pod's namespace.
pub async fn connect(netns_path: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let path = netns_path.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cri-portforward".into())
        .spawn(move || {
            let connected = (|| -> io::Result<std::net::TcpStream> {
                if !path.is_empty() {
                    let ns = std::fs::File::open(&path)?;
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                }
                let stream = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    std::time::Duration::from_secs(10),
                )?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })();
            let _ = tx.send(connected);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_in_the_callers_namespace_when_no_path() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (client, accepted) = tokio::join!(connect("", port), listener.accept());
        assert_eq!(client.unwrap().peer_addr().unwrap().port(), port);
        accepted.unwrap();
        let missing = connect("/nonexistent/netns", port).await.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn allowed_ports() {
        let t = Target {
            pod_id: "p".into(),
            netns_path: String::new(),
            ports: vec![80],
        };
        assert!(t.allows(80) && !t.allows(81) && !t.allows(0));
        let any = Target { ports: vec![], ..t };
        assert!(any.allows(81));
    }
}
