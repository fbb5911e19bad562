//! CreateContainer, StartContainer, StopContainer and RemoveContainer.
//!
//! Create makes the writable snapshot and the container record (nothing of either is left when
//! it fails); Start creates and starts the task; Stop signals it (the stop signal, then SIGKILL
//! after the timeout); Remove kills what still runs and deletes task, record and snapshot. Stop
//! and Remove of something already gone succeed, as the CRI requires.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use berth_api::Service;
use berth_api::berth::containers::v1 as containers;
use berth_api::berth::images::v1 as images;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::snapshots::v1 as snapshots;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::types::v1::{LogConfig, TaskStatus};
use berth_api::runtime::v1 as cri;
use serde_json::Value;
use tonic::{Code, Status};

use super::record::{ATTEMPT_LABEL, EXTENSION, KIND_LABEL, Meta, MountMeta, NAME_LABEL};
use super::{containers_client, events, find, image, remote, spec, status, task, tasks_client};
use crate::Cri;
use crate::sandbox::record::{NamespaceMode, State as PodState};

/// How long Stop waits for the process to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// CreateContainer: returns the new container's id.
#[tracing::instrument(skip_all, fields(pod = %req.pod_sandbox_id))]
pub async fn create(cri: &Cri, req: cri::CreateContainerRequest) -> Result<String, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("CreateContainer needs a container config"))?;
    let metadata = config
        .metadata
        .clone()
        .ok_or_else(|| Status::invalid_argument("the container config has no metadata"))?;
    if metadata.name.is_empty() {
        return Err(Status::invalid_argument(
            "the container config's metadata has an empty name",
        ));
    }
    let pod = cri.sandboxes.get(&req.pod_sandbox_id)?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready: cannot create container {:?} in it",
            pod.id, metadata.name
        )));
    }
    let image_spec = config.image.clone().unwrap_or_default();
    let tasks_channel = cri.containers.channel(cri, Service::Tasks).await?;
    let images_channel = cri.containers.channel(cri, Service::Images).await?;

    let _creating = cri.containers.creating.lock().await;
    if let Some(holder) = holder(cri, &pod.id, &metadata).await? {
        let name = format!(
            "{}_{}_{}_{}_{}",
            metadata.name,
            pod.metadata.name,
            pod.metadata.namespace,
            pod.metadata.uid,
            metadata.attempt
        );
        return Err(Status::already_exists(format!(
            "failed to reserve container name {name:?}: name {name:?} is reserved for {holder:?}"
        )));
    }
    let found = image::find(cri, &image_spec.image).await?;
    let id = random_id()?;
    let pid_mode = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|sc| sc.namespace_options.as_ref())
        .map_or(pod.pid_mode, |ns| NamespaceMode::from_cri(ns.pid));
    let target_pid_ns = if pid_mode == NamespaceMode::Target {
        let target = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|sc| sc.namespace_options.as_ref())
            .map(|ns| ns.target_id.clone())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| pod.security.target_id.clone());
        Some(target_pid_ns(cri, &target).await?)
    } else {
        None
    };
    let spec = spec::build(&spec::Input {
        id: &id,
        config: &config,
        pod: &pod,
        image: &found.config,
        image_name: &found.name,
        target_pid_ns,
    })?;
    let log_path = match (pod.log_directory.as_str(), config.log_path.as_str()) {
        (_, "") => String::new(),
        (dir, p) => {
            let path = Path::new(dir).join(p);
            if !path.is_absolute() {
                return Err(Status::invalid_argument(format!(
                    "log path {p:?} is relative and the pod sandbox has no log directory"
                )));
            }
            path.display().to_string()
        }
    };
    let created_at = now_ns();
    let meta = Meta {
        name: metadata.name.clone(),
        attempt: metadata.attempt,
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        image: image_spec.image.clone(),
        user_specified_image: image_spec.user_specified_image.clone(),
        image_id: found.id.clone(),
        image_ref: found.repo_digest.clone(),
        log_path: log_path.clone(),
        mounts: config
            .mounts
            .iter()
            .map(|m| MountMeta {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
            })
            .collect(),
        start_error: String::new(),
        created_at,
    };
    let mut labels: HashMap<String, String> = config.labels.clone();
    labels.insert(KIND_LABEL.into(), "container".into());
    labels.insert(NAME_LABEL.into(), metadata.name.clone());
    labels.insert(ATTEMPT_LABEL.into(), metadata.attempt.to_string());

    let unpacked = ImagesClient::new(images_channel)
        .unpack(images::UnpackRequest {
            name: found.name.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| remote("images", s))?
        .into_inner();
    let mut snaps = SnapshotsClient::new(cri.containers.channel(cri, Service::Snapshots).await?);
    snaps
        .prepare(snapshots::PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: id.clone(),
            parent: unpacked.chain_id,
            labels: HashMap::new(),
        })
        .await
        .map_err(|s| remote("snapshots", s))?;
    let mut record = containers::Container {
        id: id.clone(),
        labels,
        image: found.name.clone(),
        image_digest: found
            .repo_digest
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned(),
        runtime: Some(containers::Runtime {
            name: pod.runtime.clone(),
            options: Vec::new(),
        }),
        spec: serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))?,
        snapshot_key: id.clone(),
        log_config: Some(LogConfig {
            path: log_path,
            ..Default::default()
        }),
        sandbox_id: pod.id.clone(),
        extensions: HashMap::from([(EXTENSION.to_owned(), meta.encode())]),
        ..Default::default()
    };
    if pod.netns_path.is_empty() {
        // A host-network pod: the tasks service must not make a network namespace (mode
        // none would); its containers use the host's.
        record.extensions.insert(
            berth_tasks::network::EXTENSION.to_owned(),
            br#"{"mode":"host"}"#.to_vec(),
        );
    }
    let created = containers::containers_client::ContainersClient::new(tasks_channel)
        .create(containers::CreateContainerRequest {
            container: Some(record),
        })
        .await;
    if let Err(s) = created {
        // The record was not made: the snapshot is ours to remove.
        let _ = snaps
            .remove(snapshots::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: id.clone(),
            })
            .await;
        return Err(remote("tasks", s));
    }
    events::emit(cri, &id, cri::ContainerEventType::ContainerCreatedEvent).await;
    Ok(id)
}

