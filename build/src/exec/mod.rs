//! The build executor: runs the stages a target needs, step by step, through the services.
//!
//! Shape (the builder is a client of the services, as buildah is of its libraries):
//!
//! - A stage starts from `scratch`, an earlier stage's result, or an image (pulled when missing
//!   or with `--pull`); its base image's `ONBUILD` triggers run first.
//! - Metadata instructions (`ENV`, `LABEL`, `CMD`, ...) change the config and add a history
//!   entry with `empty_layer`.
//! - `RUN` runs in a container of the tasks service on a snapshot prepared on the parent's chain
//!   id ([`run`]); `COPY`/`ADD` write into the prepared snapshot mounted here ([`copy`]). Either
//!   way the changes become one layer (the snapshot compared with a view of its parent) and
//!   the snapshot is committed under the new chain id, exactly as an unpack would name it.
//! - Every step after `FROM` has a cache key ([`cache`]); a hit reuses the recorded state.
//! - Only the stages the target needs are built; stages whose dependencies are done run
//!   concurrently, wave after wave.
//! - The final image is written and tagged only when every step succeeded. Containers and
//!   active snapshots a build creates are registered and removed on every way out (error or
//!   cancellation); the content it writes stays under a lease until the records hold it.

mod cache;
mod copy;
mod run;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use berth_api::berth::images::v1 as ipb;
use berth_api::berth::snapshots::v1 as spb;
use berth_api::berth::types::v1::Descriptor;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::clients::{Clients, Lease};
use crate::config;
use crate::context::{BuildContext, DockerfileSource};
use crate::dockerfile::{self, Dockerfile, Instruction, Kind, ParseError};
use crate::error::{Error, Result};
use crate::fsops;
use crate::image::{self, ImageState};
use crate::progress::{Event, Progress};

pub use cache::{CACHE_LABEL, CACHE_REPOSITORY, is_cache_record, prune};

/// Network of `RUN` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A network namespace with only `lo` (the default).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// The default bridge network.
    Bridge,
}

/// What `berthctl build` asks for.
pub struct BuildOptions {
    /// Where the Dockerfile is.
    pub dockerfile: DockerfileSource,
    /// Names to tag the result with.
    pub tags: Vec<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Stage to build (default: the last).
    pub target: Option<String>,
    /// Run every step, ignoring the cache (results are still recorded).
    pub no_cache: bool,
    /// Pull base images even when present.
    pub pull: bool,
    /// Labels added to the final image's config.
    pub labels: BTreeMap<String, String>,
    /// Network of RUN steps.
    pub network: NetworkMode,
    /// Directory for temporary mounts and files (on a filesystem that can hold layers).
    pub scratch: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// Image id: the digest of the config.
    pub id: String,
    /// The manifest of the image.
    pub manifest: Descriptor,
    /// The names it was tagged with (normalised by the images service).
    pub tags: Vec<String>,
}

/// A stage's running state: the image so far and the variables in effect.
#[derive(Clone)]
struct State {
    image: ImageState,
    /// An image record through which this state's layers can be unpacked (a cache record or
    /// the base image); None for images without layers.
    record: Option<String>,
    /// Build arguments declared in the stage, with their values.
    args: BTreeMap<String, String>,
    /// Whether the stage set CMD before the current step (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl State {
    /// Variables for substitution: build args, overridden by the config's `Env`.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        vars.extend(self.env());
        vars
    }

    fn env(&self) -> Vec<(String, String)> {
        self.image.config["config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str())
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e.to_owned(), String::new()),
            })
            .collect()
    }

    fn workdir(&self) -> String {
        match self.image.config["config"]["WorkingDir"].as_str() {
            Some(w) if !w.is_empty() => w.to_owned(),
            _ => "/".to_owned(),
        }
    }
}

/// Containers and active snapshots a build has made and not yet removed.
#[derive(Default)]
pub struct Resources {
    containers: Mutex<Vec<String>>,
    snapshots: Mutex<Vec<String>>,
}

