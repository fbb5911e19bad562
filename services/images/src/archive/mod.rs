//! Image archives: writing images as tar streams and reading them back.
//!
//! Two layouts are understood, both ways:
//! - **OCI image layout** ([`Format::OciLayout`]): `oci-layout`, `index.json` (one descriptor
//!   per image, annotated with `org.opencontainers.image.ref.name` = the tag and
//!   `io.containerd.image.name` = the full name) and `blobs/<alg>/<hex>`, plus Docker's
//!   `manifest.json` so `docker load` reads it too (what Docker 25+ `docker save` writes).
//! - **docker-archive** ([`Format::DockerArchive`]): `manifest.json` (`Config`, `RepoTags`,
//!   `Layers` paths) and `repositories`, one platform per image. berth writes it the way
//!   Docker 25+ does (the blobs under `blobs/sha256/` with an `index.json` naming the platform
//!   manifests, so digests survive a round trip); it reads that and the older form skopeo and
//!   Docker < 25 write (`<hex>.json` configs, `<hex>.tar` or `<id>/layer.tar` layers, symlinks
//!   between them), for which it records a Docker schema2 manifest of its own.
//!
//! Export streams each blob from the content store into the tar (never whole in memory).
//! Import streams each tar entry into the content store through an ingest under a lease:
//! entries under `blobs/` are verified against the digest their path names (and the size
//! their descriptors give); other files are hashed as they go. Only then are the images the
//! archive names checked (every reachable blob present, with the right size, manifests that
//! parse) and recorded. Any failure answers [`Error::BadArchive`] naming the entry and leaves
//! nothing behind: the lease is dropped and garbage collection removes what it held.

mod docker;
mod export;
mod import;

use std::sync::Arc;

use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::gc::Collector;
use crate::images::{ImageStore, Platform};
use crate::leases::LeaseManager;

pub use export::ExportOptions;
pub use import::ImportOptions;

/// Layout of an image archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Detect it (Import) or the OCI image layout (Export).
    #[default]
    Auto,
    /// OCI image layout with Docker's `manifest.json` added.
    OciLayout,
    /// docker-archive, as `docker save` writes it.
    DockerArchive,
}

/// Annotation naming the tag (or the whole reference) of an `index.json` entry.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation naming the full image name of an `index.json` entry (containerd, Docker 25+).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

const OCI_LAYOUT: &str = "oci-layout";
const INDEX_JSON: &str = "index.json";
const MANIFEST_JSON: &str = "manifest.json";
const REPOSITORIES: &str = "repositories";
/// Largest `index.json`, `manifest.json`, `oci-layout` or `repositories` accepted.
const MAX_METADATA: u64 = 4 << 20;

/// Exports images to, and imports them from, tar archives.
pub struct Archiver<C, I, L> {
    content: C,
    images: Arc<I>,
    leases: Arc<L>,
    gc: Collector,
}

impl<C, I, L> Archiver<C, I, L>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    /// An archiver over these stores; a failed import runs `gc` to drop what it stored.
    pub fn new(content: C, images: Arc<I>, leases: Arc<L>, gc: Collector) -> Self {
        Archiver {
            content,
            images,
            leases,
            gc,
        }
    }
}

