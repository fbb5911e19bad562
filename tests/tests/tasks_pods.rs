//! End-to-end tests of pod shims in the tasks service, through the tasks API: the containers of
//! one `sandbox_id` run in one shim (launched once even when their tasks are created at the
//! same time), share the pod's pid namespace whose init the shim provides, keep the network
//! namespace their spec joins by path, survive a kill -9 of the tasks service, and the shim
//! (with its init) ends when the pod's last task is deleted. Runs on the builtin runtime and on
//! runc.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_api::berth::containers::v1::{self as cpb, containers_client::ContainersClient};
use berth_api::berth::events::v1::{self as epb, events_client::EventsClient};
use berth_api::berth::snapshots::v1::{self as spb, snapshots_client::SnapshotsClient};
use berth_api::berth::tasks::v1::{self as tpb, tasks_client::TasksClient};
use berth_api::berth::types::v1::{LogConfig, TaskStatus};
use berth_api::client::{self, Channel};
use berth_tests::cleanup::{clean_up_instance, stop_instance};
use berth_tests::fixtures::bundle::runc_spec;
use berth_tests::fixtures::images;
use berth_tests::harness::{self, processes_mentioning};
use berth_tests::snapshots_api::commit_layer;
use berth_tests::{Berth, Mode, Options};
use serde_json::json;

const NS: &str = "default";
const BASE: &str = "busybox-base";
const POD_PID: &str = "berth.io/pod-pid-namespace";

fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    hex::encode(b)
}

/// A berth instance (separate services, so the tasks service can be killed alone) and a
/// pinned network namespace standing in for the pod's.
struct Env {
    berth: Option<Berth>,
    tag: String,
    options: Options,
    netns: String,
}

