//! Pulling images from a registry into the content store.
//!
//! A **pull** resolves a reference to its root descriptor (an index or a manifest), stores the
//! root, the manifests of the chosen platforms, their configs and their layers, then records the
//! image under the normalised reference. Every blob is streamed from the registry through an
//! ingest (`pull-<digest>`) whose commit checks size and digest, so nothing unverified enters
//! the store and nothing is held whole in memory. Blobs the namespace already holds are skipped;
//! an ingest left by an interrupted pull is resumed with a range request. The whole pull runs
//! under a lease, so garbage collection cannot take its blobs before the image record exists;
//! after a failure the lease is left to expire, keeping partial downloads for a retry.
//!
//! The registry client is oci-client; berth adds the streaming into the content store, the
//! platform selection, the size limit on manifests and the resume of partial blobs. It lacks (and
//! this module does not add yet) docker-style credential files and registry mirrors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::content::{ContentStore, LabelUpdate, MAX_CHUNK, WriteRequest, Writer};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::images::{Descriptor, Image, ImageStore, Platform};
use crate::leases::LeaseManager;
use crate::manifest::platform_matches;
use crate::reference;
pub use crate::registry::Auth;
use crate::registry::{Registries, registry_error};

/// OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema2 manifest list.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema2 manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Label prefix recording the repository a blob was pulled from:
/// `berth.io/distribution.source.<registry>` = `<repository>`.
pub const SOURCE_LABEL_PREFIX: &str = "berth.io/distribution.source.";
/// Largest index or manifest accepted from a registry.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Blobs downloaded at once unless the request says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 3;
/// How long the lease of a pull lives if the pull never ends (a crash).
const LEASE_TTL: Duration = Duration::from_secs(3600);
/// Failpoint for tests (environment variable, read at start-up): the service kills itself with
/// SIGKILL as soon as a pull has stored at least this many bytes of one blob, as a crash in the
/// middle of a download would.
pub const KILL_AT_ENV: &str = "BERTH_FAILPOINT_PULL_KILL_AT";

/// What to pull and how.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Reference to pull, normalised Docker style.
    pub reference: String,
    /// Credentials.
    pub auth: Auth,
    /// Talk plain HTTP (always the case for loopback registries).
    pub plain_http: bool,
    /// Platforms to fetch from an index; empty = the host's.
    pub platforms: Vec<Platform>,
    /// Fetch every platform of an index.
    pub all_platforms: bool,
    /// Labels of the image record.
    pub labels: BTreeMap<String, String>,
    /// Blobs downloaded at once; 0 = [`DEFAULT_CONCURRENCY`].
    pub max_concurrent: usize,
}

/// Where one piece of content is in a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Resolving the reference.
    Resolving,
    /// The reference resolved to a descriptor.
    Resolved,
    /// Queued behind other downloads.
    Waiting,
    /// Downloading (the offset says how far).
    Downloading,
    /// Downloaded, verified and committed.
    Downloaded,
    /// Already in the content store: skipped.
    Exists,
    /// A layer is being unpacked into a snapshot.
    Unpacking,
    /// A layer is unpacked and its snapshot committed.
    Unpacked,
    /// Uploading to a registry (the offset says how far).
    Uploading,
    /// Uploaded to a registry, or mounted there from another repository.
    Pushed,
}

/// Progress of one piece of content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The reference while resolving, otherwise the content's digest.
    pub reference: String,
    /// Where it is.
    pub stage: Stage,
    /// The content's descriptor, once known.
    pub descriptor: Option<Descriptor>,
    /// Bytes stored so far.
    pub offset: u64,
    /// Total bytes, 0 if unknown.
    pub total: u64,
}

/// Pulls images into a content store and records them.
pub struct Puller<C, I, L> {
    content: C,
    images: Arc<I>,
    leases: Arc<L>,
    registries: Registries,
    kill_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    media_type: Option<String>,
    schema_version: Option<u32>,
    manifests: Option<Vec<JsonDescriptor>>,
    config: Option<JsonDescriptor>,
    layers: Option<Vec<JsonDescriptor>>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct JsonDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<JsonPlatform>,
}

#[derive(Deserialize, Clone)]
struct JsonPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: String,
}

