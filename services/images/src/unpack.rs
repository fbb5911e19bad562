//! Unpacking an image's layers into a chain of committed snapshots.
//!
//! For one platform of an image, each layer in order becomes a committed snapshot named by its
//! **chain id** (see [`manifest::chain_ids`]) in the snapshots service: Prepare an active snapshot
//! with a temporary key on top of the previous chain id, apply the layer blob from the content
//! store onto its mounts (the layer library, [`berth_snapshots::layer::apply_to_mounts`], which
//! writes an overlay snapshot straight into its upper directory), check the layer's uncompressed
//! digest against the config's diff id, sync, and Commit under the chain id. A chain id that
//! already exists is reused (Stat first), so a layer shared by many images is unpacked once.
//!
//! A failed layer removes its active snapshot: nothing half-made is ever committed. Unpacks of
//! the same chain id in this service wait for one another (a per-chain lock); an unpack racing
//! another process to the same name finds AlreadyExists at Commit, drops its own copy and reuses
//! the winner's.
//!
//! Compression is read from the layer's media type: gzip, zstd or none. The uncompressed size
//! of a layer is bounded (`[images] max_layer_size`), so a compression bomb stops early.
//!
//! Garbage collection: the image config blob gets the label
//! `berth.io/gc.ref.snapshot.<snapshotter>` = top chain id, and each committed snapshot
//! `berth.io/uncompressed` = its diff id. The snapshots service does not collect snapshots
//! (yet); these labels say which snapshots an image keeps alive for when it does. The active
//! snapshot of an unpack interrupted by a crash is removed by the next unpack in its namespace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::berth::snapshots::v1 as spb;
use berth_api::berth::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::client::Channel;
use berth_snapshots::mount::Mount;
use tokio::sync::mpsc;

use crate::content::{ContentStore, LabelUpdate};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::images::{Descriptor, ImageStore, Platform};
use crate::manifest::{self, Resolved};
use crate::pull::{Progress, Stage, host_platform};

/// Label on an image config blob naming the top snapshot of its unpacked chain.
pub const GC_SNAPSHOT_PREFIX: &str = "berth.io/gc.ref.snapshot.";
/// Label on the active snapshot of an unpack in progress (the chain id it will become).
const UNPACK_LABEL: &str = "berth.io/snapshot/unpack";
/// Label on a committed layer snapshot giving its diff id.
pub const UNCOMPRESSED_LABEL: &str = "berth.io/uncompressed";

/// What an unpack made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Chain id of the top layer: the parent for a container's snapshot.
    pub chain_id: String,
    /// True if every layer was already unpacked.
    pub existed: bool,
}

/// Unpacks images from a content store into the snapshots service.
pub struct Unpacker<C, I> {
    content: C,
    images: Arc<I>,
    snapshots_socket: PathBuf,
    default_snapshotter: String,
    scratch: PathBuf,
    max_layer_size: u64,
    /// One lock per (namespace, snapshotter, chain id) being unpacked.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Namespaces (and snapshotters) whose leftovers of earlier processes were removed.
    swept: tokio::sync::Mutex<HashSet<String>>,
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(d: &Descriptor) -> Result<Compression> {
    let m = d.media_type.as_str();
    let layer = m.starts_with("application/vnd.oci.image.layer.")
        || m.starts_with("application/vnd.docker.image.rootfs.");
    let c = if !layer {
        None
    } else if m.ends_with("+gzip") || m.ends_with(".tar.gzip") {
        Some(Compression::Gzip)
    } else if m.ends_with("+zstd") {
        Some(Compression::Zstd)
    } else if m.ends_with(".tar") {
        Some(Compression::None)
    } else {
        None
    };
    c.ok_or_else(|| Error::UnsupportedMediaType {
        digest: d.digest.to_string(),
        media_type: d.media_type.clone(),
    })
}

/// Fails reads once more than `limit` bytes went through, setting `exceeded`.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the layer expands beyond the configured limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn decompress(file: std::fs::File, c: Compression) -> io::Result<Box<dyn Read + Send>> {
    let file = io::BufReader::with_capacity(1 << 20, file);
    Ok(match c {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
    })
}

fn status(op: &'static str, key: &str) -> impl FnOnce(tonic::Status) -> Error {
    let key = key.to_owned();
    move |s| Error::Snapshots {
        op,
        key,
        status: Box::new(s),
    }
}

fn mounts(msg: Vec<berth_api::berth::types::v1::Mount>) -> Vec<Mount> {
    msg.into_iter().map(Mount::from).collect()
}

