//! The OCI runtime CLI backend: drives runc, crun, berth's built-in runtime (`berth-runtime`,
//! see the berth-runtime crate) or any binary with the same command line (`create`, `start`,
//! `state`, `kill`, `delete`, `exec`, `pause`, `resume`, `update`).
//!
//! Every runtime command runs as a child of the shim, spawned through the [`Reaper`] and
//! waited for through it. `create` and `exec` hand the process's stdio to the runtime (which
//! passes it on) and read the runtime's own errors from a JSON `--log` file; the other
//! commands' errors come from their stderr. State lives under a runtime root private to the
//! shim. On a hybrid cgroup host, crun runs in a private mount namespace without the
//! controller-less cgroup2 mount (see [`crate::sys::private_mount_ns_without`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use berth_api::berth::types::v1::Stats;
use tokio::io::AsyncReadExt;

use crate::backend::{Backend, BackendStatus, CreateOpts, ExecOpts};
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// Where a hybrid host mounts its controller-less cgroup2 hierarchy.
const HYBRID_UNIFIED: &str = "/sys/fs/cgroup/unified";

/// An OCI runtime binary.
pub struct OciCli {
    binary: PathBuf,
    root: PathBuf,
    /// Directory for pid files, process specs and runtime logs.
    work: PathBuf,
    hide_unified: bool,
    reaper: Arc<Reaper>,
    cgroups: Mutex<HashMap<String, Cgroup>>,
    seq: std::sync::atomic::AtomicU64,
}

/// The built-in runtime's binary name, installed next to the shim's.
pub const BUILTIN: &str = "berth-runtime";

/// Resolves a runtime name: "builtin" is berth's own runtime (`berth-runtime` next to the
/// shim's executable); "runc" and "crun" are looked up in PATH; anything else must be an
/// absolute path to an executable file.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let path = if name.starts_with('/') {
        PathBuf::from(name)
    } else if name == "builtin" {
        let exe = std::env::current_exe().map_err(|e| Error::RuntimeMissing {
            path: PathBuf::from(BUILTIN),
            reason: format!("cannot locate the shim's executable: {e}"),
        })?;
        exe.with_file_name(BUILTIN)
    } else if matches!(name, "runc" | "crun") {
        let search = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        match search
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
        {
            Some(p) => p,
            None => {
                return Err(Error::RuntimeMissing {
                    path: PathBuf::from(name),
                    reason: "not found in PATH (install the package or give its path)".into(),
                });
            }
        }
    } else {
        return Err(Error::UnknownRuntime {
            name: name.to_owned(),
        });
    };
    match nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK) {
        Ok(()) if path.is_file() => Ok(path),
        Ok(()) => Err(Error::RuntimeMissing {
            path,
            reason: "not a file".into(),
        }),
        Err(e) => Err(Error::RuntimeMissing {
            path,
            reason: e.desc().to_owned(),
        }),
    }
}

/// True on a hybrid host: v1 controllers with a cgroup2 mount that holds none.
fn hybrid_host() -> bool {
    let Ok(stat) = nix::sys::statfs::statfs(HYBRID_UNIFIED) else {
        return false;
    };
    stat.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        && Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

/// The message of the last error entry of a runtime's JSON log (runc and crun both write
/// `{"level":"error","msg":...}` lines).
fn last_log_error(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_owned))
        .or_else(|| {
            let t = text.trim();
            (!t.is_empty()).then(|| t.lines().last().unwrap_or(t).to_owned())
        })
}

fn fd_stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

impl OciCli {
    /// A backend running `binary` (resolved with [`resolve`]) with state under `root`.
    pub fn new(binary: PathBuf, root: PathBuf, work: PathBuf, reaper: Arc<Reaper>) -> OciCli {
        let crun = binary
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("crun"));
        let hide_unified = crun && hybrid_host();
        OciCli {
            binary,
            root,
            work,
            hide_unified,
            reaper,
            cgroups: Mutex::default(),
            seq: Default::default(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if self.hide_unified {
            crate::sys::private_mount_ns_without(&mut cmd, HYBRID_UNIFIED);
        }
        cmd
    }

    fn temp(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.work.join(format!(".{what}-{n}"))
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        Error::RuntimeMissing {
            path: self.binary.clone(),
            reason: e.to_string(),
        }
    }

    /// Runs a runtime command that takes no stdio of a container; its stdout on success.
    async fn run(&self, command: &'static str, mut cmd: Command) -> Result<Vec<u8>> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| self.spawn_error(e))?;
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let (out, err) = tokio::join!(read_all(stdout), read_all(stderr));
        let exit = exit.await.map_err(|_| Error::RuntimeFailed {
            command,
            message: "the runtime's exit was lost".into(),
        })?;
        if exit.code != 0 {
            let err = String::from_utf8_lossy(&err);
            let message = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
                .unwrap_or_else(|| format!("exit status {}", exit.code));
            return Err(Error::RuntimeFailed { command, message });
        }
        Ok(out)
    }

    /// Runs `create` or `exec`: stdio goes to the container, errors to a JSON log file; the
    /// pid of the new process is read from the pid file.
    async fn run_with_io(
        &self,
        command: &'static str,
        mut cmd: Command,
        io: crate::io::RuntimeIo,
        log: &Path,
        pid_file: &Path,
    ) -> Result<u32> {
        cmd.stdin(fd_stdio(io.stdin))
            .stdout(fd_stdio(io.stdout))
            .stderr(fd_stdio(io.stderr));
        let spawned = self.reaper.spawn(&mut cmd);
        // The stdio descriptors are now the child's: close the shim's copies.
        drop(cmd);
        let (_child, exit) = spawned.map_err(|e| self.spawn_error(e))?;
        let exit = exit.await.map_err(|_| Error::RuntimeFailed {
            command,
            message: "the runtime's exit was lost".into(),
        })?;
        let result = if exit.code != 0 {
            Err(Error::RuntimeFailed {
                command,
                message: last_log_error(log)
                    .unwrap_or_else(|| format!("exit status {}", exit.code)),
            })
        } else {
            std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| Error::RuntimeFailed {
                    command,
                    message: format!("no pid in {}", pid_file.display()),
                })
        };
        let _ = std::fs::remove_file(log);
        let _ = std::fs::remove_file(pid_file);
        result
    }

