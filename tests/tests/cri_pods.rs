//! Pod sandboxes through berth's CRI facade (cri.sock), against a real berth: the pod
//! lifecycle and its status, filters, files and pinned namespaces; two pods that reach each
//! other and do not share ipc/uts; host network and hostPorts; bad input; restarts of the
//! services; the list streams; and the runtime-wide RPCs.
//!
//! Each test runs its own berth (own bridge, nft table, address pool 10.200-10.206 or 10.210,
//! cgroup parent) and ends with [`CriBerth::stop`], which checks that nothing is left behind.
//! Traffic only goes to addresses inside the test's pod network and to the host's own address.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_api::berth::network::v1 as net;
use berth_api::berth::network::v1::networks_client::NetworksClient;
use berth_api::runtime::v1 as cri;
use berth_tests::Mode;
use berth_tests::cri::{CriBerth, container_config};
use berth_tests::harness::mounts_under;
use berth_tests::host::{host_address, host_wget};
use tonic::Code;

fn status(env: &CriBerth, id: &str, verbose: bool) -> Result<cri::PodSandboxStatusResponse> {
    let mut rt = env.runtime()?;
    Ok(env
        .block_on(rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose,
        }))?
        .into_inner())
}

fn list(env: &CriBerth, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<String>> {
    let mut rt = env.runtime()?;
    Ok(env
        .block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter }))?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}

fn stop_pod(env: &CriBerth, id: &str) -> Result<(), tonic::Status> {
    let mut rt = env
        .runtime()
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    env.block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    }))
    .map(drop)
}

fn remove_pod(env: &CriBerth, id: &str) -> Result<(), tonic::Status> {
    let mut rt = env
        .runtime()
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    env.block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    }))
    .map(drop)
}

fn run_err(env: &CriBerth, config: Option<cri::PodSandboxConfig>, handler: &str) -> tonic::Status {
    let mut rt = env.runtime().expect("runtime client");
    match env.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config,
        runtime_handler: handler.to_owned(),
    })) {
        Ok(r) => panic!("RunPodSandbox succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    }
}

/// The record of a pod (the `config` of the verbose info).
fn record(env: &CriBerth, id: &str) -> Result<serde_json::Value> {
    let resp = status(env, id, true)?;
    let info: serde_json::Value = serde_json::from_str(resp.info.get("info").context("info")?)?;
    Ok(info["config"].clone())
}

/// Output of a command that must succeed.
fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The namespace inode of a pinned namespace file.
fn ns_inode(path: &str) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {path}"))?
        .ino())
}

