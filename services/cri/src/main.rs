//! `berth-cri`: the cri service as its own process.

use std::process::ExitCode;

use clap::Parser;

/// berth cri service: the Kubernetes CRI v1 facade over the other berth services.
#[derive(Parser)]
#[command(name = "berth-cri", version)]
struct Args {
    #[command(flatten)]
    config: berth_api::config::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_api::daemon::main("berth-cri", &args.config, |config| {
        Ok(vec![berth_cri::hosted(config)?])
    })
}
