//! `berthctl login`, `logout` and `search`: registry credentials (checked and stored by the
//! images service, in its credentials file) and catalog search.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use berth_api::Service;
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;

use crate::content::rpc;
use crate::context::{Context, Output};
use crate::output;

/// Docker Hub, the registry of `login` and `logout` without a server.
const DEFAULT_REGISTRY: &str = "docker.io";

#[derive(clap::Args)]
pub struct LoginArgs {
    /// Registry, `host[:port]`; default: Docker Hub.
    server: Option<String>,
    /// User name.
    #[arg(long, short = 'u')]
    username: String,
    /// Password.
    #[arg(
        long,
        short = 'p',
        env = "BERTH_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    /// Talk plain HTTP (loopback registries and those in `[images] insecure_registries` only).
    #[arg(long)]
    plain_http: bool,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// Registry, `host[:port]`; default: Docker Hub.
    server: Option<String>,
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Registry, `host[:port]`, whose catalog is searched.
    registry: String,
    /// Text the repository name must contain; none lists every repository.
    term: Option<String>,
    /// Maximum number of results.
    #[arg(long, default_value_t = 25)]
    limit: u32,
    #[command(flatten)]
    access: RegistryArgs,
}

/// How to reach a registry: credentials and plain HTTP (flags of pull, push and search).
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// User name for the registry (default: the credentials stored by `berthctl login`).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Password for the registry (with --user).
    #[arg(long, env = "BERTH_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Talk plain HTTP to the registry (loopback registries and those in the service's
    /// `[images] insecure_registries` always do; others refuse it).
    #[arg(long)]
    plain_http: bool,
}

impl RegistryArgs {
    /// The registry options of a request.
    pub fn options(self) -> pb::RegistryOptions {
        pb::RegistryOptions {
            auth: self.user.map(|username| pb::RegistryAuth {
                username,
                password: self.password.unwrap_or_default(),
                ..Default::default()
            }),
            plain_http: self.plain_http,
            skip_tls_verify: false,
        }
    }
}

async fn client(ctx: &Context) -> anyhow::Result<ImagesClient<berth_api::client::Channel>> {
    Ok(ImagesClient::new(ctx.connect(Service::Images).await?))
}

pub async fn login(ctx: &Context, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let password = match (args.password, args.password_stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the password from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => anyhow::bail!("give the password with --password or --password-stdin"),
    };
    let registry = args.server.unwrap_or_else(|| DEFAULT_REGISTRY.into());
    let response = client(ctx)
        .await?
        .login(pb::LoginRequest {
            registry,
            auth: Some(pb::RegistryAuth {
                username: args.username,
                password,
                ..Default::default()
            }),
            plain_http: args.plain_http,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    println!(
        "Login Succeeded (credentials stored in {})",
        response.credentials_file
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(ctx: &Context, args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = args.server.unwrap_or_else(|| DEFAULT_REGISTRY.into());
    client(ctx)
        .await?
        .logout(pb::LogoutRequest {
            registry: registry.clone(),
        })
        .await
        .map_err(rpc)?;
    println!("Removing login credentials for {registry}");
    Ok(ExitCode::SUCCESS)
}

pub async fn search(ctx: &Context, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let found = client(ctx)
        .await?
        .search(pb::SearchRequest {
            registry: args.registry.clone(),
            term: args.term.unwrap_or_default(),
            options: Some(args.access.options()),
            limit: args.limit,
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .repositories;
    let names: Vec<String> = found
        .iter()
        .map(|r| format!("{}/{r}", args.registry))
        .collect();
    match ctx.output {
        Output::Json => println!("{}", output::json(&names)?),
        Output::Table => println!(
            "{}",
            output::table(&["NAME"], names.iter().map(|n| [n.as_str()]))
        ),
    }
    Ok(ExitCode::SUCCESS)
}