#[test]
fn pod_lifecycle_status_filters_and_files() -> Result<()> {
    let env = CriBerth::start(Mode::AllInOne, "10.200.0.0", "")?;
    let mut rt = env.runtime()?;

    let v = env
        .block_on(rt.version(cri::VersionRequest {
            version: "v1".into(),
        }))?
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );
    let st = env
        .block_on(rt.status(cri::StatusRequest { verbose: true }))?
        .into_inner();
    let conditions = st.status.context("status")?.conditions;
    for kind in ["RuntimeReady", "NetworkReady"] {
        let c = conditions.iter().find(|c| c.r#type == kind).context(kind)?;
        assert!(c.status, "{kind} false: {}", c.message);
    }
    assert!(st.info.contains_key("config"));
    let rc = env
        .block_on(rt.runtime_config(cri::RuntimeConfigRequest {}))?
        .into_inner();
    assert_eq!(
        rc.linux.context("linux")?.cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
    env.block_on(rt.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: "10.200.0.0/16".into(),
            }),
        }),
    }))?;
    let bad_cidr = env
        .block_on(rt.update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: "10.200.0.0".into(),
                }),
            }),
        }))
        .unwrap_err();
    assert_eq!(bad_cidr.code(), Code::InvalidArgument);

    let mut config = env.pod_config("web")?;
    config.annotations.insert("note".into(), "first".into());
    config
        .linux
        .as_mut()
        .context("linux")?
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
    config.linux.as_mut().context("linux")?.cgroup_parent = "/kubepods/pod-web".into();
    let started = Instant::now();
    let id = env.run_pod(config)?;
    eprintln!("RunPodSandbox: {:?}", started.elapsed());
    assert_eq!(id.len(), 64);

    let resp = status(&env, &id[..12], false)?;
    let s = resp.status.context("status")?;
    assert_eq!(s.id, id);
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.metadata.context("metadata")?.name, "web");
    assert_eq!(s.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(s.annotations.get("note").map(String::as_str), Some("first"));
    assert!(s.created_at > 0);
    let ip = s.network.context("network")?.ip;
    assert!(ip.starts_with("10.200."), "pod ip {ip}");
    let ns = s
        .linux
        .context("linux")?
        .namespaces
        .context("ns")?
        .options
        .context("opts")?;
    assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
    assert_eq!(ns.ipc, cri::NamespaceMode::Pod as i32);
    assert!(resp.info.is_empty(), "info without verbose");

    // The record: pinned namespaces, files, sysctl applied in the netns.
    let rec = record(&env, &id)?;
    let netns = rec["netns_path"].as_str().context("netns")?.to_owned();
    let ipc = rec["ipc_ns_path"].as_str().context("ipc")?.to_owned();
    let uts = rec["uts_ns_path"].as_str().context("uts")?.to_owned();
    assert_eq!(rec["cgroup_parent"], "/kubepods/pod-web");
    let mounts = mounts_under(&env.berth().state())?;
    for p in [&netns, &ipc, &uts] {
        assert!(
            mounts.iter().any(|m| m == p),
            "{p} is not mounted: {mounts:?}"
        );
    }
    assert_eq!(
        sh(Command::new("nsenter")
            .arg(format!("--uts={uts}"))
            .arg("hostname"))?,
        "web"
    );
    assert_ne!(ns_inode(&ipc)?, ns_inode("/proc/self/ns/ipc")?);
    let sysctl = sh(Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]))?;
    assert_eq!(sysctl, "80");
    let addr = sh(Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-4", "-o", "addr", "show", "eth0"]))?;
    assert!(addr.contains(&format!("inet {ip}/")), "{addr}");
    let resolv = std::fs::read_to_string(rec["resolv_conf_path"].as_str().context("resolv")?)?;
    assert_eq!(
        resolv,
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let hosts = std::fs::read_to_string(rec["hosts_path"].as_str().context("hosts")?)?;
    assert!(hosts.contains(&format!("{ip}\tweb\n")), "{hosts}");
    let hostname = std::fs::read_to_string(rec["hostname_path"].as_str().context("hostname")?)?;
    assert_eq!(hostname, "web\n");

    // Pod lifecycle timings (each pod: run, stop, remove), medians of 10.
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..10 {
        let config = env.pod_config(&format!("timed{i}"))?;
        let t = Instant::now();
        let pod = env.run_pod(config)?;
        times[0].push(t.elapsed());
        let t = Instant::now();
        stop_pod(&env, &pod)?;
        times[1].push(t.elapsed());
        let t = Instant::now();
        remove_pod(&env, &pod)?;
        times[2].push(t.elapsed());
    }
    for (rpc, t) in ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]
        .iter()
        .zip(&mut times)
    {
        t.sort();
        eprintln!("{rpc}: median {:?} of 10", t[5]);
    }

    // A second pod for the filters, then stats.
    let other = env.run_pod(env.pod_config("db")?)?;
    let all = list(&env, None)?;
    assert_eq!(all, vec![id.clone(), other.clone()]);
    let by_prefix = list(
        &env,
        Some(cri::PodSandboxFilter {
            id: id[..8].to_owned(),
            ..Default::default()
        }),
    )?;
    assert_eq!(by_prefix, vec![id.clone()]);
    let by_label = list(
        &env,
        Some(cri::PodSandboxFilter {
            label_selector: [("app".to_owned(), "db".to_owned())].into(),
            ..Default::default()
        }),
    )?;
    assert_eq!(by_label, vec![other.clone()]);
    let stream = env.block_on(async {
        let mut s = rt
            .stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: None })
            .await?
            .into_inner();
        let mut ids = Vec::new();
        while let Some(page) = s.message().await? {
            ids.extend(page.pod_sandboxes.into_iter().map(|p| p.id));
        }
        Ok::<_, tonic::Status>(ids)
    })?;
    assert_eq!(stream, all);
    let stats = env
        .block_on(rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: id.clone(),
        }))?
        .into_inner()
        .stats
        .context("stats")?;
    assert_eq!(stats.attributes.context("attributes")?.id, id);
    let network = stats.linux.context("linux")?.network.context("network")?;
    assert_eq!(network.default_interface.context("eth0")?.name, "eth0");
    let listed = env
        .block_on(rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: other[..10].to_owned(),
                ..Default::default()
            }),
        }))?
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let streamed = env.block_on(async {
        let mut s = rt
            .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest { filter: None })
            .await?
            .into_inner();
        let mut ids = Vec::new();
        while let Some(page) = s.message().await? {
            ids.extend(
                page.pod_sandbox_stats
                    .into_iter()
                    .filter_map(|p| p.attributes.map(|a| a.id)),
            );
        }
        Ok::<_, tonic::Status>(ids)
    })?;
    assert_eq!(streamed.len(), 2);
    let metrics = env
        .block_on(rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}))?
        .into_inner();
    assert!(metrics.pod_metrics.is_empty());
    env.block_on(
        rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: id.clone(),
            overhead: None,
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
        }),
    )?;
    assert_eq!(
        record(&env, &id)?["resources"]["memory_limit_in_bytes"],
        64 << 20
    );
    let negative = env
        .block_on(
            rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: id.clone(),
                overhead: None,
                resources: Some(cri::LinuxContainerResources {
                    cpu_shares: -2,
                    ..Default::default()
                }),
            }),
        )
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);

    // Stop: NotReady, network released, idempotent; Remove: gone, idempotent.
    let started = Instant::now();
    stop_pod(&env, &id)?;
    eprintln!("StopPodSandbox: {:?}", started.elapsed());
    stop_pod(&env, &id)?;
    let s = status(&env, &id, false)?.status.context("status")?;
    assert_eq!(s.state, cri::PodSandboxState::SandboxNotready as i32);
    let ready = list(
        &env,
        Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }),
    )?;
    assert_eq!(ready, vec![other.clone()]);
    let gone = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-4", "-o", "addr", "show", "eth0"])
        .output()?;
    assert!(!gone.status.success(), "eth0 still in the stopped pod");
    let started = Instant::now();
    remove_pod(&env, &id)?;
    eprintln!("RemovePodSandbox: {:?}", started.elapsed());
    remove_pod(&env, &id)?;
    let missing = status(&env, &id, false).unwrap_err();
    let missing = missing.downcast::<tonic::Status>()?;
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains(&id), "{}", missing.message());
    for p in [&netns, &ipc, &uts] {
        assert!(!std::path::Path::new(p).exists(), "{p} left");
    }
    assert_eq!(list(&env, None)?, vec![other]);
    env.stop()
}

