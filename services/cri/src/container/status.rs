//! ListContainers, StreamContainers and ContainerStatus: the CRI view of container records and
//! their tasks.

use std::collections::HashMap;

use berth_api::berth::containers::v1 as containers;
use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::types::v1::TaskStatus;
use berth_api::runtime::v1 as cri;
use serde_json::{Value, json};
use tonic::Status;

use super::record::{KIND_LABEL, Meta};
use super::{containers_client, find, remote, task, tasks_client};
use crate::Cri;

/// Exit code reported for a container whose start failed (containerd's value).
const START_ERROR_EXIT_CODE: i32 = 128;

/// A container with its task, the input of every CRI view.
pub(crate) struct Joined {
    pub record: containers::Container,
    pub meta: Meta,
    pub task: Option<tasks::Task>,
}

impl Joined {
    /// The CRI state.
    pub fn state(&self) -> cri::ContainerState {
        match &self.task {
            None if self.meta.start_error.is_empty() => cri::ContainerState::ContainerCreated,
            None => cri::ContainerState::ContainerExited,
            Some(t) => match t.status() {
                TaskStatus::Created => cri::ContainerState::ContainerCreated,
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                    cri::ContainerState::ContainerRunning
                }
                TaskStatus::Stopped => cri::ContainerState::ContainerExited,
                TaskStatus::Unknown => cri::ContainerState::ContainerUnknown,
            },
        }
    }

    fn metadata(&self) -> cri::ContainerMetadata {
        cri::ContainerMetadata {
            name: self.meta.name.clone(),
            attempt: self.meta.attempt,
        }
    }

    fn image(&self) -> cri::ImageSpec {
        cri::ImageSpec {
            image: self.record.image.clone(),
            user_specified_image: self.meta.user_specified_image.clone(),
            ..Default::default()
        }
    }

    /// The ListContainers item.
    pub fn to_cri(&self) -> cri::Container {
        cri::Container {
            id: self.record.id.clone(),
            pod_sandbox_id: self.record.sandbox_id.clone(),
            metadata: Some(self.metadata()),
            image: Some(self.image()),
            image_ref: self.meta.image_ref.clone(),
            state: self.state() as i32,
            created_at: self.meta.created_at,
            labels: self.meta.labels.clone().into_iter().collect(),
            annotations: self.meta.annotations.clone().into_iter().collect(),
            image_id: self.meta.image_id.clone(),
        }
    }

    /// The ContainerStatus.
    pub fn status(&self) -> cri::ContainerStatus {
        let spec: Value = serde_json::from_slice(&self.record.spec).unwrap_or_default();
        let mut status = cri::ContainerStatus {
            id: self.record.id.clone(),
            metadata: Some(self.metadata()),
            state: self.state() as i32,
            created_at: self.meta.created_at,
            image: Some(self.image()),
            image_ref: self.meta.image_ref.clone(),
            image_id: self.meta.image_id.clone(),
            labels: self.meta.labels.clone().into_iter().collect(),
            annotations: self.meta.annotations.clone().into_iter().collect(),
            mounts: self
                .meta
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    selinux_relabel: m.selinux_relabel,
                    propagation: m.propagation,
                    ..Default::default()
                })
                .collect(),
            log_path: self.meta.log_path.clone(),
            resources: Some(cri::ContainerResources {
                linux: Some(resources(&spec)),
                windows: None,
            }),
            user: Some(cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: spec["process"]["user"]["uid"].as_i64().unwrap_or(0),
                    gid: spec["process"]["user"]["gid"].as_i64().unwrap_or(0),
                    supplemental_groups: spec["process"]["user"]["additionalGids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default(),
                }),
            }),
            ..Default::default()
        };
        if let Some(t) = &self.task {
            status.started_at = t.started_at.as_ref().map_or(0, ns);
            if t.status() == TaskStatus::Stopped {
                let exit = t.exit_status.unwrap_or_default();
                status.finished_at = exit.exited_at.as_ref().map_or(0, ns);
                status.exit_code = exit.exit_code as i32;
                status.reason = if exit.oom_killed {
                    "OOMKilled"
                } else if exit.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .into();
            }
        } else if !self.meta.start_error.is_empty() {
            status.reason = "StartError".into();
            status.message = self.meta.start_error.clone();
            status.exit_code = START_ERROR_EXIT_CODE;
            status.finished_at = self.record.updated_at.as_ref().map_or(0, ns);
        }
        status
    }

    /// The verbose `info` map of ContainerStatus (containerd's keys).
    pub fn info(&self) -> HashMap<String, String> {
        let spec: Value = serde_json::from_slice(&self.record.spec).unwrap_or_default();
        let info = json!({
            "sandboxID": self.record.sandbox_id,
            "pid": self.task.as_ref().map_or(0, |t| t.pid),
            "runtimeType": self.record.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            "snapshotKey": self.record.snapshot_key,
            "snapshotter": self.record.snapshotter,
            "image": self.record.image,
            "logPath": self.meta.log_path,
            "runtimeSpec": spec,
        });
        HashMap::from([("info".to_owned(), info.to_string())])
    }
}

