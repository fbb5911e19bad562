//! berth-shim end to end: the real binary, started as the tasks service will start it, drives
//! busybox containers through runc and through crun. Every test builds its own rootfs from the
//! busybox fixture, gives its containers cgroups named after its temp dir, and checks that
//! nothing (process, mount, cgroup, socket, directory) is left when the shim is done.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_api::berth::events::v1::envelope::Event;
use berth_api::berth::shim::v1 as api;
use berth_api::berth::types::v1::{LogConfig, Mount, TaskStatus};
use berth_api::client::Channel;
use berth_tests::cleanup::clean_up_after;
use berth_tests::fixtures::bundle::{busybox_rootfs, runc_spec, write_bundle};
use berth_tests::harness::{bin, mounts_under, processes_mentioning};
use serde_json::{Value, json};

type Client = api::shim_client::ShimClient<Channel>;

const NAMESPACE: &str = "test";

/// A temp dir with a busybox rootfs, bundles, shim directories and logs.
struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    runtime: &'static str,
}

impl Fixture {
    fn new(runtime: &'static str) -> Result<Fixture> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-shim-")
            .tempdir()?;
        let rootfs = busybox_rootfs(dir.path(), "image")?;
        std::fs::create_dir_all(dir.path().join("shimlogs"))?;
        Ok(Fixture {
            rootfs,
            dir,
            runtime,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The cgroup path given to container `id` (unique to this fixture).
    fn cgroup_path(&self, id: &str) -> String {
        let name = self
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("/{name}-{id}")
    }

    /// Writes a bundle for container `id` running `args`; `tweak` edits the spec.
    fn bundle(&self, id: &str, args: &[&str], tweak: impl FnOnce(&mut Value)) -> Result<PathBuf> {
        let bundle = self.path().join("bundles").join(id);
        let mut spec = runc_spec().clone();
        spec["process"]["args"] = json!(args);
        spec["process"]["terminal"] = json!(false);
        spec["root"] = json!({ "path": self.rootfs, "readonly": true });
        spec["hostname"] = json!(id);
        spec["linux"]["cgroupsPath"] = json!(self.cgroup_path(id));
        tweak(&mut spec);
        write_bundle(&bundle, &spec)?;
        Ok(bundle)
    }

    fn shim_dir(&self, id: &str) -> PathBuf {
        self.path().join("state/shims").join(NAMESPACE).join(id)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.path().join("logs").join(format!("{id}.log"))
    }

    /// Starts a shim for `id` and connects to it.
    async fn shim(&self, id: &str) -> Result<Shim> {
        let dir = self.shim_dir(id);
        let out = self.shim_command(id).output().context("run berth-shim")?;
        ensure!(
            out.status.success(),
            "berth-shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address = String::from_utf8(out.stdout)?.trim().to_owned();
        ensure!(
            address == format!("unix://{}", dir.join("shim.sock").display()),
            "address {address}"
        );
        Shim::connect(dir).await
    }

    fn shim_command(&self, id: &str) -> Command {
        let mut cmd = Command::new(bin("berth-shim"));
        cmd.args([
            "--namespace",
            NAMESPACE,
            "--id",
            id,
            "--runtime",
            self.runtime,
        ])
        .arg("--socket-dir")
        .arg(self.shim_dir(id))
        .arg("--log")
        .arg(self.path().join("shimlogs").join(format!("{id}.log")));
        cmd
    }

    fn create_request(&self, id: &str, bundle: &Path) -> api::CreateRequest {
        api::CreateRequest {
            id: id.to_owned(),
            bundle: bundle.display().to_string(),
            runtime: self.runtime.to_owned(),
            log: Some(LogConfig {
                path: self.log_path(id).display().to_string(),
                max_size: 0,
                max_files: 0,
            }),
            ..Default::default()
        }
    }

    /// Creates and starts container `id` (one shim) running `args`.
    async fn run(
        &self,
        id: &str,
        args: &[&str],
        tweak: impl FnOnce(&mut Value),
    ) -> Result<(Shim, u32)> {
        let bundle = self.bundle(id, args, tweak)?;
        let mut shim = self.shim(id).await?;
        shim.client
            .create(self.create_request(id, &bundle))
            .await
            .context("create")?;
        let pid = shim
            .client
            .start(api::StartRequest {
                id: id.to_owned(),
                exec_id: String::new(),
            })
            .await
            .context("start")?
            .into_inner()
            .pid;
        Ok((shim, pid))
    }

    /// Cgroup directories of container `id` that still exist.
    fn cgroups_left(&self, id: &str) -> Vec<PathBuf> {
        let rel = self.cgroup_path(id);
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let p = e.path().join(rel.trim_start_matches('/'));
                if p.exists() {
                    left.push(p);
                }
            }
        }
        left
    }

    /// Nothing of container `id`'s shim remains: process, directory, socket, cgroup, mount.
    async fn assert_clean(&self, id: &str, shim_pid: u32) -> Result<()> {
        wait_until(Duration::from_secs(10), || !alive(shim_pid))
            .await
            .with_context(|| format!("shim {shim_pid} still running"))?;
        let dir = self.shim_dir(id);
        ensure!(!dir.exists(), "shim dir {} left", dir.display());
        let cgroups = self.cgroups_left(id);
        ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let mounts = mounts_under(self.path())?;
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::env::var_os("BERTH_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.path().display());
            self.dir.disable_cleanup(true);
        }
        // After a failure: kill shims, then whatever runs in this fixture's cgroups.
        clean_up_after(self.path());
    }
}

/// A connection to one shim.
struct Shim {
    dir: PathBuf,
    pid: u32,
    client: Client,
}

impl Shim {
    /// Connects from what the shim recorded in its directory (as a restarted tasks service
    /// would).
    async fn connect(dir: PathBuf) -> Result<Shim> {
        let address = std::fs::read_to_string(dir.join("address"))?;
        let socket = address
            .strip_prefix("unix://")
            .context("address is not unix://")?;
        let pid: u32 = std::fs::read_to_string(dir.join("shim.pid"))?
            .trim()
            .parse()?;
        let channel = berth_api::client::connect(Path::new(socket), NAMESPACE).await?;
        Ok(Shim {
            dir,
            pid,
            client: Client::new(channel),
        })
    }

    async fn wait(&mut self, id: &str, exec_id: &str) -> Result<(u32, u32, bool)> {
        let exit = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.wait(api::WaitRequest {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }),
        )
        .await
        .context("wait timed out")??
        .into_inner()
        .exit_status
        .context("no exit status")?;
        ensure!(exit.exited_at.is_some(), "no exit time");
        Ok((exit.exit_code, exit.signal, exit.oom_killed))
    }

    async fn kill(&mut self, id: &str, signal: u32) -> Result<()> {
        self.client
            .kill(api::KillRequest {
                id: id.to_owned(),
                exec_id: String::new(),
                signal,
                all: false,
            })
            .await?;
        Ok(())
    }

    async fn delete(&mut self, id: &str) -> Result<()> {
        self.client
            .delete(api::DeleteRequest {
                id: id.to_owned(),
                exec_id: String::new(),
            })
            .await?;
        Ok(())
    }

    async fn status(&mut self, id: &str) -> Result<TaskStatus> {
        let state = self
            .client
            .state(api::StateRequest {
                id: id.to_owned(),
                exec_id: String::new(),
            })
            .await?
            .into_inner();
        Ok(state.status())
    }

    async fn stats(&mut self, id: &str) -> Result<berth_api::berth::types::v1::Stats> {
        self.client
            .stats(api::StatsRequest { id: id.to_owned() })
            .await?
            .into_inner()
            .stats
            .context("no stats")
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Polls `f` without blocking the runtime (client connections must keep answering).
async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn no_pid_namespace(spec: &mut Value) {
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "pid");
    }
}

/// Runs `args` to completion in a fresh shim; returns (exit code, signal) and checks cleanup.
async fn run_to_exit(
    fx: &Fixture,
    id: &str,
    args: &[&str],
    tweak: impl FnOnce(&mut Value),
) -> Result<(u32, u32)> {
    let (mut shim, _) = fx.run(id, args, tweak).await?;
    let (code, signal, oom) = shim.wait(id, "").await?;
    ensure!(!oom, "{id}: not an OOM kill");
    ensure!(shim.status(id).await? == TaskStatus::Stopped);
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await?;
    Ok((code, signal))
}

async fn exit_statuses(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    assert_eq!(run_to_exit(&fx, "true", &["true"], |_| {}).await?, (0, 0));
    assert_eq!(run_to_exit(&fx, "false", &["false"], |_| {}).await?, (1, 0));
    // Not as a pid-namespace init: the kernel ignores signals an init sends itself.
    assert_eq!(
        run_to_exit(
            &fx,
            "sigkill",
            &["sh", "-c", "kill -9 $$"],
            no_pid_namespace
        )
        .await?,
        (137, 9)
    );
    // A sleep (not a pid-namespace init, which would ignore SIGTERM) killed by SIGTERM.
    let id = "sleep";
    let (mut shim, pid) = fx.run(id, &["sleep", "1000"], no_pid_namespace).await?;
    assert!(alive(pid));
    assert_eq!(shim.status(id).await?, TaskStatus::Running);
    shim.kill(id, 15).await?;
    assert_eq!(shim.wait(id, "").await?, (143, 15, false));
    // Signalling the dead process is a clear NotFound.
    let err = shim.kill(id, 15).await.expect_err("dead process");
    let status = err.downcast_ref::<tonic::Status>().context("grpc status")?;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

async fn cri_log(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "logger";
    let script = "echo hello; echo oops >&2; printf 'no newline'";
    let (mut shim, _) = fx.run(id, &["sh", "-c", script], |_| {}).await?;
    assert_eq!(shim.wait(id, "").await?, (0, 0, false));
    let log = std::fs::read_to_string(fx.log_path(id))?;
    let entries: Vec<(&str, &str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            (
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
            )
        })
        .collect();
    for (time, ..) in &entries {
        assert!(
            time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "timestamp {time:?} in {log}"
        );
    }
    let mut got: Vec<(&str, &str, &str)> = entries.iter().map(|e| (e.1, e.2, e.3)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("stderr", "F", "oops"),
            ("stdout", "F", "hello"),
            ("stdout", "F", "no newline")
        ],
        "{log}"
    );
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await?;

