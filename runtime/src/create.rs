//! `create` (and `run`): validates the spec, prepares state and cgroups, clones the init
//! into its namespaces, writes its user namespace maps, oom_score_adj and cgroup membership,
//! and returns once the init is set up and blocked on the exec FIFO. Any failure kills the
//! init and removes the cgroups and the state directory: nothing is left behind.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use rustix::fs::OFlags;

use crate::cgroups::Cgroups;
use crate::channel::{self, Message};
use crate::error::{Error, Result};
use crate::spec::{NsKind, Spec};
use crate::state::State;

/// `create` options.
pub struct CreateOpts {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
}

/// Writes `data` to `path` atomically.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, data).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// Checks that need the rootfs: a named user exists in its /etc/passwd; a device exists on
/// the host.
fn check_rootfs(spec: &Spec, rootfs: &Path) -> Result<()> {
    let process = spec.process.as_ref().ok_or_else(|| Error::InvalidSpec {
        field: "process".into(),
        reason: "missing".into(),
    })?;
    if let Some(name) = process.user.username.as_deref().filter(|n| !n.is_empty()) {
        let root = crate::mounts::Root::open(rootfs)?;
        let passwd = root
            .open_in(Path::new("etc/passwd"), OFlags::RDONLY, false)
            .ok()
            .map(|fd| std::io::read_to_string(std::fs::File::from(fd)).unwrap_or_default())
            .unwrap_or_default();
        if !passwd.lines().any(|l| l.split(':').next() == Some(name)) {
            return Err(Error::InvalidSpec {
                field: "process.user.username".into(),
                reason: format!("user {name:?} does not exist in the image's /etc/passwd"),
            });
        }
    }
    // cwd: must exist in the image or lie under a mount.
    let cwd = Path::new(&process.cwd);
    if !spec.mounts.iter().any(|m| cwd.starts_with(&m.destination)) {
        let root = crate::mounts::Root::open(rootfs)?;
        if root
            .open_in(cwd, OFlags::PATH | OFlags::DIRECTORY, false)
            .is_err()
        {
            return Err(Error::InvalidSpec {
                field: "process.cwd".into(),
                reason: format!("{} is not a directory in the image", process.cwd),
            });
        }
    }
    for (i, d) in spec.linux.devices.iter().enumerate() {
        if d.kind == "p" {
            continue;
        }
        let class = if d.kind == "b" { "block" } else { "char" };
        let sys = format!("/sys/dev/{class}/{}:{}", d.major, d.minor);
        if !Path::new(&sys).exists() {
            return Err(Error::InvalidSpec {
                field: format!("linux.devices[{i}]"),
                reason: format!(
                    "{} device {}:{} ({}) does not exist on this host",
                    class,
                    d.major,
                    d.minor,
                    d.path.display()
                ),
            });
        }
    }
    Ok(())
}

/// The result of a successful create.
pub struct Created {
    /// Init pid.
    pub pid: i32,
}

/// Creates the container; see the module doc.
pub fn create(root: &Path, opts: &CreateOpts) -> Result<Created> {
    let dir = crate::state::dir(root, &opts.id)?;
    let bundle = std::path::absolute(&opts.bundle).map_err(Error::io(&opts.bundle))?;
    let spec = Spec::load(&bundle)?;
    let rootfs = spec.rootfs(&bundle)?;
    check_rootfs(&spec, &rootfs)?;
    if spec
        .namespace(NsKind::Mount)
        .is_none_or(|n| n.path.is_some())
    {
        return Err(Error::InvalidSpec {
            field: "linux.namespaces".into(),
            reason: "a new mount namespace is required".into(),
        });
    }
    if spec
        .namespace(NsKind::User)
        .is_some_and(|n| n.path.is_some())
    {
        return Err(Error::InvalidSpec {
            field: "linux.namespaces".into(),
            reason: "joining a user namespace by path is not supported".into(),
        });
    }
    let process = spec.process.as_ref().ok_or_else(|| Error::InvalidSpec {
        field: "process".into(),
        reason: "missing".into(),
    })?;
    if process.terminal != opts.console_socket.is_some() {
        return Err(Error::Usage(if process.terminal {
            "process.terminal is set: --console-socket is required".into()
        } else {
            "--console-socket given but process.terminal is false".into()
        }));
    }
    let seccomp = crate::seccomp::compile_spec(&spec)?;
    std::fs::create_dir_all(root).map_err(Error::io(root))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Exists {
                id: opts.id.clone(),
            });
        }
        Err(e) => return Err(Error::io(&dir)(e)),
    }
    let cg_path = spec
        .linux
        .cgroups_path
        .clone()
        .unwrap_or_else(|| format!("/{}", opts.id));
    let cgroups = Cgroups::for_path(&cg_path);
    let mut guard = Cleanup {
        dir: &dir,
        cgroups: &cgroups,
        pid: None,
        armed: true,
    };
    let result = create_inner(
        &dir, &bundle, &rootfs, &spec, opts, &cgroups, seccomp, &mut guard,
    );
    if result.is_ok() {
        guard.armed = false;
    }
    result
}

