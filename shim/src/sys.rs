//! Every unsafe system call of the shim: fork, the pre-exec hook that gives a runtime a
//! private mount namespace, and the terminal size ioctl.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;

/// Which side of a fork this process is on.
pub enum Forked {
    /// The original process; the child's pid.
    Parent(nix::unistd::Pid),
    /// The new process.
    Child,
}

/// Forks the calling process.
///
/// # Safety
///
/// The caller must be single-threaded (the starter is: it runs before any runtime or thread
/// exists), so the child's copy of every lock and allocator is consistent.
pub unsafe fn fork() -> nix::Result<Forked> {
    // SAFETY: the caller guarantees that no other thread exists (see above).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Exits at once, without running destructors or flushing stdio shared with the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Makes `command` run in a mount namespace of its own in which `unmount` (a path) is not
/// mounted: the way to run Debian's crun on a hybrid cgroup host (it refuses the cgroup2 mount
/// that holds no controller) without changing anything outside that process.
pub fn private_mount_ns_without(command: &mut std::process::Command, unmount: &str) {
    // Prepared before the fork: nothing may allocate between fork and exec.
    let Ok(target) = CString::new(unmount) else {
        return;
    };
    let root = c"/";
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on pointers prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Stop mount events from propagating back to the host's namespace.
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: not mounted is fine.
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            Ok(())
        });
    }
}

/// Sets the window size of the terminal whose master (or slave) is `fd`.
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> nix::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is a valid open descriptor for the borrow's lifetime and `size` is a
    // properly initialised winsize that TIOCSWINSZ only reads.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Receives one file descriptor passed with SCM_RIGHTS on the connected socket `sock`
/// (the pty master that runc or crun sends on `--console-socket`). `Ok(None)` if the peer
/// closed the connection or sent no descriptor.
pub fn recv_fd(sock: BorrowedFd<'_>) -> nix::Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for us (SCM_RIGHTS);
                // nothing else owns it, so it is wrapped exactly once here.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    Ok(received)
}

/// Registers `fd` (set non-blocking by the caller) with the tokio reactor.
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that the AsyncFd now owns: it stays open
    // and its raw value never changes until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Starts `exe` with `args` as pid 1 of a new pid namespace; returns its pid (in the caller's
/// pid namespace). The child gets SIGKILL when the calling thread exits, and inherits no
/// descriptor besides stdin, stdout and stderr.
pub fn spawn_pid_namespace_init(exe: &std::path::Path, args: &[&str]) -> std::io::Result<u32> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    // Prepared before the clone: nothing may allocate in the child.
    let path = CString::new(exe.as_os_str().as_bytes()).map_err(invalid)?;
    let args: Vec<CString> = std::iter::once(Ok(path.clone()))
        .chain(args.iter().map(|a| CString::new(*a).map_err(invalid)))
        .collect::<std::io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: raw clone without CLONE_VM and with a null stack behaves like fork. The shim is
    // multi-threaded, so the child only makes async-signal-safe system calls on memory
    // prepared above (no allocation, no lock) until execve replaces its image.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match rc {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: see above: plain system calls, then execve or _exit.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127)
            }
        }
        pid => Ok(pid as u32),
    }
}