/// The CRI resources recorded in a spec.
pub(crate) fn resources(spec: &Value) -> cri::LinuxContainerResources {
    let r = &spec["linux"]["resources"];
    let i = |v: &Value| v.as_i64().unwrap_or(0);
    cri::LinuxContainerResources {
        cpu_period: i(&r["cpu"]["period"]),
        cpu_quota: i(&r["cpu"]["quota"]),
        cpu_shares: i(&r["cpu"]["shares"]),
        memory_limit_in_bytes: i(&r["memory"]["limit"]),
        memory_swap_limit_in_bytes: i(&r["memory"]["swap"]),
        oom_score_adj: i(&spec["process"]["oomScoreAdj"]),
        cpuset_cpus: r["cpu"]["cpus"].as_str().unwrap_or_default().to_owned(),
        cpuset_mems: r["cpu"]["mems"].as_str().unwrap_or_default().to_owned(),
        hugepage_limits: r["hugepageLimits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| cri::HugepageLimit {
                        page_size: h["pageSize"].as_str().unwrap_or_default().to_owned(),
                        limit: h["limit"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        unified: r["unified"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn ns(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000_000 + i64::from(t.nanos)
}

/// One container with its task.
pub(crate) async fn joined(cri: &Cri, id: &str) -> Result<Joined, Status> {
    let (record, meta) = find(cri, id).await?;
    let task = task(cri, &record.id).await?;
    Ok(Joined { record, meta, task })
}

/// Every CRI container of pod `pod` (all pods when empty), with its task.
pub(crate) async fn all(cri: &Cri, pod: &str) -> Result<Vec<Joined>, Status> {
    let mut filter = format!("labels.\"{KIND_LABEL}\"==container");
    if !pod.is_empty() {
        filter.push_str(&format!(",sandbox_id=={pod}"));
    }
    let records = containers_client(cri)
        .await?
        .list(containers::ListContainersRequest {
            filters: vec![filter],
        })
        .await
        .map_err(|s| remote("tasks", s))?
        .into_inner()
        .containers;
    let mut tasks: HashMap<String, tasks::Task> = tasks_client(cri)
        .await?
        .list(tasks::ListTasksRequest::default())
        .await
        .map_err(|s| remote("tasks", s))?
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| (t.container_id.clone(), t))
        .collect();
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let Ok(meta) = Meta::of(&record) else {
            continue;
        };
        let task = tasks.remove(&record.id);
        out.push(Joined { record, meta, task });
    }
    out.sort_by_key(|j| j.meta.created_at);
    Ok(out)
}

/// The pod id a filter names: a full id, or a unique prefix of one.
fn pod_filter(cri: &Cri, given: &str) -> Option<String> {
    if given.is_empty() {
        return Some(String::new());
    }
    cri.sandboxes.get(given).ok().map(|s| s.id)
}

/// ListContainers.
pub async fn list(
    cri: &Cri,
    filter: Option<cri::ContainerFilter>,
) -> Result<Vec<cri::Container>, Status> {
    let filter = filter.unwrap_or_default();
    let Some(pod) = pod_filter(cri, &filter.pod_sandbox_id) else {
        return Ok(Vec::new());
    };
    Ok(all(cri, &pod)
        .await?
        .into_iter()
        .filter(|j| j.record.id.starts_with(&filter.id))
        .filter(|j| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| s.state == j.state() as i32)
        })
        .filter(|j| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| j.meta.labels.get(k) == Some(v))
        })
        .map(|j| j.to_cri())
        .collect())
}

/// ContainerStatus.
pub async fn status(
    cri: &Cri,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let j = joined(cri, &req.container_id).await?;
    Ok(cri::ContainerStatusResponse {
        status: Some(j.status()),
        info: if req.verbose {
            j.info()
        } else {
            HashMap::new()
        },
    })
}