#[test]
fn two_pods_reach_each_other_and_share_nothing_else() -> Result<()> {
    let env = CriBerth::start(Mode::AllInOne, "10.201.0.0", "")?;
    let a = env.run_pod(env.pod_config("alpha")?)?;
    let b = env.run_pod(env.pod_config("beta")?)?;
    let ra = record(&env, &a)?;
    let rb = record(&env, &b)?;
    let (ipa, ipb) = (
        ra["ip"].as_str().context("ip")?,
        rb["ip"].as_str().context("ip")?,
    );
    assert_ne!(ipa, ipb);
    for (from, to) in [(&ra, ipb), (&rb, ipa)] {
        let netns = from["netns_path"].as_str().context("netns")?;
        sh(Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["busybox", "ping", "-c", "1", "-W", "2", to]))?;
    }
    for kind in ["ipc_ns_path", "uts_ns_path", "netns_path"] {
        let (x, y) = (
            ra[kind].as_str().context(kind)?,
            rb[kind].as_str().context(kind)?,
        );
        assert_ne!(ns_inode(x)?, ns_inode(y)?, "{kind} shared by two pods");
    }
    assert_eq!(
        sh(Command::new("nsenter")
            .arg(format!(
                "--uts={}",
                rb["uts_ns_path"].as_str().unwrap_or_default()
            ))
            .arg("hostname"))?,
        "beta"
    );

    // Two containers of one pod share its ipc and uts namespaces; the other pod's do not.
    let mut rt = env.runtime()?;
    let mut exec_ns =
        |pod: &str, config: &cri::PodSandboxConfig, name: &str| -> Result<(String, String)> {
            let cid = env
                .block_on(rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.to_owned(),
                    config: Some(container_config(name, &["sleep", "600"])),
                    sandbox_config: Some(config.clone()),
                }))?
                .into_inner()
                .container_id;
            env.block_on(rt.start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            }))?;
            let out = env
                .block_on(rt.exec_sync(cri::ExecSyncRequest {
                    container_id: cid,
                    cmd: vec![
                        "sh".into(),
                        "-c".into(),
                        "readlink /proc/self/ns/ipc; hostname".into(),
                    ],
                    timeout: 10,
                }))?
                .into_inner();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines();
            Ok((
                lines.next().unwrap_or_default().to_owned(),
                lines.next().unwrap_or_default().to_owned(),
            ))
        };
    let ca = env.pod_config("alpha")?;
    let cb = env.pod_config("beta")?;
    let (ipc1, host1) = exec_ns(&a, &ca, "one")?;
    let (ipc2, host2) = exec_ns(&a, &ca, "two")?;
    let (ipc3, host3) = exec_ns(&b, &cb, "three")?;
    assert_eq!(
        ipc1,
        format!(
            "ipc:[{}]",
            ns_inode(ra["ipc_ns_path"].as_str().unwrap_or_default())?
        )
    );
    assert_eq!(
        (ipc1.as_str(), host1.as_str()),
        (ipc2.as_str(), host2.as_str())
    );
    assert_eq!(host1, "alpha");
    assert_ne!(ipc1, ipc3);
    assert_eq!(host3, "beta");

    // The pod's stats sum its containers'.
    let stats = env
        .block_on(rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: a.clone(),
        }))?
        .into_inner()
        .stats
        .context("stats")?
        .linux
        .context("linux")?;
    assert_eq!(stats.containers.len(), 2);
    let working_set = |m: &Option<cri::MemoryUsage>| {
        m.as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value)
    };
    let per_container: u64 = stats
        .containers
        .iter()
        .map(|c| working_set(&c.memory))
        .sum();
    assert!(per_container > 0, "{stats:?}");
    assert_eq!(working_set(&stats.memory), per_container);
    let cpu = stats
        .cpu
        .context("cpu")?
        .usage_core_nano_seconds
        .context("cpu usage")?;
    assert!(cpu.value > 0, "pod cpu {cpu:?}");

    // Stop kills the pod's containers; remove removes them.
    stop_pod(&env, &a)?;
    let containers = env
        .block_on(rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: a.clone(),
                ..Default::default()
            }),
        }))?
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 2);
    assert!(
        containers
            .iter()
            .all(|c| c.state == cri::ContainerState::ContainerExited as i32),
        "{containers:?}"
    );
    remove_pod(&env, &a)?;
    let left = env
        .block_on(rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: a.clone(),
                ..Default::default()
            }),
        }))?
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    env.stop()
}

