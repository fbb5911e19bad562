//! A container's state directory `<root>/<id>/`: `state.json` (written atomically) and the
//! exec FIFO `exec.fifo` that the init blocks on until `start`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroups;
use crate::error::{Error, Result};

/// What the runtime records about a container.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    /// Container id.
    pub id: String,
    /// Init pid (host pid namespace).
    pub pid: i32,
    /// The init's start time (field 22 of /proc/PID/stat), to detect pid reuse.
    pub start_time: u64,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Rootfs directory.
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The container's cgroups.
    pub cgroups: Cgroups,
}

/// Status as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, waiting for start.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// The init has exited.
    Stopped,
}

impl Status {
    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The start time of process `pid`, None if it is gone (or a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // fields[0] is the state (field 3); start time is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The directory of container `id` under `root`; the id must be a plain name.
pub fn dir(root: &Path, id: &str) -> Result<PathBuf> {
    if id.is_empty()
        || id.len() > 1024
        || id.starts_with('.')
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
    {
        return Err(Error::Usage(format!("invalid container id {id:?}")));
    }
    Ok(root.join(id))
}

impl State {
    /// Loads the state of `id`.
    pub fn load(root: &Path, id: &str) -> Result<State> {
        let path = dir(root, id)?.join("state.json");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { id: id.to_owned() });
            }
            Err(e) => return Err(Error::io(&path)(e)),
        };
        serde_json::from_slice(&data).map_err(|e| Error::State {
            id: id.to_owned(),
            reason: format!("unreadable state: {e}"),
        })
    }

    /// Writes the state atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".state.json.tmp");
        let path = dir.join("state.json");
        let data = serde_json::to_vec(self).map_err(|e| Error::State {
            id: self.id.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, data).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))
    }

    /// Whether the init process is still this container's init.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// The status now.
    pub fn status(&self, dir: &Path) -> Status {
        if !self.alive() {
            Status::Stopped
        } else if dir.join("exec.fifo").exists() {
            Status::Created
        } else if self.cgroups.frozen() {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The state as `runc state` prints it.
    pub fn to_json(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "status": status.name(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "owner": "",
        })
    }
}