    // An init process on a terminal: its output reaches the log through the pty.
    let id = "tty-init";
    let bundle = fx.bundle(id, &["sh", "-c", "tty; echo on-tty"], |spec| {
        spec["process"]["terminal"] = json!(true);
    })?;
    let mut shim = fx.shim(id).await?;
    let mut req = fx.create_request(id, &bundle);
    req.terminal = true;
    shim.client.create(req).await?;
    shim.client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    assert_eq!(shim.wait(id, "").await?, (0, 0, false));
    let log = std::fs::read_to_string(fx.log_path(id))?;
    assert!(log.contains(" stdout F /dev/pts/"), "{log}");
    assert!(log.contains(" stdout F on-tty\n"), "{log}");
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await?;

    // Rotation by size, keeping two rotated files.
    let id = "rotate";
    let bundle = fx.bundle(
        id,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done",
        ],
        |_| {},
    )?;
    let mut shim = fx.shim(id).await?;
    let mut req = fx.create_request(id, &bundle);
    req.log = Some(LogConfig {
        path: fx.log_path(id).display().to_string(),
        max_size: 2000,
        max_files: 2,
    });
    shim.client.create(req).await?;
    shim.client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    assert_eq!(shim.wait(id, "").await?, (0, 0, false));
    let log = fx.log_path(id);
    let current = std::fs::read_to_string(&log)?;
    assert!(current.ends_with("stdout F line-299\n"), "{current}");
    assert!(current.len() <= 2000);
    for n in [1, 2] {
        let rotated = PathBuf::from(format!("{}.{n}", log.display()));
        assert!(rotated.exists(), "{} missing", rotated.display());
    }
    assert!(!PathBuf::from(format!("{}.3", log.display())).exists());
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

