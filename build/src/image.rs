//! Writing images: layers, configs and manifests into the content store, image records, and
//! the changes of a snapshot turned into a layer. Used by the build executor and by
//! `berthctl commit`.
//!
//! - [`ImageState`]: an image as a build works on it, its OCI config (kept as JSON, so fields
//!   berth does not know survive) and its layer descriptors.
//! - [`store_layer`] gzips an uncompressed layer tar into the content store (the blob gets the
//!   label `berth.io/uncompressed` = its diff id); [`compare`] computes the changes between two
//!   snapshots' mounts as such a layer. The snapshots service serves no Diff API yet, so the
//!   comparison runs here, in the (root) client, with the same layer library a Diff service
//!   would use ([`berth_snapshots::layer::compare`]).
//! - [`write_image`] writes the config and an OCI manifest; [`tag`] records an image name.
//!
//! Serialisation is deterministic (sorted keys, gzip without a timestamp), so the same image
//! state always gives the same digests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::SystemTime;

use berth_api::berth::content::v1 as cpb;
use berth_api::berth::images::v1 as ipb;
use berth_api::berth::types::v1::{Descriptor, Mount as PbMount};
use berth_snapshots::mount::{self, Mount, Mounted};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::clients::{Clients, Lease};
use crate::error::{Error, Result};

/// Media type of the layers berth writes.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of the manifests berth writes.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the configs berth writes.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Content label giving a compressed layer's diff id.
pub const UNCOMPRESSED_LABEL: &str = "berth.io/uncompressed";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Largest manifest or config read.
const MAX_JSON: usize = 8 << 20;
/// Chunk size of content writes (the API's limit).
const CHUNK: usize = 1 << 20;

/// A layer in the content store.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The compressed blob.
    pub descriptor: Descriptor,
    /// `sha256:` digest of the uncompressed tar.
    pub diff_id: String,
}

/// An image as a build sees it: its config JSON and its layers, bottom first.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageState {
    /// The OCI image config (`architecture`, `os`, `config`, `rootfs`, `history`...).
    pub config: Value,
    /// Layer blobs, bottom first; `config.rootfs.diff_ids` lists their diff ids in order.
    pub layers: Vec<Descriptor>,
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// RFC 3339 text of a time, as image configs carry it.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The host's architecture in OCI's words.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ImageState {
    /// An empty image (`FROM scratch`) for the host's platform.
    pub fn scratch() -> ImageState {
        ImageState {
            config: json!({
                "architecture": host_arch(),
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }),
            layers: Vec::new(),
        }
    }

    /// The diff ids of the layers, bottom first.
    pub fn diff_ids(&self) -> Vec<String> {
        self.config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Chain id of the top layer (the name of its committed snapshot); None without layers.
    pub fn chain_id(&self) -> Option<String> {
        chain_id(&self.diff_ids())
    }

    /// The runtime config (`config.config`), created if missing.
    pub fn runtime_config(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.config["config"].is_object() {
            self.config["config"] = json!({});
        }
        self.config["config"]
            .as_object_mut()
            .expect("just made an object")
    }

    /// Adds a history entry; `empty_layer` for entries that add no layer.
    pub fn add_history(
        &mut self,
        created: &str,
        created_by: &str,
        comment: &str,
        empty_layer: bool,
    ) {
        let mut entry = json!({"created": created, "created_by": created_by});
        if !comment.is_empty() {
            entry["comment"] = json!(comment);
        }
        if empty_layer {
            entry["empty_layer"] = json!(true);
        }
        if !self.config["history"].is_array() {
            self.config["history"] = json!([]);
        }
        if let Some(h) = self.config["history"].as_array_mut() {
            h.push(entry);
        }
        self.config["created"] = json!(created);
    }

    /// Adds a layer on top, with its history entry.
    pub fn add_layer(&mut self, layer: &Layer, created: &str, created_by: &str, comment: &str) {
        if !self.config["rootfs"].is_object() {
            self.config["rootfs"] = json!({"type": "layers", "diff_ids": []});
        }
        if !self.config["rootfs"]["diff_ids"].is_array() {
            self.config["rootfs"]["diff_ids"] = json!([]);
        }
        if let Some(ids) = self.config["rootfs"]["diff_ids"].as_array_mut() {
            ids.push(json!(layer.diff_id));
        }
        self.layers.push(layer.descriptor.clone());
        self.add_history(created, created_by, comment, false);
    }

    /// The config as stored: compact JSON with sorted keys.
    pub fn config_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.config).unwrap_or_default()
    }

    /// Digest of [`ImageState::config_bytes`]: the image id.
    pub fn config_digest(&self) -> String {
        digest_of(&self.config_bytes())
    }

    /// The OCI manifest of this image, given its config descriptor.
    pub fn manifest(&self, config: &Descriptor) -> Value {
        let descriptor =
            |d: &Descriptor| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
        json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(config),
            "layers": self.layers.iter().map(descriptor).collect::<Vec<_>>(),
        })
    }
}

