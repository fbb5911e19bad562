//! `berth-tasks`: the tasks service as its own process.

use std::process::ExitCode;

use clap::Parser;

/// berth tasks service: container metadata and task lifecycle through per-container shims, logs, exec, events.
#[derive(Parser)]
#[command(name = "berth-tasks", version)]
struct Args {
    #[command(flatten)]
    config: berth_api::config::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_api::daemon::main("berth-tasks", &args.config, |config| {
        Ok(vec![berth_tasks::hosted(config)?])
    })
}
