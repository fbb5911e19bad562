//! The CRI ImageService over berth's images service, in the [`NAMESPACE`] namespace.
//!
//! A CRI image is one image config with every image record whose target resolves to it (for
//! this host's platform): its id is the config's digest (as containerd's is), the records' names
//! are its repo tags and `<repository>@<target digest>` its repo digests. [`Images`] owns that
//! view (with a cache of what each target digest resolves to: content is immutable) and
//! [`ImageApi`] is the thin tonic adapter over it. Registry mirrors are the images service's
//! `[images.mirrors]`; PullImage adds a watchdog, `[cri] pull_progress_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use berth_api::Service;
use berth_api::berth::content::v1::ReadContentRequest;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::berth::images::v1 as ipb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::snapshots::v1 as spb;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::config::{Config, SnapshotDriver};
use berth_api::runtime::v1::image_service_server::ImageService;
use berth_api::runtime::v1::*;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use tonic::{Code, Request, Response, Status};

use crate::runtime::BoxStream;
use crate::{Cri, NAMESPACE};

/// Label of image records that must not be garbage collected by the kubelet (containerd's).
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";
/// Label set on images pulled through the CRI (containerd's), value `managed`.
pub const MANAGED_LABEL: &str = "io.cri-containerd.image";
/// Largest manifest, index or config read.
const MAX_JSON: usize = 4 << 20;

/// What an image record's target resolves to for this host's platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The config's digest: the CRI image id.
    pub id: String,
    /// Digest of the platform manifest.
    pub manifest: String,
    /// Bytes of config and layers, as stored (compressed).
    pub size: u64,
    /// The image config (OCI `config.json` of the image).
    pub config: Value,
}

impl Resolved {
    /// The chain id of the image's top layer: the snapshot to use as a container's parent.
    pub fn chain_id(&self) -> String {
        let diff_ids = self.config["rootfs"]["diff_ids"].as_array();
        let mut chain = String::new();
        for diff_id in diff_ids.into_iter().flatten().filter_map(Value::as_str) {
            chain = match chain.is_empty() {
                true => diff_id.to_owned(),
                false => format!(
                    "sha256:{}",
                    hex::encode(sha2::Sha256::digest(format!("{chain} {diff_id}")))
                ),
            };
        }
        chain
    }
}

/// A CRI image: one config and the records that name it.
#[derive(Debug, Clone)]
pub struct CriImage {
    /// What the records' targets resolve to.
    pub resolved: Resolved,
    /// The image records, sorted by name.
    pub records: Vec<ipb::Image>,
}

impl CriImage {
    /// The CRI message for this image.
    pub fn message(&self) -> Image {
        let repo_tags: BTreeSet<String> = self
            .records
            .iter()
            .filter(|r| !r.name.contains('@') && r.name != self.resolved.id)
            .map(|r| r.name.clone())
            .collect();
        let repo_digests: BTreeSet<String> = self
            .records
            .iter()
            .filter(|r| r.name != self.resolved.id)
            .filter_map(|r| {
                Some(format!(
                    "{}@{}",
                    repository(&r.name),
                    r.target.as_ref()?.digest
                ))
            })
            .collect();
        let (uid, username) = user(&self.resolved.config);
        Image {
            id: self.resolved.id.clone(),
            repo_tags: repo_tags.into_iter().collect(),
            repo_digests: repo_digests.into_iter().collect(),
            size: self.resolved.size,
            uid: uid.map(|value| Int64Value { value }),
            username,
            spec: Some(ImageSpec {
                image: self.resolved.id.clone(),
                ..Default::default()
            }),
            pinned: self
                .records
                .iter()
                .any(|r| r.labels.get(PINNED_LABEL).is_some_and(|v| v == "pinned")),
        }
    }

    /// The `info` map of a verbose ImageStatus: one JSON document under `info`.
    fn info(&self) -> HashMap<String, String> {
        let info = json!({
            "id": self.resolved.id,
            "manifest": self.resolved.manifest,
            "chainID": self.resolved.chain_id(),
            "names": self.records.iter().map(|r| &r.name).collect::<Vec<_>>(),
            "imageSpec": self.resolved.config,
        });
        HashMap::from([("info".to_owned(), info.to_string())])
    }
}

/// `docker.io/library/busybox:1.36@sha256:..` -> `docker.io/library/busybox`.
fn repository(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => &name[..slash + i],
        None => name,
    }
}

/// The uid (if the config's User is numeric) or the user name the image runs as.
fn user(config: &Value) -> (Option<i64>, String) {
    let user = config["config"]["User"].as_str().unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    match user.parse::<i64>() {
        _ if user.is_empty() => (None, String::new()),
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_owned()),
    }
}

