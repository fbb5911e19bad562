//! What the init and every exec do last before execve: limits, working directory, user and
//! groups, capabilities, no_new_privs, seccomp, and the program lookup in the container's
//! PATH. Runs in the child, after it is inside the container's namespaces and root.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::caps::Sets;
use crate::error::{Error, Result};
use crate::seccomp::Program;
use crate::spec::{Process, rlimit_resource};

/// A process ready to be executed: everything allocated before the final steps.
pub struct Prepared {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    caps: Sets,
    seccomp: Option<Program>,
    no_new_privs: bool,
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| Error::InvalidSpec {
                field: what.into(),
                reason: format!("{s:?} contains a NUL byte"),
            })
        })
        .collect()
}

/// The home directory of `uid` in the container's /etc/passwd, "/" without an entry.
fn home(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 5 && f[2].parse() == Ok(uid)).then(|| f[5].to_owned())
        })
        .unwrap_or_else(|| "/".to_owned())
}

/// Finds `arg0` in `path_var` (as seen from the current root).
pub fn lookup(arg0: &str, path_var: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return executable(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(arg0))
        .find(|p| executable(p))
}

/// Applies limits, cwd, no_new_privs and (without no_new_privs) seccomp, switches user and
/// capabilities; returns what is left for [`Prepared::exec`].
pub fn setup(process: &Process, seccomp: Option<Program>) -> Result<Prepared> {
    for r in &process.rlimits {
        let Some(res) = rlimit_resource(&r.kind) else {
            continue;
        };
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: a valid resource constant and a pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(Error::sys(format!("setrlimit {}", r.kind))(
                nix::errno::Errno::last(),
            ));
        }
    }
    nix::unistd::chdir(process.cwd.as_str())
        .map_err(|e| Error::Init(format!("cwd {}: {}", process.cwd, e.desc())))?;
    let arg0 = &process.args[0];
    let path = lookup(arg0, process.path_var()).ok_or_else(|| {
        Error::Init(format!(
            "executable {arg0:?} not found in $PATH ({})",
            process.path_var()
        ))
    })?;
    let mut env = process.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home(process.user.uid)));
    }
    let mut caps = Sets::from_spec(process.capabilities.as_ref());
    caps.limit_to_own();
    let prepared = Prepared {
        path: crate::mounts::cpath(&path)?,
        args: cstrings(&process.args, "process.args")?,
        env: cstrings(&env, "process.env")?,
        caps,
        seccomp,
        no_new_privs: process.no_new_privileges,
    };
    if prepared.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::sys("no_new_privs")(nix::errno::Errno::last()));
        }
    } else if let Some(p) = &prepared.seccomp {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
        crate::seccomp::install(p).map_err(Error::sys("seccomp"))?;
    }
    prepared.caps.apply_bounding()?;
    let u = &process.user;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    crate::sys::setgroups(&u.additional_gids).map_err(Error::sys("setgroups"))?;
    nix::unistd::setresgid(u.gid.into(), u.gid.into(), u.gid.into())
        .map_err(Error::sys(format!("setgid {}", u.gid)))?;
    nix::unistd::setresuid(u.uid.into(), u.uid.into(), u.uid.into())
        .map_err(Error::sys(format!("setuid {}", u.uid)))?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    prepared.caps.apply_sets()?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        u.umask.unwrap_or(0o022),
    ));
    Ok(prepared)
}

impl Prepared {
    /// Installs seccomp (with no_new_privs), marks every inherited descriptor above stdio
    /// close-on-exec and executes the process. Returns only on failure.
    pub fn exec(self) -> Error {
        if self.no_new_privs
            && let Some(p) = &self.seccomp
            && let Err(e) = crate::seccomp::install(p)
        {
            return Error::sys("seccomp")(e);
        }
        if let Err(e) = crate::sys::cloexec_from(3) {
            return Error::sys("close_range")(e);
        }
        let e = crate::sys::execve(&self.path, &self.args, &self.env);
        Error::Init(format!("exec {:?}: {}", self.path, e.desc()))
    }
}
