//! Network namespaces pinned by bind mounts, and running netlink requests inside one.
//!
//! A netlink socket lives in the network namespace of the thread that opened it, so work inside
//! a container's namespace runs on a dedicated OS thread that enters it with setns(2), opens its
//! own rtnetlink connection on a single-threaded runtime, and exits when done: no thread of the
//! service's runtime ever changes namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::Handle;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// `f_type` of a mounted namespace file (nsfs).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a network namespace file (a pinned netns or `/proc/<pid>/ns/net`).
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Checks that `path` names a network namespace.
pub fn check(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::NotANetns {
            path: path.to_owned(),
            reason: "not an absolute path".into(),
        });
    }
    if !is_netns(path) {
        return Err(Error::NotANetns {
            path: path.to_owned(),
            reason: "not a namespace file (nsfs)".into(),
        });
    }
    let same = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    };
    if same(path, Path::new("/proc/self/ns/net")) {
        return Err(Error::NotANetns {
            path: path.to_owned(),
            reason: "it is the host's own network namespace".into(),
        });
    }
    Ok(())
}

/// Creates a new network namespace pinned by a bind mount at `path`, with loopback up.
/// Returns without change when `path` already pins one.
pub async fn create(path: &Path) -> Result<()> {
    if is_netns(path) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    File::create(path).map_err(|e| Error::io("create netns file", path, e))?;
    let target = path.to_owned();
    let result = on_thread(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("unshare network namespace for", &target, e.into()))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::io("bind-mount network namespace at", &target, e.into()))?;
        block_on_here(async {
            let handle = connect()?;
            crate::kernel::link::set_up_by_name(&handle, "lo").await
        })
    })
    .await;
    if result.is_err() {
        let _ = remove(path);
    }
    result
}

/// Unmounts and deletes a pinned network namespace; a missing one is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(Error::io("unmount network namespace", path, e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove netns file", path, e)),
    }
}

/// Runs `work` with an rtnetlink handle opened inside the network namespace at `netns`.
pub async fn run_in<T, F, Fut>(netns: &Path, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let file = File::open(netns).map_err(|e| Error::io("open network namespace", netns, e))?;
    let netns: PathBuf = netns.to_owned();
    on_thread(move || {
        nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("enter network namespace", &netns, e.into()))?;
        block_on_here(async move {
            let handle = connect()?;
            work(handle).await
        })
    })
    .await
}

/// Opens an rtnetlink connection in the calling thread's network namespace, driven by the
/// current runtime.
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| Error::io("open netlink socket", "rtnetlink", e))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Runs `f` on a new OS thread (which may change namespace and then ends) and awaits it.
async fn on_thread<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| Error::io("spawn thread", "netns worker", e))?;
    rx.await.map_err(|_| {
        Error::io(
            "netns worker",
            "thread",
            std::io::Error::other("the worker thread panicked"),
        )
    })?
}

/// Runs a future to completion on a single-threaded runtime owned by this thread.
fn block_on_here<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("start runtime", "netns worker", e))?;
    runtime.block_on(fut)
}
