//! The OCI runtime spec of a CRI container: [`berth_tasks::spec::build`] from the image's
//! configuration and the Docker-like options a CRI `ContainerConfig` maps to, then CRI's rules
//! on top, as containerd's CRI plugin applies them: the pod's namespaces joined by path, the
//! pod's hostname and `/etc` files, cgroups under the pod's cgroup parent, the full
//! `LinuxContainerResources`, masked and read-only paths, and the `io.kubernetes.cri.*`
//! annotations.

use std::path::Path;

use berth_api::runtime::v1 as cri;
use berth_tasks::spec::{MountSpec, RunOptions};
use oci_spec::image::ImageConfiguration;
use serde_json::{Value, json};
use tonic::Status;

use crate::sandbox::Sandbox;
use crate::sandbox::record::NamespaceMode;

/// Annotation asking the tasks service to put the container in the pod's shared pid namespace.
pub const POD_PID_ANNOTATION: &str = "berth.io/pod-pid-namespace";

/// What the spec is built from.
pub struct Input<'a> {
    /// The new container's id.
    pub id: &'a str,
    /// The CRI request's container config.
    pub config: &'a cri::ContainerConfig,
    /// The container's pod.
    pub pod: &'a Sandbox,
    /// The image's configuration.
    pub image: &'a ImageConfiguration,
    /// The image's name (for the `io.kubernetes.cri.image-name` annotation).
    pub image_name: &'a str,
    /// The pid namespace to join when the container's pid mode is Target.
    pub target_pid_ns: Option<String>,
}

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

/// Builds the container's OCI spec (as JSON).
pub fn build(input: &Input<'_>) -> Result<Value, Status> {
    let config = input.config;
    let pod = input.pod;
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let resources = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    if sc.privileged && !pod.security.privileged {
        return Err(invalid(format!(
            "container {:?} is privileged but its pod sandbox {} is not",
            name(config),
            pod.id
        )));
    }
    let opts = options(config, pod, &sc)?;
    let spec = berth_tasks::spec::build(input.image, &opts).map_err(Status::from)?;
    let mut spec = serde_json::to_value(&spec)
        .map_err(|e| Status::internal(format!("cannot encode the spec: {e}")))?;
    // A bare uid waits for its group from the image's /etc/passwd (the tasks service resolves
    // it); the uid itself is known now, so that execs of the container never run as root.
    if let Some(uid) = opts.user.as_deref().and_then(|u| u.parse::<u32>().ok()) {
        spec["process"]["user"]["uid"] = json!(uid);
    }

    namespaces(&mut spec, pod, &sc, input.target_pid_ns.as_deref())?;
    // The pod's uts namespace, joined by path, has the pod's hostname already (the HOSTNAME
    // variable still comes from it); a runtime sets a spec hostname only in a new namespace.
    if let Some(o) = spec.as_object_mut() {
        o.remove("hostname");
    }
    pod_files(&mut spec, pod, config, sc.readonly_rootfs);
    if pod.ipc_ns_path.is_empty() {
        shared_shm(&mut spec, "/dev/shm", &[]);
    } else if !pod.shm_path.is_empty() {
        shared_shm(&mut spec, &pod.shm_path, &["nosuid", "nodev", "noexec"]);
    }
    rootfs_propagation(&mut spec, config);
    if !pod.cgroup_parent.is_empty() {
        spec["linux"]["cgroupsPath"] = json!(format!(
            "{}/{}",
            pod.cgroup_parent.trim_end_matches('/'),
            input.id
        ));
    }
    apply_resources(&mut spec["linux"], &resources)?;
    if let Some(adj) = oom_score_adj(resources.oom_score_adj)? {
        spec["process"]["oomScoreAdj"] = json!(adj);
    }
    if !sc.privileged {
        if !sc.masked_paths.is_empty() {
            spec["linux"]["maskedPaths"] = json!(sc.masked_paths);
        }
        if !sc.readonly_paths.is_empty() {
            spec["linux"]["readonlyPaths"] = json!(sc.readonly_paths);
        }
    }
    let annotations = &mut spec["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    for (k, v) in &config.annotations {
        annotations[k] = json!(v);
    }
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", name(config)),
        ("io.kubernetes.cri.sandbox-id", &pod.id),
        ("io.kubernetes.cri.sandbox-name", &pod.metadata.name),
        (
            "io.kubernetes.cri.sandbox-namespace",
            &pod.metadata.namespace,
        ),
        ("io.kubernetes.cri.sandbox-uid", &pod.metadata.uid),
        ("io.kubernetes.cri.image-name", input.image_name),
    ] {
        annotations[k] = json!(v);
    }
    Ok(spec)
}

