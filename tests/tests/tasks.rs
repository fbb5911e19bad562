//! End-to-end tests of the tasks service: container records, tasks run by real shims over
//! runc on busybox snapshots, exec, attach, pause, events, restart policies, recovery after a
//! kill -9 of the service, concurrent run/rm cycles and bridge networking.
//!
//! Every test runs its own berth with its own bridge, nft table, address pool and cgroup parent
//! (`berth-test-<tag>`, removed when the test stops: a container cgroup left in it is a leak).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_api::berth::containers::v1::{self as cpb, containers_client::ContainersClient};
use berth_api::berth::events::v1::{self as epb, envelope::Event, events_client::EventsClient};
use berth_api::berth::network::v1::{self as npb, networks_client::NetworksClient};
use berth_api::berth::snapshots::v1::{self as spb, snapshots_client::SnapshotsClient};
use berth_api::berth::tasks::v1::{
    self as tpb, attach_request::Msg as In, attach_response::Msg as Out, tasks_client::TasksClient,
};
use berth_api::berth::types::v1::TaskStatus;
use berth_api::client::{self, Channel};
use berth_tests::cleanup::{cgroups_under, clean_up_instance, stop_instance};
use berth_tests::fixtures::bundle::runc_spec;
use berth_tests::fixtures::images;
use berth_tests::harness::{self, mounts_under, processes_mentioning};
use berth_tests::snapshots_api::commit_layer;
use berth_tests::{Berth, Mode, Options};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const NS: &str = "default";
const BASE: &str = "busybox-base";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    b
}

/// A Docker-style container id: 64 hex digits.
fn rand_id() -> String {
    hex::encode(rand_bytes::<32>())
}

/// A berth instance of one test, with its own network names and cgroup parent.
struct Env {
    berth: Option<Berth>,
    tag: String,
    options: Options,
}

impl Env {
    /// Starts berth; `pool` is a /16 base only this test uses.
    fn start(mode: Mode, pool: &str) -> Result<Env> {
        let tag = hex::encode(rand_bytes::<3>());
        let config = format!(
            "[network]\ndefault_bridge = \"berth-t{tag}0\"\nnft_table = \"berth_t{tag}\"\n\
             pools = [{{ base = \"{pool}/16\", size = 24 }}]\n\
             [tasks]\ncgroup_parent = \"berth-test-{tag}\"\n"
        );
        let options = Options {
            config: Some(config),
            ..Default::default()
        };
        let berth = Berth::start_with(mode, options.clone())?;
        Ok(Env {
            berth: Some(berth),
            tag,
            options,
        })
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    fn cgroup_parent(&self) -> String {
        format!("berth-test-{}", self.tag)
    }

    /// Cgroup directories of containers left under this test's parent.
    fn container_cgroups(&self) -> Vec<PathBuf> {
        cgroups_under(&self.cgroup_parent())
    }

    /// Clients of this instance, with the busybox snapshot [`BASE`] committed.
    async fn clients_on_base(&self) -> Result<Clients> {
        let mut c = self.clients().await?;
        base_image(&mut c).await?;
        Ok(c)
    }

    async fn clients(&self) -> Result<Clients> {
        let b = self.berth();
        let tasks = client::connect(&b.socket("tasks"), NS).await?;
        Ok(Clients {
            containers: ContainersClient::new(tasks.clone()),
            tasks: TasksClient::new(tasks.clone()),
            events: EventsClient::new(tasks),
            snapshots: SnapshotsClient::new(client::connect(&b.socket("snapshots"), NS).await?),
            networks: NetworksClient::new(client::connect(&b.socket("network"), NS).await?),
        })
    }

    /// Stops berth (with the harness's leak check), then checks that no container cgroup is
    /// left and removes the test's cgroup parent.
    fn stop(mut self) -> Result<()> {
        let berth = self.berth.take().expect("berth running");
        stop_instance(berth, &self.cgroup_parent())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            // The test failed: remove what it left.
            clean_up_instance(
                berth,
                &self.cgroup_parent(),
                Some((
                    &format!("berth-t{}", self.tag),
                    &format!("berth_t{}", self.tag),
                )),
            );
        }
    }
}

struct Clients {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    events: EventsClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    networks: NetworksClient<Channel>,
}

/// The base config.json (`runc spec`), with a writable root.
fn base_spec(args: &[&str]) -> Value {
    let mut spec = runc_spec().clone();
    spec["process"]["args"] = json!(args);
    spec["root"] = json!({ "path": "rootfs", "readonly": false });
    spec
}

/// Commits the busybox layer as snapshot [`BASE`] (once per instance and namespace).
async fn base_image(c: &mut Clients) -> Result<()> {
    let exists = c
        .snapshots
        .stat(spb::StatSnapshotRequest {
            key: BASE.into(),
            ..Default::default()
        })
        .await
        .is_ok();
    if exists {
        return Ok(());
    }
    commit_layer(&mut c.snapshots, BASE, "", &images::busybox_layer()?.tar).await
}

/// Records container `id` running `args` on a new snapshot of [`BASE`]; `tweak` edits the
/// record (and its spec, re-encoded afterwards).
async fn new_container(
    c: &mut Clients,
    id: &str,
    name: &str,
    args: &[&str],
    tweak: impl FnOnce(&mut cpb::Container, &mut Value),
) -> Result<cpb::Container> {
    c.snapshots
        .prepare(spb::PrepareSnapshotRequest {
            key: id.into(),
            parent: BASE.into(),
            ..Default::default()
        })
        .await?;
    let mut spec = base_spec(args);
    let mut container = cpb::Container {
        id: id.into(),
        name: name.into(),
        snapshot_key: id.into(),
        ..Default::default()
    };
    tweak(&mut container, &mut spec);
    container.spec = serde_json::to_vec(&spec)?;
    let created = c
        .containers
        .create(cpb::CreateContainerRequest {
            container: Some(container),
        })
        .await?
        .into_inner()
        .container
        .context("created container")?;
    Ok(created)
}

