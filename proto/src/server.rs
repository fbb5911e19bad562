//! Serving berth services on Unix sockets, the same way for every service.
//!
//! [`serve`] hosts one or more services (berthd hosts all of them, `berth-<service>` one), each on
//! its own socket with grpc.health.v1, `berth.version.v1.Version`, namespace validation and trace
//! context continuation. Start-up checks everything before it creates anything: a socket on which
//! a live instance answers is refused and left alone; a stale one (nobody answers) is replaced.
//! Sockets appear atomically with mode 0660. SIGTERM or SIGINT stops accepting, lets in-flight
//! RPCs finish (bounded by `shutdown_timeout`), then removes the sockets.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::{InterceptorLayer, Routes};
use tonic_health::ServingStatus;

use crate::berth::version::v1 as version;
use crate::config::Config;
use crate::service::Service;
use crate::{namespace, telemetry};

/// Release version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision this build was made from, or "unknown".
pub const REVISION: &str = env!("BERTH_GIT_REVISION");

/// Environment variable (a failpoint for tests): milliseconds every Version RPC waits before it
/// answers, so a test can have an RPC in flight while it signals the process.
pub const VERSION_DELAY_ENV: &str = "BERTH_FAILPOINT_VERSION_DELAY_MS";

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process answers on the socket.
    #[error("{service} is already running: a live instance answers on {}", socket.display())]
    AlreadyRunning { service: Service, socket: PathBuf },
    /// Something that is not a socket sits where the socket belongs.
    #[error("{} exists and is not a socket: move it away", path.display())]
    NotASocket { path: PathBuf },
    /// The service's root (or the state directory) cannot be created or written.
    #[error("directory {} is not writable: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Binding or publishing the socket failed.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("{service} server failed: {source}")]
    Transport {
        service: Service,
        source: tonic::transport::Error,
    },
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// A service to host: its name and its gRPC routes (health and version are added here).
pub struct Hosted {
    /// Which service this is.
    pub service: Service,
    /// The service's own gRPC services.
    pub routes: Routes,
}

/// Serves `hosted` until SIGTERM or SIGINT, then drains and removes the sockets.
pub async fn serve(config: &Config, hosted: Vec<Hosted>) -> Result<(), ServeError> {
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    };
    serve_until(config, hosted, stop).await
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, ServeError> {
    tokio::signal::unix::signal(kind).map_err(ServeError::Signals)
}

/// Serves `hosted` until `stop` completes, then drains and removes the sockets.
pub async fn serve_until(
    config: &Config,
    hosted: Vec<Hosted>,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let started = Instant::now();
    // Check everything before creating anything.
    for h in &hosted {
        check_socket(h.service, &h.service.socket(&config.state))?;
    }
    for h in &hosted {
        ensure_writable(&config.service_root(h.service.name()))?;
    }
    ensure_writable(&config.state)?;

    let mut sockets = Vec::new();
    let mut listeners = Vec::new();
    for h in &hosted {
        let path = h.service.socket(&config.state);
        match listen(&path, config.socket_gid()) {
            Ok((listener, inode)) => {
                sockets.push((path, inode));
                listeners.push(listener);
            }
            Err(e) => {
                remove_sockets(&sockets);
                return Err(e);
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut reporters = Vec::new();
    for (h, listener) in hosted.into_iter().zip(listeners) {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporters.push(reporter);
        let version = version::version_server::VersionServer::new(VersionService {
            service: h.service,
            root: config.service_root(h.service.name()),
            state: config.state.clone(),
            started,
            delay: version_delay(),
        });
        let routes = h.routes.add_service(health).add_service(version);
        let incoming = UnixListenerStream::new(listener);
        let service = h.service;
        let mut stop_rx = stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .trace_fn(move |req| {
                let span = tracing::info_span!(
                    "grpc",
                    otel.name = %req.uri().path(),
                    otel.kind = "server",
                    rpc.system = "grpc",
                    berth.service = service.name(),
                );
                telemetry::continue_from(&span, req.headers());
                span
            })
            .layer(InterceptorLayer::new(namespace::check))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            });
        servers.spawn(async move {
            server
                .await
                .map_err(|source| ServeError::Transport { service, source })
        });
        tracing::info!(service = service.name(), state = %config.state.display(), "serving");
    }

    // Run until asked to stop or until a server fails.
    let mut failure = None;
    tokio::select! {
        _ = stop => tracing::info!("shutting down: draining in-flight calls"),
        Some(result) = servers.join_next() => {
            failure = result.ok().and_then(Result::err);
        }
    }
    for reporter in &reporters {
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
    let _ = stop_tx.send(true);
    let grace = config.shutdown_grace();
    let drained = tokio::time::timeout(grace, async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "calls still in flight after the grace period: abandoning them");
        servers.abort_all();
    }
    remove_sockets(&sockets);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Checks that `service` can be served before a service opens its state in its `hosted`
/// function: no live instance answers on its socket, and its root and the state directory are
/// writable (both are created if missing). [`serve`] checks again before it listens.
pub fn preflight(config: &Config, service: Service) -> Result<(), ServeError> {
    check_socket(service, &service.socket(&config.state))?;
    ensure_writable(&config.service_root(service.name()))?;
    ensure_writable(&config.state)
}

/// Fails when a live instance answers on `path`; a dead socket is left for [`listen`] to replace.
fn check_socket(service: Service, path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::AlreadyRunning {
            service,
            socket: path.to_owned(),
        }),
        Err(_) => Ok(()),
    }
}

/// Creates `dir` if needed and proves it writable with a probe file.
fn ensure_writable(dir: &Path) -> Result<(), ServeError> {
    let not_writable = |source| ServeError::NotWritable {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)
}

/// Binds under a temporary name, sets mode 0660 (and the group), then renames into place, so
/// the socket never exists with looser permissions and a stale one is replaced atomically.
fn listen(path: &Path, gid: Option<nix::unistd::Gid>) -> Result<(UnixListener, u64), ServeError> {
    let err = |source| ServeError::Listen {
        path: path.to_owned(),
        source,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("sock");
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
    let publish = || -> std::io::Result<u64> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = gid {
            nix::unistd::chown(&tmp, None, Some(gid)).map_err(std::io::Error::from)?;
        }
        let inode = std::fs::symlink_metadata(&tmp)?.ino();
        std::fs::rename(&tmp, path)?;
        std_listener.set_nonblocking(true)?;
        Ok(inode)
    };
    let inode = publish().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    });
    let inode = inode.map_err(err)?;
    let listener = UnixListener::from_std(std_listener).map_err(err)?;
    Ok((listener, inode))
}

/// Removes each socket that is still the one this process created.
fn remove_sockets(sockets: &[(PathBuf, u64)]) {
    for (path, inode) in sockets {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == *inode)
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove socket");
        }
    }
}

fn version_delay() -> Duration {
    std::env::var(VERSION_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

struct VersionService {
    service: Service,
    root: PathBuf,
    state: PathBuf,
    started: Instant,
    delay: Duration,
}

#[tonic::async_trait]
impl version::version_server::Version for VersionService {
    async fn version(
        &self,
        _request: tonic::Request<version::VersionRequest>,
    ) -> Result<tonic::Response<version::VersionResponse>, tonic::Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(tonic::Response::new(version::VersionResponse {
            service: self.service.name().to_owned(),
            version: VERSION.to_owned(),
            revision: REVISION.to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            root: self.root.display().to_string(),
            state: self.state.display().to_string(),
            pid: std::process::id(),
        }))
    }
}
