//! `berthctl info` and `berthctl version`: ask every service who it is and whether it is healthy.

use std::process::ExitCode;
use std::time::Duration;

use berth_api::Service;
use berth_api::berth::version::v1::{VersionRequest, version_client::VersionClient};
use serde::Serialize;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::context::{Context, Output};
use crate::output;

/// How long one service may take to answer before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one service says about itself.
#[derive(Debug, Serialize)]
pub struct Status {
    pub service: String,
    pub socket: String,
    pub reachable: bool,
    pub health: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    /// Reachable and reporting SERVING.
    pub fn healthy(&self) -> bool {
        self.reachable && self.health == "serving"
    }
}

/// Asks `service` for its health and version; never fails, an unreachable service says why.
pub async fn probe(ctx: &Context, service: Service) -> Status {
    let socket = ctx.socket(service);
    let mut status = Status {
        service: service.name().to_owned(),
        socket: socket.display().to_string(),
        reachable: false,
        health: "unreachable".into(),
        version: None,
        revision: None,
        pid: None,
        root: None,
        uptime_seconds: None,
        error: None,
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let channel = ctx.connect(service).await?;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        let version = VersionClient::new(channel)
            .version(VersionRequest {})
            .await?
            .into_inner();
        anyhow::Ok((health, version))
    })
    .await;
    match answer {
        Err(_) => status.error = Some(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(e)) => status.error = Some(format!("{e:#}")),
        Ok(Ok((health, version))) => {
            status.reachable = true;
            status.health = match health.status() {
                ServingStatus::Serving => "serving",
                ServingStatus::NotServing => "not serving",
                _ => "unknown",
            }
            .into();
            status.version = Some(version.version);
            status.revision = Some(version.revision);
            status.pid = Some(version.pid);
            status.root = Some(version.root);
            status.uptime_seconds = Some(version.uptime_seconds);
        }
    }
    status
}

/// Probes every service concurrently.
pub async fn probe_all(ctx: &Context) -> Vec<Status> {
    futures::future::join_all(Service::ALL.map(|s| probe(ctx, s))).await
}

/// `berthctl info`: one row per service; exit status 1 when any service is not healthy.
pub async fn info(ctx: &Context) -> anyhow::Result<ExitCode> {
    let statuses = probe_all(ctx).await;
    match ctx.output {
        Output::Json => println!("{}", output::json(&statuses)?),
        Output::Table => {
            let dash = || "-".to_owned();
            let rows = statuses.iter().map(|s| {
                vec![
                    s.service.clone(),
                    s.health.clone(),
                    s.version.clone().unwrap_or_else(dash),
                    s.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                    s.uptime_seconds
                        .map(|u| humantime::format_duration(Duration::from_secs(u)).to_string())
                        .unwrap_or_else(dash),
                    s.root.clone().unwrap_or_else(dash),
                    s.socket.clone(),
                ]
            });
            println!(
                "{}",
                output::table(
                    &[
                        "SERVICE", "STATUS", "VERSION", "PID", "UPTIME", "ROOT", "SOCKET"
                    ],
                    rows
                )
            );
        }
    }
    let mut code = ExitCode::SUCCESS;
    for s in statuses.iter().filter(|s| !s.healthy()) {
        let why = s.error.as_deref().unwrap_or("not serving");
        eprintln!("berthctl: {} service: {why}", s.service);
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

/// `berthctl version`: this client's version, then each reachable service's.
pub async fn version(ctx: &Context) -> anyhow::Result<ExitCode> {
    let statuses = probe_all(ctx).await;
    let client = serde_json::json!({
        "version": berth_api::server::VERSION,
        "revision": berth_api::server::REVISION,
    });
    match ctx.output {
        Output::Json => {
            let servers: Vec<_> = statuses.iter().filter(|s| s.reachable).collect();
            println!(
                "{}",
                output::json(&serde_json::json!({"client": client, "services": servers}))?
            );
        }
        Output::Table => {
            println!(
                "berthctl {} ({})",
                berth_api::server::VERSION,
                berth_api::server::REVISION
            );
            for s in statuses.iter().filter(|s| s.reachable) {
                println!(
                    "{:<10} {} ({})",
                    s.service,
                    s.version.as_deref().unwrap_or("-"),
                    s.revision.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
