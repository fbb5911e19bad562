//! A process's stdio as the shim holds it.
//!
//! Without a terminal, stdout and stderr are pipes whose write ends the runtime hands to the
//! process and whose read ends the shim copies into the CRI log and/or the stdout/stderr
//! paths given by the client; stdin, when a path is given, is a pipe fed from that FIFO or
//! file. With a terminal, the runtime sends the pty master over a console socket; the shim
//! copies the master's output to the same sinks (as stdout), feeds it stdin, and resizes it.
//!
//! The copiers are tasks on the shim's runtime; the process's exit is reported once they
//! have drained (or after [`DRAIN_TIMEOUT`], when a left-over child keeps a pipe open).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::logs::{CriLog, LineSplitter, Stream};

/// How long an exit waits for the process's output to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the shim waits for the runtime to send the pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a process's stdio goes, as the client asked.
#[derive(Debug, Clone, Default)]
pub struct IoSpec {
    /// FIFO or file to read stdin from; empty = none.
    pub stdin: String,
    /// FIFO or file to copy stdout to; empty = none.
    pub stdout: String,
    /// FIFO or file to copy stderr to; empty = none.
    pub stderr: String,
    /// CRI log file: (path, max size, max rotated files).
    pub log: Option<(PathBuf, u64, u32)>,
    /// The process runs on a pty.
    pub terminal: bool,
}

/// The descriptors the runtime passes on to the process (None = /dev/null), or the console
/// socket it sends the pty master to.
#[derive(Default)]
pub struct RuntimeIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub console_socket: Option<PathBuf>,
}

/// The shim's side of a process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    console_listener: Option<(tokio::net::UnixListener, PathBuf)>,
    master: Option<Arc<AsyncFd<OwnedFd>>>,
    stdin_source: Option<File>,
    stdin_pump: Option<JoinHandle<()>>,
    /// Tells the stdin pump to copy what is left and close (CloseIO).
    stdin_close: Option<oneshot::Sender<()>>,
    stdin_pipe: Option<OwnedFd>,
    copiers: Vec<JoinHandle<()>>,
    sinks: Option<Sinks>,
}

#[derive(Clone)]
struct Sinks {
    log: Option<Arc<Mutex<CriLog>>>,
    stdout: Option<Arc<File>>,
    stderr: Option<Arc<File>>,
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(Error::sys("fcntl"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(Error::sys("fcntl"))?;
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::sys("pipe2"))
}

/// Opens an output path: a FIFO read-write and non-blocking (never blocks the shim, never
/// fails for want of a reader), anything else created or appended to.
fn open_output(path: &str) -> Result<Arc<File>> {
    let p = Path::new(path);
    let fifo = std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo());
    let file = if fifo {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
    } else {
        OpenOptions::new().create(true).append(true).open(p)
    };
    file.map(Arc::new).map_err(Error::io(p))
}

