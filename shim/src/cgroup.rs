//! A container's cgroup, found from its init process, read for stats, pids and OOM kills.
//!
//! Works on cgroup v1 (one hierarchy per controller), v2 (one unified hierarchy) and hybrid
//! hosts (v1 controllers plus a cgroup2 mount without them): the files of each controller are
//! read where that controller is mounted, as `/proc/self/mountinfo` says.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::time::SystemTime;

use berth_api::berth::types::v1::Stats;
use berth_runtime::cgroups::{Hierarchy, hierarchies};

/// The directories of one cgroup, per controller.
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    /// v1: controller name -> directory.
    v1: HashMap<String, PathBuf>,
    /// v2: the directory in the unified hierarchy, when it holds controllers.
    v2: Option<PathBuf>,
}

fn under(mount: &Hierarchy, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(path);
    mount.point.join(rel.trim_start_matches('/'))
}

impl Cgroup {
    /// The cgroup of process `pid`.
    pub fn of_pid(pid: u32) -> std::io::Result<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mounts = hierarchies();
        let mut cgroup = Cgroup::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                if let Some(m) = mounts.iter().find(|m| m.v2) {
                    let dir = under(m, path);
                    // A hybrid host's cgroup2 mount holds no controller worth reading.
                    let has = std::fs::read_to_string(dir.join("cgroup.controllers"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory" || c == "cpu"));
                    if has {
                        cgroup.v2 = Some(dir);
                    }
                }
                continue;
            }
            for controller in controllers.split(',') {
                if let Some(m) = mounts
                    .iter()
                    .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
                {
                    cgroup.v1.insert(controller.to_owned(), under(m, path));
                }
            }
        }
        Ok(cgroup)
    }

    fn file(&self, v1_controller: &str, v1_name: &str, v2_name: &str) -> Option<PathBuf> {
        if let Some(dir) = self.v1.get(v1_controller) {
            return Some(dir.join(v1_name));
        }
        self.v2.as_ref().map(|d| d.join(v2_name))
    }

    fn read(&self, v1_controller: &str, v1_name: &str, v2_name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(v1_controller, v1_name, v2_name)?).ok()
    }

    fn read_u64(&self, v1_controller: &str, v1_name: &str, v2_name: &str) -> u64 {
        self.read(v1_controller, v1_name, v2_name)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many processes the OOM killer has killed in the cgroup (0 if unknown or gone).
    pub fn oom_kills(&self) -> u64 {
        self.read("memory", "memory.oom_control", "memory.events")
            .map(|s| keyed(&s, "oom_kill"))
            .unwrap_or(0)
    }

    /// Whether every task of the cgroup is frozen (v1 `freezer.state` FROZEN, v2 `frozen 1`);
    /// None when the freezer cannot be read.
    pub fn frozen(&self) -> Option<bool> {
        let text = self.read("freezer", "freezer.state", "cgroup.events")?;
        Some(text.trim() == "FROZEN" || keyed(&text, "frozen") == 1)
    }

    /// Pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let dir = ["pids", "memory", "freezer", "devices", "cpu"]
            .iter()
            .find_map(|c| self.v1.get(*c))
            .or(self.v2.as_ref());
        dir.and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Resource usage now; `pid`'s network namespace gives the network counters.
    pub fn stats(&self, pid: Option<u32>) -> Stats {
        let mut s = Stats {
            read_at: Some(SystemTime::now().into()),
            ..Stats::default()
        };
        if self.v1.contains_key("cpuacct") {
            s.cpu_usage_ns = self.read_u64("cpuacct", "cpuacct.usage", "");
            s.cpu_user_ns = self.read_u64("cpuacct", "cpuacct.usage_user", "");
            s.cpu_system_ns = self.read_u64("cpuacct", "cpuacct.usage_sys", "");
            if let Some(stat) = self.read("cpu", "cpu.stat", "cpu.stat") {
                s.cpu_throttled_periods = keyed(&stat, "nr_throttled");
                s.cpu_throttled_ns = keyed(&stat, "throttled_time");
            }
        } else if let Some(stat) = self.read("", "", "cpu.stat") {
            s.cpu_usage_ns = keyed(&stat, "usage_usec") * 1000;
            s.cpu_user_ns = keyed(&stat, "user_usec") * 1000;
            s.cpu_system_ns = keyed(&stat, "system_usec") * 1000;
            s.cpu_throttled_periods = keyed(&stat, "nr_throttled");
            s.cpu_throttled_ns = keyed(&stat, "throttled_usec") * 1000;
        }
        let v1_memory = self.v1.contains_key("memory");
        s.memory_usage_bytes = self.read_u64("memory", "memory.usage_in_bytes", "memory.current");
        let limit = self
            .read("memory", "memory.limit_in_bytes", "memory.max")
            .map(|l| l.trim().parse::<u64>().unwrap_or(0))
            .unwrap_or(0);
        // v1 reports "unlimited" as a huge page-aligned number.
        s.memory_limit_bytes = if limit >= 1 << 62 { 0 } else { limit };
        let inactive = self
            .read("memory", "memory.stat", "memory.stat")
            .map(|st| {
                keyed(
                    &st,
                    if v1_memory {
                        "total_inactive_file"
                    } else {
                        "inactive_file"
                    },
                )
            })
            .unwrap_or(0);
        s.memory_working_set_bytes = s.memory_usage_bytes.saturating_sub(inactive);
        s.pids_current = self.read_u64("pids", "pids.current", "pids.current");
        s.pids_limit = self.read_u64("pids", "pids.max", "pids.max");
        if self.v1.contains_key("blkio") {
            let text = self
                .read("blkio", "blkio.throttle.io_service_bytes_recursive", "")
                .filter(|t| !t.trim().is_empty())
                .or_else(|| self.read("blkio", "blkio.throttle.io_service_bytes", ""))
                .unwrap_or_default();
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let [_, op, n] = f.as_slice() {
                    let n: u64 = n.parse().unwrap_or(0);
                    match *op {
                        "Read" => s.io_read_bytes += n,
                        "Write" => s.io_write_bytes += n,
                        _ => {}
                    }
                }
            }
        } else if let Some(text) = self.read("", "", "io.stat") {
            for field in text.split_whitespace() {
                if let Some(n) = field.strip_prefix("rbytes=") {
                    s.io_read_bytes += n.parse().unwrap_or(0);
                } else if let Some(n) = field.strip_prefix("wbytes=") {
                    s.io_write_bytes += n.parse().unwrap_or(0);
                }
            }
        }
        if let Some(pid) = pid
            && let Ok(dev) = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        {
            for line in dev.lines().skip(2) {
                let Some((name, rest)) = line.split_once(':') else {
                    continue;
                };
                if name.trim() == "lo" {
                    continue;
                }
                let n: Vec<u64> = rest
                    .split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect();
                if n.len() >= 10 {
                    s.network_rx_bytes += n[0];
                    s.network_rx_packets += n[1];
                    s.network_tx_bytes += n[8];
                    s.network_tx_packets += n[9];
                }
            }
        }
        s
    }

    /// Removes the cgroup's directories that are left (empty ones only: rmdir): the runtime
    /// removes them on delete, but a hierarchy it does not manage or a busy moment can leave
    /// some behind.
    /// Directories of `keep` (the shim's own cgroup) and their ancestors are never touched.
    pub fn remove_leftovers(&self, keep: &Cgroup) {
        let kept: Vec<&PathBuf> = keep.v1.values().chain(keep.v2.iter()).collect();
        for dir in self.v1.values().chain(self.v2.iter()) {
            if kept.iter().any(|k| k.starts_with(dir))
                || dir
                    .parent()
                    .is_none_or(|p| p == std::path::Path::new("/sys/fs/cgroup"))
            {
                continue;
            }
            if dir.exists()
                && let Err(e) = std::fs::remove_dir(dir)
            {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove cgroup");
            }
        }
    }

    /// A watcher that wakes up on the cgroup's memory events: v1, an eventfd registered for
    /// `memory.oom_control` in `cgroup.event_control`; v2, inotify on `memory.events`.
    pub fn oom_watcher(&self) -> std::io::Result<OomWatcher> {
        if let Some(dir) = self.v1.get("memory") {
            let efd =
                EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
            let control = std::fs::File::open(dir.join("memory.oom_control"))?;
            std::fs::write(
                dir.join("cgroup.event_control"),
                format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd()),
            )?;
            let fd = crate::sys::async_fd(OwnedFd::from(efd))?;
            return Ok(OomWatcher {
                fd,
                gone: dir.clone(),
            });
        }
        let dir = self
            .v2
            .as_ref()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no memory cgroup"))?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        inotify.add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)?;
        let fd = crate::sys::async_fd(OwnedFd::from(inotify))?;
        Ok(OomWatcher {
            fd,
            gone: dir.clone(),
        })
    }
}

/// Wakes up when a cgroup's memory events change (see [`Cgroup::oom_watcher`]).
pub struct OomWatcher {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    gone: PathBuf,
}

impl OomWatcher {
    /// Waits for the next memory event; false once the cgroup is gone.
    pub async fn changed(&self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return false;
            };
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
                Ok(Ok(_)) => return self.gone.exists(),
                Ok(Err(_)) => return false,
                Err(_would_block) => continue,
            }
        }
    }
}

/// The value of `key` in a "key value" per line file.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(text, "oom_kill"), 2);
        assert_eq!(keyed(text, "missing"), 0);
    }

    #[test]
    fn own_cgroup_is_found() {
        let cg = Cgroup::of_pid(std::process::id()).expect("own cgroup");
        assert!(!cg.v1.is_empty() || cg.v2.is_some());
        assert!(cg.pids().contains(&std::process::id()));
    }
}
