//! End-to-end tests of the containers side of the CRI RuntimeService: two containers of one pod
//! sharing network, ipc and uts; lifecycle and status fields; exit codes, StartError and
//! OOMKilled; the pod's shared /dev/shm; ExecSync output, exit code and timeout; logs in the CRI
//! format at the requested path and ReopenContainerLog; UpdateContainerResources in the cgroup;
//! stats; the security context; seccomp localhost profiles; every bad input; idempotent stop and
//! remove; the events stream. Each test runs its own berth and removes everything it made.

use std::time::{Duration, Instant};

use berth_api::client::Channel;
use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_tests::Mode;
use berth_tests::cri::{CriBerth, container_config};
use futures::StreamExt;
use serde_json::Value;
use tonic::Code;

type Client = RuntimeServiceClient<Channel>;

struct Env {
    cri: CriBerth,
    rt: Client,
}

impl Env {
    fn start(pool: &str) -> Env {
        let cri = CriBerth::start(Mode::AllInOne, pool, "").unwrap();
        let rt = cri.runtime().unwrap();
        Env { cri, rt }
    }

    fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let config = self.cri.pod_config(name).unwrap();
        let id = self.cri.run_pod(config.clone()).unwrap();
        (id, config)
    }

    fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_owned(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            }))
            .map(|r| r.into_inner().container_id)
    }

    fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.start_container(cri::StartContainerRequest {
                container_id: id.to_owned(),
            }))
            .map(|_| ())
    }

    fn run(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod, pod_config, config).unwrap();
        self.start_container(&id).unwrap();
        id
    }

    fn stop(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.stop_container(cri::StopContainerRequest {
                container_id: id.to_owned(),
                timeout,
            }))
            .map(|_| ())
    }

    fn remove(&self, id: &str) -> Result<(), tonic::Status> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.remove_container(cri::RemoveContainerRequest {
                container_id: id.to_owned(),
            }))
            .map(|_| ())
    }

    fn status(&self, id: &str) -> Result<cri::ContainerStatusResponse, tonic::Status> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.container_status(cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: true,
            }))
            .map(|r| r.into_inner())
    }

    fn state(&self, id: &str) -> cri::ContainerState {
        self.status(id).unwrap().status.unwrap().state()
    }

    /// Waits (bounded) until the container has exited; its status.
    fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(id).unwrap().status.unwrap();
            if status.state() == cri::ContainerState::ContainerExited {
                return status;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {status:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.exec_sync(cri::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                timeout,
            }))
            .map(|r| r.into_inner())
    }

    /// Stdout of a command that must succeed.
    fn sh(&self, id: &str, script: &str) -> String {
        let r = self.exec(id, &["sh", "-c", script], 10).unwrap();
        assert_eq!(
            r.exit_code,
            0,
            "{script}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).trim().to_owned()
    }

    fn list(&self, filter: cri::ContainerFilter) -> Vec<cri::Container> {
        let mut rt = self.rt.clone();
        self.cri
            .block_on(rt.list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            }))
            .unwrap()
            .into_inner()
            .containers
    }

    fn finish(self) {
        let mut rt = self.rt.clone();
        // Containers first, through the CRI, then the pods (CriBerth::stop checks for leaks).
        let all = self.list(cri::ContainerFilter::default());
        for c in all {
            self.cri
                .block_on(rt.remove_container(cri::RemoveContainerRequest { container_id: c.id }))
                .unwrap();
        }
        self.cri.stop().unwrap();
    }
}

fn sleeper(name: &str) -> cri::ContainerConfig {
    container_config(
        name,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
    )
}

fn code(r: Result<impl std::fmt::Debug, tonic::Status>) -> (Code, String) {
    let e = r.expect_err("the call should fail");
    (e.code(), e.message().to_owned())
}

