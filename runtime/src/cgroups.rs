//! The container's cgroups, written directly: created before the init runs, joined by the
//! init (and every exec), limited from `linux.resources`, frozen for pause, removed on delete.
//!
//! Three host layouts: v1 (one hierarchy per controller), v2 (one unified hierarchy), and
//! hybrid (v1 controllers plus a cgroup2 mount that holds none; it is joined for membership
//! only). Limits go to v1 files whenever v1 controllers are mounted, to v2 files otherwise.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::Resources;

/// One cgroup directory per hierarchy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cgroups {
    /// v1: (controllers of the hierarchy, directory).
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The directory in the cgroup2 hierarchy, when one is mounted.
    pub v2: Option<PathBuf>,
    /// Limits go to v2 files (no v1 controller is mounted).
    pub unified: bool,
}

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Mount point.
    pub point: PathBuf,
    /// The cgroup path mounted there (`/` unless only a sub-tree is, as in a cgroup namespace).
    pub root: String,
    /// v1 controllers and `name=` options; empty for cgroup2.
    pub controllers: Vec<String>,
    /// A cgroup2 (unified) hierarchy.
    pub v2: bool,
}

/// The cgroup hierarchies mounted in this mount namespace.
pub fn hierarchies() -> Vec<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rfields: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype), Some(opts)) = (
            fields.get(3),
            fields.get(4),
            rfields.first(),
            rfields.get(2),
        ) else {
            continue;
        };
        let controllers = match *fstype {
            "cgroup2" => Vec::new(),
            "cgroup" => opts
                .split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro") && (!o.contains('=') || o.starts_with("name="))
                })
                .map(str::to_owned)
                .collect(),
            _ => continue,
        };
        out.push(Hierarchy {
            point: PathBuf::from(unescape(point)),
            root: unescape(root),
            v2: *fstype == "cgroup2",
            controllers,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(Error::io(path))
}

fn write_if_exists(path: &Path, value: &str) -> Result<()> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

/// Default device cgroup rules (runc's allowed devices, in its order): mknod of any block or
/// char device, null, zero, full, random, urandom, tty, ptmx, tun, pty slaves.
const DEFAULT_DEVICE_RULES: &[&str] = &[
    "b *:* m",
    "c *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
    "c 136:* rwm",
];

impl Cgroups {
    /// The directories for cgroups path `path` (absolute or relative to each hierarchy's root).
    pub fn for_path(path: &str) -> Cgroups {
        let rel = path.trim_start_matches('/');
        let mut cg = Cgroups::default();
        for h in hierarchies() {
            let dir = h.point.join(rel);
            if h.controllers.is_empty() {
                cg.v2 = Some(dir);
            } else if !cg.v1.iter().any(|(c, _)| *c == h.controllers) {
                cg.v1.push((h.controllers, dir));
            }
        }
        cg.unified = cg.v1.is_empty();
        cg
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        if self.unified {
            return self.v2.as_deref();
        }
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|n| n == controller))
            .map(|(_, d)| d.as_path())
    }

    fn all_dirs(&self) -> impl Iterator<Item = &Path> {
        self.v1
            .iter()
            .map(|(_, d)| d.as_path())
            .chain(self.v2.as_deref())
    }

    /// Creates every directory (and missing parents); cpuset levels inherit cpus and mems;
    /// on v2, the parents delegate their controllers.
    pub fn create(&self) -> Result<()> {
        for (controllers, dir) in &self.v1 {
            let cpuset = controllers.iter().any(|c| c == "cpuset");
            create_levels(dir, |level, parent| {
                if cpuset {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let cur = std::fs::read_to_string(level.join(f)).unwrap_or_default();
                        if cur.trim().is_empty() {
                            let p = std::fs::read_to_string(parent.join(f))
                                .map_err(Error::io(parent.join(f)))?;
                            write(&level.join(f), p.trim())?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        if let Some(dir) = &self.v2 {
            let unified = self.unified;
            create_levels(dir, |_, parent| {
                if unified {
                    let avail = std::fs::read_to_string(parent.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let enable: Vec<String> = avail
                        .split_whitespace()
                        .filter(|c| {
                            matches!(*c, "cpu" | "cpuset" | "io" | "memory" | "pids" | "hugetlb")
                        })
                        .map(|c| format!("+{c}"))
                        .collect();
                    if !enable.is_empty() {
                        let _ =
                            std::fs::write(parent.join("cgroup.subtree_control"), enable.join(" "));
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Moves process `pid` into every directory.
    pub fn join(&self, pid: i32) -> Result<()> {
        let pid = pid.to_string();
        for dir in self.all_dirs() {
            write(&dir.join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    /// Applies `res` (devices only when `devices` is set: on create, not on update).
    pub fn apply(
        &self,
        res: &Resources,
        devices: bool,
        spec_devices: &[crate::spec::Device],
    ) -> Result<()> {
        if self.unified {
            return self.apply_v2(res);
        }
        if let Some(m) = &res.memory
            && let Some(dir) = self.dir_of("memory")
        {
            if let Some(l) = m.limit {
                let swap = dir.join("memory.memsw.limit_in_bytes");
                // Raising the limit above memsw fails: raise memsw first, then retry.
                if write(&dir.join("memory.limit_in_bytes"), &l.to_string()).is_err() {
                    if let Some(s) = m.swap {
                        write_if_exists(&swap, &s.to_string())?;
                    }
                    write(&dir.join("memory.limit_in_bytes"), &l.to_string())?;
                }
            }
            if let Some(s) = m.swap {
                write_if_exists(&dir.join("memory.memsw.limit_in_bytes"), &s.to_string())?;
            }
            if let Some(r) = m.reservation {
                write(&dir.join("memory.soft_limit_in_bytes"), &r.to_string())?;
            }
            if let Some(s) = m.swappiness
                && s <= 100
            {
                write(&dir.join("memory.swappiness"), &s.to_string())?;
            }
            if m.disable_oom_killer == Some(true) {
                write(&dir.join("memory.oom_control"), "1")?;
            }
        }
        if let Some(c) = &res.cpu {
            if let Some(dir) = self.dir_of("cpu") {
                if let Some(s) = c.shares.filter(|s| *s > 0) {
                    write(&dir.join("cpu.shares"), &s.to_string())?;
                }
                if let Some(p) = c.period.filter(|p| *p > 0) {
                    write(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
                }
                if let Some(q) = c.quota.filter(|q| *q != 0) {
                    write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
            }
            if let Some(dir) = self.dir_of("cpuset") {
                if let Some(cpus) = c.cpus.as_deref().filter(|s| !s.is_empty()) {
                    write(&dir.join("cpuset.cpus"), cpus)?;
                }
                if let Some(mems) = c.mems.as_deref().filter(|s| !s.is_empty()) {
                    write(&dir.join("cpuset.mems"), mems)?;
                }
            }
        }
        if let Some(p) = &res.pids
            && let Some(dir) = self.dir_of("pids")
        {
            let v = if p.limit > 0 {
                p.limit.to_string()
            } else {
                "max".into()
            };
            write(&dir.join("pids.max"), &v)?;
        }
        if let Some(w) = res.block_io.as_ref().and_then(|b| b.weight)
            && let Some(dir) = self.dir_of("blkio")
        {
            let f = dir.join("blkio.weight");
            let f = if f.exists() {
                f
            } else {
                dir.join("blkio.bfq.weight")
            };
            write(&f, &w.to_string())?;
        }
        if devices && let Some(dir) = self.dir_of("devices") {
            write(&dir.join("devices.deny"), "a")?;
            let mut rules: Vec<String> =
                DEFAULT_DEVICE_RULES.iter().map(|r| r.to_string()).collect();
            for d in spec_devices {
                let t = if d.kind == "u" { "c" } else { d.kind.as_str() };
                rules.push(format!("{t} {}:{} rwm", d.major, d.minor));
            }
            for r in &res.devices {
                let kind = r.kind.as_deref().unwrap_or("a");
                let num = |n: Option<i64>| {
                    n.filter(|n| *n >= 0)
                        .map_or("*".to_owned(), |n| n.to_string())
                };
                let rule = if kind == "a" {
                    "a".to_owned()
                } else {
                    format!(
                        "{kind} {}:{} {}",
                        num(r.major),
                        num(r.minor),
                        r.access.as_deref().unwrap_or("rwm")
                    )
                };
                let file = if r.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                if r.allow {
                    rules.push(rule);
                } else {
                    // A deny of everything resets; other denies are applied in order.
                    write(&dir.join(file), &rule)?;
                    if rule == "a" {
                        rules.retain(|_| false);
                        rules.extend(DEFAULT_DEVICE_RULES.iter().map(|r| r.to_string()));
                        for d in spec_devices {
                            let t = if d.kind == "u" { "c" } else { d.kind.as_str() };
                            rules.push(format!("{t} {}:{} rwm", d.major, d.minor));
                        }
                    }
                }
            }
            for r in rules {
                write(&dir.join("devices.allow"), &r)?;
            }
        }
        Ok(())
    }

    fn apply_v2(&self, res: &Resources) -> Result<()> {
        let Some(dir) = self.v2.as_deref() else {
            return Ok(());
        };
        let max = |v: i64| {
            if v < 0 {
                "max".to_owned()
            } else {
                v.to_string()
            }
        };
        if let Some(m) = &res.memory {
            if let Some(l) = m.limit {
                write(&dir.join("memory.max"), &max(l))?;
            }
            if let Some(r) = m.reservation {
                write(&dir.join("memory.low"), &max(r))?;
            }
            if let Some(s) = m.swap {
                // v1's swap is memory+swap; v2's swap.max is swap alone.
                let v = match (s, m.limit) {
                    (s, _) if s < 0 => "max".to_owned(),
                    (s, Some(l)) if l >= 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                write_if_exists(&dir.join("memory.swap.max"), &v)?;
            }
        }
        if let Some(c) = &res.cpu {
            if let Some(s) = c.shares.filter(|s| *s > 0) {
                let weight = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
                write(&dir.join("cpu.weight"), &weight.to_string())?;
            }
            if c.quota.is_some() || c.period.is_some() {
                let q = c
                    .quota
                    .filter(|q| *q > 0)
                    .map_or("max".to_owned(), |q| q.to_string());
                let p = c.period.filter(|p| *p > 0).unwrap_or(100_000);
                write(&dir.join("cpu.max"), &format!("{q} {p}"))?;
            }
            if let Some(cpus) = c.cpus.as_deref().filter(|s| !s.is_empty()) {
                write(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = c.mems.as_deref().filter(|s| !s.is_empty()) {
                write(&dir.join("cpuset.mems"), mems)?;
            }
        }
        if let Some(p) = &res.pids {
            write(
                &dir.join("pids.max"),
                &if p.limit > 0 {
                    p.limit.to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        if let Some(w) = res.block_io.as_ref().and_then(|b| b.weight) {
            // blkio weight 10..1000 -> io weight 1..10000.
            let weight = 1 + ((w.clamp(10, 1000) as u64 - 10) * 9999) / 990;
            let f = dir.join("io.weight");
            let f = if f.exists() {
                f
            } else {
                dir.join("io.bfq.weight")
            };
            write(&f, &weight.to_string())?;
        }
        for (file, value) in &res.unified {
            if file.contains('/') || file.starts_with('.') {
                return Err(Error::InvalidSpec {
                    field: "linux.resources.unified".into(),
                    reason: format!("{file:?} is not a cgroup file name"),
                });
            }
            write(&dir.join(file), value)?;
        }
        Ok(())
    }

    /// Pids of every process in the container's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = ["freezer", "pids", "memory", "devices", "cpu"]
            .iter()
            .find_map(|c| self.dir_of(c))
            .or(self.v2.as_deref());
        dir.and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Freezes (true) or thaws (false) every process and waits until done.
    pub fn freeze(&self, freeze: bool) -> Result<()> {
        if !self.unified
            && let Some(dir) = self.dir_of("freezer")
        {
            let want = if freeze { "FROZEN" } else { "THAWED" };
            let state = dir.join("freezer.state");
            for _ in 0..2000 {
                write(&state, want)?;
                if std::fs::read_to_string(&state)
                    .map_err(Error::io(&state))?
                    .trim()
                    == want
                {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return Err(Error::Init(format!(
                "{} stays {}",
                state.display(),
                if freeze { "FREEZING" } else { "frozen" }
            )));
        }
        let Some(dir) = self.v2.as_deref() else {
            return Err(Error::Init("no freezer cgroup".into()));
        };
        write(&dir.join("cgroup.freeze"), if freeze { "1" } else { "0" })?;
        for _ in 0..2000 {
            let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
            if events
                .lines()
                .any(|l| l == if freeze { "frozen 1" } else { "frozen 0" })
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(Error::Init(format!(
            "{} does not reach the frozen state",
            dir.display()
        )))
    }

    /// Whether the processes are frozen.
    pub fn frozen(&self) -> bool {
        if !self.unified
            && let Some(dir) = self.dir_of("freezer")
        {
            return std::fs::read_to_string(dir.join("freezer.state"))
                .is_ok_and(|s| s.trim() != "THAWED");
        }
        self.v2.as_deref().is_some_and(|d| {
            std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
        })
    }

    /// Removes every directory (waiting up to a second for exiting processes to leave).
    pub fn remove(&self) -> Result<()> {
        for dir in self.all_dirs() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 1000 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => return Err(Error::io(dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// Creates `dir` and its missing parents; `each(level, parent)` runs for every level created.
fn create_levels(dir: &Path, mut each: impl FnMut(&Path, &Path) -> Result<()>) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.exists() {
        missing.push(cur);
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for level in missing.into_iter().rev() {
        match std::fs::create_dir(level) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(level)(e)),
        }
        if let Some(parent) = level.parent() {
            each(level, parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v2 writes on a temp dir standing in for a cgroup2 directory.
    #[test]
    fn v2_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["memory.swap.max", "io.weight"] {
            std::fs::write(dir.path().join(f), "").expect("seed");
        }
        let cg = Cgroups {
            v1: vec![],
            v2: Some(dir.path().to_owned()),
            unified: true,
        };
        let res: Resources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
            "pids": {"limit": 64},
            "blockIO": {"weight": 500},
            "unified": {"memory.high": "90000000"}
        }))
        .expect("resources");
        cg.apply(&res, true, &[]).expect("apply");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect(f);
        assert_eq!(read("memory.max"), "104857600");
        assert_eq!(read("memory.low"), "52428800");
        assert_eq!(read("memory.swap.max"), "104857600");
        assert_eq!(read("cpu.weight"), "20");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpuset.cpus"), "0");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("io.weight"), "4950");
        assert_eq!(read("memory.high"), "90000000");
    }
}
