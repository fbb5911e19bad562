//! PodSandboxStats, ListPodSandboxStats, StreamPodSandboxStats and the metrics RPCs.
//!
//! A pod's cpu and memory are the sums over its containers' stats (the containers side reads
//! them through the tasks service); its network usage is read from `/proc/net/dev` inside the
//! pod's network namespace; its process count is the sum of its containers' pids.

use std::path::PathBuf;

use berth_api::runtime::v1 as cri;
use tonic::Status;

use super::namespaces;
use super::record::{NamespaceMode, Sandbox, State};
use crate::Cri;
use crate::container::stats as container_stats;

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.fold(None, |acc, v| match (acc, v) {
        (a, None) => a,
        (None, Some(v)) => Some(v),
        (Some(a), Some(v)) => Some(a.saturating_add(v)),
    })
}

async fn network(s: &Sandbox, now: i64) -> Option<cri::NetworkUsage> {
    if s.netns_path.is_empty() || s.security.network == NamespaceMode::Host {
        return None;
    }
    let path = PathBuf::from(&s.netns_path);
    let counters = tokio::task::spawn_blocking(move || namespaces::interface_counters(&path))
        .await
        .ok()?
        .ok()?;
    let usage = |c: &namespaces::InterfaceCounters| cri::NetworkInterfaceUsage {
        name: c.name.clone(),
        rx_bytes: value(c.rx_bytes),
        rx_errors: value(c.rx_errors),
        tx_bytes: value(c.tx_bytes),
        tx_errors: value(c.tx_errors),
    };
    let default = counters
        .iter()
        .find(|c| c.name == s.network.interface)
        .or(counters.first())
        .map(usage);
    Some(cri::NetworkUsage {
        timestamp: now,
        default_interface: default,
        interfaces: counters.iter().map(usage).collect(),
    })
}

/// The stats of one pod.
async fn of(cri: &Cri, s: &Sandbox) -> Result<cri::PodSandboxStats, Status> {
    let now = super::lifecycle::now_ns();
    let containers = if s.state == State::Ready {
        container_stats::list(
            cri,
            Some(cri::ContainerStatsFilter {
                pod_sandbox_id: s.id.clone(),
                ..Default::default()
            }),
        )
        .await?
    } else {
        Vec::new()
    };
    let cpu = |f: fn(&cri::CpuUsage) -> Option<u64>| {
        sum(containers.iter().map(|c| c.cpu.as_ref().and_then(f)))
    };
    let mem = |f: fn(&cri::MemoryUsage) -> Option<u64>| {
        sum(containers.iter().map(|c| c.memory.as_ref().and_then(f)))
    };
    let cpu = cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: value(
            cpu(|c| c.usage_core_nano_seconds.as_ref().map(|v| v.value)).unwrap_or(0),
        ),
        usage_nano_cores: cpu(|c| c.usage_nano_cores.as_ref().map(|v| v.value)).and_then(value),
        psi: None,
    };
    let memory = cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: value(
            mem(|m| m.working_set_bytes.as_ref().map(|v| v.value)).unwrap_or(0),
        ),
        available_bytes: mem(|m| m.available_bytes.as_ref().map(|v| v.value)).and_then(value),
        usage_bytes: value(mem(|m| m.usage_bytes.as_ref().map(|v| v.value)).unwrap_or(0)),
        rss_bytes: mem(|m| m.rss_bytes.as_ref().map(|v| v.value)).and_then(value),
        page_faults: value(0),
        major_page_faults: value(0),
        psi: None,
    };
    Ok(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: Some(s.metadata.to_cri()),
            labels: s.labels.clone().into_iter().collect(),
            annotations: s.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: network(s, now).await,
            process: None,
            containers,
            io: None,
        }),
        windows: None,
    })
}

/// PodSandboxStats of one pod (NotFound names it).
pub async fn pod_stats(cri: &Cri, id: &str) -> Result<cri::PodSandboxStats, Status> {
    let s = cri.sandboxes.get(id)?;
    of(cri, &s).await
}

/// ListPodSandboxStats (and each StreamPodSandboxStats answer): the pods passing the filter
/// (id prefix, labels).
pub async fn list(
    cri: &Cri,
    filter: Option<&cri::PodSandboxStatsFilter>,
) -> Result<Vec<cri::PodSandboxStats>, Status> {
    let mut out = Vec::new();
    for s in cri.sandboxes.list()? {
        let keep = filter.is_none_or(|f| {
            s.id.starts_with(&f.id)
                && f.label_selector
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
        });
        if keep {
            out.push(of(cri, &s).await?);
        }
    }
    Ok(out)
}
