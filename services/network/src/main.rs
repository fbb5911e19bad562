//! `berth-network`: the network service as its own process.

use std::process::ExitCode;

use clap::Parser;

/// berth network service: bridge networks, IPAM, netns, veth, published ports, DNS and CNI mode.
#[derive(Parser)]
#[command(name = "berth-network", version)]
struct Args {
    #[command(flatten)]
    config: berth_api::config::ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_api::daemon::main("berth-network", &args.config, |config| {
        Ok(vec![berth_network::hosted(config)?])
    })
}
