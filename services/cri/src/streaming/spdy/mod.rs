//! SPDY/3.1 streams for exec, attach and port-forward, as kubelet serves them to kubectl and
//! crictl.
//!
//! Exec and attach (`v4.channel.k8s.io`): the client opens one stream per `streamtype` header
//! (`error`, then `stdin`, `stdout`, `stderr`, `resize` as the request asked); once all are
//! open the session runs; stdin ends with the client's FIN on its stream; `resize` carries
//! `{"Width":..,"Height":..}` objects; the end is the status JSON on `error`, FIN on every
//! stream, and the connection closed.
//!
//! Port-forward (`portforward.k8s.io`): per forwarded connection the client opens an `error`
//! and a `data` stream with the same `requestid` and a `port` header; the server connects to
//! the port inside the pod, copies bytes both ways, FINs `data` when the port's side ends, and
//! reports a failure on `error`. The connection lasts until the client closes it.

pub mod frame;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf};
use tokio::sync::mpsc;

use self::frame::{Decoder, Encoder, Frame, header};
use super::portforward;
use super::session::{self, Io, Outcome, Output};
use crate::Cri;

/// `X-Stream-Protocol-Version`s for exec and attach, preferred first.
pub const STREAM_PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];
/// `X-Stream-Protocol-Version`s for port-forward.
pub const PORT_FORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];
/// How long the client has to open the streams of an exec or attach.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest data frame sent.
const CHUNK: usize = 32 << 10;