impl ProcessIo {
    /// Prepares the stdio of one process; `dir` holds the console socket (named `name`).
    pub fn prepare(spec: &IoSpec, dir: &Path, name: &str) -> Result<(ProcessIo, RuntimeIo)> {
        let mut io = ProcessIo::default();
        let mut rt = RuntimeIo::default();
        let log = match &spec.log {
            Some((path, max_size, max_files)) => Some(Arc::new(Mutex::new(
                CriLog::open(path, *max_size, *max_files).map_err(Error::io(path))?,
            ))),
            None => None,
        };
        let sinks = Sinks {
            log,
            stdout: (!spec.stdout.is_empty())
                .then(|| open_output(&spec.stdout))
                .transpose()?,
            stderr: (!spec.stderr.is_empty())
                .then(|| open_output(&spec.stderr))
                .transpose()?,
        };
        if !spec.stdin.is_empty() {
            let p = Path::new(&spec.stdin);
            let source = OpenOptions::new()
                .read(true)
                .write(std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo()))
                .custom_flags(libc::O_NONBLOCK)
                .open(p)
                .map_err(Error::io(p))?;
            io.stdin_source = Some(source);
        }
        if spec.terminal {
            // A socket path must fit in sun_path (108 bytes); a container id alone is 64:
            // name the socket by a hash of the process name.
            let hash = std::hash::BuildHasher::hash_one(
                &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
                name,
            );
            let path = dir.join(format!("{hash:016x}.console"));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).map_err(Error::io(&path))?;
            rt.console_socket = Some(path.clone());
            io.console_listener = Some((listener, path));
        } else {
            if io.stdin_source.is_some() {
                let (r, w) = pipe()?;
                rt.stdin = Some(r);
                io.stdin_pipe = Some(w);
            }
            if sinks.log.is_some() || sinks.stdout.is_some() {
                let (r, w) = pipe()?;
                rt.stdout = Some(w);
                io.copiers
                    .push(spawn_copier(r, Stream::Stdout, sinks.clone())?);
            }
            if sinks.log.is_some() || sinks.stderr.is_some() {
                let (r, w) = pipe()?;
                rt.stderr = Some(w);
                io.copiers
                    .push(spawn_copier(r, Stream::Stderr, sinks.clone())?);
            }
            if let (Some(source), Some(pipe)) = (io.stdin_source.take(), io.stdin_pipe.take()) {
                let (close, closed) = oneshot::channel();
                io.stdin_pump = Some(spawn_pump(source.into(), pipe, closed)?);
                io.stdin_close = Some(close);
            }
        }
        io.sinks = Some(sinks);
        Ok((io, rt))
    }

    /// After the runtime created the process: takes the pty master it sent, if a terminal was
    /// asked for, and starts copying.
    pub async fn attach_console(&mut self) -> Result<()> {
        let Some((listener, path)) = self.console_listener.take() else {
            return Ok(());
        };
        let received = tokio::time::timeout(CONSOLE_TIMEOUT, async {
            let (stream, _) = listener.accept().await.map_err(Error::io(&path))?;
            loop {
                stream.readable().await.map_err(Error::io(&path))?;
                match sys_recv(&stream) {
                    Err(nix::errno::Errno::EAGAIN) => continue,
                    other => return other.map_err(Error::sys("receive pty master")),
                }
            }
        })
        .await;
        drop(listener);
        let _ = std::fs::remove_file(&path);
        let master = match received {
            Ok(Ok(Some(fd))) => fd,
            Ok(Ok(None)) => {
                return Err(Error::RuntimeFailed {
                    command: "create",
                    message: "the runtime sent no terminal on the console socket".into(),
                });
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::RuntimeFailed {
                    command: "create",
                    message: "timed out waiting for the terminal on the console socket".into(),
                });
            }
        };
        set_nonblocking(&master)?;
        let master = Arc::new(crate::sys::async_fd(master).map_err(Error::io("pty master"))?);
        let sinks = self.sinks.clone().unwrap_or(Sinks {
            log: None,
            stdout: None,
            stderr: None,
        });
        let reader = master.clone();
        self.copiers.push(tokio::spawn(async move {
            copy_out(&reader, Stream::Stdout, sinks).await;
        }));
        if let Some(source) = self.stdin_source.take() {
            let source = OwnedFd::from(source);
            let source = crate::sys::async_fd(source).map_err(Error::io("stdin"))?;
            let writer = master.clone();
            let (close, closed) = oneshot::channel();
            self.stdin_close = Some(close);
            self.stdin_pump = Some(tokio::spawn(async move {
                pump(&source, &writer, closed).await;
            }));
        }
        self.master = Some(master);
        Ok(())
    }

    /// Resizes the pty.
    pub fn resize(&self, cols: u16, rows: u16) -> Option<Result<()>> {
        let master = self.master.as_ref()?;
        Some(
            crate::sys::set_winsize(master.get_ref().as_fd(), cols, rows)
                .map_err(Error::sys("resize pty")),
        )
    }

    /// Reopens the CRI log file at its path (None: the process has no CRI log).
    pub fn reopen_log(&self) -> Option<Result<()>> {
        let log = self.sinks.as_ref()?.log.as_ref()?;
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let path = log.path().to_owned();
        Some(log.reopen().map_err(Error::io(path)))
    }

    /// Closes the process's stdin once what was written to the stdin FIFO so far has been
    /// copied.
    pub fn close_stdin(&mut self) {
        if let Some(close) = self.stdin_close.take() {
            let _ = close.send(());
        }
        self.stdin_pipe = None;
    }

    /// The output copiers, to wait for them once the process has exited.
    pub fn take_copiers(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.copiers)
    }

    /// Stops every copier and closes every descriptor.
    pub fn close(&mut self) {
        for c in self.copiers.drain(..) {
            c.abort();
        }
        if let Some(pump) = self.stdin_pump.take() {
            pump.abort();
        }
        self.stdin_close = None;
        self.stdin_pipe = None;
        self.master = None;
        if let Some((_, path)) = self.console_listener.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.close();
    }
}