impl Env {
    fn start() -> Result<Env> {
        let tag = rand_hex(3);
        let config = format!(
            "[network]\ndefault_bridge = \"berth-p{tag}0\"\nnft_table = \"berth_p{tag}\"\n\
             [tasks]\ncgroup_parent = \"berth-test-{tag}\"\n"
        );
        let options = Options {
            config: Some(config),
            ..Default::default()
        };
        let netns = format!("berth-pod-{tag}");
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &netns])
            .output()?;
        ensure!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut env = Env {
            berth: None,
            tag,
            options,
            netns,
        };
        env.berth = Some(Berth::start_with(Mode::Separate, env.options.clone())?);
        Ok(env)
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    fn cgroup_parent(&self) -> String {
        format!("berth-test-{}", self.tag)
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    async fn clients(&self) -> Result<Clients> {
        let b = self.berth();
        let tasks = client::connect(&b.socket("tasks"), NS).await?;
        Ok(Clients {
            containers: ContainersClient::new(tasks.clone()),
            tasks: TasksClient::new(tasks.clone()),
            events: EventsClient::new(tasks),
            snapshots: SnapshotsClient::new(client::connect(&b.socket("snapshots"), NS).await?),
        })
    }

    fn stop(mut self) -> Result<()> {
        let berth = self.berth.take().expect("berth running");
        stop_instance(berth, &self.cgroup_parent())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            clean_up_instance(
                berth,
                &self.cgroup_parent(),
                Some((
                    &format!("berth-p{}", self.tag),
                    &format!("berth_p{}", self.tag),
                )),
            );
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

#[derive(Clone)]
struct Clients {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    events: EventsClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
}

/// Records container `id` of pod `pod` running `args` on `runtime`, joining the pod's netns by
/// path and its shared pid namespace; `log` is where its output goes.
async fn new_container(
    c: &mut Clients,
    env: &Env,
    runtime: &str,
    pod: &str,
    id: &str,
    args: &[&str],
    log: &Path,
) -> Result<()> {
    c.snapshots
        .prepare(spb::PrepareSnapshotRequest {
            key: id.into(),
            parent: BASE.into(),
            ..Default::default()
        })
        .await?;
    let mut spec = runc_spec().clone();
    spec["process"]["args"] = json!(args);
    spec["root"] = json!({ "path": "rootfs", "readonly": false });
    spec["annotations"] = json!({ POD_PID: "true" });
    for ns in spec["linux"]["namespaces"]
        .as_array_mut()
        .context("namespaces")?
    {
        if ns["type"] == "network" {
            ns["path"] = json!(env.netns_path());
        }
    }
    c.containers
        .create(cpb::CreateContainerRequest {
            container: Some(cpb::Container {
                id: id.into(),
                snapshot_key: id.into(),
                sandbox_id: pod.into(),
                runtime: Some(cpb::Runtime {
                    name: runtime.into(),
                    options: Vec::new(),
                }),
                log_config: Some(LogConfig {
                    path: log.display().to_string(),
                    ..Default::default()
                }),
                spec: serde_json::to_vec(&spec)?,
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

async fn create_task(mut c: Clients, id: String) -> Result<u32, tonic::Status> {
    Ok(c.tasks
        .create(tpb::CreateTaskRequest {
            container_id: id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .pid)
}

async fn start(c: &mut Clients, id: &str) -> Result<u32> {
    Ok(c.tasks
        .start(tpb::StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .pid)
}

async fn get(c: &mut Clients, id: &str) -> Result<tpb::Task> {
    c.tasks
        .get(tpb::GetTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .task
        .context("task")
}

async fn wait(c: &mut Clients, id: &str) -> Result<u32> {
    Ok(c.tasks
        .wait(tpb::WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .exit_status
        .context("exit status")?
        .exit_code)
}

/// Kills (if running), waits for and deletes the task of `id`, then its container.
async fn remove(c: &mut Clients, id: &str) -> Result<()> {
    if get(c, id).await?.status() != TaskStatus::Stopped {
        c.tasks
            .kill(tpb::KillRequest {
                container_id: id.into(),
                signal: 9,
                ..Default::default()
            })
            .await?;
    }
    wait(c, id).await?;
    c.tasks
        .delete(tpb::DeleteTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    c.containers
        .delete(cpb::DeleteContainerRequest { id: id.into() })
        .await?;
    Ok(())
}

/// The topics of the events of container `id`, read until its container is deleted.
async fn topics_until_deleted(mut stream: tonic::Streaming<epb::Envelope>) -> Vec<String> {
    let mut seen = Vec::new();
    let read = async {
        while let Ok(Some(e)) = stream.message().await {
            seen.push(e.topic.clone());
            if e.topic == "/containers/delete" {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    seen
}

/// The text lines of a CRI-format log file.
fn log_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
        .collect())
}

fn ns_inode(path: impl AsRef<Path>) -> Result<u64> {
    let path = path.as_ref();
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .ino())
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

fn wait_gone(pid: u32, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        if Instant::now() > deadline {
            bail!("{what} (pid {pid}) still runs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The shim processes of the instance.
fn shims(berth: &Berth) -> Vec<u32> {
    processes_mentioning(&berth.state().join("shims"))
}

/// The pid of the pod init (`berth-shim pod-init`) whose parent is `shim`.
fn pod_init_of(shim: u32) -> Result<u32> {
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(shim) && cmdline.ends_with(b"\0pod-init\0") {
            return Ok(pid);
        }
    }
    bail!("no pod init under shim {shim}")
}

fn pod_lifecycle(runtime: &str) -> Result<()> {
    let env = Env::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let logs = tempfile::Builder::new()
        .prefix("berth-pod-logs-")
        .tempdir()?;
    let pod = rand_hex(32);
    let (a, b, probe) = (rand_hex(32), rand_hex(32), rand_hex(32));
    let log = |id: &str| logs.path().join(format!("{}.log", &id[..12]));

    // Two containers of one pod, their tasks created at the same time: one shim.
    let (pid_a, pid_b) = rt.block_on(async {
        let mut c = env.clients().await?;
        commit_layer(&mut c.snapshots, BASE, "", &images::busybox_layer()?.tar).await?;
        for id in [&a, &b] {
            let args = ["sleep", "1000"];
            new_container(&mut c, &env, runtime, &pod, id, &args, &log(id)).await?;
        }
        let (ra, rb) = tokio::join!(
            create_task(c.clone(), a.clone()),
            create_task(c.clone(), b.clone())
        );
        let (pid_a, pid_b) = (ra?, rb?);
        start(&mut c, &a).await?;
        start(&mut c, &b).await?;
        anyhow::Ok((pid_a, pid_b))
    })?;
    let state = env.berth().state();
    let shim_dirs = std::fs::read_dir(state.join("shims").join(NS))?.count();
    assert_eq!(shim_dirs, 1, "one shim directory");
    // `shims/<ns>/<pod id>`, shortened to `<12 digits>-<hash>` when the socket path would be
    // too long for a Unix socket.
    let shim_dir = std::fs::read_dir(state.join("shims").join(NS))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&pod[..12]))
        })
        .context("no shim directory named after the pod")?;
    ensure!(shim_dir.join("shim.sock").exists(), "no pod shim socket");
    let shim: u32 = std::fs::read_to_string(shim_dir.join("shim.pid"))?
        .trim()
        .parse()?;
    assert_eq!(shims(env.berth()), vec![shim], "one shim for the pod");
    let init = pod_init_of(shim)?;

    // The pod's pid namespace is the init's, shared by both; their netns is the pinned one.
    let pod_pidns = ns_inode(format!("/proc/{init}/ns/pid"))?;
    ensure!(
        pod_pidns != ns_inode("/proc/self/ns/pid")?,
        "a new pid namespace"
    );
    for pid in [pid_a, pid_b] {
        assert_eq!(ns_inode(format!("/proc/{pid}/ns/pid"))?, pod_pidns);
        assert_eq!(
            ns_inode(format!("/proc/{pid}/ns/net"))?,
            ns_inode(env.netns_path())?,
            "the spec's netns path is kept"
        );
    }

    // A third container of the pod sees the init as pid 1 and both sleeps.
    let ps = rt.block_on(async {
        let mut c = env.clients().await?;
        let args = ["sh", "-c", "ps -o pid,args; readlink /proc/self/ns/net"];
        let events = c
            .events
            .subscribe(epb::SubscribeRequest {
                filters: vec![format!("event.container_id=={probe}")],
            })
            .await?
            .into_inner();
        new_container(&mut c, &env, runtime, &pod, &probe, &args, &log(&probe)).await?;
        create_task(c.clone(), probe.clone()).await?;
        start(&mut c, &probe).await?;
        ensure!(wait(&mut c, &probe).await? == 0, "ps failed");
        remove(&mut c, &probe).await?;
        // The pod shim's events reach the probe's subscribers once each, in order.
        assert_eq!(
            topics_until_deleted(events).await,
            [
                "/containers/create",
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete",
                "/containers/delete"
            ]
        );
        log_lines(&log(&probe))
    })?;
    let init_line = ps.iter().find(|l| l.trim_start().starts_with("1 "));
    ensure!(
        init_line.is_some_and(|l| l.ends_with("pod-init")),
        "pid 1 is the pod's init: {ps:?}"
    );
    let sleeps = ps.iter().filter(|l| l.ends_with("sleep 1000")).count();
    assert_eq!(sleeps, 2, "both containers' processes: {ps:?}");
    let netns = format!("net:[{}]", ns_inode(env.netns_path())?);
    ensure!(
        ps.contains(&netns),
        "the probe joined the pod's netns: {ps:?}"
    );
    ensure!(
        pid_alive(shim),
        "the shim outlives a deleted task of the pod"
    );

    // kill -9 of the tasks service, then it finds the pod shim and both containers again.
    let tasks_pid = env.berth().service_pid("tasks")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tasks_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    harness::wait_exited(tasks_pid, Duration::from_secs(5))?;
    let out = env.berth().up(&env.options)?;
    ensure!(
        out.status.success(),
        "system up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        let mut c = env.clients().await?;
        for (id, pid) in [(&a, pid_a), (&b, pid_b)] {
            let task = get(&mut c, id).await?;
            assert_eq!((task.status(), task.pid), (TaskStatus::Running, pid));
        }
        assert_eq!(shims(env.berth()), vec![shim], "the same shim");
        // Deleting one task keeps the shim for the other; the last one ends it.
        remove(&mut c, &a).await?;
        ensure!(
            pid_alive(shim) && pid_alive(init),
            "the pod shim ended early"
        );
        assert_eq!(get(&mut c, &b).await?.status(), TaskStatus::Running);
        remove(&mut c, &b).await?;
        anyhow::Ok(())
    })?;
    wait_gone(shim, "the pod shim")?;
    wait_gone(init, "the pod init")?;
    ensure!(!shim_dir.exists(), "shim directory left");
    env.stop()
}

#[test]
fn pod_shim_on_builtin() -> Result<()> {
    pod_lifecycle("builtin")
}

#[test]
fn pod_shim_on_runc() -> Result<()> {
    pod_lifecycle("runc")
}
