//! `berthctl build` (a Dockerfile build through the berth services, see `berth_build::exec`)
//! and `berthctl builder prune` (drop the build cache).
//!
//! Progress goes to stderr: one line per step (`[2/7] RUN make`), `CACHED` or the duration
//! when it ends, RUN output indented (`--progress plain`), or a spinner per step with the
//! output printed above (`tty`, the default on a terminal). The image id goes to stdout; `-q`
//! prints nothing else. A failing RUN ends berthctl with its exit code.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_build::clients::Clients;
use berth_build::context::{BuildContext, DockerfileSource};
use berth_build::exec::{self, BuildOptions, NetworkMode};
use berth_build::progress::{Event, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::context::Context;

/// `berthctl build` arguments.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (`name:tag`) for the image; repeatable.
    #[arg(long, short = 't')]
    tag: Vec<String>,
    /// The Dockerfile (default: `PATH/Dockerfile`).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Build-time variable `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long)]
    build_arg: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Always pull base images.
    #[arg(long)]
    pull: bool,
    /// Label `KEY=VALUE` for the image; repeatable.
    #[arg(long)]
    label: Vec<String>,
    /// Platform to build for (only the host's, linux/amd64 here, is possible).
    #[arg(long)]
    platform: Option<String>,
    /// Network of RUN steps: none (default), host or bridge.
    #[arg(long, default_value = "none")]
    network: String,
    /// Progress output: auto, plain or tty.
    #[arg(long, default_value = "auto")]
    progress: String,
    /// Print only the image id.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Context: a directory, or `-` for a tar on stdin.
    path: String,
}

/// `berthctl builder` subcommands.
#[derive(clap::Subcommand)]
pub enum BuilderCommand {
    /// Remove the build cache.
    Prune {
        /// Do not prompt for confirmation (the cache is removed without asking anyway).
        #[arg(long, short = 'f')]
        force: bool,
    },
}

impl BuilderCommand {
    pub fn name(&self) -> &'static str {
        match self {
            BuilderCommand::Prune { .. } => "builder prune",
        }
    }
}

fn key_values(
    flag: &str,
    values: &[String],
    env: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for v in values {
        match v.split_once('=') {
            Some(("", _)) => bail!("invalid {flag} {v:?}: empty name"),
            Some((k, val)) => {
                out.insert(k.to_owned(), val.to_owned());
            }
            None if env => {
                if let Ok(val) = std::env::var(v) {
                    out.insert(v.clone(), val);
                }
            }
            None => {
                out.insert(v.clone(), String::new());
            }
        }
    }
    Ok(out)
}

/// Plain progress lines.
struct Plain {
    /// Partial output lines per step.
    partial: Mutex<HashMap<usize, Vec<u8>>>,
}

fn step_line(stage: &Option<String>, index: usize, total: usize, text: &str) -> String {
    match stage {
        Some(s) => format!("[{s} {index}/{total}] {text}"),
        None => format!("[{index}/{total}] {text}"),
    }
}

fn output_lines(partial: &mut Vec<u8>, data: &[u8], last: bool) -> Vec<String> {
    partial.extend_from_slice(data);
    let mut lines = Vec::new();
    while let Some(i) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=i).collect();
        lines.push(format!(
            "    {}",
            String::from_utf8_lossy(&line[..line.len() - 1])
        ));
    }
    if last && !partial.is_empty() {
        lines.push(format!("    {}", String::from_utf8_lossy(partial)));
        partial.clear();
    }
    lines
}

impl Progress for Plain {
    fn event(&self, event: Event) {
        let mut err = std::io::stderr().lock();
        match event {
            Event::Step {
                id,
                stage,
                index,
                total,
                text,
            } => {
                let line = step_line(&stage, index, total, &text);
                let _ = writeln!(err, "#{id} {line}");
            }
            Event::Cached { id } => {
                let _ = writeln!(err, "#{id} CACHED");
            }
            Event::Output { id, data } => {
                let mut partial = self.partial.lock().expect("not poisoned");
                for l in output_lines(partial.entry(id).or_default(), &data, false) {
                    let _ = writeln!(err, "{l}");
                }
            }
            Event::Done { id, elapsed } => {
                if let Some(mut rest) = self.partial.lock().expect("not poisoned").remove(&id) {
                    for l in output_lines(&mut rest, b"", true) {
                        let _ = writeln!(err, "{l}");
                    }
                }
                let _ = writeln!(err, "#{id} DONE {:.1}s", elapsed.as_secs_f64());
            }
            Event::Note(n) => {
                let _ = writeln!(err, "{n}");
            }
        }
    }
}

