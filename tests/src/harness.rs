//! Starting berth for a test: real binaries under a fresh temp root and state dir, driven with
//! `berthctl system up/down`, and a leak check when the instance stops.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// How the services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One berthd process hosts every service.
    AllInOne,
    /// One berth-<service> process per service.
    Separate,
}

/// The five services, as berthctl names them.
pub const SERVICES: [&str; 5] = ["snapshots", "images", "network", "tasks", "cri"];

/// Directory holding the workspace's binaries (berthctl, berthd, berth-<service>): `BERTH_BIN_DIR`,
/// else the cargo target directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Options for [`Berth::start_with`].
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Contents of a config file passed with `--config`.
    pub config: Option<String>,
    /// Extra environment for the started services.
    pub env: Vec<(String, String)>,
}

/// A running berth under a temp directory; stopped (and checked for leaks) by [`Berth::stop`],
/// killed by `Drop` if a test fails first.
pub struct Berth {
    dir: Option<tempfile::TempDir>,
    mode: Mode,
    stopped: bool,
}

impl Berth {
    /// Starts every service in `mode` with default options.
    pub fn start(mode: Mode) -> anyhow::Result<Berth> {
        Berth::start_with(mode, Options::default())
    }

    /// Starts every service in `mode` and waits until all are healthy.
    pub fn start_with(mode: Mode, options: Options) -> anyhow::Result<Berth> {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
        let berth = Berth {
            dir: Some(dir),
            mode,
            stopped: false,
        };
        if let Some(text) = &options.config {
            std::fs::write(berth.config_path(), text)?;
        }
        let out = berth.up(&options)?;
        ensure!(
            out.status.success(),
            "berthctl system up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(berth)
    }

    /// Runs `berthctl system up` again (starting whatever is not running).
    pub fn up(&self, options: &Options) -> anyhow::Result<Output> {
        let mut cmd = self.ctl();
        cmd.args(["system", "up", "--root"]).arg(self.root());
        if self.mode == Mode::Separate {
            cmd.arg("--separate");
        }
        if options.config.is_some() {
            cmd.arg("--config").arg(self.config_path());
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd.output()?)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("berth directory").path()
    }

    /// The persistent root directory.
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// The state directory with the sockets.
    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Where the config file given in [`Options::config`] is written.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// The socket of a service.
    pub fn socket(&self, service: &str) -> PathBuf {
        self.state().join(format!("{service}.sock"))
    }

    /// A `berthctl` command aimed at this instance.
    pub fn ctl(&self) -> Command {
        let mut cmd = Command::new(bin("berthctl"));
        cmd.arg("--state-dir").arg(self.state());
        cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        cmd
    }

    /// Runs berthctl with `args` and returns its output (whatever the exit status).
    pub fn run_ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.ctl().args(args).output()?)
    }

    /// Runs berthctl with `args`, which must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run_ctl(args)?;
        ensure!(
            out.status.success(),
            "berthctl {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pid of `service` (as [`Berth::pids`] names it).
    pub fn service_pid(&self, service: &str) -> anyhow::Result<u32> {
        self.pids()?
            .into_iter()
            .find(|(s, _)| s == service)
            .and_then(|(_, p)| p)
            .with_context(|| format!("{service} pid"))
    }

    /// `berthctl -o json info`, parsed; the exit status is returned beside it.
    pub fn info(&self) -> anyhow::Result<(bool, Vec<serde_json::Value>)> {
        let out = self.run_ctl(&["-o", "json", "info"])?;
        let parsed = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("info output: {}", String::from_utf8_lossy(&out.stdout)))?;
        Ok((out.status.success(), parsed))
    }

    /// The pid serving each service, from `info`.
    pub fn pids(&self) -> anyhow::Result<Vec<(String, Option<u32>)>> {
        let (_, statuses) = self.info()?;
        Ok(statuses
            .iter()
            .map(|s| {
                let name = s["service"].as_str().unwrap_or_default().to_owned();
                (name, s["pid"].as_u64().map(|p| p as u32))
            })
            .collect())
    }

    /// Stops berth with `berthctl system down` and checks that nothing was left behind.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        let out = self.run_ctl(&["system", "down"])?;
        ensure!(
            out.status.success(),
            "berthctl system down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.check_no_leaks()
    }

    /// No process, mount or socket of this instance remains.
    pub fn check_no_leaks(&self) -> anyhow::Result<()> {
        let dir = self.dir().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = processes_mentioning(&dir);
            if procs.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("processes left running: {procs:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mounts = mounts_under(&dir)?;
        ensure!(
            mounts.is_empty(),
            "mounts left under {}: {mounts:?}",
            dir.display()
        );
        let sockets = sockets_under(&dir)?;
        ensure!(sockets.is_empty(), "sockets left: {sockets:?}");
        Ok(())
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if !self.stopped
            && let Some(dir) = &self.dir
        {
            for pid in processes_mentioning(dir.path()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The stdout of a berthctl command that must succeed.
///
/// # Panics
/// If the command failed (the message carries its stdout and stderr).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "berthctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one-line error of a berthctl command that must fail (and not panic).
///
/// # Panics
/// If the command succeeded, panicked, or printed more than one line on stderr.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(out.status.code(), Some(101), "must not panic");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// Runs berthctl with `args` against `berth`; it must succeed. Returns its stdout.
pub fn ctl(berth: &Berth, args: &[&str]) -> String {
    ok(berth.run_ctl(args).expect("running berthctl"))
}

/// A random number (mixed with the pid), for names a test must not share with another.
pub fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u32::from_ne_bytes(b) ^ std::process::id()
}

/// Waits until `pid` has exited: gone, or a zombie whose threads are all gone. The leader of a
/// killed multi-threaded process turns zombie before its other threads have closed the files
/// they share (a database lock among them), so a restart must wait for every thread.
pub fn wait_exited(pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let exited = || {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count());
        match (zombie, threads) {
            (Ok(zombie), Ok(threads)) => zombie && threads <= 1,
            _ => true,
        }
    };
    while !exited() {
        ensure!(
            Instant::now() < deadline,
            "pid {pid} did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Pids of processes whose command line mentions `path` (the instance's temp directory).
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
            !zombie && cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = dir.to_string_lossy().into_owned();
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first (best effort: for
/// cleanup).
pub fn unmount_under(dir: &Path) {
    let mounts = mounts_under(dir).unwrap_or_default();
    for m in mounts.iter().rev() {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Unix sockets at or below `dir`.
pub fn sockets_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_socket() {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}
