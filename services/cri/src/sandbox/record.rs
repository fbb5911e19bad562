//! The pod sandbox record: what RunPodSandbox made and what the containers of the pod join,
//! stored as JSON in the cri service's database.

use std::collections::BTreeMap;

use berth_api::runtime::v1 as cri;
use serde::{Deserialize, Serialize};

/// Lifecycle of a pod sandbox: Ready from RunPodSandbox until StopPodSandbox, then NotReady
/// until RemovePodSandbox deletes the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its namespaces exist and containers may be created in it.
    #[default]
    Ready,
    /// Stopped: containers stopped, network released.
    NotReady,
}

impl State {
    /// The CRI wire value.
    pub fn to_cri(self) -> cri::PodSandboxState {
        match self {
            State::Ready => cri::PodSandboxState::SandboxReady,
            State::NotReady => cri::PodSandboxState::SandboxNotready,
        }
    }
}

/// Who a namespace of the pod's containers is shared with (CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// One namespace for the whole pod.
    Pod,
    /// One namespace per container.
    #[default]
    Container,
    /// The host's namespace.
    Host,
    /// The namespace of another container (`target_id`).
    Target,
}

impl NamespaceMode {
    /// From the CRI wire value (unknown values are the CRI default, Pod).
    pub fn from_cri(mode: i32) -> NamespaceMode {
        match cri::NamespaceMode::try_from(mode) {
            Ok(cri::NamespaceMode::Container) => NamespaceMode::Container,
            Ok(cri::NamespaceMode::Node) => NamespaceMode::Host,
            Ok(cri::NamespaceMode::Target) => NamespaceMode::Target,
            _ => NamespaceMode::Pod,
        }
    }

    /// The CRI wire value.
    pub fn to_cri(self) -> cri::NamespaceMode {
        match self {
            NamespaceMode::Pod => cri::NamespaceMode::Pod,
            NamespaceMode::Container => cri::NamespaceMode::Container,
            NamespaceMode::Host => cri::NamespaceMode::Node,
            NamespaceMode::Target => cri::NamespaceMode::Target,
        }
    }
}

/// The pod's name in Kubernetes (CRI `PodSandboxMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Attempt number of this sandbox for the pod.
    pub attempt: u32,
}

impl Metadata {
    /// The CRI wire form.
    pub fn to_cri(&self) -> cri::PodSandboxMetadata {
        cri::PodSandboxMetadata {
            name: self.name.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
        }
    }
}

/// A seccomp or AppArmor profile (CRI `SecurityProfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// "runtime/default", "unconfined" or "localhost".
    pub kind: String,
    /// Path of the profile for "localhost".
    pub localhost_ref: String,
}

impl Profile {
    fn from_cri(p: &cri::SecurityProfile) -> Profile {
        use cri::security_profile::ProfileType;
        let kind = match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => "unconfined",
            Ok(ProfileType::Localhost) => "localhost",
            _ => "runtime/default",
        };
        Profile {
            kind: kind.to_owned(),
            localhost_ref: p.localhost_ref.clone(),
        }
    }
}

/// The pod-level security context (CRI `LinuxSandboxSecurityContext`), copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityContext {
    /// Network namespace mode (Pod or Host).
    pub network: NamespaceMode,
    /// Pid namespace mode.
    pub pid: NamespaceMode,
    /// Ipc namespace mode (Pod or Host).
    pub ipc: NamespaceMode,
    /// Container whose pid namespace is joined when `pid` is Target.
    pub target_id: String,
    /// User namespace mode (Host = none; Pod = the mappings below).
    pub userns: NamespaceMode,
    /// User namespace uid mappings: (container id, host id, length).
    pub uid_mappings: Vec<(u32, u32, u32)>,
    /// User namespace gid mappings: (container id, host id, length).
    pub gid_mappings: Vec<(u32, u32, u32)>,
    /// Uid of the pod's processes, when set.
    pub run_as_user: Option<i64>,
    /// Gid of the pod's processes, when set.
    pub run_as_group: Option<i64>,
    /// Supplemental groups of every container's first process.
    pub supplemental_groups: Vec<i64>,
    /// Supplemental groups policy: "merge" or "strict".
    pub supplemental_groups_policy: String,
    /// Privileged pod: its containers may be privileged.
    pub privileged: bool,
    /// Read-only root filesystems (no rootfs of its own here: recorded for the containers).
    pub readonly_rootfs: bool,
    /// Seccomp profile.
    pub seccomp: Option<Profile>,
    /// AppArmor profile.
    pub apparmor: Option<Profile>,
    /// SELinux label (user:role:type:level), recorded as given.
    pub selinux: Option<String>,
}