#[test]
fn host_network_and_host_ports() -> Result<()> {
    let env = CriBerth::start(Mode::AllInOne, "10.202.0.0", "")?;
    // Host network and host ipc: nothing pinned but the files.
    let mut config = env.pod_config("hostnet")?;
    config.linux.as_mut().context("linux")?.security_context =
        Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ipc: cri::NamespaceMode::Node as i32,
                pid: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    let host = env.run_pod(config)?;
    let rec = record(&env, &host)?;
    for kind in ["netns_path", "ipc_ns_path", "uts_ns_path", "ip"] {
        assert_eq!(rec[kind], "", "{kind} of a host-network pod");
    }
    let s = status(&env, &host, false)?.status.context("status")?;
    let ns = s
        .linux
        .context("linux")?
        .namespaces
        .context("ns")?
        .options
        .context("opts")?;
    assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    assert_eq!(ns.pid, cri::NamespaceMode::Node as i32);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert_eq!(rec["hostname"], host_name.trim());

    // A hostPort reaches a server in the pod's network namespace.
    let port = berth_tests::fixtures::registry::free_port()?;
    let mut config = env.pod_config("ported")?;
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(port),
        host_ip: String::new(),
    }];
    let ported = env.run_pod(config)?;
    let rec = record(&env, &ported)?;
    assert_eq!(rec["port_mappings"][0]["host_port"], port);
    let www = env.scratch.path().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "from the pod\n")?;
    let mut httpd = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            rec["netns_path"].as_str().context("netns")?
        ))
        .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(&www)
        .spawn()?;
    let (_, addr) = host_address()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some(b) = host_wget(&format!("http://{addr}:{port}/"))? {
            break Some(b);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    httpd.kill()?;
    httpd.wait()?;
    assert_eq!(body.as_deref(), Some("from the pod"));
    stop_pod(&env, &ported)?;
    assert_eq!(host_wget(&format!("http://{addr}:{port}/"))?, None);
    env.stop()
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() -> Result<()> {
    let env = CriBerth::start(Mode::AllInOne, "10.203.0.0", "")?;
    assert_eq!(run_err(&env, None, "").code(), Code::InvalidArgument);
    let mut no_meta = env.pod_config("nometa")?;
    no_meta.metadata = None;
    let e = run_err(&env, Some(no_meta), "");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("metadata"), "{}", e.message());
    let mut no_uid = env.pod_config("nouid")?;
    no_uid.metadata.as_mut().context("metadata")?.uid.clear();
    assert!(run_err(&env, Some(no_uid), "").message().contains("uid"));
    let e = run_err(&env, Some(env.pod_config("handler")?), "kata");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("kata"), "{}", e.message());
    let mut sysctl = env.pod_config("sysctl")?;
    sysctl
        .linux
        .as_mut()
        .context("linux")?
        .sysctls
        .insert("kernel.panic".into(), "1".into());
    assert_eq!(
        run_err(&env, Some(sysctl), "").code(),
        Code::InvalidArgument
    );
    let mut port = env.pod_config("port")?;
    port.port_mappings = vec![cri::PortMapping {
        container_port: 70000,
        host_port: 8080,
        ..Default::default()
    }];
    assert_eq!(run_err(&env, Some(port), "").code(), Code::InvalidArgument);
    // Fails after the network namespace was made: everything is undone.
    let mut late = env.pod_config("late")?;
    late.linux
        .as_mut()
        .context("linux")?
        .sysctls
        .insert("net.ipv4.no_such_key".into(), "1".into());
    assert_eq!(run_err(&env, Some(late), "").code(), Code::InvalidArgument);
    let left = env.leftovers()?;
    assert!(
        left.iter()
            .all(|l| l.starts_with("link berth-c") && l.ends_with('0')),
        "a failed RunPodSandbox left {left:?}"
    );

    // A duplicate name (same name, namespace, uid, attempt) names the holder.
    let id = env.run_pod(env.pod_config("dup")?)?;
    let e = run_err(&env, Some(env.pod_config("dup")?), "runc");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains(&id), "{}", e.message());
    let mut next = env.pod_config("dup")?;
    next.metadata.as_mut().context("metadata")?.attempt = 1;
    let second = env.run_pod(next)?;
    assert_ne!(second, id);

    // A hostPort another pod holds: refused after the netns was made, and undone.
    let port = berth_tests::fixtures::registry::free_port()?;
    let ported = |name: &str| -> Result<cri::PodSandboxConfig> {
        let mut c = env.pod_config(name)?;
        c.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: i32::from(port),
            host_ip: String::new(),
        }];
        Ok(c)
    };
    let holder = env.run_pod(ported("holder")?)?;
    let netns_before = env
        .leftovers()?
        .iter()
        .filter(|l| l.starts_with("netns"))
        .count();
    let e = run_err(&env, Some(ported("taker")?), "");
    assert!(e.message().contains(&port.to_string()), "{e:?}");
    let netns_after = env
        .leftovers()?
        .iter()
        .filter(|l| l.starts_with("netns"))
        .count();
    assert_eq!(netns_after, netns_before, "the refused pod left its netns");
    assert!(list(&env, None)?.contains(&holder));

    // Two RunPodSandbox of one name at once: one pod, one AlreadyExists.
    let (mut c1, mut c2) = (env.runtime()?, env.runtime()?);
    let request = || cri::RunPodSandboxRequest {
        config: env.pod_config("race").ok(),
        runtime_handler: String::new(),
    };
    let (r1, r2) = env.block_on(async {
        tokio::join!(c1.run_pod_sandbox(request()), c2.run_pod_sandbox(request()))
    });
    let codes = [&r1, &r2].map(|r| r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok));
    assert!(
        codes.contains(&Code::Ok) && codes.contains(&Code::AlreadyExists),
        "{r1:?} {r2:?}"
    );
    let race = list(
        &env,
        Some(cri::PodSandboxFilter {
            label_selector: [("app".to_owned(), "race".to_owned())].into(),
            ..Default::default()
        }),
    )?;
    assert_eq!(race.len(), 1);

    // Unknown ids: stop and remove succeed, status is NotFound.
    let unknown = "0123456789abcdef".repeat(4);
    stop_pod(&env, &unknown)?;
    remove_pod(&env, &unknown)?;
    let e = status(&env, &unknown, false)
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(e.code(), Code::NotFound);
    let mut rt = env.runtime()?;
    let e = env
        .block_on(rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: unknown.clone(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env
        .block_on(
            rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: unknown,
                ..Default::default()
            }),
        )
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    env.stop()
}

