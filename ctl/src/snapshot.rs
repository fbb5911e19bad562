//! `berthctl snapshot ...`: low-level snapshot commands for debugging, in ctr's argument order
//! (`prepare KEY [PARENT]`, `view KEY PARENT`, `commit NAME KEY`, `mounts TARGET KEY`,
//! `mount KEY TARGET`). `mount` and `diff` mount snapshots in this process with the snapshots
//! crate's mount helper, so they run as root on the service's host.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::snapshots::v1::{self as pb, snapshots_client::SnapshotsClient};
use berth_api::client::Channel;
use berth_snapshots::mount::{self, Mount, Mounted};
use serde_json::json;

use crate::context::{Context, Output};
use crate::output;

#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// Snapshotter (default: the one the snapshots service runs).
    #[arg(long, global = true, default_value = "", hide_default_value = true)]
    snapshotter: String,
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand)]
enum SnapshotCommand {
    /// List snapshots: KEY PARENT KIND.
    #[command(alias = "list")]
    Ls {
        /// Only snapshots matching a filter (e.g. kind==committed, labels.app==web); repeatable,
        /// any may match.
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Show a snapshot's information as JSON.
    Info {
        /// Key or name of the snapshot.
        key: String,
    },
    /// Disk usage of snapshots' own layers: KEY SIZE INODES (all snapshots without KEY).
    Usage {
        /// Keys or names of snapshots.
        keys: Vec<String>,
        /// Sizes in bytes.
        #[arg(long)]
        bytes: bool,
    },
    /// Create the active (writable) snapshot KEY on the committed PARENT (none: empty).
    Prepare(CreateArgs),
    /// Create the read-only view KEY of the committed PARENT.
    View(CreateArgs),
    /// Commit the active snapshot KEY as NAME.
    Commit {
        /// Name of the committed snapshot.
        name: String,
        /// Key of the active snapshot.
        key: String,
        /// Label NAME=VALUE of the committed snapshot (repeatable).
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
    },
    /// Remove snapshots.
    #[command(alias = "remove")]
    Rm {
        /// Keys or names of snapshots.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print the mount commands that assemble KEY at TARGET.
    Mounts {
        /// Where the mounts would go.
        target: PathBuf,
        /// Key of an active snapshot or view.
        key: String,
    },
    /// Mount KEY (an active snapshot or view) at the directory TARGET; `umount TARGET` undoes it.
    Mount {
        /// Key of an active snapshot or view.
        key: String,
        /// Existing directory to mount on.
        target: PathBuf,
    },
    /// Write the changes of KEY from BASE (default: its parent) as an uncompressed OCI layer tar.
    Diff {
        /// Key or name of the snapshot whose changes to write.
        key: String,
        /// Key or name of the snapshot to compare with.
        base: Option<String>,
        /// Write the layer to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Show snapshots as a tree of parents and children.
    Tree,
    /// Set (NAME=VALUE) or remove (NAME=) labels of KEY.
    Label {
        /// Key or name of the snapshot.
        key: String,
        #[arg(required = true, value_name = "NAME=[VALUE]")]
        labels: Vec<String>,
    },
    /// Remove directories no snapshot refers to (left by crashes).
    Cleanup,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Key of the new snapshot.
    key: String,
    /// Name of the committed parent.
    parent: Option<String>,
    /// Label NAME=VALUE (repeatable).
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
    /// Print the commands that mount the snapshot at this directory.
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Print the snapshot's mounts as JSON.
    #[arg(long)]
    mounts: bool,
}

impl SnapshotArgs {
    pub fn name(&self) -> &'static str {
        match self.command {
            SnapshotCommand::Ls { .. } => "snapshot ls",
            SnapshotCommand::Info { .. } => "snapshot info",
            SnapshotCommand::Usage { .. } => "snapshot usage",
            SnapshotCommand::Prepare(_) => "snapshot prepare",
            SnapshotCommand::View(_) => "snapshot view",
            SnapshotCommand::Commit { .. } => "snapshot commit",
            SnapshotCommand::Rm { .. } => "snapshot rm",
            SnapshotCommand::Mounts { .. } => "snapshot mounts",
            SnapshotCommand::Mount { .. } => "snapshot mount",
            SnapshotCommand::Diff { .. } => "snapshot diff",
            SnapshotCommand::Tree => "snapshot tree",
            SnapshotCommand::Label { .. } => "snapshot label",
            SnapshotCommand::Cleanup => "snapshot cleanup",
        }
    }
}

/// A client for the snapshots service bound to one snapshotter name.
struct Snapshots {
    client: SnapshotsClient<Channel>,
    snapshotter: String,
}

/// A failed call as one line: the service's message says what to do.
fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

impl Snapshots {
    async fn stat(&mut self, key: &str) -> anyhow::Result<pb::Info> {
        let request = pb::StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        };
        let info = self
            .client
            .stat(request)
            .await
            .map_err(failed)?
            .into_inner();
        info.info
            .context("the service answered without information")
    }

    async fn list(&mut self, filters: Vec<String>) -> anyhow::Result<Vec<pb::Info>> {
        let request = pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters,
        };
        let mut stream = self
            .client
            .list(request)
            .await
            .map_err(failed)?
            .into_inner();
        let mut all = Vec::new();
        while let Some(batch) = stream.message().await.map_err(failed)? {
            all.extend(batch.info);
        }
        Ok(all)
    }

