//! ContainerStats, ListContainerStats and StreamContainerStats: cpu and memory of the task's
//! cgroup (through Tasks.Stats) and the writable layer's usage (through Snapshots.Usage).
//! `usage_nano_cores` is the rate between two samples of the same container, as the kubelet
//! expects: the first sample of a container reports none.

use std::collections::HashMap;

use berth_api::Service;
use berth_api::berth::snapshots::v1 as snapshots;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::types::v1::TaskStatus;
use berth_api::runtime::v1 as cri;
use tonic::{Code, Status};

use super::status::{Joined, all, joined};
use super::{remote, tasks_client};
use crate::Cri;
use crate::container::lifecycle::now_ns;

/// The previous cpu sample of each container: (time ns, cumulative usage ns).
#[derive(Default)]
pub struct Samples(std::sync::Mutex<HashMap<String, (i64, u64)>>);

impl Samples {
    /// Records a sample; returns the usage rate in nanocores since the previous one.
    fn rate(&self, id: &str, at: i64, usage: u64) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let previous = map.insert(id.to_owned(), (at, usage));
        let (t0, u0) = previous?;
        let dt = at.checked_sub(t0).filter(|d| *d > 0)?;
        let du = usage.checked_sub(u0)?;
        Some((du as u128 * 1_000_000_000 / dt as u128) as u64)
    }

    fn forget(&self, keep: &[String]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|id, _| keep.contains(id));
    }
}

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// The stats of one container.
async fn of(cri: &Cri, j: &Joined) -> Result<cri::ContainerStats, Status> {
    let now = now_ns();
    let mut stats = cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: j.record.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: j.meta.name.clone(),
                attempt: j.meta.attempt,
            }),
            labels: j.meta.labels.clone().into_iter().collect(),
            annotations: j.meta.annotations.clone().into_iter().collect(),
        }),
        ..Default::default()
    };
    let running = j
        .task
        .as_ref()
        .is_some_and(|t| matches!(t.status(), TaskStatus::Running | TaskStatus::Paused));
    if running {
        match tasks_client(cri)
            .await?
            .stats(tasks::StatsRequest {
                container_id: j.record.id.clone(),
            })
            .await
        {
            Ok(r) => {
                let s = r.into_inner().stats.unwrap_or_default();
                let at = s
                    .read_at
                    .as_ref()
                    .map_or(now, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
                stats.cpu = Some(cri::CpuUsage {
                    timestamp: at,
                    usage_core_nano_seconds: value(s.cpu_usage_ns),
                    usage_nano_cores: cri
                        .containers
                        .samples
                        .rate(&j.record.id, at, s.cpu_usage_ns)
                        .and_then(value),
                    psi: None,
                });
                let available = s
                    .memory_limit_bytes
                    .saturating_sub(s.memory_working_set_bytes);
                stats.memory = Some(cri::MemoryUsage {
                    timestamp: at,
                    working_set_bytes: value(s.memory_working_set_bytes),
                    available_bytes: (s.memory_limit_bytes > 0)
                        .then_some(available)
                        .and_then(value),
                    usage_bytes: value(s.memory_usage_bytes),
                    rss_bytes: value(s.memory_working_set_bytes),
                    page_faults: value(0),
                    major_page_faults: value(0),
                    psi: None,
                });
            }
            // The task ended between the listing and now.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(s) => return Err(remote("tasks", s)),
        }
    }
    let usage = SnapshotsClient::new(cri.containers.channel(cri, Service::Snapshots).await?)
        .usage(snapshots::UsageRequest {
            snapshotter: j.record.snapshotter.clone(),
            key: j.record.snapshot_key.clone(),
        })
        .await;
    if let Ok(u) = usage {
        let u = u.into_inner();
        stats.writable_layer = Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: cri
                    .config
                    .service_root(Service::Snapshots.name())
                    .display()
                    .to_string(),
            }),
            used_bytes: value(u.size.max(0) as u64),
            inodes_used: value(u.inodes.max(0) as u64),
        });
    }
    Ok(stats)
}

/// ContainerStats.
pub async fn container_stats(cri: &Cri, id: &str) -> Result<cri::ContainerStats, Status> {
    let j = joined(cri, id).await?;
    of(cri, &j).await
}

/// ListContainerStats (and each StreamContainerStats answer).
pub async fn list(
    cri: &Cri,
    filter: Option<cri::ContainerStatsFilter>,
) -> Result<Vec<cri::ContainerStats>, Status> {
    let filter = filter.unwrap_or_default();
    let pod = if filter.pod_sandbox_id.is_empty() {
        String::new()
    } else {
        match cri.sandboxes.get(&filter.pod_sandbox_id) {
            Ok(s) => s.id,
            Err(_) => return Ok(Vec::new()),
        }
    };
    let everything = all(cri, &pod).await?;
    if filter.id.is_empty() && pod.is_empty() {
        let ids: Vec<String> = everything.iter().map(|j| j.record.id.clone()).collect();
        cri.containers.samples.forget(&ids);
    }
    let mut out = Vec::new();
    for j in everything
        .iter()
        .filter(|j| j.record.id.starts_with(&filter.id))
        .filter(|j| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| j.meta.labels.get(k) == Some(v))
        })
    {
        out.push(of(cri, j).await?);
    }
    Ok(out)
}
