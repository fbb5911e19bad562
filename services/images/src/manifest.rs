//! Reading an image's structure from the content store: index -> manifest for a platform ->
//! config and layers.
//!
//! Indexes, manifests and configs are small JSON blobs; they are read whole, with a size limit,
//! and parsed into the few fields berth needs. OCI and Docker schema2 media types are both
//! understood (their JSON has the same shape).

use std::io::Read;

use serde::Deserialize;

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::images::{Descriptor, Platform};
use crate::pull::{
    MAX_MANIFEST, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};

/// Largest image config read.
const MAX_CONFIG: u64 = 8 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    #[serde(default)]
    manifests: Vec<JsonDescriptor>,
    config: Option<JsonDescriptor>,
    #[serde(default)]
    layers: Vec<JsonDescriptor>,
}

/// A descriptor as OCI JSON documents (index, manifest, a layout's `index.json`) spell it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonDescriptor {
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) annotations: std::collections::BTreeMap<String, String>,
    pub(crate) platform: Option<JsonPlatform>,
}

impl JsonDescriptor {
    /// The descriptor, given its `digest` parsed from `self.digest` by the caller.
    pub(crate) fn into_descriptor(self, digest: Digest) -> Descriptor {
        Descriptor {
            media_type: self.media_type,
            digest,
            size: self.size,
            annotations: self.annotations,
            platform: self.platform.map(|p| Platform {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant,
                os_version: p.os_version,
            }),
        }
    }
}

/// The platform of a [`JsonDescriptor`].
#[derive(Deserialize)]
pub(crate) struct JsonPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: String,
    #[serde(default, rename = "os.version")]
    os_version: String,
}

#[derive(Deserialize)]
struct JsonConfig {
    rootfs: Option<JsonRootfs>,
}

#[derive(Deserialize)]
struct JsonRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// One platform's image: its manifest, config and layers, as the content store holds them.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The image manifest.
    pub manifest: Descriptor,
    /// The image config.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Digest of each layer's uncompressed tar (the config's `rootfs.diff_ids`), bottom first.
    pub diff_ids: Vec<Digest>,
}

/// Whether `media_type` is an index (or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_LIST)
}

/// Whether `media_type` is an image manifest (OCI or Docker schema2).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(media_type, MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST)
}

/// Reads a whole blob of at most `limit` bytes.
pub fn read_blob<C: ContentStore>(
    content: &C,
    ns: &str,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>> {
    let blob = content.open(ns, digest)?;
    if blob.size > limit {
        return Err(Error::BadManifest {
            digest: digest.to_string(),
            reason: format!("{} bytes exceeds the limit of {limit}", blob.size),
        });
    }
    let mut data = Vec::with_capacity(blob.size as usize);
    (&blob.file)
        .take(limit)
        .read_to_end(&mut data)
        .map_err(|source| Error::Io {
            path: format!("blob {digest}").into(),
            source,
        })?;
    Ok(data)
}

fn parse<T: serde::de::DeserializeOwned>(digest: &Digest, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::BadManifest {
        digest: digest.to_string(),
        reason: format!("does not parse: {e}"),
    })
}

fn descriptor(parent: &Digest, d: JsonDescriptor) -> Result<Descriptor> {
    let digest = d.digest.parse().map_err(|_| Error::BadManifest {
        digest: parent.to_string(),
        reason: format!("invalid digest {:?} in a descriptor", d.digest),
    })?;
    Ok(d.into_descriptor(digest))
}

/// Whether an index entry for `have` serves a request for `want` (an empty variant matches any).
pub fn platform_matches(want: &Platform, have: &Platform) -> bool {
    want.os == have.os
        && want.architecture == have.architecture
        && (want.variant.is_empty() || want.variant == have.variant)
}

/// The manifests an index lists, in its order.
pub fn index_entries<C: ContentStore>(
    content: &C,
    ns: &str,
    index: &Descriptor,
) -> Result<Vec<Descriptor>> {
    let json: Json = parse(
        &index.digest,
        &read_blob(content, ns, &index.digest, MAX_MANIFEST)?,
    )?;
    json.manifests
        .into_iter()
        .map(|d| descriptor(&index.digest, d))
        .collect()
}

/// The image that `target` (an index or a manifest) holds for `platform`: for an index, the
/// first entry for that platform whose manifest is in the content store.
pub fn resolve<C: ContentStore>(
    content: &C,
    ns: &str,
    target: &Descriptor,
    platform: &Platform,
) -> Result<Resolved> {
    let manifest = if is_index(&target.media_type) {
        let entries = index_entries(content, ns, target)?;
        let mut candidates = entries.into_iter().filter(|d| {
            is_manifest(&d.media_type)
                && platform_matches(
                    platform,
                    d.platform.as_ref().unwrap_or(&Platform::default()),
                )
        });
        candidates
            .find(|d| content.info(ns, &d.digest).is_ok())
            .ok_or_else(|| Error::NoMatchingPlatform {
                reference: target.digest.to_string(),
                platforms: format!(
                    "{}/{} (present locally)",
                    platform.os, platform.architecture
                ),
            })?
    } else if is_manifest(&target.media_type) {
        target.clone()
    } else {
        return Err(Error::BadManifest {
            digest: target.digest.to_string(),
            reason: format!(
                "media type {:?} is not an index or manifest",
                target.media_type
            ),
        });
    };
    let json: Json = parse(
        &manifest.digest,
        &read_blob(content, ns, &manifest.digest, MAX_MANIFEST)?,
    )?;
    let config = json.config.ok_or_else(|| Error::BadManifest {
        digest: manifest.digest.to_string(),
        reason: "the manifest has no config".into(),
    })?;
    let config = descriptor(&manifest.digest, config)?;
    let layers = json
        .layers
        .into_iter()
        .map(|d| descriptor(&manifest.digest, d))
        .collect::<Result<Vec<_>>>()?;
    let parsed: JsonConfig = parse(
        &config.digest,
        &read_blob(content, ns, &config.digest, MAX_CONFIG)?,
    )?;
    let diff_ids = parsed
        .rootfs
        .map(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            d.parse().map_err(|_| Error::BadManifest {
                digest: config.digest.to_string(),
                reason: format!("invalid diff id {d:?}"),
            })
        })
        .collect::<Result<Vec<Digest>>>()?;
    if diff_ids.len() != layers.len() {
        return Err(Error::BadManifest {
            digest: manifest.digest.to_string(),
            reason: format!(
                "{} layers but the config {} lists {} diff ids",
                layers.len(),
                config.digest,
                diff_ids.len()
            ),
        });
    }
    Ok(Resolved {
        manifest,
        config,
        layers,
        diff_ids,
    })
}

/// The chain ids of a stack of layers, bottom first: the first is its diff id, each next one
/// `sha256(<previous chain id> + " " + <diff id>)`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(prev) => Digest::sha256(format!("{prev} {d}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::sha256(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