/// Spawns the task that encodes and writes frames to `w`; dropping every sender ends it
/// after the queued frames are written.
fn writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut w: W,
) -> (mpsc::Sender<Frame>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let task = tokio::spawn(async move {
        let mut encoder = Encoder::new();
        while let Some(frame) = rx.recv().await {
            let Ok(bytes) = encoder.encode(&frame) else {
                break;
            };
            if w.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    (tx, task)
}

/// Sends `data` on stream `id` in frames of at most [`CHUNK`] bytes.
async fn send_data(out: &mpsc::Sender<Frame>, id: u32, data: &[u8]) -> bool {
    for chunk in data.chunks(CHUNK) {
        let frame = Frame::Data {
            id,
            fin: false,
            data: chunk.to_vec(),
        };
        if out.send(frame).await.is_err() {
            return false;
        }
    }
    true
}

/// Gives the client back the window `len` received bytes used on stream `id` (and on the
/// connection), so a client that enforces SPDY/3.1 flow control never stalls.
async fn credit(out: &mpsc::Sender<Frame>, id: u32, len: usize) {
    if len > 0 {
        for id in [id, 0] {
            let _ = out
                .send(Frame::WindowUpdate {
                    id,
                    delta: len as u32,
                })
                .await;
        }
    }
}

/// Stream ids of an exec or attach, by `streamtype`.
#[derive(Debug, Default, Clone, Copy)]
struct Ids {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Ids {
    fn complete(&self, target: &session::Target) -> bool {
        self.error.is_some()
            && (!target.stdin || self.stdin.is_some())
            && (!target.stdout || self.stdout.is_some())
            && (!target.stderr || target.tty || self.stderr.is_some())
            && (!target.tty || self.resize.is_some())
    }

    fn all(&self) -> impl Iterator<Item = u32> {
        [
            self.error,
            self.stdin,
            self.stdout,
            self.stderr,
            self.resize,
        ]
        .into_iter()
        .flatten()
    }
}

/// Reads the client's frames for an exec or attach: opens streams (reporting the ids on
/// `ready` once all are there), forwards stdin and resizes, answers pings.
async fn read_stream_frames<S: AsyncRead>(
    mut r: ReadHalf<S>,
    target: session::Target,
    out: mpsc::Sender<Frame>,
    ready: tokio::sync::oneshot::Sender<Ids>,
    stdin: mpsc::Sender<Vec<u8>>,
    resize: mpsc::Sender<(u16, u16)>,
) {
    let mut decoder = Decoder::new();
    let mut ids = Ids::default();
    let mut ready = Some(ready);
    let mut stdin = Some(stdin);
    let mut sizes = Vec::new();
    while let Ok(Some(frame)) = frame::read(&mut r, &mut decoder).await {
        match frame {
            Frame::SynStream { id, headers, fin } => {
                let _ = out
                    .send(Frame::SynReply {
                        id,
                        headers: Vec::new(),
                        fin: false,
                    })
                    .await;
                match header(&headers, "streamtype").unwrap_or_default() {
                    "error" => ids.error = Some(id),
                    "stdin" => {
                        ids.stdin = Some(id);
                        if fin {
                            stdin = None;
                        }
                    }
                    "stdout" => ids.stdout = Some(id),
                    "stderr" => ids.stderr = Some(id),
                    "resize" => ids.resize = Some(id),
                    _ => {
                        let _ = out.send(Frame::RstStream { id, status: 1 }).await;
                    }
                }
                if ids.complete(&target)
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(ids);
                }
            }
            Frame::Data { id, fin, data } => {
                credit(&out, id, data.len()).await;
                if Some(id) == ids.stdin {
                    if let Some(tx) = &stdin
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        stdin = None;
                    }
                    if fin {
                        stdin = None;
                    }
                } else if Some(id) == ids.resize {
                    sizes.extend(data);
                    let mut objects = serde_json::Deserializer::from_slice(&sizes)
                        .into_iter::<serde_json::Value>();
                    let mut used = 0;
                    while let Some(Ok(v)) = objects.next() {
                        used = objects.byte_offset();
                        if let Some(size) = super::websocket::parse_resize(v.to_string().as_bytes())
                        {
                            let _ = resize.send(size).await;
                        }
                    }
                    sizes.drain(..used);
                }
            }
            Frame::Ping(n) => {
                let _ = out.send(Frame::Ping(n)).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
}

/// Runs an exec or attach session over a SPDY connection.
pub async fn stream<S>(conn: S, cri: Arc<Cri>, target: session::Target)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(conn);
    let (out, writing) = writer(w);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    let mut reader = tokio::spawn(read_stream_frames(
        r,
        target.clone(),
        out.clone(),
        ready_tx,
        stdin_tx,
        resize_tx,
    ));
    let ids = match tokio::time::timeout(STREAMS_TIMEOUT, ready_rx).await {
        Ok(Ok(ids)) => ids,
        _ => {
            tracing::debug!("SPDY client did not open its streams");
            reader.abort();
            drop(out);
            let _ = writing.await;
            return;
        }
    };
    let (output_tx, mut output_rx) = mpsc::channel(16);
    let io = Io {
        stdin: target.stdin.then_some(stdin_rx),
        resize: resize_rx,
        output: output_tx,
    };
    let run = session::run(&cri, target, io);
    tokio::pin!(run);
    let mut client_gone = false;
    let stream_of = |o: Output| match o {
        Output::Stdout => ids.stdout,
        Output::Stderr => ids.stderr.or(ids.stdout),
    };
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some((o, data)) = output_rx.recv() => {
                if let Some(id) = stream_of(o)
                    && !send_data(&out, id, &data).await
                {
                    client_gone = true;
                    output_rx.close();
                }
            }
            _ = &mut reader, if !client_gone => {
                client_gone = true;
                output_rx.close();
            }
        }
    };
    while let Ok((o, data)) = output_rx.try_recv() {
        if let Some(id) = stream_of(o) {
            send_data(&out, id, &data).await;
        }
    }
    if let Some(id) = ids.error
        && (outcome != Outcome::Closed || !client_gone)
    {
        send_data(&out, id, outcome.status().to_string().as_bytes()).await;
    }
    for id in ids.all() {
        let _ = out
            .send(Frame::Data {
                id,
                fin: true,
                data: Vec::new(),
            })
            .await;
    }
    reader.abort();
    drop(out);
    let _ = writing.await;
}

/// One forwarded connection's streams.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    /// Client bytes for the data stream, queued until the connection is made.
    to_port: Option<mpsc::Receiver<Vec<u8>>>,
}

/// Runs a port-forward over a SPDY connection until the client closes it.
pub async fn port_forward<S>(conn: S, target: portforward::Target)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, w) = tokio::io::split(conn);
    let (out, writing) = writer(w);
    let mut decoder = Decoder::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut to_port: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let target = Arc::new(target);
    while let Ok(Some(frame)) = frame::read(&mut r, &mut decoder).await {
        match frame {
            Frame::SynStream { id, headers, .. } => {
                let _ = out
                    .send(Frame::SynReply {
                        id,
                        headers: Vec::new(),
                        fin: false,
                    })
                    .await;
                let request = header(&headers, "requestid").unwrap_or_default().to_owned();
                let port = header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = port.unwrap_or_default();
                match header(&headers, "streamtype").unwrap_or_default() {
                    "error" => pair.error = Some(id),
                    "data" => {
                        pair.data = Some(id);
                        let (tx, rx) = mpsc::channel(64);
                        to_port.insert(id, tx);
                        pair.to_port = Some(rx);
                    }
                    _ => {
                        let _ = out.send(Frame::RstStream { id, status: 1 }).await;
                    }
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let pair = pairs.remove(&request).unwrap_or_default();
                    tokio::spawn(forward(pair, target.clone(), out.clone()));
                }
            }
            Frame::Data { id, fin, data } => {
                credit(&out, id, data.len()).await;
                if let Some(tx) = to_port.get(&id)
                    && !data.is_empty()
                {
                    let _ = tx.send(data).await;
                }
                if fin {
                    to_port.remove(&id);
                }
            }
            Frame::RstStream { id, .. } => {
                to_port.remove(&id);
            }
            Frame::Ping(n) => {
                let _ = out.send(Frame::Ping(n)).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    drop(to_port);
    drop(out);
    let _ = writing.await;
}

/// Connects one pair's port and copies bytes both ways.
async fn forward(mut pair: Pair, target: Arc<portforward::Target>, out: mpsc::Sender<Frame>) {
    let (Some(error), Some(data)) = (pair.error, pair.data) else {
        return;
    };
    let finish = |id| Frame::Data {
        id,
        fin: true,
        data: Vec::new(),
    };
    let port = pair.port;
    let connected = match target.allows(port) {
        false => Err(std::io::Error::other(format!(
            "port {port} was not named in the PortForward request"
        ))),
        true => portforward::connect(&target.netns_path, port).await,
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod {}: {e}", target.pod_id);
            send_data(&out, error, message.as_bytes()).await;
            let _ = out.send(finish(error)).await;
            let _ = out.send(finish(data)).await;
            return;
        }
    };
    let (mut read, mut write) = stream.into_split();
    let mut from_client = pair.to_port.take();
    let upstream = tokio::spawn(async move {
        if let Some(rx) = from_client.as_mut() {
            while let Some(chunk) = rx.recv().await {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }
        let _ = write.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !send_data(&out, data, &buf[..n]).await {
                    break;
                }
            }
        }
    }
    let _ = out.send(finish(data)).await;
    let _ = out.send(finish(error)).await;
    upstream.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_needed() {
        let target = session::Target {
            container_id: "c".into(),
            cmd: Some(vec!["sh".into()]),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let mut ids = Ids {
            error: Some(1),
            stdin: Some(3),
            stdout: Some(5),
            ..Default::default()
        };
        assert!(!ids.complete(&target), "a terminal needs the resize stream");
        ids.resize = Some(7);
        assert!(ids.complete(&target));
        assert_eq!(ids.all().collect::<Vec<_>>(), [1, 3, 5, 7]);
    }
}