fn sys_recv(stream: &tokio::net::UnixStream) -> nix::Result<Option<OwnedFd>> {
    crate::sys::recv_fd(stream.as_fd())
}

fn spawn_copier(read: OwnedFd, stream: Stream, sinks: Sinks) -> Result<JoinHandle<()>> {
    set_nonblocking(&read)?;
    let fd = crate::sys::async_fd(read).map_err(Error::io("output pipe"))?;
    Ok(tokio::spawn(async move {
        copy_out(&fd, stream, sinks).await;
    }))
}

fn spawn_pump(
    source: OwnedFd,
    dest: OwnedFd,
    closed: oneshot::Receiver<()>,
) -> Result<JoinHandle<()>> {
    set_nonblocking(&dest)?;
    let source = crate::sys::async_fd(source).map_err(Error::io("stdin"))?;
    let dest = crate::sys::async_fd(dest).map_err(Error::io("stdin pipe"))?;
    Ok(tokio::spawn(async move {
        pump(&source, &dest, closed).await;
    }))
}

/// Reads what is there; Ok(0) at end of file (EIO: the pty's other side is closed).
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(Into::into)) {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(Into::into)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

async fn copy_out(fd: &AsyncFd<OwnedFd>, stream: Stream, sinks: Sinks) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut splitter = LineSplitter::new(stream);
    let file = match stream {
        Stream::Stdout => sinks.stdout.clone(),
        Stream::Stderr => sinks.stderr.clone(),
    };
    let mut to_log = |s: Stream, partial: bool, line: &[u8]| {
        if let Some(log) = &sinks.log {
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_entry(s, partial, line);
        }
    };
    loop {
        let n = match read_some(fd, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = &file {
            // A full FIFO drops output rather than stall the shim.
            let _ = (&**f).write_all(&buf[..n]);
        }
        if sinks.log.is_some() {
            splitter.feed(&buf[..n], &mut to_log);
        }
    }
    splitter.finish(&mut to_log);
}

/// Copies stdin until the source ends or `closed` fires; then copies what is already
/// buffered in the source and returns (dropping `dest` closes the process's stdin).
async fn pump(
    source: &AsyncFd<OwnedFd>,
    dest: &AsyncFd<OwnedFd>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = tokio::select! {
            r = read_some(source, &mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = &mut closed => break,
        };
        if write_all(dest, &buf[..n]).await.is_err() {
            return;
        }
    }
    // Closing: what the writer already put in the FIFO still goes through.
    while let Ok(n) = nix::unistd::read(source.get_ref(), &mut buf) {
        if n == 0 || write_all(dest, &buf[..n]).await.is_err() {
            return;
        }
    }
}
