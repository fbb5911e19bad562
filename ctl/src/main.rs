//! `berthctl`: the berth command-line client.

mod content;
mod context;
mod image;
mod info;
mod network;
mod output;
mod pull;
mod snapshot;
mod system;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::Instrument;

use crate::context::Context;

/// berthctl: run and manage containers with berth.
#[derive(Parser)]
#[command(name = "berthctl", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: context::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the version of berthctl and of every reachable service.
    Version,
    /// Show each service: reachable, healthy, version, root dir, uptime (exit 1 if any is down).
    Info,
    /// Start and stop berth's services.
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Snapshots, low level: ls, info, usage, prepare, view, commit, rm, mounts, mount, diff, tree.
    #[command(alias = "snapshots")]
    Snapshot(snapshot::SnapshotArgs),
    /// Manage networks and attachments.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Show a container's published ports.
    Port(network::PortArgs),
    /// List images.
    Images(image::ImagesArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Remove images.
    Rmi {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Load the images of an OCI image layout directory.
    Load(image::LoadArgs),
    /// Fetch an image from a registry.
    Pull(pull::PullArgs),
    /// The content store (low level).
    #[command(subcommand)]
    Content(content::ContentCommand),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Version => "version",
            Command::Info => "info",
            Command::System(cmd) => cmd.name(),
            Command::Snapshot(args) => args.name(),
            Command::Network(cmd) => cmd.name(),
            Command::Port(_) => "port",
            Command::Images(_) => "images",
            Command::Image(cmd) => cmd.name(),
            Command::Rmi { .. } => "rmi",
            Command::Tag { .. } => "tag",
            Command::Load(_) => "load",
            Command::Pull(_) => "pull",
            Command::Content(cmd) => cmd.name(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berthctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let telemetry = {
        let _guard = runtime.enter();
        berth_api::telemetry::init(
            "berthctl",
            &berth_api::config::LogConfig {
                format: berth_api::config::LogFormat::Pretty,
                level: cli.global.log_level.clone(),
            },
            cli.global.otlp_endpoint.as_deref(),
        )?
    };
    let ctx = Context::new(cli.global)?;
    let span =
        tracing::info_span!("berthctl", otel.name = %format!("berthctl {}", cli.command.name()));
    let result = runtime.block_on(
        async {
            match cli.command {
                Command::Version => info::version(&ctx).await,
                Command::Info => info::info(&ctx).await,
                Command::System(cmd) => system::run(&ctx, cmd).await,
                Command::Snapshot(args) => snapshot::run(&ctx, args).await,
                Command::Network(cmd) => network::run(&ctx, cmd).await,
                Command::Port(args) => network::port(&ctx, args).await,
                Command::Images(args) => image::run(&ctx, image::ImageCommand::Images(args)).await,
                Command::Image(cmd) => image::run(&ctx, cmd).await,
                Command::Rmi { names } => image::run(&ctx, image::ImageCommand::Rm { names }).await,
                Command::Tag { source, target } => image::tag(&ctx, source, target).await,
                Command::Load(args) => image::load(&ctx, args).await,
                Command::Pull(args) => pull::run(&ctx, args).await,
                Command::Content(cmd) => content::run(&ctx, cmd).await,
            }
        }
        .instrument(span),
    );
    drop(runtime);
    telemetry.shutdown();
    result
}
