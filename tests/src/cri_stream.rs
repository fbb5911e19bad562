//! A client of the CRI streaming server that speaks what kubectl and crictl speak: the
//! WebSocket channel protocols (`v5.channel.k8s.io`, `v4.channel.k8s.io`,
//! `portforward.k8s.io`) and SPDY/3.1 (see [`crate::spdy`]).
//!
//! Every protocol is reduced to numbered channels (0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize for exec/attach; `2i` data and `2i+1` error of the i-th port for port-forward):
//! a [`Session`] sends on them and collects what arrives on them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::spdy;

/// stdin channel.
pub const STDIN: u8 = 0;
/// stdout channel.
pub const STDOUT: u8 = 1;
/// stderr channel.
pub const STDERR: u8 = 2;
/// error (status) channel.
pub const ERROR: u8 = 3;
/// resize channel.
pub const RESIZE: u8 = 4;

/// The wire protocol a [`Session`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// WebSocket, `v5.channel.k8s.io` (stdin can be closed).
    WebSocketV5,
    /// WebSocket, `v4.channel.k8s.io`.
    WebSocketV4,
    /// WebSocket, `v4.base64.channel.k8s.io` (text messages, base64 payloads).
    WebSocketV4Base64,
    /// SPDY/3.1 with `X-Stream-Protocol-Version: v4.channel.k8s.io` (or
    /// `portforward.k8s.io`).
    Spdy,
}

/// What the client asks the transport to do.
#[derive(Debug)]
pub enum Command {
    /// Send bytes on a channel.
    Data(u8, Vec<u8>),
    /// Close a channel (half-close: the client sends no more on it).
    Close(u8),
}

/// What arrives from the server.
#[derive(Debug)]
pub enum Event {
    /// Bytes on a channel.
    Data(u8, Vec<u8>),
    /// The connection ended: cleanly (a WebSocket close with code 1000, which Go clients
    /// require, or the end of a SPDY connection) or not.
    End {
        /// It ended cleanly.
        clean: bool,
    },
}

/// A connected streaming session.
pub struct Session {
    tx: mpsc::Sender<Command>,
    rx: mpsc::Receiver<Event>,
    /// Everything received so far, per channel.
    pub received: BTreeMap<u8, Vec<u8>>,
    ended: bool,
    /// Whether the server ended the connection cleanly (see [`Event::End`]).
    pub clean: bool,
}

/// Channels of an exec or attach with these streams (what SPDY opens).
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams {
    /// stdin is sent.
    pub stdin: bool,
    /// stdout is wanted.
    pub stdout: bool,
    /// stderr is wanted.
    pub stderr: bool,
    /// The process has a terminal (a resize channel).
    pub tty: bool,
}

impl Session {
    /// Connects to an exec or attach `url` with `protocol`.
    pub async fn stream(url: &str, protocol: Protocol, streams: Streams) -> Result<Session> {
        match protocol {
            Protocol::WebSocketV5 => websocket(url, "v5.channel.k8s.io", false).await,
            Protocol::WebSocketV4 => websocket(url, "v4.channel.k8s.io", false).await,
            Protocol::WebSocketV4Base64 => websocket(url, "v4.base64.channel.k8s.io", false).await,
            Protocol::Spdy => spdy::stream(url, streams).await,
        }
    }

    /// Connects to a port-forward `url` for `ports` with `protocol` (WebSocket protocols speak
    /// `portforward.k8s.io`).
    pub async fn port_forward(url: &str, protocol: Protocol, ports: &[u16]) -> Result<Session> {
        match protocol {
            Protocol::Spdy => spdy::port_forward(url, ports).await,
            _ => {
                let query: Vec<String> = ports.iter().map(|p| format!("port={p}")).collect();
                websocket(
                    &format!("{url}?{}", query.join("&")),
                    "portforward.k8s.io",
                    true,
                )
                .await
            }
        }
    }

    /// A session over a transport's command and event channels.
    pub fn new(tx: mpsc::Sender<Command>, rx: mpsc::Receiver<Event>) -> Session {
        Session {
            tx,
            rx,
            received: BTreeMap::new(),
            ended: false,
            clean: false,
        }
    }

    /// Sends `data` on `channel`.
    pub async fn send(&self, channel: u8, data: &[u8]) -> Result<()> {
        self.tx
            .send(Command::Data(channel, data.to_vec()))
            .await
            .context("the session's connection is gone")
    }