    async fn mounts(&mut self, key: &str) -> anyhow::Result<Vec<Mount>> {
        let request = pb::MountsRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        };
        let reply = self
            .client
            .mounts(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(reply.mounts.into_iter().map(Mount::from).collect())
    }

    async fn view(&mut self, key: &str, parent: &str) -> anyhow::Result<Vec<Mount>> {
        let request = pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        };
        let reply = self
            .client
            .view(request)
            .await
            .map_err(failed)?
            .into_inner();
        Ok(reply.mounts.into_iter().map(Mount::from).collect())
    }

    async fn remove(&mut self, key: &str) -> anyhow::Result<()> {
        let request = pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        };
        self.client.remove(request).await.map_err(failed)?;
        Ok(())
    }
}

pub async fn run(ctx: &Context, args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let mut s = Snapshots {
        client: SnapshotsClient::new(ctx.connect(Service::Snapshots).await?),
        snapshotter: args.snapshotter,
    };
    let snapshotter = s.snapshotter.clone();
    match args.command {
        SnapshotCommand::Ls { filters } => {
            let infos = s.list(filters).await?;
            match ctx.output {
                Output::Json => println!(
                    "{}",
                    output::json(&infos.iter().map(info_json).collect::<Vec<_>>())?
                ),
                Output::Table => println!(
                    "{}",
                    output::table(
                        &["KEY", "PARENT", "KIND"],
                        infos.iter().map(|i| [
                            i.name.clone(),
                            i.parent.clone(),
                            kind(i.kind).to_owned()
                        ])
                    )
                ),
            }
        }
        SnapshotCommand::Info { key } => {
            println!("{}", output::json(&info_json(&s.stat(&key).await?))?);
        }
        SnapshotCommand::Usage { keys, bytes } => {
            let keys = if keys.is_empty() {
                s.list(Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut rows = Vec::new();
            for key in keys {
                let request = pb::UsageRequest {
                    snapshotter: snapshotter.clone(),
                    key: key.clone(),
                };
                let usage = s.client.usage(request).await.map_err(failed)?.into_inner();
                rows.push((key, usage.size, usage.inodes));
            }
            match ctx.output {
                Output::Json => {
                    let list: Vec<_> = rows
                        .iter()
                        .map(|(k, size, inodes)| json!({"key": k, "size": size, "inodes": inodes}))
                        .collect();
                    println!("{}", output::json(&list)?);
                }
                Output::Table => println!(
                    "{}",
                    output::table(
                        &["KEY", "SIZE", "INODES"],
                        rows.iter().map(|(k, size, inodes)| {
                            let size = if bytes {
                                size.to_string()
                            } else {
                                human_size(*size)
                            };
                            [k.clone(), size, inodes.to_string()]
                        })
                    )
                ),
            }
        }
        SnapshotCommand::Prepare(a) => {
            let request = pb::PrepareSnapshotRequest {
                snapshotter,
                key: a.key.clone(),
                parent: a.parent.clone().unwrap_or_default(),
                labels: parse_labels(&a.labels)?,
            };
            let reply = s
                .client
                .prepare(request)
                .await
                .map_err(failed)?
                .into_inner();
            print_mounts(&a, reply.mounts.into_iter().map(Mount::from).collect())?;
        }
        SnapshotCommand::View(a) => {
            let Some(parent) = a.parent.clone() else {
                bail!("view needs a PARENT: berthctl snapshot view KEY PARENT");
            };
            let request = pb::ViewSnapshotRequest {
                snapshotter,
                key: a.key.clone(),
                parent,
                labels: parse_labels(&a.labels)?,
            };
            let reply = s.client.view(request).await.map_err(failed)?.into_inner();
            print_mounts(&a, reply.mounts.into_iter().map(Mount::from).collect())?;
        }
        SnapshotCommand::Commit { name, key, labels } => {
            let request = pb::CommitSnapshotRequest {
                snapshotter,
                name,
                key,
                labels: parse_labels(&labels)?,
            };
            s.client.commit(request).await.map_err(failed)?;
        }
        SnapshotCommand::Rm { keys } => {
            let mut failures = 0;
            for key in keys {
                if let Err(e) = s.remove(&key).await {
                    eprintln!("berthctl: error: {e:#}");
                    failures += 1;
                }
            }
            if failures > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        SnapshotCommand::Mounts { target, key } => {
            let mounts = s.mounts(&key).await?;
            match ctx.output {
                Output::Json => println!("{}", output::json(&mounts)?),
                Output::Table => {
                    for m in &mounts {
                        println!("{}", m.command(&target));
                    }
                }
            }
        }
        SnapshotCommand::Mount { key, target } => {
            let mounts = s.mounts(&key).await?;
            mount::mount_all(&mounts, &target)
                .with_context(|| format!("cannot mount {key} at {}", target.display()))?;
        }
        SnapshotCommand::Diff { key, base, file } => diff(&mut s, &key, base, file).await?,
        SnapshotCommand::Tree => print!("{}", tree(&s.list(Vec::new()).await?)),
        SnapshotCommand::Label { key, labels } => {
            let parsed = parse_label_changes(&labels)?;
            let request = pb::UpdateSnapshotRequest {
                snapshotter,
                info: Some(pb::Info {
                    name: key,
                    labels: parsed
                        .iter()
                        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                        .collect(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: parsed.keys().map(|k| format!("labels.{k}")).collect(),
                }),
            };
            let info = s.client.update(request).await.map_err(failed)?.into_inner();
            if let Some(info) = info.info {
                println!("{}", output::json(&info_json(&info))?);
            }
        }
        SnapshotCommand::Cleanup => {
            let request = pb::CleanupRequest { snapshotter };
            let reply = s
                .client
                .cleanup(request)
                .await
                .map_err(failed)?
                .into_inner();
            println!(
                "removed {} director{}",
                reply.removed,
                if reply.removed == 1 { "y" } else { "ies" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_mounts(args: &CreateArgs, mounts: Vec<Mount>) -> anyhow::Result<()> {
    if args.mounts {
        println!("{}", output::json(&mounts)?);
    }
    if let Some(target) = &args.target {
        for m in &mounts {
            println!("{}", m.command(target));
        }
    }
    Ok(())
}

/// `diff`: mounts both sides read-only (committed snapshots through temporary views), compares
/// them with the layer library and writes the layer.
async fn diff(
    s: &mut Snapshots,
    key: &str,
    base: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let out: Box<dyn Write + Send> = match &file {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None if std::io::stdout().is_terminal() => {
            bail!("the layer is a tar archive: redirect standard output or use --file FILE")
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let info = s.stat(key).await?;
    let base = base.or_else(|| Some(info.parent.clone()).filter(|p| !p.is_empty()));
    let scratch = tempdir()?;
    let mut temporary = Vec::new();
    let result = async {
        let upper = side(s, key, &scratch, &mut temporary).await?;
        let lower = match &base {
            Some(base) => side(s, base, &scratch, &mut temporary).await?,
            None => Vec::new(),
        };
        let compared =
            tokio::task::spawn_blocking(move || compare(&upper, &lower, &scratch, out)).await??;
        eprintln!("{} ({} bytes)", compared.diff_id, compared.size);
        anyhow::Ok(())
    }
    .await;
    for view in temporary {
        if let Err(e) = s.remove(&view).await {
            eprintln!("berthctl: warning: cannot remove temporary view {view}: {e:#}");
        }
    }
    result
}

/// Read-only mounts of one side of a diff; a committed snapshot gets a temporary view.
async fn side(
    s: &mut Snapshots,
    key: &str,
    scratch: &Path,
    temporary: &mut Vec<String>,
) -> anyhow::Result<Vec<Mount>> {
    let info = s.stat(key).await?;
    if info.kind == pb::Kind::Committed as i32 {
        let view = format!(
            "berthctl-diff-{}-{}",
            std::process::id(),
            scratch.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        );
        let view = format!("{view}-{}", temporary.len());
        let mounts = s.view(&view, key).await?;
        temporary.push(view);
        Ok(mounts)
    } else {
        Ok(mount::read_only(&s.mounts(key).await?))
    }
}

fn compare(
    upper: &[Mount],
    lower: &[Mount],
    scratch: &Path,
    out: Box<dyn Write + Send>,
) -> anyhow::Result<berth_snapshots::layer::Compared> {
    let result = (|| {
        let upper = Mounted::temporary(upper, scratch)?;
        let empty = scratch.join("empty");
        std::fs::create_dir_all(&empty)?;
        let lower = if lower.is_empty() {
            None
        } else {
            Some(Mounted::temporary(lower, scratch)?)
        };
        let lower_path = lower.as_ref().map_or(empty.as_path(), |m| m.path());
        Ok(berth_snapshots::layer::compare(
            lower_path,
            upper.path(),
            out,
        )?)
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// A private scratch directory for temporary mounts.
fn tempdir() -> anyhow::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("berthctl-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn kind(kind: i32) -> &'static str {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::Active) => "active",
        Ok(pb::Kind::View) => "view",
        Ok(pb::Kind::Committed) => "committed",
        _ => "unknown",
    }
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .unwrap_or_default()
}

fn info_json(info: &pb::Info) -> serde_json::Value {
    let labels: BTreeMap<_, _> = info.labels.iter().collect();
    json!({
        "name": info.name,
        "parent": info.parent,
        "kind": kind(info.kind),
        "created": time(&info.created_at),
        "updated": time(&info.updated_at),
        "labels": labels,
    })
}

fn parse_labels(labels: &[String]) -> anyhow::Result<HashMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => bail!("label {l:?} is not NAME=VALUE"),
        })
        .collect()
}

/// `NAME=VALUE` sets, `NAME=` removes.
fn parse_label_changes(labels: &[String]) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    Ok(parse_labels(labels)?
        .into_iter()
        .map(|(k, v)| (k, Some(v).filter(|v| !v.is_empty())))
        .collect())
}

/// Sizes as Docker prints them: 4 significant digits, decimal units (`4.096kB`).
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let integer_digits = if size < 10.0 {
        1
    } else if size < 100.0 {
        2
    } else {
        3
    };
    let text = format!("{size:.prec$}", prec = 4 - integer_digits);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{}", UNITS[unit])
}

/// ctr's tree: each snapshot under its parent.
fn tree(infos: &[pb::Info]) -> String {
    let names: std::collections::HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots = Vec::new();
    for i in infos {
        if i.parent.is_empty() || !names.contains(i.parent.as_str()) {
            roots.push(i.name.as_str());
        } else {
            children
                .entry(i.parent.as_str())
                .or_default()
                .push(i.name.as_str());
        }
    }
    let mut out = String::new();
    fn walk<'a>(
        name: &'a str,
        depth: usize,
        children: &BTreeMap<&'a str, Vec<&'a str>>,
        out: &mut String,
    ) {
        if depth == 0 {
            out.push_str(name);
        } else {
            out.push_str(&" ".repeat(depth * 3 - 2));
            out.push_str("\\_ ");
            out.push_str(name);
        }
        out.push('\n');
        for child in children.get(name).into_iter().flatten() {
            walk(child, depth + 1, children, out);
        }
    }
    for root in roots {
        walk(root, 0, &children, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: &str) -> pb::Info {
        pb::Info {
            name: name.into(),
            parent: parent.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tree_nests_children_under_parents() {
        let t = tree(&[
            info("a", ""),
            info("b", "a"),
            info("c", "b"),
            info("d", "a"),
        ]);
        assert_eq!(t, "a\n \\_ b\n    \\_ c\n \\_ d\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(4096), "4.096kB");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(123_456_789), "123.5MB");
    }
}