/// A pod with two containers: one serves HTTP on the pod's loopback, the other fetches it; both
/// see the same ipc and uts namespaces and the pod's hostname. Lifecycle, list filters and
/// status fields along the way; idempotent stop and remove.
#[test]
fn pod_containers_share_namespaces_and_report_status() {
    let env = Env::start("10.226.0.0");
    let (pod, pod_config) = env.pod("web");
    let mut web = container_config(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    web.labels.insert("tier".into(), "front".into());
    web.annotations.insert("note".into(), "kept".into());
    let web = env.run(&pod, &pod_config, web);
    let client = env.run(&pod, &pod_config, sleeper("client"));

    // Network: the client reaches the server on localhost (retry while httpd starts).
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = env
            .exec(
                &client,
                &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
                5,
            )
            .unwrap();
        if r.exit_code == 0 {
            break String::from_utf8_lossy(&r.stdout).trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "wget: {:?}",
            String::from_utf8_lossy(&r.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body, "hello-from-web");
    // ipc and uts: the same namespaces, and the pod's hostname.
    for ns in ["ipc", "uts", "net"] {
        let script = format!("readlink /proc/self/ns/{ns}");
        assert_eq!(env.sh(&web, &script), env.sh(&client, &script), "{ns}");
    }
    assert_ne!(
        env.sh(&web, "readlink /proc/self/ns/mnt"),
        env.sh(&client, "readlink /proc/self/ns/mnt")
    );
    assert_eq!(env.sh(&client, "hostname"), "web");
    assert_eq!(env.sh(&web, "cat /etc/hostname"), "web");
    assert!(
        env.sh(&client, "cat /etc/resolv.conf")
            .contains("10.96.0.10")
    );

    // Status fields.
    let resp = env.status(&web).unwrap();
    let s = resp.status.unwrap();
    assert_eq!(s.state(), cri::ContainerState::ContainerRunning);
    assert_eq!(s.metadata.as_ref().unwrap().name, "web");
    assert!(s.created_at > 0 && s.started_at >= s.created_at && s.finished_at == 0);
    assert!(s.image_ref.contains("busybox@sha256:"), "{}", s.image_ref);
    assert!(s.image_id.starts_with("sha256:"), "{}", s.image_id);
    assert_eq!(s.labels["tier"], "front");
    assert_eq!(s.annotations["note"], "kept");
    let log_dir = &pod_config.log_directory;
    assert_eq!(s.log_path, format!("{log_dir}/web.log"));
    let info: Value = serde_json::from_str(&resp.info["info"]).unwrap();
    assert_eq!(info["sandboxID"], pod.as_str());
    assert!(info["pid"].as_u64().unwrap() > 0);

    // List with filters.
    let ids = |f: cri::ContainerFilter| -> Vec<String> {
        let mut v: Vec<String> = env.list(f).into_iter().map(|c| c.id).collect();
        v.sort();
        v
    };
    let mut both = vec![web.clone(), client.clone()];
    both.sort();
    // StreamContainers answers the same as ListContainers.
    let mut rt = env.rt.clone();
    let streamed: Vec<String> = env.cri.block_on(async {
        let mut stream = rt
            .stream_containers(cri::StreamContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        while let Some(batch) = stream.next().await {
            ids.extend(batch.unwrap().containers.into_iter().map(|c| c.id));
        }
        ids.sort();
        ids
    });
    assert_eq!(streamed, both);
    assert_eq!(
        ids(cri::ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        }),
        both
    );
    assert_eq!(
        ids(cri::ContainerFilter {
            id: web[..12].to_owned(),
            ..Default::default()
        }),
        vec![web.clone()]
    );
    assert_eq!(
        ids(cri::ContainerFilter {
            label_selector: [("tier".to_owned(), "front".to_owned())].into(),
            ..Default::default()
        }),
        vec![web.clone()]
    );
    assert!(
        ids(cri::ContainerFilter {
            pod_sandbox_id: "f00".repeat(10),
            ..Default::default()
        })
        .is_empty()
    );

    // Stop: SIGTERM ends the trap loop at once (exit 0 → Completed), idempotent.
    let t0 = Instant::now();
    env.stop(&client, 10).unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    let s = env.wait_exited(&client);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert!(s.finished_at >= s.started_at);
    env.stop(&client, 10).unwrap();
    let exited = ids(cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        }),
        ..Default::default()
    });
    assert_eq!(exited, vec![client.clone()]);

    // httpd ignores nothing: a stop with timeout 0 kills it (137, Error).
    env.stop(&web, 0).unwrap();
    let s = env.wait_exited(&web);
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));

    // Remove is idempotent; the status of a removed container is NotFound.
    env.remove(&client).unwrap();
    env.remove(&client).unwrap();
    env.stop(&client, 1).unwrap();
    assert_eq!(code(env.status(&client)).0, Code::NotFound);
    env.finish();
}

