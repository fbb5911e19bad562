//! Containers the Docker way: finding a container by name or id prefix, its state as `ps` and
//! `inspect` show it, and the lifecycle verbs (`start`, `stop`, `restart`, `kill`, `rm`,
//! `wait`, `pause`, `unpause`, `rename`, `top`, `update`, `container prune`).
//!
//! A container is a record of the tasks service (berth.containers.v1); its process is a task
//! (berth.tasks.v1). A container without a task has never run (or its task was deleted).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::containers::v1 as cpb;
use berth_api::berth::containers::v1::containers_client::ContainersClient;
use berth_api::berth::snapshots::v1 as spb;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::tasks::v1::tasks_client::TasksClient;
use berth_api::berth::types::v1::{ExitStatus, TaskStatus};
use berth_api::berth::volumes::v1 as vpb;
use berth_api::berth::volumes::v1::volumes_client::VolumesClient;
use berth_api::client::Channel;
use berth_tasks::spec;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tonic::Code;

use crate::context::{Context, Output};
use crate::output;

/// Docker's exit code when berth itself fails (`run`, `create`, `start`, `exec`).
pub const EXIT_BERTH: u8 = 125;
/// Exit code when the container's command cannot be invoked.
pub const EXIT_CANNOT_INVOKE: u8 = 126;
/// Exit code when the container's command is not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Extension key of the client-side settings `berthctl run` records (auto-remove, stop
/// timeout, the flags as given) for `stop`, `inspect` and `--volumes-from`.
pub const EXT_RUN: &str = "berth.io/run";
/// Extension key of the network settings (agreed with the tasks service).
pub use berth_tasks::network::EXTENSION as EXT_NETWORK;

/// A call failed; carries the gRPC code so callers can pick an exit code or a fallback.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The gRPC status code.
    pub code: Code,
    /// The message, with a hint when the service is down.
    pub message: String,
}

/// Turns a status into an error naming what failed, hinting at `system up` when the service
/// went away.
pub fn rpc(e: tonic::Status) -> anyhow::Error {
    let message = if e.code() == Code::Unavailable {
        format!(
            "{} (is berth running? start it with `berthctl system up`)",
            e.message()
        )
    } else {
        e.message().to_owned()
    };
    CallError {
        code: e.code(),
        message,
    }
    .into()
}

/// The answer of a call, or None when the service answers NotFound.
fn unless_not_found<T>(
    answer: Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<Option<T>> {
    match answer {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(e) if e.code() == Code::NotFound => Ok(None),
        Err(e) => Err(rpc(e)),
    }
}

/// The gRPC code of an error made by [`rpc`], if it is one.
pub fn code_of(e: &anyhow::Error) -> Option<Code> {
    e.downcast_ref::<CallError>().map(|c| c.code)
}

/// A connection to `service`, failing with a one-line hint to start berth.
pub async fn connect(ctx: &Context, service: Service) -> anyhow::Result<Channel> {
    let socket = ctx.socket(service);
    berth_api::client::connect(&socket, &ctx.namespace)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the {service} service is not reachable ({e}); is berth running? start it with `berthctl system up`"
            )
        })
}

/// Prints `e` as berthctl's one-line error and returns `code`: Docker's convention for the
/// commands whose own exit code belongs to the container.
pub fn fail(e: anyhow::Error, code: u8) -> ExitCode {
    eprintln!("berthctl: error: {e:#}");
    ExitCode::from(code)
}

/// Clients of the tasks service's container and task APIs.
#[derive(Clone)]
pub struct Clients {
    /// Container records.
    pub containers: ContainersClient<Channel>,
    /// Tasks.
    pub tasks: TasksClient<Channel>,
    /// Volumes.
    pub volumes: VolumesClient<Channel>,
}

impl Clients {
    /// Connects to the tasks service.
    pub async fn new(ctx: &Context) -> anyhow::Result<Clients> {
        let channel = connect(ctx, Service::Tasks).await?;
        Ok(Clients {
            containers: ContainersClient::new(channel.clone()),
            tasks: TasksClient::new(channel.clone()),
            volumes: VolumesClient::new(channel),
        })
    }

    /// The container named by `reference`: its full id, its name, or a unique id prefix.
    pub async fn find(&mut self, reference: &str) -> anyhow::Result<cpb::Container> {
        if reference.is_empty() {
            bail!("a container name or id is required");
        }
        match self
            .containers
            .get(cpb::GetContainerRequest {
                id: reference.to_owned(),
            })
            .await
        {
            Ok(r) => {
                if let Some(c) = r.into_inner().container {
                    return Ok(c);
                }
            }
            Err(e) if matches!(e.code(), Code::NotFound | Code::InvalidArgument) => {}
            Err(e) => return Err(rpc(e)),
        }
        let all = self.list().await?;
        let name = reference.strip_prefix('/').unwrap_or(reference);
        if let Some(c) = all.iter().find(|c| c.name == name) {
            return Ok(c.clone());
        }
        let matches: Vec<&cpb::Container> =
            all.iter().filter(|c| c.id.starts_with(reference)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(CallError {
                code: Code::NotFound,
                message: format!("no such container: {reference}"),
            }
            .into()),
            many => bail!(
                "container id prefix {reference:?} is ambiguous: it matches {} containers",
                many.len()
            ),
        }
    }

    /// Every container of the namespace.
    pub async fn list(&mut self) -> anyhow::Result<Vec<cpb::Container>> {
        Ok(self
            .containers
            .list(cpb::ListContainersRequest::default())
            .await
            .map_err(rpc)?
            .into_inner()
            .containers)
    }

