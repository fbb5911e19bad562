//! `berthctl export CONTAINER [-f FILE]`: the container's whole root filesystem, flattened (its
//! image and its changes, without the runtime's mount points), as one tar, like `docker
//! export`. The layer library writes it as the difference from an empty tree.

use std::io::{BufWriter, IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use berth_build::error::Error;
use berth_build::rootfs;

use crate::context::Context;
use crate::diff::open_container;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Write to this file instead of stdout (Docker's `-o`, which is berthctl's global output
    /// format flag).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Container (name, id or id prefix).
    container: String,
}

pub async fn export(ctx: &Context, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (container, mut clients) = open_container(ctx, &args.container).await?;
    match args.file {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // Written beside the file and renamed over it once complete.
            let staged = tempfile::Builder::new()
                .prefix(".berthctl-export-")
                // A new file's usual mode (umask applies), not a temporary file's 0600.
                .permissions(std::fs::Permissions::from_mode(0o666))
                .tempfile_in(dir)
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            let staged = rootfs::with_tree(&mut clients, &container, move |tree| {
                let mut out = BufWriter::new(staged);
                flatten(tree, &mut out)?;
                out.into_inner()
                    .map_err(|e| Error::io("write", tree)(e.into_error()))
            })
            .await?;
            staged
                .persist(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None if std::io::stdout().is_terminal() => bail!(
            "cowardly refusing to write a tar archive to a terminal: use --file FILE or redirect \
             standard output"
        ),
        None => {
            rootfs::with_tree(&mut clients, &container, move |tree| {
                let mut out = BufWriter::new(std::io::stdout().lock());
                flatten(tree, &mut out)?;
                out.flush().map_err(Error::io("write", "standard output"))
            })
            .await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the tree at `tree` as a tar: the layer that adds all of it to an empty tree.
fn flatten(tree: &Path, out: &mut impl Write) -> berth_build::error::Result<()> {
    let empty =
        tempfile::tempdir().map_err(Error::io("create a directory in", std::env::temp_dir()))?;
    berth_snapshots::layer::compare(empty.path(), tree, out)
        .map_err(Error::layer("archive the container's files"))?;
    Ok(())
}