impl JsonDescriptor {
    fn descriptor(&self, parent: &Digest) -> Result<Descriptor> {
        let digest = self.digest.parse().map_err(|_| Error::BadManifest {
            digest: parent.to_string(),
            reason: format!("invalid digest {:?} in a descriptor", self.digest),
        })?;
        Ok(Descriptor {
            media_type: self.media_type.clone(),
            digest,
            size: self.size,
            annotations: BTreeMap::new(),
            platform: self.platform.as_ref().map(|p| Platform {
                os: p.os.clone(),
                architecture: p.architecture.clone(),
                variant: p.variant.clone(),
                os_version: String::new(),
            }),
        })
    }
}

/// The platform this service runs on, GOARCH style.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        ..Platform::default()
    }
}

/// Runs a domain call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Checks a manifest or index from the registry: size, digest, media type against content.
fn check_manifest(
    digest: &Digest,
    body: &[u8],
    expected: Option<&Descriptor>,
) -> Result<(Descriptor, Json)> {
    let bad = |reason: String| Error::BadManifest {
        digest: digest.to_string(),
        reason,
    };
    if body.len() as u64 > MAX_MANIFEST {
        return Err(bad(format!(
            "{} bytes exceeds the limit of {MAX_MANIFEST}",
            body.len()
        )));
    }
    let mut hasher = digest.algorithm().hasher();
    hasher.update(body);
    if hasher.digest() != *digest {
        return Err(bad(format!("content hashes to {}", hasher.digest())));
    }
    if let Some(d) = expected
        && d.size != body.len() as u64
    {
        return Err(bad(format!("size {} instead of {}", body.len(), d.size)));
    }
    let json: Json =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a manifest: {e}")))?;
    if json.schema_version != Some(2) {
        return Err(bad(format!(
            "schema version {:?} is not supported",
            json.schema_version
        )));
    }
    let declared = json
        .media_type
        .clone()
        .or(expected.map(|d| d.media_type.clone()));
    let is_index = json.manifests.is_some();
    let media_type = match declared.as_deref() {
        Some(m @ (MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST)) if is_index => m.to_owned(),
        Some(m @ (MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST)) if !is_index => m.to_owned(),
        None if is_index => MEDIA_TYPE_INDEX.to_owned(),
        None => MEDIA_TYPE_MANIFEST.to_owned(),
        Some(m) => {
            return Err(bad(format!(
                "media type {m:?} does not match its content (an {})",
                if is_index { "index" } else { "image manifest" }
            )));
        }
    };
    if let Some(d) = expected
        && d.media_type != media_type
    {
        return Err(bad(format!(
            "the index says {:?}, the manifest says {media_type:?}",
            d.media_type
        )));
    }
    let descriptor = Descriptor {
        media_type,
        digest: digest.clone(),
        size: body.len() as u64,
        annotations: BTreeMap::new(),
        platform: expected.and_then(|d| d.platform.clone()),
    };
    Ok((descriptor, json))
}

struct Pull<C> {
    kill_at: Option<u64>,
    ns: String,
    client: Client,
    auth: RegistryAuth,
    reference: Reference,
    lease: String,
    content: C,
    progress: mpsc::Sender<Progress>,
}