    /// The state of a container's task, or None if it has none.
    pub async fn task(&mut self, id: &str) -> anyhow::Result<Option<tpb::Task>> {
        let answer = self
            .tasks
            .get(tpb::GetTaskRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            })
            .await;
        Ok(unless_not_found(answer)?.and_then(|r| r.task))
    }

    /// Every task of the namespace, by container id.
    pub async fn tasks(&mut self) -> anyhow::Result<HashMap<String, tpb::Task>> {
        Ok(self
            .tasks
            .list(tpb::ListTasksRequest::default())
            .await
            .map_err(rpc)?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| (t.container_id.clone(), t))
            .collect())
    }

    /// Sends `signal` to the container's init process (or every process when `all`).
    pub async fn kill(&mut self, id: &str, signal: Signal, all: bool) -> anyhow::Result<()> {
        self.tasks
            .kill(tpb::KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            })
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// Waits for the init process to exit, at most `timeout` (forever when None).
    pub async fn wait(
        &mut self,
        id: &str,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let call = self.tasks.wait(tpb::WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        let answer = match timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                Ok(a) => a,
                Err(_) => return Ok(None),
            },
            None => call.await,
        };
        Ok(answer.map_err(rpc)?.into_inner().exit_status)
    }

    /// Deletes the container's task (stopped), if it has one; returns its exit status.
    pub async fn delete_task(&mut self, id: &str) -> anyhow::Result<Option<ExitStatus>> {
        let answer = self
            .tasks
            .delete(tpb::DeleteTaskRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            })
            .await;
        Ok(unless_not_found(answer)?.and_then(|r| r.exit_status))
    }

    /// Creates the container's task (after deleting a stopped one) and starts it; returns the
    /// exit code to end with when the command cannot run (126/127), as an error.
    pub async fn create_task(
        &mut self,
        container: &cpb::Container,
        stdin: bool,
        terminal: bool,
    ) -> anyhow::Result<()> {
        self.tasks
            .create(tpb::CreateTaskRequest {
                container_id: container.id.clone(),
                rootfs: Vec::new(),
                stdin,
                terminal,
            })
            .await
            .map_err(start_error)?;
        Ok(())
    }

    /// Starts the created init process or exec process.
    pub async fn start(&mut self, id: &str, exec_id: &str) -> anyhow::Result<u32> {
        Ok(self
            .tasks
            .start(tpb::StartRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
            .await
            .map_err(start_error)?
            .into_inner()
            .pid)
    }

    /// Stops a running container: its stop signal, then SIGKILL to every process after
    /// `timeout`. Returns false if it was not running.
    pub async fn stop(
        &mut self,
        container: &cpb::Container,
        timeout: Option<Duration>,
    ) -> anyhow::Result<bool> {
        let Some(task) = self.task(&container.id).await? else {
            return Ok(false);
        };
        match task.status() {
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {}
            TaskStatus::Created => {
                self.kill(&container.id, Signal::SIGKILL, true).await?;
                self.wait(&container.id, None).await?;
                return Ok(true);
            }
            _ => return Ok(false),
        }
        let timeout = timeout.unwrap_or_else(|| stop_timeout(container));
        let signal = stop_signal(container);
        if task.status() != TaskStatus::Running {
            // A frozen process cannot handle its stop signal: kill it.
            self.kill(&container.id, Signal::SIGKILL, true).await?;
        } else if let Err(e) = self.kill(&container.id, signal, false).await {
            // It may have exited meanwhile.
            if code_of(&e) != Some(Code::NotFound) && code_of(&e) != Some(Code::FailedPrecondition)
            {
                return Err(e);
            }
        }
        if self.wait(&container.id, Some(timeout)).await?.is_none() {
            self.kill(&container.id, Signal::SIGKILL, true).await?;
            self.wait(&container.id, None).await?;
        }
        Ok(true)
    }
}

/// Maps a failed Create or Start to Docker's exit codes: 127 when the command is not found,
/// 126 when it cannot be run, 125 otherwise.
pub fn start_error(e: tonic::Status) -> anyhow::Error {
    let text = e.message().to_ascii_lowercase();
    let code = if text.contains("not found") && text.contains("executable")
        || text.contains("no such file or directory") && text.contains("exec")
    {
        EXIT_NOT_FOUND
    } else if text.contains("permission denied") && text.contains("exec") {
        EXIT_CANNOT_INVOKE
    } else {
        EXIT_BERTH
    };
    let e = rpc(e);
    if code == EXIT_BERTH {
        e
    } else {
        ExitWith {
            code,
            message: format!("{e:#}"),
        }
        .into()
    }
}

/// An error that ends berthctl with a particular exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitWith {
    /// Exit code.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

/// The exit code Docker uses for `e` in a command whose success code is the container's.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<ExitWith>().map_or(EXIT_BERTH, |x| x.code)
}

/// The container's spec as JSON (Null if missing or invalid).
pub fn spec_json(container: &cpb::Container) -> Value {
    serde_json::from_slice(&container.spec).unwrap_or(Value::Null)
}

/// The strings of a JSON array (none when `value` is not an array).
pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// An extension's JSON (Null if absent).
pub fn extension(container: &cpb::Container, key: &str) -> Value {
    container
        .extensions
        .get(key)
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null)
}

