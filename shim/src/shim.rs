//! The shim's domain: the containers it supervises, their processes, and what happens when
//! one exits. The gRPC adapter ([`crate::service`]) only converts messages and calls this.
//!
//! Each container has one lock over its processes, held by every request for that container
//! (requests for one container run one at a time). Exits do not take it: a process's exit
//! goes into its own `watch` cell, which Wait, State and Delete read, so an exit is recorded
//! (durably, beside the socket) and published whatever request is in flight.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use berth_api::berth::events::v1::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOom, TaskPaused,
    TaskResumed, TaskStart, envelope::Event,
};
use berth_api::berth::shim::v1 as api;
use berth_api::berth::types::v1::{ExitStatus, ProcessInfo, Stats};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::backend::{Backend, BackendStatus, CreateOpts, ExecOpts};
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::io::{IoSpec, ProcessIo};
use crate::podinit::PodInit;
use crate::reaper::{Exit, Reaper};
use crate::runtime::{self, OciCli};
use crate::task::{Action, Status};

/// How long Delete waits for a killed, never-started init process to be reaped.
const DELETE_REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the shim was started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of every container of this shim.
    pub namespace: String,
    /// The shim's directory: socket, address, pid, exit records, console sockets.
    pub dir: PathBuf,
    /// Bundle used when a Create request names none.
    pub bundle: Option<PathBuf>,
    /// Runtime used when a Create request names none.
    pub runtime: String,
    /// The OCI runtime's state root.
    pub runtime_root: PathBuf,
}

/// How a process ended, as recorded beside the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub pid: u32,
    pub exit_code: u32,
    pub signal: u32,
    pub exited_at_unix_ns: u64,
    pub oom_killed: bool,
}

impl ExitRecord {
    /// The wire form.
    pub fn to_proto(self) -> ExitStatus {
        let at = UNIX_EPOCH + Duration::from_nanos(self.exited_at_unix_ns);
        ExitStatus {
            exit_code: self.exit_code,
            signal: self.signal,
            exited_at: Some(at.into()),
            oom_killed: self.oom_killed,
        }
    }
}

type ExitCell = watch::Sender<Option<ExitRecord>>;

struct Process {
    pid: u32,
    status: Status,
    exited: Arc<ExitCell>,
    io_spec: IoSpec,
    io: ProcessIo,
    /// Exec processes: the OCI process spec (JSON).
    spec: Vec<u8>,
}

impl Process {
    fn new(io_spec: IoSpec, io: ProcessIo, spec: Vec<u8>) -> Process {
        Process {
            pid: 0,
            status: Status::Created,
            exited: Arc::new(watch::channel(None).0),
            io_spec,
            io,
            spec,
        }
    }

    /// The status, with a recorded exit taking precedence.
    fn status(&self) -> Status {
        if self.exited.borrow().is_some() {
            Status::Stopped
        } else {
            self.status
        }
    }

    fn exit(&self) -> Option<ExitRecord> {
        *self.exited.borrow()
    }
}

struct Procs {
    init: Process,
    execs: HashMap<String, Process>,
}

impl Procs {
    /// The init process (empty `exec_id`) or an exec process of container `id`.
    fn get(&self, id: &str, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))
    }

    /// [`Procs::get`], mutably.
    fn get_mut(&mut self, id: &str, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))
    }
}

fn exec_not_found(id: &str, exec_id: &str) -> Error {
    Error::ExecNotFound {
        id: id.to_owned(),
        exec_id: exec_id.to_owned(),
    }
}

/// One container of the shim.
pub struct Container {
    id: String,
    bundle: PathBuf,
    backend: Arc<dyn Backend>,
    /// Where the Create request's rootfs mounts were mounted, if it brought any.
    mounts: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    /// An OOM event has been published for this container.
    oom_reported: AtomicBool,
    procs: tokio::sync::Mutex<Procs>,
}

impl Container {
    /// Publishes one TaskOOM event per container (from the watcher or at exit).
    fn report_oom(&self, events: &Events) {
        if !self.oom_reported.swap(true, Ordering::SeqCst) {
            events.publish(
                "/tasks/oom",
                Event::TaskOom(TaskOom {
                    container_id: self.id.clone(),
                }),
            );
        }
    }
}

