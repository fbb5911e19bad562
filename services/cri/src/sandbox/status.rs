//! PodSandboxStatus, ListPodSandbox (also the items of StreamPodSandboxes) and
//! UpdatePodSandboxResources, answered from the pod records.

use std::collections::HashMap;

use berth_api::runtime::v1 as cri;
use serde_json::{Value, json};
use tonic::Status;

use super::record::Sandbox;
use crate::Cri;

/// PodSandboxStatus; with `verbose`, `info["info"]` is the record as JSON (like containerd's).
pub fn status(cri: &Cri, id: &str, verbose: bool) -> Result<cri::PodSandboxStatusResponse, Status> {
    let s = cri.sandboxes.get(id)?;
    let mut info = HashMap::new();
    if verbose {
        let json = json!({
            "pid": 0,
            "processStatus": "no pause process: namespaces are pinned by bind mounts",
            "netNamespaceClosed": s.netns_path.is_empty() || !std::path::Path::new(&s.netns_path).exists(),
            "image": "",
            "runtimeHandler": s.runtime_handler,
            "runtimeType": s.runtime,
            "config": s,
        });
        info.insert("info".to_owned(), json.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: s.id.clone(),
            metadata: Some(s.metadata.to_cri()),
            state: s.state.to_cri() as i32,
            created_at: s.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: s.ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(s.security.namespace_options()),
                }),
            }),
            labels: s.labels.clone().into_iter().collect(),
            annotations: s.annotations.clone().into_iter().collect(),
            runtime_handler: s.runtime_handler.clone(),
        }),
        info,
        containers_statuses: Vec::new(),
        timestamp: super::lifecycle::now_ns(),
    })
}

/// Whether `s` passes the ListPodSandbox filter.
fn matches(s: &Sandbox, filter: &cri::PodSandboxFilter) -> bool {
    (filter.id.is_empty() || s.id.starts_with(&filter.id))
        && filter
            .state
            .as_ref()
            .is_none_or(|st| s.state.to_cri() as i32 == st.state)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| s.labels.get(k) == Some(v))
}

/// ListPodSandbox: the pods passing `filter` (id prefix, state, labels), oldest first.
pub fn list(
    cri: &Cri,
    filter: Option<&cri::PodSandboxFilter>,
) -> Result<Vec<cri::PodSandbox>, Status> {
    let mut all: Vec<Sandbox> = cri
        .sandboxes
        .list()?
        .into_iter()
        .filter(|s| filter.is_none_or(|f| matches(s, f)))
        .collect();
    all.sort_by_key(|s| s.created_at);
    Ok(all.iter().map(Sandbox::to_cri).collect())
}

/// CRI `LinuxContainerResources` as JSON (the record keeps them this way).
pub fn resources_json(r: &cri::LinuxContainerResources) -> Value {
    json!({
        "cpu_period": r.cpu_period,
        "cpu_quota": r.cpu_quota,
        "cpu_shares": r.cpu_shares,
        "memory_limit_in_bytes": r.memory_limit_in_bytes,
        "oom_score_adj": r.oom_score_adj,
        "cpuset_cpus": r.cpuset_cpus,
        "cpuset_mems": r.cpuset_mems,
        "hugepage_limits": r.hugepage_limits.iter()
            .map(|h| json!({ "page_size": h.page_size, "limit": h.limit }))
            .collect::<Vec<_>>(),
        "unified": r.unified,
        "memory_swap_limit_in_bytes": r.memory_swap_limit_in_bytes,
    })
}

fn check_resources(what: &str, r: &cri::LinuxContainerResources) -> Result<(), Status> {
    for (field, v) in [
        ("cpu_period", r.cpu_period),
        ("cpu_quota", r.cpu_quota),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        if v < 0 && !(field == "cpu_quota" && v == -1) {
            return Err(Status::invalid_argument(format!(
                "{what}.{field} is negative ({v})"
            )));
        }
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(Status::invalid_argument(format!(
            "{what}.oom_score_adj {} is out of range -1000..=1000",
            r.oom_score_adj
        )));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return Err(Status::invalid_argument(format!(
            "{what}.cpu_period {} is out of range 1000..=1000000 microseconds",
            r.cpu_period
        )));
    }
    Ok(())
}

/// UpdatePodSandboxResources: validates and records the pod's overhead and resources (the
/// containers' own limits are set through UpdateContainerResources, as the kubelet does).
pub fn update_resources(
    cri: &Cri,
    req: &cri::UpdatePodSandboxResourcesRequest,
) -> Result<(), Status> {
    if let Some(r) = &req.overhead {
        check_resources("overhead", r)?;
    }
    if let Some(r) = &req.resources {
        check_resources("resources", r)?;
    }
    let mut s = cri.sandboxes.get(&req.pod_sandbox_id)?;
    if let Some(r) = &req.overhead {
        s.overhead = Some(resources_json(r));
    }
    if let Some(r) = &req.resources {
        s.resources = Some(resources_json(r));
    }
    cri.sandboxes.update(&s)
}
