//! The shim daemon: the detached process that supervises the containers.
//!
//! It becomes a child subreaper (so container processes are reparented to it when the
//! runtime exits), writes its `address` and `shim.pid` beside the socket for a reconnecting
//! client, and serves the Shim API on one current-thread tokio runtime with three tasks
//! besides the connections: the reaper (SIGCHLD), SIGTERM (exit once no container is left)
//! and the stop watch. When asked to stop, it ends event streams, lets in-flight calls finish
//! (bounded), removes its whole directory and exits.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_api::berth::shim::v1::shim_server::ShimServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::channel::ReadySender;
use crate::reaper::Reaper;
use crate::service::ShimService;
use crate::shim::{Config, Shim, write_atomic};

/// How long in-flight calls may take once the shim is stopping.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// How the shim was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    /// The shim's directory (socket, address, pid, exits).
    pub dir: PathBuf,
    pub runtime: String,
    /// The runtime's state root; default `<dir>/runtime`.
    pub runtime_root: Option<PathBuf>,
    /// Where the shim writes its own log; default: nowhere.
    pub log: Option<PathBuf>,
    pub debug: bool,
}

/// Detaches stdio, sets up logging, becomes a subreaper.
fn setup(options: &Options) -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    let err: std::fs::File = match &options.log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => null.try_clone().map_err(|e| format!("/dev/null: {e}"))?,
    };
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("dup2: {e}"))?;
    nix::unistd::dup2_stdout(&null).map_err(|e| format!("dup2: {e}"))?;
    nix::unistd::dup2_stderr(&err).map_err(|e| format!("dup2: {e}"))?;
    if options.log.is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_max_level(if options.debug {
                tracing::Level::DEBUG
            } else {
                tracing::Level::INFO
            })
            .init();
    }
    Ok(())
}

/// Runs the daemon until it is asked to stop; returns the process exit code.
pub fn run(options: Options, listener: UnixListener, ready: ReadySender) -> i32 {
    if let Err(e) = setup(&options) {
        ready.failed(&e);
        return 1;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            ready.failed(&format!("tokio runtime: {e}"));
            return 1;
        }
    };
    let dir = options.dir.clone();
    let code = runtime.block_on(serve(options, listener, ready));
    drop(runtime);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the shim directory");
    }
    tracing::info!("exited");
    code
}

async fn serve(options: Options, listener: UnixListener, ready: ReadySender) -> i32 {
    // SIGCHLD must be watched before the first child exists.
    let (sigchld, sigterm) = match (signal(SignalKind::child()), signal(SignalKind::terminate())) {
        (Ok(c), Ok(t)) => (c, t),
        (Err(e), _) | (_, Err(e)) => {
            ready.failed(&format!("signal handlers: {e}"));
            return 1;
        }
    };
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            ready.failed(&format!("listener: {e}"));
            return 1;
        }
    };
    let socket = options.dir.join("shim.sock");
    let address = format!("unix://{}", socket.display());
    let pid = std::process::id();
    for (name, data) in [("address", address.clone()), ("shim.pid", pid.to_string())] {
        let path = options.dir.join(name);
        if let Err(e) = write_atomic(&path, data.as_bytes()) {
            ready.failed(&format!("{}: {e}", path.display()));
            return 1;
        }
    }
    let reaper = Arc::new(Reaper::default());
    tokio::spawn({
        let reaper = reaper.clone();
        async move { reaper.run(sigchld).await }
    });
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let config = Config {
        namespace: options.namespace.clone(),
        dir: options.dir.clone(),
        bundle: options.bundle.clone(),
        runtime: options.runtime.clone(),
        runtime_root: options
            .runtime_root
            .clone()
            .unwrap_or_else(|| options.dir.join("runtime")),
    };
    let shim = Arc::new(Shim::new(config, reaper, stop_tx));
    tokio::spawn({
        let shim = shim.clone();
        let mut sigterm = sigterm;
        async move {
            while sigterm.recv().await.is_some() {
                tracing::info!("SIGTERM: exiting once no container is left");
                shim.shutdown(false).await;
            }
        }
    });
    let server = tonic::transport::Server::builder()
        .add_service(ShimServer::new(ShimService::new(shim.clone())))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), {
            let mut stop_rx = stop_rx.clone();
            let shim = shim.clone();
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
                shim.events().close();
            }
        });
    tracing::info!(address, namespace = %options.namespace, id = %options.id, "serving");
    ready.serving(pid);
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "server failed");
                return 1;
            }
            return 0;
        }
        _ = stop_rx.wait_for(|s| *s) => {}
    }
    if tokio::time::timeout(DRAIN_GRACE, server).await.is_err() {
        tracing::warn!("calls still in flight after the grace period: exiting anyway");
    }
    0
}