async fn create_task(c: &mut Clients, id: &str, stdin: bool) -> Result<u32, tonic::Status> {
    Ok(c.tasks
        .create(tpb::CreateTaskRequest {
            container_id: id.into(),
            stdin,
            ..Default::default()
        })
        .await?
        .into_inner()
        .pid)
}

async fn start(c: &mut Clients, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
    Ok(c.tasks
        .start(tpb::StartRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        })
        .await?
        .into_inner()
        .pid)
}

/// Adds exec `exec_id` running the process `spec` to task `id`; `tty` asks for stdin and a
/// terminal.
async fn exec(
    c: &mut Clients,
    id: &str,
    exec_id: &str,
    spec: &Value,
    tty: bool,
) -> Result<(), tonic::Status> {
    c.tasks
        .exec(tpb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stdin: tty,
            terminal: tty,
            spec: spec.to_string().into_bytes(),
        })
        .await
        .map(|_| ())
}

/// Fails if the network service still lists an attachment.
async fn no_attachments_left(c: &mut Clients) -> Result<()> {
    let attachments = c
        .networks
        .list_attachments(npb::ListAttachmentsRequest::default())
        .await?
        .into_inner()
        .attachments;
    ensure!(attachments.is_empty(), "attachments left: {attachments:?}");
    Ok(())
}

/// Records, creates and starts a container running `args`; returns the init pid.
async fn run(
    c: &mut Clients,
    id: &str,
    args: &[&str],
    tweak: impl FnOnce(&mut cpb::Container, &mut Value),
) -> Result<u32> {
    new_container(c, id, "", args, tweak).await?;
    create_task(c, id, false).await?;
    Ok(start(c, id, "").await?)
}

async fn wait(c: &mut Clients, id: &str, exec_id: &str) -> Result<u32> {
    let exit = c
        .tasks
        .wait(tpb::WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        })
        .await?
        .into_inner()
        .exit_status
        .context("exit status")?;
    Ok(exit.exit_code)
}