/// Exit codes and reasons: Completed, Error with the code, OOMKilled under a small memory limit,
/// and StartError for a command that does not exist; the created state before start.
#[test]
fn exit_codes_oom_and_start_errors() {
    let env = Env::start("10.227.0.0");
    let (pod, pod_config) = env.pod("exits");
    let ok = env
        .create(&pod, &pod_config, container_config("ok", &["true"]))
        .unwrap();
    assert_eq!(env.state(&ok), cri::ContainerState::ContainerCreated);
    env.start_container(&ok).unwrap();
    let s = env.wait_exited(&ok);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    // A second start of an exited container is refused.
    assert_eq!(code(env.start_container(&ok)).0, Code::FailedPrecondition);

    // The kubelet sends a hugepage limit for every page size the node has, 0 when the pod asks
    // for none; on this host the hugetlb controller lives in the cgroup2 mount only.
    let mut huge = container_config("huge", &["true"]);
    huge.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            hugepage_limits: vec![
                cri::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
                cri::HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0,
                },
            ],
            ..Default::default()
        }),
        ..Default::default()
    });
    let huge = env.run(&pod, &pod_config, huge);
    assert_eq!(env.wait_exited(&huge).reason, "Completed");

    let fail = env.run(
        &pod,
        &pod_config,
        container_config("fail", &["sh", "-c", "exit 3"]),
    );
    let s = env.wait_exited(&fail);
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));

    let mut oom = container_config(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
    );
    oom.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let oom = env.run(&pod, &pod_config, oom);
    let s = env.wait_exited(&oom);
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    assert_eq!(
        s.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        16 << 20
    );

    // A pod on the runc handler runs the same specs: the pod's namespaces joined by path,
    // exit codes, and OOMKilled.
    let runc_config = env.cri.pod_config("on-runc").unwrap();
    let mut rt = env.rt.clone();
    let runc_pod = env
        .cri
        .block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(runc_config.clone()),
            runtime_handler: "runc".into(),
        }))
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let on_runc = env.run(&runc_pod, &runc_config, sleeper("on-runc"));
    assert_eq!(env.sh(&on_runc, "hostname"), "on-runc");
    let info: Value = serde_json::from_str(&env.status(&on_runc).unwrap().info["info"]).unwrap();
    assert_eq!(info["runtimeType"], "runc");
    let r = env.exec(&on_runc, &["sh", "-c", "exit 9"], 5).unwrap();
    assert_eq!(r.exit_code, 9);
    let mut runc_oom = container_config(
        "runc-oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
    );
    runc_oom.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let runc_oom = env.run(&runc_pod, &runc_config, runc_oom);
    assert_eq!(env.wait_exited(&runc_oom).reason, "OOMKilled");
    env.stop(&on_runc, 5).unwrap();
    assert_eq!(env.wait_exited(&on_runc).reason, "Completed");

    // The CRI stop signal: SIGUSR1 ends this one at once (its SIGTERM would be ignored).
    let mut usr1 = container_config(
        "usr1",
        &[
            "sh",
            "-c",
            "trap '' TERM; trap 'exit 5' USR1; while true; do sleep 0.1; done",
        ],
    );
    usr1.stop_signal = cri::Signal::Sigusr1 as i32;
    let usr1 = env.run(&pod, &pod_config, usr1);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    env.stop(&usr1, 20).unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    assert_eq!(env.wait_exited(&usr1).exit_code, 5);

    let missing = env
        .create(
            &pod,
            &pod_config,
            container_config("missing", &["/no/such/binary"]),
        )
        .unwrap();
    let e = env.start_container(&missing).unwrap_err();
    assert!(e.message().contains("/no/such/binary"), "{e:?}");
    let s = env.status(&missing).unwrap().status.unwrap();
    assert_eq!(s.state(), cri::ContainerState::ContainerExited);
    assert_eq!(s.reason, "StartError");
    assert!(s.message.contains("/no/such/binary"), "{}", s.message);
    env.finish();
}

