//! `berthctl`: the berth command-line client.

mod archive;
mod attach;
mod build;
mod commit;
mod completion;
mod container;
mod content;
mod context;
mod cp;
mod diff;
mod events;
mod exec;
mod export;
mod image;
mod info;
mod logs;
mod network;
mod output;
mod pull;
mod push;
mod quickstart;
mod registry;
mod run;
mod snapshot;
mod stats;
mod system;
mod volume;

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
    /// Create and run a new container from an image.
    Run(run::RunArgs),
    /// Create a new container.
    Create(run::CreateArgs),
    /// Start one or more created or stopped containers.
    Start(run::StartArgs),
    /// Stop one or more running containers.
    Stop(container::StopArgs),
    /// Restart one or more containers.
    Restart(container::StopArgs),
    /// Kill one or more running containers.
    Kill(container::KillArgs),
    /// Remove one or more containers.
    Rm(container::RmArgs),
    /// List containers.
    Ps(container::PsArgs),
    /// Fetch the logs of a container.
    Logs(logs::LogsArgs),
    /// Show containers in detail (JSON, Docker's fields).
    Inspect {
        /// Print only this field, e.g. `{{.State.ExitCode}}`.
        #[arg(long, short = 'f')]
        format: Option<String>,
        /// Containers (names, ids or id prefixes).
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Execute a command in a running container.
    Exec(exec::ExecArgs),
    /// Block until containers stop, then print their exit codes.
    Wait(container::ManyArgs),
    /// Attach this terminal to a running container's stdio.
    Attach(attach::AttachArgs),
    /// Pause all processes within containers.
    Pause(container::ManyArgs),
    /// Unpause all processes within containers.
    Unpause(container::ManyArgs),
    /// Display the running processes of a container.
    Top {
        /// Container (name, id or id prefix).
        container: String,
    },
    /// Rename a container.
    Rename {
        /// Container (name, id or id prefix).
        container: String,
        /// New name.
        new_name: String,
    },
    /// Manage containers.
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Bring berth up, build the demo image from the host's busybox-static, run a container.
    Quickstart(quickstart::QuickstartArgs),
    /// Change the limits or restart policy of containers (running ones at once).
    Update(container::UpdateArgs),
    /// Display a live stream of containers' resource usage.
    Stats(stats::StatsArgs),
    /// Show the events of every service as they happen.
    Events(events::EventsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
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
    Rmi(image::RmArgs),
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Load images from a tar archive (OCI layout or docker-archive) or an OCI layout directory.
    Load(archive::LoadArgs),
    /// Save images to a tar archive (OCI layout or docker-archive).
    Save(archive::SaveArgs),
    /// Create an image from a rootfs tarball, like `docker import`.
    Import(archive::ImportArgs),
    /// Fetch an image from a registry.
    Pull(pull::PullArgs),
    /// Upload an image to a registry.
    Push(push::PushArgs),
    /// Check and store credentials for a registry.
    Login(registry::LoginArgs),
    /// Forget the stored credentials of a registry.
    Logout(registry::LogoutArgs),
    /// Search a registry's catalog for repositories.
    Search(registry::SearchArgs),
    /// The content store (low level).
    #[command(subcommand)]
    Content(content::ContentCommand),
    /// Build an image from a Dockerfile.
    Build(build::BuildArgs),
    /// Manage the build cache.
    #[command(subcommand)]
    Builder(build::BuilderCommand),
    /// Show a container's changes to its image (A added, C changed, D deleted).
    Diff(diff::DiffArgs),
    /// Write a container's filesystem as a tar archive.
    Export(export::ExportArgs),
    /// Copy files between a container and the local filesystem.
    Cp(cp::CpArgs),
    /// Create a new image from a container's changes.
    Commit(commit::CommitArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Version => "version",
            Command::Info => "info",
            Command::Run(_) => "run",
            Command::Create(_) => "create",
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Restart(_) => "restart",
            Command::Kill(_) => "kill",
            Command::Rm(_) => "rm",
            Command::Ps(_) => "ps",
            Command::Logs(_) => "logs",
            Command::Inspect { .. } => "inspect",
            Command::Exec(_) => "exec",
            Command::Wait(_) => "wait",
            Command::Attach(_) => "attach",
            Command::Pause(_) => "pause",
            Command::Unpause(_) => "unpause",
            Command::Top { .. } => "top",
            Command::Rename { .. } => "rename",
            Command::Container(cmd) => cmd.name(),
            Command::Volume(cmd) => cmd.name(),
            Command::Stats(_) => "stats",
            Command::Update(_) => "update",
            Command::Quickstart(_) => "quickstart",
            Command::Events(_) => "events",
            Command::Completion(_) => "completion",
            Command::System(cmd) => cmd.name(),
            Command::Snapshot(args) => args.name(),
            Command::Network(cmd) => cmd.name(),
            Command::Port(_) => "port",
            Command::Images(_) => "images",
            Command::Image(cmd) => cmd.name(),
            Command::Rmi(_) => "rmi",
            Command::Tag { .. } => "tag",
            Command::Load(_) => "load",
            Command::Save(_) => "save",
            Command::Import(_) => "import",
            Command::Pull(_) => "pull",
            Command::Push(_) => "push",
            Command::Login(_) => "login",
            Command::Logout(_) => "logout",
            Command::Search(_) => "search",
            Command::Content(cmd) => cmd.name(),
            Command::Build(_) => "build",
            Command::Builder(cmd) => cmd.name(),
            Command::Diff(_) => "diff",
            Command::Export(_) => "export",
            Command::Cp(_) => "cp",
            Command::Commit(_) => "commit",
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
                Command::Run(args) => Ok(run::run(&ctx, args).await),
                Command::Create(args) => Ok(run::create_cmd(&ctx, args).await),
                Command::Start(args) => Ok(run::start(&ctx, args).await),
                Command::Stop(args) => container::stop(&ctx, args).await,
                Command::Restart(args) => container::restart(&ctx, args).await,
                Command::Kill(args) => container::kill(&ctx, args).await,
                Command::Rm(args) => container::rm(&ctx, args).await,
                Command::Ps(args) => container::ps(&ctx, args).await,
                Command::Logs(args) => logs::logs(&ctx, args).await,
                Command::Inspect { format, containers } => {
                    container::inspect(&ctx, containers, format).await
                }
                Command::Exec(args) => Ok(exec::exec(&ctx, args).await),
                Command::Wait(args) => container::wait(&ctx, args).await,
                Command::Attach(args) => Ok(attach::attach(&ctx, args).await),
                Command::Pause(args) => container::pause(&ctx, args, true).await,
                Command::Unpause(args) => container::pause(&ctx, args, false).await,
                Command::Top { container } => container::top(&ctx, container).await,
                Command::Rename {
                    container,
                    new_name,
                } => container::rename(&ctx, container, new_name).await,
                Command::Container(cmd) => container::container_cmd(&ctx, cmd).await,
                Command::Volume(cmd) => volume::run(&ctx, cmd).await,
                Command::Stats(args) => stats::stats(&ctx, args).await,
                Command::Update(args) => container::update(&ctx, args).await,
                Command::Quickstart(args) => quickstart::quickstart(&ctx, args).await,
                Command::Events(args) => events::events(&ctx, args).await,
                Command::Completion(args) => {
                    completion::print(args, &mut <Cli as clap::CommandFactory>::command())
                }
                Command::System(cmd) => system::run(&ctx, cmd).await,
                Command::Snapshot(args) => snapshot::run(&ctx, args).await,
                Command::Network(cmd) => network::run(&ctx, cmd).await,
                Command::Port(args) => network::port(&ctx, args).await,
                Command::Images(args) => image::run(&ctx, image::ImageCommand::Images(args)).await,
                Command::Image(cmd) => image::run(&ctx, cmd).await,
                Command::Rmi(args) => image::run(&ctx, image::ImageCommand::Rm(args)).await,
                Command::Tag { source, target } => image::tag(&ctx, source, target).await,
                Command::Load(args) => archive::load(&ctx, args).await,
                Command::Save(args) => archive::save(&ctx, args).await,
                Command::Import(args) => archive::import(&ctx, args).await,
                Command::Pull(args) => pull::run(&ctx, args).await,
                Command::Push(args) => push::run(&ctx, args).await,
                Command::Login(args) => registry::login(&ctx, args).await,
                Command::Logout(args) => registry::logout(&ctx, args).await,
                Command::Search(args) => registry::search(&ctx, args).await,
                Command::Content(cmd) => content::run(&ctx, cmd).await,
                Command::Build(args) => build::build(&ctx, args).await,
                Command::Builder(cmd) => build::builder(&ctx, cmd).await,
                Command::Diff(args) => diff::diff(&ctx, args).await,
                Command::Export(args) => export::export(&ctx, args).await,
                Command::Cp(args) => cp::cp(&ctx, args).await,
                Command::Commit(args) => commit::commit(&ctx, args).await,
            }
        }
        .instrument(span),
    );
    drop(runtime);
    telemetry.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn every_subcommand_has_consistent_flags() {
        Cli::command().debug_assert();
    }
}
