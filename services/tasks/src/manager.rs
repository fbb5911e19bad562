//! The tasks service's domain: container records and their tasks, each task run by its own
//! berth-shim.
//!
//! A task's files: the bundle `<state>/tasks/<ns>/<id>/` (config.json, rootfs/ where the shim
//! mounts the snapshot, hostname/hosts/resolv.conf, io/ FIFOs), the shim's directory
//! `<state>/shims/<ns>/<id>/`, and the log directory `<root>/logs/<ns>/<id>/` (kept until
//! the container is deleted). The store's task record says which task exists, so that a
//! restarted service finds its shims again ([`crate::recover`]).
//!
//! A container with a `sandbox_id` belongs to a pod: all the pod's tasks run in one shim,
//! `<state>/shims/<ns>/<sandbox_id>/`, launched with the pod's first task and ending when its
//! last task is deleted ([`ShimConn`]).
//!
//! Lifecycle operations on one container (task create and delete, container delete, restarts)
//! are serialized by a per-container lock, and launching or ending a shim by a per-shim lock
//! (taken after the container's); calls that only talk to the shim are not.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::Service;
use berth_api::berth::containers::v1::Container;
use berth_api::berth::events::v1::envelope::Event;
use berth_api::berth::events::v1::{
    ContainerCreate, ContainerDelete, ContainerUpdate, Envelope, TaskExit,
};
use berth_api::berth::shim::v1 as shim;
use berth_api::berth::shim::v1::shim_client::ShimClient;
use berth_api::berth::snapshots::v1 as snap;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::berth::tasks::v1 as api;
use berth_api::berth::types::v1::{ExitStatus, LogConfig, Mount, TaskStatus};
use berth_api::client::Channel;
use berth_api::config::Config;
use berth_api::filters::Filters;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::attach::ProcessIo;
use crate::containers;
use crate::error::{Error, Result};
use crate::events::{Broadcaster, now};
use crate::network::{self, Attached, JoinTarget, Mode, NetworkSettings};
use crate::restart::{self, Decision};
use crate::store::{ExecRecord, Exit, LiveTask, Store, TaskRecord};
use crate::volumes::VolumeManager;

/// How long a shim may take to start and print its address.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the event stream of a live shim is followed again after it ends.
const RESUBSCRIBE_ATTEMPTS: u32 = 100;
/// Longest path of a Unix socket (sun_path without its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Attempts of one restart while a service it needs is unavailable.
const RESTART_ATTEMPTS: u32 = 6;
/// Container label: "true" = delete the task and the container (with its anonymous volumes)
/// once its init process exited and no restart policy brings it back (`run -d --rm`).
pub const AUTO_REMOVE: &str = "berth.io/auto-remove";
/// Signals that stop a container: after one of them, restart policies leave it stopped.
const STOP_SIGNALS: [u32; 4] = [2, 3, 9, 15];

/// Paths and defaults the manager works with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service's root (`<root>/tasks`).
    pub root: PathBuf,
    /// The state directory (sockets, shims, bundles).
    pub state: PathBuf,
    /// Runtime of containers that name none.
    pub runtime: String,
    /// Parent cgroup of containers whose spec names none.
    pub cgroup_parent: String,
    /// The berth-shim binary.
    pub shim: PathBuf,
}

impl Settings {
    /// Settings from the configuration; the shim is the `berth-shim` beside this executable.
    pub fn from_config(config: &Config) -> Result<Settings> {
        let exe = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
        let shim = exe
            .parent()
            .map(|d| d.join("berth-shim"))
            .unwrap_or_else(|| PathBuf::from("berth-shim"));
        Ok(Settings {
            root: config.service_root(Service::Tasks.name()),
            state: config.state.clone(),
            runtime: config.tasks.runtime.clone(),
            cgroup_parent: config.tasks.cgroup_parent.clone(),
            shim,
        })
    }

    /// The bundle of a container's task.
    pub fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.state.join("tasks").join(ns).join(id)
    }

    /// The directory of a container's shim: `<state>/shims/<ns>/<id>`, or, when its socket
    /// path would not fit a Unix socket address, `<state>/shims/<ns>/<id[..12]>-<hash of id>`.
    pub fn shim_dir(&self, ns: &str, id: &str) -> PathBuf {
        let dir = self.state.join("shims").join(ns);
        let full = dir.join(id);
        if full.join("shim.sock").as_os_str().len() <= MAX_SOCKET_PATH {
            return full;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(id, &mut hasher);
        let short: String = id.chars().take(12).collect();
        dir.join(format!(
            "{short}-{:016x}",
            std::hash::Hasher::finish(&hasher)
        ))
    }

    /// The log directory of a container.
    pub fn log_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.root.join("logs").join(ns).join(id)
    }

    fn socket(&self, service: Service) -> PathBuf {
        service.socket(&self.state)
    }
}

/// A shim process the service is connected to, and the containers whose tasks it runs: one
/// container's, or every container's of a pod.
pub struct ShimConn {
    ns: String,
    dir: PathBuf,
    client: ShimClient<Channel>,
    /// Containers with a task in this shim.
    members: Mutex<HashSet<String>>,
    /// Sequence number of the last event relayed.
    seq: AtomicU64,
    /// A relay follows its events.
    followed: AtomicBool,
}

impl ShimConn {
    fn new(ns: &str, dir: &Path, client: ShimClient<Channel>, seq: u64) -> Arc<ShimConn> {
        Arc::new(ShimConn {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            client,
            members: Mutex::default(),
            seq: AtomicU64::new(seq),
            followed: AtomicBool::new(false),
        })
    }

    fn members(&self) -> Vec<String> {
        lock(&self.members).iter().cloned().collect()
    }
}

/// A task whose shim the service is connected to.
pub struct Task {
    ns: String,
    id: String,
    conn: Arc<ShimConn>,
    bundle: PathBuf,
    io: Mutex<HashMap<String, Arc<ProcessIo>>>,
    /// Set when the service deletes the task: its exit and the end of its shim are expected.
    deleting: AtomicBool,
    /// True while the init process runs (for log followers).
    running: watch::Sender<bool>,
    started: Mutex<Option<Instant>>,
}

impl Task {
    fn io(&self, exec_id: &str) -> Option<Arc<ProcessIo>> {
        lock(&self.io).get(exec_id).cloned()
    }

    fn shim(&self) -> ShimClient<Channel> {
        self.conn.client.clone()
    }
}

/// Where a container's task stands.
enum Lookup {
    /// A task with a live shim.
    Live(Arc<Task>),
    /// A task whose shim disappeared: stopped, to be deleted.
    Dead(Box<TaskRecord>),
    /// No task.
    None,
}

type Key = (String, String);