/// ExecSync output, exit code and timeout; the container's log in the CRI format at the path
/// the request names, and ReopenContainerLog after the file was renamed; resources updated in
/// the cgroup; stats.
#[test]
fn exec_logs_update_and_stats() {
    let env = Env::start("10.228.0.0");
    let (pod, pod_config) = env.pod("work");
    let ticker = env.run(
        &pod,
        &pod_config,
        container_config(
            "ticker",
            &[
                "sh",
                "-c",
                "echo first; echo oops >&2; while true; do echo tick; sleep 0.1; done",
            ],
        ),
    );

    // ExecSync: both streams, the exit code, and a timeout that kills and keeps the output.
    let r = env
        .exec(&ticker, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10)
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );
    let t0 = Instant::now();
    let r = env
        .exec(&ticker, &["sh", "-c", "echo before; exec sleep 31"], 1)
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "timeout took {:?}",
        t0.elapsed()
    );
    assert_eq!(r.stdout, b"before\n");
    assert_ne!(r.exit_code, 0);
    assert_eq!(
        env.sh(&ticker, "ps -o args | grep -c '[s]leep 31' || true"),
        "0",
        "the timed-out exec was not killed"
    );

    // The log file: CRI format at log_directory/log_path.
    let log = std::path::Path::new(&pod_config.log_directory).join("ticker.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stdout F tick") {
            break text;
        }
        assert!(Instant::now() < deadline, "log {}: {text:?}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next().unwrap().splitn(4, ' ').collect();
    assert!(
        first[0].ends_with('Z') && first[0].contains('T'),
        "{first:?}"
    );
    assert_eq!(&first[1..], ["stdout", "F", "first"]);
    assert!(text.contains(" stderr F oops\n"), "{text}");

    // Reopen: after a rename, the shim writes to a new file at the path.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let mut rt = env.rt.clone();
    env.cri
        .block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        }))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("stdout F tick")
    {
        assert!(Instant::now() < deadline, "no new log after reopen");
        std::thread::sleep(Duration::from_millis(50));
    }

    // UpdateContainerResources: visible in the container's memory and cpu cgroups.
    let info: Value = serde_json::from_str(&env.status(&ticker).unwrap().info["info"]).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let cgroup = |controller: &str, file: &str| -> String {
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let path = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_owned())
            })
            .unwrap();
        let dir = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .split(',')
                    .any(|c| c == controller)
            })
            .unwrap();
        std::fs::read_to_string(dir.join(path.trim_start_matches('/')).join(file))
            .unwrap()
            .trim()
            .to_owned()
    };
    let update = |r: cri::LinuxContainerResources| {
        let mut rt = env.rt.clone();
        env.cri.block_on(
            rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: ticker.clone(),
                linux: Some(r),
                ..Default::default()
            }),
        )
    };
    update(cri::LinuxContainerResources {
        memory_limit_in_bytes: 200 << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        cgroup("memory", "memory.limit_in_bytes"),
        (200u64 << 20).to_string()
    );
    assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
    let res = env
        .status(&ticker)
        .unwrap()
        .status
        .unwrap()
        .resources
        .unwrap()
        .linux
        .unwrap();
    assert_eq!(
        (res.memory_limit_in_bytes, res.cpu_quota),
        (200 << 20, 50_000)
    );
    for bad in [
        cri::LinuxContainerResources {
            cpu_shares: 1,
            ..Default::default()
        },
        cri::LinuxContainerResources {
            memory_limit_in_bytes: -1,
            ..Default::default()
        },
        cri::LinuxContainerResources {
            cpuset_cpus: "zero".into(),
            ..Default::default()
        },
    ] {
        assert_eq!(code(update(bad)).0, Code::InvalidArgument);
    }
    assert_eq!(
        cgroup("memory", "memory.limit_in_bytes"),
        (200u64 << 20).to_string()
    );

    // Stats: cpu, memory and the writable layer, twice for a rate.
    let mut rt = env.rt.clone();
    let _ = env.sh(&ticker, "head -c 1000000 /dev/zero > /big");
    let stats = |rt: &mut Client| {
        env.cri
            .block_on(rt.container_stats(cri::ContainerStatsRequest {
                container_id: ticker.clone(),
            }))
            .unwrap()
            .into_inner()
            .stats
            .unwrap()
    };
    let _ = stats(&mut rt);
    std::thread::sleep(Duration::from_millis(200));
    let s = stats(&mut rt);
    assert_eq!(s.attributes.as_ref().unwrap().id, ticker);
    let cpu = s.cpu.unwrap();
    assert!(cpu.usage_core_nano_seconds.unwrap().value > 0);
    assert!(cpu.usage_nano_cores.is_some());
    assert!(s.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(s.writable_layer.unwrap().used_bytes.unwrap().value >= 1_000_000);
    let listed = env
        .cri
        .block_on(rt.list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        }))
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let streamed = env.cri.block_on(async {
        let mut stream = rt
            .stream_container_stats(cri::StreamContainerStatsRequest {
                filter: Some(cri::ContainerStatsFilter {
                    id: ticker.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let mut all = Vec::new();
        while let Some(batch) = stream.next().await {
            all.extend(batch.unwrap().container_stats);
        }
        all
    });
    assert_eq!(streamed.len(), 1);
    assert!(streamed[0].memory.is_some());

    // A stopped container: no exec, no log reopen, no update.
    env.stop(&ticker, 0).unwrap();
    assert_eq!(
        code(env.exec(&ticker, &["true"], 1)).0,
        Code::FailedPrecondition
    );
    let reopened = env
        .cri
        .block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        }));
    assert_eq!(code(reopened).0, Code::FailedPrecondition);
    assert_eq!(
        code(update(cri::LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        }))
        .0,
        Code::FailedPrecondition
    );
    env.finish();
}