/// The id of the container of pod `pod` already holding this name and attempt.
async fn holder(
    cri: &Cri,
    pod: &str,
    metadata: &cri::ContainerMetadata,
) -> Result<Option<String>, Status> {
    let filter = format!(
        "sandbox_id=={pod},labels.\"{NAME_LABEL}\"=={},labels.\"{ATTEMPT_LABEL}\"=={}",
        quote(&metadata.name),
        metadata.attempt
    );
    let list = containers_client(cri)
        .await?
        .list(containers::ListContainersRequest {
            filters: vec![filter],
        })
        .await
        .map_err(|s| remote("tasks", s))?
        .into_inner()
        .containers;
    Ok(list.into_iter().next().map(|c| c.id))
}

/// A filter value in double quotes.
pub(crate) fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `/proc/<pid>/ns/pid` of the running container `target` (pid mode TARGET).
async fn target_pid_ns(cri: &Cri, target: &str) -> Result<String, Status> {
    if target.is_empty() {
        return Err(Status::invalid_argument(
            "pid namespace mode TARGET needs namespace_options.target_id",
        ));
    }
    match task(cri, target).await? {
        Some(t) if t.status() == TaskStatus::Running && t.pid > 0 => {
            Ok(format!("/proc/{}/ns/pid", t.pid))
        }
        _ => Err(Status::failed_precondition(format!(
            "pid namespace target container {target:?} is not running"
        ))),
    }
}

/// StartContainer: creates and starts the container's task.
#[tracing::instrument(skip(cri))]
pub async fn start(cri: &Cri, id: &str) -> Result<(), Status> {
    let (c, mut meta) = find(cri, id).await?;
    if let Some(t) = task(cri, &c.id).await? {
        return Err(Status::failed_precondition(format!(
            "container {} is {}: only a created container can be started",
            c.id,
            match t.status() {
                TaskStatus::Stopped => "exited",
                _ => "running",
            }
        )));
    }
    if !meta.start_error.is_empty() {
        return Err(Status::failed_precondition(format!(
            "container {} failed to start before ({}): remove it",
            c.id, meta.start_error
        )));
    }
    let pod = cri.sandboxes.get(&c.sandbox_id)?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} of container {} is not ready",
            pod.id, c.id
        )));
    }
    let spec: Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
    let stdin = spec["annotations"][berth_tasks::spec::STDIN_OPEN_ANNOTATION] == "true";
    let mut client = tasks_client(cri).await?;
    if let Err(s) = client
        .create(tasks::CreateTaskRequest {
            container_id: c.id.clone(),
            rootfs: Vec::new(),
            stdin,
            terminal,
        })
        .await
    {
        // Nothing of the task is left (the tasks service cleans up a failed create). A
        // concurrent start (AlreadyExists) or an unreachable service is no failure of the
        // container's own; a container removed meanwhile has no record to note it in.
        if !matches!(s.code(), Code::AlreadyExists | Code::Unavailable) {
            meta.start_error = s.message().to_owned();
            match save_meta(cri, &c.id, &meta).await {
                Err(e) if e.code() != Code::NotFound => return Err(e),
                _ => {}
            }
        }
        return Err(remote("tasks", s));
    }
    if let Err(s) = client
        .start(tasks::StartRequest {
            container_id: c.id.clone(),
            exec_id: String::new(),
        })
        .await
    {
        // The task is removed again; the container reports the failure as exited.
        let _ = client
            .kill(tasks::KillRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
                signal: libc::SIGKILL as u32,
                all: true,
            })
            .await;
        let _ = client
            .delete(tasks::DeleteTaskRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            })
            .await;
        meta.start_error = s.message().to_owned();
        save_meta(cri, &c.id, &meta).await?;
        return Err(remote("tasks", s));
    }
    events::emit(cri, &c.id, cri::ContainerEventType::ContainerStartedEvent).await;
    Ok(())
}