impl SecurityContext {
    /// Copies the CRI security context (None = every default).
    pub fn from_cri(sc: Option<&cri::LinuxSandboxSecurityContext>) -> SecurityContext {
        let Some(sc) = sc else {
            return SecurityContext {
                network: NamespaceMode::Pod,
                pid: NamespaceMode::Container,
                ipc: NamespaceMode::Pod,
                userns: NamespaceMode::Host,
                ..Default::default()
            };
        };
        let ns = sc.namespace_options.clone().unwrap_or_default();
        let userns = ns.userns_options.clone();
        let maps = |m: &[cri::IdMapping]| {
            m.iter()
                .map(|m| (m.container_id, m.host_id, m.length))
                .collect()
        };
        SecurityContext {
            network: NamespaceMode::from_cri(ns.network),
            pid: NamespaceMode::from_cri(ns.pid),
            ipc: NamespaceMode::from_cri(ns.ipc),
            target_id: ns.target_id.clone(),
            userns: userns
                .as_ref()
                .map_or(NamespaceMode::Host, |u| NamespaceMode::from_cri(u.mode)),
            uid_mappings: userns.as_ref().map_or_else(Vec::new, |u| maps(&u.uids)),
            gid_mappings: userns.as_ref().map_or_else(Vec::new, |u| maps(&u.gids)),
            run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
            run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: sc.supplemental_groups.clone(),
            supplemental_groups_policy: if sc.supplemental_groups_policy == 1 {
                "strict".into()
            } else {
                "merge".into()
            },
            privileged: sc.privileged,
            readonly_rootfs: sc.readonly_rootfs,
            seccomp: sc.seccomp.as_ref().map(Profile::from_cri),
            apparmor: sc.apparmor.as_ref().map(Profile::from_cri),
            selinux: sc
                .selinux_options
                .as_ref()
                .map(|s| format!("{}:{}:{}:{}", s.user, s.role, s.r#type, s.level)),
        }
    }

    /// The CRI `NamespaceOption` of the pod's status.
    pub fn namespace_options(&self) -> cri::NamespaceOption {
        cri::NamespaceOption {
            network: self.network.to_cri() as i32,
            pid: self.pid.to_cri() as i32,
            ipc: self.ipc.to_cri() as i32,
            target_id: self.target_id.clone(),
            userns_options: None,
        }
    }
}

/// A hostPort mapping of the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    /// Port in the pod.
    pub container_port: u16,
    /// Port on the host (as the network service bound it).
    pub host_port: u16,
    /// Host address; empty = every address.
    pub host_ip: String,
}

/// The pod's resolver configuration (CRI `DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// How the pod's network namespace is connected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// The berth network attached ("" for host network).
    pub name: String,
    /// Driver of that network: "bridge" or "cni".
    pub driver: String,
    /// Interface in the pod (e.g. "eth0").
    pub interface: String,
    /// Pod IP with prefix (e.g. "10.88.0.5/16").
    pub cidr: String,
    /// Gateway.
    pub gateway: String,
}

/// One pod sandbox. `id` is 64 hex digits; every path is absolute (or empty when the pod
/// shares the host's namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sandbox {
    /// Sandbox id.
    pub id: String,
    /// Kubernetes identity of the pod.
    pub metadata: Metadata,
    /// Ready or NotReady.
    pub state: State,
    /// Creation time, nanoseconds since the epoch.
    pub created_at: i64,
    /// Labels of the pod.
    pub labels: BTreeMap<String, String>,
    /// Annotations of the pod.
    pub annotations: BTreeMap<String, String>,
    /// Runtime handler as requested ("" = the default).
    pub runtime_handler: String,
    /// The berth runtime of its containers: "builtin", "runc" or "crun".
    pub runtime: String,
    /// Pinned network namespace; empty for host network.
    pub netns_path: String,
    /// Pinned ipc namespace; empty for host ipc.
    pub ipc_ns_path: String,
    /// Pinned uts namespace; empty for host network (which shares the host's hostname).
    pub uts_ns_path: String,
    /// The pod's /dev/shm tmpfs, shared by its containers; empty for host ipc.
    pub shm_path: String,
    /// How the pod's containers get their pid namespace.
    pub pid_mode: NamespaceMode,
    /// Hostname of the pod.
    pub hostname: String,
    /// File for the containers' /etc/hostname.
    pub hostname_path: String,
    /// File for the containers' /etc/resolv.conf.
    pub resolv_conf_path: String,
    /// File for the containers' /etc/hosts.
    pub hosts_path: String,
    /// Directory of the containers' log files (as the request named it).
    pub log_directory: String,
    /// Cgroup parent of the pod's containers (as the request named it).
    pub cgroup_parent: String,
    /// Pod IP (no prefix); empty for host network.
    pub ip: String,
    /// Network attachment details; empty for host network.
    pub network: Network,
    /// hostPort mappings (host ports as bound).
    pub port_mappings: Vec<PortMapping>,
    /// Resolver configuration.
    pub dns: Dns,
    /// Pod-level security context.
    pub security: SecurityContext,
    /// sysctls of the pod (net.* applied to the netns; the rest for the containers' specs).
    pub sysctls: BTreeMap<String, String>,
    /// Pod overhead and resources, JSON of CRI `LinuxContainerResources` (as last recorded).
    pub overhead: Option<serde_json::Value>,
    /// Pod resources, JSON of CRI `LinuxContainerResources` (as last recorded).
    pub resources: Option<serde_json::Value>,
    /// Pod CIDR the kubelet last gave UpdateRuntimeConfig, when the pod was made.
    pub pod_cidr: String,
}

impl Sandbox {
    /// The CRI list item.
    pub fn to_cri(&self) -> cri::PodSandbox {
        cri::PodSandbox {
            id: self.id.clone(),
            metadata: Some(self.metadata.to_cri()),
            state: self.state.to_cri() as i32,
            created_at: self.created_at,
            labels: self.labels.clone().into_iter().collect(),
            annotations: self.annotations.clone().into_iter().collect(),
            runtime_handler: self.runtime_handler.clone(),
        }
    }

    /// The name that must be unique among sandboxes (containerd's form).
    pub fn name(&self) -> String {
        unique_name(&self.metadata)
    }
}

/// `<name>_<namespace>_<uid>_<attempt>`, the unique key of a pod sandbox.
pub fn unique_name(m: &Metadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}