/// The security context: run_as_user, read-only rootfs, capabilities, no_new_privs; seccomp
/// RuntimeDefault and a localhost profile (and bad profile paths).
#[test]
fn security_context_and_seccomp() {
    let env = Env::start("10.229.0.0");
    let (pod, pod_config) = env.pod("secure");
    let mut c = sleeper("locked");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            run_as_group: Some(cri::Int64Value { value: 4321 }),
            supplemental_groups: vec![777],
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile::default()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let locked = env.run(&pod, &pod_config, c);
    assert_eq!(env.sh(&locked, "id -u; id -g"), "1234\n4321");
    assert!(env.sh(&locked, "id -G").split(' ').any(|g| g == "777"));
    let r = env.exec(&locked, &["touch", "/file"], 5).unwrap();
    assert_ne!(r.exit_code, 0, "the rootfs is writable");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Read-only"),
        "{r:?}"
    );
    let status = env.sh(&locked, "cat /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(field("CapBnd:"), "0000000000000400");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // A bare uid takes its group from the image's /etc/passwd; a user name is looked up there;
    // execs run as the container's user.
    let as_user = |name: &str, uid: Option<i64>, username: &str| {
        let mut c = sleeper(name);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: uid.map(|value| cri::Int64Value { value }),
                run_as_username: username.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let bare = env.run(&pod, &pod_config, as_user("bare", Some(65534), ""));
    assert_eq!(env.sh(&bare, "id -u; id -g"), "65534\n65534");
    let named = env.run(&pod, &pod_config, as_user("named", None, "nobody"));
    assert_eq!(env.sh(&named, "id -u; id -g"), "65534\n65534");
    let unlisted = env.run(&pod, &pod_config, as_user("unlisted", Some(4242), ""));
    assert_eq!(env.sh(&unlisted, "id -u; id -g"), "4242\n0");

    // oom_score_adj: raised as asked; a lower value than berth's own is clamped to it (this
    // host forbids lowering it), as containerd's restrict_oom_score_adj does.
    let with_adj = |name: &str, adj: i64| {
        let mut c = sleeper(name);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: adj,
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let adj_of = |id: &str| {
        let info: Value = serde_json::from_str(&env.status(id).unwrap().info["info"]).unwrap();
        let pid = info["pid"].as_u64().unwrap();
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let raised = env.run(&pod, &pod_config, with_adj("raised", 500));
    assert_eq!(adj_of(&raised), "500");
    let own: i64 = std::fs::read_to_string(format!(
        "/proc/{}/oom_score_adj",
        env.cri.berth().service_pid("cri").unwrap()
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let lowered = env.run(&pod, &pod_config, with_adj("lowered", -997));
    assert_eq!(adj_of(&lowered), (-997).max(own).to_string());
    let (c, _) = code(env.create(&pod, &pod_config, with_adj("bad-adj", 1001)));
    assert_eq!(c, Code::InvalidArgument);

    // Unconfined when nothing is set (as containerd does).
    let free = env.run(&pod, &pod_config, sleeper("free"));
    assert!(
        env.sh(&free, "grep Seccomp: /proc/self/status")
            .ends_with('0')
    );

    // A localhost profile that forbids mkdir.
    let dir = env.cri.scratch.path();
    let profile = dir.join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let with_profile = |name: &str, path: &str| {
        let mut c = sleeper(name);
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: path.to_owned(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    };
    let confined = env.run(
        &pod,
        &pod_config,
        with_profile("confined", profile.to_str().unwrap()),
    );
    let r = env.exec(&confined, &["mkdir", "/tmp/x"], 5).unwrap();
    assert_ne!(r.exit_code, 0);
    assert_eq!(env.sh(&confined, "echo still-works"), "still-works");

    let missing = dir.join("missing.json");
    let (c, m) = code(env.create(
        &pod,
        &pod_config,
        with_profile("bad1", missing.to_str().unwrap()),
    ));
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains(missing.to_str().unwrap()), "{m}");
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let (c, m) = code(env.create(
        &pod,
        &pod_config,
        with_profile("bad2", garbage.to_str().unwrap()),
    ));
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("garbage.json"), "{m}");
    let (c, _) = code(env.create(&pod, &pod_config, with_profile("bad3", "relative.json")));
    assert_eq!(c, Code::InvalidArgument);
    env.finish();
}

/// Every bad input of CreateContainer and the other calls, with nothing left behind; the
/// events stream sees created, started, stopped and deleted with the pod's status.
#[test]
fn bad_input_and_events() {
    let env = Env::start("10.230.0.0");
    let (pod, pod_config) = env.pod("checks");

    let mut events = {
        let mut rt = env.rt.clone();
        env.cri
            .block_on(rt.get_container_events(cri::GetEventsRequest {}))
            .unwrap()
            .into_inner()
    };

    let mut no_meta = container_config("x", &["true"]);
    no_meta.metadata = None;
    assert_eq!(
        code(env.create(&pod, &pod_config, no_meta)).0,
        Code::InvalidArgument
    );
    let (c, m) = code(env.create(
        &"ab".repeat(32),
        &pod_config,
        container_config("x", &["true"]),
    ));
    assert_eq!(c, Code::NotFound, "{m}");
    let mut no_image = container_config("x", &["true"]);
    no_image.image = Some(cri::ImageSpec {
        image: "example.invalid/nope:1".into(),
        ..Default::default()
    });
    let (c, m) = code(env.create(&pod, &pod_config, no_image));
    assert_eq!(c, Code::NotFound, "{m}");
    let mut bad_mount = container_config("x", &["true"]);
    bad_mount.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: "/no/such/host/dir".into(),
        ..Default::default()
    });
    let (c, m) = code(env.create(&pod, &pod_config, bad_mount));
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("/no/such/host/dir"), "{m}");
    let mut privileged = container_config("x", &["true"]);
    privileged.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        code(env.create(&pod, &pod_config, privileged)).0,
        Code::InvalidArgument
    );
    let mut bad_res = container_config("x", &["true"]);
    bad_res.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_quota: 5,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        code(env.create(&pod, &pod_config, bad_res)).0,
        Code::InvalidArgument
    );
    // None of these left a container.
    assert!(env.list(cri::ContainerFilter::default()).is_empty());

    // A bind mount with its propagation shows up in the status.
    let host_dir = env.cri.scratch.path().join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("f"), "from-host").unwrap();
    let mut first = sleeper("first");
    first.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.to_str().unwrap().into(),
        readonly: true,
        ..Default::default()
    });
    let first = env.create(&pod, &pod_config, first).unwrap();
    // Duplicate name and attempt: AlreadyExists naming the holder.
    let (c, m) = code(env.create(&pod, &pod_config, sleeper("first")));
    assert_eq!(c, Code::AlreadyExists);
    assert!(m.contains(&first), "{m}");
    let mut next_attempt = sleeper("first");
    next_attempt.metadata.as_mut().unwrap().attempt = 1;
    let second = env.create(&pod, &pod_config, next_attempt).unwrap();
    env.remove(&second).unwrap();

    env.start_container(&first).unwrap();
    assert_eq!(env.sh(&first, "cat /data/f"), "from-host");
    assert_ne!(
        env.exec(&first, &["touch", "/data/g"], 5)
            .unwrap()
            .exit_code,
        0
    );
    let s = env.status(&first).unwrap().status.unwrap();
    assert_eq!(s.mounts.len(), 1);
    assert!(s.mounts[0].readonly && s.mounts[0].container_path == "/data");

    // Propagation host-to-container: a mount made on the host after the start shows up inside.
    let prop = env.cri.scratch.path().join("prop");
    std::fs::create_dir_all(prop.join("sub")).unwrap();
    let bind = |args: &[&str]| {
        let out = std::process::Command::new("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The host directory must be a shared mount for its submounts to propagate; the guard
    // unmounts it (and what is under it) whatever happens.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-R")
                .arg(&self.0)
                .output();
        }
    }
    bind(&["--bind", prop.to_str().unwrap(), prop.to_str().unwrap()]);
    let unmount = Unmount(prop.clone());
    bind(&["--make-shared", prop.to_str().unwrap()]);
    let mut slave = sleeper("slave");
    slave.mounts.push(cri::Mount {
        container_path: "/prop".into(),
        host_path: prop.to_str().unwrap().into(),
        propagation: cri::MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    });
    let slave = env.run(&pod, &pod_config, slave);
    bind(&["-t", "tmpfs", "tmpfs", prop.join("sub").to_str().unwrap()]);
    std::fs::write(prop.join("sub/late"), "propagated").unwrap();
    let seen = env.exec(&slave, &["cat", "/prop/sub/late"], 5).unwrap();
    drop(unmount);
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "propagated",
        "{seen:?}"
    );
    env.remove(&slave).unwrap();

    // Unknown ids: NotFound for status and start, success for stop and remove.
    let unknown = "cd".repeat(32);
    assert_eq!(code(env.status(&unknown)).0, Code::NotFound);
    assert_eq!(code(env.start_container(&unknown)).0, Code::NotFound);
    assert_eq!(code(env.exec(&unknown, &["true"], 1)).0, Code::NotFound);
    env.stop(&unknown, 1).unwrap();
    env.remove(&unknown).unwrap();
    assert_eq!(code(env.exec(&first, &[], 1)).0, Code::InvalidArgument);
    let mut rt = env.rt.clone();
    // The per-container calls name the unknown or empty id they were given.
    for id in [unknown.as_str(), ""] {
        let stats = env
            .cri
            .block_on(rt.container_stats(cri::ContainerStatsRequest {
                container_id: id.to_owned(),
            }));
        let update = env.cri.block_on(rt.update_container_resources(
            cri::UpdateContainerResourcesRequest {
                container_id: id.to_owned(),
                linux: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
        let reopen = env
            .cri
            .block_on(rt.reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.to_owned(),
            }));
        for (call, (c, m)) in [
            ("ContainerStats", code(stats)),
            ("UpdateContainerResources", code(update)),
            ("ReopenContainerLog", code(reopen)),
        ] {
            let expected = if id.is_empty() {
                Code::InvalidArgument
            } else {
                Code::NotFound
            };
            assert_eq!(c, expected, "{call} {id:?}: {m}");
            assert!(id.is_empty() || m.contains(id), "{call}: {m}");
        }
    }
    let checkpoint = env
        .cri
        .block_on(rt.checkpoint_container(cri::CheckpointContainerRequest {
            container_id: first.clone(),
            ..Default::default()
        }));
    assert_eq!(code(checkpoint).0, Code::Unimplemented);

    env.stop(&first, 5).unwrap();
    env.remove(&first).unwrap();

    // A stopped pod takes no new container.
    env.cri
        .block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }))
        .unwrap();
    let (c, m) = code(env.create(&pod, &pod_config, sleeper("late")));
    assert_eq!(c, Code::FailedPrecondition, "{m}");

    // Events of `first`, in order, with the pod's status.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 4 && Instant::now() < deadline {
        let next = env
            .cri
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), events.next()).await });
        let Ok(Some(Ok(e))) = next else { break };
        if e.container_id != first {
            continue;
        }
        assert_eq!(e.pod_sandbox_status.as_ref().unwrap().id, pod);
        seen.push(e.container_event_type());
    }
    use cri::ContainerEventType as E;
    assert_eq!(
        seen,
        [
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
            E::ContainerDeletedEvent
        ]
    );
    env.finish();
}