fn name(config: &cri::ContainerConfig) -> &str {
    config.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// The Docker-like options of the CRI config (what [`berth_tasks::spec::build`] understands).
fn options(
    config: &cri::ContainerConfig,
    pod: &Sandbox,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<RunOptions, Status> {
    let mut env = Vec::with_capacity(config.envs.len());
    for kv in &config.envs {
        let value = String::from_utf8(kv.value.clone()).map_err(|_| {
            invalid(format!(
                "environment variable {:?} is not valid UTF-8",
                kv.key
            ))
        })?;
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(invalid(format!(
                "invalid environment variable name {:?}",
                kv.key
            )));
        }
        env.push(format!("{}={value}", kv.key));
    }
    let mut opts = RunOptions {
        entrypoint: (!config.command.is_empty()).then(|| config.command.clone()),
        cmd: config.args.clone(),
        env,
        workdir: (!config.working_dir.is_empty()).then(|| config.working_dir.clone()),
        user: user(sc, pod)?,
        hostname: (!pod.uts_ns_path.is_empty() && !pod.hostname.is_empty())
            .then(|| pod.hostname.clone()),
        tty: config.tty,
        stdin_open: config.stdin,
        read_only: sc.readonly_rootfs,
        privileged: sc.privileged,
        host_network: pod.netns_path.is_empty(),
        stop_signal: stop_signal(config.stop_signal)?,
        ..Default::default()
    };
    if let Some(caps) = &sc.capabilities {
        opts.cap_add = caps.add_capabilities.clone();
        opts.cap_drop = caps.drop_capabilities.clone();
    }
    if sc.no_new_privs {
        opts.security_opt.push("no-new-privileges".into());
    }
    if let Some(profile) = seccomp(sc)? {
        opts.security_opt.push(format!("seccomp={profile}"));
    }
    let mut groups: Vec<i64> = pod.security.supplemental_groups.clone();
    groups.extend(sc.supplemental_groups.iter().copied());
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        if !(0..=i64::from(u32::MAX)).contains(&g) {
            return Err(invalid(format!("supplemental group {g} is out of range")));
        }
        opts.group_add.push(g.to_string());
    }
    // net.* sysctls are set on the pod's network namespace when the pod is made.
    opts.sysctls = pod
        .sysctls
        .iter()
        .filter(|(k, _)| !k.starts_with("net."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for m in &config.mounts {
        opts.mounts.push(mount(m)?);
    }
    for d in &config.devices {
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            &d.permissions
        };
        let target = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        opts.devices
            .push(format!("{}:{}:{}", d.host_path, target, perms));
    }
    Ok(opts)
}

/// `uid[:gid]` or `name[:gid]` from the security contexts (the container's wins).
fn user(sc: &cri::LinuxContainerSecurityContext, pod: &Sandbox) -> Result<Option<String>, Status> {
    let uid = sc
        .run_as_user
        .as_ref()
        .map(|v| v.value)
        .or(pod.security.run_as_user);
    let gid = sc
        .run_as_group
        .as_ref()
        .map(|v| v.value)
        .or(pod.security.run_as_group);
    for (what, v) in [("run_as_user", uid), ("run_as_group", gid)] {
        if let Some(v) = v
            && !(0..=i64::from(u32::MAX)).contains(&v)
        {
            return Err(invalid(format!("{what} {v} is out of range")));
        }
    }
    let user = if !sc.run_as_username.is_empty() {
        Some(sc.run_as_username.clone())
    } else {
        uid.map(|u| u.to_string())
    };
    match (user, gid) {
        (None, Some(_)) => Err(invalid(
            "run_as_group is set without run_as_user or run_as_username".into(),
        )),
        (Some(u), Some(g)) => Ok(Some(format!("{u}:{g}"))),
        (u, None) => Ok(u),
    }
}

/// The seccomp option: `None` = the runtime default profile, `unconfined`, or a profile's JSON.
/// A container without any seccomp setting runs unconfined, as with containerd. The deprecated
/// `seccomp_profile_path` is still read: older kubelets send only that.
#[allow(deprecated)]
fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<Option<String>, Status> {
    use cri::security_profile::ProfileType;
    let (kind, path) = match &sc.seccomp {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => ("unconfined", String::new()),
            Ok(ProfileType::Localhost) => ("localhost", p.localhost_ref.clone()),
            _ => ("runtime/default", String::new()),
        },
        None => match sc.seccomp_profile_path.as_str() {
            "" | "unconfined" => ("unconfined", String::new()),
            "runtime/default" | "docker/default" => ("runtime/default", String::new()),
            p => match p.strip_prefix("localhost/") {
                Some(path) => ("localhost", path.to_owned()),
                None => {
                    return Err(invalid(format!(
                        "unknown seccomp profile path {p:?}: use runtime/default, unconfined or \
                         localhost/<path>"
                    )));
                }
            },
        },
    };
    match kind {
        "unconfined" => Ok(Some("unconfined".into())),
        "runtime/default" => Ok(None),
        _ => {
            if !Path::new(&path).is_absolute() {
                return Err(invalid(format!(
                    "seccomp localhost profile {path:?} must be an absolute path"
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(format!(
                    "cannot read seccomp localhost profile {path:?}: {e}"
                ))
            })?;
            if let Err(e) = serde_json::from_str::<Value>(&text) {
                return Err(invalid(format!(
                    "seccomp localhost profile {path:?} is not valid JSON: {e}"
                )));
            }
            Ok(Some(text))
        }
    }
}

/// A CRI mount as a bind mount; the host path must exist.
fn mount(m: &cri::Mount) -> Result<MountSpec, Status> {
    if m.image.is_some() {
        return Err(invalid(format!(
            "mount at {:?}: image volume mounts are not supported",
            m.container_path
        )));
    }
    if m.recursive_read_only && !m.readonly {
        return Err(invalid(format!(
            "mount at {:?}: recursive_read_only needs readonly",
            m.container_path
        )));
    }
    let source = std::fs::canonicalize(&m.host_path).map_err(|e| {
        invalid(format!(
            "mount at {:?}: host path {:?}: {e}",
            m.container_path, m.host_path
        ))
    })?;
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    };
    Ok(MountSpec::Bind {
        source: source.display().to_string(),
        target: m.container_path.clone(),
        readonly: m.readonly,
        propagation: Some(propagation.into()),
    })
}

/// The CRI stop signal as a signal name; `None` = the image's, or SIGTERM.
fn stop_signal(signal: i32) -> Result<Option<String>, Status> {
    let s = cri::Signal::try_from(signal)
        .map_err(|_| invalid(format!("unknown stop signal {signal}")))?;
    if s == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    let name = s.as_str_name();
    let text = if let Some(n) = name.strip_prefix("SIGRTMINPLUS") {
        format!("SIGRTMIN+{n}")
    } else if let Some(n) = name.strip_prefix("SIGRTMAXMINUS") {
        let n: i32 = n.parse().unwrap_or(0);
        (libc::SIGRTMAX() - n).to_string()
    } else if name == "SIGRTMAX" {
        libc::SIGRTMAX().to_string()
    } else {
        match name {
            "SIGCLD" => "SIGCHLD",
            "SIGPOLL" => "SIGIO",
            "SIGIOT" => "SIGABRT",
            other => other,
        }
        .to_owned()
    };
    Ok(Some(text))
}

/// The namespaces: the pod's network, ipc and uts joined by path (none of them when the pod
/// shares the host's), a new mount namespace, and pid as the pid mode says.
fn namespaces(
    spec: &mut Value,
    pod: &Sandbox,
    sc: &cri::LinuxContainerSecurityContext,
    target_pid_ns: Option<&str>,
) -> Result<(), Status> {
    let cgroup = spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|l| l.iter().any(|n| n["type"] == "cgroup"));
    let mut list = vec![json!({ "type": "mount" })];
    for (typ, path) in [
        ("network", &pod.netns_path),
        ("ipc", &pod.ipc_ns_path),
        ("uts", &pod.uts_ns_path),
    ] {
        if !path.is_empty() {
            list.push(json!({ "type": typ, "path": path }));
        }
    }
    let pid_mode = match sc.namespace_options.as_ref() {
        Some(ns) => NamespaceMode::from_cri(ns.pid),
        None => pod.pid_mode,
    };
    match pid_mode {
        NamespaceMode::Host => {}
        NamespaceMode::Container => list.push(json!({ "type": "pid" })),
        NamespaceMode::Pod => {
            list.push(json!({ "type": "pid" }));
            spec["annotations"][POD_PID_ANNOTATION] = json!("true");
        }
        NamespaceMode::Target => {
            let path = target_pid_ns.ok_or_else(|| {
                invalid("pid namespace mode TARGET needs a running target container".into())
            })?;
            list.push(json!({ "type": "pid", "path": path }));
        }
    }
    if cgroup {
        list.push(json!({ "type": "cgroup" }));
    }
    spec["linux"]["namespaces"] = json!(list);
    Ok(())
}