/// The signal `stop` sends first: the spec's stop signal annotation, else SIGTERM.
pub fn stop_signal(container: &cpb::Container) -> Signal {
    spec_json(container)["annotations"][spec::STOP_SIGNAL_ANNOTATION]
        .as_str()
        .and_then(|s| parse_signal(s).ok())
        .unwrap_or(Signal::SIGTERM)
}

/// How long `stop` waits before SIGKILL: `--stop-timeout`, else 10 seconds.
pub fn stop_timeout(container: &cpb::Container) -> Duration {
    let secs = extension(container, EXT_RUN)["stop_timeout"]
        .as_u64()
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow::anyhow!("invalid signal: {s}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("invalid signal: {s}"))
}

fn to_system(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .filter(|t| *t > SystemTime::UNIX_EPOCH)
}

/// Docker's human duration: "Less than a second", "3 seconds", "About a minute", "2 hours"...
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        0 => "Less than a second".into(),
        s if s < 60 => plural(s, "second"),
        s if s / 60 == 1 => "About a minute".into(),
        s if s < 3600 => plural(s / 60, "minute"),
        s if s / 3600 == 1 => "About an hour".into(),
        s if s < 48 * 3600 => plural(s / 3600, "hour"),
        s if s < 7 * 24 * 3600 * 2 => plural(s / (24 * 3600), "day"),
        s if s < 30 * 24 * 3600 * 3 => plural(s / (7 * 24 * 3600), "week"),
        s if s < 365 * 24 * 3600 * 2 => plural(s / (30 * 24 * 3600), "month"),
        s => plural(s / (365 * 24 * 3600), "year"),
    }
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
}

fn rfc3339(t: Option<SystemTime>) -> String {
    t.map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

/// Docker's state name of a container: created, running, paused, exited.
pub fn state_name(task: Option<&tpb::Task>) -> &'static str {
    match task.map(|t| t.status()) {
        None | Some(TaskStatus::Created) => "created",
        Some(TaskStatus::Running) => "running",
        Some(TaskStatus::Paused | TaskStatus::Pausing) => "paused",
        Some(TaskStatus::Stopped) => "exited",
        Some(TaskStatus::Unknown) => "unknown",
    }
}

/// The STATUS column of `ps`: "Up 3 seconds", "Exited (3) 2 seconds ago", "Created".
pub fn status_text(task: Option<&tpb::Task>) -> String {
    let Some(task) = task else {
        return "Created".into();
    };
    let up = || {
        to_system(&task.started_at)
            .map(|t| human_duration(since(t)))
            .unwrap_or_else(|| "Less than a second".into())
    };
    match task.status() {
        TaskStatus::Created => "Created".into(),
        TaskStatus::Running => format!("Up {}", up()),
        TaskStatus::Paused | TaskStatus::Pausing => format!("Up {} (Paused)", up()),
        TaskStatus::Stopped => {
            let exit = task.exit_status.unwrap_or_default();
            match to_system(&exit.exited_at) {
                Some(t) => format!(
                    "Exited ({}) {} ago",
                    exit.exit_code,
                    human_duration(since(t))
                ),
                None => format!("Exited ({})", exit.exit_code),
            }
        }
        TaskStatus::Unknown => "Unknown".into(),
    }
}

