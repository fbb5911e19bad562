//! What every command needs: where the services listen, the namespace, the output format.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use berth_api::Service;
use berth_api::client::{self, Channel};

/// Flags that apply to every command.
#[derive(clap::Args)]
pub struct GlobalArgs {
    /// Namespace of the objects to act on.
    #[arg(long, short = 'n', global = true, env = "BERTH_NAMESPACE", default_value = berth_api::namespace::DEFAULT)]
    pub namespace: String,
    /// State directory where the services' sockets are.
    #[arg(long, global = true, env = "BERTH_STATE", default_value = berth_api::config::DEFAULT_STATE)]
    pub state_dir: PathBuf,
    /// Socket of one service, overriding the state directory (repeatable), e.g. images=/tmp/i.sock.
    #[arg(long, global = true, value_name = "SERVICE=PATH", value_parser = parse_address)]
    pub address: Vec<(Service, PathBuf)>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// OTLP/gRPC endpoint to export this command's trace to.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
    /// Log filter for berthctl's own diagnostics.
    #[arg(long, global = true, env = "BERTH_LOG", default_value = "warn")]
    pub log_level: String,
}

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

fn parse_address(s: &str) -> Result<(Service, PathBuf), String> {
    let (service, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SERVICE=PATH"))?;
    Ok((service.parse()?, PathBuf::from(path)))
}

/// Resolved global settings.
pub struct Context {
    pub namespace: String,
    pub state_dir: PathBuf,
    pub output: Output,
    addresses: BTreeMap<Service, PathBuf>,
}

impl Context {
    pub fn new(args: GlobalArgs) -> anyhow::Result<Context> {
        berth_api::namespace::validate(&args.namespace).map_err(anyhow::Error::msg)?;
        Ok(Context {
            namespace: args.namespace,
            state_dir: args.state_dir,
            output: args.output,
            addresses: args.address.into_iter().collect(),
        })
    }

    /// The same settings with another state directory.
    pub fn with_state_dir(&self, state_dir: PathBuf) -> Context {
        Context {
            namespace: self.namespace.clone(),
            state_dir,
            output: self.output,
            addresses: self.addresses.clone(),
        }
    }

    /// The socket of `service`.
    pub fn socket(&self, service: Service) -> PathBuf {
        self.addresses
            .get(&service)
            .cloned()
            .unwrap_or_else(|| service.socket(&self.state_dir))
    }

    /// A connection to `service`.
    pub async fn connect(&self, service: Service) -> anyhow::Result<Channel> {
        let socket = self.socket(service);
        client::connect(&socket, &self.namespace)
            .await
            .with_context(|| format!("{service} service is not reachable"))
    }
}
