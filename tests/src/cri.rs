//! Driving berth's CRI facade from tests: a berth instance with its own bridge, nft table,
//! address pool and cgroup parent, the busybox image loaded into the `k8s.io` namespace,
//! RuntimeService and ImageService clients on cri.sock, and minimal pod and container configs.
//!
//! Each test passes its own address pool (a /16 base no other test uses: the CRI tests take
//! 10.200.0.0 to 10.209.0.0). [`CriBerth::stop`] removes every pod through the CRI, checks that
//! no link, nft table, address, netns pin or mount of the instance is left, and stops berth with
//! the harness's leak check; if a test fails first, `Drop` removes what it can.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use berth_api::client::Channel;
use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::image_service_client::ImageServiceClient;
use berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient;

use crate::fixtures::images;
use crate::harness::{self, mounts_under, unmount_under};
use crate::host::{files_under, links_with, network_leftovers};
use crate::{Berth, Mode, Options, cleanup};

/// The berth namespace of CRI objects.
pub const NAMESPACE: &str = "k8s.io";

/// The name under which [`CriBerth::start`] loads the busybox image into `k8s.io`.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";

/// A berth instance for CRI tests (see the module doc).
pub struct CriBerth {
    berth: Option<Berth>,
    /// Random tag naming this instance's bridge (`berth-c<tag>0`), nft table and cgroup parent.
    pub tag: String,
    /// The first two octets of the address pool ("10.200").
    pub pool: String,
    /// The options berth was started with (to start it again after a kill).
    pub options: Options,
    /// Scratch directory of the test (pod log directories live under it).
    pub scratch: tempfile::TempDir,
    /// The runtime the test's gRPC calls run on.
    pub rt: tokio::runtime::Runtime,
}

impl CriBerth {
    /// Starts berth in `mode` with `pool` (a /16 base like "10.200.0.0") for its networks,
    /// `extra` appended to the config (more sections or keys), and loads busybox into `k8s.io`.
    pub fn start(mode: Mode, pool: &str, extra: &str) -> Result<CriBerth> {
        let tag = format!("{:06x}", harness::rand_u32() & 0xff_ffff);
        let config = format!(
            "[network]\ndefault_bridge = \"berth-c{tag}0\"\nnft_table = \"berth_c{tag}\"\n\
             pools = [{{ base = \"{pool}/16\", size = 24 }}]\n\
             [tasks]\ncgroup_parent = \"berth-test-{tag}\"\n{extra}"
        );
        let options = Options {
            config: Some(config),
            ..Default::default()
        };
        let berth = Berth::start_with(mode, options.clone())?;
        let env = CriBerth {
            berth: Some(berth),
            pool: pool.trim_end_matches(".0.0").to_owned(),
            tag,
            options,
            scratch: tempfile::Builder::new().prefix("berth-test-").tempdir()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        let layout = env.scratch.path().join("layout");
        images::busybox_layout(&layout)?;
        env.berth().ctl_ok(&[
            "-n",
            NAMESPACE,
            "load",
            "--base-name",
            "docker.io/library/busybox",
            layout.to_str().context("utf-8 path")?,
        ])?;
        let tagged = env.berth().ctl_ok(&[
            "-n",
            NAMESPACE,
            "tag",
            "docker.io/library/busybox:busybox",
            BUSYBOX_IMAGE,
        ]);
        tagged.context("naming the loaded busybox image")?;
        Ok(env)
    }

    /// The berth instance.
    pub fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    /// A channel to cri.sock.
    pub fn channel(&self) -> Result<Channel> {
        let socket = self.berth().socket("cri");
        Ok(self
            .rt
            .block_on(berth_api::client::connect(&socket, NAMESPACE))?)
    }

    /// A RuntimeService client on cri.sock.
    pub fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel()?))
    }

    /// An ImageService client on cri.sock.
    pub fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel()?))
    }

    /// Runs a future (a gRPC call) to completion on the test's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A fresh log directory for a pod, under the scratch directory.
    pub fn log_directory(&self, pod: &str) -> Result<PathBuf> {
        let dir = self.scratch.path().join("logs").join(pod);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A pod config named `name` (uid and namespace derived from it) with its log directory.
    pub fn pod_config(&self, name: &str) -> Result<cri::PodSandboxConfig> {
        Ok(pod_config(name, &self.log_directory(name)?))
    }

    /// Runs a pod from `config` (default handler); its id.
    pub fn run_pod(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let mut rt = self.runtime()?;
        let resp = self.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    /// The services' logs (for failure messages).
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for e in std::fs::read_dir(self.berth().state().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        text
    }

    /// The cgroup parent of this instance's containers.
    pub fn cgroup_parent(&self) -> String {
        format!("berth-test-{}", self.tag)
    }

    /// Kernel objects of this instance still on the host: links, the nft table, addresses of
    /// the pool, netns pins, mounts under the state directory.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let mut left = network_leftovers(
            &format!("berth-c{}", self.tag),
            &format!("berth_c{}", self.tag),
            &self.pool,
        )?;
        for dir in ["netns", "cri/pods"] {
            let path = self.berth().state().join(dir);
            for entry in files_under(&path) {
                left.push(format!("{dir} {}", entry.display()));
            }
        }
        left.extend(
            mounts_under(&self.berth().state())?
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        Ok(left)
    }

    /// Removes every pod through the CRI (which removes their containers), checks that no
    /// kernel object of the instance is left, and stops berth with the harness's leak check.
    pub fn stop(mut self) -> Result<()> {
        let mut rt = self.runtime()?;
        let pods = self
            .block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))?
            .into_inner()
            .items;
        for pod in pods {
            self.block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }))?;
            self.block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id,
            }))?;
        }
        let networks = self
            .berth()
            .ctl_ok(&["-n", NAMESPACE, "network", "ls", "-q"])?;
        for n in networks.lines().filter(|n| *n != "bridge") {
            self.berth()
                .ctl_ok(&["-n", NAMESPACE, "network", "rm", n])?;
        }
        let left = self.leftovers()?;
        ensure!(left.is_empty(), "left behind: {left:#?}\n{}", self.logs());
        let berth = self.berth.take().expect("berth running");
        cleanup::stop_instance(berth, &self.cgroup_parent())
    }
}

impl Drop for CriBerth {
    fn drop(&mut self) {
        let Some(berth) = self.berth.take() else {
            return;
        };
        // Processes and mounts go first: the temp directory cannot be removed around mounts.
        let state = berth.state();
        cleanup::kill_processes_mentioning(&state);
        unmount_under(&state);
        drop(berth);
        for link in links_with(&format!("berth-c{}", self.tag)).unwrap_or_default() {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("berth_c{}", self.tag)])
            .output();
        let groups = cleanup::cgroups_under(&self.cgroup_parent());
        cleanup::kill_cgroups(&groups);
        for g in groups {
            let _ = std::fs::remove_dir(g);
        }
        let _ = cleanup::remove_cgroup_parent(&self.cgroup_parent());
    }
}

/// A minimal pod config: metadata (uid `uid-<name>`, namespace `default`), hostname `name`,
/// the log directory, DNS on an address inside the test's network only (never the host's
/// resolvers), and the default security context.
pub fn pod_config(name: &str, log_directory: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".to_owned()],
            searches: vec!["default.svc.cluster.local".to_owned()],
            options: vec!["ndots:5".to_owned()],
        }),
        labels: HashMap::from([("app".to_owned(), name.to_owned())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption::default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A minimal container config: `name`, busybox, `command`, log `<name>.log` in the pod's log
/// directory.
pub fn container_config(name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX_IMAGE.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}
