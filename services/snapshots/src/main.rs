//! `berth-snapshots`: the snapshots service as its own process.

use std::process::ExitCode;

use clap::Parser;

/// berth snapshots service: overlay snapshotter (with a copy fallback) and the layer apply/compare library.
#[derive(Parser)]
#[command(name = "berth-snapshots", version)]
struct Args {
    #[command(flatten)]
    config: berth_api::config::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_api::daemon::main("berth-snapshots", &args.config, |config| {
        Ok(vec![berth_snapshots::hosted(config)?])
    })
}
