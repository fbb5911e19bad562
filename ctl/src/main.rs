//! `berthctl`: the berth command-line client.

mod context;
mod info;
mod output;
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
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Version => "version",
            Command::Info => "info",
            Command::System(cmd) => cmd.name(),
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
            }
        }
        .instrument(span),
    );
    drop(runtime);
    telemetry.shutdown();
    result
}
