//! RunPodSandbox, StopPodSandbox and RemovePodSandbox.
//!
//! Run validates the whole request first, reserves the pod's unique name, then makes in order:
//! the pod directory `<state>/cri/pods/<id>/`, the network namespace (network service
//! CreateNetns, `net.*` sysctls, Attach to `[cri] pod_network` with the hostPorts), the ipc and
//! uts namespaces (pinned in the pod directory), the pod's /dev/shm tmpfs, the hostname, hosts
//! and resolv.conf files, and last the record. Whatever fails, what was made is undone in
//! reverse order. Stop stops the pod's containers and detaches its network; Remove also removes
//! its containers, namespaces, shm, files and record. Both succeed for an unknown pod, as the
//! CRI requires.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_api::Service;
use berth_api::berth::containers::v1 as containers;
use berth_api::berth::network::v1 as net;
use berth_api::berth::network::v1::networks_client::NetworksClient;
use berth_api::client::Channel;
use berth_api::runtime::v1 as cri;
use tonic::{Code, Status};

use super::namespaces::{self, Pinned};
use super::record::{Dns, Metadata, NamespaceMode, Network, PortMapping, Sandbox, SecurityContext};
use super::shm;
use crate::Cri;
use crate::container::{containers_client, lifecycle as container_lifecycle};

/// Runtime handlers a pod may name ("" is the configured default).
pub const HANDLERS: [&str; 3] = ["builtin", "runc", "crun"];

/// A Networks client on the network service.
pub async fn network_client(cri: &Cri) -> Result<NetworksClient<Channel>, Status> {
    Ok(NetworksClient::new(
        cri.sandboxes.channel(cri, Service::Network).await?,
    ))
}

fn remote(service: &str, what: &str, s: Status) -> Status {
    Status::new(
        s.code(),
        format!("{service} service: {what}: {}", s.message()),
    )
}

/// The pod's directory for its pinned namespaces and files.
pub fn pod_dir(cri: &Cri, id: &str) -> PathBuf {
    cri.config.state.join("cri").join("pods").join(id)
}

/// The berth runtime of `handler`; InvalidArgument for a handler that does not exist.
pub fn runtime_of(cri: &Cri, handler: &str) -> Result<String, Status> {
    if handler.is_empty() {
        let configured = &cri.config.cri.default_runtime;
        return Ok(if configured.is_empty() {
            cri.config.tasks.runtime.clone()
        } else {
            configured.clone()
        });
    }
    if HANDLERS.contains(&handler) {
        return Ok(handler.to_owned());
    }
    Err(Status::invalid_argument(format!(
        "runtime handler {handler:?} is not configured: use one of {HANDLERS:?} or \"\" for the default"
    )))
}

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

fn metadata(config: &cri::PodSandboxConfig) -> Result<Metadata, Status> {
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("sandbox config must include metadata".into()))?;
    for (field, value) in [
        ("name", &m.name),
        ("uid", &m.uid),
        ("namespace", &m.namespace),
    ] {
        if value.is_empty() {
            return Err(invalid(format!("sandbox config metadata.{field} is empty")));
        }
    }
    Ok(Metadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    })
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Sysctls a pod may set: the namespaced ones (net.* only with a pod network, the ipc ones
/// only with a pod ipc namespace).
fn check_sysctls(
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<(), Status> {
    for (key, value) in sysctls {
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        let netns = key.starts_with("net.");
        if !(ipc || netns) || key.contains("..") || key.contains('/') {
            return Err(invalid(format!(
                "sysctl {key:?} is not namespaced: a pod may set net.*, kernel.shm*, kernel.msg*, \
                 kernel.sem and fs.mqueue.*"
            )));
        }
        if netns && host_network {
            return Err(invalid(format!(
                "sysctl {key:?} cannot be set for a pod on the host network"
            )));
        }
        if ipc && host_ipc {
            return Err(invalid(format!(
                "sysctl {key:?} cannot be set for a pod in the host's ipc namespace"
            )));
        }
        if value.contains('\n') {
            return Err(invalid(format!(
                "sysctl {key:?} has a newline in its value"
            )));
        }
    }
    Ok(())
}

fn port_mappings(config: &cri::PodSandboxConfig) -> Result<Vec<PortMapping>, Status> {
    let mut ports = Vec::new();
    for p in &config.port_mappings {
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(invalid(format!(
                    "port mapping protocol {} is unknown",
                    p.protocol
                )));
            }
        };
        let port = |v: i32, what: &str| {
            u16::try_from(v)
                .map_err(|_| invalid(format!("port mapping {what} {v} is out of range 0..=65535")))
        };
        let container_port = port(p.container_port, "container_port")?;
        if container_port == 0 {
            return Err(invalid("port mapping container_port is 0".into()));
        }
        let host_port = port(p.host_port, "host_port")?;
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "port mapping host_ip {:?} is not an address",
                p.host_ip
            )));
        }
        // A mapping without host port is only informative (kubelet sends containerPorts).
        if host_port == 0 {
            continue;
        }
        ports.push(PortMapping {
            protocol: protocol.to_owned(),
            container_port,
            host_port,
            host_ip: p.host_ip.clone(),
        });
    }
    Ok(ports)
}