/// Kills `service` with SIGKILL and starts it again (`berthctl system up`).
fn kill_and_restart(env: &CriBerth, service: &str) -> Result<()> {
    let pid = env.berth().service_pid(service)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    berth_tests::harness::wait_exited(pid, Duration::from_secs(10))?;
    let out = env.berth().up(&env.options)?;
    ensure!(
        out.status.success(),
        "system up after killing {service}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn pods_survive_restarts_of_every_service() -> Result<()> {
    restarts_keep_pods(
        Mode::Separate,
        "10.204.0.0",
        &["cri", "network", "tasks", "cri"],
    )
}

#[test]
fn pods_survive_a_kill_of_berthd() -> Result<()> {
    // All in one: killing the cri service kills berthd and every service in it.
    restarts_keep_pods(Mode::AllInOne, "10.206.0.0", &["cri"])
}

/// Runs a ready pod with a running container and a stopped pod, SIGKILLs and restarts each of
/// `services` in turn, and checks that the pods' status and the container are unchanged.
fn restarts_keep_pods(mode: Mode, pool: &str, services: &[&str]) -> Result<()> {
    let env = CriBerth::start(mode, pool, "")?;
    let ready = env.run_pod(env.pod_config("keep")?)?;
    let stopped = env.run_pod(env.pod_config("halt")?)?;
    let mut rt = env.runtime()?;
    let config = env.pod_config("keep")?;
    let cid = env
        .block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: ready.clone(),
            config: Some(container_config("sleeper", &["sleep", "600"])),
            sandbox_config: Some(config),
        }))?
        .into_inner()
        .container_id;
    env.block_on(rt.start_container(cri::StartContainerRequest {
        container_id: cid.clone(),
    }))?;
    stop_pod(&env, &stopped)?;
    let before: Vec<_> = [&ready, &stopped]
        .iter()
        .map(|id| status(&env, id, false).map(|r| r.status))
        .collect::<Result<_>>()?;

    // What a RunPodSandbox interrupted by a crash leaves (a pod directory with a pinned ipc
    // namespace and no record) is removed when the cri service starts.
    let orphan = env.berth().state().join("cri/pods").join("f".repeat(64));
    std::fs::create_dir_all(&orphan)?;
    std::fs::write(orphan.join("ipc"), "")?;
    sh(Command::new("unshare")
        .arg(format!("--ipc={}", orphan.join("ipc").display()))
        .arg("true"))?;
    let orphan_netns = env.block_on(async {
        let channel = berth_api::client::connect(&env.berth().socket("network"), "k8s.io").await?;
        let netns = NetworksClient::new(channel)
            .create_netns(net::CreateNetnsRequest {
                sandbox_id: "f".repeat(64),
            })
            .await?
            .into_inner()
            .netns_path;
        anyhow::Ok(netns)
    })?;
    assert!(std::path::Path::new(&orphan_netns).exists());
    for service in services {
        kill_and_restart(&env, service)?;
        assert!(
            !orphan.exists(),
            "orphan pod directory after restarting {service}"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::path::Path::new(&orphan_netns).exists() {
            ensure!(
                Instant::now() < deadline,
                "the orphan's netns was not released"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let after: Vec<_> = [&ready, &stopped]
            .iter()
            .map(|id| status(&env, id, false).map(|r| r.status))
            .collect::<Result<_>>()?;
        assert_eq!(after, before, "after a restart of {service}");
        let mut rt = env.runtime()?;
        let c = env
            .block_on(rt.container_status(cri::ContainerStatusRequest {
                container_id: cid.clone(),
                verbose: false,
            }))?
            .into_inner()
            .status
            .context("container status")?;
        assert_eq!(
            c.state,
            cri::ContainerState::ContainerRunning as i32,
            "container after a restart of {service}"
        );
    }
    // The pod still works after the restarts: its ipc namespace is the container's.
    let mut rt = env.runtime()?;
    let out = env
        .block_on(rt.exec_sync(cri::ExecSyncRequest {
            container_id: cid,
            cmd: vec!["readlink".into(), "/proc/self/ns/ipc".into()],
            timeout: 10,
        }))?
        .into_inner();
    let rec = record(&env, &ready)?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "ipc:[{}]",
            ns_inode(rec["ipc_ns_path"].as_str().unwrap_or_default())?
        )
    );
    env.stop()
}

