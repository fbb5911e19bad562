//! `berthctl system up|down`: start berth's services detached and stop them again.
//!
//! `up` starts only the services whose sockets do not answer, so running it again after one
//! service died brings back that one alone. Started processes get their own session and log to
//! `<state>/logs/<process>.log`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_api::Service;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::context::Context;
use crate::info::{self, Status};

/// How long started services get to become healthy, and stopped ones to exit.
const WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand)]
pub enum SystemCommand {
    /// Start the services that are not running (detached), and wait until they are healthy.
    Up(UpArgs),
    /// Stop every running service cleanly (SIGTERM, then SIGKILL after a timeout).
    Down,
    /// Show the events of every service as they happen.
    Events(crate::events::EventsArgs),
}

impl SystemCommand {
    pub fn name(&self) -> &'static str {
        match self {
            SystemCommand::Up(_) => "system up",
            SystemCommand::Down => "system down",
            SystemCommand::Events(_) => "system events",
        }
    }
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Host every service in one berthd process (the default).
    #[arg(long, conflicts_with = "separate")]
    all_in_one: bool,
    /// Run each service as its own berth-<service> process.
    #[arg(long)]
    separate: bool,
    /// Persistent root directory for the services.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// State directory for the sockets (default: the global --state-dir).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Configuration file passed to the services.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub async fn run(ctx: &Context, cmd: SystemCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SystemCommand::Up(args) => match &args.state {
            Some(state) => up(&ctx.with_state_dir(state.clone()), &args).await,
            None => up(ctx, &args).await,
        },
        SystemCommand::Down => down(ctx).await,
        SystemCommand::Events(args) => crate::events::events(ctx, args).await,
    }
}

async fn up(ctx: &Context, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let missing: Vec<Service> = info::probe_all(ctx)
        .await
        .into_iter()
        .filter(|s| !s.reachable)
        .map(|s| s.service.parse().expect("probe reports known services"))
        .collect();
    if !missing.is_empty() {
        let mut children = Vec::new();
        if args.separate {
            for &service in &missing {
                children.push(spawn(ctx, args, &service.binary(), &[])?);
            }
        } else {
            let list = missing
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(",");
            children.push(spawn(ctx, args, "berthd", &["--services".into(), list])?);
        }
        wait_healthy(ctx, &missing, &mut children).await?;
    }
    let statuses = info::probe_all(ctx).await;
    for s in &statuses {
        let started = if missing.iter().any(|m| m.name() == s.service) {
            "started"
        } else {
            "already running"
        };
        println!(
            "{:<10} {:<16} pid {:<8} {}",
            s.service,
            started,
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.socket
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts `binary` detached (own session, stdio to a log file) with the configuration flags.
fn spawn(ctx: &Context, args: &UpArgs, binary: &str, extra: &[String]) -> anyhow::Result<Spawned> {
    let path = find_binary(binary)?;
    let logs = ctx.state_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot create log directory {}", logs.display()))?;
    let log_path = logs.join(format!("{binary}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let log_start = log.metadata()?.len();
    let mut cmd = Command::new(&path);
    cmd.arg("--state").arg(&ctx.state_dir);
    if let Some(root) = &args.root {
        cmd.arg("--root").arg(root);
    }
    if let Some(config) = &args.config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", path.display()))?;
    Ok(Spawned {
        name: binary.to_owned(),
        child,
        log_path,
        log_start,
    })
}

struct Spawned {
    name: String,
    child: Child,
    log_path: PathBuf,
    log_start: u64,
}

impl Spawned {
    /// What the process wrote to its log since it was started.
    fn output(&self) -> String {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        let start = (self.log_start as usize).min(text.len());
        String::from_utf8_lossy(&text[start..]).trim().to_owned()
    }
}

/// The binary next to berthctl, else one on PATH.
fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| p.is_file());
    if let Some(path) = beside {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("cannot find {name} next to berthctl or on PATH"))
}

async fn wait_healthy(
    ctx: &Context,
    services: &[Service],
    children: &mut [Spawned],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        for spawned in children.iter_mut() {
            if let Some(status) = spawned.child.try_wait()? {
                let output = spawned.output();
                let last = output.lines().last().unwrap_or("no output");
                bail!(
                    "{} exited ({status}) before it was ready: {last}",
                    spawned.name
                );
            }
        }
        let pending: Vec<Status> =
            futures::future::join_all(services.iter().map(|&s| info::probe(ctx, s)))
                .await
                .into_iter()
                .filter(|s| !s.healthy())
                .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<_> = pending
                .iter()
                .map(|s: &Status| s.service.as_str())
                .collect();
            bail!(
                "{} not healthy after {WAIT:?}; see the logs in {}",
                names.join(", "),
                ctx.state_dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn down(ctx: &Context) -> anyhow::Result<ExitCode> {
    let statuses = info::probe_all(ctx).await;
    let mut pids: Vec<(u32, Vec<String>)> = Vec::new();
    for s in statuses.iter().filter(|s| s.reachable) {
        let Some(pid) = s.pid else { continue };
        match pids.iter_mut().find(|(p, _)| *p == pid) {
            Some((_, names)) => names.push(s.service.clone()),
            None => pids.push((pid, vec![s.service.clone()])),
        }
    }
    if pids.is_empty() {
        println!(
            "no berth service is running under {}",
            ctx.state_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (pid, _) in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + WAIT;
    for (pid, names) in &pids {
        let pid = Pid::from_raw(*pid as i32);
        let mut how = "stopped";
        while alive(pid) {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                how = "killed (did not stop in time)";
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("{how} {} (pid {pid})", names.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a process exists (and is not a zombie waiting for its parent).
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"));
    // The state field follows the parenthesised command name.
    !matches!(stat, Ok(s) if s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}
