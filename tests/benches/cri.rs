//! The pod + container lifecycle through the CRI, berth-cri against containerd 1.6's CRI
//! plugin (Debian's `containerd`), in the same run, driven by the same generated client
//! (`berth_api::runtime::v1`); then the memory of 30 pods of 2 containers each.
//!
//! `cargo bench -p berth-tests --bench cri` (root; Debian's containerd, runc,
//! containernetworking-plugins, docker-registry, skopeo, busybox-static). Not part of CI.
//! `BENCH_N` sets the cycles per side (default 30, at least 20 for a reported median);
//! `BENCH_PODS` the pods of the memory measurement (default 30).
//!
//! One cycle = RunPodSandbox, PullImage (of an image already pulled), CreateContainer,
//! StartContainer (`sleep`), StopContainer (timeout 0), RemoveContainer, StopPodSandbox,
//! RemovePodSandbox. The two sides alternate so that drift hits both.
//!
//! Nothing comes from the internet: a docker-registry on loopback serves the busybox image
//! and containerd's sandbox image (a pause-like image: busybox running `sleep`), which
//! containerd pulls as `registry.k8s.io/pause:3.6` through a mirror pointing at it. containerd
//! runs with `restrict_oom_score_adj = true` (root here may only raise oom_score_adj) and
//! gives pods their network with Debian's CNI bridge + host-local on a subnet no host route
//! uses; berth-cri gives them berth's bridge.
//!
//! Memory: 30 pods of 2 `sleep` containers each on both sides, then the summed RSS (and PSS) of
//! the runtime's own processes: berth's services and shims against containerd, its shims and
//! its pause processes (the containers' own processes are left out on both sides).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_api::client::{self, Channel};
use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::image_service_client::ImageServiceClient;
use berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_tests::bench::{env_or, median, ms, run, samples, summary};
use berth_tests::cleanup::remove_cgroup_parent;
use berth_tests::fixtures::containerd::{Containerd, CriConfig};
use berth_tests::fixtures::images::{self, LayerBuilder, LayoutWriter};
use berth_tests::fixtures::registry::Registry;
use berth_tests::harness::processes_mentioning;
use berth_tests::{Berth, Mode, Options};
use serde_json::json;

/// The CRI namespace (both sides use it).
const NS: &str = "k8s.io";
/// Where the sandbox image is pushed, under the name containerd's config points at.
const PAUSE: &str = "pause:3.6";
/// The pod subnet of containerd's CNI bridge (no host route uses it: checked).
const CNI_SUBNET: &str = "10.254.77.0/24";
/// The command of the pause-like sandbox image.
const PAUSE_CMD: [&str; 3] = ["/busybox", "sleep", "2147483647"];
/// The steps of a cycle, for the breakdown.
const STEPS: [&str; 8] = [
    "RunPodSandbox",
    "PullImage",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// The CRI clients of one runtime.
#[derive(Clone)]
struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    async fn connect(socket: &Path) -> Result<Cri> {
        let channel = client::connect(socket, NS).await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }
}

/// A pod config named `name`, logging under `logs`.
fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A container config running `sleep 1000` from `image`.
fn container_config(name: &str, image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn pull(c: &mut Cri, image: &str, pod: Option<cri::PodSandboxConfig>) -> Result<()> {
    c.images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: pod,
        })
        .await
        .with_context(|| format!("PullImage {image}"))?;
    Ok(())
}

async fn run_pod(c: &mut Cri, config: &cri::PodSandboxConfig) -> Result<String> {
    Ok(c.runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id)
}

