//! `berthctl push`: upload an image to a registry, showing per-blob progress like `docker push`.

use std::process::ExitCode;

use anyhow::Context as _;
use berth_api::Service;
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use tokio_stream::StreamExt;

use crate::content::rpc;
use crate::context::Context;
use crate::pull::{Display, parse_platforms};
use crate::registry::RegistryArgs;

#[derive(clap::Args)]
pub struct PushArgs {
    /// Local image to push, e.g. `localhost:5000/app:1.0`.
    name: String,
    /// Where to push it, if not to the image's own name.
    reference: Option<String>,
    /// Push only this platform of a multi-platform image, `os/arch[/variant]` (repeatable).
    #[arg(long)]
    platform: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print only the pushed digest.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub async fn run(ctx: &Context, args: PushArgs) -> anyhow::Result<ExitCode> {
    let platforms = parse_platforms(&args.platform)?;
    let mut images = ImagesClient::new(ctx.connect(Service::Images).await?);
    let mut stream = images
        .push(pb::PushRequest {
            name: args.name.clone(),
            reference: args.reference.clone().unwrap_or_default(),
            registry: Some(args.registry.options()),
            platforms,
            max_concurrent_uploads: 0,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut display = Display::new(args.quiet);
    let mut pushed = None;
    while let Some(message) = stream.next().await {
        let message = message.map_err(rpc)?;
        for p in &message.progress {
            display.show(p);
        }
        if message.pushed.is_some() {
            pushed = message.pushed;
        }
    }
    let pushed = pushed.context("the push ended without a pushed descriptor")?;
    if args.quiet {
        println!("{}", pushed.digest);
    } else {
        let to = args.reference.as_deref().unwrap_or(&args.name);
        println!("{to}: digest: {} size: {}", pushed.digest, pushed.size);
    }
    Ok(ExitCode::SUCCESS)
}
