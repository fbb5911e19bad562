//! UpdateContainerResources (the record's spec, and the running task through Tasks.Update) and
//! ReopenContainerLog (the shim reopens the container's log file, through Tasks.ReopenLog).

use std::collections::HashMap;

use berth_api::berth::containers::v1 as containers;
use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::types::v1::TaskStatus;
use berth_api::runtime::v1 as cri;
use serde_json::{Value, json};
use tonic::Status;

use super::{containers_client, find, remote, spec, task, tasks_client};
use crate::Cri;

/// UpdateContainerResources: validates the new resources, records them in the container's spec
/// and applies them to its running task. An exited container cannot be updated.
#[tracing::instrument(skip_all, fields(container = %req.container_id))]
pub async fn update_resources(
    cri: &Cri,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<(), Status> {
    let (c, _) = find(cri, &req.container_id).await?;
    let Some(resources) = req.linux else {
        return Ok(());
    };
    let current = task(cri, &c.id).await?;
    if current
        .as_ref()
        .is_some_and(|t| t.status() == TaskStatus::Stopped)
    {
        return Err(Status::failed_precondition(format!(
            "container {} has exited: its resources cannot be updated",
            c.id
        )));
    }
    let mut spec: Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    spec::apply_resources(&mut spec["linux"], &resources)?;
    if let Some(t) = current.filter(|t| t.status() != TaskStatus::Stopped) {
        let r = &spec["linux"]["resources"];
        let mut update = json!({});
        for key in ["cpu", "memory", "hugepageLimits", "unified"] {
            if !r[key].is_null() {
                update[key] = r[key].clone();
            }
        }
        tasks_client(cri)
            .await?
            .update(tasks::UpdateTaskRequest {
                container_id: t.container_id.clone(),
                resources: serde_json::to_vec(&update)
                    .map_err(|e| Status::internal(e.to_string()))?,
            })
            .await
            .map_err(|s| remote("tasks", s))?;
    }
    containers_client(cri)
        .await?
        .update(containers::UpdateContainerRequest {
            container: Some(containers::Container {
                id: c.id.clone(),
                spec: serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))?,
                extensions: HashMap::new(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["spec".into()],
            }),
        })
        .await
        .map_err(|s| remote("tasks", s))?;
    Ok(())
}

/// ReopenContainerLog: FailedPrecondition unless the container is running.
#[tracing::instrument(skip(cri))]
pub async fn reopen_log(cri: &Cri, id: &str) -> Result<(), Status> {
    let (c, _) = find(cri, id).await?;
    match task(cri, &c.id).await? {
        Some(t) if t.status() == TaskStatus::Running => {}
        _ => {
            return Err(Status::failed_precondition(format!(
                "container {} is not running: its log cannot be reopened",
                c.id
            )));
        }
    }
    tasks_client(cri)
        .await?
        .reopen_log(tasks::ReopenLogRequest {
            container_id: c.id.clone(),
        })
        .await
        .map_err(|s| remote("tasks", s))?;
    Ok(())
}
