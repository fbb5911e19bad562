//! Pushing images from the content store to a registry.
//!
//! A **push** uploads what the registry lacks of an image, then its manifests, then tags it:
//! - every config and layer blob is checked first (HEAD); one the registry has is skipped;
//! - a blob pulled from another repository of the same registry (label
//!   [`SOURCE_LABEL_PREFIX`]`<registry>`) is mounted from there (cross-repository mount), and
//!   uploaded only if the registry refuses the mount;
//! - other blobs are uploaded from the store as a stream: small ones in one request
//!   (monolithic), larger ones as a chunked upload session;
//! - manifests are pushed byte for byte as stored (so every digest stays the same): an index's
//!   manifests by digest first, then the root under the tag (or digest) of the reference.
//!
//! Platforms: an index is pushed whole when all its manifests are present locally (and no
//! platform narrows it); when one platform is asked for (or is all there is locally), its
//! manifest alone is pushed under the reference, as `docker push --platform` does.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::images::{Descriptor, ImageStore, Platform};
use crate::manifest::{self, is_index};
use crate::pull::{MAX_MANIFEST, Progress, SOURCE_LABEL_PREFIX, Stage};
use crate::reference;
use crate::registry::{Auth, Registries, Remote, registry_error};

/// Blobs up to this size are uploaded in one request; larger ones in chunks.
pub const MONOLITHIC_MAX: u64 = 2 << 20;
/// Bytes read from the store and sent at once (one PATCH of a chunked upload).
const CHUNK: usize = 1 << 20;
/// Blobs uploaded at once unless the request says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 3;

/// What to push and how.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Name of the local image.
    pub name: String,
    /// Where to push it; empty = the image's name.
    pub reference: String,
    /// Credentials.
    pub auth: Auth,
    /// Ask for plain HTTP (loopback and insecure registries only).
    pub plain_http: bool,
    /// Platforms to push; empty = every platform present locally.
    pub platforms: Vec<Platform>,
    /// Blobs uploaded at once; 0 = [`DEFAULT_CONCURRENCY`].
    pub max_concurrent: usize,
}

/// Pushes images from a content store to registries.
pub struct Pusher<C, I> {
    content: C,
    images: Arc<I>,
    registries: Registries,
}

struct Push<C> {
    ns: String,
    content: C,
    reference: Reference,
    /// The monolithic client and the chunked one (same credentials).
    monolithic: Remote,
    chunked: Remote,
    progress: mpsc::Sender<Progress>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl<C, I> Pusher<C, I>
where
    C: ContentStore + Clone,
    I: ImageStore,
{
    /// A pusher reading `content` and `images`, reaching registries as `registries` says.
    pub fn new(content: C, images: Arc<I>, registries: Registries) -> Self {
        Pusher {
            content,
            images,
            registries,
        }
    }

    /// Pushes the image `options.name` of namespace `ns`, reporting progress, and returns the
    /// descriptor the registry now holds under the reference.
    pub async fn push(
        &self,
        ns: &str,
        options: PushOptions,
        progress: mpsc::Sender<Progress>,
    ) -> Result<Descriptor> {
        let (images, owner, name) = (self.images.clone(), ns.to_owned(), options.name.clone());
        let image = blocking(move || images.get(&owner, &name)).await?;
        let target = match options.reference.as_str() {
            "" => image.name.clone(),
            r => r.to_owned(),
        };
        let reference = reference::parse(&target)?;
        let remote = |monolithic| {
            self.registries
                .remote(&reference, &options.auth, options.plain_http, monolithic)
        };
        let push = Push {
            ns: ns.to_owned(),
            content: self.content.clone(),
            monolithic: remote(true)?,
            chunked: remote(false)?,
            reference: reference.clone(),
            progress,
        };
        let (root, manifests) = push.select(&image.target, &options.platforms).await?;
        push.auth().await?;
        let mut blobs: Vec<Descriptor> = Vec::new();
        for m in &manifests {
            let (content, owner, m) = (self.content.clone(), ns.to_owned(), m.clone());
            let resolved =
                blocking(move || manifest::resolve(&content, &owner, &m, &Platform::default()))
                    .await?;
            for d in std::iter::once(resolved.config).chain(resolved.layers) {
                if !blobs.iter().any(|b| b.digest == d.digest) {
                    blobs.push(d);
                }
            }
        }
        for d in &blobs {
            push.report(d, Stage::Waiting, 0).await;
        }
        let concurrency = match options.max_concurrent {
            0 => DEFAULT_CONCURRENCY,
            n => n,
        };
        let uploads: Vec<_> = blobs.iter().map(|d| push.blob(d)).collect();
        futures::stream::iter(uploads)
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        if is_index(&root.media_type) {
            // An index: its manifests first, by digest.
            for m in &manifests {
                let by_digest = push.reference.clone_with_digest(m.digest.to_string());
                push.manifest(m, &by_digest).await?;
            }
        }
        push.manifest(&root, &push.reference).await?;
        Ok(root)
    }
}

impl<C: ContentStore + Clone> Push<C> {
    async fn report(&self, d: &Descriptor, stage: Stage, offset: u64) {
        let _ = self
            .progress
            .send(Progress {
                reference: d.digest.to_string(),
                stage,
                descriptor: Some(d.clone()),
                offset,
                total: d.size,
            })
            .await;
    }