fn key(ns: &str, id: &str) -> Key {
    (ns.to_owned(), id.to_owned())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An [`Exit`] from its protobuf form.
pub fn exit_from(status: Option<&ExitStatus>) -> Exit {
    match status {
        Some(s) => Exit {
            code: s.exit_code,
            signal: s.signal,
            at_ns: s
                .exited_at
                .as_ref()
                .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                .unwrap_or(0),
            oom_killed: s.oom_killed,
        },
        None => Exit {
            code: 255,
            ..Default::default()
        },
    }
}

/// The protobuf form of an [`Exit`].
pub fn exit_to(exit: &Exit) -> ExitStatus {
    ExitStatus {
        exit_code: exit.code,
        signal: exit.signal,
        exited_at: Some(timestamp(exit.at_ns)),
        oom_killed: exit.oom_killed,
    }
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

fn now_ns() -> i64 {
    let t = now();
    t.seconds * 1_000_000_000 + i64::from(t.nanos)
}

/// The containers and tasks of every namespace.
pub struct Manager {
    settings: Settings,
    store: Store,
    events: Broadcaster,
    volumes: Arc<VolumeManager>,
    tasks: Mutex<HashMap<Key, Arc<Task>>>,
    locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Connected shims by directory.
    shims: Mutex<HashMap<PathBuf, Arc<ShimConn>>>,
    /// Serializes launching a shim with ending it, by shim directory.
    shim_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Manager {
    /// A manager over `store`, publishing to `events`, mounting `volumes`.
    pub fn new(
        settings: Settings,
        store: Store,
        events: Broadcaster,
        volumes: Arc<VolumeManager>,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            settings,
            store,
            events,
            volumes,
            tasks: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            shims: Mutex::default(),
            shim_locks: Mutex::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn lock_container(&self, ns: &str, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.locks).entry(key(ns, id)).or_default().clone();
        m.lock_owned().await
    }

    async fn lock_shim(&self, dir: &Path) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.shim_locks)
            .entry(dir.to_owned())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Drops the lock of a shim directory that has no shim any more, unless someone else
    /// holds or awaits it (the caller may hold it: one guard).
    fn release_shim_lock(&self, dir: &Path) {
        let mut locks = lock(&self.shim_locks);
        if locks.get(dir).is_some_and(|m| Arc::strong_count(m) <= 2) {
            locks.remove(dir);
        }
    }

    /// Forgets a shim that ended (or never served a task).
    fn forget_shim(&self, conn: &Arc<ShimConn>) {
        let mut shims = lock(&self.shims);
        if shims.get(&conn.dir).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            shims.remove(&conn.dir);
        }
    }

    /// The id a container's shim is launched with: its pod's, or its own.
    fn shim_id(c: &Container) -> &str {
        if c.sandbox_id.is_empty() {
            &c.id
        } else {
            &c.sandbox_id
        }
    }

    // ----- containers -----

    /// Finds a container by id, name, or unique id prefix.
    pub fn resolve(&self, ns: &str, given: &str) -> Result<Container> {
        if given.is_empty() {
            return Err(Error::invalid("container id", "empty"));
        }
        if let Some(c) = self.store.container(ns, given)? {
            return Ok(c);
        }
        if let Some(id) = self
            .store
            .id_by_name(ns, given.strip_prefix('/').unwrap_or(given))?
            && let Some(c) = self.store.container(ns, &id)?
        {
            return Ok(c);
        }
        let matches = self.store.ids_with_prefix(ns, given)?;
        match matches.as_slice() {
            [one] => self
                .store
                .container(ns, one)?
                .ok_or_else(|| Error::ContainerNotFound {
                    id: given.to_owned(),
                }),
            [] => Err(Error::ContainerNotFound {
                id: given.to_owned(),
            }),
            _ => Err(Error::Ambiguous {
                prefix: given.to_owned(),
                matches,
            }),
        }
    }

    /// Records a new container.
    pub fn create_container(&self, ns: &str, mut c: Container) -> Result<Container> {
        containers::validate_id("id", &c.id)?;
        c.name = containers::normalize_name(&c.name)?;
        containers::validate(&c)?;
        if c.extensions.contains_key(network::EXTENSION) {
            NetworkSettings::of(&c)?.mode()?;
        }
        let t = now();
        c.created_at = Some(t);
        c.updated_at = Some(t);
        self.store.create_container(ns, &c)?;
        self.events.publish(
            ns,
            "/containers/create",
            Event::ContainerCreate(ContainerCreate {
                container_id: c.id.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
                runtime: c
                    .runtime
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default(),
            }),
        );
        Ok(c)
    }

    /// Lists a namespace's containers matching `filters`.
    pub fn list_containers(&self, ns: &str, filters: &[String]) -> Result<Vec<Container>> {
        let filters =
            Filters::parse(filters).map_err(|e| Error::invalid("filters", e.to_string()))?;
        Ok(self
            .store
            .containers(ns)?
            .into_iter()
            .filter(|c| filters.matches(&containers::Filterable(c)))
            .collect())
    }

    /// Changes a container.
    pub async fn update_container(
        &self,
        ns: &str,
        new: Container,
        mask: &[String],
    ) -> Result<Container> {
        let id = self.resolve(ns, &new.id)?.id;
        let _guard = self.lock_container(ns, &id).await;
        let mut c = self.resolve(ns, &id)?;
        containers::apply_mask(&mut c, new, mask)?;
        if c.extensions.contains_key(network::EXTENSION) {
            NetworkSettings::of(&c)?.mode()?;
        }
        c.updated_at = Some(now());
        self.store.update_container(ns, &c)?;
        self.events.publish(
            ns,
            "/containers/update",
            Event::ContainerUpdate(ContainerUpdate {
                container_id: c.id.clone(),
                name: c.name.clone(),
                image: c.image.clone(),
                labels: c.labels.clone(),
                snapshot_key: c.snapshot_key.clone(),
            }),
        );
        Ok(c)
    }

    /// Deletes a container without a task: its snapshot, logs, state directories, record, and
    /// with `remove_anonymous` the anonymous volumes only it used.
    pub async fn delete_container(
        &self,
        ns: &str,
        given: &str,
        remove_anonymous: bool,
    ) -> Result<()> {
        let id = self.resolve(ns, given)?.id;
        let _guard = self.lock_container(ns, &id).await;
        let c = self.resolve(ns, &id)?;
        if self.store.task(ns, &id)?.live.is_some() {
            return Err(Error::Precondition(format!(
                "container {id} has a task: stop and delete the task first"
            )));
        }
        if !c.snapshot_key.is_empty() {
            let mut client = self.snapshots(ns).await?;
            match client
                .remove(snap::RemoveSnapshotRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: c.snapshot_key.clone(),
                })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => {
                    return Err(Error::remote(format!(
                        "remove snapshot {:?} of container {id}",
                        c.snapshot_key
                    ))(s));
                }
            }
        }
        for dir in [
            self.settings.log_dir(ns, &id),
            self.settings.bundle(ns, &id),
            self.settings.shim_dir(ns, &id),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(dir)(e)),
            }
        }
        self.volumes
            .release(ns, &id, remove_anonymous)
            .map_err(|e| {
                Error::remote(format!("release the volumes of container {id}"))(e.into())
            })?;
        self.store.delete_container(ns, &id)?;
        lock(&self.locks).remove(&key(ns, &id));
        self.release_shim_lock(&self.settings.shim_dir(ns, &id));
        self.events.publish(
            ns,
            "/containers/delete",
            Event::ContainerDelete(ContainerDelete {
                container_id: id.clone(),
            }),
        );
        Ok(())
    }

    // ----- clients of other services -----

    async fn snapshots(&self, ns: &str) -> Result<SnapshotsClient<Channel>> {
        let channel = berth_api::client::connect(&self.settings.socket(Service::Snapshots), ns)
            .await
            .map_err(|e| Error::Unreachable(format!("snapshots service: {e}")))?;
        Ok(SnapshotsClient::new(channel))
    }

    async fn connect_shim(&self, ns: &str, dir: &Path) -> Result<ShimClient<Channel>> {
        let channel = berth_api::client::connect(&dir.join("shim.sock"), ns)
            .await
            .map_err(|e| Error::Unreachable(format!("shim: {e}")))?;
        Ok(ShimClient::new(channel))
    }

    // ----- tasks -----

    fn lookup(&self, ns: &str, id: &str) -> Result<Lookup> {
        if let Some(t) = lock(&self.tasks).get(&key(ns, id)) {
            return Ok(Lookup::Live(t.clone()));
        }
        let record = self.store.task(ns, id)?;
        Ok(if record.live.is_some() {
            Lookup::Dead(Box::new(record))
        } else {
            Lookup::None
        })
    }

    fn live(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        match self.lookup(ns, id)? {
            Lookup::Live(t) => Ok(t),
            Lookup::Dead(_) => Err(Error::Precondition(format!(
                "the task of container {id} is stopped (its shim is gone): delete it"
            ))),
            Lookup::None => Err(Error::TaskNotFound { id: id.to_owned() }),
        }
    }

    /// Creates the task of a container; returns the init pid.
    pub async fn create_task(
        self: &Arc<Self>,
        ns: &str,
        req: api::CreateTaskRequest,
    ) -> Result<u32> {
        let id = self.resolve(ns, &req.container_id)?.id;
        let _guard = self.lock_container(ns, &id).await;
        let c = self.resolve(ns, &id)?;
        self.create_locked(ns, &c, req.rootfs, req.stdin, req.terminal)
            .await
    }

    async fn create_locked(
        self: &Arc<Self>,
        ns: &str,
        c: &Container,
        rootfs: Vec<Mount>,
        stdin: bool,
        terminal: bool,
    ) -> Result<u32> {
        let id = c.id.clone();
        if self.store.task(ns, &id)?.live.is_some() {
            return Err(Error::TaskExists { id });
        }
        if c.spec.is_empty() {
            return Err(Error::Precondition(format!(
                "container {id} has no OCI spec"
            )));
        }
        let mut spec: Value = serde_json::from_slice(&c.spec)
            .map_err(|e| Error::invalid("spec", format!("not JSON: {e}")))?;
        let settings = NetworkSettings::of(c)?;
        let join = match settings.mode()? {
            Mode::Container(other) => Some(self.join_target(ns, &other).await?),
            _ => None,
        };
        let rootfs = if !rootfs.is_empty() {
            rootfs
        } else if !c.snapshot_key.is_empty() {
            self.snapshots(ns)
                .await?
                .mounts(snap::MountsRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: c.snapshot_key.clone(),
                })
                .await
                .map_err(Error::remote(format!(
                    "mounts of snapshot {:?} of container {id}",
                    c.snapshot_key
                )))?
                .into_inner()
                .mounts
        } else {
            Vec::new()
        };
        let bundle = self.settings.bundle(ns, &id);
        let shim_dir = self.settings.shim_dir(ns, Self::shim_id(c));
        let _shim_guard = self.lock_shim(&shim_dir).await;
        // The pod's shim, when it runs already.
        let existing = lock(&self.shims)
            .get(&shim_dir)
            .filter(|_| !c.sandbox_id.is_empty())
            .cloned();
        // Nothing runs from these (the task record says there is no task): leftovers of a
        // crash are removed.
        remove_bundle(&bundle);
        if existing.is_none() {
            let _ = std::fs::remove_dir_all(&shim_dir);
        }
        let log_dir = self.settings.log_dir(ns, &id);
        for dir in [bundle.join("rootfs"), log_dir.clone()] {
            std::fs::create_dir_all(&dir).map_err(Error::io(dir))?;
        }
        if let Some(parent) = shim_dir.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        prepare_spec(
            &mut spec,
            &self.settings,
            ns,
            &id,
            terminal,
            !rootfs.is_empty(),
        );
        if let Err(e) = self.resolve_in_rootfs(ns, &id, &rootfs, &mut spec) {
            remove_bundle(&bundle);
            return Err(e);
        }
        let attached = match network::setup(
            &self.settings.socket(Service::Network),
            ns,
            c,
            &settings,
            join,
            &bundle,
            &mut spec,
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                remove_bundle(&bundle);
                return Err(e);
            }
        };
        let runtime = c
            .runtime
            .as_ref()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.settings.runtime.clone());
        let live = LiveTask {
            shim_dir: shim_dir.clone(),
            bundle: bundle.clone(),
            runtime: runtime.clone(),
            stdin,
            terminal,
            event_seq: existing
                .as_ref()
                .map_or(0, |c| c.seq.load(Ordering::SeqCst)),
            networks: attached.networks.clone(),
            netns: attached.netns.clone(),
            started_at_ns: None,
            execs: Vec::new(),
        };
        let result = self
            .launch(ns, c, &spec, &live, rootfs, &log_dir, existing)
            .await;
        match result {
            Ok((task, pid)) => {
                lock(&self.tasks).insert(key(ns, &id), task.clone());
                self.follow(&task.conn);
                Ok(pid)
            }
            Err(e) => {
                network::teardown(&self.settings.socket(Service::Network), ns, &id, &attached)
                    .await;
                remove_bundle(&bundle);
                let _ = self.store.update_task(ns, &id, |r| r.live = None);
                Err(e)
            }
        }
    }

    /// Resolves what the spec leaves to the image's filesystem: a user or groups given by name
    /// (E's [`crate::user::apply`]) and volume mounts (made bind mounts of volume data, a new
    /// volume filled from the image). The rootfs is mounted read-only for this, under the
    /// state directory, and unmounted again.
    fn resolve_in_rootfs(
        &self,
        ns: &str,
        id: &str,
        rootfs: &[Mount],
        spec: &mut Value,
    ) -> Result<()> {
        let annotations = &spec["annotations"];
        let by_name = annotations[crate::spec::USER_ANNOTATION].is_string()
            || annotations[crate::spec::GROUP_ADD_ANNOTATION].is_string();
        let volumes = spec["mounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["type"] == "volume"));
        if !by_name && !volumes {
            return Ok(());
        }
        let mut oci: oci_spec::runtime::Spec = serde_json::from_value(spec.clone())
            .map_err(|e| Error::invalid("spec", format!("not an OCI runtime spec: {e}")))?;
        let mounted;
        let root: PathBuf = if rootfs.is_empty() {
            PathBuf::from(spec["root"]["path"].as_str().unwrap_or_default())
        } else {
            let parent = self.settings.state.join("tasks").join(ns);
            let mounts: Vec<berth_snapshots::mount::Mount> = rootfs
                .iter()
                .cloned()
                .map(berth_snapshots::mount::Mount::from)
                .collect();
            mounted = berth_snapshots::mount::Mounted::temporary(
                &berth_snapshots::mount::read_only(&mounts),
                &parent,
            )
            .map_err(|e| Error::Io {
                path: parent.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            mounted.path().to_owned()
        };
        if by_name {
            crate::user::apply(&root, &mut oci)
                .map_err(|e| Error::remote(format!("user of container {id}"))(e.into()))?;
        }
        if volumes {
            self.volumes
                .prepare_mounts(ns, id, &mut oci, Some(&root))
                .map_err(|e| Error::remote(format!("volumes of container {id}"))(e.into()))?;
        }
        *spec = serde_json::to_value(&oci)
            .map_err(|e| Error::invalid("spec", format!("cannot encode: {e}")))?;
        Ok(())
    }

    /// Writes config.json, makes the init FIFOs, records the task, starts the shim (unless
    /// `existing`, the pod's, runs) and has it create the container. On error a shim started
    /// here is gone (the caller removes the rest).
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &self,
        ns: &str,
        c: &Container,
        spec: &Value,
        live: &LiveTask,
        rootfs: Vec<Mount>,
        log_dir: &Path,
        existing: Option<Arc<ShimConn>>,
    ) -> Result<(Arc<Task>, u32)> {
        let id = &c.id;
        let config = live.bundle.join("config.json");
        let data = serde_json::to_vec_pretty(spec).unwrap_or_default();
        std::fs::write(&config, data).map_err(Error::io(&config))?;
        let io = ProcessIo::open(&live.bundle.join("io"), "init", live.stdin, live.terminal)?;
        self.store
            .update_task(ns, id, |r| r.live = Some(live.clone()))?;
        let (conn, started) = match existing {
            Some(conn) => (conn, false),
            None => {
                let client = self
                    .start_shim(ns, Self::shim_id(c), &live.shim_dir, &live.runtime)
                    .await?;
                let conn = ShimConn::new(ns, &live.shim_dir, client, 0);
                lock(&self.shims).insert(live.shim_dir.clone(), conn.clone());
                (conn, true)
            }
        };
        let client = conn.client.clone();
        let log = c.log_config.clone().unwrap_or_default();
        let log = LogConfig {
            path: if log.path.is_empty() {
                log_dir.join("container.log").display().to_string()
            } else {
                log.path
            },
            ..log
        };
        let created = client
            .clone()
            .create(shim::CreateRequest {
                id: id.clone(),
                bundle: live.bundle.display().to_string(),
                runtime: live.runtime.clone(),
                stdin: path_string(io.stdin_path.as_deref()),
                stdout: io.stdout_path.display().to_string(),
                stderr: path_string(io.stderr_path.as_deref()),
                log: Some(log),
                terminal: live.terminal,
                rootfs,
                sandbox_id: c.sandbox_id.clone(),
            })
            .await;
        let pid = match created {
            Ok(r) => r.into_inner().pid,
            Err(status) => {
                if started {
                    let _ = client
                        .clone()
                        .shutdown(shim::ShutdownRequest {
                            id: id.clone(),
                            now: true,
                        })
                        .await;
                    wait_gone(&live.shim_dir).await;
                    self.forget_shim(&conn);
                    self.remove_shim_log(ns, c);
                }
                return Err(Error::remote(format!("create the task of container {id}"))(
                    status,
                ));
            }
        };
        lock(&conn.members).insert(id.clone());
        let task = Arc::new(Task {
            ns: ns.to_owned(),
            id: id.clone(),
            conn,
            bundle: live.bundle.clone(),
            io: Mutex::new(HashMap::from([(String::new(), io)])),
            deleting: AtomicBool::new(false),
            running: watch::channel(false).0,
            started: Mutex::new(None),
        });
        Ok((task, pid))
    }

    /// The shim log of a pod's shim lives in the pod's own log directory.
    fn remove_shim_log(&self, ns: &str, c: &Container) {
        if !c.sandbox_id.is_empty() {
            let _ = std::fs::remove_dir_all(self.settings.log_dir(ns, &c.sandbox_id));
        }
    }

    /// Launches a shim for `id` (a container's or a pod's) in `dir`.
    async fn start_shim(
        &self,
        ns: &str,
        id: &str,
        dir: &Path,
        runtime: &str,
    ) -> Result<ShimClient<Channel>> {
        let shim_err = |reason: String| Error::Shim {
            id: id.to_owned(),
            reason,
        };
        let log_dir = self.settings.log_dir(ns, id);
        std::fs::create_dir_all(&log_dir).map_err(Error::io(&log_dir))?;
        let mut cmd = tokio::process::Command::new(&self.settings.shim);
        cmd.args(["--namespace", ns, "--id", id, "--runtime", runtime])
            .arg("--socket-dir")
            .arg(dir)
            .arg("--log")
            .arg(log_dir.join("shim.log"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(SHIM_START_TIMEOUT, cmd.output())
            .await
            .map_err(|_| shim_err("timed out".into()))?
            .map_err(|e| shim_err(format!("{}: {e}", self.settings.shim.display())))?;
        if !out.status.success() {
            return Err(shim_err(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        self.connect_shim(ns, dir).await
    }

    /// The netns and bundle of the running task of `other` (network mode container:<id>).
    async fn join_target(&self, ns: &str, other: &str) -> Result<JoinTarget> {
        let target = self.resolve(ns, other)?;
        let record = self.store.task(ns, &target.id)?;
        let not_running = || {
            Error::Precondition(format!(
                "network mode container:{other}: container {} is not running",
                target.id
            ))
        };
        let live = record.live.ok_or_else(not_running)?;
        let task = self.live(ns, &target.id).map_err(|_| not_running())?;
        let state = task
            .shim()
            .state(shim::StateRequest {
                id: target.id.clone(),
                exec_id: String::new(),
            })
            .await
            .map_err(|_| not_running())?
            .into_inner();
        if state.status() != TaskStatus::Running {
            return Err(not_running());
        }
        let netns = live
            .netns
            .clone()
            .unwrap_or_else(|| format!("/proc/{}/ns/net", state.pid));
        Ok(JoinTarget {
            netns,
            bundle: live.bundle,
        })
    }

    /// Starts following the events of a shim unless a relay does already.
    fn follow(self: &Arc<Self>, conn: &Arc<ShimConn>) {
        if !conn.followed.swap(true, Ordering::SeqCst) {
            let after = conn.seq.load(Ordering::SeqCst);
            tokio::spawn(self.clone().relay(conn.clone(), after));
        }
    }

    /// Follows every connected shim that no relay follows yet (after recovery).
    pub fn follow_all(self: &Arc<Self>) {
        let all: Vec<Arc<ShimConn>> = lock(&self.shims).values().cloned().collect();
        for conn in all {
            self.follow(&conn);
        }
    }

    /// The live task of container `id` in the shim `conn`.
    fn member(&self, conn: &Arc<ShimConn>, id: &str) -> Option<Arc<Task>> {
        lock(&self.tasks)
            .get(&key(&conn.ns, id))
            .filter(|t| Arc::ptr_eq(&t.conn, conn))
            .cloned()
    }

    /// Follows a shim's events from `after`: relays them, records exits, applies restart
    /// policies; when the stream ends while the shim still has tasks the service is not
    /// deleting, the shim is gone and they are cleaned up.
    async fn relay(self: Arc<Self>, conn: Arc<ShimConn>, after: u64) {
        let mut seq = after;
        for _ in 0..RESUBSCRIBE_ATTEMPTS {
            let stream = conn
                .client
                .clone()
                .events(shim::EventsRequest {
                    after_sequence: seq,
                })
                .await;
            if let Ok(stream) = stream {
                let mut stream = stream.into_inner();
                while let Ok(Some(msg)) = stream.message().await {
                    seq = msg.sequence;
                    conn.seq.store(seq, Ordering::SeqCst);
                    if let Some(envelope) = msg.envelope {
                        self.handle_event(&conn, &envelope).await;
                        self.events.send(envelope);
                    }
                    let ids: Vec<String> = conn
                        .members()
                        .into_iter()
                        .filter(|id| {
                            self.member(&conn, id)
                                .is_some_and(|t| !t.deleting.load(Ordering::SeqCst))
                        })
                        .collect();
                    if let Err(e) = self.store.record_event_seq(&conn.ns, &ids, seq) {
                        tracing::warn!(error = %e, "cannot record the shim's event sequence");
                    }
                }
            }
            let members = conn.members();
            if members.is_empty() {
                return;
            }
            // The stream ended: follow it again if the shim still answers.
            let alive = tokio::time::timeout(
                Duration::from_secs(2),
                conn.client.clone().connect_shim(shim::ConnectShimRequest {
                    id: members[0].clone(),
                }),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.forget_shim(&conn);
        for id in conn.members() {
            self.shim_gone(&conn, &id).await;
        }
    }

    /// Cleans up the task of container `id` after its shim went away, unless the service is
    /// deleting it.
    async fn shim_gone(self: &Arc<Self>, conn: &Arc<ShimConn>, id: &str) {
        let ns = conn.ns.as_str();
        let Some(task) = self.member(conn, id) else {
            lock(&conn.members).remove(id);
            return;
        };
        if task.deleting.load(Ordering::SeqCst) {
            return;
        }
        let _guard = self.lock_container(ns, id).await;
        let current = self
            .member(conn, id)
            .is_some_and(|t| Arc::ptr_eq(&t, &task));
        if current && !task.deleting.load(Ordering::SeqCst) {
            tracing::warn!(%ns, %id, "the shim went away");
            lock(&self.tasks).remove(&key(ns, id));
            lock(&conn.members).remove(id);
            let record = self.store.task(ns, id).unwrap_or_default();
            if let Some(live) = record.live {
                self.clean_dead(ns, id, &live).await;
                for io in lock(&task.io).values() {
                    io.exited(Exit {
                        code: 255,
                        at_ns: now_ns(),
                        ..Default::default()
                    });
                }
                task.running.send_replace(false);
                drop(_guard);
                self.after_exit(ns, id, 255, Duration::ZERO);
            }
        }
    }

    async fn handle_event(self: &Arc<Self>, conn: &Arc<ShimConn>, envelope: &Envelope) {
        let id = match &envelope.event {
            Some(Event::TaskStart(e)) => &e.container_id,
            Some(Event::TaskExit(e)) => &e.container_id,
            _ => return,
        };
        let Some(task) = self.member(conn, id) else {
            return;
        };
        match &envelope.event {
            Some(Event::TaskStart(_)) => {
                task.running.send_replace(true);
            }
            Some(Event::TaskExit(e)) => {
                let exit = exit_from(e.exit_status.as_ref());
                if let Some(io) = task.io(&e.exec_id) {
                    io.exited(exit);
                }
                if e.exec_id.is_empty() {
                    let _ = self.store.update_task(&task.ns, &task.id, |r| {
                        r.last_exit = Some(exit);
                        r.exit_reason = None;
                    });
                    task.running.send_replace(false);
                    if !task.deleting.load(Ordering::SeqCst) {
                        let ran = lock(&task.started)
                            .map(|s| s.elapsed())
                            .unwrap_or(Duration::ZERO);
                        self.after_exit(&task.ns, &task.id, exit.code, ran);
                    }
                }
            }
            _ => {}
        }
    }

    /// Applies the restart policy after the init process of a container exited.
    fn after_exit(self: &Arc<Self>, ns: &str, id: &str, code: u32, ran: Duration) {
        let Ok(Some(c)) = self.store.container(ns, id) else {
            return;
        };
        let Ok(record) = self.store.task(ns, id) else {
            return;
        };
        let decision = restart::decide(
            c.restart_policy.as_ref(),
            code,
            ran,
            record.restart_count,
            record.stopped_by_user,
        );
        if decision == Decision::Stay && c.labels.get(AUTO_REMOVE).is_some_and(|v| v == "true") {
            let me = self.clone();
            let (ns, id) = (ns.to_owned(), id.to_owned());
            tokio::spawn(async move {
                let removed = match me.delete_task(&ns, &id, "").await {
                    Ok(_) => me.delete_container(&ns, &id, true).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = removed {
                    tracing::warn!(%ns, %id, error = %e, "auto-remove after exit failed");
                }
            });
        }
        if let Decision::Restart { delay, count } = decision {
            let me = self.clone();
            let (ns, id) = (ns.to_owned(), id.to_owned());
            tokio::spawn(async move {
                let mut delay = delay;
                for attempt in 1..=RESTART_ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    match me.restart(&ns, &id, count).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(%ns, %id, attempt, error = %e, "restart failed");
                            if e.kind() != crate::error::Kind::Unavailable {
                                return;
                            }
                        }
                    }
                    delay = (delay * 2).max(Duration::from_millis(200));
                }
            });
        }
    }

    /// Restarts a container whose task stopped: deletes the old task, creates and starts a
    /// new one with the same stdio settings.
    pub async fn restart(self: &Arc<Self>, ns: &str, id: &str, count: u32) -> Result<()> {
        let _guard = self.lock_container(ns, id).await;
        let Some(c) = self.store.container(ns, id)? else {
            return Ok(());
        };
        let record = self.store.task(ns, id)?;
        if record.stopped_by_user {
            return Ok(());
        }
        let (stdin, terminal) = match (&record.live, self.lookup(ns, id)?) {
            (Some(live), Lookup::Live(task)) => {
                let state = task
                    .shim()
                    .state(shim::StateRequest {
                        id: id.to_owned(),
                        exec_id: String::new(),
                    })
                    .await
                    .map_err(Error::remote("task state"))?
                    .into_inner();
                if state.status() != TaskStatus::Stopped {
                    // Started again meanwhile.
                    return Ok(());
                }
                let flags = (live.stdin, live.terminal);
                self.delete_locked(ns, id).await?;
                flags
            }
            (Some(live), _) => {
                let flags = (live.stdin, live.terminal);
                self.delete_locked(ns, id).await?;
                flags
            }
            // The user deleted the task meanwhile.
            (None, _) => return Ok(()),
        };
        self.create_locked(ns, &c, Vec::new(), stdin, terminal)
            .await?;
        self.store
            .update_task(ns, id, |r| r.restart_count = count)?;
        self.start_locked(ns, id, "", false).await?;
        tracing::info!(%ns, %id, count, "restarted by its restart policy");
        Ok(())
    }

    /// Starts the init process or an exec process.
    pub async fn start(self: &Arc<Self>, ns: &str, given: &str, exec_id: &str) -> Result<u32> {
        let id = self.resolve(ns, given)?.id;
        self.start_locked(ns, &id, exec_id, true).await
    }

    async fn start_locked(&self, ns: &str, id: &str, exec_id: &str, by_user: bool) -> Result<u32> {
        let task = self.live(ns, id)?;
        if exec_id.is_empty() && by_user {
            self.store.update_task(ns, id, |r| {
                r.stopped_by_user = false;
                r.restart_count = 0;
            })?;
        }
        let pid = task
            .shim()
            .start(shim::StartRequest {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
            .await
            .map_err(Error::remote(format!("start {}", what(id, exec_id))))?
            .into_inner()
            .pid;
        if exec_id.is_empty() {
            task.running.send_replace(true);
            *lock(&task.started) = Some(Instant::now());
            let at = now_ns();
            self.store.update_task(ns, id, |r| {
                if let Some(l) = &mut r.live {
                    l.started_at_ns = Some(at);
                }
            })?;
        }
        Ok(pid)
    }

    /// Deletes a stopped task (or exec process); returns how it ended.
    pub async fn delete_task(
        self: &Arc<Self>,
        ns: &str,
        given: &str,
        exec_id: &str,
    ) -> Result<(u32, Exit)> {
        let id = self.resolve(ns, given)?.id;
        if !exec_id.is_empty() {
            let task = self.live(ns, &id)?;
            let resp = task
                .shim()
                .delete(shim::DeleteRequest {
                    id: id.clone(),
                    exec_id: exec_id.to_owned(),
                })
                .await
                .map_err(Error::remote(format!("delete {}", what(&id, exec_id))))?
                .into_inner();
            if let Some(io) = lock(&task.io).remove(exec_id) {
                remove_fifos(&io);
            }
            self.store.update_task(ns, &id, |r| {
                if let Some(l) = &mut r.live {
                    l.execs.retain(|e| e.exec_id != exec_id);
                }
            })?;
            return Ok((resp.pid, exit_from(resp.exit_status.as_ref())));
        }
        let _guard = self.lock_container(ns, &id).await;
        self.delete_locked(ns, &id).await
    }

    async fn delete_locked(&self, ns: &str, id: &str) -> Result<(u32, Exit)> {
        match self.lookup(ns, id)? {
            Lookup::None => Err(Error::TaskNotFound { id: id.to_owned() }),
            Lookup::Dead(record) => {
                if let Some(live) = &record.live {
                    self.clean_dead(ns, id, live).await;
                }
                let record = self.store.update_task(ns, id, |r| r.live = None)?;
                Ok((0, record.last_exit.unwrap_or_default()))
            }
            Lookup::Live(task) => {
                let _shim_guard = self.lock_shim(&task.conn.dir).await;
                task.deleting.store(true, Ordering::SeqCst);
                let resp = task
                    .shim()
                    .delete(shim::DeleteRequest {
                        id: id.to_owned(),
                        exec_id: String::new(),
                    })
                    .await;
                let (pid, exit) = match resp {
                    Ok(r) => {
                        let r = r.into_inner();
                        (r.pid, exit_from(r.exit_status.as_ref()))
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        // The shim died: clean up after it.
                        let record = self.store.task(ns, id)?;
                        if let Some(live) = &record.live {
                            self.clean_dead(ns, id, live).await;
                        }
                        (0, record.last_exit.unwrap_or_default())
                    }
                    Err(s) => {
                        task.deleting.store(false, Ordering::SeqCst);
                        return Err(if s.code() == tonic::Code::FailedPrecondition {
                            Error::Precondition(format!(
                                "the task of container {id} is running: stop it first ({})",
                                s.message()
                            ))
                        } else {
                            Error::remote(format!("delete the task of container {id}"))(s)
                        });
                    }
                };
                lock(&self.tasks).remove(&key(ns, id));
                let last = {
                    let mut members = lock(&task.conn.members);
                    members.remove(id);
                    members.is_empty()
                };
                for io in lock(&task.io).values() {
                    io.exited(exit);
                }
                task.running.send_replace(false);
                let record = self.store.task(ns, id)?;
                if let Some(live) = &record.live {
                    let attached = Attached {
                        networks: live.networks.clone(),
                        netns: live.netns.clone(),
                    };
                    network::teardown(&self.settings.socket(Service::Network), ns, id, &attached)
                        .await;
                }
                if last {
                    // The shim exits after its last task.
                    wait_gone(&task.conn.dir).await;
                    self.forget_shim(&task.conn);
                    self.release_shim_lock(&task.conn.dir);
                    if let Ok(Some(c)) = self.store.container(ns, id) {
                        self.remove_shim_log(ns, &c);
                    }
                }
                remove_bundle(&task.bundle);
                self.store.update_task(ns, id, |r| {
                    r.live = None;
                    r.last_exit = Some(exit);
                })?;
                Ok((pid, exit))
            }
        }
    }

    /// Cleans up after a task whose shim is gone: the runtime's container (processes and
    /// cgroup), the rootfs mount, the network, the directories; records exit 255.
    pub async fn clean_dead(&self, ns: &str, id: &str, live: &LiveTask) {
        let runtime_root = live.shim_dir.join("runtime");
        let binary = match live.runtime.as_str() {
            "builtin" => Some(self.settings.shim.with_file_name("berth-runtime")),
            "runc" | "crun" => Some(PathBuf::from(&live.runtime)),
            _ => None,
        };
        if let Some(binary) = binary.filter(|_| runtime_root.exists()) {
            let out = tokio::process::Command::new(binary)
                .arg("--root")
                .arg(&runtime_root)
                .args(["delete", "--force", id])
                .output()
                .await;
            if let Ok(out) = out
                && !out.status.success()
            {
                tracing::debug!(%id, stderr = %String::from_utf8_lossy(&out.stderr), "runtime delete");
            }
        }
        let rootfs = live.bundle.join("rootfs");
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        let attached = Attached {
            networks: live.networks.clone(),
            netns: live.netns.clone(),
        };
        network::teardown(&self.settings.socket(Service::Network), ns, id, &attached).await;
        remove_bundle(&live.bundle);
        // A pod's shim directory is shared: kept while its shim runs or another of its
        // tasks still needs the runtime state in it.
        let shared = lock(&self.shims).contains_key(&live.shim_dir)
            || self.store.live_tasks().is_ok_and(|all| {
                all.iter().any(|(n, other, r)| {
                    (n != ns || other != id)
                        && r.live.as_ref().is_some_and(|l| l.shim_dir == live.shim_dir)
                })
            });
        if !shared {
            let _ = std::fs::remove_dir_all(&live.shim_dir);
        }
        let exit = Exit {
            code: 255,
            signal: 0,
            at_ns: now_ns(),
            oom_killed: false,
        };
        let _ = self.store.update_task(ns, id, |r| {
            if let Some(l) = &mut r.live {
                l.networks.clear();
                l.netns = None;
            }
            r.last_exit = Some(exit);
            r.exit_reason = Some("the task's shim disappeared; its exit status is unknown".into());
        });
        self.events.publish(
            ns,
            "/tasks/exit",
            Event::TaskExit(TaskExit {
                container_id: id.to_owned(),
                exec_id: String::new(),
                pid: 0,
                exit_status: Some(exit_to(&exit)),
            }),
        );
    }

    /// Sends a signal.
    pub async fn kill(&self, ns: &str, req: api::KillRequest) -> Result<()> {
        let id = self.resolve(ns, &req.container_id)?.id;
        let task = self.live(ns, &id)?;
        if req.exec_id.is_empty() && STOP_SIGNALS.contains(&req.signal) {
            self.store
                .update_task(ns, &id, |r| r.stopped_by_user = true)?;
        }
        task.shim()
            .kill(shim::KillRequest {
                id: id.clone(),
                exec_id: req.exec_id.clone(),
                signal: req.signal,
                all: req.all,
            })
            .await
            .map_err(Error::remote(format!("kill {}", what(&id, &req.exec_id))))?;
        Ok(())
    }

    /// Waits for a process to exit.
    pub async fn wait(&self, ns: &str, given: &str, exec_id: &str) -> Result<Exit> {
        let id = self.resolve(ns, given)?.id;
        match self.lookup(ns, &id)? {
            Lookup::Live(task) => {
                let r = task
                    .shim()
                    .wait(shim::WaitRequest {
                        id: id.clone(),
                        exec_id: exec_id.to_owned(),
                    })
                    .await;
                match r {
                    Ok(r) => Ok(exit_from(r.into_inner().exit_status.as_ref())),
                    Err(s) if s.code() == tonic::Code::Unavailable && exec_id.is_empty() => {
                        // The shim went away while waiting.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(self.store.task(ns, &id)?.last_exit.unwrap_or(Exit {
                            code: 255,
                            ..Default::default()
                        }))
                    }
                    Err(s) => Err(Error::remote(format!("wait for {}", what(&id, exec_id)))(s)),
                }
            }
            Lookup::Dead(record) if exec_id.is_empty() => Ok(record.last_exit.unwrap_or_default()),
            Lookup::Dead(_) => Err(Error::Precondition(format!(
                "the task of container {id} is stopped (its shim is gone)"
            ))),
            Lookup::None => Err(Error::TaskNotFound { id }),
        }
    }

    /// Creates an exec process in a running task.
    pub async fn exec(&self, ns: &str, req: api::ExecProcessRequest) -> Result<()> {
        let id = self.resolve(ns, &req.container_id)?.id;
        containers::validate_id("exec_id", &req.exec_id)?;
        let task = self.live(ns, &id).map_err(|e| match e {
            Error::TaskNotFound { id } => {
                Error::Precondition(format!("container {id} is not running: it has no task"))
            }
            e => e,
        })?;
        let state = task
            .shim()
            .state(shim::StateRequest {
                id: id.clone(),
                exec_id: String::new(),
            })
            .await
            .map_err(Error::remote("task state"))?
            .into_inner();
        if state.status() != TaskStatus::Running {
            return Err(Error::Precondition(format!(
                "container {id} is not running (its task is {})",
                status_name(state.status())
            )));
        }
        if task.io(&req.exec_id).is_some() {
            return Err(Error::Remote {
                context: format!("exec {:?}", req.exec_id),
                status: tonic::Status::already_exists(format!(
                    "exec id {:?} is taken in container {id}",
                    req.exec_id
                )),
            });
        }
        let io = ProcessIo::open(
            &task.bundle.join("io"),
            &format!("exec-{}", req.exec_id),
            req.stdin,
            req.terminal,
        )?;
        lock(&task.io).insert(req.exec_id.clone(), io.clone());
        let r = task
            .shim()
            .exec(shim::ExecRequest {
                id: id.clone(),
                exec_id: req.exec_id.clone(),
                terminal: req.terminal,
                stdin: path_string(io.stdin_path.as_deref()),
                stdout: io.stdout_path.display().to_string(),
                stderr: path_string(io.stderr_path.as_deref()),
                spec: req.spec,
            })
            .await;
        if let Err(s) = r {
            lock(&task.io).remove(&req.exec_id);
            remove_fifos(&io);
            return Err(Error::remote(format!("exec in container {id}"))(s));
        }
        self.store.update_task(ns, &id, |r| {
            if let Some(l) = &mut r.live {
                l.execs.push(ExecRecord {
                    exec_id: req.exec_id.clone(),
                    stdin: req.stdin,
                    terminal: req.terminal,
                });
            }
        })?;
        Ok(())
    }

    /// Freezes (true) or thaws a task.
    pub async fn pause(&self, ns: &str, given: &str, pause: bool) -> Result<()> {
        let id = self.resolve(ns, given)?.id;
        let mut shim = self.live(ns, &id)?.shim();
        let r = if pause {
            shim.pause(shim::PauseRequest { id: id.clone() })
                .await
                .map(|_| ())
        } else {
            shim.resume(shim::ResumeRequest { id: id.clone() })
                .await
                .map(|_| ())
        };
        r.map_err(Error::remote(format!(
            "{} container {id}",
            if pause { "pause" } else { "resume" }
        )))
    }

    /// The shim of a container's live task, for pass-through calls.
    pub fn shim_of(&self, ns: &str, given: &str) -> Result<(String, ShimClient<Channel>)> {
        let id = self.resolve(ns, given)?.id;
        let shim = self.live(ns, &id)?.shim();
        Ok((id, shim))
    }

    /// State of the init process or of an exec process.
    pub async fn get(&self, ns: &str, given: &str, exec_id: &str) -> Result<api::Task> {
        let id = self.resolve(ns, given)?.id;
        self.get_resolved(ns, &id, exec_id).await
    }

    async fn get_resolved(&self, ns: &str, id: &str, exec_id: &str) -> Result<api::Task> {
        match self.lookup(ns, id)? {
            Lookup::Live(task) => {
                let state = task
                    .shim()
                    .state(shim::StateRequest {
                        id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                    })
                    .await
                    .map_err(Error::remote(format!("state of {}", what(id, exec_id))))?
                    .into_inner();
                let started = if exec_id.is_empty() {
                    self.store
                        .task(ns, id)?
                        .live
                        .and_then(|l| l.started_at_ns)
                        .map(timestamp)
                } else {
                    None
                };
                Ok(api::Task {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    pid: state.pid,
                    status: state.status,
                    stdin: !state.stdin.is_empty(),
                    terminal: state.terminal,
                    started_at: started,
                    exit_status: state.exit_status,
                })
            }
            Lookup::Dead(record) if exec_id.is_empty() => {
                let live = record.live.unwrap_or_default();
                Ok(api::Task {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                    pid: 0,
                    status: TaskStatus::Stopped as i32,
                    stdin: live.stdin,
                    terminal: live.terminal,
                    started_at: live.started_at_ns.map(timestamp),
                    exit_status: Some(exit_to(&record.last_exit.unwrap_or_default())),
                })
            }
            Lookup::Dead(_) => Err(Error::Precondition(format!(
                "the task of container {id} is stopped (its shim is gone)"
            ))),
            Lookup::None => Err(Error::TaskNotFound { id: id.to_owned() }),
        }
    }

    /// The tasks of a namespace matching `filters`.
    pub async fn list(&self, ns: &str, filters: &[String]) -> Result<Vec<api::Task>> {
        let filters =
            Filters::parse(filters).map_err(|e| Error::invalid("filters", e.to_string()))?;
        let ids: Vec<String> = self
            .store
            .live_tasks()?
            .into_iter()
            .filter(|(n, _, _)| n == ns)
            .map(|(_, id, _)| id)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let task = match self.get_resolved(ns, &id, "").await {
                Ok(t) => t,
                Err(Error::TaskNotFound { .. }) => continue,
                Err(_) => api::Task {
                    container_id: id.clone(),
                    status: TaskStatus::Unknown as i32,
                    ..Default::default()
                },
            };
            let matched = filters.matches_with(|path| match path {
                [f] if f == "container_id" || f == "id" => Some(task.container_id.clone()),
                [f] if f == "status" => Some(status_name(task.status()).to_owned()),
                [f] if f == "pid" => Some(task.pid.to_string()),
                _ => None,
            });
            if matched {
                out.push(task);
            }
        }
        Ok(out)
    }

    /// The stdio of a process, for Attach.
    pub fn process_io(&self, ns: &str, given: &str, exec_id: &str) -> Result<Arc<ProcessIo>> {
        let id = self.resolve(ns, given)?.id;
        let task = self.live(ns, &id)?;
        task.io(exec_id).ok_or_else(|| Error::Remote {
            context: format!("attach to {}", what(&id, exec_id)),
            status: tonic::Status::not_found(format!("no process {}", what(&id, exec_id))),
        })
    }

    /// The log file of a container, and a receiver that turns false when its init process
    /// is not running (for followers).
    pub fn log_of(&self, ns: &str, given: &str) -> Result<(PathBuf, watch::Receiver<bool>)> {
        let c = self.resolve(ns, given)?;
        let path = c
            .log_config
            .as_ref()
            .map(|l| l.path.clone())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.settings.log_dir(ns, &c.id).join("container.log"));
        let running = match lock(&self.tasks).get(&key(ns, &c.id)) {
            Some(t) => t.running.subscribe(),
            None => watch::channel(false).1,
        };
        Ok((path, running))
    }

    // ----- recovery -----

    /// Reconnects to the shim of a recorded task; returns false if it is gone. Its events
    /// are followed once [`Manager::follow_all`] is called.
    pub async fn reconnect(self: &Arc<Self>, ns: &str, id: &str, live: &LiveTask) -> bool {
        let existing = lock(&self.shims).get(&live.shim_dir).cloned();
        let conn = match existing {
            Some(conn) => conn,
            None => match self.connect_shim(ns, &live.shim_dir).await {
                Ok(client) => ShimConn::new(ns, &live.shim_dir, client, live.event_seq),
                Err(_) => return false,
            },
        };
        let mut client = conn.client.clone();
        let connected = client
            .connect_shim(shim::ConnectShimRequest { id: id.to_owned() })
            .await;
        let state = match connected {
            Ok(_) => client
                .state(shim::StateRequest {
                    id: id.to_owned(),
                    exec_id: String::new(),
                })
                .await
                .map(|r| r.into_inner()),
            Err(e) => Err(e),
        };
        let Ok(state) = state else {
            return false;
        };
        let dir = live.bundle.join("io");
        let mut ios = HashMap::new();
        let procs = std::iter::once((String::new(), "init".to_owned(), live.stdin, live.terminal))
            .chain(live.execs.iter().map(|e| {
                (
                    e.exec_id.clone(),
                    format!("exec-{}", e.exec_id),
                    e.stdin,
                    e.terminal,
                )
            }));
        for (exec_id, name, stdin, terminal) in procs {
            match ProcessIo::open(&dir, &name, stdin, terminal) {
                Ok(io) => {
                    ios.insert(exec_id, io);
                }
                Err(e) => tracing::warn!(%id, error = %e, "cannot reopen stdio FIFOs"),
            }
        }
        let running = state.status() == TaskStatus::Running;
        let task = Arc::new(Task {
            ns: ns.to_owned(),
            id: id.to_owned(),
            conn: conn.clone(),
            bundle: live.bundle.clone(),
            io: Mutex::new(ios),
            deleting: AtomicBool::new(false),
            running: watch::channel(running).0,
            started: Mutex::new(live.started_at_ns.map(|at| {
                let ago = Duration::from_nanos((now_ns() - at).max(0) as u64);
                Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
            })),
        });
        if state.status() == TaskStatus::Stopped {
            // Exited while the service was down: the replayed exit event records it; if it
            // was acknowledged already, the shim's state has it.
            let exit = exit_from(state.exit_status.as_ref());
            for io in lock(&task.io).values() {
                io.exited(exit);
            }
            let _ = self.store.update_task(ns, id, |r| r.last_exit = Some(exit));
        }
        lock(&conn.members).insert(id.to_owned());
        lock(&self.shims)
            .entry(live.shim_dir.clone())
            .or_insert(conn);
        lock(&self.tasks).insert(key(ns, id), task);
        true
    }

    /// After recovery found a task's shim gone: cleans up and applies the restart policy.
    pub async fn recover_dead(self: &Arc<Self>, ns: &str, id: &str, live: &LiveTask) {
        let _guard = self.lock_container(ns, id).await;
        self.clean_dead(ns, id, live).await;
        drop(_guard);
        let Ok(Some(c)) = self.store.container(ns, id) else {
            return;
        };
        let record = self.store.task(ns, id).unwrap_or_default();
        if restart::restarts_on_boot(c.restart_policy.as_ref()) && !record.stopped_by_user {
            self.after_exit(ns, id, 255, Duration::ZERO);
        }
    }
}

fn what(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("the task of container {id}")
    } else {
        format!("exec {exec_id:?} of container {id}")
    }
}

/// The lowercase name of a status, as filters and messages use it.
pub fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Unknown => "unknown",
        TaskStatus::Created => "created",
        TaskStatus::Running => "running",
        TaskStatus::Stopped => "stopped",
        TaskStatus::Paused => "paused",
        TaskStatus::Pausing => "pausing",
    }
}