/// Everything a valid request asks for, checked before anything is made.
struct Plan {
    sandbox: Sandbox,
    host_network: bool,
    host_ipc: bool,
}

fn plan(cri: &Cri, req: cri::RunPodSandboxRequest) -> Result<Plan, Status> {
    let config = req
        .config
        .ok_or_else(|| invalid("RunPodSandbox needs a config".into()))?;
    let metadata = metadata(&config)?;
    let runtime = runtime_of(cri, &req.runtime_handler)?;
    let linux = config.linux.clone().unwrap_or_default();
    let security = SecurityContext::from_cri(linux.security_context.as_ref());
    let host_network = security.network == NamespaceMode::Host;
    let host_ipc = security.ipc == NamespaceMode::Host;
    if security.pid == NamespaceMode::Target {
        return Err(invalid(
            "pid namespace mode TARGET is for containers, not pod sandboxes".into(),
        ));
    }
    let sysctls: BTreeMap<String, String> = linux.sysctls.clone().into_iter().collect();
    check_sysctls(&sysctls, host_network, host_ipc)?;
    let hostname = if host_network {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| Status::internal(format!("read the host's hostname: {e}")))?
            .trim()
            .to_owned()
    } else if config.hostname.is_empty() {
        metadata.name.chars().take(63).collect()
    } else {
        config.hostname.clone()
    };
    if !host_network && !valid_hostname(&hostname) {
        return Err(invalid(format!(
            "hostname {hostname:?} is not valid: 1-64 letters, digits, '-' and '.'"
        )));
    }
    if !linux.cgroup_parent.is_empty() && !linux.cgroup_parent.starts_with('/') {
        let systemd = cri.config.cri.cgroup_driver == "systemd";
        if !(systemd && linux.cgroup_parent.ends_with(".slice")) {
            return Err(invalid(format!(
                "cgroup_parent {:?} must be an absolute cgroup path (or a .slice with the \
                 systemd driver)",
                linux.cgroup_parent
            )));
        }
    }
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(invalid(format!(
            "log_directory {:?} must be an absolute path",
            config.log_directory
        )));
    }
    let dns = config.dns_config.clone().unwrap_or_default();
    for s in &dns.servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!("DNS server {s:?} is not an IP address")));
        }
    }
    let port_mappings = if host_network {
        Vec::new()
    } else {
        port_mappings(&config)?
    };
    let to_json =
        |r: &Option<cri::LinuxContainerResources>| r.as_ref().map(super::status::resources_json);
    let sandbox = Sandbox {
        id: String::new(),
        metadata,
        state: super::record::State::Ready,
        created_at: 0,
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        runtime_handler: req.runtime_handler.clone(),
        runtime,
        pid_mode: security.pid,
        hostname,
        log_directory: config.log_directory.clone(),
        cgroup_parent: linux.cgroup_parent.clone(),
        port_mappings,
        dns: Dns {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        security,
        sysctls,
        overhead: to_json(&linux.overhead),
        resources: to_json(&linux.resources),
        pod_cidr: cri.sandboxes.pod_cidr(),
        ..Default::default()
    };
    Ok(Plan {
        sandbox,
        host_network,
        host_ipc,
    })
}

/// What Run made so far, undone in reverse on failure.
#[derive(Default)]
struct Made {
    dir: Option<PathBuf>,
    netns: bool,
    attached: Option<String>,
    pinned: Pinned,
    shm: Option<PathBuf>,
}