    /// The root to push and the manifests under it (the root itself for a manifest).
    async fn select(
        &self,
        target: &Descriptor,
        platforms: &[Platform],
    ) -> Result<(Descriptor, Vec<Descriptor>)> {
        if !is_index(&target.media_type) {
            return Ok((target.clone(), vec![target.clone()]));
        }
        let (content, ns, index) = (self.content.clone(), self.ns.clone(), target.clone());
        let platforms = platforms.to_vec();
        blocking(move || {
            let entries = manifest::index_entries(&content, &ns, &index)?;
            let present: Vec<bool> = entries
                .iter()
                .map(|d| content.info(&ns, &d.digest).is_ok())
                .collect();
            let chosen: Vec<Descriptor> = entries
                .iter()
                .zip(&present)
                .filter(|(d, here)| {
                    **here
                        && (platforms.is_empty()
                            || platforms.iter().any(|p| {
                                manifest::platform_matches(
                                    p,
                                    d.platform.as_ref().unwrap_or(&Platform::default()),
                                )
                            }))
                })
                .map(|(d, _)| d.clone())
                .collect();
            match chosen.len() {
                0 => Err(Error::NoMatchingPlatform {
                    reference: index.digest.to_string(),
                    platforms: "any platform present locally".into(),
                }),
                n if n == entries.len() => Ok((index.clone(), chosen)),
                1 => Ok((chosen[0].clone(), chosen)),
                n => Err(Error::IncompleteIndex {
                    digest: index.digest.to_string(),
                    listed: entries.len(),
                    chosen: n,
                }),
            }
        })
        .await
    }

    /// Makes sure the registry holds blob `d` in the target repository.
    async fn blob(&self, d: &Descriptor) -> Result<()> {
        let digest = d.digest.to_string();
        let error = registry_error(&self.reference, &format!("@{digest}"));
        let exists = self
            .monolithic
            .client
            .blob_exists(&self.reference, &digest)
            .await
            .map_err(&error)?;
        if exists {
            self.report(d, Stage::Exists, d.size).await;
            return Ok(());
        }
        if let Some(source) = self.mount_source(d).await? {
            let mounted = self
                .monolithic
                .client
                .mount_blob(&self.reference, &source, &digest)
                .await;
            match mounted {
                Ok(()) => {
                    self.report(d, Stage::Pushed, d.size).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "cross-repository mount refused: uploading");
                }
            }
        }
        self.upload(d).await?;
        self.report(d, Stage::Pushed, d.size).await;
        Ok(())
    }

    /// Authenticates both clients for a push to the reference's repository.
    async fn auth(&self) -> Result<()> {
        for remote in [&self.monolithic, &self.chunked] {
            remote
                .client
                .auth(
                    &self.reference,
                    &remote.auth,
                    oci_client::RegistryOperation::Push,
                )
                .await
                .map_err(registry_error(&self.reference, ""))?;
        }
        Ok(())
    }

    /// Another repository of the target registry this blob was pulled from, if any.
    async fn mount_source(&self, d: &Descriptor) -> Result<Option<Reference>> {
        let (content, ns, digest) = (self.content.clone(), self.ns.clone(), d.digest.clone());
        let info = blocking(move || content.info(&ns, &digest)).await?;
        let label = format!("{SOURCE_LABEL_PREFIX}{}", self.reference.registry());
        Ok(info
            .labels
            .get(&label)
            .filter(|repo| repo.as_str() != self.reference.repository())
            .map(|repo| {
                Reference::with_digest(
                    self.reference.registry().to_owned(),
                    repo.clone(),
                    d.digest.to_string(),
                )
            }))
    }

    /// Uploads blob `d` from the store, streamed, reporting progress.
    async fn upload(&self, d: &Descriptor) -> Result<()> {
        let (content, ns, digest) = (self.content.clone(), self.ns.clone(), d.digest.clone());
        let blob = blocking(move || content.open(&ns, &digest)).await?;
        let file = tokio::fs::File::from_std(blob.file);
        let (d2, progress) = (d.clone(), self.progress.clone());
        self.report(d, Stage::Uploading, 0).await;
        let stream = futures::stream::try_unfold((file, 0u64), move |(mut file, sent)| {
            let (d, progress) = (d2.clone(), progress.clone());
            async move {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(None);
                }
                buf.truncate(filled);
                let sent = sent + filled as u64;
                let _ = progress
                    .send(Progress {
                        reference: d.digest.to_string(),
                        stage: Stage::Uploading,
                        descriptor: Some(d.clone()),
                        offset: sent,
                        total: d.size,
                    })
                    .await;
                Ok(Some((bytes::Bytes::from(buf), (file, sent))))
            }
        })
        .map_err(oci_client::errors::OciDistributionError::IoError);
        let remote = match d.size <= MONOLITHIC_MAX {
            true => &self.monolithic,
            false => &self.chunked,
        };
        remote
            .client
            .push_blob_stream(&self.reference, stream, &d.digest.to_string(), Some(d.size))
            .await
            .map_err(registry_error(&self.reference, &format!("@{}", d.digest)))?;
        Ok(())
    }

    /// Pushes the stored manifest or index `d` under `to`.
    async fn manifest(&self, d: &Descriptor, to: &Reference) -> Result<()> {
        let (content, ns, digest) = (self.content.clone(), self.ns.clone(), d.digest.clone());
        let body =
            blocking(move || manifest::read_blob(&content, &ns, &digest, MAX_MANIFEST)).await?;
        let media_type = d.media_type.parse().map_err(|_| Error::BadManifest {
            digest: d.digest.to_string(),
            reason: format!("media type {:?} is not a header value", d.media_type),
        })?;
        self.monolithic
            .client
            .push_manifest_raw(to, body, media_type)
            .await
            .map_err(registry_error(&self.reference, &format!("@{}", d.digest)))?;
        Ok(())
    }
}