/// The container's command line as `ps` shows it (process args of the spec).
pub fn command_line(container: &cpb::Container) -> String {
    spec_json(container)["process"]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `docker.io/library/x:tag` -> `x:tag`.
pub fn familiar(image: &str) -> &str {
    image
        .strip_prefix("docker.io/library/")
        .or_else(|| image.strip_prefix("docker.io/"))
        .unwrap_or(image)
}

/// Published ports as `ps` shows them: `0.0.0.0:8080->80/tcp`.
pub fn ports_text(container: &cpb::Container) -> String {
    let network = extension(container, EXT_NETWORK);
    network["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ip = p["host_ip"].as_str().filter(|s| !s.is_empty());
            format!(
                "{}:{}->{}/{}",
                ip.unwrap_or("0.0.0.0"),
                p["host_port"],
                p["container_port"],
                p["protocol"].as_str().unwrap_or("tcp")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Docker's `inspect` view of a container.
pub fn inspect_json(container: &cpb::Container, task: Option<&tpb::Task>) -> Value {
    let spec = spec_json(container);
    let run = extension(container, EXT_RUN);
    let network = extension(container, EXT_NETWORK);
    let status = state_name(task);
    let exit = task.and_then(|t| t.exit_status).unwrap_or_default();
    let args: Vec<Value> = spec["process"]["args"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let resources = &spec["linux"]["resources"];
    let cpu = &resources["cpu"];
    let nano_cpus = match (cpu["quota"].as_i64(), cpu["period"].as_u64()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => q * 1_000_000_000 / p as i64,
        _ => 0,
    };
    let restart = container.restart_policy.unwrap_or_default();
    let restart_name = match restart.name() {
        cpb::RestartPolicyName::Always => "always",
        cpb::RestartPolicyName::OnFailure => "on-failure",
        cpb::RestartPolicyName::UnlessStopped => "unless-stopped",
        _ => "no",
    };
    let mounts: Vec<Value> = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| matches!(m["type"].as_str(), Some("volume" | "bind" | "tmpfs")))
        .filter(|m| {
            m["type"] != "bind"
                || m["options"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o == "rbind" || o == "bind"))
        })
        .filter(|m| {
            !matches!(
                m["destination"].as_str(),
                Some("/etc/hosts" | "/etc/resolv.conf" | "/etc/hostname")
            )
        })
        .map(|m| {
            let options = strings(&m["options"]);
            let rw = !options.contains(&"ro");
            let kind = m["type"].as_str().unwrap_or_default();
            let mut out = json!({
                "Type": kind,
                "Source": m["source"],
                "Destination": m["destination"],
                "Mode": if rw { "" } else { "ro" },
                "RW": rw,
            });
            if kind == "volume" {
                out["Name"] = m["source"].clone();
                out["Driver"] = json!("local");
            }
            out
        })
        .collect();
    let ports: serde_json::Map<String, Value> = network["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["container_port"],
                    p["protocol"].as_str().unwrap_or("tcp")
                ),
                json!([{ "HostIp": p["host_ip"], "HostPort": p["host_port"].to_string() }]),
            )
        })
        .collect();
    let networks: serde_json::Map<String, Value> = network["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                json!({ "Aliases": n["aliases"], "IPAddress": n["ip"] }),
            )
        })
        .collect();
    json!({
        "Id": container.id,
        "Created": rfc3339(to_system(&container.created_at)),
        "Path": args.first().cloned().unwrap_or(Value::Null),
        "Args": args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": status,
            "Running": status == "running" || status == "paused",
            "Paused": status == "paused",
            "Restarting": false,
            "OOMKilled": exit.oom_killed,
            "Dead": false,
            "Pid": task.filter(|t| matches!(t.status(), TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing)).map_or(0, |t| t.pid),
            "ExitCode": exit.exit_code,
            "Error": "",
            "StartedAt": rfc3339(task.and_then(|t| to_system(&t.started_at))),
            "FinishedAt": rfc3339(to_system(&exit.exited_at)),
        },
        "Image": container.image_digest,
        "Name": format!("/{}", container.name),
        "Driver": container.snapshotter,
        "Platform": "linux",
        "HostConfig": {
            "NetworkMode": network["mode"].as_str().unwrap_or("none"),
            "PortBindings": ports,
            "RestartPolicy": { "Name": restart_name, "MaximumRetryCount": restart.max_retries },
            "AutoRemove": run["auto_remove"].as_bool().unwrap_or(false),
            "Runtime": container.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            "Memory": resources["memory"]["limit"].as_i64().unwrap_or(0),
            "MemorySwap": resources["memory"]["swap"].as_i64().unwrap_or(0),
            "MemoryReservation": resources["memory"]["reservation"].as_i64().unwrap_or(0),
            "NanoCpus": nano_cpus,
            "CpuShares": cpu["shares"].as_u64().unwrap_or(0),
            "CpusetCpus": cpu["cpus"].as_str().unwrap_or(""),
            "PidsLimit": resources["pids"]["limit"].as_i64().unwrap_or(0),
            "Privileged": run["privileged"].as_bool().unwrap_or(false),
            "ReadonlyRootfs": spec["root"]["readonly"].as_bool().unwrap_or(false),
            "CapAdd": run["cap_add"],
            "CapDrop": run["cap_drop"],
            "LogConfig": container.log_config.as_ref().map(|l| json!({
                "Type": "json-file",
                "Config": { "path": l.path, "max-size": l.max_size.to_string(), "max-file": l.max_files.to_string() },
            })),
            "Dns": network["dns"],
            "ExtraHosts": network["extra_hosts"],
        },
        "GraphDriver": {
            "Name": container.snapshotter,
            "Data": { "SnapshotKey": container.snapshot_key },
        },
        "Mounts": mounts,
        "Config": {
            "Hostname": spec["hostname"],
            "User": spec["annotations"][spec::USER_ANNOTATION].as_str().map(Value::from).unwrap_or_else(|| {
                let user = &spec["process"]["user"];
                json!(format!("{}:{}", user["uid"].as_u64().unwrap_or(0), user["gid"].as_u64().unwrap_or(0)))
            }),
            "Env": spec["process"]["env"],
            "Cmd": run["cmd"],
            "Entrypoint": run["entrypoint"],
            "Image": familiar(&container.image),
            "WorkingDir": spec["process"]["cwd"],
            "Labels": container.labels,
            "Tty": spec["process"]["terminal"].as_bool().unwrap_or(false),
            "OpenStdin": task.is_some_and(|t| t.stdin),
            "StopSignal": format!("{}", stop_signal(container)),
            "StopTimeout": stop_timeout(container).as_secs(),
        },
        "NetworkSettings": {
            "Ports": ports,
            "Networks": networks,
        },
    })
}

/// `docker ps` filters: `id=`, `name=`, `label=k[=v]`, `status=`, `ancestor=`, `exited=`.
pub struct PsFilter {
    key: String,
    value: String,
}