fn path_string(p: Option<&Path>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

/// Adjusts a container's spec for its bundle: terminal, root path, cgroup.
fn prepare_spec(
    spec: &mut Value,
    settings: &Settings,
    ns: &str,
    id: &str,
    terminal: bool,
    mounted_rootfs: bool,
) {
    if !spec["process"].is_object() {
        spec["process"] = json!({});
    }
    spec["process"]["terminal"] = json!(terminal);
    if mounted_rootfs || !spec["root"].is_object() {
        let readonly = spec["root"]["readonly"].as_bool().unwrap_or(false);
        spec["root"] = json!({ "path": "rootfs", "readonly": readonly });
    }
    if !spec["linux"].is_object() {
        spec["linux"] = json!({});
    }
    if spec["linux"]["cgroupsPath"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        spec["linux"]["cgroupsPath"] = json!(format!("/{}/{ns}-{id}", settings.cgroup_parent));
    }
}

fn remove_fifos(io: &ProcessIo) {
    for p in io
        .stdin_path
        .iter()
        .chain(std::iter::once(&io.stdout_path))
        .chain(io.stderr_path.iter())
    {
        let _ = std::fs::remove_file(p);
    }
}

/// Removes a bundle without ever descending into a rootfs that is still mounted: the rootfs
/// directory is only removed when empty.
fn remove_bundle(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Err(e) = std::fs::remove_dir(&rootfs)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_dir(&rootfs) {
            tracing::warn!(rootfs = %rootfs.display(), error = %e, "rootfs left in place");
            return;
        }
    }
    let _ = std::fs::remove_dir_all(bundle);
}

/// Waits (bounded) until a shim has removed its directory after its last container.
async fn wait_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