/// `blobs/<alg>/<hex>`, the path of a blob in an archive.
fn blob_path(digest: &crate::digest::Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// The platforms asked for: `platforms`, or the host's when empty.
fn wanted(platforms: &[Platform]) -> Vec<Platform> {
    match platforms.is_empty() {
        true => vec![crate::pull::host_platform()],
        false => platforms.to_vec(),
    }
}

/// An [`Error::BadArchive`] about `entry`.
fn bad(entry: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadArchive {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// Checks a tar entry name: relative, no `..`, valid UTF-8; returns it without `./` parts.
fn entry_name(raw: &[u8]) -> Result<String> {
    let name = std::str::from_utf8(raw).map_err(|_| {
        bad(
            String::from_utf8_lossy(raw),
            "the entry name is not valid UTF-8",
        )
    })?;
    if name.starts_with('/') {
        return Err(bad(
            name,
            "absolute paths are not allowed in an image archive",
        ));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(bad(
                    name,
                    "`..` is not allowed in entry names of an image archive",
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::content::{LocalContent, WriteRequest, Writer};
    use crate::db::Db;
    use crate::digest::Digest;
    use crate::images::{DbImages, Descriptor};
    use crate::leases::DbLeases;
    use berth_api::filters::Filters;

    type Local = Archiver<LocalContent, DbImages, DbLeases>;

    fn archiver() -> (tempfile::TempDir, Local) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
        let content = LocalContent::open(db.clone(), &dir.path().join("content")).unwrap();
        let gc = Collector::new(db.clone(), content.clone());
        let images = Arc::new(DbImages::new(db.clone()));
        let leases = Arc::new(DbLeases::new(db));
        (dir, Archiver::new(content, images, leases, gc))
    }

    fn put(a: &Local, ns: &str, media_type: &str, data: &[u8]) -> Descriptor {
        let mut w = a
            .content
            .writer(
                ns,
                WriteRequest {
                    reference: format!("t-{}", Digest::sha256(data)),
                    ..Default::default()
                },
            )
            .unwrap();
        w.write(0, data).unwrap();
        let info = w.commit(BTreeMap::new()).unwrap();
        Descriptor {
            media_type: media_type.into(),
            digest: info.digest,
            size: info.size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }

    /// A one-layer image named `name` in `ns`; returns its manifest.
    fn image(a: &Local, ns: &str, name: &str) -> Descriptor {
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        layer.append_data(&mut h, "hello", &b"hello"[..]).unwrap();
        let layer = layer.into_inner().unwrap();
        let layer = put(a, ns, "application/vnd.oci.image.layer.v1.tar", &layer);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            layer.digest
        );
        let config = put(
            a,
            ns,
            "application/vnd.oci.image.config.v1+json",
            config.as_bytes(),
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{m}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
            config.media_type,
            config.digest,
            config.size,
            layer.media_type,
            layer.digest,
            layer.size,
            m = crate::pull::MEDIA_TYPE_MANIFEST
        );
        let manifest = put(a, ns, crate::pull::MEDIA_TYPE_MANIFEST, manifest.as_bytes());
        a.images
            .create(ns, name, BTreeMap::new(), manifest.clone(), false)
            .unwrap();
        manifest
    }

    fn export(a: &Local, ns: &str, name: &str, format: Format) -> Vec<u8> {
        let mut out = Vec::new();
        let options = ExportOptions {
            names: vec![name.into()],
            format,
            ..Default::default()
        };
        a.export(ns, &options, &mut out).unwrap();
        out
    }

    fn digests(a: &Local, ns: &str) -> Vec<Digest> {
        let all = a.content.list(ns, &Filters::default()).unwrap();
        all.into_iter().map(|i| i.digest).collect()
    }

    #[test]
    fn export_then_import_keeps_digests_in_both_formats() {
        let (_d, a) = archiver();
        let manifest = image(&a, "src", "localhost/app:1");
        for (ns, format) in [
            ("oci", Format::OciLayout),
            ("docker", Format::DockerArchive),
        ] {
            let tar = export(&a, "src", "localhost/app:1", format);
            let images = a
                .import(ns, &ImportOptions::default(), tar.as_slice())
                .unwrap();
            assert_eq!(images.len(), 1);
            assert_eq!(images[0].name, "localhost/app:1");
            assert_eq!(images[0].target.digest, manifest.digest, "{format:?}");
            assert_eq!(digests(&a, ns), digests(&a, "src"), "{format:?}");
        }
    }

    #[test]
    fn legacy_docker_archives_with_gzip_layers_and_links_import() {
        let (_d, a) = archiver();
        let gz = [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let diff_id = Digest::sha256(b"");
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}","{diff_id}"]}}}}"#
        );
        let config_hex = Digest::sha256(config.as_bytes()).hex().to_owned();
        let manifest = format!(
            r#"[{{"Config":"{config_hex}.json","RepoTags":["old:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}}]"#
        );
        let mut tar = tar::Builder::new(Vec::new());
        let file = |tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, data).unwrap();
        };
        file(&mut tar, "l1/layer.tar", &gz);
        file(&mut tar, &format!("{config_hex}.json"), config.as_bytes());
        file(&mut tar, "manifest.json", manifest.as_bytes());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, "l2/layer.tar", "../l1/layer.tar")
            .unwrap();
        let tar = tar.into_inner().unwrap();

        let images = a
            .import("ns", &ImportOptions::default(), tar.as_slice())
            .unwrap();
        assert_eq!(images[0].name, "docker.io/library/old:1");
        let target = &images[0].target;
        assert_eq!(target.media_type, crate::pull::MEDIA_TYPE_DOCKER_MANIFEST);
        let r = crate::manifest::resolve(&a.content, "ns", target, &Default::default()).unwrap();
        assert_eq!(r.config.digest.hex(), config_hex);
        assert_eq!(r.layers.len(), 2);
        assert_eq!(r.layers[0].digest, Digest::sha256(&gz));
        assert_eq!(r.layers[1].digest, r.layers[0].digest);
        assert_eq!(r.layers[0].media_type, docker::MEDIA_TYPE_DOCKER_LAYER_GZIP);

        // A link out of the archive is refused.
        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        evil.append_link(&mut h, "l2/layer.tar", "../../etc/passwd")
            .unwrap();
        let evil = evil.into_inner().unwrap();
        let err = a
            .import("ns", &ImportOptions::default(), evil.as_slice())
            .unwrap_err();
        assert!(err.to_string().contains("outside the archive"), "{err}");
    }

    #[test]
    fn a_corrupt_blob_is_rejected_and_nothing_stays() {
        let (_d, a) = archiver();
        image(&a, "src", "localhost/app:1");
        let tar = export(&a, "src", "localhost/app:1", Format::OciLayout);
        // Flip the last byte of the "hello" file inside the layer blob.
        let at = tar.windows(5).position(|w| w == b"hello").unwrap();
        let mut bad = tar.clone();
        bad[at + 4] ^= 1;
        let err = a
            .import("dst", &ImportOptions::default(), bad.as_slice())
            .unwrap_err();
        assert!(matches!(err, Error::BadArchive { .. }), "{err}");
        assert!(err.to_string().contains("blobs/sha256/"), "{err}");
        assert!(digests(&a, "dst").is_empty());
        let ingests = a.content.list_statuses("dst", &Filters::default()).unwrap();
        assert!(ingests.is_empty(), "{ingests:?}");
        // Truncated: the same.
        let err = a
            .import("dst", &ImportOptions::default(), &tar[..at + 2])
            .unwrap_err();
        assert!(matches!(err, Error::BadArchive { .. }), "{err}");
        assert!(digests(&a, "dst").is_empty());
    }

    #[test]
    fn entry_names_stay_inside_the_archive() {
        assert_eq!(
            entry_name(b"./blobs//sha256/ab").unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(entry_name(b"index.json").unwrap(), "index.json");
        for evil in [&b"../x"[..], b"/etc/passwd", b"blobs/../../x", b"a/\xff"] {
            assert!(
                matches!(entry_name(evil), Err(Error::BadArchive { .. })),
                "{evil:?}"
            );
        }
    }
}