async fn create_container(
    c: &mut Cri,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String> {
    Ok(c.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id)
}

async fn start_container(c: &mut Cri, id: &str) -> Result<()> {
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .context("StartContainer")?;
    Ok(())
}

/// Stops and removes every pod (and so its containers) of a runtime.
async fn remove_pod(c: &mut Cri, pod: &str) -> Result<()> {
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .context("StopPodSandbox")?;
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .context("RemovePodSandbox")?;
    Ok(())
}

/// Removes every pod of a runtime, best effort.
async fn remove_all(c: &mut Cri) {
    let pods = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    for pod in pods {
        let _ = remove_pod(c, &pod.id).await;
    }
}

/// One lifecycle; returns its duration and the duration of each of its [`STEPS`].
async fn cycle(c: &mut Cri, name: &str, image: &str, logs: &Path) -> Result<Vec<Duration>> {
    let mut steps = Vec::new();
    let mut last = Instant::now();
    let mut step = || {
        let now = Instant::now();
        steps.push(now - last);
        last = now;
    };
    let config = pod_config(name, logs);
    let pod = run_pod(c, &config).await?;
    step();
    pull(c, image, Some(config.clone())).await?;
    step();
    let id = create_container(c, &pod, &config, container_config("main", image)).await?;
    step();
    start_container(c, &id).await?;
    step();
    c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer")?;
    step();
    c.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("RemoveContainer")?;
    step();
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .context("StopPodSandbox")?;
    step();
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .context("RemovePodSandbox")?;
    step();
    Ok(steps)
}

/// Starts `pods` pods of two running containers each; returns the pod ids.
async fn fill(c: &mut Cri, pods: usize, image: &str, logs: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..pods {
        let config = pod_config(&format!("mem-{i}"), logs);
        let pod = run_pod(c, &config).await?;
        ids.push(pod.clone());
        for name in ["a", "b"] {
            let id = create_container(c, &pod, &config, container_config(name, image)).await?;
            start_container(c, &id).await?;
        }
    }
    Ok(ids)
}

/// RSS and PSS (KiB) summed over `pids`.
fn memory(pids: &BTreeSet<u32>) -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    pids.iter()
        .map(|pid| {
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            (field(&rollup, "Rss:"), field(&rollup, "Pss:"))
        })
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2))
}

/// Pid → (parent pid, command line with NULs as spaces) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split(' ').nth(1)?.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        out.push((pid, ppid, cmdline.trim_end().to_owned()));
    }
    out
}

/// berth's processes: every service and shim of the instance (they name its directories).
fn berth_processes(berth: &Berth) -> BTreeSet<u32> {
    processes_mentioning(&berth.root())
        .into_iter()
        .chain(processes_mentioning(&berth.state()))
        .collect()
}

/// containerd's processes: the daemon, its shims, and the shims' pause processes.
fn containerd_processes(ctr: &Containerd) -> BTreeSet<u32> {
    let shims: BTreeSet<u32> = processes_mentioning(ctr.socket()).into_iter().collect();
    let pause = PAUSE_CMD.join(" ");
    let all = processes();
    let pauses = all
        .iter()
        .filter(|(_, ppid, cmd)| shims.contains(ppid) && *cmd == pause)
        .map(|(pid, _, _)| *pid);
    std::iter::once(ctr.pid())
        .chain(shims.iter().copied())
        .chain(pauses)
        .collect()
}

/// Writes the pause-like sandbox image (one layer: `/busybox`) into the layout at `dir`.
fn pause_layout(dir: &Path) -> Result<()> {
    let binary = std::fs::read(images::BUSYBOX_PATH)?;
    let mut layer = LayerBuilder::new("pause: busybox sleeping");
    layer.file("busybox", 0o755, binary);
    let mut w = LayoutWriter::open(dir)?;
    w.add_image(
        "pause",
        &[layer.build()?],
        json!({ "Entrypoint": PAUSE_CMD, "Env": [images::DEFAULT_PATH_ENV] }),
    )?;
    w.finish()?;
    Ok(())
}

fn print_side(label: &str, total: &[Duration], steps: &[Vec<Duration>]) {
    println!("  {label:<10} {:8.1} ms", ms(median(total)));
    for (name, d) in STEPS.iter().zip(steps) {
        println!("    {name:<18} {:8.2} ms", ms(median(d)));
    }
}

