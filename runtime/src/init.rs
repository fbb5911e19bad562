//! The container's init process, from clone to execve: joins the namespaces given by path,
//! sets up the rootfs (mounts, /dev, pivot_root), the console, hostname and sysctls, then the
//! process itself ([`crate::process`]); reports Ready and blocks on the exec FIFO until
//! `start`. It never executes the runtime again, so the runtime's binary is never reachable
//! from inside the container once the init has executed the container's program; until then
//! it is not dumpable, so /proc/<pid>/exe cannot be opened by container processes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use rustix::fs::OFlags;

use crate::cgroups::Cgroups;
use crate::channel::{Channel, Message};
use crate::error::{Error, Result};
use crate::mounts::{Root, Target, fd_path};
use crate::spec::{NsKind, Spec};

/// Everything the init needs, prepared by `create` before the clone.
pub struct InitArgs<'a> {
    /// The spec.
    pub spec: &'a Spec,
    /// The rootfs directory on the host.
    pub rootfs: PathBuf,
    /// Namespaces to join: (kind, open descriptor).
    pub join: Vec<(NsKind, OwnedFd)>,
    /// The console socket, connected (terminal only).
    pub console: Option<OwnedFd>,
    /// The exec FIFO, opened read-write (so opening never blocks).
    pub fifo: OwnedFd,
    /// The container's cgroups.
    pub cgroups: &'a Cgroups,
    /// The compiled seccomp filter.
    pub seccomp: Option<crate::seccomp::Program>,
}

/// Runs the init in the cloned child; never returns.
pub fn run(chan: Channel, args: InitArgs<'_>) -> ! {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    match setup(&chan, args) {
        Ok((prepared, fifo)) => {
            if chan.send(&Message::Ready).is_err() {
                crate::sys::exit_now(1);
            }
            drop(chan);
            // Block until `start` writes one byte.
            let mut b = [0u8; 1];
            loop {
                match nix::unistd::read(&fifo, &mut b) {
                    Ok(1) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => crate::sys::exit_now(1),
                }
            }
            drop(fifo);
            let e = prepared.exec();
            let _ = nix::unistd::write(
                std::io::stderr(),
                format!("berth-runtime: {e}\n").as_bytes(),
            );
            crate::sys::exit_now(127)
        }
        Err(e) => {
            let _ = chan.send(&Message::Failed(e.to_string()));
            crate::sys::exit_now(1)
        }
    }
}

fn setup(chan: &Channel, args: InitArgs<'_>) -> Result<(crate::process::Prepared, OwnedFd)> {
    match chan.recv() {
        Ok(Some(Message::Go)) => {}
        _ => return Err(Error::Init("the runtime went away".into())),
    }
    let spec = args.spec;
    let userns = spec
        .namespace(NsKind::User)
        .is_some_and(|n| n.path.is_none());
    if userns {
        // Root of the new user namespace (the maps are written by now); the group stays
        // until the process's user is set, as with runc.
        nix::unistd::setresuid(0.into(), 0.into(), 0.into()).map_err(Error::sys("setuid 0"))?;
        if spec
            .namespace(NsKind::Ipc)
            .is_some_and(|n| n.path.is_none())
        {
            crate::sys::unshare(libc::CLONE_NEWIPC).map_err(Error::sys("new ipc namespace"))?;
        }
        nix::unistd::setresgid(0.into(), 0.into(), 0.into()).map_err(Error::sys("setgid 0"))?;
        crate::sys::setgroups(&[]).map_err(Error::sys("setgroups"))?;
    }
    for (kind, fd) in &args.join {
        crate::sys::setns(fd.as_fd(), kind.flag())
            .map_err(Error::sys(format!("join {kind:?} namespace")))?;
    }
    let cgroupns = spec
        .namespace(NsKind::Cgroup)
        .is_some_and(|n| n.path.is_none());
    if cgroupns {
        // After joining the cgroup: the namespace's root is the container's cgroup.
        crate::sys::unshare(libc::CLONE_NEWCGROUP).map_err(Error::sys("new cgroup namespace"))?;
    }
    if spec
        .namespace(NsKind::Uts)
        .is_some_and(|n| n.path.is_none())
    {
        if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).map_err(Error::sys("sethostname"))?;
        }
        if let Some(d) = spec.domainname.as_deref().filter(|d| !d.is_empty()) {
            // SAFETY: a valid pointer and length.
            let rc = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
            nix::errno::Errno::result(rc).map_err(Error::sys("setdomainname"))?;
        }
    }
    rootfs(spec, &args.rootfs, args.cgroups, cgroupns, userns)?;
    let process = spec
        .process
        .as_ref()
        .ok_or_else(|| Error::Init("no process".into()))?;
    nix::unistd::setsid().map_err(Error::sys("setsid"))?;
    if let Some(sock) = &args.console {
        console(sock.as_fd(), process)?;
    }
    drop(args.console);
    let prepared = crate::process::setup(process, args.seccomp)?;
    Ok((prepared, args.fifo))
}