    fn with_log(&self, cmd: &mut Command, log: &Path) {
        cmd.arg("--log").arg(log).arg("--log-format").arg("json");
    }
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(fd) = fd
        && let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
    {
        let _ = pipe.read_to_end(&mut out).await;
    }
    out
}

#[tonic::async_trait]
impl Backend for OciCli {
    async fn create(&self, opts: CreateOpts) -> Result<u32> {
        let log = self.temp("create-log");
        let pid_file = self.temp("create-pid");
        let mut cmd = self.command();
        self.with_log(&mut cmd, &log);
        cmd.arg("create")
            .arg("--bundle")
            .arg(&opts.bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(console) = &opts.io.console_socket {
            cmd.arg("--console-socket").arg(console);
        }
        cmd.arg(&opts.id);
        let pid = self
            .run_with_io("create", cmd, opts.io, &log, &pid_file)
            .await?;
        if let Ok(cg) = Cgroup::of_pid(pid) {
            self.cgroups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(opts.id.clone(), cg);
        }
        Ok(pid)
    }

    async fn start(&self, id: &str) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("start").arg(id);
        self.run("start", cmd).await.map(drop)
    }

    async fn state(&self, id: &str) -> Result<(BackendStatus, u32)> {
        let mut cmd = self.command();
        cmd.arg("state").arg(id);
        let out = self.run("state", cmd).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| Error::RuntimeFailed {
                command: "state",
                message: format!("unreadable state: {e}"),
            })?;
        let status = match v["status"].as_str() {
            Some("created") => BackendStatus::Created,
            Some("running") => BackendStatus::Running,
            Some("paused") | Some("pausing") => BackendStatus::Paused,
            _ => BackendStatus::Stopped,
        };
        Ok((status, v["pid"].as_u64().unwrap_or(0) as u32))
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        self.run("kill", cmd).await.map(drop)
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        let result = self.run("delete", cmd).await.map(drop);
        if result.is_ok() {
            self.cgroups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
        result
    }

    async fn exec(&self, id: &str, opts: ExecOpts) -> Result<u32> {
        let log = self.temp(&format!("exec-{}-log", opts.exec_id));
        let pid_file = self.temp(&format!("exec-{}-pid", opts.exec_id));
        let spec = self.temp(&format!("exec-{}-process", opts.exec_id));
        std::fs::write(&spec, &opts.process).map_err(Error::io(&spec))?;
        let mut cmd = self.command();
        self.with_log(&mut cmd, &log);
        cmd.arg("exec")
            .arg("--process")
            .arg(&spec)
            .arg("--detach")
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(console) = &opts.io.console_socket {
            cmd.arg("--console-socket").arg(console);
        }
        cmd.arg(id);
        let result = self
            .run_with_io("exec", cmd, opts.io, &log, &pid_file)
            .await;
        let _ = std::fs::remove_file(&spec);
        result
    }

    async fn pause(&self, id: &str) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("pause").arg(id);
        self.run("pause", cmd).await.map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("resume").arg(id);
        self.run("resume", cmd).await.map(drop)
    }

    async fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        let file = self.temp("update-resources");
        std::fs::write(&file, resources).map_err(Error::io(&file))?;
        let mut cmd = self.command();
        cmd.arg("update").arg("--resources").arg(&file).arg(id);
        let result = self.run("update", cmd).await.map(drop);
        let _ = std::fs::remove_file(&file);
        result
    }

    async fn stats(&self, id: &str, pid: u32) -> Result<Stats> {
        let cached = self
            .cgroups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let cgroup = match cached {
            Some(c) => c,
            None => Cgroup::of_pid(pid).map_err(Error::io(format!("/proc/{pid}/cgroup")))?,
        };
        Ok(cgroup.stats(Some(pid)))
    }
}
