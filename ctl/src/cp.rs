//! `berthctl cp`: copies files between a container and the local filesystem (or a tar stream
//! on stdin/stdout with `-`), with `docker cp`'s semantics (see `berth_build::copy`). A
//! running container is reached through its root (volumes included), a stopped one through its
//! snapshot mounted on a private temporary directory for the time of the copy.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use berth_build::copy::{self, Options, Root};
use berth_build::rootfs::Rootfs;

use crate::context::Context;
use crate::diff::open_container;

#[derive(clap::Args)]
pub struct CpArgs {
    /// Archive mode: keep the source's uid/gid.
    #[arg(long, short = 'a')]
    archive: bool,
    /// Always follow a symlink the source path ends with.
    #[arg(long, short = 'L')]
    follow_link: bool,
    /// `CONTAINER:SRC_PATH`, a local path, or `-` for a tar archive on stdin.
    src: String,
    /// `CONTAINER:DEST_PATH`, a local path, or `-` for a tar archive on stdout.
    dest: String,
}

/// `CONTAINER:PATH` split, or None for a local path (one with a `/` before any `:`, as Docker
/// reads it: `./a:b` is local).
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (container, path) = arg.split_once(':')?;
    (!container.is_empty() && !container.contains('/')).then_some((container, path))
}

pub async fn cp(ctx: &Context, args: CpArgs) -> anyhow::Result<ExitCode> {
    let (container, path, into) = match (remote(&args.src), remote(&args.dest)) {
        (Some(_), Some(_)) => bail!("copying between containers is not supported"),
        (None, None) => bail!("must specify at least one container source (CONTAINER:PATH)"),
        (Some((c, p)), None) => (c, p, false),
        (None, Some((c, p))) => (c, p, true),
    };
    let path = if path.is_empty() { "/" } else { path };
    let (record, mut clients) = open_container(ctx, container).await?;
    if !into && args.dest == "-" && std::io::stdout().is_terminal() {
        bail!("cowardly refusing to write a tar archive to a terminal: redirect standard output");
    }
    let owner = match (args.archive, into) {
        (true, _) => None,
        // Docker: root in the container, the invoking user on the local side.
        (false, true) => Some((0, 0)),
        (false, false) => Some((
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )),
    };
    let options = Options {
        follow: args.follow_link,
        owner,
    };
    let label = format!("container {container}");
    let path = path.to_owned();
    let rootfs = Rootfs::open(&mut clients, &record, into).await?;
    tokio::task::spawn_blocking(move || {
        let copied = transfer(&rootfs, label, into, &args.src, &args.dest, &path, options);
        // Unmounted only once every file descriptor into it is closed.
        drop(rootfs);
        copied
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}

/// The copy itself (blocking), with the container's tree at `rootfs`.
fn transfer(
    rootfs: &Rootfs,
    label: String,
    into: bool,
    src: &str,
    dest: &str,
    path: &str,
    options: Options,
) -> anyhow::Result<()> {
    let root = Root::container(rootfs.path(), label)?;
    match (into, src, dest) {
        (true, "-", _) => copy::extract(std::io::stdin(), &root, path, &options)?,
        (true, local, _) => copy::copy(&Root::host()?, local, &root, path, &options)?,
        (false, _, "-") => {
            // The stream keeps the container's owners, as Docker's does.
            let keep = Options {
                owner: None,
                ..options
            };
            copy::archive(&root, path, &keep, std::io::stdout().lock())?
        }
        (false, _, local) => copy::copy(&root, path, &Root::host()?, local, &options)?,
    }
    Ok(())
}