impl<C, I> Unpacker<C, I>
where
    C: ContentStore + Clone,
    I: ImageStore,
{
    /// An unpacker reading `content`, writing through the snapshots service at
    /// `snapshots_socket` (whose snapshotter is `default_snapshotter`), with temporary mounts
    /// under `scratch` and layers bounded to `max_layer_size` uncompressed bytes.
    pub fn new(
        content: C,
        images: Arc<I>,
        snapshots_socket: PathBuf,
        default_snapshotter: String,
        scratch: PathBuf,
        max_layer_size: u64,
    ) -> Self {
        Unpacker {
            content,
            images,
            snapshots_socket,
            default_snapshotter,
            scratch,
            max_layer_size,
            locks: Mutex::new(HashMap::new()),
            swept: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Unpacks the image `name` of namespace `ns` for `platform` (None: the host's) into
    /// `snapshotter` (empty: the service's), reporting each layer on `progress`.
    pub async fn unpack(
        &self,
        ns: &str,
        name: &str,
        snapshotter: &str,
        platform: Option<Platform>,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<Unpacked> {
        let (images, content, owner, name) = (
            self.images.clone(),
            self.content.clone(),
            ns.to_owned(),
            name.to_owned(),
        );
        let platform = platform.unwrap_or_else(host_platform);
        let resolved = tokio::task::spawn_blocking(move || {
            let image = images.get(&owner, &name)?;
            manifest::resolve(&content, &owner, &image.target, &platform)
        })
        .await??;
        if resolved.layers.is_empty() {
            return Err(Error::BadManifest {
                digest: resolved.manifest.digest.to_string(),
                reason: "the image has no layers to unpack".into(),
            });
        }
        let snapshotter = match snapshotter {
            "" => self.default_snapshotter.clone(),
            s => s.to_owned(),
        };
        let channel = berth_api::client::connect(&self.snapshots_socket, ns)
            .await
            .map_err(|e| Error::SnapshotsUnreachable {
                reason: e.to_string(),
            })?;
        let mut client = SnapshotsClient::new(channel);
        self.sweep(&mut client, ns, &snapshotter).await?;
        let chain = manifest::chain_ids(&resolved.diff_ids);
        let top = chain.last().map(Digest::to_string).unwrap_or_default();
        let mut existed = true;
        for (i, id) in chain.iter().enumerate() {
            let layer = &resolved.layers[i];
            let parent = i.checked_sub(1).map(|p| chain[p].to_string());
            let made = self
                .layer(
                    &mut client,
                    ns,
                    &snapshotter,
                    &resolved,
                    i,
                    id,
                    parent,
                    progress,
                )
                .await?;
            existed &= !made;
            if let Some(tx) = progress {
                let _ = tx
                    .send(Progress {
                        reference: layer.digest.to_string(),
                        stage: Stage::Unpacked,
                        descriptor: Some(layer.clone()),
                        offset: layer.size,
                        total: layer.size,
                    })
                    .await;
            }
        }
        let (content, owner, config) = (
            self.content.clone(),
            ns.to_owned(),
            resolved.config.digest.clone(),
        );
        let label = format!("{GC_SNAPSHOT_PREFIX}{snapshotter}");
        let value = top.clone();
        tokio::task::spawn_blocking(move || {
            let update = BTreeMap::from([(label, Some(value))]);
            content.update(&owner, &config, LabelUpdate::Keys(update))
        })
        .await??;
        Ok(Unpacked {
            chain_id: top,
            existed,
        })
    }

    /// Removes the active snapshots that unpacks of an earlier process left (a crash between
    /// Prepare and Commit), once per namespace and snapshotter in the life of this process.
    async fn sweep(
        &self,
        client: &mut SnapshotsClient<Channel>,
        ns: &str,
        snapshotter: &str,
    ) -> Result<()> {
        let mut swept = self.swept.lock().await;
        if !swept.insert(format!("{ns}\0{snapshotter}")) {
            return Ok(());
        }
        let filter = format!("kind==active,labels.\"{UNPACK_LABEL}\"");
        let mut stream = client
            .list(spb::ListSnapshotsRequest {
                snapshotter: snapshotter.to_owned(),
                filters: vec![filter],
            })
            .await
            .map_err(status("list", ""))?
            .into_inner();
        let mut stale = Vec::new();
        while let Some(batch) = stream.message().await.map_err(status("list", ""))? {
            stale.extend(batch.info.into_iter().map(|i| i.name));
        }
        for key in stale.into_iter().filter(|k| k.starts_with("extract-")) {
            tracing::info!(%key, "removing the snapshot of an interrupted unpack");
            client
                .remove(spb::RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: key.clone(),
                })
                .await
                .map_err(status("remove", &key))?;
        }
        Ok(())
    }

    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Makes the snapshot of layer `i` unless it exists; returns whether it made it.
    #[allow(clippy::too_many_arguments)]
    async fn layer(
        &self,
        client: &mut SnapshotsClient<Channel>,
        ns: &str,
        snapshotter: &str,
        resolved: &Resolved,
        i: usize,
        chain_id: &Digest,
        parent: Option<String>,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<bool> {
        let name = chain_id.to_string();
        let lock = self.lock(&format!("{ns}\0{snapshotter}\0{name}"));
        let _held = lock.lock().await;
        let stat = client
            .stat(spb::StatSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: name.clone(),
            })
            .await;
        match stat {
            Ok(_) => return Ok(false),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(status("stat", &name)(s)),
        }
        let layer = resolved.layers[i].clone();
        let diff_id = resolved.diff_ids[i].clone();
        let kind = compression(&layer)?;
        if let Some(tx) = progress {
            let _ = tx
                .send(Progress {
                    reference: layer.digest.to_string(),
                    stage: Stage::Unpacking,
                    descriptor: Some(layer.clone()),
                    offset: 0,
                    total: layer.size,
                })
                .await;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!("extract-{nanos}-{}", chain_id.hex());
        let prepared = client
            .prepare(spb::PrepareSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key: key.clone(),
                parent: parent.unwrap_or_default(),
                labels: HashMap::from([(UNPACK_LABEL.into(), name.clone())]),
            })
            .await
            .map_err(status("prepare", &key))?
            .into_inner();
        let applied = self
            .apply(ns, &layer, kind, &diff_id, mounts(prepared.mounts))
            .await;
        let committed = match applied {
            Ok(()) => client
                .commit(spb::CommitSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    name: name.clone(),
                    key: key.clone(),
                    labels: HashMap::from([(UNCOMPRESSED_LABEL.into(), diff_id.to_string())]),
                })
                .await
                .map(|_| true)
                .or_else(|s| match s.code() {
                    // Another process committed the same chain first: use its snapshot.
                    tonic::Code::AlreadyExists => Ok(false),
                    _ => Err(status("commit", &key)(s)),
                }),
            Err(e) => Err(e),
        };
        if !matches!(committed, Ok(true)) {
            let removed = client
                .remove(spb::RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: key.clone(),
                })
                .await;
            if let Err(s) = removed {
                tracing::warn!(%key, error = %s.message(), "cannot remove a failed unpack's snapshot");
            }
        }
        committed
    }

    /// Applies one layer blob onto `mounts`, checks its diff id and syncs what it wrote.
    async fn apply(
        &self,
        ns: &str,
        layer: &Descriptor,
        kind: Compression,
        diff_id: &Digest,
        mounts: Vec<Mount>,
    ) -> Result<()> {
        let (content, owner, scratch, limit) = (
            self.content.clone(),
            ns.to_owned(),
            self.scratch.clone(),
            self.max_layer_size,
        );
        let (layer, expected) = (layer.clone(), diff_id.to_string());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let blob = content.open(&owner, &layer.digest)?;
            let digest = layer.digest.to_string();
            let io_error = |source| Error::Io {
                path: format!("layer {digest}").into(),
                source,
            };
            let exceeded = Arc::new(AtomicBool::new(false));
            let reader = Bounded {
                inner: decompress(blob.file, kind).map_err(io_error)?,
                left: limit,
                exceeded: exceeded.clone(),
            };
            std::fs::create_dir_all(&scratch).map_err(Error::io(&scratch))?;
            let applied = berth_snapshots::layer::apply_to_mounts(&mounts, reader, &scratch);
            if exceeded.load(Ordering::Relaxed) {
                return Err(Error::LayerTooLarge {
                    layer: digest,
                    limit,
                });
            }
            let applied = applied.map_err(|source| Error::Layer {
                layer: digest.clone(),
                source,
            })?;
            if applied.diff_id != expected {
                return Err(Error::DiffIdMismatch {
                    layer: digest,
                    expected,
                    actual: applied.diff_id,
                });
            }
            // The files must be on disk before the snapshot is committed.
            let target = mounts
                .first()
                .and_then(|m| m.upperdir().or_else(|| Some(PathBuf::from(&m.source))))
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| scratch.clone());
            let dir = std::fs::File::open(&target).map_err(Error::io(&target))?;
            nix::unistd::syncfs(&dir).map_err(|e| Error::Io {
                path: target.clone(),
                source: e.into(),
            })?;
            tracing::debug!(
                layer = %digest,
                bytes = applied.size,
                elapsed = ?started.elapsed(),
                "layer applied"
            );
            Ok(())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::sha256(b""),
            size: 0,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }

    #[test]
    fn compression_comes_from_the_media_type() {
        for (m, c) in [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
        ] {
            assert_eq!(compression(&layer(m)).unwrap(), c, "{m}");
        }
        for m in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "",
        ] {
            assert!(matches!(
                compression(&layer(m)),
                Err(Error::UnsupportedMediaType { .. })
            ));
        }
    }

    #[test]
    fn bounded_reads_stop_at_the_limit() {
        let exceeded = Arc::new(AtomicBool::new(false));
        let mut r = Bounded {
            inner: &[0u8; 100][..],
            left: 99,
            exceeded: exceeded.clone(),
        };
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(exceeded.load(Ordering::Relaxed));
    }
}
