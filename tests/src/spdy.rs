//! A SPDY/3.1 client for the CRI streaming server, as kubectl and crictl use it: an HTTP/1.1
//! upgrade (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`), then one client-opened stream
//! per channel, named by its `streamtype` header. Frames are encoded with berth-cri's codec
//! ([`berth_cri::streaming::spdy::frame`]), whose dictionary is checked against SPDY/3's
//! published dictionary id.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use berth_cri::streaming::spdy::frame::{self, Decoder, Encoder, Frame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::cri_stream::{
    Command, ERROR, Event, RESIZE, STDERR, STDIN, STDOUT, Session, Streams, connect_tcp,
};

/// Sends the upgrade request for `url`; returns the connection and the response's status.
async fn upgrade(url: &str, protocol: &str) -> Result<(TcpStream, u16)> {
    let rest = url.strip_prefix("http://").context("not an http:// URL")?;
    let (authority, path) = rest.split_once('/').context("no path in the URL")?;
    let mut stream = connect_tcp(url).await?;
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!(
                "the server closed the connection during the upgrade: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(byte[0]);
        anyhow::ensure!(head.len() < 16 << 10, "response headers too long");
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad response {text:?}"))?;
    if status == 101 {
        let chosen = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("x-stream-protocol-version: ")
                    .or_else(|| l.strip_prefix("X-Stream-Protocol-Version: "))
            })
            .map(str::trim);
        anyhow::ensure!(
            chosen == Some(protocol),
            "the server chose {chosen:?}: {text}"
        );
    }
    Ok((stream, status))
}

/// The HTTP status of an exec upgrade request to `url`.
pub async fn upgrade_status(url: &str) -> Result<u16> {
    Ok(upgrade(url, "v4.channel.k8s.io").await?.1)
}

/// Runs the connection: opens `streams` (channel, headers) in order, then moves bytes
/// between frames and the session's channels until the server closes the connection.
async fn run(conn: TcpStream, streams: Vec<(u8, Vec<(String, String)>)>) -> Result<Session> {
    let (mut r, mut w) = conn.into_split();
    let mut encoder = Encoder::new();
    let mut ids = HashMap::new();
    for (i, (channel, headers)) in streams.into_iter().enumerate() {
        let id = 2 * i as u32 + 1;
        ids.insert(channel, id);
        w.write_all(&encoder.encode(&Frame::SynStream {
            id,
            headers,
            fin: false,
        })?)
        .await?;
    }
    let channels: HashMap<u32, u8> = ids.iter().map(|(c, id)| (*id, *c)).collect();
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let (event_tx, event_rx) = mpsc::channel(64);
    let (pong_tx, mut pong_rx) = mpsc::channel::<u32>(4);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                command = cmd_rx.recv() => match command {
                    Some(Command::Data(channel, data)) => ids.get(&channel).map(|id| Frame::Data { id: *id, fin: false, data }),
                    Some(Command::Close(channel)) => ids.get(&channel).map(|id| Frame::Data { id: *id, fin: true, data: Vec::new() }),
                    None => break,
                },
                Some(n) = pong_rx.recv() => Some(Frame::Ping(n)),
            };
            let Some(frame) = frame else { continue };
            let Ok(bytes) = encoder.encode(&frame) else {
                break;
            };
            if w.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut decoder = Decoder::new();
        while let Ok(Some(frame)) = frame::read(&mut r, &mut decoder).await {
            match frame {
                Frame::Data { id, data, .. } if !data.is_empty() => {
                    if let Some(channel) = channels.get(&id) {
                        let _ = event_tx.send(Event::Data(*channel, data)).await;
                    }
                }
                Frame::Ping(n) => {
                    let _ = pong_tx.send(n).await;
                }
                _ => {}
            }
        }
        let _ = event_tx.send(Event::End { clean: true }).await;
    });
    Ok(Session::new(cmd_tx, event_rx))
}

fn streamtype(name: &str) -> Vec<(String, String)> {
    vec![("streamtype".to_owned(), name.to_owned())]
}

/// Opens an exec or attach session with `streams`, in kubectl's order.
pub async fn stream(url: &str, streams: Streams) -> Result<Session> {
    let (conn, status) = upgrade(url, "v4.channel.k8s.io").await?;
    anyhow::ensure!(status == 101, "upgrade refused: HTTP {status}");
    let mut open = vec![(ERROR, streamtype("error"))];
    if streams.stdin {
        open.push((STDIN, streamtype("stdin")));
    }
    if streams.stdout {
        open.push((STDOUT, streamtype("stdout")));
    }
    if streams.stderr && !streams.tty {
        open.push((STDERR, streamtype("stderr")));
    }
    if streams.tty {
        open.push((RESIZE, streamtype("resize")));
    }
    run(conn, open).await
}

/// Opens a port-forward session: for the i-th port an `error` stream (channel `2i+1`) and a
/// `data` stream (channel `2i`) with request id `i`.
pub async fn port_forward(url: &str, ports: &[u16]) -> Result<Session> {
    let (conn, status) = upgrade(url, "portforward.k8s.io").await?;
    anyhow::ensure!(status == 101, "upgrade refused: HTTP {status}");
    let mut open = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        for (kind, channel) in [("error", 2 * i as u8 + 1), ("data", 2 * i as u8)] {
            let headers = vec![
                ("streamtype".to_owned(), kind.to_owned()),
                ("port".to_owned(), port.to_string()),
                ("requestid".to_owned(), i.to_string()),
            ];
            open.push((channel, headers));
        }
    }
    run(conn, open).await
}