#[test]
fn pods_join_a_cni_network_named_in_the_config() -> Result<()> {
    ensure!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "Debian's containernetworking-plugins are not installed (tests/run.sh installs them)"
    );
    let env = CriBerth::start(
        Mode::AllInOne,
        "10.205.0.0",
        "[cri]\npod_network = \"kubenet\"\n",
    )?;
    // Not ready until the pod network exists.
    let mut rt = env.runtime()?;
    let network_ready = |rt: &mut berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient<_>| -> Result<cri::RuntimeCondition> {
        let st = env
            .block_on(rt.status(cri::StatusRequest { verbose: false }))?
            .into_inner();
        st.status
            .context("status")?
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .context("NetworkReady")
    };
    let c = network_ready(&mut rt)?;
    assert!(!c.status, "NetworkReady without the pod network");
    assert!(c.message.contains("kubenet"), "{}", c.message);
    assert_eq!(c.reason, "NetworkNotReady");
    let e = run_err(&env, Some(env.pod_config("early")?), "");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let left = env.leftovers()?;
    assert!(
        left.iter()
            .all(|l| l.starts_with("link berth-c") && l.ends_with('0')),
        "a failed RunPodSandbox left {left:?}"
    );

    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"kubenet","plugins":[
            {{"type":"bridge","bridge":"berth-c{}k","isGateway":true,"ipMasq":false,
              "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.205.7.0/24"}}]],
              "routes":[{{"dst":"0.0.0.0/0"}}]}}}}]}}"#,
        env.tag
    );
    let file = env.scratch.path().join("kubenet.conflist");
    std::fs::write(&file, conflist)?;
    env.berth().ctl_ok(&[
        "-n",
        "k8s.io",
        "network",
        "create",
        "--driver",
        "cni",
        "--cni-conflist",
        file.to_str().context("utf-8 path")?,
        "kubenet",
    ])?;
    assert!(network_ready(&mut rt)?.status);
    let a = env.run_pod(env.pod_config("cni-a")?)?;
    let b = env.run_pod(env.pod_config("cni-b")?)?;
    let (ra, rb) = (record(&env, &a)?, record(&env, &b)?);
    assert_eq!(ra["network"]["driver"], "cni");
    let ipb = rb["ip"].as_str().context("ip")?;
    assert!(ipb.starts_with("10.205.7."), "{ipb}");
    sh(Command::new("nsenter")
        .arg(format!(
            "--net={}",
            ra["netns_path"].as_str().context("netns")?
        ))
        .args(["busybox", "ping", "-c", "1", "-W", "2", ipb]))?;
    env.stop()
}

