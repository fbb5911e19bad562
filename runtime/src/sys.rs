//! The runtime's unsafe system calls: clone into new namespaces, setns, pivot_root, fd
//! passing, ioctls. Everything else goes through nix or rustix.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;

/// Which side of a clone this process is on.
pub enum Cloned {
    /// The original process; the child's pid (in the caller's pid namespace).
    Parent(i32),
    /// The new process.
    Child,
}

/// Forks into new namespaces (`flags`: CLONE_NEW*), like fork(2) otherwise.
///
/// # Safety
///
/// The calling process must be single-threaded (the runtime binary is), so the child's copy
/// of every lock and of the allocator is consistent.
pub unsafe fn clone(flags: libc::c_int) -> nix::Result<Cloned> {
    // SAFETY: raw clone without CLONE_VM and with a null stack behaves like fork: the child
    // runs on a copy of the caller's stack; the caller guarantees it is single-threaded.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match rc {
        -1 => Err(Errno::last()),
        0 => Ok(Cloned::Child),
        pid => Ok(Cloned::Parent(pid as i32)),
    }
}

/// Joins the namespace open at `fd` (`nstype`: CLONE_NEW* or 0).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> nix::Result<()> {
    // SAFETY: setns takes a valid descriptor (borrowed for the call) and an integer.
    Errno::result(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// Leaves the current namespaces of `flags` for new ones.
pub fn unshare(flags: libc::c_int) -> nix::Result<()> {
    // SAFETY: unshare takes an integer.
    Errno::result(unsafe { libc::unshare(flags) }).map(drop)
}

/// pivot_root(".", "."): the current directory becomes the root, the old root is stacked on
/// top of it (to be unmounted by the caller).
pub fn pivot_root_here() -> nix::Result<()> {
    // SAFETY: two valid NUL-terminated strings.
    Errno::result(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })
        .map(drop)
}

/// Marks every descriptor from `first` on close-on-exec.
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with integer arguments only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            4u32, /* CLOSE_RANGE_CLOEXEC */
        )
    };
    Errno::result(rc).map(drop)
}

/// Makes the terminal `fd` the controlling terminal of this session.
pub fn set_controlling_tty(fd: RawFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

/// Unlocks the pty master `fd` and returns the number of its slave.
pub fn unlock_pty(fd: RawFd) -> nix::Result<u32> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSPTLCK, &unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to a valid pointer.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// Sets the window size of the terminal `fd`.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> nix::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a properly initialised winsize.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) }).map(drop)
}

/// Sends `fd` over the connected Unix socket `sock` with SCM_RIGHTS (`name` as the payload,
/// as runc does for the console master).
pub fn send_fd(sock: BorrowedFd<'_>, fd: RawFd, name: &str) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map(drop)
}

/// Sets the calling process's supplementary groups.
pub fn setgroups(gids: &[u32]) -> nix::Result<()> {
    // SAFETY: a valid pointer to `gids.len()` gid_t values.
    Errno::result(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) }).map(drop)
}

/// Exits at once, without running destructors or flushing stdio shared with the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// execve(2); returns only on failure.
pub fn execve(
    path: &std::ffi::CStr,
    args: &[std::ffi::CString],
    env: &[std::ffi::CString],
) -> Errno {
    match nix::unistd::execve(path, args, env) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