impl<C, I, L> Puller<C, I, L>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    /// A puller over these stores, reaching registries as `registries` says (with the
    /// failpoint of [`KILL_AT_ENV`] if it is set).
    pub fn new(content: C, images: Arc<I>, leases: Arc<L>, registries: Registries) -> Self {
        Puller {
            content,
            images,
            leases,
            registries,
            kill_at: std::env::var(KILL_AT_ENV).ok().and_then(|v| v.parse().ok()),
        }
    }

    /// Pulls `options.reference` into namespace `ns`, reporting progress on `progress`, and
    /// returns the recorded image.
    pub async fn pull(
        &self,
        ns: &str,
        options: PullOptions,
        progress: mpsc::Sender<Progress>,
    ) -> Result<Image> {
        let parsed = reference::parse(&options.reference)?;
        let name = parsed.whole();
        // Mirrors first, the registry itself last; a mirror that fails is skipped.
        let mut sources = Vec::new();
        for candidate in self.registries.candidates(&parsed) {
            let is_origin = candidate.registry() == parsed.registry();
            // Request credentials are for the registry named, not for its mirrors.
            let auth = if is_origin {
                options.auth.clone()
            } else {
                Auth::Anonymous
            };
            let plain_http = options.plain_http && is_origin;
            sources.push((
                candidate.clone(),
                self.registries
                    .remote(&candidate, &auth, plain_http, false)?,
            ));
        }
        let leases = self.leases.clone();
        let owner = ns.to_owned();
        let lease = blocking(move || {
            let labels = BTreeMap::from([("berth.io/purpose".into(), "pull".into())]);
            leases.create(&owner, None, labels, Some(SystemTime::now() + LEASE_TTL))
        })
        .await?;
        let platforms = match options.platforms.is_empty() {
            true => vec![host_platform()],
            false => options.platforms,
        };
        let concurrency = match options.max_concurrent {
            0 => DEFAULT_CONCURRENCY,
            n => n,
        };
        let mut target = None;
        let count = sources.len();
        for (i, (reference, remote)) in sources.into_iter().enumerate() {
            let pull = Pull {
                kill_at: self.kill_at,
                ns: ns.to_owned(),
                client: remote.client,
                auth: remote.auth,
                reference,
                lease: lease.id.clone(),
                content: self.content.clone(),
                progress: progress.clone(),
            };
            match pull
                .fetch(&name, &platforms, options.all_platforms, concurrency)
                .await
            {
                Ok(t) => {
                    target = Some(t);
                    break;
                }
                Err(e) if i + 1 < count => {
                    tracing::warn!(mirror = %pull.reference.registry(), error = %e, "mirror failed, trying the next source");
                }
                Err(e) => return Err(e),
            }
        }
        let target =
            target.ok_or_else(|| Error::invalid("reference", "no registry to pull from"))?;
        let images = self.images.clone();
        let owner = ns.to_owned();
        let labels = options.labels;
        let image = blocking(move || images.create(&owner, &name, labels, target, true)).await?;
        let leases = self.leases.clone();
        let owner = ns.to_owned();
        blocking(move || leases.delete(&owner, &lease.id)).await?;
        Ok(image)
    }
}

impl<C: ContentStore + Clone> Pull<C> {
    async fn report(&self, reference: &str, stage: Stage, d: Option<&Descriptor>, offset: u64) {
        let progress = Progress {
            reference: reference.to_owned(),
            stage,
            descriptor: d.cloned(),
            offset,
            total: d.map_or(0, |d| d.size),
        };
        // A client that stopped listening does not stop the pull.
        let _ = self.progress.send(progress).await;
    }

    /// Fetches everything the image needs; returns its root descriptor.
    async fn fetch(
        &self,
        name: &str,
        platforms: &[Platform],
        all_platforms: bool,
        concurrency: usize,
    ) -> Result<Descriptor> {
        self.report(name, Stage::Resolving, None, 0).await;
        let accept = [
            MEDIA_TYPE_INDEX,
            MEDIA_TYPE_MANIFEST,
            MEDIA_TYPE_DOCKER_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ];
        let (body, digest) = self
            .client
            .pull_manifest_raw(&self.reference, &self.auth, &accept)
            .await
            .map_err(registry_error(&self.reference, ""))?;
        let digest: Digest = digest.parse()?;
        let (root, json) = check_manifest(&digest, &body, None)?;
        self.report(name, Stage::Resolved, Some(&root), 0).await;

        let mut manifests = Vec::new();
        if let Some(entries) = &json.manifests {
            let mut chosen = Vec::new();
            for entry in entries {
                let d = entry.descriptor(&digest)?;
                let platform = d.platform.clone().unwrap_or_default();
                if all_platforms || platforms.iter().any(|p| platform_matches(p, &platform)) {
                    chosen.push(d);
                }
            }
            if chosen.is_empty() {
                let names: Vec<String> = platforms
                    .iter()
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                return Err(Error::NoMatchingPlatform {
                    reference: name.to_owned(),
                    platforms: names.join(","),
                });
            }
            for d in chosen {
                let by_digest = Reference::with_digest(
                    self.reference.registry().to_owned(),
                    self.reference.repository().to_owned(),
                    d.digest.to_string(),
                );
                let (body, _) = self
                    .client
                    .pull_manifest_raw(&by_digest, &self.auth, &accept)
                    .await
                    .map_err(registry_error(&self.reference, &format!("@{}", d.digest)))?;
                let (checked, json) = check_manifest(&d.digest, &body, Some(&d))?;
                if json.manifests.is_some() {
                    return Err(Error::BadManifest {
                        digest: d.digest.to_string(),
                        reason: "nested indexes are not supported".into(),
                    });
                }
                self.store(&checked, body.to_vec()).await?;
                manifests.push((checked, json));
            }
        } else {
            manifests.push((root.clone(), json));
        }

        let mut blobs: Vec<Descriptor> = Vec::new();
        for (m, json) in &manifests {
            let config = json.config.as_ref().ok_or_else(|| Error::BadManifest {
                digest: m.digest.to_string(),
                reason: "the manifest has no config".into(),
            })?;
            for d in std::iter::once(config).chain(json.layers.iter().flatten()) {
                let d = d.descriptor(&m.digest)?;
                if !blobs.iter().any(|b| b.digest == d.digest) {
                    blobs.push(d);
                }
            }
        }
        for d in &blobs {
            self.report(&d.digest.to_string(), Stage::Waiting, Some(d), 0)
                .await;
        }
        let downloads: Vec<_> = blobs.iter().map(|d| self.download(d)).collect();
        futures::stream::iter(downloads)
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        // The root last: an index or manifest in the store means its children are too.
        self.store(&root, body.to_vec()).await?;
        Ok(root)
    }