/// Rewrites the container's CRI view.
pub(crate) async fn save_meta(cri: &Cri, id: &str, meta: &Meta) -> Result<(), Status> {
    containers_client(cri)
        .await?
        .update(containers::UpdateContainerRequest {
            container: Some(containers::Container {
                id: id.to_owned(),
                extensions: HashMap::from([(EXTENSION.to_owned(), meta.encode())]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("extensions.{EXTENSION}")],
            }),
        })
        .await
        .map_err(|s| remote("tasks", s))?;
    Ok(())
}

/// StopContainer: the stop signal, then SIGKILL after `timeout` seconds. A container that is
/// gone, never started or already exited is stopped.
#[tracing::instrument(skip(cri))]
pub async fn stop(cri: &Cri, id: &str, timeout: i64) -> Result<(), Status> {
    let c = match find(cri, id).await {
        Ok((c, _)) => c,
        Err(s) if s.code() == Code::NotFound => return Ok(()),
        Err(s) => return Err(s),
    };
    let Some(t) = task(cri, &c.id).await? else {
        return Ok(());
    };
    if t.status() == TaskStatus::Stopped {
        return Ok(());
    }
    let mut client = tasks_client(cri).await?;
    if timeout > 0 {
        let spec: Value = serde_json::from_slice(&c.spec).unwrap_or_default();
        let signal = spec["annotations"][berth_tasks::spec::STOP_SIGNAL_ANNOTATION]
            .as_str()
            .and_then(signal_number)
            .unwrap_or(libc::SIGTERM);
        kill(&mut client, &c.id, signal, false).await?;
        let waited = tokio::time::timeout(
            Duration::from_secs(timeout.unsigned_abs()),
            wait(&mut client, &c.id),
        )
        .await;
        if let Ok(result) = waited {
            return result;
        }
    }
    kill(&mut client, &c.id, libc::SIGKILL, true).await?;
    match tokio::time::timeout(KILL_WAIT, wait(&mut client, &c.id)).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "container {} did not exit {} s after SIGKILL",
            c.id,
            KILL_WAIT.as_secs()
        ))),
    }
}

/// Sends `signal`; a process that is already gone is not an error.
async fn kill(
    client: &mut tasks::tasks_client::TasksClient<berth_api::client::Channel>,
    id: &str,
    signal: i32,
    all: bool,
) -> Result<(), Status> {
    match client
        .kill(tasks::KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
        Err(s) => Err(remote("tasks", s)),
    }
}

async fn wait(
    client: &mut tasks::tasks_client::TasksClient<berth_api::client::Channel>,
    id: &str,
) -> Result<(), Status> {
    match client
        .wait(tasks::WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(remote("tasks", s)),
    }
}

/// `SIGTERM`, `SIGRTMIN+3` or a number as a signal number.
fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return Some(n);
    }
    if let Some(off) = name.strip_prefix("SIGRTMIN+") {
        return off.parse::<i32>().ok().map(|n| libc::SIGRTMIN() + n);
    }
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// RemoveContainer: kills the container if it runs, deletes its task, record and snapshot. A
/// container that is gone is removed.
#[tracing::instrument(skip(cri))]
pub async fn remove(cri: &Cri, id: &str) -> Result<(), Status> {
    let c = match find(cri, id).await {
        Ok((c, _)) => c,
        Err(s) if s.code() == Code::NotFound => return Ok(()),
        Err(s) => return Err(s),
    };
    if task(cri, &c.id).await?.is_some() {
        stop(cri, &c.id, 0).await?;
        match tasks_client(cri)
            .await?
            .delete(tasks::DeleteTaskRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(remote("tasks", s)),
        }
    }
    let last = status::joined(cri, &c.id).await.map(|j| j.status());
    match containers_client(cri)
        .await?
        .delete(containers::DeleteContainerRequest { id: c.id.clone() })
        .await
    {
        Ok(_) => {
            if let Ok(last) = last {
                events::emit_deleted(cri, last, &c.sandbox_id);
            }
            Ok(())
        }
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(remote("tasks", s)),
    }
}

/// 64 random hex digits.
fn random_id() -> Result<String, Status> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom")
            .map_err(|e| Status::internal(format!("/dev/urandom: {e}")))?,
        &mut bytes,
    )
    .map_err(|e| Status::internal(format!("/dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Now, in nanoseconds since the epoch.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_become_numbers() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("SIGRTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
    }
}