/// Every container of one shim.
pub struct Shim {
    config: Config,
    reaper: Arc<Reaper>,
    backends: Mutex<HashMap<PathBuf, Arc<OciCli>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    events: Events,
    stop: watch::Sender<bool>,
    /// The shim's own cgroup, never removed with a container's.
    own_cgroup: Cgroup,
    /// The init of the pod's shared pid namespace, once a container asked for it.
    pod_init: Mutex<Option<PodInit>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a container or exec id: letters, digits and inner `.`, `_`, `-`, at most 76.
pub fn validate_id(field: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field,
            reason: format!(
                "{id:?}: use letters, digits, '.', '_' and '-' (starting with a letter or digit, at most 76)"
            ),
        })
    }
}

fn exit_record(pid: u32, exit: Exit, oom_killed: bool) -> ExitRecord {
    ExitRecord {
        pid,
        exit_code: exit.code,
        signal: exit.signal,
        exited_at_unix_ns: exit
            .at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        oom_killed,
    }
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

async fn drain(copiers: Vec<JoinHandle<()>>) {
    let _ = tokio::time::timeout(crate::io::DRAIN_TIMEOUT, async {
        for c in copiers {
            let _ = c.await;
        }
    })
    .await;
}

impl Shim {
    /// A shim with no container yet; `stop` is set when it should exit.
    pub fn new(config: Config, reaper: Arc<Reaper>, stop: watch::Sender<bool>) -> Shim {
        let events = Events::new(&config.namespace);
        Shim {
            config,
            reaper,
            backends: Mutex::default(),
            containers: Mutex::default(),
            creating: Mutex::default(),
            events,
            stop,
            own_cgroup: Cgroup::of_pid(std::process::id()).unwrap_or_default(),
            pod_init: Mutex::default(),
        }
    }

    /// The event log.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Asks the daemon to exit, ending the pod's init first.
    fn finish(&self) {
        if let Some(init) = lock(&self.pod_init).take() {
            init.kill();
        }
        self.stop.send_replace(true);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound { id: id.to_owned() })
    }

    fn backend(&self, name: &str) -> Result<Arc<OciCli>> {
        let name = if name.is_empty() {
            self.config.runtime.as_str()
        } else {
            name
        };
        let binary = runtime::resolve(name)?;
        let mut backends = lock(&self.backends);
        Ok(backends
            .entry(binary.clone())
            .or_insert_with(|| {
                Arc::new(OciCli::new(
                    binary,
                    self.config.runtime_root.clone(),
                    self.config.dir.clone(),
                    self.reaper.clone(),
                ))
            })
            .clone())
    }

    fn exit_path(&self, id: &str, exec_id: &str) -> PathBuf {
        let name = if exec_id.is_empty() {
            "init.json".to_owned()
        } else {
            format!("exec-{exec_id}.json")
        };
        self.config.dir.join("exits").join(id).join(name)
    }

    /// Creates a container; returns its init pid.
    pub async fn create(self: &Arc<Self>, req: api::CreateRequest) -> Result<u32> {
        validate_id("id", &req.id)?;
        if self.stopping() {
            return Err(Error::ShuttingDown);
        }
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(&req.id) || !creating.insert(req.id.clone()) {
                return Err(Error::ContainerExists { id: req.id });
            }
        }
        let id = req.id.clone();
        let result = self.create_inner(req).await;
        lock(&self.creating).remove(&id);
        result
    }

    async fn create_inner(self: &Arc<Self>, req: api::CreateRequest) -> Result<u32> {
        let bundle = match (req.bundle.is_empty(), &self.config.bundle) {
            (false, _) => PathBuf::from(&req.bundle),
            (true, Some(b)) => b.clone(),
            (true, None) => {
                return Err(Error::InvalidArgument {
                    field: "bundle",
                    reason: "empty".into(),
                });
            }
        };
        let invalid = |reason: String| Error::InvalidBundle {
            path: bundle.clone(),
            reason,
        };
        if !bundle.is_absolute() {
            return Err(invalid("not an absolute path".into()));
        }
        let config = bundle.join("config.json");
        crate::podinit::prepare(&config, &mut lock(&self.pod_init), &self.reaper)?;
        let spec = crate::spec::load(&config).map_err(invalid)?;
        let process = spec
            .process
            .as_ref()
            .ok_or_else(|| invalid("config.json has no process".into()))?;
        let root = spec
            .root
            .as_ref()
            .ok_or_else(|| invalid("config.json has no root".into()))?;
        let rootfs = bundle.join(&root.path);
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "root filesystem {} is not a directory",
                rootfs.display()
            )));
        }
        let terminal = process.terminal;
        if terminal != req.terminal {
            return Err(Error::InvalidArgument {
                field: "terminal",
                reason: format!(
                    "the request says {} but config.json's process.terminal is {terminal}",
                    req.terminal
                ),
            });
        }
        let backend = self.backend(&req.runtime)?;

        let mounts = crate::mount::mount_all(&req.rootfs, &rootfs)?;
        let unchecked: Vec<PathBuf> = spec.mounts.iter().map(|m| m.destination.clone()).collect();
        let created = async {
            crate::command::check(
                &rootfs,
                &process.args,
                &process.env,
                &process.cwd,
                &unchecked,
            )?;
            let io_spec = IoSpec {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                log: req.log.as_ref().map(|l| {
                    let path = if l.path.is_empty() {
                        self.config.dir.join(format!("{}.log", req.id))
                    } else {
                        PathBuf::from(&l.path)
                    };
                    (path, l.max_size, l.max_files)
                }),
                terminal,
            };
            let (mut io, rt_io) = ProcessIo::prepare(&io_spec, &self.config.dir, &req.id)?;
            let pid = backend
                .create(CreateOpts {
                    id: req.id.clone(),
                    bundle: bundle.clone(),
                    io: rt_io,
                })
                .await;
            let pid = match pid {
                Ok(pid) => pid,
                Err(e) => {
                    // The runtime may have left state (or a cgroup) behind.
                    let _ = backend.delete(&req.id, true).await;
                    return Err(e);
                }
            };
            if let Err(e) = io.attach_console().await {
                let _ = backend.delete(&req.id, true).await;
                return Err(e);
            }
            Ok((pid, io, io_spec))
        }
        .await;
        let (pid, mut io, io_spec) = match created {
            Ok(c) => c,
            Err(e) => {
                crate::mount::unmount(&mounts);
                return Err(e);
            }
        };
        let copiers = io.take_copiers();
        let mut init = Process::new(io_spec, io, Vec::new());
        init.pid = pid;
        let exited = init.exited.clone();
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            backend: backend as Arc<dyn Backend>,
            mounts,
            cgroup: Cgroup::of_pid(pid).ok(),
            oom_reported: AtomicBool::new(false),
            procs: tokio::sync::Mutex::new(Procs {
                init,
                execs: HashMap::new(),
            }),
        });
        lock(&self.containers).insert(req.id.clone(), container.clone());
        self.watch_oom(&container);
        self.watch_exit(container, String::new(), pid, exited, copiers);
        self.events.publish(
            "/tasks/create",
            Event::TaskCreate(TaskCreate {
                container_id: req.id,
                bundle: bundle.display().to_string(),
                rootfs: req.rootfs,
                pid,
            }),
        );
        Ok(pid)
    }

    /// Publishes an OOM event as soon as the kernel's OOM killer acts in the container's
    /// cgroup (the exit, if the init process was the victim, follows on its own).
    fn watch_oom(self: &Arc<Self>, container: &Arc<Container>) {
        let Some(cgroup) = container.cgroup.clone() else {
            return;
        };
        let watcher = match cgroup.oom_watcher() {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(id = %container.id, error = %e, "no OOM watcher");
                return;
            }
        };
        let container = Arc::downgrade(container);
        let shim = Arc::downgrade(self);
        tokio::spawn(async move {
            while watcher.changed().await {
                let (Some(c), Some(shim)) = (container.upgrade(), shim.upgrade()) else {
                    return;
                };
                if c.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0) {
                    c.report_oom(&shim.events);
                    return;
                }
            }
        });
    }

    /// Records and publishes the exit of `pid` when the reaper sees it.
    fn watch_exit(
        self: &Arc<Self>,
        container: Arc<Container>,
        exec_id: String,
        pid: u32,
        exited: Arc<ExitCell>,
        copiers: Vec<JoinHandle<()>>,
    ) {
        let rx: oneshot::Receiver<Exit> = self.reaper.subscribe(pid);
        let shim = self.clone();
        tokio::spawn(async move {
            let Ok(exit) = rx.await else {
                return;
            };
            drain(copiers).await;
            let oom =
                exec_id.is_empty() && container.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
            let record = exit_record(pid, exit, oom);
            let path = shim.exit_path(&container.id, &exec_id);
            match serde_json::to_vec(&record) {
                Ok(data) => {
                    if let Err(e) = write_atomic(&path, &data) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot record exit");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode exit"),
            }
            tracing::info!(id = %container.id, exec_id, pid, code = record.exit_code, oom, "exited");
            if oom {
                container.report_oom(&shim.events);
            }
            exited.send_replace(Some(record));
            // Start publishes its event under this lock: a process that exits at once still
            // has its start event published before its exit.
            drop(container.procs.lock().await);
            shim.events.publish(
                "/tasks/exit",
                Event::TaskExit(TaskExit {
                    container_id: container.id.clone(),
                    exec_id,
                    pid,
                    exit_status: Some(record.to_proto()),
                }),
            );
        });
    }

    /// Starts the init process or a created exec process; returns its pid.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let container = self.container(id)?;
        let mut procs = container.procs.lock().await;
        if exec_id.is_empty() {
            let next = procs.init.status().transition(Action::Start, id)?;
            container.backend.start(id).await?;
            procs.init.status = next;
            let pid = procs.init.pid;
            self.events.publish(
                "/tasks/start",
                Event::TaskStart(TaskStart {
                    container_id: id.to_owned(),
                    pid,
                }),
            );
            return Ok(pid);
        }
        procs.init.status().transition(Action::Exec, id)?;
        let process = procs
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))?;
        let next = process.status().transition(Action::Start, id)?;
        let name = format!("{id}.{exec_id}");
        let (mut io, rt_io) = ProcessIo::prepare(&process.io_spec, &self.config.dir, &name)?;
        let pid = container
            .backend
            .exec(
                id,
                ExecOpts {
                    exec_id: exec_id.to_owned(),
                    process: process.spec.clone(),
                    io: rt_io,
                },
            )
            .await?;
        if let Err(e) = io.attach_console().await {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
        let copiers = io.take_copiers();
        process.io = io;
        process.pid = pid;
        process.status = next;
        let exited = process.exited.clone();
        self.watch_exit(container.clone(), exec_id.to_owned(), pid, exited, copiers);
        self.events.publish(
            "/tasks/exec-started",
            Event::TaskExecStarted(TaskExecStarted {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
            }),
        );
        Ok(pid)
    }

    /// The state of the init process or an exec process.
    pub async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let container = self.container(id)?;
        let procs = container.procs.lock().await;
        let p = procs.get(id, exec_id)?;
        Ok(api::StateResponse {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            bundle: container.bundle.display().to_string(),
            pid: p.pid,
            status: p.status().to_proto() as i32,
            stdin: p.io_spec.stdin.clone(),
            stdout: p.io_spec.stdout.clone(),
            stderr: p.io_spec.stderr.clone(),
            terminal: p.io_spec.terminal,
            exit_status: p.exit().map(ExitRecord::to_proto),
        })
    }

    /// Signals the init process, an exec process, or every process of the container.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| Error::InvalidArgument {
                field: "signal",
                reason: format!("{signal} is not a signal number (1-64)"),
            })?;
        let container = self.container(id)?;
        let procs = container.procs.lock().await;
        let finished = |process: &str| Error::ProcessFinished {
            id: id.to_owned(),
            process: process.to_owned(),
        };
        if exec_id.is_empty() {
            let stopped = procs.init.status() == Status::Stopped;
            if stopped && !all {
                return Err(finished("init"));
            }
            return match container.backend.kill(id, sig, all).await {
                Ok(()) => Ok(()),
                // Everything had already exited.
                Err(_) if all && stopped => Ok(()),
                // The process exited while the signal was on its way (its exit may not be
                // reaped yet): the runtime knows.
                Err(e) => match container.backend.state(id).await {
                    Ok((BackendStatus::Stopped, _)) => Err(finished("init")),
                    _ if procs.init.status() == Status::Stopped => Err(finished("init")),
                    _ => Err(e),
                },
            };
        }
        if all {
            return Err(Error::InvalidArgument {
                field: "all",
                reason: "only for the whole container (no exec_id)".into(),
            });
        }
        let p = procs
            .execs
            .get(exec_id)
            .ok_or_else(|| exec_not_found(id, exec_id))?;
        match p.status() {
            Status::Stopped => return Err(finished(exec_id)),
            Status::Created => {
                return Err(Error::BadState {
                    id: id.to_owned(),
                    state: Status::Created,
                    action: "signal a process that has not started",
                });
            }
            _ => {}
        }
        let signal =
            nix::sys::signal::Signal::try_from(sig).map_err(|_| Error::InvalidArgument {
                field: "signal",
                reason: format!("{sig} is not a signal this shim can send to one process"),
            })?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(finished(exec_id)),
            Err(e) => Err(Error::Sys {
                what: "kill",
                source: e,
            }),
        }
    }

    /// Deletes a stopped exec process, or a stopped (or never started) container.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Option<ExitRecord>)> {
        let container = self.container(id)?;
        let mut procs = container.procs.lock().await;
        if !exec_id.is_empty() {
            let p = procs
                .execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            p.status().transition(Action::Delete, id)?;
            let mut p = procs
                .execs
                .remove(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            p.io.close();
            let _ = std::fs::remove_file(self.exit_path(id, exec_id));
            let exit = p.exit();
            self.publish_delete(id, exec_id, p.pid, exit);
            return Ok((p.pid, exit));
        }
        let status = procs.init.status();
        status.transition(Action::Delete, id)?;
        container.backend.delete(id, true).await?;
        if status == Status::Created {
            // The runtime killed the init process: wait until it is reaped and recorded.
            let mut rx = procs.init.exited.subscribe();
            let _ = tokio::time::timeout(DELETE_REAP_TIMEOUT, rx.wait_for(Option::is_some)).await;
        }
        for p in procs.execs.values_mut() {
            p.io.close();
        }
        procs.init.io.close();
        if let Some(cgroup) = &container.cgroup {
            cgroup.remove_leftovers(&self.own_cgroup);
        }
        crate::mount::unmount(&container.mounts);
        let _ = std::fs::remove_dir_all(self.config.dir.join("exits").join(id));
        let pid = procs.init.pid;
        let exit = procs.init.exit();
        drop(procs);
        let empty = {
            let mut containers = lock(&self.containers);
            containers.remove(id);
            containers.is_empty()
        };
        self.publish_delete(id, "", pid, exit);
        if empty {
            tracing::info!("last container deleted: exiting");
            self.finish();
        }
        Ok((pid, exit))
    }

    fn publish_delete(&self, id: &str, exec_id: &str, pid: u32, exit: Option<ExitRecord>) {
        self.events.publish(
            "/tasks/delete",
            Event::TaskDelete(TaskDelete {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
                exit_status: exit.map(ExitRecord::to_proto),
            }),
        );
    }

    /// Waits until the init process or an exec process has exited.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitRecord> {
        let container = self.container(id)?;
        let mut rx = {
            let procs = container.procs.lock().await;
            let p = procs.get(id, exec_id)?;
            p.exited.subscribe()
        };
        let exit = rx.wait_for(Option::is_some).await.map(|e| *e);
        match exit {
            Ok(Some(record)) => Ok(record),
            _ => Err(Error::ContainerNotFound { id: id.to_owned() }),
        }
    }

    /// Records an exec process (started later with Start).
    pub async fn exec(&self, req: api::ExecRequest) -> Result<()> {
        validate_id("exec_id", &req.exec_id)?;
        let container = self.container(&req.id)?;
        let mut procs = container.procs.lock().await;
        procs.init.status().transition(Action::Exec, &req.id)?;
        if procs.execs.contains_key(&req.exec_id) {
            return Err(Error::ExecExists {
                id: req.id,
                exec_id: req.exec_id,
            });
        }
        let (process, spec) = crate::spec::exec_process(&req.spec, req.terminal).map_err(|e| {
            Error::InvalidArgument {
                field: "spec",
                reason: format!("not an OCI process: {e}"),
            }
        })?;
        let root = PathBuf::from(format!("/proc/{}/root", procs.init.pid));
        crate::command::check(&root, &process.args, &process.env, &process.cwd, &[])?;
        let io_spec = IoSpec {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            log: None,
            terminal: req.terminal,
        };
        procs.execs.insert(
            req.exec_id.clone(),
            Process::new(io_spec, ProcessIo::default(), spec),
        );
        self.events.publish(
            "/tasks/exec-added",
            Event::TaskExecAdded(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
            }),
        );
        Ok(())
    }

    /// Resizes the pty of a process.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, cols: u32, rows: u32) -> Result<()> {
        let container = self.container(id)?;
        let procs = container.procs.lock().await;
        let p = procs.get(id, exec_id)?;
        let process = if exec_id.is_empty() { "init" } else { exec_id };
        if p.status() == Status::Stopped {
            return Err(Error::ProcessFinished {
                id: id.to_owned(),
                process: process.to_owned(),
            });
        }
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        p.io.resize(clamp(cols), clamp(rows)).unwrap_or_else(|| {
            Err(Error::NoSuchIo {
                id: id.to_owned(),
                process: process.to_owned(),
                what: "terminal",
            })
        })
    }

    /// Reopens the CRI log file of a container's running init process (the client moved the
    /// old file away). FailedPrecondition when the process is not running or has no log.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let container = self.container(id)?;
        let procs = container.procs.lock().await;
        let status = procs.init.status();
        if status != Status::Running {
            return Err(Error::BadState {
                id: id.to_owned(),
                state: status,
                action: "reopen its log",
            });
        }
        procs.init.io.reopen_log().unwrap_or_else(|| {
            Err(Error::NoSuchIo {
                id: id.to_owned(),
                process: "init".to_owned(),
                what: "log file",
            })
        })
    }

    /// Closes the stdin of a process.
    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        let container = self.container(id)?;
        let mut procs = container.procs.lock().await;
        let p = procs.get_mut(id, exec_id)?;
        // A process without stdin has nothing to close: not an error.
        p.io.close_stdin();
        Ok(())
    }

    /// Freezes (`pause`) or thaws the container.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let container = self.container(id)?;
        let mut procs = container.procs.lock().await;
        let action = if pause { Action::Pause } else { Action::Resume };
        let next = procs.init.status().transition(action, id)?;
        if pause {
            container.backend.pause(id).await?;
            // A runtime may return while the freezer is still FREEZING: a paused container
            // must use no more cpu once Pause has answered.
            if let Some(cgroup) = &container.cgroup {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while cgroup.frozen() == Some(false) && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        } else {
            container.backend.resume(id).await?;
        }
        procs.init.status = next;
        let container_id = id.to_owned();
        if pause {
            self.events.publish(
                "/tasks/paused",
                Event::TaskPaused(TaskPaused { container_id }),
            );
        } else {
            self.events.publish(
                "/tasks/resumed",
                Event::TaskResumed(TaskResumed { container_id }),
            );
        }
        Ok(())
    }

    /// The processes of the container.
    pub async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let container = self.container(id)?;
        let procs = container.procs.lock().await;
        let pids = match &container.cgroup {
            Some(cg) => cg.pids(),
            None => vec![procs.init.pid],
        };
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                exec_id: procs
                    .execs
                    .iter()
                    .find(|(_, p)| p.pid == pid && p.status() != Status::Stopped)
                    .map(|(e, _)| e.clone())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Resource usage of the container.
    pub async fn stats(&self, id: &str) -> Result<Stats> {
        let container = self.container(id)?;
        let pid = container.procs.lock().await.init.pid;
        container.backend.stats(id, pid).await
    }

    /// Applies new resource limits to the container.
    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let container = self.container(id)?;
        let procs = container.procs.lock().await;
        procs.init.status().transition(Action::Update, id)?;
        crate::spec::check_resources(resources).map_err(|e| Error::InvalidArgument {
            field: "resources",
            reason: format!("not an OCI LinuxResources object: {e}"),
        })?;
        container.backend.update(id, resources).await
    }

    /// The pid of a container's init process (0 if unknown).
    pub async fn task_pid(&self, id: &str) -> u32 {
        match self.container(id) {
            Ok(c) => c.procs.lock().await.init.pid,
            Err(_) => 0,
        }
    }

    /// Exits once no container is left (`now`: kills and deletes them first).
    pub async fn shutdown(&self, now: bool) {
        if now {
            let all: Vec<Arc<Container>> = lock(&self.containers).values().cloned().collect();
            for c in all {
                let _ = c.backend.kill(&c.id, libc::SIGKILL, true).await;
                let status = {
                    let procs = c.procs.lock().await;
                    let mut rx = procs.init.exited.subscribe();
                    drop(procs);
                    tokio::time::timeout(DELETE_REAP_TIMEOUT, rx.wait_for(Option::is_some))
                        .await
                        .is_ok()
                };
                if !status {
                    tracing::warn!(id = %c.id, "init process not reaped after SIGKILL");
                }
                if let Err(e) = self.delete(&c.id, "").await {
                    tracing::warn!(id = %c.id, error = %e, "cannot delete container");
                    // Release what the shim holds itself even so.
                    crate::mount::unmount(&c.mounts);
                    let _ = c.backend.delete(&c.id, true).await;
                    lock(&self.containers).remove(&c.id);
                }
            }
        }
        // Otherwise the shim exits when Delete removes the last container.
        if lock(&self.containers).is_empty() {
            self.finish();
        }
    }
}