    /// Labels of a blob fetched from this pull's repository: where it came from, so a push to
    /// the same registry can mount it instead of uploading it.
    fn source_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            format!("{SOURCE_LABEL_PREFIX}{}", self.reference.registry()),
            self.reference.repository().to_owned(),
        )])
    }

    fn request(&self, d: &Descriptor) -> WriteRequest {
        WriteRequest {
            reference: format!("pull-{}", d.digest),
            total: Some(d.size),
            expected: Some(d.digest.clone()),
            lease: Some(self.lease.clone()),
        }
    }

    /// Stores a small blob held in memory.
    async fn store(&self, d: &Descriptor, data: Vec<u8>) -> Result<()> {
        let (content, ns, request) = (self.content.clone(), self.ns.clone(), self.request(d));
        blocking(move || {
            let mut w = match content.writer(&ns, request) {
                Err(Error::ContentExists { .. }) => return Ok(()),
                other => other?,
            };
            for (i, chunk) in data.chunks(MAX_CHUNK).enumerate() {
                w.write((i * MAX_CHUNK) as u64, chunk)?;
            }
            match w.commit(BTreeMap::new()) {
                Ok(_) | Err(Error::ContentExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Streams one blob into the store, resuming a partial ingest.
    async fn download(&self, d: &Descriptor) -> Result<()> {
        let key = d.digest.to_string();
        let (content, ns, request) = (self.content.clone(), self.ns.clone(), self.request(d));
        let (digest, labels) = (d.digest.clone(), self.source_labels());
        let opened = blocking(move || match content.writer(&ns, request) {
            Err(Error::ContentExists { .. }) => {
                // Present already: record this repository as a source too.
                let update = labels.into_iter().map(|(k, v)| (k, Some(v))).collect();
                content.update(&ns, &digest, LabelUpdate::Keys(update))?;
                Ok(None)
            }
            other => other.map(Some),
        })
        .await?;
        let Some(mut writer) = opened else {
            self.report(&key, Stage::Exists, Some(d), d.size).await;
            return Ok(());
        };
        let mut offset = writer.status().offset;
        let error = registry_error(&self.reference, &format!("@{key}"));
        let layer = key.as_str();
        let mut stream = if offset > 0 && offset < d.size {
            match self
                .client
                .pull_blob_stream_partial(&self.reference, layer, offset, None)
                .await
                .map_err(&error)?
            {
                BlobResponse::Partial(s) => s,
                BlobResponse::Full(s) => {
                    offset = 0; // the registry ignored the range: start over
                    s
                }
            }
        } else {
            offset = 0;
            self.client
                .pull_blob_stream(&self.reference, layer)
                .await
                .map_err(&error)?
        };
        self.report(&key, Stage::Downloading, Some(d), offset).await;
        let mut buf = Vec::with_capacity(MAX_CHUNK);
        loop {
            let chunk = match stream.next().await.transpose() {
                Ok(chunk) => chunk,
                Err(e) => {
                    let e = error(e.into());
                    if e.kind() == crate::error::Kind::FailedPrecondition {
                        // The registry sent other bytes than the digest names: drop them.
                        drop(writer);
                        self.discard(&format!("pull-{key}")).await;
                    }
                    return Err(e);
                }
            };
            let end = chunk.is_none();
            if let Some(chunk) = chunk {
                let mut rest: &[u8] = &chunk;
                while !rest.is_empty() {
                    let n = rest.len().min(MAX_CHUNK - buf.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if buf.len() == MAX_CHUNK {
                        let data = std::mem::replace(&mut buf, Vec::with_capacity(MAX_CHUNK));
                        writer =
                            blocking(move || writer.write(offset, &data).map(|()| writer)).await?;
                        offset += MAX_CHUNK as u64;
                        if self.kill_at.is_some_and(|at| offset >= at) {
                            tracing::warn!(%key, offset, "failpoint {KILL_AT_ENV}: killing myself");
                            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                        }
                        self.report(&key, Stage::Downloading, Some(d), offset).await;
                    }
                }
            }
            if end {
                break;
            }
        }
        let labels = self.source_labels();
        let committed = blocking(move || {
            writer.write(offset, &buf)?;
            match writer.commit(labels) {
                Ok(_) | Err(Error::ContentExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await;
        if let Err(e @ (Error::DigestMismatch { .. } | Error::SizeMismatch { .. })) = committed {
            // Wrong bytes: a retry must download them again, not resume after them.
            self.discard(&format!("pull-{key}")).await;
            return Err(e);
        }
        committed?;
        self.report(&key, Stage::Downloaded, Some(d), d.size).await;
        Ok(())
    }

    /// Removes the ingest `reference` (its data cannot be right).
    async fn discard(&self, reference: &str) {
        let (content, ns, r) = (self.content.clone(), self.ns.clone(), reference.to_owned());
        if let Err(e) = blocking(move || content.abort(&ns, &r)).await {
            tracing::warn!(reference, error = %e, "cannot remove a bad ingest");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(media_type: Option<&str>, json: serde_json::Value) -> Result<Descriptor> {
        let mut json = json;
        json["schemaVersion"] = 2.into();
        if let Some(m) = media_type {
            json["mediaType"] = m.into();
        }
        let body = serde_json::to_vec(&json).unwrap();
        check_manifest(&Digest::sha256(&body), &body, None).map(|(d, _)| d)
    }

    #[test]
    fn manifests_from_registries_are_checked() {
        let config = serde_json::json!({
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::sha256(b"{}").to_string(),
            "size": 2,
        });
        let manifest = serde_json::json!({"config": config, "layers": []});
        let index = serde_json::json!({"manifests": []});
        assert_eq!(
            check(None, manifest.clone()).unwrap().media_type,
            MEDIA_TYPE_MANIFEST
        );
        assert_eq!(
            check(None, index.clone()).unwrap().media_type,
            MEDIA_TYPE_INDEX
        );
        let docker = check(Some(MEDIA_TYPE_DOCKER_LIST), index.clone()).unwrap();
        assert_eq!(docker.media_type, MEDIA_TYPE_DOCKER_LIST);
        // A media type that lies about the content, or that is unknown.
        for (m, json) in [
            (MEDIA_TYPE_INDEX, manifest.clone()),
            (MEDIA_TYPE_DOCKER_MANIFEST, index.clone()),
            ("application/vnd.example+json", manifest.clone()),
        ] {
            let err = check(Some(m), json).unwrap_err();
            assert!(matches!(err, Error::BadManifest { .. }), "{m}: {err}");
        }
        // Wrong digest, oversized, schema 1, not JSON.
        let body = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let wrong = Digest::sha256(b"other");
        assert!(check_manifest(&wrong, body, None).is_err());
        let big = vec![b' '; MAX_MANIFEST as usize + 1];
        let err = check_manifest(&Digest::sha256(&big), &big, None).err();
        assert!(err.is_some_and(|e| e.to_string().contains("exceeds the limit")));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(check_manifest(&Digest::sha256(v1), v1, None).is_err());
        assert!(check_manifest(&Digest::sha256(b"<html>"), b"<html>", None).is_err());
    }

    #[test]
    fn platform_matching() {
        let host = host_platform();
        assert_eq!(host.os, "linux");
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: "v7".into(),
            ..Default::default()
        };
        let want = Platform {
            variant: String::new(),
            ..arm.clone()
        };
        assert!(platform_matches(&want, &arm));
        assert!(!platform_matches(
            &arm,
            &Platform {
                variant: "v6".into(),
                ..arm.clone()
            }
        ));
    }
}
