//! `exec`: runs an extra process in a running container. The runtime joins the container's
//! pid namespace (for its children) and forks; the child joins the other namespaces of the
//! init through /proc/<init>/ns/*, the cgroups (written by the runtime), and applies the
//! process JSON with the container's seccomp profile. The runtime returns once the child has
//! executed (its close-on-exec channel closes) or reports why it could not.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::channel::{self, Message};
use crate::error::{Error, Result};
use crate::spec::{NsKind, Process, Spec};
use crate::state::{State, Status};

/// `exec` options.
pub struct ExecOpts {
    /// Container id.
    pub id: String,
    /// The process JSON file.
    pub process: PathBuf,
    /// Where to write the new pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
}

const ORDER: [NsKind; 7] = [
    NsKind::User,
    NsKind::Ipc,
    NsKind::Uts,
    NsKind::Network,
    NsKind::Cgroup,
    NsKind::Time,
    NsKind::Mount,
];

/// Runs the process; returns its pid.
pub fn exec(root: &Path, opts: &ExecOpts) -> Result<i32> {
    let state = State::load(root, &opts.id)?;
    let dir = crate::state::dir(root, &opts.id)?;
    match state.status(&dir) {
        Status::Running | Status::Created => {}
        s => {
            return Err(Error::State {
                id: opts.id.clone(),
                reason: format!("cannot exec in a {} container", s.name()),
            });
        }
    }
    let data = std::fs::read(&opts.process).map_err(Error::io(&opts.process))?;
    let de = &mut serde_json::Deserializer::from_slice(&data);
    let process: Process =
        serde_path_to_error::deserialize(de).map_err(|e| Error::InvalidSpec {
            field: format!("process.{}", e.path()),
            reason: e.inner().to_string(),
        })?;
    process.validate("process")?;
    if process.terminal != opts.console_socket.is_some() {
        return Err(Error::Usage(
            "process.terminal and --console-socket must go together".into(),
        ));
    }
    let spec = Spec::load(&state.bundle)?;
    let seccomp = crate::seccomp::compile_spec(&spec)?;
    let pid = state.pid;
    let differs = |name: &str| {
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
            .map(|m| m.ino())
            .ok();
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .map(|m| m.ino())
            .ok();
        theirs.is_some() && theirs != ours
    };
    let mut join: Vec<(NsKind, OwnedFd)> = Vec::new();
    for kind in ORDER {
        if differs(kind.proc_name()) {
            let p = format!("/proc/{pid}/ns/{}", kind.proc_name());
            join.push((
                kind,
                OwnedFd::from(std::fs::File::open(&p).map_err(Error::io(&p))?),
            ));
        }
    }
    if differs("pid") {
        let p = format!("/proc/{pid}/ns/pid");
        let fd = std::fs::File::open(&p).map_err(Error::io(&p))?;
        crate::sys::setns(fd.as_fd(), libc::CLONE_NEWPID)
            .map_err(Error::sys("join the pid namespace"))?;
    }
    let console = match &opts.console_socket {
        Some(p) => Some(OwnedFd::from(UnixStream::connect(p).map_err(Error::io(p))?)),
        None => None,
    };
    let (parent, child) = channel::pair().map_err(Error::sys("socketpair"))?;
    // SAFETY: the runtime is single-threaded.
    let child_pid = match unsafe { crate::sys::clone(0) }.map_err(Error::sys("fork"))? {
        crate::sys::Cloned::Child => {
            drop(parent);
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            let e = child_run(&child, join, console, &process, seccomp);
            let _ = child.send(&Message::Failed(e.to_string()));
            crate::sys::exit_now(1)
        }
        crate::sys::Cloned::Parent(p) => p,
    };
    drop(child);
    drop(console);
    let kill = || {
        let p = nix::unistd::Pid::from_raw(child_pid);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(p, None);
    };
    if let Err(e) = state.cgroups.join(child_pid) {
        kill();
        return Err(e);
    }
    if let Err(e) = parent.send(&Message::Go) {
        kill();
        return Err(Error::sys("signal the process")(e));
    }
    match parent.recv() {
        Ok(Some(Message::Ready)) => {}
        Ok(Some(Message::Failed(m))) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child_pid), None);
            return Err(Error::Init(m));
        }
        _ => {
            kill();
            return Err(Error::Init("the process exited during set-up".into()));
        }
    }
    // After Ready: end of file = executed; a message = exec failed.
    if let Ok(Some(Message::Failed(m))) = parent.recv() {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child_pid), None);
        return Err(Error::Init(m));
    }
    if let Some(p) = &opts.pid_file {
        crate::create::write_atomic(p, child_pid.to_string().as_bytes())?;
    }
    Ok(child_pid)
}

fn child_run(
    chan: &channel::Channel,
    join: Vec<(NsKind, OwnedFd)>,
    console: Option<OwnedFd>,
    process: &Process,
    seccomp: Option<crate::seccomp::Program>,
) -> Error {
    match chan.recv() {
        Ok(Some(Message::Go)) => {}
        _ => return Error::Init("the runtime went away".into()),
    }
    for (kind, fd) in &join {
        if let Err(e) = crate::sys::setns(fd.as_fd(), kind.flag()) {
            return Error::sys(format!("join {kind:?} namespace"))(e);
        }
    }
    if let Err(e) = nix::unistd::chdir("/") {
        return Error::sys("chdir /")(e);
    }
    if let Err(e) = nix::unistd::setsid() {
        return Error::sys("setsid")(e);
    }
    if let Some(c) = &console
        && let Err(e) = crate::init::console(c.as_fd(), process)
    {
        return e;
    }
    drop(console);
    let prepared = match crate::process::setup(process, seccomp) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Err(e) = chan.send(&Message::Ready) {
        return Error::sys("report ready")(e);
    }
    prepared.exec()
}