impl Resources {
    fn add_container(&self, id: &str) {
        self.containers
            .lock()
            .expect("not poisoned")
            .push(id.to_owned());
    }
    fn drop_container(&self, id: &str) {
        self.containers
            .lock()
            .expect("not poisoned")
            .retain(|c| c != id);
    }
    fn add_snapshot(&self, key: &str) {
        self.snapshots
            .lock()
            .expect("not poisoned")
            .push(key.to_owned());
    }
    fn drop_snapshot(&self, key: &str) {
        self.snapshots
            .lock()
            .expect("not poisoned")
            .retain(|c| c != key);
    }

    /// Removes everything still registered (containers first, then snapshots, newest first).
    async fn clean(&self, clients: &mut Clients) {
        let containers = std::mem::take(&mut *self.containers.lock().expect("not poisoned"));
        for id in containers.iter().rev() {
            run::remove_container(clients, id).await;
        }
        let snapshots = std::mem::take(&mut *self.snapshots.lock().expect("not poisoned"));
        for key in snapshots.iter().rev() {
            let _ = clients
                .snapshots
                .remove(spb::RemoveSnapshotRequest {
                    snapshotter: String::new(),
                    key: key.clone(),
                })
                .await;
        }
    }
}

struct Builder<'a> {
    clients: Clients,
    context: &'a BuildContext,
    opts: &'a BuildOptions,
    progress: &'a dyn Progress,
    file: String,
    dockerfile: Dockerfile,
    meta_args: BTreeMap<String, String>,
    lease: Lease,
    resources: Resources,
    next_id: AtomicUsize,
    next_key: AtomicUsize,
    multi: bool,
}

/// Builds the Dockerfile of `context`. `cancel` ends the build early (everything it made is
/// removed, and the error says it was cancelled).
pub async fn build(
    clients: Clients,
    context: &BuildContext,
    opts: &BuildOptions,
    progress: &dyn Progress,
    cancel: impl Future<Output = ()>,
) -> Result<Built> {
    let (file, text) = context.dockerfile(&opts.dockerfile)?;
    let dockerfile = dockerfile::parse(&text).map_err(|e| step_error(&file, &e))?;
    for w in &dockerfile.warnings {
        progress.event(Event::Note(format!("{file}:{}: {}", w.line, w.message)));
    }
    if dockerfile.stages.is_empty() {
        return Err(Error::Invalid(format!(
            "{file}: the Dockerfile has no FROM instruction"
        )));
    }
    let meta_args = dockerfile
        .meta_args(&opts.build_args)
        .map_err(|e| step_error(&file, &e))?;
    let mut clients = clients;
    let lease = Lease::create(&mut clients, "build").await?;
    let multi = dockerfile.stages.len() > 1;
    let builder = Builder {
        clients: clients.clone(),
        context,
        opts,
        progress,
        file,
        dockerfile,
        meta_args,
        lease,
        resources: Resources::default(),
        next_id: AtomicUsize::new(1),
        next_key: AtomicUsize::new(0),
        multi,
    };
    let result = tokio::select! {
        r = builder.run() => r,
        () = cancel => Err(Error::Invalid("the build was cancelled".into())),
    };
    builder.resources.clean(&mut clients).await;
    let _ = builder.lease.release(&mut clients).await;
    result
}

/// Checks a `--platform` value: only the host's platform can be built.
pub fn check_platform(platform: &str) -> Result<()> {
    let host = format!("linux/{}", image::host_arch());
    if platform == host || platform == format!("{host}/") {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "unsupported platform {platform:?}: this builder builds for {host} only (no emulation)"
        )))
    }
}

fn step_error(file: &str, e: &ParseError) -> Error {
    Error::Step {
        file: file.to_owned(),
        line: e.line,
        message: e.message.clone(),
        exit_code: None,
    }
}