/// Chain id of a layer stack (OCI: `sha256(parent_chain + " " + diff_id)`).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut ids = diff_ids.iter();
    let mut chain = ids.next()?.clone();
    for id in ids {
        chain = digest_of(format!("{chain} {id}").as_bytes());
    }
    Some(chain)
}

/// Reads a whole small blob (manifest, config).
pub async fn read_blob(clients: &mut Clients, digest: &str) -> Result<Vec<u8>> {
    let mut stream = clients
        .content
        .read(cpb::ReadContentRequest {
            digest: digest.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(Error::rpc(format!("read {digest}")))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.map_err(Error::rpc(format!("read {digest}")))?.data);
        if data.len() > MAX_JSON {
            return Err(Error::BadContent(format!(
                "{digest} is larger than {MAX_JSON} bytes"
            )));
        }
    }
    Ok(data)
}

fn parse_json(data: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(data).map_err(|e| Error::BadContent(format!("{what} is not JSON: {e}")))
}

fn descriptor_of(v: &Value) -> Result<Descriptor> {
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: v["digest"]
            .as_str()
            .ok_or_else(|| Error::BadContent("a descriptor has no digest".into()))?
            .to_owned(),
        size: v["size"].as_i64().unwrap_or_default(),
        ..Default::default()
    })
}

/// Reads the image `target` points to (an index is resolved to its linux manifest for the
/// host's architecture). Returns the state and the manifest's descriptor.
pub async fn read_image(
    clients: &mut Clients,
    target: &Descriptor,
) -> Result<(ImageState, Descriptor)> {
    let mut manifest_desc = target.clone();
    let mut manifest = parse_json(&read_blob(clients, &target.digest).await?, "the manifest")?;
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
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "the image index {} has no manifest for linux/{}",
                    target.digest,
                    host_arch()
                ))
            })?;
        manifest_desc = descriptor_of(chosen)?;
        manifest = parse_json(
            &read_blob(clients, &manifest_desc.digest).await?,
            "the manifest",
        )?;
    }
    let config_desc = descriptor_of(&manifest["config"])?;
    let config = parse_json(
        &read_blob(clients, &config_desc.digest).await?,
        "the config",
    )?;
    let layers = manifest["layers"]
        .as_array()
        .map(|l| l.iter().map(descriptor_of).collect::<Result<Vec<_>>>())
        .transpose()?
        .unwrap_or_default();
    let state = ImageState { config, layers };
    if state.diff_ids().len() != state.layers.len() {
        return Err(Error::BadContent(format!(
            "image {} lists {} layers but {} diff ids",
            manifest_desc.digest,
            state.layers.len(),
            state.diff_ids().len()
        )));
    }
    Ok((state, manifest_desc))
}

/// Writes `data` as a blob unless the store has it; returns its descriptor.
pub async fn write_blob(
    clients: &mut Clients,
    data: &[u8],
    media_type: &str,
    labels: HashMap<String, String>,
    lease: Option<&Lease>,
) -> Result<Descriptor> {
    let digest = digest_of(data);
    let descriptor = Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.clone(),
        size: data.len() as i64,
        ..Default::default()
    };
    let chunks = data.chunks(CHUNK).map(<[u8]>::to_vec).collect::<Vec<_>>();
    write_chunks(
        clients,
        &descriptor,
        labels,
        lease,
        futures::stream::iter(chunks.into_iter().map(Ok)),
    )
    .await?;
    Ok(descriptor)
}

/// Writes the file at `path` as the blob `descriptor` describes (digest and size checked by
/// the store).
pub async fn write_file(
    clients: &mut Clients,
    path: &Path,
    descriptor: &Descriptor,
    labels: HashMap<String, String>,
    lease: Option<&Lease>,
) -> Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(Error::io("open", path))?;
    let (tx, rx) = mpsc::channel(2);
    let reader_path = path.to_owned();
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                match file.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => {
                        let _ = tx.send(Err(Error::io("read", &reader_path)(e))).await;
                        return;
                    }
                }
            }
            buf.truncate(n);
            if n == 0 || tx.send(Ok(buf)).await.is_err() {
                return;
            }
            if n < CHUNK {
                return;
            }
        }
    };
    let writer = write_chunks(clients, descriptor, labels, lease, ReceiverStream::new(rx));
    let ((), written) = tokio::join!(reader, writer);
    written
}