/// Opens a pty on the container's devpts, sends the master to the console socket and makes
/// the slave the process's stdio and controlling terminal.
pub fn console(sock: std::os::fd::BorrowedFd<'_>, process: &crate::spec::Process) -> Result<()> {
    let master = rustix::fs::open(
        "/dev/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("/dev/ptmx")(e.into()))?;
    let n = crate::sys::unlock_pty(master.as_raw_fd()).map_err(Error::sys("unlock pty"))?;
    if let Some(size) = process.console_size {
        crate::sys::set_winsize(master.as_raw_fd(), size.height, size.width)
            .map_err(Error::sys("terminal size"))?;
    }
    let slave_path = format!("/dev/pts/{n}");
    let slave = rustix::fs::open(
        slave_path.as_str(),
        OFlags::RDWR | OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io(&slave_path)(e.into()))?;
    let _ = rustix::fs::fchown(
        &slave,
        Some(rustix::fs::Uid::from_raw(process.user.uid)),
        None,
    );
    crate::sys::send_fd(sock, master.as_raw_fd(), &slave_path)
        .map_err(Error::sys("send the console"))?;
    drop(master);
    for target in 0..3 {
        // SAFETY: dup2 on a valid descriptor onto stdio.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(Error::sys("dup2 console")(nix::errno::Errno::last()));
        }
    }
    crate::sys::set_controlling_tty(0).map_err(Error::sys("controlling terminal"))?;
    Ok(())
}

/// Mounts, /dev, pivot_root, read-only and masked paths.
fn rootfs(spec: &Spec, rootfs: &Path, cg: &Cgroups, cgroupns: bool, userns: bool) -> Result<()> {
    let prop = match spec.linux.rootfs_propagation.as_deref().unwrap_or("") {
        "shared" | "rshared" => MsFlags::MS_SHARED,
        "slave" | "rslave" => MsFlags::MS_SLAVE,
        "unbindable" | "runbindable" => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::MS_PRIVATE,
    };
    // Nothing mounted here propagates to the host (shared is applied after pivot_root).
    let first = if prop == MsFlags::MS_SHARED {
        MsFlags::MS_SLAVE
    } else {
        prop
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        first | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(Error::sys("make / private"))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(Error::sys(format!("bind {}", rootfs.display())))?;
    let root = Root::open(rootfs)?;
    let mut dev_bound = false;
    for m in &spec.mounts {
        crate::mounts::mount_one(&root, m, cg, cgroupns)?;
        if m.destination == Path::new("/dev") && m.kind.as_deref() == Some("bind") {
            dev_bound = true;
        }
    }
    if !dev_bound {
        devices(spec, &root, userns)?;
    }
    // pivot_root, or move + chroot where the root cannot be pivoted (e.g. an initramfs).
    nix::unistd::fchdir(root.fd()).map_err(Error::sys("chdir rootfs"))?;
    drop(root);
    match crate::sys::pivot_root_here() {
        Ok(()) => {
            // The old root is stacked on the new one: detach it (private first, so the
            // unmount does not propagate to the host).
            mount(
                None::<&str>,
                ".",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(Error::sys("make the old root a slave"))?;
            umount2(".", MntFlags::MNT_DETACH).map_err(Error::sys("detach the old root"))?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(Error::sys("move rootfs to /"))?;
            nix::unistd::chroot(".").map_err(Error::sys("chroot"))?;
        }
        Err(e) => return Err(Error::sys("pivot_root")(e)),
    }
    nix::unistd::chdir("/").map_err(Error::sys("chdir /"))?;
    if prop == MsFlags::MS_SHARED {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(Error::sys("make / shared"))?;
    }
    // Sysctls before /proc/sys becomes read-only.
    for (k, v) in &spec.linux.sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&path, v).map_err(Error::io(&path))?;
    }
    for p in &spec.linux.readonly_paths {
        readonly_path(p)?;
    }
    for p in &spec.linux.masked_paths {
        mask_path(p)?;
    }
    if spec.root.as_ref().is_some_and(|r| r.readonly) {
        crate::mounts::remount_bind(Path::new("/"), MsFlags::MS_RDONLY, Path::new("/"))?;
    }
    Ok(())
}