/// The host's architecture as OCI names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A reference the CRI passes, as the image id it denotes or a normalized name.
enum Lookup {
    /// An image id (config digest).
    Id(String),
    /// A normalized image name (tag and/or digest).
    Name(String),
}

fn lookup(reference: &str) -> Result<Lookup, Status> {
    let r = reference.trim();
    if r.is_empty() {
        return Err(Status::invalid_argument("image reference is empty"));
    }
    let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(hex) = r.strip_prefix("sha256:")
        && hex64(hex)
    {
        return Ok(Lookup::Id(r.to_ascii_lowercase()));
    }
    if hex64(r) {
        return Ok(Lookup::Id(format!("sha256:{}", r.to_ascii_lowercase())));
    }
    berth_images::reference::normalize(r)
        .map(Lookup::Name)
        .map_err(|e| Status::invalid_argument(format!("invalid image reference {r:?}: {e}")))
}

/// The registry credentials of a PullImage request.
fn registry_auth(auth: Option<AuthConfig>) -> Result<Option<ipb::RegistryAuth>, Status> {
    let Some(a) = auth else { return Ok(None) };
    let (mut username, mut password) = (a.username, a.password);
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| d.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
        let Some((u, p)) = decoded else {
            return Err(Status::invalid_argument(
                "auth.auth is not base64 of \"username:password\"",
            ));
        };
        (username, password) = (u, p);
    }
    Ok(Some(ipb::RegistryAuth {
        username,
        password,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }))
}

/// Reads a Pull's progress until its image. Fails with DeadlineExceeded when `limit` passes
/// without a message while no layer is unpacking (unpacking reports only its start and end).
async fn watch<S>(mut stream: S, name: &str, limit: Option<Duration>) -> Result<ipb::Image, Status>
where
    S: futures::Stream<Item = Result<ipb::PullResponse, Status>> + Unpin,
{
    let context = |e: Status| Status::new(e.code(), format!("pull {name}: {}", e.message()));
    let mut unpacking = HashSet::new();
    loop {
        let next = match limit {
            Some(limit) if unpacking.is_empty() => tokio::time::timeout(limit, stream.next())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "pull {name}: no data arrived for {:?} (cri.pull_progress_timeout)",
                        limit
                    ))
                })?,
            _ => stream.next().await,
        };
        let Some(message) = next else {
            return Err(Status::internal(format!(
                "pull {name}: the images service ended the pull without an image"
            )));
        };
        let message = message.map_err(context)?;
        for p in &message.progress {
            match p.status() {
                ipb::ProgressStatus::Unpacking => unpacking.insert(p.r#ref.clone()),
                ipb::ProgressStatus::Unpacked => unpacking.remove(&p.r#ref),
                _ => false,
            };
        }
        if let Some(image) = message.image {
            return Ok(image);
        }
    }
}

/// The CRI's view of the images service's images (see the module doc).
pub struct Images {
    images_socket: PathBuf,
    snapshots_socket: PathBuf,
    /// Where the snapshotter keeps its data (the image filesystem's mountpoint).
    snapshots_dir: PathBuf,
    /// Where the content store keeps blobs.
    content_dir: PathBuf,
    progress_timeout: Option<Duration>,
    /// Target digest -> what it resolves to.
    cache: Mutex<HashMap<String, Resolved>>,
}

impl Images {
    /// The view over the services `config` names.
    pub fn new(config: &Config) -> Images {
        let driver = match config.snapshots.driver {
            SnapshotDriver::Overlay => "overlay",
            SnapshotDriver::Copy => "copy",
        };
        Images {
            images_socket: Service::Images.socket(&config.state),
            snapshots_socket: Service::Snapshots.socket(&config.state),
            snapshots_dir: config.service_root(Service::Snapshots.name()).join(driver),
            content_dir: config.service_root(Service::Images.name()).join("content"),
            progress_timeout: Some(config.cri.pull_progress_timeout)
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            cache: Mutex::default(),
        }
    }

    async fn channel(
        &self,
        socket: &std::path::Path,
        what: &str,
    ) -> Result<berth_api::client::Channel, Status> {
        berth_api::client::connect(socket, NAMESPACE)
            .await
            .map_err(|e| Status::unavailable(format!("{what} service: {e}")))
    }