async fn kill(c: &mut Clients, id: &str, signal: u32) -> Result<(), tonic::Status> {
    c.tasks
        .kill(tpb::KillRequest {
            container_id: id.into(),
            signal,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn get(c: &mut Clients, id: &str) -> Result<tpb::Task, tonic::Status> {
    Ok(c.tasks
        .get(tpb::GetTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .task
        .unwrap_or_default())
}

async fn delete_task(c: &mut Clients, id: &str) -> Result<u32, tonic::Status> {
    Ok(c.tasks
        .delete(tpb::DeleteTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .exit_status
        .unwrap_or_default()
        .exit_code)
}

async fn delete_container(c: &mut Clients, id: &str) -> Result<(), tonic::Status> {
    c.containers
        .delete(cpb::DeleteContainerRequest { id: id.into() })
        .await
        .map(|_| ())
}

/// Kills (if running), deletes the task and the container.
async fn remove(c: &mut Clients, id: &str) -> Result<()> {
    if get(c, id).await.is_ok() {
        let _ = kill(c, id, 9).await;
        let _ = wait(c, id, "").await;
        delete_task(c, id).await?;
    }
    delete_container(c, id).await?;
    Ok(())
}

/// The entries of a Logs call (as text), with the request edited by `tweak`.
async fn logs(
    c: &mut Clients,
    id: &str,
    tweak: impl FnOnce(&mut tpb::LogsRequest),
) -> Result<Vec<String>> {
    let mut req = tpb::LogsRequest {
        container_id: id.into(),
        ..Default::default()
    };
    tweak(&mut req);
    let mut stream = c.tasks.logs(req).await?.into_inner();
    let mut out = Vec::new();
    let read = async {
        while let Some(batch) = stream.message().await? {
            out.extend(
                batch
                    .entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned()),
            );
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("logs timed out")??;
    Ok(out)
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("must fail, got {v:?}"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits (up to `timeout`) until container `id`'s task satisfies `f`.
async fn wait_task(
    c: &Clients,
    id: &str,
    timeout: Duration,
    what: &str,
    f: impl Fn(&tpb::Task) -> bool,
) -> Result<()> {
    wait_until(timeout, what, || {
        let mut tasks = c.tasks.clone();
        let id = id.to_owned();
        let f = &f;
        async move {
            tasks
                .get(tpb::GetTaskRequest {
                    container_id: id,
                    exec_id: String::new(),
                })
                .await
                .is_ok_and(|t| t.into_inner().task.is_some_and(|t| f(&t)))
        }
    })
    .await
}

fn task_dirs(berth: &Berth) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in [
        berth.state().join("tasks").join(NS),
        berth.state().join("shims").join(NS),
        berth.root().join("tasks/logs").join(NS),
    ] {
        left.extend(
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
    }
    left
}

/// The directory of a container's shim (named after the id, shortened when the socket path
/// would be too long).
fn shim_dir(berth: &Berth, id: &str) -> Result<PathBuf> {
    let dir = berth.state().join("shims").join(NS);
    std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&id[..12]))
        })
        .with_context(|| format!("no shim directory of {id} in {}", dir.display()))
}

fn shim_processes(berth: &Berth) -> Vec<u32> {
    processes_mentioning(&berth.state().join("shims"))
}

#[test]
fn containers_crud_and_bad_input_get_precise_statuses() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.231.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;
        let a = format!("abc1{}", &rand_id()[4..]);
        let b = format!("abc2{}", &rand_id()[4..]);
        new_container(&mut c, &a, "web", &["sleep", "1000"], |_, _| {}).await?;
        new_container(&mut c, &b, "db", &["true"], |c, _| {
            c.labels.insert("tier".into(), "data".into());
        })
        .await?;

        // Lookups: full id, unique prefix, name; ambiguous prefix; unknown.
        let by = |id: &str| cpb::GetContainerRequest { id: id.into() };
        let got = c.containers.get(by("abc1")).await?.into_inner().container;
        assert_eq!(got.map(|g| g.id), Some(a.clone()));
        let got = c.containers.get(by("web")).await?.into_inner().container;
        assert_eq!(got.map(|g| g.id), Some(a.clone()));
        let (code_, msg) = code(c.containers.get(by("abc")).await);
        assert_eq!(code_, Code::InvalidArgument, "{msg}");
        assert!(msg.contains(&a) && msg.contains(&b), "{msg}");
        let (code_, msg) = code(c.containers.get(by("nope")).await);
        assert_eq!(code_, Code::NotFound, "{msg}");

        // Name and id in use, bad ids, bad spec.
        let other = rand_id();
        let (code_, msg) = code(
            new_container(&mut c, &other, "web", &["true"], |_, _| {})
                .await
                .map_err(|e| e.downcast::<tonic::Status>().expect("a status")),
        );
        assert_eq!(code_, Code::AlreadyExists, "{msg}");
        assert!(msg.contains(&a), "names the holder: {msg}");
        let create = |container: cpb::Container| cpb::CreateContainerRequest {
            container: Some(container),
        };
        let (code_, msg) = code(
            c.containers
                .create(create(cpb::Container {
                    id: a.clone(),
                    ..Default::default()
                }))
                .await,
        );
        assert_eq!(code_, Code::AlreadyExists, "{msg}");
        for bad in ["-x", "a/b", &"a".repeat(77)] {
            let (code_, msg) = code(
                c.containers
                    .create(create(cpb::Container {
                        id: bad.into(),
                        ..Default::default()
                    }))
                    .await,
            );
            assert_eq!(code_, Code::InvalidArgument, "{bad}: {msg}");
        }
        let (code_, msg) = code(
            c.containers
                .create(create(cpb::Container {
                    id: rand_id(),
                    spec: b"[1]".to_vec(),
                    ..Default::default()
                }))
                .await,
        );
        assert_eq!(code_, Code::InvalidArgument, "{msg}");
        // The failed creates left nothing: a, b, and the snapshot-only `other`.
        let listed = c
            .containers
            .list(cpb::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        assert_eq!(listed.len(), 2);

        // Update with a mask: rename (not onto a held name), one label.
        let update = |name: &str, paths: &[&str]| cpb::UpdateContainerRequest {
            container: Some(cpb::Container {
                id: b.clone(),
                name: name.into(),
                labels: [("app".to_string(), "x".to_string())].into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        let (code_, msg) = code(c.containers.update(update("web", &["name"])).await);
        assert_eq!(code_, Code::AlreadyExists, "{msg}");
        let (code_, msg) = code(c.containers.update(update("x", &["id"])).await);
        assert_eq!(code_, Code::InvalidArgument, "{msg}");
        let updated = c
            .containers
            .update(update("db2", &["name", "labels.app"]))
            .await?
            .into_inner()
            .container
            .context("updated")?;
        assert_eq!(updated.name, "db2");
        assert_eq!(updated.labels.get("tier").map(String::as_str), Some("data"));
        assert_eq!(updated.labels.get("app").map(String::as_str), Some("x"));
        let list = |filters: &[&str]| cpb::ListContainersRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let found = c
            .containers
            .list(list(&[r#"labels."app"==x"#]))
            .await?
            .into_inner()
            .containers;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, b);
        let (code_, _) = code(c.containers.get(by("db")).await);
        assert_eq!(code_, Code::NotFound, "the old name is free");
        let (code_, _) = code(c.containers.list(list(&["name=x"])).await);
        assert_eq!(code_, Code::InvalidArgument);

        // Task states: start of a running task, delete of a running task, delete of a
        // container with a task, exec into a container without a task.
        create_task(&mut c, "web", false).await?;
        let (code_, msg) = code(create_task(&mut c, &a, false).await);
        assert_eq!(code_, Code::AlreadyExists, "{msg}");
        start(&mut c, "abc1", "").await?;
        let (code_, msg) = code(start(&mut c, &a, "").await);
        assert_eq!(
            code_,
            Code::FailedPrecondition,
            "start of a running task: {msg}"
        );
        let (code_, msg) = code(delete_task(&mut c, &a).await);
        assert_eq!(
            code_,
            Code::FailedPrecondition,
            "delete of a running task: {msg}"
        );
        let (code_, msg) = code(delete_container(&mut c, &a).await);
        assert_eq!(code_, Code::FailedPrecondition, "delete with a task: {msg}");
        let exec = |id: &str| tpb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "e1".into(),
            spec: serde_json::to_vec(&json!({"args": ["true"], "cwd": "/"})).unwrap(),
            ..Default::default()
        };
        let (code_, msg) = code(c.tasks.exec(exec(&b)).await);
        assert_eq!(
            code_,
            Code::FailedPrecondition,
            "exec without a task: {msg}"
        );
        let (code_, msg) = code(get(&mut c, &b).await);
        assert_eq!(code_, Code::NotFound, "{msg}");

        // A stopped task: exec refused; delete returns the exit status.
        kill(&mut c, &a, 9).await?;
        assert_eq!(wait(&mut c, &a, "").await?, 137);
        let (code_, msg) = code(c.tasks.exec(exec(&a)).await);
        assert_eq!(
            code_,
            Code::FailedPrecondition,
            "exec into a stopped task: {msg}"
        );
        assert_eq!(get(&mut c, &a).await?.status(), TaskStatus::Stopped);
        assert_eq!(delete_task(&mut c, &a).await?, 137);

        // Deleting a container removes its snapshot and directories.
        delete_container(&mut c, &a).await?;
        delete_container(&mut c, &b).await?;
        let (code_, _) = code(
            c.snapshots
                .stat(spb::StatSnapshotRequest {
                    key: a.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(code_, Code::NotFound, "the container's snapshot is removed");
        let (code_, _) = code(delete_container(&mut c, &a).await);
        assert_eq!(code_, Code::NotFound);
        c.snapshots
            .remove(spb::RemoveSnapshotRequest {
                key: other,
                ..Default::default()
            })
            .await?;
        let left = task_dirs(env.berth());
        ensure!(left.is_empty(), "left: {left:?}");
        anyhow::Ok(())
    })?;
    env.stop()
}

#[test]
fn run_reports_the_exit_code_and_logs_the_output() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.232.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;
        let id = rand_id();
        run(
            &mut c,
            &id,
            &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
            |_, _| {},
        )
        .await?;
        assert_eq!(wait(&mut c, &id, "").await?, 3);
        let task = get(&mut c, &id).await?;
        assert_eq!(task.status(), TaskStatus::Stopped);
        assert_eq!(task.exit_status.map(|e| e.exit_code), Some(3));
        assert!(task.started_at.is_some());
        let log = env
            .berth()
            .root()
            .join("tasks/logs")
            .join(NS)
            .join(&id)
            .join("container.log");
        let text = std::fs::read_to_string(&log).with_context(|| log.display().to_string())?;
        assert!(text.contains(" stdout F hi\n"), "{text}");
        assert!(text.contains(" stderr F oops\n"), "{text}");
        // The Logs RPC reads the same file: both streams, or one; tail.
        let entries = logs(&mut c, &id, |_| {}).await?;
        assert_eq!(entries, ["hi\n", "oops\n"]);
        let entries = logs(&mut c, &id, |r| r.stderr = true).await?;
        assert_eq!(entries, ["oops\n"]);
        let entries = logs(&mut c, &id, |r| r.tail = Some(1)).await?;
        assert_eq!(entries, ["oops\n"]);
        let bundle = env.berth().state().join("tasks").join(NS).join(&id);
        assert!(bundle.join("config.json").exists());
        assert_eq!(delete_task(&mut c, &id).await?, 3);
        assert!(!bundle.exists(), "bundle removed with the task");
        assert!(log.exists(), "the log outlives the task");
        let listed = c
            .tasks
            .list(tpb::ListTasksRequest::default())
            .await?
            .into_inner()
            .tasks;
        assert!(listed.is_empty(), "{listed:?}");
        // Follow: entries as they are written, until the task exits.
        let follow = rand_id();
        run(
            &mut c,
            &follow,
            &["sh", "-c", "echo one; sleep 0.5; echo two"],
            |_, _| {},
        )
        .await?;
        let begun = Instant::now();
        let entries = logs(&mut c, &follow, |r| r.follow = true).await?;
        assert_eq!(entries, ["one\n", "two\n"]);
        assert!(begun.elapsed() >= Duration::from_millis(300), "followed");
        remove(&mut c, &follow).await?;
        delete_container(&mut c, &id).await?;
        assert!(!log.exists(), "the log goes with the container");
        ensure!(shim_processes(env.berth()).is_empty(), "shim left");
        anyhow::Ok(())
    })?;
    env.stop()
}

/// An Attach stream: the sender for client messages and the server's messages.
async fn attach(
    c: &mut Clients,
    id: &str,
    exec_id: &str,
    stdin: bool,
) -> Result<(
    mpsc::Sender<tpb::AttachRequest>,
    tonic::Streaming<tpb::AttachResponse>,
)> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(tpb::AttachRequest {
        msg: Some(In::Start(tpb::AttachStart {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stdin,
            stdout: true,
            stderr: true,
        })),
    })
    .await?;
    let stream = c.tasks.attach(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

/// Reads an attach stream until `done` says the output so far is enough (or the exit comes);
/// returns (stdout, stderr, exit code if it came).
async fn read_attach(
    stream: &mut tonic::Streaming<tpb::AttachResponse>,
    done: impl Fn(&str) -> bool,
) -> Result<(String, String, Option<u32>)> {
    let (mut out, mut err) = (String::new(), String::new());
    let read = async {
        while let Some(msg) = stream.message().await? {
            match msg.msg {
                Some(Out::Output(o)) => {
                    let text = String::from_utf8_lossy(&o.data).into_owned();
                    if o.stream() == tpb::OutputStream::Stderr {
                        err.push_str(&text);
                    } else {
                        out.push_str(&text);
                    }
                    if done(&out) {
                        return anyhow::Ok(None);
                    }
                }
                Some(Out::Exit(e)) => return Ok(Some(e.exit_code)),
                None => {}
            }
        }
        bail!("attach stream ended without an exit status")
    };
    let exit = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("attach timed out")??;
    Ok((out, err, exit))
}

#[test]
fn exec_attach_pause_and_resume() -> Result<()> {
    let env = Env::start(Mode::Separate, "10.233.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;
        let id = rand_id();
        new_container(
            &mut c,
            &id,
            "cat",
            &["sh", "-c", "cat; echo bye"],
            |_, _| {},
        )
        .await?;
        let pid = create_task(&mut c, &id, true).await?;
        // Attached before start: sees everything.
        let (tx, mut stream) = attach(&mut c, &id, "", true).await?;
        start(&mut c, &id, "").await?;
        tx.send(tpb::AttachRequest {
            msg: Some(In::Stdin(b"ping\n".to_vec())),
        })
        .await?;
        let (out, _, exit) = read_attach(&mut stream, |o| o.contains("ping\n")).await?;
        assert_eq!((out.as_str(), exit), ("ping\n", None));

        // An exec with its output attached from the first byte.
        let spec = json!({
            "args": ["sh", "-c", "echo from-exec; echo to-err >&2; exit 5"],
            "cwd": "/",
            "env": [images::DEFAULT_PATH_ENV],
            "user": {"uid": 0, "gid": 0},
        });
        exec(&mut c, "cat", "e1", &spec, false).await?;
        let (_etx, mut estream) = attach(&mut c, &id, "e1", false).await?;
        start(&mut c, &id, "e1").await?;
        let (out, err, exit) = read_attach(&mut estream, |_| false).await?;
        assert_eq!(out, "from-exec\n");
        assert_eq!(err, "to-err\n");
        assert_eq!(exit, Some(5));
        assert_eq!(wait(&mut c, &id, "e1").await?, 5);
        let deleted = c
            .tasks
            .delete(tpb::DeleteTaskRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
            })
            .await?
            .into_inner();
        assert_eq!(deleted.exit_status.map(|e| e.exit_code), Some(5));

        // Pids, pause, resume.
        let pids = c
            .tasks
            .pids(tpb::PidsRequest {
                container_id: id.clone(),
            })
            .await?
            .into_inner()
            .processes;
        assert!(pids.iter().any(|p| p.pid == pid), "{pids:?} lacks {pid}");
        c.tasks
            .pause(tpb::PauseTaskRequest {
                container_id: id.clone(),
            })
            .await?;
        assert_eq!(get(&mut c, &id).await?.status(), TaskStatus::Paused);
        let (code_, msg) = code(exec(&mut c, &id, "e2", &spec, false).await);
        assert_eq!(
            code_,
            Code::FailedPrecondition,
            "exec into a paused task: {msg}"
        );
        c.tasks
            .resume(tpb::ResumeTaskRequest {
                container_id: id.clone(),
            })
            .await?;
        assert_eq!(get(&mut c, &id).await?.status(), TaskStatus::Running);

        // A second client attaches; closing stdin ends `cat`: output, then the exit status.
        let (tx2, mut stream2) = attach(&mut c, &id, "", true).await?;
        tx2.send(tpb::AttachRequest {
            msg: Some(In::Stdin(b"pong\n".to_vec())),
        })
        .await?;
        tx2.send(tpb::AttachRequest {
            msg: Some(In::CloseStdin(true)),
        })
        .await?;
        let (out, _, exit) = read_attach(&mut stream2, |_| false).await?;
        assert_eq!(out, "pong\nbye\n");
        assert_eq!(exit, Some(0));
        // The first client sees the same output and the exit.
        let (out, _, exit) = read_attach(&mut stream, |_| false).await?;
        assert_eq!((out.as_str(), exit), ("pong\nbye\n", Some(0)));
        // Attaching after the end gets the exit status at once.
        let (_tx3, mut stream3) = attach(&mut c, &id, "", false).await?;
        let (out, _, exit) = read_attach(&mut stream3, |_| false).await?;
        assert_eq!((out.as_str(), exit), ("", Some(0)));
        drop((tx, tx2));
        assert_eq!(delete_task(&mut c, &id).await?, 0);
        delete_container(&mut c, &id).await?;
        anyhow::Ok(())
    })?;
    env.stop()
}

#[test]
fn interactive_shell_through_a_pty_exec() -> Result<()> {
    let env = Env::start(Mode::Separate, "10.239.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;
        let id = rand_id();
        new_container(&mut c, &id, "", &["sleep", "1000"], |_, _| {}).await?;
        create_task(&mut c, &id, false).await?;
        start(&mut c, &id, "").await?;
        let shell = json!({
            "args": ["sh"], "cwd": "/", "terminal": true,
            "env": [images::DEFAULT_PATH_ENV, "PS1=$ "],
            "user": {"uid": 0, "gid": 0},
        });
        exec(&mut c, &id, "shell", &shell, true).await?;
        let (tx, mut stream) = attach(&mut c, &id, "shell", true).await?;
        start(&mut c, &id, "shell").await?;
        tx.send(tpb::AttachRequest {
            msg: Some(In::Resize(tpb::Resize {
                width: 100,
                height: 30,
            })),
        })
        .await?;
        // An interactive shell on a tty: it answers, and the terminal has the size set.
        tx.send(tpb::AttachRequest {
            msg: Some(In::Stdin(
                b"echo $((6*7)); stty size; [ -t 0 ] && echo tty\n".to_vec(),
            )),
        })
        .await?;
        let (out, err, exit) = read_attach(&mut stream, |o| o.contains("\r\ntty\r\n")).await?;
        assert!(out.contains("\r\n42\r\n"), "{out:?}");
        assert!(out.contains("\r\n30 100\r\n"), "{out:?}");
        assert_eq!((err.as_str(), exit), ("", None), "one stream on a tty");
        tx.send(tpb::AttachRequest {
            msg: Some(In::Stdin(b"exit 3\n".to_vec())),
        })
        .await?;
        let (_, _, exit) = read_attach(&mut stream, |_| false).await?;
        assert_eq!(exit, Some(3));
        remove(&mut c, &id).await?;
        anyhow::Ok(())
    })?;
    env.stop()
}

/// Topics of the events received within `timeout` (until `stop` topic, inclusive).
async fn topics(
    stream: &mut tonic::Streaming<epb::Envelope>,
    stop: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(e) = stream.message().await? {
            seen.push(e.topic.clone());
            if e.topic == stop {
                break;
            }
        }
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(timeout, read).await;
    Ok(seen)
}

#[test]
fn events_arrive_in_order_and_filtered() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.234.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;
        let id = rand_id();
        let other = rand_id();
        let mut stream = c
            .events
            .subscribe(epb::SubscribeRequest {
                filters: vec![format!("event.container_id=={id},namespace=={NS}")],
            })
            .await?
            .into_inner();
        let (code_, _) = code(
            c.events
                .subscribe(epb::SubscribeRequest {
                    filters: vec!["topic=x".into()],
                })
                .await,
        );
        assert_eq!(code_, Code::InvalidArgument);
        run(&mut c, &other, &["true"], |_, _| {}).await?;
        run(&mut c, &id, &["sh", "-c", "exit 4"], |_, _| {}).await?;
        assert_eq!(wait(&mut c, &id, "").await?, 4);
        delete_task(&mut c, &id).await?;
        delete_container(&mut c, &id).await?;
        let seen = topics(&mut stream, "/containers/delete", Duration::from_secs(10)).await?;
        assert_eq!(
            seen,
            [
                "/containers/create",
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete",
                "/containers/delete"
            ],
        );
        remove(&mut c, &other).await?;
        anyhow::Ok(())
    })?;
    env.stop()
}

fn policy(name: cpb::RestartPolicyName, max: u32) -> Option<cpb::RestartPolicy> {
    Some(cpb::RestartPolicy {
        name: name as i32,
        max_retries: max,
    })
}

/// Counts the /tasks/start events of `id` seen within `within`.
async fn count_starts(
    stream: &mut tonic::Streaming<epb::Envelope>,
    within: Duration,
    mut until: impl FnMut(usize) -> bool,
) -> usize {
    let mut starts = 0;
    let _ = tokio::time::timeout(within, async {
        while let Ok(Some(e)) = stream.message().await {
            if matches!(e.event, Some(Event::TaskStart(_))) {
                starts += 1;
                if until(starts) {
                    return;
                }
            }
        }
    })
    .await;
    starts
}

async fn subscribe(c: &mut Clients, id: &str) -> Result<tonic::Streaming<epb::Envelope>> {
    Ok(c.events
        .subscribe(epb::SubscribeRequest {
            filters: vec![format!("event.container_id=={id}")],
        })
        .await?
        .into_inner())
}

#[test]
fn restart_policies_with_backoff_and_user_stop() -> Result<()> {
    let env = Env::start(Mode::AllInOne, "10.235.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;

        // on-failure:2 → the first run and two restarts, then it stays stopped.
        let failing = rand_id();
        let mut events = subscribe(&mut c, &failing).await?;
        let begun = Instant::now();
        run(&mut c, &failing, &["sh", "-c", "exit 1"], |c, _| {
            c.restart_policy = policy(cpb::RestartPolicyName::OnFailure, 2);
        })
        .await?;
        let starts = count_starts(&mut events, Duration::from_secs(3), |_| false).await;
        assert_eq!(starts, 3, "one run and two restarts");
        // Backoff: 100 ms, then 200 ms.
        assert!(begun.elapsed() >= Duration::from_millis(300));
        assert_eq!(get(&mut c, &failing).await?.status(), TaskStatus::Stopped);
        assert_eq!(wait(&mut c, &failing, "").await?, 1);

        // no → one run; on-failure after a zero exit → one run.
        let once = rand_id();
        let zero = rand_id();
        let mut once_events = subscribe(&mut c, &once).await?;
        let mut zero_events = subscribe(&mut c, &zero).await?;
        run(&mut c, &once, &["sh", "-c", "exit 1"], |c, _| {
            c.restart_policy = policy(cpb::RestartPolicyName::No, 0);
        })
        .await?;
        run(&mut c, &zero, &["true"], |c, _| {
            c.restart_policy = policy(cpb::RestartPolicyName::OnFailure, 0);
        })
        .await?;
        assert_eq!(
            count_starts(&mut once_events, Duration::from_secs(1), |_| false).await,
            1
        );
        assert_eq!(
            count_starts(&mut zero_events, Duration::from_millis(300), |_| false).await,
            1
        );

        // always → restarts after clean exits, until the user stops it.
        let always = rand_id();
        let mut events = subscribe(&mut c, &always).await?;
        run(&mut c, &always, &["sh", "-c", "sleep 0.3"], |c, _| {
            c.restart_policy = policy(cpb::RestartPolicyName::Always, 0);
        })
        .await?;
        let starts = count_starts(&mut events, Duration::from_secs(10), |n| n >= 3).await;
        assert_eq!(starts, 3);
        kill(&mut c, &always, 9).await?;
        assert_eq!(wait(&mut c, &always, "").await?, 137);
        let more = count_starts(&mut events, Duration::from_millis(1500), |_| false).await;
        assert_eq!(more, 0, "a container the user stopped is not restarted");
        // A user start clears the stop: it runs and restarts again.
        delete_task(&mut c, &always).await?;
        create_task(&mut c, &always, false).await?;
        start(&mut c, &always, "").await?;
        let starts = count_starts(&mut events, Duration::from_secs(10), |n| n >= 2).await;
        assert_eq!(starts, 2, "the start and a restart");

        for id in [&failing, &once, &zero] {
            remove(&mut c, id).await?;
        }
        // `always` may be between two tasks: stop it for good first.
        wait_task(
            &c,
            &always,
            Duration::from_secs(10),
            "always is running",
            |t| t.status() == TaskStatus::Running,
        )
        .await?;
        remove(&mut c, &always).await?;
        anyhow::Ok(())
    })?;
    env.stop()
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

fn sigkill(pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    Ok(())
}

#[test]
fn kill_9_of_the_service_with_20_running_containers_then_recovery() -> Result<()> {
    let env = Env::start(Mode::Separate, "10.236.0.0")?;
    let rt = runtime();
    let (running, exiting, always, orphan) = rt.block_on(async {
        let mut c = env.clients_on_base().await?;
        let mut running = Vec::new();
        for i in 0..20 {
            let id = rand_id();
            run(&mut c, &id, &["sleep", "1000"], |c, _| {
                if i == 0 {
                    c.restart_policy = policy(cpb::RestartPolicyName::Always, 0);
                }
            })
            .await?;
            running.push(id);
        }
        let always = running[0].clone();
        let exiting = rand_id();
        run(
            &mut c,
            &exiting,
            &["sh", "-c", "until [ -e /go ]; do sleep 0.05; done; exit 7"],
            |_, _| {},
        )
        .await?;
        let orphan = rand_id();
        run(&mut c, &orphan, &["sleep", "1000"], |_, _| {}).await?;
        anyhow::Ok((running, exiting, always, orphan))
    })?;

    // kill -9 of the tasks service; meanwhile one container exits on its own, the init of the
    // restart=always one is killed, and one shim dies.
    let tasks_pid = env.berth().service_pid("tasks")?;
    let always_pid = rt.block_on(async {
        let mut c = env.clients().await?;
        anyhow::Ok(get(&mut c, &always).await?.pid)
    })?;
    let exiting_pid = rt.block_on(async {
        let mut c = env.clients().await?;
        anyhow::Ok(get(&mut c, &exiting).await?.pid)
    })?;
    sigkill(tasks_pid)?;
    harness::wait_exited(tasks_pid, Duration::from_secs(5))?;
    let state = env.berth().state();
    std::fs::write(
        state
            .join("tasks")
            .join(NS)
            .join(&exiting)
            .join("rootfs/go"),
        b"",
    )?;
    sigkill(always_pid)?;
    let orphan_shim: u32 =
        std::fs::read_to_string(shim_dir(env.berth(), &orphan)?.join("shim.pid"))?
            .trim()
            .parse()?;
    sigkill(orphan_shim)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (pid_alive(exiting_pid) || pid_alive(always_pid) || pid_alive(orphan_shim))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = env.berth().up(&env.options)?;
    ensure!(
        out.status.success(),
        "system up: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    rt.block_on(async {
        let mut c = env.clients().await?;
        // All 20 listed and running (the restart=always one once it is back).
        wait_task(
            &c,
            &always,
            Duration::from_secs(10),
            "the restart=always container is back",
            |t| t.status() == TaskStatus::Running && t.pid != always_pid,
        )
        .await?;
        let listed = c
            .tasks
            .list(tpb::ListTasksRequest {
                filters: vec!["status==running".into()],
            })
            .await?
            .into_inner()
            .tasks;
        let mut ids: Vec<String> = listed.iter().map(|t| t.container_id.clone()).collect();
        ids.sort();
        let mut want = running.clone();
        want.sort();
        assert_eq!(ids, want, "exactly the 20 running containers are running");
        // The one that exited meanwhile reports its own exit code.
        assert_eq!(wait(&mut c, &exiting, "").await?, 7);
        let task = get(&mut c, &exiting).await?;
        assert_eq!(task.status(), TaskStatus::Stopped);
        assert_eq!(task.exit_status.map(|e| e.exit_code), Some(7));
        // The one whose shim died is stopped with 255, and cleaned up.
        wait_task(
            &c,
            &orphan,
            Duration::from_secs(10),
            "the orphan is marked stopped",
            |t| {
                t.status() == TaskStatus::Stopped
                    && t.exit_status.is_some_and(|e| e.exit_code == 255)
            },
        )
        .await?;
        assert_eq!(wait(&mut c, &orphan, "").await?, 255);
        // Exec still works in a recovered task, with its output attached.
        let target = running[5].clone();
        let after = json!({
            "args": ["echo", "recovered"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "env": [images::DEFAULT_PATH_ENV]
        });
        exec(&mut c, &target, "after", &after, false).await?;
        let (_tx, mut stream) = attach(&mut c, &target, "after", false).await?;
        start(&mut c, &target, "after").await?;
        let (out, _, exit) = read_attach(&mut stream, |_| false).await?;
        assert_eq!((out.as_str(), exit), ("recovered\n", Some(0)));

        for id in running.iter().chain([&exiting, &orphan]) {
            remove(&mut c, id).await?;
        }
        let left = task_dirs(env.berth());
        ensure!(left.is_empty(), "left: {left:?}");
        ensure!(shim_processes(env.berth()).is_empty(), "shims left");
        anyhow::Ok(())
    })?;
    env.stop()
}

#[test]
fn eight_clients_500_run_rm_cycles_leave_nothing() -> Result<()> {
    const CYCLES: usize = 500;
    const CLIENTS: usize = 8;
    let env = Env::start(Mode::AllInOne, "10.237.0.0")?;
    let rt = runtime();
    let begun = Instant::now();
    rt.block_on(async {
        env.clients_on_base().await?;
        let mut workers = Vec::new();
        for w in 0..CLIENTS {
            let mut c = env.clients().await?;
            let cycles = CYCLES / CLIENTS + usize::from(w < CYCLES % CLIENTS);
            workers.push(tokio::spawn(async move {
                for i in 0..cycles {
                    let id = rand_id();
                    // Every tenth cycle on the bridge network: a pinned netns and a veth.
                    let bridged = i % 10 == 0;
                    run(&mut c, &id, &["true"], |c, _| {
                        if bridged {
                            c.extensions.insert(
                                "berth.io/network".into(),
                                br#"{"mode":"bridge"}"#.to_vec(),
                            );
                        }
                    })
                    .await
                    .with_context(|| format!("run {id}"))?;
                    let code = wait(&mut c, &id, "").await?;
                    ensure!(code == 0, "exit {code}");
                    delete_task(&mut c, &id).await?;
                    delete_container(&mut c, &id).await?;
                }
                anyhow::Ok(())
            }));
        }
        for w in workers {
            w.await??;
        }
        anyhow::Ok(())
    })?;
    let elapsed = begun.elapsed();
    eprintln!(
        "{CYCLES} run/rm cycles by {CLIENTS} clients: {elapsed:?} ({:.1} ms per cycle)",
        elapsed.as_secs_f64() * 1000.0 / CYCLES as f64
    );
    rt.block_on(async {
        let mut c = env.clients().await?;
        let containers = c
            .containers
            .list(cpb::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        ensure!(
            containers.is_empty(),
            "{} containers left",
            containers.len()
        );
        no_attachments_left(&mut c).await?;
        anyhow::Ok(())
    })?;
    let berth = env.berth();
    let left = task_dirs(berth);
    ensure!(left.is_empty(), "directories left: {left:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shim_processes(berth).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(shim_processes(berth).is_empty(), "shims left");
    let mounts = mounts_under(&berth.state())?;
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cgroups = env.container_cgroups();
    ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let netns: Vec<_> = berth_tests::host::files_under(&berth.state())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("netns"))
        .collect();
    ensure!(netns.is_empty(), "netns pins left: {netns:?}");
    env.stop()
}

#[test]
fn two_containers_on_a_user_network_reach_each_other_by_name() -> Result<()> {
    let env = Env::start(Mode::Separate, "10.238.0.0")?;
    runtime().block_on(async {
        let mut c = env.clients_on_base().await?;
        c.networks
            .create(npb::CreateNetworkRequest {
                name: "front".into(),
                icc: true,
                options: [("bridge.name".to_string(), format!("berth-t{}f", env.tag))].into(),
                ..Default::default()
            })
            .await?;
        let net = |hostname: &str| {
            serde_json::to_vec(&json!({
                "mode": "bridge",
                "networks": [{"name": "front", "aliases": ["svc-" .to_owned() + hostname], "ip": ""}],
                "hostname": hostname,
            }))
            .expect("json")
        };
        let with_raw_sockets = |spec: &mut Value| {
            for set in ["bounding", "effective", "permitted"] {
                if let Some(caps) = spec["process"]["capabilities"][set].as_array_mut() {
                    caps.push(json!("CAP_NET_RAW"));
                }
            }
        };
        let alpha = rand_id();
        let beta = rand_id();
        new_container(&mut c, &alpha, "alpha", &["sleep", "1000"], |c, spec| {
            c.extensions.insert("berth.io/network".into(), net("alpha"));
            with_raw_sockets(spec);
        })
        .await?;
        create_task(&mut c, &alpha, false).await?;
        start(&mut c, &alpha, "").await?;
        let bundle = env.berth().state().join("tasks").join(NS).join(&alpha);
        assert_eq!(std::fs::read_to_string(bundle.join("hostname"))?, "alpha\n");
        let hosts = std::fs::read_to_string(bundle.join("hosts"))?;
        assert!(hosts.contains("\talpha"), "{hosts}");
        // beta pings alpha by container name and by alias, inside the network only.
        new_container(
            &mut c,
            &beta,
            "beta",
            &[
                "sh",
                "-c",
                "ping -c 1 -W 3 alpha && ping -c 1 -W 3 svc-alpha && cat /etc/hostname",
            ],
            |c, spec| {
                c.extensions.insert("berth.io/network".into(), net("beta"));
                with_raw_sockets(spec);
            },
        )
        .await?;
        create_task(&mut c, &beta, false).await?;
        start(&mut c, &beta, "").await?;
        let code = wait(&mut c, &beta, "").await?;
        let log = env
            .berth()
            .root()
            .join("tasks/logs")
            .join(NS)
            .join(&beta)
            .join("container.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, 0, "ping by name failed: {text}");
        assert!(text.contains("stdout F beta\n"), "{text}");
        // Network mode container:<name> joins alpha's namespace: same hosts file.
        let gamma = rand_id();
        new_container(&mut c, &gamma, "", &["cat", "/etc/hosts"], |c, _| {
            c.extensions.insert(
                "berth.io/network".into(),
                br#"{"mode":"container:alpha"}"#.to_vec(),
            );
        })
        .await?;
        create_task(&mut c, &gamma, false).await?;
        start(&mut c, &gamma, "").await?;
        assert_eq!(wait(&mut c, &gamma, "").await?, 0);
        for id in [&alpha, &beta, &gamma] {
            remove(&mut c, id).await?;
        }
        no_attachments_left(&mut c).await?;
        c.networks
            .remove(npb::RemoveNetworkRequest {
                name: "front".into(),
            })
            .await?;
        anyhow::Ok(())
    })?;
    env.stop()
}