/// Writes a blob from chunks; content the store already holds counts as written.
async fn write_chunks(
    clients: &mut Clients,
    descriptor: &Descriptor,
    labels: HashMap<String, String>,
    lease: Option<&Lease>,
    chunks: impl futures::Stream<Item = Result<Vec<u8>>> + Unpin,
) -> Result<()> {
    let op = || format!("write {}", descriptor.digest);
    match clients
        .content
        .info(cpb::InfoRequest {
            digest: descriptor.digest.clone(),
        })
        .await
    {
        Ok(_) => {
            if let Some(lease) = lease {
                // Keep it under our lease too, so a collection before the image records
                // exist cannot take it.
                let _ = clients
                    .leases
                    .add_resource(berth_api::berth::leases::v1::AddResourceRequest {
                        id: lease.id.clone(),
                        resource: Some(berth_api::berth::leases::v1::Resource {
                            id: descriptor.digest.clone(),
                            r#type: "content".into(),
                        }),
                    })
                    .await;
            }
            return Ok(());
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(Error::rpc(op())(s)),
    }
    let (tx, rx) = mpsc::channel(2);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(lease) = lease {
        request = lease.attach(request);
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let reference = format!(
        "build-{}-{}-{}",
        descriptor.digest,
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let _ = tx
        .send(cpb::WriteContentRequest {
            action: cpb::WriteAction::Stat as i32,
            r#ref: reference,
            total: descriptor.size,
            expected: descriptor.digest.clone(),
            ..Default::default()
        })
        .await;
    let mut responses = match clients.content.write(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(Error::rpc(op())(s)),
    };
    let mut chunks = chunks.peekable();
    let mut offset = 0i64;
    let mut first = true;
    loop {
        let data = if first {
            first = false;
            None
        } else {
            match chunks.next().await {
                Some(c) => Some(c?),
                None => None,
            }
        };
        if let Some(data) = data {
            let last = std::pin::Pin::new(&mut chunks).peek().await.is_none();
            let len = data.len() as i64;
            let action = if last {
                cpb::WriteAction::Commit
            } else {
                cpb::WriteAction::Write
            };
            let _ = tx
                .send(cpb::WriteContentRequest {
                    action: action as i32,
                    offset,
                    data,
                    labels: if last { labels.clone() } else { HashMap::new() },
                    ..Default::default()
                })
                .await;
            offset += len;
            let answer = responses.next().await;
            match answer
                .unwrap_or_else(|| Err(tonic::Status::unavailable("the write stream ended early")))
            {
                Ok(_) if last => return Ok(()),
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(Error::rpc(op())(s)),
            }
        } else {
            // The answer to STAT; an empty blob is committed at once.
            let answer = responses.next().await;
            match answer
                .unwrap_or_else(|| Err(tonic::Status::unavailable("the write stream ended early")))
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(Error::rpc(op())(s)),
            }
            if std::pin::Pin::new(&mut chunks).peek().await.is_none() {
                let _ = tx
                    .send(cpb::WriteContentRequest {
                        action: cpb::WriteAction::Commit as i32,
                        labels: labels.clone(),
                        ..Default::default()
                    })
                    .await;
                let answer = responses.next().await;
                return match answer.unwrap_or_else(|| {
                    Err(tonic::Status::unavailable("the write stream ended early"))
                }) {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(s) => Err(Error::rpc(op())(s)),
                };
            }
        }
    }
}

/// Writes the image's config and manifest; returns the manifest's descriptor.
pub async fn write_image(
    clients: &mut Clients,
    image: &ImageState,
    lease: Option<&Lease>,
) -> Result<Descriptor> {
    let config = write_blob(
        clients,
        &image.config_bytes(),
        CONFIG,
        HashMap::new(),
        lease,
    )
    .await?;
    let manifest = serde_json::to_vec(&image.manifest(&config)).unwrap_or_default();
    write_blob(clients, &manifest, MANIFEST, HashMap::new(), lease).await
}

/// Records `name` for `target` with `labels`, replacing what the name pointed to before.
pub async fn tag(
    clients: &mut Clients,
    name: &str,
    target: &Descriptor,
    labels: HashMap<String, String>,
) -> Result<ipb::Image> {
    let image = ipb::Image {
        name: name.to_owned(),
        labels,
        target: Some(target.clone()),
        ..Default::default()
    };
    match clients
        .images
        .create(ipb::CreateImageRequest {
            image: Some(image.clone()),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().image.unwrap_or(image)),
        Err(s) if s.code() == tonic::Code::AlreadyExists => clients
            .images
            .update(ipb::UpdateImageRequest {
                image: Some(image.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["target".into(), "labels".into()],
                }),
            })
            .await
            .map(|r| r.into_inner().image.unwrap_or(image))
            .map_err(Error::rpc(format!("tag {name}"))),
        Err(s) => Err(Error::rpc(format!("tag {name}"))(s)),
    }
}

/// Gzips an uncompressed layer tar into `out`; returns (diff id, blob descriptor). Blocking.
pub fn gzip_layer(tar: impl Read, out: &Path) -> Result<Layer> {
    let file = std::fs::File::create(out).map_err(Error::io("create", out))?;
    let mut sink = HashingWriter::new(std::io::BufWriter::new(file));
    let mut diff = Sha256::new();
    {
        let mut gz = flate2::GzBuilder::new().write(&mut sink, flate2::Compression::fast());
        let mut tar = tar;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tar
                .read(&mut buf)
                .map_err(Error::io("read layer for", out))?;
            if n == 0 {
                break;
            }
            diff.update(&buf[..n]);
            gz.write_all(&buf[..n]).map_err(Error::io("write", out))?;
        }
        gz.finish().map_err(Error::io("write", out))?;
    }
    sink.inner.flush().map_err(Error::io("write", out))?;
    Ok(Layer {
        descriptor: Descriptor {
            media_type: LAYER_GZIP.into(),
            digest: format!("sha256:{}", hex::encode(sink.hasher.finalize())),
            size: sink.bytes as i64,
            ..Default::default()
        },
        diff_id: format!("sha256:{}", hex::encode(diff.finalize())),
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Stores a gzipped layer file made by [`gzip_layer`] in the content store.
pub async fn upload_layer(
    clients: &mut Clients,
    path: &Path,
    layer: &Layer,
    lease: Option<&Lease>,
) -> Result<()> {
    let labels = HashMap::from([(UNCOMPRESSED_LABEL.to_owned(), layer.diff_id.clone())]);
    write_file(clients, path, &layer.descriptor, labels, lease).await
}

/// Stores an uncompressed layer tar as a gzipped layer (staged under `scratch`).
pub async fn store_layer(
    clients: &mut Clients,
    tar: impl Read + Send + 'static,
    scratch: &Path,
    lease: Option<&Lease>,
) -> Result<Layer> {
    let staged = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(scratch)
        .map_err(Error::io("create a temporary file in", scratch))?;
    let path = staged.path().to_owned();
    let gz_path = path.clone();
    let layer = tokio::task::spawn_blocking(move || gzip_layer(tar, &gz_path))
        .await
        .map_err(|e| Error::Invalid(format!("layer writer panicked: {e}")))??;
    upload_layer(clients, &path, &layer, lease).await?;
    Ok(layer)
}

/// Converts mounts from the API.
pub fn mounts_from(pb: Vec<PbMount>) -> Vec<Mount> {
    pb.into_iter()
        .map(|m| Mount {
            fs_type: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

/// The changes from the filesystem `lower` assembles (empty = an empty tree) to the one
/// `upper` assembles, as one gzipped layer in the content store. Both are mounted
/// (read-only) on temporary directories under `scratch` while the layer is computed.
pub async fn compare(
    clients: &mut Clients,
    lower: &[Mount],
    upper: &[Mount],
    scratch: &Path,
    lease: Option<&Lease>,
) -> Result<Layer> {
    let lower = mount::read_only(lower);
    let upper = mount::read_only(upper);
    let scratch_dir = scratch.to_owned();
    let staged = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(scratch)
        .map_err(Error::io("create a temporary file in", scratch))?;
    let path = staged.path().to_owned();
    let out = path.clone();
    let layer = tokio::task::spawn_blocking(move || -> Result<Layer> {
        let empty = tempfile::Builder::new()
            .prefix(".empty-")
            .tempdir_in(&scratch_dir)
            .map_err(Error::io("create a directory in", &scratch_dir))?;
        let lower_mounted = if lower.is_empty() {
            None
        } else {
            Some(
                Mounted::temporary(&lower, &scratch_dir)
                    .map_err(Error::layer("mount the lower tree"))?,
            )
        };
        let upper_mounted = Mounted::temporary(&upper, &scratch_dir)
            .map_err(Error::layer("mount the upper tree"))?;
        let lower_path = lower_mounted
            .as_ref()
            .map_or(empty.path(), |m| m.path())
            .to_owned();
        let upper_path = upper_mounted.path().to_owned();
        // The tar goes through a pipe into the gzip writer on this thread.
        let (reader, writer) = std::io::pipe().map_err(Error::io("create a pipe for", &out))?;
        let producer = std::thread::spawn(move || {
            berth_snapshots::layer::compare(&lower_path, &upper_path, writer)
        });
        let layer = gzip_layer(reader, &out);
        let compared = producer
            .join()
            .map_err(|_| Error::Invalid("the layer comparison panicked".into()))?
            .map_err(Error::layer("compare the snapshot with its parent"))?;
        let layer = layer?;
        if layer.diff_id != compared.diff_id {
            return Err(Error::BadContent(format!(
                "layer digest mismatch: {} written, {} compared",
                layer.diff_id, compared.diff_id
            )));
        }
        drop(upper_mounted);
        drop(lower_mounted);
        Ok(layer)
    })
    .await
    .map_err(|e| Error::Invalid(format!("layer comparison panicked: {e}")))??;
    upload_layer(clients, &path, &layer, lease).await?;
    Ok(layer)
}

/// Where the changes of an active snapshot are, when its mounts show them directly: the
/// upper directory of an overlay, or the directory of a writable bind (a snapshot without
/// parents holds only its own changes).
pub fn changes_dir(mounts: &[Mount]) -> Option<std::path::PathBuf> {
    match mounts {
        [m] if m.fs_type == "overlay" => m.upperdir(),
        [m] if m.fs_type == "bind" && !m.is_read_only() => Some(m.source.clone().into()),
        _ => None,
    }
}

/// The layer the directory of changes `dir` holds (see [`crate::upper`]) stored like
/// [`compare`]'s; None when overlayfs metadata forbids this shortcut (compare instead).
pub async fn store_changes(
    clients: &mut Clients,
    dir: &Path,
    scratch: &Path,
    lease: Option<&Lease>,
) -> Result<Option<Layer>> {
    let staged = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(scratch)
        .map_err(Error::io("create a temporary file in", scratch))?;
    let path = staged.path().to_owned();
    let out = path.clone();
    let dir = dir.to_owned();
    let layer = tokio::task::spawn_blocking(move || -> Result<Option<Layer>> {
        let (reader, writer) = std::io::pipe().map_err(Error::io("create a pipe for", &out))?;
        let source = dir.clone();
        let producer = std::thread::spawn(move || crate::upper::write(&source, writer));
        let layer = gzip_layer(reader, &out);
        match producer.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Unsupported => return Ok(None),
            Ok(Err(e)) => return Err(Error::io("read the changes in", &dir)(e)),
            Err(_) => return Err(Error::Invalid("the layer writer panicked".into())),
        }
        layer.map(Some)
    })
    .await
    .map_err(|e| Error::Invalid(format!("layer writer panicked: {e}")))??;
    let Some(layer) = layer else {
        return Ok(None);
    };
    upload_layer(clients, &path, &layer, lease).await?;
    Ok(Some(layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aa".to_owned();
        let b = "sha256:bb".to_owned();
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            Some(digest_of(format!("{a} {b}").as_bytes()))
        );
    }

    #[test]
    fn the_same_state_serialises_to_the_same_digests() {
        let mut one = ImageState::scratch();
        let layer = Layer {
            descriptor: Descriptor {
                media_type: LAYER_GZIP.into(),
                digest: "sha256:11".into(),
                size: 3,
                ..Default::default()
            },
            diff_id: "sha256:22".into(),
        };
        one.add_layer(&layer, "2024-01-01T00:00:00Z", "COPY a /a", "");
        one.add_history("2024-01-01T00:00:01Z", "ENV A=b", "", true);
        let two = one.clone();
        assert_eq!(one.config_digest(), two.config_digest());
        assert_eq!(one.diff_ids(), ["sha256:22"]);
        assert_eq!(one.config["created"], "2024-01-01T00:00:01Z");
        assert_eq!(one.config["history"][1]["empty_layer"], true);
        let config = Descriptor {
            digest: one.config_digest(),
            ..Default::default()
        };
        assert_eq!(one.manifest(&config)["layers"][0]["digest"], "sha256:11");
    }

    #[test]
    fn layers_are_gzipped_with_their_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("layer.gz");
        let tar = b"not really a tar, but bytes".to_vec();
        let layer = gzip_layer(tar.as_slice(), &out).unwrap();
        assert_eq!(layer.diff_id, digest_of(&tar));
        let gz = std::fs::read(&out).unwrap();
        assert_eq!(layer.descriptor.digest, digest_of(&gz));
        assert_eq!(layer.descriptor.size, gz.len() as i64);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, tar);
    }
}
