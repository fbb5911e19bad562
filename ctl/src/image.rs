//! `berthctl images`, `rmi`, `tag`, `image inspect` and `load`: image records, Docker style.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::leases::v1 as leases;
use berth_api::berth::leases::v1::leases_client::LeasesClient;
use berth_api::berth::types::v1::Descriptor;
use berth_api::client::Channel;
use serde::Serialize;
use serde_json::{Value, json};

use crate::content::{self, Upload, rpc};
use crate::context::{Context, Output};
use crate::output;

/// Largest manifest or config read to describe an image.
const MAX_JSON: usize = 4 << 20;
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Media types whose blobs list other blobs.
const PARENT_TYPES: [&str; 4] = [
    INDEX_TYPES[0],
    INDEX_TYPES[1],
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

#[derive(clap::Args)]
pub struct ImagesArgs {
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
    Rm {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

impl ImageCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ImageCommand::Images(_) => "images",
            ImageCommand::Inspect { .. } => "image inspect",
            ImageCommand::Rm { .. } => "rmi",
        }
    }
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Directory holding an OCI image layout (oci-layout, index.json, blobs/).
    dir: PathBuf,
    /// Name images as BASE:<ref name> when the layout's ref names are bare tags.
    #[arg(long)]
    base_name: Option<String>,
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
        ImageCommand::Rm { names } => {
            for name in names {
                let image = get(&mut c.images, &name).await?;
                c.images
                    .delete(pb::DeleteImageRequest {
                        name: image.name.clone(),
                        sync: true,
                    })
                    .await
                    .map_err(rpc)?;
                println!("Untagged: {}", familiar(&image.name));
            }
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
fn familiar(name: &str) -> &str {
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
struct Resolved {
    config_digest: String,
    config: Value,
    manifest: Value,
    size: i64,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn resolve(
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

/// `berthctl load DIR`: stores an OCI image layout's blobs (verified) under a lease and records
/// the images its index names.
pub async fn load(ctx: &Context, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let mut c = clients(ctx).await?;
    let index: Value = read_json(&args.dir.join("index.json"))?;
    let mut lease_client = LeasesClient::new(ctx.connect(Service::Images).await?);
    let lease = lease_client
        .create(leases::CreateRequest {
            labels: HashMap::from([("berth.io/purpose".into(), "load".into())]),
            expires_at: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .lease
        .context("the service answered without a lease")?;
    let result = load_index(&mut c, &args, &index, &lease.id).await;
    lease_client
        .delete(leases::DeleteRequest {
            id: lease.id,
            sync: false,
        })
        .await
        .map_err(rpc)?;
    for name in result? {
        println!("Loaded image: {}", familiar(&name));
    }
    Ok(ExitCode::SUCCESS)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("{} is not valid JSON", path.display()))
}

async fn load_index(
    c: &mut Clients,
    args: &LoadArgs,
    index: &Value,
    lease: &str,
) -> anyhow::Result<Vec<String>> {
    let manifests = index["manifests"]
        .as_array()
        .context("index.json lists no manifests")?;
    let mut names = Vec::new();
    for m in manifests {
        let target = descriptor(m)?;
        upload_tree(c, &args.dir, &target, lease).await?;
        let annotations = &m["annotations"];
        let name = match (
            annotations[ANNOTATION_IMAGE_NAME].as_str(),
            annotations[ANNOTATION_REF_NAME].as_str(),
        ) {
            (Some(full), _) => full.to_owned(),
            (None, Some(tag)) => match &args.base_name {
                Some(base) => format!("{base}:{tag}"),
                None => tag.to_owned(),
            },
            (None, None) => match &args.base_name {
                Some(base) => format!("{base}@{}", target.digest),
                None => continue,
            },
        };
        let image = pb::Image {
            name: name.clone(),
            target: Some(target.clone()),
            ..Default::default()
        };
        let created = c
            .images
            .create(pb::CreateImageRequest {
                image: Some(image.clone()),
            })
            .await;
        let recorded = match created {
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                c.images
                    .update(pb::UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .image
            }
            other => other.map_err(rpc)?.into_inner().image,
        };
        names.push(recorded.map_or(name, |i| i.name));
    }
    Ok(names)
}

fn descriptor(v: &Value) -> anyhow::Result<Descriptor> {
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: v["digest"]
            .as_str()
            .context("descriptor without digest")?
            .to_owned(),
        size: v["size"].as_i64().context("descriptor without size")?,
        ..Default::default()
    })
}

/// Uploads a blob and, for indexes and manifests, everything it lists (children first).
async fn upload_tree(
    c: &mut Clients,
    dir: &Path,
    root: &Descriptor,
    lease: &str,
) -> anyhow::Result<()> {
    let mut stack = vec![(root.clone(), false)];
    while let Some((d, expanded)) = stack.pop() {
        let (alg, hex) = d
            .digest
            .split_once(':')
            .with_context(|| format!("invalid digest {:?}", d.digest))?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || alg.contains(['/', '.']) {
            bail!("invalid digest {:?}", d.digest);
        }
        let path = dir.join("blobs").join(alg).join(hex);
        if PARENT_TYPES.contains(&d.media_type.as_str()) && !expanded {
            let v = read_json(&path)?;
            stack.push((d.clone(), true));
            let children = v["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(v.get("config"))
                .chain(v["layers"].as_array().into_iter().flatten());
            for child in children {
                stack.push((descriptor(child)?, false));
            }
            continue;
        }
        Upload {
            reference: &format!("load-{}", d.digest),
            expected: Some(&d.digest),
            total: Some(d.size),
            labels: HashMap::new(),
            lease: Some(lease),
        }
        .send(&mut c.content, &path)
        .await
        .with_context(|| format!("storing {}", d.digest))?;
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
