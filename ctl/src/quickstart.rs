//! `berthctl quickstart`: berth up and a first container, with no registry on the internet.
//!
//! Brings the services up (if they are not), builds the small `demo` image from the host's
//! statically linked busybox (Debian's `busybox-static`, installed with apt-get if missing),
//! and runs `berthctl run --rm demo echo hello from berth`.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::images::v1 as ipb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use clap::Parser;

use crate::container::connect;
use crate::context::Context;

/// Where Debian's busybox-static installs busybox.
const BUSYBOX: &str = "/bin/busybox";
/// Name of the image the quick start builds.
const DEMO: &str = "demo";
/// Fixed mtime of the demo image's files (2024-01-01T00:00:00Z): the same host builds the same
/// image.
const MTIME: u64 = 1_704_067_200;

/// `berthctl quickstart` arguments.
#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Build the demo image again even if it exists.
    #[arg(long)]
    rebuild: bool,
}

/// Parses one of berthctl's own subcommands from words, to reuse its implementation.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct Words<T: clap::FromArgMatches + clap::Args> {
    #[command(flatten)]
    args: T,
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct SystemWords {
    #[command(subcommand)]
    cmd: crate::system::SystemCommand,
}

/// True if `path` is an ELF executable without a program interpreter (statically linked).
fn is_static(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    data.starts_with(b"\x7fELF")
        && !data
            .windows(11)
            .any(|w| w == b"/lib64/ld-l" || w == b"/lib/ld-lin")
}

/// Makes sure a statically linked busybox is at /bin/busybox, installing busybox-static.
fn ensure_busybox() -> anyhow::Result<()> {
    if is_static(Path::new(BUSYBOX)) {
        return Ok(());
    }
    eprintln!("Installing busybox-static (apt-get) for the demo image...");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "busybox-static"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get to install busybox-static")?;
    if !status.success() || !is_static(Path::new(BUSYBOX)) {
        bail!("no statically linked busybox at {BUSYBOX}: install Debian's busybox-static");
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes the demo rootfs as a tar: busybox, a symlink per applet, a minimal /etc.
fn rootfs_tar(out: &std::fs::File) -> anyhow::Result<()> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("cannot read {BUSYBOX}"))?;
    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("cannot list busybox's applets")?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| !l.is_empty() && *l != "bin/busybox" && !l.contains(".."))
        .map(str::to_owned)
        .collect();
    applets.sort();
    let mut tar = tar::Builder::new(out);
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o755),
        ("root", 0o700),
        ("sbin", 0o755),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
    ] {
        tar.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            dir,
            std::io::empty(),
        )?;
    }
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64),
        "bin/busybox",
        busybox.as_slice(),
    )?;
    for applet in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, applet, BUSYBOX)?;
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        tar.append_data(
            &mut header(tar::EntryType::Regular, 0o644, text.len() as u64),
            path,
            text.as_bytes(),
        )?;
    }
    tar.finish()?;
    Ok(())
}

/// Builds the demo image with `berthctl import`.
async fn build_demo(ctx: &Context) -> anyhow::Result<()> {
    ensure_busybox()?;
    let mut file = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    rootfs_tar(file.as_file())?;
    std::io::Write::flush(&mut file)?;
    let path = file
        .path()
        .to_str()
        .context("temporary path is not UTF-8")?;
    let words = Words::<crate::archive::ImportArgs>::try_parse_from([
        "-c",
        r#"CMD ["sh"]"#,
        "-m",
        "berth demo image: busybox-static",
        path,
        DEMO,
    ])?;
    crate::archive::import(ctx, words.args).await?;
    Ok(())
}

/// `berthctl quickstart`.
pub async fn quickstart(ctx: &Context, args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    let up = SystemWords::try_parse_from(["up"])?;
    crate::system::run(ctx, up.cmd).await?;
    let mut images = ImagesClient::new(connect(ctx, Service::Images).await?);
    let exists = images
        .get(ipb::GetImageRequest { name: DEMO.into() })
        .await
        .is_ok();
    if args.rebuild || !exists {
        build_demo(ctx).await?;
    }
    let command = [
        "--rm",
        "--network",
        "none",
        DEMO,
        "echo",
        "hello from berth",
    ];
    eprintln!(
        "$ berthctl run {}",
        command
            .join(" ")
            .replace("hello from berth", "\"hello from berth\"")
    );
    let run = Words::<crate::run::RunArgs>::try_parse_from(command)?;
    let code = crate::run::run(ctx, run.args).await;
    if code == ExitCode::SUCCESS {
        eprintln!("\nberth is up. Try: berthctl run -it --rm {DEMO} sh");
    }
    Ok(code)
}
