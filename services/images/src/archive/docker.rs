//! The Docker side of archives: `manifest.json` items and the schema2 manifest berth records
//! for an image a docker-archive describes without one.

use serde::{Deserialize, Serialize};

use crate::images::Descriptor;
use crate::pull::MEDIA_TYPE_DOCKER_MANIFEST;

/// Docker's image config media type.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's uncompressed layer media type.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker's gzip layer media type.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI zstd layer media type (Docker schema2 has none of its own).
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One image of a `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Item {
    /// Path of the config in the archive.
    pub config: String,
    /// Names, familiar form (`busybox:latest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repo_tags: Vec<String>,
    /// Paths of the layers in the archive, bottom first.
    pub layers: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema2<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Child<'a>,
    layers: Vec<Child<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Child<'a> {
    media_type: &'a str,
    size: u64,
    digest: String,
}

/// What the first bytes of a layer say about its compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Detects the compression from a blob's first bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The layer media type of a schema2 manifest for this compression.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_DOCKER_LAYER,
            Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }
}

/// The Docker schema2 manifest (compact JSON) of a config and its layers.
pub fn schema2(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let child = |d: &'_ Descriptor| Child {
        media_type: "",
        size: d.size,
        digest: d.digest.to_string(),
    };
    let manifest = Schema2 {
        schema_version: 2,
        media_type: MEDIA_TYPE_DOCKER_MANIFEST,
        config: Child {
            media_type: MEDIA_TYPE_DOCKER_CONFIG,
            ..child(config)
        },
        layers: layers
            .iter()
            .map(|d| Child {
                media_type: &d.media_type,
                ..child(d)
            })
            .collect(),
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// `docker.io/library/x:t` -> `x:t`, `docker.io/u/x:t` -> `u/x:t`: the form Docker writes in
/// `RepoTags`.
pub fn familiar(name: &str) -> &str {
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
}
