//! The starter: the process a caller runs (`berth-shim --namespace .. --id .. ...`). It checks
//! its arguments, creates the shim's directory and binds the socket (so a client can connect as
//! soon as the address is printed), then forks twice with a new session in between: the
//! grandchild becomes the shim daemon ([`crate::daemon`]), detached from the caller, which may
//! exit or die without disturbing it. The starter waits for the daemon's [`Ready`] message,
//! prints the address and exits.
//!
//! ```text
//! caller ── starter ──fork── child ──setsid, fork── daemon (serves shim.sock, subreaper)
//!              │               └── exits at once       │
//!              └──────────── ready pipe ◄──────────────┘
//! ```

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::channel::{Ready, ready_channel};
use crate::daemon::Options;
use crate::sys::{Forked, exit_now, fork};

/// Longest path a Unix socket address can hold.
const SUN_PATH_MAX: usize = 107;

/// Why the shim could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An argument is missing or invalid.
    #[error("{0}")]
    Usage(String),
    /// A live shim already answers on the socket.
    #[error("a shim is already running on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// The directory or socket could not be created.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// fork, setsid or the ready pipe failed.
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    /// The daemon reported a failure.
    #[error("{0}")]
    Daemon(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Binds the socket under a temporary name, sets its mode, renames it into place.
fn bind(path: &Path) -> Result<UnixListener, StartError> {
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::AlreadyRunning(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    // A temp name no longer than "shim.sock", so that a path that fits the socket-path limit
    // fits it while binding too.
    let tmp = path.with_file_name(format!(".{:x}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
    let publish = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = publish {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    Ok(listener)
}

/// Starts the daemon; returns the address it serves on. Must run single-threaded.
pub fn run(options: Options) -> Result<String, StartError> {
    berth_api::namespace::validate(&options.namespace).map_err(StartError::Usage)?;
    crate::shim::validate_id("id", &options.id).map_err(|e| StartError::Usage(e.to_string()))?;
    let dir = options.dir.clone();
    if !dir.is_absolute() {
        return Err(StartError::Usage(format!(
            "--socket-dir {} must be an absolute path",
            dir.display()
        )));
    }
    let socket = dir.join("shim.sock");
    if socket.as_os_str().len() > SUN_PATH_MAX {
        return Err(StartError::Usage(format!(
            "socket path {} is longer than {SUN_PATH_MAX} bytes",
            socket.display()
        )));
    }
    let created_dir = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let cleanup = |remove_socket: bool| {
        if remove_socket {
            let _ = std::fs::remove_file(&socket);
        }
        if created_dir {
            let _ = std::fs::remove_dir_all(&dir);
        }
    };
    let listener = match bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            cleanup(false);
            return Err(e);
        }
    };
    let (tx, rx) = ready_channel().map_err(|source| StartError::Sys {
        what: "pipe",
        source,
    })?;
    // SAFETY: the starter is single-threaded: main calls run before creating any thread.
    match unsafe { fork() } {
        Err(source) => {
            cleanup(true);
            Err(StartError::Sys {
                what: "fork",
                source,
            })
        }
        Ok(Forked::Parent(child)) => {
            drop(tx);
            drop(listener);
            let ready = rx.wait();
            let _ = nix::sys::wait::waitpid(child, None);
            match ready {
                Ready::Serving { .. } => Ok(format!("unix://{}", socket.display())),
                Ready::Failed { message } => {
                    cleanup(true);
                    Err(StartError::Daemon(message))
                }
            }
        }
        Ok(Forked::Child) => {
            drop(rx);
            if nix::unistd::setsid().is_err() {
                tx.failed("setsid failed");
                exit_now(1);
            }
            // SAFETY: still single-threaded (this is a fork of the single-threaded starter).
            match unsafe { fork() } {
                Ok(Forked::Parent(_)) => exit_now(0),
                Ok(Forked::Child) => {
                    let code = crate::daemon::run(options, listener, tx);
                    std::process::exit(code)
                }
                Err(e) => {
                    tx.failed(&format!("fork: {e}"));
                    exit_now(1)
                }
            }
        }
    }
}