/// The pod's /dev/shm: a tmpfs of the pod (64 MiB, mode 1777, nosuid, nodev, noexec) that its
/// containers share, and another pod's containers do not see; a pod in the host's ipc namespace
/// gets none; RemovePodSandbox unmounts it.
#[test]
fn pod_containers_share_dev_shm() {
    let env = Env::start("10.207.0.0");
    let (pod, pod_config) = env.pod("shm");
    let writer = env.run(&pod, &pod_config, sleeper("writer"));
    let reader = env.run(&pod, &pod_config, sleeper("reader"));
    let (other_pod, other_config) = env.pod("shm-other");
    let other = env.run(&other_pod, &other_config, sleeper("other"));

    let mut rt = env.rt.clone();
    let mut record = |id: &str| -> Value {
        let resp = env
            .cri
            .block_on(rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: true,
            }))
            .unwrap()
            .into_inner();
        let info: Value = serde_json::from_str(&resp.info["info"]).unwrap();
        info["config"].clone()
    };
    let shm_path = record(&pod)["shm_path"].as_str().unwrap().to_owned();
    assert!(
        shm_path.ends_with(&format!("/cri/pods/{pod}/shm")),
        "{shm_path}"
    );
    let host_mount = |path: &str| -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .map(str::to_owned)
    };
    let mount = host_mount(&shm_path).expect("the pod's shm is mounted");
    assert!(
        mount.starts_with("shm ") && mount.contains(" tmpfs "),
        "{mount}"
    );

    // Inside: a tmpfs of 64 MiB, mode 1777, nosuid/nodev/noexec.
    let line = env.sh(&reader, "grep ' /dev/shm ' /proc/self/mounts");
    assert!(line.contains(" tmpfs "), "{line}");
    for flag in ["nosuid", "nodev", "noexec", "size=65536k"] {
        assert!(line.contains(flag), "{flag} missing: {line}");
    }
    assert_eq!(env.sh(&reader, "stat -c %a /dev/shm"), "1777");

    // A file written by one container is seen by the other of the pod, not by another pod.
    env.sh(&writer, "echo from-writer > /dev/shm/berth-shm-test");
    assert_eq!(
        env.sh(&reader, "cat /dev/shm/berth-shm-test"),
        "from-writer"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{shm_path}/berth-shm-test")).unwrap(),
        "from-writer\n"
    );
    assert_eq!(
        env.sh(
            &other,
            "test -e /dev/shm/berth-shm-test && echo seen || echo absent"
        ),
        "absent"
    );
    env.sh(&other, "echo from-other > /dev/shm/berth-shm-test");
    assert_eq!(
        env.sh(&reader, "cat /dev/shm/berth-shm-test"),
        "from-writer"
    );

    // A pod in the host's ipc namespace has no shm of its own.
    let mut host_ipc = env.cri.pod_config("shm-host").unwrap();
    host_ipc
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .ipc = cri::NamespaceMode::Node as i32;
    let host_pod = env.cri.run_pod(host_ipc).unwrap();
    assert_eq!(record(&host_pod)["shm_path"], "");

    // RemovePodSandbox unmounts and deletes it (its containers too); twice is fine.
    for _ in 0..2 {
        env.cri
            .block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }))
            .unwrap();
    }
    assert_eq!(host_mount(&shm_path), None);
    assert!(!std::path::Path::new(&shm_path).exists());
    assert_eq!(env.sh(&other, "cat /dev/shm/berth-shm-test"), "from-other");
    env.finish();
}