fn exec_spec(args: &[&str], terminal: bool) -> Vec<u8> {
    let mut process = runc_spec()["process"].clone();
    process["args"] = json!(args);
    process["terminal"] = json!(terminal);
    serde_json::to_vec(&process).expect("process json")
}

async fn exec_and_tty(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "execs";
    let (mut shim, _) = fx.run(id, &["sleep", "1000"], |_| {}).await?;

    // Without a tty: output to a file, exit code reported.
    let out = fx.path().join("exec-plain.out");
    shim.client
        .exec(api::ExecRequest {
            id: id.into(),
            exec_id: "plain".into(),
            terminal: false,
            stdout: out.display().to_string(),
            spec: exec_spec(&["sh", "-c", "echo from-exec; exit 3"], false),
            ..Default::default()
        })
        .await?;
    let pid = shim
        .client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: "plain".into(),
        })
        .await?
        .into_inner()
        .pid;
    assert!(pid > 0);
    assert_eq!(shim.wait(id, "plain").await?, (3, 0, false));
    assert_eq!(std::fs::read_to_string(&out)?, "from-exec\n");
    shim.client
        .delete(api::DeleteRequest {
            id: id.into(),
            exec_id: "plain".into(),
        })
        .await?;

    // Stdin from a FIFO; CloseIO ends it after what was written has gone through.
    let fifo = fx.path().join("exec-stdin.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let out = fx.path().join("exec-cat.out");
    shim.client
        .exec(api::ExecRequest {
            id: id.into(),
            exec_id: "cat".into(),
            stdin: fifo.display().to_string(),
            stdout: out.display().to_string(),
            spec: exec_spec(&["cat"], false),
            ..Default::default()
        })
        .await?;
    shim.client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: "cat".into(),
        })
        .await?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)?
        .write_all(b"through stdin\n")?;
    shim.client
        .close_io(api::CloseIoRequest {
            id: id.into(),
            exec_id: "cat".into(),
            stdin: true,
        })
        .await?;
    assert_eq!(shim.wait(id, "cat").await?, (0, 0, false));
    assert_eq!(std::fs::read_to_string(&out)?, "through stdin\n");

    // With a tty, resized before the process reads its size.
    let out = fx.path().join("exec-tty.out");
    shim.client
        .exec(api::ExecRequest {
            id: id.into(),
            exec_id: "tty".into(),
            terminal: true,
            stdout: out.display().to_string(),
            spec: exec_spec(&["sh", "-c", "sleep 0.3; tty; stty size"], true),
            ..Default::default()
        })
        .await?;
    shim.client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: "tty".into(),
        })
        .await?;
    shim.client
        .resize_pty(api::ResizePtyRequest {
            id: id.into(),
            exec_id: "tty".into(),
            width: 100,
            height: 30,
        })
        .await?;
    assert_eq!(shim.wait(id, "tty").await?, (0, 0, false));
    let text = std::fs::read_to_string(&out)?;
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("30 100"), "{text:?}");
    // Resizing a process without a terminal is refused.
    let err = shim
        .client
        .resize_pty(api::ResizePtyRequest {
            id: id.into(),
            exec_id: String::new(),
            width: 10,
            height: 10,
        })
        .await
        .expect_err("no tty");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // Pids lists the container's processes.
    let pids = shim
        .client
        .pids(api::PidsRequest { id: id.into() })
        .await?
        .into_inner()
        .processes;
    assert!(!pids.is_empty());

    shim.kill(id, 9).await?;
    assert_eq!(shim.wait(id, "").await?, (137, 9, false));
    // Exec into a stopped container is refused.
    let err = shim
        .client
        .exec(api::ExecRequest {
            id: id.into(),
            exec_id: "late".into(),
            spec: exec_spec(&["true"], false),
            ..Default::default()
        })
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

