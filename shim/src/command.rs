//! Checks, before the runtime is asked, that a process's command exists in the container and
//! can be executed, so that a missing command is reported the way Docker and shells report it
//! (exit code 127, not executable: 126) and nothing is created for it.
//!
//! The lookup follows execvp: a name with a `/` is taken as a path (relative to the process's
//! cwd), anything else is searched in the process's `PATH`. Paths are resolved inside the
//! container's root (`openat2` with `RESOLVE_IN_ROOT`, so absolute symlinks such as busybox's
//! applets stay inside it). Paths under a mount of the spec are not checked at create time
//! (the mount is not there yet): the runtime reports those.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use crate::error::{Error, Result};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum Found {
    Executable,
    NotExecutable,
    Missing,
    /// Could not tell (unreadable, under a mount): let the runtime decide.
    Unknown,
}

fn probe(root: &impl AsFd, path: &Path, unchecked: &[PathBuf]) -> Found {
    if unchecked.iter().any(|m| path.starts_with(m)) {
        return Found::Unknown;
    }
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    match openat2(root.as_fd(), path, how) {
        Ok(fd) => match fstat(&fd) {
            Ok(st) => {
                let regular =
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
                if regular && st.st_mode & 0o111 != 0 {
                    Found::Executable
                } else {
                    Found::NotExecutable
                }
            }
            Err(_) => Found::Unknown,
        },
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => Found::Missing,
        Err(_) => Found::Unknown,
    }
}

/// Checks `args[0]` of a process with environment `env` and working directory `cwd`, inside
/// the root directory `root`; paths under `unchecked` are assumed to be fine.
pub fn check(
    root: &Path,
    args: &[String],
    env: &[String],
    cwd: &str,
    unchecked: &[PathBuf],
) -> Result<()> {
    let Some(command) = args.first() else {
        return Err(Error::InvalidArgument {
            field: "process.args",
            reason: "empty: the process needs a command".into(),
        });
    };
    let not_found = || Error::CommandNotFound {
        command: command.clone(),
    };
    if command.is_empty() {
        return Err(not_found());
    }
    let Ok(root_fd) = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        // The root is not reachable from here: nothing to check against.
        return Ok(());
    };
    let candidates: Vec<PathBuf> = if command.contains('/') {
        vec![Path::new(if cwd.is_empty() { "/" } else { cwd }).join(command)]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(command))
            .collect()
    };
    let mut not_executable = false;
    for candidate in &candidates {
        match probe(&root_fd, candidate, unchecked) {
            Found::Executable | Found::Unknown => return Ok(()),
            Found::NotExecutable => not_executable = true,
            Found::Missing => {}
        }
    }
    if not_executable {
        Err(Error::CommandNotExecutable {
            command: command.clone(),
        })
    } else {
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finds_commands_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::write(root.join("bin/tool"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(root.join("bin/data"), b"x").expect("write");
        // An absolute symlink resolves inside the root, not on the host.
        std::os::unix::fs::symlink("/bin/tool", root.join("bin/link")).expect("symlink");
        let env = ["PATH=/bin".to_owned()];
        let run = |cmd: &str| check(root, &[cmd.to_owned()], &env, "/", &[]);
        assert!(run("tool").is_ok());
        assert!(run("link").is_ok());
        assert!(run("/bin/tool").is_ok());
        assert_eq!(run("nope").err().and_then(|e| e.exit_code()), Some(127));
        assert_eq!(run("data").err().and_then(|e| e.exit_code()), Some(126));
        assert_eq!(run("/bin").err().and_then(|e| e.exit_code()), Some(126));
        let mounted = [PathBuf::from("/opt")];
        assert!(check(root, &["/opt/x".into()], &env, "/", &mounted).is_ok());
    }
}