impl Made {
    async fn undo(self, cri: &Cri, id: &str) {
        if let Some(shm) = &self.shm {
            shm::unmount(shm);
        }
        namespaces::release(&self.pinned);
        if let Ok(mut client) = network_client(cri).await {
            if let Some(network) = self.attached {
                let _ = client
                    .detach(net::DetachRequest {
                        network,
                        container_id: id.to_owned(),
                    })
                    .await;
            }
            if self.netns {
                let _ = client
                    .remove_netns(net::RemoveNetnsRequest {
                        sandbox_id: id.to_owned(),
                    })
                    .await;
            }
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// RunPodSandbox: the new pod's id.
pub async fn run(cri: &Cri, req: cri::RunPodSandboxRequest) -> Result<String, Status> {
    let Plan {
        mut sandbox,
        host_network,
        host_ipc,
    } = plan(cri, req)?;
    let _reservation = cri.sandboxes.reserve(&sandbox.name())?;
    sandbox.id = random_id()?;
    sandbox.created_at = now_ns();
    let mut made = Made::default();
    match make(cri, &mut sandbox, host_network, host_ipc, &mut made).await {
        Ok(()) => match cri.sandboxes.create(&sandbox) {
            Ok(()) => {
                tracing::info!(id = %sandbox.id, name = %sandbox.name(), "pod sandbox ready");
                Ok(sandbox.id)
            }
            Err(e) => {
                made.undo(cri, &sandbox.id).await;
                Err(e)
            }
        },
        Err(e) => {
            made.undo(cri, &sandbox.id).await;
            Err(e)
        }
    }
}

async fn make(
    cri: &Cri,
    sandbox: &mut Sandbox,
    host_network: bool,
    host_ipc: bool,
    made: &mut Made,
) -> Result<(), Status> {
    let dir = pod_dir(cri, &sandbox.id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
    made.dir = Some(dir.clone());
    let mut attachment = None;
    if !host_network {
        let mut client = network_client(cri).await?;
        let netns = client
            .create_netns(net::CreateNetnsRequest {
                sandbox_id: sandbox.id.clone(),
            })
            .await
            .map_err(|s| remote("network", "create the pod's network namespace", s))?
            .into_inner()
            .netns_path;
        made.netns = true;
        sandbox.netns_path = netns.clone();
        let net_sysctls: Vec<(String, String)> = sandbox
            .sysctls
            .iter()
            .filter(|(k, _)| k.starts_with("net."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !net_sysctls.is_empty() {
            let path = PathBuf::from(&netns);
            tokio::task::spawn_blocking(move || namespaces::apply_net_sysctls(&path, net_sysctls))
                .await
                .map_err(|e| Status::internal(format!("sysctl thread: {e}")))?
                .map_err(|e| invalid(format!("{e}")))?;
        }
        let network = cri.config.cri.pod_network.clone();
        let ports = sandbox
            .port_mappings
            .iter()
            .map(|p| net::PortMapping {
                host_ip: p.host_ip.clone(),
                host_port: p.host_port.into(),
                container_port: p.container_port.into(),
                protocol: match p.protocol.as_str() {
                    "udp" => net::Protocol::Udp,
                    "sctp" => net::Protocol::Sctp,
                    _ => net::Protocol::Tcp,
                } as i32,
                container_port_end: 0,
            })
            .collect();
        made.attached = Some(network.clone());
        let a = client
            .attach(net::AttachRequest {
                network: network.clone(),
                container_id: sandbox.id.clone(),
                netns_path: netns,
                interface_name: "eth0".into(),
                aliases: vec![sandbox.hostname.clone()],
                ports,
                ..Default::default()
            })
            .await
            .map_err(|s| {
                remote(
                    "network",
                    &format!("attach the pod to network {network:?}"),
                    s,
                )
            })?
            .into_inner()
            .attachment
            .unwrap_or_default();
        sandbox.ip = a.ip.split('/').next().unwrap_or_default().to_owned();
        for (p, bound) in sandbox.port_mappings.iter_mut().zip(&a.ports) {
            p.host_port = u16::try_from(bound.host_port).unwrap_or(p.host_port);
        }
        let driver = client
            .inspect(net::InspectNetworkRequest {
                name: network.clone(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().network)
            .map(|n| n.driver)
            .unwrap_or_default();
        sandbox.network = Network {
            name: network,
            driver,
            interface: a.interface_name.clone(),
            cidr: a.ip.clone(),
            gateway: a.gateway.clone(),
        };
        attachment = Some(a);
    }
    let (ipc, uts, hostname) = (!host_ipc, !host_network, sandbox.hostname.clone());
    let pin_dir = dir.clone();
    made.pinned =
        tokio::task::spawn_blocking(move || namespaces::create(&pin_dir, ipc, uts, &hostname))
            .await
            .map_err(|e| Status::internal(format!("namespace thread: {e}")))?
            .map_err(|e| Status::internal(format!("pod namespaces: {e}")))?;
    sandbox.ipc_ns_path = path_string(&made.pinned.ipc);
    sandbox.uts_ns_path = path_string(&made.pinned.uts);
    if !host_ipc {
        let path = shm::mount(&dir).map_err(|e| Status::internal(format!("pod shm: {e}")))?;
        sandbox.shm_path = path.to_string_lossy().into_owned();
        made.shm = Some(path);
    }
    write_files(sandbox, &dir, host_network, attachment.as_ref())
}

fn path_string(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) -> Result<String, Status> {
    std::fs::write(path, text)
        .map_err(|e| Status::internal(format!("write {}: {e}", path.display())))?;
    Ok(path.to_string_lossy().into_owned())
}

/// resolv.conf text: the pod's DNSConfig, else the network's resolvers, else the host's file.
fn resolv_conf(dns: &Dns, network: Option<&net::DnsConfig>) -> Result<String, Status> {
    let (servers, searches, options) =
        if !dns.servers.is_empty() || !dns.searches.is_empty() || !dns.options.is_empty() {
            (&dns.servers, &dns.searches, &dns.options)
        } else if let Some(n) = network.filter(|n| !n.servers.is_empty()) {
            (&n.servers, &n.search, &n.options)
        } else {
            return std::fs::read_to_string("/etc/resolv.conf")
                .map_err(|e| Status::internal(format!("read /etc/resolv.conf: {e}")));
        };
    let mut text = String::new();
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    Ok(text)
}

fn write_files(
    sandbox: &mut Sandbox,
    dir: &Path,
    host_network: bool,
    attachment: Option<&net::Attachment>,
) -> Result<(), Status> {
    sandbox.hostname_path = write(&dir.join("hostname"), &format!("{}\n", sandbox.hostname))?;
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts")
            .map_err(|e| Status::internal(format!("read /etc/hosts: {e}")))?
    } else {
        let mut text = String::from(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n",
        );
        if !sandbox.ip.is_empty() {
            text.push_str(&format!("{}\t{}\n", sandbox.ip, sandbox.hostname));
        }
        text
    };
    sandbox.hosts_path = write(&dir.join("hosts"), &hosts)?;
    let resolv = if host_network && sandbox.dns.servers.is_empty() {
        resolv_conf(&Dns::default(), None)?
    } else {
        resolv_conf(&sandbox.dns, attachment.and_then(|a| a.dns.as_ref()))?
    };
    sandbox.resolv_conf_path = write(&dir.join("resolv.conf"), &resolv)?;
    Ok(())
}

/// The ids of the pod's containers in the tasks service.
pub async fn container_ids(cri: &Cri, sandbox_id: &str) -> Result<Vec<String>, Status> {
    Ok(containers_client(cri)
        .await?
        .list(containers::ListContainersRequest {
            filters: vec![format!("sandbox_id=={sandbox_id}")],
        })
        .await
        .map_err(|s| remote("tasks", "list the pod's containers", s))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect())
}

/// StopPodSandbox: stops every container of the pod (SIGKILL), releases its network, marks it
/// NotReady. An unknown pod is stopped already.
pub async fn stop(cri: &Cri, id: &str) -> Result<(), Status> {
    let mut sandbox = match cri.sandboxes.get(id) {
        Ok(s) => s,
        Err(s) if s.code() == Code::NotFound => return Ok(()),
        Err(s) => return Err(s),
    };
    let _lock = cri.sandboxes.lock(&sandbox.id).await;
    for c in container_ids(cri, &sandbox.id).await? {
        container_lifecycle::stop(cri, &c, 0).await?;
    }
    release_network(cri, &sandbox).await?;
    if sandbox.state != super::record::State::NotReady {
        sandbox.state = super::record::State::NotReady;
        cri.sandboxes.update(&sandbox)?;
    }
    Ok(())
}

/// Detaches the pod from its network (hostPorts included); detaching twice is fine.
async fn release_network(cri: &Cri, sandbox: &Sandbox) -> Result<(), Status> {
    if sandbox.network.name.is_empty() {
        return Ok(());
    }
    network_client(cri)
        .await?
        .detach(net::DetachRequest {
            network: sandbox.network.name.clone(),
            container_id: sandbox.id.clone(),
        })
        .await
        .map_err(|s| remote("network", "detach the pod", s))?;
    Ok(())
}

/// RemovePodSandbox: removes the pod's containers, network, namespaces, files and record. An
/// unknown pod is removed already.
pub async fn remove(cri: &Cri, id: &str) -> Result<(), Status> {
    let sandbox = match cri.sandboxes.get(id) {
        Ok(s) => s,
        Err(s) if s.code() == Code::NotFound => return Ok(()),
        Err(s) => return Err(s),
    };
    let _lock = cri.sandboxes.lock(&sandbox.id).await;
    for c in container_ids(cri, &sandbox.id).await? {
        container_lifecycle::remove(cri, &c).await?;
    }
    release_network(cri, &sandbox).await?;
    if !sandbox.netns_path.is_empty() {
        network_client(cri)
            .await?
            .remove_netns(net::RemoveNetnsRequest {
                sandbox_id: sandbox.id.clone(),
            })
            .await
            .map_err(|s| remote("network", "remove the pod's network namespace", s))?;
    }
    for p in [&sandbox.ipc_ns_path, &sandbox.uts_ns_path] {
        if !p.is_empty() {
            namespaces::unpin(Path::new(p));
        }
    }
    if !sandbox.shm_path.is_empty() {
        shm::unmount(Path::new(&sandbox.shm_path));
    }
    let dir = pod_dir(cri, &sandbox.id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Status::internal(format!("remove {}: {e}", dir.display()))),
    }
    cri.sandboxes.delete(&sandbox)?;
    cri.sandboxes.forget_lock(&sandbox.id);
    tracing::info!(id = %sandbox.id, "pod sandbox removed");
    Ok(())
}

/// Removes the pod directories under `<state>/cri/pods` that no record owns (left by a
/// RunPodSandbox interrupted by a crash): their pinned namespaces and files. Returns their ids.
pub fn sweep_orphans(state: &Path, sandboxes: &super::Sandboxes) -> Result<Vec<String>, Status> {
    let known: std::collections::HashSet<String> =
        sandboxes.list()?.into_iter().map(|s| s.id).collect();
    let mut swept = Vec::new();
    let pods = state.join("cri").join("pods");
    for entry in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if known.contains(&id) {
            continue;
        }
        for kind in ["ipc", "uts"] {
            let path = entry.path().join(kind);
            if path.exists() {
                namespaces::unpin(&path);
            }
        }
        shm::unmount(&entry.path().join("shm"));
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            tracing::warn!(%id, "removed the files of a pod sandbox that was never recorded");
            swept.push(id);
        }
    }
    Ok(swept)
}

/// Releases the network of pods swept by [`sweep_orphans`] (their attachments and pinned
/// network namespace), in the background: the network service may start after this one, so it
/// is tried for up to 30 seconds.
pub fn release_orphans(cri: std::sync::Arc<Cri>, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut left = ids;
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            let mut still = Vec::new();
            for id in left {
                if release_orphan(&cri, &id).await.is_err() {
                    still.push(id);
                }
            }
            left = still;
            if !left.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        if !left.is_empty() {
            tracing::warn!(
                ?left,
                "could not release the network of unrecorded pod sandboxes"
            );
        }
    });
}

async fn release_orphan(cri: &Cri, id: &str) -> Result<(), Status> {
    let mut client = NetworksClient::new(cri.connect(Service::Network).await?);
    let attachments = client
        .list_attachments(net::ListAttachmentsRequest {
            network: String::new(),
            container_id: id.to_owned(),
        })
        .await?
        .into_inner()
        .attachments;
    for a in attachments {
        client
            .detach(net::DetachRequest {
                network: a.network,
                container_id: id.to_owned(),
            })
            .await?;
    }
    client
        .remove_netns(net::RemoveNetnsRequest {
            sandbox_id: id.to_owned(),
        })
        .await?;
    Ok(())
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
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_must_be_namespaced() {
        let one = |k: &str| BTreeMap::from([(k.to_owned(), "1".to_owned())]);
        assert!(check_sysctls(&one("net.ipv4.ip_forward"), false, false).is_ok());
        assert!(check_sysctls(&one("kernel.shmmax"), true, false).is_ok());
        assert!(check_sysctls(&one("kernel.shmmax"), false, true).is_err());
        assert!(check_sysctls(&one("net.ipv4.ip_forward"), true, false).is_err());
        assert!(check_sysctls(&one("kernel.panic"), false, false).is_err());
        assert!(check_sysctls(&one("net.ipv4/../x"), false, false).is_err());
    }

    #[test]
    fn resolv_conf_from_the_pod_config() {
        let dns = Dns {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["a.svc".into(), "svc".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns, None).unwrap(),
            "search a.svc svc\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