/// Spinners on a terminal.
struct Tty {
    bars: MultiProgress,
    steps: Mutex<HashMap<usize, (ProgressBar, String)>>,
    partial: Mutex<HashMap<usize, Vec<u8>>>,
}

impl Progress for Tty {
    fn event(&self, event: Event) {
        match event {
            Event::Step {
                id,
                stage,
                index,
                total,
                text,
            } => {
                let line = step_line(&stage, index, total, &text);
                let bar = self.bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(line.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.steps
                    .lock()
                    .expect("not poisoned")
                    .insert(id, (bar, line));
            }
            Event::Cached { id } => {
                if let Some((bar, line)) = self.steps.lock().expect("not poisoned").remove(&id) {
                    bar.set_style(
                        ProgressStyle::with_template("  {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(format!("{line} CACHED"));
                }
            }
            Event::Output { id, data } => {
                let mut partial = self.partial.lock().expect("not poisoned");
                for l in output_lines(partial.entry(id).or_default(), &data, false) {
                    let _ = self.bars.println(l);
                }
            }
            Event::Done { id, elapsed } => {
                if let Some(mut rest) = self.partial.lock().expect("not poisoned").remove(&id) {
                    for l in output_lines(&mut rest, b"", true) {
                        let _ = self.bars.println(l);
                    }
                }
                if let Some((bar, line)) = self.steps.lock().expect("not poisoned").remove(&id) {
                    bar.set_style(
                        ProgressStyle::with_template("  {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.finish_with_message(format!("{line} {:.1}s", elapsed.as_secs_f64()));
                }
            }
            Event::Note(n) => {
                let _ = self.bars.println(n);
            }
        }
    }
}

struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}

/// `berthctl build`.
pub async fn build(ctx: &Context, args: BuildArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.platform {
        exec::check_platform(p)?;
    }
    let network = match args.network.as_str() {
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        "bridge" | "default" => NetworkMode::Bridge,
        other => bail!("invalid --network {other:?}: expected none, host or bridge"),
    };
    let progress: Box<dyn Progress> = if args.quiet {
        Box::new(Quiet)
    } else {
        match args.progress.as_str() {
            "plain" => Box::new(plain()),
            "tty" => Box::new(tty()),
            "auto" if std::io::stderr().is_terminal() => Box::new(tty()),
            "auto" => Box::new(plain()),
            other => bail!("invalid --progress {other:?}: expected auto, plain or tty"),
        }
    };
    let build_args = key_values("--build-arg", &args.build_arg, true)?;
    let labels = key_values("--label", &args.label, false)?;
    let scratch = tempfile::Builder::new()
        .prefix("berth-build-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let context = if args.path == "-" {
        let stdin = std::io::stdin();
        BuildContext::from_tar(stdin.lock(), scratch.path())?
    } else {
        BuildContext::from_dir(std::path::Path::new(&args.path))?
    };
    let dockerfile = match &args.file {
        None => DockerfileSource::Default,
        Some(f) if f.as_os_str() == "-" => {
            bail!("-f - (a Dockerfile on stdin) is not supported: pass a path")
        }
        Some(f) => DockerfileSource::Path(f.clone()),
    };
    let opts = BuildOptions {
        dockerfile,
        tags: args.tag.clone(),
        build_args,
        target: args.target.clone(),
        no_cache: args.no_cache,
        pull: args.pull,
        labels,
        network,
        scratch: scratch.path().to_owned(),
    };
    let clients = Clients::connect(|s| ctx.socket(s), &ctx.namespace).await?;
    let cancel = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match exec::build(clients, &context, &opts, progress.as_ref(), cancel).await {
        Ok(built) => {
            drop(progress);
            if !args.quiet {
                for t in &built.tags {
                    eprintln!("naming to {t}");
                }
            }
            println!("{}", built.id);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            drop(progress);
            eprintln!("berthctl: error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn plain() -> Plain {
    Plain {
        partial: Mutex::default(),
    }
}

fn tty() -> Tty {
    Tty {
        bars: MultiProgress::new(),
        steps: Mutex::default(),
        partial: Mutex::default(),
    }
}

/// `berthctl builder ...`.
pub async fn builder(ctx: &Context, cmd: BuilderCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BuilderCommand::Prune { force: _ } => {
            let mut clients = Clients::connect(|s| ctx.socket(s), &ctx.namespace).await?;
            let removed = exec::prune(&mut clients).await?;
            println!("Deleted build cache records: {removed}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