/// Binds the pod's hostname, hosts and resolv.conf files over the container's, unless the
/// request mounts something there itself (the kubelet manages /etc/hosts of most pods).
fn pod_files(spec: &mut Value, pod: &Sandbox, config: &cri::ContainerConfig, readonly: bool) {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return;
    };
    for (source, dest) in [
        (&pod.hostname_path, "/etc/hostname"),
        (&pod.hosts_path, "/etc/hosts"),
        (&pod.resolv_conf_path, "/etc/resolv.conf"),
    ] {
        if source.is_empty() || config.mounts.iter().any(|m| m.container_path == dest) {
            continue;
        }
        let mode = if readonly { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": dest,
            "type": "bind",
            "source": source,
            "options": ["rbind", "rprivate", mode],
        }));
    }
}

/// Bind-mounts `source` at /dev/shm: the host's /dev/shm for a container in the host's ipc
/// namespace, else the pod's shm tmpfs, so that the pod's containers share POSIX shm. `flags`
/// are added to the bind mount's options.
fn shared_shm(spec: &mut Value, source: &str, flags: &[&str]) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        let options: Vec<&str> = ["rbind", "rprivate", "rw"]
            .iter()
            .chain(flags)
            .copied()
            .collect();
        mounts.retain(|m| m["destination"] != "/dev/shm");
        mounts.push(json!({
            "destination": "/dev/shm",
            "type": "bind",
            "source": source,
            "options": options,
        }));
    }
}