    /// Sends a terminal size.
    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        let size = format!("{{\"Width\":{width},\"Height\":{height}}}");
        self.send(RESIZE, size.as_bytes()).await
    }

    /// Closes `channel` from the client's side.
    pub async fn close(&self, channel: u8) -> Result<()> {
        self.tx
            .send(Command::Close(channel))
            .await
            .context("the session's connection is gone")
    }

    /// What arrived on `channel`, as text.
    pub fn text(&self, channel: u8) -> String {
        String::from_utf8_lossy(self.received.get(&channel).map_or(&[][..], Vec::as_slice))
            .into_owned()
    }

    async fn next(&mut self) -> bool {
        match self.rx.recv().await {
            Some(Event::Data(channel, data)) => {
                self.received.entry(channel).or_default().extend(data);
                true
            }
            Some(Event::End { clean }) => {
                (self.ended, self.clean) = (true, clean);
                false
            }
            None => {
                self.ended = true;
                false
            }
        }
    }

    /// Waits (at most `timeout`) until `channel` has received `needle`.
    pub async fn wait_for(&mut self, channel: u8, needle: &str, timeout: Duration) -> Result<()> {
        let found = tokio::time::timeout(timeout, async {
            while !self.text(channel).contains(needle) {
                if !self.next().await {
                    return false;
                }
            }
            true
        })
        .await;
        match found {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "the session ended before {needle:?} on channel {channel}: {:?}",
                self.texts()
            ),
            Err(_) => bail!(
                "no {needle:?} on channel {channel} within {timeout:?}: {:?}",
                self.texts()
            ),
        }
    }

    /// Waits (at most `timeout`) until the server ends the session.
    pub async fn wait_end(&mut self, timeout: Duration) -> Result<()> {
        let ended =
            tokio::time::timeout(timeout, async { while !self.ended && self.next().await {} })
                .await;
        match ended {
            Ok(()) => Ok(()),
            Err(_) => bail!(
                "the session did not end within {timeout:?}: {:?}",
                self.texts()
            ),
        }
    }

    /// The status object received on the error channel.
    pub fn status(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(self.received.get(&ERROR).map_or(&[][..], Vec::as_slice))
            .with_context(|| format!("no status on the error channel: {:?}", self.texts()))
    }

    fn texts(&self) -> BTreeMap<u8, String> {
        self.received.keys().map(|c| (*c, self.text(*c))).collect()
    }
}

/// The HTTP status a GET upgrade request to `url` gets (for expired or used tokens).
pub async fn upgrade_status(url: &str, protocol: Protocol) -> Result<u16> {
    match protocol {
        Protocol::Spdy => spdy::upgrade_status(url).await,
        _ => {
            let subprotocol = match protocol {
                Protocol::WebSocketV4 | Protocol::WebSocketV4Base64 => "v4.channel.k8s.io",
                _ => "v5.channel.k8s.io",
            };
            let mut request = url.replacen("http://", "ws://", 1).into_client_request()?;
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(subprotocol),
            );
            let stream = connect_tcp(url).await?;
            match tokio_tungstenite::client_async(request, stream).await {
                Ok((_, response)) => Ok(response.status().as_u16()),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    Ok(response.status().as_u16())
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// A TCP connection to the host:port of an `http://` URL.
pub async fn connect_tcp(url: &str) -> Result<tokio::net::TcpStream> {
    let rest = url.strip_prefix("http://").context("not an http:// URL")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(tokio::net::TcpStream::connect(authority).await?)
}

/// A WebSocket session speaking `subprotocol`; `port_forward` strips the port prefix the
/// server sends first on every port-forward channel.
async fn websocket(url: &str, subprotocol: &'static str, port_forward: bool) -> Result<Session> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url.into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(subprotocol),
    );
    let stream = connect_tcp(url).await?;
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let chosen = response.headers().get("Sec-WebSocket-Protocol");
    anyhow::ensure!(
        chosen.and_then(|v| v.to_str().ok()) == Some(subprotocol),
        "the server chose {chosen:?}"
    );
    let text = subprotocol.contains("base64");
    let (mut sink, mut source) = ws.split();
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let (event_tx, event_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut prefixed = std::collections::BTreeSet::new();
        let mut clean = false;
        loop {
            tokio::select! {
                command = cmd_rx.recv() => {
                    let frame = match command {
                        Some(Command::Data(channel, data)) => {
                            let mut f = vec![channel];
                            f.extend(data);
                            f
                        }
                        Some(Command::Close(channel)) => vec![255, channel],
                        None => {
                            let _ = sink.send(Message::Close(None)).await;
                            break;
                        }
                    };
                    let message = match text {
                        true => {
                            let mut t = String::from(char::from(b'0' + frame[0]));
                            t.push_str(&base64::engine::general_purpose::STANDARD.encode(&frame[1..]));
                            Message::Text(t.into())
                        }
                        false => Message::Binary(frame.into()),
                    };
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                message = source.next() => match message.map(|m| m.map(|m| match m {
                    Message::Text(t) if !t.is_empty() => {
                        let mut data = vec![t.as_bytes()[0].wrapping_sub(b'0')];
                        data.extend(base64::engine::general_purpose::STANDARD.decode(&t[1..]).unwrap_or_default());
                        Message::Binary(data.into())
                    }
                    m => m,
                })) {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                        let mut payload = &data[1..];
                        if port_forward && prefixed.insert(data[0]) {
                            payload = payload.get(2..).unwrap_or_default();
                        }
                        let _ = event_tx.send(Event::Data(data[0], payload.to_vec())).await;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        clean = frame.is_some_and(|f| f.code == CloseCode::Normal);
                        break;
                    }
                    Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = event_tx.send(Event::End { clean }).await;
    });
    Ok(Session::new(cmd_tx, event_rx))
}
