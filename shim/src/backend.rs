//! What the shim needs from whatever actually runs containers.
//!
//! A backend creates a container from an OCI bundle with its init process stopped before
//! exec, starts it, runs extra (exec) processes in it, signals, freezes, thaws, updates and
//! deletes it. Processes it creates become children of the shim (directly or by the shim
//! being their subreaper): the shim's reaper, not the backend, learns their exits. This
//! issue's backend drives an OCI runtime binary ([`crate::runtime::OciCli`]): runc, crun, or
//! berth's own runtime (`berth-runtime`, a runc-compatible binary, so it needs no backend of
//! its own and its clone/exec never runs inside the shim's multi-threaded process).

use std::path::PathBuf;

use berth_api::berth::types::v1::Stats;

use crate::error::Result;
use crate::io::RuntimeIo;

/// What [`Backend::create`] needs.
pub struct CreateOpts {
    /// Container id.
    pub id: String,
    /// Bundle directory (config.json, rootfs).
    pub bundle: PathBuf,
    /// Stdio of the init process.
    pub io: RuntimeIo,
}

/// What [`Backend::exec`] needs.
pub struct ExecOpts {
    /// Exec id (for file names and messages).
    pub exec_id: String,
    /// The OCI process spec as JSON.
    pub process: Vec<u8>,
    /// Stdio of the process.
    pub io: RuntimeIo,
}

/// Status of a container as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// Runs containers; one instance serves every container of the shim that selected it.
#[tonic::async_trait]
pub trait Backend: Send + Sync {
    /// Creates the container; returns the pid of its init process (not yet started).
    async fn create(&self, opts: CreateOpts) -> Result<u32>;
    /// Starts the init process.
    async fn start(&self, id: &str) -> Result<()>;
    /// The container's status and init pid.
    async fn state(&self, id: &str) -> Result<(BackendStatus, u32)>;
    /// Sends `signal` to the init process, or to every process of the container.
    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()>;
    /// Deletes the container (`force`: even if it runs) and its cgroup.
    async fn delete(&self, id: &str, force: bool) -> Result<()>;
    /// Starts an extra process in the running container; returns its pid.
    async fn exec(&self, id: &str, opts: ExecOpts) -> Result<u32>;
    /// Freezes every process of the container.
    async fn pause(&self, id: &str) -> Result<()>;
    /// Thaws the container.
    async fn resume(&self, id: &str) -> Result<()>;
    /// Applies new resource limits (an OCI LinuxResources object as JSON).
    async fn update(&self, id: &str, resources: &[u8]) -> Result<()>;
    /// Resource usage of the container whose init process is (or was) `pid`.
    async fn stats(&self, id: &str, pid: u32) -> Result<Stats>;
}
