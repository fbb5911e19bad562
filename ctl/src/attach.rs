//! Attaching the terminal to a process of a container (`run`, `start -a`, `exec`, `attach`).
//!
//! One bidirectional Attach stream carries the process's output to our stdout and stderr and
//! our stdin, terminal size changes and end of input to the process. With a terminal the local
//! tty goes raw for the session (restored on every way out); the detach sequence (default
//! ctrl-p ctrl-q) ends the session and leaves the process running. Without a terminal, the
//! signals berthctl receives are forwarded to the process, as `docker run` does.

use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::tasks::v1::tasks_client::TasksClient;
use berth_api::berth::types::v1::{ExitStatus, TaskStatus};
use berth_api::client::Channel;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::container::{self, Clients, rpc};
use crate::context::Context;

/// Docker's default detach sequence: ctrl-p, ctrl-q.
pub const DEFAULT_DETACH_KEYS: [u8; 2] = [0x10, 0x11];

/// Parses `ctrl-p,ctrl-q`-style keys (`ctrl-a`..`ctrl-z`, `ctrl-@`, `ctrl-[`, `ctrl-\`, `ctrl-]`,
/// `ctrl-^`, `ctrl-_`, or single characters); None = the default, "" = no detach keys.
pub fn parse_detach_keys(keys: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let Some(keys) = keys else {
        return Ok(DEFAULT_DETACH_KEYS.to_vec());
    };
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    keys.split(',')
        .map(|key| {
            let bad = || anyhow::anyhow!("invalid detach keys {keys:?}: unknown key {key:?} (use e.g. ctrl-p,ctrl-q or a,b)");
            match key.strip_prefix("ctrl-") {
                Some(k) if k.len() == 1 => {
                    let c = k.as_bytes()[0].to_ascii_lowercase();
                    match c {
                        b'a'..=b'z' => Ok(c - b'a' + 1),
                        b'@' => Ok(0),
                        b'[' => Ok(27),
                        b'\\' => Ok(28),
                        b']' => Ok(29),
                        b'^' => Ok(30),
                        b'_' => Ok(31),
                        _ => Err(bad()),
                    }
                }
                None if key.len() == 1 => Ok(key.as_bytes()[0]),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// Finds the detach sequence in the input stream; bytes that start the sequence are held back
/// until it either completes (detach) or breaks (they are sent on).
#[derive(Debug)]
struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    /// The bytes to forward and whether the sequence completed.
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        if self.keys.is_empty() {
            out.extend_from_slice(input);
            return (out, false);
        }
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            if self.matched > 0 {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
            }
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// How an attach session ended.
#[derive(Debug)]
pub enum Ended {
    /// The process exited.
    Exited(ExitStatus),
    /// The user typed the detach sequence: the process keeps running.
    Detached,
    /// The server closed the stream without an exit status.
    Closed,
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The size of the terminal on stdout (or stdin), if there is one.
fn terminal_size() -> Option<tpb::Resize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the valid, exclusively borrowed `size`.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
        if rc == 0 && size.ws_col > 0 {
            return Some(tpb::Resize {
                width: size.ws_col.into(),
                height: size.ws_row.into(),
            });
        }
    }
    None
}

/// Reads stdin on its own thread (a blocking read cannot be cancelled; the thread ends with the
/// process) and hands chunks over; an empty chunk means end of input.
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Vec::new());
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn write_out(stream: i32, data: &[u8]) -> anyhow::Result<()> {
    if stream == tpb::OutputStream::Stderr as i32 {
        let mut err = std::io::stderr().lock();
        err.write_all(data)?;
        err.flush()?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()?;
    }
    Ok(())
}

/// One attach session to a container's init process or one of its exec processes.
pub struct Session {
    /// Container id.
    pub container_id: String,
    /// Exec id; empty for the init process.
    pub exec_id: String,
    /// Forward our stdin (the process must have been created with stdin open).
    pub stdin: bool,
    /// The process runs on a terminal: raw local tty, resizes.
    pub tty: bool,
    /// Detach sequence; empty = none.
    pub detach_keys: Vec<u8>,
    /// Forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the process.
    pub proxy_signals: bool,
}

impl Session {
    /// Attaches, runs `start` once the stream is open (so no output is lost), then pumps
    /// until the process exits, the user detaches, or the server closes the stream.
    pub async fn run(
        self,
        mut tasks: TasksClient<Channel>,
        start: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<Ended> {
        let (tx, rx) = mpsc::channel(64);
        let request = |msg| tpb::AttachRequest { msg: Some(msg) };
        tx.send(request(tpb::attach_request::Msg::Start(tpb::AttachStart {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            stdin: self.stdin,
            stdout: true,
            stderr: true,
        })))
        .await
        .context("attach stream closed")?;
        let mut output = tasks
            .attach(ReceiverStream::new(rx))
            .await
            .map_err(rpc)?
            .into_inner();
        start.await?;

        let local_tty = self.tty && std::io::stdin().is_terminal();
        let _raw = if local_tty && self.stdin {
            Some(RawMode::enter()?)
        } else {
            None
        };
        if self.tty
            && let Some(size) = terminal_size()
        {
            let _ = tx
                .send(request(tpb::attach_request::Msg::Resize(size)))
                .await;
        }
        let mut winch = signal(SignalKind::window_change())?;
        let mut input = if self.stdin {
            Some(stdin_reader())
        } else {
            None
        };
        let mut matcher = DetachMatcher {
            keys: self.detach_keys.clone(),
            matched: 0,
        };
        let mut signals = Vec::new();
        if self.proxy_signals {
            for kind in [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
                SignalKind::quit(),
                SignalKind::user_defined1(),
                SignalKind::user_defined2(),
            ] {
                signals.push((kind.as_raw_value(), signal(kind)?));
            }
        }
        let (sig_tx, mut sig_rx) = mpsc::channel::<i32>(8);
        for (number, mut s) in signals {
            let sig_tx = sig_tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if sig_tx.send(number).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(sig_tx);
        let mut killer = tasks.clone();
        loop {
            tokio::select! {
                message = output.message() => {
                    match message.map_err(rpc)? {
                        None => return Ok(Ended::Closed),
                        Some(m) => match m.msg {
                            Some(tpb::attach_response::Msg::Output(o)) => write_out(o.stream, &o.data)?,
                            Some(tpb::attach_response::Msg::Exit(status)) => return Ok(Ended::Exited(status)),
                            None => {}
                        },
                    }
                }
                chunk = async { input.as_mut().expect("guarded").recv().await }, if input.is_some() => {
                    match chunk {
                        Some(data) if !data.is_empty() => {
                            let (forward, detached) = matcher.feed(&data);
                            if !forward.is_empty() {
                                let _ = tx.send(request(tpb::attach_request::Msg::Stdin(forward))).await;
                            }
                            if detached {
                                return Ok(Ended::Detached);
                            }
                        }
                        _ => {
                            let _ = tx.send(request(tpb::attach_request::Msg::CloseStdin(true))).await;
                            input = None;
                        }
                    }
                }
                _ = winch.recv(), if self.tty => {
                    if let Some(size) = terminal_size() {
                        let _ = tx.send(request(tpb::attach_request::Msg::Resize(size))).await;
                    }
                }
                Some(number) = sig_rx.recv() => {
                    let _ = killer
                        .kill(tpb::KillRequest {
                            container_id: self.container_id.clone(),
                            exec_id: self.exec_id.clone(),
                            signal: number as u32,
                            all: false,
                        })
                        .await;
                }
            }
        }
    }
}

/// `berthctl attach` arguments.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// Do not attach STDIN.
    #[arg(long)]
    no_stdin: bool,
    /// Override the key sequence for detaching a container (default ctrl-p,ctrl-q).
    #[arg(long)]
    detach_keys: Option<String>,
    /// Do not forward signals to the process (non-tty only).
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    sig_proxy: bool,
    /// Container (name, id or id prefix).
    container: String,
}

/// `berthctl attach`: the running container's stdio on this terminal.
pub async fn attach(ctx: &Context, args: AttachArgs) -> ExitCode {
    let result: anyhow::Result<ExitCode> = async {
        let keys = parse_detach_keys(args.detach_keys.as_deref())?;
        let mut c = Clients::new(ctx).await?;
        let container = c.find(&args.container).await?;
        let task = c.task(&container.id).await?;
        let Some(task) = task.filter(|t| t.status() == TaskStatus::Running) else {
            bail!(
                "you cannot attach to a stopped container {}: start it first",
                container.name
            );
        };
        let session = Session {
            container_id: container.id.clone(),
            exec_id: String::new(),
            stdin: task.stdin && !args.no_stdin,
            tty: task.terminal,
            detach_keys: keys,
            proxy_signals: args.sig_proxy && !task.terminal,
        };
        Ok(
            match session.run(c.tasks.clone(), async { Ok(()) }).await? {
                Ended::Detached => ExitCode::SUCCESS,
                Ended::Exited(s) => ExitCode::from(s.exit_code.min(255) as u8),
                Ended::Closed => {
                    let s = c.wait(&container.id, None).await?.unwrap_or_default();
                    ExitCode::from(s.exit_code.min(255) as u8)
                }
            },
        )
    }
    .await;
    result.unwrap_or_else(|e| container::fail(e, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_dockers() {
        assert_eq!(parse_detach_keys(None).unwrap(), DEFAULT_DETACH_KEYS);
        assert_eq!(parse_detach_keys(Some("ctrl-a,x")).unwrap(), [1, b'x']);
        assert_eq!(parse_detach_keys(Some("ctrl-[")).unwrap(), [27]);
        assert!(parse_detach_keys(Some("")).unwrap().is_empty());
        assert!(parse_detach_keys(Some("ctrl-p,alt-q")).is_err());
    }

    #[test]
    fn matcher_holds_back_a_partial_sequence() {
        let mut m = DetachMatcher {
            keys: DEFAULT_DETACH_KEYS.to_vec(),
            matched: 0,
        };
        assert_eq!(m.feed(b"ab\x10"), (b"ab".to_vec(), false));
        // A broken sequence sends the held byte on.
        assert_eq!(m.feed(b"c"), (b"\x10c".to_vec(), false));
        assert_eq!(m.feed(b"\x10\x10"), (b"\x10".to_vec(), false));
        assert_eq!(m.feed(b"\x11rest"), (Vec::new(), true));
        let mut none = DetachMatcher {
            keys: Vec::new(),
            matched: 0,
        };
        assert_eq!(none.feed(b"\x10\x11"), (b"\x10\x11".to_vec(), false));
    }
}
