//! The runtime-wide RPCs: Version, Status (RuntimeReady when the tasks service answers,
//! NetworkReady when the pods' network exists), RuntimeConfig (the cgroup driver) and
//! UpdateRuntimeConfig (the pod CIDR), plus the metrics RPCs.

use std::collections::HashMap;

use berth_api::Service;
use berth_api::berth::network::v1 as net;
use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::tasks::v1::tasks_client::TasksClient;
use berth_api::runtime::v1 as cri;
use serde_json::json;
use tonic::Status;

use super::lifecycle::{HANDLERS, network_client};
use crate::Cri;

/// The CRI API version berth speaks.
pub const API_VERSION: &str = "v1";

/// Version: berth's name and version, and the CRI API version.
pub fn version() -> cri::VersionResponse {
    cri::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "berth".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: API_VERSION.into(),
    }
}

fn condition(kind: &str, result: Result<(), String>) -> cri::RuntimeCondition {
    let (status, reason, message) = match result {
        Ok(()) => (true, String::new(), String::new()),
        Err(m) => (false, kind.replace("Ready", "NotReady"), m),
    };
    cri::RuntimeCondition {
        r#type: kind.into(),
        status,
        reason,
        message,
    }
}

async fn runtime_ready(cri: &Cri) -> Result<(), String> {
    let channel = cri
        .connect(Service::Tasks)
        .await
        .map_err(|s| s.message().to_owned())?;
    TasksClient::new(channel)
        .list(tasks::ListTasksRequest::default())
        .await
        .map(drop)
        .map_err(|s| format!("tasks service: {}", s.message()))
}

async fn network_ready(cri: &Cri) -> Result<(), String> {
    let name = cri.config.cri.pod_network.clone();
    network_client(cri)
        .await
        .map_err(|s| s.message().to_owned())?
        .inspect(net::InspectNetworkRequest { name: name.clone() })
        .await
        .map(drop)
        .map_err(|s| format!("network service: pod network {name:?}: {}", s.message()))
}

/// Status: the RuntimeReady and NetworkReady conditions, checked against the services now; the
/// runtime handlers; with `verbose`, `info["config"]` is the `[cri]` configuration as JSON.
pub async fn status(cri: &Cri, verbose: bool) -> cri::StatusResponse {
    let (runtime, network) = tokio::join!(runtime_ready(cri), network_ready(cri));
    let mut info = HashMap::new();
    if verbose {
        let c = &cri.config.cri;
        info.insert(
            "config".to_owned(),
            json!({
                "podNetwork": c.pod_network,
                "cgroupDriver": c.cgroup_driver,
                "defaultRuntime": c.default_runtime,
                "runtimeHandlers": HANDLERS,
                "podCIDR": cri.sandboxes.pod_cidr(),
            })
            .to_string(),
        );
    }
    let handler = |name: &str| cri::RuntimeHandler {
        name: name.to_owned(),
        features: Some(cri::RuntimeHandlerFeatures {
            recursive_read_only_mounts: false,
            user_namespaces: false,
        }),
    };
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                condition("RuntimeReady", runtime),
                condition("NetworkReady", network),
            ],
        }),
        info,
        runtime_handlers: std::iter::once("").chain(HANDLERS).map(handler).collect(),
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: false,
            user_namespaces_host_network: false,
        }),
    }
}

/// RuntimeConfig: the cgroup driver of `[cri] cgroup_driver`.
pub fn runtime_config(cri: &Cri) -> cri::RuntimeConfigResponse {
    let driver = match cri.config.cri.cgroup_driver.as_str() {
        "systemd" => cri::CgroupDriver::Systemd,
        _ => cri::CgroupDriver::Cgroupfs,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

/// UpdateRuntimeConfig: records the node's pod CIDR (the network service allocates pod
/// addresses from `[cri] pod_network`; the CIDR is kept for Status and the pod records).
pub fn update_runtime_config(
    cri: &Cri,
    req: &cri::UpdateRuntimeConfigRequest,
) -> Result<(), Status> {
    let cidr = req
        .runtime_config
        .as_ref()
        .and_then(|c| c.network_config.as_ref())
        .map(|n| n.pod_cidr.as_str())
        .unwrap_or_default();
    for part in cidr.split(',').filter(|p| !p.is_empty()) {
        let ok = part.split_once('/').is_some_and(|(ip, len)| {
            ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                len.parse::<u8>()
                    .is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 })
            })
        });
        if !ok {
            return Err(Status::invalid_argument(format!(
                "pod CIDR {part:?} is not an address/prefix-length"
            )));
        }
    }
    cri.sandboxes.set_pod_cidr(cidr);
    Ok(())
}