fn readonly_path(p: &Path) -> Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::sys(format!("bind {}", p.display()))(e)),
    }
    crate::mounts::remount_bind(p, MsFlags::MS_RDONLY, p)
}

fn mask_path(p: &Path) -> Result<()> {
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let r = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.map_err(Error::sys(format!("mask {}", p.display())))
}

/// The default device nodes, the spec's devices and the /dev symlinks. In a user namespace
/// (mknod forbidden) the host's nodes are bind-mounted instead.
fn devices(spec: &Spec, root: &Root, userns: bool) -> Result<()> {
    struct Node {
        path: PathBuf,
        kind: SFlag,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    }
    let mut nodes: Vec<Node> = [
        ("null", 1, 3),
        ("random", 1, 8),
        ("full", 1, 7),
        ("tty", 5, 0),
        ("zero", 1, 5),
        ("urandom", 1, 9),
    ]
    .iter()
    .map(|(n, ma, mi)| Node {
        path: Path::new("/dev").join(n),
        kind: SFlag::S_IFCHR,
        major: *ma,
        minor: *mi,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect();
    for d in &spec.linux.devices {
        let kind = match d.kind.as_str() {
            "b" => SFlag::S_IFBLK,
            "p" => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        nodes.retain(|n| n.path != d.path);
        nodes.push(Node {
            path: d.path.clone(),
            kind,
            major: d.major as u64,
            minor: d.minor as u64,
            mode: d.file_mode.unwrap_or(0o666),
            uid: d.uid.unwrap_or(0),
            gid: d.gid.unwrap_or(0),
        });
    }
    for n in &nodes {
        let parent = n.path.parent().unwrap_or(Path::new("/dev"));
        let name = n.path.file_name().ok_or_else(|| Error::InvalidSpec {
            field: "linux.devices".into(),
            reason: format!("{} has no file name", n.path.display()),
        })?;
        let dir = root.resolve(parent, Target::Dir, false)?;
        let dirfd = rustix::fs::openat(
            &dir,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io(parent)(e.into()))?;
        if userns {
            let target = root.resolve(&n.path, Target::File, false)?;
            mount(
                Some(&n.path),
                &fd_path(&target),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(Error::sys(format!("bind device {}", n.path.display())))?;
            continue;
        }
        let _ = nix::unistd::unlinkat(&dirfd, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        let path = fd_path(&dirfd).join(name);
        let old = nix::sys::stat::umask(Mode::empty());
        let r = mknod(
            &path,
            n.kind,
            Mode::from_bits_truncate(n.mode),
            makedev(n.major, n.minor),
        );
        nix::sys::stat::umask(old);
        r.map_err(Error::sys(format!("mknod {}", n.path.display())))?;
        nix::unistd::fchownat(
            &dirfd,
            name,
            Some(n.uid.into()),
            Some(n.gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(Error::sys(format!("chown {}", n.path.display())))?;
    }
    let dev = root.resolve(Path::new("/dev"), Target::Dir, false)?;
    let devfd = rustix::fs::openat(
        &dev,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("/dev")(e.into()))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match rustix::fs::symlinkat(target, &devfd, name) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::io(Path::new("/dev").join(name))(e.into())),
        }
    }
    // /dev/ptmx: the devpts instance's own ptmx.
    if rustix::fs::statat(&devfd, "pts/ptmx", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        let _ = rustix::fs::unlinkat(&devfd, "ptmx", rustix::fs::AtFlags::empty());
        rustix::fs::symlinkat("pts/ptmx", &devfd, "ptmx")
            .map_err(|e| Error::io("/dev/ptmx")(e.into()))?;
    }
    Ok(())
}

/// Whether sysctl `key` may be set for this spec (namespaced ones only, with the namespace).
pub fn check_sysctl(key: &str, spec: &Spec) -> std::result::Result<(), String> {
    let has = |k: NsKind| spec.namespace(k).is_some();
    let ok = if key.starts_with("net.") {
        spec.namespace(NsKind::Network)
            .is_some_and(|n| n.path.is_none())
            || has(NsKind::Network)
    } else if key.starts_with("fs.mqueue.")
        || matches!(
            key,
            "kernel.msgmax"
                | "kernel.msgmnb"
                | "kernel.msgmni"
                | "kernel.sem"
                | "kernel.shmall"
                | "kernel.shmmax"
                | "kernel.shmmni"
                | "kernel.shm_rmid_forced"
        )
    {
        has(NsKind::Ipc)
    } else if matches!(key, "kernel.hostname" | "kernel.domainname") {
        has(NsKind::Uts)
    } else {
        return Err(format!("{key:?} is not a namespaced sysctl"));
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{key:?} needs its own namespace"))
    }
}
