//! The pod's ipc and uts namespaces, made without any process: a short-lived thread unshares
//! them, sets the pod's hostname, and bind-mounts its `/proc/thread-self/ns/{ipc,uts}` onto
//! files in the pod's directory, which keep them alive after the thread exits. Also the
//! pod's `net.*` sysctls and its network counters, read from inside its network namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// The pinned namespaces of one pod.
#[derive(Debug, Clone, Default)]
pub struct Pinned {
    /// Pinned ipc namespace, if one was made.
    pub ipc: Option<PathBuf>,
    /// Pinned uts namespace, if one was made.
    pub uts: Option<PathBuf>,
}

/// Runs `f` on a new thread (whose namespace changes die with it) and returns its result.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("cri-ns".into())
        .spawn(f)?
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
}

fn pin(kind: &str, target: &Path) -> io::Result<()> {
    File::create(target)?;
    let source = format!("/proc/thread-self/ns/{kind}");
    nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("pin {kind} namespace at {}: {e}", target.display())))
}

/// Makes the pod's new ipc namespace (when `ipc`) and uts namespace with `hostname` (when
/// `uts`), pinned at `dir/ipc` and `dir/uts`. Nothing is left on error.
pub fn create(dir: &Path, ipc: bool, uts: bool, hostname: &str) -> io::Result<Pinned> {
    if !ipc && !uts {
        return Ok(Pinned::default());
    }
    let dir = dir.to_owned();
    let hostname = hostname.to_owned();
    on_thread(move || {
        let mut flags = CloneFlags::empty();
        if ipc {
            flags |= CloneFlags::CLONE_NEWIPC;
        }
        if uts {
            flags |= CloneFlags::CLONE_NEWUTS;
        }
        nix::sched::unshare(flags).map_err(|e| io::Error::other(format!("unshare: {e}")))?;
        if uts {
            // SAFETY: the pointer and length describe `hostname`'s bytes, alive for the call.
            let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
            if rc != 0 {
                return Err(io::Error::other(format!(
                    "sethostname {hostname:?}: {}",
                    io::Error::last_os_error()
                )));
            }
        }
        let mut pinned = Pinned::default();
        let result = (|| {
            if ipc {
                let path = dir.join("ipc");
                pin("ipc", &path)?;
                pinned.ipc = Some(path);
            }
            if uts {
                let path = dir.join("uts");
                pin("uts", &path)?;
                pinned.uts = Some(path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(pinned),
            Err(e) => {
                release(&pinned);
                Err(e)
            }
        }
    })
}

/// Unmounts and deletes pinned namespace files; missing ones are fine.
pub fn release(pinned: &Pinned) {
    for path in [&pinned.ipc, &pinned.uts].into_iter().flatten() {
        unpin(path);
    }
}

/// Unmounts (lazily) and deletes one pinned namespace file, if it is there.
pub fn unpin(path: &Path) {
    let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Runs `f` on a thread that joined the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(netns)?;
    on_thread(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("join network namespace: {e}")))?;
        f()
    })
}

/// Writes `net.*` sysctls inside the network namespace at `netns`.
pub fn apply_net_sysctls(netns: &Path, sysctls: Vec<(String, String)>) -> io::Result<()> {
    in_netns(netns, move || {
        for (key, value) in sysctls {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, &value)
                .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))?;
        }
        Ok(())
    })
}

/// Counters of one interface, as `/proc/net/dev` reports them.
#[derive(Debug, Clone, Default)]
pub struct InterfaceCounters {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// The counters of every interface but `lo` in the network namespace at `netns`.
pub fn interface_counters(netns: &Path) -> io::Result<Vec<InterfaceCounters>> {
    let text = in_netns(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })?;
    Ok(parse_net_dev(&text))
}

fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            let n: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (name != "lo" && n.len() >= 16).then(|| InterfaceCounters {
                name: name.to_owned(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
            eth0:    5000      10    1    0    0     0          0         0     3000       8    2    0    0     0       0          0\n";
        let c = parse_net_dev(text);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "eth0");
        assert_eq!((c[0].rx_bytes, c[0].rx_errors), (5000, 1));
        assert_eq!((c[0].tx_bytes, c[0].tx_errors), (3000, 2));
    }
}