async fn pause_stats_update(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "busy";
    let (mut shim, _) = fx
        .run(id, &["sh", "-c", "while :; do :; done"], |spec| {
            spec["linux"]["resources"]["memory"] = json!({ "limit": 128 * 1024 * 1024 });
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = shim.stats(id).await?;
    assert!(s.cpu_usage_ns > 0, "{s:?}");
    assert!(s.memory_usage_bytes > 0, "{s:?}");
    assert!(s.pids_current >= 1, "{s:?}");
    assert_eq!(s.memory_limit_bytes, 128 * 1024 * 1024, "{s:?}");

    shim.client
        .pause(api::PauseRequest { id: id.into() })
        .await?;
    assert_eq!(shim.status(id).await?, TaskStatus::Paused);
    let frozen = shim.stats(id).await?.cpu_usage_ns;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        shim.stats(id).await?.cpu_usage_ns,
        frozen,
        "paused but using cpu"
    );
    shim.client
        .resume(api::ResumeRequest { id: id.into() })
        .await?;
    assert_eq!(shim.status(id).await?, TaskStatus::Running);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        shim.stats(id).await?.cpu_usage_ns > frozen,
        "not running again"
    );

    shim.client
        .update(api::UpdateRequest {
            id: id.into(),
            resources: serde_json::to_vec(&json!({ "memory": { "limit": 64 * 1024 * 1024 } }))?,
        })
        .await?;
    assert_eq!(shim.stats(id).await?.memory_limit_bytes, 64 * 1024 * 1024);
    // Not a LinuxResources object.
    let err = shim
        .client
        .update(api::UpdateRequest {
            id: id.into(),
            resources: b"{\"memory\": 5}".to_vec(),
        })
        .await
        .expect_err("bad resources");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    shim.kill(id, 9).await?;
    assert_eq!(shim.wait(id, "").await?, (137, 9, false));
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

async fn oom_kill(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "oom";
    // tail keeps the whole (newline-free) input in memory.
    let (mut shim, _) = fx
        .run(id, &["tail", "/dev/zero"], |spec| {
            spec["linux"]["resources"]["memory"] =
                json!({ "limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024 });
        })
        .await?;
    let mut events = shim
        .client
        .events(api::EventsRequest { after_sequence: 0 })
        .await?
        .into_inner();
    assert_eq!(shim.wait(id, "").await?, (137, 9, true));
    let mut topics = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(5), events.message()).await
    {
        let topic = e.envelope.map(|e| e.topic).unwrap_or_default();
        let done = topic == "/tasks/exit";
        topics.push(topic);
        if done {
            break;
        }
    }
    assert_eq!(
        topics,
        ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"],
        "events"
    );
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

async fn starter_killed(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "orphan";
    let bundle = fx.bundle(id, &["sleep", "1000"], |_| {})?;
    // The starter runs inside a process group that is SIGKILLed as a whole while it lives on.
    let starter = fx.shim_command(id);
    let script = format!(
        "{:?} \"$@\" >/dev/null && exec sleep 600",
        starter.get_program()
    );
    let mut group = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("berth-shim")
        .args(starter.get_args())
        .process_group(0)
        .spawn()?;
    let dir = fx.shim_dir(id);
    wait_until(Duration::from_secs(10), || dir.join("shim.pid").exists()).await?;
    let mut shim = Shim::connect(dir.clone()).await?;
    shim.client.create(fx.create_request(id, &bundle)).await?;
    let pid = shim
        .client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .pid;
    drop(shim);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(group.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    group.wait()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(alive(pid), "the container died with its starter");

    // A new client finds the shim from what it recorded.
    let mut shim = Shim::connect(dir.clone()).await?;
    assert!(alive(shim.pid));
    let info = shim
        .client
        .connect_shim(api::ConnectShimRequest { id: id.into() })
        .await?
        .into_inner();
    assert_eq!((info.shim_pid, info.task_pid), (shim.pid, pid));
    assert_eq!(shim.status(id).await?, TaskStatus::Running);
    shim.kill(id, 9).await?;
    assert_eq!(shim.wait(id, "").await?, (137, 9, false));
    drop(shim);

    // And one that connects after the exit still learns it: from Wait, State and Events,
    // and from the exit record beside the socket.
    let mut shim = Shim::connect(dir.clone()).await?;
    assert_eq!(shim.wait(id, "").await?, (137, 9, false));
    let state = shim
        .client
        .state(api::StateRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(state.status(), TaskStatus::Stopped);
    assert_eq!(state.exit_status.map(|e| e.exit_code), Some(137));
    let record: Value = serde_json::from_slice(&std::fs::read(
        dir.join("exits").join(id).join("init.json"),
    )?)?;
    assert_eq!(record["exit_code"], 137);
    let mut events = shim
        .client
        .events(api::EventsRequest { after_sequence: 0 })
        .await?
        .into_inner();
    let mut saw_exit = false;
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(500), events.message()).await
    {
        if let Some(Event::TaskExit(exit)) = e.envelope.and_then(|e| e.event) {
            assert_eq!(exit.exit_status.map(|s| s.exit_code), Some(137));
            saw_exit = true;
            break;
        }
    }
    assert!(saw_exit, "exit event kept for a reconnecting client");
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

async fn cycles(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let cycles: usize = std::env::var("BERTH_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for i in 0..cycles {
        let id = format!("cycle-{i}");
        let (mut shim, pid) = fx.run(&id, &["sleep", "1000"], |_| {}).await?;
        assert!(alive(pid));
        shim.kill(&id, 9).await?;
        assert_eq!(shim.wait(&id, "").await?, (137, 9, false));
        shim.delete(&id).await?;
        fx.assert_clean(&id, shim.pid).await?;
        ensure!(!alive(pid), "container process left");
    }
    let procs = processes_mentioning(fx.path());
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    Ok(())
}

async fn rootfs_mounts(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "mounted";
    let bundle = fx.bundle(id, &["cat", "/etc/passwd"], |spec| {
        spec["root"] = json!({ "path": "rootfs", "readonly": true });
    })?;
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    let mut shim = fx.shim(id).await?;
    let mut req = fx.create_request(id, &bundle);
    req.rootfs = vec![Mount {
        r#type: "bind".into(),
        source: fx.rootfs.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "ro".into()],
    }];
    shim.client.create(req).await?;
    assert_eq!(mounts_under(&bundle)?.len(), 1);
    shim.client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    assert_eq!(shim.wait(id, "").await?, (0, 0, false));
    shim.delete(id).await?;
    fx.assert_clean(id, shim.pid).await
}

fn code_of(err: &tonic::Status) -> (tonic::Code, Option<String>) {
    (
        err.code(),
        err.metadata()
            .get("berth-exit-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    )
}

async fn bad_input(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let id = "bad";
    let mut shim = fx.shim(id).await?;
    let good = fx.bundle(id, &["sleep", "1000"], |_| {})?;
    let create = |bundle: &Path, runtime: &str| {
        let mut req = fx.create_request(id, bundle);
        req.runtime = runtime.to_owned();
        req
    };
    let check_nothing_left = |fx: &Fixture| -> Result<()> {
        let cgroups = fx.cgroups_left(id);
        ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let state = fx.shim_dir(id).join("runtime").join(id);
        ensure!(!state.exists(), "runtime state left: {}", state.display());
        Ok(())
    };

    // Missing bundle, and a bundle whose config.json is not a spec.
    let err = shim
        .client
        .create(create(&fx.path().join("nope"), runtime))
        .await
        .expect_err("missing bundle");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let broken = fx.path().join("bundles/broken");
    std::fs::create_dir_all(&broken)?;
    std::fs::write(broken.join("config.json"), "{\"ociVersion\": 3")?;
    let err = shim
        .client
        .create(create(&broken, runtime))
        .await
        .expect_err("broken config");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("config.json"), "{err:?}");

    // Missing runtime binary, unknown runtime name, and a runtime that fails.
    let err = shim
        .client
        .create(create(&good, "/nonexistent/runc"))
        .await
        .expect_err("missing runtime");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = shim
        .client
        .create(create(&good, "kata"))
        .await
        .expect_err("unknown runtime");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = shim
        .client
        .create(create(&good, "/bin/false"))
        .await
        .expect_err("failing runtime");
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    check_nothing_left(&fx)?;

    // A command that does not exist (127), one that is not executable (126).
    let missing = fx.bundle(id, &["no-such-command"], |_| {})?;
    let err = shim
        .client
        .create(create(&missing, runtime))
        .await
        .expect_err("missing command");
    assert_eq!(
        code_of(&err),
        (tonic::Code::NotFound, Some("127".into())),
        "{err:?}"
    );
    assert!(
        err.message()
            .contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{err:?}"
    );
    let not_exec = fx.bundle(id, &["/etc/passwd"], |_| {})?;
    let err = shim
        .client
        .create(create(&not_exec, runtime))
        .await
        .expect_err("not executable");
    assert_eq!(
        code_of(&err),
        (tonic::Code::FailedPrecondition, Some("126".into())),
        "{err:?}"
    );
    check_nothing_left(&fx)?;

    // Now a good one, then the same id again.
    let good = fx.bundle(id, &["sleep", "1000"], |_| {})?;
    shim.client.create(create(&good, runtime)).await?;
    let err = shim
        .client
        .create(create(&good, runtime))
        .await
        .expect_err("same id");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    // Running containers cannot be deleted; unknown ones are NotFound.
    shim.client
        .start(api::StartRequest {
            id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    let err = shim.delete(id).await.expect_err("running");
    let status = err.downcast_ref::<tonic::Status>().context("status")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let err = shim.status("other").await.expect_err("unknown");
    let status = err.downcast_ref::<tonic::Status>().context("status")?;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // Exec of a missing command is refused before anything runs.
    let err = shim
        .client
        .exec(api::ExecRequest {
            id: id.into(),
            exec_id: "x".into(),
            spec: exec_spec(&["no-such-command"], false),
            ..Default::default()
        })
        .await
        .expect_err("missing exec command");
    assert_eq!(code_of(&err).1.as_deref(), Some("127"), "{err:?}");

    // Shutdown now kills and deletes what runs, and the shim leaves nothing.
    shim.client
        .shutdown(api::ShutdownRequest {
            id: id.into(),
            now: true,
        })
        .await?;
    fx.assert_clean(id, shim.pid).await
}

async fn starter_errors(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    // Bad arguments: one line, exit 1 or 2, nothing created.
    let out = Command::new(bin("berth-shim"))
        .args(["--namespace", "Bad NS", "--id", "x", "--socket-dir"])
        .arg(fx.path().join("s1"))
        .output()?;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    assert!(!fx.path().join("s1").exists());
    // A second shim on a live socket is refused; the first is undisturbed.
    let shim = fx.shim("twice").await?;
    let out = fx.shim_command("twice").output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{out:?}"
    );
    assert!(alive(shim.pid));
    // Shutdown of an empty shim: it exits and removes its directory.
    let mut shim = shim;
    shim.client
        .shutdown(api::ShutdownRequest {
            id: "twice".into(),
            now: false,
        })
        .await?;
    fx.assert_clean("twice", shim.pid).await?;
    assert!(!shim.dir.exists());
    Ok(())
}

/// One shim hosting two containers of a pod: deleting one leaves the shim serving the other;
/// deleting the last one ends the shim.
async fn pod_shim(runtime: &'static str) -> Result<()> {
    let fx = Fixture::new(runtime)?;
    let mut shim = fx.shim("pod").await?;
    for id in ["pod-a", "pod-b"] {
        let bundle = fx.bundle(id, &["sleep", "1000"], |_| {})?;
        let mut req = fx.create_request(id, &bundle);
        req.sandbox_id = "pod".into();
        shim.client.create(req).await?;
        shim.client
            .start(api::StartRequest {
                id: id.into(),
                exec_id: String::new(),
            })
            .await?;
    }
    shim.kill("pod-a", 9).await?;
    assert_eq!(shim.wait("pod-a", "").await?, (137, 9, false));
    shim.delete("pod-a").await?;
    assert!(fx.cgroups_left("pod-a").is_empty());
    assert!(alive(shim.pid), "the shim still serves pod-b");
    assert_eq!(shim.status("pod-b").await?, TaskStatus::Running);
    shim.kill("pod-b", 9).await?;
    assert_eq!(shim.wait("pod-b", "").await?, (137, 9, false));
    shim.delete("pod-b").await?;
    fx.assert_clean("pod", shim.pid).await?;
    ensure!(fx.cgroups_left("pod-b").is_empty());
    Ok(())
}

macro_rules! every_runtime {
    ($($name:ident),* $(,)?) => {
        mod runc {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() -> anyhow::Result<()> {
                    super::$name("runc").await
                }
            )*
        }
        mod crun {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() -> anyhow::Result<()> {
                    super::$name("crun").await
                }
            )*
        }
        mod builtin {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() -> anyhow::Result<()> {
                    super::$name("builtin").await
                }
            )*
        }
    };
}

every_runtime!(
    exit_statuses,
    cri_log,
    exec_and_tty,
    pause_stats_update,
    oom_kill,
    starter_killed,
    cycles,
    rootfs_mounts,
    bad_input,
    pod_shim,
);

#[tokio::test(flavor = "current_thread")]
async fn starter_refuses_bad_arguments_and_second_shim() -> Result<()> {
    starter_errors("runc").await
}
