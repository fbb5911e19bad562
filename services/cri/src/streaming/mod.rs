//! The streaming server: the URLs Exec, Attach and PortForward return, and the SPDY and
//! WebSocket protocols kubelet's clients speak on them.
//!
//! An RPC validates its request and records it under a one-time token ([`tokens`]); the URL
//! `http://<stream_address>:<port>/{exec,attach,portforward}/<token>` leads to [`server`], which
//! upgrades the connection to [`websocket`] or [`spdy`]; both run exec and attach sessions
//! through [`session`] (the tasks service's Exec, Attach and Start) and port-forwards through
//! [`portforward`] (connections made inside the pod's network namespace).

pub mod portforward;
pub mod server;
pub mod session;
pub mod spdy;
pub mod tokens;
pub mod websocket;

use std::sync::Arc;

use berth_api::config::CriConfig;
use berth_api::runtime::v1 as cri;
use tonic::Status;

use crate::Cri;

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Pending {
    /// An exec (with a command) or an attach (without).
    Stream(session::Target),
    /// A port-forward into a pod.
    PortForward(portforward::Target),
}

impl Pending {
    /// The first path segment of its URL.
    pub fn kind(&self) -> &'static str {
        match self {
            Pending::Stream(t) if t.cmd.is_some() => "exec",
            Pending::Stream(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The streaming server's shared state: pending tokens and the server's base URL.
pub struct Streaming {
    /// Requests waiting for their client.
    pub tokens: tokens::Tokens<Pending>,
    /// `http://<address>:<port>`.
    base: String,
}

impl Streaming {
    /// Binds the server's listener as `config` says; [`Streaming::spawn`] serves it.
    pub fn bind(config: &CriConfig) -> anyhow::Result<(Streaming, std::net::TcpListener)> {
        let address: std::net::IpAddr = config.stream_address.parse()?;
        let listener = std::net::TcpListener::bind((address, config.stream_port)).map_err(|e| {
            anyhow::anyhow!(
                "streaming server: cannot listen on {}:{}: {e}",
                config.stream_address,
                config.stream_port
            )
        })?;
        listener.set_nonblocking(true)?;
        let base = format!("http://{}", listener.local_addr()?);
        let streaming = Streaming {
            tokens: tokens::Tokens::default(),
            base,
        };
        Ok((streaming, listener))
    }

    /// Serves `listener` on the current tokio runtime, for the process's lifetime.
    pub fn spawn(listener: std::net::TcpListener, cri: Arc<Cri>) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(url = %cri.streaming.base, "streaming server listening");
        tokio::spawn(server::serve(listener, cri.clone(), cri.streaming.clone()));
        Ok(())
    }

    /// The URL of a new token for `pending`.
    fn url(&self, pending: Pending) -> Result<String, Status> {
        let kind = pending.kind();
        let token = self
            .tokens
            .mint(pending)
            .map_err(|e| Status::internal(format!("stream token: {e}")))?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }
}

fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), Status> {
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be set: a terminal has one output stream",
        ));
    }
    Ok(())
}

/// Exec: validates the request and returns the URL that runs it.
pub async fn exec(cri: &Cri, request: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    if request.cmd.is_empty() {
        return Err(Status::invalid_argument(
            "cmd is empty: name the command to run",
        ));
    }
    check_streams(request.stdin, request.stdout, request.stderr, request.tty)?;
    session::check_running(cri, &request.container_id).await?;
    let url = cri.streaming.url(Pending::Stream(session::Target {
        container_id: request.container_id,
        cmd: Some(request.cmd),
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    }))?;
    Ok(cri::ExecResponse { url })
}

/// Attach: validates the request and returns the URL that attaches to the container's init
/// process.
pub async fn attach(cri: &Cri, request: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    check_streams(request.stdin, request.stdout, request.stderr, request.tty)?;
    session::check_running(cri, &request.container_id).await?;
    let url = cri.streaming.url(Pending::Stream(session::Target {
        container_id: request.container_id,
        cmd: None,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    }))?;
    Ok(cri::AttachResponse { url })
}

/// PortForward: validates the request and returns the URL that forwards to the pod's ports.
pub async fn port_forward(
    cri: &Cri,
    request: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    let pod = cri.sandboxes.get(&request.pod_sandbox_id)?;
    if pod.state != crate::sandbox::record::State::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    let ports = request
        .port
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Status::invalid_argument(format!("port {p} is not in 1..=65535")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let url = cri
        .streaming
        .url(Pending::PortForward(portforward::Target {
            pod_id: pod.id,
            netns_path: pod.netns_path,
            ports,
        }))?;
    Ok(cri::PortForwardResponse { url })
}
