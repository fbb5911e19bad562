//! `berthctl images`, `rmi`, `tag`, `image inspect|history|prune`: image records, Docker style.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::containers::v1 as containers;
use berth_api::berth::containers::v1::containers_client::ContainersClient;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::types::v1::Descriptor;
use berth_api::client::Channel;
use serde::Serialize;
use serde_json::{Value, json};

use crate::content::{self, rpc};
use crate::context::{Context, Output};
use crate::output;

/// Largest manifest or config read to describe an image.
const MAX_JSON: usize = 4 << 20;
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Show all images, the build cache's records (`berth.internal/build-cache`) included.
    #[arg(long, short = 'a')]
    all: bool,
    /// Only show image IDs.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Show digests.
    #[arg(long)]
    digests: bool,
    /// Filter: `reference=PATTERN` (glob on repository[:tag]) or `dangling=true|false`;
    /// repeatable, all must match.
    #[arg(long, short = 'f')]
    filter: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// List images.
    #[command(alias = "ls", alias = "list")]
    Images(ImagesArgs),
    /// Show images' records, manifests and configs as JSON.
    Inspect {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove images (their content is garbage collected once nothing references it).
    Rm(RmArgs),
    /// Show the history of an image (from its config), newest first.
    History(HistoryArgs),
    /// Save images to a tar archive (the same as `berthctl save`).
    Save(crate::archive::SaveArgs),
    /// Load images from an archive (the same as `berthctl load`).
    Load(crate::archive::LoadArgs),
    /// Create an image from a rootfs tarball (the same as `berthctl import`).
    Import(crate::archive::ImportArgs),
    /// Remove dangling images (-a: every image no container uses).
    Prune {
        /// Remove every image no container uses, not only dangling ones.
        #[arg(long, short = 'a')]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Do not truncate the IMAGE and CREATED BY columns.
    #[arg(long)]
    no_trunc: bool,
    /// Only show image IDs.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print sizes and dates in human-readable form (`--human=false`: bytes and RFC 3339).
    #[arg(long, short = 'H', default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    human: bool,
    /// Output: `json`, `table`, or a template like `{{.ID}}\t{{.CreatedBy}}` (fields ID,
    /// CreatedSince, CreatedAt, CreatedBy, Size, Comment).
    #[arg(long)]
    format: Option<String>,
    /// Image name.
    name: String,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Remove the image even if containers use it, and every name of an image given by ID.
    #[arg(long, short = 'f')]
    force: bool,
    /// Image names or IDs.
    #[arg(required = true)]
    names: Vec<String>,
}

impl ImageCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ImageCommand::Images(_) => "images",
            ImageCommand::Inspect { .. } => "image inspect",
            ImageCommand::Rm(_) => "rmi",
            ImageCommand::History(_) => "image history",
            ImageCommand::Prune { .. } => "image prune",
            ImageCommand::Save(_) => "image save",
            ImageCommand::Load(_) => "image load",
            ImageCommand::Import(_) => "image import",
        }
    }
}

struct Clients {
    images: ImagesClient<Channel>,
    content: ContentClient<Channel>,
}

async fn clients(ctx: &Context) -> anyhow::Result<Clients> {
    let channel = ctx.connect(Service::Images).await?;
    Ok(Clients {
        images: ImagesClient::new(channel.clone()),
        content: ContentClient::new(channel),
    })
}

pub async fn run(ctx: &Context, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let cmd = match cmd {
        ImageCommand::Save(args) => return crate::archive::save(ctx, args).await,
        ImageCommand::Load(args) => return crate::archive::load(ctx, args).await,
        ImageCommand::Import(args) => return crate::archive::import(ctx, args).await,
        cmd => cmd,
    };
    let mut c = clients(ctx).await?;
    match cmd {
        ImageCommand::Images(args) => list(ctx, &mut c, args).await?,
        ImageCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in names {
                let image = get(&mut c.images, &name).await?;
                out.push(inspect(&mut c.content, image).await);
            }
            println!("{}", output::json(&out)?);
        }
        ImageCommand::Rm(args) => remove(ctx, &mut c, args).await?,
        ImageCommand::History(args) => history(ctx, &mut c, args).await?,
        ImageCommand::Prune { all, force } => prune(ctx, &mut c, all, force).await?,
        ImageCommand::Save(_) | ImageCommand::Load(_) | ImageCommand::Import(_) => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `berthctl tag SOURCE TARGET`.
pub async fn tag(ctx: &Context, source: String, target: String) -> anyhow::Result<ExitCode> {
    let mut c = clients(ctx).await?;
    c.images
        .tag(pb::TagRequest {
            source_name: source,
            target_name: target,
            force: true,
        })
        .await
        .map_err(rpc)?;
    Ok(ExitCode::SUCCESS)
}

async fn get(images: &mut ImagesClient<Channel>, name: &str) -> anyhow::Result<pb::Image> {
    let image = images
        .get(pb::GetImageRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .image;
    image.context("the service answered without an image")
}

/// `docker.io/library/x` -> `x`, `docker.io/u/x` -> `u/x`.
pub fn familiar(name: &str) -> &str {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
}

/// Repository, tag (or `<none>`) and digest (or `<none>`) of a normalised name.
fn split_name(name: &str) -> (String, String, String) {
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, d.to_owned()),
        None => (name, "<none>".to_owned()),
    };
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], rest[slash + i + 1..].to_owned()),
        None => (rest, "<none>".to_owned()),
    };
    (familiar(repo).to_owned(), tag, digest)
}

