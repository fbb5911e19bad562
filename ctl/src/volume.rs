//! `berthctl volume create|ls|inspect|rm|prune`: named volumes (served on tasks.sock).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::SystemTime;

use berth_api::Service;
use berth_api::berth::volumes::v1 as pb;
use berth_api::berth::volumes::v1::volumes_client::VolumesClient;
use serde_json::{Value, json};

use crate::container::{connect, rpc};
use crate::content::parse_label;
use crate::context::{Context, Output};
use crate::output;

/// `berthctl volume` subcommands.
#[derive(clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (an anonymous one when no name is given).
    Create {
        /// Volume name.
        name: Option<String>,
        /// Driver (local).
        #[arg(long, short = 'd', default_value = "local")]
        driver: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long, value_parser = parse_label)]
        label: Vec<(String, String)>,
        /// Driver option KEY=VALUE (repeatable): type, device, o.
        #[arg(long, value_parser = parse_label)]
        opt: Vec<(String, String)>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Filter (repeatable), e.g. name~=^data or labels."app"==web.
        #[arg(long, short = 'f')]
        filter: Vec<String>,
    },
    /// Show volumes in detail (JSON).
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (refused while a container uses one, unless --force).
    #[command(alias = "remove")]
    Rm {
        /// Remove even if containers use the volume.
        #[arg(long, short = 'f')]
        force: bool,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove unused anonymous volumes (with --all, unused named ones too).
    Prune {
        /// Remove all unused volumes, not just anonymous ones.
        #[arg(long, short = 'a')]
        all: bool,
        /// Filter (repeatable).
        #[arg(long, short = 'f')]
        filter: Vec<String>,
    },
}

impl VolumeCommand {
    /// The command's name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            VolumeCommand::Create { .. } => "volume create",
            VolumeCommand::Ls { .. } => "volume ls",
            VolumeCommand::Inspect { .. } => "volume inspect",
            VolumeCommand::Rm { .. } => "volume rm",
            VolumeCommand::Prune { .. } => "volume prune",
        }
    }
}

fn volume_json(v: &pb::Volume) -> Value {
    json!({
        "Name": v.name,
        "Driver": v.driver,
        "Mountpoint": v.mountpoint,
        "Labels": v.labels,
        "Options": v.options,
        "Scope": v.scope,
        "CreatedAt": v.created_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "UsageData": v.usage.as_ref().map(|u| json!({ "Size": u.size, "RefCount": u.ref_count })),
    })
}

/// Runs a `volume` subcommand.
pub async fn run(ctx: &Context, cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    let mut c = VolumesClient::new(connect(ctx, Service::Tasks).await?);
    match cmd {
        VolumeCommand::Create {
            name,
            driver,
            label,
            opt,
        } => {
            let v = c
                .create(pb::CreateVolumeRequest {
                    name: name.unwrap_or_default(),
                    driver,
                    labels: label.into_iter().collect::<HashMap<_, _>>(),
                    options: opt.into_iter().collect::<HashMap<_, _>>(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .volume
                .unwrap_or_default();
            match ctx.output {
                Output::Json => println!("{}", output::json(&volume_json(&v))?),
                Output::Table => println!("{}", v.name),
            }
        }
        VolumeCommand::Ls { quiet, filter } => {
            let volumes = c
                .list(pb::ListVolumesRequest {
                    filters: filter,
                    usage: false,
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .volumes;
            if quiet {
                for v in &volumes {
                    println!("{}", v.name);
                }
            } else {
                match ctx.output {
                    Output::Json => {
                        let all: Vec<Value> = volumes.iter().map(volume_json).collect();
                        println!("{}", output::json(&all)?);
                    }
                    Output::Table => println!(
                        "{}",
                        output::table(
                            &["DRIVER", "VOLUME NAME"],
                            volumes
                                .iter()
                                .map(|v| vec![v.driver.clone(), v.name.clone()]),
                        )
                    ),
                }
            }
        }
        VolumeCommand::Inspect { names } => {
            let mut all = Vec::new();
            let mut failed = false;
            for name in names {
                match c.inspect(pb::InspectVolumeRequest { name }).await {
                    Ok(r) => all.push(volume_json(&r.into_inner().volume.unwrap_or_default())),
                    Err(e) => {
                        eprintln!("berthctl: error: {:#}", rpc(e));
                        failed = true;
                    }
                }
            }
            println!("{}", output::json(&all)?);
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        VolumeCommand::Rm { force, names } => {
            let mut failed = false;
            for name in names {
                match c
                    .remove(pb::RemoveVolumeRequest {
                        name: name.clone(),
                        force,
                    })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        eprintln!("berthctl: error: {:#}", rpc(e));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        VolumeCommand::Prune { all, filter } => {
            let r = c
                .prune(pb::PruneVolumesRequest {
                    filters: filter,
                    all,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            match ctx.output {
                Output::Json => println!(
                    "{}",
                    output::json(
                        &json!({ "VolumesDeleted": r.names, "SpaceReclaimed": r.space_reclaimed })
                    )?
                ),
                Output::Table => {
                    if !r.names.is_empty() {
                        println!("Deleted Volumes:");
                        for n in &r.names {
                            println!("{n}");
                        }
                        println!();
                    }
                    println!(
                        "Total reclaimed space: {}",
                        crate::snapshot::human_size(r.space_reclaimed as i64)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