    /// Reads a whole JSON blob from the content store.
    async fn read_json(
        content: &mut ContentClient<berth_api::client::Channel>,
        digest: &str,
    ) -> Result<Value, Status> {
        let mut stream = content
            .read(ReadContentRequest {
                digest: digest.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
            if data.len() > MAX_JSON {
                return Err(Status::failed_precondition(format!(
                    "{digest} is larger than {MAX_JSON} bytes"
                )));
            }
        }
        serde_json::from_slice(&data)
            .map_err(|e| Status::failed_precondition(format!("{digest} is not JSON: {e}")))
    }

    /// What `target` resolves to for this host (from the cache when it has been seen).
    async fn resolve(
        &self,
        content: &mut ContentClient<berth_api::client::Channel>,
        target: &berth_api::berth::types::v1::Descriptor,
    ) -> Result<Resolved, Status> {
        if let Some(r) = self.lock().get(&target.digest) {
            return Ok(r.clone());
        }
        let mut manifest_digest = target.digest.clone();
        let mut manifest = Self::read_json(content, &manifest_digest).await?;
        if let Some(entries) = manifest["manifests"].as_array() {
            let chosen = entries
                .iter()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == host_arch()
                })
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "index {} has no manifest for linux/{}",
                        target.digest,
                        host_arch()
                    ))
                })?;
            manifest_digest = chosen["digest"].as_str().unwrap_or_default().to_owned();
            manifest = Self::read_json(content, &manifest_digest).await?;
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| {
                Status::failed_precondition(format!("manifest {manifest_digest} has no config"))
            })?
            .to_owned();
        let config = Self::read_json(content, &config_digest).await?;
        let layers: u64 = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["size"].as_u64())
            .sum();
        let resolved = Resolved {
            id: config_digest,
            manifest: manifest_digest,
            size: layers + manifest["config"]["size"].as_u64().unwrap_or_default(),
            config,
        };
        self.lock().insert(target.digest.clone(), resolved.clone());
        Ok(resolved)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resolved>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every CRI image, sorted by id. Records whose content is not (all) here are left out.
    pub async fn list(&self) -> Result<Vec<CriImage>, Status> {
        let channel = self.channel(&self.images_socket, "images").await?;
        let records = ImagesClient::new(channel.clone())
            .list(ipb::ListImagesRequest::default())
            .await?
            .into_inner()
            .images;
        let mut content = ContentClient::new(channel);
        let mut by_id: BTreeMap<String, CriImage> = BTreeMap::new();
        for record in records {
            let Some(target) = &record.target else {
                continue;
            };
            let resolved = match self.resolve(&mut content, target).await {
                Ok(r) => r,
                Err(e) if matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => {
                    tracing::debug!(image = %record.name, error = %e.message(), "not a CRI image here");
                    continue;
                }
                Err(e) => return Err(e),
            };
            by_id
                .entry(resolved.id.clone())
                .or_insert_with(|| CriImage {
                    resolved,
                    records: Vec::new(),
                })
                .records
                .push(record);
        }
        Ok(by_id.into_values().collect())
    }

    /// The image `reference` names: an image id (`sha256:<hex>` or the bare hex), a name
    /// (normalized Docker style, e.g. `busybox` is `docker.io/library/busybox:latest`) or a
    /// repo digest. None if there is no such image; InvalidArgument if `reference` is not one.
    pub async fn find(&self, reference: &str) -> Result<Option<CriImage>, Status> {
        let wanted = lookup(reference)?;
        let all = self.list().await?;
        Ok(match wanted {
            Lookup::Id(id) => all.into_iter().find(|i| i.resolved.id == id),
            Lookup::Name(name) => {
                let by_digest = name.split_once('@').map(|(_, d)| (repository(&name), d));
                let mut all = all.into_iter();
                let named = |i: &CriImage| i.records.iter().any(|r| r.name == name);
                let digested = |i: &CriImage| {
                    by_digest.is_some_and(|(repo, digest)| {
                        i.records.iter().any(|r| {
                            repository(&r.name) == repo
                                && r.target.as_ref().is_some_and(|t| t.digest == digest)
                        })
                    })
                };
                all.find(|i| named(i) || digested(i))
            }
        })
    }

    /// Pulls `reference` with `auth` and unpacks it into the default snapshotter; returns the
    /// image id. Fails with DeadlineExceeded when no data arrived for the progress timeout
    /// while nothing was unpacking.
    pub async fn pull(&self, reference: &str, auth: Option<AuthConfig>) -> Result<String, Status> {
        let name = match lookup(reference)? {
            Lookup::Name(name) => name,
            Lookup::Id(id) => {
                return Err(Status::invalid_argument(format!(
                    "cannot pull {id}: an image id names no registry, pull a name"
                )));
            }
        };
        let request = ipb::PullRequest {
            reference: name.clone(),
            registry: Some(ipb::RegistryOptions {
                auth: registry_auth(auth)?,
                ..Default::default()
            }),
            labels: HashMap::from([(MANAGED_LABEL.to_owned(), "managed".to_owned())]),
            unpack: true,
            ..Default::default()
        };
        let channel = self.channel(&self.images_socket, "images").await?;
        let context = |e: Status| Status::new(e.code(), format!("pull {name}: {}", e.message()));
        let stream = ImagesClient::new(channel.clone())
            .pull(request)
            .await
            .map_err(context)?
            .into_inner();
        let image = watch(stream, &name, self.progress_timeout).await?;
        let target = image
            .target
            .ok_or_else(|| Status::internal(format!("pull {name}: the image has no target")))?;
        let resolved = self
            .resolve(&mut ContentClient::new(channel), &target)
            .await?;
        Ok(resolved.id)
    }

    /// Removes every record of the image `reference` names; nothing to do if there is none.
    pub async fn remove(&self, reference: &str) -> Result<(), Status> {
        let Some(image) = self.find(reference).await? else {
            return Ok(());
        };
        let mut client = ImagesClient::new(self.channel(&self.images_socket, "images").await?);
        for record in image.records {
            match client
                .delete(ipb::DeleteImageRequest {
                    name: record.name.clone(),
                    sync: false,
                })
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => {
                    return Err(Status::new(
                        e.code(),
                        format!("remove {}: {}", record.name, e.message()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Usage of the image filesystem (the snapshotter's directory: the snapshots of this
    /// namespace) and of the content store (the blobs of this namespace).
    pub async fn fs_info(&self) -> Result<ImageFsInfoResponse, Status> {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        let usage = |dir: &PathBuf, bytes: u64, inodes: u64| FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: dir.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        let mut snapshots =
            SnapshotsClient::new(self.channel(&self.snapshots_socket, "snapshots").await?);
        let mut listing = snapshots
            .list(spb::ListSnapshotsRequest::default())
            .await?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(page) = listing.next().await {
            keys.extend(page?.info.into_iter().map(|i| i.name));
        }
        let (mut bytes, mut inodes) = (0u64, 0u64);
        for key in keys {
            match snapshots
                .usage(spb::UsageRequest {
                    key,
                    ..Default::default()
                })
                .await
            {
                Ok(u) => {
                    let u = u.into_inner();
                    bytes += u.size.max(0) as u64;
                    inodes += u.inodes.max(0) as u64;
                }
                // Removed since it was listed.
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let snapshots_usage = usage(&self.snapshots_dir, bytes, inodes);
        let mut content = ContentClient::new(self.channel(&self.images_socket, "images").await?);
        let mut listing = content
            .list(berth_api::berth::content::v1::ListContentRequest::default())
            .await?
            .into_inner();
        let (mut blob_bytes, mut blobs) = (0u64, 0u64);
        while let Some(page) = listing.next().await {
            for info in page?.info {
                blob_bytes += info.size.max(0) as u64;
                blobs += 1;
            }
        }
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![
                snapshots_usage.clone(),
                usage(&self.content_dir, blob_bytes, blobs),
            ],
            container_filesystems: vec![snapshots_usage],
        })
    }
}

/// The ImageService over the shared [`Cri`] state.
pub struct ImageApi {
    cri: Arc<Cri>,
}

impl ImageApi {
    /// The service over `cri`.
    pub fn new(cri: Arc<Cri>) -> ImageApi {
        ImageApi { cri }
    }

    /// The images a ListImages or StreamImages filter selects.
    async fn select(&self, filter: Option<ImageFilter>) -> Result<Vec<Image>, Status> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        Ok(match wanted {
            Some(reference) => self
                .cri
                .images
                .find(&reference)
                .await?
                .into_iter()
                .map(|i| i.message())
                .collect(),
            None => self
                .cri
                .images
                .list()
                .await?
                .iter()
                .map(CriImage::message)
                .collect(),
        })
    }
}

fn spec_image(spec: Option<ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image must name an image"))
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let images = self.select(request.into_inner().filter).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    type StreamImagesStream = BoxStream<StreamImagesResponse>;
    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.select(request.into_inner().filter).await?;
        Ok(Response::new(crate::runtime::pages(images, |images| {
            StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let reference = spec_image(request.image)?;
        let Some(image) = self.cri.images.find(&reference).await? else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        Ok(Response::new(ImageStatusResponse {
            image: Some(image.message()),
            info: if request.verbose {
                image.info()
            } else {
                HashMap::new()
            },
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let reference = spec_image(request.image)?;
        let image_ref = self.cri.images.pull(&reference, request.auth).await?;
        Ok(Response::new(PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let reference = spec_image(request.into_inner().image)?;
        self.cri.images.remove(&reference).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let _ = request;
        Ok(Response::new(self.cri.images.fs_info().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest() {
        assert_eq!(
            repository("docker.io/library/busybox:1.36"),
            "docker.io/library/busybox"
        );
        assert_eq!(
            repository("127.0.0.1:5000/app@sha256:ab"),
            "127.0.0.1:5000/app"
        );
        assert_eq!(
            repository("127.0.0.1:5000/app:v1@sha256:ab"),
            "127.0.0.1:5000/app"
        );
        assert_eq!(repository("127.0.0.1:5000/app"), "127.0.0.1:5000/app");
    }

    #[test]
    fn user_is_a_uid_or_a_name() {
        let of = |u: &str| user(&json!({"config": {"User": u}}));
        assert_eq!(of(""), (None, String::new()));
        assert_eq!(of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(of("nobody"), (None, "nobody".to_owned()));
        assert_eq!(user(&json!({})), (None, String::new()));
    }

    #[test]
    fn lookups() {
        let d = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(
            matches!(lookup(&format!("sha256:{d}")), Ok(Lookup::Id(id)) if id == format!("sha256:{d}"))
        );
        assert!(matches!(lookup(d), Ok(Lookup::Id(id)) if id == format!("sha256:{d}")));
        assert!(
            matches!(lookup("busybox"), Ok(Lookup::Name(n)) if n == "docker.io/library/busybox:latest")
        );
        assert_eq!(
            lookup("").err().map(|e| e.code()),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            lookup("UPPER/Case").err().map(|e| e.code()),
            Some(Code::InvalidArgument)
        );
    }

    #[test]
    fn auth_field_is_decoded() {
        let auth = |a: AuthConfig| registry_auth(Some(a));
        let basic = base64::engine::general_purpose::STANDARD.encode("u:p:q");
        let got = auth(AuthConfig {
            auth: basic,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!((got.username.as_str(), got.password.as_str()), ("u", "p:q"));
        let bad = auth(AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        });
        assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
        assert!(registry_auth(None).unwrap().is_none());
    }

    fn progress(status: ipb::ProgressStatus) -> Result<ipb::PullResponse, Status> {
        Ok(ipb::PullResponse {
            progress: vec![ipb::Progress {
                r#ref: "sha256:l".into(),
                status: status as i32,
                ..Default::default()
            }],
            image: None,
        })
    }

    fn done() -> Result<ipb::PullResponse, Status> {
        Ok(ipb::PullResponse {
            progress: vec![],
            image: Some(ipb::Image {
                name: "n".into(),
                ..Default::default()
            }),
        })
    }

    /// A stream of `items`, each after its delay.
    fn paced(
        items: Vec<(u64, Result<ipb::PullResponse, Status>)>,
    ) -> impl futures::Stream<Item = Result<ipb::PullResponse, Status>> + Unpin {
        Box::pin(futures::stream::iter(items).then(|(ms, item)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            item
        }))
    }

    #[tokio::test]
    async fn the_watchdog_fires_on_silence_but_not_while_unpacking() {
        let limit = Some(Duration::from_millis(150));
        let stalled = paced(vec![
            (0, progress(ipb::ProgressStatus::Downloading)),
            (600, done()),
        ]);
        let e = watch(stalled, "x", limit).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(e.message().contains("cri.pull_progress_timeout"), "{e:?}");
        let unpacking = paced(vec![
            (0, progress(ipb::ProgressStatus::Unpacking)),
            (400, progress(ipb::ProgressStatus::Unpacked)),
            (50, done()),
        ]);
        assert_eq!(watch(unpacking, "x", limit).await.unwrap().name, "n");
        let slow_but_steady = paced(vec![
            (100, progress(ipb::ProgressStatus::Downloading)),
            (100, progress(ipb::ProgressStatus::Downloading)),
            (100, done()),
        ]);
        assert!(watch(slow_but_steady, "x", limit).await.is_ok());
        let unlimited = paced(vec![(300, done())]);
        assert!(watch(unlimited, "x", None).await.is_ok());
        let failed = paced(vec![(0, Err(Status::not_found("manifest unknown")))]);
        let e = watch(failed, "x", limit).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().starts_with("pull x: "), "{e:?}");
    }

    #[test]
    fn chain_id_follows_the_oci_rule() {
        let r = Resolved {
            id: String::new(),
            manifest: String::new(),
            size: 0,
            config: json!({"rootfs": {"diff_ids": ["sha256:a", "sha256:b"]}}),
        };
        let want = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest("sha256:a sha256:b"))
        );
        assert_eq!(r.chain_id(), want);
    }
}