/// What the image's manifest for this host says: config digest, config JSON and total size.
pub(crate) struct Resolved {
    config_digest: String,
    pub(crate) config: Value,
    manifest: Value,
    size: i64,
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) async fn resolve(
    content: &mut ContentClient<Channel>,
    target: &Descriptor,
) -> anyhow::Result<Resolved> {
    let mut manifest_digest = target.digest.clone();
    let mut manifest: Value =
        serde_json::from_slice(&content::read_blob(content, &manifest_digest, MAX_JSON).await?)?;
    if INDEX_TYPES.contains(&target.media_type.as_str()) || manifest.get("manifests").is_some() {
        let entries = manifest["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|m| {
                m["platform"]["os"] == "linux" && m["platform"]["architecture"] == host_arch()
            })
            .or(entries.first())
            .context("the index lists no manifest")?;
        manifest_digest = chosen["digest"].as_str().unwrap_or_default().to_owned();
        manifest = serde_json::from_slice(
            &content::read_blob(content, &manifest_digest, MAX_JSON).await?,
        )?;
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("the manifest has no config")?
        .to_owned();
    let config =
        serde_json::from_slice(&content::read_blob(content, &config_digest, MAX_JSON).await?)?;
    let layers: i64 = manifest["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|d| d["size"].as_i64()).sum())
        .unwrap_or_default();
    let size = layers + manifest["config"]["size"].as_i64().unwrap_or_default();
    Ok(Resolved {
        config_digest,
        config,
        manifest,
        size,
    })
}

fn short_id(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (n, unit) = match secs {
        s if s < 60 => return "Less than a minute ago".into(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 14 * 86_400 => (s / 86_400, "day"),
        s if s < 60 * 86_400 => (s / (7 * 86_400), "week"),
        s if s < 365 * 86_400 => (s / (30 * 86_400), "month"),
        s => (s / (365 * 86_400), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// A `*`/`?` glob where neither matches `/`.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match (pattern.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], s)
                || (s.first().is_some_and(|c| *c != b'/') && glob(pattern, &s[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &s[1..]),
        _ => false,
    }
}

/// Keeps a row given its repository, tag and digest.
type RowFilter = Box<dyn Fn(&str, &str, &str) -> bool>;

#[derive(Serialize)]
struct Row {
    repository: String,
    tag: String,
    digest: String,
    id: String,
    created: String,
    size: String,
    name: String,
}

async fn list(ctx: &Context, c: &mut Clients, args: ImagesArgs) -> anyhow::Result<()> {
    let mut keep: Vec<RowFilter> = Vec::new();
    for f in &args.filter {
        match f.split_once('=') {
            Some(("reference", pattern)) => {
                let pattern = pattern.to_owned();
                keep.push(Box::new(move |repo, tag, _| {
                    glob(pattern.as_bytes(), repo.as_bytes())
                        || glob(pattern.as_bytes(), format!("{repo}:{tag}").as_bytes())
                }));
            }
            Some(("dangling", v @ ("true" | "false"))) => {
                let dangling = v == "true";
                keep.push(Box::new(move |_, tag, _| (tag == "<none>") == dangling));
            }
            _ => bail!("invalid filter {f:?}: expected reference=PATTERN or dangling=true|false"),
        }
    }
    let images = c
        .images
        .list(pb::ListImagesRequest::default())
        .await
        .map_err(rpc)?
        .into_inner()
        .images;
    let mut rows = Vec::new();
    for image in images {
        if !args.all && berth_build::exec::is_cache_record(&image.name) {
            continue;
        }
        let (repository, tag, digest) = split_name(&image.name);
        if !keep.iter().all(|k| k(&repository, &tag, &digest)) {
            continue;
        }
        let target = image.target.clone().unwrap_or_default();
        let digest = match digest.as_str() {
            "<none>" => target.digest.clone(),
            _ => digest,
        };
        let resolved = resolve(&mut c.content, &target).await.ok();
        let created = resolved
            .as_ref()
            .and_then(|r| r.config["created"].as_str())
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
            .or_else(|| image.created_at.and_then(|t| SystemTime::try_from(t).ok()));
        rows.push(Row {
            repository,
            tag,
            digest,
            id: short_id(
                resolved
                    .as_ref()
                    .map_or(&target.digest, |r| &r.config_digest),
            ),
            created: created.map(ago).unwrap_or_default(),
            size: resolved.map_or("-".into(), |r| human_size(r.size)),
            name: image.name,
        });
    }
    match ctx.output {
        Output::Json => println!("{}", output::json(&rows)?),
        Output::Table if args.quiet => {
            let mut seen = BTreeSet::new();
            for r in &rows {
                if seen.insert(&r.id) {
                    println!("{}", r.id);
                }
            }
        }
        Output::Table => {
            let mut headers = vec!["REPOSITORY", "TAG"];
            if args.digests {
                headers.push("DIGEST");
            }
            headers.extend(["IMAGE ID", "CREATED", "SIZE"]);
            let table = output::table(
                &headers,
                rows.iter().map(|r| {
                    let mut cells = vec![r.repository.clone(), r.tag.clone()];
                    if args.digests {
                        cells.push(r.digest.clone());
                    }
                    cells.extend([r.id.clone(), r.created.clone(), r.size.clone()]);
                    cells
                }),
            );
            println!("{table}");
        }
    }
    Ok(())
}

fn human_size(bytes: i64) -> String {
    let b = bytes as f64;
    match bytes {
        n if n < 1000 => format!("{n}B"),
        n if n < 1_000_000 => format!("{:.3}kB", b / 1e3),
        n if n < 1_000_000_000 => format!("{:.3}MB", b / 1e6),
        _ => format!("{:.3}GB", b / 1e9),
    }
    .replace(".000", "")
}

async fn inspect(content: &mut ContentClient<Channel>, image: pb::Image) -> Value {
    let target = image.target.clone().unwrap_or_default();
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .map(|t| humantime::format_rfc3339(t).to_string())
    };
    let mut out = json!({
        "Name": image.name,
        "Target": {
            "mediaType": target.media_type,
            "digest": target.digest,
            "size": target.size,
        },
        "Labels": image.labels.iter().collect::<BTreeMap<_, _>>(),
        "CreatedAt": time(image.created_at),
        "UpdatedAt": time(image.updated_at),
    });
    match resolve(content, &target).await {
        Ok(r) => {
            out["Id"] = json!(r.config_digest);
            out["Size"] = json!(r.size);
            out["Manifest"] = r.manifest;
            out["Config"] = r.config;
        }
        Err(e) => out["Error"] = json!(format!("{e:#}")),
    }
    out
}

/// Names and target digests of the images the namespace's containers use; None when the tasks
/// service cannot be reached.
async fn images_in_use(ctx: &Context) -> Option<Vec<(String, String, String)>> {
    let channel = ctx.connect(Service::Tasks).await.ok()?;
    let list = ContainersClient::new(channel)
        .list(containers::ListContainersRequest::default())
        .await
        .ok()?;
    Some(
        list.into_inner()
            .containers
            .into_iter()
            .map(|c| (c.id, c.image, c.image_digest))
            .collect(),
    )
}

/// The container (id) using `image`, if any.
fn user_of<'a>(in_use: &'a [(String, String, String)], image: &pb::Image) -> Option<&'a str> {
    let digest = image.target.as_ref().map_or("", |t| t.digest.as_str());
    in_use
        .iter()
        .find(|(_, name, d)| {
            (!name.is_empty() && (name == &image.name || familiar(&image.name) == name))
                || (!d.is_empty() && d == digest)
        })
        .map(|(id, _, _)| id.as_str())
}

async fn all_images(c: &mut Clients) -> anyhow::Result<Vec<pb::Image>> {
    Ok(c.images
        .list(pb::ListImagesRequest::default())
        .await
        .map_err(rpc)?
        .into_inner()
        .images)
}

/// Deletes image records; prints what `docker rmi` prints. Content goes once nothing uses it.
async fn delete_records(c: &mut Clients, names: &[pb::Image]) -> anyhow::Result<()> {
    for image in names {
        c.images
            .delete(pb::DeleteImageRequest {
                name: image.name.clone(),
                sync: true,
            })
            .await
            .map_err(rpc)?;
        println!("Untagged: {}", familiar(&image.name));
    }
    let left = all_images(c).await?;
    let mut gone = BTreeSet::new();
    for image in names {
        let target = image.target.as_ref().map_or("", |t| t.digest.as_str());
        if !left
            .iter()
            .any(|i| i.target.as_ref().is_some_and(|t| t.digest == target))
            && gone.insert(target.to_owned())
        {
            println!("Deleted: {target}");
        }
    }
    Ok(())
}

/// Whether `s` looks like an image ID: `sha256:<hex>` or a hex prefix.
fn id_prefix(s: &str) -> Option<&str> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    (!hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(hex)
}

/// `berthctl rmi [-f] NAME|ID...`: untags names; an ID removes every name of that image, which
/// needs -f when there are several (as Docker does). An image a container uses needs -f.
async fn remove(ctx: &Context, c: &mut Clients, args: RmArgs) -> anyhow::Result<()> {
    let in_use = images_in_use(ctx).await.unwrap_or_default();
    for arg in &args.names {
        let by_name = c
            .images
            .get(pb::GetImageRequest { name: arg.clone() })
            .await;
        let targets = match by_name {
            Ok(r) => r.into_inner().image.into_iter().collect::<Vec<_>>(),
            Err(e)
                if e.code() == tonic::Code::NotFound
                    || e.code() == tonic::Code::InvalidArgument =>
            {
                let Some(prefix) = id_prefix(arg) else {
                    return Err(rpc(e));
                };
                let mut matched = Vec::new();
                let mut ids = BTreeSet::new();
                for image in all_images(c).await? {
                    let target = image.target.clone().unwrap_or_default();
                    let id = resolve(&mut c.content, &target)
                        .await
                        .map_or(target.digest.clone(), |r| r.config_digest);
                    let hex = |d: &str| d.split_once(':').map_or(d, |(_, h)| h).to_owned();
                    if hex(&id).starts_with(prefix) || hex(&target.digest).starts_with(prefix) {
                        ids.insert(id);
                        matched.push(image);
                    }
                }
                match ids.len() {
                    0 => bail!("No such image: {arg}"),
                    1 => {}
                    _ => bail!(
                        "image ID prefix {arg:?} is ambiguous: it matches {} images",
                        ids.len()
                    ),
                }
                if matched.len() > 1 && !args.force {
                    bail!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in \
                         multiple repositories",
                        short_id(ids.first().map_or(arg.as_str(), String::as_str))
                    );
                }
                matched
            }
            Err(e) => return Err(rpc(e)),
        };
        if !args.force
            && let Some((image, id)) = targets
                .iter()
                .find_map(|i| user_of(&in_use, i).map(|id| (i, id)))
        {
            bail!(
                "conflict: unable to remove repository reference {:?} (must force) - container {} \
                 is using its referenced image",
                familiar(&image.name),
                short_id(id)
            );
        }
        delete_records(c, &targets).await?;
    }
    Ok(())
}

/// Sum of the sizes of the namespace's blobs.
async fn content_size(c: &mut Clients) -> anyhow::Result<i64> {
    let list = c
        .content
        .list(berth_api::berth::content::v1::ListContentRequest::default())
        .await
        .map_err(rpc)?;
    let mut total = 0;
    let mut stream = list.into_inner();
    while let Some(r) = tokio_stream::StreamExt::next(&mut stream).await {
        total += r.map_err(rpc)?.info.iter().map(|i| i.size).sum::<i64>();
    }
    Ok(total)
}

/// `berthctl image prune [-a] [-f]`: removes dangling images (digest-only names), or with -a
/// every image no container uses (only dangling ones, with a warning, when the tasks service
/// cannot say which are used).
async fn prune(ctx: &Context, c: &mut Clients, all: bool, force: bool) -> anyhow::Result<()> {
    let in_use = images_in_use(ctx).await;
    let all = match (all, &in_use) {
        (true, None) => {
            eprintln!(
                "WARNING! The tasks service is not reachable, so which images containers use is \
                 unknown: removing dangling images only."
            );
            false
        }
        (all, _) => all,
    };
    if !force {
        let what = match all {
            true => "all images without at least one container associated to them",
            false => "all dangling images",
        };
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        if std::io::stdin().is_terminal() {
            std::io::stdin().lock().read_line(&mut answer)?;
        }
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!();
            return Ok(());
        }
    }
    let in_use = in_use.unwrap_or_default();
    let images = all_images(c).await?;
    let doomed: Vec<pb::Image> = images
        .into_iter()
        .filter(|i| all || split_name(&i.name).1 == "<none>")
        .filter(|i| user_of(&in_use, i).is_none())
        .collect();
    let before = content_size(c).await?;
    if !doomed.is_empty() {
        println!("Deleted Images:");
        delete_records(c, &doomed).await?;
        println!();
    }
    let after = content_size(c).await?;
    println!(
        "Total reclaimed space: {}",
        human_size((before - after).max(0))
    );
    Ok(())
}

