//! The WebSocket channel protocols of kubelet's streaming server.
//!
//! Exec and attach (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with
//! a channel byte — 0 stdin, 1 stdout, 2 stderr, 3 error (the final `Status` JSON), 4 resize
//! (`{"Width":..,"Height":..}`) — and, in v5 only, 255 followed by a channel byte closes that
//! channel (the client closing stdin). `v4.base64.channel.k8s.io` is v4 in text messages: the
//! channel as an ASCII digit followed by the payload in base64.
//!
//! Port-forward (`portforward.k8s.io`): the ports are in the query (`?port=80&port=8080`); the
//! i-th port has data channel `2i` and error channel `2i+1`, and the server's first message on
//! each of them is the port number (two bytes, little endian).

use std::sync::Arc;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::portforward;
use super::session::{self, Io, Outcome, Output};
use crate::Cri;

/// Subprotocols for exec and attach, preferred first.
pub const STREAM_PROTOCOLS: [&str; 3] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
];
/// The text variant of v4: text messages, the channel as an ASCII digit, payload in base64.
const BASE64: &str = "v4.base64.channel.k8s.io";
/// Subprotocols for port-forward.
pub const PORT_FORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The first of the client's `offered` subprotocols (a `Sec-WebSocket-Protocol` value) that
/// is in `supported`.
pub fn choose(offered: &str, supported: &[&'static str]) -> Option<&'static str> {
    offered
        .split(',')
        .map(str::trim)
        .find_map(|p| supported.iter().find(|s| **s == p).copied())
}

/// A message of `channel` in the text variant.
fn text_frame(channel: u8, data: &[u8]) -> Message {
    let mut text = String::from(char::from(b'0' + channel));
    text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
    Message::Text(text.into())
}

/// A text-variant message as binary (channel byte + payload); None if it is malformed.
fn from_text(text: &str) -> Option<Vec<u8>> {
    let channel = text.as_bytes().first()?.checked_sub(b'0')?;
    let mut data = vec![channel];
    data.extend(
        base64::engine::general_purpose::STANDARD
            .decode(&text[1..])
            .ok()?,
    );
    Some(data)
}

/// The close message that ends a session: Go clients (kubectl) report any other code, even
/// none, as an error.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

/// A resize message's size.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let size: Size = serde_json::from_slice(data).ok()?;
    Some((size.width, size.height))
}

/// Runs an exec or attach session over `ws`, which speaks `protocol`.
pub async fn stream<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    cri: Arc<Cri>,
    target: session::Target,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == STREAM_PROTOCOLS[0];
    let encode = if protocol == BASE64 {
        text_frame
    } else {
        frame
    };
    let (mut sink, mut source) = ws.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let (output_tx, mut output_rx) = mpsc::channel(16);
    let io = Io {
        stdin: target.stdin.then_some(stdin_rx),
        resize: resize_rx,
        output: output_tx,
    };
    let mut reader = tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data.to_vec(),
                Message::Text(text) => match from_text(&text) {
                    Some(data) => data,
                    None => continue,
                },
                Message::Close(_) => break,
                _ => continue,
            };
            match (data.first(), data.get(1)) {
                (Some(&STDIN), _) => {
                    if let Some(tx) = &stdin
                        && tx.send(data[1..].to_vec()).await.is_err()
                    {
                        stdin = None;
                    }
                }
                (Some(&RESIZE), _) => {
                    if let Some(size) = parse_resize(&data[1..]) {
                        let _ = resize_tx.send(size).await;
                    }
                }
                (Some(&CLOSE), Some(&STDIN)) if v5 => stdin = None,
                _ => {}
            }
        }
    });
    let run = session::run(&cri, target, io);
    tokio::pin!(run);
    let mut client_gone = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some((stream, data)) = output_rx.recv() => {
                let channel = match stream { Output::Stdout => STDOUT, Output::Stderr => STDERR };
                if sink.send(encode(channel, &data)).await.is_err() {
                    client_gone = true;
                    output_rx.close();
                }
            }
            _ = &mut reader, if !client_gone => {
                // The client closed the connection: end the session.
                client_gone = true;
                output_rx.close();
            }
        }
    };
    while let Ok((stream, data)) = output_rx.try_recv() {
        let channel = match stream {
            Output::Stdout => STDOUT,
            Output::Stderr => STDERR,
        };
        let _ = sink.send(encode(channel, &data)).await;
    }
    if outcome != Outcome::Closed || !client_gone {
        let _ = sink
            .send(encode(ERROR, outcome.status().to_string().as_bytes()))
            .await;
    }
    let _ = sink.send(normal_close()).await;
    reader.abort();
}

/// Runs a port-forward over `ws` for the `ports` in the request's query.
pub async fn port_forward<S>(ws: WebSocketStream<S>, target: portforward::Target, ports: Vec<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let mut writers = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        let prefix = port.to_le_bytes();
        let _ = sink.send(frame(data, &prefix)).await;
        let _ = sink.send(frame(error, &prefix)).await;
        let stream = match target.allows(port) {
            false => Err(std::io::Error::other(format!(
                "port {port} was not named in the PortForward request"
            ))),
            true => portforward::connect(&target.netns_path, port).await,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                let message = format!("error forwarding port {port} to pod {}: {e}", target.pod_id);
                let _ = sink.send(frame(error, message.as_bytes())).await;
                writers.push(None);
                continue;
            }
        };
        let (mut read, mut write) = stream.into_split();
        let out = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.send(frame(data, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        writers.push(Some(tx));
    }
    drop(out_tx);
    loop {
        tokio::select! {
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let Some(&channel) = data.first() else { continue };
                    if channel % 2 == 0
                        && let Some(Some(tx)) = writers.get(usize::from(channel / 2))
                    {
                        let _ = tx.send(data[1..].to_vec()).await;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            message = out_rx.recv() => match message {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
                // Every connection closed its read side.
                None => break,
            },
        }
    }
    let _ = sink.send(normal_close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice_follows_the_client() {
        assert_eq!(
            choose("v4.channel.k8s.io, v5.channel.k8s.io", &STREAM_PROTOCOLS),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            choose("channel.k8s.io,v5.channel.k8s.io", &STREAM_PROTOCOLS),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(choose("v3.channel.k8s.io", &STREAM_PROTOCOLS), None);
    }

    #[test]
    fn text_variant() {
        let Message::Text(text) = text_frame(STDOUT, b"hi") else {
            panic!("a text message")
        };
        assert_eq!(text.as_str(), "1aGk=");
        assert_eq!(from_text("0aGk="), Some(vec![STDIN, b'h', b'i']));
        assert_eq!(from_text("0!!"), None);
        assert_eq!(from_text(""), None);
    }

    #[test]
    fn resize_messages() {
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(parse_resize(b"nope"), None);
    }
}
