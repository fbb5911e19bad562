//! Finding and removing what containers may leave behind after a failed test: processes,
//! cgroups (named after a temp directory, or under a test's cgroup parent), mounts and links.
//! Everything here is best effort, except the checks that return a `Result`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::Berth;
use crate::harness::{processes_mentioning, unmount_under};

/// The cgroup hierarchies mounted under /sys/fs/cgroup (the v1 controllers and `unified`).
fn hierarchies() -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|c| c.path())
}

/// SIGKILLs every process whose command line mentions `path`.
pub fn kill_processes_mentioning(path: &Path) {
    for pid in processes_mentioning(path) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Cgroup directories, in every hierarchy, whose name starts with `prefix`.
pub fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    hierarchies()
        .flat_map(|h| std::fs::read_dir(h).into_iter().flatten().flatten())
        .filter(|g| g.file_name().to_string_lossy().starts_with(prefix))
        .map(|g| g.path())
        .collect()
}

/// Cgroup directories, in every hierarchy, right under the cgroup `parent` (a name relative
/// to each hierarchy's root).
pub fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    hierarchies()
        .flat_map(|h| {
            std::fs::read_dir(h.join(parent))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes the cgroup `name` (a parent, relative to each hierarchy's root) from every hierarchy
/// that has it; fails if one is not empty.
pub fn remove_cgroup_parent(name: &str) -> anyhow::Result<()> {
    for dir in hierarchies().map(|h| h.join(name)).filter(|p| p.exists()) {
        std::fs::remove_dir(&dir).with_context(|| format!("cgroup {} not empty", dir.display()))?;
    }
    Ok(())
}

/// Stops a test's instance with the harness's leak check, then checks that no container
/// cgroup is left under `cgroup_parent` and removes that parent.
pub fn stop_instance(berth: Berth, cgroup_parent: &str) -> anyhow::Result<()> {
    berth.stop()?;
    let left = cgroups_under(cgroup_parent);
    anyhow::ensure!(left.is_empty(), "container cgroups left: {left:?}");
    remove_cgroup_parent(cgroup_parent)
}

/// Thaws `groups` (a frozen process cannot die) and SIGKILLs their processes.
pub fn kill_cgroups(groups: &[PathBuf]) {
    for g in groups {
        let _ = std::fs::write(g.join("freezer.state"), "THAWED");
        let _ = std::fs::write(g.join("cgroup.freeze"), "0");
    }
    for g in groups {
        let procs = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Kills the processes of `groups` (see [`kill_cgroups`]) and removes them, retrying for
/// about a second.
pub fn remove_cgroups(groups: &[PathBuf]) {
    for _ in 0..50 {
        kill_cgroups(groups);
        let mut left = false;
        for g in groups {
            left |= g.exists() && std::fs::remove_dir(g).is_err();
        }
        if !left {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes every network link whose name starts with `prefix` (`ip link del`).
pub fn delete_links(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1)
            && name.starts_with(prefix)
        {
            let name = name.split('@').next().unwrap_or(name);
            let _ = Command::new("ip").args(["link", "del", name]).output();
        }
    }
}

/// Removes what containers run from `dir` may have left: kills the processes mentioning
/// `dir`, removes the cgroups named after `dir`'s file name and unmounts everything under
/// `dir`.
pub fn clean_up_after(dir: &Path) {
    kill_processes_mentioning(dir);
    let prefix = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_cgroups(&cgroups_named(&prefix));
    unmount_under(dir);
}

/// Removes what a test's instance may have left after the test failed: kills its processes
/// and those of the container cgroups under `cgroup_parent`, unmounts under its state and
/// root, stops it (see [`Berth`]'s `Drop`), removes those cgroups and their parent, and with
/// `network` (link name prefix, nft table) the instance's links and nft table.
pub fn clean_up_instance(berth: Berth, cgroup_parent: &str, network: Option<(&str, &str)>) {
    kill_processes_mentioning(&berth.state());
    kill_cgroups(&cgroups_under(cgroup_parent));
    std::thread::sleep(Duration::from_millis(200));
    for dir in [berth.state(), berth.root()] {
        unmount_under(&dir);
    }
    drop(berth);
    for cg in cgroups_under(cgroup_parent) {
        let _ = std::fs::remove_dir(cg);
    }
    let _ = remove_cgroup_parent(cgroup_parent);
    if let Some((link_prefix, nft_table)) = network {
        delete_links(link_prefix);
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", nft_table])
            .output();
    }
}
