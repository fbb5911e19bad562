//! `berthctl diff CONTAINER`: the container's changes to its image, one `A|C|D /path` line
//! each, sorted by path, as `docker diff` prints them (see `berth_build::changes`).

use std::process::ExitCode;

use berth_api::berth::containers::v1::Container;
use berth_build::changes::{self, ChangeKind, Exclusions};
use berth_build::clients::Clients;
use berth_build::rootfs;
use serde_json::json;

use crate::context::{Context, Output};
use crate::output;

#[derive(clap::Args)]
pub struct DiffArgs {
    /// Container (name, id or id prefix).
    container: String,
}

/// The container `reference` names and clients of every service.
pub async fn open_container(
    ctx: &Context,
    reference: &str,
) -> anyhow::Result<(Container, Clients)> {
    let container = crate::container::Clients::new(ctx)
        .await?
        .find(reference)
        .await?;
    let clients = Clients::connect(|s| ctx.socket(s), &ctx.namespace).await?;
    Ok((container, clients))
}

pub async fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (container, mut clients) = open_container(ctx, &args.container).await?;
    let exclusions = Exclusions::from_spec(&container.spec);
    let changes = rootfs::with_trees(&mut clients, &container, move |lower, upper| {
        changes::compare(lower, upper, std::io::sink(), &exclusions)
    })
    .await?;
    match ctx.output {
        Output::Json => {
            // Docker's API form: Kind 0 = modified, 1 = added, 2 = deleted.
            let rows: Vec<_> = changes
                .iter()
                .map(|c| {
                    let kind = match c.kind {
                        ChangeKind::Modified => 0,
                        ChangeKind::Added => 1,
                        ChangeKind::Deleted => 2,
                    };
                    json!({"Path": c.path, "Kind": kind})
                })
                .collect();
            println!("{}", output::json(&rows)?);
        }
        Output::Table => {
            for change in &changes {
                println!("{change}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