fn main() -> Result<()> {
    let n = samples();
    ensure!(n >= 20, "BENCH_N must be at least 20 (a median of >= 20)");
    let pods = env_or("BENCH_PODS", 30usize);
    let routes = run(std::process::Command::new("ip").args(["route"]))?;
    ensure!(
        !routes.contains("10.254.77."),
        "a host route uses {CNI_SUBNET}: {routes}"
    );
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-cri-")
        .tempdir()?;
    let logs = dir.path().join("pod-logs");

    // The loopback registry with busybox and the sandbox image.
    let registry = Registry::start()?;
    let layout = dir.path().join("layout");
    images::busybox_layout(&layout)?;
    pause_layout(&layout)?;
    registry.push_layout(&layout, images::BUSYBOX_TAG, "bench/busybox:1")?;
    registry.push_layout(&layout, "pause", PAUSE)?;
    let image = format!("{}/bench/busybox:1", registry.addr());
    let mirror = format!("http://{}", registry.addr());

    let ctr = Containerd::start_cri(
        &dir.path().join("containerd"),
        &CriConfig {
            sandbox_image: format!("registry.k8s.io/{PAUSE}"),
            mirrors: vec![
                ("registry.k8s.io".into(), mirror.clone()),
                (registry.addr(), mirror),
            ],
            bridge: "cni-bench0".into(),
            subnet: CNI_SUBNET.into(),
        },
    )?;
    let berth = Berth::start_with(
        Mode::Separate,
        Options {
            config: Some(
                "[network]\ndefault_bridge = \"berth-cb0\"\nnft_table = \"berth_cb\"\n\
                 pools = [{ base = \"10.253.0.0/16\", size = 24 }]\n\
                 [tasks]\ncgroup_parent = \"berth-bench-cri\"\n"
                    .into(),
            ),
            ..Default::default()
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut b = Cri::connect(&berth.socket("cri")).await?;
        let mut c = Cri::connect(ctr.socket()).await?;
        // The image is cached on both sides before the cycles ("PullImage of a cached image").
        pull(&mut b, &image, None).await.context("berth")?;
        pull(&mut c, &image, None).await.context("containerd")?;

        let mut totals: [Vec<Duration>; 2] = Default::default();
        let mut steps: [Vec<Vec<Duration>>; 2] = [vec![Vec::new(); 8], vec![Vec::new(); 8]];
        // One warm-up round, not counted.
        for round in 0..=n {
            for (side, client) in [&mut b, &mut c].into_iter().enumerate() {
                let name = format!("cycle-{round}");
                let s = cycle(client, &name, &image, &logs)
                    .await
                    .with_context(|| ["berth", "containerd"][side])?;
                if round > 0 {
                    totals[side].push(s.iter().sum());
                    for (k, d) in s.into_iter().enumerate() {
                        steps[side][k].push(d);
                    }
                }
            }
        }
        println!("CRI pod + container lifecycle, median of {n}:");
        print_side("berth-cri", &totals[0], &steps[0]);
        print_side("containerd", &totals[1], &steps[1]);
        let (tb, tc) = (ms(median(&totals[0])), ms(median(&totals[1])));
        println!("  berth / containerd = {:.2}   (target <= 0.33)", tb / tc);

        // Memory of `pods` pods of two containers each, one side at a time.
        let berth_pods = fill(&mut b, pods, &image, &logs).await.context("berth")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let berth_set = berth_processes(&berth);
        let berth_mem = memory(&berth_set);
        for pod in &berth_pods {
            remove_pod(&mut b, pod).await?;
        }
        let ctr_pods = fill(&mut c, pods, &image, &logs)
            .await
            .context("containerd")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ctr_set = containerd_processes(&ctr);
        let ctr_mem = memory(&ctr_set);
        for pod in &ctr_pods {
            remove_pod(&mut c, pod).await?;
        }
        println!("{pods} pods of 2 containers, the runtime's own processes:");
        println!(
            "  berth      {:3} processes  RSS {:8} KiB  PSS {:8} KiB",
            berth_set.len(),
            berth_mem.0,
            berth_mem.1
        );
        println!(
            "  containerd {:3} processes  RSS {:8} KiB  PSS {:8} KiB",
            ctr_set.len(),
            ctr_mem.0,
            ctr_mem.1
        );
        println!(
            "  berth / containerd: RSS {:.2}  PSS {:.2}",
            berth_mem.0 as f64 / ctr_mem.0 as f64,
            berth_mem.1 as f64 / ctr_mem.1 as f64
        );
        summary(
            "CRI pod+container lifecycle vs containerd 1.6 CRI",
            tb,
            tc,
            "ms",
            "<= 0.33",
        );
        summary(
            &format!("RSS of {pods} pods x 2 containers (runtime processes)"),
            berth_mem.0 as f64 / 1024.0,
            ctr_mem.0 as f64 / 1024.0,
            "MiB",
            "-",
        );
        anyhow::Ok(())
    });
    // After a failure, pods may be left on either side.
    rt.block_on(async {
        for socket in [berth.socket("cri"), ctr.socket().to_owned()] {
            if let Ok(mut c) = Cri::connect(&socket).await {
                remove_all(&mut c).await;
            }
        }
    });
    drop(rt);
    let stopped = berth.stop();
    drop(ctr);
    let _ = remove_cgroup_parent("berth-bench-cri");
    // containerd's CRI puts pods under /k8s.io (left empty once they are gone).
    let _ = remove_cgroup_parent("k8s.io");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "cni-bench0"])
        .output();
    result?;
    stopped
}