/// `berthctl image history NAME`: the config's history, newest first, Docker's columns; an
/// entry that made a layer shows that layer's (compressed) size from the manifest.
async fn history(ctx: &Context, c: &mut Clients, args: HistoryArgs) -> anyhow::Result<()> {
    let image = get(&mut c.images, &args.name).await?;
    let target = image.target.clone().unwrap_or_default();
    let r = resolve(&mut c.content, &target).await?;
    let mut layers = r.manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["size"].as_i64().unwrap_or_default());
    let mut rows: Vec<(Value, i64)> = r.config["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let size = match h["empty_layer"].as_bool().unwrap_or(false) {
                true => 0,
                false => layers.next().unwrap_or_default(),
            };
            (h.clone(), size)
        })
        .collect();
    rows.reverse();
    let id = match args.no_trunc {
        true => r.config_digest.clone(),
        false => short_id(&r.config_digest),
    };
    let mut out = Vec::new();
    for (i, (h, size)) in rows.iter().enumerate() {
        let created = h["created"]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok());
        let created_by = h["created_by"]
            .as_str()
            .unwrap_or_default()
            .replace('\t', " ");
        let created_by = match args.no_trunc || created_by.chars().count() <= 45 {
            true => created_by,
            false => format!("{}…", created_by.chars().take(44).collect::<String>()),
        };
        let since = match args.human {
            true => created.map(ago).unwrap_or_default(),
            false => h["created"].as_str().unwrap_or_default().to_owned(),
        };
        let size = match args.human {
            true => human_size(*size),
            false => size.to_string(),
        };
        out.push(json!({
            "ID": if i == 0 { id.clone() } else { "<missing>".into() },
            "CreatedSince": since,
            "CreatedAt": h["created"],
            "CreatedBy": created_by,
            "Size": size,
            "Comment": h["comment"].as_str().unwrap_or_default(),
        }));
    }
    let format = args.format.as_deref().or(match ctx.output {
        Output::Json => Some("json"),
        Output::Table => None,
    });
    match format {
        _ if args.quiet => {
            for row in &out {
                println!("{}", row["ID"].as_str().unwrap_or_default());
            }
        }
        Some("json") => println!("{}", output::json(&out)?),
        Some(template) if template != "table" => {
            let template = match output::table_template(template) {
                Some((header, template)) => {
                    println!("{header}");
                    template
                }
                None => template,
            };
            for row in &out {
                let Value::Object(fields) = row else { continue };
                println!("{}", output::render(template, fields)?);
            }
        }
        _ => {
            let cell = |row: &Value, k: &str| row[k].as_str().unwrap_or_default().to_owned();
            let table = output::table(
                &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                out.iter().map(|row| {
                    ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"].map(|k| cell(row, k))
                }),
            );
            println!("{table}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_like_docker() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            (
                "docker.io/library/busybox:latest".to_owned(),
                ("busybox", "latest", "<none>"),
            ),
            (
                "localhost:5000/a/b:1".to_owned(),
                ("localhost:5000/a/b", "1", "<none>"),
            ),
            (format!("docker.io/u/x@{d}"), ("u/x", "<none>", d)),
        ];
        for (name, (repo, tag, digest)) in cases {
            assert_eq!(
                split_name(&name),
                (repo.to_owned(), tag.to_owned(), digest.to_owned())
            );
        }
    }

    #[test]
    fn glob_does_not_cross_slashes() {
        assert!(glob(b"busy*", b"busybox"));
        assert!(glob(b"busybox:l?test", b"busybox:latest"));
        assert!(!glob(b"*", b"a/b"));
        assert!(glob(b"*/*", b"a/b"));
        assert!(!glob(b"busy", b"busybox"));
    }

    #[test]
    fn sizes_and_ages_read_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(1_234_567), "1.235MB");
        let hours = SystemTime::now() - Duration::from_secs(7200);
        assert_eq!(ago(hours), "2 hours ago");
    }
}
