//! The stdio of one process as the tasks service holds it, for Attach.
//!
//! For each process (a task's init or an exec) the service makes FIFOs in the task's bundle
//! (`io/<name>.stdin` when stdin is kept open, `.stdout`, `.stderr` without a terminal) and
//! hands their paths to the shim, which copies the process's output into them (and into the
//! log) without ever blocking. The service opens every FIFO read-write and non-blocking, so
//! neither side sees an end of file while the other is away (a restart of the tasks service
//! reopens them), reads the output continuously and fans it out to the attached clients. When
//! the shim reports the exit (after its copiers drained), the reader drains what is left and
//! sends the exit status as the last message.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_api::berth::tasks::v1::OutputStream;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, watch};

use crate::error::{Error, Result};
use crate::store::Exit;

/// How many output chunks an attached client may lag behind before it loses output.
const BACKLOG: usize = 1024;

/// What attached clients receive.
#[derive(Debug, Clone)]
pub enum IoMessage {
    /// A chunk of output.
    Output(OutputStream, Vec<u8>),
    /// The process exited; nothing follows.
    Exit(Exit),
}

/// The FIFOs of one process and the clients attached to it.
pub struct ProcessIo {
    /// FIFO paths: stdin (if kept open), stdout, stderr (None with a terminal).
    pub stdin_path: Option<PathBuf>,
    /// Stdout FIFO.
    pub stdout_path: PathBuf,
    /// Stderr FIFO (None with a terminal).
    pub stderr_path: Option<PathBuf>,
    stdin: Option<AsyncFd<OwnedFd>>,
    stdin_lock: tokio::sync::Mutex<()>,
    tx: broadcast::Sender<IoMessage>,
    /// Set (under its lock) when the exit has been sent: a later client gets it at once.
    finished: Arc<std::sync::Mutex<Option<Exit>>>,
    exit: watch::Sender<Option<Exit>>,
    reader: tokio::task::JoinHandle<()>,
}

fn fifo(path: &Path) -> Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(Error::Io {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

fn open(path: &Path) -> Result<AsyncFd<OwnedFd>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(Error::io(path))?;
    let fd = OwnedFd::from(file);
    // SAFETY: an OwnedFd is a valid open descriptor that the AsyncFd now owns: it stays open
    // and its raw value never changes until the AsyncFd is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| Error::io(path)(e.into_parts().1))
}

/// Reads what is there: Ok(None) when nothing is (would block).
fn read_now(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match nix::unistd::read(fd.get_ref(), buf) {
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl ProcessIo {
    /// Makes (or, after a restart, reopens) the FIFOs of process `name` under `dir` and starts
    /// reading its output.
    pub fn open(dir: &Path, name: &str, stdin: bool, terminal: bool) -> Result<Arc<ProcessIo>> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let stdin_path = stdin.then(|| dir.join(format!("{name}.stdin")));
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = (!terminal).then(|| dir.join(format!("{name}.stderr")));
        for p in stdin_path
            .iter()
            .chain(std::iter::once(&stdout_path))
            .chain(stderr_path.iter())
        {
            fifo(p)?;
        }
        let stdin_fd = stdin_path.as_deref().map(open).transpose()?;
        let stdout_fd = open(&stdout_path)?;
        let stderr_fd = stderr_path.as_deref().map(open).transpose()?;
        let (tx, _) = broadcast::channel(BACKLOG);
        let (exit, exit_rx) = watch::channel(None);
        let finished = Arc::new(std::sync::Mutex::new(None));
        let reader = tokio::spawn(read_output(
            stdout_fd,
            stderr_fd,
            tx.clone(),
            finished.clone(),
            exit_rx,
        ));
        Ok(Arc::new(ProcessIo {
            stdin_path,
            stdout_path,
            stderr_path,
            stdin: stdin_fd,
            stdin_lock: tokio::sync::Mutex::new(()),
            tx,
            finished,
            exit,
            reader,
        }))
    }

    /// A client attaches: its receiver, or the exit status if everything has been sent.
    pub fn subscribe(&self) -> std::result::Result<broadcast::Receiver<IoMessage>, Exit> {
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        match *finished {
            Some(exit) => Err(exit),
            None => Ok(self.tx.subscribe()),
        }
    }

    /// The process exited: the reader drains the output and sends the exit.
    pub fn exited(&self, exit: Exit) {
        self.exit.send_replace(Some(exit));
    }

    /// Writes `data` to the process's stdin FIFO.
    pub async fn write_stdin(&self, mut data: &[u8]) -> Result<()> {
        let Some(fd) = &self.stdin else {
            return Err(Error::Precondition(
                "the process was created without stdin".into(),
            ));
        };
        let _one_writer = self.stdin_lock.lock().await;
        while !data.is_empty() {
            let mut guard = fd.writable().await.map_err(Error::io("stdin"))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(Into::into))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(Error::io("stdin")(e)),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// The process has stdin.
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_output(
    stdout: AsyncFd<OwnedFd>,
    stderr: Option<AsyncFd<OwnedFd>>,
    tx: broadcast::Sender<IoMessage>,
    finished: Arc<std::sync::Mutex<Option<Exit>>>,
    mut exit: watch::Receiver<Option<Exit>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let send = |stream, data: &[u8]| {
        let _ = tx.send(IoMessage::Output(stream, data.to_vec()));
    };
    loop {
        let stderr_ready = async {
            match &stderr {
                Some(fd) => fd.readable().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = stdout.readable() => {
                let Ok(mut guard) = ready else { return };
                match read_now(&stdout, &mut buf) {
                    Ok(Some(n)) if n > 0 => send(OutputStream::Stdout, &buf[..n]),
                    Ok(None) => guard.clear_ready(),
                    _ => return,
                }
            }
            ready = stderr_ready => {
                let Ok(mut guard) = ready else { return };
                let Some(fd) = &stderr else { return };
                match read_now(fd, &mut buf) {
                    Ok(Some(n)) if n > 0 => send(OutputStream::Stderr, &buf[..n]),
                    Ok(None) => guard.clear_ready(),
                    _ => return,
                }
            }
            changed = exit.wait_for(Option::is_some) => {
                let status = changed.ok().and_then(|e| *e);
                for (fd, stream) in std::iter::once((&stdout, OutputStream::Stdout))
                    .chain(stderr.iter().map(|fd| (fd, OutputStream::Stderr)))
                {
                    while let Ok(Some(n)) = read_now(fd, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        send(stream, &buf[..n]);
                    }
                }
                if let Some(status) = status {
                    let mut finished = finished.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = tx.send(IoMessage::Exit(status));
                    *finished = Some(status);
                }
                return;
            }
        }
    }
}