/// Every message of `s` until EOF.
async fn drain<T>(mut s: tonic::Streaming<T>) -> Result<Vec<T>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// Item ids of each message of a CRIListStreaming answer: no message is empty, no id repeats,
/// and together they are `expected` (the List RPC's answer).
fn check_pages(what: &str, pages: Vec<Vec<String>>, expected: &[String]) {
    assert!(pages.iter().all(|p| !p.is_empty()), "{what}: empty message");
    let mut got = pages.concat();
    got.sort();
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(got, unique, "{what}: an item twice");
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(got, expected, "{what}");
}

/// The CRIListStreaming RPCs (cri-api v0.36.3): StreamPodSandboxes, StreamContainers,
/// StreamContainerStats, StreamPodSandboxStats and StreamPodSandboxMetrics send the items of
/// their List RPC in non-empty messages, each item once, then EOF, and no message when there
/// is nothing (nothing yet, or a filter that selects nothing); ListMetricDescriptors and
/// ListPodSandboxMetrics are empty (berth exports no metrics beyond the stats RPCs).
#[test]
fn list_streams_and_metrics() -> Result<()> {
    let env = CriBerth::start(Mode::AllInOne, "10.210.0.0", "")?;
    let mut rt = env.runtime()?;
    let streams =
        |rt: &mut berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient<
            berth_api::client::Channel,
        >,
         pod: &str,
         container: &str|
         -> Result<[Vec<Vec<String>>; 5]> {
            env.block_on(async {
                let pods = drain(
                    rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest {
                        filter: Some(cri::PodSandboxFilter {
                            id: pod.to_owned(),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner(),
                )
                .await?;
                let containers = drain(
                    rt.stream_containers(cri::StreamContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            pod_sandbox_id: pod.to_owned(),
                            id: container.to_owned(),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner(),
                )
                .await?;
                let container_stats = drain(
                    rt.stream_container_stats(cri::StreamContainerStatsRequest {
                        filter: Some(cri::ContainerStatsFilter {
                            pod_sandbox_id: pod.to_owned(),
                            id: container.to_owned(),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner(),
                )
                .await?;
                let pod_stats = drain(
                    rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest {
                        filter: Some(cri::PodSandboxStatsFilter {
                            id: pod.to_owned(),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner(),
                )
                .await?;
                let metrics = drain(
                    rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
                        .await?
                        .into_inner(),
                )
                .await?;
                let attr =
                    |a: Option<cri::ContainerAttributes>| a.map(|a| a.id).unwrap_or_default();
                let pattr =
                    |a: Option<cri::PodSandboxAttributes>| a.map(|a| a.id).unwrap_or_default();
                Ok::<_, anyhow::Error>([
                    pods.into_iter()
                        .map(|m| m.pod_sandboxes.into_iter().map(|p| p.id).collect())
                        .collect(),
                    containers
                        .into_iter()
                        .map(|m| m.containers.into_iter().map(|c| c.id).collect())
                        .collect(),
                    container_stats
                        .into_iter()
                        .map(|m| {
                            m.container_stats
                                .into_iter()
                                .map(|s| attr(s.attributes))
                                .collect()
                        })
                        .collect(),
                    pod_stats
                        .into_iter()
                        .map(|m| {
                            m.pod_sandbox_stats
                                .into_iter()
                                .map(|s| pattr(s.attributes))
                                .collect()
                        })
                        .collect(),
                    metrics
                        .into_iter()
                        .map(|m| {
                            m.pod_sandbox_metrics
                                .into_iter()
                                .map(|m| m.pod_sandbox_id)
                                .collect()
                        })
                        .collect(),
                ])
            })
        };

    // Nothing yet: every stream ends at once, without a message.
    for (i, pages) in streams(&mut rt, "", "")?.into_iter().enumerate() {
        assert!(pages.is_empty(), "stream {i}: {pages:?}");
    }
    let descriptors = env
        .block_on(rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}))?
        .into_inner();
    assert!(descriptors.descriptors.is_empty());

    // Two pods, three running containers.
    let mut pods = Vec::new();
    let mut containers = Vec::new();
    for (name, count) in [("streamed-a", 2), ("streamed-b", 1)] {
        let config = env.pod_config(name)?;
        let pod = env.run_pod(config.clone())?;
        for i in 0..count {
            let cid = env
                .block_on(rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(&format!("c{i}"), &["sleep", "600"])),
                    sandbox_config: Some(config.clone()),
                }))?
                .into_inner()
                .container_id;
            env.block_on(rt.start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            }))?;
            containers.push(cid);
        }
        pods.push(pod);
    }
    let [p, c, cs, ps, m] = streams(&mut rt, "", "")?;
    check_pages("StreamPodSandboxes", p, &pods);
    check_pages("StreamContainers", c, &containers);
    check_pages("StreamContainerStats", cs, &containers);
    check_pages("StreamPodSandboxStats", ps, &pods);
    assert!(m.is_empty(), "StreamPodSandboxMetrics: {m:?}");

    // Filtered to one pod: its items only.
    let [p, c, cs, ps, _] = streams(&mut rt, &pods[0], "")?;
    check_pages("StreamPodSandboxes", p, &pods[..1]);
    check_pages("StreamContainers", c, &containers[..2]);
    check_pages("StreamContainerStats", cs, &containers[..2]);
    check_pages("StreamPodSandboxStats", ps, &pods[..1]);
    // A filter that selects nothing: no message.
    let unknown = "f00".repeat(10);
    for (i, pages) in streams(&mut rt, &unknown, &unknown)?
        .into_iter()
        .enumerate()
    {
        assert!(pages.is_empty(), "stream {i}: {pages:?}");
    }
    // The List RPCs agree: nothing, and no error.
    assert!(
        list(
            &env,
            Some(cri::PodSandboxFilter {
                id: unknown.clone(),
                ..Default::default()
            })
        )?
        .is_empty()
    );
    let stats = env
        .block_on(rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: unknown.clone(),
                ..Default::default()
            }),
        }))?
        .into_inner();
    assert!(stats.stats.is_empty());
    let stats = env
        .block_on(rt.list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                id: unknown,
                ..Default::default()
            }),
        }))?
        .into_inner();
    assert!(stats.stats.is_empty());
    env.stop()
}
