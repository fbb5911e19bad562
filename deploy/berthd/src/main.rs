//! `berthd`: hosts berth's services in one process, each on its own socket, for small nodes and
//! the quick start. In production each service can run as its own `berth-<service>` unit instead.

use std::process::ExitCode;

use berth_api::Service;
use berth_api::config::{Config, ConfigArgs};
use berth_api::server::Hosted;
use clap::Parser;

/// berth all-in-one daemon.
#[derive(Parser)]
#[command(name = "berthd", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Services to host (comma-separated); all of them by default.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    services: Vec<Service>,
}

fn hosted(service: Service, config: &Config) -> anyhow::Result<Hosted> {
    match service {
        Service::Images => berth_images::hosted(config),
        Service::Snapshots => berth_snapshots::hosted(config),
        Service::Tasks => berth_tasks::hosted(config),
        Service::Network => berth_network::hosted(config),
        Service::Cri => berth_cri::hosted(config),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut services = if args.services.is_empty() {
        Service::ALL.to_vec()
    } else {
        args.services
    };
    services.sort();
    services.dedup();
    berth_api::daemon::main("berthd", &args.config, |config| {
        services.iter().map(|&s| hosted(s, config)).collect()
    })
}
