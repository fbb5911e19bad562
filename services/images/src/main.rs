//! `berth-images`: the images service as its own process.

use std::process::ExitCode;

use clap::Parser;

/// berth images service: content store, image metadata, registry client, import/export and unpack.
#[derive(Parser)]
#[command(name = "berth-images", version)]
struct Args {
    #[command(flatten)]
    config: berth_api::config::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_api::daemon::main("berth-images", &args.config, |config| {
        Ok(vec![berth_images::hosted(config)?])
    })
}
