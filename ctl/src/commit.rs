//! `berthctl commit [-m MSG] [-a AUTHOR] [-c CHANGE]... [--pause=true] CONTAINER [REPO[:TAG]]`:
//! a new image from a container's changes (see `berth_build::commit`); prints its id.

use std::process::ExitCode;

use berth_build::commit::{self, Options};

use crate::container::inspect_json;
use crate::context::Context;
use crate::diff::open_container;

#[derive(clap::Args)]
pub struct CommitArgs {
    /// Commit message (the history entry's comment).
    #[arg(long, short = 'm', default_value = "")]
    message: String,
    /// Author (e.g. "Jane Doe <jane@example.com>").
    #[arg(long, short = 'a', default_value = "")]
    author: String,
    /// Apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    /// ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR); repeatable.
    #[arg(long, short = 'c')]
    change: Vec<String>,
    /// Pause a running container while committing.
    #[arg(long, short = 'p', default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pause: bool,
    /// Container (name, id or id prefix).
    container: String,
    /// Name of the new image, `repository[:tag]`.
    reference: Option<String>,
}

pub async fn commit(ctx: &Context, args: CommitArgs) -> anyhow::Result<ExitCode> {
    // Bad changes are refused before anything is read or paused.
    commit::parse_changes(&args.change)?;
    let (container, mut clients) = open_container(ctx, &args.container).await?;
    let mut settings = inspect_json(&container, None)["Config"].clone();
    // The user field is the container's own only when it was given at run time.
    let spec: serde_json::Value = serde_json::from_slice(&container.spec).unwrap_or_default();
    if spec["annotations"][berth_tasks::spec::USER_ANNOTATION].is_null() {
        settings["User"] = serde_json::Value::Null;
    }
    let options = Options {
        message: args.message,
        author: args.author,
        changes: args.change,
        pause: args.pause,
        container_config: settings,
        reference: args.reference,
    };
    let committed = commit::commit(&mut clients, &container, &options).await?;
    println!("{}", committed.id);
    Ok(ExitCode::SUCCESS)
}