impl PsFilter {
    /// Parses `key=value`.
    pub fn parse(s: &str) -> anyhow::Result<PsFilter> {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("invalid filter {s:?}: expected KEY=VALUE"))?;
        if !matches!(
            key,
            "id" | "name" | "label" | "status" | "ancestor" | "exited"
        ) {
            bail!("invalid filter {key:?}: expected id, name, label, status, ancestor or exited");
        }
        Ok(PsFilter {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// True if the container passes this filter.
    pub fn matches(&self, c: &cpb::Container, task: Option<&tpb::Task>) -> bool {
        let v = self.value.as_str();
        match self.key.as_str() {
            "id" => c.id.starts_with(v),
            "name" => c.name.contains(v.trim_start_matches('/')),
            "label" => match v.split_once('=') {
                Some((k, val)) => c.labels.get(k).is_some_and(|x| x == val),
                None => c.labels.contains_key(v),
            },
            "status" => state_name(task) == v,
            "ancestor" => {
                c.image == v
                    || familiar(&c.image) == v
                    || familiar(&c.image).split(':').next() == Some(v)
            }
            "exited" => task.is_some_and(|t| {
                t.status() == TaskStatus::Stopped
                    && t.exit_status
                        .as_ref()
                        .map(|e| e.exit_code.to_string())
                        .as_deref()
                        == Some(v)
            }),
            _ => false,
        }
    }
}

/// A row of `ps`.
struct PsRow {
    container: cpb::Container,
    task: Option<tpb::Task>,
    size: Option<String>,
}

impl PsRow {
    fn field(&self, name: &str, trunc: bool) -> Option<String> {
        let c = &self.container;
        Some(match name {
            "ID" => {
                if trunc {
                    c.id.chars().take(12).collect()
                } else {
                    c.id.clone()
                }
            }
            "Image" => familiar(&c.image).to_owned(),
            "Command" => {
                let cmd = command_line(c);
                if trunc && cmd.chars().count() > 20 {
                    format!("\"{}…\"", cmd.chars().take(19).collect::<String>())
                } else {
                    format!("\"{cmd}\"")
                }
            }
            "CreatedAt" => rfc3339(to_system(&c.created_at)),
            "RunningFor" => to_system(&c.created_at)
                .map(|t| format!("{} ago", human_duration(since(t))))
                .unwrap_or_default(),
            "Status" => status_text(self.task.as_ref()),
            "State" => state_name(self.task.as_ref()).to_owned(),
            "Ports" => ports_text(c),
            "Names" => c.name.clone(),
            "Labels" => {
                let mut labels: Vec<String> =
                    c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                labels.join(",")
            }
            "Size" => self.size.clone().unwrap_or_default(),
            "Networks" => extension(c, EXT_NETWORK)["networks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["name"].as_str())
                .collect::<Vec<_>>()
                .join(","),
            _ => return None,
        })
    }

    fn json(&self) -> Value {
        let fields = [
            "ID",
            "Image",
            "Command",
            "CreatedAt",
            "RunningFor",
            "Status",
            "State",
            "Ports",
            "Names",
            "Labels",
            "Size",
            "Networks",
        ];
        Value::Object(
            fields
                .iter()
                .map(|f| ((*f).to_owned(), json!(self.field(f, false))))
                .collect(),
        )
    }
}

/// Renders a `--format` template for one row (see [`output::render`]).
fn render(template: &str, row: &PsRow) -> anyhow::Result<String> {
    let Value::Object(fields) = row.json() else {
        return Ok(String::new());
    };
    output::render(template, &fields)
}

/// `berthctl ps` arguments.
#[derive(clap::Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(long, short = 'a')]
    all: bool,
    /// Only display container IDs.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Show the n last created containers (includes all states).
    #[arg(long = "last", value_name = "N")]
    last: Option<usize>,
    /// Show the latest created container (includes all states).
    #[arg(long, short = 'l')]
    latest: bool,
    /// Display the size of each container's writable layer.
    #[arg(long, short = 's')]
    size: bool,
    /// Filter (repeatable): id=, name=, label=KEY[=VALUE], status=, ancestor=, exited=.
    #[arg(long, short = 'f')]
    filter: Vec<String>,
    /// Output: `json`, `table`, or a template like `{{.ID}}\t{{.Names}}`.
    #[arg(long)]
    format: Option<String>,
    /// Do not truncate output.
    #[arg(long)]
    no_trunc: bool,
}

/// `berthctl ps`.
pub async fn ps(ctx: &Context, args: PsArgs) -> anyhow::Result<ExitCode> {
    let filters = args
        .filter
        .iter()
        .map(|f| PsFilter::parse(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut c = Clients::new(ctx).await?;
    let mut containers = c.list().await?;
    let mut tasks = c.tasks().await?;
    containers.sort_by_key(|c| {
        std::cmp::Reverse(
            c.created_at
                .map(|t| (t.seconds, t.nanos))
                .unwrap_or_default(),
        )
    });
    let last = if args.latest { Some(1) } else { args.last };
    let all = args.all || last.is_some();
    let mut rows: Vec<PsRow> = containers
        .into_iter()
        .map(|container| {
            let task = tasks.remove(&container.id);
            PsRow {
                container,
                task,
                size: None,
            }
        })
        .filter(|r| {
            all || matches!(
                r.task.as_ref().map(|t| t.status()),
                Some(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing)
            )
        })
        .filter(|r| {
            filters
                .iter()
                .all(|f| f.matches(&r.container, r.task.as_ref()))
        })
        .collect();
    if let Some(n) = last {
        rows.truncate(n);
    }
    if args.size {
        let mut snapshots = SnapshotsClient::new(connect(ctx, Service::Snapshots).await?);
        for row in &mut rows {
            let size = snapshots
                .usage(spb::UsageRequest {
                    snapshotter: row.container.snapshotter.clone(),
                    key: row.container.snapshot_key.clone(),
                })
                .await
                .map(|u| crate::snapshot::human_size(u.into_inner().size))
                .unwrap_or_else(|_| "-".into());
            row.size = Some(size);
        }
    }
    let format = args.format.as_deref().or(match ctx.output {
        Output::Json => Some("json"),
        Output::Table => None,
    });
    if args.quiet {
        for r in &rows {
            println!("{}", r.field("ID", !args.no_trunc).unwrap_or_default());
        }
        return Ok(ExitCode::SUCCESS);
    }
    match format {
        Some("json") => {
            let all: Vec<Value> = rows.iter().map(PsRow::json).collect();
            println!("{}", output::json(&all)?);
        }
        Some(template) if template != "table" => {
            let template = match output::table_template(template) {
                Some((header, template)) => {
                    println!("{header}");
                    template
                }
                None => template,
            };
            for r in &rows {
                println!("{}", render(template, r)?);
            }
        }
        _ => {
            let mut headers = vec![
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ];
            if args.size {
                headers.push("SIZE");
            }
            let trunc = !args.no_trunc;
            println!(
                "{}",
                output::table(
                    &headers,
                    rows.iter().map(|r| {
                        let mut cells: Vec<String> = [
                            "ID",
                            "Image",
                            "Command",
                            "RunningFor",
                            "Status",
                            "Ports",
                            "Names",
                        ]
                        .iter()
                        .map(|f| r.field(f, trunc).unwrap_or_default())
                        .collect();
                        if args.size {
                            cells.push(r.field("Size", trunc).unwrap_or_default());
                        }
                        cells
                    })
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `berthctl inspect CONTAINER...`: Docker's JSON view.
pub async fn inspect(
    ctx: &Context,
    names: Vec<String>,
    format: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let mut out = Vec::new();
    let mut failed = false;
    for name in &names {
        match c.find(name).await {
            Ok(container) => {
                let task = c.task(&container.id).await?;
                out.push(inspect_json(&container, task.as_ref()));
            }
            Err(e) => {
                eprintln!("berthctl: error: {e:#}");
                failed = true;
            }
        }
    }
    match format.as_deref() {
        None | Some("json") => println!("{}", output::json(&out)?),
        Some(path) => {
            for v in &out {
                println!("{}", pick(v, path)?);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `{{.State.ExitCode}}` (or `.State.ExitCode`) applied to an inspect document.
fn pick(v: &Value, template: &str) -> anyhow::Result<String> {
    let path = template
        .trim()
        .trim_start_matches("{{")
        .trim_end_matches("}}")
        .trim();
    let (json_fn, path) = match path.strip_prefix("json ") {
        Some(p) => (true, p.trim()),
        None => (false, path),
    };
    let mut cur = v;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        cur = cur
            .get(part)
            .with_context(|| format!("format {template:?}: no field {part:?}"))?;
    }
    Ok(match cur {
        Value::String(s) if !json_fn => s.clone(),
        other => other.to_string(),
    })
}

/// `berthctl container` subcommands.
#[derive(clap::Subcommand)]
pub enum ContainerCommand {
    /// List containers.
    #[command(alias = "list")]
    Ls(PsArgs),
    /// Remove all stopped containers.
    Prune,
}

impl ContainerCommand {
    /// The command's name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            ContainerCommand::Ls(_) => "container ls",
            ContainerCommand::Prune => "container prune",
        }
    }
}

/// Runs a `container` subcommand.
pub async fn container_cmd(ctx: &Context, cmd: ContainerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ContainerCommand::Ls(args) => ps(ctx, args).await,
        ContainerCommand::Prune => prune(ctx).await,
    }
}

/// Arguments of commands that act on containers one by one.
#[derive(clap::Args)]
pub struct ManyArgs {
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `stop` and `restart` arguments.
#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container (default: its --stop-timeout, else 10).
    #[arg(long, short = 't', alias = "time")]
    timeout: Option<u64>,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kill` arguments.
#[derive(clap::Args)]
pub struct KillArgs {
    /// Signal to send.
    #[arg(long, short = 's', default_value = "KILL")]
    signal: String,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `rm` arguments.
#[derive(clap::Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL).
    #[arg(long, short = 'f')]
    force: bool,
    /// Remove the anonymous volumes associated with the container.
    #[arg(long, short = 'v')]
    volumes: bool,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Runs `act` on each container, printing what `print` returns; errors are printed one per
/// line and make the command fail at the end (as Docker does).
macro_rules! each {
    ($c:expr, $names:expr, |$container:ident| $body:expr) => {{
        let mut failed = false;
        for name in $names {
            let result: anyhow::Result<()> = async {
                let $container = $c.find(&name).await?;
                $body;
                println!("{name}");
                Ok(())
            }
            .await;
            if let Err(e) = result {
                eprintln!("berthctl: error: {e:#}");
                failed = true;
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }};
}

/// `berthctl stop`.
pub async fn stop(ctx: &Context, args: StopArgs) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let timeout = args.timeout.map(Duration::from_secs);
    each!(c, args.containers, |container| c
        .stop(&container, timeout)
        .await?)
}

/// `berthctl restart`: stop (if running), then start again.
pub async fn restart(ctx: &Context, args: StopArgs) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let timeout = args.timeout.map(Duration::from_secs);
    each!(c, args.containers, |container| {
        c.stop(&container, timeout).await?;
        restart_task(&mut c, &container).await?
    })
}

/// Deletes the container's stopped task (if any) and creates and starts a new one with the
/// same stdio settings.
pub async fn restart_task(c: &mut Clients, container: &cpb::Container) -> anyhow::Result<()> {
    let previous = c.task(&container.id).await?;
    if let Some(t) = &previous {
        match t.status() {
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                bail!("container {} is already running", container.name)
            }
            TaskStatus::Created => {
                c.start(&container.id, "").await?;
                return Ok(());
            }
            _ => {
                c.delete_task(&container.id).await?;
            }
        }
    }
    let spec = spec_json(container);
    let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
    let stdin = previous.as_ref().map_or_else(
        || spec["annotations"][spec::STDIN_OPEN_ANNOTATION] == "true",
        |t| t.stdin,
    );
    c.create_task(container, stdin, terminal).await?;
    c.start(&container.id, "").await?;
    Ok(())
}

/// `berthctl kill`.
pub async fn kill(ctx: &Context, args: KillArgs) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(&args.signal)?;
    let mut c = Clients::new(ctx).await?;
    each!(c, args.containers, |container| {
        match c.task(&container.id).await? {
            Some(t)
                if matches!(
                    t.status(),
                    TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing
                ) =>
            {
                c.kill(&container.id, signal, false).await?
            }
            _ => bail!("container {} is not running", container.name),
        }
    })
}

/// `berthctl rm`.
pub async fn rm(ctx: &Context, args: RmArgs) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    each!(c, args.containers, |container| remove(
        &mut c,
        &container,
        args.force,
        args.volumes
    )
    .await?)
}

/// Names of the anonymous volumes that are (`dangling`) or are not used by any container.
async fn anonymous_volumes(c: &mut Clients, dangling: bool) -> anyhow::Result<Vec<String>> {
    Ok(c.volumes
        .list(vpb::ListVolumesRequest {
            filters: vec![format!("anonymous==true,dangling=={dangling}")],
            usage: false,
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .volumes
        .into_iter()
        .map(|v| v.name)
        .collect())
}

/// Removes a container and its task; a running one only with `force` (SIGKILL first). With
/// `volumes`, the anonymous volumes that only this container used go too (those in use before
/// and unused after).
pub async fn remove(
    c: &mut Clients,
    container: &cpb::Container,
    force: bool,
    volumes: bool,
) -> anyhow::Result<()> {
    let in_use = if volumes {
        anonymous_volumes(c, false).await?
    } else {
        Vec::new()
    };
    if let Some(task) = c.task(&container.id).await? {
        let live = matches!(
            task.status(),
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing | TaskStatus::Created
        );
        if live && task.status() != TaskStatus::Created && !force {
            return Err(CallError {
                code: Code::FailedPrecondition,
                message: format!(
                    "cannot remove container {}: it is {}; stop it first or use rm -f",
                    container.name,
                    state_name(Some(&task))
                ),
            }
            .into());
        }
        if live {
            c.kill(&container.id, Signal::SIGKILL, true).await?;
            c.wait(&container.id, None).await?;
        }
        c.delete_task(&container.id).await?;
    }
    c.containers
        .delete(cpb::DeleteContainerRequest {
            id: container.id.clone(),
        })
        .await
        .map_err(rpc)?;
    if !in_use.is_empty() {
        for name in anonymous_volumes(c, true).await? {
            if in_use.contains(&name) {
                c.volumes
                    .remove(vpb::RemoveVolumeRequest { name, force: false })
                    .await
                    .map_err(rpc)?;
            }
        }
    }
    Ok(())
}

/// `berthctl wait`: prints each container's exit code once it stops.
pub async fn wait(ctx: &Context, args: ManyArgs) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let mut failed = false;
    for name in args.containers {
        let result: anyhow::Result<u32> = async {
            let container = c.find(&name).await?;
            match c.task(&container.id).await? {
                None => bail!("container {name} has no task: start it first"),
                Some(_) => Ok(c
                    .wait(&container.id, None)
                    .await?
                    .map_or(0, |s| s.exit_code)),
            }
        }
        .await;
        match result {
            Ok(code) => println!("{code}"),
            Err(e) => {
                eprintln!("berthctl: error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `berthctl pause` / `unpause`.
pub async fn pause(ctx: &Context, args: ManyArgs, freeze: bool) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    each!(c, args.containers, |container| {
        let id = container.id.clone();
        if freeze {
            c.tasks
                .pause(tpb::PauseTaskRequest { container_id: id })
                .await
                .map_err(rpc)?;
        } else {
            c.tasks
                .resume(tpb::ResumeTaskRequest { container_id: id })
                .await
                .map_err(rpc)?;
        }
    })
}

/// `berthctl update` arguments: new limits for containers, applied at once when they run.
#[derive(clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    limits: crate::run::LimitArgs,
    /// Restart policy: no, always, unless-stopped, on-failure[:max-retries].
    #[arg(long)]
    restart: Option<String>,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Merges the set fields of `new` into `old` (objects key by key, other values replaced).
fn merge(old: &mut Value, new: &Value) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, v) in n {
                merge(o.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (old, new) if !new.is_null() => *old = new.clone(),
        _ => {}
    }
}

/// `berthctl update`: validated by the spec builder, applied to the running task (if any)
/// and recorded in the container's spec.
pub async fn update(ctx: &Context, args: UpdateArgs) -> anyhow::Result<ExitCode> {
    let options = spec::RunOptions {
        cmd: vec!["true".into()],
        ..args.limits.options()?
    };
    let restart = args
        .restart
        .as_deref()
        .map(crate::run::restart_policy)
        .transpose()?;
    let built = spec::build(&Default::default(), &options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut resources = serde_json::to_value(&built)?["linux"]["resources"].take();
    if let Some(r) = resources.as_object_mut() {
        // Device rules are not limits; keep the container's own.
        r.remove("devices");
    }
    let mut c = Clients::new(ctx).await?;
    each!(c, args.containers, |container| {
        let mut container = container;
        if let Some(task) = c.task(&container.id).await?
            && matches!(
                task.status(),
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing
            )
        {
            c.tasks
                .update(tpb::UpdateTaskRequest {
                    container_id: container.id.clone(),
                    resources: serde_json::to_vec(&resources)?,
                })
                .await
                .map_err(rpc)?;
        }
        let mut spec = spec_json(&container);
        merge(&mut spec["linux"]["resources"], &resources);
        container.spec = serde_json::to_vec(&spec)?;
        let mut paths = vec!["spec".to_owned()];
        if let Some(r) = restart {
            container.restart_policy = Some(r);
            paths.push("restart_policy".into());
        }
        c.containers
            .update(cpb::UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask { paths }),
            })
            .await
            .map_err(rpc)?;
    })
}

/// `berthctl rename OLD NEW`.
pub async fn rename(ctx: &Context, old: String, new: String) -> anyhow::Result<ExitCode> {
    crate::run::check_name(&new)?;
    let mut c = Clients::new(ctx).await?;
    let mut container = c.find(&old).await?;
    container.name = new;
    c.containers
        .update(cpb::UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .map_err(rpc)?;
    Ok(ExitCode::SUCCESS)
}

/// `berthctl top CONTAINER`: the container's processes, as `ps -ef` shows them.
pub async fn top(ctx: &Context, name: String) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let container = c.find(&name).await?;
    let processes = c
        .tasks
        .pids(tpb::PidsRequest {
            container_id: container.id.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .processes;
    let rows: Vec<Vec<String>> = processes.iter().map(|p| proc_row(p.pid)).collect();
    match ctx.output {
        Output::Json => {
            let all: Vec<Value> = rows
                .iter()
                .map(|r| json!({"uid": r[0], "pid": r[1], "ppid": r[2], "stime": r[3], "time": r[4], "cmd": r[5]}))
                .collect();
            println!("{}", output::json(&all)?);
        }
        Output::Table => println!(
            "{}",
            output::table(&["UID", "PID", "PPID", "STIME", "TIME", "CMD"], rows)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// uid, pid, ppid, start time, cpu time and command line of a host process, from /proc.
fn proc_row(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let field = |i: usize| after.get(i).copied().unwrap_or("0");
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu =
        (field(11).parse::<u64>().unwrap_or(0) + field(12).parse::<u64>().unwrap_or(0)) / ticks;
    let uptime_start = field(19).parse::<u64>().unwrap_or(0) / ticks;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .map(|v| v.trim().parse::<u64>().ok())
            })
        })
        .flatten()
        .unwrap_or(0);
    let started = SystemTime::UNIX_EPOCH + Duration::from_secs(boot + uptime_start);
    let stime = humantime::format_rfc3339_seconds(started).to_string();
    let stime = stime.get(11..16).unwrap_or("").to_owned();
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            })
        })
        .unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        uid,
        pid.to_string(),
        field(1).to_owned(),
        stime,
        format!("{:02}:{:02}:{:02}", cpu / 3600, cpu / 60 % 60, cpu % 60),
        cmd,
    ]
}

/// `berthctl container prune`: removes every stopped container.
pub async fn prune(ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let tasks = c.tasks().await?;
    let mut removed = Vec::new();
    for container in c.list().await? {
        let stopped = match tasks.get(&container.id) {
            Some(t) => t.status() == TaskStatus::Stopped,
            None => false,
        };
        if stopped {
            remove(&mut c, &container, false, false).await?;
            removed.push(container.id);
        }
    }
    match ctx.output {
        Output::Json => println!("{}", output::json(&removed)?),
        Output::Table => {
            if !removed.is_empty() {
                println!("Deleted Containers:");
                for id in &removed {
                    println!("{id}");
                }
                println!();
            }
            println!("Total reclaimed containers: {}", removed.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        let s = Duration::from_secs;
        assert_eq!(human_duration(s(0)), "Less than a second");
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(3)), "3 seconds");
        assert_eq!(human_duration(s(61)), "About a minute");
        assert_eq!(human_duration(s(300)), "5 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(3 * 3600)), "3 hours");
        assert_eq!(human_duration(s(3 * 86_400)), "3 days");
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn statuses_read_like_docker() {
        let now = SystemTime::now();
        let task = tpb::Task {
            status: TaskStatus::Stopped as i32,
            exit_status: Some(ExitStatus {
                exit_code: 3,
                exited_at: Some((now - Duration::from_secs(2)).into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(status_text(Some(&task)), "Exited (3) 2 seconds ago");
        let running = tpb::Task {
            status: TaskStatus::Running as i32,
            started_at: Some((now - Duration::from_secs(3)).into()),
            ..Default::default()
        };
        assert_eq!(status_text(Some(&running)), "Up 3 seconds");
        assert_eq!(status_text(None), "Created");
    }

    #[test]
    fn templates_render_fields() {
        let row = PsRow {
            container: cpb::Container {
                id: "a".repeat(64),
                name: "web".into(),
                image: "docker.io/library/busybox:latest".into(),
                ..Default::default()
            },
            task: None,
            size: None,
        };
        assert_eq!(
            render("{{.ID}}\\t{{ .Names }} {{.Image}}", &row).unwrap(),
            format!("{}\tweb busybox:latest", "a".repeat(64))
        );
        assert!(render("{{.Nope}}", &row).is_err());
        assert!(render("{{.ID", &row).is_err());
        let v = inspect_json(&row.container, None);
        assert_eq!(pick(&v, "{{.State.Status}}").unwrap(), "created");
        assert_eq!(pick(&v, "{{.Name}}").unwrap(), "/web");
    }
}