/// Mounts that propagate need a root that propagates too: `rshared` when a mount is
/// bidirectional, `rslave` when one receives from the host (as containerd sets it).
fn rootfs_propagation(spec: &mut Value, config: &cri::ContainerConfig) {
    let modes: Vec<_> = config
        .mounts
        .iter()
        .map(|m| cri::MountPropagation::try_from(m.propagation))
        .collect();
    if modes.contains(&Ok(cri::MountPropagation::PropagationBidirectional)) {
        spec["linux"]["rootfsPropagation"] = json!("rshared");
    } else if modes.contains(&Ok(cri::MountPropagation::PropagationHostToContainer)) {
        spec["linux"]["rootfsPropagation"] = json!("rslave");
    }
}

/// Sets `linux.resources` from the CRI resources (over the builder's defaults).
pub fn apply_resources(linux: &mut Value, r: &cri::LinuxContainerResources) -> Result<(), Status> {
    let bad = |field: &str, v: i64| invalid(format!("invalid {field} {v}: must not be negative"));
    for (field, v) in [
        ("cpu_period", r.cpu_period),
        ("cpu_quota", r.cpu_quota),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ] {
        if v < 0 && !(field == "cpu_quota" && v == -1) {
            return Err(bad(field, v));
        }
    }
    if r.cpu_shares == 1 || r.cpu_shares > 262_144 {
        return Err(invalid(format!(
            "invalid cpu_shares {}: must be 0 (unset) or within 2..=262144",
            r.cpu_shares
        )));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return Err(invalid(format!(
            "invalid cpu_period {}: must be 0 (unset) or within 1000..=1000000 microseconds",
            r.cpu_period
        )));
    }
    if r.cpu_quota > 0 && r.cpu_quota < 1000 {
        return Err(invalid(format!(
            "invalid cpu_quota {}: must be at least 1000 microseconds",
            r.cpu_quota
        )));
    }
    if r.memory_limit_in_bytes > 0 && r.memory_limit_in_bytes < 4096 {
        return Err(invalid(format!(
            "invalid memory_limit_in_bytes {}: must be at least one page (4096)",
            r.memory_limit_in_bytes
        )));
    }
    if r.memory_swap_limit_in_bytes > 0 && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes {
        return Err(invalid(format!(
            "invalid memory_swap_limit_in_bytes {}: below memory_limit_in_bytes {}",
            r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
        )));
    }
    for (field, set) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !set.is_empty() && !valid_cpuset(set) {
            return Err(invalid(format!(
                "invalid {field} {set:?}: expected a list like 0-2,4"
            )));
        }
    }
    if !linux["resources"].is_object() {
        linux["resources"] = json!({});
    }
    let res = &mut linux["resources"];
    let cpu = &mut res["cpu"];
    if !cpu.is_object() {
        *cpu = json!({});
    }
    if r.cpu_shares > 0 {
        cpu["shares"] = json!(r.cpu_shares);
    }
    if r.cpu_period > 0 {
        cpu["period"] = json!(r.cpu_period);
    }
    if r.cpu_quota != 0 {
        cpu["quota"] = json!(r.cpu_quota);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu["cpus"] = json!(r.cpuset_cpus);
    }
    if !r.cpuset_mems.is_empty() {
        cpu["mems"] = json!(r.cpuset_mems);
    }
    if cpu.as_object().is_some_and(|o| o.is_empty()) {
        res.as_object_mut().map(|o| o.remove("cpu"));
    }
    if r.memory_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes > 0 {
        let memory = &mut res["memory"];
        if !memory.is_object() {
            *memory = json!({});
        }
        if r.memory_limit_in_bytes > 0 {
            memory["limit"] = json!(r.memory_limit_in_bytes);
        }
        if r.memory_swap_limit_in_bytes > 0 {
            memory["swap"] = json!(r.memory_swap_limit_in_bytes);
        }
    }
    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for h in &r.hugepage_limits {
            if !valid_page_size(&h.page_size) {
                return Err(invalid(format!(
                    "invalid hugepage page_size {:?}: expected e.g. 2MB or 1GB",
                    h.page_size
                )));
            }
            limits.push(json!({ "pageSize": h.page_size, "limit": h.limit }));
        }
        res["hugepageLimits"] = json!(limits);
    }
    if !r.unified.is_empty() {
        res["unified"] = json!(r.unified);
    }
    Ok(())
}

fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|part| {
        let mut bounds = part.splitn(2, '-');
        let lo = bounds.next().and_then(|b| b.trim().parse::<u32>().ok());
        match (lo, bounds.next()) {
            (Some(_), None) => true,
            (Some(lo), Some(hi)) => hi.trim().parse::<u32>().is_ok_and(|hi| hi >= lo),
            _ => false,
        }
    })
}

fn valid_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB" | "kB")
}

/// The OOM score adjustment to set: within -1000..=1000, and never below berth-cri's own (this
/// host forbids lowering it; the request is clamped, as containerd's
/// `restrict_oom_score_adj` does).
fn oom_score_adj(requested: i64) -> Result<Option<i64>, Status> {
    if requested == 0 {
        return Ok(None);
    }
    if !(-1000..=1000).contains(&requested) {
        return Err(invalid(format!(
            "invalid oom_score_adj {requested}: must be within -1000..=1000"
        )));
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    Ok(Some(requested.max(own)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets_and_page_sizes() {
        for ok in ["0", "0-1", "0,2-3"] {
            assert!(valid_cpuset(ok), "{ok}");
        }
        for bad in ["", "a", "2-1", "0,", "-1"] {
            assert!(!valid_cpuset(bad), "{bad}");
        }
        assert!(valid_page_size("2MB") && valid_page_size("1GB"));
        assert!(!valid_page_size("2") && !valid_page_size("MB") && !valid_page_size("2XB"));
    }

    #[test]
    fn stop_signals_map_to_names() {
        assert_eq!(stop_signal(0).unwrap(), None);
        assert_eq!(
            stop_signal(cri::Signal::Sigquit as i32).unwrap().as_deref(),
            Some("SIGQUIT")
        );
        assert_eq!(
            stop_signal(cri::Signal::Sigrtminplus3 as i32)
                .unwrap()
                .as_deref(),
            Some("SIGRTMIN+3")
        );
        assert!(stop_signal(999).is_err());
    }

    #[test]
    fn bad_resources_are_invalid_argument() {
        let mut linux = json!({});
        for r in [
            cri::LinuxContainerResources {
                cpu_shares: 1,
                ..Default::default()
            },
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            },
            cri::LinuxContainerResources {
                cpuset_cpus: "x".into(),
                ..Default::default()
            },
        ] {
            let e = apply_resources(&mut linux, &r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        apply_resources(&mut linux, &r).unwrap();
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["memory"]["limit"], 1 << 20);
    }
}
