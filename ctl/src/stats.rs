//! `berthctl stats`: live resource usage of running containers, Docker's columns.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_api::berth::containers::v1 as cpb;
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::types::v1::{Stats, TaskStatus};
use serde_json::json;

use crate::container::Clients;
use crate::context::{Context, Output};
use crate::output;
use crate::snapshot::human_size;

/// Time between the two samples CPU % is computed from.
const INTERVAL: Duration = Duration::from_millis(500);

/// `berthctl stats` arguments.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running).
    #[arg(long, short = 'a')]
    all: bool,
    /// Disable streaming stats and only pull the first result.
    #[arg(long)]
    no_stream: bool,
    /// Containers (names, ids or id prefixes); default: every running one.
    containers: Vec<String>,
}

/// One row: the container and the sample computed for it.
struct Row {
    id: String,
    name: String,
    cpu_percent: f64,
    stats: Stats,
}

async fn sample(c: &mut Clients, id: &str) -> Option<(Instant, Stats)> {
    let stats = c
        .tasks
        .stats(tpb::StatsRequest {
            container_id: id.to_owned(),
        })
        .await
        .ok()?
        .into_inner()
        .stats?;
    Some((Instant::now(), stats))
}

async fn rows(c: &mut Clients, containers: &[cpb::Container]) -> Vec<Row> {
    let mut first = HashMap::new();
    for container in containers {
        if let Some(s) = sample(c, &container.id).await {
            first.insert(container.id.clone(), s);
        }
    }
    tokio::time::sleep(INTERVAL).await;
    let mut rows = Vec::new();
    for container in containers {
        let Some((t1, s1)) = sample(c, &container.id).await else {
            rows.push(Row {
                id: container.id.clone(),
                name: container.name.clone(),
                cpu_percent: 0.0,
                stats: Stats::default(),
            });
            continue;
        };
        let cpu_percent = match first.get(&container.id) {
            Some((t0, s0)) => {
                let wall = t1.duration_since(*t0).as_nanos() as f64;
                let cpu = s1.cpu_usage_ns.saturating_sub(s0.cpu_usage_ns) as f64;
                if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 }
            }
            None => 0.0,
        };
        rows.push(Row {
            id: container.id.clone(),
            name: container.name.clone(),
            cpu_percent,
            stats: s1,
        });
    }
    rows
}

fn size(bytes: u64) -> String {
    human_size(bytes.min(i64::MAX as u64) as i64)
}

fn print(ctx: &Context, rows: &[Row]) -> anyhow::Result<()> {
    match ctx.output {
        Output::Json => {
            let all: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "ID": r.id,
                        "Name": r.name,
                        "CPUPerc": format!("{:.2}%", r.cpu_percent),
                        "MemUsage": r.stats.memory_working_set_bytes,
                        "MemLimit": r.stats.memory_limit_bytes,
                        "NetInput": r.stats.network_rx_bytes,
                        "NetOutput": r.stats.network_tx_bytes,
                        "BlockInput": r.stats.io_read_bytes,
                        "BlockOutput": r.stats.io_write_bytes,
                        "PIDs": r.stats.pids_current,
                    })
                })
                .collect();
            println!("{}", output::json(&all)?);
        }
        Output::Table => {
            let table = output::table(
                &[
                    "CONTAINER ID",
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "BLOCK I/O",
                    "PIDS",
                ],
                rows.iter().map(|r| {
                    let s = &r.stats;
                    let limit = s.memory_limit_bytes;
                    let mem_percent = if limit > 0 {
                        s.memory_working_set_bytes as f64 / limit as f64 * 100.0
                    } else {
                        0.0
                    };
                    vec![
                        r.id.chars().take(12).collect::<String>(),
                        r.name.clone(),
                        format!("{:.2}%", r.cpu_percent),
                        format!(
                            "{} / {}",
                            size(s.memory_working_set_bytes),
                            if limit > 0 {
                                size(limit)
                            } else {
                                "unlimited".into()
                            }
                        ),
                        format!("{mem_percent:.2}%"),
                        format!(
                            "{} / {}",
                            size(s.network_rx_bytes),
                            size(s.network_tx_bytes)
                        ),
                        format!("{} / {}", size(s.io_read_bytes), size(s.io_write_bytes)),
                        s.pids_current.to_string(),
                    ]
                }),
            );
            println!("{table}");
        }
    }
    Ok(())
}

/// `berthctl stats`.
pub async fn stats(ctx: &Context, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut c = Clients::new(ctx).await?;
    let containers = if args.containers.is_empty() {
        let tasks = c.tasks().await?;
        c.list()
            .await?
            .into_iter()
            .filter(|k| {
                args.all
                    || tasks
                        .get(&k.id)
                        .is_some_and(|t| t.status() == TaskStatus::Running)
            })
            .collect()
    } else {
        let mut found = Vec::new();
        for name in &args.containers {
            found.push(c.find(name).await?);
        }
        found
    };
    loop {
        let rows = rows(&mut c, &containers).await;
        if !args.no_stream {
            // Clear the screen and go home, as `docker stats` does.
            print!("\x1b[2J\x1b[H");
        }
        print(ctx, &rows)?;
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1).saturating_sub(INTERVAL)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
