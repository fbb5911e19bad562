//! The init of a pod whose containers share one pid namespace.
//!
//! A container whose spec carries the annotation [`ANNOTATION`] = `"true"` and a pid namespace
//! without path joins the pod's pid namespace: the pod's shim starts its init on the first
//! such container (`berth-shim pod-init`, pid 1 of a new pid namespace, which only reaps the
//! orphans of the pod's processes; no image, no pause container) and writes
//! `/proc/<init pid>/ns/pid` into that container's config.json. The init ends with the shim:
//! it is killed when the last container is deleted, and by its parent-death signal if the
//! shim dies.

use std::path::Path;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Spec annotation: "true" = join the pod's shared pid namespace (with a pid namespace that
/// names no path).
pub const ANNOTATION: &str = "berth.io/pod-pid-namespace";

/// The argument that runs `berth-shim` as a pod's init.
pub const COMMAND: &str = "pod-init";

/// The running init of a pod.
#[derive(Debug)]
pub struct PodInit {
    pid: u32,
    exited: tokio::sync::oneshot::Receiver<crate::reaper::Exit>,
}

impl PodInit {
    /// Starts the init in a new pid namespace (its exit is routed through `reaper`).
    pub fn start(reaper: &crate::reaper::Reaper) -> Result<PodInit> {
        let exe = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
        let pid = crate::sys::spawn_pid_namespace_init(&exe, &[COMMAND])
            .map_err(Error::io(format!("{} {COMMAND}", exe.display())))?;
        tracing::info!(pid, "pod init started");
        Ok(PodInit {
            pid,
            exited: reaper.subscribe(pid),
        })
    }

    /// True while the init runs.
    pub fn alive(&mut self) -> bool {
        matches!(
            self.exited.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        )
    }

    /// The path of its pid namespace.
    pub fn namespace(&self) -> String {
        format!("/proc/{}/ns/pid", self.pid)
    }

    /// Kills the init (and with it every process left in the pod's pid namespace).
    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
    }
}

/// True if `spec` asks to join the pod's shared pid namespace.
pub fn wanted(spec: &Value) -> bool {
    spec["annotations"][ANNOTATION] == "true"
        && spec["linux"]["namespaces"].as_array().is_some_and(|list| {
            list.iter()
                .any(|n| n["type"] == "pid" && n["path"].as_str().is_none_or(str::is_empty))
        })
}

/// Points the spec's pid namespace at `path`.
pub fn join(spec: &mut Value, path: &str) {
    if let Some(list) = spec["linux"]["namespaces"].as_array_mut() {
        for n in list.iter_mut().filter(|n| n["type"] == "pid") {
            n["path"] = json!(path);
        }
    }
}

/// Rewrites the bundle's config.json to join the pod's pid namespace if it asks to, starting
/// the init through `init` when it is needed and not running.
pub fn prepare(
    config: &Path,
    init: &mut Option<PodInit>,
    reaper: &crate::reaper::Reaper,
) -> Result<()> {
    let invalid = |reason: String| Error::InvalidBundle {
        path: config.parent().unwrap_or(config).to_owned(),
        reason,
    };
    let data = std::fs::read(config).map_err(|e| invalid(format!("config.json: {e}")))?;
    let mut spec: Value =
        serde_json::from_slice(&data).map_err(|e| invalid(format!("config.json: {e}")))?;
    if !wanted(&spec) {
        return Ok(());
    }
    if !init.as_mut().is_some_and(PodInit::alive) {
        *init = Some(PodInit::start(reaper)?);
    }
    let path = init.as_ref().map(PodInit::namespace).unwrap_or_default();
    join(&mut spec, &path);
    let data = serde_json::to_vec_pretty(&spec).map_err(|e| invalid(e.to_string()))?;
    crate::shim::write_atomic(config, &data).map_err(Error::io(config))
}

/// The init's main loop: pid 1 of the pod's pid namespace, reaping orphans until it is killed.
pub fn run() -> ! {
    let all = SigSet::all();
    let _ = all.thread_block();
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    loop {
        let _ = chld.wait();
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_only_with_annotation_and_no_path() {
        let spec = |annotation: &str, ns: Value| json!({"annotations": {ANNOTATION: annotation}, "linux": {"namespaces": [ns]}});
        assert!(wanted(&spec("true", json!({"type": "pid"}))));
        assert!(wanted(&spec("true", json!({"type": "pid", "path": ""}))));
        assert!(!wanted(&spec("false", json!({"type": "pid"}))));
        assert!(!wanted(&spec(
            "true",
            json!({"type": "pid", "path": "/proc/1/ns/pid"})
        )));
        assert!(!wanted(&spec("true", json!({"type": "ipc"}))));
        let mut s = spec("true", json!({"type": "pid"}));
        join(&mut s, "/proc/7/ns/pid");
        assert_eq!(s["linux"]["namespaces"][0]["path"], "/proc/7/ns/pid");
        assert!(!wanted(&s));
    }
}
