//! `berthctl pull`: fetch an image from a registry, showing per-blob progress like `docker pull`
//! (bars on a terminal, one line per change of state otherwise).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use berth_api::Service;
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::types::v1::Platform;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;

use crate::content::rpc;
use crate::context::Context;
use crate::registry::RegistryArgs;

#[derive(clap::Args)]
pub struct PullArgs {
    /// Image reference, e.g. `busybox`, `localhost:5000/app:1.0`, `name@sha256:...`.
    reference: String,
    /// Platform to fetch from a multi-platform image, `os/arch[/variant]` (repeatable);
    /// default: this host's.
    #[arg(long)]
    platform: Vec<String>,
    /// Fetch every platform of a multi-platform image.
    #[arg(long)]
    all_platforms: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Only fetch the content; do not unpack the layers into snapshots.
    #[arg(long)]
    no_unpack: bool,
    /// Print only the image name when done.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Parses `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts[..] {
        [os, architecture] | [os, architecture, _]
            if !os.is_empty() && !architecture.is_empty() =>
        {
            Ok(Platform {
                os: os.into(),
                architecture: architecture.into(),
                variant: parts.get(2).map_or(String::new(), |v| v.to_string()),
                os_version: String::new(),
            })
        }
        _ => anyhow::bail!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64"),
    }
}

/// Parses each `os/arch[/variant]` of a repeated `--platform` flag.
pub fn parse_platforms(list: &[String]) -> anyhow::Result<Vec<Platform>> {
    list.iter().map(|p| parse_platform(p)).collect()
}

/// How the progress of a pull or push is shown.
pub enum Display {
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
    Lines {
        last: HashMap<String, i32>,
    },
    Quiet,
}

fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn label(status: pb::ProgressStatus) -> &'static str {
    match status {
        pb::ProgressStatus::Resolving => "Resolving",
        pb::ProgressStatus::Resolved => "Resolved",
        pb::ProgressStatus::Waiting => "Waiting",
        pb::ProgressStatus::Downloading => "Downloading",
        pb::ProgressStatus::Verifying => "Verifying Checksum",
        pb::ProgressStatus::Downloaded => "Download complete",
        pb::ProgressStatus::Exists => "Already exists",
        pb::ProgressStatus::Unpacking => "Extracting",
        pb::ProgressStatus::Unpacked => "Pull complete",
        pb::ProgressStatus::Uploading => "Pushing",
        pb::ProgressStatus::Pushed => "Pushed",
        pb::ProgressStatus::Unspecified => "",
    }
}

impl Display {
    /// Bars on a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn new(quiet: bool) -> Display {
        if quiet {
            Display::Quiet
        } else if std::io::stdout().is_terminal() {
            Display::Bars {
                multi: MultiProgress::new(),
                bars: HashMap::new(),
            }
        } else {
            Display::Lines {
                last: HashMap::new(),
            }
        }
    }

    /// Shows one progress update.
    pub fn show(&mut self, p: &pb::Progress) {
        let status = p.status();
        // Resolving is about the reference; the rest is about blobs.
        if matches!(
            status,
            pb::ProgressStatus::Resolving | pb::ProgressStatus::Resolved
        ) {
            return;
        }
        let id = short(&p.r#ref);
        match self {
            Display::Quiet => {}
            Display::Lines { last } => {
                if last.insert(id.clone(), p.status) != Some(p.status) {
                    println!("{id}: {}", label(status));
                }
            }
            Display::Bars { multi, bars } => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(p.total.max(0) as u64));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix}: {msg:18} [{bar:40}] {bytes}/{total_bytes}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(id);
                    bar
                });
                bar.set_message(label(status));
                bar.set_position(p.offset.max(0) as u64);
                if matches!(
                    status,
                    pb::ProgressStatus::Unpacked
                        | pb::ProgressStatus::Exists
                        | pb::ProgressStatus::Pushed
                ) {
                    bar.finish();
                }
            }
        }
    }
}

pub async fn run(ctx: &Context, args: PullArgs) -> anyhow::Result<ExitCode> {
    let platforms = parse_platforms(&args.platform)?;
    let mut images = ImagesClient::new(ctx.connect(Service::Images).await?);
    let mut stream = images
        .pull(pb::PullRequest {
            reference: args.reference.clone(),
            registry: Some(args.registry.options()),
            platforms,
            all_platforms: args.all_platforms,
            unpack: !args.no_unpack,
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut display = Display::new(args.quiet);
    let mut downloaded = false;
    let mut image = None;
    while let Some(message) = stream.next().await {
        let message = message.map_err(rpc)?;
        for p in &message.progress {
            downloaded |= p.status() == pb::ProgressStatus::Downloaded;
            display.show(p);
        }
        if message.image.is_some() {
            image = message.image;
        }
    }
    let image = image.context("the pull ended without recording an image")?;
    if !args.quiet {
        let digest = image.target.as_ref().map(|t| t.digest.as_str());
        println!("Digest: {}", digest.unwrap_or_default());
        println!(
            "Status: {} {}",
            if downloaded {
                "Downloaded newer image for"
            } else {
                "Image is up to date for"
            },
            image.name
        );
    }
    println!("{}", image.name);
    Ok(ExitCode::SUCCESS)
}