/// Undoes a failed create.
struct Cleanup<'a> {
    dir: &'a Path,
    cgroups: &'a Cgroups,
    pid: Option<i32>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let _ = self.cgroups.remove();
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

#[allow(clippy::too_many_arguments)]
fn create_inner(
    dir: &Path,
    bundle: &Path,
    rootfs: &Path,
    spec: &Spec,
    opts: &CreateOpts,
    cgroups: &Cgroups,
    seccomp: Option<crate::seccomp::Program>,
    guard: &mut Cleanup<'_>,
) -> Result<Created> {
    let fifo_path = dir.join("exec.fifo");
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o600))
        .map_err(Error::sys(format!("mkfifo {}", fifo_path.display())))?;
    let fifo: OwnedFd = rustix::fs::open(
        &fifo_path,
        OFlags::RDWR | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io(&fifo_path)(e.into()))?;
    cgroups.create()?;
    if let Some(res) = &spec.linux.resources {
        cgroups.apply(res, true, &spec.linux.devices)?;
    } else {
        cgroups.apply(&Default::default(), true, &spec.linux.devices)?;
    }
    let console = match &opts.console_socket {
        Some(p) => Some(OwnedFd::from(UnixStream::connect(p).map_err(Error::io(p))?)),
        None => None,
    };
    let mut join = Vec::new();
    let mut flags = 0;
    let userns = spec.namespace(NsKind::User).is_some();
    for ns in &spec.linux.namespaces {
        match &ns.path {
            Some(p) if ns.kind == NsKind::Pid => {
                let fd = std::fs::File::open(p).map_err(Error::io(p))?;
                crate::sys::setns(std::os::fd::AsFd::as_fd(&fd), libc::CLONE_NEWPID)
                    .map_err(Error::sys(format!("join pid namespace {}", p.display())))?;
            }
            Some(p) => {
                let fd = std::fs::File::open(p).map_err(Error::io(p))?;
                join.push((ns.kind, OwnedFd::from(fd)));
            }
            // The init makes these itself: the cgroup namespace once in its cgroup; in a new
            // user namespace, the IPC one once root there (its mqueue is owned by that root).
            None if ns.kind == NsKind::Cgroup => {}
            None if ns.kind == NsKind::Ipc && userns => {}
            None => flags |= ns.kind.flag(),
        }
    }
    let (parent, child) = channel::pair().map_err(Error::sys("socketpair"))?;
    // SAFETY: the runtime is single-threaded.
    let pid = match unsafe { crate::sys::clone(flags) }.map_err(Error::sys("clone"))? {
        crate::sys::Cloned::Child => {
            drop(parent);
            crate::init::run(
                child,
                crate::init::InitArgs {
                    spec,
                    rootfs: rootfs.to_owned(),
                    join,
                    console,
                    fifo,
                    cgroups,
                    seccomp,
                },
            )
        }
        crate::sys::Cloned::Parent(pid) => pid,
    };
    guard.pid = Some(pid);
    drop(child);
    drop(console);
    drop(fifo);
    if spec.namespace(NsKind::User).is_some() {
        let maps = |m: &[crate::spec::IdMapping]| {
            m.iter()
                .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
                .collect::<String>()
        };
        let uid_map = format!("/proc/{pid}/uid_map");
        std::fs::write(&uid_map, maps(&spec.linux.uid_mappings)).map_err(Error::io(&uid_map))?;
        let gid_map = format!("/proc/{pid}/gid_map");
        std::fs::write(&gid_map, maps(&spec.linux.gid_mappings)).map_err(Error::io(&gid_map))?;
    }
    if let Some(adj) = spec.process.as_ref().and_then(|p| p.oom_score_adj) {
        set_oom_score_adj(pid, adj)?;
    }
    cgroups.join(pid)?;
    parent
        .send(&Message::Go)
        .map_err(Error::sys("signal the init"))?;
    match parent.recv().map_err(Error::sys("read from the init"))? {
        Some(Message::Ready) => {}
        Some(Message::Failed(m)) => return Err(Error::Init(m)),
        _ => return Err(Error::Init("the init exited during set-up".into())),
    }
    let state = State {
        id: opts.id.clone(),
        pid,
        start_time: crate::state::start_time(pid).unwrap_or(0),
        bundle: bundle.to_owned(),
        rootfs: rootfs.to_owned(),
        created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        annotations: spec.annotations.clone(),
        cgroups: cgroups.clone(),
    };
    state.save(dir)?;
    if let Some(p) = &opts.pid_file {
        write_atomic(p, pid.to_string().as_bytes())?;
    }
    Ok(Created { pid })
}

/// Writes oom_score_adj; a value below the runtime's own is clamped (this host does not let
/// it be lowered) with a warning.
pub fn set_oom_score_adj(pid: i32, adj: i32) -> Result<()> {
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if adj < own {
        crate::log::warn(&format!(
            "oom_score_adj {adj} is below the runtime's own ({own}) and cannot be lowered here: kept at {own}"
        ));
        return Ok(());
    }
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, adj.to_string()).map_err(Error::io(&path))?;
    Ok(())
}
