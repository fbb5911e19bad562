//! The commands on an existing container: start, state, kill, delete, pause, resume, update.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill as send};
use nix::unistd::Pid;
use rustix::fs::OFlags;

use crate::error::{Error, Result};
use crate::spec::Resources;
use crate::state::{State, Status};

fn load(root: &Path, id: &str) -> Result<(State, std::path::PathBuf, Status)> {
    let state = State::load(root, id)?;
    let dir = crate::state::dir(root, id)?;
    let status = state.status(&dir);
    Ok((state, dir, status))
}

fn wrong(id: &str, status: Status, what: &str) -> Error {
    Error::State {
        id: id.to_owned(),
        reason: format!("cannot {what} a {} container", status.name()),
    }
}

/// Lets the init execute its process.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let (_, dir, status) = load(root, id)?;
    if status != Status::Created {
        return Err(wrong(id, status, "start"));
    }
    let fifo = dir.join("exec.fifo");
    // Non-blocking: fails with ENXIO when the init (the only reader) is gone.
    let fd = rustix::fs::open(
        &fifo,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::State {
        id: id.to_owned(),
        reason: format!("the init is not waiting on {}: {e}", fifo.display()),
    })?;
    let _ = std::fs::remove_file(&fifo);
    rustix::io::write(&fd, b"0").map_err(|e| Error::io(&fifo)(e.into()))?;
    Ok(())
}

/// The state JSON.
pub fn state(root: &Path, id: &str) -> Result<serde_json::Value> {
    let (state, _, status) = load(root, id)?;
    Ok(state.to_json(status))
}

/// Parses a signal given as a number or a name (`KILL`, `SIGKILL`).
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::Usage(format!("unknown signal {s:?}")));
    }
    let name = if s.starts_with("SIG") {
        s.to_owned()
    } else {
        format!("SIG{s}")
    };
    name.parse()
        .map_err(|_| Error::Usage(format!("unknown signal {s:?}")))
}

/// Sends `sig` to the init, or to every process of the container.
pub fn kill(root: &Path, id: &str, sig: Signal, all: bool) -> Result<()> {
    let (state, _, status) = load(root, id)?;
    if all {
        signal_all(&state, sig);
        return Ok(());
    }
    if status == Status::Stopped {
        return Err(Error::State {
            id: id.to_owned(),
            reason: "container not running".into(),
        });
    }
    send(Pid::from_raw(state.pid), sig).map_err(Error::sys(format!("kill {}", state.pid)))
}

fn signal_all(state: &State, sig: Signal) {
    let frozen = sig == Signal::SIGKILL && state.cgroups.freeze(true).is_ok();
    for p in state.cgroups.pids() {
        let _ = send(Pid::from_raw(p), sig);
    }
    if frozen {
        let _ = state.cgroups.freeze(false);
    }
}

/// Deletes the container (`force`: kills it first if it runs).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let (state, dir, status) = match load(root, id) {
        Ok(s) => s,
        Err(Error::NotFound { .. }) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    match status {
        Status::Stopped | Status::Created => {}
        s if !force => return Err(wrong(id, s, "delete")),
        _ => {}
    }
    if status != Status::Stopped {
        signal_all(&state, Signal::SIGKILL);
        let _ = send(Pid::from_raw(state.pid), Signal::SIGKILL);
    }
    // Wait (bounded) for the processes to leave the cgroup.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !state.cgroups.pids().is_empty() && Instant::now() < deadline {
        signal_all(&state, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(1));
    }
    state.cgroups.remove()?;
    std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))
}

/// Freezes the container.
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let (state, _, status) = load(root, id)?;
    if status != Status::Running {
        return Err(wrong(id, status, "pause"));
    }
    state.cgroups.freeze(true)
}

/// Thaws the container.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let (state, _, status) = load(root, id)?;
    if status != Status::Paused {
        return Err(wrong(id, status, "resume"));
    }
    state.cgroups.freeze(false)
}

/// Applies new limits from an OCI LinuxResources JSON.
pub fn update(root: &Path, id: &str, resources: &[u8]) -> Result<()> {
    let (state, _, status) = load(root, id)?;
    if status == Status::Stopped {
        return Err(wrong(id, status, "update"));
    }
    let de = &mut serde_json::Deserializer::from_slice(resources);
    let res: Resources = serde_path_to_error::deserialize(de).map_err(|e| Error::InvalidSpec {
        field: format!("resources.{}", e.path()),
        reason: e.inner().to_string(),
    })?;
    state.cgroups.apply(&res, false, &[])
}