impl Builder<'_> {
    fn fail(&self, line: usize, message: impl Into<String>) -> Error {
        Error::Step {
            file: self.file.clone(),
            line,
            message: message.into(),
            exit_code: None,
        }
    }

    fn next_id(&self) -> usize {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The stage `name` refers to, if it is one.
    fn stage_ref(&self, name: &str) -> Option<usize> {
        self.dockerfile.find_stage(name)
    }

    /// Stages a stage depends on: its base and its `COPY --from` stages.
    fn deps(&self, index: usize) -> Result<Vec<usize>> {
        let stage = &self.dockerfile.stages[index];
        let mut deps = Vec::new();
        let base = stage
            .base(&self.meta_args)
            .map_err(|e| step_error(&self.file, &e))?;
        if let Some(i) = self
            .stage_ref(&base)
            .filter(|_| stage.name.as_deref() != Some(&base.to_ascii_lowercase()))
        {
            deps.push(i);
        }
        for instr in &stage.instructions {
            if let Kind::Copy(c) | Kind::Add(c) = &instr.kind
                && let Some(from) = &c.from
                && let Some(i) = self.stage_ref(from)
            {
                deps.push(i);
            }
        }
        Ok(deps)
    }

    /// The stages to build, each after those it needs; a cycle is an error.
    fn plan(&self) -> Result<Vec<(usize, Vec<usize>)>> {
        let target = match &self.opts.target {
            None => self.dockerfile.stages.len() - 1,
            Some(t) => self.dockerfile.find_stage(t).ok_or_else(|| {
                Error::NotFound(format!(
                    "target stage {t:?} could not be found in {}",
                    self.file
                ))
            })?,
        };
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = Vec::new();
        self.visit(target, &mut order, &mut done, &mut visiting)?;
        Ok(order)
    }

    fn visit(
        &self,
        index: usize,
        order: &mut Vec<(usize, Vec<usize>)>,
        done: &mut HashSet<usize>,
        visiting: &mut Vec<usize>,
    ) -> Result<()> {
        if done.contains(&index) {
            return Ok(());
        }
        if visiting.contains(&index) {
            let stage = &self.dockerfile.stages[index];
            return Err(self.fail(
                stage.line,
                format!(
                    "circular dependency detected on stage: {}",
                    self.stage_label(index)
                ),
            ));
        }
        visiting.push(index);
        let deps = self.deps(index)?;
        for &d in &deps {
            self.visit(d, order, done, visiting)?;
        }
        visiting.pop();
        done.insert(index);
        order.push((index, deps));
        Ok(())
    }

    fn stage_label(&self, index: usize) -> String {
        self.dockerfile.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    async fn run(&self) -> Result<Built> {
        let plan = self.plan()?;
        let target = plan.last().map(|(i, _)| *i).unwrap_or_default();
        let mut results: HashMap<usize, State> = HashMap::new();
        let mut pending = plan;
        while !pending.is_empty() {
            let (ready, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(_, deps)| deps.iter().all(|d| results.contains_key(d)));
            pending = rest;
            if ready.is_empty() {
                return Err(Error::Invalid("the stages cannot be ordered".into()));
            }
            let built =
                futures::future::join_all(ready.iter().map(|(i, _)| self.run_stage(*i, &results)))
                    .await;
            for ((i, _), state) in ready.iter().zip(built) {
                results.insert(*i, state?);
            }
        }
        let mut state = results
            .remove(&target)
            .ok_or_else(|| Error::Invalid("the target stage was not built".into()))?;
        self.finish(&mut state).await
    }

    /// Writes the final image and tags it.
    async fn finish(&self, state: &mut State) -> Result<Built> {
        let mut clients = self.clients.clone();
        if !self.opts.labels.is_empty() {
            let config = state.image.runtime_config();
            let labels = config.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in &self.opts.labels {
                labels[k] = json!(v);
            }
        }
        let manifest = image::write_image(&mut clients, &state.image, Some(&self.lease)).await?;
        let mut tags = Vec::new();
        for name in &self.opts.tags {
            let record = image::tag(&mut clients, name, &manifest, HashMap::new()).await?;
            tags.push(record.name);
        }
        Ok(Built {
            id: state.image.config_digest(),
            manifest,
            tags,
        })
    }

    /// Builds one stage from its base.
    async fn run_stage(&self, index: usize, done: &HashMap<usize, State>) -> Result<State> {
        let stage = &self.dockerfile.stages[index];
        let label = self.multi.then(|| self.stage_label(index));
        let total = stage.instructions.len() + 1;
        let id = self.next_id();
        self.progress.event(Event::Step {
            id,
            stage: label.clone(),
            index: 1,
            total,
            text: stage.text.clone(),
        });
        let started = Instant::now();
        let base = stage
            .base(&self.meta_args)
            .map_err(|e| step_error(&self.file, &e))?;
        if let Some(p) = stage
            .platform(&self.meta_args)
            .map_err(|e| step_error(&self.file, &e))?
        {
            check_platform(&p).map_err(|e| self.fail(stage.line, e.to_string()))?;
        }
        let mut state = if base.eq_ignore_ascii_case("scratch") {
            State {
                image: ImageState::scratch(),
                record: None,
                args: BTreeMap::new(),
                cmd_set: false,
            }
        } else if let Some(i) = self.stage_ref(&base).filter(|i| done.contains_key(i)) {
            let mut s = done[&i].clone();
            s.args.clear();
            s
        } else {
            self.base_image(&base)
                .await
                .map_err(|e| self.fail(stage.line, e.to_string()))?
        };
        self.progress.event(Event::Done {
            id,
            elapsed: started.elapsed(),
        });
        // The base's ONBUILD triggers run first, then are dropped from the config.
        let triggers: Vec<String> = state.image.config["config"]["OnBuild"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        if !triggers.is_empty() {
            state.image.runtime_config().remove("OnBuild");
            for text in triggers {
                let instr = dockerfile::parse_instruction(&text, stage.line).map_err(|e| {
                    self.fail(
                        stage.line,
                        format!("ONBUILD trigger {text:?}: {}", e.message),
                    )
                })?;
                self.step(&mut state, &instr, label.clone(), 1, total, done)
                    .await?;
            }
        }
        for (n, instr) in stage.instructions.iter().enumerate() {
            state.cmd_set = stage.instructions[..n]
                .iter()
                .any(|i| matches!(i.kind, Kind::Cmd(_)));
            self.step(&mut state, instr, label.clone(), n + 2, total, done)
                .await?;
        }
        Ok(state)
    }

    /// The state of a base image, pulled if missing or asked to.
    async fn base_image(&self, reference: &str) -> Result<State> {
        let mut clients = self.clients.clone();
        let record = if self.opts.pull {
            None
        } else {
            match clients
                .images
                .get(ipb::GetImageRequest {
                    name: reference.to_owned(),
                })
                .await
            {
                Ok(r) => r.into_inner().image,
                Err(s) if s.code() == tonic::Code::NotFound => None,
                Err(s) => return Err(Error::rpc(format!("look up image {reference}"))(s)),
            }
        };
        let record = match record {
            Some(r) => r,
            None => self.pull(reference).await?,
        };
        let target = record
            .target
            .clone()
            .ok_or_else(|| Error::BadContent(format!("image {} has no target", record.name)))?;
        let (image, _) = image::read_image(&mut clients, &target).await?;
        Ok(State {
            image,
            record: Some(record.name),
            args: BTreeMap::new(),
            cmd_set: false,
        })
    }

    async fn pull(&self, reference: &str) -> Result<ipb::Image> {
        self.progress
            .event(Event::Note(format!("pulling {reference}")));
        let mut clients = self.clients.clone();
        let mut stream = clients
            .images
            .pull(ipb::PullRequest {
                reference: reference.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(Error::rpc(format!("pull {reference}")))?
            .into_inner();
        let mut image = None;
        while let Some(message) = stream.next().await {
            let message = message.map_err(Error::rpc(format!("pull {reference}")))?;
            if message.image.is_some() {
                image = message.image;
            }
        }
        image.ok_or_else(|| Error::BadContent(format!("the pull of {reference} recorded no image")))
    }

    /// Runs one instruction on `state`.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        state: &mut State,
        instr: &Instruction,
        stage: Option<String>,
        index: usize,
        total: usize,
        done: &HashMap<usize, State>,
    ) -> Result<()> {
        let id = self.next_id();
        self.progress.event(Event::Step {
            id,
            stage,
            index,
            total,
            text: instr.text.clone(),
        });
        let started = Instant::now();
        let kind = instr
            .expand(&state.vars())
            .map_err(|e| step_error(&self.file, &e))?;
        // ARG changes only the variables: no history entry, no cache record.
        if let Kind::Arg(decls) = &kind {
            for d in decls {
                let value = self
                    .opts
                    .build_args
                    .get(&d.name)
                    .cloned()
                    .or_else(|| d.default.clone())
                    .or_else(|| self.meta_args.get(&d.name).cloned());
                if let Some(v) = value {
                    state.args.insert(d.name.clone(), v);
                }
            }
            self.progress.event(Event::Done {
                id,
                elapsed: started.elapsed(),
            });
            return Ok(());
        }
        let prepared = match &kind {
            Kind::Copy(c) | Kind::Add(c) => {
                Some(copy::prepare(self, c, matches!(kind, Kind::Add(_)), instr.line, done).await?)
            }
            _ => None,
        };
        let inputs = prepared
            .as_ref()
            .map(|p| p.digest.clone())
            .unwrap_or_default();
        let key = cache::key(state, &kind, &inputs);
        if !self.opts.no_cache
            && let Some(hit) = cache::lookup(&mut self.clients.clone(), &key).await?
        {
            if let Some(p) = prepared {
                p.release(self).await?;
            }
            state.image = hit.image;
            state.record = hit.record;
            self.progress.event(Event::Cached { id });
            self.progress.event(Event::Done {
                id,
                elapsed: started.elapsed(),
            });
            return Ok(());
        }
        let now = image::timestamp(SystemTime::now());
        let created_by = instr.text.clone();
        match &kind {
            Kind::Run(r) => {
                run::run(self, state, r, instr.line, id, &now, &created_by).await?;
            }
            Kind::Copy(c) | Kind::Add(c) => {
                let add = matches!(kind, Kind::Add(_));
                let prepared =
                    prepared.ok_or_else(|| Error::Invalid("sources not prepared".into()))?;
                copy::apply(self, state, c, add, prepared, instr.line, &now, &created_by).await?;
            }
            other => {
                config::apply(&mut state.image, other, state.cmd_set)
                    .map_err(|m| self.fail(instr.line, m))?;
                if matches!(other, Kind::Workdir(_)) {
                    self.make_workdir(state, &now, &created_by).await?;
                } else {
                    state.image.add_history(&now, &created_by, "", true);
                }
            }
        }
        state.record =
            Some(cache::store(&mut self.clients.clone(), &key, &state.image, &self.lease).await?);
        self.progress.event(Event::Done {
            id,
            elapsed: started.elapsed(),
        });
        Ok(())
    }

    /// The committed snapshot of `state`'s top layer (unpacked through its record if it is
    /// missing); None for an image without layers.
    async fn ensure_snapshot(&self, state: &State) -> Result<Option<String>> {
        let Some(chain) = state.image.chain_id() else {
            return Ok(None);
        };
        let mut clients = self.clients.clone();
        match clients
            .snapshots
            .stat(spb::StatSnapshotRequest {
                snapshotter: String::new(),
                key: chain.clone(),
            })
            .await
        {
            Ok(_) => return Ok(Some(chain)),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(Error::rpc(format!("stat snapshot {chain}"))(s)),
        }
        let record = state.record.clone().ok_or_else(|| {
            Error::BadContent(format!(
                "no image record holds the layers of snapshot {chain}"
            ))
        })?;
        let unpacked = clients
            .images
            .unpack(ipb::UnpackRequest {
                name: record.clone(),
                ..Default::default()
            })
            .await
            .map_err(Error::rpc(format!("unpack {record}")))?
            .into_inner();
        if unpacked.chain_id != chain {
            return Err(Error::BadContent(format!(
                "unpacking {record} gave snapshot {}, expected {chain}",
                unpacked.chain_id
            )));
        }
        Ok(Some(chain))
    }

    /// Creates the (new) working directory: a layer when it was missing, else an empty-layer
    /// history entry.
    async fn make_workdir(&self, state: &mut State, now: &str, created_by: &str) -> Result<()> {
        let parent = self.ensure_snapshot(state).await?;
        let (key, mounts) = self.prepare(parent.clone(), "workdir").await?;
        let dir = fsops::clean(&state.workdir()).unwrap_or_default();
        let scratch = self.opts.scratch.clone();
        let m = mounts.clone();
        let created = tokio::task::spawn_blocking(move || -> Result<bool> {
            let mounted = berth_snapshots::mount::Mounted::temporary(&m, &scratch)
                .map_err(Error::layer("mount the step's snapshot"))?;
            let root = rustix::fs::open(
                mounted.path(),
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| Error::io("open", mounted.path())(e.into()))?;
            if fsops::open_dir_in_root(std::os::fd::AsFd::as_fd(&root), &dir).is_ok() {
                return Ok(false);
            }
            fsops::mkdir_all(std::os::fd::AsFd::as_fd(&root), &dir, (0, 0))
                .map_err(Error::io("create the working directory", dir.clone()))?;
            Ok(true)
        })
        .await
        .map_err(|e| Error::Invalid(format!("workdir panicked: {e}")))?;
        match created {
            Ok(true) => {
                self.commit_layer(state, &key, &mounts, parent, true, now, created_by)
                    .await
            }
            other => {
                self.remove_snapshot(&key).await?;
                other?;
                state.image.add_history(now, created_by, "", true);
                Ok(())
            }
        }
    }

    /// A new unique snapshot key for this build.
    fn snapshot_key(&self, what: &str) -> String {
        format!(
            "build-{}-{}-{what}",
            std::process::id(),
            self.next_key.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Prepares an active snapshot on `parent` (registered for cleanup); returns key + mounts.
    async fn prepare(
        &self,
        parent: Option<String>,
        what: &str,
    ) -> Result<(String, Vec<berth_snapshots::mount::Mount>)> {
        let key = self.snapshot_key(what);
        let mounts = self
            .clients
            .clone()
            .snapshots
            .prepare(spb::PrepareSnapshotRequest {
                snapshotter: String::new(),
                key: key.clone(),
                parent: parent.unwrap_or_default(),
                labels: HashMap::new(),
            })
            .await
            .map_err(Error::rpc("prepare a snapshot"))?
            .into_inner()
            .mounts;
        self.resources.add_snapshot(&key);
        Ok((key, image::mounts_from(mounts)))
    }

    /// A read-only view of `parent` (registered for cleanup); no mounts for no parent.
    async fn view(
        &self,
        parent: Option<String>,
    ) -> Result<Option<(String, Vec<berth_snapshots::mount::Mount>)>> {
        let Some(parent) = parent else {
            return Ok(None);
        };
        let key = self.snapshot_key("view");
        let mounts = self
            .clients
            .clone()
            .snapshots
            .view(spb::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            })
            .await
            .map_err(Error::rpc("view a snapshot"))?
            .into_inner()
            .mounts;
        self.resources.add_snapshot(&key);
        Ok(Some((key, image::mounts_from(mounts))))
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        self.clients
            .clone()
            .snapshots
            .remove(spb::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: key.to_owned(),
            })
            .await
            .map_err(Error::rpc(format!("remove snapshot {key}")))?;
        self.resources.drop_snapshot(key);
        Ok(())
    }

    /// Turns the active snapshot `key` (on `parent`) into a layer on top of `state`: compare,
    /// store, commit under the new chain id (or drop it when that chain exists already).
    #[allow(clippy::too_many_arguments)]
    async fn commit_layer(
        &self,
        state: &mut State,
        key: &str,
        mounts: &[berth_snapshots::mount::Mount],
        parent: Option<String>,
        commit: bool,
        now: &str,
        created_by: &str,
    ) -> Result<()> {
        let mut clients = self.clients.clone();
        let fast = match image::changes_dir(mounts) {
            Some(dir) => {
                image::store_changes(&mut clients, &dir, &self.opts.scratch, Some(&self.lease))
                    .await?
            }
            None => None,
        };
        let layer = match fast {
            Some(layer) => layer,
            None => {
                let view = self.view(parent).await?;
                let lower = view.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
                let layer = image::compare(
                    &mut clients,
                    &lower,
                    mounts,
                    &self.opts.scratch,
                    Some(&self.lease),
                )
                .await;
                if let Some((view_key, _)) = &view {
                    self.remove_snapshot(view_key).await?;
                }
                layer?
            }
        };
        state.image.add_layer(&layer, now, created_by, "");
        let chain = state.image.chain_id().unwrap_or_default();
        if commit {
            let committed = clients
                .snapshots
                .commit(spb::CommitSnapshotRequest {
                    snapshotter: String::new(),
                    name: chain.clone(),
                    key: key.to_owned(),
                    labels: HashMap::from([(
                        image::UNCOMPRESSED_LABEL.to_owned(),
                        layer.diff_id.clone(),
                    )]),
                })
                .await;
            match committed {
                Ok(_) => {
                    self.resources.drop_snapshot(key);
                    return Ok(());
                }
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(Error::rpc(format!("commit snapshot {chain}"))(s)),
            }
        }
        self.remove_snapshot(key).await
    }
}
